//! Shared helpers: a device simulator that publishes a known set of readings
//! (and known malformed messages), and a reader of the Parquet archive.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use arrow_array::{Array, Float64Array, StringArray, TimestampMicrosecondArray};
use inference_hub::archive::{self, Table};
use rumqttc::QoS;

/// One archived row, as the test oracle sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchivedRow {
    pub status: String,
    pub score: Option<f64>,
    pub value: f64,
}

/// (device, metric, ts) -> every archived row with that key.
pub type Archived = BTreeMap<(String, String, i64), Vec<ArchivedRow>>;

pub fn read_archive(root: &Path) -> Archived {
    let mut out = Archived::new();
    for batch in archive::read_table(root, Table::Scored).expect("archive readable") {
        let s = |n: &str| {
            batch
                .column_by_name(n)
                .unwrap()
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .clone()
        };
        let f = |n: &str| {
            batch
                .column_by_name(n)
                .unwrap()
                .as_any()
                .downcast_ref::<Float64Array>()
                .unwrap()
                .clone()
        };
        let (device, metric, status) = (s("device"), s("metric"), s("status"));
        let (value, score) = (f("value"), f("score"));
        let ts = batch
            .column_by_name("ts")
            .unwrap()
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap();
        for i in 0..batch.num_rows() {
            out.entry((
                device.value(i).to_owned(),
                metric.value(i).to_owned(),
                ts.value(i),
            ))
            .or_default()
            .push(ArchivedRow {
                status: status.value(i).to_owned(),
                score: score.is_valid(i).then(|| score.value(i)),
                value: value.value(i),
            });
        }
    }
    out
}

/// What a simulated fleet published: the readings a correct pipeline must
/// archive, and how many malformed messages it sent.
#[derive(Debug, Default)]
pub struct Published {
    /// (device, metric, ts) -> value
    pub readings: BTreeMap<(String, String, i64), f64>,
    pub malformed: u64,
    /// Keys of readings that carry an injected spike.
    pub spikes: Vec<(String, String, i64)>,
}

pub const T0_US: i64 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z

/// Publishes `per_device` readings for each of `devices` under
/// `<root>/<device>/<metric>`, cycling through the three JSON payload forms,
/// with a spike at reading `spike_at` of every device and a malformed
/// message every 50th. Waits for the broker's PUBACK of every message.
pub async fn publish_fleet(
    port: u16,
    client_id: &str,
    root: &str,
    devices: usize,
    per_device: usize,
    spike_at: usize,
) -> Published {
    let mut sim =
        lab::devices::Simulator::connect(client_id, "127.0.0.1", port, QoS::AtLeastOnce, 500);
    let mut published = Published::default();
    for i in 0..per_device {
        for d in 0..devices {
            let device = format!("{root}-dev{d}");
            let ts = T0_US + i as i64 * 60_000_000;
            let base = 10.0 * (d + 1) as f64 + (i as f64 / 10.0).sin();
            let value = if i == spike_at {
                base + 40.0 * (d + 1) as f64
            } else {
                base
            };
            let ts_text = chrono::DateTime::from_timestamp_micros(ts)
                .unwrap()
                .to_rfc3339();
            let (topic, payload, readings): (String, String, Vec<(&str, f64)>) = match i % 3 {
                // The three payload forms of the spine.
                0 => (
                    format!("{root}/{device}/temp"),
                    format!(r#"{{"value": {value}, "ts": "{ts_text}"}}"#),
                    vec![("temp", value)],
                ),
                1 => (
                    format!("{root}/{device}/state"),
                    format!(
                        r#"{{"temp": {value}, "rpm": {}, "ts": {}}}"#,
                        1000 + i,
                        ts / 1000
                    ),
                    vec![("temp", value), ("rpm", (1000 + i) as f64)],
                ),
                _ => (
                    format!("{root}/{device}/temp"),
                    format!(r#"{{"ts": {}, "value": {value}}}"#, ts / 1_000_000),
                    vec![("temp", value)],
                ),
            };
            sim.publish(topic, payload).await.unwrap();
            for (metric, v) in readings {
                let key = (device.clone(), metric.to_owned(), ts);
                if i == spike_at && metric == "temp" {
                    published.spikes.push(key.clone());
                }
                published.readings.insert(key, v);
            }
            if (i * devices + d) % 50 == 49 {
                let bad = [
                    "{not json",
                    r#"{"value": "warm"}"#,
                    r#"{"value": 1, "ts": "someday"}"#,
                    "[1,2]",
                ][(published.malformed % 4) as usize];
                sim.publish(format!("{root}/{device}/temp"), bad)
                    .await
                    .unwrap();
                published.malformed += 1;
            }
        }
    }
    assert!(
        sim.settle(Duration::from_secs(60)).await,
        "broker acknowledged {} of {} published messages",
        sim.acked(),
        sim.sent()
    );
    sim.close().await;
    published
}

/// A TCP relay to the broker that a test can cut: while cut, it closes the
/// connections it relays and refuses new ones (a gateway's uplink losing
/// the network).
#[derive(Debug)]
pub struct CuttableRelay {
    pub port: u16,
    open: Arc<std::sync::atomic::AtomicBool>,
    cuts: tokio::sync::watch::Sender<u64>,
}

impl CuttableRelay {
    pub async fn start(broker_port: u16) -> Self {
        use std::sync::atomic::AtomicBool;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let (cuts, _) = tokio::sync::watch::channel(0u64);
        let (open_in_loop, cuts_in_loop) = (Arc::clone(&open), cuts.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !open_in_loop.load(Relaxed) {
                    continue; // dropped: refused
                }
                let mut cut = cuts_in_loop.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", broker_port)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self { port, open, cuts }
    }

    /// Closes every relayed connection and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, Relaxed);
        self.cuts.send_modify(|n| *n += 1);
    }

    pub fn restore(&self) {
        self.open.store(true, Relaxed);
    }
}

/// Polls `f` until it returns true or `limit` passes.
/// The embedded broker (rumqttd) on a free loopback port, given a moment
/// to start listening; returns the port.
pub async fn start_embedded_broker() -> u16 {
    let port = lab::broker::free_port();
    lab::broker::start_embedded(([127, 0, 0, 1], port).into());
    tokio::time::sleep(Duration::from_millis(200)).await;
    port
}

pub async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

/// The oracle: the archive holds exactly the published readings, once each,
/// with their exact values, and warmed-up rows carry scores.
pub fn assert_archive_matches(archive: &Archived, published: &Published) {
    let missing: Vec<_> = published
        .readings
        .keys()
        .filter(|k| !archive.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "readings missing from the archive, e.g. {missing:?}"
    );
    let extra: Vec<_> = archive
        .keys()
        .filter(|k| !published.readings.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        extra.is_empty(),
        "rows that were never published, e.g. {extra:?}"
    );
    let doubled: Vec<_> = archive
        .iter()
        .filter(|(_, rows)| rows.len() > 1)
        .take(5)
        .collect();
    assert!(
        doubled.is_empty(),
        "rows archived more than once, e.g. {doubled:?}"
    );
    for (key, rows) in archive {
        assert_eq!(rows[0].value, published.readings[key], "value of {key:?}");
        match rows[0].status.as_str() {
            // Normalisation not learned yet (no score), or scored but the
            // series' own score history is still too short to judge it.
            "warming_up" => assert!(rows[0].score.is_none_or(|s| s.is_finite() && s >= 0.0)),
            "ok" | "anomalous" => assert!(rows[0].score.is_some_and(|s| s.is_finite() && s >= 0.0)),
            // Behind newer readings of its series (a spooled backlog drained
            // after live data): archived without a score.
            "late" => assert!(rows[0].score.is_none()),
            other => panic!("unexpected status {other} for {key:?}"),
        }
    }
}

/// Detection: every injected spike is `anomalous`. Holds when one hub sees a
/// device's whole series (see the shared-subscription test for when not).
pub fn assert_spikes_flagged(archive: &Archived, published: &Published) {
    for spike in &published.spikes {
        let around: Vec<String> = archive
            .range(
                (spike.0.clone(), spike.1.clone(), spike.2 - 300_000_000)
                    ..(spike.0.clone(), spike.1.clone(), spike.2 + 180_000_000),
            )
            .map(|(k, rows)| {
                format!(
                    "{} {:.2} {} {:?}",
                    k.2, rows[0].value, rows[0].status, rows[0].score
                )
            })
            .collect();
        assert_eq!(
            archive[spike][0].status, "anomalous",
            "injected spike {spike:?} was not flagged: {around:#?}"
        );
    }
}

/// A child process that is killed if the test fails before stopping it.
#[derive(Debug)]
pub struct Process(pub Child);

impl Process {
    pub fn spawn(binary: &Path, args: &[&str], log: &Path) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(binary)
            .args(args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        Self(child)
    }

    /// SIGTERM, then wait: a graceful stop that must drain everything.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        self.0.wait().unwrap()
    }

    /// SIGKILL, then wait: the process gets no chance to clean up.
    pub fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

pub use crate::edge_binary;
