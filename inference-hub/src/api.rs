//! The hub's HTTP API (axum): the router, the handlers of the small routes,
//! and the one error type. Every route is a handler with a
//! `#[utoipa::path]` attribute; the router and the OpenAPI document
//! (`GET /v1/openapi.json`, see [`openapi`]) are built from the same list, so
//! the document is the API's reference. In short:
//!
//! - `GET /` the dashboard page; `GET /health` (503 when the WAL or the
//!   archive cannot be written); `GET /metrics` (OpenMetrics text).
//! - `GET /v1/devices`, `GET /v1/devices/{device}`: devices with their
//!   metrics' last value, score, status and model.
//! - `GET /v1/anomalies`: recent anomaly events, newest first, with opaque
//!   cursors (`next_cursor`, null on the last page).
//! - `GET /v1/devices/{device}/metrics/{metric}/readings` ([`readings`]) and
//!   `GET /v1/query` ([`query`]): reads of the archive over a range.
//! - `GET /v1/stream`: server-sent events (`anomaly`, `update`), resumable
//!   with `Last-Event-ID`; keep-alive comments every 15 s.
//! - `POST /v1/batches`: a batch envelope, answered with the [`BatchAck`]
//!   once durable (or why not).
//! - `GET /v1/sql?q=...`, `POST /v1/sql` ([`sql`], with the `sql` feature):
//!   read-only SQL over the archive's tables.
//! - `GET /v1/admin/losses`, `POST /v1/admin/losses/acknowledge`: the loss
//!   ledger.
//!
//! Access (tokens, scopes, rate limits, CORS, the request timeout) is the
//! [`access`] guard in front of all of them. Errors other than batch answers
//! share one body: `{"error": {"code": "...", "message": "..."}}`, without
//! internals.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use schemas::ack::BatchAck;
use schemas::envelope::{DecodeError, DecodeErrorClass};
use serde::Deserialize;

use crate::intake::{IntakeHandle, Sender, SubmitError};
use crate::state::HubState;
use crate::stats::HubStats;

pub const MAX_ANOMALY_LIMIT: usize = 1000;
/// Batch uploads processed at once; more are refused with 503 and
/// `Retry-After` (load shedding) instead of queueing without bound.
pub const MAX_CONCURRENT_BATCHES: usize = 64;

pub mod access;
pub mod bodies;
pub mod openapi;
pub mod query;
pub mod readings;
pub mod serve;
#[cfg(feature = "sql")]
pub mod sql;

#[derive(Debug, Clone)]
pub struct ApiContext {
    pub intake: IntakeHandle,
    pub state: Arc<HubState>,
    pub stats: Arc<HubStats>,
    pub batch_permits: Arc<tokio::sync::Semaphore>,
    pub access: Arc<access::Access>,
    /// The archive range queries read (its tables, local or in the bucket).
    pub archive: Option<Arc<crate::archive::reader::ArchiveReader>>,
    /// Acknowledged data the hub lost (see [`crate::losses`]).
    pub losses: Option<Arc<crate::losses::LossLedger>>,
    /// Runs `/v1/sql` queries over the archive.
    #[cfg(feature = "sql")]
    pub sql: Option<Arc<iot_sql::Engine>>,
}

impl ApiContext {
    pub fn new(intake: IntakeHandle, state: Arc<HubState>, stats: Arc<HubStats>) -> Self {
        Self {
            intake,
            state,
            stats,
            batch_permits: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_BATCHES)),
            access: Arc::new(access::Access::open()),
            archive: None,
            losses: None,
            #[cfg(feature = "sql")]
            sql: None,
        }
    }

    /// Serves `/v1/sql` over the archive with `engine`.
    #[cfg(feature = "sql")]
    pub fn with_sql(mut self, engine: Arc<iot_sql::Engine>) -> Self {
        self.sql = Some(engine);
        self
    }

    /// Reports losses in `/health` and the admin routes.
    pub fn with_losses(mut self, losses: Arc<crate::losses::LossLedger>) -> Self {
        self.losses = Some(losses);
        self
    }

    /// Lets range queries read the local archive under `root`.
    pub fn with_archive(self, root: std::path::PathBuf) -> Self {
        self.with_archive_reader(Arc::new(crate::archive::reader::ArchiveReader::local(
            &root,
        )))
    }

    /// Lets range queries read the archive `reader` reads.
    pub fn with_archive_reader(
        mut self,
        reader: Arc<crate::archive::reader::ArchiveReader>,
    ) -> Self {
        self.archive = Some(reader);
        self
    }

    /// Applies an access policy (tokens, rate limits, CORS, timeout).
    pub fn with_access(mut self, access: Arc<access::Access>) -> Self {
        self.access = access;
        self
    }
}

/// The router: every route is a documented handler (see [`openapi`]).
pub fn router(ctx: ApiContext) -> Router {
    use utoipa::OpenApi;
    use utoipa_axum::routes;
    let body_limit = ctx.intake.limits().max_envelope_bytes;
    let (schemas, paths, batches) = routes!(batches);
    let batches = (
        schemas,
        paths,
        batches.layer(DefaultBodyLimit::max(body_limit)),
    );
    let app = utoipa_axum::router::OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(dashboard))
        .routes(routes!(health))
        .routes(routes!(metrics))
        .routes(routes!(openapi_document))
        .routes(routes!(devices))
        .routes(routes!(device))
        .routes(routes!(readings::readings))
        .routes(routes!(anomalies))
        .routes(routes!(stream))
        .routes(routes!(query::query))
        .routes(batches)
        .routes(routes!(list_losses))
        .routes(routes!(acknowledge_losses));
    #[cfg(feature = "sql")]
    let app = app.routes(routes!(sql::sql_get, sql::sql_post));
    let (app, doc) = app.split_for_parts();
    let document = Arc::new(openapi::document(doc, ctx.access.is_open()));
    app.fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(axum::Extension(document))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&ctx.access),
            access::guard,
        ))
        .with_state(ctx)
}

/// `GET /`: the web dashboard.
#[utoipa::path(get, path = "/",
    summary = "The web dashboard (a static page; it calls the API with the token given as #token=...)",
    responses((status = 200, description = "HTML page", content_type = "text/html", body = String)))]
async fn dashboard() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("api/dashboard.html"),
    )
}

/// `GET /v1/openapi.json`: this API's document.
#[utoipa::path(get, path = "/v1/openapi.json", summary = "This document",
    responses((status = 200, description = "OpenAPI 3.1 document", body = Object)))]
async fn openapi_document(
    axum::Extension(document): axum::Extension<Arc<serde_json::Value>>,
) -> Json<serde_json::Value> {
    Json(serde_json::Value::clone(&document))
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

/// `GET /health`.
#[utoipa::path(get, path = "/health",
    summary = "Liveness and durability: 503 when the WAL or the archive cannot be written; `degraded` (200) while acknowledged data was lost and no operator has acknowledged it",
    responses(
        (status = 200, description = "healthy (or degraded)", body = bodies::HealthBody),
        (status = 503, description = "the hub cannot make data durable", body = bodies::HealthBody),
    ))]
async fn health(State(ctx): State<ApiContext>) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    let wal = if ctx.stats.wal_failed.load(Relaxed) {
        "failed"
    } else {
        "ok"
    };
    let archive = if ctx.stats.archive_failed() {
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
    let body = bodies::HealthBody {
        status: summary,
        wal,
        archive,
        unacknowledged_losses: losses,
    };
    (status, Json(body)).into_response()
}

/// `GET /v1/admin/losses`: acknowledged data the hub lost.
#[utoipa::path(get, path = "/v1/admin/losses",
    summary = "Acknowledged data the hub lost (damaged WAL records), kept until an operator acknowledges it; /health says degraded meanwhile",
    responses((status = 200, description = "the loss ledger", body = bodies::LossesBody)))]
async fn list_losses(State(ctx): State<ApiContext>) -> Json<bodies::LossesBody> {
    let losses = ctx.losses.as_ref().map(|l| l.entries()).unwrap_or_default();
    Json(bodies::LossesBody { losses })
}

/// `POST /v1/admin/losses/acknowledge`: an operator has seen the losses.
#[utoipa::path(post, path = "/v1/admin/losses/acknowledge",
    summary = "Clears the loss ledger (an operator has seen it)",
    responses(
        (status = 200, description = "how many entries were cleared", body = bodies::AcknowledgedBody),
        (status = 503, description = "the ledger cannot be written", body = openapi::ErrorBody),
    ))]
async fn acknowledge_losses(State(ctx): State<ApiContext>) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    let Some(ledger) = &ctx.losses else {
        return Json(bodies::AcknowledgedBody { acknowledged: 0 }).into_response();
    };
    match ledger.acknowledge() {
        Ok(n) => {
            ctx.stats.losses_unacknowledged.store(0, Relaxed);
            tracing::warn!(entries = n, "an operator acknowledged the recorded losses");
            Json(bodies::AcknowledgedBody { acknowledged: n }).into_response()
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

/// `GET /metrics`.
#[utoipa::path(get, path = "/metrics", summary = "Prometheus metrics",
    responses((status = 200, description = "OpenMetrics text (Prometheus reads it)",
        content_type = "application/openmetrics-text", body = String)))]
async fn metrics(State(ctx): State<ApiContext>) -> Response {
    (
        [(header::CONTENT_TYPE, iot_metrics::CONTENT_TYPE)],
        ctx.stats.render_prometheus(),
    )
        .into_response()
}

/// `GET /v1/devices`.
#[utoipa::path(get, path = "/v1/devices",
    summary = "Every device: gateway, status, last seen, and per metric the last value, score, status and model",
    responses((status = 200, description = "OK", body = bodies::DevicesBody)))]
async fn devices(State(ctx): State<ApiContext>) -> Json<bodies::DevicesBody> {
    Json(bodies::DevicesBody {
        devices: ctx.state.devices(),
    })
}

/// `GET /v1/devices/{device}`.
#[utoipa::path(get, path = "/v1/devices/{device}",
    summary = "One device: its gateway, status, last seen, and per metric the last value, score, status and model",
    params(("device" = String, Path, description = "device name")),
    responses(
        (status = 200, description = "OK", body = crate::state::DeviceState),
        (status = 404, description = "the hub has not seen this device", body = openapi::ErrorBody),
    ))]
async fn device(
    State(ctx): State<ApiContext>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Json<crate::state::DeviceState>, ApiError> {
    ctx.state.device(&name).map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_device",
            format!("no device '{name}'"),
        )
    })
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct AnomalyQuery {
    /// Events at or after this time.
    #[param(value_type = Option<openapi::Time>)]
    since: Option<String>,
    /// Events before this time.
    #[param(value_type = Option<openapi::Time>)]
    until: Option<String>,
    /// Only this device.
    device: Option<String>,
    /// Only this model id.
    model: Option<String>,
    /// Only events at least this severe (score / threshold).
    #[param(value_type = Option<f64>)]
    min_severity: Option<f64>,
    /// Page size (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^c[0-9a-f]{1,16}$")]
    cursor: Option<String>,
}

/// Cursors are opaque to clients: `c` and the hex id of the last event sent.
fn encode_cursor(id: u64) -> String {
    format!("c{id:x}")
}

fn decode_cursor(c: &str) -> Result<u64, ApiError> {
    c.strip_prefix('c')
        .filter(|h| {
            (1..=16).contains(&h.len())
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_cursor",
                "not a cursor this API issued",
            )
        })
}

/// `GET /v1/anomalies`.
#[utoipa::path(get, path = "/v1/anomalies",
    summary = "Recent anomaly events, newest first, with cursor pagination",
    params(AnomalyQuery),
    responses(
        (status = 200, description = "one page", body = bodies::AnomaliesPage),
        (status = 400, description = "malformed query", body = openapi::ErrorBody),
        (status = 422, description = "a parameter is out of range", body = openapi::ErrorBody),
    ))]
async fn anomalies(
    State(ctx): State<ApiContext>,
    query: Result<Query<AnomalyQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if q.min_severity.is_some_and(|s| !s.is_finite()) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_severity",
            "min_severity must be a finite number",
        ));
    }
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
    Ok(Json(bodies::AnomaliesPage {
        anomalies: events,
        next_cursor,
    })
    .into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct StreamQuery {
    /// Only this device.
    device: Option<String>,
    /// Comma-separated: `anomaly`, `update` (default both).
    #[param(pattern = "^(anomaly|update)(,(anomaly|update))*$")]
    types: Option<String>,
    /// The bearer token, for clients that cannot send headers (browsers'
    /// EventSource).
    #[allow(dead_code)]
    access_token: Option<String>,
}

/// `GET /v1/stream`.
#[utoipa::path(get, path = "/v1/stream",
    summary = "Server-sent events: anomaly events and per-device updates; resume with Last-Event-ID",
    params(
        StreamQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "id of the last event received; missed events still in memory are sent first"),
    ),
    responses(
        (status = 200, description = "`anomaly` and `update` events, keep-alive comments every 15 s", content_type = "text/event-stream", body = bodies::StreamEventBody),
        (status = 400, description = "malformed query", body = openapi::ErrorBody),
        (status = 422, description = "an unknown event type", body = openapi::ErrorBody),
    ))]
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
        .map(str::to_owned)
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

/// Earliest and latest times the API accepts: years 1 to 9999 (epoch
/// milliseconds exactly so, RFC 3339 times in any offset, so a day more
/// each side in UTC). Every difference of two fits an `i64` of microseconds.
const DAY_US: i64 = 86_400_000_000;
const MIN_TIME_US: i64 = openapi::MIN_TIME_MS * 1000 - DAY_US;
const MAX_TIME_US: i64 = openapi::MAX_TIME_MS * 1000 + 999 + DAY_US;

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
        Ok(ms) if (openapi::MIN_TIME_MS..=openapi::MAX_TIME_MS).contains(&ms) => ms * 1000,
        Ok(_) => return Err(bad()),
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

/// `POST /v1/batches`.
#[utoipa::path(post, path = "/v1/batches",
    summary = "A batch envelope (application/vnd.iot-pipeline.batch); answered once durable",
    request_body(content = Vec<u8>, content_type = "application/vnd.iot-pipeline.batch",
        description = "A batch envelope as the edge agent writes it (preamble, CRC32C, compressed Arrow IPC); anything else answers 400, or 422 for a well-formed envelope with invalid content"),
    responses(
        (status = 200, description = "durable or duplicate", body = schemas::ack::BatchAck),
        (status = 400, description = "malformed envelope", body = bodies::BatchRefusal),
        (status = 413, description = "envelope too large", body = bodies::BatchRefusal),
        (status = 422, description = "invalid content, or every reading refused (the answer says why)", body = bodies::BatchRefusal),
        (status = 403, description = "the envelope's gateway is not the sender's authenticated identity (client certificate or per-gateway ingest token); nothing of it is kept", body = openapi::ErrorBody),
        (status = 503, description = "the hub cannot make it durable now; retry after Retry-After", body = openapi::ErrorBody),
    ))]
async fn batches(
    State(ctx): State<ApiContext>,
    caller: Option<axum::Extension<access::Caller>>,
    peer: Option<axum::Extension<serve::PeerIdentity>>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(e) => {
            return ApiError::new(e.status(), "unreadable_body", e.body_text()).into_response();
        }
    };
    ctx.stats
        .batches_received_http
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let Ok(_permit) = Arc::clone(&ctx.batch_permits).try_acquire_owned() else {
        ctx.stats
            .batches_unavailable
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return unavailable("too many batch uploads in progress");
    };
    // Who may this request send for: its client certificate's names, its
    // per-gateway token's gateway, both (they must agree), or anyone.
    let bound_token = caller.and_then(|c| c.0.gateway.clone());
    let (names, how) = match (peer.map(|p| p.0.0), bound_token) {
        (Some(names), Some(gw)) => (
            Some(names.into_iter().filter(|n| *n == gw).collect()),
            "client certificate and ingest token",
        ),
        (Some(names), None) => (Some(names), "client certificate"),
        (None, Some(gw)) => (Some(vec![gw]), "ingest token"),
        (None, None) => (None, ""),
    };
    let sender = match &names {
        Some(names) => Sender::Gateways { names, how },
        None => Sender::Anyone,
    };
    match ctx.intake.submit_from(body, sender).await {
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
        Err(e @ SubmitError::Forbidden { .. }) => {
            ctx.stats
                .batches_forbidden_http
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(error = %e, "batch refused: not the sender's gateway");
            ApiError::new(StatusCode::FORBIDDEN, "forbidden_gateway", e.to_string()).into_response()
        }
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
