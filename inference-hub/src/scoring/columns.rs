//! The scored and anomaly tables' columns as the scorers build them.

use std::sync::Arc;

use arrow_array::builder::{
    Float64Builder, StringBuilder, TimestampMicrosecondBuilder, UInt64Builder,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use schemas::tables::{self, ReadingView};

use super::{AnomalyEvent, FastMap, SeriesState};

/// The scored table's columns from a batch's readings taken in `order`,
/// with each output row's status and score. Device, metric and status come
/// keyed (dictionary arrays: a 4-byte key per row into the batch's distinct
/// names), taken from the series the rows belong to; numbers are copied once.
pub(super) struct ScoredRows<'a> {
    pub(super) view: &'a ReadingView<'a>,
    pub(super) order: &'a [u32],
    /// Series id of each input row.
    pub(super) series_of: &'a [usize],
    pub(super) series: &'a [SeriesState],
    pub(super) status: &'a [&'static str],
    pub(super) score: &'a [Option<f64>],
    /// The per-reading score in [0, 1], for detectors that produce one.
    pub(super) anomaly_score: Option<&'a [Option<f64>]>,
    pub(super) threshold: f64,
}

impl ScoredRows<'_> {
    pub(super) fn finish(&self, ctx: &BatchContext<'_>) -> RecordBatch {
        use arrow_array::{Float64Array, TimestampMicrosecondArray};
        let n = self.order.len();
        // The rows come grouped by device, each device's by series: a new
        // device key per device run, a metric lookup per series run.
        let mut device_keys: Vec<u32> = Vec::with_capacity(n);
        let mut devices: Vec<&str> = Vec::new();
        let mut metric_keys: Vec<u32> = Vec::with_capacity(n);
        let mut metrics: Vec<&str> = Vec::new();
        // Metric names are interned: one pointer per name.
        let mut metric_key_of: FastMap<*const u8, u32> = FastMap::default();
        let (mut last_device, mut last_series, mut metric_key) = (None, None, 0);
        for &i in self.order {
            let id = self.series_of[i as usize];
            let series = &self.series[id];
            if last_device != Some(series.device_index) {
                devices.push(&series.device);
                last_device = Some(series.device_index);
            }
            if last_series != Some(id) {
                metric_key = *metric_key_of
                    .entry(series.metric.as_ptr())
                    .or_insert_with(|| {
                        metrics.push(&series.metric);
                        (metrics.len() - 1) as u32
                    });
                last_series = Some(id);
            }
            device_keys.push((devices.len() - 1) as u32);
            metric_keys.push(metric_key);
        }
        let ts: Vec<i64> = self
            .order
            .iter()
            .map(|&i| self.view.ts.value(i as usize))
            .collect();
        let value: Vec<f64> = self
            .order
            .iter()
            .map(|&i| self.view.value.value(i as usize))
            .collect();
        let threshold: Float64Array = self
            .score
            .iter()
            .map(|s| s.map(|_| self.threshold))
            .collect();
        scored_table(
            [
                keyed_strings(device_keys, &devices),
                keyed_strings(metric_keys, &metrics),
                Arc::new(TimestampMicrosecondArray::from(ts).with_timezone(tables::UTC)),
                Arc::new(Float64Array::from(value)),
                keyed_statuses(self.status),
                Arc::new(Float64Array::from(self.score.to_vec())),
                Arc::new(threshold),
            ],
            unit_column(self.view.unit, self.order),
            match self.anomaly_score {
                Some(a) => Arc::new(Float64Array::from(a.to_vec())),
                None => arrow_array::new_null_array(&arrow_schema::DataType::Float64, n),
            },
            ctx,
        )
    }
}

/// A keyed string column: row `i` holds `values[keys[i]]` (`values`
/// distinct, every one used).
pub(super) fn keyed_strings(keys: Vec<u32>, values: &[&str]) -> ArrayRef {
    let values: ArrayRef = Arc::new(arrow_array::StringArray::from_iter_values(values));
    Arc::new(
        arrow_array::DictionaryArray::<arrow_array::types::UInt32Type>::try_new(
            keys.into(),
            values,
        )
        .expect("keys index their values"),
    )
}

/// The status column, keyed over the statuses the batch uses.
pub(super) fn keyed_statuses(statuses: &[&'static str]) -> ArrayRef {
    let mut used: Vec<&str> = Vec::new();
    let keys = statuses
        .iter()
        .map(
            |&st| match used.iter().position(|u| std::ptr::eq(*u, st) || *u == st) {
                Some(k) => k as u32,
                None => {
                    used.push(st);
                    (used.len() - 1) as u32
                }
            },
        )
        .collect();
    keyed_strings(keys, &used)
}

/// `out[i] = clamp((values[i] - mean) / std, -clip, clip)` as f32, in a
/// form the compiler vectorises (this runs for every value of every window).
pub(super) fn normalise_into(out: &mut [f32], values: &[f64], mean: f64, std: f64, clip: f64) {
    let inverse = 1.0 / std;
    for (o, v) in out.iter_mut().zip(values) {
        let x = (v - mean) * inverse;
        // Compare-and-select rather than f64::min/max, whose NaN rules keep
        // the compiler from using the plain vector min/max instructions. A
        // NaN (impossible for the finite values a window holds) becomes
        // `clip` here, never a NaN input to the model.
        let x = if x < clip { x } else { clip };
        let x = if x > -clip { x } else { -clip };
        *o = x as f32;
    }
}

pub fn format_ts(ts_us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(ts_us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default()
}

/// The unit column of scored rows taken, in order, from input rows `rows`
/// of a batch whose readings may carry units.
pub(super) fn unit_column(unit: Option<&arrow_array::StringArray>, rows: &[u32]) -> ArrayRef {
    match unit {
        Some(units) => {
            arrow_select::take::take(units, &arrow_array::UInt32Array::from(rows.to_vec()), None)
                .expect("row indices are in range")
        }
        None => arrow_array::new_null_array(&arrow_schema::DataType::Utf8, rows.len()),
    }
}

/// A batch of the scored table: the per-reading columns (device, metric,
/// ts, value, status, score, threshold), the batch's context, the
/// readings' units and their anomaly scores. String columns may come plain
/// or keyed; the batch's schema says which.
pub(super) fn scored_table(
    readings: [ArrayRef; 7],
    unit: ArrayRef,
    anomaly_score: ArrayRef,
    ctx: &BatchContext<'_>,
) -> RecordBatch {
    let [model_id, model_version, gateway, incarnation, seq, ingested] =
        context_columns(readings[0].len(), ctx);
    let mut columns = readings.to_vec();
    columns.extend([
        model_id,
        model_version,
        gateway,
        incarnation,
        seq,
        ingested,
        unit,
        anomaly_score,
    ]);
    RecordBatch::try_new(schema_of(&tables::scored_schema(), &columns), columns)
        .expect("columns match the scored schema")
}

/// `table`'s schema with each field's type taken from its column (a string
/// field may hold a keyed column).
pub(super) fn schema_of(
    table: &arrow_schema::Schema,
    columns: &[ArrayRef],
) -> arrow_schema::SchemaRef {
    let fields: Vec<arrow_schema::Field> = table
        .fields()
        .iter()
        .zip(columns)
        .map(|(field, column)| {
            field
                .as_ref()
                .clone()
                .with_data_type(column.data_type().clone())
        })
        .collect();
    Arc::new(arrow_schema::Schema::new_with_metadata(
        fields,
        table.metadata().clone(),
    ))
}

/// The columns every row of a batch shares: model, gateway, batch identity,
/// ingestion time (the strings keyed: one value, a zero key per row).
pub(super) fn context_columns(n: usize, ctx: &BatchContext<'_>) -> [ArrayRef; 6] {
    let repeat_str = |s: &str| -> ArrayRef { keyed_strings(vec![0; n], &[s]) };
    let repeat_u64 = |v: u64| -> ArrayRef {
        let mut b = UInt64Builder::with_capacity(n);
        b.append_value_n(v, n);
        Arc::new(b.finish())
    };
    let mut ingested = TimestampMicrosecondBuilder::with_capacity(n).with_timezone(tables::UTC);
    ingested.append_value_n(ctx.ingested_at_us, n);
    [
        repeat_str(ctx.model_id),
        repeat_str(ctx.model_version),
        repeat_str(ctx.gateway),
        repeat_u64(ctx.incarnation),
        repeat_u64(ctx.seq),
        Arc::new(ingested.finish()),
    ]
}

/// Row indices of a batch grouped by device, then by metric (each numbered
/// in order of first appearance), each series in time order: the order of
/// [`ScoredBatch::scored`].
pub(super) fn grouped_order(view: &ReadingView<'_>) -> Vec<u32> {
    let number = |col| {
        crate::names::NumberedNames::of(&[col])
            .ids
            .pop()
            .unwrap_or_default()
    };
    let (device, metric) = (
        number(crate::names::StrColumn::Plain(view.device)),
        number(crate::names::StrColumn::Plain(view.metric)),
    );
    let mut order: Vec<u32> = (0..view.device.len() as u32).collect();
    order.sort_by_key(|&i| {
        let i = i as usize;
        (device[i], metric[i], view.ts.value(i))
    });
    order
}

pub(super) struct BatchContext<'a> {
    pub(super) gateway: &'a str,
    pub(super) incarnation: u64,
    pub(super) seq: u64,
    pub(super) model_id: &'a str,
    pub(super) model_version: &'a str,
    pub(super) ingested_at_us: i64,
}

impl<'a> BatchContext<'a> {
    /// The context of a batch with `header` scored by `model`.
    pub(super) fn new(
        header: &'a schemas::envelope::BatchHeader,
        model: &'a crate::model::Model,
        ingested_at_us: i64,
    ) -> Self {
        Self {
            gateway: &header.gateway,
            incarnation: header.incarnation,
            seq: header.seq,
            model_id: &model.manifest.id,
            model_version: &model.manifest.version,
            ingested_at_us,
        }
    }
}

/// Column builders shared by the scored and anomaly tables.
pub(super) struct ScoredColumns {
    pub(super) device: StringBuilder,
    pub(super) metric: StringBuilder,
    pub(super) ts: TimestampMicrosecondBuilder,
    pub(super) value: Float64Builder,
    pub(super) status: StringBuilder,
    pub(super) score: Float64Builder,
    pub(super) anomaly_score: Float64Builder,
    pub(super) threshold: Float64Builder,
    pub(super) severity: Float64Builder,
    pub(super) window_start: TimestampMicrosecondBuilder,
    pub(super) expected: Float64Builder,
    pub(super) expected_low: Float64Builder,
    pub(super) expected_high: Float64Builder,
    pub(super) contributions: StringBuilder,
    /// The input row of each scored row (for columns taken whole, the unit).
    pub(super) rows: Vec<u32>,
    pub(super) len: usize,
}

impl ScoredColumns {
    pub(super) fn new(rows: usize) -> Self {
        Self {
            device: StringBuilder::with_capacity(rows, rows * 8),
            metric: StringBuilder::with_capacity(rows, rows * 8),
            ts: TimestampMicrosecondBuilder::with_capacity(rows).with_timezone(tables::UTC),
            value: Float64Builder::with_capacity(rows),
            status: StringBuilder::with_capacity(rows, rows * 2),
            score: Float64Builder::with_capacity(rows),
            anomaly_score: Float64Builder::with_capacity(rows),
            threshold: Float64Builder::with_capacity(rows),
            severity: Float64Builder::new(),
            window_start: TimestampMicrosecondBuilder::new().with_timezone(tables::UTC),
            expected: Float64Builder::new(),
            expected_low: Float64Builder::new(),
            expected_high: Float64Builder::new(),
            contributions: StringBuilder::new(),
            rows: Vec::with_capacity(rows),
            len: 0,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn push_scored(
        &mut self,
        row: u32,
        device: &str,
        metric: &str,
        ts: i64,
        value: f64,
        st: &str,
        score: Option<f64>,
        anomaly_score: Option<f64>,
        threshold: f64,
    ) {
        self.device.append_value(device);
        self.metric.append_value(metric);
        self.ts.append_value(ts);
        self.value.append_value(value);
        self.status.append_value(st);
        self.score.append_option(score);
        self.anomaly_score.append_option(anomaly_score);
        self.threshold.append_option(score.map(|_| threshold));
        self.rows.push(row);
        self.len += 1;
    }

    pub(super) fn push_anomaly(&mut self, e: &AnomalyEvent, window_start: i64) {
        self.device.append_value(&e.device);
        self.metric.append_value(&e.metric);
        self.ts.append_value(e.ts_us);
        self.value.append_value(e.value);
        self.score.append_value(e.score);
        self.threshold.append_value(e.threshold);
        self.severity.append_value(e.severity);
        self.window_start.append_value(window_start);
        self.expected.append_option(e.expected);
        self.expected_low.append_option(e.expected_low);
        self.expected_high.append_option(e.expected_high);
        self.contributions.append_option(e.contributions_json());
        self.len += 1;
    }

    pub(super) fn finish_scored(
        mut self,
        unit: Option<&arrow_array::StringArray>,
        ctx: &BatchContext<'_>,
    ) -> RecordBatch {
        let unit = unit_column(unit, &self.rows);
        scored_table(
            [
                Arc::new(self.device.finish()),
                Arc::new(self.metric.finish()),
                Arc::new(self.ts.finish()),
                Arc::new(self.value.finish()),
                Arc::new(self.status.finish()),
                Arc::new(self.score.finish()),
                Arc::new(self.threshold.finish()),
            ],
            unit,
            Arc::new(self.anomaly_score.finish()),
            ctx,
        )
    }

    pub(super) fn finish_anomalies(mut self, ctx: &BatchContext<'_>) -> RecordBatch {
        let [model_id, model_version, gateway, incarnation, seq, ingested] =
            context_columns(self.len, ctx);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.device.finish()),
            Arc::new(self.metric.finish()),
            Arc::new(self.ts.finish()),
            Arc::new(self.value.finish()),
            Arc::new(self.score.finish()),
            Arc::new(self.threshold.finish()),
            Arc::new(self.severity.finish()),
            Arc::new(self.window_start.finish()),
            model_id,
            model_version,
            gateway,
            incarnation,
            seq,
            ingested,
            Arc::new(self.expected.finish()),
            Arc::new(self.expected_low.finish()),
            Arc::new(self.expected_high.finish()),
            Arc::new(self.contributions.finish()),
        ];
        RecordBatch::try_new(schema_of(&tables::anomaly_schema(), &columns), columns)
            .expect("columns match the anomaly schema")
    }
}
