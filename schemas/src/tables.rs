//! Arrow schemas of the pipeline's three tables and their column names.
//!
//! - `readings`: what travels edge -> hub inside an envelope.
//! - `scored`: every reading the hub archived, with its score and the model
//!   that produced it (one Parquet table).
//! - `anomalies`: one event per reading whose score crossed the threshold.
//!
//! Evolution rule: columns are only ever added, always nullable, and readers
//! look columns up by name. A file written before a column existed therefore
//! still reads (the column is null), and a newer edge that adds an optional
//! column to the readings batch is still accepted by an older hub.

use std::sync::{Arc, OnceLock};

use arrow_array::{Array, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// Time zone label of every timestamp column.
pub const UTC: &str = "UTC";

pub const DEVICE: &str = "device";
pub const METRIC: &str = "metric";
pub const TS: &str = "ts";
pub const VALUE: &str = "value";
pub const GATEWAY: &str = "gateway";
pub const INCARNATION: &str = "incarnation";
pub const SEQ: &str = "seq";
pub const MODEL_ID: &str = "model_id";
pub const MODEL_VERSION: &str = "model_version";
pub const STATUS: &str = "status";
pub const SCORE: &str = "score";
pub const THRESHOLD: &str = "threshold";
pub const SEVERITY: &str = "severity";
pub const WINDOW_START: &str = "window_start";
pub const INGESTED_AT: &str = "ingested_at";
/// The model's expected value of the reading, when it forecasts one.
pub const EXPECTED: &str = "expected";
/// The range of values the model would not have flagged, when it knows one.
pub const EXPECTED_LOW: &str = "expected_low";
pub const EXPECTED_HIGH: &str = "expected_high";
/// JSON object: each input metric's share of the score (multivariate models).
pub const CONTRIBUTIONS: &str = "contributions";
/// The unit the device reported its value in (SenML `u`/`bu`), if any.
pub const UNIT: &str = "unit";
/// A continuous per-reading score in `[0, 1]` (larger is more anomalous)
/// from detectors that produce one, present while warming up too: what a
/// threshold sweep (NAB) or a dashboard's heat map reads.
pub const ANOMALY_SCORE: &str = "anomaly_score";

/// Values of the `status` column of the scored table.
pub mod status {
    /// Not enough history for this device/metric yet; never reported
    /// anomalous. The score is null while the normalisation is being learned
    /// and present while the series' own score history is being learned.
    pub const WARMING_UP: &str = "warming_up";
    pub const OK: &str = "ok";
    pub const ANOMALOUS: &str = "anomalous";
    /// The model failed on this batch, the value is NaN or infinite, or (for
    /// a multivariate model) the reading's record was incomplete; archived
    /// without a score.
    pub const UNSCORED: &str = "unscored";
    /// Older than a reading of its series the hub has already scored (e.g. a
    /// gateway's backlog arriving after its live data): archived without a
    /// score, since a window of newer readings says nothing about it.
    pub const LATE: &str = "late";
}

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into()))
}

/// Schema of the readings carried by an envelope when some reading has a
/// unit: [`reading_schema`] and a nullable `unit` column.
pub fn reading_schema_with_unit() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    Arc::clone(SCHEMA.get_or_init(|| {
        let mut fields: Vec<Field> = reading_schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(UNIT, DataType::Utf8, true));
        Arc::new(Schema::new(fields))
    }))
}

/// Schema of the readings carried by an envelope.
pub fn reading_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    Arc::clone(SCHEMA.get_or_init(|| {
        Arc::new(Schema::new(vec![
            Field::new(DEVICE, DataType::Utf8, false),
            Field::new(METRIC, DataType::Utf8, false),
            Field::new(TS, ts_type(), false),
            Field::new(VALUE, DataType::Float64, false),
        ]))
    }))
}

/// Schema of the `scored` table.
pub fn scored_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    Arc::clone(SCHEMA.get_or_init(|| {
        Arc::new(Schema::new(vec![
            Field::new(DEVICE, DataType::Utf8, false),
            Field::new(METRIC, DataType::Utf8, false),
            Field::new(TS, ts_type(), false),
            Field::new(VALUE, DataType::Float64, false),
            Field::new(STATUS, DataType::Utf8, false),
            Field::new(SCORE, DataType::Float64, true),
            Field::new(THRESHOLD, DataType::Float64, true),
            Field::new(MODEL_ID, DataType::Utf8, false),
            Field::new(MODEL_VERSION, DataType::Utf8, false),
            Field::new(GATEWAY, DataType::Utf8, false),
            Field::new(INCARNATION, DataType::UInt64, false),
            Field::new(SEQ, DataType::UInt64, false),
            Field::new(INGESTED_AT, ts_type(), false),
            // Added with units (nullable, at the end).
            Field::new(UNIT, DataType::Utf8, true),
            // Added with the novelty detectors.
            Field::new(ANOMALY_SCORE, DataType::Float64, true),
        ]))
    }))
}

/// Schema of the `anomalies` table.
pub fn anomaly_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    Arc::clone(SCHEMA.get_or_init(|| {
        Arc::new(Schema::new(vec![
            Field::new(DEVICE, DataType::Utf8, false),
            Field::new(METRIC, DataType::Utf8, false),
            Field::new(TS, ts_type(), false),
            Field::new(VALUE, DataType::Float64, false),
            Field::new(SCORE, DataType::Float64, false),
            Field::new(THRESHOLD, DataType::Float64, false),
            // score / threshold: 1.0 is the threshold itself.
            Field::new(SEVERITY, DataType::Float64, false),
            Field::new(WINDOW_START, ts_type(), false),
            Field::new(MODEL_ID, DataType::Utf8, false),
            Field::new(MODEL_VERSION, DataType::Utf8, false),
            Field::new(GATEWAY, DataType::Utf8, false),
            Field::new(INCARNATION, DataType::UInt64, false),
            Field::new(SEQ, DataType::UInt64, false),
            Field::new(INGESTED_AT, ts_type(), false),
            // Added with the multivariate models (nullable, at the end:
            // files written before them stay readable).
            Field::new(EXPECTED, DataType::Float64, true),
            Field::new(EXPECTED_LOW, DataType::Float64, true),
            Field::new(EXPECTED_HIGH, DataType::Float64, true),
            Field::new(CONTRIBUTIONS, DataType::Utf8, true),
        ]))
    }))
}

/// Typed access to the four reading columns of a batch, looked up by name so
/// that extra (newer, optional) columns are ignored.
#[derive(Debug)]
pub struct ReadingView<'a> {
    pub device: &'a StringArray,
    pub metric: &'a StringArray,
    pub ts: &'a TimestampMicrosecondArray,
    pub value: &'a Float64Array,
    /// Present when some reading of the batch has a unit (nullable).
    pub unit: Option<&'a StringArray>,
}

/// Why a batch does not carry the reading columns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ColumnError {
    #[error("column `{0}` is missing")]
    Missing(&'static str),
    #[error("column `{column}` has type {found}, expected {expected}")]
    WrongType {
        column: &'static str,
        found: String,
        expected: String,
    },
    #[error("column `{0}` contains nulls")]
    Nulls(&'static str),
}

impl<'a> ReadingView<'a> {
    pub fn try_new(batch: &'a RecordBatch) -> Result<Self, ColumnError> {
        Ok(Self {
            device: column(batch, DEVICE, &DataType::Utf8)?,
            metric: column(batch, METRIC, &DataType::Utf8)?,
            ts: column(batch, TS, &ts_type())?,
            value: column(batch, VALUE, &DataType::Float64)?,
            unit: match batch.column_by_name(UNIT) {
                None => None,
                Some(c) => Some(c.as_any().downcast_ref::<StringArray>().ok_or_else(|| {
                    ColumnError::WrongType {
                        column: UNIT,
                        found: c.data_type().to_string(),
                        expected: DataType::Utf8.to_string(),
                    }
                })?),
            },
        })
    }
}

fn column<'a, T: Array + 'static>(
    batch: &'a RecordBatch,
    name: &'static str,
    expected: &DataType,
) -> Result<&'a T, ColumnError> {
    let array = batch
        .column_by_name(name)
        .ok_or(ColumnError::Missing(name))?;
    if array.data_type() != expected {
        return Err(ColumnError::WrongType {
            column: name,
            found: array.data_type().to_string(),
            expected: expected.to_string(),
        });
    }
    if array.null_count() > 0 {
        return Err(ColumnError::Nulls(name));
    }
    array
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| ColumnError::WrongType {
            column: name,
            found: array.data_type().to_string(),
            expected: expected.to_string(),
        })
}
