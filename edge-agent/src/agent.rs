//! Wires the stages together and owns their lifecycle.
//!
//! Shutdown order matters for the acknowledgement chain: stop taking device
//! messages, seal the open batch, make it durable in the spool (if there is
//! one), let the uplink settle what is in flight (bounded by a grace period),
//! and only then close the gateway broker connection, so every
//! acknowledgement released during the drain is sent.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::batcher::{Batcher, IngestItem, SealedBatch};
use crate::config::EdgeConfig;
use crate::redelivery::RedeliveryGuard;
use crate::stats::EdgeStats;
use crate::{ingest, uplink};
use iot_mqtt::OrderedAcker;

/// Device messages buffered between ingest and the batcher.
const INGEST_QUEUE: usize = 1024;

#[derive(Debug)]
pub struct Agent;

/// A running agent.
#[derive(Debug)]
pub struct AgentHandle {
    pub stats: Arc<EdgeStats>,
    /// Where `/metrics` is served, when configured.
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub incarnation: u64,
    stop_intake: watch::Sender<bool>,
    finish: watch::Sender<bool>,
    batcher: JoinHandle<()>,
    uplink: JoinHandle<()>,
    ingest: JoinHandle<()>,
    spool_thread: Option<std::thread::JoinHandle<()>>,
}

impl Agent {
    /// Starts all stages on the current tokio runtime (the spool gets a
    /// thread of its own). The incarnation is new for every start, so the
    /// sequence numbers of a new run never collide with an earlier run's;
    /// spooled batches of earlier runs keep the identity they were sealed
    /// with. Fails if the spool directory cannot be opened or the metrics
    /// address cannot be bound.
    pub async fn start(cfg: EdgeConfig, shutdown_grace: Duration) -> std::io::Result<AgentHandle> {
        let incarnation = new_incarnation();
        let stats = Arc::new(EdgeStats::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let (finish_tx, finish_rx) = watch::channel(false);

        let max_unacked = (cfg.uplink.max_in_flight + 2) * cfg.batch.max_rows + INGEST_QUEUE;
        // Both links' TLS files and secrets are read first: a bad one stops
        // the start before anything runs.
        let security = iot_mqtt::LinkSecurity::new("mqtt", cfg.mqtt.security())
            .map_err(std::io::Error::other)?;
        // The uplink connection must outlive the drain, so it stops with
        // `finish`, not with `stop_intake`.
        let (transport, answers) = uplink::Transport::start(
            &cfg.uplink,
            &cfg.gateway_id,
            cfg.uplink_client_id(),
            Arc::clone(&stats),
            finish_rx.clone(),
        )
        .map_err(std::io::Error::other)?;
        let (client, eventloop) = ingest::connect(
            &cfg.mqtt,
            &security,
            cfg.mqtt_client_id(),
            max_unacked.min(1 << 20),
        );
        let acker = OrderedAcker::new(
            &client,
            Arc::clone(&stats.device_acks),
            Arc::clone(&stats.device_ack_failures),
        );
        let (item_tx, item_rx) = mpsc::channel::<IngestItem>(INGEST_QUEUE);
        let (batch_tx, batch_rx) = mpsc::channel::<SealedBatch>(1);

        // Any message the broker may still redeliver is among the last
        // `broker-inflight` it sent; remember twice that.
        let mut guard = RedeliveryGuard::new(cfg.mqtt.broker_inflight.saturating_mul(2));
        let (source, spool_thread) = match cfg.spool.service_settings() {
            Some(settings) => {
                let started = crate::spool::service::start(
                    settings,
                    batch_rx,
                    acker.clone(),
                    Arc::clone(&stats),
                )?;
                guard.seed_from_envelopes(&started.newest_payloads);
                let source = uplink::Source::Spool {
                    events: started.events,
                    spool: started.handle,
                    drain_rate: cfg.spool.drain_rate,
                    live_queue: cfg.spool.live_queue,
                };
                (source, Some(started.thread))
            }
            None => (
                uplink::Source::Batcher {
                    batches: batch_rx,
                    acker: acker.clone(),
                },
                None,
            ),
        };
        let filter = crate::filter::Filter::new(cfg.rules.clone());
        stats.set_filter_counts(filter.named_counts());
        let dead_letters = crate::dead_letter::DeadLetters::new(
            cfg.dead_letter.clone(),
            Some(client.clone()),
            Arc::clone(&stats),
        );
        let ingest = tokio::spawn(ingest::run(
            cfg.subscriptions.clone(),
            cfg.mqtt.max_packet_size,
            filter,
            dead_letters,
            client,
            eventloop,
            item_tx,
            acker.clone(),
            guard,
            cfg.mqtt.reconnect_max,
            security,
            Arc::clone(&stats),
            stop_rx.clone(),
            finish_rx.clone(),
        ));
        let batcher = tokio::spawn(run_batcher(
            Batcher::new(
                &cfg.gateway_id,
                incarnation,
                cfg.batch.clone(),
                cfg.mqtt.broker_inflight / 2,
            ),
            item_rx,
            batch_tx,
            Arc::clone(&stats),
        ));
        let uplink = tokio::spawn(uplink::run(
            cfg.uplink.clone(),
            transport,
            answers,
            source,
            Arc::clone(&stats),
            stop_rx,
            shutdown_grace,
        ));
        let metrics_addr = match cfg.metrics_listen {
            Some(listen) => Some(
                crate::metrics::serve(listen, Arc::clone(&stats), finish_rx.clone())
                    .await?
                    .0,
            ),
            None => None,
        };
        tracing::info!(gateway = %cfg.gateway_id, incarnation, metrics = ?metrics_addr, "edge agent started");
        Ok(AgentHandle {
            metrics_addr,
            stats,
            incarnation,
            stop_intake: stop_tx,
            finish: finish_tx,
            batcher,
            uplink,
            ingest,
            spool_thread,
        })
    }
}

impl AgentHandle {
    /// Graceful stop; see the module docs for the order.
    pub async fn shutdown(self) {
        let _ = self.stop_intake.send(true);
        let _ = self.batcher.await;
        let _ = self.uplink.await;
        if let Some(thread) = self.spool_thread {
            // Ends once the batcher and the uplink are gone: every batch
            // sealed during the drain is durable and acknowledged by then.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        let _ = self.finish.send(true);
        let _ = self.ingest.await;
        tracing::info!(
            delivered = self.stats.readings_delivered.load(Relaxed),
            "edge agent stopped"
        );
    }
}

async fn run_batcher(
    mut batcher: Batcher,
    mut items: mpsc::Receiver<IngestItem>,
    out: mpsc::Sender<SealedBatch>,
    stats: Arc<EdgeStats>,
) {
    loop {
        let deadline = batcher.deadline();
        let sealed = tokio::select! {
            item = items.recv() => match item {
                Some(item) => batcher.push(item, Instant::now().into_std()),
                None => {
                    if let Some(last) = batcher.seal() {
                        stats.batches_sealed.fetch_add(1, Relaxed);
                        let _ = out.send(last).await;
                    }
                    return;
                }
            },
            _ = sleep_until_opt(deadline) => batcher.seal(),
        };
        if let Some(batch) = sealed {
            stats.batches_sealed.fetch_add(1, Relaxed);
            if out.send(batch).await.is_err() {
                return;
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// A fresh incarnation id: random, mixed with the clock so two agents started
/// in the same instant still differ.
pub fn new_incarnation() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    fastrand::u64(..) ^ nanos.rotate_left(32)
}
