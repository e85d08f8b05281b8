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
) -> anyhow::Result<Duration> {
    let mut opts = MqttOptions::new(format!("bench-gen-{root}"), host, port);
    opts.set_keep_alive(Duration::from_secs(30))
        .set_inflight(1000)
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = iot_mqtt::client(opts, 10_000);
    let acked = Arc::new(AtomicU64::new(0));
    let acked2 = Arc::clone(&acked);
    let poller = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    acked2.fetch_add(1, Relaxed);
                }
                // Everything queued before the disconnect has been written.
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    let started = Instant::now();
    let t0 = 1_767_225_600_000i64;
    for i in 0..n {
        let d = (i % devices as u64) as usize;
        let ts = t0 + (i / devices as u64) as i64 * 1000;
        let v = 20.0 + (i as f64 * 0.01).sin();
        let payload = format!(r#"{{"value":{v:.4},"ts":{ts}}}"#);
        client
            .publish(format!("{root}/dev{d}/temp"), qos(q), false, payload)
            .await?;
    }
    if q > 0 {
        while acked.load(Relaxed) < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    client.disconnect().await?;
    let _ = tokio::time::timeout(Duration::from_secs(30), poller).await;
    Ok(started.elapsed())
}

/// (a): a subscriber that only counts.
/// Returns (messages per second, messages received).
async fn plain_subscriber(host: &str, port: u16, o: &BenchOptions) -> anyhow::Result<(f64, u64)> {
    let mut opts = MqttOptions::new("bench-plain-sub", host, port);
    opts.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true);
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
    generate(host, port, "bench-a", o.devices, o.messages, o.qos).await?;
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
async fn broker_or_embedded(broker: &Option<(String, u16)>) -> (String, u16) {
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

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
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
    let hub = inference_hub::hub::start(hub_cfg).await?;

    let metrics = format!("127.0.0.1:{}", broker::free_port());
    let edge_toml = dir.join("edge.toml");
    std::fs::write(
        &edge_toml,
        format!(
            "gateway-id = \"bench-{}\"\nmetrics-listen = \"{metrics}\"\n[mqtt]\nhost = \"{host}\"\nport = {port}\nbroker-inflight = {}\n\
             [[subscriptions]]\nfilter = \"bench-b/+/+\"\nqos = {}\ntopic-template = \"bench-b/{{device}}/{{metric}}\"\n\
             [uplink.mqtt]\nhost = \"{host}\"\nport = {port}\n{}",
            std::process::id(),
            o.broker_inflight,
            o.qos,
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
    let generator = tokio::spawn({
        let host = host.clone();
        let (devices, n, q) = (o.devices, o.messages, o.qos);
        async move { generate(&host, port, "bench-b", devices, n, q).await }
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
        uplink_bytes_per_reading: uplink,
    })
}

fn tempfile_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("iot-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

impl BenchReport {
    pub fn markdown_row(&self, o: &BenchOptions, broker: &str) -> String {
        format!(
            "| {broker} | {} | {} | {} | QoS {} | {:.0} ({:.1}% arrived) | {:.0} ({:.2}x; {:.1}% arrived) | {:.0} | {:.1} MiB | {:.1} |",
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
            self.uplink_bytes_per_reading,
        )
    }
}

/// Options of [`partition`].
#[derive(Debug, Clone)]
pub struct PartitionOptions {
    pub devices: usize,
    /// Device messages per second (one reading each), QoS 1.
    pub rate: u64,
    /// How long the hub is away.
    pub outage: Duration,
    /// The spool's backlog pace, batches per second.
    pub drain_rate: f64,
    pub broker: Option<(String, u16)>,
    pub broker_inflight: usize,
}

/// What [`partition`] measured.
#[derive(Debug)]
pub struct PartitionReport {
    pub readings_published: u64,
    pub spool_peak_bytes: u64,
    pub spool_peak_batches: u64,
    pub backlog_batches: u64,
    pub drain: Duration,
    pub drain_readings_per_s: f64,
    /// Live-data latency (publish -> hub state), before the outage and
    /// during the drain: (p50, p99, max) in milliseconds.
    pub latency_before_ms: (f64, f64, f64),
    pub latency_during_drain_ms: (f64, f64, f64),
    pub archived_exactly: bool,
}

/// The partition benchmark: steady load through broker -> agent (with its
/// spool) -> hub; the hub goes away for `outage`, then comes back. Measures
/// how much the spool holds, how fast the backlog drains, and the latency of
/// live readings during the drain (a probe device publishes its own send
/// time; the hub's device state shows when it arrived).
pub async fn partition(o: PartitionOptions) -> anyhow::Result<PartitionReport> {
    let (host, port) = broker_or_embedded(&o.broker).await;
    let dir = tempfile_dir()?;
    let mut hub_cfg = HubConfig::for_dir("partition", &dir.join("hub"));
    hub_cfg.mqtt.host = host.clone();
    hub_cfg.mqtt.port = port;
    let mut hub = Some(inference_hub::hub::start(hub_cfg.clone()).await?);

    let mut cfg = edge_agent::EdgeConfig::for_gateway("partition-gw", port);
    cfg.mqtt.host = host.clone();
    cfg.uplink.mqtt.host = host.clone();
    cfg.mqtt.broker_inflight = o.broker_inflight;
    cfg.subscriptions[0].filter = "part/+/+".into();
    cfg.subscriptions[0].topic_template = "part/{device}/{metric}".into();
    cfg.batch.max_age = Duration::from_millis(200);
    cfg.uplink.ack_timeout = Duration::from_secs(2);
    cfg.uplink.retry_max = Duration::from_secs(2);
    cfg.spool.dir = Some(dir.join("spool"));
    cfg.spool.drain_rate = o.drain_rate;
    let agent = edge_agent::Agent::start(cfg, Duration::from_secs(5)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Load: `rate` messages per second over the devices, plus a probe.
    let started = Instant::now();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let load = tokio::spawn({
        let (host, stop, published) = (host.clone(), Arc::clone(&stop), Arc::clone(&published));
        let (devices, rate) = (o.devices as u64, o.rate);
        async move {
            let mut opts = MqttOptions::new("partition-load", &host, port);
            opts.set_keep_alive(Duration::from_secs(30))
                .set_inflight(1000);
            let (client, mut eventloop) = iot_mqtt::client(opts, 10_000);
            let poller = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
            let t0 = 1_767_225_600_000i64;
            let mut i = 0u64;
            while !stop.load(Relaxed) {
                tokio::time::sleep_until(
                    (started + Duration::from_micros(i * 1_000_000 / rate)).into(),
                )
                .await;
                let payload = if i.is_multiple_of((rate / 10).max(1)) {
                    // The probe: its value is its own send time.
                    let sent_ms = started.elapsed().as_secs_f64() * 1000.0;
                    let topic = "part/probe/sent".to_string();
                    (
                        topic,
                        format!(r#"{{"value":{sent_ms:.3},"ts":{}}}"#, t0 + i as i64),
                    )
                } else {
                    let d = i % devices;
                    (
                        format!("part/dev{d}/temp"),
                        format!(
                            r#"{{"value":{:.3},"ts":{}}}"#,
                            20.0 + (i as f64 * 0.01).sin(),
                            t0 + i as i64
                        ),
                    )
                };
                if client
                    .publish(payload.0, QoS::AtLeastOnce, false, payload.1)
                    .await
                    .is_err()
                {
                    break;
                }
                published.fetch_add(1, Relaxed);
                i += 1;
            }
            let _ = client.disconnect().await;
            let _ = tokio::time::timeout(Duration::from_secs(10), poller).await;
        }
    });

    // Latency samples: the probe's newest value as the hub state shows it.
    // Only probes sent after `since_ms` count (those sent during the outage
    // are backlog, not live data).
    let probe_latency = |hub: &inference_hub::hub::HubHandle,
                         since_ms: f64,
                         newest: &mut f64,
                         samples: &mut Vec<f64>| {
        let sent = hub
            .state
            .devices()
            .into_iter()
            .find(|d| d.device == "probe")
            .and_then(|d| d.metrics.into_iter().find(|m| m.metric == "sent"))
            .map(|m| m.value);
        if let Some(sent) = sent
            && sent > *newest
        {
            *newest = sent;
            if sent >= since_ms {
                samples.push(started.elapsed().as_secs_f64() * 1000.0 - sent);
            }
        }
    };
    let mut newest = f64::MIN;
    let mut before = Vec::new();
    let warm = Instant::now() + Duration::from_secs(5);
    while Instant::now() < warm {
        probe_latency(hub.as_ref().expect("up"), 0.0, &mut newest, &mut before);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // The outage.
    hub.take().expect("up").shutdown().await;
    let (mut peak_bytes, mut peak_batches) = (0u64, 0u64);
    let sends_before = agent.stats.backlog_sends.load(Relaxed);
    let back_at = Instant::now() + o.outage;
    while Instant::now() < back_at {
        peak_bytes = peak_bytes.max(agent.stats.spool_bytes.load(Relaxed));
        peak_batches = peak_batches.max(agent.stats.spool_records.load(Relaxed));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Back: measure the drain and the live latency meanwhile.
    let hub_back = inference_hub::hub::start(hub_cfg).await?;
    let reconnected = Instant::now();
    let reconnected_ms = started.elapsed().as_secs_f64() * 1000.0;
    let mut during = Vec::new();
    let drain_deadline = reconnected + Duration::from_secs(1800);
    let archived_before = hub_back.stats.readings_archived.load(Relaxed);
    loop {
        probe_latency(&hub_back, reconnected_ms, &mut newest, &mut during);
        let waiting = agent.stats.backlog_waiting.load(Relaxed);
        if (waiting == 0 && reconnected.elapsed() > Duration::from_secs(1))
            || Instant::now() > drain_deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drain = reconnected.elapsed();
    let backlog_batches = agent.stats.backlog_sends.load(Relaxed) - sends_before;
    let drained_readings = hub_back.stats.readings_archived.load(Relaxed) - archived_before;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Relaxed);
    let _ = load.await;
    let total = published.load(Relaxed);
    let settled = Instant::now() + Duration::from_secs(60);
    while agent.stats.readings_delivered.load(Relaxed) < total && Instant::now() < settled {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let archived_exactly = agent.stats.readings_delivered.load(Relaxed) >= total;
    agent.shutdown().await;
    hub_back.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(PartitionReport {
        readings_published: total,
        spool_peak_bytes: peak_bytes,
        spool_peak_batches: peak_batches,
        backlog_batches,
        drain,
        drain_readings_per_s: drained_readings as f64 / drain.as_secs_f64(),
        latency_before_ms: percentiles(&mut before),
        latency_during_drain_ms: percentiles(&mut during),
        archived_exactly,
    })
}

/// (p50, p99, max) of the samples, 0 when there are none.
fn percentiles(samples: &mut [f64]) -> (f64, f64, f64) {
    if samples.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99), samples[samples.len() - 1])
}

/// What [`scoring`] measured.
#[derive(Debug)]
pub struct ScoringReport {
    pub model: String,
    /// The configuration measured (a novelty model: its manifest's or the
    /// light one).
    pub config: String,
    pub batch: usize,
    /// Per second through the model alone: windows (ONNX, tract) or
    /// readings (an online detector, one series after another).
    pub model_per_s: f64,
    pub model_unit: &'static str,
    /// Readings per second through the production scorer (normalisation,
    /// windows, model, decision, output columns).
    pub scorer_readings_per_s: f64,
    /// An online detector's state per series after the run (bytes).
    pub bytes_per_series: Option<usize>,
}

/// A NAB-like signal for series `s` at reading `t`: a daily cycle of 288
/// readings with noise, a level shift every 5000 readings and a spike every
/// 997.
fn signal(rng: &mut fastrand::Rng, s: usize, t: i64) -> f64 {
    let base = 10.0 * (s % 7 + 1) as f64;
    let cycle = (t as f64 * std::f64::consts::TAU / 288.0 + s as f64).sin();
    let shift = if (t / 5000) % 2 == 1 { 0.3 * base } else { 0.0 };
    let spike = if t % 997 == 0 { 0.8 * base } else { 0.0 };
    base + 0.2 * base * cycle + shift + spike + 0.05 * base * (rng.f64() - 0.5)
}

/// The scoring benchmark: one thread, one model. Measures the model alone
/// (an ONNX model on random normalised windows, `batch` per call; an online
/// detector per reading on NAB-like signals), then the production scorer
/// on batches of `batch` readings spread over `series` warmed-up series (a
/// multivariate model gets whole records of its metrics). A novelty model
/// is measured with its manifest's configuration and with the light one.
pub fn scoring(
    model_dir: &std::path::Path,
    batch: usize,
    series: usize,
    seconds: f64,
) -> anyhow::Result<Vec<ScoringReport>> {
    use inference_hub::model::Model;

    let model = Model::load(model_dir)?;
    let mut out = vec![scoring_one(
        model.clone(),
        "manifest",
        batch,
        series,
        seconds,
    )?];
    if model.novelty().is_some() {
        let mut light = model;
        light.manifest.novelty = Some(detect::NoveltyConfig::light());
        out.push(scoring_one(light, "light", batch, series, seconds)?);
    }
    Ok(out)
}

fn scoring_one(
    model: inference_hub::model::Model,
    config: &str,
    batch: usize,
    series: usize,
    seconds: f64,
) -> anyhow::Result<ScoringReport> {
    use inference_hub::scoring::Engine;

    let name = format!("{} {}", model.manifest.id, model.manifest.version);
    let mut rng = fastrand::Rng::with_seed(1);
    let timed = |f: &mut dyn FnMut() -> usize| -> f64 {
        let (start, mut done) = (Instant::now(), 0usize);
        while start.elapsed().as_secs_f64() < seconds {
            done += f();
        }
        done as f64 / start.elapsed().as_secs_f64()
    };
    // Readings each series sees before measuring: past every calibration.
    let warm_readings = 2000i64;
    let (model_per_s, model_unit, bytes_per_series) = match model.novelty() {
        Some(cfg) => {
            let cfg = cfg.clone();
            let n = series.clamp(1, 64);
            let mut detectors: Vec<detect::Novelty> =
                (0..n).map(|_| detect::Novelty::new(&cfg)).collect();
            let mut t = 0i64;
            for _ in 0..warm_readings {
                t += 1;
                for (s, d) in detectors.iter_mut().enumerate() {
                    d.update(&cfg, signal(&mut rng, s, t));
                }
            }
            let per_s = timed(&mut || {
                for _ in 0..100 {
                    t += 1;
                    for (s, d) in detectors.iter_mut().enumerate() {
                        d.update(&cfg, signal(&mut rng, s, t));
                    }
                }
                100 * n
            });
            let bytes = detectors
                .iter()
                .map(detect::Novelty::approx_bytes)
                .sum::<usize>()
                / n;
            (per_s, "readings", Some(bytes))
        }
        None if model.state_monitor().is_some() => (0.0, "n/a", None),
        None => {
            let width = model.input_width();
            let windows: Vec<f32> = (0..batch * width)
                .map(|_| (rng.f32() - 0.5) * 4.0)
                .collect();
            let per_s = timed(&mut || {
                model.score(&windows).expect("the model runs");
                batch
            });
            (per_s, "windows", None)
        }
    };

    let metrics: Vec<String> = model
        .metrics()
        .map_or_else(|| vec!["value".to_string()], <[String]>::to_vec);
    let mut engine = Engine::new(model, 200, None);
    let devices = (series / metrics.len()).max(1);
    let records_per_batch = (batch / metrics.len()).max(1);
    let mut seq = 0u64;
    let mut t = 0i64;
    let mut next_batch = || {
        let mut cols = schemas::ReadingColumns::with_capacity(records_per_batch * metrics.len());
        for r in 0..records_per_batch {
            let device = format!("dev{}", r % devices);
            if r % devices == 0 {
                t += 1;
            }
            for (m, metric) in metrics.iter().enumerate() {
                let v = signal(&mut rng, r % devices * metrics.len() + m, t);
                cols.push(&device, metric, 1_700_000_000_000_000 + t * 1_000_000, v);
            }
        }
        seq += 1;
        let (_, bytes) =
            schemas::envelope::encode("bench", 1, seq, &cols.finish()).expect("non-empty");
        schemas::envelope::decode(&bytes, &schemas::DecodeLimits::default()).expect("valid")
    };
    // Warm every series up first (not measured).
    let warm: Vec<_> = (0..(warm_readings as usize * devices).div_ceil(records_per_batch) + 1)
        .map(|_| next_batch())
        .collect();
    for b in &warm {
        engine.score(b, 0);
    }
    // Fresh batches, each scored once and in time order: a batch scored
    // twice would be all `late` the second time (no model call).
    let batches: Vec<_> = (0..(2_000_000 / batch.max(1)).max(64))
        .map(|_| next_batch())
        .collect();
    let started = Instant::now();
    let mut readings = 0usize;
    for b in &batches {
        let out = engine.score(b, 0);
        debug_assert!(out.model_error.is_none());
        readings += b.readings.num_rows();
        if started.elapsed().as_secs_f64() > 4.0 * seconds {
            break;
        }
    }
    let scorer_readings_per_s = readings as f64 / started.elapsed().as_secs_f64();
    Ok(ScoringReport {
        model: name,
        config: config.to_owned(),
        batch,
        model_per_s,
        model_unit,
        scorer_readings_per_s,
        bytes_per_series,
    })
}

/// What [`hub_throughput`] measured.
#[derive(Debug)]
pub struct HubThroughputReport {
    pub readings: u64,
    pub envelope_bytes: u64,
    pub wall: Duration,
    /// User + system CPU time of the whole process while the hub worked.
    pub cpu: Duration,
    pub parquet_bytes: u64,
    /// The pipeline's time scoring, archiving and updating the API's
    /// state (the rest of the CPU time is intake: decode, dedup, WAL).
    pub pipeline_stages: [Duration; 3],
}

/// CPU time (user + system) of this process so far, from `/proc/self/stat`.
fn process_cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    Duration::from_secs_f64((ticks(11) + ticks(12)) as f64 / 100.0)
}

/// The same envelopes [`hub_throughput`] feeds the hub: `batches` batches of
/// `rows` readings over `devices` devices (one metric), steady 1 s sampling.
pub fn bench_envelopes(batches: u64, rows: usize, devices: usize) -> Vec<Vec<u8>> {
    let mut t = 0i64;
    (1..=batches)
        .map(|seq| {
            let mut cols = schemas::ReadingColumns::with_capacity(rows);
            for r in 0..rows {
                let d = r % devices;
                if d == 0 {
                    t += 1;
                }
                let v =
                    20.0 + (t as f64 / 30.0 + d as f64).sin() + 0.01 * ((r * 7919) % 100) as f64;
                cols.push(
                    &format!("dev{d:05}"),
                    "temp",
                    1_767_225_600_000_000 + t * 1_000_000,
                    v,
                );
            }
            schemas::envelope::encode("bench-gw", 1, seq, &cols.finish())
                .expect("valid batch")
                .1
        })
        .collect()
}

/// The hub from received batch bytes to committed Parquet: envelopes are
/// submitted to a hub's intake (decode + CRC + Arrow validation, dedup, WAL
/// with group-commit fsync, scoring with the default model, Parquet), eight
/// at a time, and the clock stops when the last file is committed.
pub async fn hub_throughput(
    envelopes: Vec<Vec<u8>>,
    model_dir: &std::path::Path,
    zstd_level: i32,
) -> anyhow::Result<HubThroughputReport> {
    let dir = tempfile_dir()?.join("hub-throughput");
    let _ = std::fs::remove_dir_all(&dir);
    let mut cfg = HubConfig::for_dir("bench", &dir);
    cfg.mqtt.enabled = false;
    cfg.scoring.model_dir = model_dir.to_owned();
    cfg.archive.zstd_level = zstd_level;
    let hub = inference_hub::hub::start(cfg).await?;
    let total_rows: u64 = envelopes
        .iter()
        .map(|e| {
            schemas::envelope::peek_header(e, &schemas::DecodeLimits::default())
                .map_or(0, |(_, h)| u64::from(h.row_count))
        })
        .sum();
    let envelope_bytes = envelopes.iter().map(|e| e.len() as u64).sum();
    let (cpu0, started) = (process_cpu_time(), Instant::now());
    let intake = hub.intake.clone();
    let queue = Arc::new(std::sync::Mutex::new(envelopes.into_iter()));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (intake, queue) = (intake.clone(), Arc::clone(&queue));
            tokio::spawn(async move {
                loop {
                    let next = queue.lock().expect("queue").next();
                    let Some(e) = next else {
                        return Ok::<(), anyhow::Error>(());
                    };
                    intake
                        .submit(bytes::Bytes::from(e))
                        .await
                        .map_err(|e| anyhow::anyhow!("submit: {e}"))?;
                }
            })
        })
        .collect();
    for w in workers {
        w.await??;
    }
    let stats = Arc::clone(&hub.stats);
    while stats.readings_archived.load(Relaxed) < total_rows {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    hub.shutdown().await; // commits the open files
    let (wall, cpu) = (started.elapsed(), process_cpu_time().saturating_sub(cpu0));
    let report = HubThroughputReport {
        readings: total_rows,
        envelope_bytes,
        wall,
        cpu,
        parquet_bytes: stats.bytes_committed.load(Relaxed),
        pipeline_stages: [
            &stats.pipeline_score_ns,
            &stats.pipeline_archive_ns,
            &stats.pipeline_state_ns,
        ]
        .map(|ns| Duration::from_nanos(ns.load(Relaxed))),
    };
    let _ = std::fs::remove_dir_all(dir.parent().unwrap_or(&dir));
    Ok(report)
}
