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

use arrow_array::builder::{
    Float64Builder, StringBuilder, TimestampMicrosecondBuilder, UInt64Builder,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use schemas::envelope::DecodedBatch;
use schemas::tables::{self, ReadingView, status};
use serde::{Deserialize, Serialize};

use crate::model::{Model, ModelError};

/// Hash maps keyed by device and metric names, hit for every reading:
/// foldhash instead of SipHash (no untrusted peer chooses these keys to
/// collide: they passed the envelope checks, and a slow map only slows this
/// hub).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

pub mod multivariate;
pub mod router;
pub use multivariate::MultivariateScorer;
pub use router::Router;

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
#[derive(Debug, Clone, serde::Serialize)]
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
        for (device, metric, norm, window, scores, in_anomaly, novelty) in saved {
            let id = self.resolve(&device, &metric);
            let state = &mut self.series[id];
            state.norm = norm;
            state.window = window;
            state.scores = scores;
            state.in_anomaly = in_anomaly;
            state.novelty = novelty;
        }
    }

    /// The id of a series, created on first sight.
    fn resolve(&mut self, device: &str, metric: &str) -> usize {
        let known = self.by_device.get_key_value(device);
        if let Some((_, list)) = known
            && let Some(&(_, id)) = list.iter().find(|(m, _)| &**m == metric)
        {
            return id as usize;
        }
        let device: Arc<str> = known.map_or_else(|| Arc::from(device), |(d, _)| d.clone());
        let metric = match self.metric_names.get(metric) {
            Some(m) => m.clone(),
            None => {
                let m: Arc<str> = Arc::from(metric);
                self.metric_names.insert(m.clone());
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
            device: device.clone(),
            metric: metric.clone(),
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
        let ctx = BatchContext {
            gateway: &header.gateway,
            incarnation: header.incarnation,
            seq: header.seq,
            model_id: &self.model.manifest.id,
            model_version: &self.model.manifest.version,
            ingested_at_us,
        };
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

    /// Scores with the novelty family: one score per reading from the
    /// series' own detector; a reading at or above the frozen threshold is
    /// anomalous once the series is ready, and a run of them is one event.
    /// A forecaster named by the manifest (`expected_values`) gives events
    /// their expected value, run only on the windows of events.
    fn score_novelty(
        &mut self,
        batch: &DecodedBatch,
        view: &ReadingView<'_>,
        series_of: &[usize],
        order: &[u32],
        cfg: &detect::NoveltyConfig,
        ingested_at_us: i64,
    ) -> ScoredBatch {
        let n = order.len();
        let forecaster = self.model.expected_values().cloned();
        let params = NoveltyParams {
            cfg,
            threshold: self.threshold,
            warmup: self.warmup,
            clip: self.model.manifest.input.clip,
            explain: forecaster.is_some(),
        };
        // Each series' rows are one run of the output order.
        let mut runs: Vec<(usize, usize, usize)> = Vec::new(); // (series, first k, end k)
        for (k, &i) in order.iter().enumerate() {
            let series = series_of[i as usize];
            match runs.last_mut() {
                Some((s, _, end)) if *s == series => *end = k + 1,
                _ => runs.push((series, k, k + 1)),
            }
        }
        let readings = |first: usize, end: usize| -> Vec<(usize, f64, i64)> {
            (first..end)
                .map(|k| {
                    let i = order[k] as usize;
                    (k, view.value.value(i), view.ts.value(i))
                })
                .collect()
        };
        let threads = self.threads.max(1).min(runs.len().max(1));
        let passes: Vec<NoveltyPass> = if threads == 1 || n < PARALLEL_MIN_ROWS {
            let mut pass = NoveltyPass::default();
            for &(series, first, end) in &runs {
                novelty_run(
                    &params,
                    &mut self.series[series],
                    &readings(first, end),
                    &mut pass,
                );
            }
            vec![pass]
        } else {
            // Series are independent: shards of whole series, about equal
            // in rows, each on its own thread; the result is the same as
            // one thread's.
            let mut slots: Vec<Option<&mut SeriesState>> =
                self.series.iter_mut().map(Some).collect();
            let mut shards: Vec<Vec<SeriesWork<'_>>> = (0..threads).map(|_| Vec::new()).collect();
            let per_shard = n.div_ceil(threads);
            let (mut shard, mut in_shard) = (0, 0);
            for &(series, first, end) in &runs {
                if in_shard >= per_shard && shard + 1 < threads {
                    shard += 1;
                    in_shard = 0;
                }
                let state = slots[series]
                    .take()
                    .expect("a series has one run per batch");
                shards[shard].push((state, readings(first, end)));
                in_shard += end - first;
            }
            std::thread::scope(|scope| {
                let handles: Vec<_> = shards
                    .into_iter()
                    .map(|work| {
                        let params = &params;
                        scope.spawn(move || {
                            let mut pass = NoveltyPass::default();
                            for (state, rows) in work {
                                novelty_run(params, state, &rows, &mut pass);
                            }
                            pass
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("a scoring shard panicked"))
                    .collect()
            })
        };
        let mut status_at: Vec<&'static str> = vec![status::WARMING_UP; n];
        let mut score_at: Vec<Option<f64>> = vec![None; n];
        let mut anomaly_score_at: Vec<Option<f64>> = vec![None; n];
        let mut starts: Vec<EventStart> = Vec::new();
        let mut matrix: Vec<f32> = Vec::new();
        for pass in passes {
            for (k, st, score, anomaly) in pass.rows {
                status_at[k] = st;
                score_at[k] = score;
                anomaly_score_at[k] = anomaly;
            }
            starts.extend(pass.starts);
            matrix.extend(pass.matrix);
        }
        // Expected values of the events (a failure only leaves them out).
        let forecasts = match (&forecaster, matrix.is_empty()) {
            (Some(model), false) => match model.run(&matrix) {
                Ok(out) => out.forecast,
                Err(e) => {
                    tracing::warn!(error = %e, "the expected-values forecaster failed; events go without expected values");
                    None
                }
            },
            _ => None,
        };
        let bound = forecaster
            .as_ref()
            .map_or(0.0, |m| m.manifest.threshold.sqrt());
        let header = &batch.header;
        let mut events = Vec::with_capacity(starts.len());
        let mut forecast_row = 0;
        for (k, window_start, scale) in starts {
            let i = order[k] as usize;
            let state = &self.series[series_of[i]];
            let expected = scale.and_then(|(mean, std)| {
                let f = forecasts.as_ref()?.get(forecast_row).copied();
                forecast_row += 1;
                f.map(|f| (mean + f64::from(f) * std, bound * std))
            });
            let score = score_at[k].unwrap_or_default();
            events.push(AnomalyEvent {
                id: 0,
                device: state.device.to_string(),
                metric: state.metric.to_string(),
                ts: format_ts(view.ts.value(i)),
                ts_us: view.ts.value(i),
                value: view.value.value(i),
                score,
                threshold: self.threshold,
                severity: score / self.threshold,
                window_start_us: window_start,
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
        events.sort_by_key(|e| e.ts_us);
        let mut anomalies = ScoredColumns::new(events.len());
        for e in &events {
            anomalies.push_anomaly(e, e.window_start_us);
        }
        let ctx = BatchContext {
            gateway: &header.gateway,
            incarnation: header.incarnation,
            seq: header.seq,
            model_id: &self.model.manifest.id,
            model_version: &self.model.manifest.version,
            ingested_at_us,
        };
        let rows = ScoredRows {
            view,
            order,
            series_of,
            series: &self.series,
            status: &status_at,
            score: &score_at,
            anomaly_score: Some(&anomaly_score_at),
            threshold: self.threshold,
        };
        ScoredBatch {
            model_error: None,
            scored: rows.finish(&ctx),
            anomalies: anomalies.finish_anomalies(&ctx),
            events,
        }
    }
}

/// Batches with fewer readings are scored on one thread.
const PARALLEL_MIN_ROWS: usize = 2048;

/// One series of a shard and its readings `(output position, value, ts)`.
type SeriesWork<'a> = (&'a mut SeriesState, Vec<(usize, f64, i64)>);

/// What one novelty run needs besides the series.
struct NoveltyParams<'a> {
    cfg: &'a detect::NoveltyConfig,
    threshold: f64,
    warmup: u64,
    clip: f64,
    /// A forecaster explains events: keep the normalisation and queue the
    /// windows of events.
    explain: bool,
}

/// What scoring some series' readings found.
#[derive(Default)]
struct NoveltyPass {
    /// (output position, status, score, anomaly score) per reading.
    rows: Vec<(usize, &'static str, Option<f64>, Option<f64>)>,
    starts: Vec<EventStart>,
    /// The normalised windows of the events that the forecaster explains.
    matrix: Vec<f32>,
}

/// Scores one series' readings of a batch, `(output position, value, ts)`
/// in time order.
fn novelty_run(
    p: &NoveltyParams<'_>,
    state: &mut SeriesState,
    readings: &[(usize, f64, i64)],
    out: &mut NoveltyPass,
) {
    for &(k, x, ts) in readings {
        if !x.is_finite() {
            out.rows.push((k, status::UNSCORED, None, None));
            continue;
        }
        if state.window.newest_ts().is_some_and(|newest| ts < newest) {
            out.rows.push((k, status::LATE, None, None));
            continue;
        }
        state.window.push(x, ts);
        let verdict = state
            .novelty
            .get_or_insert_with(|| Box::new(detect::Novelty::new(p.cfg)))
            .update(p.cfg, x);
        if !verdict.ready {
            state.in_anomaly = false;
            out.rows
                .push((k, status::WARMING_UP, None, Some(verdict.score)));
        } else {
            let anomalous = verdict.score >= p.threshold;
            let st = if anomalous {
                status::ANOMALOUS
            } else {
                status::OK
            };
            out.rows
                .push((k, st, Some(verdict.score), Some(verdict.score)));
            if anomalous && !state.in_anomaly {
                let window_start = state.window.start_ts().unwrap_or(ts);
                // The forecaster's view of the window before this reading
                // joined the normalisation.
                let scale = (p.explain && state.norm.count >= p.warmup && state.window.is_full())
                    .then(|| {
                        let (mean, std) = (state.norm.mean, state.norm.std(p.warmup));
                        let row = out.matrix.len();
                        out.matrix.resize(row + state.window.window, 0.0);
                        normalise_into(
                            &mut out.matrix[row..],
                            state.window.values(),
                            mean,
                            std,
                            p.clip,
                        );
                        (mean, std)
                    });
                out.starts.push((k, window_start, scale));
            }
            state.in_anomaly = anomalous;
        }
        if p.explain {
            if state.norm.count < p.warmup {
                state.norm.learn_warmup(x, p.warmup);
            } else {
                state.norm.follow(x, p.warmup);
            }
        }
    }
}

/// An event found by the novelty route: its output position, its window's
/// start, and the (mean, std) its window was normalised with for the
/// forecaster (when the forecaster can explain it).
type EventStart = (usize, i64, Option<(f64, f64)>);

/// The scored table's columns from a batch's readings taken in `order`,
/// with each output row's status and score. Device, metric and status come
/// keyed (dictionary arrays: a 4-byte key per row into the batch's distinct
/// names), taken from the series the rows belong to; numbers are copied once.
struct ScoredRows<'a> {
    view: &'a ReadingView<'a>,
    order: &'a [u32],
    /// Series id of each input row.
    series_of: &'a [usize],
    series: &'a [SeriesState],
    status: &'a [&'static str],
    score: &'a [Option<f64>],
    /// The per-reading score in [0, 1], for detectors that produce one.
    anomaly_score: Option<&'a [Option<f64>]>,
    threshold: f64,
}

impl ScoredRows<'_> {
    fn finish(&self, ctx: &BatchContext<'_>) -> RecordBatch {
        use arrow_array::{Float64Array, TimestampMicrosecondArray};
        let n = self.order.len();
        // The rows come grouped by device, each device's by series: a new
        // device key per device run, a metric lookup per series run.
        let mut device_keys: Vec<u32> = Vec::with_capacity(n);
        let mut devices: Vec<&str> = Vec::new();
        let mut metric_keys: Vec<u32> = Vec::with_capacity(n);
        let mut metrics: Vec<&str> = Vec::new();
        // Metric names are interned: one pointer per name.
        let mut metric_key_of: FastMap<*const u8, u32> = FastMap::default();
        let (mut last_device, mut last_series, mut metric_key) = (None, None, 0);
        for &i in self.order {
            let id = self.series_of[i as usize];
            let series = &self.series[id];
            if last_device != Some(series.device_index) {
                devices.push(&series.device);
                last_device = Some(series.device_index);
            }
            if last_series != Some(id) {
                metric_key = *metric_key_of
                    .entry(series.metric.as_ptr())
                    .or_insert_with(|| {
                        metrics.push(&series.metric);
                        (metrics.len() - 1) as u32
                    });
                last_series = Some(id);
            }
            device_keys.push((devices.len() - 1) as u32);
            metric_keys.push(metric_key);
        }
        let ts: Vec<i64> = self
            .order
            .iter()
            .map(|&i| self.view.ts.value(i as usize))
            .collect();
        let value: Vec<f64> = self
            .order
            .iter()
            .map(|&i| self.view.value.value(i as usize))
            .collect();
        let threshold: Float64Array = self
            .score
            .iter()
            .map(|s| s.map(|_| self.threshold))
            .collect();
        scored_table(
            [
                keyed_strings(device_keys, &devices),
                keyed_strings(metric_keys, &metrics),
                Arc::new(TimestampMicrosecondArray::from(ts).with_timezone(tables::UTC)),
                Arc::new(Float64Array::from(value)),
                keyed_statuses(self.status),
                Arc::new(Float64Array::from(self.score.to_vec())),
                Arc::new(threshold),
            ],
            unit_column(self.view.unit, self.order),
            match self.anomaly_score {
                Some(a) => Arc::new(Float64Array::from(a.to_vec())),
                None => arrow_array::new_null_array(&arrow_schema::DataType::Float64, n),
            },
            ctx,
        )
    }
}

/// A keyed string column: row `i` holds `values[keys[i]]` (`values`
/// distinct, every one used).
fn keyed_strings(keys: Vec<u32>, values: &[&str]) -> ArrayRef {
    let values: ArrayRef = Arc::new(arrow_array::StringArray::from_iter_values(values));
    Arc::new(
        arrow_array::DictionaryArray::<arrow_array::types::UInt32Type>::try_new(
            keys.into(),
            values,
        )
        .expect("keys index their values"),
    )
}

/// The status column, keyed over the statuses the batch uses.
fn keyed_statuses(statuses: &[&'static str]) -> ArrayRef {
    let mut used: Vec<&str> = Vec::new();
    let keys = statuses
        .iter()
        .map(
            |&st| match used.iter().position(|u| std::ptr::eq(*u, st) || *u == st) {
                Some(k) => k as u32,
                None => {
                    used.push(st);
                    (used.len() - 1) as u32
                }
            },
        )
        .collect();
    keyed_strings(keys, &used)
}

/// `out[i] = clamp((values[i] - mean) / std, -clip, clip)` as f32, in a
/// form the compiler vectorises (this runs for every value of every window).
fn normalise_into(out: &mut [f32], values: &[f64], mean: f64, std: f64, clip: f64) {
    let inverse = 1.0 / std;
    for (o, v) in out.iter_mut().zip(values) {
        let x = (v - mean) * inverse;
        // Compare-and-select rather than f64::min/max, whose NaN rules keep
        // the compiler from using the plain vector min/max instructions. A
        // NaN (impossible for the finite values a window holds) becomes
        // `clip` here, never a NaN input to the model.
        let x = if x < clip { x } else { clip };
        let x = if x > -clip { x } else { -clip };
        *o = x as f32;
    }
}

pub fn format_ts(ts_us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(ts_us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default()
}

/// The unit column of scored rows taken, in order, from input rows `rows`
/// of a batch whose readings may carry units.
fn unit_column(unit: Option<&arrow_array::StringArray>, rows: &[u32]) -> ArrayRef {
    match unit {
        Some(units) => {
            arrow_select::take::take(units, &arrow_array::UInt32Array::from(rows.to_vec()), None)
                .expect("row indices are in range")
        }
        None => arrow_array::new_null_array(&arrow_schema::DataType::Utf8, rows.len()),
    }
}

/// A batch of the scored table: the per-reading columns (device, metric,
/// ts, value, status, score, threshold), the batch's context, the
/// readings' units and their anomaly scores. String columns may come plain
/// or keyed; the batch's schema says which.
fn scored_table(
    readings: [ArrayRef; 7],
    unit: ArrayRef,
    anomaly_score: ArrayRef,
    ctx: &BatchContext<'_>,
) -> RecordBatch {
    let [model_id, model_version, gateway, incarnation, seq, ingested] =
        context_columns(readings[0].len(), ctx);
    let mut columns = readings.to_vec();
    columns.extend([
        model_id,
        model_version,
        gateway,
        incarnation,
        seq,
        ingested,
        unit,
        anomaly_score,
    ]);
    RecordBatch::try_new(schema_of(&tables::scored_schema(), &columns), columns)
        .expect("columns match the scored schema")
}

/// `table`'s schema with each field's type taken from its column (a string
/// field may hold a keyed column).
fn schema_of(table: &arrow_schema::Schema, columns: &[ArrayRef]) -> arrow_schema::SchemaRef {
    let fields: Vec<arrow_schema::Field> = table
        .fields()
        .iter()
        .zip(columns)
        .map(|(field, column)| {
            field
                .as_ref()
                .clone()
                .with_data_type(column.data_type().clone())
        })
        .collect();
    Arc::new(arrow_schema::Schema::new_with_metadata(
        fields,
        table.metadata().clone(),
    ))
}

/// The columns every row of a batch shares: model, gateway, batch identity,
/// ingestion time (the strings keyed: one value, a zero key per row).
fn context_columns(n: usize, ctx: &BatchContext<'_>) -> [ArrayRef; 6] {
    let repeat_str = |s: &str| -> ArrayRef { keyed_strings(vec![0; n], &[s]) };
    let repeat_u64 = |v: u64| -> ArrayRef {
        let mut b = UInt64Builder::with_capacity(n);
        b.append_value_n(v, n);
        Arc::new(b.finish())
    };
    let mut ingested = TimestampMicrosecondBuilder::with_capacity(n).with_timezone(tables::UTC);
    ingested.append_value_n(ctx.ingested_at_us, n);
    [
        repeat_str(ctx.model_id),
        repeat_str(ctx.model_version),
        repeat_str(ctx.gateway),
        repeat_u64(ctx.incarnation),
        repeat_u64(ctx.seq),
        Arc::new(ingested.finish()),
    ]
}

/// Row indices of a batch grouped by device, then by metric (each numbered
/// in order of first appearance), each series in time order: the order of
/// [`ScoredBatch::scored`].
fn grouped_order(view: &ReadingView<'_>) -> Vec<u32> {
    let number = |col| {
        crate::names::NumberedNames::of(&[col])
            .ids
            .pop()
            .unwrap_or_default()
    };
    let (device, metric) = (
        number(crate::names::StrColumn::Plain(view.device)),
        number(crate::names::StrColumn::Plain(view.metric)),
    );
    let mut order: Vec<u32> = (0..view.device.len() as u32).collect();
    order.sort_by_key(|&i| {
        let i = i as usize;
        (device[i], metric[i], view.ts.value(i))
    });
    order
}

struct BatchContext<'a> {
    gateway: &'a str,
    incarnation: u64,
    seq: u64,
    model_id: &'a str,
    model_version: &'a str,
    ingested_at_us: i64,
}

/// Column builders shared by the scored and anomaly tables.
struct ScoredColumns {
    device: StringBuilder,
    metric: StringBuilder,
    ts: TimestampMicrosecondBuilder,
    value: Float64Builder,
    status: StringBuilder,
    score: Float64Builder,
    anomaly_score: Float64Builder,
    threshold: Float64Builder,
    severity: Float64Builder,
    window_start: TimestampMicrosecondBuilder,
    expected: Float64Builder,
    expected_low: Float64Builder,
    expected_high: Float64Builder,
    contributions: StringBuilder,
    /// The input row of each scored row (for columns taken whole, the unit).
    rows: Vec<u32>,
    len: usize,
}

impl ScoredColumns {
    fn new(rows: usize) -> Self {
        Self {
            device: StringBuilder::with_capacity(rows, rows * 8),
            metric: StringBuilder::with_capacity(rows, rows * 8),
            ts: TimestampMicrosecondBuilder::with_capacity(rows).with_timezone(tables::UTC),
            value: Float64Builder::with_capacity(rows),
            status: StringBuilder::with_capacity(rows, rows * 2),
            score: Float64Builder::with_capacity(rows),
            anomaly_score: Float64Builder::with_capacity(rows),
            threshold: Float64Builder::with_capacity(rows),
            severity: Float64Builder::new(),
            window_start: TimestampMicrosecondBuilder::new().with_timezone(tables::UTC),
            expected: Float64Builder::new(),
            expected_low: Float64Builder::new(),
            expected_high: Float64Builder::new(),
            contributions: StringBuilder::new(),
            rows: Vec::with_capacity(rows),
            len: 0,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn push_scored(
        &mut self,
        row: u32,
        device: &str,
        metric: &str,
        ts: i64,
        value: f64,
        st: &str,
        score: Option<f64>,
        anomaly_score: Option<f64>,
        threshold: f64,
    ) {
        self.device.append_value(device);
        self.metric.append_value(metric);
        self.ts.append_value(ts);
        self.value.append_value(value);
        self.status.append_value(st);
        self.score.append_option(score);
        self.anomaly_score.append_option(anomaly_score);
        self.threshold.append_option(score.map(|_| threshold));
        self.rows.push(row);
        self.len += 1;
    }

    fn push_anomaly(&mut self, e: &AnomalyEvent, window_start: i64) {
        self.device.append_value(&e.device);
        self.metric.append_value(&e.metric);
        self.ts.append_value(e.ts_us);
        self.value.append_value(e.value);
        self.score.append_value(e.score);
        self.threshold.append_value(e.threshold);
        self.severity.append_value(e.severity);
        self.window_start.append_value(window_start);
        self.expected.append_option(e.expected);
        self.expected_low.append_option(e.expected_low);
        self.expected_high.append_option(e.expected_high);
        self.contributions.append_option(e.contributions_json());
        self.len += 1;
    }

    fn finish_scored(
        mut self,
        unit: Option<&arrow_array::StringArray>,
        ctx: &BatchContext<'_>,
    ) -> RecordBatch {
        let unit = unit_column(unit, &self.rows);
        scored_table(
            [
                Arc::new(self.device.finish()),
                Arc::new(self.metric.finish()),
                Arc::new(self.ts.finish()),
                Arc::new(self.value.finish()),
                Arc::new(self.status.finish()),
                Arc::new(self.score.finish()),
                Arc::new(self.threshold.finish()),
            ],
            unit,
            Arc::new(self.anomaly_score.finish()),
            ctx,
        )
    }

    fn finish_anomalies(mut self, ctx: &BatchContext<'_>) -> RecordBatch {
        let [model_id, model_version, gateway, incarnation, seq, ingested] =
            context_columns(self.len, ctx);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.device.finish()),
            Arc::new(self.metric.finish()),
            Arc::new(self.ts.finish()),
            Arc::new(self.value.finish()),
            Arc::new(self.score.finish()),
            Arc::new(self.threshold.finish()),
            Arc::new(self.severity.finish()),
            Arc::new(self.window_start.finish()),
            model_id,
            model_version,
            gateway,
            incarnation,
            seq,
            ingested,
            Arc::new(self.expected.finish()),
            Arc::new(self.expected_low.finish()),
            Arc::new(self.expected_high.finish()),
            Arc::new(self.contributions.finish()),
        ];
        RecordBatch::try_new(schema_of(&tables::anomaly_schema(), &columns), columns)
            .expect("columns match the anomaly schema")
    }
}

#[cfg(test)]
mod tests;

/// One series' state as saved: device, metric, normalisation, window, score
/// history, whether it is in an anomaly, its novelty detector.
type SavedSeries = (
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
pub(crate) struct SeriesList<'a>(&'a [SeriesState]);

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

/// An engine's state, for saving (borrowed) ...
#[derive(Debug, Serialize)]
pub(crate) enum SavedEngineRef<'a> {
    Univariate(SeriesList<'a>),
    Multivariate(multivariate::DeviceList<'a>),
}

/// ... and as read back (the same layout, owned).
#[derive(Debug, Deserialize)]
pub(crate) enum SavedEngine {
    Univariate(Vec<SavedSeries>),
    Multivariate(Vec<multivariate::SavedDevice>),
}

/// A scorer for one model, whichever its family (univariate models score
/// series, multivariate ones score a device's records).
#[derive(Debug)]
pub enum Engine {
    Univariate(Scorer),
    Multivariate(MultivariateScorer),
}

impl Engine {
    /// Picks the family from the model's manifest (`input.metrics`).
    pub fn new(model: Model, warmup_readings: u32, threshold: Option<f64>) -> Self {
        if model.metrics().is_some() {
            Engine::Multivariate(MultivariateScorer::new(model, warmup_readings, threshold))
        } else {
            Engine::Univariate(Scorer::new(model, warmup_readings, threshold))
        }
    }

    pub fn model(&self) -> &Model {
        match self {
            Engine::Univariate(s) => s.model(),
            Engine::Multivariate(s) => s.model(),
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
        }
    }

    /// The state to save.
    pub(crate) fn saved(&self) -> SavedEngineRef<'_> {
        match self {
            Engine::Univariate(s) => SavedEngineRef::Univariate(SeriesList(&s.series)),
            Engine::Multivariate(s) => SavedEngineRef::Multivariate(s.saved()),
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
            _ => false,
        }
    }

    /// Replaces the model between batches, keeping per-series state when the
    /// input layout is unchanged; a model of the other family starts over.
    pub fn swap_model(&mut self, model: Model, warmup_readings: u32, threshold: Option<f64>) {
        match (self, model.metrics().is_some()) {
            (Engine::Univariate(s), false) => s.swap_model(model, threshold),
            (Engine::Multivariate(s), true) => s.swap_model(model, threshold),
            (engine, _) => *engine = Engine::new(model, warmup_readings, threshold),
        }
    }
}
