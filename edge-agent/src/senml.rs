//! SenML (RFC 8428), JSON representation: a pack (array) of records.
//!
//! Base fields (`bn`, `bt`, `bu`, `bv`, `bs`) apply to the record that
//! carries them and to every later record until replaced. A record's full
//! name is `bn + n`, its time `bt + t`, its value `bv + v` or, for a sum,
//! `bs + s`, and its unit `u` or else `bu` (kept with the reading). Times
//! below 2^28 are relative to now (RFC 8428 §4.5.3); larger ones are seconds
//! since the epoch. Values: `v` (number), `vb` (boolean, read as 0/1) and `s`
//! (sum) become readings; `vs` and `vd` (string, data) are not numeric and
//! are skipped and counted.
//!
//! Mapping to our model: the device comes from the topic template when it has
//! `{device}`; otherwise the full name is split at its last `/` or `:` into
//! device and metric (`urn:dev:ow:10e2073a01080063:temp` -> device
//! `urn:dev:ow:10e2073a01080063`, metric `temp`). With a device from the
//! topic, the full name is the metric.

use schemas::Reading;
use schemas::reading::TimestampMicros;
use serde_json::Value;

use crate::decode::{Decoded, Rejection, TopicTemplate, make_reading};

/// Times below this are relative to the receive time (RFC 8428 §4.5.3).
const RELATIVE_TIME_LIMIT: f64 = 268_435_456.0; // 2^28

pub fn decode_senml(
    template: &TopicTemplate,
    topic: &str,
    payload: &[u8],
    received_us: TimestampMicros,
) -> Result<Decoded, Rejection> {
    let names = template.capture(topic).ok_or(Rejection::TopicMismatch)?;
    let pack: Value = serde_json::from_slice(payload).map_err(|_| Rejection::InvalidJson)?;
    let Value::Array(records) = pack else {
        return Err(Rejection::UnsupportedShape);
    };
    let mut out = Decoded::default();
    let (mut base_name, mut base_time, mut base_value) = (String::new(), 0.0f64, 0.0f64);
    let mut base_sum = 0.0f64;
    let mut base_unit: Option<std::sync::Arc<str>> = None;
    for record in &records {
        let Value::Object(r) = record else {
            return Err(Rejection::UnsupportedShape);
        };
        if let Some(bn) = r.get("bn") {
            base_name = bn.as_str().ok_or(Rejection::BadName)?.to_owned();
        }
        if let Some(bt) = r.get("bt") {
            base_time = finite(bt).ok_or(Rejection::BadTimestamp)?;
        }
        if let Some(bv) = r.get("bv") {
            base_value = finite(bv).ok_or(Rejection::NoNumericValue)?;
        }
        if let Some(bs) = r.get("bs") {
            base_sum = finite(bs).ok_or(Rejection::NoNumericValue)?;
        }
        if let Some(bu) = r.get("bu") {
            base_unit = Some(unit(bu)?);
        }
        let name = match r.get("n") {
            Some(n) => format!("{base_name}{}", n.as_str().ok_or(Rejection::BadName)?),
            None => base_name.clone(),
        };
        let value = if let Some(v) = r.get("v") {
            finite(v).ok_or(Rejection::NoNumericValue)? + base_value
        } else if let Some(s) = r.get("s") {
            finite(s).ok_or(Rejection::NoNumericValue)? + base_sum
        } else if let Some(vb) = r.get("vb") {
            f64::from(u8::from(vb.as_bool().ok_or(Rejection::NoNumericValue)?))
        } else {
            // A record with only base fields, or a string/data value.
            if r.contains_key("vs") || r.contains_key("vd") {
                out.skipped_fields += 1;
            }
            continue;
        };
        let t = match r.get("t") {
            Some(t) => finite(t).ok_or(Rejection::BadTimestamp)?,
            None => 0.0,
        } + base_time;
        let ts_us = if t == 0.0 {
            received_us
        } else if t.abs() < RELATIVE_TIME_LIMIT {
            received_us + (t * 1e6).round() as i64
        } else if t > 0.0 && t < 9.0e12 {
            (t * 1e6).round() as i64
        } else {
            return Err(Rejection::BadTimestamp);
        };
        let (device, metric) = match names.device {
            Some(d) => (d.to_owned(), name),
            None => split_name(&name).ok_or(Rejection::NoDevice)?,
        };
        let mut reading: Reading = make_reading(&device, &metric, ts_us, value)?;
        reading.unit = match r.get("u") {
            Some(u) => Some(unit(u)?),
            None => base_unit.clone(),
        };
        out.readings.push(reading);
    }
    if out.readings.is_empty() {
        return Err(Rejection::NoNumericValue);
    }
    Ok(out)
}

/// Longest unit kept (SenML's registered units are a few characters).
const MAX_UNIT_LEN: usize = 32;

fn unit(v: &Value) -> Result<std::sync::Arc<str>, Rejection> {
    v.as_str()
        .filter(|u| !u.is_empty() && u.len() <= MAX_UNIT_LEN)
        .map(std::sync::Arc::from)
        .ok_or(Rejection::UnsupportedShape)
}

fn finite(v: &Value) -> Option<f64> {
    v.as_f64().filter(|x| x.is_finite())
}

/// `urn:dev:ow:10e2073a01080063:temp` -> (`urn:dev:ow:10e2073a01080063`, `temp`).
fn split_name(name: &str) -> Option<(String, String)> {
    let at = name.rfind(['/', ':'])?;
    let (device, metric) = (&name[..at], &name[at + 1..]);
    (!device.is_empty() && !metric.is_empty()).then(|| (device.to_owned(), metric.to_owned()))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Packs written by KPN's SenML library (see the fixture's generator),
    /// each with the absolute readings it must resolve to.
    #[test]
    fn packs_from_an_independent_encoder() {
        let cases: Vec<Value> =
            serde_json::from_str(include_str!("../tests/fixtures/senml/packs.json")).unwrap();
        assert!(cases.len() >= 3);
        for case in cases {
            let title = case["title"].as_str().unwrap();
            let pack = serde_json::to_vec(&case["pack"]).unwrap();
            let got = decode_senml(&any_topic(), "senml/x", &pack, NOW)
                .unwrap_or_else(|e| panic!("{title}: {e:?}"));
            let expected = case["expected"].as_array().unwrap();
            assert_eq!(got.readings.len(), expected.len(), "{title}");
            for (r, e) in got.readings.iter().zip(expected) {
                assert_eq!(r.device, e["device"].as_str().unwrap(), "{title}");
                assert_eq!(r.metric, e["metric"].as_str().unwrap(), "{title}");
                assert_eq!(r.ts_us, e["ts"].as_i64().unwrap() * 1_000_000, "{title}");
                assert!(
                    (r.value - e["value"].as_f64().unwrap()).abs() < 1e-9,
                    "{title}: {r:?}"
                );
                assert_eq!(r.unit.as_deref(), e["unit"].as_str(), "{title}");
            }
        }
    }

    const NOW: i64 = 1_700_000_000_000_000;

    fn any_topic() -> TopicTemplate {
        TopicTemplate::parse("senml/+").unwrap()
    }

    #[test]
    fn rfc8428_multiple_datapoints_example() {
        // RFC 8428 §5.1.2, with base name, base time and unit.
        let pack = br#"[
            {"bn":"urn:dev:ow:10e2073a0108006:","bt":1276020076.001,"bu":"A","bver":5,"n":"voltage","u":"V","v":120.1},
            {"n":"current","t":-5,"v":1.2},
            {"n":"current","t":-4,"v":1.3},
            {"n":"current","t":-3,"v":1.4}
        ]"#;
        let d = decode_senml(&any_topic(), "senml/x", pack, NOW).unwrap();
        assert_eq!(d.readings.len(), 4);
        assert_eq!(d.readings[0].device, "urn:dev:ow:10e2073a0108006");
        assert_eq!(d.readings[0].metric, "voltage");
        assert_eq!(d.readings[0].ts_us, 1_276_020_076_001_000);
        assert_eq!(d.readings[1].metric, "current");
        assert_eq!(d.readings[1].ts_us, 1_276_020_071_001_000);
        assert_eq!(d.readings[3].value, 1.4);
    }

    #[test]
    fn relative_times_count_from_reception_and_device_can_come_from_topic() {
        let t = TopicTemplate::parse("senml/{device}").unwrap();
        let d = decode_senml(
            &t,
            "senml/boiler",
            br#"[{"n":"temp","v":70,"t":-10},{"n":"on","vb":true},{"n":"label","vs":"x"}]"#,
            NOW,
        )
        .unwrap();
        assert_eq!(d.readings.len(), 2);
        assert_eq!(
            (d.readings[0].device.as_str(), d.readings[0].metric.as_str()),
            ("boiler", "temp")
        );
        assert_eq!(d.readings[0].ts_us, NOW - 10_000_000);
        assert_eq!(d.readings[1].value, 1.0);
        assert_eq!(d.skipped_fields, 1);
    }

    #[test]
    fn malformed_packs_are_rejected_with_a_reason() {
        let cases: [(&[u8], Rejection); 5] = [
            (b"{\"n\":\"x\",\"v\":1}", Rejection::UnsupportedShape),
            (b"[1,2]", Rejection::UnsupportedShape),
            (
                b"[{\"n\":\"a:b\",\"v\":\"hot\"}]",
                Rejection::NoNumericValue,
            ),
            (b"[{\"n\":\"nodevice\",\"v\":1}]", Rejection::NoDevice),
            (
                b"[{\"n\":\"a:b\",\"v\":1,\"t\":1e300}]",
                Rejection::BadTimestamp,
            ),
        ];
        for (payload, want) in cases {
            assert_eq!(
                decode_senml(&any_topic(), "senml/x", payload, NOW),
                Err(want),
                "{:?}",
                String::from_utf8_lossy(payload)
            );
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_senml(&any_topic(), "senml/x", &payload, NOW);
        }
    }
}
