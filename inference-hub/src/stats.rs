//! Counters of every hub stage, rendered as Prometheus text. Metric names
//! live here and nowhere else.

use std::sync::atomic::{
    AtomicBool, AtomicU64, Ordering::AcqRel, Ordering::Acquire, Ordering::Relaxed,
};

#[derive(Debug, Default)]
pub struct HubStats {
    pub batches_received_http: AtomicU64,
    pub batches_received_mqtt: AtomicU64,
    pub batches_durable: AtomicU64,
    pub batches_duplicate: AtomicU64,
    pub batches_rejected: AtomicU64,
    pub batches_unreadable: AtomicU64,
    /// Batches whose envelope names a gateway other than the sender's
    /// authenticated one (client certificate, per-gateway token, or the
    /// gateway in the MQTT topic): refused, never made durable.
    pub batches_forbidden_http: AtomicU64,
    pub batches_forbidden_mqtt: AtomicU64,
    pub batches_unavailable: AtomicU64,
    pub batches_replayed: AtomicU64,
    pub readings_durable: AtomicU64,
    pub readings_scored: AtomicU64,
    pub readings_archived: AtomicU64,
    pub anomalies: AtomicU64,
    pub wal_syncs: AtomicU64,
    pub wal_bytes: AtomicU64,
    pub wal_segments_deleted: AtomicU64,
    /// Acknowledged batches lost: WAL records damaged on disk, or that no
    /// longer decode (each logged at ERROR and put in the loss ledger).
    pub wal_records_lost: AtomicU64,
    /// WAL appends that failed without leaving the log in doubt (a write
    /// cut back, a segment that could not be created): retried.
    pub wal_write_errors: AtomicU64,
    /// Readings the hub refused to hold (the rest of their batch is
    /// durable): stamped outside the time window, or new series past a cap.
    pub readings_refused_time: AtomicU64,
    pub readings_refused_series: AtomicU64,
    /// Series the hub holds (the screening registry).
    pub series_held: AtomicU64,
    /// Dedup keys forgotten to keep the index bounded (a resend of one is
    /// archived again), and snapshots found unusable at start-up.
    pub dedup_forgotten: AtomicU64,
    pub dedup_snapshots_refused: AtomicU64,
    /// Detector state snapshots written, failed, found unusable at start-up,
    /// the size of the last one, and the series/devices restored from one.
    pub detector_state_saves: AtomicU64,
    pub detector_state_save_failures: AtomicU64,
    pub detector_state_refused: AtomicU64,
    pub detector_state_bytes: AtomicU64,
    pub detector_state_restored: AtomicU64,
    /// Detector state shared between hubs (`scoring.state-sharing`):
    /// gateways' objects written, series and devices taken over from them,
    /// and reads or writes that failed (damaged, too large, unreachable).
    pub shared_state_writes: AtomicU64,
    pub shared_state_taken: AtomicU64,
    pub shared_state_failures: AtomicU64,
    /// Archive failures after which the pipeline was rebuilt from the WAL.
    pub archive_restarts: AtomicU64,
    /// Entries in the loss ledger no operator has acknowledged yet.
    pub losses_unacknowledged: AtomicU64,
    pub files_committed: AtomicU64,
    pub bytes_committed: AtomicU64,
    pub scoring_errors: AtomicU64,
    /// Models swapped in by hot reload, and reloads that failed (the old
    /// model kept scoring).
    pub model_reloads: AtomicU64,
    pub model_reload_failures: AtomicU64,
    /// Rows scored by shadow models.
    pub shadow_rows: AtomicU64,
    /// Closed partitions merged into one file, partitions deleted by
    /// retention, and failures of either.
    pub compactions: AtomicU64,
    /// Files uploaded to object storage, their bytes, and failed attempts
    /// (retried).
    pub s3_uploads: AtomicU64,
    pub s3_upload_bytes: AtomicU64,
    /// Archive commits that found their table version taken by another
    /// writer (each was checked again and tried on the newer version).
    pub archive_commit_conflicts: AtomicU64,
    pub s3_upload_failures: AtomicU64,
    pub partitions_expired: AtomicU64,
    pub maintenance_errors: AtomicU64,
    /// Set when the WAL could not be written or fsynced: intake stops.
    pub wal_failed: AtomicBool,
    /// Archive failures so far (archiving stops, the WAL keeps the data),
    /// and how many of them a rebuilt pipeline has recovered from: archiving
    /// is stopped while the two differ (see [`HubStats::archive_failed`]).
    archive_failures: AtomicU64,
    archive_recovered: AtomicU64,
    pub series: AtomicU64,
    /// Open HTTP connections; accepts that failed for want of descriptors
    /// or memory; connections closed for a header-read timeout.
    pub http_connections: AtomicU64,
    pub http_accept_errors: AtomicU64,
    pub http_timeouts: AtomicU64,
    /// TLS handshakes that failed or timed out (no certificate, an unknown
    /// or expired one, not TLS at all).
    pub http_tls_refused: AtomicU64,
    pub open_files: AtomicU64,
    /// Time the pipeline's threads spent per stage (nanoseconds): where a
    /// saturated hub's time goes.
    pub pipeline_score_ns: AtomicU64,
    pub pipeline_archive_ns: AtomicU64,
    pub pipeline_state_ns: AtomicU64,
}

impl HubStats {
    pub fn healthy(&self) -> bool {
        !self.wal_failed.load(Relaxed) && !self.archive_failed()
    }

    /// Archiving has stopped on a failure no rebuilt pipeline has recovered
    /// from yet.
    pub fn archive_failed(&self) -> bool {
        self.archive_failures.load(Acquire) != self.archive_recovered.load(Acquire)
    }

    /// The archive could not be written (or a pipeline stage could not run):
    /// archiving stops.
    pub fn fail_archive(&self) {
        self.archive_failures.fetch_add(1, AcqRel);
    }

    /// Failures so far: read before a pipeline is rebuilt, and passed to
    /// [`HubStats::archive_recovered_from`] once it runs.
    pub fn archive_failures_so_far(&self) -> u64 {
        self.archive_failures.load(Acquire)
    }

    /// A pipeline rebuilt after `failures` failures runs: those are
    /// recovered from. A failure of that pipeline itself, even one during
    /// its replay of the WAL, came later and keeps archiving stopped (a
    /// flag cleared here could erase it and leave a hub that looks healthy
    /// with no pipeline).
    pub fn archive_recovered_from(&self, failures: u64) {
        self.archive_recovered.fetch_max(failures, AcqRel);
    }

    /// The `/metrics` text (OpenMetrics, see `iot_metrics`).
    pub fn render_prometheus(&self) -> String {
        let mut samples = iot_metrics::Samples::default();
        let get = |c: &AtomicU64| c.load(Relaxed);
        // `name{label="value",...}`: the labels of a sample are code
        // constants here.
        let mut metric = |kind: &str, name: &str, help: &str, value: u64| {
            let (family, labels) = name.split_once('{').unwrap_or((name, ""));
            let labels: Vec<(&str, &str)> = labels
                .trim_end_matches('}')
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k, v.trim_matches('"')))
                .collect();
            if kind == "counter" {
                samples.labelled_counter(family, help, &labels, value);
            } else {
                samples.gauge(family, help, value);
            }
        };
        metric(
            "counter",
            "hub_batches_received_total{transport=\"http\"}",
            "Batches received over HTTP.",
            get(&self.batches_received_http),
        );
        metric(
            "counter",
            "hub_batches_received_total{transport=\"mqtt\"}",
            "Batches received over MQTT.",
            get(&self.batches_received_mqtt),
        );
        metric(
            "counter",
            "hub_batches_durable_total",
            "Batches made durable in the WAL and acknowledged.",
            get(&self.batches_durable),
        );
        metric(
            "counter",
            "hub_batches_duplicate_total",
            "Batches dropped as duplicates of a durable batch.",
            get(&self.batches_duplicate),
        );
        metric(
            "counter",
            "hub_batches_rejected_total",
            "Batches rejected as invalid (answered).",
            get(&self.batches_rejected),
        );
        metric(
            "counter",
            "hub_batches_unreadable_total",
            "Inputs without a readable envelope header (cannot be answered).",
            get(&self.batches_unreadable),
        );
        metric(
            "counter",
            "hub_batches_forbidden_total{transport=\"http\"}",
            "Batches refused because their gateway is not the sender's authenticated identity.",
            get(&self.batches_forbidden_http),
        );
        metric(
            "counter",
            "hub_batches_forbidden_total{transport=\"mqtt\"}",
            "Batches refused because their gateway is not the sender's authenticated identity.",
            get(&self.batches_forbidden_mqtt),
        );
        metric(
            "counter",
            "hub_batches_unavailable_total",
            "Batches refused because the hub could not make them durable.",
            get(&self.batches_unavailable),
        );
        metric(
            "counter",
            "hub_batches_replayed_total",
            "Batches replayed from the WAL at start-up.",
            get(&self.batches_replayed),
        );
        metric(
            "counter",
            "hub_readings_durable_total",
            "Readings in durable batches.",
            get(&self.readings_durable),
        );
        metric(
            "counter",
            "hub_readings_scored_total",
            "Readings that received a model score.",
            get(&self.readings_scored),
        );
        metric(
            "counter",
            "hub_readings_archived_total",
            "Readings written to the scored table.",
            get(&self.readings_archived),
        );
        metric(
            "counter",
            "hub_anomalies_total",
            "Anomaly events.",
            get(&self.anomalies),
        );
        metric(
            "counter",
            "hub_wal_syncs_total",
            "WAL group commits (fsyncs).",
            get(&self.wal_syncs),
        );
        metric(
            "counter",
            "hub_wal_bytes_total",
            "Bytes appended to the WAL.",
            get(&self.wal_bytes),
        );
        metric(
            "counter",
            "hub_wal_segments_deleted_total",
            "WAL segments deleted after archiving.",
            get(&self.wal_segments_deleted),
        );
        metric(
            "gauge",
            "hub_http_connections",
            "Open HTTP connections.",
            get(&self.http_connections),
        );
        metric(
            "counter",
            "hub_http_accept_errors_total",
            "HTTP accepts that failed for want of descriptors or memory (retried).",
            get(&self.http_accept_errors),
        );
        metric(
            "counter",
            "hub_http_timeouts_total",
            "HTTP connections closed because headers did not arrive in time (slow or idle clients).",
            get(&self.http_timeouts),
        );
        metric(
            "counter",
            "hub_http_tls_refused_total",
            "TLS handshakes that failed or timed out (no, unknown or expired client certificate; not TLS).",
            get(&self.http_tls_refused),
        );
        metric(
            "counter",
            "hub_wal_records_lost_total",
            "Acknowledged batches lost to WAL damage (logged at ERROR, listed at /v1/admin/losses).",
            get(&self.wal_records_lost),
        );
        metric(
            "counter",
            "hub_wal_write_errors_total",
            "WAL writes that failed cleanly (batches refused for now, retried by their gateways).",
            get(&self.wal_write_errors),
        );
        metric(
            "counter",
            "hub_readings_refused_total{reason=\"time\"}",
            "Readings refused before the WAL: stamped outside the time window, or new series past a cap (the gateway is told).",
            get(&self.readings_refused_time),
        );
        metric(
            "counter",
            "hub_readings_refused_total{reason=\"series\"}",
            "Readings refused before the WAL: stamped outside the time window, or new series past a cap (the gateway is told).",
            get(&self.readings_refused_series),
        );
        metric(
            "gauge",
            "hub_series_held",
            "Series (gateway, device, metric) the hub holds against intake.max-series.",
            get(&self.series_held),
        );
        metric(
            "counter",
            "hub_dedup_forgotten_total",
            "Dedup keys forgotten to keep the index bounded (a resend of one is archived again).",
            get(&self.dedup_forgotten),
        );
        metric(
            "counter",
            "hub_dedup_snapshots_refused_total",
            "Dedup snapshots found damaged or oversized at start-up (rebuilt from the WAL).",
            get(&self.dedup_snapshots_refused),
        );
        metric(
            "counter",
            "hub_detector_state_saves_total",
            "Detector state snapshots written (scoring.state-snapshot-interval).",
            get(&self.detector_state_saves),
        );
        metric(
            "counter",
            "hub_detector_state_save_failures_total",
            "Detector state snapshots that could not be written.",
            get(&self.detector_state_save_failures),
        );
        metric(
            "counter",
            "hub_shared_state_writes_total",
            "Gateways' detector state written to the archive for other hubs (scoring.state-sharing).",
            get(&self.shared_state_writes),
        );
        metric(
            "counter",
            "hub_shared_state_taken_total",
            "Series and devices whose learned state was taken over from another hub's shared state.",
            get(&self.shared_state_taken),
        );
        metric(
            "counter",
            "hub_shared_state_failures_total",
            "Shared detector state that could not be written or read (damaged, too large, unreachable); those series learn anew.",
            get(&self.shared_state_failures),
        );
        metric(
            "counter",
            "hub_detector_state_refused_total",
            "Detector state snapshots found damaged or oversized at start-up (the next older one, or none, is used).",
            get(&self.detector_state_refused),
        );
        metric(
            "gauge",
            "hub_detector_state_bytes",
            "Size of the last detector state snapshot.",
            get(&self.detector_state_bytes),
        );
        metric(
            "gauge",
            "hub_detector_state_restored_series",
            "Series and devices whose learned state was restored at start-up.",
            get(&self.detector_state_restored),
        );
        metric(
            "counter",
            "hub_archive_restarts_total",
            "Times archiving resumed after a failure (the pipeline rebuilt from the WAL).",
            get(&self.archive_restarts),
        );
        metric(
            "gauge",
            "hub_losses_unacknowledged",
            "Loss-ledger entries no operator has acknowledged (/health says degraded meanwhile).",
            get(&self.losses_unacknowledged),
        );
        metric(
            "counter",
            "hub_files_committed_total",
            "Parquet files committed.",
            get(&self.files_committed),
        );
        metric(
            "counter",
            "hub_bytes_committed_total",
            "Parquet bytes committed.",
            get(&self.bytes_committed),
        );
        metric(
            "counter",
            "hub_model_reloads_total",
            "Models swapped in without a restart.",
            get(&self.model_reloads),
        );
        metric(
            "counter",
            "hub_model_reload_failures_total",
            "Model reloads that failed (the previous model kept scoring).",
            get(&self.model_reload_failures),
        );
        metric(
            "counter",
            "hub_archive_commit_conflicts_total",
            "Archive commits whose table version another writer took first (checked again and retried).",
            get(&self.archive_commit_conflicts),
        );
        metric(
            "counter",
            "hub_s3_uploads_total",
            "Archive files uploaded to object storage.",
            get(&self.s3_uploads),
        );
        metric(
            "counter",
            "hub_s3_upload_failures_total",
            "Failed upload attempts (the file stays local and is retried).",
            get(&self.s3_upload_failures),
        );
        metric(
            "counter",
            "hub_compactions_total",
            "Closed partitions whose small files were merged into one.",
            get(&self.compactions),
        );
        metric(
            "counter",
            "hub_partitions_expired_total",
            "Partitions deleted by the retention policy.",
            get(&self.partitions_expired),
        );
        metric(
            "counter",
            "hub_archive_maintenance_errors_total",
            "Failed compaction or retention rounds (retried next round).",
            get(&self.maintenance_errors),
        );
        metric(
            "counter",
            "hub_shadow_rows_total",
            "Rows scored by shadow models (table=shadow).",
            get(&self.shadow_rows),
        );
        metric(
            "counter",
            "hub_scoring_errors_total",
            "Batches the model failed on (rows archived unscored).",
            get(&self.scoring_errors),
        );
        metric(
            "gauge",
            "hub_series",
            "Device/metric series with scoring state.",
            get(&self.series),
        );
        metric(
            "gauge",
            "hub_open_files",
            "Parquet files being written.",
            get(&self.open_files),
        );
        metric(
            "gauge",
            "hub_healthy",
            "1 when WAL and archive are writable.",
            u64::from(self.healthy()),
        );
        for (stage, ns) in [
            ("score", &self.pipeline_score_ns),
            ("archive", &self.pipeline_archive_ns),
            ("state", &self.pipeline_state_ns),
        ] {
            samples.labelled_seconds(
                "hub_pipeline_seconds_total",
                "Time the pipeline's stages spent busy: scoring, the API's state and archiving (one thread each).",
                &[("stage", stage)],
                get(ns) as f64 / 1e9,
            );
        }
        samples.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_of_the_rebuilt_pipeline_during_its_replay_is_not_cleared_by_the_restart() {
        let stats = HubStats::default();
        assert!(!stats.archive_failed() && stats.healthy());
        stats.fail_archive();
        assert!(stats.archive_failed() && !stats.healthy());
        // The supervisor reads the count, rebuilds, and the new pipeline
        // fails while replaying, before the supervisor says "resumed".
        let before_rebuild = stats.archive_failures_so_far();
        stats.fail_archive();
        stats.archive_recovered_from(before_rebuild);
        assert!(stats.archive_failed(), "the second failure must stand");
        // The next rebuild runs: recovered.
        let before_rebuild = stats.archive_failures_so_far();
        stats.archive_recovered_from(before_rebuild);
        assert!(!stats.archive_failed() && stats.healthy());
        // A late "recovered" from an older rebuild never hides a new failure.
        stats.fail_archive();
        stats.archive_recovered_from(1);
        assert!(stats.archive_failed());
    }

    #[test]
    fn every_family_has_one_help_and_one_type_line_before_its_samples() {
        let stats = HubStats::default();
        stats.pipeline_archive_ns.store(1_500_000_000, Relaxed);
        let text = stats.render_prometheus();
        let mut typed = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let family = rest.split(' ').next().unwrap();
                assert!(typed.insert(family.to_owned()), "second TYPE for {family}");
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let family = name.strip_suffix("_total").unwrap_or(name);
                assert!(typed.contains(family), "sample before TYPE: {line}");
            }
        }
        assert!(
            text.contains("hub_pipeline_seconds_total{stage=\"archive\"} 1.5\n"),
            "{text}"
        );
        assert!(
            text.contains("hub_batches_received_total{transport=\"mqtt\"} 0\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
