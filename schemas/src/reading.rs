//! The reading: one value of one metric of one device at one instant.
//!
//! Timestamps are microseconds since the Unix epoch, UTC. Microseconds (not
//! nanoseconds) because every reader we target (DuckDB, pyarrow, Spark, Trino)
//! handles `TIMESTAMP(MICROS, UTC)` natively, and devices rarely do better than
//! milliseconds anyway.
//!
//! [`ReadingColumns`] accumulates readings column by column so that building
//! the Arrow batch for an envelope copies each value once.

use std::sync::Arc;

use arrow_array::builder::{Float64Builder, StringBuilder, TimestampMicrosecondBuilder};
use arrow_array::{Array, RecordBatch};

use crate::tables;

/// Microseconds since 1970-01-01T00:00:00Z.
pub type TimestampMicros = i64;

/// One measured value.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub device: String,
    pub metric: String,
    pub ts_us: TimestampMicros,
    pub value: f64,
    /// The unit the device gave (SenML `u`), if any.
    pub unit: Option<Arc<str>>,
}

/// Column-wise accumulator for readings, turned into one Arrow batch with
/// [`ReadingColumns::finish`].
#[derive(Debug)]
pub struct ReadingColumns {
    device: StringBuilder,
    metric: StringBuilder,
    ts: TimestampMicrosecondBuilder,
    value: Float64Builder,
    /// Filled only once a reading with a unit arrives (nulls before it):
    /// batches without units keep the plain reading schema.
    unit: Option<StringBuilder>,
    len: usize,
    first_ts_us: TimestampMicros,
    last_ts_us: TimestampMicros,
}

impl Default for ReadingColumns {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl ReadingColumns {
    pub fn with_capacity(rows: usize) -> Self {
        Self {
            device: StringBuilder::with_capacity(rows, rows * 8),
            metric: StringBuilder::with_capacity(rows, rows * 8),
            ts: TimestampMicrosecondBuilder::with_capacity(rows).with_timezone(tables::UTC),
            value: Float64Builder::with_capacity(rows),
            unit: None,
            len: 0,
            first_ts_us: i64::MAX,
            last_ts_us: i64::MIN,
        }
    }

    pub fn push(&mut self, device: &str, metric: &str, ts_us: TimestampMicros, value: f64) {
        self.push_with_unit(device, metric, ts_us, value, None);
    }

    pub fn push_with_unit(
        &mut self,
        device: &str,
        metric: &str,
        ts_us: TimestampMicros,
        value: f64,
        unit: Option<&str>,
    ) {
        match (&mut self.unit, unit) {
            (Some(units), u) => units.append_option(u),
            (None, Some(u)) => {
                let mut units = StringBuilder::new();
                units.append_nulls(self.len);
                units.append_value(u);
                self.unit = Some(units);
            }
            (None, None) => {}
        }
        self.device.append_value(device);
        self.metric.append_value(metric);
        self.ts.append_value(ts_us);
        self.value.append_value(value);
        self.len += 1;
        self.first_ts_us = self.first_ts_us.min(ts_us);
        self.last_ts_us = self.last_ts_us.max(ts_us);
    }

    pub fn push_reading(&mut self, reading: &Reading) {
        self.push_with_unit(
            &reading.device,
            &reading.metric,
            reading.ts_us,
            reading.value,
            reading.unit.as_deref(),
        );
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Earliest and latest event time pushed so far, `None` when empty.
    pub fn time_range(&self) -> Option<(TimestampMicros, TimestampMicros)> {
        (self.len > 0).then_some((self.first_ts_us, self.last_ts_us))
    }

    /// Builds the batch (schema [`tables::reading_schema`]) and resets the
    /// accumulator.
    pub fn finish(&mut self) -> RecordBatch {
        let mut columns: Vec<arrow_array::ArrayRef> = vec![
            Arc::new(self.device.finish()),
            Arc::new(self.metric.finish()),
            Arc::new(self.ts.finish()),
            Arc::new(self.value.finish()),
        ];
        let schema = match self.unit.take() {
            Some(mut units) => {
                columns.push(Arc::new(units.finish()));
                tables::reading_schema_with_unit()
            }
            None => tables::reading_schema(),
        };
        self.len = 0;
        self.first_ts_us = i64::MAX;
        self.last_ts_us = i64::MIN;
        RecordBatch::try_new(schema, columns)
            .expect("builders match the reading schema by construction")
    }
}

/// Reads the rows of a batch in [`tables::reading_schema`] back into
/// [`Reading`]s. Meant for tests and tools, not for hot paths.
pub fn readings_from_batch(batch: &RecordBatch) -> Vec<Reading> {
    let view = tables::ReadingView::try_new(batch).expect("batch has the reading schema");
    (0..batch.num_rows())
        .map(|i| Reading {
            device: view.device.value(i).to_owned(),
            metric: view.metric.value(i).to_owned(),
            ts_us: view.ts.value(i),
            value: view.value.value(i),
            unit: view
                .unit
                .filter(|u| u.is_valid(i))
                .map(|u| Arc::from(u.value(i))),
        })
        .collect()
}
