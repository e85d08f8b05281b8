//! `GET /v1/devices/{device}/metrics/{metric}/readings`: readings and
//! scores of one series over a time range (at most 31 days), from the
//! committed archive merged with the hub's newest in-memory readings; with
//! `step`, one point per step (the values aggregated by `agg`, the step's
//! largest score and number of anomalous readings).

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use serde::Deserialize;

use super::{ApiContext, ApiError, CancelOnDrop, bodies, check_range, openapi, parse_time, query};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReadingsQuery {
    /// Range start (default: `to` - 24 h).
    #[param(value_type = Option<openapi::Time>)]
    from: Option<String>,
    /// Range end, exclusive (default: now); after `from`, at most 31 days
    /// after it (else 422).
    #[param(value_type = Option<openapi::Time>)]
    to: Option<String>,
    /// Bucket width: a whole number of seconds, minutes, hours or days
    /// (`30s`, `5m`, `1h`, `7d`); one point per bucket.
    #[param(pattern = "^[1-9][0-9]{0,5}[smhd]$")]
    step: Option<String>,
    /// How a bucket's values are combined (default `mean`).
    #[param(schema_with = agg_schema)]
    agg: Option<String>,
    /// Most raw points returned (default 10000); a range holding more
    /// answers 422 unless a `step` is given.
    #[param(minimum = 1, maximum = 100000)]
    limit: Option<usize>,
}

const AGGREGATES: [&str; 5] = ["mean", "min", "max", "last", "count"];

fn agg_schema() -> utoipa::openapi::Schema {
    openapi::one_of(&AGGREGATES)
}

/// A `step` as documented: a whole number (1 to 6 digits, no leading zero)
/// of `s`, `m`, `h` or `d`, in microseconds.
fn parse_step(step: &str) -> Option<i64> {
    let unit_us: i64 = match step.as_bytes().last()? {
        b's' => 1_000_000,
        b'm' => 60_000_000,
        b'h' => 3_600_000_000,
        b'd' => 86_400_000_000,
        _ => return None,
    };
    let digits = &step[..step.len() - 1];
    let well_formed = (1..=6).contains(&digits.len())
        && !digits.starts_with('0')
        && digits.bytes().all(|b| b.is_ascii_digit());
    well_formed
        .then(|| digits.parse::<i64>().ok())
        .flatten()
        .map(|n| n * unit_us)
}

pub const MAX_READINGS_LIMIT: usize = 100_000;
const MAX_RANGE_US: i64 = 31 * 24 * 3_600_000_000;

/// `GET /v1/devices/{device}/metrics/{metric}/readings`.
#[utoipa::path(get, path = "/v1/devices/{device}/metrics/{metric}/readings",
    summary = "Readings and scores over a time range, optionally downsampled",
    params(
        ("device" = String, Path, description = "device name"),
        ("metric" = String, Path, description = "metric name"),
        ReadingsQuery,
    ),
    responses(
        (status = 200, description = "raw readings, or one point per step", body = bodies::Readings),
        (status = 400, description = "malformed query", body = openapi::ErrorBody),
        (status = 422, description = "a parameter is out of range, the range is empty or longer than 31 days, or it holds more readings than `limit`", body = openapi::ErrorBody),
        (status = 503, description = "the archive cannot be read", body = openapi::ErrorBody),
    ))]
pub async fn readings(
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
        Some(s) => Some(parse_step(s).ok_or_else(|| {
            unprocessable(
                "bad_step",
                "step must be a whole number of s, m, h or d, such as 30s, 5m or 1h",
            )
        })?),
    };
    let agg = q.agg.as_deref().unwrap_or("mean");
    if !AGGREGATES.contains(&agg) {
        return Err(unprocessable(
            "bad_agg",
            "agg must be mean, min, max, last or count",
        ));
    }
    // Archive (committed files) merged with the newest in-memory points.
    let archive = ctx.archive.clone();
    let (d, m) = (device.clone(), metric.clone());
    // The scan stops when this request is gone (timed out, client left).
    let cancel = CancelOnDrop::default();
    let cancelled = cancel.token();
    let mut points: std::collections::BTreeMap<i64, crate::state::Point> =
        tokio::task::spawn_blocking(move || match archive {
            Some(reader) => query::read_points(&reader, &d, &m, from, to, &cancelled),
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
            let points = points
                .values()
                .map(|p| bodies::RawPoint {
                    ts: crate::scoring::format_ts(p.ts_us),
                    value: p.value,
                    score: p.score,
                    status: p.status,
                })
                .collect();
            bodies::Readings::Raw(bodies::RawReadings {
                device,
                metric,
                points,
            })
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
            let points = buckets
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
                    let max_score = ps
                        .iter()
                        .filter_map(|p| p.score)
                        .fold(None, |m: Option<f64>, s| Some(m.map_or(s, |m| m.max(s))));
                    let anomalous = ps
                        .iter()
                        .filter(|p| p.status == schemas::tables::status::ANOMALOUS)
                        .count();
                    bodies::Bucket {
                        ts: crate::scoring::format_ts(start),
                        value,
                        count: ps.len(),
                        max_score,
                        anomalous,
                    }
                })
                .collect();
            bodies::Readings::Stepped(bodies::SteppedReadings {
                device,
                metric,
                step: q.step.unwrap_or_default(),
                agg: agg.to_owned(),
                points,
            })
        }
    };
    Ok(Json(body).into_response())
}

#[cfg(test)]
mod tests {
    use super::parse_step;

    /// The server takes exactly the documented pattern
    /// `^[1-9][0-9]{0,5}[smhd]$`, so schema and handler agree.
    #[test]
    fn a_step_is_exactly_the_documented_pattern() {
        assert_eq!(parse_step("1s"), Some(1_000_000));
        assert_eq!(parse_step("5m"), Some(300_000_000));
        assert_eq!(parse_step("2h"), Some(7_200_000_000));
        assert_eq!(parse_step("999999d"), Some(999_999 * 86_400_000_000));
        for refused in [
            "", "s", "0s", "05m", "1h30m", "500ms", "1 h", " 1h", "1H", "1234567s", "+1s", "-1s",
            "1.5h", "1w",
        ] {
            assert_eq!(parse_step(refused), None, "{refused:?}");
        }
    }
}
