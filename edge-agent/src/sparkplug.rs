//! Sparkplug B (Eclipse Tahu payload, protobuf) over
//! `spBv1.0/<group>/<NBIRTH|NDATA|DBIRTH|DDATA|...>/<edge-node>[/<device>]`.
//!
//! Birth certificates (NBIRTH, DBIRTH) name every metric and may give it a
//! numeric alias; later DATA messages may carry only the alias. Aliases are
//! scoped to the edge node (a node's devices share its alias space), and an
//! NBIRTH starts the node's session afresh.
//!
//! The agent plays the primary host's part of the session (Sparkplug B 3.0):
//! - a DATA metric whose alias was never born (the agent started after the
//!   node's birth, or missed it) cannot be named: it is counted, and the
//!   agent asks the node for a rebirth (NCMD `Node Control/Rebirth`, at most
//!   every [`REBIRTH_INTERVAL`] per node); the node's next birth names it;
//! - every message after a birth carries `seq` (0..=255, wrapping); a gap
//!   means messages were lost, and the agent asks for a rebirth too;
//! - an NDEATH (the node's will) ends the session only when its `bdSeq`
//!   matches the birth's: the will of an older session arriving late is
//!   ignored. DDEATH and the node's commands carry no readings.
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
use std::time::{Duration, Instant};

use schemas::reading::TimestampMicros;

use crate::decode::{Decoded, Rejection, make_reading};

/// The primary host's side of the Sparkplug session state, per
/// `(group, edge node)`: alias tables from birth certificates, the birth's
/// `bdSeq`, the expected `seq`, and rebirth requests to send.
#[derive(Debug, Default)]
pub struct SparkplugState {
    nodes: HashMap<(String, String), NodeSession>,
    /// NCMD messages to publish (topic, payload): rebirth requests.
    commands: Vec<(String, Vec<u8>)>,
    /// Rebirths requested so far.
    rebirths_requested: u64,
}

#[derive(Debug, Default)]
struct NodeSession {
    /// Alias -> metric name, learned from NBIRTH and DBIRTH.
    aliases: HashMap<u64, String>,
    /// Whether an NBIRTH of the current session was seen (and no valid
    /// NDEATH since).
    born: bool,
    /// The session's `bdSeq` (from the NBIRTH): an NDEATH naming another is
    /// the will of an older session, and is ignored.
    bd_seq: Option<u64>,
    /// The `seq` the next message must carry (0..=255, wrapping).
    next_seq: Option<u64>,
    last_rebirth_request: Option<Instant>,
}

/// A node is asked for a rebirth at most this often.
pub const REBIRTH_INTERVAL: Duration = Duration::from_secs(5);
/// Sparkplug's name of the rebirth command metric.
pub const REBIRTH_METRIC: &str = "Node Control/Rebirth";
/// Sparkplug's name of the birth/death sequence metric.
pub const BD_SEQ_METRIC: &str = "bdSeq";
/// Nodes tracked at most; messages of further nodes are still decoded by
/// name, but their aliases and sequence are not kept.
const MAX_NODES: usize = 10_000;

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
    pub const BOOLEAN: u32 = 11;
    pub const DATETIME: u32 = 13;
}

/// A decoded Sparkplug payload: timestamp, sequence number, metrics.
struct Payload {
    timestamp_ms: Option<u64>,
    seq: Option<u64>,
    metrics: Vec<Metric>,
}

impl SparkplugState {
    /// Decodes one Sparkplug message received at `received_us`. Control
    /// messages (deaths, commands, host state) carry no readings: they
    /// update the session and decode to nothing.
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
            ("DBIRTH" | "DDATA" | "DDEATH", Some(d)) => format!("{node}/{d}"),
            ("NBIRTH" | "NDATA" | "NDEATH", None) => node.to_owned(),
            // Commands (ours included) and host state carry no readings.
            ("NCMD" | "DCMD", _) | ("STATE", _) => return Ok(Decoded::default()),
            _ => return Err(Rejection::TopicMismatch),
        };
        let parsed = parse_payload(payload).map_err(|_| Rejection::InvalidPayload)?;
        let key = (group.to_owned(), node.to_owned());
        if !self.nodes.contains_key(&key) && self.nodes.len() >= MAX_NODES {
            // Past the node limit: named metrics only, no session state.
            return readings(&device, &parsed, &HashMap::new(), received_us, false);
        }
        let now = Instant::now();
        let session = self.nodes.entry(key.clone()).or_default();
        let mut rebirth = false;
        match kind {
            "NBIRTH" => {
                // A new session: aliases, bdSeq and seq start afresh.
                *session = NodeSession {
                    last_rebirth_request: session.last_rebirth_request,
                    born: true,
                    bd_seq: bd_seq(&parsed.metrics),
                    next_seq: parsed.seq.map(|s| (s + 1) % 256),
                    ..NodeSession::default()
                };
            }
            "NDEATH" => {
                // The will of this session ends it; one of an older
                // session (another bdSeq) is stale and ignored.
                let dead = bd_seq(&parsed.metrics);
                if session.born && (dead.is_none() || dead == session.bd_seq) {
                    session.born = false;
                    session.aliases.clear();
                    session.next_seq = None;
                }
                return Ok(Decoded::default());
            }
            _ => {
                // DBIRTH, DDEATH and data continue the node's sequence; a
                // gap means messages were lost, and data from a node whose
                // birth we never saw cannot be named: ask for a rebirth.
                match (session.born, parsed.seq, session.next_seq) {
                    (false, _, _) => rebirth = true,
                    (true, Some(seq), Some(expected)) if seq != expected => rebirth = true,
                    _ => {}
                }
                if let Some(seq) = parsed.seq {
                    session.next_seq = Some((seq + 1) % 256);
                }
            }
        }
        if kind == "DDEATH" {
            self.request_rebirth_if(rebirth, group, node, now);
            return Ok(Decoded::default());
        }
        let session = self.nodes.get_mut(&key).expect("inserted above");
        if kind.ends_with("BIRTH") {
            for m in &parsed.metrics {
                if let (Some(alias), Some(name)) = (m.alias, &m.name) {
                    session.aliases.insert(alias, name.clone());
                }
            }
        }
        let decoded = readings(
            &device,
            &parsed,
            &session.aliases,
            received_us,
            kind.ends_with("BIRTH"),
        );
        let unknown_alias = parsed.metrics.iter().any(|m| {
            m.name.is_none() && m.alias.is_some_and(|a| !session.aliases.contains_key(&a))
        });
        self.request_rebirth_if(rebirth || unknown_alias, group, node, now);
        decoded
    }

    /// Queues a rebirth request (NCMD `Node Control/Rebirth`) for the node,
    /// at most once per [`REBIRTH_INTERVAL`].
    fn request_rebirth_if(&mut self, wanted: bool, group: &str, node: &str, now: Instant) {
        if !wanted {
            return;
        }
        let Some(session) = self.nodes.get_mut(&(group.to_owned(), node.to_owned())) else {
            return;
        };
        if session
            .last_rebirth_request
            .is_some_and(|at| now.duration_since(at) < REBIRTH_INTERVAL)
        {
            return;
        }
        session.last_rebirth_request = Some(now);
        self.rebirths_requested += 1;
        tracing::info!(group, node, "asking a Sparkplug node for a rebirth");
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.commands.push((
            format!("spBv1.0/{group}/NCMD/{node}"),
            encode::rebirth_command(ms),
        ));
    }

    /// Commands to publish (QoS 0, not retained), oldest first.
    pub fn take_commands(&mut self) -> Vec<(String, Vec<u8>)> {
        std::mem::take(&mut self.commands)
    }

    /// Rebirths requested so far.
    pub fn rebirths_requested(&self) -> u64 {
        self.rebirths_requested
    }
}

/// The `bdSeq` metric of a birth or death certificate.
fn bd_seq(metrics: &[Metric]) -> Option<u64> {
    metrics
        .iter()
        .find(|m| m.name.as_deref() == Some(BD_SEQ_METRIC))
        .and_then(|m| match m.value {
            Some(Value::Long(v)) => Some(v),
            Some(Value::Int(v)) => Some(u64::from(v)),
            _ => None,
        })
}

/// The readings of a birth or data payload; a metric named only by an
/// alias nobody announced is skipped and counted. `bdSeq` in a birth is
/// session bookkeeping, not a reading.
fn readings(
    device: &str,
    payload: &Payload,
    aliases: &HashMap<u64, String>,
    received_us: TimestampMicros,
    is_birth: bool,
) -> Result<Decoded, Rejection> {
    let mut out = Decoded::default();
    for m in &payload.metrics {
        let name = match (&m.name, m.alias) {
            (Some(n), _) => n.clone(),
            (None, Some(a)) => match aliases.get(&a) {
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
        if is_birth && name == BD_SEQ_METRIC {
            continue;
        }
        let Some(value) = (!m.is_null).then(|| numeric(m)).flatten() else {
            out.skipped_fields += 1;
            continue;
        };
        let ts_us = match m.timestamp_ms.or(payload.timestamp_ms) {
            Some(ms) if ms < 9_000_000_000_000 => ms as i64 * 1000,
            Some(_) => return Err(Rejection::BadTimestamp),
            None => received_us,
        };
        out.readings
            .push(make_reading(device, &name, ts_us, value)?);
    }
    // A birth may hold nothing to read (only bdSeq); data must.
    if out.readings.is_empty() && !is_birth {
        return Err(Rejection::NoNumericValue);
    }
    Ok(out)
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

fn parse_payload(buf: &[u8]) -> Result<Payload, WireError> {
    let mut w = Wire::new(buf);
    let mut p = Payload {
        timestamp_ms: None,
        seq: None,
        metrics: Vec::new(),
    };
    while !w.done() {
        match w.key()? {
            (1, 0) => p.timestamp_ms = Some(w.varint()?),
            (2, 2) => p.metrics.push(parse_metric(w.len_delimited()?)?),
            (3, 0) => p.seq = Some(w.varint()?),
            (_, wt) => w.skip(wt)?,
        }
    }
    Ok(p)
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

    /// The rebirth request a primary host sends in an NCMD.
    pub fn rebirth_command(timestamp_ms: u64) -> Vec<u8> {
        payload(
            timestamp_ms,
            &[MetricOut {
                name: Some(super::REBIRTH_METRIC),
                alias: None,
                datatype: super::datatype::BOOLEAN,
                value: ValueOut::Bool(true),
                timestamp_ms: Some(timestamp_ms),
            }],
        )
    }

    pub fn payload(timestamp_ms: u64, metrics: &[MetricOut<'_>]) -> Vec<u8> {
        payload_with_seq(timestamp_ms, None, metrics)
    }

    /// A payload with its sequence number (`seq`, 0..=255).
    pub fn payload_with_seq(
        timestamp_ms: u64,
        seq: Option<u64>,
        metrics: &[MetricOut<'_>],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        key(&mut out, 1, 0);
        varint(&mut out, timestamp_ms);
        if let Some(seq) = seq {
            key(&mut out, 3, 0);
            varint(&mut out, seq);
        }
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
mod tests;
