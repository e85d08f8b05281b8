//! `GET /v1/sql?q=...` and `POST /v1/sql` (the query as the body): read-only
//! SQL over the archive's tables (`scored`, `anomalies`, `shadow`,
//! `rescored`, each with its partition columns `date`, `hour` and `hub`),
//! through [`iot_sql`] (DataFusion). Built with the `sql` feature.
//!
//! The tables are the newest versions of their Delta logs, wherever their
//! files are (the bucket, and with a bucket this hub's files still waiting
//! for upload), exactly what `/v1/query` reads. Only queries run: DDL, DML
//! and other statements are refused (422), as are URL tables. Limits
//! (`[http.sql]`): shared query memory (a query needing more is refused,
//! never spilled to disk), a timeout, the rows of an answer, and queries at
//! once. Both methods need the `read` scope. The answer comes whole (it is
//! bounded by `max-rows`), as JSON, JSON Lines, CSV or Parquet.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::query::{Format, csv_rows, json_lines};
use super::{ApiContext, ApiError};

/// Longest query text taken.
pub const MAX_SQL_BYTES: usize = 64 * 1024;

/// Longest query taken in a `GET`, in characters: percent-encoded, a
/// character takes up to 12 bytes of the URI, and the HTTP server refuses a
/// URI over 64 KiB (414) before the hub sees it. `POST` takes up to
/// [`MAX_SQL_BYTES`].
pub const MAX_SQL_GET_CHARS: usize = 4096;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SqlParams {
    /// The query (at most 4,096 characters; `POST` longer ones as the body).
    #[param(required = true, min_length = 1, max_length = 4096)]
    q: Option<String>,
    /// The answer's format (default: from `Accept`, else `json`).
    #[param(schema_with = super::query::format_schema)]
    format: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SqlFormat {
    /// The answer's format (default: from `Accept`, else `json`).
    #[param(schema_with = super::query::format_schema)]
    format: Option<String>,
}

/// `GET /v1/sql`.
#[utoipa::path(get, path = "/v1/sql",
    summary = "Read-only SQL over the archive's tables (scored, anomalies, shadow, rescored); JSON, JSON Lines, CSV or Parquet",
    params(SqlParams),
    responses(
        (status = 200, description = "the answer", content(
            (Vec<Object> = "application/json"),
            (String = "application/x-ndjson"),
            (String = "text/csv"),
            (Vec<u8> = "application/vnd.apache.parquet"),
        )),
        (status = 400, description = "malformed request", body = super::openapi::ErrorBody),
        (status = 422, description = "no query, one longer than 4,096 characters, not a query, not valid SQL, an unknown table or column, or an answer over the row limit", body = super::openapi::ErrorBody),
        (status = 503, description = "the archive cannot be read, or the query needs more memory than the limit", body = super::openapi::ErrorBody),
        (status = 504, description = "the query ran longer than the limit", body = super::openapi::ErrorBody),
    ))]
pub async fn sql_get(
    State(ctx): State<ApiContext>,
    headers: HeaderMap,
    params: Result<Query<SqlParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(p) =
        params.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    let Some(sql) = p.q.filter(|q| !q.is_empty()) else {
        return Err(unprocessable("no_query", "q (the query) is required"));
    };
    if sql.chars().count() > MAX_SQL_GET_CHARS {
        return Err(unprocessable(
            "query_too_long",
            "q is longer than 4096 characters: POST the query as the body instead",
        ));
    }
    answer(&ctx, &sql, Format::chosen(p.format.as_deref(), &headers)?).await
}

/// `POST /v1/sql`.
#[utoipa::path(post, path = "/v1/sql",
    summary = "Read-only SQL over the archive's tables, the query as the body",
    params(SqlFormat),
    request_body(content = String, content_type = "text/plain", description = "the query (at most 64 KiB, UTF-8; any content type is taken, e.g. `application/sql`)"),
    responses(
        (status = 200, description = "the answer", content(
            (Vec<Object> = "application/json"),
            (String = "application/x-ndjson"),
            (String = "text/csv"),
            (Vec<u8> = "application/vnd.apache.parquet"),
        )),
        (status = 400, description = "malformed request", body = super::openapi::ErrorBody),
        (status = 413, description = "the query is longer than 64 KiB", body = super::openapi::ErrorBody),
        (status = 422, description = "not a query, not valid SQL, an unknown table or column, or an answer over the row limit", body = super::openapi::ErrorBody),
        (status = 503, description = "the archive cannot be read, or the query needs more memory than the limit", body = super::openapi::ErrorBody),
        (status = 504, description = "the query ran longer than the limit", body = super::openapi::ErrorBody),
    ))]
pub async fn sql_post(
    State(ctx): State<ApiContext>,
    headers: HeaderMap,
    params: Result<Query<SqlFormat>, axum::extract::rejection::QueryRejection>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let Query(p) =
        params.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    let sql = std::str::from_utf8(&body).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_body",
            "the query is not UTF-8",
        )
    })?;
    answer(&ctx, sql, Format::chosen(p.format.as_deref(), &headers)?).await
}

fn unprocessable(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
}

async fn answer(ctx: &ApiContext, sql: &str, format: Format) -> Result<Response, ApiError> {
    if sql.len() > MAX_SQL_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "query_too_long",
            "the query is longer than 64 KiB",
        ));
    }
    if sql.trim().is_empty() {
        return Err(unprocessable("no_query", "the query is empty"));
    }
    let (Some(engine), Some(reader)) = (ctx.sql.clone(), ctx.archive.clone()) else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_archive",
            "this hub serves no archive",
        ));
    };
    let tables = tokio::task::spawn_blocking(move || reader.sql_tables())
        .await
        .map_err(|_| internal())?
        .map_err(|e| {
            tracing::warn!(error = %e, "the archive's tables could not be listed for SQL");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "archive_unavailable",
                "the archive cannot be read",
            )
        })?;
    let answer = engine.query(sql, tables).await.map_err(|e| {
        use iot_sql::SqlError as E;
        match e {
            E::NotAQuery(_) => unprocessable("not_a_query", e.to_string()),
            E::Invalid(_) => unprocessable("bad_sql", e.to_string()),
            E::TooManyRows(_) => unprocessable("too_many_rows", e.to_string()),
            E::OutOfMemory(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "out_of_memory",
                e.to_string(),
            ),
            E::Timeout(_) => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", e.to_string()),
            E::Io(_) => {
                tracing::warn!(error = %e, "an SQL query could not read the archive");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "archive_unavailable",
                    "the archive cannot be read",
                )
            }
        }
    })?;
    let body = tokio::task::spawn_blocking(move || encode(&answer, format))
        .await
        .map_err(|_| internal())??;
    Ok(([(header::CONTENT_TYPE, format.content_type())], body).into_response())
}

fn internal() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "query failed",
    )
}

/// The answer in `format`.
fn encode(answer: &iot_sql::Answer, format: Format) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    match format {
        Format::Json => {
            out.push(b'[');
            let mut first = true;
            for batch in &answer.batches {
                for line in json_lines(batch)
                    .split(|&b| b == b'\n')
                    .filter(|l| !l.is_empty())
                {
                    if !first {
                        out.push(b',');
                    }
                    first = false;
                    out.extend_from_slice(line);
                }
            }
            out.push(b']');
        }
        Format::JsonLines => {
            for batch in &answer.batches {
                out.extend(json_lines(batch));
            }
        }
        Format::Csv => {
            let mut names = arrow_csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut out);
            names
                .write(&arrow_array::RecordBatch::new_empty(Arc::clone(
                    &answer.schema,
                )))
                .map_err(|_| internal())?;
            drop(names);
            for batch in &answer.batches {
                out.extend(csv_rows(batch));
            }
        }
        Format::Parquet => {
            let mut writer =
                parquet::arrow::ArrowWriter::try_new(&mut out, Arc::clone(&answer.schema), None)
                    .map_err(|_| internal())?;
            for batch in &answer.batches {
                writer.write(batch).map_err(|_| internal())?;
            }
            writer.close().map_err(|_| internal())?;
        }
    }
    Ok(out)
}
