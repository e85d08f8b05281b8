//! The embedded MQTT broker (rumqttd) used by `demo` and the tests, so that
//! the whole pipeline runs on one machine with no external service.
//!
//! rumqttd sends at most [`EMBEDDED_INFLIGHT`] unacknowledged QoS 1 messages
//! per connection (a constant in rumqttd 0.20, whatever the configuration
//! says); agents on this broker set `mqtt.broker-inflight` to it.

use std::collections::HashMap;
use std::net::SocketAddr;

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// rumqttd 0.20's fixed per-connection window of unacknowledged messages.
pub const EMBEDDED_INFLIGHT: usize = 100;

/// Starts rumqttd on `listen` in a background thread. The broker lives until
/// the process exits.
pub fn start_embedded(listen: SocketAddr) -> std::thread::JoinHandle<()> {
    let connections = ConnectionSettings {
        connection_timeout_ms: 60_000,
        // The agent's default packet limit (`mqtt.max-transport-bytes`):
        // the broker refuses what the agent could not take.
        max_payload_size: edge_agent::config::DEFAULT_TRANSPORT_BYTES,
        max_inflight_count: u16::MAX as usize,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = ServerSettings {
        name: "v4".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 10_010,
            max_outgoing_packet_count: 200,
            max_segment_size: 100 * 1024 * 1024,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("1".to_string(), server)])),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    };
    std::thread::Builder::new()
        .name("embedded-broker".into())
        .spawn(move || {
            let mut broker = Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .expect("spawn broker thread")
}

/// A free TCP port on loopback (for tests and the demo).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
