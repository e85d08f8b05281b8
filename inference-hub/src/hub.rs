//! Starts and stops a hub: recovery, then the pipeline and sequencer threads,
//! then the transports.
//!
//! Start-up order: load the model (fail fast on a bad one), open the archive
//! (learn what is committed, delete temporary files), open the WAL (repair a
//! torn tail), load the dedup snapshot, start the pipeline, replay the WAL
//! through it (each partition skips what its committed files already hold),
//! and only then open intake. Shutdown runs the other way: transports stop,
//! the sequencer drains and saves the dedup snapshot, the pipeline commits
//! every open file, and the WAL is trimmed to what is not archived (normally
//! nothing).
//!
//! # Archive failures are retried, not sticky
//! When archiving fails (disk full, out of descriptors, an I/O error), the
//! pipeline stops and intake refuses new batches (`503`; gateways keep them
//! or go to another hub). A supervisor then rebuilds the pipeline with
//! backoff (1 s doubling to 30 s): a new archive opened from what is
//! committed, and the WAL replayed into it by the sequencer, exactly as at
//! start-up. Once that works, intake takes batches again. Only an fsync
//! failure of the WAL stays fatal (the page cache's state is then unknown).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use schemas::envelope::DecodeLimits;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{self, ApiContext};
use crate::archive::Archive;
use crate::config::HubConfig;
use crate::dedup::DedupIndex;
use crate::intake::{self, DurableBatch, IntakeHandle, Sequencer};
use crate::mqtt_intake;
use crate::pipeline::Pipeline;
use crate::scoring::Router;
use crate::state::HubState;
use crate::stats::HubStats;
use crate::wal::Wal;

/// Batches queued between the sequencer and the pipeline.
const PIPELINE_QUEUE: usize = 64;
/// Decoded batches queued before the sequencer. With the transports' own
/// limits (MQTT: `mqtt_intake::MAX_CONCURRENT`, HTTP: `api::MAX_CONCURRENT_BATCHES`)
/// this bounds the batches held in memory to a few hundred envelopes.
const INTAKE_QUEUE: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot load the model")]
    Model(#[from] crate::model::ModelError),
    #[error("cannot open the archive")]
    Archive(#[from] crate::archive::ArchiveError),
    #[error("TLS or credentials of {what}")]
    Tls {
        what: &'static str,
        #[source]
        source: iot_tls::TlsError,
    },
    #[error("cannot open {what}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> StartError {
    move |source| StartError::Io { what, source }
}

/// A running hub.
#[derive(Debug)]
pub struct HubHandle {
    pub http_addr: SocketAddr,
    pub stats: Arc<HubStats>,
    pub state: Arc<HubState>,
    pub intake: IntakeHandle,
    pub archive_root: std::path::PathBuf,
    /// Acknowledged data the hub lost, until an operator acknowledges it.
    pub losses: Arc<crate::losses::LossLedger>,
    pub model_id: String,
    pub model_version: String,
    shutdown: watch::Sender<bool>,
    http: JoinHandle<()>,
    mqtt: Option<JoinHandle<()>>,
    sequencer: std::thread::JoinHandle<Sequencer>,
    /// Watches the pipeline; hands back its thread at shutdown.
    supervisor: JoinHandle<std::thread::JoinHandle<u64>>,
    /// Where the detector state is saved (committed at shutdown).
    detector_state: Option<crate::detector_state::StateStore>,
}

/// Starts a hub on the current tokio runtime.
/// How often the HTTPS certificate files and the token files are looked at.
const SECRET_FILES_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// Rotation without a restart: re-reads the HTTPS certificate, key and
/// client CA, and the token files, when they change (a bad new file is
/// refused with an ERROR; the last good one stays in force).
async fn follow_secret_files(
    https: Option<Arc<iot_tls::Reloading<iot_tls::rustls::ServerConfig>>>,
    access: Arc<api::access::Access>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(SECRET_FILES_POLL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if let Some(https) = &https {
            let _ = https.refresh();
        }
        access.refresh_token_files();
    }
}

pub async fn start(cfg: HubConfig) -> Result<HubHandle, StartError> {
    // Every TLS file and secret is read before anything starts: a bad one
    // is a start-up error that names it.
    let tls_error = |what| move |source| StartError::Tls { what, source };
    let https = match &cfg.http.tls {
        Some(tls) => {
            let settings = tls.clone();
            Some(Arc::new(
                iot_tls::Reloading::new("the hub's HTTPS certificate", tls.files(), move || {
                    settings.load()
                })
                .map_err(tls_error("http.tls"))?,
            ))
        }
        None => None,
    };
    let mqtt_security =
        iot_mqtt::LinkSecurity::new("mqtt", cfg.mqtt.security()).map_err(tls_error("mqtt"))?;
    let access = Arc::new(
        api::access::Access::new(
            &cfg.http.tokens,
            cfg.http.cors_origins.clone(),
            cfg.http.request_timeout,
        )
        .map_err(|e| StartError::Tls {
            what: "http.tokens",
            source: iot_tls::TlsError::Settings(e),
        })?,
    );
    let stats = Arc::new(HubStats::default());
    let state = Arc::new(HubState::default());
    let limits = DecodeLimits {
        max_envelope_bytes: cfg.intake.max_batch_bytes,
        max_rows: cfg.intake.max_batch_rows,
        ..DecodeLimits::default()
    };

    // A server's descriptors: the soft limit goes up to the hard one.
    let open_files = api::serve::raise_open_file_limit();
    tracing::debug!(?open_files, "open-file limit");
    std::fs::create_dir_all(&cfg.data_dir).map_err(io("the data directory"))?;
    let losses = Arc::new(
        crate::losses::LossLedger::open(&cfg.data_dir.join("losses.json"))
            .map_err(io("the loss ledger"))?,
    );
    let recovery_cfg = cfg.clone();
    let recovery_stats = Arc::clone(&stats);
    let recovery_state = Arc::clone(&state);
    let recovery_losses = Arc::clone(&losses);
    let recovered = tokio::task::spawn_blocking(move || {
        recover(
            recovery_cfg,
            recovery_stats,
            recovery_state,
            &recovery_losses,
            limits,
        )
    })
    .await
    .expect("recovery task panicked")?;
    let Recovered {
        sequencer,
        pipeline,
        pipeline_tx,
        model_id,
        model_version,
    } = recovered;

    let detector_state_floor = Arc::clone(&sequencer.detector_state_floor);
    let (intake, sequencer) = intake::start(sequencer, limits, INTAKE_QUEUE, pipeline_tx);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let supervisor = tokio::spawn(supervise_pipeline(
        pipeline,
        cfg.clone(),
        Arc::clone(&stats),
        Arc::clone(&state),
        detector_state_floor,
        intake.clone(),
        shutdown_rx.clone(),
    ));

    let listener = tokio::net::TcpListener::bind(cfg.http.listen)
        .await
        .map_err(io("the HTTP listener"))?;
    let http_addr = listener.local_addr().map_err(io("the HTTP listener"))?;
    if cfg.http.tokens.is_empty() {
        tracing::warn!(listen = %http_addr, "the API has no access control (no [[http.tokens]])");
    }
    let context = ApiContext::new(intake.clone(), Arc::clone(&state), Arc::clone(&stats))
        .with_archive_reader(crate::archive::reader::ArchiveReader::open(
            &cfg.archive_root(),
            cfg.archive.s3.as_ref(),
        )?)
        .with_losses(Arc::clone(&losses))
        .with_access(Arc::clone(&access));
    #[cfg(feature = "sql")]
    let context = context.with_sql(Arc::new(
        iot_sql::Engine::new(iot_sql::Limits {
            memory_bytes: usize::try_from(cfg.http.sql.memory_limit).unwrap_or(usize::MAX),
            timeout: cfg.http.sql.timeout.min(cfg.http.request_timeout),
            max_rows: cfg.http.sql.max_rows,
            concurrent: cfg.http.sql.concurrent,
            threads: cfg.http.sql.threads,
        })
        .map_err(io("the SQL engine's threads"))?,
    ));
    let app = api::router(context);
    tokio::spawn(follow_secret_files(
        https.clone(),
        access,
        shutdown_rx.clone(),
    ));
    let limits = api::serve::ServeLimits {
        max_connections: api::serve::effective_max_connections(cfg.http.max_connections),
        header_read_timeout: cfg.http.header_read_timeout,
        shutdown_grace: cfg.http.request_timeout,
    };
    let http = tokio::spawn(api::serve::serve(
        listener,
        https,
        app,
        limits,
        Arc::clone(&stats),
        shutdown_rx.clone(),
    ));
    let mqtt = cfg.mqtt.enabled.then(|| {
        tokio::spawn(mqtt_intake::run(
            cfg.clone(),
            mqtt_security,
            intake.clone(),
            Arc::clone(&stats),
            shutdown_rx,
        ))
    });
    tracing::info!(hub = %cfg.hub_id, http = %http_addr, archive = %cfg.archive_root().display(), "hub started");
    Ok(HubHandle {
        http_addr,
        stats,
        state,
        intake,
        archive_root: cfg.archive_root(),
        losses,
        model_id,
        model_version,
        shutdown: shutdown_tx,
        http,
        mqtt,
        sequencer,
        supervisor,
        detector_state: (!cfg.scoring.state_snapshot_interval.is_zero()).then(|| {
            crate::detector_state::StateStore::at(
                &cfg.detector_state_dir(),
                cfg.scoring.state_max_bytes,
            )
        }),
    })
}

struct Recovered {
    sequencer: Sequencer,
    pipeline: std::thread::JoinHandle<u64>,
    pipeline_tx: std::sync::mpsc::SyncSender<DurableBatch>,
    model_id: String,
    model_version: String,
}

/// A pipeline thread and what feeds and watches it.
struct StartedPipeline {
    thread: std::thread::JoinHandle<u64>,
    tx: std::sync::mpsc::SyncSender<DurableBatch>,
    /// The archive's low-water mark as the pipeline publishes it.
    low_water: Arc<AtomicU64>,
    model_id: String,
    model_version: String,
}

/// Loads the models, opens the archive (and the S3 uploader) and starts the
/// pipeline thread, empty: the caller replays the WAL into it.
fn start_pipeline(
    cfg: &HubConfig,
    stats: &Arc<HubStats>,
    state: &Arc<HubState>,
    detector_state_floor: &Arc<AtomicU64>,
) -> Result<StartedPipeline, StartError> {
    let mut scorer = Router::new(&cfg.scoring)?;
    let detector_state = restore_detector_state(cfg, stats, &mut scorer, detector_state_floor)
        .map_err(io("the detector state directory"))?;
    let default_model = &scorer.default_model().manifest;
    let (model_id, model_version) = (default_model.id.clone(), default_model.version.clone());
    let (archive, uploader) =
        Archive::start(&cfg.archive_root(), &cfg.hub_id, &cfg.archive, stats)?;
    let low_water = Arc::new(AtomicU64::new(archive.low_water()));
    let state_sharing = if cfg.scoring.state_sharing {
        scorer.follow_gateways();
        let shared = match &cfg.archive.s3 {
            Some(s3) => crate::detector_state::shared::SharedState::bucket(s3)
                .map_err(io("the archive's bucket for shared detector state"))?,
            None => crate::detector_state::shared::SharedState::Local(cfg.archive_root()),
        };
        let interval = cfg.scoring.state_snapshot_interval;
        Some(crate::pipeline::StateSharing {
            shared,
            interval: (!interval.is_zero()).then_some(interval),
            max_bytes: cfg.scoring.state_max_bytes,
        })
    } else {
        None
    };
    let (tx, rx) = std::sync::mpsc::sync_channel(PIPELINE_QUEUE);
    let pipeline = Pipeline {
        scorer,
        reload_interval: cfg.scoring.reload_interval,
        archive,
        state: Arc::clone(state),
        stats: Arc::clone(stats),
        low_water: Arc::clone(&low_water),
        uploader,
        detector_state,
        state_sharing,
    };
    let thread = std::thread::Builder::new()
        .name("hub-pipeline".into())
        .spawn(move || pipeline.run(rx))
        .map_err(io("the pipeline thread"))?;
    Ok(StartedPipeline {
        thread,
        tx,
        low_water,
        model_id,
        model_version,
    })
}

/// Restores the newest committed detector state snapshot into `scorer`
/// (see [`crate::detector_state`]); how the pipeline goes on saving.
fn restore_detector_state(
    cfg: &HubConfig,
    stats: &HubStats,
    scorer: &mut Router,
    floor: &Arc<AtomicU64>,
) -> std::io::Result<Option<crate::pipeline::DetectorStateSaving>> {
    if cfg.scoring.state_snapshot_interval.is_zero() {
        floor.store(u64::MAX, Relaxed);
        return Ok(None);
    }
    let store = crate::detector_state::StateStore::open(
        &cfg.detector_state_dir(),
        cfg.scoring.state_max_bytes,
    )?;
    let snapshot = store.load(|path, e| {
        stats.detector_state_refused.fetch_add(1, Relaxed);
        tracing::error!(path = %path.display(), error = %schemas::error_chain(e),
            "a detector state snapshot is unusable; it is kept as *.damaged and an older one (or none) is used");
    })?;
    let mut restored_through = None;
    if let Some(snapshot) = snapshot {
        match scorer.restore_state(&snapshot.payload) {
            Ok(restored) => {
                restored_through = Some(snapshot.position);
                stats
                    .detector_state_restored
                    .store(scorer.series_count() as u64, Relaxed);
                tracing::info!(
                    position = snapshot.position,
                    routes = restored.routes,
                    series = scorer.series_count(),
                    skipped = ?restored.skipped,
                    "detector state restored; the WAL after it is replayed"
                );
            }
            Err(e) => {
                stats.detector_state_refused.fetch_add(1, Relaxed);
                tracing::error!(error = %e, position = snapshot.position,
                    "the detector state snapshot cannot be decoded; series learn from the WAL anew");
            }
        }
    }
    floor.store(
        store.newest_committed()?.map_or(u64::MAX, |p| p + 1),
        Relaxed,
    );
    Ok(Some(crate::pipeline::DetectorStateSaving {
        store,
        interval: cfg.scoring.state_snapshot_interval,
        restored_through,
        wal_floor: Arc::clone(floor),
    }))
}

fn recover(
    cfg: HubConfig,
    stats: Arc<HubStats>,
    state: Arc<HubState>,
    losses: &crate::losses::LossLedger,
    limits: DecodeLimits,
) -> Result<Recovered, StartError> {
    let detector_state_floor = Arc::new(AtomicU64::new(u64::MAX));
    let pipeline = start_pipeline(&cfg, &stats, &state, &detector_state_floor)?;
    let dedup_path = cfg.data_dir.join("dedup.json");
    let dedup_limits = crate::dedup::DedupLimits {
        max_sources: cfg.intake.dedup_max_sources,
        retention: cfg.intake.dedup_retention,
        ..crate::dedup::DedupLimits::default()
    };
    let (mut dedup, dedup_covers) = match DedupIndex::load(&dedup_path, dedup_limits) {
        Ok(loaded) => loaded,
        Err(e) => {
            // Never a reason not to start: rebuilt from the whole WAL, and
            // a resend from before that is archived twice, never lost.
            stats.dedup_snapshots_refused.fetch_add(1, Relaxed);
            tracing::error!(error = %schemas::error_chain(&e), path = %dedup_path.display(),
                "the dedup snapshot is unusable; the index is rebuilt from the WAL, and batches resent from before it may be archived twice");
            (DedupIndex::new(dedup_limits), 0)
        }
    };
    // WAL positions name archive files and must never go back: they resume
    // above whatever the archive or the dedup snapshot has already seen.
    let floor = pipeline.low_water.load(Relaxed).max(dedup_covers);
    let (mut wal, wal_recovery) = Wal::open(
        &cfg.data_dir.join("wal"),
        cfg.intake.wal_segment_bytes,
        floor,
    )
    .map_err(io("the WAL"))?;
    if wal_recovery.torn_bytes > 0 {
        tracing::warn!(
            bytes = wal_recovery.torn_bytes,
            "the WAL ended in a write cut short by a crash (never acknowledged); it was truncated"
        );
    }
    let mut lost = Vec::new();
    for d in &wal_recovery.damage {
        lost.push(report_wal_damage(&cfg, &stats, d));
    }
    // Replay everything still in the WAL: the archive skips, per partition,
    // what its committed files already hold.
    let mut series = crate::screen::SeriesRegistry::default();
    let (replayed, unreadable) =
        intake::replay_wal(&mut wal, &limits, &pipeline.tx, &stats, |pos, batch| {
            if pos >= dedup_covers {
                dedup.insert(&batch.header.key());
            }
            series.observe(batch);
        })
        .map_err(io("the WAL for replay"))?;
    for (pos, reason) in unreadable {
        let mut entry = crate::losses::LossEntry::new(format!(
            "WAL record {pos} cannot be read back: {reason}"
        ));
        entry.first_pos = Some(pos);
        entry.last_pos = Some(pos);
        lost.push(entry);
    }
    losses.record(lost).map_err(io("the loss ledger"))?;
    stats
        .losses_unacknowledged
        .store(losses.entries().len() as u64, Relaxed);
    stats.batches_replayed.store(replayed, Relaxed);
    if replayed > 0 {
        tracing::info!(batches = replayed, "replayed the WAL");
    }
    Ok(Recovered {
        sequencer: Sequencer {
            wal,
            dedup,
            dedup_path,
            dedup_covers,
            group_commit_delay: cfg.intake.group_commit_delay,
            archive_low_water: pipeline.low_water,
            detector_state_floor,
            stats,
            screen_rules: cfg.intake.screen_rules(),
            series,
        },
        pipeline: pipeline.thread,
        pipeline_tx: pipeline.tx,
        model_id: pipeline.model_id,
        model_version: pipeline.model_version,
    })
}

/// Logs, counts and describes a damaged stretch of the WAL (a loss).
fn report_wal_damage(
    cfg: &HubConfig,
    stats: &HubStats,
    d: &seglog::Damage,
) -> crate::losses::LossEntry {
    let (first, last, records) = match d.lost {
        seglog::Lost::Nothing => (None, None, 0),
        seglog::Lost::Ids { first, last } => (Some(first), Some(last), last - first + 1),
        seglog::Lost::From { first } => (Some(first), None, 1),
    };
    let batches: Vec<String> = crate::wal::salvage_headers(&cfg.data_dir.join("wal"), d)
        .iter()
        .map(|h| format!("{}/{}/{}", h.gateway, h.incarnation, h.seq))
        .collect();
    stats.wal_records_lost.fetch_add(records, Relaxed);
    tracing::error!(
        segment = %d.segment,
        offset = d.offset,
        bytes = d.bytes,
        first_pos = ?first,
        last_pos = ?last,
        batches = ?batches,
        quarantine = %d.quarantine,
        "acknowledged batches lost: WAL records are damaged on disk; the bytes are kept for inspection"
    );
    let mut entry = crate::losses::LossEntry::new(format!(
        "{} damaged bytes at offset {} of WAL segment {}",
        d.bytes, d.offset, d.segment
    ));
    entry.first_pos = first;
    entry.last_pos = last;
    entry.batches = batches;
    entry.quarantine = Some(d.quarantine.clone());
    entry
}

/// Watches the pipeline thread: when it has stopped on an archive failure,
/// rebuilds it with backoff and has the sequencer replay the WAL into it.
/// Returns the current pipeline thread at shutdown.
async fn supervise_pipeline(
    mut thread: std::thread::JoinHandle<u64>,
    cfg: HubConfig,
    stats: Arc<HubStats>,
    state: Arc<HubState>,
    detector_state_floor: Arc<AtomicU64>,
    intake: IntakeHandle,
    mut shutdown: watch::Receiver<bool>,
) -> std::thread::JoinHandle<u64> {
    const FIRST_RETRY: std::time::Duration = std::time::Duration::from_secs(1);
    const LAST_RETRY: std::time::Duration = std::time::Duration::from_secs(30);
    let mut retry = FIRST_RETRY;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = shutdown.changed() => return thread,
        }
        if !(stats.archive_failed() && thread.is_finished()) {
            retry = FIRST_RETRY;
            continue;
        }
        let failures = stats.archive_failures_so_far();
        let (c, st, sa, floor) = (
            cfg.clone(),
            Arc::clone(&stats),
            Arc::clone(&state),
            Arc::clone(&detector_state_floor),
        );
        let started = tokio::task::spawn_blocking(move || start_pipeline(&c, &st, &sa, &floor))
            .await
            .expect("pipeline start panicked");
        let new = match started {
            Ok(new) => new,
            Err(e) => {
                tracing::error!(error = %schemas::error_chain(&e), retry_in = ?retry, "archiving cannot resume yet");
                retry = (retry * 2).min(LAST_RETRY);
                continue;
            }
        };
        let old = std::mem::replace(&mut thread, new.thread);
        let _ = tokio::task::spawn_blocking(move || old.join()).await;
        match intake.restart_pipeline(new.tx, new.low_water).await {
            Some(replayed) => {
                stats.archive_restarts.fetch_add(1, Relaxed);
                stats.archive_recovered_from(failures);
                tracing::warn!(
                    batches = replayed,
                    "archiving resumed: the pipeline was rebuilt from the WAL; the hub takes batches again"
                );
                retry = FIRST_RETRY;
            }
            None => return thread,
        }
    }
}

impl HubHandle {
    /// Graceful stop; see the module docs for the order.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        if let Some(mqtt) = self.mqtt {
            let _ = mqtt.await;
        }
        let _ = self.http.await;
        let pipeline = self.supervisor.await.expect("pipeline supervisor panicked");
        self.intake.close().await;
        let sequencer = self.sequencer;
        let detector_state = self.detector_state;
        tokio::task::spawn_blocking(move || {
            let mut sequencer = sequencer.join().expect("sequencer thread panicked");
            let low_water = pipeline.join().expect("pipeline thread panicked");
            sequencer.archive_low_water.store(low_water, Relaxed);
            // The archive has closed its files: the last state saved is
            // covered, and the next start restores it.
            if let Some(store) = detector_state {
                match store.promote(low_water) {
                    Ok(newest) => sequencer
                        .detector_state_floor
                        .store(newest.map_or(u64::MAX, |p| p + 1), Relaxed),
                    Err(e) => tracing::warn!(error = %e, "cannot commit the last detector state"),
                }
            }
            sequencer.trim_wal();
        })
        .await
        .expect("shutdown task panicked");
        tracing::info!("hub stopped");
    }
}
