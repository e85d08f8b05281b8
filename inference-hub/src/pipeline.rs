//! The pipeline: durable batches in WAL order -> scoring -> the in-memory
//! state the API serves -> archive.
//!
//! Three threads, so that a busy hub uses its cores: the *scoring* stage
//! (`hub-pipeline`: models, model hot reload) hands each scored batch to the
//! *state* stage (`hub-state`: devices' latest values, newest points, the
//! live stream, recent anomalies), which hands it on to the *archive* stage
//! (`hub-archive`: Parquet files, commits, compaction and retention, S3
//! uploads), each over a short queue bounded in rows. All take batches in WAL
//! order, and the API shows a batch before it is archived. After every batch
//! the archive stage publishes its low-water mark so the sequencer can trim
//! the WAL.
//!
//! When archiving fails (disk full, I/O error, out of descriptors) the
//! archive stage logs at ERROR, marks the hub unhealthy and stops; the
//! other stages stop when they can no longer hand over (or find the next
//! stage gone while idle), and intake stops acknowledging instead of losing
//! data: the WAL keeps every acknowledged batch. The hub then rebuilds the
//! pipeline from the WAL (see `hub`); the state stage does not record twice
//! what the API already shows.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;

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
    /// Saving the detectors' state (see [`crate::detector_state`]).
    pub detector_state: Option<DetectorStateSaving>,
}

/// How the scoring stage saves the detectors' state.
#[derive(Debug)]
pub struct DetectorStateSaving {
    pub store: crate::detector_state::StateStore,
    pub interval: Duration,
    /// The restored snapshot's position: batches at or below it were
    /// absorbed by the restored state (and are archived), so they are not
    /// scored again when the WAL is replayed.
    pub restored_through: Option<u64>,
    /// The WAL must keep every record from here on (the position after the
    /// oldest snapshot that may still be the one restored); `u64::MAX`
    /// when nothing is saved yet.
    pub wal_floor: Arc<AtomicU64>,
}

/// What the state stage hands to the archive stage for one WAL record.
struct ScoredRecord {
    pos: u64,
    scored: RecordBatch,
    anomalies: RecordBatch,
    shadow: Option<RecordBatch>,
}

/// What the scoring stage hands to the state stage: the record, and what
/// the state needs besides.
struct StateRecord {
    record: ScoredRecord,
    events: Vec<crate::scoring::AnomalyEvent>,
    now_us: i64,
    gateway: String,
}

/// Rows a queued item holds (the queues are bounded in rows).
trait Rows {
    fn rows(&self) -> usize;
}

impl Rows for ScoredRecord {
    fn rows(&self) -> usize {
        self.scored.num_rows() + self.shadow.as_ref().map_or(0, RecordBatch::num_rows)
    }
}

impl Rows for StateRecord {
    fn rows(&self) -> usize {
        self.record.rows()
    }
}

/// A queue between two stages, bounded by the rows it holds (one item
/// always fits, however large). Either side hanging up (drop) ends it.
struct Handover<T> {
    state: Mutex<HandoverState<T>>,
    changed: Condvar,
    max_rows: usize,
}

struct HandoverState<T> {
    queue: std::collections::VecDeque<T>,
    rows: usize,
    sender_gone: bool,
    receiver_gone: bool,
}

impl<T: Rows> Handover<T> {
    /// The two ends of a new queue.
    fn open(max_rows: usize) -> (HandoverSender<T>, HandoverReceiver<T>) {
        let handover = Arc::new(Self {
            state: Mutex::new(HandoverState {
                queue: std::collections::VecDeque::new(),
                rows: 0,
                sender_gone: false,
                receiver_gone: false,
            }),
            changed: Condvar::new(),
            max_rows,
        });
        (
            HandoverSender(Arc::clone(&handover)),
            HandoverReceiver(handover),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HandoverState<T>> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The next stage has hung up (the archive failed; see its log).
#[derive(Debug)]
struct ArchiveStopped;

/// The sending end of a [`Handover`].
struct HandoverSender<T: Rows>(Arc<Handover<T>>);

impl<T: Rows> HandoverSender<T> {
    /// Waits for room; `Err` when the receiving stage has stopped.
    fn send(&self, record: T) -> Result<(), ArchiveStopped> {
        let rows = record.rows();
        let mut state = self.0.lock();
        while !state.receiver_gone && !state.queue.is_empty() && state.rows + rows > self.0.max_rows
        {
            state = self
                .0
                .changed
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        if state.receiver_gone {
            return Err(ArchiveStopped);
        }
        state.rows += rows;
        state.queue.push_back(record);
        self.0.changed.notify_all();
        Ok(())
    }
}

impl<T: Rows> HandoverSender<T> {
    /// Whether the receiving stage has stopped.
    fn is_closed(&self) -> bool {
        self.0.lock().receiver_gone
    }
}

impl<T: Rows> Drop for HandoverSender<T> {
    fn drop(&mut self) {
        self.0.lock().sender_gone = true;
        self.0.changed.notify_all();
    }
}

/// The receiving end of a [`Handover`].
struct HandoverReceiver<T: Rows>(Arc<Handover<T>>);

impl<T: Rows> HandoverReceiver<T> {
    fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        let deadline = Instant::now() + timeout;
        let mut state = self.0.lock();
        loop {
            if let Some(record) = state.queue.pop_front() {
                state.rows -= record.rows();
                self.0.changed.notify_all();
                return Ok(record);
            }
            if state.sender_gone {
                return Err(RecvTimeoutError::Disconnected);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RecvTimeoutError::Timeout);
            }
            state = self
                .0
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }
}

impl<T: Rows> Drop for HandoverReceiver<T> {
    fn drop(&mut self) {
        self.0.lock().receiver_gone = true;
        self.0.changed.notify_all();
    }
}

/// This thread's CPU time so far (a stage's busy time excludes the time
/// the OS gave its core to another stage).
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn add_ns(counter: &AtomicU64, from: Duration, to: Duration) {
    let ns = u64::try_from(to.saturating_sub(from).as_nanos()).unwrap_or(u64::MAX);
    counter.fetch_add(ns, Relaxed);
}

impl Pipeline {
    /// Consumes until the sender side is dropped, then commits every open
    /// file. Returns the archive's final low-water mark.
    pub fn run(self, rx: Receiver<DurableBatch>) -> u64 {
        let Pipeline {
            scorer,
            reload_interval,
            archive,
            state,
            stats,
            low_water,
            uploader,
            detector_state,
        } = self;
        let archive_low_water = Arc::clone(&low_water);
        // The archive stage works in bursts (a row group is sorted and
        // encoded at once): its queue holds two row groups' worth of rows so
        // that the other stages go on meanwhile, and no more (memory). The
        // state stage keeps pace with scoring: a short queue.
        let (to_archive, archive_rx) = Handover::open(2 * archive.row_group_rows());
        let (to_state, state_rx) = Handover::open(STATE_QUEUE_ROWS);
        let archive_stage = ArchiveStage {
            archive,
            stats: Arc::clone(&stats),
            low_water,
            uploader,
        };
        let archive_thread = std::thread::Builder::new()
            .name("hub-archive".into())
            .spawn(move || archive_stage.run(archive_rx));
        let archive_thread = match archive_thread {
            Ok(t) => t,
            Err(e) => {
                stats.archive_failed.store(true, Relaxed);
                tracing::error!(error = %e, "cannot start the archive thread: nothing is archived");
                return 0;
            }
        };
        let state_stage = StateStage {
            state,
            stats: Arc::clone(&stats),
        };
        let state_thread = std::thread::Builder::new()
            .name("hub-state".into())
            .spawn(move || state_stage.run(state_rx, to_archive));
        let state_thread = match state_thread {
            Ok(t) => t,
            Err(e) => {
                // Dropping the archive stage's sender (moved into the
                // closure, gone with it) lets it finish.
                stats.archive_failed.store(true, Relaxed);
                tracing::error!(error = %e, "cannot start the state thread: nothing is archived");
                return archive_thread.join().unwrap_or(0);
            }
        };
        let scoring = ScoringStage {
            scorer,
            reload_interval,
            stats: Arc::clone(&stats),
            saving: detector_state.map(|saving| Saving {
                next_at: Instant::now() + saving.interval,
                pending: Vec::new(),
                last_scored: None,
                last_saved: saving.restored_through,
                archive_low_water,
                saving,
            }),
        };
        // A panic in either stage (a bug) must not leave a hub that looks
        // healthy and acknowledges batches it will never archive: it stops
        // archiving as an archive failure does (the WAL keeps the data).
        let scoring = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            scoring.run(rx, to_state); // drops the sender: the next stages finish
        }));
        if scoring.is_err() {
            stats.archive_failed.store(true, Relaxed);
            tracing::error!(
                "the scoring stage panicked: archiving stops; acknowledged batches stay in the WAL for the next start"
            );
        }
        if state_thread.join().is_err() {
            stats.archive_failed.store(true, Relaxed);
            tracing::error!(
                "the state stage panicked: archiving stops; acknowledged batches stay in the WAL for the next start"
            );
        }
        match archive_thread.join() {
            Ok(low_water) => low_water,
            Err(_) => {
                stats.archive_failed.store(true, Relaxed);
                tracing::error!(
                    "the archive stage panicked: archiving stops; acknowledged batches stay in the WAL for the next start"
                );
                0
            }
        }
    }
}

struct ScoringStage {
    scorer: Router,
    reload_interval: Duration,
    stats: Arc<HubStats>,
    saving: Option<Saving>,
}

/// The scoring stage's side of saving the detectors' state.
struct Saving {
    saving: DetectorStateSaving,
    next_at: Instant,
    /// Positions of the pending snapshots written by this run.
    pending: Vec<u64>,
    /// The last batch scored, and the position of the last state saved.
    last_scored: Option<u64>,
    last_saved: Option<u64>,
    archive_low_water: Arc<AtomicU64>,
}

impl Saving {
    /// Writes a pending snapshot when one is due and the state changed.
    fn save_if_due(&mut self, scorer: &Router, stats: &HubStats, force: bool) {
        if !(force || Instant::now() >= self.next_at) {
            return;
        }
        self.next_at = Instant::now() + self.saving.interval;
        let Some(position) = self.last_scored.filter(|p| Some(*p) != self.last_saved) else {
            return;
        };
        let started = Instant::now();
        match self.saving.store.write_pending(position, scorer) {
            Ok(bytes) => {
                self.pending.push(position);
                self.last_saved = Some(position);
                stats.detector_state_saves.fetch_add(1, Relaxed);
                stats.detector_state_bytes.store(bytes, Relaxed);
                tracing::debug!(position, bytes, took = ?started.elapsed(), "detector state saved");
            }
            Err(e) => {
                stats.detector_state_save_failures.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, "cannot save the detector state; a restart would learn from an older one (or anew)");
            }
        }
        self.update_floor();
    }

    /// Commits the pending snapshots the archive has passed.
    fn promote(&mut self) {
        let low_water = self.archive_low_water.load(Relaxed);
        if !self.pending.iter().any(|&p| p < low_water) {
            return;
        }
        match self.saving.store.promote(low_water) {
            Ok(_) => self.pending.retain(|&p| p >= low_water),
            Err(e) => tracing::warn!(error = %e, "cannot commit a detector state snapshot"),
        }
        self.update_floor();
    }

    /// The WAL keeps what follows the oldest snapshot that may be restored.
    fn update_floor(&self) {
        let committed = self.saving.store.newest_committed().ok().flatten();
        let oldest = committed
            .into_iter()
            .chain(self.pending.iter().copied())
            .min();
        self.saving
            .wal_floor
            .store(oldest.map_or(u64::MAX, |p| p + 1), Relaxed);
    }
}

impl ScoringStage {
    fn run(mut self, rx: Receiver<DurableBatch>, to_state: HandoverSender<StateRecord>) {
        let mut next_reload_check = Instant::now() + self.reload_interval;
        loop {
            // Between batches: a batch is scored by one model version only.
            if Instant::now() >= next_reload_check {
                next_reload_check = Instant::now() + self.reload_interval;
                self.reload_models();
            }
            if let Some(saving) = &mut self.saving {
                saving.promote();
                saving.save_if_due(&self.scorer, &self.stats, false);
            }
            match rx.recv_timeout(TICK) {
                Ok(batch) => {
                    let restored = self.saving.as_ref().and_then(|s| s.saving.restored_through);
                    if restored.is_some_and(|through| batch.pos <= through) {
                        // Absorbed by the restored state and archived.
                        continue;
                    }
                    let pos = batch.pos;
                    if to_state.send(self.process(batch)).is_err() {
                        // The archive stage failed and said so; stop taking
                        // batches so that intake stops acknowledging.
                        return;
                    }
                    if let Some(saving) = &mut self.saving {
                        saving.last_scored = Some(pos);
                    }
                }
                // Idle, but the stages after this one stopped (an archive
                // failure): stop too, so the pipeline can be rebuilt.
                Err(RecvTimeoutError::Timeout) if to_state.is_closed() => return,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    // Shutting down: the last state, committed by the hub
                    // once the archive has closed its files.
                    if let Some(saving) = &mut self.saving {
                        saving.save_if_due(&self.scorer, &self.stats, true);
                    }
                    return;
                }
            }
        }
    }

    fn process(&mut self, durable: DurableBatch) -> StateRecord {
        let now_us = chrono::Utc::now().timestamp_micros();
        let started = thread_cpu();
        let routed = self.scorer.score(&durable.batch, now_us);
        add_ns(&self.stats.pipeline_score_ns, started, thread_cpu());
        let out = routed.live;
        if let Some(e) = &out.model_error {
            self.stats.scoring_errors.fetch_add(1, Relaxed);
            tracing::error!(error = %e, seq = durable.batch.header.seq, "model failed; batch archived unscored");
        }
        let rows = out.scored.num_rows() as u64;
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
        StateRecord {
            record: ScoredRecord {
                pos: durable.pos,
                scored: out.scored,
                anomalies: out.anomalies,
                shadow: routed.shadow,
            },
            events: out.events,
            now_us,
            gateway: durable.batch.header.gateway,
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
}

/// Rows waiting between scoring and the state (a few batches).
const STATE_QUEUE_ROWS: usize = 64 * 1024;

struct StateStage {
    state: Arc<HubState>,
    stats: Arc<HubStats>,
}

impl StateStage {
    /// Updates the state from each scored batch, then hands it to the archive
    /// stage; stops when scoring hangs up (after passing on what it has) or
    /// when the archive stage has stopped.
    fn run(self, rx: HandoverReceiver<StateRecord>, to_archive: HandoverSender<ScoredRecord>) {
        loop {
            match rx.recv_timeout(TICK) {
                Ok(StateRecord {
                    record,
                    events,
                    now_us,
                    gateway,
                }) => {
                    // After a rebuild the WAL is replayed from its start:
                    // what the API state already shows is not shown twice.
                    if record.pos >= self.state.recorded_until() {
                        let started = thread_cpu();
                        self.state.record(&record.scored, events, now_us, &gateway);
                        self.state.recorded_through(record.pos);
                        add_ns(&self.stats.pipeline_state_ns, started, thread_cpu());
                    }
                    if to_archive.send(record).is_err() {
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) if to_archive.is_closed() => return,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}

struct ArchiveStage {
    archive: Archive,
    stats: Arc<HubStats>,
    low_water: Arc<AtomicU64>,
    uploader: Option<crate::archive::s3::Uploader>,
}

impl ArchiveStage {
    /// Archives until the scoring stage hangs up, then commits every open
    /// file; returns the final low-water mark. On an archive failure it
    /// returns at once (dropping the queue tells the scoring stage).
    fn run(mut self, rx: HandoverReceiver<ScoredRecord>) -> u64 {
        let mut next_maintenance = Instant::now() + self.archive.maintenance_interval();
        loop {
            if Instant::now() >= next_maintenance {
                next_maintenance = Instant::now() + self.archive.maintenance_interval();
                self.maintain_archive();
            }
            match rx.recv_timeout(TICK) {
                Ok(record) => {
                    let started = thread_cpu();
                    let result = self.append(&record);
                    add_ns(&self.stats.pipeline_archive_ns, started, thread_cpu());
                    if let Err(e) = result {
                        self.fail(&e);
                        return self.stop_after_failure();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            match self.archive.commit_aged() {
                Ok(files) => self.committed(&files),
                Err(e) => {
                    self.fail(&e);
                    return self.stop_after_failure();
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

    fn append(&mut self, record: &ScoredRecord) -> std::io::Result<()> {
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
                tracing::info!(partitions = n, "archive partitions past retention deleted");
            }
            Err(e) => {
                self.stats.maintenance_errors.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "archive retention failed");
            }
        }
        let mut busy = std::collections::HashSet::new();
        if let Some(uploader) = &mut self.uploader {
            // The bucket's own objects past retention go too (done by the
            // upload thread, after the uploads queued before).
            if let Some(first_kept) = self.archive.retention_first_hour(now_us) {
                uploader.expire_before(first_kept);
            }
            // Compaction needs the files locally and an atomic swap: with
            // uploads on commit, files are sized when written; with uploads
            // of closed partitions, it runs before them (see archive::s3).
            if !uploader.waits_for_closed_partitions() {
                return;
            }
            busy = uploader.busy().clone();
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

    fn fail(&self, e: &std::io::Error) {
        self.stats.archive_failed.store(true, Relaxed);
        tracing::error!(error = %e, "archive write failed: archiving stops and is retried; acknowledged batches stay in the WAL");
    }

    /// Stops the uploader (what it has not sent stays local for the next
    /// archive) and returns the low-water mark, which the failure froze.
    fn stop_after_failure(mut self) -> u64 {
        if let Some(uploader) = self.uploader.take() {
            uploader.finish();
        }
        self.archive.low_water()
    }
}
