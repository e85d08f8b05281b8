//! The pipeline thread: durable batches in WAL order -> scoring -> archive,
//! plus the in-memory state the API serves.
//!
//! Runs on its own thread because both halves are CPU- and disk-bound
//! (tract, Parquet encoding, fsync). After every batch it publishes the
//! archive's low-water mark so the sequencer can trim the WAL. When archiving
//! fails (disk full, I/O error) it logs at ERROR, marks the hub unhealthy and
//! stops consuming: the WAL keeps every acknowledged batch, the bounded queue
//! fills, and intake stops acknowledging instead of losing data.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::archive::{Archive, CommittedFile, Table};
use crate::intake::DurableBatch;
use crate::scoring::Router;
use crate::state::HubState;
use crate::stats::HubStats;

const TICK: Duration = Duration::from_millis(200);

#[derive(Debug)]
pub struct Pipeline {
    pub scorer: Router,
    /// How often model directories are checked for a new version.
    pub reload_interval: Duration,
    pub archive: Archive,
    pub state: Arc<HubState>,
    pub stats: Arc<HubStats>,
    pub low_water: Arc<AtomicU64>,
    /// With `[archive.s3]`: uploads committed files to the bucket.
    pub uploader: Option<crate::archive::s3::Uploader>,
}

fn add_ns(counter: &AtomicU64, from: Instant, to: Instant) {
    let ns = u64::try_from(to.duration_since(from).as_nanos()).unwrap_or(u64::MAX);
    counter.fetch_add(ns, Relaxed);
}

impl Pipeline {
    /// Consumes until the sender side is dropped, then commits every open
    /// file. Returns the archive's final low-water mark.
    pub fn run(mut self, rx: Receiver<DurableBatch>) -> u64 {
        let mut next_reload_check = Instant::now() + self.reload_interval;
        let mut next_maintenance = Instant::now() + self.archive.maintenance_interval();
        loop {
            if Instant::now() >= next_maintenance {
                next_maintenance = Instant::now() + self.archive.maintenance_interval();
                self.maintain_archive();
            }
            // Between batches: a batch is scored by one model version only.
            if Instant::now() >= next_reload_check {
                next_reload_check = Instant::now() + self.reload_interval;
                self.reload_models();
            }
            match rx.recv_timeout(TICK) {
                Ok(batch) => {
                    if let Err(e) = self.process(batch) {
                        self.fail(&e);
                        return self.archive.low_water();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            match self.archive.commit_aged() {
                Ok(files) => self.committed(&files),
                Err(e) => {
                    self.fail(&e);
                    return self.archive.low_water();
                }
            }
            self.low_water.store(self.archive.low_water(), Relaxed);
        }
        match self.archive.commit_all() {
            Ok(files) => self.committed(&files),
            Err(e) => self.fail(&e),
        }
        if let Some(uploader) = self.uploader.take() {
            // Files not uploaded by now stay local and go up at the next start.
            uploader.finish();
        }
        let low_water = self.archive.low_water();
        self.low_water.store(low_water, Relaxed);
        low_water
    }

    fn process(&mut self, durable: DurableBatch) -> std::io::Result<()> {
        let now_us = chrono::Utc::now().timestamp_micros();
        let started = Instant::now();
        let routed = self.scorer.score(&durable.batch, now_us);
        let scored = Instant::now();
        add_ns(&self.stats.pipeline_score_ns, started, scored);
        let out = routed.live;
        if let Some(e) = &out.model_error {
            self.stats.scoring_errors.fetch_add(1, Relaxed);
            tracing::error!(error = %e, seq = durable.batch.header.seq, "model failed; batch archived unscored");
        }
        let rows = out.scored.num_rows() as u64;
        let mut files = self
            .archive
            .append(Table::Scored, durable.pos, &out.scored)?;
        files.extend(
            self.archive
                .append(Table::Anomalies, durable.pos, &out.anomalies)?,
        );
        if let Some(shadow) = &routed.shadow {
            files.extend(self.archive.append(Table::Shadow, durable.pos, shadow)?);
            self.stats
                .shadow_rows
                .fetch_add(shadow.num_rows() as u64, Relaxed);
        }
        self.committed(&files);
        let archived = Instant::now();
        add_ns(&self.stats.pipeline_archive_ns, scored, archived);
        self.stats.readings_archived.fetch_add(rows, Relaxed);
        let unscored = out
            .scored
            .column_by_name(schemas::tables::SCORE)
            .map_or(0, |c| arrow_array::Array::null_count(c.as_ref()));
        self.stats
            .readings_scored
            .fetch_add(rows - unscored as u64, Relaxed);
        self.stats
            .anomalies
            .fetch_add(out.events.len() as u64, Relaxed);
        self.stats
            .series
            .store(self.scorer.series_count() as u64, Relaxed);
        self.state.record(
            &out.scored,
            out.events,
            now_us,
            &durable.batch.header.gateway,
        );
        add_ns(&self.stats.pipeline_state_ns, archived, Instant::now());
        Ok(())
    }

    /// Retention, then one round of compaction. Failures are logged and
    /// counted; they never stop archiving (nothing acknowledged depends on
    /// them, and the next round retries).
    fn maintain_archive(&mut self) {
        let now_us = chrono::Utc::now().timestamp_micros();
        match self.archive.apply_retention(now_us) {
            Ok(0) => {}
            Ok(n) => {
                self.stats.partitions_expired.fetch_add(n as u64, Relaxed);
                tracing::info!(partitions = n, "archive partitions past retention deleted");
            }
            Err(e) => {
                self.stats.maintenance_errors.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "archive retention failed");
            }
        }
        if self.uploader.is_some() {
            // Compaction needs the files locally and an atomic swap; with
            // object storage files are sized when written (see archive::s3).
            return;
        }
        match self.archive.compact_one(now_us) {
            Ok(None) => {}
            Ok(Some(file)) => {
                self.stats.compactions.fetch_add(1, Relaxed);
                tracing::info!(path = %file.path.display(), rows = file.rows, "compacted a closed partition");
            }
            Err(e) => {
                self.stats.maintenance_errors.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "archive compaction failed; the partition is left as it was");
            }
        }
    }

    fn reload_models(&mut self) {
        for reload in self.scorer.reload_changed() {
            match reload.result {
                Ok(version) => {
                    self.stats.model_reloads.fetch_add(1, Relaxed);
                    tracing::info!(route = %reload.route, model = %version, "model reloaded; the next batch is scored by it");
                }
                Err(e) => {
                    self.stats.model_reload_failures.fetch_add(1, Relaxed);
                    tracing::error!(route = %reload.route, error = %e, "model reload failed; the previous model keeps scoring");
                }
            }
        }
    }

    fn committed(&self, files: &[CommittedFile]) {
        for f in files {
            if let Some(uploader) = &self.uploader {
                uploader.enqueue(f.path.clone());
            }
            self.stats.files_committed.fetch_add(1, Relaxed);
            self.stats.bytes_committed.fetch_add(f.bytes, Relaxed);
            tracing::debug!(path = %f.path.display(), rows = f.rows, bytes = f.bytes, "committed archive file");
        }
        self.stats
            .open_files
            .store(self.archive.open_files() as u64, Relaxed);
    }

    fn fail(&self, e: &std::io::Error) {
        self.stats.archive_failed.store(true, Relaxed);
        tracing::error!(error = %e, "archive write failed: archiving stops; acknowledged batches stay in the WAL for the next start");
    }
}
