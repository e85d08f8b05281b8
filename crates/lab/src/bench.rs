//! `iot-lab bench`: how fast each stage keeps up with a broker.
//!
//! One load generator publishes `messages` JSON readings for `devices`
//! devices (one topic each) as fast as the broker takes them. Measured on the
//! same broker, one after the other:
//! (a) a plain MQTT subscriber (the ceiling: what the broker delivers),
//! (b) the edge agent, as a separate process (the release binary next to this
//!     one), until it has accepted every reading, plus its peak RSS,
//! (c) the hub end to end (agent -> MQTT uplink -> WAL -> scoring -> Parquet),
//!     until every reading is archived, plus uplink bytes per reading.
//! It prints a Markdown table for docs/BENCHMARKS.md. A benchmark, not a
//! test: it asserts nothing about speed.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rumqttc::{Event, MqttOptions, Packet, QoS};

use crate::broker;
use inference_hub::config::HubConfig;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub devices: usize,
    pub messages: u64,
    pub qos: u8,
    /// External broker `host:port`; the embedded rumqttd when absent.
    pub broker: Option<(String, u16)>,
    /// The broker's per-client window of unacknowledged QoS 1 messages.
    pub broker_inflight: usize,
    pub edge_bin: PathBuf,
    pub timeout: Duration,
    /// Run the agent with its durable spool (acknowledging device messages
    /// after the spool's fsync).
    pub spool: bool,
    /// TLS on every MQTT connection (devices, the plain subscriber, both of
    /// the agent's links, the hub's): a directory from `iot-lab pki` with
    /// `ca.pem` and a client certificate `bench.pem` / `bench.key`.
    pub tls: Option<PathBuf>,
}

impl BenchOptions {
    /// The TLS table of every client, when the bench runs on TLS.
    fn client_tls(&self) -> Option<iot_tls::ClientTls> {
        self.tls.as_ref().map(|dir| iot_tls::ClientTls {
            ca_file: Some(dir.join("ca.pem")),
            system_roots: false,
            cert_file: Some(dir.join("bench.pem")),
            key_file: Some(dir.join("bench.key")),
        })
    }

    fn security(&self) -> anyhow::Result<Option<iot_mqtt::LinkSecurity>> {
        self.client_tls()
            .map(|tls| {
                iot_mqtt::LinkSecurity::new(
                    "bench",
                    iot_mqtt::LinkSettings {
                        tls: Some(&tls),
                        ..Default::default()
                    },
                )
                .context("the bench's TLS files")
            })
            .transpose()
    }
}

fn qos(q: u8) -> QoS {
    if q == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

/// Publishes `n` messages over `devices` topics under `root`; returns when
/// the broker has acknowledged them all (QoS 1) or they are written (QoS 0).
async fn generate(
    host: &str,
    port: u16,
    root: &str,
    devices: usize,
    n: u64,
    q: u8,
    security: Option<&iot_mqtt::LinkSecurity>,
) -> anyhow::Result<Duration> {
    let mut sim = crate::devices::Simulator::connect_secured(
        &format!("bench-gen-{root}"),
        host,
        port,
        qos(q),
        1000,
        security,
    );
    let started = Instant::now();
    let t0 = 1_767_225_600_000i64;
    for i in 0..n {
        let d = (i % devices as u64) as usize;
        let ts = t0 + (i / devices as u64) as i64 * 1000;
        let v = 20.0 + (i as f64 * 0.01).sin();
        let payload = format!(r#"{{"value":{v:.4},"ts":{ts}}}"#);
        sim.publish(format!("{root}/dev{d}/temp"), payload).await?;
    }
    // QoS 1: until the broker has acknowledged every message.
    while !sim.settle(Duration::from_secs(60)).await {}
    sim.close().await;
    Ok(started.elapsed())
}

/// (a): a subscriber that only counts.
/// Returns (messages per second, messages received).
async fn plain_subscriber(host: &str, port: u16, o: &BenchOptions) -> anyhow::Result<(f64, u64)> {
    let security = o.security()?;
    let mut opts = MqttOptions::new("bench-plain-sub", host, port);
    opts.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true);
    if let Some(security) = &security {
        security.apply(&mut opts);
    }
    let (client, mut eventloop) = iot_mqtt::client(opts, 10_000);
    client.subscribe("bench-a/+/+", qos(o.qos)).await?;
    let received = Arc::new(AtomicU64::new(0));
    let first = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let (r2, f2) = (Arc::clone(&received), Arc::clone(&first));
    let sub = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(_))) => {
                    f2.lock().expect("lock").get_or_insert_with(Instant::now);
                    r2.fetch_add(1, Relaxed);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    generate(
        host,
        port,
        "bench-a",
        o.devices,
        o.messages,
        o.qos,
        security.as_ref(),
    )
    .await?;
    // QoS 0 may lose messages under load: wait for all of them or for the
    // stream to go quiet, and report what arrived.
    let deadline = Instant::now() + o.timeout;
    let (mut last_count, mut last_change) = (0, Instant::now());
    while received.load(Relaxed) < o.messages
        && Instant::now() < deadline
        && last_change.elapsed() < QUIET
    {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let now = received.load(Relaxed);
        if now != last_count {
            (last_count, last_change) = (now, Instant::now());
        }
    }
    sub.abort();
    let got = received.load(Relaxed);
    let start = first.lock().expect("lock").unwrap_or(last_change);
    if got == 0 || (o.qos > 0 && got < o.messages) {
        bail!("plain subscriber received {got} of {} messages", o.messages);
    }
    Ok((
        got as f64 / last_change.duration_since(start).as_secs_f64().max(1e-3),
        got,
    ))
}

/// The given broker, or an embedded rumqttd started on a free port.
pub(crate) async fn broker_or_embedded(broker: &Option<(String, u16)>) -> (String, u16) {
    match broker {
        Some((h, p)) => (h.clone(), *p),
        None => {
            let port = broker::free_port();
            broker::start_embedded(([127, 0, 0, 1], port).into());
            tokio::time::sleep(Duration::from_millis(300)).await;
            ("127.0.0.1".to_string(), port)
        }
    }
}

/// A stage counts as done when nothing arrived for this long.
const QUIET: Duration = Duration::from_secs(3);

pub(crate) struct Killed(pub(crate) Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        l.strip_prefix("VmHWM:")?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    })
}

/// CPU time (user + system) a process has used so far, from
/// `/proc/<pid>/stat` (`pid` may be `"self"`).
pub(crate) fn cpu_time(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here
    // (in clock ticks: 100 per second on Linux's user-space ABI).
    Duration::from_secs_f64((ticks(11) + ticks(12)) as f64 / 100.0)
}

/// Reads one unlabelled metric from a Prometheus `/metrics` endpoint.
pub async fn scrape(client: &reqwest::Client, addr: &str, name: &str) -> Option<u64> {
    let text = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

/// Results of one run.
#[derive(Debug)]
pub struct BenchReport {
    pub plain_subscriber_per_s: f64,
    /// Messages that reached the plain subscriber / the agent (QoS 0 may lose).
    pub plain_received: u64,
    pub edge_accepted: u64,
    pub edge_per_s: f64,
    pub hub_end_to_end_per_s: f64,
    pub edge_peak_rss_kib: u64,
    /// The agent's CPU time (user + system) over the whole run, start-up
    /// included, per accepted message.
    pub edge_cpu_per_message: Duration,
    pub uplink_bytes_per_reading: f64,
}

pub async fn run(o: BenchOptions) -> anyhow::Result<BenchReport> {
    if !o.edge_bin.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release -p edge-agent`",
            o.edge_bin.display()
        );
    }
    let (host, port) = broker_or_embedded(&o.broker).await;

    let (plain, plain_received) = plain_subscriber(&host, port, &o)
        .await
        .context("plain subscriber run")?;

    let dir = tempfile_dir()?;
    let mut hub_cfg = HubConfig::for_dir("bench", &dir);
    hub_cfg.mqtt.host = host.clone();
    hub_cfg.mqtt.port = port;
    hub_cfg.mqtt.tls = o.client_tls();
    let hub = inference_hub::hub::start(hub_cfg).await?;

    let metrics = format!("127.0.0.1:{}", broker::free_port());
    let edge_toml = dir.join("edge.toml");
    std::fs::write(
        &edge_toml,
        format!(
            "gateway-id = \"bench-{}\"\nmetrics-listen = \"{metrics}\"\n[mqtt]\nhost = \"{host}\"\nport = {port}\nbroker-inflight = {}\n\
             [[subscriptions]]\nfilter = \"bench-b/+/+\"\nqos = {}\ntopic-template = \"bench-b/{{device}}/{{metric}}\"\n\
             [uplink.mqtt]\nhost = \"{host}\"\nport = {port}\n{}{}",
            std::process::id(),
            o.broker_inflight,
            o.qos,
            match o.client_tls() {
                Some(tls) => {
                    let path = |p: &Option<PathBuf>| {
                        p.as_ref()
                            .map(|p| p.display().to_string())
                            .unwrap_or_default()
                    };
                    let table = |name: &str| {
                        format!(
                            "[{name}.tls]\nca-file = {:?}\ncert-file = {:?}\nkey-file = {:?}\n",
                            path(&tls.ca_file),
                            path(&tls.cert_file),
                            path(&tls.key_file),
                        )
                    };
                    format!("{}{}", table("mqtt"), table("uplink.mqtt"))
                }
                None => String::new(),
            },
            if o.spool {
                format!(
                    "[spool]\ndir = {:?}\n",
                    dir.join("spool").display().to_string()
                )
            } else {
                String::new()
            }
        ),
    )?;
    let edge = Killed(
        Command::new(&o.edge_bin)
            .args(["--config", edge_toml.to_str().unwrap_or_default(), "run"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .context("start the edge agent")?,
    );
    let http = reqwest::Client::new();
    let mut up = false;
    for _ in 0..200 {
        if scrape(&http, &metrics, "edge_broker_connects_total")
            .await
            .unwrap_or(0)
            >= 2
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    if !up {
        bail!("edge agent did not connect");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let security = o.security()?;
    let generator = tokio::spawn({
        let host = host.clone();
        let (devices, n, q) = (o.devices, o.messages, o.qos);
        async move { generate(&host, port, "bench-b", devices, n, q, security.as_ref()).await }
    });
    // Done: the agent accepted every message (or, at QoS 0, stopped getting
    // new ones), and the hub archived everything the agent accepted.
    let deadline = started + o.timeout;
    let (mut accepted, mut edge_t, mut last_change) = (0u64, Duration::ZERO, Instant::now());
    let mut hub_t = None;
    while Instant::now() < deadline {
        let now = scrape(&http, &metrics, "edge_readings_accepted_total")
            .await
            .unwrap_or(accepted);
        if now != accepted {
            (accepted, edge_t, last_change) = (now, started.elapsed(), Instant::now());
        }
        let edge_finished = accepted >= o.messages
            || (o.qos == 0 && accepted > 0 && last_change.elapsed() >= QUIET);
        if edge_finished && hub.stats.readings_archived.load(Relaxed) >= accepted {
            hub_t = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    generator.await??;
    let rss = peak_rss_kib(edge.0.id()).unwrap_or(0);
    let edge_cpu = cpu_time(&edge.0.id().to_string());
    let Some(hub_t) = hub_t else {
        bail!(
            "not everything arrived in {:?}: edge accepted {accepted} of {}, hub archived {}",
            o.timeout,
            o.messages,
            hub.stats.readings_archived.load(Relaxed)
        );
    };
    if o.qos > 0 && accepted < o.messages {
        bail!("edge accepted {accepted} of {} QoS 1 messages", o.messages);
    }
    let uplink = hub.stats.wal_bytes.load(Relaxed) as f64
        / hub.stats.readings_durable.load(Relaxed).max(1) as f64;
    drop(edge);
    hub.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(BenchReport {
        plain_subscriber_per_s: plain,
        plain_received,
        edge_accepted: accepted,
        edge_per_s: accepted as f64 / edge_t.as_secs_f64(),
        hub_end_to_end_per_s: accepted as f64 / hub_t.as_secs_f64(),
        edge_peak_rss_kib: rss,
        edge_cpu_per_message: edge_cpu / u32::try_from(accepted.max(1)).unwrap_or(u32::MAX),
        uplink_bytes_per_reading: uplink,
    })
}

pub(crate) fn tempfile_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("iot-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

impl BenchReport {
    pub fn markdown_row(&self, o: &BenchOptions, broker: &str) -> String {
        format!(
            "| {broker} | {} | {} | {} | QoS {} | {:.0} ({:.1}% arrived) | {:.0} ({:.2}x; {:.1}% arrived) | {:.0} | {:.1} MiB | {:.1} µs | {:.1} |",
            if o.spool { "on" } else { "off" },
            o.devices,
            o.messages,
            o.qos,
            self.plain_subscriber_per_s,
            100.0 * self.plain_received as f64 / o.messages as f64,
            self.edge_per_s,
            self.edge_per_s / self.plain_subscriber_per_s,
            100.0 * self.edge_accepted as f64 / o.messages as f64,
            self.hub_end_to_end_per_s,
            self.edge_peak_rss_kib as f64 / 1024.0,
            self.edge_cpu_per_message.as_secs_f64() * 1e6,
            self.uplink_bytes_per_reading,
        )
    }
}
