//! Per-series state and batch scoring: readings in, scored rows and anomaly
//! events out.
//!
//! A series is one `(device, metric)`. For each series the scorer keeps the
//! last `window` raw values and a normalisation (mean and standard deviation):
//! learned exactly (Welford) over the first `warmup-readings` readings, then
//! followed slowly (exponential forgetting with the same horizon), so one
//! model serves devices of any scale and a series that changes regime is
//! re-learned within about one warm-up length. Until a series
//! has warmed up its rows are `warming_up` with no score, never anomalous.
//!
//! "Anomalous" takes two tests: the model's score is above the manifest's
//! calibrated threshold (unusual in absolute terms), and it is extreme for
//! this series: more than `SCORE_Z_LIMIT` standard deviations above the
//! series' own recent `ln(1 + score)`. The second test keeps the alert rate
//! stable across devices whose normal behaviour the warm-up captured well or
//! badly. A series stays `warming_up` (now with a score) until it has
//! `MIN_SCORE_HISTORY` scores.
//!
//! Scoring is batched: all windows of a batch that need a score go through
//! the model in one call. Within one batch every window is normalised with the
//! statistics as they stood when the batch began (plus the warm-up updates),
//! which keeps the model call whole.
//!
//! Every reading gets a status; an anomaly *event* is emitted for the first
//! anomalous reading of a run (a spike stays in the window for `window`
//! readings, which would otherwise be `window` events for one incident).
//!
//! Within a batch, readings are taken in timestamp order (a gateway's batch
//! may interleave its devices' clocks). A reading older than one its series
//! has already been scored with is `late` (archived, not scored): that is
//! what a gateway's spooled backlog looks like when it arrives after live
//! data, and a window of newer readings says nothing about it. Rescoring
//! archived ranges is the tool for backfills.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::{Array, RecordBatch};
use schemas::envelope::DecodedBatch;
use schemas::tables::{ReadingView, status};
use serde::{Deserialize, Serialize};

use crate::model::{Model, ModelError};

/// Hash maps keyed by device and metric names, hit for every reading:
/// foldhash instead of SipHash (no untrusted peer chooses these keys to
/// collide: they passed the envelope checks, and a slow map only slows this
/// hub).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

mod columns;
pub mod multivariate;
mod novelty;
pub mod records;
pub mod router;
mod saved;

pub use columns::format_ts;
use columns::{BatchContext, ScoredColumns, ScoredRows, grouped_order, normalise_into};
pub use multivariate::MultivariateScorer;
pub use records::RecordsScorer;
pub use router::Router;
use saved::SavedSeries;
pub(crate) use saved::{SavedEngine, SavedEngineRef, SeriesList};

/// Scores a series must have produced before its own score distribution is
/// trusted (until then it is `warming_up`).
const MIN_SCORE_HISTORY: u64 = 50;
/// How extreme, in standard deviations of the series' own recent
/// `ln(1 + score)`, a score must be to count as anomalous.
const SCORE_Z_LIMIT: f64 = 3.5;
/// Horizon (readings) of the exponential forgetting of score statistics.
const SCORE_HORIZON: f64 = 1000.0;

/// Running statistics of one series' `ln(1 + score)`: Welford's until
/// `MIN_SCORE_HISTORY`, then exponential forgetting.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct ScoreStats {
    n: u64,
    mean: f64,
    var: f64,
}

impl ScoreStats {
    /// z-value of `l` against the history (None while too short).
    fn z(&self, l: f64) -> Option<f64> {
        (self.n >= MIN_SCORE_HISTORY).then(|| (l - self.mean) / self.var.max(1e-6).sqrt())
    }

    /// The adaptive decision for one score (above `threshold` and extreme
    /// for this series), then the score joins the history.
    fn decide(&mut self, score: f64, threshold: f64) -> &'static str {
        let l = score.ln_1p();
        let z = self.z(l);
        self.update(l);
        match z {
            None => status::WARMING_UP,
            Some(z) if score > threshold && z > SCORE_Z_LIMIT => status::ANOMALOUS,
            Some(_) => status::OK,
        }
    }

    fn update(&mut self, l: f64) {
        self.n += 1;
        let d = l - self.mean;
        if self.n <= MIN_SCORE_HISTORY {
            self.mean += d / self.n as f64;
            // var holds the running population variance.
            self.var += (d * (l - self.mean) - self.var) / self.n as f64;
        } else {
            let a = 1.0 / SCORE_HORIZON;
            self.mean += a * d;
            self.var = (1.0 - a) * (self.var + a * d * d);
        }
    }
}

/// A series' normalisation: learned exactly (Welford) during warm-up, then
/// followed with exponential forgetting over the same horizon.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Normalisation {
    count: u64,
    mean: f64,
    /// Welford's sum of squares during warm-up, then the variance itself.
    m2: f64,
}

impl Normalisation {
    fn std(&self, warmup: u64) -> f64 {
        let var = if self.count < warmup {
            if self.count > 1 {
                self.m2 / (self.count - 1) as f64
            } else {
                0.0
            }
        } else {
            self.m2
        };
        var.sqrt().max(1e-3 * self.mean.abs().max(1.0))
    }

    fn learn_warmup(&mut self, x: f64, warmup: u64) {
        self.count += 1;
        let d = x - self.mean;
        self.mean += d / self.count as f64;
        self.m2 += d * (x - self.mean);
        if self.count == warmup {
            self.m2 /= (warmup - 1) as f64; // from now on m2 holds the variance
        }
    }

    fn follow(&mut self, x: f64, warmup: u64) {
        let a = 1.0 / warmup as f64;
        let d = x - self.mean;
        self.mean += a * d;
        self.m2 = (1.0 - a) * (self.m2 + a * d * d);
    }
}

/// The newest readings of one series, oldest first, kept contiguous so that
/// a window is one slice: readings are appended to a buffer of twice the
/// window, and when it is full the newest `window - 1` move to its front
/// (one copy every `window + 1` readings).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SlidingWindow {
    window: usize,
    values: Vec<f64>,
    ts: Vec<i64>,
}

impl SlidingWindow {
    fn new(window: usize) -> Self {
        Self {
            window: window.max(1),
            values: Vec::new(),
            ts: Vec::new(),
        }
    }

    fn push(&mut self, x: f64, ts: i64) {
        if self.values.len() == 2 * self.window {
            let keep = self.values.len() - (self.window - 1);
            self.values.copy_within(keep.., 0);
            self.ts.copy_within(keep.., 0);
            self.values.truncate(self.window - 1);
            self.ts.truncate(self.window - 1);
        } else if self.values.capacity() == 0 {
            self.values.reserve_exact(2 * self.window);
            self.ts.reserve_exact(2 * self.window);
        }
        self.values.push(x);
        self.ts.push(ts);
    }

    fn newest_ts(&self) -> Option<i64> {
        self.ts.last().copied()
    }

    fn len(&self) -> usize {
        self.values.len().min(self.window)
    }

    fn is_full(&self) -> bool {
        self.len() == self.window
    }

    /// The window's values, oldest first.
    fn values(&self) -> &[f64] {
        &self.values[self.values.len() - self.len()..]
    }

    /// Timestamp of the oldest reading in the window.
    fn start_ts(&self) -> Option<i64> {
        self.ts.get(self.ts.len() - self.len()).copied()
    }
}

/// Everything the univariate scorer keeps about one `(device, metric)`.
#[derive(Debug)]
struct SeriesState {
    /// Numbers devices in order of first sight (groups a device's rows).
    device_index: u32,
    device: Arc<str>,
    metric: Arc<str>,
    norm: Normalisation,
    window: SlidingWindow,
    scores: ScoreStats,
    /// The previous reading was anomalous: a run of anomalous readings (a
    /// spike stays in the window for `window` readings) is one event.
    in_anomaly: bool,
    /// The novelty detector (novelty models), created on first sight.
    novelty: Option<Box<detect::Novelty>>,
}

/// One anomaly event, for the API's recent-events view.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct AnomalyEvent {
    /// Assigned by the hub's state when the event is published (increasing;
    /// the API's cursors and the stream's event ids).
    #[serde(default)]
    pub id: u64,
    pub device: String,
    pub metric: String,
    pub ts: String,
    pub ts_us: i64,
    pub value: f64,
    pub score: f64,
    pub threshold: f64,
    pub severity: f64,
    pub window_start_us: i64,
    pub model_id: String,
    pub model_version: String,
    pub gateway: String,
    pub seq: u64,
    /// The model's expected value of the reading, if it forecasts one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<f64>,
    /// Values the model would not have flagged: `expected +- sqrt(threshold)`
    /// standard deviations of the series.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_low: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_high: Option<f64>,
    /// Each input metric's share of the score (multivariate models; sums to 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contributions: Option<std::collections::BTreeMap<String, f64>>,
}

impl AnomalyEvent {
    fn contributions_json(&self) -> Option<String> {
        self.contributions
            .as_ref()
            .and_then(|c| serde_json::to_string(c).ok())
    }
}

/// What scoring one batch produced.
///
/// The scored rows come grouped: a device's rows together, within them each
/// series' rows together and in time order ([`crate::state::HubState`] and
/// the archive's sort rely on it for speed, not for correctness).
#[derive(Debug)]
pub struct ScoredBatch {
    /// Set when the model failed; the affected rows are `unscored`.
    pub model_error: Option<ModelError>,
    pub scored: RecordBatch,
    pub anomalies: RecordBatch,
    pub events: Vec<AnomalyEvent>,
}

#[derive(Debug)]
pub struct Scorer {
    model: Model,
    threshold: f64,
    warmup: u64,
    /// The novelty family's configuration, when the model is one.
    novelty: Option<Arc<detect::NoveltyConfig>>,
    /// Threads that score a batch's series (novelty models).
    threads: usize,
    /// Indexed by series id.
    series: Vec<SeriesState>,
    /// device -> (metric, series id) of each of its series: one hash lookup
    /// of the device name per reading, then a short scan of its metrics.
    by_device: FastMap<Arc<str>, Vec<(Arc<str>, u32)>>,
    /// Metric names, shared by the series of every device.
    metric_names: std::collections::HashSet<Arc<str>, foldhash::fast::RandomState>,
}

impl Scorer {
    pub fn new(model: Model, warmup_readings: u32, threshold: Option<f64>) -> Self {
        let warmup = u64::from(warmup_readings).max(model.window() as u64).max(2);
        Self {
            threshold: threshold.unwrap_or(model.manifest.threshold),
            novelty: model.novelty().cloned().map(Arc::new),
            threads: 1,
            model,
            warmup,
            series: Vec::new(),
            by_device: FastMap::default(),
            metric_names: Default::default(),
        }
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Scores a batch's series on up to `threads` threads (novelty models;
    /// the results are the same as on one).
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads.max(1);
    }

    /// Replaces the model (hot reload). Series state is kept when the new
    /// model reads windows of the same length, else it is learned anew.
    pub fn swap_model(&mut self, model: Model, threshold: Option<f64>) {
        let novelty = model.novelty().cloned().map(Arc::new);
        if model.window() != self.model.window() || novelty != self.novelty {
            // Another window, or another detector configuration: the state
            // learned for the old one does not carry over.
            self.series.clear();
            self.by_device.clear();
        }
        self.novelty = novelty;
        self.threshold = threshold.unwrap_or(model.manifest.threshold);
        self.warmup = self.warmup.max(model.window() as u64);
        self.model = model;
    }

    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    /// Replaces every series' state with saved ones (see
    /// [`crate::detector_state`]); the caller has checked that they were
    /// saved for a model with the same state key.
    fn restore(&mut self, saved: Vec<SavedSeries>) {
        self.series.clear();
        self.by_device.clear();
        self.metric_names.clear();
        self.merge(saved);
    }

    /// Adds saved series this scorer does not have (the ones it has keep
    /// their state); how many were added.
    fn merge(&mut self, saved: Vec<SavedSeries>) -> usize {
        let mut added = 0;
        for (device, metric, norm, window, scores, in_anomaly, novelty) in saved {
            let known = self
                .by_device
                .get(device.as_str())
                .is_some_and(|list| list.iter().any(|(m, _)| **m == *metric));
            if known {
                continue;
            }
            let id = self.resolve(&device, &metric);
            let state = &mut self.series[id];
            state.norm = norm;
            state.window = window;
            state.scores = scores;
            state.in_anomaly = in_anomaly;
            state.novelty = novelty;
            added += 1;
        }
        added
    }

    /// The id of a series, created on first sight.
    fn resolve(&mut self, device: &str, metric: &str) -> usize {
        let known = self.by_device.get_key_value(device);
        if let Some((_, list)) = known
            && let Some(&(_, id)) = list.iter().find(|(m, _)| &**m == metric)
        {
            return id as usize;
        }
        let device: Arc<str> = known.map_or_else(|| Arc::from(device), |(d, _)| Arc::clone(d));
        let metric = match self.metric_names.get(metric) {
            Some(m) => Arc::clone(m),
            None => {
                let m: Arc<str> = Arc::from(metric);
                self.metric_names.insert(Arc::clone(&m));
                m
            }
        };
        let device_index = match known {
            Some((_, list)) => self.series[list[0].1 as usize].device_index,
            None => u32::try_from(self.by_device.len()).expect("fewer than 2^32 devices"),
        };
        let id = self.series.len();
        self.series.push(SeriesState {
            device_index,
            device: Arc::clone(&device),
            metric: Arc::clone(&metric),
            norm: Normalisation::default(),
            window: SlidingWindow::new(self.model.window()),
            scores: ScoreStats::default(),
            in_anomaly: false,
            novelty: None,
        });
        let id32 = u32::try_from(id).expect("fewer than 2^32 series");
        self.by_device
            .entry(device)
            .or_default()
            .push((metric, id32));
        id
    }

    pub fn score(&mut self, batch: &DecodedBatch, ingested_at_us: i64) -> ScoredBatch {
        let view =
            ReadingView::try_new(&batch.readings).expect("decoder verified the reading columns");
        let (series_of, order) = self.plan(&view);
        match self.novelty.clone() {
            Some(cfg) => self.score_novelty(batch, &view, &series_of, &order, &cfg, ingested_at_us),
            None => self.score_forecaster(batch, &view, &series_of, &order, ingested_at_us),
        }
    }

    /// The series of every row, and the output order: a device's rows
    /// together, each series' rows together in time order (stable).
    fn plan(&mut self, view: &ReadingView<'_>) -> (Vec<usize>, Vec<u32>) {
        let n = view.device.len();
        // The series of every row (a run of rows of one series resolves once).
        let mut series_of: Vec<usize> = Vec::with_capacity(n);
        for i in 0..n {
            let (device, metric) = (view.device.value(i), view.metric.value(i));
            let same_as_previous =
                i > 0 && device == view.device.value(i - 1) && metric == view.metric.value(i - 1);
            let id = match series_of.last() {
                Some(&previous) if same_as_previous => previous,
                _ => self.resolve(device, metric),
            };
            series_of.push(id);
        }
        // Output order: a device's rows together, each series' rows
        // together in time order (stable). Series are independent, so this
        // is the time order scoring needs, and the rows come out grouped as
        // the state and the archive want them.
        let mut keyed: Vec<(u32, u32, i64, u32)> = series_of
            .iter()
            .enumerate()
            .map(|(i, &series)| {
                let device = self.series[series].device_index;
                (device, series as u32, view.ts.value(i), i as u32)
            })
            .collect();
        // The run-aware merge sort: a gateway's batch is typically a few
        // ascending runs (one per polling cycle of its devices).
        keyed.sort();
        let order: Vec<u32> = keyed.into_iter().map(|(.., i)| i).collect();
        (series_of, order)
    }

    /// Scores with the ONNX model (windows, normalisation, the adaptive
    /// two-test decision).
    fn score_forecaster(
        &mut self,
        batch: &DecodedBatch,
        view: &ReadingView<'_>,
        series_of: &[usize],
        order: &[u32],
        ingested_at_us: i64,
    ) -> ScoredBatch {
        let n = order.len();
        let clip = self.model.manifest.input.clip;
        let warmup = self.warmup;

        // Pass 1, by output position: update windows, collect the windows
        // that need a score (normalised with the statistics as they stand).
        let mut status_at: Vec<&'static str> = vec![status::WARMING_UP; n];
        let mut window_start_at = vec![0i64; n];
        let mut queued: Vec<usize> = Vec::new();
        // The (mean, std) each queued window was normalised with.
        let mut scales: Vec<(f64, f64)> = Vec::new();
        let mut matrix: Vec<f32> = Vec::new();
        for (k, &i) in order.iter().enumerate() {
            let i = i as usize;
            let (x, ts) = (view.value.value(i), view.ts.value(i));
            let state = &mut self.series[series_of[i]];
            if !x.is_finite() {
                // NaN or infinite: archived as sent, kept out of the window
                // and the normalisation (it would poison both for good).
                status_at[k] = status::UNSCORED;
                continue;
            }
            if state.window.newest_ts().is_some_and(|newest| ts < newest) {
                status_at[k] = status::LATE;
                continue;
            }
            state.window.push(x, ts);
            window_start_at[k] = state.window.start_ts().unwrap_or(ts);
            if state.norm.count < warmup {
                state.norm.learn_warmup(x, warmup);
                continue;
            }
            if !state.window.is_full() {
                continue; // only after a model swap to a longer window
            }
            let (mean, std) = (state.norm.mean, state.norm.std(warmup));
            let row = matrix.len();
            matrix.resize(row + state.window.window, 0.0);
            normalise_into(&mut matrix[row..], state.window.values(), mean, std, clip);
            queued.push(k);
            scales.push((mean, std));
        }
        // A model failure must not lose durable readings: they are archived
        // as `unscored` and the failure is logged and counted by the caller.
        let (output, model_error) = match self.model.run(&matrix) {
            Ok(o) => (o, None),
            Err(e) => (crate::model::ModelOutput::default(), Some(e)),
        };
        let mut score_at: Vec<Option<f64>> = vec![None; n];
        // Position -> index into `queued` (the model's output rows).
        let mut queue_index_at: Vec<u32> = vec![u32::MAX; n];
        for (q, &k) in queued.iter().enumerate() {
            score_at[k] = output.scores.get(q).map(|s| f64::from(*s));
            queue_index_at[k] = q as u32;
        }

        // Pass 2: statuses, normalisation follow-up, events.
        let bound = self.threshold.sqrt();
        let header = &batch.header;
        let mut events = Vec::new();
        for (k, &i) in order.iter().enumerate() {
            let i = i as usize;
            let (ts, x) = (view.ts.value(i), view.value.value(i));
            let state = &mut self.series[series_of[i]];
            let was_queued = queue_index_at[k] != u32::MAX;
            let st = match score_at[k] {
                _ if status_at[k] != status::WARMING_UP => status_at[k],
                None if was_queued && model_error.is_some() => status::UNSCORED,
                Some(score) => state.scores.decide(score, self.threshold),
                None => status::WARMING_UP,
            };
            status_at[k] = st;
            // Every scored reading, anomalous or not, moves the normalisation:
            // following only "normal" readings locks a series that enters a
            // noisier regime into flagging everything, for ever.
            if was_queued && st != status::WARMING_UP {
                state.norm.follow(x, warmup);
            }
            if let Some(score) = score_at[k] {
                let starts_event = st == status::ANOMALOUS && !state.in_anomaly;
                state.in_anomaly = st == status::ANOMALOUS;
                if starts_event {
                    let q = queue_index_at[k] as usize;
                    let expected = output.forecast.as_ref().and_then(|f| f.get(q)).map(|f| {
                        let (mean, std) = scales[q];
                        (mean + f64::from(*f) * std, bound * std)
                    });
                    events.push(AnomalyEvent {
                        id: 0,
                        device: state.device.to_string(),
                        metric: state.metric.to_string(),
                        ts: format_ts(ts),
                        ts_us: ts,
                        value: x,
                        score,
                        threshold: self.threshold,
                        severity: score / self.threshold,
                        window_start_us: window_start_at[k],
                        model_id: self.model.manifest.id.clone(),
                        model_version: self.model.manifest.version.clone(),
                        gateway: header.gateway.clone(),
                        seq: header.seq,
                        expected: expected.map(|(e, _)| e),
                        expected_low: expected.map(|(e, b)| e - b),
                        expected_high: expected.map(|(e, b)| e + b),
                        contributions: None,
                    });
                }
            }
        }
        events.sort_by_key(|e| e.ts_us);
        let mut anomalies = ScoredColumns::new(events.len());
        for e in &events {
            anomalies.push_anomaly(e, e.window_start_us);
        }
        let ctx = BatchContext::new(header, &self.model, ingested_at_us);
        let rows = ScoredRows {
            view,
            order,
            series_of,
            series: &self.series,
            status: &status_at,
            score: &score_at,
            anomaly_score: None,
            threshold: self.threshold,
        };
        ScoredBatch {
            model_error,
            scored: rows.finish(&ctx),
            anomalies: anomalies.finish_anomalies(&ctx),
            events,
        }
    }
}

#[cfg(test)]
mod tests;

/// A scorer for one model, whichever its family (univariate models score
/// series, multivariate ones score a device's records, a state monitor
/// that lists no metrics finds record-shaped devices by their readings).
#[derive(Debug)]
pub enum Engine {
    Univariate(Scorer),
    Multivariate(MultivariateScorer),
    Records(RecordsScorer),
}

impl Engine {
    /// Picks the family from the model's manifest (`input.metrics`, and a
    /// state monitor without them).
    pub fn new(model: Model, warmup_readings: u32, threshold: Option<f64>) -> Self {
        if model.state_monitor().is_some() && model.metrics().is_none() {
            Engine::Records(RecordsScorer::new(model, warmup_readings, threshold))
        } else if model.metrics().is_some() {
            Engine::Multivariate(MultivariateScorer::new(model, warmup_readings, threshold))
        } else {
            Engine::Univariate(Scorer::new(model, warmup_readings, threshold))
        }
    }

    pub fn model(&self) -> &Model {
        match self {
            Engine::Univariate(s) => s.model(),
            Engine::Multivariate(s) => s.model(),
            Engine::Records(s) => s.model(),
        }
    }

    /// Threads that score a batch's series (see [`Scorer::set_threads`]).
    pub fn set_threads(&mut self, threads: usize) {
        if let Engine::Univariate(s) = self {
            s.set_threads(threads);
        }
    }

    pub fn score(&mut self, batch: &DecodedBatch, ingested_at_us: i64) -> ScoredBatch {
        match self {
            Engine::Univariate(s) => s.score(batch, ingested_at_us),
            Engine::Multivariate(s) => s.score(batch, ingested_at_us),
            Engine::Records(s) => s.score(batch, ingested_at_us),
        }
    }

    /// The state to save.
    pub(crate) fn saved(&self) -> SavedEngineRef<'_> {
        self.saved_of(&|_| true, true)
    }

    /// The state of the devices `keep` names (`everything`: it names all).
    pub(crate) fn saved_of(
        &self,
        keep: &dyn Fn(&str) -> bool,
        everything: bool,
    ) -> SavedEngineRef<'_> {
        match self {
            Engine::Univariate(s) => SavedEngineRef::Univariate(SeriesList(
                s.series.iter().filter(|st| keep(&st.device)).collect(),
            )),
            Engine::Multivariate(s) => SavedEngineRef::Multivariate(s.saved(keep)),
            Engine::Records(s) => SavedEngineRef::Records(s.saved(keep, everything)),
        }
    }

    /// Adds saved series and devices this engine does not have (the ones it
    /// has keep their state); how many were added, `None` when the state is
    /// of the other family.
    pub(crate) fn merge(&mut self, saved: SavedEngine) -> Option<usize> {
        match (self, saved) {
            (Engine::Univariate(s), SavedEngine::Univariate(series)) => Some(s.merge(series)),
            (Engine::Multivariate(s), SavedEngine::Multivariate(devices)) => Some(s.merge(devices)),
            (Engine::Records(s), SavedEngine::Records(layouts)) => Some(s.merge(layouts)),
            _ => None,
        }
    }

    /// What saved state must have been saved for to be restored here: the
    /// detector, its window and metrics and its configuration.
    pub(crate) fn state_key(&self) -> String {
        let m = &self.model().manifest;
        format!(
            "{:?}/{}/{:?}/{:?}/{:?}",
            m.detector, m.input.window, m.input.metrics, m.novelty, m.state_monitor
        )
    }

    /// Restores saved state (false when it is of the other family).
    pub(crate) fn restore(&mut self, saved: SavedEngine) -> bool {
        match (self, saved) {
            (Engine::Univariate(s), SavedEngine::Univariate(series)) => {
                s.restore(series);
                true
            }
            (Engine::Multivariate(s), SavedEngine::Multivariate(devices)) => {
                s.restore(devices);
                true
            }
            (Engine::Records(s), SavedEngine::Records(layouts)) => {
                s.restore(layouts);
                true
            }
            _ => false,
        }
    }

    /// Replaces the model between batches, keeping per-series state when the
    /// input layout is unchanged; a model of the other family starts over.
    pub fn swap_model(&mut self, model: Model, warmup_readings: u32, threshold: Option<f64>) {
        let finds_records = model.state_monitor().is_some() && model.metrics().is_none();
        match (self, model.metrics().is_some(), finds_records) {
            (Engine::Univariate(s), false, false) => s.swap_model(model, threshold),
            (Engine::Multivariate(s), true, _) => s.swap_model(model, threshold),
            (Engine::Records(s), _, true) => s.swap_model(model, threshold),
            (engine, ..) => *engine = Engine::new(model, warmup_readings, threshold),
        }
    }
}
