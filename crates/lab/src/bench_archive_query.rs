//! `iot-lab bench-archive-query`: how long the hub's archive reads take as
//! the archive grows (docs/BENCHMARKS.md, issue 19).
//!
//! The archive is written through the hub's own archive (its Parquet
//! writer, Delta commits every ten minutes of event time, closed hours
//! compacted as the hub compacts them), by a hub id of its own; a real hub
//! is then started on the same data directory under another id (it serves
//! the archive and leaves the other hub's files alone) and every query is
//! timed over HTTP on loopback, one at a time. Built with the `sql` feature
//! (`--features sql`), `/v1/sql` queries are timed too.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use arrow_array::{
    ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt64Array,
};
use inference_hub::archive::{Archive, Table};
use inference_hub::config::HubConfig;

const HOUR_US: i64 = 3_600_000_000;
/// The hub id the archive is written under.
const WRITER: &str = "writer";
/// The marker of a finished archive (its size), so runs can reuse it.
const DONE: &str = "bench-archive.done";

/// The archive to build (or reuse) and query.
#[derive(Debug, Clone)]
pub struct ArchiveQueryOptions {
    /// The hub's data directory (the archive is its `archive/`).
    pub dir: PathBuf,
    pub readings: u64,
    pub devices: usize,
    pub metrics: usize,
    /// Seconds between two readings of a series.
    pub interval_s: i64,
    /// Timed repetitions of each query.
    pub repeat: usize,
}

/// One query's latencies.
#[derive(Debug, Clone)]
pub struct QueryTiming {
    pub name: &'static str,
    pub path: String,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub response_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct ArchiveQueryReport {
    pub readings: u64,
    pub hours: i64,
    pub files: usize,
    pub archive_bytes: u64,
    /// Wall clock of writing the archive (None: an earlier run's was reused).
    pub build: Option<Duration>,
    pub queries: Vec<QueryTiming>,
}

fn metric_name(m: usize) -> String {
    format!("metric-{m:02}")
}

fn device_name(d: usize) -> String {
    format!("device-{d:04}")
}

/// The archive's span: whole hours ending at the start of the current hour.
fn span(o: &ArchiveQueryOptions) -> (i64, i64) {
    let series = (o.devices * o.metrics) as i64;
    let steps = (o.readings as i64 + series - 1) / series;
    let now = chrono::Utc::now().timestamp_micros();
    let end = now.div_euclid(HOUR_US) * HOUR_US;
    (end - steps * o.interval_s * 1_000_000, end)
}

/// Writes the archive unless a run with the same options already did.
fn build(o: &ArchiveQueryOptions) -> anyhow::Result<Option<Duration>> {
    let marker = o.dir.join(DONE);
    let wanted = format!(
        "{} {} {} {}",
        o.readings, o.devices, o.metrics, o.interval_s
    );
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == wanted) {
        return Ok(None);
    }
    let _ = std::fs::remove_dir_all(&o.dir);
    std::fs::create_dir_all(&o.dir)?;
    let started = Instant::now();
    let root = o.dir.join("archive");
    let settings = inference_hub::config::ArchiveSettings {
        compaction_grace: Duration::ZERO,
        ..HubConfig::for_dir(WRITER, &o.dir).archive
    };
    let mut archive = Archive::open(&root, WRITER, settings)?;
    let (start, _) = span(o);
    let step_us = o.interval_s * 1_000_000;
    let schema = Table::Scored.schema();
    let mut written = 0u64;
    let mut position = 0u64;
    let mut step = 0i64;
    let per_commit = (600 / o.interval_s).max(1);
    let mut rng = fastrand::Rng::with_seed(19);
    while written < o.readings {
        let ts = start + step * step_us;
        // One batch per gateway of ten devices, as gateways send them.
        for first in (0..o.devices).step_by(10) {
            let devices: Vec<usize> = (first..(first + 10).min(o.devices)).collect();
            let n = devices.len() * o.metrics;
            let rows = n.min((o.readings - written) as usize);
            if rows == 0 {
                break;
            }
            let names = |f: &dyn Fn(usize) -> String| -> ArrayRef {
                Arc::new(StringArray::from_iter_values((0..rows).map(f)))
            };
            let values: Vec<f64> = (0..rows)
                .map(|i| 20.0 + (i % 7) as f64 + rng.f64())
                .collect();
            let scores: Vec<f64> = (0..rows).map(|_| rng.f64()).collect();
            position += 1;
            let columns: Vec<ArrayRef> = vec![
                names(&|i| device_name(devices[i / o.metrics])),
                names(&|i| metric_name(i % o.metrics)),
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(
                        (0..rows).map(|i| ts + (i / o.metrics) as i64),
                    )
                    .with_timezone("UTC"),
                ),
                Arc::new(Float64Array::from(values)),
                names(&|i| {
                    if scores[i] > 0.999 {
                        "anomalous".into()
                    } else {
                        "ok".into()
                    }
                }),
                Arc::new(Float64Array::from(scores.clone())),
                Arc::new(Float64Array::from(vec![0.999; rows])),
                names(&|_| "novelty".into()),
                names(&|_| "1".into()),
                names(&|_| format!("gateway-{}", first / 10)),
                Arc::new(UInt64Array::from(vec![1; rows])),
                Arc::new(UInt64Array::from(vec![position; rows])),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![ts + 1_000_000; rows])
                        .with_timezone("UTC"),
                ),
                names(&|_| "C".into()),
                Arc::new(Float64Array::from(scores)),
            ];
            let batch = RecordBatch::try_new(Arc::clone(&schema), columns)?;
            archive.append(Table::Scored, position, &batch)?;
            written += rows as u64;
        }
        step += 1;
        if step % per_commit == 0 {
            archive.commit_all()?;
        }
        // Once an hour has ended, its files are merged (the hub does this
        // an hour after; nothing would change but the wait).
        if (ts + step_us).div_euclid(HOUR_US) != ts.div_euclid(HOUR_US) {
            archive.commit_all()?;
            while archive.compact_one(ts + step_us)?.is_some() {}
        }
    }
    archive.commit_all()?;
    while archive.compact_one(i64::MAX / 2)?.is_some() {}
    drop(archive);
    std::fs::write(&marker, wanted)?;
    Ok(Some(started.elapsed()))
}

fn dir_bytes(dir: &Path) -> (usize, u64) {
    let files = inference_hub::archive::committed_files(dir, Table::Scored).unwrap_or_default();
    let bytes = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    (files.len(), bytes)
}

/// Builds (or reuses) the archive, starts a hub on it and times the reads.
pub async fn bench(o: &ArchiveQueryOptions) -> anyhow::Result<ArchiveQueryReport> {
    let options = o.clone();
    let build = tokio::task::spawn_blocking(move || build(&options))
        .await?
        .context("writing the archive")?;
    let (start, end) = span(o);
    let (files, archive_bytes) = dir_bytes(&o.dir.join("archive"));
    let mut cfg = HubConfig::for_dir("reader", &o.dir);
    cfg.mqtt.enabled = false;
    let hub = inference_hub::hub::start(cfg).await?;
    let base = format!("http://{}", hub.http_addr);
    let day_from = (end - 24 * HOUR_US).max(start);
    let fmt = |us: i64| {
        chrono::DateTime::from_timestamp_micros(us)
            .expect("in range")
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    };
    let (from, to) = (fmt(day_from), fmt(end));
    let device = device_name(o.devices / 2);
    let metric = metric_name(o.metrics / 2);
    let queries: Vec<(&'static str, String)> = vec![
        (
            "readings: one series, 1 day, raw",
            format!(
                "/v1/devices/{device}/metrics/{metric}/readings?from={from}&to={to}&limit=100000"
            ),
        ),
        (
            "readings: one series, 1 day, step=5m",
            format!("/v1/devices/{device}/metrics/{metric}/readings?from={from}&to={to}&step=5m"),
        ),
        (
            "/v1/query: one series, 1 day, JSON Lines",
            format!(
                "/v1/query?from={from}&to={to}&device={device}&metric={metric}&format=jsonl&limit=1000000"
            ),
        ),
        (
            "/v1/query: one device (all metrics), 1 day, CSV",
            format!("/v1/query?from={from}&to={to}&device={device}&format=csv&limit=1000000"),
        ),
        (
            "/v1/query: one series, 1 hour, JSON",
            format!(
                "/v1/query?from={}&to={to}&device={device}&metric={metric}&format=json",
                fmt(end - HOUR_US)
            ),
        ),
    ];
    #[cfg(feature = "sql")]
    let queries = {
        let mut queries = queries;
        let sql = |text: String| {
            format!(
                "/v1/sql?format=jsonl&q={}",
                url::form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>()
            )
        };
        let day = format!("ts >= TIMESTAMP '{from}' AND ts < TIMESTAMP '{to}'");
        queries.push((
            "/v1/sql: one series, 1 day, rows in time order",
            sql(format!(
                "SELECT ts, value, score FROM scored WHERE device = '{device}' AND metric = '{metric}' AND {day} ORDER BY ts"
            )),
        ));
        queries.push((
            "/v1/sql: one series, 1 day, hourly mean and max score",
            sql(format!(
                "SELECT date_trunc('hour', ts) AS hour, avg(value) AS mean, max(score) AS top FROM scored \
                 WHERE device = '{device}' AND metric = '{metric}' AND {day} GROUP BY 1 ORDER BY 1"
            )),
        ));
        queries.push((
            "/v1/sql: anomalous readings per device, 1 day (every device)",
            sql(format!(
                "SELECT device, count(*) AS n FROM scored WHERE status = 'anomalous' AND {day} \
                 GROUP BY device ORDER BY n DESC, device LIMIT 10"
            )),
        ));
        queries
    };
    let client = reqwest::Client::new();
    let mut timings = Vec::new();
    for (name, path) in queries {
        let url = format!("{base}{path}");
        // One untimed request: the table's snapshot is read once per hub.
        let first = client.get(&url).send().await?;
        anyhow::ensure!(
            first.status().is_success(),
            "{path}: {} {}",
            first.status(),
            first.text().await.unwrap_or_default()
        );
        let response_bytes = first.bytes().await?.len();
        let mut ms = Vec::with_capacity(o.repeat);
        for _ in 0..o.repeat {
            let started = Instant::now();
            let body = client
                .get(&url)
                .send()
                .await?
                .error_for_status()?
                .bytes()
                .await?;
            ms.push(started.elapsed().as_secs_f64() * 1e3);
            anyhow::ensure!(body.len() == response_bytes, "{path}: the answer changed");
        }
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
        timings.push(QueryTiming {
            name,
            path,
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: ms[ms.len() - 1],
            response_bytes,
        });
    }
    hub.shutdown().await;
    Ok(ArchiveQueryReport {
        readings: o.readings,
        hours: (end - start + HOUR_US - 1) / HOUR_US,
        files,
        archive_bytes,
        build,
        queries: timings,
    })
}
