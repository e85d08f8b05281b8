//! The tables' commit protocol, the vacuum and the migration, on local
//! archive roots shared by several hubs.

use arrow_array::UInt64Array;

use super::*;
use crate::archive::tests::{rows_of_batch, settings, values};

/// How often each batch number is in a table (rows per batch).
fn seq_counts(root: &Path, table: Table) -> BTreeMap<u64, usize> {
    let mut out = BTreeMap::new();
    for batch in read_table(root, table).unwrap() {
        let seq = batch
            .column_by_name("seq")
            .unwrap()
            .as_any()
            .downcast_ref::<UInt64Array>()
            .unwrap();
        for s in seq.values() {
            *out.entry(*s).or_default() += 1;
        }
    }
    out
}

fn scored_hour_7() -> PartitionKey {
    PartitionKey {
        table: Table::Scored,
        hour: 7,
    }
}

#[test]
fn a_hub_that_loses_the_version_checks_again_and_leaves_out_what_the_winner_archived() {
    let shared = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    // Hub b's finished file holds batches 1 and 2 (made elsewhere, then put
    // where hub b writes in the shared archive).
    let mut made = Archive::open(scratch.path(), "hb", settings(1 << 30)).unwrap();
    made.append(
        Table::Scored,
        1,
        &rows_of_batch(Table::Scored, 1, &[(7, 1.0), (7, 2.0)]),
    )
    .unwrap();
    made.append(
        Table::Scored,
        2,
        &rows_of_batch(Table::Scored, 2, &[(7, 3.0)]),
    )
    .unwrap();
    let file = made.commit_all().unwrap().remove(0);
    let name = file.path.file_name().unwrap().to_str().unwrap().to_owned();
    let hub_dir = scored_hour_7().hub_dir(shared.path(), "hb");
    fs::create_dir_all(&hub_dir).unwrap();
    fs::copy(&file.path, hub_dir.join(&name)).unwrap();

    // Hub a holds batch 1 too (resent to it), not committed yet.
    let mut a = Archive::open(shared.path(), "ha", settings(1 << 30)).unwrap();
    a.append(
        Table::Scored,
        1,
        &rows_of_batch(Table::Scored, 1, &[(7, 1.0), (7, 2.0)]),
    )
    .unwrap();

    // Hub b checks the partition (nothing of a's yet), and while it puts its
    // file in place, hub a commits: b's version is taken.
    let mut b = ArchiveTables::open_local(shared.path()).unwrap();
    let stats = Arc::new(crate::stats::HubStats::default());
    b.count_conflicts_in(Arc::clone(&stats));
    let mut raced = false;
    let rows = b
        .commit_new_file(
            scored_hour_7(),
            "hb",
            &name,
            &hub_dir.join(&name),
            &WriterProperties::default(),
            |_, _, _| {
                if !raced {
                    raced = true;
                    a.commit_all().unwrap();
                }
                Ok(())
            },
        )
        .unwrap();
    assert_eq!(b.lost_versions(), 1, "hub b lost the version to hub a");
    assert_eq!(
        stats
            .archive_commit_conflicts
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "and /metrics counts it"
    );
    assert_eq!(rows, 1, "hub b's file kept only batch 2");
    assert_eq!(
        seq_counts(shared.path(), Table::Scored),
        BTreeMap::from([(1, 2), (2, 1)]),
        "batch 1 once (two rows), batch 2 once"
    );
}

#[test]
fn two_hubs_committing_one_partition_at_once_archive_each_batch_once() {
    let shared = tempfile::tempdir().unwrap();
    let run = |hub: &'static str, skip: u64| {
        let root = shared.path().to_owned();
        std::thread::spawn(move || {
            let mut archive = Archive::open(&root, hub, settings(1 << 30)).unwrap();
            // Each hub holds two thirds of the batches; a third both hold.
            for (pos, seq) in (1..=45u64).filter(|s| s % 3 != skip).enumerate() {
                archive
                    .append(
                        Table::Scored,
                        pos as u64,
                        &rows_of_batch(Table::Scored, seq, &[(7, seq as f64), (7, seq as f64)]),
                    )
                    .unwrap();
                archive.commit_all().unwrap();
            }
            archive.tables.as_ref().unwrap().lost_versions()
        })
    };
    let (a, b) = (run("ha", 0), run("hb", 1));
    let lost = a.join().unwrap() + b.join().unwrap();
    let counts = seq_counts(shared.path(), Table::Scored);
    assert_eq!(
        counts,
        (1..=45u64).map(|s| (s, 2)).collect::<BTreeMap<_, _>>(),
        "every batch exactly once ({lost} versions lost to the other hub and retried)"
    );
}

#[test]
fn checkpoints_come_every_hundred_versions_and_the_log_they_cover_goes_after_the_retention() {
    let root = tempfile::tempdir().unwrap();
    let mut tables = ArchiveTables::open_local(root.path()).unwrap();
    let key = PartitionKey {
        table: Table::Anomalies,
        hour: 7,
    };
    let commit = |tables: &ArchiveTables, n: u64| {
        let path = format!("{}/ha-{n:020}-{n:020}.parquet", partition_path(key, "ha"));
        tables
            .commit_migrated(Table::Anomalies, &[(key, "ha".into(), path, 10, 1)])
            .unwrap();
    };
    let log = root.path().join("anomalies/_delta_log");
    let entry = |version: u64, kind: &str| log.join(format!("{version:020}.{kind}"));
    // Version 0 created the table; versions 1-100 add a file each.
    (1..=CHECKPOINT_EVERY).for_each(|n| commit(&tables, n));
    assert!(entry(CHECKPOINT_EVERY, "checkpoint.parquet").is_file());
    assert!(
        entry(0, "json").is_file(),
        "younger than the default retention: kept"
    );

    tables.keep_log_for(std::time::Duration::ZERO);
    (CHECKPOINT_EVERY + 1..=2 * CHECKPOINT_EVERY).for_each(|n| commit(&tables, n));
    assert!(entry(2 * CHECKPOINT_EVERY, "checkpoint.parquet").is_file());
    assert!(entry(2 * CHECKPOINT_EVERY, "json").is_file());
    for version in 0..CHECKPOINT_EVERY {
        assert!(
            !entry(version, "json").exists(),
            "{version} covered and old"
        );
    }
    assert!(!entry(CHECKPOINT_EVERY, "checkpoint.parquet").exists());
    let reopened = ArchiveTables::open_local(root.path()).unwrap();
    assert_eq!(
        reopened.files(Table::Anomalies).unwrap().len() as u64,
        2 * CHECKPOINT_EVERY,
        "every file still in the table"
    );
}

#[test]
fn a_file_renamed_but_never_committed_is_invisible_replayed_and_vacuumed() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Archive::open(dir.path(), "h1", settings(1 << 30)).unwrap();
    a.append(
        Table::Scored,
        1,
        &rows_of_batch(Table::Scored, 1, &[(7, 1.0)]),
    )
    .unwrap();
    let committed = a.commit_all().unwrap().remove(0);
    // A crash between the rename of the next file and its commit leaves a
    // complete file the log does not hold.
    let orphan = committed
        .path
        .with_file_name(format!("h1-{:020}-{:020}.parquet", 2, 2));
    fs::copy(&committed.path, &orphan).unwrap();
    drop(a);
    assert_eq!(values(dir.path(), Table::Scored), vec![1.0], "invisible");

    let mut a = Archive::open(dir.path(), "h1", settings(1 << 30)).unwrap();
    for pos in 1..=3u64 {
        a.append(
            Table::Scored,
            pos,
            &rows_of_batch(Table::Scored, pos, &[(7, pos as f64)]),
        )
        .unwrap();
    }
    a.commit_all().unwrap();
    assert_eq!(
        values(dir.path(), Table::Scored),
        vec![1.0, 2.0, 3.0],
        "the replay archives what the crash cut off, position 1 once"
    );
    let window = settings(1 << 30).vacuum_after.as_millis() as i64;
    let now = chrono::Utc::now().timestamp_millis();
    assert_eq!(a.vacuum(now).unwrap(), 0, "younger than the window");
    assert_eq!(a.vacuum(now + window + 1000).unwrap(), 1);
    assert!(!orphan.exists());
    assert_eq!(values(dir.path(), Table::Scored), vec![1.0, 2.0, 3.0]);
}

#[test]
fn an_archive_in_the_old_layout_is_refused_then_migrated_in_place_and_again_without_change() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // Two committed files, then moved into the layout before Delta tables
    // (`table=scored/date=/hour=/hub=/`), with its lock and temporary files.
    let mut a = Archive::open(root, "h1", settings(1 << 30)).unwrap();
    for (pos, hour) in [(1u64, 7i64), (2, 8)] {
        a.append(
            Table::Scored,
            pos,
            &rows_of_batch(Table::Scored, pos, &[(hour, pos as f64)]),
        )
        .unwrap();
        a.commit_all().unwrap();
    }
    drop(a);
    for table in Table::ALL {
        fs::remove_dir_all(root.join(table.name()).join("_delta_log")).unwrap();
        if table == Table::Scored {
            fs::rename(root.join("scored"), root.join("table=scored")).unwrap();
        } else {
            fs::remove_dir_all(root.join(table.name())).unwrap();
        }
    }
    // The hour-8 file as files were written before this layout: unsigned
    // batch numbers, which Delta readers refuse (the migration rewrites it).
    let hour_8 = walk_files(&root.join("table=scored/date=1970-01-01/hour=08"))
        .unwrap()
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "parquet"))
        .unwrap();
    let batches = read_file(&hour_8).unwrap();
    let footer = file_key_values(&hour_8).unwrap();
    let mut old =
        ArrowWriter::try_new(File::create(&hour_8).unwrap(), batches[0].schema(), None).unwrap();
    for b in &batches {
        old.write(b).unwrap();
    }
    for (k, v) in footer {
        old.append_key_value_metadata(KeyValue::new(k, v));
    }
    old.close().unwrap();
    let seq_type = |path: &Path| {
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            File::open(path).unwrap(),
        )
        .unwrap()
        .schema()
        .field_with_name("seq")
        .unwrap()
        .data_type()
        .clone()
    };
    assert_eq!(seq_type(&hour_8), arrow_schema::DataType::UInt64);
    let old_partition = root.join("table=scored/date=1970-01-01/hour=07");
    fs::write(old_partition.join(".commit.lock"), b"h1 0").unwrap();
    fs::write(
        old_partition.join("hub=h1/.h1-00000000000000000009.parquet.inprogress"),
        b"torn",
    )
    .unwrap();

    let refused = Archive::open(root, "h1", settings(1 << 30)).unwrap_err();
    assert!(
        refused.to_string().contains("migrate-archive") && !refused.is_retryable(),
        "{refused}"
    );

    let done = migrate::migrate_local(root).unwrap();
    assert_eq!(
        done,
        migrate::Migrated {
            files: 2,
            committed: 2,
            rows: 2
        }
    );
    assert!(!root.join("table=scored").exists());
    assert_eq!(values(root, Table::Scored), vec![1.0, 2.0]);
    for file in committed_files(root, Table::Scored).unwrap() {
        assert_eq!(
            seq_type(&file),
            arrow_schema::DataType::Int64,
            "{} is in the files' schema Delta readers take",
            file.display()
        );
    }
    assert_eq!(
        seq_counts(root, Table::Scored),
        BTreeMap::from([(1, 1), (2, 1)]),
        "batch numbers read back unsigned, as written"
    );

    // Cut off after its commit, before the old files went: run again.
    let moved = committed_files(root, Table::Scored).unwrap();
    for file in &moved {
        let relative = file.strip_prefix(root.join("scored")).unwrap();
        let old = root.join("table=scored").join(relative);
        fs::create_dir_all(old.parent().unwrap()).unwrap();
        fs::copy(file, old).unwrap();
    }
    assert!(Archive::open(root, "h1", settings(1 << 30)).is_err());
    let again = migrate::migrate_local(root).unwrap();
    assert_eq!(
        (again.files, again.committed),
        (2, 0),
        "nothing added twice"
    );
    assert_eq!(
        migrate::migrate_local(root).unwrap(),
        migrate::Migrated::default()
    );
    assert_eq!(values(root, Table::Scored), vec![1.0, 2.0]);

    // The hub starts, and knows from the log what its WAL already archived.
    let mut a = Archive::open(root, "h1", settings(1 << 30)).unwrap();
    for (pos, hour) in [(1u64, 7i64), (2, 8), (3, 7)] {
        a.append(
            Table::Scored,
            pos,
            &rows_of_batch(Table::Scored, pos, &[(hour, pos as f64)]),
        )
        .unwrap();
    }
    a.commit_all().unwrap();
    assert_eq!(values(root, Table::Scored), vec![1.0, 2.0, 3.0]);
}

/// A store that fails once armed (at random, seeded): a third of the
/// conditional creates of log entries are written and then answered with
/// an error (the answer lost on the way back); a tenth of the other writes
/// and 3 % of the reads fail before doing anything (a snapshot reads every
/// log entry since the last checkpoint: denser read failures would fail
/// nearly every attempt).
#[derive(Debug)]
struct Flaky {
    inner: object_store::local::LocalFileSystem,
    armed: std::sync::atomic::AtomicBool,
    rng: std::sync::Mutex<fastrand::Rng>,
    injected: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Display for Flaky {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Flaky")
    }
}

impl Flaky {
    fn fails(&self, share: f64) -> bool {
        let fail = self.armed.load(std::sync::atomic::Ordering::Relaxed)
            && self.rng.lock().unwrap().f64() < share;
        if fail {
            self.injected
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        fail
    }

    fn error() -> object_store::Error {
        object_store::Error::Generic {
            store: "Flaky",
            source: "503 Slow Down (injected)".into(),
        }
    }
}

#[async_trait::async_trait]
impl ObjectStore for Flaky {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: object_store::PutPayload,
        opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        let log_entry = location.as_ref().contains("_delta_log")
            && location.as_ref().ends_with(".json")
            && matches!(opts.mode, object_store::PutMode::Create);
        if log_entry && self.fails(0.33) {
            self.inner.put_opts(location, payload, opts).await?;
            return Err(Self::error());
        }
        if !log_entry && self.fails(0.1) {
            return Err(Self::error());
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &ObjectPath,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        if self.fails(0.03) {
            return Err(Self::error());
        }
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: futures_util::stream::BoxStream<'static, object_store::Result<ObjectPath>>,
    ) -> futures_util::stream::BoxStream<'static, object_store::Result<ObjectPath>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> futures_util::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
    {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> object_store::Result<object_store::ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// Commits through a store that fails reads and writes, and answers some
/// log entries it wrote with an error: each attempt that fails is tried
/// again (as the uploader does), and every file ends up in the table once,
/// in one version each.
#[test]
fn commits_through_a_failing_store_land_each_file_once() {
    let shared = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let mut made = Archive::open(scratch.path(), "hx", settings(1 << 30)).unwrap();
    let hub_dir = scored_hour_7().hub_dir(shared.path(), "hx");
    fs::create_dir_all(&hub_dir).unwrap();
    let mut names = Vec::new();
    for seq in 1..=30u64 {
        made.append(
            Table::Scored,
            seq,
            &rows_of_batch(Table::Scored, seq, &[(7, seq as f64)]),
        )
        .unwrap();
        let file = made.commit_all().unwrap().remove(0);
        let name = file.path.file_name().unwrap().to_str().unwrap().to_owned();
        fs::copy(&file.path, hub_dir.join(&name)).unwrap();
        names.push(name);
    }
    let flaky = Arc::new(Flaky {
        inner: object_store::local::LocalFileSystem::new(),
        armed: Default::default(),
        rng: std::sync::Mutex::new(fastrand::Rng::with_seed(19)),
        injected: Default::default(),
    });
    let (url, prefix) = local_location(shared.path()).unwrap();
    for table in Table::ALL {
        fs::create_dir_all(shared.path().join(table.name())).unwrap();
    }
    let mut tables = ArchiveTables::open(
        Arc::clone(&flaky) as Arc<dyn ObjectStore>,
        url,
        prefix,
        Some(shared.path().to_owned()),
    )
    .unwrap();
    flaky
        .armed
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let mut failed_attempts = 0;
    for name in &names {
        let mut attempts = 0;
        let mut last_error = None;
        loop {
            attempts += 1;
            assert!(attempts < 50, "{name} never committed: {last_error:?}");
            match tables.commit_new_file(
                scored_hour_7(),
                "hx",
                name,
                &hub_dir.join(name),
                &WriterProperties::default(),
                |_, _, _| Ok(()),
            ) {
                Ok(rows) => {
                    assert_eq!(rows, 1, "{name}");
                    break;
                }
                Err(e) => {
                    last_error = Some(e);
                    failed_attempts += 1;
                }
            }
        }
    }
    let injected = flaky.injected.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        failed_attempts >= 10 && injected >= failed_attempts,
        "the store failed {injected} calls, {failed_attempts} attempts failed"
    );
    assert_eq!(
        seq_counts(shared.path(), Table::Scored),
        (1..=30u64).map(|s| (s, 1)).collect::<BTreeMap<_, _>>(),
        "every file once"
    );
    let versions = fs::read_dir(shared.path().join("scored/_delta_log"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".json")
        })
        .count();
    assert_eq!(versions, 1 + 30, "the creation, then one version per file");
}
