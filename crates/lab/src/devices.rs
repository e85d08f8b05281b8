//! The lab's device simulator: one MQTT client that publishes what its
//! caller generates (recordings in the demo, a sine at full speed in
//! `bench`, a paced load with latency probes in `bench-partition`, the test
//! kit's known fleet), counts the broker's PUBACKs and waits for them before
//! it goes. What the devices say is the caller's; how they talk to the
//! broker is here, once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, ClientError, Event, MqttOptions, Outgoing, Packet, QoS};

/// Simulated devices behind one MQTT connection.
#[derive(Debug)]
pub struct Simulator {
    client: AsyncClient,
    qos: QoS,
    sent: u64,
    acked: Arc<AtomicU64>,
    poller: tokio::task::JoinHandle<()>,
}

impl Simulator {
    /// Connects as `client_id` to `host:port`; messages go with `qos`, at
    /// most `inflight` unacknowledged at once. A lost connection is
    /// re-established (what was in flight is resent by rumqttc).
    pub fn connect(client_id: &str, host: &str, port: u16, qos: QoS, inflight: u16) -> Self {
        Self::connect_secured(client_id, host, port, qos, inflight, None)
    }

    /// [`Self::connect`] with a link's TLS and login (a TLS broker).
    pub fn connect_secured(
        client_id: &str,
        host: &str,
        port: u16,
        qos: QoS,
        inflight: u16,
        security: Option<&iot_mqtt::LinkSecurity>,
    ) -> Self {
        let mut opts = MqttOptions::new(client_id, host, port);
        opts.set_keep_alive(Duration::from_secs(30))
            .set_inflight(inflight)
            .set_max_packet_size(1 << 20, 1 << 20);
        if let Some(security) = security {
            security.apply(&mut opts);
        }
        let (client, mut eventloop) = iot_mqtt::client(opts, 10_000);
        let acked = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&acked);
        let poller = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        counter.fetch_add(1, Relaxed);
                    }
                    // Everything queued before the disconnect is written.
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "simulated devices' connection failed; reconnecting");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Self {
            client,
            qos,
            sent: 0,
            acked,
            poller,
        }
    }

    /// Queues one message (waits while the client's queue is full).
    pub async fn publish(
        &mut self,
        topic: impl Into<String>,
        payload: impl Into<Vec<u8>>,
    ) -> Result<(), ClientError> {
        self.client.publish(topic, self.qos, false, payload).await?;
        self.sent += 1;
        Ok(())
    }

    /// Messages published so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Messages the broker has acknowledged (QoS 1).
    pub fn acked(&self) -> u64 {
        self.acked.load(Relaxed)
    }

    /// Waits until the broker has acknowledged every message published
    /// (at once with QoS 0) or `timeout` has passed; whether it has.
    pub async fn settle(&self, timeout: Duration) -> bool {
        if self.qos == QoS::AtMostOnce {
            return true;
        }
        let deadline = Instant::now() + timeout;
        while self.acked() < self.sent {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// Disconnects once what is queued is written (at most 10 s).
    pub async fn close(self) {
        let _ = self.client.disconnect().await;
        let mut poller = self.poller;
        if tokio::time::timeout(Duration::from_secs(10), &mut poller)
            .await
            .is_err()
        {
            poller.abort();
        }
    }
}
