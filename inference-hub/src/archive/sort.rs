//! Sorting a row group by device, metric and time, and gathering its
//! columns.

use std::io;

use arrow_array::{Array, RecordBatch, TimestampMicrosecondArray};

use super::*;

/// The rows of `batches` in one batch ordered by device, metric, then time
/// (stable), gathered straight from the inputs (no concatenation first).
pub fn sort_by_device_metric_time(
    schema: &arrow_schema::SchemaRef,
    batches: &[RecordBatch],
) -> io::Result<RecordBatch> {
    struct Columns<'a> {
        device: StrColumn<'a>,
        metric: StrColumn<'a>,
        ts: &'a TimestampMicrosecondArray,
    }
    let columns = batches
        .iter()
        .map(|batch| {
            let strings = |name: &str| {
                batch
                    .column_by_name(name)
                    .and_then(|c| StrColumn::of(c.as_ref()))
                    .ok_or_else(|| io::Error::other(format!("no {name} string column")))
            };
            Ok(Columns {
                device: strings(schemas::tables::DEVICE)?,
                metric: strings(schemas::tables::METRIC)?,
                ts: batch
                    .column_by_name(schemas::tables::TS)
                    .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
                    .ok_or_else(|| io::Error::other("no ts column"))?,
            })
        })
        .collect::<io::Result<Vec<_>>>()?;
    // Rank the distinct names once, then sort integers: comparing strings
    // for every pair of rows dominated the archive's CPU time.
    let devices = NumberedNames::of(&columns.iter().map(|c| c.device).collect::<Vec<_>>());
    let metrics = NumberedNames::of(&columns.iter().map(|c| c.metric).collect::<Vec<_>>());
    let (device_rank, metric_rank) = (devices.ranks(), metrics.ranks());
    // A counting sort by device, then each device's rows by (metric, time,
    // position). Those come mostly in order already (a batch holds a series'
    // rows in time order, batches follow each other), which the run-aware
    // stable sort finishes in about linear time.
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let mut starts = vec![0usize; devices.distinct.len() + 1];
    for ids in &devices.ids {
        for &id in ids {
            starts[device_rank[id as usize] as usize + 1] += 1;
        }
    }
    for d in 1..starts.len() {
        starts[d] += starts[d - 1];
    }
    let mut fill = starts.clone();
    let mut keyed: Vec<(u32, i64, u32, u32)> = vec![(0, 0, 0, 0); rows];
    for (b, c) in columns.iter().enumerate() {
        for i in 0..c.ts.len() {
            let device = device_rank[devices.ids[b][i] as usize] as usize;
            let metric = metric_rank[metrics.ids[b][i] as usize];
            keyed[fill[device]] = (metric, c.ts.value(i), b as u32, i as u32);
            fill[device] += 1;
        }
    }
    for bucket in starts.windows(2) {
        keyed[bucket[0]..bucket[1]].sort();
    }
    let in_place = batches.len() == 1
        && keyed
            .iter()
            .enumerate()
            .all(|(k, &(_, _, _, i))| i as usize == k);
    if in_place {
        return Ok(batches[0].clone());
    }
    let order: Vec<(u32, u32)> = keyed.into_iter().map(|(_, _, b, i)| (b, i)).collect();
    let device_column = schema.index_of(schemas::tables::DEVICE).ok();
    let metric_column = schema.index_of(schemas::tables::METRIC).ok();
    gather(
        schema,
        batches,
        &order,
        [(device_column, devices), (metric_column, metrics)],
    )
}

/// One batch of the rows `order` (batch, row) picks from `batches`.
///
/// String columns without nulls (plain or keyed) come out as dictionary
/// arrays (keys into their distinct values): gathering a 4-byte key instead
/// of copying every string was a fifth of the archive's time. The Parquet
/// writer takes them for the table's plain string columns and writes the
/// same file.
pub(super) fn gather(
    schema: &arrow_schema::SchemaRef,
    batches: &[RecordBatch],
    order: &[(u32, u32)],
    numbered: [(Option<usize>, NumberedNames<'_>); 2],
) -> io::Result<RecordBatch> {
    use std::sync::Arc;

    use arrow_array::types::UInt32Type;
    use arrow_array::{DictionaryArray, StringArray, UInt32Array};
    use arrow_schema::{DataType, Field};
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns: Vec<arrow_array::ArrayRef> = Vec::with_capacity(schema.fields().len());
    // For the columns that need arrow's general gather (nulls, other types).
    let mut interleave_indices: Option<Vec<(usize, usize)>> = None;
    for (c, field) in schema.fields().iter().enumerate() {
        let strings: Option<Vec<StrColumn<'_>>> = batches
            .iter()
            .map(|b| StrColumn::of(b.column(c).as_ref()))
            .collect();
        let known = numbered.iter().find(|(column, _)| *column == Some(c));
        match strings {
            Some(arrays) => {
                let fresh;
                let names = match known {
                    Some((_, names)) => names,
                    None => {
                        fresh = NumberedNames::of(&arrays);
                        &fresh
                    }
                };
                let keys: UInt32Array = order
                    .iter()
                    .map(|&(b, i)| names.ids[b as usize][i as usize])
                    .collect::<Vec<u32>>()
                    .into();
                let values = Arc::new(StringArray::from(names.distinct.clone()));
                let dictionary = DictionaryArray::<UInt32Type>::try_new(keys, values)
                    .map_err(io::Error::other)?;
                fields.push(Field::new(
                    field.name(),
                    DataType::Dictionary(Box::new(DataType::UInt32), Box::new(DataType::Utf8)),
                    field.is_nullable(),
                ));
                columns.push(Arc::new(dictionary));
            }
            None => {
                let arrays: Vec<&dyn Array> =
                    batches.iter().map(|b| b.column(c).as_ref()).collect();
                let gathered = match gather_values(&arrays, order, field.data_type()) {
                    Some(values) => values,
                    None => {
                        let indices = interleave_indices.get_or_insert_with(|| {
                            order
                                .iter()
                                .map(|&(b, i)| (b as usize, i as usize))
                                .collect()
                        });
                        arrow_select::interleave::interleave(&arrays, indices)
                            .map_err(io::Error::other)?
                    }
                };
                columns.push(gathered);
                fields.push(field.as_ref().clone());
            }
        }
    }
    let gathered = Arc::new(arrow_schema::Schema::new_with_metadata(
        fields,
        schema.metadata().clone(),
    ));
    RecordBatch::try_new(gathered, columns).map_err(io::Error::other)
}

/// The rows `order` picks from one numeric column without nulls (times,
/// values, batch numbers): a plain copy out of the value buffers. `None` for
/// other columns.
pub(super) fn gather_values(
    arrays: &[&dyn Array],
    order: &[(u32, u32)],
    data_type: &arrow_schema::DataType,
) -> Option<arrow_array::ArrayRef> {
    use arrow_array::types::{Float64Type, Int64Type, TimestampMicrosecondType, UInt64Type};
    use arrow_schema::{DataType, TimeUnit};
    fn copy<T: arrow_array::ArrowPrimitiveType>(
        arrays: &[&dyn Array],
        order: &[(u32, u32)],
        data_type: &DataType,
    ) -> Option<arrow_array::ArrayRef> {
        let slices: Vec<&[T::Native]> = arrays
            .iter()
            .map(|a| {
                a.as_any()
                    .downcast_ref::<arrow_array::PrimitiveArray<T>>()
                    .filter(|a| a.null_count() == 0)
                    .map(|a| a.values().as_ref())
            })
            .collect::<Option<_>>()?;
        let values: Vec<T::Native> = order
            .iter()
            .map(|&(b, i)| slices[b as usize][i as usize])
            .collect();
        Some(std::sync::Arc::new(
            arrow_array::PrimitiveArray::<T>::new(values.into(), None)
                .with_data_type(data_type.clone()),
        ))
    }
    match data_type {
        DataType::Float64 => copy::<Float64Type>(arrays, order, data_type),
        DataType::Int64 => copy::<Int64Type>(arrays, order, data_type),
        DataType::UInt64 => copy::<UInt64Type>(arrays, order, data_type),
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            copy::<TimestampMicrosecondType>(arrays, order, data_type)
        }
        _ => None,
    }
}
