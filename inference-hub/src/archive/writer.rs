//! Writing the archive's Parquet files, one sorted row group at a time.
//!
//! The archive hands over each row group already sorted, with its non-null
//! string columns as dictionary arrays (keys into the row group's distinct
//! values, see `archive::gather`). The generic Arrow path would hash and
//! compare every one of those values again, to build its dictionary and its
//! statistics: on the hub's tables that was a third of the archive's CPU.
//! Here such a column (when its field is required, its dictionary fits a
//! dictionary page and its values fit untruncated statistics) is encoded
//! straight from the keys: a PLAIN dictionary page of the distinct values,
//! data pages of RLE/bit-packed keys (`RLE_DICTIONARY`, what every Parquet
//! writer produces for a dictionary column), exact min/max statistics from
//! the distinct values, and the page index (column and offset index). Every
//! other column goes through parquet's own Arrow column writers, and the
//! file (schema, Arrow schema, footer) is parquet's. A test reads the result
//! back through the standard reader; CI reads the archive with pyarrow and
//! DuckDB too.

use std::fs::File;
use std::io;
use std::sync::Arc;

use arrow_array::types::UInt32Type;
use arrow_array::{Array, DictionaryArray, RecordBatch, StringArray};
use arrow_schema::SchemaRef;
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::{ArrowRowGroupWriterFactory, compute_leaves};
use parquet::basic::{Compression, Encoding, PageType, Type as PhysicalType, ZstdLevel};
use parquet::column::page::{CompressedPage, Page, PageWriter};
use parquet::column::writer::ColumnCloseResult;
use parquet::data_type::ByteArray;
use parquet::file::metadata::{
    ColumnChunkMetaData, ColumnIndexBuilder, KeyValue, OffsetIndexBuilder, PageEncodingStats,
    ParquetMetaData,
};
use parquet::file::properties::WriterProperties;
use parquet::file::statistics::{Statistics, ValueStatistics};
use parquet::file::writer::{SerializedFileWriter, SerializedPageWriter, TrackedWrite};
use parquet::schema::types::{ColumnDescPtr, ColumnPath};

/// Longest value written through the direct path: statistics and the page
/// index hold values whole up to parquet's default truncation length.
const MAX_DIRECT_VALUE_BYTES: usize = 64;

/// A Parquet file of the archive being written.
pub(crate) struct ArchiveFileWriter {
    file: SerializedFileWriter<File>,
    columns: ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    props: WriterProperties,
    /// The files' zstd level (from `props`) and a compressor for it; without
    /// zstd every column takes parquet's own path.
    zstd: Option<(ZstdLevel, zstd::bulk::Compressor<'static>)>,
}

impl ArchiveFileWriter {
    pub(crate) fn try_new(
        file: File,
        schema: SchemaRef,
        props: WriterProperties,
    ) -> io::Result<Self> {
        // The files' default codec (no column of the archive overrides it).
        let zstd = match props.compression(&ColumnPath::from(String::new())) {
            Compression::ZSTD(level) => Some((
                level,
                zstd::bulk::Compressor::new(level.compression_level())?,
            )),
            _ => None,
        };
        // The files' schema (unsigned columns stored signed, see
        // `read::file_schema`). ArrowWriter embeds it in the footer; the
        // row groups are then written below it.
        let schema = super::file_schema(&schema);
        let (file, columns) = ArrowWriter::try_new(file, Arc::clone(&schema), Some(props.clone()))
            .and_then(ArrowWriter::into_serialized_writer)
            .map_err(io::Error::other)?;
        Ok(Self {
            file,
            columns,
            schema,
            props,
            zstd,
        })
    }

    /// Writes `batch` (of the file's schema) as one row group; returns how
    /// many of its columns were encoded here from their dictionaries.
    pub(crate) fn write_row_group(&mut self, batch: &RecordBatch) -> io::Result<usize> {
        if batch.num_rows() == 0 {
            return Ok(0);
        }
        if batch.num_columns() != self.schema.fields().len() {
            return Err(io::Error::other(format!(
                "a row group of {} columns for a table of {}",
                batch.num_columns(),
                self.schema.fields().len()
            )));
        }
        // The tables are flat: column c is leaf c.
        let descriptors: Vec<ColumnDescPtr> = (0..batch.num_columns())
            .map(|c| self.file.schema_descr().column(c))
            .collect();
        let index = self.file.flushed_row_groups().len();
        let mut writers = self
            .columns
            .create_column_writers(index)
            .map_err(io::Error::other)?
            .into_iter();
        let mut row_group = self.file.next_row_group().map_err(io::Error::other)?;
        let batch = super::read::to_file(batch)?;
        let mut direct_columns = 0;
        for (c, field) in self.schema.fields().iter().enumerate() {
            let column = batch.column(c);
            let writer = writers.next().expect("one writer per (flat) column");
            let direct = self.zstd.as_mut().and_then(|(level, compressor)| {
                direct_column(&descriptors[c], column.as_ref(), &self.props, *level)
                    .map(|keys| (keys, *level, compressor))
            });
            match direct {
                Some((keys, level, compressor)) => {
                    direct_columns += 1;
                    let (bytes, close) = encode_dictionary_column(
                        Arc::clone(&descriptors[c]),
                        keys,
                        self.props.data_page_row_count_limit(),
                        level,
                        compressor,
                    )?;
                    row_group
                        .append_column(&bytes, close)
                        .map_err(io::Error::other)?;
                }
                None => {
                    let mut writer = writer;
                    for leaf in compute_leaves(field, column).map_err(io::Error::other)? {
                        writer.write(&leaf).map_err(io::Error::other)?;
                    }
                    writer
                        .close()
                        .and_then(|chunk| chunk.append_to_row_group(&mut row_group))
                        .map_err(io::Error::other)?;
                }
            }
        }
        row_group.close().map_err(io::Error::other)?;
        Ok(direct_columns)
    }

    /// Writes `batch` as row groups of at most `row_group_rows` rows.
    pub(crate) fn write_row_groups(
        &mut self,
        batch: &RecordBatch,
        row_group_rows: usize,
    ) -> io::Result<()> {
        let step = row_group_rows.max(1);
        for start in (0..batch.num_rows()).step_by(step) {
            self.write_row_group(&batch.slice(start, step.min(batch.num_rows() - start)))?;
        }
        Ok(())
    }

    /// Bytes written to the file so far.
    pub(crate) fn bytes_written(&self) -> usize {
        self.file.bytes_written()
    }

    pub(crate) fn append_key_value_metadata(&mut self, kv: KeyValue) {
        self.file.append_key_value_metadata(kv);
    }

    /// Writes the footer.
    pub(crate) fn close(self) -> io::Result<ParquetMetaData> {
        self.file.close().map_err(io::Error::other)
    }
}

/// The column's dictionary if it takes the direct path (compressed with
/// the files' zstd `level`, like the rest).
fn direct_column<'a>(
    descr: &ColumnDescPtr,
    column: &'a dyn Array,
    props: &WriterProperties,
    level: ZstdLevel,
) -> Option<&'a DictionaryArray<UInt32Type>> {
    let keys = column
        .as_any()
        .downcast_ref::<DictionaryArray<UInt32Type>>()?;
    let values = keys.values().as_any().downcast_ref::<StringArray>()?;
    let path = descr.path();
    let eligible = descr.physical_type() == PhysicalType::BYTE_ARRAY
        && descr.max_def_level() == 0
        && descr.max_rep_level() == 0
        && keys.null_count() == 0
        && values.null_count() == 0
        && props.compression(path) == Compression::ZSTD(level)
        && props.dictionary_enabled(path)
        && props.statistics_enabled(path) != parquet::file::properties::EnabledStatistics::None
        && (0..values.len()).all(|i| values.value(i).len() <= MAX_DIRECT_VALUE_BYTES)
        && values.value_data().len() + 4 * values.len() <= props.dictionary_page_size_limit();
    eligible.then_some(keys)
}

/// One column chunk of a required string column from its dictionary array:
/// the chunk's bytes (offsets relative to their start) and its metadata.
fn encode_dictionary_column(
    descr: ColumnDescPtr,
    array: &DictionaryArray<UInt32Type>,
    page_rows: usize,
    level: ZstdLevel,
    zstd: &mut zstd::bulk::Compressor<'static>,
) -> io::Result<(Bytes, ColumnCloseResult)> {
    let values = array
        .values()
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("checked by direct_column");
    // The chunk's own dictionary: the values the rows use, numbered in order
    // of first use (a sliced dictionary array may not use them all).
    let mut local_of = vec![u32::MAX; values.len()];
    let mut used: Vec<u32> = Vec::new();
    let keys: Vec<u32> = array
        .keys()
        .values()
        .iter()
        .map(|&key| {
            let slot = &mut local_of[key as usize];
            if *slot == u32::MAX {
                *slot = used.len() as u32;
                used.push(key);
            }
            *slot
        })
        .collect();
    let value = |local: u32| values.value(used[local as usize] as usize).as_bytes();
    // Rank of each local value in byte order: page and chunk min/max compare
    // integers.
    let mut by_bytes: Vec<u32> = (0..used.len() as u32).collect();
    by_bytes.sort_unstable_by(|&a, &b| value(a).cmp(value(b)));
    let mut rank = vec![0u32; used.len()];
    for (r, &local) in by_bytes.iter().enumerate() {
        rank[local as usize] = r as u32;
    }

    let mut sink = TrackedWrite::new(Vec::new());
    let mut pages = SerializedPageWriter::new(&mut sink);
    let mut uncompressed_total = 0u64;
    let mut compressed_total = 0u64;

    let mut dictionary = Vec::new();
    for local in 0..used.len() as u32 {
        let v = value(local);
        dictionary.extend_from_slice(&(v.len() as u32).to_le_bytes());
        dictionary.extend_from_slice(v);
    }
    let spec = pages
        .write_page(CompressedPage::new(
            Page::DictionaryPage {
                buf: Bytes::from(zstd.compress(&dictionary)?),
                num_values: used.len() as u32,
                encoding: Encoding::PLAIN,
                is_sorted: false,
            },
            dictionary.len(),
        ))
        .map_err(io::Error::other)?;
    let dictionary_offset = spec.offset as i64;
    uncompressed_total += spec.uncompressed_size as u64;
    compressed_total += spec.compressed_size as u64;

    let bit_width = bits_for(used.len().saturating_sub(1) as u32).max(1);
    let mut column_index = ColumnIndexBuilder::new(PhysicalType::BYTE_ARRAY);
    let mut offset_index = OffsetIndexBuilder::new();
    let mut data_offset = None;
    let mut data_pages = 0;
    let mut encoded = Vec::new();
    for page in keys.chunks(page_rows.max(1)) {
        encoded.clear();
        encoded.push(bit_width);
        encode_hybrid(page, bit_width, &mut encoded);
        let spec = pages
            .write_page(CompressedPage::new(
                Page::DataPage {
                    buf: Bytes::from(zstd.compress(&encoded)?),
                    num_values: page.len() as u32,
                    encoding: Encoding::RLE_DICTIONARY,
                    def_level_encoding: Encoding::RLE,
                    rep_level_encoding: Encoding::RLE,
                    statistics: None,
                },
                encoded.len(),
            ))
            .map_err(io::Error::other)?;
        data_offset.get_or_insert(spec.offset as i64);
        data_pages += 1;
        uncompressed_total += spec.uncompressed_size as u64;
        compressed_total += spec.compressed_size as u64;
        let (min, max) = page.iter().fold((u32::MAX, 0), |(lo, hi), &k| {
            (lo.min(rank[k as usize]), hi.max(rank[k as usize]))
        });
        let (min, max) = (by_bytes[min as usize], by_bytes[max as usize]);
        column_index.append(false, value(min).to_vec(), value(max).to_vec(), 0);
        offset_index.append_offset_and_size(spec.offset as i64, spec.compressed_size as i32);
        offset_index.append_row_count(page.len() as i64);
    }
    pages.close().map_err(io::Error::other)?;

    let (min, max) = (by_bytes[0], by_bytes[by_bytes.len() - 1]);
    let statistics: Statistics = ValueStatistics::new(
        Some(ByteArray::from(value(min).to_vec())),
        Some(ByteArray::from(value(max).to_vec())),
        None,
        Some(0),
        false,
    )
    .into();
    let metadata = ColumnChunkMetaData::builder(descr)
        .set_compression(Compression::ZSTD(level))
        .set_encodings(vec![
            Encoding::PLAIN,
            Encoding::RLE,
            Encoding::RLE_DICTIONARY,
        ])
        .set_page_encoding_stats(vec![
            PageEncodingStats {
                page_type: PageType::DICTIONARY_PAGE,
                encoding: Encoding::PLAIN,
                count: 1,
            },
            PageEncodingStats {
                page_type: PageType::DATA_PAGE,
                encoding: Encoding::RLE_DICTIONARY,
                count: data_pages,
            },
        ])
        .set_total_compressed_size(compressed_total as i64)
        .set_total_uncompressed_size(uncompressed_total as i64)
        .set_num_values(keys.len() as i64)
        .set_data_page_offset(data_offset.unwrap_or(dictionary_offset))
        .set_dictionary_page_offset(Some(dictionary_offset))
        .set_statistics(statistics)
        .build()
        .map_err(io::Error::other)?;
    let bytes = Bytes::from(sink.into_inner().map_err(io::Error::other)?);
    Ok((
        bytes,
        ColumnCloseResult {
            bytes_written: compressed_total,
            rows_written: keys.len() as u64,
            metadata,
            bloom_filter: None,
            column_index: Some(column_index.build().map_err(io::Error::other)?),
            offset_index: Some(offset_index.build()),
        },
    ))
}

/// Bits needed for `max`.
fn bits_for(max: u32) -> u8 {
    (32 - max.leading_zeros()) as u8
}

/// `values` in Parquet's RLE/bit-packing hybrid encoding (without the length
/// prefix, as in a dictionary data page): runs of eight or more equal values
/// as RLE runs, the rest bit-packed in groups of eight (the last group padded
/// with zeros, which readers skip by the page's value count).
fn encode_hybrid(values: &[u32], bit_width: u8, out: &mut Vec<u8>) {
    /// Groups of eight per bit-packed run (a one-byte header, as parquet-mr
    /// writes them).
    const MAX_GROUPS: usize = 63;
    let mut literals: Vec<u32> = Vec::with_capacity(MAX_GROUPS * 8);
    let mut i = 0;
    while i < values.len() {
        let v = values[i];
        let run = values[i..].iter().take_while(|&&x| x == v).count();
        if run >= 8 {
            // Complete the pending bit-packed group from the run first.
            let fill = (8 - literals.len() % 8) % 8;
            literals.extend(std::iter::repeat_n(v, fill));
            flush_bit_packed(&mut literals, bit_width, out);
            if run - fill > 0 {
                write_rle_run(v, run - fill, bit_width, out);
            }
            i += run;
        } else {
            for &x in &values[i..i + run] {
                literals.push(x);
                if literals.len() == MAX_GROUPS * 8 {
                    flush_bit_packed(&mut literals, bit_width, out);
                }
            }
            i += run;
        }
    }
    if !literals.is_empty() {
        let padded = literals.len().next_multiple_of(8);
        literals.resize(padded, 0);
        flush_bit_packed(&mut literals, bit_width, out);
    }
}

fn write_rle_run(value: u32, count: usize, bit_width: u8, out: &mut Vec<u8>) {
    write_varint((count as u64) << 1, out);
    let bytes = usize::from(bit_width).div_ceil(8);
    out.extend_from_slice(&value.to_le_bytes()[..bytes]);
}

/// Writes `literals` (a multiple of eight of them) as one bit-packed run.
fn flush_bit_packed(literals: &mut Vec<u32>, bit_width: u8, out: &mut Vec<u8>) {
    if literals.is_empty() {
        return;
    }
    debug_assert_eq!(literals.len() % 8, 0);
    write_varint((((literals.len() / 8) as u64) << 1) | 1, out);
    let (mut acc, mut bits) = (0u64, 0u32);
    for &v in literals.iter() {
        acc |= u64::from(v) << bits;
        bits += u32::from(bit_width);
        while bits >= 8 {
            out.push(acc as u8);
            acc >>= 8;
            bits -= 8;
        }
    }
    debug_assert_eq!(bits, 0, "eight values of any width fill whole bytes");
    literals.clear();
}

fn write_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[cfg(test)]
mod tests;
