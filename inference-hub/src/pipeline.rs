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
//!
//! Each stage is a `Stage` (process an item, timed work on a tick, finish
//! on close) run by the one loop, `run_stage`, which owns the waiting,
//! the hand-over and the ways a stage ends; the stages hold only their own
//! parts of the configuration.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;

use crate::archive::Archive;
use crate::intake::DurableBatch;
use crate::scoring::Router;
use crate::state::HubState;
use crate::stats::HubStats;

mod archive_stage;
mod handover;
mod scoring_stage;
mod state_stage;

use archive_stage::ArchiveStage;
use handover::Handover;
use scoring_stage::{Saving, ScoringStage, Sharing};
use state_stage::{STATE_QUEUE_ROWS, StateStage};

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
    /// Sharing it with other hubs (see [`crate::detector_state::shared`]).
    pub state_sharing: Option<StateSharing>,
}

/// How the scoring stage shares the detectors' state with other hubs.
#[derive(Debug)]
pub struct StateSharing {
    pub shared: crate::detector_state::shared::SharedState,
    /// How often the gateways scored since are written (`None`: only at a
    /// graceful stop).
    pub interval: Option<Duration>,
    pub max_bytes: u64,
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

/// One stage of the pipeline. [`run_stage`] runs every stage the same way:
/// `on_tick` before each wait for input (at least every [`TICK`], and right
/// after each item), `process` for each item in WAL order (what it returns
/// is handed to the next stage), and `on_close` once, saying why the loop
/// ended.
trait Stage {
    type In;
    /// What the next stage gets ([`std::convert::Infallible`] for the last).
    type Out;
    /// What the stage leaves when it ends.
    type Done;

    /// Timed work between items.
    fn on_tick(&mut self) -> Result<(), StageFailed> {
        Ok(())
    }

    /// One item: `Some` goes to the next stage. `Err` ends the stage (it
    /// has logged why).
    fn process(&mut self, item: Self::In) -> Result<Option<Self::Out>, StageFailed>;

    fn on_close(self, ended: Ended) -> Self::Done;
}

/// Why a stage's loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The stage before it (or intake) hung up: the hub is stopping or
    /// rebuilding; finish the work in hand.
    InputClosed,
    /// The next stage stopped (the archive failed).
    NextStageGone,
    /// This stage failed.
    Failed,
}

/// A stage cannot go on (it has logged why).
#[derive(Debug)]
struct StageFailed;

/// The next stage has hung up (the archive failed; see its log).
#[derive(Debug)]
struct NextStageGone;

/// Where a stage's items come from.
trait Input<T> {
    fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError>;
}

impl<T> Input<T> for Receiver<T> {
    fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        Receiver::recv_timeout(self, timeout)
    }
}

/// Where a stage's results go.
trait Output<T> {
    /// Waits for room; `Err` when the next stage has stopped.
    fn send(&self, item: T) -> Result<(), NextStageGone>;
    /// Whether the next stage has stopped.
    fn is_closed(&self) -> bool;
}

/// The last stage's output: nothing goes on.
struct LastStage;

impl Output<std::convert::Infallible> for LastStage {
    fn send(&self, item: std::convert::Infallible) -> Result<(), NextStageGone> {
        match item {}
    }

    fn is_closed(&self) -> bool {
        false
    }
}

/// The one loop every stage runs in. `output` is dropped when it returns,
/// which tells the next stage the input has ended.
fn run_stage<S: Stage>(
    mut stage: S,
    input: impl Input<S::In>,
    output: impl Output<S::Out>,
) -> S::Done {
    loop {
        if stage.on_tick().is_err() {
            return stage.on_close(Ended::Failed);
        }
        match input.recv_timeout(TICK) {
            Ok(item) => match stage.process(item) {
                Ok(Some(out)) => {
                    if output.send(out).is_err() {
                        // Stop taking batches so that intake stops
                        // acknowledging.
                        return stage.on_close(Ended::NextStageGone);
                    }
                }
                Ok(None) => {}
                Err(StageFailed) => return stage.on_close(Ended::Failed),
            },
            // Idle, but the stages after this one stopped (an archive
            // failure): stop too, so the pipeline can be rebuilt.
            Err(RecvTimeoutError::Timeout) if output.is_closed() => {
                return stage.on_close(Ended::NextStageGone);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return stage.on_close(Ended::InputClosed),
        }
    }
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
            state_sharing,
        } = self;
        let archive_low_water = Arc::clone(&low_water);
        // The archive stage works in bursts (a row group is sorted and
        // encoded at once): its queue holds two row groups' worth of rows so
        // that the other stages go on meanwhile, and no more (memory). The
        // state stage keeps pace with scoring: a short queue.
        let (to_archive, archive_rx) = Handover::open(2 * archive.row_group_rows());
        let (to_state, state_rx) = Handover::open(STATE_QUEUE_ROWS);
        let archive_stage = ArchiveStage {
            next_maintenance: Instant::now() + archive.maintenance_interval(),
            archive,
            stats: Arc::clone(&stats),
            low_water,
            uploader,
        };
        let archive_thread = std::thread::Builder::new()
            .name("hub-archive".into())
            .spawn(move || run_stage(archive_stage, archive_rx, LastStage));
        let archive_thread = match archive_thread {
            Ok(t) => t,
            Err(e) => {
                stats.fail_archive();
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
            .spawn(move || run_stage(state_stage, state_rx, to_archive));
        let state_thread = match state_thread {
            Ok(t) => t,
            Err(e) => {
                // Dropping the archive stage's sender (moved into the
                // closure, gone with it) lets it finish.
                stats.fail_archive();
                tracing::error!(error = %e, "cannot start the state thread: nothing is archived");
                return archive_thread.join().unwrap_or(0);
            }
        };
        let scoring = ScoringStage {
            scorer,
            next_reload_check: Instant::now() + reload_interval,
            reload_interval,
            stats: Arc::clone(&stats),
            saving: detector_state.map(|saving| Saving::new(saving, archive_low_water)),
            sharing: state_sharing.map(Sharing::new),
        };
        // A panic in either stage (a bug) must not leave a hub that looks
        // healthy and acknowledges batches it will never archive: it stops
        // archiving as an archive failure does (the WAL keeps the data).
        let scoring = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            run_stage(scoring, rx, to_state); // drops the sender: the next stages finish
        }));
        if scoring.is_err() {
            stats.fail_archive();
            tracing::error!(
                "the scoring stage panicked: archiving stops; acknowledged batches stay in the WAL for the next start"
            );
        }
        if state_thread.join().is_err() {
            stats.fail_archive();
            tracing::error!(
                "the state stage panicked: archiving stops; acknowledged batches stay in the WAL for the next start"
            );
        }
        match archive_thread.join() {
            Ok(low_water) => low_water,
            Err(_) => {
                stats.fail_archive();
                tracing::error!(
                    "the archive stage panicked: archiving stops; acknowledged batches stay in the WAL for the next start"
                );
                0
            }
        }
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
