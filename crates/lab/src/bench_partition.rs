//! `iot-lab bench-partition`: the hub goes away under steady load and comes
//! back; the spool's size, the drain rate and the live-data latency during
//! the drain.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use rumqttc::QoS;

use crate::bench::{broker_or_embedded, tempfile_dir};
use inference_hub::config::HubConfig;

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
            let mut sim = crate::devices::Simulator::connect(
                "partition-load",
                &host,
                port,
                QoS::AtLeastOnce,
                1000,
            );
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
                if sim.publish(payload.0, payload.1).await.is_err() {
                    break;
                }
                published.fetch_add(1, Relaxed);
                i += 1;
            }
            sim.close().await;
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
