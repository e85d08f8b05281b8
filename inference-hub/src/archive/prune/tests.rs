use std::collections::BTreeMap;

use arrow_array::{Float64Array, StringArray, TimestampMicrosecondArray};

use super::*;
use crate::archive::reader::ArchiveReader;
use crate::archive::tests::{rows, settings};

const DEVICES: usize = 40;
const METRICS: [&str; 3] = ["humidity", "pressure", "temperature"];
const PER_SERIES: usize = 400;
/// Two hours, the readings of each series spread over both.
const START: i64 = 1_700_000_000_000_000 / HOUR_US * HOUR_US;
const STEP_US: i64 = 2 * HOUR_US / PER_SERIES as i64;

/// (device, metric, ts) -> value
type Rows = BTreeMap<(String, String, i64), f64>;

/// A committed archive of 40 devices x 3 metrics x 400 readings over two
/// hours, appended in batches that interleave the series (as gateways send)
/// and committed in four files per hour; `compacted`: then merged into one
/// file per hour, sorted by device, metric and time throughout.
fn archive(compacted: bool) -> (tempfile::TempDir, Rows) {
    let dir = tempfile::tempdir().unwrap();
    let mut archive = Archive::open(
        dir.path(),
        "hub",
        ArchiveSettings {
            row_group_rows: 2048,
            compaction_grace: std::time::Duration::ZERO,
            ..settings(1 << 30)
        },
    )
    .unwrap();
    let mut all = Rows::new();
    for (seq, step) in (0..PER_SERIES).enumerate() {
        let mut devices = Vec::new();
        let mut metrics = Vec::new();
        let mut times = Vec::new();
        let mut values = Vec::new();
        for d in 0..DEVICES {
            for m in METRICS {
                let ts = START + step as i64 * STEP_US + d as i64;
                let value = (d * 1000 + step) as f64;
                devices.push(format!("dev-{d:02}"));
                metrics.push(m);
                times.push(ts);
                values.push(value);
                all.insert((format!("dev-{d:02}"), m.to_owned(), ts), value);
            }
        }
        let base = rows(Table::Scored, &vec![(0, 0.0); devices.len()]);
        let schema = base.schema();
        let mut columns = base.columns().to_vec();
        columns[schema.index_of("device").unwrap()] = Arc::new(StringArray::from(devices));
        columns[schema.index_of("metric").unwrap()] = Arc::new(StringArray::from(metrics));
        columns[schema.index_of("ts").unwrap()] =
            Arc::new(TimestampMicrosecondArray::from(times).with_timezone("UTC"));
        columns[schema.index_of("value").unwrap()] = Arc::new(Float64Array::from(values));
        let batch = RecordBatch::try_new(schema, columns).unwrap();
        archive
            .append(Table::Scored, seq as u64 + 1, &batch)
            .unwrap();
        if (seq + 1) % (PER_SERIES / 8) == 0 {
            archive.commit_all().unwrap();
        }
    }
    archive.commit_all().unwrap();
    if compacted {
        while archive.compact_one(i64::MAX / 2).unwrap().is_some() {}
        assert_eq!(committed_files(dir.path(), Table::Scored).unwrap().len(), 2);
    }
    (dir, all)
}

/// What `wanted` asks for, by definition.
fn matching(all: &Rows, wanted: &Wanted) -> Rows {
    all.iter()
        .filter(|((d, m, ts), _)| {
            *ts >= wanted.from_us
                && *ts < wanted.to_us
                && wanted.device.as_ref().is_none_or(|w| w == d)
                && wanted.metric.as_ref().is_none_or(|w| w == m)
        })
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// The rows the reader decodes for `wanted`, then the matching ones.
fn read(reader: &ArchiveReader, wanted: &Wanted) -> (usize, Rows) {
    let mut decoded = 0;
    let mut out = Rows::new();
    let files = reader
        .files(Table::Scored, i64::MIN / HOUR_US..i64::MAX / HOUR_US)
        .unwrap();
    assert!(!files.is_empty());
    for file in files {
        for batch in reader.read(&file, wanted).unwrap() {
            let batch = batch.unwrap();
            decoded += batch.num_rows();
            let view = crate::state::ScoredView::new(&batch).unwrap();
            for i in 0..batch.num_rows() {
                let key = (
                    view.device.value(i).to_owned(),
                    view.metric.value(i).to_owned(),
                    view.ts.value(i),
                );
                out.insert(key, view.value.value(i));
            }
        }
    }
    let kept = out
        .into_iter()
        .filter(|((d, m, ts), _)| {
            *ts >= wanted.from_us
                && *ts < wanted.to_us
                && wanted.device.as_ref().is_none_or(|w| w == d)
                && wanted.metric.as_ref().is_none_or(|w| w == m)
        })
        .collect();
    (decoded, kept)
}

/// A pruned read gives exactly the rows a full read filtered gives, for
/// series at the edges of the sort order, missing series, and time ranges
/// on and around page and file boundaries.
#[test]
fn a_pruned_read_finds_every_wanted_row() {
    for compacted in [false, true] {
        let (dir, all) = archive(compacted);
        pruned_reads_find_every_wanted_row(&ArchiveReader::local(dir.path()), &all);
    }
}

fn pruned_reads_find_every_wanted_row(reader: &ArchiveReader, all: &Rows) {
    let end = START + 2 * HOUR_US;
    let last = START + (PER_SERIES as i64 - 1) * STEP_US + DEVICES as i64 - 1;
    let mut cases = vec![Wanted::everything()];
    for device in [
        None,
        Some("dev-00"),
        Some("dev-17"),
        Some("dev-39"),
        Some("dev-40"),
        Some("a"),
        Some("zzz"),
    ] {
        for metric in [
            None,
            Some("humidity"),
            Some("temperature"),
            Some("pressure "),
            Some(""),
        ] {
            for (from, to) in [
                (i64::MIN, i64::MAX),
                (START, end),
                (START + 1, START + 2),
                (START + HOUR_US - STEP_US, START + HOUR_US + STEP_US),
                (START + 17 * STEP_US + 17, START + 17 * STEP_US + 18),
                (end - 1, end + 5),
                // The newest reading, the max of its file's statistics.
                (last, last + 1),
                (end, end + HOUR_US),
                (START - HOUR_US, START),
            ] {
                cases.push(Wanted {
                    from_us: from,
                    to_us: to,
                    device: device.map(str::to_owned),
                    metric: metric.map(str::to_owned),
                });
            }
        }
    }
    let mut nonempty = 0;
    for wanted in &cases {
        let expected = matching(all, wanted);
        nonempty += usize::from(!expected.is_empty());
        let (_, got) = read(reader, wanted);
        assert_eq!(got, expected, "{wanted:?}");
    }
    assert!(nonempty > 40, "the cases must find rows: {nonempty}");
}

/// One series decodes a small share of a compacted archive: row groups of
/// other series are skipped.
#[test]
fn a_read_of_one_series_skips_the_other_series_row_groups() {
    let (dir, all) = archive(true);
    let reader = ArchiveReader::local(dir.path());
    let total = all.len();
    let (everything, _) = read(&reader, &Wanted::everything());
    assert_eq!(everything, total);
    let one = Wanted {
        from_us: i64::MIN,
        to_us: i64::MAX,
        device: Some("dev-17".into()),
        metric: Some("pressure".into()),
    };
    let (decoded, got) = read(&reader, &one);
    assert_eq!(got.len(), PER_SERIES);
    // Each merged file is sorted by device throughout: one series' rows
    // span at most two row groups of 2,048 in each of the two hours.
    assert!(
        decoded <= 2 * 2 * 2048,
        "decoded {decoded} of {total} rows for one series"
    );
    let (decoded, got) = read(
        &reader,
        &Wanted {
            device: Some("dev-99".into()),
            ..one
        },
    );
    assert_eq!((decoded, got.len()), (0, 0), "no row group holds dev-99");
}

/// Within one row group, the page index skips the pages of other series.
#[test]
fn pages_of_other_series_are_skipped_within_a_row_group() {
    let schema = Table::Scored.schema();
    let n = 10_000usize;
    let base = rows(Table::Scored, &vec![(0, 0.0); n]);
    let mut columns = base.columns().to_vec();
    columns[schema.index_of("device").unwrap()] = Arc::new(StringArray::from_iter_values(
        (0..n).map(|i| format!("dev-{:03}", i / 100)),
    ));
    columns[schema.index_of("ts").unwrap()] = Arc::new(
        TimestampMicrosecondArray::from_iter_values((0..n).map(|i| (i % 100) as i64))
            .with_timezone("UTC"),
    );
    let batch = RecordBatch::try_new(Arc::clone(&schema), columns).unwrap();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_statistics_enabled(parquet::file::properties::EnabledStatistics::Page)
        .set_data_page_row_count_limit(250)
        .set_write_batch_size(250)
        .build();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("one-group.parquet");
    let mut writer = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&path).unwrap(),
        file_schema(&schema),
        Some(props),
    )
    .unwrap();
    writer.write(&read::to_file(&batch).unwrap()).unwrap();
    writer.close().unwrap();

    let builder =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new_with_options(
            std::fs::File::open(&path).unwrap(),
            reader_options(),
        )
        .unwrap();
    assert_eq!(builder.metadata().num_row_groups(), 1);
    let wanted = Wanted {
        device: Some("dev-042".into()),
        ..Wanted::everything()
    };
    let plan = plan(builder.metadata(), builder.schema(), &wanted).unwrap();
    assert_eq!(plan.row_groups, vec![0]);
    let rows = plan.rows(builder.metadata());
    assert!((100..=500).contains(&rows), "{rows} of {n} rows planned");
    let got: usize = read_local(&path, &wanted)
        .unwrap()
        .map(|b| {
            let b = b.unwrap();
            let devices = b
                .column_by_name("device")
                .unwrap()
                .as_string::<i32>()
                .clone();
            (0..b.num_rows())
                .filter(|&i| devices.value(i) == "dev-042")
                .count()
        })
        .sum();
    assert_eq!(got, 100);
}
