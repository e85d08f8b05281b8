//! The router's side of detector state shared between hubs, per gateway
//! (see [`crate::detector_state::shared`]): which gateway each device
//! belongs to, the state of one gateway's devices, and adding another
//! hub's state of a gateway without touching what this hub has.

use std::sync::Arc;

use arrow_array::Array;
use schemas::tables::ReadingView;

use super::{Router, SavedRoute, SavedRouteRef};

/// What [`Router::merge_state`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Merged {
    /// Series (univariate) and devices (multivariate) added.
    pub series: usize,
    /// Saved routes left out: no route of that name and kind of state here.
    pub skipped: Vec<String>,
}

impl Router {
    /// Follows which gateway each device belongs to from now on (the one
    /// whose batch carried it last), for [`Router::save_gateway`].
    pub fn follow_gateways(&mut self) {
        self.gateways.get_or_insert_with(Default::default);
    }

    pub(super) fn note_gateway(&mut self, view: &ReadingView<'_>, gateway: &str) {
        let Some(gateways) = &mut self.gateways else {
            return;
        };
        let mut shared: Option<Arc<str>> = None;
        let mut last: Option<&str> = None;
        for i in 0..view.device.len() {
            let device = view.device.value(i);
            if last == Some(device) {
                continue;
            }
            last = Some(device);
            if gateways.get(device).is_some_and(|g| &**g == gateway) {
                continue;
            }
            let g = Arc::clone(shared.get_or_insert_with(|| Arc::from(gateway)));
            gateways.insert(Arc::from(device), g);
        }
    }

    /// Writes every route's state of the devices of `gateway` to `w`
    /// (postcard, the layout of [`Router::save_state`]).
    pub fn save_gateway<W: std::io::Write>(
        &self,
        gateway: &str,
        w: W,
    ) -> Result<W, postcard::Error> {
        let owned = |device: &str| {
            self.gateways
                .as_ref()
                .and_then(|g| g.get(device))
                .is_some_and(|g| &**g == gateway)
        };
        let routes: Vec<SavedRouteRef<'_>> = self
            .live
            .iter()
            .chain(&self.shadows)
            .map(|r| SavedRouteRef {
                name: &r.name,
                key: r.engine.state_key(),
                engine: r.engine.saved_of(&owned, false),
            })
            .collect();
        postcard::to_io(&routes, w)
    }

    /// Adds the series and devices in `bytes` (see
    /// [`Router::save_gateway`]) that this router does not have, to the
    /// routes of the same name whose model keeps the same kind of state.
    pub fn merge_state(&mut self, bytes: &[u8]) -> Result<Merged, postcard::Error> {
        let saved: Vec<SavedRoute> = postcard::from_bytes(bytes)?;
        let mut out = Merged::default();
        for s in saved {
            let merged = self
                .route_saved_as(&s)
                .and_then(|r| r.engine.merge(s.engine));
            match merged {
                Some(n) => out.series += n,
                None => out.skipped.push(s.name),
            }
        }
        Ok(out)
    }
}
