//! Record-shaped devices, found by their readings: scoring with a
//! state-monitor model that lists no metrics.
//!
//! A device is *record-shaped* when it reports several quantities of one
//! machine at one timestamp (a pump's flow, pressure, vibration and
//! temperature in one message), every time. The router offers this engine
//! the readings no earlier route took ([`RecordsScorer::claim`]); a device
//! is taken once [`RecordsScorer::claim_after`] consecutive timestamps of
//! it carried the same two or more metrics (at most [`MAX_RECORD_METRICS`])
//! and nothing else: a device that sometimes sends one metric alone stays
//! with the per-series routes, since its lone readings would never complete
//! a record. The metrics of its first record, in the order they first
//! appear, are its *layout*. From then on the device's readings of those
//! metrics are scored here, one verdict per record; a metric it adds later
//! is left to the routes after this one (the default novelty model), and a
//! record missing a metric stays incomplete (`unscored`), as with any
//! multivariate model. Readings before the device was taken were scored by
//! those routes.
//!
//! Devices of one layout share one [`MultivariateScorer`] built from the
//! model with that layout as its `input.metrics`, each device with its own
//! state inside it, so a found device is scored exactly as a model listing
//! its metrics would score it.

use std::collections::HashMap;
use std::sync::Arc;

use schemas::envelope::DecodedBatch;
use schemas::tables::{ReadingView, status};

use super::multivariate::{DeviceList, MultivariateScorer, SavedDevice};
use super::router::{merge, subset};
use super::{BatchContext, FastMap, ScoredBatch, ScoredColumns};
use crate::model::Model;

/// Metrics one record may have for its device to be taken as
/// record-shaped (a larger record is left to the per-series routes).
pub const MAX_RECORD_METRICS: usize = 32;

/// Consecutive records of one layout the `records` route waits for before
/// it takes a device (a route or caller that names this model takes a
/// device at its first record).
pub const RECORDS_TO_CLAIM: u32 = 3;

/// Devices followed at once while their shape is not settled; more are
/// looked at again in later batches.
const MAX_CANDIDATES: usize = 65_536;

#[derive(Debug)]
struct Layout {
    metrics: Vec<Arc<str>>,
    scorer: MultivariateScorer,
}

#[derive(Debug)]
pub struct RecordsScorer {
    /// The state-monitor model, without metrics.
    model: Model,
    warmup: u32,
    threshold: Option<f64>,
    layouts: Vec<Layout>,
    /// Each layout's index by its metrics (a fleet may have many layouts).
    layout_index: FastMap<Vec<Arc<str>>, usize>,
    /// Each found device's layout.
    devices: HashMap<Arc<str>, usize>,
    /// Records of one layout a device needs to be taken.
    claim_after: u32,
    /// Devices seen with a record, not taken yet: the layout and how many
    /// consecutive records had it (not saved: a restart counts again).
    candidates: HashMap<Arc<str>, (Vec<Arc<str>>, u32)>,
}

/// One layout's state as saved: its metrics and its devices.
pub(crate) type SavedLayout = (Vec<String>, Vec<SavedDevice>);

/// The layouts of a scorer, serialised as [`SavedLayout`]s without copying.
#[derive(Debug)]
pub(crate) struct LayoutList<'a>(Vec<(Vec<&'a str>, DeviceList<'a>)>);

impl serde::Serialize for LayoutList<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter())
    }
}

impl RecordsScorer {
    /// `model` is a state-monitor model that lists no metrics.
    pub fn new(model: Model, warmup_readings: u32, threshold: Option<f64>) -> Self {
        Self {
            model,
            warmup: warmup_readings,
            threshold,
            layouts: Vec::new(),
            layout_index: FastMap::default(),
            devices: HashMap::new(),
            claim_after: 1,
            candidates: HashMap::new(),
        }
    }

    /// Takes a device only after `records` consecutive records of one
    /// layout (the `records` route: [`RECORDS_TO_CLAIM`]).
    pub fn claim_after(&mut self, records: u32) {
        self.claim_after = records.max(1);
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Record-shaped devices found so far.
    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    /// Whether a found device's reading of `metric` is scored here.
    pub fn takes(&self, device: &str, metric: &str) -> bool {
        self.devices
            .get(device)
            .is_some_and(|&l| self.layouts[l].metrics.iter().any(|m| &**m == metric))
    }

    /// Finds the record-shaped devices among `rows` of `view` that are not
    /// found yet; each timestamp of a device (in row order) is one record.
    pub fn claim(&mut self, view: &ReadingView<'_>, rows: impl Iterator<Item = usize>) {
        // Each (device, timestamp): its first metric, and the others only
        // when there are others (most devices send one metric: nothing is
        // allocated for them).
        let mut records: FastMap<(&str, i64), (&str, Vec<&str>)> = FastMap::default();
        let mut order: Vec<(&str, i64)> = Vec::new();
        for i in rows {
            let device = view.device.value(i);
            if self.devices.contains_key(device) {
                continue;
            }
            let key = (device, view.ts.value(i));
            let metric = view.metric.value(i);
            match records.entry(key) {
                std::collections::hash_map::Entry::Vacant(e) => {
                    order.push(key);
                    e.insert((metric, Vec::new()));
                }
                std::collections::hash_map::Entry::Occupied(mut e) => {
                    let (first, more) = e.get_mut();
                    if *first != metric
                        && !more.contains(&metric)
                        && more.len() < MAX_RECORD_METRICS
                    {
                        more.push(metric);
                    }
                }
            }
        }
        let mut metrics: Vec<&str> = Vec::new();
        for key in order {
            let device = key.0;
            let (first, more) = &records[&key];
            metrics.clear();
            metrics.push(first);
            metrics.extend_from_slice(more);
            if self.devices.contains_key(device) {
                continue;
            }
            if metrics.len() < 2 || metrics.len() > MAX_RECORD_METRICS {
                // One metric alone (or too many): not a record.
                self.candidates.remove(device);
                continue;
            }
            let room = self.candidates.len() < MAX_CANDIDATES || self.claim_after == 1;
            let seen = match self.candidates.get_mut(device) {
                Some((layout, seen))
                    if layout.len() == metrics.len()
                        && metrics.iter().all(|m| layout.iter().any(|l| &**l == *m)) =>
                {
                    *seen += 1;
                    *seen
                }
                Some(candidate) => {
                    *candidate = (metrics.iter().map(|m| Arc::from(*m)).collect(), 1);
                    1
                }
                None if room => {
                    self.candidates.insert(
                        Arc::from(device),
                        (metrics.iter().map(|m| Arc::from(*m)).collect(), 1),
                    );
                    1
                }
                None => continue,
            };
            if seen >= self.claim_after {
                let (layout, _) = self.candidates.remove(device).expect("counted above");
                let names: Vec<&str> = layout.iter().map(|m| &**m).collect();
                let l = self.layout(&names);
                self.devices.insert(Arc::from(device), l);
            }
        }
    }

    /// The index of the layout of `metrics`, made if new.
    fn layout(&mut self, metrics: &[&str]) -> usize {
        let key: Vec<Arc<str>> = metrics.iter().map(|m| Arc::from(*m)).collect();
        if let Some(&i) = self.layout_index.get(&key) {
            return i;
        }
        self.layout_index.insert(key.clone(), self.layouts.len());
        self.layouts.push(Layout {
            metrics: key,
            scorer: MultivariateScorer::new(
                self.with_metrics(metrics.iter().map(|m| (*m).to_owned()).collect()),
                self.warmup,
                self.threshold,
            ),
        });
        self.layouts.len() - 1
    }

    fn with_metrics(&self, metrics: Vec<String>) -> Model {
        let mut model = self.model.clone();
        model.manifest.input.metrics = Some(metrics);
        model
    }

    /// Scores a batch: its record-shaped devices found first (when the
    /// router has not offered them already), each layout's readings by its
    /// scorer; readings of no found device or outside its layout are
    /// `unscored` (the router never sends such readings here).
    pub fn score(&mut self, batch: &DecodedBatch, ingested_at_us: i64) -> ScoredBatch {
        let view =
            ReadingView::try_new(&batch.readings).expect("decoder verified the reading columns");
        let n = batch.readings.num_rows();
        self.claim(&view, 0..n);
        let mut by_layout: Vec<Vec<u32>> = vec![Vec::new(); self.layouts.len()];
        let mut left: Vec<u32> = Vec::new();
        for i in 0..n {
            let (device, metric) = (view.device.value(i), view.metric.value(i));
            match self.devices.get(device) {
                Some(&l) if self.takes(device, metric) => by_layout[l].push(i as u32),
                _ => left.push(i as u32),
            }
        }
        let mut parts = Vec::new();
        for (layout, rows) in self.layouts.iter_mut().zip(&by_layout) {
            if let Some(sub) = subset(batch, rows) {
                parts.push(
                    layout
                        .scorer
                        .score(sub.as_ref().unwrap_or(batch), ingested_at_us),
                );
            }
        }
        if !left.is_empty() || parts.is_empty() {
            parts.push(self.unscored(batch, &left, ingested_at_us));
        }
        merge(parts)
    }

    /// `rows` of `batch` as `unscored` readings.
    fn unscored(&self, batch: &DecodedBatch, rows: &[u32], ingested_at_us: i64) -> ScoredBatch {
        let view =
            ReadingView::try_new(&batch.readings).expect("decoder verified the reading columns");
        let mut out = ScoredColumns::new(rows.len());
        for &i in rows {
            let r = i as usize;
            out.push_scored(
                i,
                view.device.value(r),
                view.metric.value(r),
                view.ts.value(r),
                view.value.value(r),
                status::UNSCORED,
                None,
                None,
                self.model.manifest.threshold,
            );
        }
        let header = &batch.header;
        let ctx = BatchContext::new(header, &self.model, ingested_at_us);
        ScoredBatch {
            model_error: None,
            scored: out.finish_scored(view.unit, &ctx),
            anomalies: ScoredColumns::new(0).finish_anomalies(&ctx),
            events: Vec::new(),
        }
    }

    /// Replaces the model (hot reload); found devices and their state are
    /// kept when the new model monitors in the same way.
    pub fn swap_model(&mut self, model: Model, threshold: Option<f64>) {
        if model.state_monitor() != self.model.state_monitor() {
            let claim_after = self.claim_after;
            *self = Self::new(model, self.warmup, threshold);
            self.claim_after = claim_after;
            return;
        }
        self.model = model;
        self.threshold = threshold;
        for i in 0..self.layouts.len() {
            let metrics = self.layouts[i]
                .metrics
                .iter()
                .map(|m| m.to_string())
                .collect();
            let model = self.with_metrics(metrics);
            self.layouts[i].scorer.swap_model(model, threshold);
        }
    }

    /// The layouts and found devices `keep` names, for saving (a layout
    /// with none of them is left out, unless every device is kept).
    pub(crate) fn saved(&self, keep: &dyn Fn(&str) -> bool, everything: bool) -> LayoutList<'_> {
        LayoutList(
            self.layouts
                .iter()
                .map(|l| {
                    (
                        l.metrics.iter().map(|m| &**m).collect(),
                        l.scorer.saved(keep),
                    )
                })
                .filter(|(_, devices)| everything || !devices.is_empty())
                .collect(),
        )
    }

    /// Adds saved devices this scorer has not found (the ones it has keep
    /// their layout and state); how many were added.
    pub(crate) fn merge(&mut self, saved: Vec<SavedLayout>) -> usize {
        let mut added = 0;
        for (metrics, devices) in saved {
            let devices: Vec<SavedDevice> = devices
                .into_iter()
                .filter(|(device, _)| !self.devices.contains_key(device.as_str()))
                .collect();
            if devices.is_empty() {
                continue;
            }
            let names: Vec<&str> = metrics.iter().map(String::as_str).collect();
            let l = self.layout(&names);
            for (device, _) in &devices {
                self.devices.insert(Arc::from(device.as_str()), l);
                self.candidates.remove(device.as_str());
            }
            added += self.layouts[l].scorer.merge(devices);
        }
        added
    }

    /// Replaces every layout and device with saved ones.
    pub(crate) fn restore(&mut self, saved: Vec<SavedLayout>) {
        self.layouts.clear();
        self.layout_index.clear();
        self.devices.clear();
        self.candidates.clear();
        self.merge(saved);
    }
}

#[cfg(test)]
mod tests;
