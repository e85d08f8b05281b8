//! Intake: from envelope bytes to a durable, deduplicated batch.
//!
//! ```text
//! HTTP handler / MQTT task --submit()--> decode + verify (caller's task)
//!     --bounded queue--> sequencer thread: dedup -> WAL append -> group fsync
//!     --answers--> Durable | Duplicate   --bounded queue--> pipeline (scoring, then archive)
//! ```
//!
//! The sequencer is the only owner of the dedup index and the WAL, so the
//! decision "new or duplicate" and the append are one step. A duplicate of a
//! batch that is still waiting for its fsync is answered only after that
//! fsync (it is answered at the end of the same or a later group), so
//! `duplicate` always means "durable". After a WAL write or fsync error the
//! hub stops acknowledging altogether (the state of an fsync-failed file is
//! unknown) and reports unhealthy; after an archive failure it refuses new
//! batches too (what it acknowledged stays in the WAL for the next start,
//! and gateways keep the rest or hand it to another hub).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use schemas::ack::{AckStatus, BatchAck};
use schemas::envelope::{self, DecodeError, DecodeLimits, DecodedBatch};
use tokio::sync::{mpsc, oneshot};

use crate::dedup::DedupIndex;
use crate::stats::HubStats;
use crate::wal::Wal;

/// A batch that is durable in the WAL at `pos`.
/// A batch handed to the sequencer, waiting for its answer.
#[derive(Debug)]
pub struct Queued {
    header: schemas::envelope::BatchHeader,
    crc32c: u32,
    answer: oneshot::Receiver<Result<Answer, SubmitError>>,
}

/// The sequencer's answer to one batch.
#[derive(Debug)]
struct Answer {
    status: AckStatus,
    /// Rows refused by screening (the rest is durable).
    dropped: Option<schemas::ack::Dropped>,
}

impl Answer {
    fn plain(status: AckStatus) -> Self {
        Self {
            status,
            dropped: None,
        }
    }
}

impl Queued {
    /// Waits until the batch is durable (or a known duplicate).
    pub async fn answer(self) -> Result<BatchAck, SubmitError> {
        let answer = self
            .answer
            .await
            .map_err(|_| SubmitError::Unavailable("intake is shut down"))??;
        Ok(BatchAck {
            gateway: self.header.gateway,
            incarnation: self.header.incarnation,
            seq: self.header.seq,
            crc32c: self.crc32c,
            status: answer.status,
            dropped: answer.dropped,
        })
    }
}

#[derive(Debug)]
pub struct DurableBatch {
    pub pos: u64,
    pub batch: DecodedBatch,
}

/// Why a submission got no answer for the gateway.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// Not even the header could be read, so there is nobody to answer.
    #[error("unreadable envelope: {0}")]
    Unreadable(DecodeError),
    /// The envelope can never be accepted; `ack` is the answer for its
    /// gateway (status `rejected`).
    #[error("rejected batch: {error}")]
    Rejected { ack: BatchAck, error: DecodeError },
    /// The hub cannot make batches durable right now; retry later.
    #[error("hub unavailable: {0}")]
    Unavailable(&'static str),
    /// The envelope names a gateway the sender is not (see [`Sender`]):
    /// refused and counted, nothing of it is kept or answered to the
    /// gateway it names.
    #[error("gateway '{claimed}' is not the sender's identity ({how})")]
    Forbidden { claimed: String, how: &'static str },
}

/// Who sent a batch, as its transport authenticated it. A batch is taken
/// only for the gateway its sender is; this is what stops one gateway (or
/// anyone holding its credentials) from writing another's data or
/// pre-empting its sequence numbers.
#[derive(Debug, Clone, Copy)]
pub enum Sender<'a> {
    /// Trusted for every gateway: an open hub, an ingest token bound to no
    /// gateway (a relay or replay tool).
    Anyone,
    /// Only the gateways named (a client certificate's names, a
    /// per-gateway token, the gateway in the MQTT topic the broker let
    /// it publish to); `how` says which, for the refusal.
    Gateways {
        names: &'a [String],
        how: &'static str,
    },
}

impl Sender<'_> {
    /// The refusal of a batch for a gateway the sender is not.
    fn refusal(&self, gateway: &str) -> Option<SubmitError> {
        match *self {
            Sender::Gateways { names, how } if !names.iter().any(|n| n == gateway) => {
                Some(SubmitError::Forbidden {
                    claimed: gateway.to_owned(),
                    how,
                })
            }
            _ => None,
        }
    }
}

struct Request {
    batch: DecodedBatch,
    raw: Bytes,
    reply: oneshot::Sender<Result<Answer, SubmitError>>,
}

enum Message {
    Batch(Request),
    /// Finish what is queued before this and stop; later submissions are
    /// refused as unavailable.
    Close,
    /// A new pipeline replaces one whose archive failed: replay the WAL
    /// into it, then hand it every new durable batch.
    Restart(PipelineRestart),
}

/// What the sequencer needs to resume archiving after a failure.
#[derive(Debug)]
pub struct PipelineRestart {
    pub out: std::sync::mpsc::SyncSender<DurableBatch>,
    pub archive_low_water: Arc<AtomicU64>,
    /// Answered with the number of batches replayed.
    pub done: oneshot::Sender<usize>,
}

/// Cheap, cloneable entry point used by every transport.
#[derive(Debug, Clone)]
pub struct IntakeHandle {
    tx: mpsc::Sender<Message>,
    limits: DecodeLimits,
    stats: Arc<HubStats>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("header", &self.batch.header)
            .finish()
    }
}

impl IntakeHandle {
    /// Verifies the envelope and waits until it is durable (or known to be a
    /// duplicate of a durable batch).
    pub async fn submit(&self, raw: Bytes) -> Result<BatchAck, SubmitError> {
        self.enqueue(raw, Sender::Anyone).await?.answer().await
    }

    /// [`Self::submit`] for a sender that may write only as `sender`.
    pub async fn submit_from(
        &self,
        raw: Bytes,
        sender: Sender<'_>,
    ) -> Result<BatchAck, SubmitError> {
        self.enqueue(raw, sender).await?.answer().await
    }

    /// Verifies the envelope and hands it to the sequencer, returning once it
    /// is queued; the answer comes from [`Queued::answer`]. Calling this in
    /// arrival order keeps a gateway's batches in that order in the WAL (and
    /// so in scoring), while the waits for durability overlap.
    /// A batch whose gateway `sender` is not is refused before it is
    /// decoded ([`SubmitError::Forbidden`]).
    pub async fn enqueue(&self, raw: Bytes, sender: Sender<'_>) -> Result<Queued, SubmitError> {
        // Checked on the header first, so that nothing (not even a
        // `rejected` answer) goes out in another gateway's name.
        if let Ok((_, header)) = envelope::peek_header(&raw, &self.limits)
            && let Some(refused) = sender.refusal(&header.gateway)
        {
            return Err(refused);
        }
        let batch = match envelope::decode(&raw, &self.limits) {
            Ok(b) => b,
            Err(e) => {
                let (_, header) = envelope::peek_header(&raw, &self.limits).map_err(|_| {
                    self.stats.batches_unreadable.fetch_add(1, Relaxed);
                    SubmitError::Unreadable(e.clone())
                })?;
                self.stats.batches_rejected.fetch_add(1, Relaxed);
                let ack = BatchAck {
                    gateway: header.gateway,
                    incarnation: header.incarnation,
                    seq: header.seq,
                    crc32c: envelope::content_crc(&raw).unwrap_or_default(),
                    status: AckStatus::Rejected {
                        reason: e.to_string(),
                    },
                    dropped: None,
                };
                return Err(SubmitError::Rejected { ack, error: e });
            }
        };
        let header = batch.header.clone();
        if let Some(refused) = sender.refusal(&header.gateway) {
            return Err(refused);
        }
        let crc32c = envelope::content_crc(&raw).unwrap_or_default();
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Message::Batch(Request { batch, raw, reply }))
            .await
            .map_err(|_| SubmitError::Unavailable("intake is shut down"))?;
        Ok(Queued {
            header,
            crc32c,
            answer,
        })
    }

    pub fn limits(&self) -> DecodeLimits {
        self.limits
    }

    /// Stops the sequencer after everything already queued.
    pub async fn close(&self) {
        let _ = self.tx.send(Message::Close).await;
    }

    /// Hands the sequencer a new pipeline (see `Message::Restart`); returns
    /// the number of batches replayed into it, or `None` if intake is shut
    /// down.
    pub async fn restart_pipeline(
        &self,
        out: std::sync::mpsc::SyncSender<DurableBatch>,
        archive_low_water: Arc<AtomicU64>,
    ) -> Option<usize> {
        let (done, answer) = oneshot::channel();
        self.tx
            .send(Message::Restart(PipelineRestart {
                out,
                archive_low_water,
                done,
            }))
            .await
            .ok()?;
        answer.await.ok()
    }
}

/// Sends every record of the WAL, in order, into a pipeline (start-up and
/// restarts after an archive failure; the archive skips, per partition,
/// what its committed files already hold). `each` sees every batch first.
/// A record that cannot be read back or decoded is lost: it is logged at
/// ERROR, counted, and returned with its position and reason.
pub fn replay_wal(
    wal: &mut Wal,
    limits: &DecodeLimits,
    out: &std::sync::mpsc::SyncSender<DurableBatch>,
    stats: &HubStats,
    mut each: impl FnMut(u64, &DecodedBatch),
) -> std::io::Result<(u64, Vec<(u64, String)>)> {
    let replay_limits = DecodeLimits {
        max_envelope_bytes: usize::MAX,
        max_rows: u32::MAX,
        ..*limits
    };
    let (mut replayed, mut lost) = (0u64, Vec::new());
    wal.replay(0, |pos, bytes| {
        let decoded =
            bytes.and_then(|b| envelope::decode(b, &replay_limits).map_err(std::io::Error::other));
        match decoded {
            Ok(batch) => {
                each(pos, &batch);
                replayed += 1;
                let _ = out.send(DurableBatch { pos, batch });
            }
            Err(e) => {
                stats.wal_records_lost.fetch_add(1, Relaxed);
                tracing::error!(pos, error = %e, "acknowledged batch lost: its WAL record cannot be read back; skipped");
                lost.push((pos, e.to_string()));
            }
        }
    })?;
    Ok((replayed, lost))
}

/// Everything the sequencer thread owns.
#[derive(Debug)]
pub struct Sequencer {
    pub wal: Wal,
    pub dedup: DedupIndex,
    pub dedup_path: PathBuf,
    /// The dedup snapshot on disk covers every WAL record below this.
    pub dedup_covers: u64,
    pub group_commit_delay: Duration,
    /// Smallest WAL position not yet archived (written by the pipeline).
    pub archive_low_water: Arc<AtomicU64>,
    /// The WAL keeps every record from here on, for the detector state
    /// snapshot a restart would restore (see `crate::detector_state`).
    pub detector_state_floor: Arc<AtomicU64>,
    pub stats: Arc<HubStats>,
    /// What the hub refuses to hold (see [`crate::screen`]).
    pub screen_rules: crate::screen::ScreenRules,
    pub series: crate::screen::SeriesRegistry,
}

/// Starts the sequencer thread; returns the intake handle. `out` feeds the
/// pipeline; the thread ends when every handle is dropped.
pub fn start(
    seq: Sequencer,
    limits: DecodeLimits,
    queue: usize,
    out: std::sync::mpsc::SyncSender<DurableBatch>,
) -> (IntakeHandle, std::thread::JoinHandle<Sequencer>) {
    let (tx, rx) = mpsc::channel(queue);
    let stats = Arc::clone(&seq.stats);
    let thread = std::thread::Builder::new()
        .name("hub-sequencer".into())
        .spawn(move || run_sequencer(seq, rx, out, limits))
        .expect("spawn sequencer thread");
    (IntakeHandle { tx, limits, stats }, thread)
}

const MAX_GROUP: usize = 4096;

fn run_sequencer(
    mut s: Sequencer,
    mut rx: mpsc::Receiver<Message>,
    mut out: std::sync::mpsc::SyncSender<DurableBatch>,
    limits: DecodeLimits,
) -> Sequencer {
    let mut closing = false;
    let mut pipeline_gone = false;
    while !closing {
        let first = match rx.blocking_recv() {
            Some(Message::Batch(r)) => r,
            Some(Message::Restart(restart)) => {
                let replayed = match replay_wal(
                    &mut s.wal,
                    &limits,
                    &restart.out,
                    &s.stats,
                    |_, _| {},
                ) {
                    Ok((n, _)) => n as usize,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read the WAL back for the new pipeline");
                        0
                    }
                };
                out = restart.out;
                s.archive_low_water = restart.archive_low_water;
                pipeline_gone = false;
                let _ = restart.done.send(replayed);
                continue;
            }
            Some(Message::Close) | None => break,
        };
        if s.stats.wal_failed.load(Relaxed) {
            let _ = first.reply.send(Err(SubmitError::Unavailable(
                "the WAL failed; the hub needs an operator",
            )));
            s.stats.batches_unavailable.fetch_add(1, Relaxed);
            continue;
        }
        if s.stats.archive_failed() {
            // What is acknowledged stays in the WAL for the next start; new
            // batches stay with their gateways (or go to another hub).
            let _ = first.reply.send(Err(SubmitError::Unavailable(
                "the archive failed; the hub retries it",
            )));
            s.stats.batches_unavailable.fetch_add(1, Relaxed);
            continue;
        }
        if !s.group_commit_delay.is_zero() {
            std::thread::sleep(s.group_commit_delay);
        }
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(Message::Batch(r)) => group.push(r),
                Ok(Message::Close) => {
                    closing = true;
                    break;
                }
                Ok(Message::Restart(restart)) => {
                    // Only sent while the archive has failed, when no batch
                    // is taken: refuse it and let the supervisor retry.
                    drop(restart);
                    break;
                }
                Err(_) => break,
            }
        }
        let mut fresh = Vec::with_capacity(group.len());
        let mut duplicates = Vec::new();
        // Refused for now (a transient WAL error): not in the WAL, not in
        // the dedup index; the gateway sends them again.
        let mut refused = Vec::new();
        // Refused for good by screening (see crate::screen).
        let mut rejected: Vec<(Request, String)> = Vec::new();
        let mut rolled = false;
        let mut transient: Option<std::io::Error> = None;
        let mut failure: Option<std::io::Error> = None;
        for req in group {
            let key = req.batch.header.key();
            if transient.is_some() || failure.is_some() {
                refused.push(req);
                continue;
            }
            if s.dedup.contains(&key) {
                duplicates.push(req);
                continue;
            }
            let mut req = req;
            let mut dropped = None;
            let now_us = chrono::Utc::now().timestamp_micros();
            match crate::screen::screen(
                &req.batch,
                &s.screen_rules,
                &mut s.series,
                now_us,
                &s.stats,
            ) {
                crate::screen::Verdict::Keep => {}
                crate::screen::Verdict::Some(kept, why) => {
                    // The rest of the batch, re-encoded under its identity.
                    let h = &req.batch.header;
                    match envelope::encode(&h.gateway, h.incarnation, h.seq, &kept) {
                        Ok((header, bytes)) => {
                            req.batch = DecodedBatch {
                                header,
                                version: req.batch.version,
                                readings: kept,
                            };
                            req.raw = Bytes::from(bytes);
                            dropped = Some(why);
                        }
                        Err(e) => {
                            rejected
                                .push((req, format!("cannot re-encode the kept readings: {e}")));
                            continue;
                        }
                    }
                }
                crate::screen::Verdict::None(reason) => {
                    rejected.push((req, reason));
                    continue;
                }
            }
            match s.wal.append(&req.raw) {
                Ok((pos, r)) => {
                    rolled |= r;
                    s.dedup.insert(&key);
                    s.stats.wal_bytes.fetch_add(req.raw.len() as u64, Relaxed);
                    fresh.push((pos, req, dropped));
                }
                // A write cut back cleanly, or a segment that could not be
                // created (out of descriptors): nothing is unknown, what
                // was appended before stays valid.
                Err(e) if !s.wal.is_failed() => {
                    transient = Some(e);
                    refused.push(req);
                }
                Err(e) => {
                    failure = Some(e);
                    refused.push(req);
                }
            }
        }
        s.stats.series_held.store(s.series.total() as u64, Relaxed);
        if failure.is_none() {
            match s.wal.sync() {
                Ok(()) => {
                    s.stats.wal_syncs.fetch_add(1, Relaxed);
                }
                Err(e) => failure = Some(e),
            }
        }
        if let Some(e) = failure {
            // An fsync failed: what the page cache holds is unknown, so
            // nothing of this group is acknowledged and further batches are
            // refused until an operator restarts the hub.
            tracing::error!(error = %e, "WAL fsync failed: the hub stops acknowledging batches");
            s.stats.wal_failed.store(true, Relaxed);
            for req in fresh
                .into_iter()
                .map(|(_, r, _)| r)
                .chain(duplicates)
                .chain(refused)
                .chain(rejected.into_iter().map(|(r, _)| r))
            {
                s.stats.batches_unavailable.fetch_add(1, Relaxed);
                let _ = req
                    .reply
                    .send(Err(SubmitError::Unavailable("the WAL failed")));
            }
            continue;
        }
        if let Some(e) = transient {
            s.stats.wal_write_errors.fetch_add(1, Relaxed);
            tracing::warn!(error = %e, refused = refused.len(), "WAL write failed; those batches are refused for now and the next ones retry");
        }
        for req in refused {
            s.stats.batches_unavailable.fetch_add(1, Relaxed);
            let _ = req.reply.send(Err(SubmitError::Unavailable(
                "the WAL cannot take the batch now; retry",
            )));
        }
        for (req, reason) in rejected {
            s.stats.batches_rejected.fetch_add(1, Relaxed);
            let _ = req
                .reply
                .send(Ok(Answer::plain(AckStatus::Rejected { reason })));
        }
        for (pos, req, dropped) in fresh {
            s.stats.batches_durable.fetch_add(1, Relaxed);
            s.stats
                .readings_durable
                .fetch_add(u64::from(req.batch.header.row_count), Relaxed);
            let _ = req.reply.send(Ok(Answer {
                status: AckStatus::Durable,
                dropped,
            }));
            let sent = out.send(DurableBatch {
                pos,
                batch: req.batch,
            });
            if sent.is_err() && !pipeline_gone {
                pipeline_gone = true;
                tracing::error!(
                    "the pipeline is gone; durable batches stay in the WAL for the next start"
                );
            }
        }
        for req in duplicates {
            s.stats.batches_duplicate.fetch_add(1, Relaxed);
            let _ = req.reply.send(Ok(Answer::plain(AckStatus::Duplicate)));
        }
        if rolled {
            let covers = s.wal.next_pos();
            match s.dedup.save(&s.dedup_path, covers) {
                Ok(()) => s.dedup_covers = covers,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot save the dedup snapshot; WAL segments are kept until it succeeds")
                }
            }
        }
        s.stats.dedup_forgotten.store(s.dedup.forgotten(), Relaxed);
        s.stats.series_held.store(s.series.total() as u64, Relaxed);
        s.trim_wal();
    }
    rx.close();
    // Shutdown: leave a snapshot that covers everything, so the next start
    // replays nothing for dedup. The hub deletes archived segments once the
    // pipeline has committed its last files.
    let covers = s.wal.next_pos();
    match s.dedup.save(&s.dedup_path, covers) {
        Ok(()) => s.dedup_covers = covers,
        Err(e) => tracing::warn!(error = %e, "cannot save the dedup snapshot at shutdown"),
    }
    s
}

impl Sequencer {
    /// Deletes every WAL segment that is archived, covered by the dedup
    /// snapshot and older than the detector state a restart would restore.
    pub fn trim_wal(&mut self) {
        let deletable = self
            .archive_low_water
            .load(Relaxed)
            .min(self.dedup_covers)
            .min(self.detector_state_floor.load(Relaxed));
        match self.wal.delete_below(deletable) {
            Ok(n) => {
                self.stats.wal_segments_deleted.fetch_add(n as u64, Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "cannot delete archived WAL segments"),
        }
    }
}
