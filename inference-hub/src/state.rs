//! What the API serves from memory: the latest value, score and status of
//! every series, and the most recent anomaly events.
//!
//! Written by the pipeline thread after each batch, read by API handlers.
//! Bounded: one entry per series and at most `MAX_RECENT_ANOMALIES` events.

use std::collections::{BTreeMap, VecDeque};
use std::sync::RwLock;

use schemas::tables::status;
use serde::Serialize;

use crate::scoring::{AnomalyEvent, SeriesUpdate, format_ts};

pub const MAX_RECENT_ANOMALIES: usize = 10_000;

#[derive(Debug, Clone, Serialize)]
pub struct MetricState {
    pub metric: String,
    pub ts: String,
    pub value: f64,
    pub score: Option<f64>,
    pub status: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeviceState {
    pub device: String,
    /// Worst status over the device's metrics.
    pub status: &'static str,
    /// When the hub last received a reading of this device (hub clock).
    pub last_seen: String,
    pub metrics: Vec<MetricState>,
}

#[derive(Debug, Default)]
struct Device {
    last_seen_us: i64,
    metrics: BTreeMap<String, MetricState>,
}

#[derive(Debug, Default)]
pub struct HubState {
    devices: RwLock<BTreeMap<String, Device>>,
    anomalies: RwLock<VecDeque<AnomalyEvent>>,
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
        {
            let mut devices = self.devices.write().expect("state lock");
            for u in updates {
                let d = devices.entry(u.device.to_string()).or_default();
                d.last_seen_us = now_us;
                d.metrics.insert(
                    u.metric.to_string(),
                    MetricState {
                        metric: u.metric.to_string(),
                        ts: format_ts(u.ts_us),
                        value: u.value,
                        score: u.score,
                        status: u.status,
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

    pub fn devices(&self) -> Vec<DeviceState> {
        let devices = self.devices.read().expect("state lock");
        devices
            .iter()
            .map(|(name, d)| DeviceState {
                device: name.clone(),
                status: d
                    .metrics
                    .values()
                    .map(|m| m.status)
                    .max_by_key(|s| rank(s))
                    .unwrap_or(status::WARMING_UP),
                last_seen: format_ts(d.last_seen_us),
                metrics: d.metrics.values().cloned().collect(),
            })
            .collect()
    }

    /// Newest first, filtered by event time and device.
    pub fn anomalies(
        &self,
        since_us: Option<i64>,
        device: Option<&str>,
        limit: usize,
    ) -> Vec<AnomalyEvent> {
        let recent = self.anomalies.read().expect("state lock");
        recent
            .iter()
            .rev()
            .filter(|e| since_us.is_none_or(|s| e.ts_us >= s))
            .filter(|e| device.is_none_or(|d| e.device == d))
            .take(limit)
            .cloned()
            .collect()
    }
}
