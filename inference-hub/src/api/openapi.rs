//! The API's routes as data: the router is built from [`ROUTES`] and the
//! OpenAPI document (`GET /v1/openapi.json`) is generated from the same table,
//! so a route cannot exist without being documented, nor be documented
//! without existing.

use serde_json::{Value, json};

/// Where a parameter goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum In {
    Path,
    Query,
    Header,
}

#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    pub location: In,
    pub description: &'static str,
}

/// One documented route.
#[derive(Debug, Clone, Copy)]
pub struct RouteDoc {
    pub method: &'static str,
    /// axum syntax: `{name}` for path parameters (also OpenAPI's).
    pub path: &'static str,
    pub summary: &'static str,
    /// `None`: open; else the token scope it needs.
    pub scope: Option<&'static str>,
    pub params: &'static [Param],
    pub responses: &'static [(u16, &'static str)],
    /// Media type of the success body.
    pub produces: &'static str,
}

const fn q(name: &'static str, description: &'static str) -> Param {
    Param {
        name,
        location: In::Query,
        description,
    }
}

const fn p(name: &'static str, description: &'static str) -> Param {
    Param {
        name,
        location: In::Path,
        description,
    }
}

const ERRORS_READ_ARCHIVE: &[(u16, &str)] = &[
    (200, "OK"),
    (400, "malformed query"),
    (401, "no or unknown bearer token"),
    (403, "the token lacks the read scope"),
    (422, "a parameter is out of range"),
    (429, "the token is over its rate limit"),
    (503, "the archive cannot be read"),
];

const ERRORS_READ: &[(u16, &str)] = &[
    (200, "OK"),
    (400, "malformed query"),
    (401, "no or unknown bearer token"),
    (403, "the token lacks the read scope"),
    (422, "a parameter is out of range"),
    (429, "the token is over its rate limit"),
];

pub const ROUTES: &[RouteDoc] = &[
    RouteDoc {
        method: "get",
        path: "/",
        summary: "The web dashboard (a static page; it calls the API with the token given as #token=...)",
        scope: None,
        params: &[],
        responses: &[(200, "HTML page")],
        produces: "text/html",
    },
    RouteDoc {
        method: "get",
        path: "/health",
        summary: "Liveness and durability: 503 when the WAL or the archive cannot be written; `degraded` (200) while acknowledged data was lost and no operator has acknowledged it",
        scope: None,
        params: &[],
        responses: &[(200, "healthy"), (503, "the hub cannot make data durable")],
        produces: "application/json",
    },
    RouteDoc {
        method: "get",
        path: "/metrics",
        summary: "Prometheus metrics",
        scope: Some("read"),
        params: &[],
        responses: &[
            (200, "OpenMetrics text (Prometheus reads it)"),
            (401, "no or unknown bearer token"),
        ],
        produces: "application/openmetrics-text",
    },
    RouteDoc {
        method: "get",
        path: "/v1/openapi.json",
        summary: "This document",
        scope: Some("read"),
        params: &[],
        responses: &[
            (200, "OpenAPI 3.0 document"),
            (401, "no or unknown bearer token"),
        ],
        produces: "application/json",
    },
    RouteDoc {
        method: "get",
        path: "/v1/devices",
        summary: "Every device: gateway, status, last seen, and per metric the last value, score, status and model",
        scope: Some("read"),
        params: &[],
        responses: ERRORS_READ,
        produces: "application/json",
    },
    RouteDoc {
        method: "get",
        path: "/v1/devices/{device}",
        summary: "One device: its gateway, status, last seen, and per metric the last value, score, status and model",
        scope: Some("read"),
        params: &[p("device", "device name")],
        responses: &[
            (200, "OK"),
            (401, "no or unknown bearer token"),
            (403, "the token lacks the read scope"),
            (404, "the hub has not seen this device"),
            (429, "the token is over its rate limit"),
        ],
        produces: "application/json",
    },
    RouteDoc {
        method: "get",
        path: "/v1/devices/{device}/metrics/{metric}/readings",
        summary: "Readings and scores over a time range, optionally downsampled",
        scope: Some("read"),
        params: &[
            p("device", "device name"),
            p("metric", "metric name"),
            q(
                "from",
                "range start: RFC 3339 or epoch milliseconds (default: to - 24 h)",
            ),
            q(
                "to",
                "range end, exclusive (default: now); at most 31 days after from",
            ),
            q("step", "bucket width such as 5m; one point per bucket"),
            q("agg", "mean (default), min, max, last or count"),
            q(
                "limit",
                "most raw points returned (default 10000, max 100000)",
            ),
        ],
        responses: ERRORS_READ_ARCHIVE,
        produces: "application/json",
    },
    RouteDoc {
        method: "get",
        path: "/v1/anomalies",
        summary: "Recent anomaly events, newest first, with cursor pagination",
        scope: Some("read"),
        params: &[
            q(
                "since",
                "events at or after: RFC 3339 or epoch milliseconds",
            ),
            q("until", "events before"),
            q("device", "only this device"),
            q("model", "only this model id"),
            q(
                "min_severity",
                "only events at least this severe (score / threshold)",
            ),
            q("limit", "page size 1..=1000 (default 100)"),
            q("cursor", "next_cursor of the previous page"),
        ],
        responses: ERRORS_READ,
        produces: "application/json",
    },
    RouteDoc {
        method: "get",
        path: "/v1/stream",
        summary: "Server-sent events: anomaly events and per-device updates; resume with Last-Event-ID",
        scope: Some("read"),
        params: &[
            q("device", "only this device"),
            q("types", "comma-separated: anomaly, update (default both)"),
            Param {
                name: "Last-Event-ID",
                location: In::Header,
                description: "id of the last event received; missed events still in memory are sent first",
            },
        ],
        responses: ERRORS_READ,
        produces: "text/event-stream",
    },
    RouteDoc {
        method: "get",
        path: "/v1/query",
        summary: "Ad-hoc reads of the archive: one table, a time range, filters, projection; JSON, JSON Lines, CSV or Parquet, streamed",
        scope: Some("read"),
        params: &[
            q("table", "scored (default), anomalies, shadow or rescored"),
            q(
                "from",
                "range start, required: RFC 3339 or epoch milliseconds",
            ),
            q(
                "to",
                "range end, exclusive, required; at most 31 days after from",
            ),
            q("device", "only this device"),
            q("metric", "only this metric"),
            q("status", "only this status (scored tables)"),
            q("columns", "comma-separated columns (default all)"),
            q("limit", "most rows (default 100000, max 1000000)"),
            q(
                "format",
                "json (default), jsonl, csv or parquet; or use Accept",
            ),
        ],
        responses: ERRORS_READ_ARCHIVE,
        produces: "application/json",
    },
    RouteDoc {
        method: "post",
        path: "/v1/batches",
        summary: "A batch envelope (application/vnd.iot-pipeline.batch); answered once durable",
        scope: Some("ingest"),
        params: &[],
        responses: &[
            (200, "durable or duplicate"),
            (400, "malformed envelope"),
            (401, "no or unknown bearer token"),
            (403, "the token lacks the ingest scope"),
            (413, "envelope too large"),
            (422, "invalid content"),
            (429, "the token is over its rate limit"),
            (
                503,
                "the hub cannot make it durable now; retry after Retry-After",
            ),
        ],
        produces: "application/json",
    },
    RouteDoc {
        method: "get",
        path: "/v1/admin/losses",
        summary: "Acknowledged data the hub lost (damaged WAL records), kept until an operator acknowledges it; /health says degraded meanwhile",
        scope: Some("admin"),
        params: &[],
        responses: &[
            (200, "the loss ledger"),
            (401, "no or unknown bearer token"),
            (403, "the token lacks the admin scope"),
        ],
        produces: "application/json",
    },
    RouteDoc {
        method: "post",
        path: "/v1/admin/losses/acknowledge",
        summary: "Clears the loss ledger (an operator has seen it)",
        scope: Some("admin"),
        params: &[],
        responses: &[
            (200, "how many entries were cleared"),
            (401, "no or unknown bearer token"),
            (403, "the token lacks the admin scope"),
            (503, "the ledger cannot be written"),
        ],
        produces: "application/json",
    },
];

/// The OpenAPI 3.0 document of [`ROUTES`].
pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for r in ROUTES {
        let parameters: Vec<Value> = r
            .params
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "in": match p.location { In::Path => "path", In::Query => "query", In::Header => "header" },
                    "required": p.location == In::Path,
                    "description": p.description,
                    "schema": {"type": "string"},
                })
            })
            .collect();
        let responses: serde_json::Map<String, Value> = r
            .responses
            .iter()
            .map(|(code, description)| {
                let content = if *code < 300 {
                    json!({ r.produces: {"schema": {}} })
                } else {
                    json!({"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}})
                };
                (
                    code.to_string(),
                    json!({"description": description, "content": content}),
                )
            })
            .collect();
        let mut op = json!({
            "summary": r.summary,
            "operationId": format!("{}_{}", r.method, r.path.replace(['/', '{', '}', '.'], "_")),
            "parameters": parameters,
            "responses": responses,
        });
        match r.scope {
            Some(scope) => {
                op["security"] = json!([{"bearer": []}]);
                op["x-scope"] = json!(scope);
            }
            None => op["security"] = json!([]),
        }
        if r.method == "post" {
            op["requestBody"] = json!({
                "required": true,
                "content": {"application/vnd.iot-pipeline.batch": {"schema": {"type": "string", "format": "binary"}}},
            });
        }
        paths.entry(r.path.to_owned()).or_insert_with(|| json!({}))[r.method] = op;
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "inference-hub API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Dashboard and intake API of the inference hub. Errors share one body: {\"error\": {\"code\", \"message\"}}.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                    }},
                },
            },
        },
    })
}
