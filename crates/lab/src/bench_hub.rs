//! `iot-lab bench-hub`: the hub's throughput from received batch bytes to
//! committed Parquet, against the Python reference.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::bench::tempfile_dir;
use inference_hub::config::HubConfig;

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
    let (cpu0, started) = (crate::bench::cpu_time("self"), Instant::now());
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
    let (wall, cpu) = (
        started.elapsed(),
        crate::bench::cpu_time("self").saturating_sub(cpu0),
    );
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
