//! Turning one MQTT message into readings: topic templates and JSON payloads.
//!
//! Pure functions over untrusted input, no I/O: every failure is a
//! [`Rejection`] with a stable reason label for the counters, never a panic.
//!
//! Accepted JSON payloads:
//! - a bare number: `21.5` (device and metric from the topic);
//! - a single value: `{"value": 21.5, "ts": ...}`, optionally with `"device"`
//!   and `"metric"` keys when the topic does not carry them;
//! - a flat object of metrics: `{"temp": 21.5, "hum": 40, "ts": ...}`; every
//!   numeric field is a reading whose metric is the field name. Booleans are
//!   read as 0/1; strings, nulls, arrays and objects are skipped and counted.
//!
//! Timestamps (`ts`, `timestamp` or `time`): an RFC 3339 string, or a number
//! of seconds, milliseconds or microseconds since the epoch (told apart by
//! magnitude: below 1e11 seconds, below 1e14 milliseconds, else
//! microseconds). Without one, the time the agent received the message is used.

use schemas::Reading;
use schemas::envelope::MAX_NAME_LEN;
use schemas::reading::TimestampMicros;
use serde_json::Value;

/// Why a message produced no readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    TopicMismatch,
    InvalidJson,
    UnsupportedShape,
    NoDevice,
    NoMetric,
    BadName,
    BadTimestamp,
    NoNumericValue,
    TooLarge,
    /// A binary payload (Sparkplug B protobuf) that does not parse.
    InvalidPayload,
}

impl Rejection {
    pub const ALL: [Rejection; 10] = [
        Rejection::TopicMismatch,
        Rejection::InvalidJson,
        Rejection::UnsupportedShape,
        Rejection::NoDevice,
        Rejection::NoMetric,
        Rejection::BadName,
        Rejection::BadTimestamp,
        Rejection::NoNumericValue,
        Rejection::TooLarge,
        Rejection::InvalidPayload,
    ];

    /// Stable label used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::TopicMismatch => "topic_mismatch",
            Rejection::InvalidJson => "invalid_json",
            Rejection::UnsupportedShape => "unsupported_shape",
            Rejection::NoDevice => "no_device",
            Rejection::NoMetric => "no_metric",
            Rejection::BadName => "bad_name",
            Rejection::BadTimestamp => "bad_timestamp",
            Rejection::NoNumericValue => "no_numeric_value",
            Rejection::TooLarge => "too_large",
            Rejection::InvalidPayload => "invalid_payload",
        }
    }

    pub fn index(self) -> usize {
        Rejection::ALL
            .iter()
            .position(|r| *r == self)
            .expect("listed in ALL")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Device,
    Metric,
    AnyLevel,
}

/// `sensors/{device}/{metric}`-style mapping from topic to names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate {
    segments: Vec<Segment>,
}

/// Names captured from a topic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicNames<'t> {
    pub device: Option<&'t str>,
    pub metric: Option<&'t str>,
}

impl TopicTemplate {
    pub fn parse(template: &str) -> Result<Self, String> {
        if template.is_empty() {
            return Err("must not be empty".into());
        }
        let mut segments = Vec::new();
        let (mut device, mut metric) = (false, false);
        for level in template.split('/') {
            let seg = match level {
                "{device}" if !device => {
                    device = true;
                    Segment::Device
                }
                "{metric}" if !metric => {
                    metric = true;
                    Segment::Metric
                }
                "{device}" | "{metric}" => return Err(format!("{level} appears twice")),
                "+" => Segment::AnyLevel,
                "#" => return Err("'#' is not supported in a template; use '+' per level".into()),
                other if other.contains(['{', '}', '+', '#']) => {
                    return Err(format!(
                        "unknown placeholder or wildcard in level {other:?}"
                    ));
                }
                other => Segment::Literal(other.to_owned()),
            };
            segments.push(seg);
        }
        Ok(Self { segments })
    }

    pub fn captures_device(&self) -> bool {
        self.segments.contains(&Segment::Device)
    }

    /// Captures device and metric from `topic`; `None` if it does not match.
    pub fn capture<'t>(&self, topic: &'t str) -> Option<TopicNames<'t>> {
        let mut names = TopicNames::default();
        let mut levels = topic.split('/');
        for seg in &self.segments {
            let level = levels.next()?;
            match seg {
                Segment::Literal(lit) if lit != level => return None,
                Segment::Literal(_) | Segment::AnyLevel => {}
                Segment::Device => names.device = Some(level),
                Segment::Metric => names.metric = Some(level),
            }
        }
        levels.next().is_none().then_some(names)
    }
}

/// MQTT topic-filter matching (`+` one level, `#` the rest).
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut topic_levels = topic.split('/');
    for f in filter.split('/') {
        match (f, topic_levels.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (lit, Some(t)) if lit == t => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

/// Result of decoding one message.
#[derive(Debug, Default, PartialEq)]
pub struct Decoded {
    pub readings: Vec<Reading>,
    /// Fields of a flat object that were not numbers and were skipped.
    pub skipped_fields: usize,
}

const TIME_KEYS: [&str; 3] = ["ts", "timestamp", "time"];

/// Decodes a JSON device message received at `received_us`.
pub fn decode_json(
    template: &TopicTemplate,
    topic: &str,
    payload: &[u8],
    received_us: TimestampMicros,
) -> Result<Decoded, Rejection> {
    let names = template.capture(topic).ok_or(Rejection::TopicMismatch)?;
    let value: Value = serde_json::from_slice(payload).map_err(|_| Rejection::InvalidJson)?;
    let mut out = Decoded::default();
    match value {
        Value::Number(n) => {
            let device = names.device.ok_or(Rejection::NoDevice)?;
            let metric = names.metric.ok_or(Rejection::NoMetric)?;
            let v = n.as_f64().ok_or(Rejection::NoNumericValue)?;
            out.readings
                .push(make_reading(device, metric, received_us, v)?);
        }
        Value::Object(map) => {
            let ts = match TIME_KEYS.iter().find_map(|k| map.get(*k)) {
                Some(t) => parse_timestamp(t)?,
                None => received_us,
            };
            let payload_device = match map.get("device") {
                Some(Value::String(d)) => Some(d.as_str()),
                Some(_) => return Err(Rejection::NoDevice),
                None => None,
            };
            let device = names.device.or(payload_device).ok_or(Rejection::NoDevice)?;
            if let Some(v) = map.get("value") {
                let metric = match map.get("metric") {
                    Some(Value::String(m)) => m.as_str(),
                    _ => names.metric.ok_or(Rejection::NoMetric)?,
                };
                let v = numeric(v).ok_or(Rejection::NoNumericValue)?;
                out.readings.push(make_reading(device, metric, ts, v)?);
            } else {
                for (key, v) in &map {
                    if TIME_KEYS.contains(&key.as_str()) || key == "device" {
                        continue;
                    }
                    match numeric(v) {
                        Some(x) => out.readings.push(make_reading(device, key, ts, x)?),
                        None => out.skipped_fields += 1,
                    }
                }
                if out.readings.is_empty() {
                    return Err(Rejection::NoNumericValue);
                }
            }
        }
        _ => return Err(Rejection::UnsupportedShape),
    }
    Ok(out)
}

fn numeric(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
}

/// Builds a reading after checking names and value; shared by every decoder.
pub(crate) fn make_reading(
    device: &str,
    metric: &str,
    ts_us: TimestampMicros,
    value: f64,
) -> Result<Reading, Rejection> {
    let ok = |s: &str| !s.is_empty() && s.len() <= MAX_NAME_LEN;
    if !ok(device) || !ok(metric) {
        return Err(Rejection::BadName);
    }
    if !value.is_finite() {
        return Err(Rejection::NoNumericValue);
    }
    Ok(Reading {
        device: device.to_owned(),
        metric: metric.to_owned(),
        ts_us,
        value,
        unit: None,
    })
}

/// Parses a timestamp field into microseconds since the epoch.
pub fn parse_timestamp(v: &Value) -> Result<TimestampMicros, Rejection> {
    match v {
        Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| t.timestamp_micros())
            .map_err(|_| Rejection::BadTimestamp),
        Value::Number(n) => {
            let x = n.as_f64().ok_or(Rejection::BadTimestamp)?;
            if !x.is_finite() || x < 0.0 {
                return Err(Rejection::BadTimestamp);
            }
            let micros = if x < 1e11 {
                x * 1e6
            } else if x < 1e14 {
                x * 1e3
            } else {
                x
            };
            if micros >= 9.0e18 {
                return Err(Rejection::BadTimestamp);
            }
            Ok(micros.round() as i64)
        }
        _ => Err(Rejection::BadTimestamp),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn tpl() -> TopicTemplate {
        TopicTemplate::parse("sensors/{device}/{metric}").unwrap()
    }

    const NOW: i64 = 1_700_000_000_000_000;

    #[test]
    fn bare_number_takes_names_from_topic() {
        let d = decode_json(&tpl(), "sensors/pump-1/temp", b"21.5", NOW).unwrap();
        assert_eq!(
            d.readings,
            vec![Reading {
                device: "pump-1".into(),
                metric: "temp".into(),
                ts_us: NOW,
                value: 21.5,
                unit: None,
            }]
        );
    }

    #[test]
    fn value_object_with_timestamps_in_every_unit() {
        for (ts, want) in [
            ("1700000001", 1_700_000_001_000_000),
            ("1700000001.5", 1_700_000_001_500_000),
            ("1700000001500", 1_700_000_001_500_000),
            ("1700000001500123", 1_700_000_001_500_123),
            ("\"2023-11-14T22:13:21.5Z\"", 1_700_000_001_500_000),
        ] {
            let payload = format!(r#"{{"value": 3, "ts": {ts}}}"#);
            let d = decode_json(&tpl(), "sensors/a/b", payload.as_bytes(), NOW).unwrap();
            assert_eq!(d.readings[0].ts_us, want, "ts {ts}");
            assert_eq!(d.readings[0].value, 3.0);
        }
    }

    #[test]
    fn flat_object_yields_one_reading_per_numeric_field() {
        let t = TopicTemplate::parse("plant/{device}/state").unwrap();
        let d = decode_json(
            &t,
            "plant/m7/state",
            br#"{"temp": 20.5, "hum": 41, "on": true, "label": "x", "ts": 1700000000}"#,
            NOW,
        )
        .unwrap();
        let mut got: Vec<(String, f64)> = d
            .readings
            .iter()
            .map(|r| (r.metric.clone(), r.value))
            .collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            got,
            vec![
                ("hum".into(), 41.0),
                ("on".into(), 1.0),
                ("temp".into(), 20.5)
            ]
        );
        assert_eq!(d.skipped_fields, 1);
        assert!(
            d.readings
                .iter()
                .all(|r| r.ts_us == 1_700_000_000_000_000 && r.device == "m7")
        );
    }

    #[test]
    fn device_can_come_from_the_payload() {
        let t = TopicTemplate::parse("ingest/+").unwrap();
        let d = decode_json(
            &t,
            "ingest/x",
            br#"{"device": "d9", "metric": "rpm", "value": 7}"#,
            NOW,
        )
        .unwrap();
        assert_eq!(
            (d.readings[0].device.as_str(), d.readings[0].metric.as_str()),
            ("d9", "rpm")
        );
        assert_eq!(
            decode_json(&t, "ingest/x", br#"{"metric": "rpm", "value": 7}"#, NOW),
            Err(Rejection::NoDevice)
        );
    }

    #[test]
    fn malformed_messages_are_rejected_with_a_reason() {
        let cases: [(&str, &[u8], Rejection); 7] = [
            ("other/a/b", b"1", Rejection::TopicMismatch),
            ("sensors/a/b/c", b"1", Rejection::TopicMismatch),
            ("sensors/a/b", b"{not json", Rejection::InvalidJson),
            ("sensors/a/b", b"\"text\"", Rejection::UnsupportedShape),
            (
                "sensors/a/b",
                br#"{"value": "hot"}"#,
                Rejection::NoNumericValue,
            ),
            (
                "sensors/a/b",
                br#"{"value": 1, "ts": "yesterday"}"#,
                Rejection::BadTimestamp,
            ),
            (
                "sensors/a/b",
                br#"{"label": "x"}"#,
                Rejection::NoNumericValue,
            ),
        ];
        for (topic, payload, want) in cases {
            assert_eq!(
                decode_json(&tpl(), topic, payload, NOW),
                Err(want),
                "{topic} {payload:?}"
            );
        }
    }

    #[test]
    fn template_rejects_bad_placeholders() {
        assert!(TopicTemplate::parse("a/{device}/{device}").is_err());
        assert!(TopicTemplate::parse("a/{dev}").is_err());
        assert!(TopicTemplate::parse("a/#").is_err());
        assert!(
            TopicTemplate::parse("a/+/{metric}")
                .unwrap()
                .capture("a/x/y")
                .unwrap()
                .metric
                == Some("y")
        );
    }

    #[test]
    fn numbers_parse_to_the_exact_value_sent() {
        for v in [
            10.198669330795061_f64,
            0.1,
            1e-300,
            123456789.12345679,
            -2.2250738585072014e-308,
        ] {
            let payload = format!("{v}");
            let d = decode_json(&tpl(), "sensors/a/b", payload.as_bytes(), NOW).unwrap();
            assert_eq!(d.readings[0].value.to_bits(), v.to_bits(), "{payload}");
        }
    }

    #[test]
    fn topic_filters_match_like_a_broker() {
        assert!(filter_matches("sensors/+/+", "sensors/a/b"));
        assert!(!filter_matches("sensors/+/+", "sensors/a"));
        assert!(!filter_matches("sensors/+/+", "sensors/a/b/c"));
        assert!(filter_matches("sensors/#", "sensors/a/b/c"));
        assert!(filter_matches("#", "x"));
        assert!(!filter_matches("a/b", "a/c"));
    }

    proptest! {
        #[test]
        fn arbitrary_payloads_never_panic(topic in "[a-z/+#]{0,20}", payload in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_json(&tpl(), &topic, &payload, NOW);
        }

        #[test]
        fn arbitrary_json_values_never_panic(v in any::<i64>(), f in any::<f64>(), s in ".{0,20}") {
            let payload = serde_json::json!({"value": f, "ts": v, "x": s, "n": v});
            let bytes = serde_json::to_vec(&payload).unwrap_or_default();
            let _ = decode_json(&tpl(), "sensors/a/b", &bytes, NOW);
        }
    }
}
