//! The batches a file holds, listed in its Parquet footer (`iot.batches`),
//! and reading them from other hubs' files.

use std::fs::{self, File};
use std::io;
use std::path::Path;

use arrow_array::{Array, RecordBatch, UInt32Array};

use super::*;

pub(super) fn batch_ids(batch: &RecordBatch) -> Option<Vec<BatchId>> {
    batch_ids_of_rows(batch, &(0..batch.num_rows()).collect::<Vec<_>>())
}

/// The identities of some rows (`None` without the identity columns).
pub(super) fn batch_ids_of_rows(batch: &RecordBatch, rows: &[usize]) -> Option<Vec<BatchId>> {
    if batch.num_rows() == 0 {
        return Some(Vec::new());
    }
    let gw = StrColumn::of(batch.column_by_name(schemas::tables::GATEWAY)?.as_ref())?;
    // Unsigned in memory; signed as a file holds them (see `read::file_schema`).
    let unsigned = |name: &str| -> Option<Vec<u64>> {
        let column = batch.column_by_name(name)?.as_any();
        match column.downcast_ref::<arrow_array::UInt64Array>() {
            Some(c) => Some(rows.iter().map(|&i| c.value(i)).collect()),
            None => column
                .downcast_ref::<arrow_array::Int64Array>()
                .map(|c| rows.iter().map(|&i| c.value(i) as u64).collect()),
        }
    };
    let inc = unsigned(schemas::tables::INCARNATION)?;
    let seq = unsigned(schemas::tables::SEQ)?;
    Some(
        rows.iter()
            .enumerate()
            .map(|(k, &i)| (gw.value(i).to_owned(), inc[k], seq[k]))
            .collect(),
    )
}

/// Rewrites a (not yet visible) file without the rows of `taken` batches;
/// returns the rows kept.
pub(crate) fn drop_batches(
    path: &Path,
    taken: &std::collections::HashSet<BatchId>,
    props: &WriterProperties,
) -> io::Result<u64> {
    let footer = file_key_values(path)?;
    let batches = read_file(path)?;
    let Some(schema) = batches.first().map(|b| file_schema(&b.schema())) else {
        return Ok(0);
    };
    let rewritten = path.with_extension("rewrite");
    let file = File::create(&rewritten)?;
    let sync = file.try_clone()?;
    let mut writer =
        ArrowWriter::try_new(file, std::sync::Arc::clone(&schema), Some(props.clone()))
            .map_err(io::Error::other)?;
    let mut kept = 0u64;
    let mut kept_ids = std::collections::BTreeSet::new();
    for b in &batches {
        let ids = batch_ids(b).ok_or_else(|| io::Error::other("no batch identity columns"))?;
        kept_ids.extend(ids.iter().filter(|id| !taken.contains(*id)).cloned());
        let keep: Vec<u32> = ids
            .iter()
            .enumerate()
            .filter(|(_, id)| !taken.contains(*id))
            .map(|(i, _)| i as u32)
            .collect();
        kept += keep.len() as u64;
        let idx = UInt32Array::from(keep);
        let cols = b
            .columns()
            .iter()
            .map(|c| arrow_select::take::take(c.as_ref(), &idx, None))
            .collect::<Result<Vec<_>, _>>()
            .map_err(io::Error::other)?;
        let kept_rows = RecordBatch::try_new(b.schema(), cols).map_err(io::Error::other)?;
        writer
            .write(&to_file(&kept_rows)?)
            .map_err(io::Error::other)?;
    }
    for (k, v) in footer {
        if k != BATCHES_KEY {
            writer.append_key_value_metadata(KeyValue::new(k, v));
        }
    }
    writer.append_key_value_metadata(KeyValue::new(
        BATCHES_KEY.into(),
        encode_batch_ids(&kept_ids),
    ));
    writer.close().map_err(io::Error::other)?;
    sync.sync_all()?;
    fs::rename(&rewritten, path)?;
    Ok(kept)
}

/// Footer key listing the batches a file holds (see [`encode_batch_ids`]).
pub const BATCHES_KEY: &str = "iot.batches";

/// The batches of `ids` as JSON, `[[gateway, incarnation, [[first, last],
/// ...]], ...]` with consecutive sequence numbers as one range: a file's
/// batches are mostly consecutive per gateway, so this stays small. Other
/// hubs read it from the footer alone (see `archive::s3`).
pub fn encode_batch_ids(ids: &std::collections::BTreeSet<BatchId>) -> String {
    let mut out: Vec<(String, u64, Vec<[u64; 2]>)> = Vec::new();
    for (gateway, incarnation, seq) in ids {
        match out.last_mut() {
            Some((g, i, ranges)) if g == gateway && i == incarnation => match ranges.last_mut() {
                Some(r) if r[1] + 1 == *seq => r[1] = *seq,
                _ => ranges.push([*seq, *seq]),
            },
            _ => out.push((gateway.clone(), *incarnation, vec![[*seq, *seq]])),
        }
    }
    serde_json::to_string(&out).unwrap_or_default()
}

/// The batches an `iot.batches` footer value lists.
pub fn decode_batch_ids(text: &str) -> io::Result<Vec<BatchId>> {
    let groups: Vec<(String, u64, Vec<[u64; 2]>)> =
        serde_json::from_str(text).map_err(io::Error::other)?;
    let mut out = Vec::new();
    for (gateway, incarnation, ranges) in groups {
        for [first, last] in ranges {
            // A footer may come from another hub's object: never expand it
            // past what one file can hold.
            let count = last
                .checked_sub(first)
                .and_then(|n| n.checked_add(1))
                .filter(|&n| n as usize <= MAX_FOOTER_BATCHES - out.len())
                .ok_or_else(|| io::Error::other("an implausible batch range in a footer"))?;
            out.extend((first..first + count).map(|seq| (gateway.clone(), incarnation, seq)));
        }
    }
    Ok(out)
}

/// Most batches one file's footer may list (a file of `target-file-bytes`
/// holds far fewer).
pub const MAX_FOOTER_BATCHES: usize = 4_000_000;

/// Largest Parquet footer read from another hub's object.
pub const MAX_FOOTER_BYTES: u64 = 16 * 1024 * 1024;

/// The batches a Parquet footer lists (`iot.batches`), from its bytes
/// (untrusted: another hub's object; fuzzed). `None` when the footer lists
/// none (files written before footers did).
pub fn footer_batch_ids(footer: &[u8]) -> io::Result<Option<Vec<BatchId>>> {
    let decoded = std::panic::catch_unwind(|| {
        parquet::file::metadata::ParquetMetaDataReader::decode_metadata(footer)
    })
    .map_err(|_| io::Error::other("the Parquet footer decoder panicked"))?
    .map_err(io::Error::other)?;
    match decoded
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|e| e.key == BATCHES_KEY))
        .and_then(|e| e.value.as_deref())
    {
        Some(listed) => decode_batch_ids(listed).map(Some),
        None => Ok(None),
    }
}

/// The batches a local archive file holds: its `iot.batches` footer, or
/// (files written before footers listed them) its three identity columns.
pub(crate) fn file_batches(path: &Path) -> io::Result<Vec<BatchId>> {
    if let Some((_, listed)) = file_key_values(path)?
        .into_iter()
        .find(|(k, _)| k == BATCHES_KEY)
    {
        return decode_batch_ids(&listed);
    }
    let builder =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(File::open(path)?)
            .map_err(io::Error::other)?;
    let mask = parquet::arrow::ProjectionMask::columns(
        builder.parquet_schema(),
        [
            schemas::tables::GATEWAY,
            schemas::tables::INCARNATION,
            schemas::tables::SEQ,
        ],
    );
    let mut out = Vec::new();
    for batch in builder
        .with_projection(mask)
        .build()
        .map_err(io::Error::other)?
    {
        out.extend(batch_ids(&batch.map_err(io::Error::other)?).unwrap_or_default());
    }
    Ok(out)
}

/// A file's footer key-value metadata.
pub fn file_key_values(path: &Path) -> io::Result<Vec<(String, String)>> {
    use parquet::file::reader::FileReader;
    let reader = parquet::file::reader::SerializedFileReader::new(File::open(path)?)
        .map_err(io::Error::other)?;
    Ok(reader
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|kv| {
            kv.iter()
                .filter_map(|e| e.value.clone().map(|v| (e.key.clone(), v)))
                .collect()
        })
        .unwrap_or_default())
}

/// The distinct batches of a batch of an archive table (one envelope's
/// rows carry one identity: the first and last row settle it).
pub(super) fn distinct_batch_ids(batch: &RecordBatch) -> Vec<BatchId> {
    let Some(ids) = batch_ids_of_rows(batch, &[0, batch.num_rows().saturating_sub(1)]) else {
        return Vec::new();
    };
    if ids.first() == ids.last() {
        return ids.into_iter().take(1).collect();
    }
    let mut all = batch_ids(batch).unwrap_or_default();
    all.sort();
    all.dedup();
    all
}
