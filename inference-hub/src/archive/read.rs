//! Reading the archive back: committed files, their WAL ranges and hours,
//! whole tables.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{Array, RecordBatch};
use arrow_schema::SchemaRef;

use super::*;

/// The WAL range a committed file's name records.
pub fn wal_range(file: &Path) -> Option<(u64, u64)> {
    let stem = file.file_name()?.to_str()?.strip_suffix(".parquet")?;
    let mut parts = stem.rsplitn(3, '-');
    let last = parts.next()?.parse().ok()?;
    let first = parts.next()?.parse().ok()?;
    Some((first, last))
}

/// Every record batch of one Parquet file (unsigned columns as in memory,
/// see [`file_schema`]).
pub fn read_file(path: &Path) -> io::Result<Vec<RecordBatch>> {
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(File::open(path)?)
        .and_then(|b| b.build())
        .map_err(io::Error::other)?
        .map(|b| b.map_err(io::Error::other).and_then(from_file))
        .collect()
}

/// [`read_file`] of a file's bytes (an object read from the bucket).
pub fn read_parquet_bytes(bytes: bytes::Bytes) -> io::Result<Vec<RecordBatch>> {
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .map_err(io::Error::other)?
        .map(|b| b.map_err(io::Error::other).and_then(from_file))
        .collect()
}

/// Field metadata marking a file column that holds an unsigned in-memory
/// column as signed.
const UNSIGNED: &str = "iot.unsigned";

/// The schema of the files of a table whose in-memory schema is `schema`:
/// unsigned 64-bit columns (`incarnation`, `seq`) are stored as signed
/// 64-bit integers, because Delta Lake has no unsigned types and its readers
/// refuse a file whose column is unsigned where the table says `long`. The
/// bits are kept (values from 2^63 up read as negative numbers elsewhere);
/// [`read_file`] gives the unsigned columns back.
pub fn file_schema(schema: &SchemaRef) -> SchemaRef {
    if !schema
        .fields()
        .iter()
        .any(|f| f.data_type() == &arrow_schema::DataType::UInt64)
    {
        return Arc::clone(schema);
    }
    let fields: Vec<arrow_schema::Field> = schema
        .fields()
        .iter()
        .map(|f| {
            if f.data_type() == &arrow_schema::DataType::UInt64 {
                let mut metadata = f.metadata().clone();
                metadata.insert(UNSIGNED.into(), "true".into());
                f.as_ref()
                    .clone()
                    .with_data_type(arrow_schema::DataType::Int64)
                    .with_metadata(metadata)
            } else {
                f.as_ref().clone()
            }
        })
        .collect();
    Arc::new(arrow_schema::Schema::new_with_metadata(
        fields,
        schema.metadata().clone(),
    ))
}

/// `batch` (an in-memory table batch) with its unsigned columns stored
/// signed, as [`file_schema`] says.
pub(crate) fn to_file(batch: &RecordBatch) -> io::Result<RecordBatch> {
    let schema = batch.schema();
    let file = file_schema(&schema);
    if Arc::ptr_eq(&file, &schema) {
        return Ok(batch.clone());
    }
    let columns = batch
        .columns()
        .iter()
        .map(
            |c| match c.as_any().downcast_ref::<arrow_array::UInt64Array>() {
                Some(unsigned) => {
                    Arc::new(unsigned.unary::<_, arrow_array::types::Int64Type>(|v| v as i64))
                        as arrow_array::ArrayRef
                }
                None => Arc::clone(c),
            },
        )
        .collect();
    RecordBatch::try_new(file, columns).map_err(io::Error::other)
}

/// A batch read from a file, with the columns [`file_schema`] stored signed
/// unsigned again.
pub(super) fn from_file(batch: RecordBatch) -> io::Result<RecordBatch> {
    let schema = batch.schema();
    if !schema
        .fields()
        .iter()
        .any(|f| f.metadata().contains_key(UNSIGNED))
    {
        return Ok(batch);
    }
    let mut fields = Vec::new();
    let mut columns = Vec::new();
    for (f, c) in schema.fields().iter().zip(batch.columns()) {
        match c.as_any().downcast_ref::<arrow_array::Int64Array>() {
            Some(signed) if f.metadata().contains_key(UNSIGNED) => {
                let mut metadata = f.metadata().clone();
                metadata.remove(UNSIGNED);
                fields.push(
                    f.as_ref()
                        .clone()
                        .with_data_type(arrow_schema::DataType::UInt64)
                        .with_metadata(metadata),
                );
                columns.push(Arc::new(
                    signed.unary::<_, arrow_array::types::UInt64Type>(|v| v as u64),
                ) as arrow_array::ArrayRef);
            }
            _ => {
                fields.push(f.as_ref().clone());
                columns.push(Arc::clone(c));
            }
        }
    }
    RecordBatch::try_new(
        Arc::new(arrow_schema::Schema::new_with_metadata(
            fields,
            schema.metadata().clone(),
        )),
        columns,
    )
    .map_err(io::Error::other)
}

/// `batch` with the columns of `schema`, by name: columns the file predates
/// (added later, nullable) are filled with nulls. This is the schema
/// evolution rule applied when old files are rewritten.
pub fn conform(batch: &RecordBatch, schema: &SchemaRef) -> io::Result<RecordBatch> {
    if batch.schema().fields() == schema.fields() {
        return Ok(batch.clone());
    }
    let columns = schema
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => Ok(Arc::clone(c)),
            Some(_) => Err(io::Error::other(format!(
                "column {} changed type",
                f.name()
            ))),
            None if f.is_nullable() => {
                Ok(arrow_array::new_null_array(f.data_type(), batch.num_rows()))
            }
            None => Err(io::Error::other(format!(
                "required column {} is missing",
                f.name()
            ))),
        })
        .collect::<io::Result<Vec<_>>>()?;
    RecordBatch::try_new(Arc::clone(schema), columns).map_err(io::Error::other)
}

/// The event hour (hours since the epoch) of a file in the archive layout
/// (from its `date=`/`hour=` directories; a `hub=` level is skipped).
pub fn hour_of_file(file: &Path) -> Option<i64> {
    let mut hour_dir = file.parent()?;
    if hour_dir.file_name()?.to_str()?.starts_with("hub=") {
        hour_dir = hour_dir.parent()?;
    }
    let date_dir = hour_dir.parent()?;
    hour_index(
        date_dir.file_name()?.to_str()?.strip_prefix("date=")?,
        hour_dir.file_name()?.to_str()?.strip_prefix("hour=")?,
    )
}

/// Hours since the epoch of partition values `YYYY-MM-DD` and `HH` (the
/// inverse of [`PartitionKey::date_and_hour`]).
pub(crate) fn hour_index(date: &str, hour: &str) -> Option<i64> {
    let hour: i64 = hour.parse().ok()?;
    let day = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
    let midnight = day.and_hms_opt(0, 0, 0)?.and_utc().timestamp_micros();
    Some(midnight.div_euclid(HOUR_US) + hour)
}

/// All files below `dir` (missing dir = none).
pub fn walk_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let entries = match fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                stack.push(entry.path());
            } else {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The files the newest version of a local archive's `table` holds (none
/// before anything was committed), as paths below `root`. Safe to call from
/// anywhere, an async task included (the log is read on a thread of its
/// own).
pub fn committed_files(root: &Path, table: Table) -> Result<Vec<PathBuf>, ArchiveError> {
    committed_files_in(root, table, i64::MIN..i64::MAX)
}

/// [`committed_files`] of the event hours (hours since the epoch) in
/// `hours`.
pub fn committed_files_in(
    root: &Path,
    table: Table,
    hours: std::ops::Range<i64>,
) -> Result<Vec<PathBuf>, ArchiveError> {
    table_files(&root.join(table.name()), hours)
}

/// The files the newest version of the Delta table at `table_root` holds
/// in the event hours `hours` (none if nothing was ever committed there).
/// Safe to call from an async task (the log is read on a thread of its own).
pub fn table_files(
    table_root: &Path,
    hours: std::ops::Range<i64>,
) -> Result<Vec<PathBuf>, ArchiveError> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let url = url::Url::from_directory_path(std::path::absolute(table_root)?)
                    .map_err(|()| io::Error::other("not a usable archive path"))?;
                let store = Arc::new(object_store::local::LocalFileSystem::new());
                let Some(log) = iot_delta::Table::open_existing(store, url)? else {
                    return Ok(Vec::new());
                };
                let snapshot = log.snapshot()?;
                let mut files = Vec::new();
                for file in snapshot.files()? {
                    let path = table_root.join(&file.path);
                    if hour_of_file(&path).is_some_and(|h| hours.contains(&h)) {
                        files.push(path);
                    }
                }
                files.sort();
                Ok(files)
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("reading the table log panicked").into()))
    })
}

/// The files waiting under the local root of an archive in the bucket
/// (committed locally, not yet uploaded), for the uploader and tests.
pub fn staged_files(root: &Path, table: Table) -> io::Result<Vec<PathBuf>> {
    Ok(walk_files(&root.join(table.name()))?
        .into_iter()
        .filter(|p| {
            p.extension().is_some_and(|e| e == "parquet")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect())
}

/// Reads every committed file of a local archive's table (tests, tools;
/// not for large archives: it loads everything).
pub fn read_table(root: &Path, table: Table) -> Result<Vec<RecordBatch>, ArchiveError> {
    let mut out = Vec::new();
    for path in committed_files(root, table)? {
        out.extend(read_file(&path)?);
    }
    Ok(out)
}
