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

use arrow_array::RecordBatch;
use arrow_array::builder::{Float64Builder, StringBuilder, TimestampMicrosecondBuilder};

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
}

/// Column-wise accumulator for readings, turned into one Arrow batch with
/// [`ReadingColumns::finish`].
#[derive(Debug)]
pub struct ReadingColumns {
    device: StringBuilder,
    metric: StringBuilder,
    ts: TimestampMicrosecondBuilder,
    value: Float64Builder,
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
            len: 0,
            first_ts_us: i64::MAX,
            last_ts_us: i64::MIN,
        }
    }

    pub fn push(&mut self, device: &str, metric: &str, ts_us: TimestampMicros, value: f64) {
        self.device.append_value(device);
        self.metric.append_value(metric);
        self.ts.append_value(ts_us);
        self.value.append_value(value);
        self.len += 1;
        self.first_ts_us = self.first_ts_us.min(ts_us);
        self.last_ts_us = self.last_ts_us.max(ts_us);
    }

    pub fn push_reading(&mut self, reading: &Reading) {
        self.push(
            &reading.device,
            &reading.metric,
            reading.ts_us,
            reading.value,
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
        let columns: Vec<arrow_array::ArrayRef> = vec![
            Arc::new(self.device.finish()),
            Arc::new(self.metric.finish()),
            Arc::new(self.ts.finish()),
            Arc::new(self.value.finish()),
        ];
        self.len = 0;
        self.first_ts_us = i64::MAX;
        self.last_ts_us = i64::MIN;
        RecordBatch::try_new(tables::reading_schema(), columns)
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
        })
        .collect()
}
