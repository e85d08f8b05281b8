//! The archive stage (`hub-archive` thread): appends each scored batch to
//! the Parquet archive, commits files by size and age, runs retention and
//! compaction, hands committed files to the S3 uploader, and publishes the
//! low-water mark the sequencer trims the WAL by. A failure to write stops
//! the stage (see the pipeline's module docs for what follows).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use super::{Ended, ScoredRecord, Stage, StageFailed, add_ns, thread_cpu};
use crate::archive::{Archive, ArchiveError, CommittedFile, Table};
use crate::stats::HubStats;

pub(super) struct ArchiveStage {
    pub(super) archive: Archive,
    pub(super) stats: Arc<HubStats>,
    pub(super) low_water: Arc<AtomicU64>,
    pub(super) uploader: Option<crate::archive::s3::Uploader>,
    pub(super) next_maintenance: Instant,
}

impl Stage for ArchiveStage {
    type In = ScoredRecord;
    type Out = std::convert::Infallible;
    /// The final low-water mark.
    type Done = u64;

    /// Retention and compaction when due, files past their age committed,
    /// and the low-water mark published (after every batch, as the loop
    /// ticks right after each).
    fn on_tick(&mut self) -> Result<(), StageFailed> {
        if Instant::now() >= self.next_maintenance {
            self.next_maintenance = Instant::now() + self.archive.maintenance_interval();
            self.maintain_archive();
        }
        match self.archive.commit_aged() {
            Ok(files) => self.committed(&files),
            Err(e) => {
                self.fail(&e);
                return Err(StageFailed);
            }
        }
        self.low_water.store(self.archive.low_water(), Relaxed);
        Ok(())
    }

    fn process(&mut self, record: ScoredRecord) -> Result<Option<Self::Out>, StageFailed> {
        let started = thread_cpu();
        let result = self.append(&record);
        add_ns(&self.stats.pipeline_archive_ns, started, thread_cpu());
        match result {
            Ok(()) => Ok(None),
            Err(e) => {
                self.fail(&e);
                Err(StageFailed)
            }
        }
    }

    /// At the end of input every open file is committed; after a failure
    /// the low-water mark stays where the failure froze it (dropping the
    /// queue told the stages before this one).
    fn on_close(mut self, ended: Ended) -> u64 {
        if ended == Ended::InputClosed {
            match self.archive.commit_all() {
                Ok(files) => self.committed(&files),
                Err(e) => self.fail(&e),
            }
        }
        if let Some(uploader) = self.uploader.take() {
            // Files not uploaded by now stay local and go up at the next start.
            uploader.finish();
        }
        let low_water = self.archive.low_water();
        if ended == Ended::InputClosed {
            self.low_water.store(low_water, Relaxed);
        }
        low_water
    }
}

impl ArchiveStage {
    fn append(&mut self, record: &ScoredRecord) -> Result<(), ArchiveError> {
        let mut files = self
            .archive
            .append(Table::Scored, record.pos, &record.scored)?;
        files.extend(
            self.archive
                .append(Table::Anomalies, record.pos, &record.anomalies)?,
        );
        if let Some(shadow) = &record.shadow {
            files.extend(self.archive.append(Table::Shadow, record.pos, shadow)?);
            self.stats
                .shadow_rows
                .fetch_add(shadow.num_rows() as u64, Relaxed);
        }
        self.committed(&files);
        self.stats
            .readings_archived
            .fetch_add(record.scored.num_rows() as u64, Relaxed);
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
                tracing::info!(partitions = n, "archive partitions past retention removed");
            }
            Err(e) => {
                self.stats.maintenance_errors.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "archive retention failed");
            }
        }
        let mut busy = std::collections::HashSet::new();
        if let Some(uploader) = &mut self.uploader {
            // The bucket's retention, compaction and vacuum (done by the
            // upload thread, after the uploads queued before).
            uploader.maintain(self.archive.retention_first_hour(now_us));
            // With uploads on commit, files are merged in the bucket; with
            // uploads of closed partitions, locally before (see
            // archive::s3).
            if !uploader.waits_for_closed_partitions() {
                return;
            }
            busy = uploader.busy().clone();
        } else {
            match self.archive.vacuum(now_us / 1000) {
                Ok(0) => {}
                Ok(n) => tracing::info!(files = n, "archive files no version holds deleted"),
                Err(e) => {
                    self.stats.maintenance_errors.fetch_add(1, Relaxed);
                    tracing::error!(error = %e, "archive vacuum failed");
                }
            }
        }
        match self.archive.compact_one_skipping(now_us, &busy) {
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
        if let Some(uploader) = &mut self.uploader {
            match self.archive.settled_files(now_us, &busy) {
                Ok(files) => files.into_iter().for_each(|f| uploader.enqueue(f)),
                Err(e) => {
                    self.stats.maintenance_errors.fetch_add(1, Relaxed);
                    tracing::error!(error = %e, "cannot list closed partitions for upload; the next round retries");
                }
            }
        }
    }

    fn committed(&mut self, files: &[CommittedFile]) {
        for f in files {
            if let Some(uploader) = &mut self.uploader {
                uploader.committed(&f.path);
            }
            self.stats.files_committed.fetch_add(1, Relaxed);
            self.stats.bytes_committed.fetch_add(f.bytes, Relaxed);
            tracing::debug!(path = %f.path.display(), rows = f.rows, bytes = f.bytes, "committed archive file");
        }
        self.stats
            .open_files
            .store(self.archive.open_files() as u64, Relaxed);
    }

    fn fail(&self, e: &ArchiveError) {
        self.stats.fail_archive();
        if e.is_retryable() {
            tracing::error!(error = %e, "archive write failed: archiving stops and is retried; acknowledged batches stay in the WAL");
        } else {
            tracing::error!(error = %e, "archive write failed in a way waiting will not fix (a bug, damaged data or a setting): archiving stops and is retried, but needs an operator; acknowledged batches stay in the WAL");
        }
    }
}
