//! `edge-agent replay`: recorded device data back through the pipeline.
//!
//! Inputs:
//! - **CSV** with a header: a time column (`timestamp`, `datetime`, `time` or
//!   `ts`, or `--time-column`), `,` or `;` separated (detected from the
//!   header, so NAB's `timestamp,value` and SKAB's semicolon files both work),
//!   numeric columns become metrics; label columns (`anomaly`,
//!   `changepoint`, `label`) are skipped. The device is the file name's stem
//!   unless `--device` is given.
//! - **JSON Lines** of gateway messages, `{"topic": ..., "payload": ...}`
//!   (the format `dry-run` reads), published as recorded.
//!
//! Outputs:
//! - **MQTT** (default): every CSV row is one device message on
//!   `<prefix>/<device>/<metric>` (one metric: `{"value": v, "ts": ms}`;
//!   several: a flat object `{"m1": .., "m2": .., "ts": ms}` on
//!   `<prefix>/<device>/record`), QoS 1, so the gateway's edge agent decodes
//!   it like live data.
//! - **HTTP straight to a hub** (`--hub-url`), bypassing broker and agent,
//!   for backtesting at full speed: rows are batched into envelopes as an
//!   agent would. The envelopes' identity is derived from the recording
//!   (gateway `replay-<name>`, incarnation = a hash of the file's bytes and the
//!   replay options), so **replaying the same recording twice into the same
//!   archive does not duplicate it**: the hub answers `duplicate`.
//!
//! Timing: recorded timestamps are kept. `--speed max` sends as fast as the
//! output takes it; `--speed 10x` keeps the recorded spacing divided by 10.
//! Progress (rate, ETA) is redrawn on a terminal and printed as plain lines
//! every few seconds otherwise.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rumqttc::{Event, MqttOptions, Packet, QoS};

/// One recorded row: time and the values of its metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub ts_us: i64,
    pub values: Vec<f64>,
}

/// A parsed recording.
#[derive(Debug, Clone)]
pub enum Recording {
    Table {
        device: String,
        metrics: Vec<String>,
        rows: Vec<Row>,
    },
    Messages(Vec<(String, Vec<u8>, Option<i64>)>),
}

impl Recording {
    pub fn len(&self) -> usize {
        match self {
            Recording::Table { rows, .. } => rows.len(),
            Recording::Messages(m) => m.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

const TIME_COLUMNS: [&str; 4] = ["timestamp", "datetime", "time", "ts"];
const LABEL_COLUMNS: [&str; 3] = ["anomaly", "changepoint", "label"];

/// Parses a time cell: RFC 3339, `YYYY-MM-DD HH:MM:SS[.f]` (UTC), or epoch
/// seconds/milliseconds/microseconds told apart by magnitude.
pub fn parse_time(text: &str) -> Option<i64> {
    let t = text.trim().trim_matches('"');
    if let Ok(dt) = chrono::DateTime::parse_from_rfc3339(t) {
        return Some(dt.timestamp_micros());
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S%.f",
    ] {
        if let Ok(dt) = chrono::NaiveDateTime::parse_from_str(t, fmt) {
            return Some(dt.and_utc().timestamp_micros());
        }
    }
    let n: f64 = t.parse().ok()?;
    Some(if n.abs() < 1e11 {
        (n * 1e6) as i64
    } else if n.abs() < 1e14 {
        (n * 1e3) as i64
    } else {
        n as i64
    })
}

/// Options for reading a CSV recording.
#[derive(Debug, Clone, Default)]
pub struct CsvOptions {
    pub device: Option<String>,
    pub time_column: Option<String>,
    /// Only these columns become metrics (default: every numeric one).
    pub columns: Option<Vec<String>>,
}

pub fn read_csv(path: &Path, o: &CsvOptions) -> anyhow::Result<Recording> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header_line = lines.next().context("empty file")?;
    let sep = if header_line.matches(';').count() > header_line.matches(',').count() {
        ';'
    } else {
        ','
    };
    let header: Vec<String> = header_line
        .split(sep)
        .map(|h| h.trim().trim_matches('"').to_owned())
        .collect();
    let time_col = match &o.time_column {
        Some(c) => header.iter().position(|h| h == c),
        None => header
            .iter()
            .position(|h| TIME_COLUMNS.contains(&h.to_ascii_lowercase().as_str())),
    }
    .with_context(|| format!("{}: no time column (use --time-column)", path.display()))?;
    let metric_cols: Vec<usize> = (0..header.len())
        .filter(|&i| i != time_col)
        .filter(|&i| !LABEL_COLUMNS.contains(&header[i].to_ascii_lowercase().as_str()))
        .filter(|&i| o.columns.as_ref().is_none_or(|c| c.contains(&header[i])))
        .collect();
    if metric_cols.is_empty() {
        bail!("{}: no value columns", path.display());
    }
    let mut rows = Vec::new();
    for (n, line) in lines.enumerate() {
        let fields: Vec<&str> = line.split(sep).collect();
        let ts_us = fields
            .get(time_col)
            .and_then(|t| parse_time(t))
            .with_context(|| format!("{} line {}: bad time", path.display(), n + 2))?;
        let values = metric_cols
            .iter()
            .map(|&i| fields.get(i).and_then(|v| v.trim().parse::<f64>().ok()))
            .collect::<Option<Vec<f64>>>()
            .with_context(|| {
                format!("{} line {}: a value is not a number", path.display(), n + 2)
            })?;
        rows.push(Row { ts_us, values });
    }
    let device = o.device.clone().unwrap_or_else(|| {
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "replay".into())
    });
    Ok(Recording::Table {
        device,
        metrics: metric_cols.iter().map(|&i| header[i].clone()).collect(),
        rows,
    })
}

/// `{"topic", "payload"}` lines (optionally `"ts"` in ms for timing).
pub fn read_jsonl(path: &Path) -> anyhow::Result<Recording> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{} line {}: not JSON", path.display(), n + 1))?;
        let topic = v
            .get("topic")
            .and_then(|t| t.as_str())
            .with_context(|| format!("{} line {}: no topic", path.display(), n + 1))?;
        let payload = match (v.get("payload"), v.get("payload_text")) {
            (_, Some(t)) => t.as_str().unwrap_or_default().as_bytes().to_vec(),
            (Some(p), None) => serde_json::to_vec(p)?,
            (None, None) => bail!("{} line {}: no payload", path.display(), n + 1),
        };
        let ts = v.get("ts").and_then(|t| t.as_i64()).map(|ms| ms * 1000);
        out.push((topic.to_owned(), payload, ts));
    }
    Ok(Recording::Messages(out))
}

/// Reads a recording by its extension (`.csv`, `.jsonl`/`.ndjson`).
pub fn read(path: &Path, o: &CsvOptions) -> anyhow::Result<Recording> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => read_csv(path, o),
        Some("jsonl" | "ndjson") => read_jsonl(path),
        Some("parquet") => bail!(
            "{}: Parquet recordings (our archive included) are replayed by `iot-lab replay` (the edge agent links no Parquet)",
            path.display()
        ),
        _ => bail!("{}: expected .csv or .jsonl", path.display()),
    }
}

/// Replay pacing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Speed {
    Max,
    Factor(f64),
}

pub fn parse_speed(text: &str) -> Result<Speed, String> {
    if text == "max" {
        return Ok(Speed::Max);
    }
    let f: f64 = text
        .trim_end_matches('x')
        .parse()
        .map_err(|_| format!("'{text}': expected 'max' or a factor like '10x'"))?;
    if f.is_finite() && f > 0.0 {
        Ok(Speed::Factor(f))
    } else {
        Err(format!("'{text}': the factor must be positive"))
    }
}

/// Where the replay goes.
#[derive(Debug, Clone)]
pub enum Target {
    Mqtt {
        host: String,
        port: u16,
        topic_prefix: String,
    },
    Hub {
        url: String,
        token: Option<String>,
        batch_rows: usize,
        /// For an `https://` hub: the CA (and a client certificate).
        tls: Option<iot_tls::ClientTls>,
    },
}

/// Prints progress: redrawn on a terminal, plain lines otherwise.
struct Progress {
    total: usize,
    started: Instant,
    last: Instant,
    tty: bool,
}

impl Progress {
    fn new(total: usize) -> Self {
        let now = Instant::now();
        Self {
            total,
            started: now,
            last: now,
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn update(&mut self, done: usize) {
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        if self.last.elapsed() < every && done < self.total {
            return;
        }
        self.last = Instant::now();
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = done as f64 / secs;
        let eta = (self.total - done) as f64 / rate.max(1e-9);
        let line = format!(
            "replayed {done}/{} rows ({:.0}%), {rate:.0} rows/s, ETA {eta:.0}s",
            self.total,
            100.0 * done as f64 / self.total.max(1) as f64
        );
        if self.tty {
            eprint!("\r{line}   ");
            if done >= self.total {
                eprintln!();
            }
        } else {
            eprintln!("{line}");
        }
        let _ = std::io::stderr().flush();
    }
}

/// Waits until the recorded time `ts_us` (relative to `first_us`) is due.
async fn pace(speed: Speed, started: Instant, first_us: i64, ts_us: i64) {
    if let Speed::Factor(f) = speed {
        let offset = ((ts_us - first_us).max(0) as f64 / f) / 1e6;
        tokio::time::sleep_until((started + Duration::from_secs_f64(offset)).into()).await;
    }
}

/// Replays one recording; returns the rows (or messages) sent.
pub async fn replay(
    recording: &Recording,
    target: &Target,
    speed: Speed,
    name: &str,
    replay_id: u64,
) -> anyhow::Result<u64> {
    match target {
        Target::Mqtt {
            host,
            port,
            topic_prefix,
        } => replay_mqtt(recording, host, *port, topic_prefix, speed).await,
        Target::Hub {
            url,
            token,
            batch_rows,
            tls,
        } => {
            replay_http(
                recording,
                url,
                token.as_deref(),
                tls.as_ref(),
                *batch_rows,
                speed,
                name,
                replay_id,
            )
            .await
        }
    }
}

async fn replay_mqtt(
    recording: &Recording,
    host: &str,
    port: u16,
    prefix: &str,
    speed: Speed,
) -> anyhow::Result<u64> {
    let mut opts = MqttOptions::new(format!("replay-{}", fastrand::u32(..)), host, port);
    opts.set_keep_alive(Duration::from_secs(30))
        .set_inflight(100)
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = iot_mqtt::client(opts, 1000);
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let acked_in_loop = Arc::clone(&acked);
    let poller = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    acked_in_loop.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    let mut progress = Progress::new(recording.len());
    let started = Instant::now();
    let mut sent = 0u64;
    match recording {
        Recording::Table {
            device,
            metrics,
            rows,
        } => {
            let first = rows.first().map_or(0, |r| r.ts_us);
            for row in rows {
                pace(speed, started, first, row.ts_us).await;
                let ms = row.ts_us.div_euclid(1000);
                let (topic, payload) = if metrics.len() == 1 {
                    (
                        format!("{prefix}/{device}/{}", metrics[0]),
                        serde_json::json!({"value": row.values[0], "ts": ms}).to_string(),
                    )
                } else {
                    let mut obj = serde_json::Map::new();
                    for (m, v) in metrics.iter().zip(&row.values) {
                        obj.insert(m.clone(), serde_json::json!(v));
                    }
                    obj.insert("ts".into(), serde_json::json!(ms));
                    (
                        format!("{prefix}/{device}/record"),
                        serde_json::Value::Object(obj).to_string(),
                    )
                };
                client
                    .publish(topic, QoS::AtLeastOnce, false, payload)
                    .await?;
                sent += 1;
                progress.update(sent as usize);
            }
        }
        Recording::Messages(messages) => {
            let first = messages.iter().find_map(|m| m.2).unwrap_or(0);
            for (topic, payload, ts) in messages {
                if let Some(ts) = ts {
                    pace(speed, started, first, *ts).await;
                }
                client
                    .publish(topic.clone(), QoS::AtLeastOnce, false, payload.clone())
                    .await?;
                sent += 1;
                progress.update(sent as usize);
            }
        }
    }
    while acked.load(std::sync::atomic::Ordering::Relaxed) < sent {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    client.disconnect().await?;
    let _ = tokio::time::timeout(Duration::from_secs(10), poller).await;
    Ok(sent)
}

#[allow(clippy::too_many_arguments)]
async fn replay_http(
    recording: &Recording,
    url: &str,
    token: Option<&str>,
    tls: Option<&iot_tls::ClientTls>,
    batch_rows: usize,
    speed: Speed,
    name: &str,
    replay_id: u64,
) -> anyhow::Result<u64> {
    let Recording::Table {
        device,
        metrics,
        rows,
    } = recording
    else {
        bail!("--hub-url replays tables (CSV); JSON Lines messages need the MQTT path");
    };
    let mut client = reqwest::Client::builder().timeout(Duration::from_secs(30));
    if let Some(tls) = tls {
        client = client.use_preconfigured_tls((*tls.load()?).clone());
    }
    let client = client.build()?;
    let endpoint = format!("{}/v1/batches", url.trim_end_matches('/'));
    let gateway: String = format!("replay-{name}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(schemas::envelope::MAX_GATEWAY_LEN)
        .collect();
    let mut progress = Progress::new(rows.len());
    let started = Instant::now();
    let first = rows.first().map_or(0, |r| r.ts_us);
    let per_batch = (batch_rows / metrics.len().max(1)).max(1);
    let mut sent = 0u64;
    for (i, chunk) in rows.chunks(per_batch).enumerate() {
        pace(speed, started, first, chunk[0].ts_us).await;
        let mut cols = schemas::ReadingColumns::with_capacity(chunk.len() * metrics.len());
        for row in chunk {
            for (m, v) in metrics.iter().zip(&row.values) {
                cols.push(device, m, row.ts_us, *v);
            }
        }
        let (_, bytes) =
            schemas::envelope::encode(&gateway, replay_id, i as u64 + 1, &cols.finish())?;
        let mut attempt = 0;
        loop {
            let mut req = client
                .post(&endpoint)
                .header("content-type", crate::uplink::ENVELOPE_CONTENT_TYPE)
                .body(bytes.clone());
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            match req.send().await {
                Ok(r) if r.status().is_success() => break,
                Ok(r) if r.status().is_client_error() => {
                    bail!(
                        "the hub rejected batch {}: {}",
                        i + 1,
                        r.text().await.unwrap_or_default()
                    )
                }
                Ok(r) => tracing::warn!(status = %r.status(), "hub busy; retrying"),
                Err(e) => tracing::warn!(error = %e, "hub unreachable; retrying"),
            }
            attempt += 1;
            if attempt > 20 {
                bail!("the hub did not take batch {} after 20 attempts", i + 1);
            }
            tokio::time::sleep(iot_mqtt::backoff(
                attempt,
                Duration::from_millis(200),
                Duration::from_secs(10),
            ))
            .await;
        }
        sent += chunk.len() as u64;
        progress.update(sent as usize);
    }
    Ok(sent)
}

/// A replay's incarnation: a hash of the file's bytes and the replay's
/// options, so the same replay always produces the same batch identities.
pub fn replay_id(path: &Path, options: &str) -> anyhow::Result<u64> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let mut crc = crc32c::crc32c(&bytes) as u64;
    crc = (crc << 32) | crc32c::crc32c_append(crc32c::crc32c(options.as_bytes()), &bytes) as u64;
    Ok(crc.max(1))
}

/// Files named on the command line, directories expanded (recursively) to
/// the CSV and JSON Lines files they hold.
pub fn expand(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut stack = vec![p.clone()];
            while let Some(d) = stack.pop() {
                let mut entries: Vec<PathBuf> = std::fs::read_dir(&d)?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .collect();
                entries.sort();
                for e in entries {
                    if e.is_dir() {
                        stack.push(e);
                    } else if e
                        .extension()
                        .is_some_and(|x| x == "csv" || x == "jsonl" || x == "ndjson")
                    {
                        out.push(e);
                    }
                }
            }
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nab_and_skab_shaped_csv() {
        let dir = tempfile::tempdir().unwrap();
        let nab = dir.path().join("ec2_cpu.csv");
        std::fs::write(
            &nab,
            "timestamp,value\n2014-02-14 14:30:00,0.132\n2014-02-14 14:35:00,0.134\n",
        )
        .unwrap();
        let Recording::Table {
            device,
            metrics,
            rows,
        } = read(&nab, &CsvOptions::default()).unwrap()
        else {
            panic!("a table")
        };
        assert_eq!(
            (device.as_str(), metrics),
            ("ec2_cpu", vec!["value".to_string()])
        );
        assert_eq!(rows[1].ts_us - rows[0].ts_us, 300_000_000);
        assert_eq!(rows[0].values, vec![0.132]);

        let skab = dir.path().join("3.csv");
        std::fs::write(
            &skab,
            "datetime;Accelerometer1RMS;Current;anomaly;changepoint\n2020-03-09 10:14:33;0.02;1.33;0.0;0.0\n",
        )
        .unwrap();
        let o = CsvOptions {
            device: Some("pump".into()),
            ..CsvOptions::default()
        };
        let Recording::Table {
            device,
            metrics,
            rows,
        } = read(&skab, &o).unwrap()
        else {
            panic!("a table")
        };
        assert_eq!(device, "pump");
        assert_eq!(
            metrics,
            vec!["Accelerometer1RMS", "Current"],
            "labels skipped"
        );
        assert_eq!(rows[0].values, vec![0.02, 1.33]);
        assert!(read(&dir.path().join("x.parquet"), &o).is_err());
    }

    #[test]
    fn times_and_speeds_parse() {
        assert_eq!(parse_time("1700000000"), Some(1_700_000_000_000_000));
        assert_eq!(parse_time("1700000000000"), Some(1_700_000_000_000_000));
        assert_eq!(
            parse_time("2023-11-14T22:13:20Z"),
            Some(1_700_000_000_000_000)
        );
        assert_eq!(parse_speed("10x"), Ok(Speed::Factor(10.0)));
        assert_eq!(parse_speed("max"), Ok(Speed::Max));
        assert!(parse_speed("0x").is_err() && parse_speed("fast").is_err());
    }
}
