//! Sparkplug B (Eclipse Tahu payload, protobuf) over
//! `spBv1.0/<group>/<NBIRTH|NDATA|DBIRTH|DDATA|...>/<edge-node>[/<device>]`.
//!
//! Birth certificates (NBIRTH, DBIRTH) name every metric and may give it a
//! numeric alias; later DATA messages may carry only the alias. Aliases are
//! scoped to the edge node (a node's devices share its alias space), and an
//! NBIRTH starts the node's table afresh. A DATA metric whose alias was never
//! born (for example after the agent restarted mid-session) cannot be named:
//! it is counted, and the message is rejected if nothing else in it could be
//! read.
//!
//! Device naming: `<edge-node>/<device>` for device messages and
//! `<edge-node>` for node messages. Numeric datatypes (Int8..UInt64, Float,
//! Double, Boolean as 0/1, DateTime as ms) become readings; strings, bytes,
//! datasets and templates are skipped and counted. Null metrics are skipped.
//!
//! The protobuf reader below is deliberately tiny and bounds-checked: every
//! length is checked against the input before use, varints are at most ten
//! bytes, unknown fields are skipped by wire type, and nothing recurses
//! without a depth limit.

use std::collections::HashMap;

use schemas::reading::TimestampMicros;

use crate::decode::{Decoded, Rejection, make_reading};

/// Alias tables learned from birth certificates, per `(group, edge node)`.
#[derive(Debug, Default)]
pub struct SparkplugState {
    aliases: HashMap<(String, String), HashMap<u64, String>>,
}

#[derive(Debug, Default, Clone, PartialEq)]
struct Metric {
    name: Option<String>,
    alias: Option<u64>,
    timestamp_ms: Option<u64>,
    datatype: u32,
    is_null: bool,
    value: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Value {
    Int(u32),
    Long(u64),
    Float(f32),
    Double(f64),
    Bool(bool),
    /// string, bytes, dataset, template, extension: not a number.
    Other,
}

/// Sparkplug datatype codes (the subset with special decoding).
pub mod datatype {
    pub const INT8: u32 = 1;
    pub const INT16: u32 = 2;
    pub const INT32: u32 = 3;
    pub const INT64: u32 = 4;
    pub const DATETIME: u32 = 13;
}

impl SparkplugState {
    /// Decodes one Sparkplug message received at `received_us`.
    pub fn decode(
        &mut self,
        topic: &str,
        payload: &[u8],
        received_us: TimestampMicros,
    ) -> Result<Decoded, Rejection> {
        let mut levels = topic.split('/');
        let (Some("spBv1.0"), Some(group), Some(kind), Some(node)) =
            (levels.next(), levels.next(), levels.next(), levels.next())
        else {
            return Err(Rejection::TopicMismatch);
        };
        let device_level = levels.next();
        if levels.next().is_some() {
            return Err(Rejection::TopicMismatch);
        }
        let device = match (kind, device_level) {
            ("DBIRTH" | "DDATA", Some(d)) => format!("{node}/{d}"),
            ("NBIRTH" | "NDATA", None) => node.to_owned(),
            // Deaths, commands and state messages carry no readings.
            ("NDEATH" | "DDEATH" | "NCMD" | "DCMD" | "STATE", _) => {
                return Err(Rejection::NoNumericValue);
            }
            _ => return Err(Rejection::TopicMismatch),
        };
        let (payload_ts, metrics) =
            parse_payload(payload).map_err(|_| Rejection::InvalidPayload)?;
        let key = (group.to_owned(), node.to_owned());
        if kind == "NBIRTH" {
            self.aliases.insert(key.clone(), HashMap::new());
        }
        let is_birth = kind.ends_with("BIRTH");
        let mut out = Decoded::default();
        for m in metrics {
            let table = self.aliases.entry(key.clone()).or_default();
            if is_birth && let (Some(alias), Some(name)) = (m.alias, &m.name) {
                table.insert(alias, name.clone());
            }
            let name = match (&m.name, m.alias) {
                (Some(n), _) => n.clone(),
                (None, Some(a)) => match table.get(&a) {
                    Some(n) => n.clone(),
                    None => {
                        out.skipped_fields += 1;
                        continue;
                    }
                },
                (None, None) => {
                    out.skipped_fields += 1;
                    continue;
                }
            };
            let Some(value) = (!m.is_null).then(|| numeric(&m)).flatten() else {
                out.skipped_fields += 1;
                continue;
            };
            let ts_us = match m.timestamp_ms.or(payload_ts) {
                Some(ms) if ms < 9_000_000_000_000 => ms as i64 * 1000,
                Some(_) => return Err(Rejection::BadTimestamp),
                None => received_us,
            };
            out.readings
                .push(make_reading(&device, &name, ts_us, value)?);
        }
        if out.readings.is_empty() {
            return Err(Rejection::NoNumericValue);
        }
        Ok(out)
    }
}

fn numeric(m: &Metric) -> Option<f64> {
    let v = m.value?;
    let x = match (v, m.datatype) {
        (Value::Int(i), datatype::INT8) => f64::from(i as i8),
        (Value::Int(i), datatype::INT16) => f64::from(i as i16),
        (Value::Int(i), datatype::INT32) => f64::from(i as i32),
        (Value::Int(i), _) => f64::from(i),
        (Value::Long(l), datatype::INT64) => l as i64 as f64,
        (Value::Long(l), datatype::DATETIME) => l as f64,
        (Value::Long(l), _) => l as f64,
        (Value::Float(f), _) => f64::from(f),
        (Value::Double(d), _) => d,
        (Value::Bool(b), _) => f64::from(u8::from(b)),
        (Value::Other, _) => return None,
    };
    x.is_finite().then_some(x)
}

#[derive(Debug)]
struct WireError;

/// Bounds-checked protobuf wire reader.
struct Wire<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Wire<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let mut out = 0u64;
        for i in 0..10 {
            let b = *self.buf.get(self.pos).ok_or(WireError)?;
            self.pos += 1;
            out |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(out);
            }
        }
        Err(WireError)
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(WireError)?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn len_delimited(&mut self) -> Result<&'a [u8], WireError> {
        let n = usize::try_from(self.varint()?).map_err(|_| WireError)?;
        self.bytes(n)
    }

    /// Next field: (number, wire type).
    fn key(&mut self) -> Result<(u64, u8), WireError> {
        let k = self.varint()?;
        Ok((k >> 3, (k & 7) as u8))
    }

    fn skip(&mut self, wire_type: u8) -> Result<(), WireError> {
        match wire_type {
            0 => self.varint().map(drop),
            1 => self.bytes(8).map(drop),
            2 => self.len_delimited().map(drop),
            5 => self.bytes(4).map(drop),
            _ => Err(WireError), // groups are not used by Sparkplug
        }
    }
}

fn parse_payload(buf: &[u8]) -> Result<(Option<u64>, Vec<Metric>), WireError> {
    let mut w = Wire::new(buf);
    let (mut timestamp, mut metrics) = (None, Vec::new());
    while !w.done() {
        match w.key()? {
            (1, 0) => timestamp = Some(w.varint()?),
            (2, 2) => metrics.push(parse_metric(w.len_delimited()?)?),
            (_, wt) => w.skip(wt)?,
        }
    }
    Ok((timestamp, metrics))
}

fn parse_metric(buf: &[u8]) -> Result<Metric, WireError> {
    let mut w = Wire::new(buf);
    let mut m = Metric::default();
    while !w.done() {
        match w.key()? {
            (1, 2) => {
                m.name =
                    Some(String::from_utf8(w.len_delimited()?.to_vec()).map_err(|_| WireError)?)
            }
            (2, 0) => m.alias = Some(w.varint()?),
            (3, 0) => m.timestamp_ms = Some(w.varint()?),
            (4, 0) => m.datatype = w.varint()? as u32,
            (7, 0) => m.is_null = w.varint()? != 0,
            (10, 0) => m.value = Some(Value::Int(w.varint()? as u32)),
            (11, 0) => m.value = Some(Value::Long(w.varint()?)),
            (12, 5) => {
                m.value = Some(Value::Float(f32::from_le_bytes(
                    w.bytes(4)?.try_into().map_err(|_| WireError)?,
                )))
            }
            (13, 1) => {
                m.value = Some(Value::Double(f64::from_le_bytes(
                    w.bytes(8)?.try_into().map_err(|_| WireError)?,
                )))
            }
            (14, 0) => m.value = Some(Value::Bool(w.varint()? != 0)),
            (15..=19, wt) => {
                w.skip(wt)?;
                m.value = Some(Value::Other);
            }
            (_, wt) => w.skip(wt)?,
        }
    }
    Ok(m)
}

/// Encoder for tests, tools and the replay command: the subset of the Tahu
/// payload this module reads.
pub mod encode {
    /// One metric: name and/or alias, datatype code, and a value.
    #[derive(Debug, Clone)]
    pub struct MetricOut<'a> {
        pub name: Option<&'a str>,
        pub alias: Option<u64>,
        pub datatype: u32,
        pub value: ValueOut,
        pub timestamp_ms: Option<u64>,
    }

    #[derive(Debug, Clone, Copy)]
    pub enum ValueOut {
        Int(u32),
        Long(u64),
        Float(f32),
        Double(f64),
        Bool(bool),
    }

    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn key(out: &mut Vec<u8>, field: u64, wire: u64) {
        varint(out, field << 3 | wire);
    }

    pub fn payload(timestamp_ms: u64, metrics: &[MetricOut<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        key(&mut out, 1, 0);
        varint(&mut out, timestamp_ms);
        for m in metrics {
            let mut body = Vec::new();
            if let Some(n) = m.name {
                key(&mut body, 1, 2);
                varint(&mut body, n.len() as u64);
                body.extend_from_slice(n.as_bytes());
            }
            if let Some(a) = m.alias {
                key(&mut body, 2, 0);
                varint(&mut body, a);
            }
            if let Some(t) = m.timestamp_ms {
                key(&mut body, 3, 0);
                varint(&mut body, t);
            }
            key(&mut body, 4, 0);
            varint(&mut body, u64::from(m.datatype));
            match m.value {
                ValueOut::Int(i) => {
                    key(&mut body, 10, 0);
                    varint(&mut body, u64::from(i));
                }
                ValueOut::Long(l) => {
                    key(&mut body, 11, 0);
                    varint(&mut body, l);
                }
                ValueOut::Float(f) => {
                    key(&mut body, 12, 5);
                    body.extend_from_slice(&f.to_le_bytes());
                }
                ValueOut::Double(d) => {
                    key(&mut body, 13, 1);
                    body.extend_from_slice(&d.to_le_bytes());
                }
                ValueOut::Bool(b) => {
                    key(&mut body, 14, 0);
                    varint(&mut body, u64::from(b));
                }
            }
            key(&mut out, 2, 2);
            varint(&mut out, body.len() as u64);
            out.extend_from_slice(&body);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::encode::{MetricOut, ValueOut, payload};
    use super::*;

    const NOW: i64 = 1_700_000_000_000_000;

    fn metric(
        name: Option<&'static str>,
        alias: Option<u64>,
        datatype: u32,
        value: ValueOut,
    ) -> MetricOut<'static> {
        MetricOut {
            name,
            alias,
            datatype,
            value,
            timestamp_ms: None,
        }
    }

    #[test]
    fn birth_names_aliases_that_data_messages_use() {
        let mut state = SparkplugState::default();
        let birth = payload(
            1_700_000_000_000,
            &[
                metric(Some("Temperature"), Some(1), 10, ValueOut::Double(21.5)),
                metric(Some("Pressure"), Some(2), 9, ValueOut::Float(1.5)),
            ],
        );
        let b = state
            .decode("spBv1.0/plant/DBIRTH/node1/pump7", &birth, NOW)
            .unwrap();
        assert_eq!(b.readings.len(), 2);
        assert_eq!(b.readings[0].device, "node1/pump7");
        assert_eq!(b.readings[0].ts_us, 1_700_000_000_000_000);

        let data = payload(
            1_700_000_001_000,
            &[metric(None, Some(2), 9, ValueOut::Float(1.75))],
        );
        let d = state
            .decode("spBv1.0/plant/DDATA/node1/pump7", &data, NOW)
            .unwrap();
        assert_eq!(
            (d.readings[0].metric.as_str(), d.readings[0].value),
            ("Pressure", 1.75)
        );
    }

    #[test]
    fn unknown_alias_is_counted_not_guessed() {
        let mut state = SparkplugState::default();
        let data = payload(1, &[metric(None, Some(9), 10, ValueOut::Double(1.0))]);
        assert_eq!(
            state.decode("spBv1.0/g/DDATA/n/d", &data, NOW),
            Err(Rejection::NoNumericValue)
        );
        let mixed = payload(
            1,
            &[
                metric(None, Some(9), 10, ValueOut::Double(1.0)),
                metric(Some("x"), None, 10, ValueOut::Double(2.0)),
            ],
        );
        let d = state.decode("spBv1.0/g/DDATA/n/d", &mixed, NOW).unwrap();
        assert_eq!((d.readings.len(), d.skipped_fields), (1, 1));
    }

    #[test]
    fn signed_and_boolean_datatypes() {
        let mut state = SparkplugState::default();
        let p = payload(
            5,
            &[
                metric(Some("i8"), None, datatype::INT8, ValueOut::Int(0xFF)),
                metric(Some("i32"), None, datatype::INT32, ValueOut::Int(u32::MAX)),
                metric(Some("i64"), None, datatype::INT64, ValueOut::Long(u64::MAX)),
                metric(Some("u32"), None, 7, ValueOut::Int(4_000_000_000)),
                metric(Some("flag"), None, 11, ValueOut::Bool(true)),
            ],
        );
        let d = state.decode("spBv1.0/g/NDATA/edge1", &p, NOW).unwrap();
        let values: Vec<f64> = d.readings.iter().map(|r| r.value).collect();
        assert_eq!(values, vec![-1.0, -1.0, -1.0, 4e9, 1.0]);
        assert_eq!(d.readings[0].device, "edge1");
    }

    #[test]
    fn an_nbirth_resets_the_nodes_aliases() {
        let mut state = SparkplugState::default();
        state
            .decode(
                "spBv1.0/g/NBIRTH/n",
                &payload(1, &[metric(Some("a"), Some(1), 10, ValueOut::Double(1.0))]),
                NOW,
            )
            .unwrap();
        state
            .decode(
                "spBv1.0/g/NBIRTH/n",
                &payload(2, &[metric(Some("b"), Some(2), 10, ValueOut::Double(1.0))]),
                NOW,
            )
            .unwrap();
        let data = payload(3, &[metric(None, Some(1), 10, ValueOut::Double(5.0))]);
        assert_eq!(
            state.decode("spBv1.0/g/NDATA/n", &data, NOW),
            Err(Rejection::NoNumericValue)
        );
    }

    #[test]
    fn wrong_topics_and_truncated_payloads_are_rejected() {
        let mut state = SparkplugState::default();
        let good = payload(1, &[metric(Some("x"), None, 10, ValueOut::Double(1.0))]);
        assert_eq!(
            state.decode("spBv1.0/g/DDATA/n", &good, NOW),
            Err(Rejection::TopicMismatch)
        );
        assert_eq!(
            state.decode("spAv1.0/g/NDATA/n", &good, NOW),
            Err(Rejection::TopicMismatch)
        );
        for cut in 1..good.len() {
            assert!(
                state
                    .decode("spBv1.0/g/NDATA/n", &good[..cut], NOW)
                    .is_err(),
                "cut {cut}"
            );
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut state = SparkplugState::default();
            let _ = state.decode("spBv1.0/g/DBIRTH/n/d", &payload, NOW);
            let _ = state.decode("spBv1.0/g/DDATA/n/d", &payload, NOW);
        }
    }
}
