//! The hub's HTTP API (axum).
//!
//! - `GET /health`: 200 when the WAL and the archive are writable, else 503.
//! - `GET /metrics`: Prometheus text.
//! - `GET /v1/devices`: every device with its metrics' last value, score and
//!   status.
//! - `GET /v1/anomalies?since=&until=&device=&model=&min_severity=&limit=&cursor=`:
//!   recent anomaly events, newest first (times: RFC 3339 or epoch
//!   milliseconds; `limit` 1..=1000, default 100). The answer carries
//!   `next_cursor` (opaque; absent on the last page): pass it as `cursor` for
//!   the next, older page.
//! - `GET /v1/stream?device=&types=anomaly,update`: server-sent events, one
//!   `anomaly` event per anomaly and one `update` per device per batch, with
//!   ids; a client that reconnects with `Last-Event-ID` first gets the events
//!   it missed that are still in memory. Keep-alive comments every 15 s.
//! - `POST /v1/batches`: a batch envelope; answers with the [`BatchAck`] JSON
//!   (200 durable/duplicate, 400 malformed, 413 too large, 422 invalid
//!   content, 503 hub cannot make it durable now).
//!
//! Errors other than batch answers share one body:
//! `{"error": {"code": "...", "message": "..."}}`, without internals.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use schemas::ack::BatchAck;
use schemas::envelope::{DecodeError, DecodeErrorClass};
use serde::Deserialize;

use crate::intake::{IntakeHandle, SubmitError};
use crate::state::HubState;
use crate::stats::HubStats;

pub const MAX_ANOMALY_LIMIT: usize = 1000;
/// Batch uploads processed at once; more are refused with 503 and
/// `Retry-After` (load shedding) instead of queueing without bound.
pub const MAX_CONCURRENT_BATCHES: usize = 64;

pub mod access;

#[derive(Debug, Clone)]
pub struct ApiContext {
    pub intake: IntakeHandle,
    pub state: Arc<HubState>,
    pub stats: Arc<HubStats>,
    pub batch_permits: Arc<tokio::sync::Semaphore>,
    pub access: Arc<access::Access>,
}

impl ApiContext {
    pub fn new(intake: IntakeHandle, state: Arc<HubState>, stats: Arc<HubStats>) -> Self {
        Self {
            intake,
            state,
            stats,
            batch_permits: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_BATCHES)),
            access: Arc::new(access::Access::open()),
        }
    }

    /// Applies an access policy (tokens, rate limits, CORS, timeout).
    pub fn with_access(mut self, access: access::Access) -> Self {
        self.access = Arc::new(access);
        self
    }
}

pub fn router(ctx: ApiContext) -> Router {
    let body_limit = ctx.intake.limits().max_envelope_bytes;
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/devices", get(devices))
        .route("/v1/anomalies", get(anomalies))
        .route("/v1/stream", get(stream))
        .route(
            "/v1/batches",
            post(batches).layer(DefaultBodyLimit::max(body_limit)),
        )
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(axum::middleware::from_fn_with_state(
            ctx.access.clone(),
            access::guard,
        ))
        .with_state(ctx)
}

/// The one error type of the API.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

async fn health(State(ctx): State<ApiContext>) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    let wal = if ctx.stats.wal_failed.load(Relaxed) {
        "failed"
    } else {
        "ok"
    };
    let archive = if ctx.stats.archive_failed.load(Relaxed) {
        "failed"
    } else {
        "ok"
    };
    let healthy = ctx.stats.healthy();
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if healthy { "ok" } else { "unhealthy" },
        "wal": wal,
        "archive": archive,
    });
    (status, Json(body)).into_response()
}

async fn metrics(State(ctx): State<ApiContext>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        ctx.stats.render_prometheus(),
    )
        .into_response()
}

async fn devices(State(ctx): State<ApiContext>) -> Response {
    Json(serde_json::json!({ "devices": ctx.state.devices() })).into_response()
}

#[derive(Debug, Deserialize)]
struct AnomalyQuery {
    since: Option<String>,
    until: Option<String>,
    device: Option<String>,
    model: Option<String>,
    min_severity: Option<f64>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// Cursors are opaque to clients: `c` and the hex id of the last event sent.
fn encode_cursor(id: u64) -> String {
    format!("c{id:x}")
}

fn decode_cursor(c: &str) -> Result<u64, ApiError> {
    c.strip_prefix('c')
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_cursor",
                "not a cursor this API issued",
            )
        })
}

async fn anomalies(
    State(ctx): State<ApiContext>,
    query: Result<Query<AnomalyQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_ANOMALY_LIMIT {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_limit",
            format!("limit must be 1..={MAX_ANOMALY_LIMIT}"),
        ));
    }
    let filter = crate::state::AnomalyFilter {
        since_us: q.since.as_deref().map(parse_time).transpose()?,
        until_us: q.until.as_deref().map(parse_time).transpose()?,
        device: q.device.as_deref(),
        model: q.model.as_deref(),
        min_severity: q.min_severity,
        before_id: q.cursor.as_deref().map(decode_cursor).transpose()?,
    };
    // One more than asked tells whether another page exists.
    let mut events = ctx.state.anomalies(&filter, limit + 1);
    let next_cursor = (events.len() > limit).then(|| {
        events.truncate(limit);
        encode_cursor(events.last().map_or(0, |e| e.id))
    });
    Ok(
        Json(serde_json::json!({ "anomalies": events, "next_cursor": next_cursor }))
            .into_response(),
    )
}

#[derive(Debug, Deserialize)]
struct StreamQuery {
    device: Option<String>,
    /// Comma-separated: `anomaly`, `update` (default both).
    types: Option<String>,
}

async fn stream(
    State(ctx): State<ApiContext>,
    headers: axum::http::HeaderMap,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let Query(q) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    let types: Vec<String> = q
        .types
        .as_deref()
        .unwrap_or("anomaly,update")
        .split(',')
        .map(|t| t.trim().to_owned())
        .collect();
    if let Some(bad) = types.iter().find(|t| *t != "anomaly" && *t != "update") {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_types",
            format!("unknown event type '{bad}' (anomaly, update)"),
        ));
    }
    let last_id: u64 = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let (backlog, rx) = ctx.state.subscribe(last_id);
    let wanted = move |e: &crate::state::StreamEvent| {
        types.iter().any(|t| t == e.kind) && q.device.as_deref().is_none_or(|d| d == e.device)
    };
    let to_sse = |e: crate::state::StreamEvent| {
        Ok::<Event, std::convert::Infallible>(
            Event::default()
                .id(e.id.to_string())
                .event(e.kind)
                .data(e.data),
        )
    };
    let state = (backlog.into_iter(), rx, last_id);
    let events = futures_util::stream::unfold(state, move |(mut backlog, mut rx, mut sent)| {
        let wanted = wanted.clone();
        async move {
            loop {
                let next = match backlog.next() {
                    Some(e) => e,
                    None => match rx.recv().await {
                        Ok(e) => e,
                        // A slow client missed events: it can reconnect with
                        // Last-Event-ID to get those still in memory.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                    },
                };
                if next.id <= sent {
                    continue;
                }
                sent = next.id;
                if wanted(&next) {
                    return Some((to_sse(next), (backlog, rx, sent)));
                }
            }
        }
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response())
}

fn parse_time(s: &str) -> Result<i64, ApiError> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms.saturating_mul(1000));
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_micros())
        .map_err(|_| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad_time",
                "since must be RFC 3339 or epoch milliseconds",
            )
        })
}

async fn batches(State(ctx): State<ApiContext>, body: Bytes) -> Response {
    ctx.stats
        .batches_received_http
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let Ok(_permit) = ctx.batch_permits.clone().try_acquire_owned() else {
        ctx.stats
            .batches_unavailable
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return unavailable("too many batch uploads in progress");
    };
    match ctx.intake.submit(body).await {
        Ok(ack) => (StatusCode::OK, Json::<BatchAck>(ack)).into_response(),
        Err(SubmitError::Rejected { ack, error }) => {
            (status_for(&error), Json::<BatchAck>(ack)).into_response()
        }
        Err(SubmitError::Unreadable(e)) => {
            ApiError::new(status_for(&e), "unreadable_batch", e.to_string()).into_response()
        }
        Err(SubmitError::Unavailable(why)) => unavailable(why),
    }
}

/// 503 with `Retry-After`: the client should resend the same batch later.
fn unavailable(why: &str) -> Response {
    let mut resp =
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", why).into_response();
    resp.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
    resp
}

fn status_for(error: &DecodeError) -> StatusCode {
    match error.class() {
        DecodeErrorClass::Malformed => StatusCode::BAD_REQUEST,
        DecodeErrorClass::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        DecodeErrorClass::InvalidContent => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

#[cfg(test)]
mod tests;
