//! `GET /v1/query`: ad-hoc reads of the archive, a documented safe subset
//! instead of SQL (DataFusion would add a large build to every CI run and a
//! query planner to the attack surface).
//!
//! One table, an event-time range (required, at most 31 days), equality
//! filters on device, metric and status, a column projection, and a row
//! limit. Output by `format` (or `Accept`): JSON (an array), JSON Lines, CSV
//! or Parquet. Rows are produced file by file on a blocking thread and
//! streamed (JSON, JSON Lines, CSV) as they are read; Parquet is assembled in
//! memory (bounded by the row limit) because its footer comes last. Limits:
//! `limit` rows (default 100,000, at most 1,000,000) and the request timeout;
//! a query that touches more than `MAX_FILES` files is refused with 422.

use std::sync::Arc;

use arrow_array::{Array, RecordBatch};
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{ApiContext, ApiError, CancelOnDrop, Cancelled, check_range, openapi, parse_time};
use crate::archive::Table;
use crate::archive::prune::Wanted;
use crate::archive::reader::{ArchiveFile, ArchiveReader};

pub const MAX_QUERY_ROWS: usize = 1_000_000;
/// Files and rows one request may read, whatever its range and filters.
const MAX_FILES: usize = 10_000;
const MAX_SCAN_ROWS: usize = 50_000_000;
const MAX_RANGE_US: i64 = 31 * 24 * 3_600_000_000;

/// Why an archive read stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("the range touches too many files")]
    TooManyFiles,
    #[error("the range holds too many rows")]
    TooManyRows,
    #[error("the request is gone")]
    Cancelled,
    #[error("the archive cannot be read")]
    Io(#[from] std::io::Error),
}

impl ScanError {
    pub fn into_api_error(self) -> ApiError {
        match self {
            ScanError::TooManyFiles | ScanError::TooManyRows => {
                bad("too_much_to_scan", format!("{self}: narrow it"))
            }
            ScanError::Cancelled => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                "the request was cancelled",
            ),
            ScanError::Io(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "archive_unavailable",
                "the archive cannot be read",
            ),
        }
    }
}

/// The files the newest version of `table` holds in the hours that meet
/// `[from, to)` (a range already checked to be at most 31 days).
fn range_files(
    reader: &ArchiveReader,
    table: Table,
    from: i64,
    to: i64,
) -> Result<Vec<ArchiveFile>, ScanError> {
    let hours = from.div_euclid(3_600_000_000)..(to - 1).div_euclid(3_600_000_000) + 1;
    let files = reader
        .files(table, hours)
        .map_err(|e| ScanError::Io(std::io::Error::other(e)))?;
    if files.len() > MAX_FILES {
        return Err(ScanError::TooManyFiles);
    }
    Ok(files)
}

/// One series' archived points in `[from_us, to_us)`, bounded in files and
/// rows read, stopping when `cancelled`.
pub fn read_points(
    reader: &ArchiveReader,
    device: &str,
    metric: &str,
    from_us: i64,
    to_us: i64,
    cancelled: &Cancelled,
) -> Result<std::collections::BTreeMap<i64, crate::state::Point>, ScanError> {
    let mut out = std::collections::BTreeMap::new();
    let mut scanned = 0usize;
    let wanted = Wanted {
        from_us,
        to_us,
        device: Some(device.to_owned()),
        metric: Some(metric.to_owned()),
    };
    for file in range_files(reader, Table::Scored, from_us, to_us)? {
        for batch in reader.read(&file, &wanted)? {
            let batch = batch?;
            if cancelled.is_set() {
                return Err(ScanError::Cancelled);
            }
            scanned += batch.num_rows();
            if scanned > MAX_SCAN_ROWS {
                return Err(ScanError::TooManyRows);
            }
            let view = crate::state::ScoredView::new(&batch).map_err(std::io::Error::other)?;
            for i in 0..batch.num_rows() {
                let ts = view.ts.value(i);
                if ts >= from_us
                    && ts < to_us
                    && view.device.value(i) == device
                    && view.metric.value(i) == metric
                {
                    out.insert(ts, view.point(i));
                }
            }
        }
    }
    Ok(out)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct QueryParams {
    /// The table (default `scored`).
    #[param(schema_with = table_schema)]
    table: Option<String>,
    /// Range start.
    #[param(value_type = openapi::Time, required = true)]
    from: Option<String>,
    /// Range end, exclusive; after `from`, at most 31 days after it (else 422).
    #[param(value_type = openapi::Time, required = true)]
    to: Option<String>,
    /// Only this device.
    device: Option<String>,
    /// Only this metric.
    metric: Option<String>,
    /// Only rows with this status (scored tables).
    #[param(schema_with = status_schema)]
    status: Option<String>,
    /// Comma-separated columns of the chosen table (default, or empty: all);
    /// a column the table does not have answers 422.
    #[param(pattern = "^$|^ *[a-z_0-9]+ *(, *[a-z_0-9]+ *)*$")]
    columns: Option<String>,
    /// Most rows (default 100000).
    #[param(minimum = 1, maximum = 1000000)]
    limit: Option<usize>,
    /// The answer's format (default: from `Accept`, else `json`).
    #[param(schema_with = format_schema)]
    format: Option<String>,
}

fn table_schema() -> utoipa::openapi::Schema {
    openapi::one_of(&["scored", "anomalies", "shadow", "rescored"])
}

fn status_schema() -> utoipa::openapi::Schema {
    use schemas::tables::status;
    openapi::one_of(&[
        status::OK,
        status::ANOMALOUS,
        status::WARMING_UP,
        status::UNSCORED,
        status::LATE,
    ])
}

pub(super) fn format_schema() -> utoipa::openapi::Schema {
    openapi::one_of(&["json", "jsonl", "csv", "parquet"])
}

/// The formats of archive reads (`/v1/query`, `/v1/sql`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    Json,
    JsonLines,
    Csv,
    Parquet,
}

impl Format {
    /// The format a `format` parameter names, else the one `Accept` asks
    /// for, else JSON.
    pub(super) fn chosen(
        param: Option<&str>,
        headers: &axum::http::HeaderMap,
    ) -> Result<Self, ApiError> {
        let accept = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        Ok(match param {
            Some("json") => Format::Json,
            Some("jsonl") => Format::JsonLines,
            Some("csv") => Format::Csv,
            Some("parquet") => Format::Parquet,
            Some(other) => {
                return Err(bad(
                    "bad_format",
                    format!("unknown format '{other}' (json, jsonl, csv, parquet)"),
                ));
            }
            None if accept.contains("text/csv") => Format::Csv,
            None if accept.contains("ndjson") => Format::JsonLines,
            None if accept.contains("parquet") => Format::Parquet,
            None => Format::Json,
        })
    }

    pub(super) fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::JsonLines => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Parquet => "application/vnd.apache.parquet",
        }
    }
}

fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
}

/// `GET /v1/query`.
#[utoipa::path(get, path = "/v1/query",
    summary = "Ad-hoc reads of the archive: one table, a time range, filters, projection; JSON, JSON Lines, CSV or Parquet, streamed",
    params(QueryParams),
    responses(
        (status = 200, description = "the matching rows, streamed", content(
            (Vec<Object> = "application/json"),
            (String = "application/x-ndjson"),
            (String = "text/csv"),
            (Vec<u8> = "application/vnd.apache.parquet"),
        )),
        (status = 400, description = "malformed query", body = openapi::ErrorBody),
        (status = 422, description = "a parameter is out of range, the range is empty or longer than 31 days, or a column is not in the table", body = openapi::ErrorBody),
        (status = 503, description = "the archive cannot be read", body = openapi::ErrorBody),
    ))]
pub async fn query(
    State(ctx): State<ApiContext>,
    headers: axum::http::HeaderMap,
    params: Result<Query<QueryParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) =
        params.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    let table = match q.table.as_deref().unwrap_or("scored") {
        "scored" => Table::Scored,
        "anomalies" => Table::Anomalies,
        "shadow" => Table::Shadow,
        "rescored" => Table::Rescored,
        other => {
            return Err(bad(
                "bad_table",
                format!("unknown table '{other}' (scored, anomalies, shadow, rescored)"),
            ));
        }
    };
    let (Some(from), Some(to)) = (q.from.as_deref(), q.to.as_deref()) else {
        return Err(bad("bad_range", "from and to are required"));
    };
    let (from, to) = (parse_time(from)?, parse_time(to)?);
    check_range(from, to, MAX_RANGE_US)?;
    let limit = q.limit.unwrap_or(100_000);
    if limit == 0 || limit > MAX_QUERY_ROWS {
        return Err(bad(
            "bad_limit",
            format!("limit must be 1..={MAX_QUERY_ROWS}"),
        ));
    }
    let schema = table.schema();
    let columns: Vec<String> = match q.columns.as_deref() {
        None | Some("") => schema.fields().iter().map(|f| f.name().clone()).collect(),
        Some(list) => list.split(',').map(|c| c.trim().to_owned()).collect(),
    };
    if let Some(unknown) = columns.iter().find(|c| schema.index_of(c).is_err()) {
        return Err(bad(
            "bad_column",
            format!("no column '{unknown}' in {}", table.name()),
        ));
    }
    let format = Format::chosen(q.format.as_deref(), &headers)?;
    let Some(reader) = ctx.archive.clone() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_archive",
            "this hub serves no archive",
        ));
    };
    let listing = Arc::clone(&reader);
    let files = tokio::task::spawn_blocking(move || range_files(&listing, table, from, to))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "query failed",
            )
        })?
        .map_err(ScanError::into_api_error)?;
    let filter = Filter {
        from,
        to,
        device: q.device,
        metric: q.metric,
        status: q.status,
        columns,
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    // The producer stops when the response body is dropped (client gone,
    // request timed out): the stream owns the guard.
    let cancel = CancelOnDrop::default();
    let cancelled = cancel.token();
    tokio::task::spawn_blocking(move || {
        produce(&reader, files, filter, limit, format, tx, &cancelled);
    });
    let stream = futures_util::stream::unfold((rx, cancel), |(mut rx, cancel)| async move {
        rx.recv().await.map(|item| (item, (rx, cancel)))
    });
    Ok((
        [(header::CONTENT_TYPE, format.content_type())],
        Body::from_stream(stream),
    )
        .into_response())
}

struct Filter {
    from: i64,
    to: i64,
    device: Option<String>,
    metric: Option<String>,
    status: Option<String>,
    columns: Vec<String>,
}

impl Filter {
    /// The matching rows of `batch`, projected.
    fn apply(&self, batch: &RecordBatch) -> std::io::Result<RecordBatch> {
        use arrow_array::{StringArray, TimestampMicrosecondArray};
        let ts = batch
            .column_by_name(schemas::tables::TS)
            .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
            .ok_or_else(|| std::io::Error::other("no ts column"))?;
        let eq = |name: &str, want: &Option<String>, i: usize| -> bool {
            match want {
                None => true,
                Some(w) => batch
                    .column_by_name(name)
                    .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                    .is_some_and(|c| c.is_valid(i) && c.value(i) == w),
            }
        };
        let keep: Vec<u32> = (0..batch.num_rows())
            .filter(|&i| {
                let t = ts.value(i);
                t >= self.from
                    && t < self.to
                    && eq(schemas::tables::DEVICE, &self.device, i)
                    && eq(schemas::tables::METRIC, &self.metric, i)
                    && eq(schemas::tables::STATUS, &self.status, i)
            })
            .map(|i| i as u32)
            .collect();
        let idx = arrow_array::UInt32Array::from(keep);
        let schema = batch.schema();
        let mut fields = Vec::new();
        let mut cols = Vec::new();
        for c in &self.columns {
            // A file older than a column has none: nulls.
            let (field, col) = match schema.index_of(c) {
                Ok(i) => (
                    schema.field(i).clone(),
                    arrow_select::take::take(batch.column(i).as_ref(), &idx, None)
                        .map_err(std::io::Error::other)?,
                ),
                Err(_) => return Err(std::io::Error::other(format!("file lacks column {c}"))),
            };
            fields.push(field);
            cols.push(col);
        }
        RecordBatch::try_new(std::sync::Arc::new(arrow_schema::Schema::new(fields)), cols)
            .map_err(std::io::Error::other)
    }
}

fn produce(
    reader: &ArchiveReader,
    files: Vec<ArchiveFile>,
    filter: Filter,
    limit: usize,
    format: Format,
    tx: tokio::sync::mpsc::Sender<Result<bytes::Bytes, std::io::Error>>,
    cancelled: &Cancelled,
) {
    let mut scanned = 0usize;
    let send = |b: Vec<u8>| tx.blocking_send(Ok(bytes::Bytes::from(b))).is_ok();
    let mut left = limit;
    let mut first = true;
    let mut parquet_parts: Vec<RecordBatch> = Vec::new();
    let opening = match format {
        Format::Json => Some(b"[".to_vec()),
        Format::Csv => Some(format!("{}\n", filter.columns.join(",")).into_bytes()),
        Format::JsonLines | Format::Parquet => None,
    };
    if let Some(head) = opening
        && !send(head)
    {
        return;
    }
    let wanted = Wanted {
        from_us: filter.from,
        to_us: filter.to,
        device: filter.device.clone(),
        metric: filter.metric.clone(),
    };
    'files: for f in files {
        let batches = match reader.read(&f, &wanted) {
            Ok(b) => b,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        for b in batches {
            let b = match b {
                Ok(b) => b,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            };
            scanned += b.num_rows();
            if cancelled.is_set() || tx.is_closed() {
                return;
            }
            if scanned > MAX_SCAN_ROWS {
                let _ = tx.blocking_send(Err(std::io::Error::other(
                    "the query scans too many rows: narrow it",
                )));
                return;
            }
            let rows = match filter.apply(&b) {
                Ok(r) if r.num_rows() > left => r.slice(0, left),
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            };
            if rows.num_rows() == 0 {
                continue;
            }
            left -= rows.num_rows();
            let chunk = match format {
                Format::Parquet => {
                    parquet_parts.push(rows);
                    None
                }
                Format::Csv => Some(csv_rows(&rows)),
                Format::JsonLines => Some(json_lines(&rows)),
                Format::Json => {
                    // The lines of JSON Lines, joined by commas inside the
                    // array opened above.
                    let lines = json_lines(&rows);
                    let mut out = Vec::with_capacity(lines.len() + 1);
                    for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                        if !first {
                            out.push(b',');
                        }
                        first = false;
                        out.extend_from_slice(line);
                    }
                    Some(out)
                }
            };
            if let Some(c) = chunk
                && !send(c)
            {
                return;
            }
            if left == 0 {
                break 'files;
            }
        }
    }
    match format {
        Format::Json => {
            let _ = send(b"]".to_vec());
        }
        Format::Parquet => {
            let schema = parquet_parts.first().map_or_else(
                || {
                    std::sync::Arc::new(
                        arrow_schema::Schema::new(Vec::<arrow_schema::Field>::new()),
                    )
                },
                |b| b.schema(),
            );
            let mut buf = Vec::new();
            let written =
                parquet::arrow::ArrowWriter::try_new(&mut buf, schema, None).and_then(|mut w| {
                    for b in &parquet_parts {
                        w.write(b)?;
                    }
                    w.close().map(|_| ())
                });
            match written {
                Ok(()) => {
                    let _ = send(buf);
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(std::io::Error::other(e)));
                }
            }
        }
        _ => {}
    }
}

/// `b` as the text formats show it: times as RFC 3339 strings with
/// microseconds (`2026-01-01T00:00:00.000000Z`, as the rest of the API),
/// every other column as it is.
fn for_text(b: &RecordBatch) -> RecordBatch {
    use arrow_array::{StringArray, TimestampMicrosecondArray};
    let mut fields = Vec::with_capacity(b.num_columns());
    let mut columns: Vec<arrow_array::ArrayRef> = Vec::with_capacity(b.num_columns());
    for (f, c) in b.schema().fields().iter().zip(b.columns()) {
        match c.as_any().downcast_ref::<TimestampMicrosecondArray>() {
            Some(ts) => {
                let text: StringArray = ts
                    .iter()
                    .map(|v| v.map(crate::scoring::format_ts))
                    .collect();
                fields.push(arrow_schema::Field::new(
                    f.name(),
                    arrow_schema::DataType::Utf8,
                    f.is_nullable(),
                ));
                columns.push(std::sync::Arc::new(text));
            }
            None => {
                fields.push(f.as_ref().clone());
                columns.push(std::sync::Arc::clone(c));
            }
        }
    }
    RecordBatch::try_new(
        std::sync::Arc::new(arrow_schema::Schema::new(fields)),
        columns,
    )
    .expect("same lengths, matching types")
}

/// Rows as JSON Lines (arrow-json; nulls written as `null`).
pub(super) fn json_lines(b: &RecordBatch) -> Vec<u8> {
    let mut out = Vec::new();
    let mut writer = arrow_json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, arrow_json::writer::LineDelimited>(&mut out);
    // Writing to memory fails only on types the archive does not have.
    if writer
        .write(&for_text(b))
        .and_then(|()| writer.finish())
        .is_err()
    {
        tracing::warn!("a query batch could not be written as JSON");
    }
    out
}

/// Rows as CSV without a header (arrow-csv; the header goes first).
pub(super) fn csv_rows(b: &RecordBatch) -> Vec<u8> {
    let mut out = Vec::new();
    let mut writer = arrow_csv::WriterBuilder::new()
        .with_header(false)
        .build(&mut out);
    if writer.write(&for_text(b)).is_err() {
        tracing::warn!("a query batch could not be written as CSV");
    }
    drop(writer);
    out
}
