//! The edge agent's configuration (TOML, layered with `EDGE__...` environment
//! variables; see [`schemas::settings`] for the precedence rules).

use std::path::PathBuf;
use std::time::Duration;

use iot_mqtt::LinkSettings;
use iot_tls::{ClientTls, Secret};
use serde::{Deserialize, Serialize};

use schemas::settings::{ConfigProblem, Validate, duration};

use crate::decode::TopicTemplate;

/// Environment prefix of overrides, e.g. `EDGE__UPLINK__KIND=http`.
pub const ENV_PREFIX: &str = "EDGE";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct EdgeConfig {
    /// Unique id of this gateway; names its batches and its uplink topics.
    pub gateway_id: String,
    /// The gateway's local broker, where devices publish.
    #[serde(default)]
    pub mqtt: MqttSettings,
    /// Which topics to read and how to map them to devices and metrics.
    #[serde(default = "default_subscriptions")]
    pub subscriptions: Vec<Subscription>,
    #[serde(default)]
    pub batch: BatchSettings,
    #[serde(default)]
    pub uplink: UplinkSettings,
    /// Serve `/metrics` and `/health` on this address (off when absent).
    #[serde(default)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Where invalid messages go, with the reason.
    #[serde(default)]
    pub dead_letter: crate::dead_letter::DeadLetterSettings,
    /// Pre-filtering rules, first match wins (see [`crate::filter`]).
    #[serde(default)]
    pub rules: Vec<crate::filter::RuleConfig>,
    /// The durable store-and-forward spool (see [`crate::spool`]).
    #[serde(default)]
    pub spool: SpoolConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct SpoolConfig {
    /// Directory of the spool. When absent there is no spool: device
    /// messages are acknowledged only once the hub holds their readings, and
    /// the gateway broker is the buffer during an outage.
    pub dir: Option<std::path::PathBuf>,
    /// Largest size on disk, in bytes.
    pub max_bytes: u64,
    /// Size at which a new segment file is started.
    pub segment_bytes: u64,
    /// What happens when `max-bytes` is reached: `block` (stop acknowledging
    /// device messages, so the broker holds them) or `drop-oldest` (evict the
    /// oldest segment, counting its readings as dropped).
    pub full_policy: crate::spool::FullPolicy,
    /// `always` (an fsync per batch) or a group-commit interval such as
    /// `"10ms"`: a crash of the machine loses nothing acknowledged, and at
    /// most this long is added to a device acknowledgement.
    pub sync: String,
    /// Commit sooner once this many bytes are waiting for an fsync.
    pub sync_bytes: u64,
    /// Undelivered batches older than this are dropped (and counted).
    #[serde(with = "schemas::settings::opt_duration")]
    pub ttl: Option<Duration>,
    /// Backlog batches sent per second after an outage.
    pub drain_rate: f64,
    /// Durable live batches the uplink keeps in memory while the hub is
    /// slow or away; older ones are read back from disk in their turn.
    pub live_queue: usize,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            dir: None,
            max_bytes: 1 << 30,
            segment_bytes: 8 << 20,
            full_policy: crate::spool::FullPolicy::Block,
            sync: "10ms".into(),
            sync_bytes: 1 << 20,
            ttl: Some(Duration::from_secs(30 * 24 * 3600)),
            drain_rate: 50.0,
            live_queue: 16,
        }
    }
}

impl SpoolConfig {
    pub fn sync_policy(&self) -> Result<crate::spool::service::SyncPolicy, String> {
        use crate::spool::service::SyncPolicy;
        match self.sync.as_str() {
            "always" => Ok(SyncPolicy::Always),
            other => schemas::settings::parse_duration(other).and_then(|d| {
                if d.is_zero() {
                    Ok(SyncPolicy::Always)
                } else if d > Duration::from_secs(10) {
                    Err("at most 10s (device acknowledgements wait for it)".into())
                } else {
                    Ok(SyncPolicy::Every(d))
                }
            }),
        }
    }

    /// The service settings, when a spool directory is configured.
    pub fn service_settings(&self) -> Option<crate::spool::service::ServiceSettings> {
        let dir = self.dir.clone()?;
        Some(crate::spool::service::ServiceSettings {
            dir,
            spool: crate::spool::SpoolSettings {
                segment_bytes: self.segment_bytes,
                max_bytes: self.max_bytes,
                policy: self.full_policy,
            },
            sync: self.sync_policy().expect("validated"),
            sync_bytes: self.sync_bytes,
            ttl: self.ttl,
        })
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct MqttSettings {
    pub host: String,
    pub port: u16,
    /// Defaults to `edge-<gateway-id>`. Must be stable across restarts so the
    /// broker keeps the persistent session (and redelivers unacked messages).
    pub client_id: Option<String>,
    #[serde(with = "duration")]
    pub keep_alive: Duration,
    /// Largest device message accepted, in bytes; a larger one is refused
    /// as `too_large`, dead-lettered and acknowledged.
    pub max_packet_size: usize,
    /// Largest MQTT packet the connection takes at all. A packet past it
    /// breaks the connection, and a persistent session would redeliver it
    /// forever: set the broker's own limit (Mosquitto `max_packet_size`) to
    /// this or less, so it refuses such messages itself.
    pub max_transport_bytes: usize,
    /// How many unacknowledged QoS 1 messages the broker sends this client
    /// before it waits (Mosquitto: `max_inflight_messages`, default 20;
    /// rumqttd: 100). The agent holds acknowledgements until readings are
    /// safe, so it seals a batch once it holds half this many messages:
    /// throughput is about `broker-inflight / 2` messages per hub round trip.
    /// Raise it on the broker and here together.
    pub broker_inflight: usize,
    /// Reconnect delays start at 100 ms and double (with +-50% jitter) up to
    /// this.
    #[serde(with = "duration")]
    pub reconnect_max: Duration,
    /// Broker login: a user name and `password-file` (or `password`; a
    /// token works as the password). Absent: no credentials are sent.
    pub username: Option<String>,
    /// Prefer `password-file`, which keeps the secret out of this file.
    pub password: Option<Secret>,
    /// A file holding the password (re-read before every reconnection).
    pub password_file: Option<PathBuf>,
    /// TLS to the broker (`ca-file`, `system-roots`, `cert-file`,
    /// `key-file`); absent: plain TCP. Files are re-read before every
    /// reconnection, so a rotated certificate needs no restart.
    pub tls: Option<ClientTls>,
}

impl Default for MqttSettings {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: None,
            keep_alive: Duration::from_secs(30),
            max_packet_size: 256 * 1024,
            max_transport_bytes: DEFAULT_TRANSPORT_BYTES,
            broker_inflight: 20,
            reconnect_max: iot_mqtt::RECONNECT_MAX,
            username: None,
            password: None,
            password_file: None,
            tls: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Subscription {
    /// MQTT topic filter, e.g. `sensors/+/+`.
    pub filter: String,
    /// 0 or 1. With 1 the agent acknowledges a message only once its readings
    /// are safe; with 0 the broker does not redeliver anything.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Maps a topic to device and metric: `{device}` and `{metric}` capture
    /// one level, `+` matches one level, other text must match literally.
    pub topic_template: String,
    #[serde(default)]
    pub format: PayloadFormat,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PayloadFormat {
    /// A bare number, `{"value": .., "ts": ..}`, or a flat object of metrics.
    #[default]
    Json,
    /// SenML (RFC 8428) JSON packs.
    Senml,
    /// Sparkplug B protobuf payloads on `spBv1.0/...` topics (the topic
    /// template is not used: the topic structure is fixed by the spec).
    SparkplugB,
}

fn default_qos() -> u8 {
    1
}

fn default_subscriptions() -> Vec<Subscription> {
    vec![Subscription {
        filter: "sensors/+/+".into(),
        qos: 1,
        topic_template: "sensors/{device}/{metric}".into(),
        format: PayloadFormat::Json,
    }]
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct BatchSettings {
    /// A batch is sealed when it holds this many readings (or
    /// `mqtt.broker-inflight / 2` unacknowledged device messages)...
    pub max_rows: usize,
    /// ...or when its oldest reading has waited this long, whichever first.
    #[serde(with = "duration")]
    pub max_age: Duration,
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self {
            max_rows: 5_000,
            max_age: Duration::from_millis(500),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum UplinkKind {
    #[default]
    Mqtt,
    Http,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct UplinkSettings {
    pub kind: UplinkKind,
    /// Batches sent but not yet acknowledged by the hub. Bounds the agent's
    /// memory and the number of device messages awaiting acknowledgement.
    pub max_in_flight: usize,
    /// Resend a batch when the hub has not acknowledged it within this time.
    #[serde(with = "duration")]
    pub ack_timeout: Duration,
    /// First retry delay; doubles per attempt (with +-50% jitter) up to
    /// `retry-max`.
    #[serde(with = "duration")]
    pub retry_initial: Duration,
    #[serde(with = "duration")]
    pub retry_max: Duration,
    #[serde(default)]
    pub mqtt: UplinkMqtt,
    #[serde(default)]
    pub http: UplinkHttp,
}

impl Default for UplinkSettings {
    fn default() -> Self {
        Self {
            kind: UplinkKind::Mqtt,
            max_in_flight: 8,
            ack_timeout: Duration::from_secs(10),
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(30),
            mqtt: UplinkMqtt::default(),
            http: UplinkHttp::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct UplinkMqtt {
    pub host: String,
    pub port: u16,
    /// Defaults to `edge-<gateway-id>-uplink`.
    pub client_id: Option<String>,
    /// Batches go to `<prefix>/batches/<gateway>` (or, sticky, to
    /// `<prefix>/hub/<hub-id>/batches/<gateway>`), acks come back on
    /// `<prefix>/acks/<gateway>`.
    pub topic_prefix: String,
    /// Send all of this gateway's batches to one hub (chosen by rendezvous
    /// hashing among the hubs announced on `<prefix>/hubs/+`), so that one
    /// hub sees each series whole; see [`iot_mqtt::routing`]. Off: every
    /// batch goes to the shared subscription, which spreads them over the
    /// hubs (and reaches every share group on the prefix).
    pub sticky: bool,
    #[serde(with = "duration")]
    pub keep_alive: Duration,
    /// Cap of the reconnect backoff (see `mqtt.reconnect-max`).
    #[serde(with = "duration")]
    pub reconnect_max: Duration,
    /// Largest MQTT packet the uplink takes (see `mqtt.max-transport-bytes`):
    /// answers and hub announcements are small, but a retained message past
    /// this would break the connection for good.
    pub max_transport_bytes: usize,
    /// Broker login: a user name and `password-file` (or `password`; a
    /// token works as the password). Absent: no credentials are sent.
    pub username: Option<String>,
    /// Prefer `password-file`, which keeps the secret out of this file.
    pub password: Option<Secret>,
    /// A file holding the password (re-read before every reconnection).
    pub password_file: Option<PathBuf>,
    /// TLS to the broker (`ca-file`, `system-roots`, `cert-file`,
    /// `key-file`); absent: plain TCP. Files are re-read before every
    /// reconnection, so a rotated certificate needs no restart.
    pub tls: Option<ClientTls>,
}

/// The MQTT packet limit both connections default to: the broker's limit in
/// `deploy/mosquitto` (16 MiB, room for the largest batch envelope).
pub const DEFAULT_TRANSPORT_BYTES: usize = 16 * 1024 * 1024;

impl Default for UplinkMqtt {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: None,
            topic_prefix: "iot".into(),
            sticky: true,
            keep_alive: Duration::from_secs(30),
            reconnect_max: iot_mqtt::RECONNECT_MAX,
            max_transport_bytes: DEFAULT_TRANSPORT_BYTES,
            username: None,
            password: None,
            password_file: None,
            tls: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct UplinkHttp {
    /// Base URL of the hub; batches are POSTed to `<url>/v1/batches`.
    pub url: String,
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// Bearer token sent with every request, if the hub requires one
    /// (a per-gateway ingest token binds this gateway's id to it)...
    pub token: Option<Secret>,
    /// ...or a file holding it (re-read when it changes).
    pub token_file: Option<PathBuf>,
    /// TLS settings for an `https://` URL (`ca-file`, `system-roots`, and
    /// `cert-file`/`key-file` for a hub that knows gateways by their
    /// certificates).
    pub tls: Option<ClientTls>,
}

impl Default for UplinkHttp {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8080".into(),
            request_timeout: Duration::from_secs(10),
            token: None,
            token_file: None,
            tls: None,
        }
    }
}

impl MqttSettings {
    /// The login and TLS settings of the gateway broker connection.
    pub fn security(&self) -> LinkSettings<'_> {
        LinkSettings {
            username: self.username.as_deref(),
            password: self.password.as_ref(),
            password_file: self.password_file.as_deref(),
            tls: self.tls.as_ref(),
        }
    }
}

impl UplinkMqtt {
    /// The login and TLS settings of the uplink broker connection.
    pub fn security(&self) -> LinkSettings<'_> {
        LinkSettings {
            username: self.username.as_deref(),
            password: self.password.as_ref(),
            password_file: self.password_file.as_deref(),
            tls: self.tls.as_ref(),
        }
    }
}

impl EdgeConfig {
    pub fn mqtt_client_id(&self) -> String {
        self.mqtt
            .client_id
            .clone()
            .unwrap_or_else(|| format!("edge-{}", self.gateway_id))
    }

    pub fn uplink_client_id(&self) -> String {
        self.uplink
            .mqtt
            .client_id
            .clone()
            .unwrap_or_else(|| format!("edge-{}-uplink", self.gateway_id))
    }

    /// Minimal configuration for tests and the demo.
    pub fn for_gateway(gateway_id: &str, broker_port: u16) -> Self {
        let mut cfg: Self = schemas::settings::load_str(
            &format!("gateway-id = {gateway_id:?}"),
            ENV_PREFIX,
            Vec::new(),
        )
        .expect("built-in defaults are valid");
        cfg.mqtt.port = broker_port;
        cfg.uplink.mqtt.port = broker_port;
        cfg
    }
}

impl EdgeConfig {
    /// Every TLS file and secret the configuration names is readable and
    /// fits (a key that belongs to its certificate); the URL's scheme fits
    /// its TLS table.
    fn validate_security(&self, problems: &mut Vec<ConfigProblem>) {
        let links = [
            ("mqtt", self.mqtt.security(), true),
            (
                "uplink.mqtt",
                self.uplink.mqtt.security(),
                self.uplink.kind == UplinkKind::Mqtt,
            ),
        ];
        for (key, link, used) in links {
            if !used {
                continue;
            }
            if let Err(e) = iot_mqtt::LinkSecurity::new(key, link) {
                problems.push(ConfigProblem::new(key, e.to_string()));
            }
        }
        if self.uplink.kind == UplinkKind::Http {
            let http = &self.uplink.http;
            let https = http.url.starts_with("https://");
            if !https && !http.url.starts_with("http://") {
                problems.push(ConfigProblem::new(
                    "uplink.http.url",
                    "must start with http:// or https://",
                ));
            }
            match (&http.tls, https) {
                (Some(tls), true) => {
                    if let Err(e) = tls.load() {
                        problems.push(ConfigProblem::new("uplink.http.tls", e.to_string()));
                    }
                }
                (None, true) => problems.push(ConfigProblem::new(
                    "uplink.http.tls",
                    "an https:// URL needs [uplink.http.tls] (ca-file or system-roots = true)",
                )),
                (Some(_), false) => problems.push(ConfigProblem::new(
                    "uplink.http.url",
                    "[uplink.http.tls] is set but the URL is http://; use https://",
                )),
                (None, false) => {}
            }
            if let Err(e) =
                iot_tls::read_secret("token", http.token.as_ref(), http.token_file.as_deref())
            {
                problems.push(ConfigProblem::new("uplink.http.token-file", e.to_string()));
            }
        }
    }
}

impl Validate for EdgeConfig {
    fn validate(&self, problems: &mut Vec<ConfigProblem>) {
        let gw = &self.gateway_id;
        if gw.is_empty() || gw.len() > schemas::envelope::MAX_GATEWAY_LEN {
            problems.push(ConfigProblem::new("gateway-id", "must be 1..=128 bytes"));
        }
        if gw.contains(['/', '+', '#']) {
            problems.push(ConfigProblem::new(
                "gateway-id",
                "must not contain MQTT topic characters '/', '+' or '#'",
            ));
        }
        if self.mqtt.max_transport_bytes < self.mqtt.max_packet_size {
            problems.push(ConfigProblem::new(
                "mqtt.max-transport-bytes",
                "must be at least mqtt.max-packet-size",
            ));
        }
        if self.subscriptions.is_empty() {
            problems.push(ConfigProblem::new(
                "subscriptions",
                "at least one subscription is required",
            ));
        }
        for (i, sub) in self.subscriptions.iter().enumerate() {
            let at = |key: &str| format!("subscriptions[{i}].{key}");
            if sub.qos > 1 {
                problems.push(ConfigProblem::new(at("qos"), "must be 0 or 1"));
            }
            if sub.filter.is_empty() {
                problems.push(ConfigProblem::new(at("filter"), "must not be empty"));
            }
            if let Err(e) = TopicTemplate::parse(&sub.topic_template) {
                problems.push(ConfigProblem::new(at("topic-template"), e));
            }
        }
        if self.batch.max_rows == 0 || self.batch.max_rows > 1_000_000 {
            problems.push(ConfigProblem::new("batch.max-rows", "must be 1..=1000000"));
        }
        if self.batch.max_age.is_zero() {
            problems.push(ConfigProblem::new("batch.max-age", "must be positive"));
        }
        if self.uplink.max_in_flight == 0 {
            problems.push(ConfigProblem::new(
                "uplink.max-in-flight",
                "must be at least 1",
            ));
        }
        if self.uplink.retry_initial.is_zero() || self.uplink.retry_initial > self.uplink.retry_max
        {
            problems.push(ConfigProblem::new(
                "uplink.retry-initial",
                "must be positive and at most uplink.retry-max",
            ));
        }
        self.validate_security(problems);
        crate::filter::validate_rules(&self.rules, problems);
        if self.mqtt.broker_inflight == 0 || self.mqtt.broker_inflight > u16::MAX as usize {
            problems.push(ConfigProblem::new(
                "mqtt.broker-inflight",
                "must be 1..=65535",
            ));
        }
        let spool = &self.spool;
        if let Err(e) = spool.sync_policy() {
            problems.push(ConfigProblem::new(
                "spool.sync",
                format!("'always' or a duration: {e}"),
            ));
        }
        if spool.segment_bytes < 4096 || spool.segment_bytes > 1 << 30 {
            problems.push(ConfigProblem::new(
                "spool.segment-bytes",
                "must be 4096..=1073741824",
            ));
        }
        if spool.max_bytes < 2 * spool.segment_bytes {
            problems.push(ConfigProblem::new(
                "spool.max-bytes",
                "must be at least twice spool.segment-bytes",
            ));
        }
        if !(spool.drain_rate.is_finite() && spool.drain_rate > 0.0) {
            problems.push(ConfigProblem::new(
                "spool.drain-rate",
                "must be a positive number",
            ));
        }
        if spool.live_queue == 0 {
            problems.push(ConfigProblem::new("spool.live-queue", "must be at least 1"));
        }
        if spool.ttl.is_some_and(|t| t.is_zero()) {
            problems.push(ConfigProblem::new(
                "spool.ttl",
                "must be positive (omit it for no limit)",
            ));
        }
        for (key, cap) in [
            ("mqtt.reconnect-max", self.mqtt.reconnect_max),
            ("uplink.mqtt.reconnect-max", self.uplink.mqtt.reconnect_max),
        ] {
            if cap < Duration::from_millis(100) || cap > Duration::from_secs(3600) {
                problems.push(ConfigProblem::new(key, "must be 100ms..=1h"));
            }
        }
        if self.mqtt.keep_alive < Duration::from_secs(1) {
            problems.push(ConfigProblem::new("mqtt.keep-alive", "must be at least 1s"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deploy_example_config_is_valid() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/edge.toml");
        let cfg: EdgeConfig = schemas::settings::load(Some(&path), ENV_PREFIX, Vec::new()).unwrap();
        assert_eq!(cfg.gateway_id, "gw-0001");
        assert_eq!(cfg.mqtt.broker_inflight, 1000);
    }

    #[test]
    fn environment_overrides_the_uplink_and_every_problem_is_reported() {
        let env = vec![("EDGE__UPLINK__KIND".to_string(), "http".to_string())];
        let cfg: EdgeConfig =
            schemas::settings::load_str("gateway-id = 'g'", ENV_PREFIX, env).unwrap();
        assert_eq!(cfg.uplink.kind, UplinkKind::Http);

        let err = schemas::settings::load_str::<EdgeConfig>(
            "gateway-id = 'a/b'\n[batch]\nmax-rows = 0\n[[subscriptions]]\nfilter = 's/#'\ntopic-template = 's/{dev}'\nqos = 2\n[uplink]\nmax-in-flight = 0\nunknown-key = 1\n",
            ENV_PREFIX,
            Vec::new(),
        )
        .unwrap_err();
        let paths: Vec<&str> = err.0.iter().map(|p| p.path.as_str()).collect();
        for key in [
            "gateway-id",
            "batch.max-rows",
            "subscriptions[0].topic-template",
            "subscriptions[0].qos",
            "uplink.max-in-flight",
            "uplink.unknown-key",
        ] {
            assert!(paths.contains(&key), "{key} missing from {err}");
        }
    }
}
