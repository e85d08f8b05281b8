//! The JSON bodies the API answers with, typed so the OpenAPI document
//! describes exactly what the handlers send (see [`super::openapi`]).
//! `deny_unknown_fields` only tells the schema that no other field is sent
//! (`additionalProperties: false`), which keeps the `oneOf` of the two
//! readings shapes unambiguous.

use serde::Serialize;
use utoipa::ToSchema;

use crate::losses::LossEntry;
use crate::scoring::AnomalyEvent;
use crate::state::DeviceState;

/// `GET /health`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthBody {
    /// `ok`, `degraded` (healthy, but acknowledged data was lost and no
    /// operator has acknowledged it) or `unhealthy` (503).
    #[schema(value_type = String, pattern = "^(ok|degraded|unhealthy)$")]
    pub status: &'static str,
    /// `ok` or `failed`.
    #[schema(value_type = String, pattern = "^(ok|failed)$")]
    pub wal: &'static str,
    /// `ok` or `failed`.
    #[schema(value_type = String, pattern = "^(ok|failed)$")]
    pub archive: &'static str,
    /// Entries of the loss ledger (`GET /v1/admin/losses`).
    pub unacknowledged_losses: usize,
}

/// `GET /v1/devices`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DevicesBody {
    pub devices: Vec<DeviceState>,
}

/// `GET /v1/anomalies`: one page, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnomaliesPage {
    pub anomalies: Vec<AnomalyEvent>,
    /// Pass as `cursor` for the next, older page; null on the last page.
    pub next_cursor: Option<String>,
}

/// `GET /v1/devices/{device}/metrics/{metric}/readings`: raw readings, or
/// one point per step when `step` is given.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Readings {
    Raw(RawReadings),
    Stepped(SteppedReadings),
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawReadings {
    pub device: String,
    pub metric: String,
    pub points: Vec<RawPoint>,
}

/// One scored reading.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPoint {
    /// RFC 3339 with microseconds.
    pub ts: String,
    pub value: f64,
    /// Null while the series warms up or when it could not be scored.
    pub score: Option<f64>,
    /// `ok`, `anomalous`, `warming_up`, `unscored` or `late`.
    #[schema(value_type = String)]
    pub status: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SteppedReadings {
    pub device: String,
    pub metric: String,
    /// The `step` asked for.
    pub step: String,
    /// The `agg` applied (default `mean`).
    pub agg: String,
    pub points: Vec<Bucket>,
}

/// The readings of one step.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Bucket {
    /// Start of the step (RFC 3339 with microseconds).
    pub ts: String,
    /// The readings' values aggregated by `agg`.
    pub value: f64,
    /// Readings in the step.
    pub count: usize,
    /// The largest score in the step; null when none was scored.
    pub max_score: Option<f64>,
    /// Readings in the step marked anomalous.
    pub anomalous: usize,
}

/// `GET /v1/admin/losses`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LossesBody {
    pub losses: Vec<LossEntry>,
}

/// `POST /v1/admin/losses/acknowledge`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcknowledgedBody {
    /// Ledger entries cleared.
    pub acknowledged: usize,
}

/// `POST /v1/batches` refused: the batch answer when the envelope could be
/// read far enough to name the batch, else the error body.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum BatchRefusal {
    Answer(schemas::ack::BatchAck),
    Error(super::openapi::ErrorBody),
}

/// One server-sent event of `GET /v1/stream`, as a client's SSE parser
/// reads it (keep-alive comments are not events).
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamEventBody {
    /// Increasing; send the last one back as `Last-Event-ID` to resume.
    pub id: String,
    /// `anomaly` or `update`.
    #[schema(pattern = "^(anomaly|update)$")]
    pub event: String,
    /// JSON text: an [`AnomalyEvent`] for `anomaly`; for `update`, the
    /// device's gateway and its series' new latest values.
    pub data: String,
}
