//! The hub is killed with SIGKILL again and again while a gateway keeps
//! sending; every batch it acknowledged must end up in the archive exactly
//! once, and readers must never see a temporary file.
//!
//! Files are rotated every few hundred milliseconds and at 64 KiB, and closed
//! partitions are compacted every 50 ms, so kills land during Parquet
//! commits and compactions as well as during WAL appends. Set
//! `CRASH_TEST_ARCHIVE=<dir>` to keep the archive for an independent reader
//! (CI opens it with pyarrow).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow_array::{Array, Float64Array, StringArray, UInt64Array};
use inference_hub::archive::{self, Table};
use schemas::ReadingColumns;

const ROWS_PER_BATCH: usize = 40;
const BATCHES: u64 = 300;
const KILLS: usize = 20;

fn envelope(seq: u64) -> Vec<u8> {
    let mut cols = ReadingColumns::default();
    for r in 0..ROWS_PER_BATCH {
        // Batches take turns among 8 hour partitions, so every partition
        // collects many small files over a run (compaction material).
        let hour = (seq % 8) as i64;
        let ts =
            1_767_225_600_000_000 + (hour * 3600 + (seq / 8) as i64 * 60 + r as i64) * 1_000_000;
        cols.push(
            &format!("dev{}", r % 4),
            "load",
            ts,
            seq as f64 * 1000.0 + r as f64,
        );
    }
    schemas::envelope::encode("crash-gw", 7, seq, &cols.finish())
        .unwrap()
        .1
}

fn start_hub(config: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(iot_testkit::hub_binary())
        .args(["--config", config.to_str().unwrap(), "run"])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

async fn wait_healthy(client: &reqwest::Client, http: &str) {
    for _ in 0..400 {
        if client
            .get(format!("http://{http}/health"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("hub did not become healthy");
}

/// Posts one batch; Some(status) when the hub answered.
async fn post(client: &reqwest::Client, http: &str, seq: u64) -> Option<String> {
    let resp = client
        .post(format!("http://{http}/v1/batches"))
        .body(envelope(seq))
        .send()
        .await
        .ok()?;
    let body: serde_json::Value = serde_json::from_slice(&resp.bytes().await.ok()?).ok()?;
    body["status"].as_str().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_killed_repeatedly_archives_every_acknowledged_batch_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = match std::env::var_os("CRASH_TEST_ARCHIVE") {
        Some(keep) => PathBuf::from(keep),
        None => dir.path().join("hub"),
    };
    let _ = std::fs::remove_dir_all(&data);
    let http = format!("127.0.0.1:{}", lab::broker::free_port());
    let config = dir.path().join("hub.toml");
    std::fs::write(
        &config,
        format!(
            "hub-id = \"crash\"\ndata-dir = {:?}\n[mqtt]\nenabled = false\n[http]\nlisten = \"{http}\"\n\
             [intake]\nwal-segment-bytes = 1048576\n[archive]\ntarget-file-bytes = 65536\nmax-file-age = \"300ms\"\nrow-group-rows = 1024\ncompaction-grace = \"0s\"\ncompaction-interval = \"50ms\"\n\
             [scoring]\nmodel-dir = {:?}\nwarmup-readings = 20\n",
            data.display().to_string(),
            iot_testkit::models("novelty")
        ),
    )
    .unwrap();
    let log = dir.path().join("hub.log");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut rng = fastrand::Rng::with_seed(20261126);

    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    let mut next = 1u64;
    for kill in 0..=KILLS {
        let mut hub = start_hub(&config, &log);
        wait_healthy(&client, &http).await;
        // Resend what was never answered (like a gateway), then keep going.
        let run_for = Duration::from_millis(rng.u64(150..900));
        let until = Instant::now() + run_for;
        let pending: Vec<u64> = (1..next).filter(|s| !acked.contains_key(s)).collect();
        for seq in pending {
            if let Some(status) = post(&client, &http, seq).await {
                acked.insert(seq, status);
            }
        }
        while next <= BATCHES && (kill == KILLS || Instant::now() < until) {
            if let Some(status) = post(&client, &http, next).await {
                acked.insert(next, status);
            }
            next += 1;
        }
        if kill < KILLS {
            hub.kill().unwrap(); // SIGKILL
            hub.wait().unwrap();
        } else {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(hub.id().to_string())
                .status();
            assert!(
                hub.wait().unwrap().success(),
                "final graceful stop failed: {}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
    }
    assert_eq!(
        acked.len() as u64,
        BATCHES,
        "every batch was eventually acknowledged"
    );
    assert!(
        acked.values().all(|s| s == "durable" || s == "duplicate"),
        "{acked:?}"
    );

    // Readers never see temporary files: everything not hidden is a
    // Parquet file or the tables' log, and every file the log holds is
    // complete (read below).
    let root = data.join("archive");
    for file in archive::walk_files(&root).unwrap() {
        let name = file.file_name().unwrap().to_str().unwrap();
        let in_log = file.parent().unwrap().ends_with("_delta_log");
        assert!(
            name.starts_with('.') || name.ends_with(".parquet") || in_log,
            "visible non-Parquet file {name}"
        );
    }

    let mut seen: BTreeMap<(u64, i64), usize> = BTreeMap::new();
    for batch in archive::read_table(&root, Table::Scored).unwrap() {
        let seq = batch
            .column_by_name("seq")
            .unwrap()
            .as_any()
            .downcast_ref::<UInt64Array>()
            .unwrap();
        let value = batch
            .column_by_name("value")
            .unwrap()
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        let gateway = batch
            .column_by_name("gateway")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        for i in 0..batch.num_rows() {
            assert_eq!(gateway.value(i), "crash-gw");
            *seen
                .entry((seq.value(i), value.value(i) as i64))
                .or_default() += 1;
        }
    }
    let doubled: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(doubled.is_empty(), "rows archived twice, e.g. {doubled:?}");
    for seq in 1..=BATCHES {
        for r in 0..ROWS_PER_BATCH {
            let key = (seq, seq as i64 * 1000 + r as i64);
            assert!(
                seen.contains_key(&key),
                "acknowledged row {key:?} is missing from the archive"
            );
        }
    }
    assert_eq!(seen.len() as u64, BATCHES * ROWS_PER_BATCH as u64);
    let files = archive::committed_files(&root, Table::Scored)
        .unwrap()
        .len();
    assert!(files > 1, "expected several committed files, got {files}");
    let log_text = std::fs::read_to_string(&log).unwrap();
    let compactions = log_text.matches("compacted a closed partition").count();
    assert!(
        compactions > 0,
        "no compaction ran, so no kill could land in one"
    );
    println!(
        "{KILLS} kills; {files} scored files; {compactions} compactions logged; {} rows exactly once",
        seen.len()
    );
}
