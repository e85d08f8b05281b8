//! Batches over MQTT: a shared subscription `$share/<group>/<prefix>/batches/+`
//! so that several hubs split the gateways' batches between them, and (with
//! `mqtt.announce`) the batches gateways send to this hub alone, on
//! `<prefix>/hub/<hub-id>/batches/+`. The hub announces itself with a
//! retained message on `<prefix>/hubs/<hub-id>`, which its MQTT will clears
//! if it dies and which it withdraws itself when it stops or turns unhealthy
//! (an archive or WAL failure), so that gateways move to another hub instead
//! of resending to one that refuses (see `iot_mqtt::routing`).
//!
//! Each batch is submitted to intake on its own task (bounded by
//! [`MAX_CONCURRENT`]) so that many batches share one WAL fsync. The answer
//! goes back to `<prefix>/acks/<gateway>`. The MQTT delivery itself is always
//! acknowledged once the batch has been handled, whatever the answer: the
//! reliability comes from the gateway, which resends every batch that has no
//! `durable`/`duplicate` answer, and from dedup, which makes resends harmless.
//! (Leaving a delivery unacknowledged would only pin one of the broker's few
//! in-flight slots for this hub.)

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use iot_mqtt::routing;
use rumqttc::{AsyncClient, LastWill, MqttOptions, QoS};
use tokio::sync::{Semaphore, watch};

use iot_mqtt::{LinkSecurity, OrderedAcker, Session, SessionEvent};

use crate::config::HubConfig;
use crate::intake::{IntakeHandle, Sender, SubmitError};
use crate::stats::HubStats;

/// Batches handled at the same time by one hub.
pub const MAX_CONCURRENT: usize = 64;

/// How often the announcement is checked against the hub's health.
const HEALTH_CHECK: Duration = Duration::from_secs(1);

/// Announces the hub (retained), or withdraws the announcement; returns
/// whether the update was queued (if not, the next health check retries).
fn announce(client: &AsyncClient, topic: &str, hub_id: &str, present: bool) -> bool {
    let payload = if present {
        serde_json::json!({ "hub": hub_id })
            .to_string()
            .into_bytes()
    } else {
        Vec::new()
    };
    match client.try_publish(topic, QoS::AtLeastOnce, true, payload) {
        Err(e) => {
            tracing::warn!(error = %e, present, "cannot update the hub's announcement");
            false
        }
        Ok(()) => {
            if !present {
                tracing::info!("hub announcement withdrawn; gateways move to other hubs");
            }
            true
        }
    }
}

pub async fn run(
    cfg: HubConfig,
    security: LinkSecurity,
    intake: IntakeHandle,
    stats: Arc<HubStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let m = &cfg.mqtt;
    let mut opts = MqttOptions::new(cfg.mqtt_client_id(), &m.host, m.port);
    security.apply(&mut opts);
    opts.set_keep_alive(m.keep_alive)
        .set_clean_session(true)
        .set_manual_acks(true)
        .set_max_packet_size(intake.limits().max_envelope_bytes + 1024, 64 * 1024)
        .set_request_channel_capacity(MAX_CONCURRENT * 2 + 16);
    let membership = routing::membership_topic(&m.topic_prefix, &cfg.hub_id);
    if m.announce {
        opts.set_last_will(LastWill::new(
            membership.clone(),
            Vec::new(),
            QoS::AtLeastOnce,
            true,
        ));
    }
    let (client, eventloop) = iot_mqtt::client(opts, MAX_CONCURRENT * 2 + 16);
    let filter = format!("$share/{}/{}/batches/+", m.share_group, m.topic_prefix);
    let direct = routing::direct_filter(&m.topic_prefix, &cfg.hub_id);
    // Whether the broker holds our announcement (as far as we know).
    let mut announced = false;
    let mut health_check = tokio::time::interval(HEALTH_CHECK);
    let ack_prefix = format!("{}/acks/", m.topic_prefix);
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT));
    // Deliveries are acknowledged in arrival order (rumqttd drops clients
    // that do otherwise), although batches finish in any order.
    let acker = OrderedAcker::new(&client, Arc::default(), Arc::default());
    let mut subscriptions = vec![(filter.clone(), QoS::AtLeastOnce)];
    if m.announce {
        // Subscribed before announced: a gateway that hears of this hub
        // finds it listening.
        subscriptions.push((direct.clone(), QoS::AtLeastOnce));
    }
    let mut session = Session::new(
        client.clone(),
        eventloop,
        subscriptions,
        iot_mqtt::RECONNECT_MAX,
        "hub broker",
        security,
    );
    loop {
        let event = tokio::select! {
            ev = session.next() => ev,
            _ = health_check.tick(), if m.announce => {
                let healthy = stats.healthy();
                if healthy != announced && announce(&client, &membership, &cfg.hub_id, healthy) {
                    announced = healthy;
                }
                continue;
            }
            _ = shutdown.changed() => break,
        };
        match event {
            SessionEvent::Connected { .. } => {
                acker.new_generation();
                tracing::info!(filter = %filter, "hub subscribed to batches");
                if m.announce {
                    announced =
                        stats.healthy() && announce(&client, &membership, &cfg.hub_id, true);
                }
            }
            SessionEvent::Publish(publish) => {
                stats.batches_received_mqtt.fetch_add(1, Relaxed);
                let permit = tokio::select! {
                    p = Arc::clone(&permits).acquire_owned() => p.expect("semaphore never closed"),
                    _ = shutdown.changed() => break,
                };
                let pending = acker.register(&publish);
                let (client, intake, ack_prefix, acker, stats) = (
                    client.clone(),
                    intake.clone(),
                    ack_prefix.clone(),
                    acker.clone(),
                    Arc::clone(&stats),
                );
                // Verified and queued here, in arrival order (a gateway's
                // batches reach the WAL, and scoring, in the order it sent
                // them); only the waits for durability run concurrently.
                // The broker's ACLs let a client publish only under its own
                // gateway (deploy/mosquitto); the envelope must name the
                // same gateway as the topic.
                let topic_gateway = [publish
                    .topic
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .to_owned()];
                let sender = Sender::Gateways {
                    names: &topic_gateway,
                    how: "the gateway in the MQTT topic",
                };
                let queued = intake.enqueue(publish.payload.clone(), sender).await;
                tokio::spawn(async move {
                    let _permit = permit;
                    let answer = match queued {
                        Ok(q) => q.answer().await,
                        Err(e) => Err(e),
                    };
                    match answer {
                        Ok(ack) | Err(SubmitError::Rejected { ack, .. }) => {
                            let topic = format!("{ack_prefix}{}", ack.gateway);
                            let body = serde_json::to_vec(&ack).expect("ack serialises");
                            if let Err(e) =
                                client.publish(topic, QoS::AtLeastOnce, false, body).await
                            {
                                tracing::warn!(error = %e, "cannot queue batch ack; the gateway will resend");
                            }
                        }
                        Err(SubmitError::Unreadable(e)) => {
                            tracing::warn!(error = %e, topic = %publish.topic, "dropping unreadable batch");
                        }
                        Err(e @ SubmitError::Unavailable(_)) => {
                            tracing::warn!(error = %e, "batch not accepted; the gateway will resend");
                        }
                        Err(e @ SubmitError::Forbidden { .. }) => {
                            // Nothing is answered: an answer would go out
                            // in another gateway's name.
                            stats.batches_forbidden_mqtt.fetch_add(1, Relaxed);
                            tracing::warn!(error = %e, topic = %publish.topic, "batch refused: its gateway is not the topic's");
                        }
                    }
                    acker.release(&pending.into_iter().collect::<Vec<_>>());
                });
            }
            SessionEvent::Failed => {}
        }
    }
    if m.announce {
        // Gateways move on now; batches already on their way are handled.
        let _ = announce(&client, &membership, &cfg.hub_id, false);
    }
    // Let in-flight submissions finish and their acks be sent.
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        permits.acquire_many(MAX_CONCURRENT as u32),
    )
    .await;
    session.close().await;
}
