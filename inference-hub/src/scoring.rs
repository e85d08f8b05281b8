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

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use arrow_array::builder::{
    Float64Builder, StringBuilder, TimestampMicrosecondBuilder, UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use schemas::envelope::DecodedBatch;
use schemas::tables::{self, ReadingView, status};

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
#[derive(Debug, Default)]
struct ScoreStats {
    n: u64,
    mean: f64,
    var: f64,
}

impl ScoreStats {
    /// z-value of `l` against the history (None while too short).
    fn z(&self, l: f64) -> Option<f64> {
        (self.n >= MIN_SCORE_HISTORY).then(|| (l - self.mean) / self.var.max(1e-6).sqrt())
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

#[derive(Debug, Default)]
struct SeriesState {
    scores: ScoreStats,
    /// The previous reading was anomalous: a run of anomalous readings (a
    /// spike stays in the window for `window` readings) is one event.
    in_anomaly: bool,
    count: u64,
    mean: f64,
    /// Welford's sum of squares during warm-up, then the variance itself.
    m2: f64,
    recent: VecDeque<f64>,
    /// Timestamps of `recent`.
    recent_ts: VecDeque<i64>,
}

impl SeriesState {
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

/// The latest state of one series, for the API.
#[derive(Debug, Clone)]
pub struct SeriesUpdate {
    pub device: Arc<str>,
    pub metric: Arc<str>,
    pub ts_us: i64,
    pub value: f64,
    pub score: Option<f64>,
    pub status: &'static str,
    /// `<model id> <version>` that scored it.
    pub model: Arc<str>,
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
#[derive(Debug)]
pub struct ScoredBatch {
    /// Set when the model failed; the affected rows are `unscored`.
    pub model_error: Option<ModelError>,
    pub scored: RecordBatch,
    pub anomalies: RecordBatch,
    pub events: Vec<AnomalyEvent>,
    pub updates: Vec<SeriesUpdate>,
}

#[derive(Debug)]
pub struct Scorer {
    model: Model,
    /// `<id> <version>`, as series updates report it.
    model_label: Arc<str>,
    threshold: f64,
    warmup: u64,
    series: FastMap<(Arc<str>, Arc<str>), SeriesState>,
    /// Interned names: device and metric strings repeat in every batch.
    names: FastMap<Box<str>, Arc<str>>,
}

impl Scorer {
    pub fn new(model: Model, warmup_readings: u32, threshold: Option<f64>) -> Self {
        let warmup = u64::from(warmup_readings).max(model.window() as u64).max(2);
        Self {
            threshold: threshold.unwrap_or(model.manifest.threshold),
            model_label: model_label(&model),
            model,
            warmup,
            series: FastMap::default(),
            names: FastMap::default(),
        }
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Replaces the model (hot reload). Series state is kept when the new
    /// model reads windows of the same length, else it is learned anew.
    pub fn swap_model(&mut self, model: Model, threshold: Option<f64>) {
        if model.window() != self.model.window() {
            self.series.clear();
        }
        self.threshold = threshold.unwrap_or(model.manifest.threshold);
        self.warmup = self.warmup.max(model.window() as u64);
        self.model_label = model_label(&model);
        self.model = model;
    }

    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.names.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.names.insert(s.into(), a.clone());
        a
    }

    pub fn score(&mut self, batch: &DecodedBatch, ingested_at_us: i64) -> ScoredBatch {
        let view =
            ReadingView::try_new(&batch.readings).expect("decoder verified the reading columns");
        let n = batch.readings.num_rows();
        let w = self.model.window();
        let clip = self.model.manifest.input.clip;
        let warmup = self.warmup;

        // Pass 1: update windows, collect the windows that need a score.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| view.ts.value(i));
        let mut keys = vec![None; n];
        let mut scored_rows: Vec<usize> = Vec::new();
        let mut queued = vec![false; n];
        let mut late = vec![false; n];
        let mut window_start_of = vec![0i64; n];
        // The (mean, std) each scored window was normalised with.
        let mut scales: Vec<(f64, f64)> = Vec::new();
        let mut matrix: Vec<f32> = Vec::new();
        for &i in &order {
            let key = (
                self.intern(view.device.value(i)),
                self.intern(view.metric.value(i)),
            );
            let (x, ts) = (view.value.value(i), view.ts.value(i));
            let state = self.series.entry(key.clone()).or_default();
            keys[i] = Some(key);
            if state.recent_ts.back().is_some_and(|&newest| ts < newest) {
                late[i] = true;
                continue;
            }
            state.recent.push_back(x);
            state.recent_ts.push_back(ts);
            if state.recent.len() > w {
                state.recent.pop_front();
                state.recent_ts.pop_front();
            }
            window_start_of[i] = state.recent_ts.front().copied().unwrap_or(ts);
            if state.count < warmup {
                state.learn_warmup(x, warmup);
            } else {
                let (mean, std) = (state.mean, state.std(warmup));
                matrix.extend(
                    state
                        .recent
                        .iter()
                        .map(|v| ((v - mean) / std).clamp(-clip, clip) as f32),
                );
                scored_rows.push(i);
                queued[i] = true;
                scales.push((mean, std));
            }
        }
        let keys: Vec<(Arc<str>, Arc<str>)> = keys
            .into_iter()
            .map(|k| k.expect("every row keyed"))
            .collect();
        // A model failure must not lose durable readings: they are archived
        // as `unscored` and the failure is logged and counted by the caller.
        let (output, model_error) = match self.model.run(&matrix) {
            Ok(o) => (o, None),
            Err(e) => (crate::model::ModelOutput::default(), Some(e)),
        };

        // Pass 2: statuses, normalisation follow-up, output columns.
        let mut score_of: Vec<Option<f64>> = vec![None; n];
        let mut expected_of: Vec<Option<(f64, f64)>> = vec![None; n];
        let bound = self.threshold.sqrt();
        for (k, (row, s)) in scored_rows.iter().zip(&output.scores).enumerate() {
            score_of[*row] = Some(f64::from(*s));
            if let Some(f) = output.forecast.as_ref().and_then(|f| f.get(k)) {
                let (mean, std) = scales[k];
                expected_of[*row] = Some((mean + f64::from(*f) * std, bound * std));
            }
        }
        let header = &batch.header;
        let mut out = ScoredColumns::new(n);
        let mut anomalies = ScoredColumns::new(0);
        let mut events = Vec::new();
        let mut updates: FastMap<(Arc<str>, Arc<str>), SeriesUpdate> = FastMap::default();
        for &i in &order {
            let (device, metric) = &keys[i];
            let (ts, x) = (view.ts.value(i), view.value.value(i));
            let st = match (score_of[i], self.series.get_mut(&keys[i])) {
                _ if late[i] => status::LATE,
                (None, _) if model_error.is_some() && queued[i] => status::UNSCORED,
                (Some(score), Some(state)) => {
                    let l = score.ln_1p();
                    let z = state.scores.z(l);
                    state.scores.update(l);
                    match z {
                        None => status::WARMING_UP,
                        Some(z) if score > self.threshold && z > SCORE_Z_LIMIT => status::ANOMALOUS,
                        Some(_) => status::OK,
                    }
                }
                _ => status::WARMING_UP,
            };
            // Every scored reading, anomalous or not, moves the normalisation:
            // following only "normal" readings locks a series that enters a
            // noisier regime into flagging everything, for ever.
            if st != status::WARMING_UP
                && st != status::LATE
                && let Some(state) = self.series.get_mut(&keys[i])
            {
                state.follow(x, warmup);
            }
            out.push_scored(device, metric, ts, x, st, score_of[i], self.threshold);
            let starts_event = match self.series.get_mut(&keys[i]) {
                Some(state) if score_of[i].is_some() => {
                    let starts = st == status::ANOMALOUS && !state.in_anomaly;
                    state.in_anomaly = st == status::ANOMALOUS;
                    starts
                }
                _ => false,
            };
            if let (true, Some(score)) = (starts_event, score_of[i]) {
                let window_start = window_start_of[i];
                let event = AnomalyEvent {
                    id: 0,
                    device: device.to_string(),
                    metric: metric.to_string(),
                    ts: format_ts(ts),
                    ts_us: ts,
                    value: x,
                    score,
                    threshold: self.threshold,
                    severity: score / self.threshold,
                    window_start_us: window_start,
                    model_id: self.model.manifest.id.clone(),
                    model_version: self.model.manifest.version.clone(),
                    gateway: header.gateway.clone(),
                    seq: header.seq,
                    expected: expected_of[i].map(|(e, _)| e),
                    expected_low: expected_of[i].map(|(e, b)| e - b),
                    expected_high: expected_of[i].map(|(e, b)| e + b),
                    contributions: None,
                };
                anomalies.push_anomaly(&event, window_start);
                events.push(event);
            }
            let newer = updates.get(&keys[i]).is_none_or(|u| u.ts_us <= ts);
            if newer {
                updates.insert(
                    keys[i].clone(),
                    SeriesUpdate {
                        device: device.clone(),
                        metric: metric.clone(),
                        ts_us: ts,
                        value: x,
                        score: score_of[i],
                        status: st,
                        model: self.model_label.clone(),
                    },
                );
            }
        }
        let ctx = BatchContext {
            gateway: &header.gateway,
            incarnation: header.incarnation,
            seq: header.seq,
            model_id: &self.model.manifest.id,
            model_version: &self.model.manifest.version,
            ingested_at_us,
        };
        ScoredBatch {
            model_error,
            scored: out.finish_scored(&ctx),
            anomalies: anomalies.finish_anomalies(&ctx),
            events,
            updates: updates.into_values().collect(),
        }
    }
}

/// How series updates name a model: `<id> <version>`.
fn model_label(model: &Model) -> Arc<str> {
    Arc::from(format!("{} {}", model.manifest.id, model.manifest.version))
}

pub fn format_ts(ts_us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(ts_us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default()
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
    threshold: Float64Builder,
    severity: Float64Builder,
    window_start: TimestampMicrosecondBuilder,
    expected: Float64Builder,
    expected_low: Float64Builder,
    expected_high: Float64Builder,
    contributions: StringBuilder,
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
            threshold: Float64Builder::with_capacity(rows),
            severity: Float64Builder::new(),
            window_start: TimestampMicrosecondBuilder::new().with_timezone(tables::UTC),
            expected: Float64Builder::new(),
            expected_low: Float64Builder::new(),
            expected_high: Float64Builder::new(),
            contributions: StringBuilder::new(),
            len: 0,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn push_scored(
        &mut self,
        device: &str,
        metric: &str,
        ts: i64,
        value: f64,
        st: &str,
        score: Option<f64>,
        threshold: f64,
    ) {
        self.device.append_value(device);
        self.metric.append_value(metric);
        self.ts.append_value(ts);
        self.value.append_value(value);
        self.status.append_value(st);
        self.score.append_option(score);
        self.threshold.append_option(score.map(|_| threshold));
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

    fn context_columns(&self, ctx: &BatchContext<'_>) -> [ArrayRef; 6] {
        let n = self.len;
        let repeat_str = |s: &str| -> ArrayRef {
            Arc::new(arrow_array::StringArray::from_iter_values(
                std::iter::repeat_n(s, n),
            ))
        };
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

    fn finish_scored(mut self, ctx: &BatchContext<'_>) -> RecordBatch {
        let [model_id, model_version, gateway, incarnation, seq, ingested] =
            self.context_columns(ctx);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.device.finish()),
            Arc::new(self.metric.finish()),
            Arc::new(self.ts.finish()),
            Arc::new(self.value.finish()),
            Arc::new(self.status.finish()),
            Arc::new(self.score.finish()),
            Arc::new(self.threshold.finish()),
            model_id,
            model_version,
            gateway,
            incarnation,
            seq,
            ingested,
        ];
        RecordBatch::try_new(tables::scored_schema(), columns)
            .expect("columns match the scored schema")
    }

    fn finish_anomalies(mut self, ctx: &BatchContext<'_>) -> RecordBatch {
        let [model_id, model_version, gateway, incarnation, seq, ingested] =
            self.context_columns(ctx);
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
        RecordBatch::try_new(tables::anomaly_schema(), columns)
            .expect("columns match the anomaly schema")
    }
}

#[cfg(test)]
mod tests;

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

    pub fn score(&mut self, batch: &DecodedBatch, ingested_at_us: i64) -> ScoredBatch {
        match self {
            Engine::Univariate(s) => s.score(batch, ingested_at_us),
            Engine::Multivariate(s) => s.score(batch, ingested_at_us),
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
