//! One MQTT session as the agent and the hub run it: the event loop polled,
//! the subscriptions sent again after every CONNACK (a broker that lost the
//! session forgets them), a generation number per connection, and backoff
//! after every failure ([`Reconnect`]). The three connections of the product
//! (the agent's gateway broker and uplink, the hub's intake) each drive a
//! [`Session`] inside their own `select!`: [`Session::next`] is cancel-safe,
//! and the backoff after a failure is kept across cancellations (another
//! branch of the caller's `select!` firing does not cut it short). Before
//! each new attempt the link's TLS files and password file are looked at
//! again ([`LinkSecurity::refresh`]), so a rotated certificate is used from
//! the next connection on.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, Packet, Publish, QoS};

use crate::{LinkSecurity, Reconnect};

/// What a session reports.
#[derive(Debug)]
pub enum SessionEvent {
    /// Connected (again), the subscriptions re-sent. `generation` counts the
    /// connections of this session, from 1.
    Connected {
        generation: u64,
        session_present: bool,
    },
    /// A message on one of the subscriptions.
    Publish(Publish),
    /// The connection failed (logged); the next call waits the backoff
    /// before trying again.
    Failed,
}

/// See the module docs.
pub struct Session {
    client: AsyncClient,
    eventloop: EventLoop,
    subscriptions: Vec<(String, QoS)>,
    reconnect: Reconnect,
    generation: u64,
    /// After a failure: no new attempt before this.
    retry_at: Option<tokio::time::Instant>,
    /// Names the broker in logs ("gateway broker", ...).
    name: &'static str,
    security: LinkSecurity,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("broker", &self.name)
            .field("generation", &self.generation)
            .field("retry_at", &self.retry_at)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session over `client` and `eventloop` (from [`crate::client`])
    /// that subscribes to `subscriptions` on every connection and backs off
    /// up to `reconnect_max` after failures, re-applying `security` before
    /// each new attempt.
    pub fn new(
        client: AsyncClient,
        eventloop: EventLoop,
        subscriptions: Vec<(String, QoS)>,
        reconnect_max: Duration,
        name: &'static str,
        security: LinkSecurity,
    ) -> Self {
        Self {
            client,
            eventloop,
            subscriptions,
            reconnect: Reconnect::new(reconnect_max),
            generation: 0,
            retry_at: None,
            name,
            security,
        }
    }

    /// The client, to publish and acknowledge with.
    pub fn client(&self) -> &AsyncClient {
        &self.client
    }

    /// The next thing that happened: a connection, a message, or a
    /// failure. Other packets are handled by rumqttc.
    pub async fn next(&mut self) -> SessionEvent {
        if let Some(at) = self.retry_at {
            tokio::time::sleep_until(at).await;
            self.retry_at = None;
            // A rotated certificate or password is used from the next
            // connection on.
            self.security.refresh(&mut self.eventloop.mqtt_options);
        }
        loop {
            match self.eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    self.reconnect.connected();
                    self.generation += 1;
                    for (filter, qos) in &self.subscriptions {
                        if let Err(e) = self.client.try_subscribe(filter.clone(), *qos) {
                            tracing::error!(error = %e, filter = %filter, broker = self.name, "cannot subscribe");
                        }
                    }
                    tracing::info!(
                        broker = self.name,
                        session_present = ack.session_present,
                        generation = self.generation,
                        "connected"
                    );
                    return SessionEvent::Connected {
                        generation: self.generation,
                        session_present: ack.session_present,
                    };
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    return SessionEvent::Publish(publish);
                }
                Ok(_) => {}
                Err(e) => {
                    let delay = self.reconnect.failed();
                    tracing::warn!(error = %e, retry_in = ?delay, broker = self.name, "connection failed");
                    self.retry_at = Some(tokio::time::Instant::now() + delay);
                    return SessionEvent::Failed;
                }
            }
        }
    }

    /// Disconnects and lets the event loop send what it holds (up to 2 s).
    pub async fn close(mut self) {
        let _ = self.client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while self.eventloop.poll().await.is_ok() {}
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nothing listens on the port: each attempt fails; the backoff holds
    /// across a cancelled call (as when another `select!` branch wins).
    #[tokio::test]
    async fn a_failure_backs_off_and_a_cancelled_wait_is_not_cut_short() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (client, eventloop) =
            crate::client(rumqttc::MqttOptions::new("t", "127.0.0.1", port), 10);
        let mut session = Session::new(
            client,
            eventloop,
            vec![("a/#".into(), QoS::AtLeastOnce)],
            Duration::from_secs(10),
            "test",
            LinkSecurity::new("test", crate::LinkSettings::default()).unwrap(),
        );
        assert!(matches!(session.next().await, SessionEvent::Failed));
        let retry_at = session.retry_at.expect("a backoff after a failure");
        let cancelled = tokio::time::timeout(Duration::from_millis(1), session.next()).await;
        assert!(
            cancelled.is_err(),
            "the backoff (at least 50 ms) was skipped"
        );
        assert_eq!(session.retry_at, Some(retry_at));
        assert!(matches!(session.next().await, SessionEvent::Failed));
        assert!(tokio::time::Instant::now() >= retry_at);
    }
}
