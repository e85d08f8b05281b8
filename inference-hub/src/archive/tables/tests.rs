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
