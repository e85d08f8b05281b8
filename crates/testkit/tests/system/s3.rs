//! The archive on S3-compatible object storage: a real S3 API server (moto's
//! `moto_server` from PyPI, started by this test on loopback), the hub
//! archiving to it, and the result read back through the S3 API.
//!
//! Run by `.ci/run` (`cargo test -p iot-testkit --test system -- --ignored s3`).

use std::collections::BTreeSet;
use std::time::Duration;

use arrow_array::{Array, TimestampMicrosecondArray, UInt64Array};
use bytes::Bytes;
use futures_util::TryStreamExt;
use inference_hub::archive::Table;
use inference_hub::archive::s3::S3Settings;
use inference_hub::archive::tables::ArchiveTables;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;

use crate::harness::Process;

const ROWS: usize = 50;

fn envelope(seq: u64) -> Vec<u8> {
    let mut cols = schemas::ReadingColumns::default();
    for r in 0..ROWS {
        let ts = 1_767_225_600_000_000 + (seq as i64 * 100 + r as i64) * 1_000_000;
        cols.push(
            &format!("dev{}", r % 5),
            "load",
            ts,
            seq as f64 + r as f64 / 100.0,
        );
    }
    schemas::envelope::encode("gw-s3", 1, seq, &cols.finish())
        .unwrap()
        .1
}

/// moto's S3 server on a free loopback port with a `telemetry` bucket, and
/// settings that archive under `archive/` in it.
async fn start_moto(dir: &std::path::Path) -> (Process, S3Settings) {
    let port = lab::broker::free_port();
    let moto = Process::spawn(
        std::path::Path::new("moto_server"),
        &["-H", "127.0.0.1", "-p", &port.to_string()],
        &dir.join("moto.log"),
    );
    let endpoint = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..200 {
        if let Ok(r) = client.put(format!("{endpoint}/telemetry")).send().await
            && r.status().is_success()
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "moto_server did not start or refused the bucket");
    let s3 = S3Settings {
        bucket: "telemetry".into(),
        prefix: "archive".into(),
        endpoint: Some(endpoint),
        region: "us-east-1".into(),
        allow_http: true,
        access_key_id: Some("test".into()),
        secret_access_key: Some("test".into()),
        upload: Default::default(),
    };
    (moto, s3)
}

async fn post_all(hub: &inference_hub::HubHandle, seqs: impl Iterator<Item = u64>) {
    let client = reqwest::Client::new();
    for seq in seqs {
        let resp = client
            .post(format!("http://{}/v1/batches", hub.http_addr))
            .body(envelope(seq))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "batch {seq}: {}", resp.status());
    }
}

/// The keys of the files the newest version of the bucket's scored table
/// holds (read through its Delta log, on a thread of its own).
fn scored_in_log(s3: &S3Settings) -> Vec<String> {
    let s3 = s3.clone();
    std::thread::spawn(move || {
        let tables = ArchiveTables::open_bucket(&s3).unwrap();
        tables
            .files(Table::Scored)
            .unwrap()
            .iter()
            .map(|f| tables.object_key(Table::Scored, &f.path).to_string())
            .collect()
    })
    .join()
    .unwrap()
}

/// Every (seq, ts) the bucket's scored table holds, the rows, and the files.
async fn read_bucket(s3: &S3Settings) -> (usize, BTreeSet<(u64, i64)>, usize) {
    let objects = scored_in_log(s3);
    assert!(
        objects.iter().all(|o| o.ends_with(".parquet")),
        "{objects:?}"
    );
    let (rows, keys) = read_objects(s3, &objects).await;
    (rows, keys, objects.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto_server (pip install 'moto[server]'); run by .ci/run"]
async fn s3_archive_holds_every_batch_once_across_a_restart_and_reads_back_through_the_s3_api() {
    let dir = tempfile::tempdir().unwrap();
    let (_moto, s3) = start_moto(dir.path()).await;
    let config = || {
        let mut cfg = iot_testkit::hub_config("s3hub", &dir.path().join("hub"));
        cfg.mqtt.enabled = false;
        cfg.archive.max_file_age = Duration::from_millis(200);
        cfg.archive.s3 = Some(s3.clone());
        cfg
    };

    let hub = inference_hub::start(config()).await.unwrap();
    post_all(&hub, 1..=40).await;
    hub.shutdown().await;
    let (rows, keys, objects) = read_bucket(&s3).await;
    assert_eq!(rows, 40 * ROWS);
    assert_eq!(keys.len(), rows, "no row twice");
    assert!(objects >= 1);
    let staged =
        inference_hub::archive::staged_files(&dir.path().join("hub/archive"), Table::Scored)
            .unwrap();
    assert!(
        staged.is_empty(),
        "uploaded files are removed locally: {staged:?}"
    );

    // A restart replays the WAL; what the bucket holds is not archived again.
    // Resent batches are duplicates; new ones land.
    let hub = inference_hub::start(config()).await.unwrap();
    post_all(&hub, 30..=55).await;
    assert_eq!(
        hub.stats
            .batches_duplicate
            .load(std::sync::atomic::Ordering::Relaxed),
        11
    );
    hub.shutdown().await;
    let (rows, keys, _) = read_bucket(&s3).await;
    assert_eq!(rows, 55 * ROWS, "each batch exactly once in the bucket");
    assert_eq!(keys.len(), rows);

    // The hub's own API reads what only the bucket holds now.
    let hub = inference_hub::start(config()).await.unwrap();
    assert!(
        inference_hub::archive::staged_files(&dir.path().join("hub/archive"), Table::Scored)
            .unwrap()
            .is_empty()
    );
    let client = reqwest::Client::new();
    let text = client
        .get(format!(
            "http://{}/v1/query?table=scored&from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z&format=jsonl&columns=seq,ts",
            hub.http_addr
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        text.lines().count(),
        55 * ROWS,
        "/v1/query reads the bucket"
    );
    let readings: serde_json::Value = serde_json::from_str(
        &client
            .get(format!(
                "http://{}/v1/devices/dev0/metrics/load/readings?from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z",
                hub.http_addr
            ))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    let points = readings["points"].as_array().map_or(0, Vec::len);
    assert_eq!(
        points,
        55 * ROWS / 5,
        "the readings endpoint reads the bucket: {readings}"
    );
    let answer: serde_json::Value = serde_json::from_str(
        &client
            .get(format!(
                "http://{}/v1/sql?q=SELECT%20count(*)%20AS%20n,%20count(DISTINCT%20seq)%20AS%20batches%20FROM%20scored",
                hub.http_addr
            ))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        answer,
        serde_json::json!([{"n": 55 * ROWS, "batches": 55}]),
        "/v1/sql reads the bucket"
    );
    hub.shutdown().await;

    // The tools read what only the bucket holds: rescore (twice: the second
    // run replaces the first) commits its output to the bucket, and replay
    // reads the scored table.
    let only_bucket = tempfile::tempdir().unwrap();
    let reader =
        inference_hub::archive::reader::ArchiveReader::open(only_bucket.path(), Some(&s3)).unwrap();
    let rows_of = |table: Table| {
        let mut rows = 0;
        let everything = inference_hub::archive::prune::Wanted::everything();
        for file in reader.files(table, i64::MIN..i64::MAX).unwrap() {
            assert!(matches!(
                file,
                inference_hub::archive::reader::ArchiveFile::Object(_)
            ));
            for batch in reader.read(&file, &everything).unwrap() {
                rows += batch.unwrap().num_rows();
            }
        }
        rows
    };
    for _ in 0..2 {
        let opts = lab::rescore::RescoreOptions {
            archive: dir.path().join("hub/archive"),
            bucket: Some(s3.clone()),
            model_dir: inference_hub::config::shipped_model("novelty"),
            from_us: None,
            to_us: None,
            warmup_readings: 20,
        };
        let report = tokio::task::spawn_blocking(move || lab::rescore::run(&opts, |_, _, _| {}))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            report.readings,
            (55 * ROWS) as u64,
            "rescore reads the bucket"
        );
        let rows = tokio::task::block_in_place(|| rows_of(Table::Rescored));
        assert_eq!(rows, 55 * ROWS, "the rescored rows are in the bucket, once");
    }
    let recordings = tokio::task::block_in_place(|| {
        lab::replay_parquet::read_archive(&reader, Table::Scored).unwrap()
    });
    let replayed: usize = recordings
        .iter()
        .map(|r| match r {
            edge_agent::replay::Recording::Table { metrics, rows, .. } => {
                metrics.len() * rows.len()
            }
            _ => 0,
        })
        .sum();
    assert_eq!(replayed, 55 * ROWS, "replay reads the bucket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto_server (pip install 'moto[server]'); run by .ci/run"]
async fn s3_two_hubs_that_both_made_a_batch_durable_leave_it_in_the_bucket_once() {
    let dir = tempfile::tempdir().unwrap();
    let (_moto, s3) = start_moto(dir.path()).await;
    let config = |id: &str| {
        let mut cfg = iot_testkit::hub_config(id, &dir.path().join(id));
        cfg.mqtt.enabled = false;
        cfg.archive.max_file_age = Duration::from_millis(100);
        cfg.archive.s3 = Some(s3.clone());
        cfg
    };
    let a = inference_hub::start(config("hub_a")).await.unwrap();
    let b = inference_hub::start(config("hub_b")).await.unwrap();
    // 21..=40 reach both hubs (a redelivery after a lost answer), at the
    // same time, so both upload into the same partitions concurrently.
    tokio::join!(post_all(&a, 1..=40), post_all(&b, 21..=60));
    tokio::join!(a.shutdown(), b.shutdown());
    let (rows, keys, _) = read_bucket(&s3).await;
    assert_eq!(keys.len(), 60 * ROWS, "every batch in the bucket");
    assert_eq!(
        rows,
        keys.len(),
        "a batch both hubs held is in the bucket once"
    );
    let store = s3.connect().unwrap();
    let all: Vec<object_store::ObjectMeta> = store.list(None).try_collect().await.unwrap();
    assert!(
        all.iter()
            .all(|o| !o.location.to_string().ends_with(".commit.lock")),
        "no lock objects: the log's conditional versions are the only coordination"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto_server (pip install 'moto[server]'); run by .ci/run"]
async fn s3_retention_removes_only_this_hubs_files_and_the_vacuum_deletes_them_later() {
    let dir = tempfile::tempdir().unwrap();
    let (_moto, s3) = start_moto(dir.path()).await;
    let config = |id: &str, retention: Option<Duration>, vacuum_after: Duration| {
        let mut cfg = iot_testkit::hub_config(id, &dir.path().join(id));
        cfg.mqtt.enabled = false;
        cfg.archive.max_file_age = Duration::from_millis(100);
        cfg.archive.compaction_interval = Duration::from_millis(100);
        cfg.archive.retention = retention;
        cfg.archive.vacuum_after = vacuum_after;
        cfg.archive.s3 = Some(s3.clone());
        cfg
    };
    let hour = Duration::from_secs(3600);
    let in_log = |hub: &str| {
        scored_in_log(&s3)
            .iter()
            .filter(|k| k.contains(&format!("/hub={hub}/")))
            .count()
    };
    let store = s3.connect().unwrap();
    let in_bucket = || async {
        let listed: Vec<object_store::ObjectMeta> = store
            .list(Some(&ObjectPath::from("archive/scored")))
            .try_collect()
            .await
            .unwrap();
        listed
            .iter()
            .filter(|o| o.location.to_string().contains("/hub=keeper/"))
            .count()
    };
    // Another hub's readings, and this hub's, all of 2026-01-01.
    let other = inference_hub::start(config("other", None, hour))
        .await
        .unwrap();
    post_all(&other, 1..=3).await;
    other.shutdown().await;
    let hub = inference_hub::start(config("keeper", None, hour))
        .await
        .unwrap();
    post_all(&hub, 4..=8).await;
    hub.shutdown().await;
    let kept = in_bucket().await;
    assert!(in_log("keeper") > 0 && kept > 0);
    // With a one-day retention the hub removes its files from the table
    // (one version); the objects stay for readers of older versions...
    let hub = inference_hub::start(config("keeper", Some(24 * hour), hour))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while in_log("keeper") > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "retention never ran on the bucket"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        hub.stats
            .partitions_expired
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    hub.shutdown().await;
    assert_eq!(
        in_bucket().await,
        kept,
        "kept until the vacuum window passed"
    );
    assert!(
        in_log("other") > 0,
        "another hub's files are left to that hub"
    );
    // ...and once they are older than the vacuum's window, they go.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let hub = inference_hub::start(config("keeper", Some(24 * hour), Duration::from_secs(1)))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while in_bucket().await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the vacuum never deleted the removed files"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    hub.shutdown().await;
    let (rows, keys, _) = read_bucket(&s3).await;
    assert_eq!(
        (rows, keys.len()),
        (3 * ROWS, 3 * ROWS),
        "the other hub's rows, whole"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto_server (pip install 'moto[server]'); run by .ci/run"]
async fn s3_down_at_shutdown_leaves_files_local_instead_of_holding_the_hub() {
    let dir = tempfile::tempdir().unwrap();
    let (moto, s3) = start_moto(dir.path()).await;
    let mut cfg = iot_testkit::hub_config("stopper", &dir.path().join("stopper"));
    cfg.mqtt.enabled = false;
    cfg.archive.s3 = Some(s3.clone());
    let root = cfg.archive_root();
    let hub = inference_hub::start(cfg).await.unwrap();
    post_all(&hub, 1..=5).await;
    drop(moto); // the store goes away with files still to upload
    tokio::time::timeout(Duration::from_secs(60), hub.shutdown())
        .await
        .expect("the hub stops although the store is down");
    let staged = inference_hub::archive::staged_files(&root, Table::Scored).unwrap();
    assert!(
        !staged.is_empty(),
        "the files wait locally for the next start"
    );
}

/// The keys of the scored table's data objects in the bucket (every hub's,
/// whether the log holds them or not).
async fn scored_objects(s3: &S3Settings) -> Vec<String> {
    let store = s3.connect().unwrap();
    let listed: Vec<object_store::ObjectMeta> = store
        .list(Some(&ObjectPath::from("archive/scored")))
        .try_collect()
        .await
        .unwrap();
    listed
        .into_iter()
        .map(|o| o.location.to_string())
        .filter(|k| k.ends_with(".parquet"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto_server (pip install 'moto[server]'); run by .ci/run"]
async fn s3_upload_when_closed_commits_one_merged_file_per_partition_and_a_put_cut_off_before_its_commit_is_never_read_and_vacuumed()
 {
    use inference_hub::archive::s3::UploadWhen;
    let dir = tempfile::tempdir().unwrap();
    let (_moto, mut s3) = start_moto(dir.path()).await;
    s3.upload = UploadWhen::WhenClosed;
    let config = |grace: Duration| {
        let mut cfg = iot_testkit::hub_config("closer", &dir.path().join("closer"));
        cfg.mqtt.enabled = false;
        cfg.archive.max_file_age = Duration::from_millis(100);
        cfg.archive.compaction_interval = Duration::from_millis(100);
        cfg.archive.compaction_grace = grace;
        cfg.archive.s3 = Some(s3.clone());
        cfg
    };
    let root = dir.path().join("closer/archive");
    let local = || inference_hub::archive::staged_files(&root, Table::Scored).unwrap();

    // 1. Partitions that are not closed yet (a grace of ten years) stay
    // local, in several small files each (40 batches span two event hours).
    let hub = inference_hub::start(config(Duration::from_secs(10 * 365 * 86_400)))
        .await
        .unwrap();
    for part in 0..4u64 {
        post_all(&hub, part * 10 + 1..=part * 10 + 10).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    hub.shutdown().await;
    assert!(
        scored_objects(&s3).await.is_empty(),
        "nothing uploaded before the partitions close"
    );
    let small_files = local();
    assert!(
        small_files.len() >= 4,
        "several files per partition: {small_files:?}"
    );

    // 2. A crash cut one upload short after its PUT, before its commit:
    // the bucket holds the object, no version of the table does, and the
    // local copy is still there.
    let cut = &small_files[0];
    let key = s3.key(cut.strip_prefix(&root).unwrap());
    let store = s3.connect().unwrap();
    store
        .put(&key, Bytes::from(std::fs::read(cut).unwrap()).into())
        .await
        .unwrap();

    // 3. With the partitions closed, the hub merges each partition's files
    // (the cut one too) into one, puts it in the bucket and commits it.
    let hub = inference_hub::start(config(Duration::ZERO)).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !local().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "closed partitions never went up: {:?}",
            local()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    hub.shutdown().await;
    let committed = scored_in_log(&s3);
    let partitions: BTreeSet<&str> = committed
        .iter()
        .map(|o| o.rsplit_once("/hub=").unwrap().0)
        .collect();
    assert_eq!(partitions.len(), 2, "{committed:?}");
    assert_eq!(
        committed.len(),
        partitions.len(),
        "one merged file per partition: {committed:?}"
    );
    let objects = scored_objects(&s3).await;
    assert_eq!(
        objects.len(),
        committed.len() + 1,
        "the cut-off put is in the bucket but in no version: {objects:?}"
    );
    let (rows, keys, _) = read_bucket(&s3).await;
    assert_eq!(keys.len(), 40 * ROWS, "every batch in the table");
    assert_eq!(rows, keys.len(), "no row twice");

    // 4. The vacuum deletes it (here with its window already over), and only it.
    let vacuumed = {
        let s3 = s3.clone();
        std::thread::spawn(move || {
            let older_than = chrono::Utc::now().timestamp_millis() + 60_000;
            ArchiveTables::open_bucket(&s3)
                .unwrap()
                .vacuum(older_than)
                .unwrap()
        })
        .join()
        .unwrap()
    };
    assert_eq!(vacuumed, 1);
    assert_eq!(scored_objects(&s3).await.len(), committed.len());
    assert_eq!(read_bucket(&s3).await.0, 40 * ROWS);
}

/// Every (seq, ts) of the objects `keys` and their rows, read as a reader
/// holding the version that listed them reads them (and as the hub reads a
/// file: batch numbers unsigned again).
async fn read_objects(s3: &S3Settings, keys: &[String]) -> (usize, BTreeSet<(u64, i64)>) {
    let store = s3.connect().unwrap();
    let (mut rows, mut seen) = (0, BTreeSet::new());
    for key in keys {
        let bytes = store
            .get(&ObjectPath::from(key.as_str()))
            .await
            .unwrap_or_else(|e| panic!("{key} of the reader's version: {e}"))
            .bytes()
            .await
            .unwrap();
        for batch in inference_hub::archive::read_parquet_bytes(bytes).unwrap() {
            let seq = batch.column_by_name("seq").unwrap();
            let seq = seq.as_any().downcast_ref::<UInt64Array>().unwrap();
            let ts = batch.column_by_name("ts").unwrap();
            let ts = ts
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .unwrap();
            for i in 0..batch.num_rows() {
                seen.insert((seq.value(i), ts.value(i)));
            }
            rows += batch.num_rows();
        }
    }
    (rows, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto_server (pip install 'moto[server]'); run by .ci/run"]
async fn s3_compaction_in_the_bucket_merges_uploaded_files_while_readers_of_old_and_new_versions_stay_complete()
 {
    let dir = tempfile::tempdir().unwrap();
    let (_moto, s3) = start_moto(dir.path()).await;
    let config = |grace: Duration| {
        let mut cfg = iot_testkit::hub_config("merger", &dir.path().join("merger"));
        cfg.mqtt.enabled = false;
        cfg.archive.max_file_age = Duration::from_millis(100);
        cfg.archive.compaction_interval = Duration::from_millis(100);
        cfg.archive.compaction_grace = grace;
        cfg.archive.s3 = Some(s3.clone());
        cfg
    };
    let root = dir.path().join("merger/archive");
    let local = || inference_hub::archive::staged_files(&root, Table::Scored).unwrap();

    // 1. Uploads on commit, partitions not closed yet: several small files
    // per event hour go to the bucket as they are committed (batches 1-35
    // are in the first hour, 36-40 in the second).
    let hub = inference_hub::start(config(Duration::from_secs(10 * 365 * 86_400)))
        .await
        .unwrap();
    for part in [1..=10, 11..=20, 21..=35, 36..=37, 38..=40] {
        post_all(&hub, part).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    hub.shutdown().await;
    assert!(local().is_empty(), "every file uploaded: {:?}", local());
    let small = scored_in_log(&s3);
    let hours = |keys: &[String]| -> BTreeSet<String> {
        keys.iter()
            .map(|k| k.rsplit_once("/hub=").unwrap().0.to_owned())
            .collect()
    };
    assert_eq!(hours(&small).len(), 2, "{small:?}");
    for hour in hours(&small) {
        let files = small.iter().filter(|k| k.starts_with(&hour)).count();
        assert!(files >= 2, "several files in {hour}: {small:?}");
    }
    let expected = read_objects(&s3, &small).await.1;
    assert_eq!(expected.len(), 40 * ROWS);

    // 2. With the partitions closed the hub merges them in the bucket, while
    // one reader keeps reading the version it listed before (the small
    // files) and another reads the newest version over and over.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let old_reader = {
        let (s3, small, stop) = (s3.clone(), small.clone(), std::sync::Arc::clone(&stop));
        tokio::spawn(async move {
            let mut passes = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (rows, keys) = read_objects(&s3, &small).await;
                assert_eq!((rows, keys.len()), (40 * ROWS, 40 * ROWS), "old version");
                passes += 1;
            }
            passes
        })
    };
    let new_reader = {
        let (s3, stop) = (s3.clone(), std::sync::Arc::clone(&stop));
        tokio::spawn(async move {
            let mut versions_seen = BTreeSet::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (rows, keys, files) = read_bucket(&s3).await;
                assert_eq!(
                    (rows, keys.len()),
                    (40 * ROWS, 40 * ROWS),
                    "a version with {files} files is not complete or holds a row twice"
                );
                versions_seen.insert(files);
            }
            versions_seen
        })
    };
    let hub = inference_hub::start(config(Duration::ZERO)).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let now = scored_in_log(&s3);
        if now.len() == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the bucket's partitions were never merged: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Both readers go on for a while after the swap.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let passes = old_reader.await.unwrap();
    let versions_seen = new_reader.await.unwrap();
    assert!(passes >= 2, "the old version was read {passes} times");
    assert!(
        versions_seen.contains(&2),
        "the newest-version reader saw the merged version: {versions_seen:?}"
    );
    let merged = scored_in_log(&s3);
    assert_eq!(
        hours(&merged),
        hours(&small),
        "one file per partition: {merged:?}"
    );
    assert!(merged.iter().all(|k| !small.contains(k)), "{merged:?}");
    let (rows, keys) = read_objects(&s3, &merged).await;
    assert_eq!((rows, &keys), (40 * ROWS, &expected));
    let metrics = reqwest::get(format!("http://{}/metrics", hub.http_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let compactions: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hub_compactions_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no hub_compactions_total in {metrics}"));
    assert!(
        compactions >= 2,
        "the merges are counted (scored: 2): {compactions}"
    );
    hub.shutdown().await;

    // 3. The vacuum deletes the small files once its window is over, and
    // nothing of the newest version.
    let vacuumed = {
        let s3 = s3.clone();
        std::thread::spawn(move || {
            let older_than = chrono::Utc::now().timestamp_millis() + 60_000;
            ArchiveTables::open_bucket(&s3)
                .unwrap()
                .vacuum(older_than)
                .unwrap()
        })
        .join()
        .unwrap()
    };
    assert_eq!(vacuumed, small.len());
    assert_eq!(scored_objects(&s3).await.len(), 2);
    assert_eq!(read_bucket(&s3).await.1, expected);
}

/// An HTTP relay in front of `upstream` that drops the `If-None-Match` and
/// `If-Match` headers of every request, as some S3-compatible servers
/// silently ignore them. Requests are read head by head (bodies by their
/// `Content-Length`, which is how object_store sends them); answers are
/// passed through as they come.
async fn condition_stripping_relay(upstream: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                });
                let mut pending = Vec::new();
                let mut chunk = [0u8; 16 * 1024];
                loop {
                    let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match client_read.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => pending.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&pending[..end]).into_owned();
                    let mut body_len = 0usize;
                    let mut kept = Vec::new();
                    for line in head.split("\r\n") {
                        let lower = line.to_ascii_lowercase();
                        if lower.starts_with("if-none-match:") || lower.starts_with("if-match:") {
                            continue;
                        }
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            body_len = v.trim().parse().unwrap_or(0);
                        }
                        kept.push(line);
                    }
                    let mut request = kept.join("\r\n").into_bytes();
                    request.extend_from_slice(b"\r\n\r\n");
                    pending.drain(..end + 4);
                    while pending.len() < body_len {
                        match client_read.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => pending.extend_from_slice(&chunk[..n]),
                        }
                    }
                    request.extend(pending.drain(..body_len));
                    if server_write.write_all(&request).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto_server (pip install 'moto[server]'); run by .ci/run"]
async fn s3_a_store_that_ignores_conditional_writes_is_refused_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let (_moto, s3) = start_moto(dir.path()).await;
    let upstream = s3.endpoint.clone().unwrap();
    let relayed = S3Settings {
        endpoint: Some(
            condition_stripping_relay(upstream.trim_start_matches("http://").to_owned()).await,
        ),
        ..s3.clone()
    };
    let config = |s3: &S3Settings| {
        let mut cfg = iot_testkit::hub_config("s3hub", &dir.path().join("hub"));
        cfg.mqtt.enabled = false;
        cfg.archive.s3 = Some(s3.clone());
        cfg
    };
    let refused = inference_hub::start(config(&relayed))
        .await
        .expect_err("a hub must not start on a store that ignores If-None-Match / If-Match");
    let mut text = refused.to_string();
    let mut source = std::error::Error::source(&refused);
    while let Some(e) = source {
        text += &format!(": {e}");
        source = e.source();
    }
    assert!(
        text.contains("does not honour conditional writes") && text.contains("If-None-Match"),
        "{text}"
    );
    // The same bucket reached directly honours them: the hub starts.
    let hub = inference_hub::start(config(&s3)).await.unwrap();
    post_all(&hub, 1..=3).await;
    hub.shutdown().await;
    let (rows, _, _) = read_bucket(&s3).await;
    assert_eq!(rows, 3 * ROWS);
}

/// Detector state shared through the bucket (`scoring.state-sharing` with
/// `[archive.s3]`): hub A writes its gateway's state there at its graceful
/// stop, hub B (another data directory, the same bucket) takes it over at
/// the gateway's first batch; a damaged object is refused and counted, and
/// the series then learn anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto_server (pip install 'moto[server]'); run by .ci/run"]
async fn s3_shared_detector_state_moves_a_gateway_between_hubs() {
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().unwrap();
    let (_moto, s3) = start_moto(dir.path()).await;
    let config = |id: &str| {
        let mut cfg = iot_testkit::hub_config(id, &dir.path().join(id));
        cfg.mqtt.enabled = false;
        cfg.archive.max_file_age = Duration::from_millis(200);
        cfg.archive.s3 = Some(s3.clone());
        cfg.scoring.state_sharing = true;
        cfg
    };
    let hub = inference_hub::start(config("hub-a")).await.unwrap();
    post_all(&hub, 1..=20).await;
    hub.shutdown().await;
    let store = s3.connect().unwrap();
    let key = ObjectPath::from("archive/detector-state/gateway=gw-s3.bin");
    let object: Bytes = store.get(&key).await.unwrap().bytes().await.unwrap();
    assert!(object.starts_with(b"IOTSHARE"));

    let hub = inference_hub::start(config("hub-b")).await.unwrap();
    post_all(&hub, 21..=25).await;
    let stats = std::sync::Arc::clone(&hub.stats);
    hub.shutdown().await;
    assert_eq!(
        stats.shared_state_taken.load(Relaxed),
        5,
        "dev0..dev4 taken over"
    );
    assert_eq!(stats.shared_state_failures.load(Relaxed), 0);

    // A flipped byte: refused, counted, the series learn anew.
    let mut damaged = store
        .get(&key)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    store.put(&key, damaged.into()).await.unwrap();
    let hub = inference_hub::start(config("hub-c")).await.unwrap();
    post_all(&hub, 26..=30).await;
    let stats = std::sync::Arc::clone(&hub.stats);
    hub.shutdown().await;
    assert_eq!(stats.shared_state_taken.load(Relaxed), 0);
    assert_eq!(stats.shared_state_failures.load(Relaxed), 1);
}

/// A small Parquet object in the bucket at `key` (table-relative `path`
/// below `table_key`), described as the Delta log records it.
async fn put_data_file(
    store: &std::sync::Arc<dyn object_store::ObjectStore>,
    table_key: &str,
    name: &str,
    rows: usize,
) -> iot_delta::DataFile {
    use arrow_array::{Float64Array, RecordBatch, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    let schema = std::sync::Arc::new(Schema::new(vec![
        Field::new("device", DataType::Utf8, false),
        Field::new("value", DataType::Float64, true),
    ]));
    let batch = RecordBatch::try_new(
        std::sync::Arc::clone(&schema),
        vec![
            std::sync::Arc::new(StringArray::from_iter_values(
                (0..rows).map(|i| format!("{name}{i}")),
            )),
            std::sync::Arc::new(Float64Array::from_iter_values((0..rows).map(|i| i as f64))),
        ],
    )
    .unwrap();
    let mut bytes = Vec::new();
    let mut writer = parquet::arrow::ArrowWriter::try_new(&mut bytes, schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    let path = format!("hour=10/{name}.parquet");
    let size = bytes.len() as u64;
    store
        .put(
            &ObjectPath::from(format!("{table_key}/{path}")),
            Bytes::from(bytes).into(),
        )
        .await
        .unwrap();
    iot_delta::DataFile {
        path,
        partition: [("hour".to_owned(), "10".to_owned())].into(),
        size,
        modified_ms: 1_765_000_000_000,
        rows: rows as u64,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto_server (pip install 'moto[server]'); run by .ci/run"]
async fn s3_delta_commits_race_in_the_bucket_and_only_one_writer_takes_each_version() {
    use iot_delta::{Change, Commit, Table};
    let dir = tempfile::tempdir().unwrap();
    let (_moto, s3) = start_moto(dir.path()).await;
    let store = s3.connect().unwrap();
    let table_key = "archive/delta/scored";
    let url = url::Url::parse(&format!("s3://{}/{table_key}/", s3.bucket)).unwrap();
    let schema = arrow_schema::Schema::new(vec![
        arrow_schema::Field::new("device", arrow_schema::DataType::Utf8, false),
        arrow_schema::Field::new("value", arrow_schema::DataType::Float64, true),
        arrow_schema::Field::new("hour", arrow_schema::DataType::Utf8, true),
    ]);
    let a = put_data_file(&store, table_key, "a", 3).await;
    let b = put_data_file(&store, table_key, "b", 4).await;

    let outcome = tokio::task::spawn_blocking(move || {
        // Two hubs: two clients of the same bucket, both creating the table.
        let first = Table::open_or_create(
            std::sync::Arc::clone(&store),
            url.clone(),
            &schema,
            &["hour"],
        )
        .unwrap();
        let second = Table::open_or_create(store, url, &schema, &["hour"]).unwrap();
        let base_first = first.snapshot().unwrap();
        let base_second = second.snapshot().unwrap();
        let change = |file: &iot_delta::DataFile, app: &str| Change {
            add: vec![file.clone()],
            transactions: vec![(app.to_owned(), 1)],
            ..Change::default()
        };
        let won = first.commit(&base_first, &change(&a, "hub-a")).unwrap();
        let lost = second.commit(&base_second, &change(&b, "hub-b")).unwrap();
        let latest = second.snapshot().unwrap();
        let seen_by_loser: Vec<String> = latest
            .files()
            .unwrap()
            .into_iter()
            .map(|f| f.path)
            .collect();
        let again = second.commit(&latest, &change(&b, "hub-b")).unwrap();
        let last = first.snapshot().unwrap();
        let mut files: Vec<(String, u64)> = last
            .files()
            .unwrap()
            .into_iter()
            .map(|f| (f.path, f.rows))
            .collect();
        files.sort();
        (won, lost, seen_by_loser, again, last.version(), files)
    })
    .await
    .unwrap();
    let (won, lost, seen_by_loser, again, version, files) = outcome;
    assert_eq!(won, Commit::Committed(1));
    assert_eq!(
        lost,
        Commit::Conflict { version: 1 },
        "the bucket refused the second writer's version"
    );
    assert_eq!(seen_by_loser, vec!["hour=10/a.parquet".to_owned()]);
    assert_eq!(again, Commit::Committed(2));
    assert_eq!(version, 2);
    assert_eq!(
        files,
        vec![
            ("hour=10/a.parquet".to_owned(), 3),
            ("hour=10/b.parquet".to_owned(), 4)
        ]
    );
    let log = s3
        .connect()
        .unwrap()
        .list(Some(&ObjectPath::from(format!("{table_key}/_delta_log"))))
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    assert_eq!(log.len(), 3, "versions 0, 1 and 2 in the bucket: {log:?}");
}

/// `inference-hub migrate-archive` on a bucket in the layout before Delta
/// tables (`<prefix>/table=scored/date=/hour=/hub=/...`, a file with the
/// unsigned batch numbers of that time): a hub refuses to start on it, the
/// migration commits every file to the Delta table and deletes the old
/// keys, a second run changes nothing, and the hub then starts and serves
/// every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto_server (pip install 'moto[server]'); run by .ci/run"]
async fn s3_an_archive_in_the_old_layout_is_refused_then_migrated_in_place_in_the_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let (_moto, s3) = start_moto(dir.path()).await;
    // Two files written by a local archive, put in the bucket as the old
    // layout held them; the second as files were before batch numbers were
    // stored signed.
    let local = dir.path().join("old");
    let files = tokio::task::spawn_blocking({
        let local = local.clone();
        move || {
            let mut archive = inference_hub::archive::Archive::open(
                &local,
                "old-hub",
                inference_hub::config::ArchiveSettings::default(),
            )
            .unwrap();
            for seq in [1u64, 2] {
                let mut cols = schemas::ReadingColumns::default();
                for r in 0..ROWS {
                    let ts = 1_767_225_600_000_000 + (seq as i64 * 3600 + r as i64) * 1_000_000;
                    cols.push(&format!("dev{}", r % 5), "load", ts, r as f64);
                }
                let readings = cols.finish();
                let mut engine = inference_hub::scoring::Engine::new(
                    inference_hub::model::Model::load(&inference_hub::config::shipped_model(
                        "novelty",
                    ))
                    .unwrap(),
                    10,
                    None,
                );
                let batch = schemas::envelope::DecodedBatch {
                    header: schemas::envelope::BatchHeader {
                        gateway: "gw-old".into(),
                        incarnation: 1,
                        seq,
                        row_count: ROWS as u32,
                        first_event_us: 0,
                        last_event_us: 0,
                    },
                    version: schemas::envelope::CURRENT_VERSION,
                    readings,
                };
                let scored = engine.score(&batch, 0).scored;
                archive.append(Table::Scored, seq, &scored).unwrap();
                archive.commit_all().unwrap();
            }
            inference_hub::archive::committed_files(&local, Table::Scored).unwrap()
        }
    })
    .await
    .unwrap();
    assert_eq!(files.len(), 2);
    let store = s3.connect().unwrap();
    for (i, file) in files.iter().enumerate() {
        let relative = file.strip_prefix(local.join("scored")).unwrap();
        let bytes = if i == 1 {
            // Unsigned batch numbers, as files were written then.
            let batches = inference_hub::archive::read_file(file).unwrap();
            let mut out = Vec::new();
            let mut writer =
                parquet::arrow::ArrowWriter::try_new(&mut out, batches[0].schema(), None).unwrap();
            for b in &batches {
                writer.write(b).unwrap();
            }
            writer.close().unwrap();
            out
        } else {
            std::fs::read(file).unwrap()
        };
        store
            .put(
                &ObjectPath::from(format!("archive/table=scored/{}", relative.display())),
                Bytes::from(bytes).into(),
            )
            .await
            .unwrap();
    }
    let config = || {
        let mut cfg = iot_testkit::hub_config("new-hub", &dir.path().join("hub"));
        cfg.mqtt.enabled = false;
        cfg.archive.s3 = Some(s3.clone());
        cfg
    };
    let Err(refused) = inference_hub::start(config()).await else {
        panic!("a hub started on an archive in the old layout");
    };
    assert!(
        schemas::error_chain(&refused).contains("migrate-archive"),
        "{}",
        schemas::error_chain(&refused)
    );

    let settings = s3.clone();
    let first = tokio::task::spawn_blocking(move || {
        inference_hub::archive::migrate::migrate_bucket(&settings)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        (first.files, first.committed, first.rows),
        (2, 2, 2 * ROWS as u64)
    );
    let old_keys: Vec<_> = store
        .list(Some(&ObjectPath::from("archive")))
        .map_ok(|m| m.location.to_string())
        .try_filter(|k| std::future::ready(k.contains("table=")))
        .try_collect()
        .await
        .unwrap();
    assert!(old_keys.is_empty(), "old keys left: {old_keys:?}");
    let settings = s3.clone();
    let again = tokio::task::spawn_blocking(move || {
        inference_hub::archive::migrate::migrate_bucket(&settings)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        (again.files, again.committed),
        (0, 0),
        "a second run changes nothing"
    );

    let hub = inference_hub::start(config()).await.unwrap();
    let text = reqwest::Client::new()
        .get(format!(
            "http://{}/v1/query?table=scored&from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z&format=jsonl&columns=seq,incarnation",
            hub.http_addr
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text.lines().count(), 2 * ROWS, "{text}");
    assert!(text.contains("\"seq\":2"), "{text}");
    hub.shutdown().await;
}
