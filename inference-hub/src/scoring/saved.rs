//! A scorer's state as saved by `crate::detector_state`: borrowed for
//! writing, owned when read back (the same postcard layout).

use serde::{Deserialize, Serialize};

use super::{Normalisation, ScoreStats, SeriesState, SlidingWindow, multivariate, records};

/// One series' state as saved: device, metric, normalisation, window, score
/// history, whether it is in an anomaly, its novelty detector.
pub(super) type SavedSeries = (
    String,
    String,
    Normalisation,
    SlidingWindow,
    ScoreStats,
    bool,
    Option<Box<detect::Novelty>>,
);

/// The series of a scorer, serialised as [`SavedSeries`] without copying.
#[derive(Debug)]
pub(crate) struct SeriesList<'a>(pub(super) Vec<&'a SeriesState>);

impl Serialize for SeriesList<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|st| {
            (
                &*st.device,
                &*st.metric,
                &st.norm,
                &st.window,
                &st.scores,
                st.in_anomaly,
                &st.novelty,
            )
        }))
    }
}

/// An engine's state, for saving (borrowed) ... Variants are saved by
/// index: new ones go at the end.
#[derive(Debug, Serialize)]
pub(crate) enum SavedEngineRef<'a> {
    Univariate(SeriesList<'a>),
    Multivariate(multivariate::DeviceList<'a>),
    Records(records::LayoutList<'a>),
}

/// ... and as read back (the same layout, owned).
#[derive(Debug, Deserialize)]
pub(crate) enum SavedEngine {
    Univariate(Vec<SavedSeries>),
    Multivariate(Vec<multivariate::SavedDevice>),
    Records(Vec<records::SavedLayout>),
}
