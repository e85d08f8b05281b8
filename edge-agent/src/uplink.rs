//! Sends sealed batches to the hub and releases device acknowledgements once
//! the hub has made a batch durable.
//!
//! One task owns the in-flight table (at most `max-in-flight` batches). A
//! batch stays in the table, and keeps its device acknowledgements, until the
//! hub answers `durable` or `duplicate` (both mean "safe on the hub"). A batch
//! with no answer within `ack-timeout`, or whose send failed, is sent again,
//! byte for byte, after an exponential backoff with jitter; the hub drops the
//! copies by `(gateway, incarnation, seq)`. A `rejected` answer is permanent:
//! the batch is dropped, its readings counted as rejected and logged at ERROR.
//!
//! Transports: MQTT (publish QoS 1 to `<prefix>/batches/<gateway>`, answers
//! on `<prefix>/acks/<gateway>`) or HTTP (`POST <url>/v1/batches`, answer in
//! the response body).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use schemas::ack::{AckStatus, BatchAck};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::batcher::SealedBatch;
use crate::config::{EdgeConfig, UplinkKind, UplinkSettings};
use crate::mqtt::{OrderedAcker, backoff, next_reconnect_delay};
use crate::stats::EdgeStats;

/// Content type of an envelope over HTTP.
pub const ENVELOPE_CONTENT_TYPE: &str = "application/vnd.iot-pipeline.batch";

/// What became of one transmission.
#[derive(Debug)]
pub enum SendOutcome {
    Answered(BatchAck),
    /// Transient failure (connection refused, 5xx, timeout): retry later.
    Failed {
        seq: u64,
        error: String,
    },
}

/// How batches leave the gateway.
#[derive(Debug)]
pub enum Transport {
    Mqtt {
        client: AsyncClient,
        topic: String,
    },
    Http {
        client: reqwest::Client,
        url: String,
        token: Option<String>,
        outcomes: mpsc::UnboundedSender<SendOutcome>,
    },
}

impl Transport {
    /// Connects the transport; answers arrive on the returned receiver.
    pub fn start(
        cfg: &EdgeConfig,
        incarnation: u64,
        stats: Arc<EdgeStats>,
        shutdown: watch::Receiver<bool>,
    ) -> (Self, mpsc::UnboundedReceiver<SendOutcome>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let transport = match cfg.uplink.kind {
            UplinkKind::Mqtt => {
                let m = &cfg.uplink.mqtt;
                let mut opts = MqttOptions::new(cfg.uplink_client_id(), &m.host, m.port);
                opts.set_keep_alive(m.keep_alive)
                    .set_clean_session(false)
                    .set_max_packet_size(
                        64 * 1024,
                        schemas::DecodeLimits::default().max_envelope_bytes,
                    )
                    .set_inflight(cfg.uplink.max_in_flight.clamp(1, u16::MAX as usize) as u16 * 2);
                let (client, eventloop) =
                    crate::mqtt::client(opts, cfg.uplink.max_in_flight * 2 + 8);
                let ack_topic = format!("{}/acks/{}", m.topic_prefix, cfg.gateway_id);
                tokio::spawn(run_mqtt_answers(
                    client.clone(),
                    eventloop,
                    ack_topic,
                    cfg.gateway_id.clone(),
                    incarnation,
                    tx,
                    stats,
                    shutdown,
                ));
                Transport::Mqtt {
                    client,
                    topic: format!("{}/batches/{}", m.topic_prefix, cfg.gateway_id),
                }
            }
            UplinkKind::Http => {
                let client = reqwest::Client::builder()
                    .timeout(cfg.uplink.http.request_timeout)
                    .build()
                    .expect("static reqwest configuration");
                Transport::Http {
                    client,
                    url: format!("{}/v1/batches", cfg.uplink.http.url.trim_end_matches('/')),
                    token: cfg.uplink.http.token.clone(),
                    outcomes: tx,
                }
            }
        };
        (transport, rx)
    }

    async fn send(&self, batch: &SealedBatch) {
        match self {
            Transport::Mqtt { client, topic } => {
                // Queued into the MQTT client; a failed publish shows up as a
                // missing answer and is retried after the ack timeout.
                if let Err(e) = client
                    .publish_bytes(topic.clone(), QoS::AtLeastOnce, false, batch.bytes.clone())
                    .await
                {
                    tracing::warn!(error = %e, seq = batch.header.seq, "cannot queue batch publish");
                }
            }
            Transport::Http {
                client,
                url,
                token,
                outcomes,
            } => {
                let mut request = client
                    .post(url.clone())
                    .header("content-type", ENVELOPE_CONTENT_TYPE)
                    .body(batch.bytes.clone());
                if let Some(t) = token {
                    request = request.bearer_auth(t);
                }
                let seq = batch.header.seq;
                let outcomes = outcomes.clone();
                tokio::spawn(async move {
                    let outcome = match request.send().await {
                        Ok(resp) => {
                            let status = resp.status();
                            let body = resp.bytes().await.unwrap_or_default();
                            match serde_json::from_slice::<BatchAck>(&body) {
                                Ok(ack) if status.is_success() || status.is_client_error() => {
                                    SendOutcome::Answered(ack)
                                }
                                _ => SendOutcome::Failed {
                                    seq,
                                    error: format!("hub answered {status}"),
                                },
                            }
                        }
                        Err(e) => SendOutcome::Failed {
                            seq,
                            error: schemas::error_chain(&e),
                        },
                    };
                    let _ = outcomes.send(outcome);
                });
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_mqtt_answers(
    client: AsyncClient,
    mut eventloop: rumqttc::EventLoop,
    ack_topic: String,
    gateway: String,
    incarnation: u64,
    answers: mpsc::UnboundedSender<SendOutcome>,
    stats: Arc<EdgeStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    loop {
        let event = tokio::select! {
            ev = eventloop.poll() => ev,
            _ = shutdown.changed() => return,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                failures = 0;
                stats.broker_connects.fetch_add(1, Relaxed);
                if let Err(e) = client.try_subscribe(ack_topic.clone(), QoS::AtLeastOnce) {
                    tracing::error!(error = %e, "cannot subscribe to hub acks");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) if p.topic == ack_topic => {
                match serde_json::from_slice::<BatchAck>(&p.payload) {
                    // Answers for an earlier incarnation concern batches this
                    // process never sent.
                    Ok(ack) if ack.gateway == gateway && ack.incarnation == incarnation => {
                        if answers.send(SendOutcome::Answered(ack)).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "unreadable ack from hub"),
                }
            }
            Ok(_) => {}
            Err(e) => {
                stats.broker_errors.fetch_add(1, Relaxed);
                let delay = next_reconnect_delay(&mut failures);
                tracing::warn!(error = %e, retry_in = ?delay, "uplink broker connection failed");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
}

struct InFlight {
    batch: SealedBatch,
    attempts: u32,
    /// When to send again if no answer arrived.
    resend_at: Instant,
}

/// The uplink task. Returns when the batcher has closed its channel and every
/// in-flight batch is settled, or when `shutdown` flips and the grace period
/// has passed (unsettled device messages are then redelivered by the broker).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    settings: UplinkSettings,
    transport: Transport,
    mut answers: mpsc::UnboundedReceiver<SendOutcome>,
    mut batches: mpsc::Receiver<SealedBatch>,
    acker: OrderedAcker,
    stats: Arc<EdgeStats>,
    mut shutdown: watch::Receiver<bool>,
    shutdown_grace: Duration,
) {
    let mut in_flight: BTreeMap<u64, InFlight> = BTreeMap::new();
    let mut batches_open = true;
    let mut grace_deadline: Option<Instant> = None;
    loop {
        if !batches_open && in_flight.is_empty() {
            return;
        }
        let next_resend = in_flight
            .values()
            .map(|f| f.resend_at)
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let grace = grace_deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            batch = batches.recv(), if batches_open && in_flight.len() < settings.max_in_flight => {
                match batch {
                    Some(batch) => {
                        let seq = batch.header.seq;
                        let entry = InFlight { batch, attempts: 1, resend_at: Instant::now() + settings.ack_timeout };
                        transmit(&transport, &entry.batch, &stats).await;
                        in_flight.insert(seq, entry);
                        stats.in_flight.store(in_flight.len() as u64, Relaxed);
                    }
                    None => batches_open = false,
                }
            }
            Some(outcome) = answers.recv() => match outcome {
                SendOutcome::Answered(ack) => {
                    let Some(entry) = in_flight.remove(&ack.seq) else { continue };
                    stats.in_flight.store(in_flight.len() as u64, Relaxed);
                    let rows = u64::from(entry.batch.header.row_count);
                    match &ack.status {
                        AckStatus::Durable | AckStatus::Duplicate => {
                            stats.batches_acked.fetch_add(1, Relaxed);
                            stats.readings_delivered.fetch_add(rows, Relaxed);
                        }
                        AckStatus::Rejected { reason } => {
                            stats.batches_rejected_by_hub.fetch_add(1, Relaxed);
                            stats.readings_rejected_by_hub.fetch_add(rows, Relaxed);
                            tracing::error!(seq = ack.seq, rows, reason = %reason, "hub rejected a batch; its readings are dropped");
                        }
                    }
                    acker.release(&entry.batch.acks);
                }
                SendOutcome::Failed { seq, error } => {
                    if let Some(entry) = in_flight.get_mut(&seq) {
                        let delay = backoff(entry.attempts, settings.retry_initial, settings.retry_max);
                        tracing::warn!(seq, attempt = entry.attempts, retry_in = ?delay, error = %error, "batch send failed");
                        entry.resend_at = Instant::now() + delay;
                    }
                }
            },
            _ = tokio::time::sleep_until(next_resend), if !in_flight.is_empty() => {
                let now = Instant::now();
                for entry in in_flight.values_mut().filter(|e| e.resend_at <= now) {
                    entry.attempts += 1;
                    stats.batch_retries.fetch_add(1, Relaxed);
                    transmit(&transport, &entry.batch, &stats).await;
                    let delay = backoff(entry.attempts, settings.retry_initial, settings.retry_max);
                    entry.resend_at = Instant::now() + settings.ack_timeout.max(delay);
                }
            }
            _ = shutdown.changed(), if grace_deadline.is_none() => {
                grace_deadline = Some(Instant::now() + shutdown_grace);
            }
            _ = tokio::time::sleep_until(grace), if grace_deadline.is_some() => {
                if !in_flight.is_empty() {
                    tracing::info!(unsettled = in_flight.len(), "shutting down with batches in flight; the broker will redeliver their messages");
                }
                return;
            }
        }
    }
}

async fn transmit(transport: &Transport, batch: &SealedBatch, stats: &EdgeStats) {
    stats.batch_sends.fetch_add(1, Relaxed);
    stats
        .uplink_bytes
        .fetch_add(batch.bytes.len() as u64, Relaxed);
    transport.send(batch).await;
}
