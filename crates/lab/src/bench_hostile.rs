//! `iot-lab bench-hostile`: the hub's memory and health under the
//! hostile loads of the guarantees work, measured on a real hub process.
//!
//! The hub (this binary, `run`) starts with the open-file limit of a default
//! system (1024, via `prlimit` when present) and the default limits. One
//! after the other:
//! 1. compression bombs: envelopes of about 11 KB that declare 400 MB once
//!    decompressed;
//! 2. a series flood: 1,000,000 distinct series named by one gateway, then
//!    by a hundred (against the per-gateway and total series caps);
//! 3. a dedup flood: batches of random incarnations and sparse seqs;
//! 4. idle clients: 1,100 connections that send half a request;
//! 5. overflowing query ranges.
//!
//! After each, it records the hub's resident memory (VmRSS) and its peak so
//! far (VmHWM) from `/proc`, and whether `/health` still answers 200. The
//! steady-state memory per series is the resident memory the series flood
//! added, divided by the series the hub then holds. It prints a Markdown
//! table for docs/BENCHMARKS.md. A benchmark, not a test: it asserts nothing.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use schemas::ReadingColumns;

/// One measurement after a load.
#[derive(Debug)]
pub struct Step {
    pub load: String,
    pub rss_kib: u64,
    pub peak_kib: u64,
    pub healthy: bool,
    pub note: String,
}

fn memory_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

struct HubChild(Child);

impl Drop for HubChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

fn envelope(
    gateway: &str,
    incarnation: u64,
    seq: u64,
    rows: impl Iterator<Item = (String, String)>,
) -> Vec<u8> {
    let mut cols = ReadingColumns::default();
    let t = now_us();
    for (i, (device, metric)) in rows.enumerate() {
        cols.push(&device, &metric, t + i as i64, 1.0);
    }
    schemas::envelope::encode(gateway, incarnation, seq, &cols.finish())
        .expect("a valid batch")
        .1
}

/// A valid envelope whose compressed timestamp buffer declares 400 MB.
fn bomb(seq: u64) -> Vec<u8> {
    let rows = (0..2000).map(|i| (format!("dev{}", i % 3), "temp".to_owned()));
    let mut bytes = envelope("gw-bomb", 1, seq, rows);
    let declared = (2000i64 * 8).to_le_bytes();
    if let Some(at) = bytes.windows(8).position(|w| w == declared) {
        bytes[at..at + 8].copy_from_slice(&400_000_000i64.to_le_bytes());
    }
    let crc = crc32c::crc32c(&bytes[schemas::envelope::PREAMBLE_LEN..]);
    bytes[12..16].copy_from_slice(&crc.to_le_bytes());
    bytes
}

/// Runs the loads against a hub started from `hub_bin`; `dir` holds its data.
pub async fn run(hub_bin: &Path, dir: &Path) -> anyhow::Result<Vec<Step>> {
    let port = crate::broker::free_port();
    let http = format!("127.0.0.1:{port}");
    let config = dir.join("hub.toml");
    std::fs::write(
        &config,
        format!(
            "hub-id = \"hostile\"\ndata-dir = {:?}\nmqtt.enabled = false\nhttp.listen = \"{http}\"\n\
             http.header-read-timeout = \"5s\"\nscoring.model-dir = {:?}\n",
            dir.join("data").display().to_string(),
            inference_hub::config::shipped_model("novelty")
        ),
    )?;
    let mut command = if Path::new("/usr/bin/prlimit").exists() {
        let mut c = Command::new("/usr/bin/prlimit");
        c.arg("--nofile=1024:1024").arg(hub_bin);
        c
    } else {
        Command::new(hub_bin)
    };
    let child = command
        .args(["--config", config.to_str().expect("UTF-8 path"), "run"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("hub.log"))?)
        .spawn()
        .context("starting the hub")?;
    let hub = HubChild(child);
    // prlimit execs the hub: same pid.
    let pid = hub.0.id();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let base = format!("http://{http}");
    let healthy = || {
        let client = client.clone();
        let url = format!("{base}/health");
        async move {
            client
                .get(url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    };
    let started = Instant::now();
    while !healthy().await {
        if started.elapsed() > Duration::from_secs(60) {
            bail!(
                "the hub did not start; see {}",
                dir.join("hub.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut steps = Vec::new();
    let mut record = |load: &str, healthy: bool, note: String| -> anyhow::Result<()> {
        let (rss_kib, peak_kib) = memory_kib(pid)?;
        steps.push(Step {
            load: load.to_owned(),
            rss_kib,
            peak_kib,
            healthy,
            note,
        });
        Ok(())
    };
    record("idle, after start-up", healthy().await, String::new())?;

    // 1. Compression bombs, 8 at a time.
    let post = |body: Vec<u8>| {
        let request = client.post(format!("{base}/v1/batches")).body(body).send();
        async move {
            match request.await {
                Ok(r) => {
                    let status = r.status();
                    let bytes = r.bytes().await.unwrap_or_default();
                    let body: serde_json::Value = serde_json::from_slice(&bytes)
                        .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into());
                    (status.as_u16(), body)
                }
                Err(_) => (0, serde_json::Value::Null),
            }
        }
    };
    let bomb_bytes = bomb(1).len();
    let mut refused = 0;
    for round in 0..25u64 {
        let answers =
            futures_util::future::join_all((0..8).map(|i| post(bomb(round * 8 + i + 1)))).await;
        refused += answers.iter().filter(|(s, _)| *s == 413).count();
    }
    record(
        "200 compression bombs (about 11 KB on the wire, 400 MB declared each)",
        healthy().await,
        format!("{refused} of 200 refused with 413 ({bomb_bytes} bytes each)"),
    )?;
    let (rss_before_series, _) = memory_kib(pid)?;

    // 2. A million distinct series from one gateway, then from a hundred.
    // Readings refused: named in a durable answer, or a whole batch rejected.
    let refused = |(status, body): (u16, serde_json::Value)| match status {
        422 => 5000,
        _ => body["dropped"]["rows"].as_u64().unwrap_or(0),
    };
    let mut dropped_one = 0u64;
    for seq in 1..=200u64 {
        let rows = (0..5000).map(move |i| (format!("d{seq}-{i}"), "m".to_owned()));
        dropped_one += refused(post(envelope("gw-flood", 1, seq, rows)).await);
    }
    let mut dropped_many = 0u64;
    for g in 0..100u64 {
        for seq in 1..=2u64 {
            let rows = (0..5000).map(move |i| (format!("g{g}-d{seq}-{i}"), "m".to_owned()));
            dropped_many += refused(post(envelope(&format!("gw-{g}"), 1, seq, rows)).await);
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let held: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hub_series_held "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (rss_after_series, _) = memory_kib(pid)?;
    let per_series = (rss_after_series.saturating_sub(rss_before_series) * 1024) / held.max(1);
    record(
        "series flood: 1,000,000 new series from one gateway, then 1,000,000 from 100 gateways",
        healthy().await,
        format!(
            "{held} series held (caps 50,000 per gateway, 250,000 in all); {dropped_one} + {dropped_many} readings refused; about {per_series} bytes of memory per series held"
        ),
    )?;

    // 3. Dedup flood: random incarnations with sparse seqs.
    let mut rng = fastrand::Rng::with_seed(7);
    for round in 0..40u64 {
        let answers = futures_util::future::join_all((0..50u64).map(|i| {
            let rows = std::iter::once(("d".to_owned(), "m".to_owned()));
            post(envelope(
                "gw-dedup",
                rng.u64(..),
                1 + (round * 50 + i) * 1000,
                rows,
            ))
        }))
        .await;
        let _ = answers;
    }
    record(
        "dedup flood: 2,000 batches of random incarnations and sparse seqs",
        healthy().await,
        String::new(),
    )?;

    // 4. Idle clients: half a request each.
    let mut idle = Vec::new();
    for _ in 0..1100 {
        let connect = tokio::net::TcpStream::connect(&http);
        if let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_millis(200), connect).await {
            use tokio::io::AsyncWriteExt;
            let _ = s
                .write_all(b"POST /v1/batches HTTP/1.1\r\nHost: hub\r\nContent-Le")
                .await;
            idle.push(s);
        }
    }
    // A batch of a series the hub already holds, meanwhile.
    let (status, _) = post(envelope(
        "gw-flood",
        1,
        1000,
        std::iter::once(("d1-0".into(), "m".into())),
    ))
    .await;
    let healthy_now = healthy().await;
    record(
        "1,100 clients sending half a request (open-file limit 1,024)",
        healthy_now,
        format!(
            "{} connections held open; a batch meanwhile answered {status}",
            idle.len()
        ),
    )?;
    drop(idle);

    // 5. Overflowing ranges.
    let started = Instant::now();
    let mut unprocessable = 0;
    for _ in 0..100 {
        let r = client
            .get(format!("{base}/v1/query?from=-9223372036854775808&to=0"))
            .send()
            .await?;
        unprocessable += usize::from(r.status().as_u16() == 422);
    }
    record(
        "100 queries with an overflowing range",
        healthy().await,
        format!(
            "{unprocessable} answered 422, in {:.0} ms in all",
            started.elapsed().as_secs_f64() * 1000.0
        ),
    )?;
    Ok(steps)
}
