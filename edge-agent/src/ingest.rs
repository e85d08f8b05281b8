//! The MQTT source: a persistent session on the gateway's broker with manual
//! acknowledgements.
//!
//! For every message: pick the first subscription whose filter matches, decode
//! it, and either hand the readings (and the message's ack) to the batcher or,
//! if it is malformed, count the reason and acknowledge it at once (it can
//! never become valid, so redelivery would only loop).
//!
//! Backpressure: handing items to the batcher awaits on a bounded channel.
//! While it waits this task does not poll the MQTT event loop, so the socket
//! is not read and the broker (bounded by its per-client in-flight window)
//! stops sending. Acknowledgements are queued by [`OrderedAcker`] without
//! waiting, from the uplink task, so a full pipeline cannot deadlock on them,
//! and they are sent in the order the messages arrived.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use iot_mqtt::LinkSecurity;
use rumqttc::{AsyncClient, EventLoop, MqttOptions, QoS};
use tokio::sync::{mpsc, watch};

use crate::batcher::IngestItem;
use crate::config::{MqttSettings, PayloadFormat, Subscription};
use crate::dead_letter::DeadLetters;
use crate::decode::{self, Rejection, TopicTemplate};
use crate::filter::Filter;
use crate::redelivery::RedeliveryGuard;
use crate::senml;
use crate::sparkplug::SparkplugState;
use crate::stats::EdgeStats;
use iot_mqtt::{OrderedAcker, Session, SessionEvent};

struct Route {
    filter: String,
    template: TopicTemplate,
    format: PayloadFormat,
    /// Alias tables of Sparkplug edge nodes seen on this route.
    sparkplug: SparkplugState,
}

/// Decodes one message by the first subscription whose filter matches its
/// topic: the agent's whole decoding path, shared with `dry-run`.
#[derive(Debug)]
pub struct MessageDecoder {
    routes: Vec<Route>,
    /// Larger payloads are refused as `too_large` before any parsing.
    max_message_bytes: usize,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("filter", &self.filter)
            .finish()
    }
}

impl MessageDecoder {
    pub fn new(subscriptions: &[Subscription]) -> Self {
        let routes = subscriptions
            .iter()
            .map(|s| Route {
                filter: s.filter.clone(),
                template: TopicTemplate::parse(&s.topic_template).expect("validated by config"),
                format: s.format,
                sparkplug: SparkplugState::default(),
            })
            .collect();
        Self {
            routes,
            max_message_bytes: usize::MAX,
        }
    }

    /// Messages the decoders want published (Sparkplug rebirth requests).
    pub fn take_commands(&mut self) -> Vec<(String, Vec<u8>)> {
        self.routes
            .iter_mut()
            .flat_map(|r| r.sparkplug.take_commands())
            .collect()
    }

    /// Refuses payloads over `bytes` (`mqtt.max-packet-size`).
    pub fn with_max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    pub fn decode(
        &mut self,
        topic: &str,
        payload: &[u8],
        received_us: i64,
    ) -> Result<decode::Decoded, Rejection> {
        if payload.len() > self.max_message_bytes {
            return Err(Rejection::TooLarge);
        }
        let route = self
            .routes
            .iter_mut()
            .find(|r| decode::filter_matches(&r.filter, topic))
            .ok_or(Rejection::TopicMismatch)?;
        match route.format {
            PayloadFormat::Json => {
                decode::decode_json(&route.template, topic, payload, received_us)
            }
            PayloadFormat::Senml => {
                senml::decode_senml(&route.template, topic, payload, received_us)
            }
            PayloadFormat::SparkplugB => route.sparkplug.decode(topic, payload, received_us),
        }
    }
}

/// Builds the MQTT client for the gateway broker (`mqtt`), as `client_id`.
pub fn connect(
    mqtt: &MqttSettings,
    security: &LinkSecurity,
    client_id: String,
    ack_capacity: usize,
) -> (AsyncClient, EventLoop) {
    let mut opts = MqttOptions::new(client_id, &mqtt.host, mqtt.port);
    security.apply(&mut opts);
    opts.set_keep_alive(mqtt.keep_alive)
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_max_packet_size(mqtt.max_transport_bytes, 64 * 1024)
        // Every held acknowledgement may be queued at once when a batch is
        // acknowledged; size the request channel for it.
        .set_request_channel_capacity(ack_capacity);
    iot_mqtt::client(opts, ack_capacity)
}

/// Runs in two phases. Until `stop_intake` flips, messages are decoded and
/// forwarded. After that the batcher's channel is closed and new messages are
/// left unacknowledged (the broker redelivers them to the next session), but
/// the connection keeps being polled so that the acknowledgements released
/// while the uplink drains still reach the broker. `finish` ends the task.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    subscriptions: Vec<Subscription>,
    max_message_bytes: usize,
    mut filter: Filter,
    mut dead_letters: DeadLetters,
    client: AsyncClient,
    eventloop: EventLoop,
    to_batcher: mpsc::Sender<IngestItem>,
    acker: OrderedAcker,
    mut guard: RedeliveryGuard,
    reconnect_max: Duration,
    security: LinkSecurity,
    stats: Arc<EdgeStats>,
    mut stop_intake: watch::Receiver<bool>,
    mut finish: watch::Receiver<bool>,
) {
    let mut to_batcher = Some(to_batcher);
    let mut decoder = MessageDecoder::new(&subscriptions).with_max_message_bytes(max_message_bytes);
    let filters = subscriptions
        .iter()
        .map(|s| {
            let qos = if s.qos == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            };
            (s.filter.clone(), qos)
        })
        .collect();
    let mut session = Session::new(
        client.clone(),
        eventloop,
        filters,
        reconnect_max,
        "gateway broker",
        security,
    );
    let mut window_clock = tokio::time::interval(Duration::from_secs(1));
    window_clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let downsamples = filter.downsamples();
    loop {
        let event = tokio::select! {
            ev = session.next() => ev,
            _ = window_clock.tick(), if downsamples && to_batcher.is_some() => {
                // Windows of series that went quiet close by the clock.
                let readings = filter.flush(chrono::Utc::now().timestamp_micros());
                if !readings.is_empty() {
                    stats.set_filter_counts(filter.named_counts());
                    stats.readings_accepted.fetch_add(readings.len() as u64, Relaxed);
                    let item = IngestItem { readings, ack: None };
                    let sent = tokio::select! {
                        sent = to_batcher.as_ref().expect("checked").send(item) => sent.is_ok(),
                        _ = finish.changed() => false,
                    };
                    if !sent {
                        break;
                    }
                }
                continue;
            }
            _ = stop_intake.changed(), if to_batcher.is_some() => {
                to_batcher = None;
                continue;
            }
            _ = finish.changed() => break,
        };
        match event {
            SessionEvent::Connected { .. } => {
                stats.broker_connects.fetch_add(1, Relaxed);
                acker.new_generation();
                guard.connected(std::time::Instant::now());
            }
            SessionEvent::Publish(publish) => {
                let Some(to_batcher) = &to_batcher else {
                    continue; // draining: leave it for the next session
                };
                stats.messages_received.fetch_add(1, Relaxed);
                let ack = acker.register(&publish);
                let result = decoder.decode(
                    &publish.topic,
                    &publish.payload,
                    chrono::Utc::now().timestamp_micros(),
                );
                for (topic, payload) in decoder.take_commands() {
                    stats.sparkplug_rebirths_requested.fetch_add(1, Relaxed);
                    if let Err(e) = client.try_publish(topic, QoS::AtMostOnce, false, payload) {
                        tracing::warn!(error = %e, "cannot queue a Sparkplug rebirth request");
                    }
                }
                match result {
                    // A control message (Sparkplug death, command): nothing
                    // to keep, nothing wrong.
                    Ok(decoded) if decoded.readings.is_empty() => {
                        acker.release(&ack.into_iter().collect::<Vec<_>>());
                    }
                    Ok(mut decoded) => {
                        if guard.is_redelivery(&decoded.readings, std::time::Instant::now())
                            || guard.is_copy(&decoded.readings)
                        {
                            // Spooled before a crash and its PUBACK lost, or
                            // a second copy of a message just taken in.
                            stats.redeliveries_suppressed.fetch_add(1, Relaxed);
                            acker.release(&ack.into_iter().collect::<Vec<_>>());
                            continue;
                        }
                        guard.remember(&decoded.readings);
                        if !filter.is_empty() {
                            let now = chrono::Utc::now().timestamp_micros();
                            let drops = filter.apply(&mut decoded.readings, now);
                            if !drops.is_empty() || downsamples {
                                stats.set_filter_counts(filter.named_counts());
                            }
                            if let Some((_, reason)) = drops.iter().find(|(_, r)| r.is_invalid()) {
                                dead_letters.send(
                                    &publish.topic,
                                    reason.as_str(),
                                    &publish.payload,
                                );
                            }
                            if decoded.readings.is_empty() {
                                // Every reading was dropped or absorbed into a
                                // window by policy: nothing to keep safe, so
                                // acknowledge now.
                                acker.release(&ack.into_iter().collect::<Vec<_>>());
                                continue;
                            }
                        }
                        stats
                            .fields_skipped
                            .fetch_add(decoded.skipped_fields as u64, Relaxed);
                        stats
                            .readings_accepted
                            .fetch_add(decoded.readings.len() as u64, Relaxed);
                        let item = IngestItem {
                            readings: decoded.readings,
                            ack,
                        };
                        let forwarded = tokio::select! {
                            sent = to_batcher.send(item) => sent.is_ok(),
                            _ = finish.changed() => false,
                        };
                        if !forwarded {
                            break;
                        }
                    }
                    Err(reason) => {
                        stats.reject(reason);
                        dead_letters.send(&publish.topic, reason.as_str(), &publish.payload);
                        tracing::debug!(topic = %publish.topic, reason = reason.as_str(), "rejected device message");
                        acker.release(&ack.into_iter().collect::<Vec<_>>());
                    }
                }
            }
            SessionEvent::Failed => {
                stats.broker_errors.fetch_add(1, Relaxed);
            }
        }
    }
    session.close().await;
}
