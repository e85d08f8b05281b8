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
//! - `GET /v1/devices/{device}/metrics/{metric}/readings?from=&to=&step=&agg=&limit=`:
//!   readings and scores over a time range (at most 31 days), from the
//!   committed archive merged with the hub's newest in-memory readings;
//!   `step` (e.g. `5m`) with `agg` (`mean`, `min`, `max`, `last`, `count`)
//!   returns one point per step instead, with the bucket's largest score and
//!   number of anomalous readings. Raw answers are capped at `limit`
//!   (default 10,000, at most 100,000): a larger range needs a `step`.
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
pub mod openapi;
pub mod query;
pub mod serve;

#[derive(Debug, Clone)]
pub struct ApiContext {
    pub intake: IntakeHandle,
    pub state: Arc<HubState>,
    pub stats: Arc<HubStats>,
    pub batch_permits: Arc<tokio::sync::Semaphore>,
    pub access: Arc<access::Access>,
    /// The Parquet archive range queries read (local archives).
    pub archive_root: Option<std::path::PathBuf>,
    /// Acknowledged data the hub lost (see [`crate::losses`]).
    pub losses: Option<Arc<crate::losses::LossLedger>>,
}

impl ApiContext {
    pub fn new(intake: IntakeHandle, state: Arc<HubState>, stats: Arc<HubStats>) -> Self {
        Self {
            intake,
            state,
            stats,
            batch_permits: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_BATCHES)),
            access: Arc::new(access::Access::open()),
            archive_root: None,
            losses: None,
        }
    }

    /// Reports losses in `/health` and the admin routes.
    pub fn with_losses(mut self, losses: Arc<crate::losses::LossLedger>) -> Self {
        self.losses = Some(losses);
        self
    }

    /// Lets range queries read the committed archive under `root`.
    pub fn with_archive(mut self, root: std::path::PathBuf) -> Self {
        self.archive_root = Some(root);
        self
    }

    /// Applies an access policy (tokens, rate limits, CORS, timeout).
    pub fn with_access(mut self, access: access::Access) -> Self {
        self.access = Arc::new(access);
        self
    }
}

/// The handler of a documented route (see [`openapi::ROUTES`]).
fn handler(
    route: &openapi::RouteDoc,
    body_limit: usize,
) -> axum::routing::MethodRouter<ApiContext> {
    match (route.method, route.path) {
        ("get", "/") => get(|| async {
            (
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                include_str!("api/dashboard.html"),
            )
        }),
        ("get", "/health") => get(health),
        ("get", "/metrics") => get(metrics),
        ("get", "/v1/openapi.json") => get(|| async { Json(openapi::document()) }),
        ("get", "/v1/devices") => get(devices),
        ("get", "/v1/devices/{device}") => get(device),
        ("get", "/v1/anomalies") => get(anomalies),
        ("get", "/v1/stream") => get(stream),
        ("get", "/v1/query") => get(query::query),
        ("get", "/v1/devices/{device}/metrics/{metric}/readings") => get(readings),
        ("get", "/v1/admin/losses") => get(list_losses),
        ("post", "/v1/admin/losses/acknowledge") => post(acknowledge_losses),
        ("post", "/v1/batches") => post(batches).layer(DefaultBodyLimit::max(body_limit)),
        (method, path) => unreachable!("documented route {method} {path} has no handler"),
    }
}

/// The router, built from the documented routes.
pub fn router(ctx: ApiContext) -> Router {
    let body_limit = ctx.intake.limits().max_envelope_bytes;
    let mut app = Router::new();
    for route in openapi::ROUTES {
        app = app.route(route.path, handler(route, body_limit));
    }
    app.fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&ctx.access),
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
    let losses = ctx.losses.as_ref().map_or(0, |l| l.entries().len());
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let summary = match (healthy, losses) {
        (false, _) => "unhealthy",
        (true, 0) => "ok",
        (true, _) => "degraded",
    };
    let body = serde_json::json!({
        "status": summary,
        "wal": wal,
        "archive": archive,
        "unacknowledged_losses": losses,
    });
    (status, Json(body)).into_response()
}

/// `GET /v1/admin/losses`: acknowledged data the hub lost.
async fn list_losses(State(ctx): State<ApiContext>) -> Response {
    let entries = ctx.losses.as_ref().map(|l| l.entries()).unwrap_or_default();
    Json(serde_json::json!({ "losses": entries })).into_response()
}

/// `POST /v1/admin/losses/acknowledge`: an operator has seen the losses.
async fn acknowledge_losses(State(ctx): State<ApiContext>) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    let Some(ledger) = &ctx.losses else {
        return Json(serde_json::json!({ "acknowledged": 0 })).into_response();
    };
    match ledger.acknowledge() {
        Ok(n) => {
            ctx.stats.losses_unacknowledged.store(0, Relaxed);
            tracing::warn!(entries = n, "an operator acknowledged the recorded losses");
            Json(serde_json::json!({ "acknowledged": n })).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot persist the acknowledged loss ledger");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the loss ledger cannot be written",
            )
            .into_response()
        }
    }
}

async fn metrics(State(ctx): State<ApiContext>) -> Response {
    (
        [(header::CONTENT_TYPE, iot_metrics::CONTENT_TYPE)],
        ctx.stats.render_prometheus(),
    )
        .into_response()
}

async fn devices(State(ctx): State<ApiContext>) -> Response {
    Json(serde_json::json!({ "devices": ctx.state.devices() })).into_response()
}

async fn device(
    State(ctx): State<ApiContext>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    ctx.state
        .device(&name)
        .map(|d| Json(d).into_response())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_device",
                format!("no device '{name}'"),
            )
        })
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
struct ReadingsQuery {
    from: Option<String>,
    to: Option<String>,
    step: Option<String>,
    agg: Option<String>,
    limit: Option<usize>,
}

pub const MAX_READINGS_LIMIT: usize = 100_000;
const MAX_RANGE_US: i64 = 31 * 24 * 3_600_000_000;

async fn readings(
    State(ctx): State<ApiContext>,
    axum::extract::Path((device, metric)): axum::extract::Path<(String, String)>,
    query: Result<Query<ReadingsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    let now = chrono::Utc::now().timestamp_micros();
    let to =
        q.to.as_deref()
            .map(parse_time)
            .transpose()?
            .unwrap_or(now + 1);
    let from = q
        .from
        .as_deref()
        .map(parse_time)
        .transpose()?
        .unwrap_or(to.saturating_sub(24 * 3_600_000_000));
    let unprocessable =
        |code, msg: &str| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, msg);
    check_range(from, to, MAX_RANGE_US)?;
    let limit = q.limit.unwrap_or(10_000);
    if limit == 0 || limit > MAX_READINGS_LIMIT {
        return Err(unprocessable("bad_limit", "limit must be 1..=100000"));
    }
    let step_us = match q.step.as_deref() {
        None => None,
        Some(s) => Some(
            schemas::settings::parse_duration(s)
                .ok()
                .and_then(|d| i64::try_from(d.as_micros()).ok())
                .filter(|&d| d >= 1_000_000)
                .ok_or_else(|| {
                    unprocessable(
                        "bad_step",
                        "step must be a duration of at least 1s, such as 5m",
                    )
                })?,
        ),
    };
    let agg = q.agg.as_deref().unwrap_or("mean");
    if !["mean", "min", "max", "last", "count"].contains(&agg) {
        return Err(unprocessable(
            "bad_agg",
            "agg must be mean, min, max, last or count",
        ));
    }
    // Archive (committed files) merged with the newest in-memory points.
    let archive_root = ctx.archive_root.clone();
    let (d, m) = (device.clone(), metric.clone());
    // The scan stops when this request is gone (timed out, client left).
    let cancel = CancelOnDrop::default();
    let cancelled = cancel.token();
    let mut points: std::collections::BTreeMap<i64, crate::state::Point> =
        tokio::task::spawn_blocking(move || match archive_root {
            Some(root) => query::read_points(&root, &d, &m, from, to, &cancelled),
            None => Ok(Default::default()),
        })
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "query failed",
            )
        })?
        .map_err(query::ScanError::into_api_error)?;
    drop(cancel);
    for p in ctx.state.recent_points(&device, &metric, from, to) {
        points.insert(p.ts_us, p);
    }
    let body = match step_us {
        None => {
            if points.len() > limit {
                return Err(unprocessable(
                    "too_many_points",
                    "more readings than limit in this range: narrow it or add a step",
                ));
            }
            let pts: Vec<serde_json::Value> = points
                .values()
                .map(|p| {
                    serde_json::json!({"ts": crate::scoring::format_ts(p.ts_us), "value": p.value, "score": p.score, "status": p.status})
                })
                .collect();
            serde_json::json!({"device": device, "metric": metric, "points": pts})
        }
        Some(step) => {
            let mut buckets: std::collections::BTreeMap<i64, Vec<crate::state::Point>> =
                Default::default();
            for p in points.values() {
                buckets
                    .entry(p.ts_us.div_euclid(step) * step)
                    .or_default()
                    .push(*p);
            }
            let pts: Vec<serde_json::Value> = buckets
                .into_iter()
                .map(|(start, ps)| {
                    let values = ps.iter().map(|p| p.value);
                    let value = match agg {
                        "min" => values.fold(f64::INFINITY, f64::min),
                        "max" => values.fold(f64::NEG_INFINITY, f64::max),
                        "last" => ps.last().map_or(f64::NAN, |p| p.value),
                        "count" => ps.len() as f64,
                        _ => values.sum::<f64>() / ps.len() as f64,
                    };
                    let max_score = ps.iter().filter_map(|p| p.score).fold(None, |m: Option<f64>, s| {
                        Some(m.map_or(s, |m| m.max(s)))
                    });
                    let anomalous = ps.iter().filter(|p| p.status == schemas::tables::status::ANOMALOUS).count();
                    serde_json::json!({"ts": crate::scoring::format_ts(start), "value": value, "count": ps.len(), "max_score": max_score, "anomalous": anomalous})
                })
                .collect();
            serde_json::json!({"device": device, "metric": metric, "step": q.step, "agg": agg, "points": pts})
        }
    };
    Ok(Json(body).into_response())
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
        types.iter().any(|t| t == e.kind) && q.device.as_deref().is_none_or(|d| d == &*e.device)
    };
    let to_sse = |e: std::sync::Arc<crate::state::StreamEvent>| {
        Ok::<Event, std::convert::Infallible>(
            Event::default()
                .id(e.id.to_string())
                .event(e.kind)
                .data(e.data()),
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

/// Earliest and latest times the API accepts (years 1 to 9999), so that
/// every difference of two times fits an `i64` of microseconds.
const MIN_TIME_US: i64 = -62_135_596_800_000_000;
const MAX_TIME_US: i64 = 253_402_300_799_999_999;

/// A time in a query: RFC 3339, or epoch milliseconds; years 1 to 9999.
fn parse_time(s: &str) -> Result<i64, ApiError> {
    let bad = || {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_time",
            "times must be RFC 3339 or epoch milliseconds, years 1 to 9999",
        )
    };
    let us = match s.parse::<i64>() {
        Ok(ms) => ms.checked_mul(1000).ok_or_else(bad)?,
        Err(_) => chrono::DateTime::parse_from_rfc3339(s)
            .map_err(|_| bad())?
            .timestamp_micros(),
    };
    if (MIN_TIME_US..=MAX_TIME_US).contains(&us) {
        Ok(us)
    } else {
        Err(bad())
    }
}

/// Checks a `[from, to)` range of at most `max_us` (times from [`parse_time`]).
fn check_range(from: i64, to: i64, max_us: i64) -> Result<(), ApiError> {
    match to.checked_sub(from) {
        Some(span) if span > 0 && span <= max_us => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_range",
            "from must be before to, at most 31 days apart",
        )),
    }
}

/// Set when the request that started blocking work is gone (answered,
/// timed out or dropped by its client): the work checks it and stops.
#[derive(Debug, Clone, Default)]
pub struct Cancelled(Arc<std::sync::atomic::AtomicBool>);

impl Cancelled {
    pub fn is_set(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Sets its [`Cancelled`] when dropped: held by the request's future.
#[derive(Debug, Default)]
pub struct CancelOnDrop(Cancelled);

impl CancelOnDrop {
    pub fn token(&self) -> Cancelled {
        self.0.clone()
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn batches(State(ctx): State<ApiContext>, body: Bytes) -> Response {
    ctx.stats
        .batches_received_http
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let Ok(_permit) = Arc::clone(&ctx.batch_permits).try_acquire_owned() else {
        ctx.stats
            .batches_unavailable
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return unavailable("too many batch uploads in progress");
    };
    match ctx.intake.submit(body).await {
        // Refused whole by screening (every reading out of its window, or
        // of new series past the caps): a valid envelope the hub will not hold.
        Ok(
            ack @ BatchAck {
                status: schemas::ack::AckStatus::Rejected { .. },
                ..
            },
        ) => (StatusCode::UNPROCESSABLE_ENTITY, Json::<BatchAck>(ack)).into_response(),
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
