//! What the API serves from memory: the latest value, score and status of
//! every series, the most recent anomaly events, and the live stream.
//!
//! Written by the pipeline thread after each batch, read by API handlers.
//! Bounded: one entry per series, at most `MAX_RECENT_ANOMALIES` events, and
//! the last `STREAM_MEMORY` stream events (a client reconnecting with
//! `Last-Event-ID` gets what it missed if it is still among them).
//!
//! Stream events have increasing ids: an `anomaly` event per anomaly, and an
//! `update` event per device per batch (its metrics' new values).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, RwLock};

use schemas::tables::status;
use serde::Serialize;

use crate::scoring::{AnomalyEvent, SeriesUpdate, format_ts};

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
    Update(Vec<SeriesUpdate>),
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
                            "ts": format_ts(u.ts_us),
                            "value": u.value,
                            "score": u.score,
                            "status": u.status,
                        })
                    })
                    .collect();
                serde_json::json!({"device": &*self.device, "metrics": metrics}).to_string()
            }
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MetricState {
    pub metric: String,
    pub ts: String,
    pub value: f64,
    pub score: Option<f64>,
    pub status: &'static str,
    /// The model (id and version) that scored the last reading.
    pub model: String,
}

#[derive(Debug, Clone, Serialize)]
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

#[derive(Debug, Default)]
struct Device {
    gateway: String,
    last_seen_us: i64,
    metrics: BTreeMap<String, MetricState>,
}

#[derive(Debug)]
pub struct HubState {
    devices: RwLock<BTreeMap<String, Device>>,
    anomalies: RwLock<VecDeque<AnomalyEvent>>,
    stream: std::sync::Mutex<(u64, VecDeque<Arc<StreamEvent>>)>,
    live: tokio::sync::broadcast::Sender<Arc<StreamEvent>>,
    /// device -> metric -> newest points (nested so that a reading is looked
    /// up by borrowed names: no allocation per reading on the pipeline's path).
    recent: RwLock<RecentPoints>,
}

impl Default for HubState {
    fn default() -> Self {
        Self {
            devices: RwLock::default(),
            anomalies: RwLock::default(),
            stream: std::sync::Mutex::new((0, VecDeque::new())),
            live: tokio::sync::broadcast::channel(4096).0,
            recent: RwLock::default(),
        }
    }
}

type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type RecentPoints = FastMap<String, FastMap<String, VecDeque<Point>>>;

fn device_state(name: &str, d: &Device) -> DeviceState {
    DeviceState {
        device: name.to_owned(),
        gateway: d.gateway.clone(),
        status: d
            .metrics
            .values()
            .map(|m| m.status)
            .max_by_key(|s| rank(s))
            .unwrap_or(status::WARMING_UP),
        last_seen: format_ts(d.last_seen_us),
        metrics: d.metrics.values().cloned().collect(),
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
    pub fn apply(&self, updates: &[SeriesUpdate], events: Vec<AnomalyEvent>, now_us: i64) {
        self.apply_from(updates, events, now_us, "");
    }

    /// [`HubState::apply`] for a batch from `gateway`.
    pub fn apply_from(
        &self,
        updates: &[SeriesUpdate],
        mut events: Vec<AnomalyEvent>,
        now_us: i64,
        gateway: &str,
    ) {
        self.publish(updates, &mut events);
        {
            let mut devices = self.devices.write().expect("state lock");
            for u in updates {
                let d = devices.entry(u.device.to_string()).or_default();
                d.last_seen_us = now_us;
                if !gateway.is_empty() && d.gateway != gateway {
                    d.gateway = gateway.to_owned();
                }
                d.metrics.insert(
                    u.metric.to_string(),
                    MetricState {
                        metric: u.metric.to_string(),
                        ts: format_ts(u.ts_us),
                        value: u.value,
                        score: u.score,
                        status: u.status,
                        model: u.model.to_string(),
                    },
                );
            }
        }
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

    /// Keeps the newest scored readings of each series (from a batch of the
    /// scored table).
    pub fn record_points(&self, scored: &arrow_array::RecordBatch) {
        let Ok(view) = ScoredView::new(scored) else {
            return;
        };
        let mut recent = self.recent.write().expect("state lock");
        for i in 0..scored.num_rows() {
            let (device, metric) = (view.device.value(i), view.metric.value(i));
            if !recent.contains_key(device) {
                recent.insert(device.to_owned(), FastMap::default());
            }
            let metrics = recent.get_mut(device).expect("inserted");
            if !metrics.contains_key(metric) {
                metrics.insert(metric.to_owned(), VecDeque::new());
            }
            let ring = metrics.get_mut(metric).expect("inserted");
            if ring.len() == RECENT_POINTS {
                ring.pop_front();
            }
            ring.push_back(view.point(i));
        }
    }

    /// Kept points of a series in `[from, to)`, oldest first.
    pub fn recent_points(
        &self,
        device: &str,
        metric: &str,
        from_us: i64,
        to_us: i64,
    ) -> Vec<Point> {
        let recent = self.recent.read().expect("state lock");
        let mut out: Vec<Point> = recent
            .get(device)
            .and_then(|metrics| metrics.get(metric))
            .map(|r| {
                r.iter()
                    .filter(|p| p.ts_us >= from_us && p.ts_us < to_us)
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by_key(|p| p.ts_us);
        out
    }

    /// Assigns ids and appends the batch's stream events (anomalies first).
    fn publish(&self, updates: &[SeriesUpdate], events: &mut [AnomalyEvent]) {
        let mut by_device: FastMap<&str, Vec<SeriesUpdate>> = FastMap::default();
        for u in updates {
            by_device.entry(&*u.device).or_default().push(u.clone());
        }
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
                stream.1.push_back(event.clone());
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
        for (_, metrics) in by_device {
            let device = metrics[0].device.clone();
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
        devices.get(name).map(|d| device_state(name, d))
    }

    pub fn devices(&self) -> Vec<DeviceState> {
        let devices = self.devices.read().expect("state lock");
        devices
            .iter()
            .map(|(name, d)| device_state(name, d))
            .collect()
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

/// Typed access to the columns of a scored-table batch that points need.
#[derive(Debug)]
pub struct ScoredView<'a> {
    pub device: &'a arrow_array::StringArray,
    pub metric: &'a arrow_array::StringArray,
    pub ts: &'a arrow_array::TimestampMicrosecondArray,
    pub value: &'a arrow_array::Float64Array,
    pub score: &'a arrow_array::Float64Array,
    pub status: &'a arrow_array::StringArray,
}

impl<'a> ScoredView<'a> {
    pub fn new(b: &'a arrow_array::RecordBatch) -> Result<Self, String> {
        fn col<'b, T: 'static>(
            b: &'b arrow_array::RecordBatch,
            name: &str,
        ) -> Result<&'b T, String> {
            b.column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<T>())
                .ok_or_else(|| format!("no {name} column of the expected type"))
        }
        use schemas::tables as t;
        Ok(Self {
            device: col(b, t::DEVICE)?,
            metric: col(b, t::METRIC)?,
            ts: col(b, t::TS)?,
            value: col(b, t::VALUE)?,
            score: col(b, t::SCORE)?,
            status: col(b, t::STATUS)?,
        })
    }

    pub fn point(&self, i: usize) -> Point {
        use arrow_array::Array;
        let status = match self.status.value(i) {
            status::OK => status::OK,
            status::ANOMALOUS => status::ANOMALOUS,
            status::UNSCORED => status::UNSCORED,
            status::LATE => status::LATE,
            _ => status::WARMING_UP,
        };
        Point {
            ts_us: self.ts.value(i),
            value: self.value.value(i),
            score: self.score.is_valid(i).then(|| self.score.value(i)),
            status,
        }
    }
}
