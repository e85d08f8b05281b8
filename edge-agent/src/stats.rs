//! Counters of every edge stage, shared by the tasks through an `Arc` and
//! rendered as Prometheus text. Metric names live here and nowhere else.

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
    /// Announced hubs passed over for answering nothing (sticky routing).
    pub hubs_passed_over: AtomicU64,
    pub batches_acked: AtomicU64,
    /// Hub answers ignored: they do not name the content of the batch in
    /// flight (forged, meant for other bytes, or from a hub too old to name
    /// content), or cannot be read.
    pub acks_ignored: AtomicU64,
    /// Sparkplug rebirth requests sent to edge nodes.
    pub sparkplug_rebirths_requested: AtomicU64,
    /// Hub announcements ignored (malformed, or past the hub limit).
    pub announcements_ignored: AtomicU64,
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
    /// Spool gauges: undelivered records and their bytes on disk.
    pub spool_records: AtomicU64,
    pub spool_bytes: AtomicU64,
    /// 1 while the spool refuses appends because it is full (`block`).
    pub spool_full: AtomicU64,
    /// 1 while the spool cannot write or fsync (see `/health`).
    pub spool_failed: AtomicU64,
    pub spool_errors: AtomicU64,
    pub spool_syncs: AtomicU64,
    pub spool_appended_readings: AtomicU64,
    /// Undelivered records evicted (`drop-oldest`) or expired (TTL).
    pub spool_dropped_records: AtomicU64,
    pub spool_read_errors: AtomicU64,
    pub spool_quarantined_segments: AtomicU64,
    /// Spooled batches lost to damaged bytes found at start-up.
    pub spool_records_lost: AtomicU64,
    /// Spool records waiting to be read back and sent.
    pub backlog_waiting: AtomicU64,
    /// Batches sent from the backlog (read back from disk).
    pub backlog_sends: AtomicU64,
    /// Device messages dropped as broker redeliveries of spooled readings.
    pub redeliveries_suppressed: AtomicU64,
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

    /// The `/metrics` text (OpenMetrics, see `iot_metrics`).
    pub fn render_prometheus(&self) -> String {
        let mut samples = iot_metrics::Samples::default();
        let mut counter = |name: &str, help: &str, value: u64| {
            samples.counter(name, help, value);
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
            "edge_hubs_passed_over_total",
            "Times an announced hub that answered nothing was passed over.",
            get(&self.hubs_passed_over),
        );
        counter(
            "edge_batches_acked_total",
            "Batches the hub acknowledged.",
            get(&self.batches_acked),
        );
        counter(
            "edge_acks_ignored_total",
            "Hub answers ignored because they do not name the batch's content (forged, stale, unreadable, or from an older hub).",
            get(&self.acks_ignored),
        );
        counter(
            "edge_sparkplug_rebirths_requested_total",
            "Sparkplug rebirth requests (NCMD) sent to edge nodes whose birth was missed or whose seq jumped.",
            get(&self.sparkplug_rebirths_requested),
        );
        counter(
            "edge_announcements_ignored_total",
            "Hub announcements ignored as malformed or past the hub limit.",
            get(&self.announcements_ignored),
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
        counter(
            "edge_spool_errors_total",
            "Spool append, fsync or reopen failures.",
            get(&self.spool_errors),
        );
        counter(
            "edge_spool_syncs_total",
            "Spool group commits (fsyncs) that succeeded.",
            get(&self.spool_syncs),
        );
        counter(
            "edge_spool_readings_total",
            "Readings made durable in the spool.",
            get(&self.spool_appended_readings),
        );
        counter(
            "edge_spool_read_errors_total",
            "Spooled batches that could not be read back (skipped).",
            get(&self.spool_read_errors),
        );
        counter(
            "edge_spool_quarantined_segments_total",
            "Damaged spool segments quarantined at start-up.",
            get(&self.spool_quarantined_segments),
        );
        counter(
            "edge_spool_records_lost_total",
            "Spooled batches lost to damaged bytes found at start-up (logged at ERROR).",
            get(&self.spool_records_lost),
        );
        counter(
            "edge_backlog_sends_total",
            "Batches sent from the spool backlog.",
            get(&self.backlog_sends),
        );
        counter(
            "edge_redeliveries_suppressed_total",
            "Device messages recognised as redeliveries of spooled readings.",
            get(&self.redeliveries_suppressed),
        );
        for reason in Rejection::ALL {
            samples.labelled_counter(
                "edge_messages_rejected_total",
                "Device messages that produced no reading, by reason.",
                &[("reason", reason.as_str())],
                self.rejected(reason),
            );
        }
        for (name, help, value) in [
            (
                "edge_spool_records",
                "Undelivered batches in the spool.",
                get(&self.spool_records),
            ),
            (
                "edge_spool_bytes",
                "Bytes of undelivered batches in the spool.",
                get(&self.spool_bytes),
            ),
            (
                "edge_spool_full",
                "1 while the spool is full and holds device messages.",
                get(&self.spool_full),
            ),
            (
                "edge_backlog_waiting",
                "Spooled batches waiting to be read back and sent.",
                get(&self.backlog_waiting),
            ),
            (
                "edge_spool_failed",
                "1 while the spool cannot write or fsync.",
                get(&self.spool_failed),
            ),
            (
                "edge_spool_dropped_records",
                "Undelivered batches evicted (drop-oldest) or expired (ttl).",
                get(&self.spool_dropped_records),
            ),
        ] {
            samples.gauge(name, help, value);
        }
        samples.gauge(
            "edge_batches_in_flight",
            "Batches sent and not yet acknowledged.",
            get(&self.in_flight),
        );
        crate::filter::add_metrics(&self.filter.lock().expect("stats lock"), &mut samples);
        samples.render()
    }
}
