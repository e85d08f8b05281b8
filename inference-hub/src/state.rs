//! What the API serves from memory: the latest value, score and status of
//! every series, the most recent anomaly events, and the live stream.
//!
//! Written by the pipeline's state thread after each batch (before the batch
//! is archived), read by API handlers.
//! Bounded: one entry per series, at most `MAX_RECENT_ANOMALIES` events, and
//! the last `STREAM_MEMORY` stream events (a client reconnecting with
//! `Last-Event-ID` gets what it missed if it is still among them).
//!
//! Stream events have increasing ids: an `anomaly` event per anomaly, and an
//! `update` event per device per batch (its metrics' new latest values). A
//! series' latest value only moves forward in event time: readings older
//! than it (a backlog drained behind live data) add points, not updates.
//!
//! The pipeline hands over each scored batch whole ([`HubState::record`]);
//! scorers emit a device's rows together and each series' rows in time
//! order, so recording costs one map lookup per device and per series of
//! the batch, not per reading. Names are shared (`Arc<str>`) and times kept
//! as numbers: text is rendered only when the API asks.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, RwLock};

use arrow_array::Array;
use schemas::tables::status;
use serde::Serialize;

use crate::names::StrColumn;
use crate::scoring::{AnomalyEvent, format_ts};

pub const MAX_RECENT_ANOMALIES: usize = 10_000;
/// Stream events kept for clients that reconnect.
pub const STREAM_MEMORY: usize = 10_000;
/// Newest scored readings kept per series for range queries (they cover what
/// is not yet in a committed Parquet file).
pub const RECENT_POINTS: usize = 128;

/// One scored reading.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    #[serde(skip)]
    pub ts_us: i64,
    pub value: f64,
    pub score: Option<f64>,
    pub status: &'static str,
}

/// One event of the live stream. Shared (`Arc`) between the memory for
/// reconnecting clients and every subscriber; its JSON is rendered only when
/// a client receives it, so the pipeline pays nothing for it.
#[derive(Debug)]
pub struct StreamEvent {
    pub id: u64,
    /// `anomaly` or `update`.
    pub kind: &'static str,
    pub device: Arc<str>,
    payload: StreamPayload,
}

#[derive(Debug)]
enum StreamPayload {
    Anomaly(Box<AnomalyEvent>),
    /// A device's series updated by one batch.
    Update(Vec<MetricUpdate>),
}

/// A [`Point`] as the state keeps it: 32 bytes instead of 48 (the state
/// writes one per reading, so its size is memory traffic on the pipeline).
#[derive(Debug, Clone, Copy)]
struct StoredPoint {
    ts_us: i64,
    value: f64,
    /// NaN: no score.
    score: f64,
    status: u8,
}

/// Statuses by [`StoredPoint::status`].
const STATUSES: [&str; 5] = [
    status::WARMING_UP,
    status::OK,
    status::ANOMALOUS,
    status::UNSCORED,
    status::LATE,
];

impl StoredPoint {
    fn point(self) -> Point {
        Point {
            ts_us: self.ts_us,
            value: self.value,
            score: (!self.score.is_nan()).then_some(self.score),
            status: STATUSES[usize::from(self.status)],
        }
    }
}

/// A series' newest reading in a batch, for the stream.
#[derive(Debug)]
struct MetricUpdate {
    metric: Arc<str>,
    point: Point,
}

impl StreamEvent {
    /// The event's JSON body.
    pub fn data(&self) -> String {
        match &self.payload {
            StreamPayload::Anomaly(e) => serde_json::to_string(e).unwrap_or_default(),
            StreamPayload::Update(metrics) => {
                let metrics: Vec<serde_json::Value> = metrics
                    .iter()
                    .map(|u| {
                        serde_json::json!({
                            "metric": &*u.metric,
                            "ts": format_ts(u.point.ts_us),
                            "value": u.point.value,
                            "score": u.point.score,
                            "status": u.point.status,
                        })
                    })
                    .collect();
                serde_json::json!({"device": &*self.device, "metrics": metrics}).to_string()
            }
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MetricState {
    pub metric: String,
    pub ts: String,
    pub value: f64,
    pub score: Option<f64>,
    pub status: &'static str,
    /// The model (id and version) that scored the last reading.
    pub model: String,
    /// The unit the device gave, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeviceState {
    pub device: String,
    /// The gateway the device's last batch came from.
    pub gateway: String,
    /// Worst status over the device's metrics.
    pub status: &'static str,
    /// When the hub last received a reading of this device (hub clock).
    pub last_seen: String,
    pub metrics: Vec<MetricState>,
}

/// A device as the pipeline leaves it.
#[derive(Debug)]
struct Device {
    name: Arc<str>,
    gateway: String,
    last_seen_us: i64,
    /// The batch (see `HubState::batches`) that last updated the device and
    /// where its stream update sits among that batch's updates: a device
    /// whose rows are not all together still gets one update per batch.
    update: (u64, usize),
    metrics: BTreeMap<Arc<str>, Series>,
}

/// One series: its newest reading and the newest points, which cover range
/// queries until the archive has committed them.
#[derive(Debug)]
struct Series {
    name: Arc<str>,
    latest: Point,
    /// `<model id> <version>` that scored the newest reading.
    model: Arc<str>,
    /// The unit of the newest reading that had one.
    unit: Option<Arc<str>>,
    points: VecDeque<StoredPoint>,
}

#[derive(Debug)]
pub struct HubState {
    devices: RwLock<FastMap<Arc<str>, Device>>,
    anomalies: RwLock<VecDeque<AnomalyEvent>>,
    stream: std::sync::Mutex<(u64, VecDeque<Arc<StreamEvent>>)>,
    live: tokio::sync::broadcast::Sender<Arc<StreamEvent>>,
    /// Batches recorded so far.
    batches: std::sync::atomic::AtomicU64,
    /// The WAL position after the last batch recorded.
    recorded_until: std::sync::atomic::AtomicU64,
}

impl Default for HubState {
    fn default() -> Self {
        Self {
            batches: std::sync::atomic::AtomicU64::new(0),
            recorded_until: std::sync::atomic::AtomicU64::new(0),
            devices: RwLock::default(),
            anomalies: RwLock::default(),
            stream: std::sync::Mutex::new((0, VecDeque::new())),
            live: tokio::sync::broadcast::channel(4096).0,
        }
    }
}

type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

fn device_state(d: &Device) -> DeviceState {
    DeviceState {
        device: d.name.to_string(),
        gateway: d.gateway.clone(),
        status: d
            .metrics
            .values()
            .map(|m| m.latest.status)
            .max_by_key(|s| rank(s))
            .unwrap_or(status::WARMING_UP),
        last_seen: format_ts(d.last_seen_us),
        metrics: d
            .metrics
            .values()
            .map(|m| MetricState {
                metric: m.name.to_string(),
                ts: format_ts(m.latest.ts_us),
                value: m.latest.value,
                score: m.latest.score,
                status: m.latest.status,
                model: m.model.to_string(),
                unit: m.unit.as_deref().map(str::to_owned),
            })
            .collect(),
    }
}

fn rank(s: &str) -> u8 {
    match s {
        status::ANOMALOUS => 3,
        status::UNSCORED => 2,
        status::OK => 1,
        _ => 0,
    }
}

impl HubState {
    /// Publishes anomaly events that did not come with a scored batch.
    /// The WAL position after the last batch recorded (a rebuilt pipeline
    /// skips what is below it).
    pub fn recorded_until(&self) -> u64 {
        self.recorded_until
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Notes that the batch at WAL position `pos` is recorded.
    pub fn recorded_through(&self, pos: u64) {
        self.recorded_until
            .fetch_max(pos + 1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn record_events(&self, events: Vec<AnomalyEvent>) {
        self.record(
            &arrow_array::RecordBatch::new_empty(schemas::tables::scored_schema()),
            events,
            0,
            "",
        );
    }

    /// Takes in one scored batch from `gateway` (a batch of the scored
    /// table) and its anomaly events: devices' latest values, the newest
    /// points, the stream, the recent anomalies.
    pub fn record(
        &self,
        scored: &arrow_array::RecordBatch,
        mut events: Vec<AnomalyEvent>,
        now_us: i64,
        gateway: &str,
    ) {
        let updates = match ScoredView::new(scored) {
            Ok(view) => self.record_rows(&view, now_us, gateway),
            Err(e) => {
                tracing::error!(error = %e, "a scored batch without the scored table's columns");
                Vec::new()
            }
        };
        self.publish(updates, &mut events);
        if !events.is_empty() {
            let mut recent = self.anomalies.write().expect("state lock");
            for e in events {
                if recent.len() == MAX_RECENT_ANOMALIES {
                    recent.pop_front();
                }
                recent.push_back(e);
            }
        }
    }

    /// Updates devices and series from the rows, one run of a device's rows
    /// and one run of a series' rows at a time. Returns each device's
    /// updates for the stream.
    fn record_rows(
        &self,
        view: &ScoredView<'_>,
        now_us: i64,
        gateway: &str,
    ) -> Vec<(Arc<str>, Vec<MetricUpdate>)> {
        let n = view.device.len();
        let mut updates: Vec<(Arc<str>, Vec<MetricUpdate>)> = Vec::new();
        let batch = self
            .batches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let mut label: Option<(usize, Arc<str>)> = None;
        let mut devices = self.devices.write().expect("state lock");
        let mut start = 0;
        while start < n {
            let name = view.device.value(start);
            let end = run_end(view.device, start, n);
            if !devices.contains_key(name) {
                let name: Arc<str> = Arc::from(name);
                devices.insert(
                    Arc::clone(&name),
                    Device {
                        name,
                        gateway: String::new(),
                        last_seen_us: 0,
                        update: (0, 0),
                        metrics: BTreeMap::new(),
                    },
                );
            }
            let device = devices.get_mut(name).expect("inserted");
            device.last_seen_us = now_us;
            if !gateway.is_empty() && device.gateway != gateway {
                gateway.clone_into(&mut device.gateway);
            }
            let mut metric_updates = Vec::new();
            let mut s = start;
            while s < end {
                let metric = view.metric.value(s);
                let e = run_end(view.metric, s, end);
                if !device.metrics.contains_key(metric) {
                    let name: Arc<str> = Arc::from(metric);
                    let series = Series {
                        name: Arc::clone(&name),
                        latest: view.point(s),
                        model: Arc::from(""),
                        unit: None,
                        // Grows with use: most series of a large fleet hold few points.
                        points: VecDeque::new(),
                    };
                    device.metrics.insert(name, series);
                }
                let series = device.metrics.get_mut(metric).expect("inserted");
                for i in e.saturating_sub(RECENT_POINTS).max(s)..e {
                    if series.points.len() == RECENT_POINTS {
                        series.points.pop_front();
                    }
                    series.points.push_back(view.stored_point(i));
                }
                // The newest of the run (the last of equal times) becomes the
                // series' latest unless the series has a newer one already (a
                // backlog arriving behind live data).
                let newest = (s..e)
                    .max_by_key(|&i| view.ts.value(i))
                    .expect("a run has a row");
                if view.ts.value(newest) >= series.latest.ts_us {
                    series.latest = view.point(newest);
                    series.model = view.model_label(newest, &mut label);
                    if let Some(unit) = view.unit.filter(|u| u.is_valid(newest))
                        && series.unit.as_deref() != Some(unit.value(newest))
                    {
                        series.unit = Some(Arc::from(unit.value(newest)));
                    }
                    metric_updates.push(MetricUpdate {
                        metric: Arc::clone(&series.name),
                        point: series.latest,
                    });
                }
                s = e;
            }
            if metric_updates.is_empty() {
                start = end;
                continue;
            }
            match device.update {
                (b, slot) if b == batch => updates[slot].1.extend(metric_updates),
                _ => {
                    device.update = (batch, updates.len());
                    updates.push((Arc::clone(&device.name), metric_updates));
                }
            }
            start = end;
        }
        updates
    }

    /// Kept points of a series in `[from, to)`, oldest first.
    pub fn recent_points(
        &self,
        device: &str,
        metric: &str,
        from_us: i64,
        to_us: i64,
    ) -> Vec<Point> {
        let devices = self.devices.read().expect("state lock");
        let mut out: Vec<Point> = devices
            .get(device)
            .and_then(|d| d.metrics.get(metric))
            .map(|series| {
                series
                    .points
                    .iter()
                    .filter(|p| p.ts_us >= from_us && p.ts_us < to_us)
                    .map(|p| p.point())
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by_key(|p| p.ts_us);
        out
    }

    /// Assigns ids and appends the batch's stream events (anomalies first).
    fn publish(&self, updates: Vec<(Arc<str>, Vec<MetricUpdate>)>, events: &mut [AnomalyEvent]) {
        let mut stream = self.stream.lock().expect("stream lock");
        let push =
            |stream: &mut (u64, VecDeque<Arc<StreamEvent>>), kind, device: Arc<str>, payload| {
                stream.0 += 1;
                let event = Arc::new(StreamEvent {
                    id: stream.0,
                    kind,
                    device,
                    payload,
                });
                if stream.1.len() == STREAM_MEMORY {
                    stream.1.pop_front();
                }
                stream.1.push_back(Arc::clone(&event));
                // No subscriber is fine.
                let _ = self.live.send(event);
            };
        for e in events.iter_mut() {
            e.id = stream.0 + 1;
            let device = Arc::from(e.device.as_str());
            push(
                &mut stream,
                "anomaly",
                device,
                StreamPayload::Anomaly(Box::new(e.clone())),
            );
        }
        for (device, metrics) in updates {
            push(
                &mut stream,
                "update",
                device,
                StreamPayload::Update(metrics),
            );
        }
    }

    /// Stream events after `after_id` still in memory, then a receiver for
    /// the live ones (subscribed first, so nothing falls in between; the
    /// caller skips ids it has sent).
    pub fn subscribe(
        &self,
        after_id: u64,
    ) -> (
        Vec<Arc<StreamEvent>>,
        tokio::sync::broadcast::Receiver<Arc<StreamEvent>>,
    ) {
        let stream = self.stream.lock().expect("stream lock");
        let rx = self.live.subscribe();
        let backlog = stream
            .1
            .iter()
            .filter(|e| e.id > after_id)
            .cloned()
            .collect();
        (backlog, rx)
    }

    /// One device, if the hub has seen it.
    pub fn device(&self, name: &str) -> Option<DeviceState> {
        let devices = self.devices.read().expect("state lock");
        devices.get(name).map(device_state)
    }

    /// Every device, by name.
    pub fn devices(&self) -> Vec<DeviceState> {
        let devices = self.devices.read().expect("state lock");
        let mut all: Vec<&Device> = devices.values().collect();
        all.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        all.into_iter().map(device_state).collect()
    }

    /// Newest first, filtered; `before_id` continues a page (cursor).
    pub fn anomalies(&self, filter: &AnomalyFilter<'_>, limit: usize) -> Vec<AnomalyEvent> {
        let recent = self.anomalies.read().expect("state lock");
        recent
            .iter()
            .rev()
            .filter(|e| filter.before_id.is_none_or(|b| e.id < b))
            .filter(|e| filter.since_us.is_none_or(|s| e.ts_us >= s))
            .filter(|e| filter.until_us.is_none_or(|u| e.ts_us < u))
            .filter(|e| filter.device.is_none_or(|d| e.device == d))
            .filter(|e| filter.model.is_none_or(|m| e.model_id == m))
            .filter(|e| filter.min_severity.is_none_or(|s| e.severity >= s))
            .take(limit)
            .cloned()
            .collect()
    }
}

/// Filters of [`HubState::anomalies`].
#[derive(Debug, Default, Clone, Copy)]
pub struct AnomalyFilter<'a> {
    pub since_us: Option<i64>,
    pub until_us: Option<i64>,
    pub device: Option<&'a str>,
    pub model: Option<&'a str>,
    pub min_severity: Option<f64>,
    /// Only events older than this id (the cursor of the previous page).
    pub before_id: Option<u64>,
}

/// The end of the run of equal values that starts at `start` (before `end`).
fn run_end(col: StrColumn<'_>, start: usize, end: usize) -> usize {
    (start + 1..end)
        .find(|&i| !col.same(i, start))
        .unwrap_or(end)
}

/// Typed access to the columns of a scored-table batch that the state needs
/// (string columns plain or keyed).
#[derive(Debug)]
pub(crate) struct ScoredView<'a> {
    pub(crate) device: StrColumn<'a>,
    pub(crate) metric: StrColumn<'a>,
    pub(crate) ts: &'a arrow_array::TimestampMicrosecondArray,
    pub(crate) value: &'a arrow_array::Float64Array,
    pub(crate) score: &'a arrow_array::Float64Array,
    pub(crate) status: StrColumn<'a>,
    pub(crate) model_id: StrColumn<'a>,
    pub(crate) model_version: StrColumn<'a>,
    /// Absent in files written before units were kept.
    pub(crate) unit: Option<&'a arrow_array::StringArray>,
}

impl<'a> ScoredView<'a> {
    pub(crate) fn new(b: &'a arrow_array::RecordBatch) -> Result<Self, String> {
        fn col<'b, T: 'static>(
            b: &'b arrow_array::RecordBatch,
            name: &str,
        ) -> Result<&'b T, String> {
            b.column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<T>())
                .ok_or_else(|| format!("no {name} column of the expected type"))
        }
        fn strings<'b>(
            b: &'b arrow_array::RecordBatch,
            name: &str,
        ) -> Result<StrColumn<'b>, String> {
            b.column_by_name(name)
                .and_then(|c| StrColumn::of(c.as_ref()))
                .ok_or_else(|| format!("no {name} string column without nulls"))
        }
        use schemas::tables as t;
        Ok(Self {
            device: strings(b, t::DEVICE)?,
            metric: strings(b, t::METRIC)?,
            ts: col(b, t::TS)?,
            value: col(b, t::VALUE)?,
            score: col(b, t::SCORE)?,
            status: strings(b, t::STATUS)?,
            model_id: strings(b, t::MODEL_ID)?,
            model_version: strings(b, t::MODEL_VERSION)?,
            unit: b
                .column_by_name(t::UNIT)
                .and_then(|c| c.as_any().downcast_ref::<arrow_array::StringArray>()),
        })
    }

    pub(crate) fn point(&self, i: usize) -> Point {
        self.stored_point(i).point()
    }

    fn stored_point(&self, i: usize) -> StoredPoint {
        // The statuses differ in their first byte.
        let status = match self.status.value(i).as_bytes().first() {
            Some(b'o') => 1,
            Some(b'a') => 2,
            Some(b'u') => 3,
            Some(b'l') => 4,
            _ => 0,
        };
        StoredPoint {
            ts_us: self.ts.value(i),
            value: self.value.value(i),
            score: if self.score.is_valid(i) {
                self.score.value(i)
            } else {
                f64::NAN
            },
            status,
        }
    }

    /// `<model id> <version>` of row `i`; `cache` holds the last one made
    /// (a batch is scored by one model version, so it is made once).
    fn model_label(&self, i: usize, cache: &mut Option<(usize, Arc<str>)>) -> Arc<str> {
        if let Some((row, label)) = cache
            && self.model_id.same(*row, i)
            && self.model_version.same(*row, i)
        {
            return Arc::clone(label);
        }
        let label: Arc<str> = Arc::from(format!(
            "{} {}",
            self.model_id.value(i),
            self.model_version.value(i)
        ));
        *cache = Some((i, Arc::clone(&label)));
        label
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use schemas::ReadingColumns;
    use schemas::envelope::{self, DecodeLimits};

    use super::*;
    use crate::model::Model;
    use crate::scoring::Scorer;

    /// A scored batch of `rows` (device, metric, seconds, value).
    fn scored(rows: &[(&str, &str, i64, f64)]) -> arrow_array::RecordBatch {
        let model = Model::load(
            &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/univariate-forecast"),
        )
        .unwrap();
        let mut cols = ReadingColumns::default();
        for (d, m, t, v) in rows {
            cols.push(d, m, 1_700_000_000_000_000 + t * 1_000_000, *v);
        }
        let (_, bytes) = envelope::encode("gw", 1, 1, &cols.finish()).unwrap();
        let batch = envelope::decode(&bytes, &DecodeLimits::default()).unwrap();
        Scorer::new(model, 10, None).score(&batch, 0).scored
    }

    fn update_events(state: &HubState) -> Vec<(String, String)> {
        let (events, _) = state.subscribe(0);
        events
            .iter()
            .filter(|e| e.kind == "update")
            .map(|e| (e.device.to_string(), e.data()))
            .collect()
    }

    #[test]
    fn a_batch_sets_each_series_newest_value_keeps_its_points_and_streams_one_update_per_device() {
        let state = HubState::default();
        let batch = scored(&[
            ("d2", "b", 5, 2.5),
            ("d1", "a", 3, 1.3),
            ("d2", "a", 1, 2.1),
            ("d1", "a", 1, 1.1),
            ("d2", "b", 4, 2.4),
            ("d1", "a", 2, 1.2),
        ]);
        state.record(&batch, Vec::new(), 7, "gw-1");
        let devices = state.devices();
        let names: Vec<&str> = devices.iter().map(|d| d.device.as_str()).collect();
        assert_eq!(names, ["d1", "d2"]);
        assert_eq!(devices[1].gateway, "gw-1");
        let latest: Vec<(&str, f64)> = devices[1]
            .metrics
            .iter()
            .map(|m| (m.metric.as_str(), m.value))
            .collect();
        assert_eq!(latest, [("a", 2.1), ("b", 2.5)]);
        assert_eq!(devices[1].metrics[0].model, "univariate-forecast 1.0.0");
        let points = state.recent_points("d1", "a", i64::MIN, i64::MAX);
        let values: Vec<f64> = points.iter().map(|p| p.value).collect();
        assert_eq!(values, [1.1, 1.2, 1.3]);
        assert!(points.iter().all(|p| p.status == status::WARMING_UP));
        let updates = update_events(&state);
        assert_eq!(updates.len(), 2, "{updates:?}");
        let d2 = &updates.iter().find(|(d, _)| d == "d2").unwrap().1;
        assert!(
            d2.contains("\"metric\":\"b\"") && d2.contains("\"value\":2.5"),
            "{d2}"
        );
        assert!(
            d2.contains("\"metric\":\"a\"") && d2.contains("\"value\":2.1"),
            "{d2}"
        );
    }

    #[test]
    fn rows_of_a_device_that_are_not_together_still_make_one_update_and_the_newest_wins() {
        let state = HubState::default();
        let grouped = scored(&[
            ("d1", "a", 1, 1.0),
            ("d1", "a", 9, 9.0),
            ("d2", "a", 1, 5.0),
        ]);
        // Reorder so that d1's rows are split by d2's and time runs backwards.
        let idx = arrow_array::UInt32Array::from(vec![1u32, 2, 0]);
        let columns = grouped
            .columns()
            .iter()
            .map(|c| arrow_select::take::take(c.as_ref(), &idx, None).unwrap())
            .collect();
        let split = arrow_array::RecordBatch::try_new(grouped.schema(), columns).unwrap();
        state.record(&split, Vec::new(), 0, "");
        let d1 = state.device("d1").unwrap();
        assert_eq!(d1.metrics[0].value, 9.0);
        assert_eq!(update_events(&state).len(), 2);
        assert_eq!(state.recent_points("d1", "a", i64::MIN, i64::MAX).len(), 2);
        // A later batch with an older reading adds a point, not an update.
        state.record(&scored(&[("d1", "a", 5, 5.0)]), Vec::new(), 0, "");
        assert_eq!(state.device("d1").unwrap().metrics[0].value, 9.0);
        assert_eq!(update_events(&state).len(), 2);
        assert_eq!(state.recent_points("d1", "a", i64::MIN, i64::MAX).len(), 3);
    }

    #[test]
    fn a_series_keeps_only_its_newest_points() {
        let state = HubState::default();
        let rows: Vec<(&str, &str, i64, f64)> = (0..300).map(|t| ("d", "m", t, t as f64)).collect();
        state.record(&scored(&rows[..200]), Vec::new(), 0, "");
        state.record(&scored(&rows[200..]), Vec::new(), 0, "");
        let points = state.recent_points("d", "m", i64::MIN, i64::MAX);
        assert_eq!(points.len(), RECENT_POINTS);
        assert_eq!(points.last().unwrap().value, 299.0);
        assert_eq!(points[0].value, (300 - RECENT_POINTS) as f64);
    }
}
