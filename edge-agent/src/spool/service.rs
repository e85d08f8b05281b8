//! The spool between the batcher and the uplink, on a thread of its own.
//!
//! The thread owns the [`Spool`] (file I/O and fsync never block the async
//! workers) and runs a small single-threaded runtime that waits on three
//! inputs: sealed batches from the batcher, commands from the uplink
//! (`ack`, `read`) and its timers (group commit, TTL, retries).
//!
//! For each sealed batch: append, then (group commit) fsync, then — and only
//! then — release the device acknowledgements the batch carries and tell the
//! uplink the record is durable, handing it the bytes so that live data needs
//! no read back. Records recovered at start-up and records the uplink could
//! not keep in memory are read back on request ([`SpoolHandle::read`]).
//!
//! Faults: when the spool is full under the `block` policy the batch waits
//! (and with it the batcher, ingest and the broker: backpressure) until
//! deliveries free space. An append or fsync error is logged at ERROR, shown
//! by `/health`, and retried with backoff; after an fsync error the spool is
//! reopened first (the page cache state is unknown) and the unconfirmed
//! batches are appended again, byte for byte, so a copy that did reach the
//! disk is only a duplicate the hub drops. Nothing is acknowledged to devices
//! until a later fsync succeeds.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use schemas::envelope::BatchHeader;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::fs::DirFs;
use super::{Spool, SpoolError, SpoolRecovery, SpoolSettings, now_us};
use crate::batcher::SealedBatch;
use crate::stats::EdgeStats;
use iot_mqtt::{OrderedAcker, backoff};

/// When appended batches are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// One fsync per batch.
    Always,
    /// Group commit: one fsync covers the batches appended in this interval
    /// (sooner when `sync-bytes` have accumulated).
    Every(Duration),
}

/// Everything the service needs to run.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    pub dir: PathBuf,
    pub spool: SpoolSettings,
    pub sync: SyncPolicy,
    pub sync_bytes: u64,
    /// Undelivered records older than this are expired and counted.
    pub ttl: Option<Duration>,
}

/// A record the uplink should deliver.
#[derive(Debug, Clone)]
pub struct Spooled {
    pub id: u64,
    pub header: BatchHeader,
    pub bytes: Bytes,
}

/// What the service tells the uplink.
#[derive(Debug)]
pub enum SpoolEvent {
    /// A live batch became durable (its device messages are acknowledged).
    Durable(Spooled),
    /// Undelivered records on disk the uplink must fetch and send, oldest
    /// first (at start-up, and after the spool was reopened).
    Backlog(Vec<u64>),
}

enum Command {
    Ack(u64),
    Read(u64, oneshot::Sender<Option<Vec<u8>>>),
}

/// The uplink's side of the service. Dropping every handle (and closing the
/// batch channel) ends the thread.
#[derive(Debug, Clone)]
pub struct SpoolHandle {
    commands: mpsc::UnboundedSender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Ack(id) => write!(f, "Ack({id})"),
            Command::Read(id, _) => write!(f, "Read({id})"),
        }
    }
}

impl SpoolHandle {
    /// The record was delivered (or rejected for good): it may be deleted.
    pub fn ack(&self, id: u64) {
        let _ = self.commands.send(Command::Ack(id));
    }

    /// An undelivered record's bytes; `None` if it was expired, evicted or
    /// cannot be read (counted and logged by the service).
    pub async fn read(&self, id: u64) -> Option<Vec<u8>> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Read(id, tx)).ok()?;
        rx.await.ok().flatten()
    }
}

/// A started service.
#[derive(Debug)]
pub struct Started {
    pub handle: SpoolHandle,
    pub events: mpsc::UnboundedReceiver<SpoolEvent>,
    pub recovery: SpoolRecovery,
    /// Payloads of the newest records on disk, for the redelivery guard.
    pub newest_payloads: Vec<Vec<u8>>,
    pub thread: std::thread::JoinHandle<()>,
}

/// How many of the newest records seed the redelivery guard.
const GUARD_RECORDS: usize = 64;

/// Opens the spool (recovering it) and starts its thread.
pub fn start(
    settings: ServiceSettings,
    batches: mpsc::Receiver<SealedBatch>,
    acker: OrderedAcker,
    stats: Arc<EdgeStats>,
) -> io::Result<Started> {
    let (mut spool, recovery) = Spool::open(DirFs::new(&settings.dir)?, settings.spool)?;
    if recovery.truncated_bytes > 0 {
        tracing::warn!(
            bytes = recovery.truncated_bytes,
            "spool had a write cut short by a crash (never acknowledged); it was truncated"
        );
    }
    for d in &recovery.damage {
        tracing::error!(
            segment = %d.segment,
            offset = d.offset,
            bytes = d.bytes,
            lost = ?d.lost,
            quarantine = %d.quarantine,
            "spooled batches lost to damaged bytes on disk; the bytes are kept for inspection"
        );
    }
    stats
        .spool_quarantined_segments
        .fetch_add(recovery.quarantined_segments as u64, Relaxed);
    stats
        .spool_records_lost
        .fetch_add(recovery.lost_records(), Relaxed);
    let newest_payloads = spool.newest_payloads(GUARD_RECORDS);
    let backlog = spool.undelivered();
    tracing::info!(
        dir = %settings.dir.display(),
        backlog = backlog.len(),
        "spool opened"
    );
    let (events_tx, events) = mpsc::unbounded_channel();
    if !backlog.is_empty() {
        let _ = events_tx.send(SpoolEvent::Backlog(backlog));
    }
    let (commands_tx, commands) = mpsc::unbounded_channel();
    let worker = Worker {
        spool,
        settings,
        acker,
        stats,
        events: events_tx,
        unsynced: Vec::new(),
        unsynced_bytes: 0,
        waiting: None,
        failures: 0,
        needs_reopen: false,
        deliveries_changed: false,
    };
    worker.publish_gauges();
    let thread = std::thread::Builder::new()
        .name("edge-spool".into())
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("spool runtime")
                .block_on(worker.run(batches, commands));
        })?;
    Ok(Started {
        handle: SpoolHandle {
            commands: commands_tx,
        },
        events,
        recovery,
        newest_payloads,
        thread,
    })
}

struct Worker {
    spool: Spool<DirFs>,
    settings: ServiceSettings,
    acker: OrderedAcker,
    stats: Arc<EdgeStats>,
    events: mpsc::UnboundedSender<SpoolEvent>,
    /// Appended, not yet confirmed by an fsync.
    unsynced: Vec<(u64, SealedBatch)>,
    unsynced_bytes: u64,
    /// A batch that could not be appended yet (full, or an I/O error), and
    /// when to try again.
    waiting: Option<(SealedBatch, Instant)>,
    failures: u32,
    needs_reopen: bool,
    deliveries_changed: bool,
}

impl Worker {
    async fn run(
        mut self,
        mut batches: mpsc::Receiver<SealedBatch>,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) {
        let mut batches_open = true;
        let mut commands_open = true;
        let mut sync_deadline: Option<Instant> = None;
        let mut ttl_tick = tokio::time::interval(Duration::from_secs(5));
        ttl_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if !batches_open && self.unsynced.is_empty() && self.waiting.is_none() {
                // Everything accepted is durable and announced: closing the
                // event channel tells the uplink no live batch will follow.
                let (closed, _) = mpsc::unbounded_channel();
                self.events = closed;
            }
            if !batches_open && !commands_open {
                // The uplink is gone; whatever is still unconfirmed was never
                // acknowledged to a device, so the broker redelivers it.
                self.save_deliveries();
                return;
            }
            let retry_at = self.waiting.as_ref().map(|(_, at)| *at);
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                biased;
                command = commands.recv(), if commands_open => match command {
                    Some(Command::Ack(id)) => {
                        self.deliveries_changed = true;
                        if let Err(e) = self.spool.ack(id) {
                            tracing::error!(error = %schemas::error_chain(&e), "cannot delete a delivered spool segment");
                        }
                        self.publish_gauges();
                        // Space may have been freed for a blocked batch.
                        if let Some((_, at)) = &mut self.waiting
                            && !self.needs_reopen
                        {
                            *at = Instant::now();
                        }
                    }
                    Some(Command::Read(id, reply)) => {
                        let _ = reply.send(self.read(id));
                    }
                    None => commands_open = false,
                },
                _ = tokio::time::sleep_until(sync_deadline.unwrap_or(far)), if sync_deadline.is_some() => {
                    sync_deadline = None;
                    self.sync();
                }
                _ = tokio::time::sleep_until(retry_at.unwrap_or(far)), if retry_at.is_some() => {
                    self.retry();
                }
                batch = batches.recv(), if batches_open && self.waiting.is_none() => match batch {
                    Some(batch) => self.append(batch),
                    None => {
                        batches_open = false;
                        self.sync();
                    }
                },
                _ = ttl_tick.tick() => {
                    self.expire();
                    self.save_deliveries();
                }
            }
            if !self.unsynced.is_empty() {
                let due = match self.settings.sync {
                    SyncPolicy::Always => true,
                    SyncPolicy::Every(_) => self.unsynced_bytes >= self.settings.sync_bytes,
                };
                if due {
                    sync_deadline = None;
                    self.sync();
                } else if sync_deadline.is_none()
                    && let SyncPolicy::Every(interval) = self.settings.sync
                {
                    sync_deadline = Some(Instant::now() + interval);
                }
            }
        }
    }

    fn append(&mut self, batch: SealedBatch) {
        match self.spool.append(&batch.bytes) {
            Ok(id) => {
                self.unsynced_bytes += batch.bytes.len() as u64;
                self.unsynced.push((id, batch));
                self.stats.spool_full.store(0, Relaxed);
            }
            Err(SpoolError::Full { max_bytes }) => {
                if self.stats.spool_full.swap(1, Relaxed) == 0 {
                    tracing::warn!(
                        max_bytes,
                        "spool full: holding device messages until the hub takes some backlog"
                    );
                }
                // Retried on the next delivery, or after a second.
                self.waiting = Some((batch, Instant::now() + Duration::from_secs(1)));
            }
            Err(e) => {
                self.fail("append", &e);
                self.waiting = Some((batch, self.next_retry()));
            }
        }
        self.publish_gauges();
    }

    fn sync(&mut self) {
        if self.unsynced.is_empty() {
            return;
        }
        match self.spool.sync() {
            Ok(()) => {
                self.failures = 0;
                self.stats.spool_failed.store(0, Relaxed);
                self.stats.spool_syncs.fetch_add(1, Relaxed);
                self.unsynced_bytes = 0;
                for (id, batch) in self.unsynced.drain(..) {
                    self.acker.release(&batch.acks);
                    self.stats
                        .spool_appended_readings
                        .fetch_add(u64::from(batch.header.row_count), Relaxed);
                    let _ = self.events.send(SpoolEvent::Durable(Spooled {
                        id,
                        header: batch.header,
                        bytes: batch.bytes,
                    }));
                }
            }
            Err(e) => {
                self.fail("fsync", &e);
                // Nothing of the group is confirmed: hold it for the retry.
                let at = self.next_retry();
                if self.waiting.is_none() {
                    self.waiting = self.unsynced.pop().map(|(_, b)| (b, at));
                }
            }
        }
    }

    /// Tries the waiting batch again, reopening the spool first if an fsync
    /// failed.
    fn retry(&mut self) {
        if self.needs_reopen {
            match DirFs::new(&self.settings.dir).and_then(|fs| Spool::open(fs, self.settings.spool))
            {
                Ok((spool, _)) => {
                    self.spool = spool;
                    self.needs_reopen = false;
                    tracing::warn!(
                        "spool reopened after a failure; re-appending unconfirmed batches"
                    );
                    let known: std::collections::HashSet<u64> =
                        self.unsynced.iter().map(|(id, _)| *id).collect();
                    let unsynced = std::mem::take(&mut self.unsynced);
                    self.unsynced_bytes = 0;
                    // Records the uplink already tracks keep their ids; copies
                    // of unconfirmed ones that reached the disk are announced
                    // as backlog too (the hub drops them as duplicates).
                    let backlog: Vec<u64> = self
                        .spool
                        .undelivered()
                        .into_iter()
                        .filter(|id| !known.contains(id))
                        .collect();
                    if !backlog.is_empty() {
                        let _ = self.events.send(SpoolEvent::Backlog(backlog));
                    }
                    let waiting = self.waiting.take();
                    for (_, batch) in unsynced {
                        self.append(batch);
                        if self.waiting.is_some() {
                            break;
                        }
                    }
                    if self.waiting.is_none()
                        && let Some((batch, _)) = waiting
                    {
                        self.append(batch);
                    }
                    self.sync();
                }
                Err(e) => {
                    self.fail("reopen", &SpoolError::Io(e));
                    let retry_at = self.next_retry();
                    if let Some((_, at)) = &mut self.waiting {
                        *at = retry_at;
                    }
                }
            }
            return;
        }
        if let Some((batch, _)) = self.waiting.take() {
            self.append(batch);
        }
    }

    fn read(&mut self, id: u64) -> Option<Vec<u8>> {
        match self.spool.read(id) {
            Ok(found) => found,
            Err(e) => {
                self.stats.spool_read_errors.fetch_add(1, Relaxed);
                tracing::error!(id, error = %schemas::error_chain(&e), "cannot read a spooled batch; it is skipped");
                // Unreadable means undeliverable: let the segment go.
                let _ = self.spool.ack(id);
                None
            }
        }
    }

    fn expire(&mut self) {
        let Some(ttl) = self.settings.ttl else {
            return;
        };
        match self.spool.expire(now_us() - ttl.as_micros() as i64) {
            Ok(0) => {}
            Ok(n) => tracing::warn!(records = n, ttl = ?ttl, "spooled batches expired undelivered"),
            Err(e) => {
                tracing::error!(error = %schemas::error_chain(&e), "cannot delete an expired spool segment")
            }
        }
        self.publish_gauges();
    }

    /// Records deliveries when some happened since the last time.
    fn save_deliveries(&mut self) {
        if !self.deliveries_changed || self.needs_reopen {
            return;
        }
        match self.spool.save_deliveries() {
            Ok(()) => self.deliveries_changed = false,
            Err(e) => {
                tracing::warn!(error = %schemas::error_chain(&e), "cannot record spool deliveries; they are resent after a restart")
            }
        }
    }

    fn fail(&mut self, what: &str, e: &SpoolError) {
        self.failures += 1;
        self.stats.spool_failed.store(1, Relaxed);
        self.stats.spool_errors.fetch_add(1, Relaxed);
        if self.spool.is_failed() {
            self.needs_reopen = true;
        }
        tracing::error!(
            operation = what,
            error = %schemas::error_chain(e),
            "spool write failed: device messages are not acknowledged until it recovers"
        );
    }

    fn next_retry(&self) -> Instant {
        Instant::now()
            + backoff(
                self.failures,
                Duration::from_millis(200),
                Duration::from_secs(30),
            )
    }

    fn publish_gauges(&self) {
        let (records, bytes) = self.spool.backlog();
        self.stats.spool_records.store(records, Relaxed);
        self.stats.spool_bytes.store(bytes, Relaxed);
        self.stats.spool_dropped_records.store(
            self.spool.dropped_records() + self.spool.expired_records(),
            Relaxed,
        );
    }
}
