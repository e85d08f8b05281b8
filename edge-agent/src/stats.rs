//! Counters of every edge stage, shared by the tasks through an `Arc` and
//! rendered as Prometheus text. Metric names live here and nowhere else.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::decode::Rejection;

#[derive(Debug, Default)]
pub struct EdgeStats {
    pub messages_received: AtomicU64,
    rejected: [AtomicU64; Rejection::ALL.len()],
    pub fields_skipped: AtomicU64,
    pub readings_accepted: AtomicU64,
    pub batches_sealed: AtomicU64,
    pub batch_sends: AtomicU64,
    pub batch_retries: AtomicU64,
    pub batches_acked: AtomicU64,
    pub batches_rejected_by_hub: AtomicU64,
    pub readings_delivered: AtomicU64,
    pub readings_rejected_by_hub: AtomicU64,
    pub uplink_bytes: AtomicU64,
    pub device_acks: Arc<AtomicU64>,
    pub device_ack_failures: Arc<AtomicU64>,
    pub in_flight: AtomicU64,
    pub broker_connects: AtomicU64,
    pub broker_errors: AtomicU64,
    pub dead_letters: AtomicU64,
    pub dead_letters_dropped: AtomicU64,
    /// Per-rule filter counters (rule name, kept, dropped per reason).
    filter: std::sync::Mutex<Vec<(String, crate::filter::RuleCounts)>>,
}

impl EdgeStats {
    pub fn reject(&self, reason: Rejection) {
        self.rejected[reason.index()].fetch_add(1, Relaxed);
    }

    pub fn rejected(&self, reason: Rejection) -> u64 {
        self.rejected[reason.index()].load(Relaxed)
    }

    /// Publishes the filter's counters (called by ingest after changes).
    pub fn set_filter_counts(&self, counts: Vec<(String, crate::filter::RuleCounts)>) {
        *self.filter.lock().expect("stats lock") = counts;
    }

    /// Readings dropped by `rule` for `reason` so far.
    pub fn filter_dropped(&self, rule: &str, reason: crate::filter::DropReason) -> u64 {
        let counts = self.filter.lock().expect("stats lock");
        counts
            .iter()
            .filter(|(n, _)| n == rule)
            .map(|(_, c)| c.dropped(reason))
            .sum()
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().map(|c| c.load(Relaxed)).sum()
    }

    pub fn render_prometheus(&self) -> String {
        let mut out = String::with_capacity(2048);
        let mut counter = |name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        let get = |c: &AtomicU64| c.load(Relaxed);
        counter(
            "edge_messages_received_total",
            "Device messages received.",
            get(&self.messages_received),
        );
        counter(
            "edge_readings_accepted_total",
            "Readings decoded and batched.",
            get(&self.readings_accepted),
        );
        counter(
            "edge_fields_skipped_total",
            "Non-numeric payload fields skipped.",
            get(&self.fields_skipped),
        );
        counter(
            "edge_batches_sealed_total",
            "Batches sealed.",
            get(&self.batches_sealed),
        );
        counter(
            "edge_batch_sends_total",
            "Batch transmissions, retries included.",
            get(&self.batch_sends),
        );
        counter(
            "edge_batch_retries_total",
            "Batch retransmissions.",
            get(&self.batch_retries),
        );
        counter(
            "edge_batches_acked_total",
            "Batches the hub acknowledged.",
            get(&self.batches_acked),
        );
        counter(
            "edge_batches_rejected_total",
            "Batches the hub rejected.",
            get(&self.batches_rejected_by_hub),
        );
        counter(
            "edge_readings_delivered_total",
            "Readings durable on the hub.",
            get(&self.readings_delivered),
        );
        counter(
            "edge_readings_rejected_total",
            "Readings in batches the hub rejected.",
            get(&self.readings_rejected_by_hub),
        );
        counter(
            "edge_uplink_bytes_total",
            "Envelope bytes sent, retries included.",
            get(&self.uplink_bytes),
        );
        counter(
            "edge_device_acks_total",
            "PUBACKs sent to the gateway broker.",
            get(&self.device_acks),
        );
        counter(
            "edge_device_ack_failures_total",
            "PUBACKs that could not be queued (message will be redelivered).",
            get(&self.device_ack_failures),
        );
        counter(
            "edge_broker_connects_total",
            "Connections made to brokers.",
            get(&self.broker_connects),
        );
        counter(
            "edge_broker_errors_total",
            "Broker connection errors.",
            get(&self.broker_errors),
        );
        let _ = writeln!(
            out,
            "# HELP edge_messages_rejected_total Device messages that produced no reading, by reason.\n# TYPE edge_messages_rejected_total counter"
        );
        for reason in Rejection::ALL {
            let _ = writeln!(
                out,
                "edge_messages_rejected_total{{reason=\"{}\"}} {}",
                reason.as_str(),
                self.rejected(reason)
            );
        }
        let _ = writeln!(
            out,
            "# HELP edge_batches_in_flight Batches sent and not yet acknowledged.\n# TYPE edge_batches_in_flight gauge\nedge_batches_in_flight {}",
            get(&self.in_flight)
        );
        out
    }
}
