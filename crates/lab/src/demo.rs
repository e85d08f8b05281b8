//! `iot-lab demo`: the whole pipeline on one machine.
//!
//! Starts the embedded broker, a hub, two edge agents (one forwarding over
//! MQTT, one over HTTP) and simulated devices. Devices replay NAB recordings
//! from `../shared/datasets/nab` when present (one device per file, recorded
//! timestamps and values, at `--rate` messages per second per device) and
//! otherwise generate sine-plus-noise signals with injected spikes and level
//! shifts. A few malformed messages are mixed in to show that they are
//! counted and never reach the archive.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use edge_agent::config::{EdgeConfig, Subscription, UplinkKind};
use edge_agent::{Agent, AgentHandle};
use rumqttc::QoS;
use tokio::sync::watch;

use crate::broker;
use inference_hub::config::HubConfig;
use inference_hub::hub;

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub duration: Option<Duration>,
    pub data_dir: PathBuf,
    pub datasets: Option<PathBuf>,
    pub http_listen: std::net::SocketAddr,
    /// Messages per second per device.
    pub rate: u32,
    pub model_dir: PathBuf,
}

/// One simulated device: a name and its series of (timestamp µs, value).
#[derive(Debug, Clone)]
pub struct DeviceSeries {
    pub device: String,
    pub points: Vec<(i64, f64)>,
}

/// Counts of what the simulated devices published.
#[derive(Debug, Default)]
pub struct PublishCounts {
    pub valid: AtomicU64,
    pub malformed: AtomicU64,
}

/// Every `MALFORMED_EVERY`th message of a device is garbage.
const MALFORMED_EVERY: u64 = 997;

/// Loads NAB-style CSVs (`timestamp,value`) below `nab/data`.
pub fn load_nab(root: &Path, max_files: usize) -> Vec<DeviceSeries> {
    let mut files: Vec<PathBuf> = inference_hub::archive::walk_files(&root.join("data"))
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
        .collect();
    files.sort();
    // Interleave categories so a small demo still shows several kinds.
    files.sort_by_key(|p| p.file_name().map(|n| n.len()).unwrap_or(0) % 3);
    files
        .into_iter()
        .filter_map(|path| {
            let text = std::fs::read_to_string(&path).ok()?;
            let points: Vec<(i64, f64)> = text
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let (ts, v) = line.split_once(',')?;
                    let t = chrono::NaiveDateTime::parse_from_str(ts.trim(), "%Y-%m-%d %H:%M:%S")
                        .ok()?;
                    Some((t.and_utc().timestamp_micros(), v.trim().parse().ok()?))
                })
                .collect();
            let stem = path
                .file_stem()?
                .to_str()?
                .to_ascii_lowercase()
                .replace(|c: char| !c.is_ascii_alphanumeric(), "-");
            (!points.is_empty()).then_some(DeviceSeries {
                device: stem,
                points,
            })
        })
        .take(max_files)
        .collect()
}

/// Synthetic devices: daily-cycle signals with noise, spikes and level shifts.
pub fn synthetic(devices: usize, points: usize) -> Vec<DeviceSeries> {
    let start = chrono::Utc::now().timestamp_micros() - points as i64 * 60_000_000;
    (0..devices)
        .map(|d| {
            let mut rng = fastrand::Rng::with_seed(d as u64 + 1);
            let base = 20.0 + 10.0 * d as f64;
            let points = (0..points)
                .map(|i| {
                    let t = start + i as i64 * 60_000_000;
                    let mut v =
                        base + 3.0 * (i as f64 / 144.0 * std::f64::consts::TAU).sin() + rng.f64()
                            - 0.5;
                    if i > 400 && i % 397 == 0 {
                        v += 15.0 * (1.0 + d as f64 * 0.1); // spike
                    }
                    if i > points * 3 / 4 && d % 2 == 0 {
                        v += 8.0; // level shift
                    }
                    (t, v)
                })
                .collect();
            DeviceSeries {
                device: format!("sim-{d:02}"),
                points,
            }
        })
        .collect()
}

/// Publishes `series` to `topic_root/<device>/value` at `rate` msg/s per
/// device until done or `stop` flips, with QoS 1. Counts a message only once
/// the broker has acknowledged it, and waits for every acknowledgement before
/// disconnecting.
pub async fn publish_devices(
    broker_port: u16,
    client_id: String,
    topic_root: String,
    series: Vec<DeviceSeries>,
    rate: u32,
    counts: Arc<PublishCounts>,
    mut stop: watch::Receiver<bool>,
) {
    let mut sim = crate::devices::Simulator::connect(
        &client_id,
        "127.0.0.1",
        broker_port,
        QoS::AtLeastOnce,
        1000,
    );
    let longest = series.iter().map(|s| s.points.len()).max().unwrap_or(0);
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (mut valid, mut malformed) = (0u64, 0u64);
    'outer: for i in 0..longest {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break 'outer,
        }
        for s in &series {
            let Some(&(ts, value)) = s.points.get(i) else {
                continue;
            };
            let topic = format!("{topic_root}/{}/value", s.device);
            let n = i as u64 + 1;
            let bad = n.is_multiple_of(MALFORMED_EVERY);
            let payload = if bad {
                b"{\"value\": not-a-number".to_vec()
            } else {
                serde_json::to_vec(
                    &serde_json::json!({"value": value, "ts": inference_hub::scoring::format_ts(ts)}),
                )
                .expect("json")
            };
            if sim.publish(topic, payload).await.is_err() {
                break 'outer;
            }
            if bad {
                malformed += 1;
            } else {
                valid += 1;
            }
        }
    }
    // Every message is acknowledged by the broker before we go (bounded).
    if !sim.settle(Duration::from_secs(30)).await {
        tracing::warn!(
            sent = sim.sent(),
            acked = sim.acked(),
            "broker did not acknowledge every device message"
        );
    }
    counts.valid.fetch_add(valid, Relaxed);
    counts.malformed.fetch_add(malformed, Relaxed);
    sim.close().await;
}

fn edge_config(
    gateway: &str,
    root: &str,
    broker_port: u16,
    uplink: UplinkKind,
    hub_http: std::net::SocketAddr,
    spool_dir: std::path::PathBuf,
) -> EdgeConfig {
    let mut cfg = EdgeConfig::for_gateway(gateway, broker_port);
    cfg.subscriptions = vec![Subscription {
        filter: format!("{root}/+/+"),
        qos: 1,
        topic_template: format!("{root}/{{device}}/{{metric}}"),
        format: Default::default(),
    }];
    cfg.batch.max_age = Duration::from_millis(250);
    cfg.mqtt.broker_inflight = broker::EMBEDDED_INFLIGHT;
    cfg.uplink.kind = uplink;
    cfg.uplink.http.url = format!("http://{hub_http}");
    cfg.spool.dir = Some(spool_dir);
    cfg
}

/// Final numbers of a demo run.
#[derive(Debug)]
pub struct DemoReport {
    pub published_valid: u64,
    pub published_malformed: u64,
    pub edge_rejected: u64,
    pub edge_delivered: u64,
    pub hub_archived: u64,
    pub anomalies: u64,
    pub archive_root: PathBuf,
}

pub async fn run(opts: DemoOptions) -> anyhow::Result<DemoReport> {
    let broker_port = broker::free_port();
    broker::start_embedded(([127, 0, 0, 1], broker_port).into());
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut hub_cfg = HubConfig::for_dir("demo", &opts.data_dir.join("hub"));
    hub_cfg.mqtt.port = broker_port;
    hub_cfg.http.listen = opts.http_listen;
    hub_cfg.scoring.model_dir = opts.model_dir.clone();
    hub_cfg.archive.max_file_age = Duration::from_secs(10);
    let hub = hub::start(hub_cfg).await?;

    let series = match opts
        .datasets
        .as_deref()
        .map(|d| d.join("nab"))
        .filter(|d| d.is_dir())
    {
        Some(nab) => {
            let s = load_nab(&nab, 12);
            println!(
                "devices replay {} NAB recordings from {}",
                s.len(),
                nab.display()
            );
            s
        }
        None => {
            println!(
                "no recorded datasets found: devices generate synthetic signals with injected anomalies"
            );
            synthetic(8, 4000)
        }
    };
    let (site1, site2): (Vec<_>, Vec<_>) = series
        .into_iter()
        .enumerate()
        .partition(|(i, _)| i % 2 == 0);
    let site1: Vec<DeviceSeries> = site1.into_iter().map(|(_, s)| s).collect();
    let site2: Vec<DeviceSeries> = site2.into_iter().map(|(_, s)| s).collect();

    let agents: Vec<AgentHandle> = vec![
        Agent::start(
            edge_config(
                "gw-site1",
                "site1",
                broker_port,
                UplinkKind::Mqtt,
                hub.http_addr,
                opts.data_dir.join("edge-gw-site1/spool"),
            ),
            Duration::from_secs(10),
        )
        .await?,
        Agent::start(
            edge_config(
                "gw-site2",
                "site2",
                broker_port,
                UplinkKind::Http,
                hub.http_addr,
                opts.data_dir.join("edge-gw-site2/spool"),
            ),
            Duration::from_secs(10),
        )
        .await?,
    ];
    tokio::time::sleep(Duration::from_millis(500)).await;

    println!(
        "API:      http://{}  (reads are open: the demo binds to loopback only)",
        hub.http_addr
    );
    println!("          curl http://{}/v1/devices", hub.http_addr);
    println!(
        "          dashboard: http://{}/   MQTT broker: 127.0.0.1:{broker_port} (devices publish to site1/<device>/<metric>)",
        hub.http_addr
    );
    println!("Parquet:  {}", hub.archive_root.display());
    println!("model:    {} {}", hub.model_id, hub.model_version);

    let counts = Arc::new(PublishCounts::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let publishers = vec![
        tokio::spawn(publish_devices(
            broker_port,
            "devices-site1".into(),
            "site1".into(),
            site1,
            opts.rate,
            Arc::clone(&counts),
            stop_rx.clone(),
        )),
        tokio::spawn(publish_devices(
            broker_port,
            "devices-site2".into(),
            "site2".into(),
            site2,
            opts.rate,
            Arc::clone(&counts),
            stop_rx.clone(),
        )),
    ];

    let started = Instant::now();
    let mut last = (Instant::now(), 0u64);
    let mut ticker = tokio::time::interval(Duration::from_secs(2));
    ticker.tick().await;
    let deadline = opts.duration.map(|d| started + d);
    loop {
        let all_done = publishers.iter().all(|p| p.is_finished());
        let timed_out = deadline.is_some_and(|d| Instant::now() >= d);
        if all_done || timed_out {
            break;
        }
        tokio::select! {
            _ = ticker.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        let archived = hub.stats.readings_archived.load(Relaxed);
        let rate = (archived - last.1) as f64 / last.0.elapsed().as_secs_f64();
        last = (Instant::now(), archived);
        println!(
            "[{:>5.0}s] edge accepted {:>8}  archived {:>8} ({:>7.0} readings/s)  batches {:>6}  anomalies {:>5}  files {:>3}  rejected at edge {:>3}",
            started.elapsed().as_secs_f64(),
            agents
                .iter()
                .map(|a| a.stats.readings_accepted.load(Relaxed))
                .sum::<u64>(),
            archived,
            rate,
            hub.stats.batches_durable.load(Relaxed),
            hub.stats.anomalies.load(Relaxed),
            hub.stats.files_committed.load(Relaxed),
            agents.iter().map(|a| a.stats.rejected_total()).sum::<u64>(),
        );
    }
    let _ = stop_tx.send(true);
    for p in publishers {
        let _ = p.await;
    }
    // Wait until every message the broker took from the devices has been
    // delivered to the hub or rejected at the edge (bounded).
    let settle = Instant::now();
    let published = counts.valid.load(Relaxed) + counts.malformed.load(Relaxed);
    while settle.elapsed() < Duration::from_secs(60) {
        let delivered: u64 = agents
            .iter()
            .map(|a| a.stats.readings_delivered.load(Relaxed))
            .sum();
        let rejected: u64 = agents.iter().map(|a| a.stats.rejected_total()).sum();
        if delivered + rejected >= published {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let edge_rejected = agents.iter().map(|a| a.stats.rejected_total()).sum();
    let edge_delivered = agents
        .iter()
        .map(|a| a.stats.readings_delivered.load(Relaxed))
        .sum();
    for a in agents {
        a.shutdown().await;
    }
    let archive_root = hub.archive_root.clone();
    let stats = Arc::clone(&hub.stats);
    hub.shutdown().await;
    let report = DemoReport {
        published_valid: counts.valid.load(Relaxed),
        published_malformed: counts.malformed.load(Relaxed),
        edge_rejected,
        edge_delivered,
        hub_archived: stats.readings_archived.load(Relaxed),
        anomalies: stats.anomalies.load(Relaxed),
        archive_root,
    };
    println!();
    println!(
        "devices published {} valid and {} malformed messages",
        report.published_valid, report.published_malformed
    );
    println!(
        "edge agents rejected {} malformed messages and delivered {} readings",
        report.edge_rejected, report.edge_delivered
    );
    println!(
        "hub archived {} scored readings and {} anomaly events",
        report.hub_archived, report.anomalies
    );
    println!(
        "The archive's Delta tables are under {}; for example:",
        report.archive_root.display()
    );
    println!(
        "  duckdb -c \"INSTALL delta; LOAD delta; SELECT device, count(*), sum((status='anomalous')::int) FROM delta_scan('{}/scored') GROUP BY 1\"",
        report.archive_root.display()
    );
    Ok(report)
}
