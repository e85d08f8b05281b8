//! Scoring with a multivariate model: one device's metrics together.
//!
//! The model's manifest lists the metrics of a record (`input.metrics`).
//! Readings of one device with the same timestamp are assembled into a record;
//! a complete record enters the device's window of the last `window` records.
//! Each metric is normalised with its own warm-up statistics (exactly as a
//! univariate series is), so a record is scored once every metric has warmed
//! up and the window is full. The decision follows the manifest: `adaptive`
//! is the same two tests as the univariate path (model score above the
//! calibrated threshold *and* extreme for this device's own score history,
//! normalisation following the data), `fixed` is the threshold alone with the
//! warm-up normalisation kept (state monitoring). It is made per record;
//! every reading of the record gets the record's status and score.
//!
//! An anomaly event names the metric that contributed most, and carries every
//! metric's share of the score plus the expected value and bounds of that
//! metric. Readings of a record that is still incomplete when its batch ends
//! are archived as `unscored` (a device normally sends a record in one
//! message); a record whose remaining metrics arrive later is scored then. A
//! record older than one already scored is `late`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use schemas::envelope::DecodedBatch;
use schemas::tables::{ReadingView, status};

use super::{
    AnomalyEvent, BatchContext, Normalisation, ScoreStats, ScoredBatch, ScoredColumns, format_ts,
};
use crate::model::{Decision, Model, ModelOutput};

/// Incomplete records kept per device (older ones are given up).
const MAX_PENDING_RECORDS: usize = 16;

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct DeviceState {
    norms: Vec<Normalisation>,
    /// Records being assembled: timestamp -> one value per metric.
    pending: BTreeMap<i64, Vec<Option<f64>>>,
    /// The last `window` complete records: (timestamp, values).
    window: VecDeque<(i64, Vec<f64>)>,
    records: u64,
    scores: ScoreStats,
    in_anomaly: bool,
    /// The state monitor (state-monitor models), created on first sight.
    monitor: Option<Box<detect::StateMonitor>>,
}

/// One device's state as saved.
pub(crate) type SavedDevice = (String, DeviceState);

/// The devices of a scorer, serialised as [`SavedDevice`]s without copying.
#[derive(Debug)]
pub(crate) struct DeviceList<'a>(Vec<(&'a str, &'a DeviceState)>);

impl DeviceList<'_> {
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl serde::Serialize for DeviceList<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter())
    }
}

/// A complete record waiting for its score.
struct Queued<'a> {
    device: &'a str,
    ts: i64,
    window_start: i64,
    values: Vec<f64>,
    /// Each metric's (mean, std) the window was normalised with.
    scales: Vec<(f64, f64)>,
}

#[derive(Debug)]
pub struct MultivariateScorer {
    model: Model,
    threshold: f64,
    warmup: u64,
    /// The state monitor's configuration, when the model is one.
    monitor: Option<Arc<detect::StateMonitorConfig>>,
    metrics: Vec<Arc<str>>,
    devices: HashMap<Arc<str>, DeviceState>,
}

impl MultivariateScorer {
    /// `model` must list its metrics (`Model::metrics`).
    pub fn new(model: Model, warmup_readings: u32, threshold: Option<f64>) -> Self {
        let metrics = model
            .metrics()
            .expect("a multivariate model lists its metrics")
            .iter()
            .map(|m| Arc::from(m.as_str()))
            .collect();
        let warmup = u64::from(warmup_readings).max(model.window() as u64).max(2);
        Self {
            threshold: threshold.unwrap_or(model.manifest.threshold),
            monitor: model.state_monitor().cloned().map(Arc::new),
            model,
            warmup,
            metrics,
            devices: HashMap::new(),
        }
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Replaces the model (hot reload); device state is kept when the new
    /// model reads the same metrics in windows of the same length.
    pub fn swap_model(&mut self, model: Model, threshold: Option<f64>) {
        let same_layout = model.window() == self.model.window()
            && model.state_monitor() == self.monitor.as_deref()
            && model.metrics().is_some_and(|m| {
                m.len() == self.metrics.len() && m.iter().zip(&self.metrics).all(|(a, b)| a == &**b)
            });
        if !same_layout {
            *self = Self::new(model, self.warmup as u32, threshold);
            return;
        }
        self.threshold = threshold.unwrap_or(model.manifest.threshold);
        self.model = model;
    }

    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    /// The state of the devices `keep` names, for saving.
    pub(crate) fn saved(&self, keep: &dyn Fn(&str) -> bool) -> DeviceList<'_> {
        DeviceList(
            self.devices
                .iter()
                .filter(|(device, _)| keep(device))
                .map(|(device, state)| (&**device, state))
                .collect(),
        )
    }

    /// Adds saved devices this scorer does not have (the ones it has keep
    /// their state); how many were added.
    pub(crate) fn merge(&mut self, saved: Vec<SavedDevice>) -> usize {
        let mut added = 0;
        for (device, state) in saved {
            if !self.devices.contains_key(device.as_str()) {
                self.devices.insert(Arc::from(device), state);
                added += 1;
            }
        }
        added
    }

    /// Replaces every device's state with saved ones.
    pub(crate) fn restore(&mut self, saved: Vec<SavedDevice>) {
        self.devices = saved
            .into_iter()
            .map(|(device, state)| (Arc::from(device), state))
            .collect();
    }

    pub fn score(&mut self, batch: &DecodedBatch, ingested_at_us: i64) -> ScoredBatch {
        let view =
            ReadingView::try_new(&batch.readings).expect("decoder verified the reading columns");
        let n = batch.readings.num_rows();
        let (f, w, warmup) = (self.metrics.len(), self.model.window(), self.warmup);
        let clip = self.model.manifest.input.clip;

        // Pass 1: assemble records; learn warm-ups; queue full windows.
        // Keys borrow the batch's names: nothing is allocated per reading.
        let mut row_record: Vec<Option<(&str, i64)>> = vec![None; n];
        let mut record_status: HashMap<(&str, i64), &'static str> = HashMap::new();
        let mut record_score: HashMap<(&str, i64), f64> = HashMap::new();
        let mut record_anomaly_score: HashMap<(&str, i64), f64> = HashMap::new();
        let mut events = Vec::new();
        let mut anomalies = ScoredColumns::new(0);
        let mut queued: Vec<Queued> = Vec::new();
        let mut matrix: Vec<f32> = Vec::new();
        for (i, slot) in row_record.iter_mut().enumerate() {
            let Some(m) = self
                .metrics
                .iter()
                .position(|m| &**m == view.metric.value(i))
            else {
                continue;
            };
            let device = view.device.value(i);
            let ts = view.ts.value(i);
            *slot = Some((device, ts));
            if !self.devices.contains_key(device) {
                self.devices.insert(
                    Arc::from(device),
                    DeviceState {
                        norms: (0..f).map(|_| Normalisation::default()).collect(),
                        ..DeviceState::default()
                    },
                );
            }
            let state = self.devices.get_mut(device).expect("inserted");
            let record = state.pending.entry(ts).or_insert_with(|| vec![None; f]);
            record[m] = Some(view.value.value(i));
            if record.iter().any(Option::is_none) {
                while state.pending.len() > MAX_PENDING_RECORDS {
                    state.pending.pop_first();
                }
                continue;
            }
            let values: Vec<f64> = state
                .pending
                .remove(&ts)
                .expect("present")
                .into_iter()
                .map(|v| v.expect("complete"))
                .collect();
            if state.window.back().is_some_and(|(newest, _)| ts < *newest) {
                // Older than a record already scored (see the univariate
                // scorer's note on late readings).
                record_status.insert((device, ts), status::LATE);
                continue;
            }
            state.window.push_back((ts, values.clone()));
            if state.window.len() > w {
                state.window.pop_front();
            }
            state.records += 1;
            if let Some(cfg) = &self.monitor {
                let verdict = state
                    .monitor
                    .get_or_insert_with(|| Box::new(detect::StateMonitor::new(f)))
                    .update(cfg, &values);
                let key = (device, ts);
                if !verdict.ready {
                    record_status.insert(key, status::WARMING_UP);
                    continue;
                }
                let st = if verdict.anomalous {
                    status::ANOMALOUS
                } else {
                    status::OK
                };
                record_status.insert(key, st);
                record_score.insert(key, verdict.score);
                // The ratio to the limits, mapped to [0, 1): 0.5 at the limit.
                record_anomaly_score.insert(key, verdict.score / (1.0 + verdict.score));
                let starts = verdict.anomalous && !state.in_anomaly;
                state.in_anomaly = verdict.anomalous;
                if starts {
                    let window_start = state.window.front().map_or(ts, |(t, _)| *t);
                    let event = self.monitor_event(
                        device,
                        ts,
                        window_start,
                        &values,
                        &verdict,
                        &batch.header,
                    );
                    anomalies.push_anomaly(&event, window_start);
                    events.push(event);
                }
                continue;
            }
            if state.records <= warmup {
                for (norm, x) in state.norms.iter_mut().zip(&values) {
                    norm.learn_warmup(*x, warmup);
                }
                record_status.insert((device, ts), status::WARMING_UP);
                continue;
            }
            if state.window.len() < w {
                record_status.insert((device, ts), status::WARMING_UP);
                continue;
            }
            let scales: Vec<(f64, f64)> = state
                .norms
                .iter()
                .map(|s| (s.mean, s.std(warmup)))
                .collect();
            for (_, record) in &state.window {
                for (x, (mean, std)) in record.iter().zip(&scales) {
                    matrix.push(((x - mean) / std).clamp(-clip, clip) as f32);
                }
            }
            let window_start = state.window.front().map_or(ts, |(t, _)| *t);
            queued.push(Queued {
                device,
                ts,
                window_start,
                values,
                scales,
            });
        }
        let (output, model_error) = match self.model.run(&matrix) {
            Ok(o) => (o, None),
            Err(e) => (ModelOutput::default(), Some(e)),
        };

        // Pass 2: decide per record, follow the normalisation, raise events.
        let bound = self.threshold.sqrt();
        let fixed = self.model.manifest.decision == Decision::Fixed;
        for (k, q) in queued.iter().enumerate() {
            let key = (q.device, q.ts);
            let Some(&score) = output.scores.get(k) else {
                record_status.insert(key, status::UNSCORED);
                continue;
            };
            let score = f64::from(score);
            let state = self.devices.get_mut(q.device).expect("queued from it");
            let st = if fixed {
                if score > self.threshold {
                    status::ANOMALOUS
                } else {
                    status::OK
                }
            } else {
                state.scores.decide(score, self.threshold)
            };
            if st != status::WARMING_UP && !fixed {
                for (norm, x) in state.norms.iter_mut().zip(&q.values) {
                    norm.follow(*x, warmup);
                }
            }
            let starts = st == status::ANOMALOUS && !state.in_anomaly;
            state.in_anomaly = st == status::ANOMALOUS;
            record_status.insert(key, st);
            record_score.insert(key, score);
            if starts {
                let event = self.event(q, k, score, bound, &output, &batch.header);
                anomalies.push_anomaly(&event, q.window_start);
                events.push(event);
            }
        }

        // Output: every reading, grouped by device and series.
        let mut out = ScoredColumns::new(n);
        for i in super::grouped_order(&view) {
            let i = i as usize;
            let (device, metric) = (view.device.value(i), view.metric.value(i));
            let (ts, x) = (view.ts.value(i), view.value.value(i));
            let (st, score, anomaly_score) = match &row_record[i] {
                None => (status::UNSCORED, None, None),
                Some(key) => match record_status.get(key) {
                    Some(&st) => (
                        st,
                        record_score.get(key).copied(),
                        record_anomaly_score.get(key).copied(),
                    ),
                    // Still incomplete at the end of the batch.
                    None => (status::UNSCORED, None, None),
                },
            };
            let st = if model_error.is_some() && score.is_none() && st != status::WARMING_UP {
                status::UNSCORED
            } else {
                st
            };
            out.push_scored(
                i as u32,
                device,
                metric,
                ts,
                x,
                st,
                score,
                anomaly_score,
                self.threshold,
            );
        }
        let header = &batch.header;
        let ctx = BatchContext::new(header, &self.model, ingested_at_us);
        ScoredBatch {
            model_error,
            scored: out.finish_scored(view.unit, &ctx),
            anomalies: anomalies.finish_anomalies(&ctx),
            events,
        }
    }

    /// The event of a record the state monitor found anomalous: named after
    /// its top contributing metric, with the MSET estimate as its expected
    /// value.
    fn monitor_event(
        &self,
        device: &str,
        ts: i64,
        window_start: i64,
        values: &[f64],
        verdict: &detect::StateVerdict,
        header: &schemas::envelope::BatchHeader,
    ) -> AnomalyEvent {
        let top = verdict
            .contributions
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i);
        let shares = self
            .metrics
            .iter()
            .zip(&verdict.contributions)
            .map(|(m, c)| (m.to_string(), *c))
            .collect::<BTreeMap<_, _>>();
        AnomalyEvent {
            id: 0,
            device: device.to_string(),
            metric: self.metrics[top].to_string(),
            ts: format_ts(ts),
            ts_us: ts,
            value: values[top],
            score: verdict.score,
            threshold: self.threshold,
            severity: verdict.score / self.threshold,
            window_start_us: window_start,
            model_id: self.model.manifest.id.clone(),
            model_version: self.model.manifest.version.clone(),
            gateway: header.gateway.clone(),
            seq: header.seq,
            expected: verdict.expected.get(top).copied(),
            expected_low: None,
            expected_high: None,
            contributions: Some(shares),
        }
    }

    /// The event of record `k`: named after its top contributing metric.
    fn event(
        &self,
        q: &Queued,
        k: usize,
        score: f64,
        bound: f64,
        output: &ModelOutput,
        header: &schemas::envelope::BatchHeader,
    ) -> AnomalyEvent {
        let f = self.metrics.len();
        let contributions: Option<Vec<f64>> = output.contributions.as_ref().map(|c| {
            c[k * f..(k + 1) * f]
                .iter()
                .map(|x| f64::from(*x))
                .collect()
        });
        let top = contributions
            .as_ref()
            .and_then(|c| {
                c.iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map(|(i, _)| i)
            })
            .unwrap_or(0);
        let total: f64 = contributions.as_ref().map_or(0.0, |c| c.iter().sum());
        let shares = contributions.map(|c| {
            self.metrics
                .iter()
                .zip(c)
                .map(|(m, x)| {
                    let share = if total > 0.0 { x / total } else { 0.0 };
                    (m.to_string(), share)
                })
                .collect::<BTreeMap<_, _>>()
        });
        let (mean, std) = q.scales[top];
        let expected = output
            .forecast
            .as_ref()
            .and_then(|fc| fc.get(k * f + top))
            .map(|v| mean + f64::from(*v) * std);
        AnomalyEvent {
            id: 0,
            device: q.device.to_string(),
            metric: self.metrics[top].to_string(),
            ts: format_ts(q.ts),
            ts_us: q.ts,
            value: q.values[top],
            score,
            threshold: self.threshold,
            severity: score / self.threshold,
            window_start_us: q.window_start,
            model_id: self.model.manifest.id.clone(),
            model_version: self.model.manifest.version.clone(),
            gateway: header.gateway.clone(),
            seq: header.seq,
            expected,
            expected_low: expected.map(|e| e - bound * std),
            expected_high: expected.map(|e| e + bound * std),
            contributions: shares,
        }
    }
}
