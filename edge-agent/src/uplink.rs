//! Sends batches to the hub and settles them once the hub has made them
//! durable.
//!
//! One task owns the in-flight table (at most `max-in-flight` batches). A
//! batch stays in the table until the hub answers `durable` or `duplicate`
//! (both mean "safe on the hub"). A batch with no answer within
//! `ack-timeout`, or whose send failed, is sent again, byte for byte, after
//! an exponential backoff with jitter; the hub drops the copies by
//! `(gateway, incarnation, seq)`. A `rejected` answer is permanent: the batch
//! is dropped, its readings counted as rejected and logged at ERROR.
//!
//! Where batches come from, and what settling means, is the [`Source`]:
//! - without a spool, sealed batches come straight from the batcher and carry
//!   their device acknowledgements, which are released when the hub answers;
//! - with the spool, device messages were acknowledged after the spool's
//!   fsync; settling deletes the record. Live batches (handed over with their
//!   bytes) go first; the backlog (records recovered at start-up, or live
//!   ones the uplink could not keep in memory while the hub was away) is read
//!   back from disk oldest first, paced at `spool.drain-rate` batches per
//!   second, and never takes the last free slot of the window, so live data
//!   keeps flowing during a drain. Memory stays bounded: at most
//!   `max-in-flight` batches in flight plus `spool.live-queue` waiting.
//!
//! Transports: MQTT (publish QoS 1 to the gateway's hub, see
//! [`iot_mqtt::routing`], or to the shared `<prefix>/batches/<gateway>`;
//! answers on `<prefix>/acks/<gateway>`) or HTTP (`POST <url>/v1/batches`, answer in
//! the response body).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use schemas::ack::{AckStatus, BatchAck};
use schemas::envelope::BatchHeader;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::batcher::{PendingAck, SealedBatch};
use crate::config::{UplinkKind, UplinkSettings};
use crate::spool::service::{SpoolEvent, SpoolHandle};
use crate::stats::EdgeStats;
use iot_mqtt::routing::HubDirectory;
use iot_mqtt::{LinkSecurity, OrderedAcker, Session, SessionEvent, backoff};
use iot_tls::{Refresh, Reloading, Secret, TlsError, rustls};

/// Content type of an envelope over HTTP.
pub const ENVELOPE_CONTENT_TYPE: &str = "application/vnd.iot-pipeline.batch";

/// What became of one transmission.
#[derive(Debug)]
pub enum SendOutcome {
    Answered(BatchAck),
    /// Transient failure (connection refused, 5xx, timeout): retry later.
    Failed {
        key: (u64, u64),
        error: String,
    },
}

/// How batches leave the gateway.
#[derive(Debug)]
pub enum Transport {
    Mqtt {
        client: AsyncClient,
        prefix: String,
        gateway: String,
        /// Sticky routing: the hubs announced on the broker.
        hubs: Option<HubDirectory>,
    },
    Http {
        link: Box<HttpLink>,
        url: String,
        outcomes: mpsc::UnboundedSender<SendOutcome>,
    },
}

/// The HTTP(S) client of the uplink and its bearer token, rebuilt when the
/// TLS files or the token file change (looked at before a send, at most
/// every half second; a bad new file is refused with one ERROR and the last
/// good one stays).
#[derive(Debug)]
pub struct HttpLink {
    client: std::sync::Mutex<reqwest::Client>,
    timeout: Duration,
    tls: Option<Reloading<rustls::ClientConfig>>,
    /// `token`, or `token-file` followed like the TLS files.
    token: Option<Token>,
}

#[derive(Debug)]
enum Token {
    Inline(Secret),
    File(Reloading<Secret>),
}

impl HttpLink {
    fn new(http: &crate::config::UplinkHttp) -> Result<Self, TlsError> {
        let tls = match &http.tls {
            Some(tls) => {
                let cfg = tls.clone();
                Some(Reloading::new(
                    "the HTTPS uplink's TLS",
                    tls.files(),
                    move || cfg.load(),
                )?)
            }
            None => None,
        };
        // Refuses `token` and `token-file` together, and an unreadable file.
        iot_tls::read_secret("token", http.token.as_ref(), http.token_file.as_deref())?;
        let token = match (&http.token, &http.token_file) {
            (Some(t), _) => Some(Token::Inline(t.clone())),
            (None, Some(file)) => {
                let path = file.clone();
                Some(Token::File(Reloading::new(
                    "the HTTPS uplink's token file",
                    vec![file.clone()],
                    move || {
                        iot_tls::read_secret("token", None, Some(&path))?
                            .map(Arc::new)
                            .ok_or_else(|| TlsError::Settings("token-file gave no token".into()))
                    },
                )?))
            }
            (None, None) => None,
        };
        let client = Self::build(http.request_timeout, tls.as_ref().map(Reloading::current))?;
        Ok(Self {
            client: std::sync::Mutex::new(client),
            timeout: http.request_timeout,
            tls,
            token,
        })
    }

    fn build(
        timeout: Duration,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<reqwest::Client, TlsError> {
        let mut builder = reqwest::Client::builder().timeout(timeout);
        if let Some(tls) = tls {
            builder = builder
                .use_preconfigured_tls((*tls).clone())
                .https_only(true);
        }
        builder
            .build()
            .map_err(|e| TlsError::Settings(format!("HTTP client: {e}")))
    }

    /// The client and token to send with now, after looking at the files.
    fn current(&self) -> (reqwest::Client, Option<Secret>) {
        if let Some(tls) = &self.tls
            && let Refresh::Replaced = tls.refresh()
        {
            match Self::build(self.timeout, Some(tls.current())) {
                Ok(client) => *self.client.lock().expect("not poisoned") = client,
                Err(e) => {
                    tracing::error!(error = %e, "cannot rebuild the HTTPS client; the previous one stays")
                }
            }
        }
        let token = match &self.token {
            Some(Token::Inline(t)) => Some(t.clone()),
            Some(Token::File(file)) => {
                // A refused file is logged once by Reloading; the last good
                // token stays.
                let _: Refresh = file.refresh();
                Some((*file.current()).clone())
            }
            None => None,
        };
        (self.client.lock().expect("not poisoned").clone(), token)
    }
}

impl Transport {
    /// Connects the transport `uplink` configures, for `gateway` (as
    /// `client_id` on an MQTT uplink); answers arrive on the returned
    /// receiver.
    pub fn start(
        uplink: &UplinkSettings,
        gateway: &str,
        client_id: String,
        stats: Arc<EdgeStats>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(Self, mpsc::UnboundedReceiver<SendOutcome>), TlsError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let transport = match uplink.kind {
            UplinkKind::Mqtt => {
                let m = &uplink.mqtt;
                let security = LinkSecurity::new("uplink.mqtt", m.security())?;
                let mut opts = MqttOptions::new(client_id, &m.host, m.port);
                security.apply(&mut opts);
                opts.set_keep_alive(m.keep_alive)
                    .set_clean_session(false)
                    .set_max_packet_size(
                        m.max_transport_bytes,
                        schemas::DecodeLimits::default().max_envelope_bytes,
                    )
                    .set_inflight(uplink.max_in_flight.clamp(1, u16::MAX as usize) as u16 * 2);
                let (client, eventloop) = iot_mqtt::client(opts, uplink.max_in_flight * 2 + 8);
                let hubs = m.sticky.then(HubDirectory::default);
                tokio::spawn(run_mqtt_answers(
                    client.clone(),
                    eventloop,
                    MqttAnswers {
                        prefix: m.topic_prefix.clone(),
                        gateway: gateway.to_owned(),
                        hubs: hubs.clone(),
                        reconnect_max: m.reconnect_max,
                        security,
                    },
                    tx,
                    stats,
                    shutdown,
                ));
                Transport::Mqtt {
                    client,
                    prefix: m.topic_prefix.clone(),
                    gateway: gateway.to_owned(),
                    hubs,
                }
            }
            UplinkKind::Http => Transport::Http {
                link: Box::new(HttpLink::new(&uplink.http)?),
                url: format!("{}/v1/batches", uplink.http.url.trim_end_matches('/')),
                outcomes: tx,
            },
        };
        Ok((transport, rx))
    }

    /// Sends one batch; returns the hub it was addressed to (sticky MQTT).
    async fn send(&self, batch: &Outgoing) -> Option<String> {
        match self {
            Transport::Mqtt {
                client,
                prefix,
                gateway,
                hubs,
            } => {
                // Chosen per send: a resend after the owner left goes to
                // the new owner.
                let route = match hubs {
                    Some(hubs) => hubs.route(prefix, gateway),
                    None => iot_mqtt::routing::Route {
                        topic: iot_mqtt::routing::shared_topic(prefix, gateway),
                        hub: None,
                    },
                };
                // Queued into the MQTT client; a failed publish shows up as a
                // missing answer and is retried after the ack timeout.
                if let Err(e) = client
                    .publish_bytes(route.topic, QoS::AtLeastOnce, false, batch.bytes.clone())
                    .await
                {
                    tracing::warn!(error = %e, seq = batch.header.seq, "cannot queue batch publish");
                }
                route.hub
            }
            Transport::Http {
                link,
                url,
                outcomes,
            } => {
                let (client, token) = link.current();
                let mut request = client
                    .post(url.clone())
                    .header("content-type", ENVELOPE_CONTENT_TYPE)
                    .body(batch.bytes.clone());
                if let Some(t) = token {
                    request = request.bearer_auth(t.expose());
                }
                let key = batch.key();
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
                                    key,
                                    error: format!("hub answered {status}"),
                                },
                            }
                        }
                        Err(e) => SendOutcome::Failed {
                            key,
                            error: schemas::error_chain(&e),
                        },
                    };
                    let _ = outcomes.send(outcome);
                });
                None
            }
        }
    }

    /// The hubs announced on the broker (sticky MQTT only).
    fn hubs(&self) -> Option<&HubDirectory> {
        match self {
            Transport::Mqtt { hubs, .. } => hubs.as_ref(),
            Transport::Http { .. } => None,
        }
    }
}

/// What the uplink's MQTT connection listens for.
struct MqttAnswers {
    prefix: String,
    gateway: String,
    hubs: Option<HubDirectory>,
    reconnect_max: Duration,
    security: LinkSecurity,
}

async fn run_mqtt_answers(
    client: AsyncClient,
    eventloop: rumqttc::EventLoop,
    listen: MqttAnswers,
    answers: mpsc::UnboundedSender<SendOutcome>,
    stats: Arc<EdgeStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let MqttAnswers {
        prefix,
        gateway,
        hubs,
        reconnect_max,
        security,
    } = listen;
    let ack_topic = format!("{prefix}/acks/{gateway}");
    let mut session = Session::new(
        client.clone(),
        eventloop,
        vec![(ack_topic.clone(), QoS::AtLeastOnce)],
        reconnect_max,
        "uplink broker",
        security,
    );
    loop {
        let event = tokio::select! {
            ev = session.next() => ev,
            _ = shutdown.changed() => return,
        };
        match event {
            SessionEvent::Connected { .. } => {
                stats.broker_connects.fetch_add(1, Relaxed);
                if let Some(hubs) = &hubs {
                    // A hub that left while we were away sent its goodbye
                    // to nobody: start over from the retained announcements
                    // (a subscription re-sends them).
                    hubs.clear();
                    let filter = iot_mqtt::routing::membership_filter(&prefix);
                    if let Err(e) = client.try_subscribe(filter, QoS::AtMostOnce) {
                        tracing::error!(error = %e, "cannot subscribe to hub announcements");
                    }
                }
            }
            SessionEvent::Publish(p)
                if hubs.as_ref().is_some_and(|h| {
                    let membership = h.observe(&prefix, &p.topic, &p.payload, p.retain);
                    stats.announcements_ignored.store(h.ignored(), Relaxed);
                    membership
                }) => {}
            SessionEvent::Publish(p) if p.topic == ack_topic => {
                match serde_json::from_slice::<BatchAck>(&p.payload) {
                    // Any incarnation: spooled batches of earlier runs keep
                    // theirs. Answers to batches not in flight are ignored.
                    Ok(ack) if ack.gateway == gateway => {
                        if answers.send(SendOutcome::Answered(ack)).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        stats.acks_ignored.fetch_add(1, Relaxed);
                        tracing::debug!(error = %e, "unreadable answer on the ack topic");
                    }
                }
            }
            SessionEvent::Publish(_) => {}
            SessionEvent::Failed => {
                stats.broker_errors.fetch_add(1, Relaxed);
            }
        }
    }
}

/// A batch on its way to the hub.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub header: BatchHeader,
    pub bytes: Bytes,
    /// Without a spool: the device acknowledgements it releases.
    pub acks: Vec<PendingAck>,
    /// With the spool: its record.
    pub spool_id: Option<u64>,
}

impl Outgoing {
    /// How answers name it: `(incarnation, seq)`.
    fn key(&self) -> (u64, u64) {
        (self.header.incarnation, self.header.seq)
    }
}

impl From<SealedBatch> for Outgoing {
    fn from(b: SealedBatch) -> Self {
        Self {
            header: b.header,
            bytes: b.bytes,
            acks: b.acks,
            spool_id: None,
        }
    }
}

/// Where the uplink's batches come from (see the module docs).
#[derive(Debug)]
pub enum Source {
    Batcher {
        batches: mpsc::Receiver<SealedBatch>,
        acker: OrderedAcker,
    },
    Spool {
        events: mpsc::UnboundedReceiver<SpoolEvent>,
        spool: SpoolHandle,
        /// Backlog batches per second.
        drain_rate: f64,
        /// Durable live batches kept in memory; older ones are read back
        /// from disk when their turn comes.
        live_queue: usize,
    },
}

struct InFlight {
    batch: Outgoing,
    attempts: u32,
    /// When to send again if no answer arrived.
    resend_at: Instant,
    from_backlog: bool,
    /// The hub the last send was addressed to (sticky MQTT).
    sent_to: Option<String>,
}

/// The uplink's queues: what is in flight, what waits.
struct Queues {
    in_flight: BTreeMap<(u64, u64), InFlight>,
    live: VecDeque<Outgoing>,
    /// Spool record ids to read back, oldest first.
    backlog: VecDeque<u64>,
    /// Backlog batches in flight.
    backlog_in_flight: usize,
    next_backlog_at: Instant,
}

/// The uplink task. Without a spool it returns when the batcher has closed
/// its channel and every in-flight batch is settled; with the spool, once the
/// spool has announced its last live batch and what is in flight is settled
/// (the rest is safe on disk for the next start). Either way it gives up when
/// `shutdown` has flipped and the grace period has passed.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    settings: UplinkSettings,
    transport: Transport,
    mut answers: mpsc::UnboundedReceiver<SendOutcome>,
    source: Source,
    stats: Arc<EdgeStats>,
    mut shutdown: watch::Receiver<bool>,
    shutdown_grace: Duration,
) {
    let far = || Instant::now() + Duration::from_secs(3600);
    let mut q = Queues {
        in_flight: BTreeMap::new(),
        live: VecDeque::new(),
        backlog: VecDeque::new(),
        backlog_in_flight: 0,
        next_backlog_at: Instant::now(),
    };
    let (mut batches, mut events, custody) = match source {
        Source::Batcher { batches, acker } => (Some(batches), None, Custody::DeviceAcks(acker)),
        Source::Spool {
            events,
            spool,
            drain_rate,
            live_queue,
        } => (
            None,
            Some(events),
            Custody::Spool {
                spool,
                drain_rate,
                live_queue,
            },
        ),
    };
    let mut source_open = true;
    let mut grace_deadline: Option<Instant> = None;
    let max = settings.max_in_flight;
    loop {
        // Live batches take every free slot; the backlog takes what is left
        // but the last one, at its pace.
        while q.in_flight.len() < max
            && let Some(batch) = q.live.pop_front()
        {
            send_new(&transport, &mut q, batch, false, &settings, &stats).await;
        }
        if let Custody::Spool {
            spool, drain_rate, ..
        } = &custody
        {
            let backlog_slots = max.saturating_sub(1).max(1);
            while q.live.is_empty()
                && q.in_flight.len() < max
                && q.backlog_in_flight < backlog_slots
                && q.next_backlog_at <= Instant::now()
                && let Some(id) = q.backlog.pop_front()
            {
                let Some(batch) = read_backlog(spool, id, &stats).await else {
                    continue;
                };
                q.next_backlog_at = q.next_backlog_at.max(Instant::now())
                    + Duration::from_secs_f64(1.0 / drain_rate);
                send_new(&transport, &mut q, batch, true, &settings, &stats).await;
            }
        }
        stats.in_flight.store(q.in_flight.len() as u64, Relaxed);
        stats.backlog_waiting.store(q.backlog.len() as u64, Relaxed);
        // With the spool, whatever is not in flight is safe on disk.
        if !source_open && q.in_flight.is_empty() {
            return;
        }
        let next_resend = q
            .in_flight
            .values()
            .map(|f| f.resend_at)
            .min()
            .unwrap_or_else(far);
        let backlog_wakeup =
            (!q.backlog.is_empty() && q.live.is_empty() && q.in_flight.len() < max)
                .then_some(q.next_backlog_at);
        let grace = grace_deadline.unwrap_or_else(far);
        let batcher_ready = source_open && q.in_flight.len() < max;
        tokio::select! {
            batch = async { batches.as_mut().expect("checked").recv().await }, if batcher_ready && batches.is_some() => match batch {
                Some(batch) => q.live.push_back(batch.into()),
                None => source_open = false,
            },
            event = async { events.as_mut().expect("checked").recv().await }, if source_open && events.is_some() => match event {
                Some(SpoolEvent::Durable(spooled)) => {
                    q.live.push_back(Outgoing {
                        header: spooled.header,
                        bytes: spooled.bytes,
                        acks: Vec::new(),
                        spool_id: Some(spooled.id),
                    });
                    let Custody::Spool { live_queue, .. } = &custody else { unreachable!("events come from the spool") };
                    // The hub is not keeping up: keep only the newest in
                    // memory, the rest waits on disk.
                    while q.live.len() > *live_queue {
                        let oldest = q.live.pop_front().expect("non-empty");
                        insert_backlog(&mut q.backlog, oldest.spool_id.expect("spooled"));
                    }
                }
                Some(SpoolEvent::Backlog(ids)) => {
                    for id in ids {
                        insert_backlog(&mut q.backlog, id);
                    }
                }
                None => source_open = false,
            },
            Some(outcome) = answers.recv() => match outcome {
                SendOutcome::Answered(ack) => {
                    let key = (ack.incarnation, ack.seq);
                    let Some(entry) = q.in_flight.get(&key) else { continue };
                    if !ack.names(&entry.batch.bytes) {
                        // Not about these bytes: a forged answer, or one for
                        // other content under the same identity. The batch
                        // stays in flight and is sent again.
                        stats.acks_ignored.fetch_add(1, Relaxed);
                        tracing::warn!(seq = ack.seq, "ignored an answer that does not name the batch's content");
                        continue;
                    }
                    let entry = q.in_flight.remove(&key).expect("checked above");
                    if let (Some(hubs), Some(hub)) = (transport.hubs(), &entry.sent_to) {
                        hubs.answered(hub);
                    }
                    if entry.from_backlog {
                        q.backlog_in_flight -= 1;
                    }
                    let rows = u64::from(entry.batch.header.row_count);
                    match &ack.status {
                        AckStatus::Durable | AckStatus::Duplicate => {
                            stats.batches_acked.fetch_add(1, Relaxed);
                            let dropped = ack.dropped.as_ref().map_or(0, |d| u64::from(d.rows).min(rows));
                            stats.readings_delivered.fetch_add(rows - dropped, Relaxed);
                            if let Some(d) = &ack.dropped {
                                stats.readings_rejected_by_hub.fetch_add(dropped, Relaxed);
                                tracing::error!(seq = ack.seq, rows = d.rows, reason = %d.reason, "the hub kept the batch but refused some of its readings; they are dropped");
                            }
                        }
                        AckStatus::Rejected { reason } => {
                            stats.batches_rejected_by_hub.fetch_add(1, Relaxed);
                            stats.readings_rejected_by_hub.fetch_add(rows, Relaxed);
                            tracing::error!(seq = ack.seq, rows, reason = %reason, "hub rejected a batch; its readings are dropped");
                        }
                    }
                    settle(&custody, &entry.batch);
                }
                SendOutcome::Failed { key, error } => {
                    if let Some(entry) = q.in_flight.get_mut(&key) {
                        let delay = backoff(entry.attempts, settings.retry_initial, settings.retry_max);
                        tracing::warn!(seq = key.1, attempt = entry.attempts, retry_in = ?delay, error = %error, "batch send failed");
                        entry.resend_at = Instant::now() + delay;
                    }
                }
            },
            _ = tokio::time::sleep_until(next_resend), if !q.in_flight.is_empty() => {
                let now = Instant::now();
                for entry in q.in_flight.values_mut().filter(|e| e.resend_at <= now) {
                    entry.attempts += 1;
                    stats.batch_retries.fetch_add(1, Relaxed);
                    if let (Some(hubs), Some(hub)) = (transport.hubs(), &entry.sent_to)
                        && hubs.unanswered(hub, settings.ack_timeout)
                    {
                        stats.hubs_passed_over.fetch_add(1, Relaxed);
                    }
                    entry.sent_to = transmit(&transport, &entry.batch, &stats).await;
                    let delay = backoff(entry.attempts, settings.retry_initial, settings.retry_max);
                    entry.resend_at = Instant::now() + settings.ack_timeout.max(delay);
                }
            }
            _ = tokio::time::sleep_until(backlog_wakeup.unwrap_or_else(far)), if backlog_wakeup.is_some() => {}
            _ = shutdown.changed(), if grace_deadline.is_none() => {
                grace_deadline = Some(Instant::now() + shutdown_grace);
            }
            _ = tokio::time::sleep_until(grace), if grace_deadline.is_some() => {
                if !q.in_flight.is_empty() {
                    tracing::info!(unsettled = q.in_flight.len(), "shutting down with batches in flight; they are sent again on the next start");
                }
                return;
            }
        }
    }
}

/// Keeps the backlog sorted by id (records are sent oldest first).
fn insert_backlog(backlog: &mut VecDeque<u64>, id: u64) {
    match backlog.back() {
        Some(&last) if last >= id => {
            if let Err(at) = backlog.binary_search(&id) {
                backlog.insert(at, id);
            }
        }
        _ => backlog.push_back(id),
    }
}

/// Reads a backlog record back from the spool.
async fn read_backlog(spool: &SpoolHandle, id: u64, stats: &EdgeStats) -> Option<Outgoing> {
    let bytes = spool.read(id).await?;
    match schemas::envelope::peek_header(&bytes, &schemas::DecodeLimits::default()) {
        Ok((_, header)) => {
            stats.backlog_sends.fetch_add(1, Relaxed);
            Some(Outgoing {
                header,
                bytes: Bytes::from(bytes),
                acks: Vec::new(),
                spool_id: Some(id),
            })
        }
        Err(e) => {
            stats.spool_read_errors.fetch_add(1, Relaxed);
            tracing::error!(id, error = %e, "a spooled record is not an envelope; it is skipped");
            spool.ack(id);
            None
        }
    }
}

async fn send_new(
    transport: &Transport,
    q: &mut Queues,
    batch: Outgoing,
    from_backlog: bool,
    settings: &UplinkSettings,
    stats: &EdgeStats,
) {
    let sent_to = transmit(transport, &batch, stats).await;
    if from_backlog {
        q.backlog_in_flight += 1;
    }
    let key = batch.key();
    let entry = InFlight {
        batch,
        attempts: 1,
        resend_at: Instant::now() + settings.ack_timeout,
        from_backlog,
        sent_to,
    };
    if let Some(old) = q.in_flight.insert(key, entry) {
        // The same batch twice (a backlog copy of a live one after a spool
        // reopen): one answer settles both.
        if old.from_backlog {
            q.backlog_in_flight -= 1;
        }
    }
}

/// Who is owed what when a batch settles.
enum Custody {
    /// Device acknowledgements wait for the hub.
    DeviceAcks(OrderedAcker),
    /// The spool holds the record until the hub has it.
    Spool {
        spool: SpoolHandle,
        drain_rate: f64,
        live_queue: usize,
    },
}

/// The hub has the batch (or refused it for good).
fn settle(custody: &Custody, batch: &Outgoing) {
    match custody {
        Custody::DeviceAcks(acker) => acker.release(&batch.acks),
        Custody::Spool { spool, .. } => {
            if let Some(id) = batch.spool_id {
                spool.ack(id);
            }
        }
    }
}

/// Sends a batch; returns the hub it was addressed to (sticky MQTT).
async fn transmit(transport: &Transport, batch: &Outgoing, stats: &EdgeStats) -> Option<String> {
    stats.batch_sends.fetch_add(1, Relaxed);
    stats
        .uplink_bytes
        .fetch_add(batch.bytes.len() as u64, Relaxed);
    transport.send(batch).await
}
