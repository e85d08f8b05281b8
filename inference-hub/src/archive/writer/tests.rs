use std::sync::Arc;

use arrow_array::types::UInt32Type;
use arrow_array::{Array, ArrayRef, DictionaryArray, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::reader::FileReader;
use parquet::file::serialized_reader::SerializedFileReader;
use parquet::file::statistics::Statistics;

use super::*;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("device", DataType::Utf8, false),
        Field::new("n", DataType::Int64, false),
        Field::new("tag", DataType::Utf8, true),
    ]))
}

fn props() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap()))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_data_page_row_count_limit(1000)
        .build()
}

/// A row group whose `device` column is a dictionary array over `names`
/// (some of them unused) with `keys`, the way the archive's gather makes
/// them; `tag` is nullable and goes through parquet's own writer.
fn row_group(names: &[String], keys: &[u32]) -> RecordBatch {
    let values = StringArray::from_iter_values(names);
    let device =
        DictionaryArray::<UInt32Type>::try_new(keys.to_vec().into(), Arc::new(values)).unwrap();
    let n = Int64Array::from_iter_values((0..keys.len()).map(|i| i as i64));
    let tag = StringArray::from_iter(
        (0..keys.len()).map(|i| (i % 3 != 0).then(|| format!("t{}", i % 5))),
    );
    // As gather does: the batch's own schema has the dictionary type; the
    // file's has plain strings.
    let batch_schema = Arc::new(Schema::new(vec![
        Field::new(
            "device",
            DataType::Dictionary(Box::new(DataType::UInt32), Box::new(DataType::Utf8)),
            false,
        ),
        Field::new("n", DataType::Int64, false),
        Field::new("tag", DataType::Utf8, true),
    ]));
    RecordBatch::try_new(
        batch_schema,
        vec![Arc::new(device) as ArrayRef, Arc::new(n), Arc::new(tag)],
    )
    .unwrap()
}

/// Keys with runs of every length, including runs of 8+ that start off a
/// group boundary, over dictionaries of `size` names.
fn keys(rng: &mut fastrand::Rng, rows: usize, size: u32) -> Vec<u32> {
    let mut keys = Vec::with_capacity(rows);
    while keys.len() < rows {
        let key = rng.u32(0..size);
        let run = match rng.u8(0..4) {
            0 => 1,
            1 => rng.usize(2..8),
            2 => rng.usize(8..40),
            _ => rng.usize(1..400),
        };
        keys.extend(std::iter::repeat_n(key, run.min(rows - keys.len())));
    }
    keys
}

/// The file's bytes, and how many column chunks took the direct path.
fn write(batches: &[RecordBatch]) -> (Bytes, usize) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.parquet");
    let mut writer =
        ArchiveFileWriter::try_new(File::create(&path).unwrap(), schema(), props()).unwrap();
    let mut direct = 0;
    for b in batches {
        direct += writer.write_row_group(b).unwrap();
    }
    writer.close().unwrap();
    (Bytes::from(std::fs::read(&path).unwrap()), direct)
}

fn read(bytes: &Bytes) -> Vec<RecordBatch> {
    ParquetRecordBatchReaderBuilder::try_new(bytes.clone())
        .unwrap()
        .build()
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn strings(batches: &[RecordBatch], column: &str) -> Vec<Option<String>> {
    batches
        .iter()
        .flat_map(|b| {
            let col = b.column_by_name(column).unwrap();
            let col = arrow_cast_utf8(col);
            (0..col.len())
                .map(|i| col.is_valid(i).then(|| col.value(i).to_owned()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The reader returns plain strings for a file without an embedded
/// dictionary type; accept either.
fn arrow_cast_utf8(a: &ArrayRef) -> StringArray {
    if let Some(s) = a.as_any().downcast_ref::<StringArray>() {
        return s.clone();
    }
    let d = a
        .as_any()
        .downcast_ref::<DictionaryArray<UInt32Type>>()
        .expect("strings");
    let values = d.values().as_any().downcast_ref::<StringArray>().unwrap();
    StringArray::from_iter(d.keys().iter().map(|k| k.map(|k| values.value(k as usize))))
}

#[test]
fn direct_dictionary_columns_read_back_exactly_with_statistics_and_page_index() {
    let mut rng = fastrand::Rng::with_seed(7);
    for (size, rows) in [
        (1u32, 10usize),
        (2, 7),
        (3, 4096),
        (255, 3000),
        (256, 2999),
        (70_000, 20_000),
        (9, 1),
    ] {
        // Names of different lengths, in no particular order; a few unused.
        let names: Vec<String> = (0..size)
            .map(|i| {
                format!(
                    "{}dev-{}",
                    ["z", "", "a", "m"][i as usize % 4],
                    i * 7919 % 100_003
                )
            })
            .collect();
        let groups: Vec<RecordBatch> = (0..2)
            .map(|_| row_group(&names, &keys(&mut rng, rows, size)))
            .collect();
        let (bytes, direct) = write(&groups);
        if size <= 256 {
            assert_eq!(direct, 2, "the device chunks are written from their keys");
        }

        let expected: Vec<Option<String>> = groups
            .iter()
            .flat_map(|g| {
                let d = g
                    .column(0)
                    .as_any()
                    .downcast_ref::<DictionaryArray<UInt32Type>>()
                    .unwrap();
                d.keys()
                    .values()
                    .iter()
                    .map(|&k| Some(names[k as usize].clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let back = read(&bytes);
        assert_eq!(
            strings(&back, "device"),
            expected,
            "{size} names, {rows} rows"
        );
        let expected_tags: Vec<Option<String>> = groups
            .iter()
            .flat_map(|g| {
                let t = g.column(2).as_any().downcast_ref::<StringArray>().unwrap();
                (0..t.len())
                    .map(|i| t.is_valid(i).then(|| t.value(i).to_owned()))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(strings(&back, "tag"), expected_tags);

        // Chunk statistics: the exact min and max of each row group's values;
        // the chunk is dictionary-encoded, with a page index.
        let reader = SerializedFileReader::new(bytes.clone()).unwrap();
        let meta = reader.metadata();
        for (g, group) in groups.iter().enumerate() {
            let d = group
                .column(0)
                .as_any()
                .downcast_ref::<DictionaryArray<UInt32Type>>()
                .unwrap();
            let used: Vec<&str> = d
                .keys()
                .values()
                .iter()
                .map(|&k| names[k as usize].as_str())
                .collect();
            let (min, max) = (used.iter().min().unwrap(), used.iter().max().unwrap());
            let column = meta.row_group(g).column(0);
            match column.statistics().expect("statistics") {
                Statistics::ByteArray(s) => {
                    assert_eq!(s.min_opt().unwrap().as_utf8().unwrap(), *min);
                    assert_eq!(s.max_opt().unwrap().as_utf8().unwrap(), *max);
                    assert_eq!(s.null_count_opt(), Some(0));
                }
                other => panic!("{other:?}"),
            }
            assert!(column.encodings().any(|e| e == Encoding::RLE_DICTIONARY));
            assert!(column.dictionary_page_offset().is_some());
        }
        let with_index = ParquetRecordBatchReaderBuilder::try_new_with_options(
            bytes.clone(),
            parquet::arrow::arrow_reader::ArrowReaderOptions::new()
                .with_page_index_policy(parquet::file::metadata::PageIndexPolicy::Required),
        )
        .unwrap();
        let index = with_index.metadata().offset_index().expect("offset index");
        assert_eq!(
            index[0][0].page_locations().len(),
            rows.div_ceil(1000),
            "pages of at most the row limit"
        );
        assert!(with_index.metadata().column_index().is_some());
    }
}

#[test]
fn the_hybrid_encoding_decodes_to_the_same_keys() {
    // Decoded by parquet itself: one column chunk through the reader, for
    // bit widths 1 to 13 and every run shape.
    let mut rng = fastrand::Rng::with_seed(11);
    for bits in 1..=13u32 {
        let names: Vec<String> = (0..1u32 << bits).map(|i| format!("n{i:06}")).collect();
        let k = keys(&mut rng, 1500, names.len() as u32);
        let (bytes, direct) = write(&[row_group(&names, &k)]);
        assert_eq!(direct, 1);
        let back = strings(&read(&bytes), "device");
        let expected: Vec<Option<String>> =
            k.iter().map(|&k| Some(names[k as usize].clone())).collect();
        assert_eq!(back, expected, "{bits} bits");
    }
}

/// Differential test of the direct path: the same row groups written by
/// this writer and by parquet's own `ArrowWriter` (the device column as
/// plain strings, the same properties) read back as the same values, with
/// the same row groups and the same chunk statistics.
#[test]
fn the_direct_writer_agrees_with_arrow_writer() {
    let mut rng = fastrand::Rng::with_seed(11);
    for (size, rows) in [(1u32, 5usize), (3, 4096), (200, 2500), (5000, 9000)] {
        let names: Vec<String> = (0..size).map(|i| format!("d{}", (i * 31) % 997)).collect();
        let groups: Vec<RecordBatch> = (0..3)
            .map(|_| row_group(&names, &keys(&mut rng, rows, size)))
            .collect();
        let (ours, _) = write(&groups);
        // The same rows with the device column as plain strings.
        let plain: Vec<RecordBatch> = groups
            .iter()
            .map(|g| {
                let device: ArrayRef = Arc::new(arrow_cast_utf8(g.column(0)));
                RecordBatch::try_new(
                    schema(),
                    vec![device, Arc::clone(g.column(1)), Arc::clone(g.column(2))],
                )
                .unwrap()
            })
            .collect();
        let mut theirs = Vec::new();
        let mut w = ArrowWriter::try_new(&mut theirs, schema(), Some(props())).unwrap();
        for p in &plain {
            w.write(p).unwrap();
            w.flush().unwrap(); // one row group per batch, as ours
        }
        w.close().unwrap();
        let theirs = Bytes::from(theirs);
        let (a, b) = (read(&ours), read(&theirs));
        for column in ["device", "tag"] {
            assert_eq!(
                strings(&a, column),
                strings(&b, column),
                "{size}/{rows} {column}"
            );
        }
        let numbers = |batches: &[RecordBatch]| -> Vec<i64> {
            batches
                .iter()
                .flat_map(|b| {
                    b.column(1)
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .unwrap()
                        .values()
                        .to_vec()
                })
                .collect()
        };
        assert_eq!(numbers(&a), numbers(&b));
        let (ma, mb) = (
            SerializedFileReader::new(ours.clone()).unwrap(),
            SerializedFileReader::new(theirs.clone()).unwrap(),
        );
        let (ma, mb) = (ma.metadata(), mb.metadata());
        assert_eq!(ma.num_row_groups(), mb.num_row_groups());
        for g in 0..ma.num_row_groups() {
            for c in 0..3 {
                let (sa, sb) = (
                    ma.row_group(g).column(c).statistics(),
                    mb.row_group(g).column(c).statistics(),
                );
                let describe = |s: Option<&Statistics>| {
                    s.map(|s| {
                        (
                            s.min_bytes_opt().map(<[u8]>::to_vec),
                            s.max_bytes_opt().map(<[u8]>::to_vec),
                            s.null_count_opt(),
                        )
                    })
                };
                assert_eq!(describe(sa), describe(sb), "row group {g} column {c}");
            }
        }
    }
}
