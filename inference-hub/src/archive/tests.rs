use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, StringArray, TimestampMicrosecondArray};
use arrow_schema::DataType;

use super::*;

const H: i64 = HOUR_US;

/// A minimal table with the columns the archive needs (ts) plus a value; the
/// archive writes whatever schema the table declares, so tests use the
/// anomalies schema through a small builder.
pub(super) fn rows(table: Table, hours_and_values: &[(i64, f64)]) -> RecordBatch {
    let schema = table.schema();
    let n = hours_and_values.len();
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| -> ArrayRef {
            match (f.name().as_str(), f.data_type()) {
                ("ts", _) => Arc::new(
                    TimestampMicrosecondArray::from_iter_values(
                        hours_and_values.iter().map(|(h, _)| h * H + 1),
                    )
                    .with_timezone("UTC"),
                ),
                ("value", _) => Arc::new(Float64Array::from_iter_values(
                    hours_and_values.iter().map(|(_, v)| *v),
                )),
                (_, DataType::Utf8) => {
                    Arc::new(StringArray::from_iter_values(std::iter::repeat_n("x", n)))
                }
                (_, DataType::Float64) => {
                    Arc::new(Float64Array::from_iter_values(std::iter::repeat_n(1.0, n)))
                }
                (_, DataType::UInt64) => Arc::new(arrow_array::UInt64Array::from_iter_values(
                    std::iter::repeat_n(1, n),
                )),
                (_, DataType::Timestamp(_, _)) => Arc::new(
                    TimestampMicrosecondArray::from_iter_values(std::iter::repeat_n(0, n))
                        .with_timezone("UTC"),
                ),
                other => panic!("unexpected column {other:?}"),
            }
        })
        .collect();
    RecordBatch::try_new(schema, columns).unwrap()
}

pub(super) fn settings(target: u64) -> ArchiveSettings {
    ArchiveSettings {
        path: None,
        target_file_bytes: target,
        max_file_age: Duration::from_secs(3600),
        row_group_rows: 1024,
        ..ArchiveSettings::default()
    }
}

pub(super) fn values(root: &Path, table: Table) -> Vec<f64> {
    let mut v: Vec<f64> = read_table(root, table)
        .unwrap()
        .iter()
        .flat_map(|b| {
            b.column_by_name("value")
                .unwrap()
                .as_any()
                .downcast_ref::<Float64Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

#[test]
fn open_files_are_invisible_until_committed_and_named_by_their_wal_range() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Archive::open(dir.path(), "h1", settings(1 << 30)).unwrap();
    a.append(
        Table::Anomalies,
        5,
        &rows(Table::Anomalies, &[(480_000, 1.0)]),
    )
    .unwrap();
    a.append(
        Table::Anomalies,
        6,
        &rows(Table::Anomalies, &[(480_000, 2.0)]),
    )
    .unwrap();
    assert!(
        committed_files(dir.path(), Table::Anomalies)
            .unwrap()
            .is_empty()
    );
    assert_eq!(a.low_water(), 5);
    let files = a.commit_all().unwrap();
    assert_eq!(files.len(), 1);
    let name = files[0]
        .path
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(name, format!("h1-{:020}-{:020}.parquet", 5, 6));
    assert!(
        files[0]
            .path
            .to_str()
            .unwrap()
            .contains("anomalies/date=2024-10-04/hour=00/hub=h1")
    );
    assert_eq!(values(dir.path(), Table::Anomalies), vec![1.0, 2.0]);
    assert_eq!(a.low_water(), 7);
}

#[test]
fn rows_are_split_by_event_hour() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Archive::open(dir.path(), "h1", settings(1 << 30)).unwrap();
    a.append(
        Table::Scored,
        0,
        &rows(Table::Scored, &[(10, 1.0), (11, 2.0), (10, 3.0)]),
    )
    .unwrap();
    assert_eq!(a.commit_all().unwrap().len(), 2);
    assert_eq!(values(dir.path(), Table::Scored), vec![1.0, 2.0, 3.0]);
}

#[test]
fn files_rotate_at_the_target_size() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Archive::open(dir.path(), "h1", settings(64 * 1024)).unwrap();
    let mut committed = 0;
    for pos in 0..200u64 {
        let batch: Vec<(i64, f64)> = (0..500).map(|i| (7, (pos * 1000 + i) as f64)).collect();
        committed += a
            .append(Table::Anomalies, pos, &rows(Table::Anomalies, &batch))
            .unwrap()
            .len();
    }
    committed += a.commit_all().unwrap().len();
    assert!(committed > 1, "expected several files, got {committed}");
    assert_eq!(values(dir.path(), Table::Anomalies).len(), 200 * 500);
}

#[test]
fn replay_after_a_crash_writes_each_record_exactly_once_per_partition() {
    let dir = tempfile::tempdir().unwrap();
    let input = |pos: u64| {
        rows(
            Table::Anomalies,
            &[(1, pos as f64), (2, 100.0 + pos as f64)],
        )
    };
    {
        let mut a = Archive::open(dir.path(), "h1", settings(1 << 30)).unwrap();
        for pos in 0..10 {
            a.append(Table::Anomalies, pos, &input(pos)).unwrap();
        }
        // Hour 1 is committed, hour 2 is still open when the process dies.
        a.commit(PartitionKey {
            table: Table::Anomalies,
            hour: 1,
        })
        .unwrap();
        for pos in 10..12 {
            a.append(Table::Anomalies, pos, &input(pos)).unwrap();
        }
        std::mem::forget(a); // crash: no close, temp files stay behind
    }
    let leftovers = walk_files(dir.path())
        .unwrap()
        .into_iter()
        .filter(|p| p.to_str().unwrap().ends_with(".inprogress"))
        .count();
    assert_eq!(leftovers, 2);

    let mut a = Archive::open(dir.path(), "h1", settings(1 << 30)).unwrap();
    let leftovers = walk_files(dir.path())
        .unwrap()
        .into_iter()
        .filter(|p| p.to_str().unwrap().ends_with(".inprogress"))
        .count();
    assert_eq!(leftovers, 0, "temporary files are removed at start-up");
    for pos in 0..12 {
        a.append(Table::Anomalies, pos, &input(pos)).unwrap();
    }
    a.commit_all().unwrap();
    let mut want: Vec<f64> = (0..12)
        .map(|p| p as f64)
        .chain((0..12).map(|p| 100.0 + p as f64))
        .collect();
    want.sort_by(f64::total_cmp);
    assert_eq!(values(dir.path(), Table::Anomalies), want);
}

#[test]
fn another_hubs_files_do_not_affect_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let mut other = Archive::open(dir.path(), "h2", settings(1 << 30)).unwrap();
    other
        .append(
            Table::Anomalies,
            50,
            &rows_of_batch(Table::Anomalies, 50, &[(1, 1.0)]),
        )
        .unwrap();
    other.commit_all().unwrap();
    let mut a = Archive::open(dir.path(), "h1", settings(1 << 30)).unwrap();
    a.append(
        Table::Anomalies,
        3,
        &rows_of_batch(Table::Anomalies, 3, &[(1, 2.0)]),
    )
    .unwrap();
    a.commit_all().unwrap();
    assert_eq!(values(dir.path(), Table::Anomalies), vec![1.0, 2.0]);
}

#[test]
fn a_hub_whose_id_extends_another_ones_keeps_its_open_files_and_its_own_recovery_point() {
    // Kubernetes names pods `hub-0`, `hub-1`, ...: ids that start with one
    // another share a root. `hub` must neither delete `hub-1`'s open file
    // nor read `hub-1`'s committed range as its own.
    let dir = tempfile::tempdir().unwrap();
    let mut longer = Archive::open(dir.path(), "hub-1", settings(1 << 30)).unwrap();
    longer
        .append(
            Table::Anomalies,
            5,
            &rows_of_batch(Table::Anomalies, 5, &[(1, 1.0)]),
        )
        .unwrap();
    longer.commit_all().unwrap();
    longer
        .append(
            Table::Anomalies,
            6,
            &rows_of_batch(Table::Anomalies, 6, &[(1, 2.0)]),
        )
        .unwrap();
    let open_files = || {
        walk_files(dir.path())
            .unwrap()
            .into_iter()
            .filter(|p| p.to_str().unwrap().ends_with(".inprogress"))
            .count()
    };
    assert_eq!(open_files(), 1);
    let mut shorter = Archive::open(dir.path(), "hub", settings(1 << 30)).unwrap();
    assert_eq!(open_files(), 1, "another hub's open file survives");
    // WAL position 5 was committed by hub-1, not by this hub: this hub's
    // own (different) batch at its position 5 is archived.
    shorter
        .append(
            Table::Anomalies,
            5,
            &rows_of_batch(Table::Anomalies, 9, &[(1, 3.0)]),
        )
        .unwrap();
    shorter.commit_all().unwrap();
    longer.commit_all().unwrap();
    assert_eq!(values(dir.path(), Table::Anomalies), vec![1.0, 2.0, 3.0]);
}

#[test]
fn row_groups_are_sorted_by_device_metric_and_time() {
    let base = rows(Table::Scored, &[(5, 1.0), (3, 2.0), (4, 3.0), (1, 4.0)]);
    let mut columns = base.columns().to_vec();
    let device_idx = base.schema().index_of("device").unwrap();
    columns[device_idx] = Arc::new(StringArray::from(vec!["b", "a", "b", "a"]));
    let batch = RecordBatch::try_new(base.schema(), columns).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut archive = Archive::open(dir.path(), "hub", settings(1 << 30)).unwrap();
    // All rows in hour 0..6 land in separate hour partitions; use one hour.
    let one_hour = {
        let mut cols = batch.columns().to_vec();
        let ts_idx = batch.schema().index_of("ts").unwrap();
        cols[ts_idx] =
            Arc::new(TimestampMicrosecondArray::from(vec![50, 30, 40, 10]).with_timezone("UTC"));
        RecordBatch::try_new(batch.schema(), cols).unwrap()
    };
    archive.append(Table::Scored, 1, &one_hour).unwrap();
    archive.commit_all().unwrap();
    let read = read_table(dir.path(), Table::Scored).unwrap();
    let got: Vec<(String, f64)> = read
        .iter()
        .flat_map(|b| {
            let d = b
                .column_by_name("device")
                .unwrap()
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .clone();
            let v = b
                .column_by_name("value")
                .unwrap()
                .as_any()
                .downcast_ref::<Float64Array>()
                .unwrap()
                .clone();
            (0..b.num_rows())
                .map(move |i| (d.value(i).to_owned(), v.value(i)))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("a".into(), 4.0),
            ("a".into(), 2.0),
            ("b".into(), 3.0),
            ("b".into(), 1.0)
        ],
        "device, then time"
    );
}

#[test]
fn a_row_group_gathered_from_many_batches_holds_every_row_once_in_order_with_plain_string_columns()
{
    let mut rng = fastrand::Rng::with_seed(11);
    let mut sent: Vec<(String, String, i64, u64, String)> = Vec::new();
    let batches: Vec<RecordBatch> = (0..7u64)
        .map(|b| {
            let n = 40 + b as usize * 3;
            let base = rows(Table::Scored, &vec![(0, 0.0); n]);
            let mut columns = base.columns().to_vec();
            let set = |columns: &mut Vec<ArrayRef>, name: &str, array: ArrayRef| {
                columns[base.schema().index_of(name).unwrap()] = array;
            };
            let device: Vec<String> = (0..n).map(|_| format!("dev{}", rng.u8(0..9))).collect();
            let metric: Vec<&str> = (0..n)
                .map(|_| ["rpm", "temp", "a"][rng.usize(0..3)])
                .collect();
            let ts: Vec<i64> = (0..n).map(|_| rng.i64(0..H)).collect();
            let value: Vec<f64> = (0..n).map(|i| (b * 1000 + i as u64) as f64).collect();
            let status: Vec<&str> = (0..n).map(|i| ["ok", "anomalous"][i % 2]).collect();
            for i in 0..n {
                sent.push((
                    device[i].clone(),
                    metric[i].to_owned(),
                    ts[i],
                    value[i].to_bits(),
                    status[i].to_owned(),
                ));
            }
            set(&mut columns, "device", Arc::new(StringArray::from(device)));
            set(&mut columns, "metric", Arc::new(StringArray::from(metric)));
            set(
                &mut columns,
                "ts",
                Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC")),
            );
            set(&mut columns, "value", Arc::new(Float64Array::from(value)));
            set(&mut columns, "status", Arc::new(StringArray::from(status)));
            RecordBatch::try_new(base.schema(), columns).unwrap()
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings(1 << 30);
    settings.row_group_rows = 100_000; // one row group for all of them
    let mut archive = Archive::open(dir.path(), "hub", settings).unwrap();
    for (pos, b) in batches.iter().enumerate() {
        archive.append(Table::Scored, pos as u64, b).unwrap();
    }
    archive.commit_all().unwrap();
    let read = read_table(dir.path(), Table::Scored).unwrap();
    assert_eq!(read.len(), 1, "one row group");
    let got = &read[0];
    assert_eq!(
        got.schema().fields(),
        Table::Scored.schema().fields(),
        "plain string columns"
    );
    let s = |name: &str| {
        got.column_by_name(name)
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .clone()
    };
    let (device, metric, status) = (s("device"), s("metric"), s("status"));
    let ts = got
        .column_by_name("ts")
        .unwrap()
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .unwrap();
    let value = got
        .column_by_name("value")
        .unwrap()
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap();
    let archived: Vec<(String, String, i64, u64, String)> = (0..got.num_rows())
        .map(|i| {
            (
                device.value(i).to_owned(),
                metric.value(i).to_owned(),
                ts.value(i),
                value.value(i).to_bits(),
                status.value(i).to_owned(),
            )
        })
        .collect();
    let keys: Vec<_> = archived.iter().map(|r| (&r.0, &r.1, r.2)).collect();
    assert!(
        keys.windows(2).all(|w| w[0] <= w[1]),
        "sorted by device, metric, time"
    );
    let mut expected = sent;
    expected.sort();
    let mut archived = archived;
    archived.sort();
    assert_eq!(archived, expected, "every row once, columns kept together");
}

#[test]
fn a_backfill_over_many_hours_keeps_open_files_and_buffered_rows_bounded_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings(1 << 30);
    settings.max_open_files = 4;
    settings.max_buffered_rows = 3000;
    settings.row_group_rows = 2048;
    let mut archive = Archive::open(dir.path(), "hub", settings).unwrap();
    let mut sent = Vec::new();
    // Each batch spreads 300 rows over 30 hours (a backfill), and the
    // batches go on through 90 hours.
    for pos in 0..30u64 {
        let rows_of: Vec<(i64, f64)> = (0..300)
            .map(|i| {
                let hour = (pos as i64 * 2 + i % 30) % 90;
                (hour, (pos * 1000 + i as u64) as f64)
            })
            .collect();
        sent.extend(rows_of.iter().map(|(_, v)| *v));
        archive
            .append(Table::Scored, pos, &rows(Table::Scored, &rows_of))
            .unwrap();
        assert!(
            archive.open_files() <= 4,
            "{} files open",
            archive.open_files()
        );
        assert!(
            archive.buffered_rows() <= 3000,
            "{} rows buffered",
            archive.buffered_rows()
        );
    }
    archive.commit_all().unwrap();
    let mut got = values(dir.path(), Table::Scored);
    got.sort_by(f64::total_cmp);
    sent.sort_by(f64::total_cmp);
    assert_eq!(got, sent, "every row once");
    // Replaying the same log after a crash adds nothing.
    let mut again = Archive::open(dir.path(), "hub", settings_like(4)).unwrap();
    for pos in 0..30u64 {
        let rows_of: Vec<(i64, f64)> = (0..300)
            .map(|i| {
                (
                    (pos as i64 * 2 + i % 30) % 90,
                    (pos * 1000 + i as u64) as f64,
                )
            })
            .collect();
        again
            .append(Table::Scored, pos, &rows(Table::Scored, &rows_of))
            .unwrap();
    }
    again.commit_all().unwrap();
    assert_eq!(values(dir.path(), Table::Scored).len(), sent.len());
}

fn settings_like(max_open_files: usize) -> ArchiveSettings {
    ArchiveSettings {
        max_open_files,
        max_buffered_rows: 3000,
        row_group_rows: 2048,
        ..settings(1 << 30)
    }
}

#[test]
fn byte_stream_split_float_columns_read_back_the_same_values() {
    let dir = tempfile::tempdir().unwrap();
    let settings = ArchiveSettings {
        float_encoding: crate::config::FloatEncoding::ByteStreamSplit,
        ..settings(1 << 30)
    };
    let mut archive = Archive::open(dir.path(), "hub", settings).unwrap();
    let sent: Vec<(i64, f64)> = (0..500)
        .map(|i| (0, 20.0 + (i as f64 / 7.0).sin()))
        .collect();
    archive
        .append(Table::Scored, 0, &rows(Table::Scored, &sent))
        .unwrap();
    let files = archive.commit_all().unwrap();
    let mut got = values(dir.path(), Table::Scored);
    let mut want: Vec<f64> = sent.iter().map(|(_, v)| *v).collect();
    got.sort_by(f64::total_cmp);
    want.sort_by(f64::total_cmp);
    assert_eq!(got, want);
    let reader = parquet::file::reader::SerializedFileReader::new(
        std::fs::File::open(&files[0].path).unwrap(),
    )
    .unwrap();
    use parquet::file::reader::FileReader;
    let row_group = reader.metadata().row_group(0);
    let value = row_group
        .columns()
        .iter()
        .find(|c| c.column_path().string() == "value")
        .unwrap();
    assert!(
        value
            .encodings()
            .any(|e| e == parquet::basic::Encoding::BYTE_STREAM_SPLIT),
        "{:?}",
        value.encodings().collect::<Vec<_>>()
    );
}

fn compaction_settings() -> ArchiveSettings {
    ArchiveSettings {
        compaction_grace: Duration::ZERO,
        ..settings(1 << 30)
    }
}

const FAR_FUTURE: i64 = 4_000_000_000_000_000;

#[test]
fn compaction_merges_a_closed_partitions_files_into_one_that_covers_their_wal_range() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Archive::open(dir.path(), "h1", compaction_settings()).unwrap();
    for pos in 1..=4u64 {
        a.append(Table::Scored, pos, &rows(Table::Scored, &[(7, pos as f64)]))
            .unwrap();
        a.commit_all().unwrap();
    }
    a.append(Table::Scored, 5, &rows(Table::Scored, &[(9, 5.0)]))
        .unwrap();
    a.commit_all().unwrap();
    assert_eq!(committed_files(dir.path(), Table::Scored).unwrap().len(), 5);
    assert!(
        a.compact_one(7 * H).unwrap().is_none(),
        "hour 7 is not closed yet at 07:00"
    );
    let merged = a.compact_one(FAR_FUTURE).unwrap().expect("hour 7 merged");
    assert_eq!(merged.rows, 4);
    assert!(
        merged
            .path
            .ends_with(format!("h1-{:020}-{:020}.parquet", 1, 4))
    );
    assert_eq!(committed_files(dir.path(), Table::Scored).unwrap().len(), 2);
    assert!(
        a.compact_one(FAR_FUTURE).unwrap().is_none(),
        "nothing left to merge"
    );
    assert_eq!(
        values(dir.path(), Table::Scored),
        vec![1.0, 2.0, 3.0, 4.0, 5.0]
    );
    // The merged files stay for readers of the version before, until the
    // vacuum, which takes only files no version holds and only once old.
    let on_disk = || {
        walk_files(&dir.path().join("scored"))
            .unwrap()
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .count()
    };
    assert_eq!(
        on_disk(),
        6,
        "the four small files, the merged one and hour 9's"
    );
    let now_ms = chrono::Utc::now().timestamp_millis();
    let window = compaction_settings().vacuum_after.as_millis() as i64;
    assert_eq!(
        a.vacuum(now_ms + window - 60_000).unwrap(),
        0,
        "too young to go"
    );
    assert_eq!(
        a.vacuum(now_ms + window + 60_000).unwrap(),
        4,
        "the merged-away files go"
    );
    assert_eq!(on_disk(), 2);
    assert_eq!(
        values(dir.path(), Table::Scored),
        vec![1.0, 2.0, 3.0, 4.0, 5.0]
    );

    // After a restart the merged file's name still tells replay what is done.
    drop(a);
    std::fs::create_dir_all(dir.path().join(".staging/compact-leftover")).unwrap();
    let mut a = Archive::open(dir.path(), "h1", compaction_settings()).unwrap();
    assert!(
        !dir.path().join(".staging").exists(),
        "leftovers removed at start"
    );
    a.append(Table::Scored, 3, &rows(Table::Scored, &[(7, 3.0)]))
        .unwrap();
    a.commit_all().unwrap();
    assert_eq!(
        values(dir.path(), Table::Scored),
        vec![1.0, 2.0, 3.0, 4.0, 5.0],
        "replay of a merged position is skipped"
    );
}

#[test]
fn files_written_before_a_column_was_added_stay_readable_and_are_compacted_into_the_new_schema() {
    let dir = tempfile::tempdir().unwrap();
    let key = PartitionKey {
        table: Table::Anomalies,
        hour: 7,
    };
    // An "old" file: the anomalies schema without its newest (nullable) columns.
    let full = rows(Table::Anomalies, &[(7, 1.0)]);
    let old_fields: Vec<_> = full
        .schema()
        .fields()
        .iter()
        .filter(|f| !f.is_nullable())
        .cloned()
        .collect();
    let old_schema = Arc::new(arrow_schema::Schema::new(old_fields));
    let old = full
        .project(
            &old_schema
                .fields()
                .iter()
                .map(|f| full.schema().index_of(f.name()).unwrap())
                .collect::<Vec<_>>(),
        )
        .unwrap();
    let hub_dir = key.hub_dir(dir.path(), "h1");
    std::fs::create_dir_all(&hub_dir).unwrap();
    let mut w = ArrowWriter::try_new(
        File::create(hub_dir.join(format!("h1-{:020}-{:020}.parquet", 1, 1))).unwrap(),
        old_schema,
        None,
    )
    .unwrap();
    w.write(&old).unwrap();
    w.close().unwrap();
    let name = format!("h1-{:020}-{:020}.parquet", 1, 1);
    tables::ArchiveTables::open_local(dir.path())
        .unwrap()
        .commit_new_file(
            key,
            "h1",
            &name,
            &hub_dir.join(&name),
            &WriterProperties::default(),
            |_, _, _| Ok(()),
        )
        .unwrap();

    let mut a = Archive::open(dir.path(), "h1", compaction_settings()).unwrap();
    a.append(Table::Anomalies, 2, &rows(Table::Anomalies, &[(7, 2.0)]))
        .unwrap();
    a.commit_all().unwrap();
    assert_eq!(
        values(dir.path(), Table::Anomalies),
        vec![1.0, 2.0],
        "old and new files read"
    );
    a.compact_one(FAR_FUTURE).unwrap().expect("merged");
    let merged = read_table(dir.path(), Table::Anomalies).unwrap();
    assert_eq!(merged[0].schema(), Table::Anomalies.schema());
    let expected = merged[0].column_by_name("expected").unwrap();
    assert_eq!(
        expected.null_count(),
        1,
        "the old row has no expected value"
    );
}

#[test]
fn retention_removes_whole_partitions_older_than_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let s = ArchiveSettings {
        retention: Some(Duration::from_secs(2 * 3600)),
        ..settings(1 << 30)
    };
    let mut a = Archive::open(dir.path(), "h1", s).unwrap();
    for (pos, hour) in [(1u64, 1i64), (2, 5), (3, 9)] {
        a.append(
            Table::Scored,
            pos,
            &rows(Table::Scored, &[(hour, pos as f64)]),
        )
        .unwrap();
    }
    a.commit_all().unwrap();
    assert_eq!(
        a.apply_retention(8 * H).unwrap(),
        2,
        "hours 1 and 5 ended before 06:00"
    );
    assert_eq!(values(dir.path(), Table::Scored), vec![3.0]);
}

#[test]
fn files_that_only_exist_in_object_storage_count_as_committed_for_replay() {
    let dir = tempfile::tempdir().unwrap();
    let key = PartitionKey {
        table: Table::Scored,
        hour: 7,
    };
    let remote = HashMap::from([(key, 9)]);
    let mut a = Archive::open_staging(dir.path(), "h1", settings(1 << 30), &remote).unwrap();
    for pos in [8u64, 9, 10] {
        a.append(Table::Scored, pos, &rows(Table::Scored, &[(7, pos as f64)]))
            .unwrap();
    }
    a.commit_all().unwrap();
    let staged: Vec<f64> = staged_files(dir.path(), Table::Scored)
        .unwrap()
        .iter()
        .flat_map(|f| read_file(f).unwrap())
        .flat_map(|b| {
            b.column_by_name("value")
                .unwrap()
                .as_any()
                .downcast_ref::<Float64Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .collect();
    assert_eq!(
        staged,
        vec![10.0],
        "positions the bucket holds are not archived again"
    );
}

/// `rows` with the batch identity `seq` on every row.
pub(super) fn rows_of_batch(
    table: Table,
    seq: u64,
    hours_and_values: &[(i64, f64)],
) -> RecordBatch {
    let b = rows(table, hours_and_values);
    let idx = b.schema().index_of("seq").unwrap();
    let mut cols = b.columns().to_vec();
    cols[idx] = Arc::new(arrow_array::UInt64Array::from(vec![seq; b.num_rows()]));
    RecordBatch::try_new(b.schema(), cols).unwrap()
}

#[test]
fn a_batch_another_hub_already_committed_is_left_out_of_this_hubs_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Archive::open(dir.path(), "ha", settings(1 << 30)).unwrap();
    let mut b = Archive::open(dir.path(), "hb", settings(1 << 30)).unwrap();
    // Hub a committed batch 1 (say, before it died without answering).
    a.append(
        Table::Scored,
        1,
        &rows_of_batch(Table::Scored, 1, &[(7, 1.0), (7, 2.0)]),
    )
    .unwrap();
    a.commit_all().unwrap();
    // The gateway resent it and hub b got it too, with a new batch 2.
    b.append(
        Table::Scored,
        1,
        &rows_of_batch(Table::Scored, 1, &[(7, 1.0), (7, 2.0)]),
    )
    .unwrap();
    b.append(
        Table::Scored,
        2,
        &rows_of_batch(Table::Scored, 2, &[(7, 3.0)]),
    )
    .unwrap();
    let files = b.commit_all().unwrap();
    assert_eq!(files[0].rows, 1, "only batch 2 is new");
    assert_eq!(
        values(dir.path(), Table::Scored),
        vec![1.0, 2.0, 3.0],
        "batch 1 once"
    );
}

#[test]
fn a_files_footer_lists_its_batches_compactly_and_a_rewrite_keeps_the_list_true() {
    let ids: std::collections::BTreeSet<BatchId> = [
        ("gw-a", 1, 5),
        ("gw-a", 1, 6),
        ("gw-a", 1, 7),
        ("gw-a", 1, 9),
        ("gw-a", 2, 1),
        ("gw b\t\"odd\"", 1, 3),
    ]
    .into_iter()
    .map(|(g, i, s)| (g.to_owned(), i, s))
    .collect();
    let text = encode_batch_ids(&ids);
    assert!(
        text.contains("[5,7]"),
        "consecutive batches as one range: {text}"
    );
    let back: std::collections::BTreeSet<BatchId> =
        decode_batch_ids(&text).unwrap().into_iter().collect();
    assert_eq!(back, ids);
    assert!(decode_batch_ids("[[\"g\",1,[[9,3]]]]").is_err());

    let dir = tempfile::tempdir().unwrap();
    let mut archive = Archive::open(dir.path(), "hub", settings(1 << 30)).unwrap();
    for seq in 1..=4 {
        archive
            .append(
                Table::Scored,
                seq,
                &rows_of_batch(Table::Scored, seq, &[(0, 1.0)]),
            )
            .unwrap();
    }
    let files = archive.commit_all().unwrap();
    let listed = |path: &Path| -> Vec<u64> {
        let footer = file_key_values(path).unwrap();
        let (_, value) = footer.iter().find(|(k, _)| k == BATCHES_KEY).unwrap();
        decode_batch_ids(value)
            .unwrap()
            .into_iter()
            .map(|(_, _, s)| s)
            .collect()
    };
    assert_eq!(listed(&files[0].path), vec![1, 2, 3, 4]);
    let taken: std::collections::HashSet<BatchId> = [("elsewhere".to_owned(), 1, 2)].into();
    drop_batches(&files[0].path, &taken, &archive.writer_properties()).unwrap();
    assert_eq!(
        listed(&files[0].path),
        vec![1, 2, 3, 4],
        "nothing of that batch here"
    );
    let gateway = |p: &Path| {
        read_file(p).unwrap()[0]
            .column_by_name("gateway")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .value(0)
            .to_owned()
    };
    let taken: std::collections::HashSet<BatchId> = [(gateway(&files[0].path), 1, 3)].into();
    assert_eq!(
        drop_batches(&files[0].path, &taken, &archive.writer_properties()).unwrap(),
        3
    );
    assert_eq!(listed(&files[0].path), vec![1, 2, 4]);
    let footer = file_key_values(&files[0].path).unwrap();
    assert!(
        footer.iter().any(|(k, _)| k == "iot.wal_last_pos"),
        "other footer keys kept"
    );
}
