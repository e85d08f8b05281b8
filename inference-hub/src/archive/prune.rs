//! Reading only the part of an archive file a query can use.
//!
//! Every archive file is sorted by device, metric and time within each row
//! group and carries min/max statistics for each row group and each page
//! (the page index). A read that wants one series, or one time range, skips
//! the row groups and then the pages whose statistics cannot hold a wanted
//! row, and decodes the rest. Files in the bucket are read by ranges (the
//! footer, the page index, the chosen pages) instead of whole.
//!
//! Pruning only ever drops rows that cannot match: the caller still filters
//! the rows it is given (a kept page holds other series and times too).

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMicrosecondType;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::Schema;
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use parquet::arrow::arrow_reader::{ArrowReaderOptions, RowSelection, RowSelector};
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData};

use super::*;

/// The rows a read wants: a time range and, optionally, one device and one
/// metric. Columns a table does not have (or a file lacks statistics for)
/// prune nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// Event time range start, microseconds since the epoch.
    pub from_us: i64,
    /// Event time range end, exclusive.
    pub to_us: i64,
    pub device: Option<String>,
    pub metric: Option<String>,
}

impl Wanted {
    /// Every row of the file.
    pub fn everything() -> Self {
        Self {
            from_us: i64::MIN,
            to_us: i64::MAX,
            device: None,
            metric: None,
        }
    }
}

/// A file's wanted record batches, decoded as they are pulled.
pub type Batches<'a> = Box<dyn Iterator<Item = io::Result<RecordBatch>> + 'a>;

/// How the reader is told to read a file: with the page index when the file
/// has one (older or foreign files without it are read by row groups).
pub(crate) fn reader_options() -> ArrowReaderOptions {
    ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional)
}

/// What to decode of a file: the row groups that may hold wanted rows and,
/// with a page index, the rows of their pages that may.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan {
    pub row_groups: Vec<usize>,
    pub selection: Option<RowSelection>,
}

impl Plan {
    /// Decoded rows (of `metadata`'s file) this plan reads.
    #[cfg(test)]
    pub(crate) fn rows(&self, metadata: &ParquetMetaData) -> usize {
        match &self.selection {
            Some(s) => s.row_count(),
            None => self
                .row_groups
                .iter()
                .map(|&g| metadata.row_group(g).num_rows() as usize)
                .sum(),
        }
    }
}

/// One condition on a column's values.
enum Condition<'a> {
    Equals(&'a str),
    /// `[from, to)` in microseconds.
    During(i64, i64),
}

impl Condition<'_> {
    /// Per entry of `mins`/`maxes` (row groups or pages): may it hold a
    /// matching value? Entries without statistics may.
    fn may_match(&self, mins: &ArrayRef, maxes: &ArrayRef) -> Vec<bool> {
        match self {
            Condition::Equals(want) => {
                let (Some(mins), Some(maxes)) =
                    (mins.as_string_opt::<i32>(), maxes.as_string_opt::<i32>())
                else {
                    return vec![true; mins.len()];
                };
                (0..mins.len())
                    .map(|i| {
                        (mins.is_null(i) || mins.value(i) <= *want)
                            && (maxes.is_null(i) || *want <= maxes.value(i))
                    })
                    .collect()
            }
            Condition::During(from, to) => {
                let (Some(mins), Some(maxes)) = (
                    mins.as_primitive_opt::<TimestampMicrosecondType>(),
                    maxes.as_primitive_opt::<TimestampMicrosecondType>(),
                ) else {
                    return vec![true; mins.len()];
                };
                (0..mins.len())
                    .map(|i| {
                        (mins.is_null(i) || mins.value(i) < *to)
                            && (maxes.is_null(i) || maxes.value(i) >= *from)
                    })
                    .collect()
            }
        }
    }
}

/// The row groups and pages of a file (`metadata`, its Arrow `schema`) that
/// may hold rows `wanted` asks for.
pub(crate) fn plan(
    metadata: &ParquetMetaData,
    schema: &Schema,
    wanted: &Wanted,
) -> parquet::errors::Result<Plan> {
    let mut conditions = Vec::new();
    if let Some(device) = &wanted.device {
        conditions.push((schemas::tables::DEVICE, Condition::Equals(device)));
    }
    if let Some(metric) = &wanted.metric {
        conditions.push((schemas::tables::METRIC, Condition::Equals(metric)));
    }
    if wanted.from_us > i64::MIN || wanted.to_us < i64::MAX {
        conditions.push((
            schemas::tables::TS,
            Condition::During(wanted.from_us, wanted.to_us),
        ));
    }
    let groups = metadata.row_groups();
    let mut keep = vec![true; groups.len()];
    let mut converters = Vec::new();
    for (column, condition) in &conditions {
        if schema.field_with_name(column).is_err() {
            continue;
        }
        let converter =
            StatisticsConverter::try_new(column, schema, metadata.file_metadata().schema_descr())?;
        let may = condition.may_match(
            &converter.row_group_mins(groups)?,
            &converter.row_group_maxes(groups)?,
        );
        for (k, m) in keep.iter_mut().zip(may) {
            *k &= m;
        }
        converters.push((converter, condition));
    }
    let row_groups: Vec<usize> = (0..groups.len()).filter(|&g| keep[g]).collect();
    let (Some(column_index), Some(offset_index)) =
        (metadata.column_index(), metadata.offset_index())
    else {
        return Ok(Plan {
            row_groups,
            selection: None,
        });
    };
    let mut selection: Option<RowSelection> = None;
    for (converter, condition) in &converters {
        let Some(rows) = converter.data_page_row_counts(offset_index, groups, &row_groups)? else {
            continue;
        };
        let may = condition.may_match(
            &converter.data_page_mins(column_index, offset_index, &row_groups)?,
            &converter.data_page_maxes(column_index, offset_index, &row_groups)?,
        );
        if rows.null_count() > 0 || rows.len() != may.len() {
            continue;
        }
        let selectors: Vec<RowSelector> = rows
            .values()
            .iter()
            .zip(may)
            .map(|(&n, keep)| {
                if keep {
                    RowSelector::select(n as usize)
                } else {
                    RowSelector::skip(n as usize)
                }
            })
            .collect();
        let this = RowSelection::from(selectors);
        selection = Some(match selection {
            Some(s) => s.intersection(&this),
            None => this,
        });
    }
    Ok(Plan {
        row_groups,
        selection,
    })
}

/// The wanted rows of a local file, decoded batch by batch (unsigned
/// columns as in memory, see [`file_schema`]).
pub fn read_local(path: &std::path::Path, wanted: &Wanted) -> io::Result<Batches<'static>> {
    let builder =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new_with_options(
            std::fs::File::open(path)?,
            reader_options(),
        )
        .map_err(io::Error::other)?;
    let plan = plan(builder.metadata(), builder.schema(), wanted).map_err(io::Error::other)?;
    let mut builder = builder.with_row_groups(plan.row_groups);
    if let Some(selection) = plan.selection {
        builder = builder.with_row_selection(selection);
    }
    let reader = builder.build().map_err(io::Error::other)?;
    Ok(Box::new(reader.map(|b| {
        b.map_err(io::Error::other).and_then(read::from_file)
    })))
}

/// The wanted rows of an object in the bucket, read by ranges (footer,
/// page index, chosen pages) and decoded batch by batch.
pub fn read_object<'a>(
    tables: &'a super::tables::ArchiveTables,
    key: &object_store::path::Path,
    wanted: &Wanted,
) -> io::Result<Batches<'a>> {
    let reader = ObjectFile {
        store: Arc::clone(tables.store()),
        key: key.clone(),
    };
    let mut stream = tables.block_on(async {
        let builder = parquet::arrow::ParquetRecordBatchStreamBuilder::new_with_options(
            reader,
            reader_options(),
        )
        .await
        .map_err(io::Error::other)?;
        let plan = plan(builder.metadata(), builder.schema(), wanted).map_err(io::Error::other)?;
        let mut builder = builder.with_row_groups(plan.row_groups);
        if let Some(selection) = plan.selection {
            builder = builder.with_row_selection(selection);
        }
        builder.build().map_err(io::Error::other)
    })?;
    Ok(Box::new(std::iter::from_fn(move || {
        use futures_util::StreamExt;
        tables
            .block_on(stream.next())
            .map(|b| b.map_err(io::Error::other).and_then(read::from_file))
    })))
}

/// An object read by byte ranges: the footer from the end (its size need
/// not be known), then the page index and the pages the plan keeps.
struct ObjectFile {
    store: Arc<dyn object_store::ObjectStore>,
    key: object_store::path::Path,
}

fn store_error(e: object_store::Error) -> parquet::errors::ParquetError {
    parquet::errors::ParquetError::External(Box::new(e))
}

impl parquet::arrow::async_reader::AsyncFileReader for ObjectFile {
    fn get_bytes(
        &mut self,
        range: std::ops::Range<u64>,
    ) -> BoxFuture<'_, parquet::errors::Result<bytes::Bytes>> {
        Box::pin(async move {
            self.store
                .get_range(&self.key, range)
                .await
                .map_err(store_error)
        })
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<bytes::Bytes>>> {
        // object_store merges nearby ranges into one request.
        Box::pin(async move {
            self.store
                .get_ranges(&self.key, &ranges)
                .await
                .map_err(store_error)
        })
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        Box::pin(async move {
            parquet::file::metadata::ParquetMetaDataReader::new()
                .with_arrow_reader_options(options)
                .load_via_suffix_and_finish(self)
                .await
                .map(Arc::new)
        })
    }
}

impl parquet::arrow::async_reader::MetadataSuffixFetch for &mut ObjectFile {
    fn fetch_suffix(
        &mut self,
        suffix: usize,
    ) -> BoxFuture<'_, parquet::errors::Result<bytes::Bytes>> {
        Box::pin(async move {
            let options = object_store::GetOptions {
                range: Some(object_store::GetRange::Suffix(suffix as u64)),
                ..Default::default()
            };
            self.store
                .get_opts(&self.key, options)
                .await
                .map_err(store_error)?
                .bytes()
                .await
                .map_err(store_error)
        })
    }
}

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

#[cfg(test)]
mod tests;
