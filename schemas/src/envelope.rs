//! The batch envelope: the unit an edge agent sends and a hub acknowledges.
//!
//! # Wire layout (all integers little-endian)
//!
//! ```text
//! offset size  field
//!      0    4  magic  b"IOTB"
//!      4    2  envelope version (this crate writes CURRENT_VERSION)
//!      6    2  header length H
//!      8    4  payload length P
//!     12    4  CRC32C of header || payload
//!     16    H  header (layout depends on the version, see below)
//!   16+H    P  payload: an Arrow IPC *stream* holding exactly one record
//!              batch with the reading columns, buffers zstd-compressed
//! ```
//!
//! Version 1 header: `gateway_len: u8`, `gateway: [u8; gateway_len]` (UTF-8,
//! 1..=128 bytes), `incarnation: u64`, `seq: u64`, `row_count: u32`,
//! `first_event_us: i64`, `last_event_us: i64`. Sequence numbers start at 1. A later version may append
//! header fields; a hub keeps decoding every version it ever knew, so a newer
//! hub reads an older edge's batches (see `decode_header`).
//!
//! # Identity
//!
//! `(gateway, incarnation, seq)` names a batch. The incarnation changes
//! whenever the gateway loses the state that makes its sequence numbers
//! unique (a new boot without a durable spool), so a restarted gateway is
//! never mistaken for its earlier self. Retries resend identical bytes.
//!
//! # Untrusted input
//!
//! [`decode`] is written for bytes from the network: every length is checked
//! before it is used, the checksum is verified before Arrow sees a byte, the
//! Arrow stream is pre-walked so that the declared (decompressed) buffer
//! sizes stay within [`DecodeLimits::decoded_limit`], absolute and relative
//! to the bytes received (a zstd bomb cannot make the hub allocate), and the
//! Arrow decoder itself runs under `catch_unwind` as a last line of defence. Every failure is a [`DecodeError`], never a panic.

use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};

use arrow_array::RecordBatch;
use arrow_ipc::CompressionType;
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::{IpcWriteOptions, StreamWriter};

use crate::reading::TimestampMicros;
use crate::tables::{ColumnError, ReadingView};

pub const MAGIC: [u8; 4] = *b"IOTB";
/// Version written by this build. Decoding accepts `1..=CURRENT_VERSION`.
pub const CURRENT_VERSION: u16 = 1;
pub const PREAMBLE_LEN: usize = 16;
pub const MAX_GATEWAY_LEN: usize = 128;
/// Longest device or metric name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// Identity and summary of a batch, carried in the envelope header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchHeader {
    pub gateway: String,
    pub incarnation: u64,
    pub seq: u64,
    pub row_count: u32,
    pub first_event_us: TimestampMicros,
    pub last_event_us: TimestampMicros,
}

impl BatchHeader {
    /// The dedup key of the batch.
    pub fn key(&self) -> BatchKey {
        BatchKey {
            gateway: self.gateway.clone(),
            incarnation: self.incarnation,
            seq: self.seq,
        }
    }
}

/// `(gateway, incarnation, seq)`: what makes a batch unique.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BatchKey {
    pub gateway: String,
    pub incarnation: u64,
    pub seq: u64,
}

/// Bounds applied while decoding untrusted input.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Largest envelope accepted, in bytes.
    pub max_envelope_bytes: usize,
    /// Largest number of rows in one batch.
    pub max_rows: u32,
    /// Upper bound of the sum of all Arrow buffer sizes after decompression.
    pub max_decoded_bytes: u64,
    /// ...and relative to the payload's size on the wire: at most this many
    /// times the payload, plus [`EXPANSION_SLACK`]. Real readings expand
    /// tens of times at most (even flat-lining sensors: their timestamps
    /// differ); a compression bomb expands thousands of times.
    pub max_expansion: u64,
}

/// Decoded bytes always allowed on top of [`DecodeLimits::max_expansion`].
pub const EXPANSION_SLACK: u64 = 4 * 1024 * 1024;

impl DecodeLimits {
    /// The decoded-size limit for a payload of `wire` bytes.
    pub fn decoded_limit(&self, wire: usize) -> u64 {
        (wire as u64)
            .saturating_mul(self.max_expansion)
            .saturating_add(EXPANSION_SLACK)
            .min(self.max_decoded_bytes)
    }
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_envelope_bytes: 16 * 1024 * 1024,
            max_rows: 1_000_000,
            max_decoded_bytes: 512 * 1024 * 1024,
            max_expansion: 1024,
        }
    }
}

/// A verified batch: header plus the readings batch it announced.
#[derive(Debug, Clone)]
pub struct DecodedBatch {
    pub header: BatchHeader,
    pub version: u16,
    /// Has at least the reading columns (see [`crate::tables::reading_schema`]);
    /// newer optional columns are passed through.
    pub readings: RecordBatch,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("envelope is truncated: needs {needed} bytes, has {available}")]
    Truncated { needed: usize, available: usize },
    #[error("not an envelope (bad magic)")]
    BadMagic,
    #[error("envelope version {0} is not supported (this hub reads 1..={CURRENT_VERSION})")]
    UnsupportedVersion(u16),
    #[error("envelope of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("envelope length {actual} does not match its declared length {declared}")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("checksum mismatch: envelope is corrupt")]
    Checksum,
    #[error("malformed header: {0}")]
    Header(&'static str),
    #[error("malformed Arrow payload: {0}")]
    Payload(String),
    #[error("payload would decode to more than {limit} bytes")]
    DecodedTooLarge { limit: u64 },
    #[error("batch has {rows} rows, limit is {limit}")]
    TooManyRows { rows: u64, limit: u32 },
    #[error("payload does not carry readings: {0}")]
    Columns(#[from] ColumnError),
    #[error("header says {declared} rows, payload has {actual}")]
    RowCountMismatch { declared: u32, actual: usize },
    #[error("header event-time range does not match the payload")]
    TimeRangeMismatch,
    #[error("a device or metric name is empty or longer than {MAX_NAME_LEN} bytes")]
    BadName,
    #[error("empty batch")]
    Empty,
}

/// Broad class of a decode failure, for callers that map it to a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeErrorClass {
    /// The bytes are not a well-formed envelope.
    Malformed,
    /// A size or count limit was exceeded.
    TooLarge,
    /// Well-formed, but the content is inconsistent or not readings.
    InvalidContent,
}

impl DecodeError {
    pub fn class(&self) -> DecodeErrorClass {
        use DecodeError::*;
        match self {
            TooLarge { .. } | DecodedTooLarge { .. } | TooManyRows { .. } => {
                DecodeErrorClass::TooLarge
            }
            Columns(_) | RowCountMismatch { .. } | TimeRangeMismatch | BadName | Empty => {
                DecodeErrorClass::InvalidContent
            }
            Truncated { .. }
            | BadMagic
            | UnsupportedVersion(_)
            | LengthMismatch { .. }
            | Checksum
            | Header(_)
            | Payload(_) => DecodeErrorClass::Malformed,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("gateway id must be 1..={MAX_GATEWAY_LEN} bytes")]
    BadGateway,
    #[error("batch is empty")]
    Empty,
    #[error("sequence numbers start at 1")]
    ZeroSeq,
    #[error("batch has too many rows for one envelope")]
    TooManyRows,
    #[error("batch does not have the reading columns: {0}")]
    Columns(#[from] ColumnError),
    #[error("encoded envelope is larger than 4 GiB")]
    TooLarge,
    #[error("Arrow IPC encoding failed")]
    Arrow(#[source] arrow_schema::ArrowError),
}

/// How the Arrow IPC payload is compressed. zstd, except on 32-bit targets
/// (armv7 gateways): arrow-ipc 59 writes a compressed buffer's 8-byte
/// length prefix from a `usize`, so 4 bytes there, and every reader then
/// misreads the payload (apache/arrow-rs#10986, fixed after the 59 line
/// this workspace is pinned to; the armv7 test under qemu in `.ci/run`
/// caught it as batches the hub rejected). Uncompressed IPC is valid IPC:
/// the hub and every reader take it, at a larger uplink and spool cost.
/// Back to zstd everywhere once the workspace moves to arrow 60.
pub const PAYLOAD_COMPRESSION: Option<CompressionType> = if cfg!(target_pointer_width = "64") {
    Some(CompressionType::ZSTD)
} else {
    None
};

/// Encodes `readings` (schema [`crate::tables::reading_schema`]) as an
/// envelope. Row count and event-time range in the header are derived from
/// the batch itself, so they cannot disagree with it.
pub fn encode(
    gateway: &str,
    incarnation: u64,
    seq: u64,
    readings: &RecordBatch,
) -> Result<(BatchHeader, Vec<u8>), EncodeError> {
    if gateway.is_empty() || gateway.len() > MAX_GATEWAY_LEN {
        return Err(EncodeError::BadGateway);
    }
    if seq == 0 {
        return Err(EncodeError::ZeroSeq);
    }
    if readings.num_rows() == 0 {
        return Err(EncodeError::Empty);
    }
    let row_count = u32::try_from(readings.num_rows()).map_err(|_| EncodeError::TooManyRows)?;
    let view = ReadingView::try_new(readings)?;
    let (first_event_us, last_event_us) = min_max(view.ts.values());
    let header = BatchHeader {
        gateway: gateway.to_owned(),
        incarnation,
        seq,
        row_count,
        first_event_us,
        last_event_us,
    };

    let mut payload = Vec::with_capacity(readings.get_array_memory_size() / 4 + 256);
    let options = IpcWriteOptions::default()
        .try_with_compression(PAYLOAD_COMPRESSION)
        .map_err(EncodeError::Arrow)?;
    let mut writer = StreamWriter::try_new_with_options(&mut payload, &readings.schema(), options)
        .map_err(EncodeError::Arrow)?;
    writer.write(readings).map_err(EncodeError::Arrow)?;
    writer.finish().map_err(EncodeError::Arrow)?;
    drop(writer);

    let mut head = Vec::with_capacity(1 + gateway.len() + 36);
    head.push(gateway.len() as u8);
    head.extend_from_slice(gateway.as_bytes());
    head.extend_from_slice(&incarnation.to_le_bytes());
    head.extend_from_slice(&seq.to_le_bytes());
    head.extend_from_slice(&row_count.to_le_bytes());
    head.extend_from_slice(&first_event_us.to_le_bytes());
    head.extend_from_slice(&last_event_us.to_le_bytes());

    let payload_len = u32::try_from(payload.len()).map_err(|_| EncodeError::TooLarge)?;
    let mut crc = crc32c::crc32c(&head);
    crc = crc32c::crc32c_append(crc, &payload);

    let mut out = Vec::with_capacity(PREAMBLE_LEN + head.len() + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&CURRENT_VERSION.to_le_bytes());
    out.extend_from_slice(&(head.len() as u16).to_le_bytes());
    out.extend_from_slice(&payload_len.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(&payload);
    Ok((header, out))
}

/// Reads only the preamble and header: cheap, for routing and dedup before
/// the payload is decoded. Verifies the checksum.
pub fn peek_header(bytes: &[u8], limits: &DecodeLimits) -> Result<(u16, BatchHeader), DecodeError> {
    let (version, header, _payload) = split(bytes, limits)?;
    Ok((version, header))
}

/// The checksum field of an envelope's preamble (CRC32C of header and
/// payload), unverified: what a hub's answer names a batch's content by.
pub fn content_crc(bytes: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(12..16)?.try_into().ok()?))
}

/// Whether `bytes` are exactly one envelope whose checksum holds (nothing
/// else is checked: for logs that store envelopes and want to know whether
/// one survived intact).
pub fn checksum_ok(bytes: &[u8]) -> bool {
    split(
        bytes,
        &DecodeLimits {
            max_envelope_bytes: usize::MAX,
            ..DecodeLimits::default()
        },
    )
    .is_ok()
}

/// Reads the identity of an envelope whose bytes may be damaged, without
/// verifying its checksum: only for naming what was lost (the header may be
/// the damaged part, so the answer is a best guess, never a decision).
/// Returns the header and the envelope's declared length.
pub fn salvage_header(bytes: &[u8]) -> Option<(BatchHeader, usize)> {
    let mut r = ByteReader::new(bytes);
    if r.take(4).ok()? != MAGIC {
        return None;
    }
    let version = r.u16().ok()?;
    if version == 0 || version > CURRENT_VERSION {
        return None;
    }
    let header_len = r.u16().ok()? as usize;
    let payload_len = r.u32().ok()? as usize;
    let head = bytes.get(PREAMBLE_LEN..PREAMBLE_LEN + header_len)?;
    let header = decode_header(version, head).ok()?;
    Some((header, PREAMBLE_LEN + header_len + payload_len))
}

/// Fully decodes and verifies an envelope from untrusted bytes.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<DecodedBatch, DecodeError> {
    let (version, header, payload) = split(bytes, limits)?;
    if header.row_count == 0 {
        return Err(DecodeError::Empty);
    }
    if header.row_count > limits.max_rows {
        return Err(DecodeError::TooManyRows {
            rows: header.row_count.into(),
            limit: limits.max_rows,
        });
    }
    precheck_ipc_stream(payload, limits)?;
    let readings = catch_unwind(AssertUnwindSafe(|| read_single_batch(payload)))
        .map_err(|_| DecodeError::Payload("Arrow decoder panicked".into()))??;

    if readings.num_rows() != header.row_count as usize {
        return Err(DecodeError::RowCountMismatch {
            declared: header.row_count,
            actual: readings.num_rows(),
        });
    }
    let view = ReadingView::try_new(&readings)?;
    if min_max(view.ts.values()) != (header.first_event_us, header.last_event_us) {
        return Err(DecodeError::TimeRangeMismatch);
    }
    for names in [view.device, view.metric] {
        if names
            .iter()
            .flatten()
            .any(|n| n.is_empty() || n.len() > MAX_NAME_LEN)
        {
            return Err(DecodeError::BadName);
        }
    }
    Ok(DecodedBatch {
        header,
        version,
        readings,
    })
}

fn min_max(values: &[i64]) -> (i64, i64) {
    values
        .iter()
        .fold((i64::MAX, i64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

/// Checks the preamble, lengths and checksum; returns version, header and
/// the raw payload.
fn split<'a>(
    bytes: &'a [u8],
    limits: &DecodeLimits,
) -> Result<(u16, BatchHeader, &'a [u8]), DecodeError> {
    if bytes.len() > limits.max_envelope_bytes {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            limit: limits.max_envelope_bytes,
        });
    }
    let mut r = ByteReader::new(bytes);
    let magic = r.take(4)?;
    if magic != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let version = r.u16()?;
    if version == 0 || version > CURRENT_VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let header_len = r.u16()? as usize;
    let payload_len = r.u32()? as usize;
    let crc = r.u32()?;
    let declared = PREAMBLE_LEN + header_len + payload_len;
    if declared != bytes.len() {
        return Err(DecodeError::LengthMismatch {
            declared,
            actual: bytes.len(),
        });
    }
    let body = &bytes[PREAMBLE_LEN..];
    if crc32c::crc32c(body) != crc {
        return Err(DecodeError::Checksum);
    }
    let (head, payload) = body.split_at(header_len);
    let header = decode_header(version, head)?;
    Ok((version, header, payload))
}

/// Header layouts by version. Add an arm per new version; never change an
/// existing one.
fn decode_header(version: u16, head: &[u8]) -> Result<BatchHeader, DecodeError> {
    match version {
        1 => {
            let mut r = ByteReader::new(head);
            let gateway_len = r.u8().map_err(|_| DecodeError::Header("missing gateway"))? as usize;
            if gateway_len == 0 || gateway_len > MAX_GATEWAY_LEN {
                return Err(DecodeError::Header("gateway id length out of range"));
            }
            let gateway = r
                .take(gateway_len)
                .map_err(|_| DecodeError::Header("gateway id truncated"))?;
            let gateway = std::str::from_utf8(gateway)
                .map_err(|_| DecodeError::Header("gateway id is not UTF-8"))?
                .to_owned();
            let truncated = |_| DecodeError::Header("header truncated");
            let header = BatchHeader {
                gateway,
                incarnation: r.u64().map_err(truncated)?,
                seq: r.u64().map_err(truncated)?,
                row_count: r.u32().map_err(truncated)?,
                first_event_us: r.u64().map_err(truncated)? as i64,
                last_event_us: r.u64().map_err(truncated)? as i64,
            };
            if !r.is_empty() {
                return Err(DecodeError::Header(
                    "trailing bytes after a version 1 header",
                ));
            }
            if header.seq == 0 {
                return Err(DecodeError::Header("sequence numbers start at 1"));
            }
            if header.first_event_us > header.last_event_us {
                return Err(DecodeError::Header(
                    "first event time is after last event time",
                ));
            }
            Ok(header)
        }
        other => Err(DecodeError::UnsupportedVersion(other)),
    }
}

fn read_single_batch(payload: &[u8]) -> Result<RecordBatch, DecodeError> {
    let arrow_err = |e: arrow_schema::ArrowError| DecodeError::Payload(e.to_string());
    let mut reader = StreamReader::try_new(Cursor::new(payload), None).map_err(arrow_err)?;
    let batch = reader
        .next()
        .ok_or(DecodeError::Payload("stream holds no record batch".into()))?
        .map_err(arrow_err)?;
    if reader.next().is_some() {
        return Err(DecodeError::Payload(
            "stream holds more than one record batch".into(),
        ));
    }
    Ok(batch)
}

/// Walks the IPC stream's messages without decoding data: verifies every
/// flatbuffer, checks that buffers lie inside their message body, and adds up
/// the declared decompressed sizes against the limit, so the Arrow decoder is
/// never asked to allocate an attacker-chosen amount of memory.
fn precheck_ipc_stream(payload: &[u8], limits: &DecodeLimits) -> Result<(), DecodeError> {
    use arrow_ipc::MessageHeader;
    let bad = |msg: &str| DecodeError::Payload(msg.to_owned());
    let mut r = ByteReader::new(payload);
    let mut decoded: u64 = 0;
    let decoded_limit = limits.decoded_limit(payload.len());
    let mut batches = 0usize;
    let mut saw_schema = false;
    let mut layouts: Vec<Layout> = Vec::new();
    loop {
        let mut meta_len = r
            .u32()
            .map_err(|_| bad("stream ends without an end marker"))?;
        if meta_len == 0xFFFF_FFFF {
            meta_len = r
                .u32()
                .map_err(|_| bad("stream ends after a continuation marker"))?;
        }
        if meta_len == 0 {
            break; // end-of-stream marker
        }
        let meta = r
            .take(meta_len as usize)
            .map_err(|_| bad("message metadata truncated"))?;
        let message = arrow_ipc::root_as_message(meta)
            .map_err(|e| DecodeError::Payload(format!("invalid message flatbuffer: {e}")))?;
        let body_len =
            usize::try_from(message.bodyLength()).map_err(|_| bad("negative body length"))?;
        let body = r
            .take(body_len)
            .map_err(|_| bad("message body truncated"))?;
        match message.header_type() {
            MessageHeader::Schema => {
                if saw_schema {
                    return Err(bad("stream holds a second schema"));
                }
                saw_schema = true;
                let schema = message
                    .header_as_schema()
                    .ok_or_else(|| bad("schema header missing"))?;
                // arrow-ipc unwraps these vectors (found by fuzzing).
                let fields = schema
                    .fields()
                    .ok_or_else(|| bad("schema has no field list"))?;
                for field in fields {
                    layouts.push(check_field(field)?);
                }
            }
            MessageHeader::RecordBatch => {
                if !saw_schema {
                    return Err(bad("record batch before schema"));
                }
                batches += 1;
                if batches > 1 {
                    return Err(bad("stream holds more than one record batch"));
                }
                let batch = message
                    .header_as_record_batch()
                    .ok_or_else(|| bad("record batch header missing"))?;
                if batch.length() < 0 || batch.length() as u64 > u64::from(limits.max_rows) {
                    return Err(DecodeError::TooManyRows {
                        rows: batch.length().max(0) as u64,
                        limit: limits.max_rows,
                    });
                }
                // Variadic buffers belong to view types, which no accepted
                // column has (arrow-ipc asserts on them; found by fuzzing).
                if batch.variadicBufferCounts().is_some_and(|v| !v.is_empty()) {
                    return Err(bad("record batch declares variadic buffers"));
                }
                if batch.nodes().is_none() || batch.buffers().is_none() {
                    return Err(bad("record batch has no node or buffer list"));
                }
                let compressed = batch.compression().is_some();
                let mut sizes = Vec::new();
                for buffer in batch.buffers().into_iter().flatten() {
                    let (offset, length) = (buffer.offset(), buffer.length());
                    if offset < 0 || length < 0 {
                        return Err(bad("negative buffer offset or length"));
                    }
                    let (offset, length) = (offset as u64, length as u64);
                    // The IPC format pads buffers to 8 bytes; arrow-buffer
                    // asserts on misaligned typed data (found by fuzzing).
                    if !offset.is_multiple_of(8) {
                        return Err(bad("buffer is not 8-byte aligned"));
                    }
                    if offset
                        .checked_add(length)
                        .is_none_or(|end| end > body.len() as u64)
                    {
                        return Err(bad("buffer lies outside the message body"));
                    }
                    let size = if compressed && length >= 8 {
                        let at = offset as usize;
                        let prefix: [u8; 8] = body[at..at + 8].try_into().expect("8 bytes");
                        match i64::from_le_bytes(prefix) {
                            -1 => length - 8,
                            n if n < 0 => return Err(bad("negative decompressed length")),
                            n => n as u64,
                        }
                    } else {
                        length
                    };
                    decoded = decoded.saturating_add(size);
                    if decoded > decoded_limit {
                        return Err(DecodeError::DecodedTooLarge {
                            limit: decoded_limit,
                        });
                    }
                    sizes.push(size);
                }
                let nodes: Vec<(i64, i64)> = batch
                    .nodes()
                    .into_iter()
                    .flatten()
                    .map(|n| (n.length(), n.null_count()))
                    .collect();
                if nodes.iter().any(|&(length, _)| length != batch.length()) {
                    return Err(bad("a column's length differs from the batch's"));
                }
                check_buffer_sizes(&layouts, &nodes, &sizes)?;
            }
            _ => {
                return Err(bad(
                    "unexpected message type (only schema and record batch)",
                ));
            }
        }
    }
    if batches == 0 {
        return Err(bad("stream holds no record batch"));
    }
    Ok(())
}

/// Accepts only the flat scalar column types readings use (and may add as
/// optional columns), with valid parameters. arrow-ipc's schema conversion
/// panics on unknown type tags or parameters; this keeps such schemas from
/// ever reaching it (found by the `envelope_decode_resealed` fuzz target).
fn check_field(field: arrow_ipc::Field<'_>) -> Result<Layout, DecodeError> {
    use arrow_ipc::{Precision, TimeUnit, Type};
    let bad = |msg: &str| Err(DecodeError::Payload(msg.to_owned()));
    if field.dictionary().is_some() {
        return bad("dictionary-encoded columns are not accepted");
    }
    if field.children().is_some_and(|c| !c.is_empty()) {
        return bad("nested columns are not accepted");
    }
    let layout = match field.type_type() {
        Type::Utf8 | Type::Binary => Some(Layout::Offsets(4)),
        Type::LargeUtf8 => Some(Layout::Offsets(8)),
        Type::Bool => Some(Layout::Bits),
        Type::Int => field.type_as_int().and_then(|i| {
            matches!(i.bitWidth(), 8 | 16 | 32 | 64).then(|| Layout::Fixed(i.bitWidth() as u64 / 8))
        }),
        Type::FloatingPoint => field
            .type_as_floating_point()
            .and_then(|f| match f.precision() {
                Precision::HALF => Some(Layout::Fixed(2)),
                Precision::SINGLE => Some(Layout::Fixed(4)),
                Precision::DOUBLE => Some(Layout::Fixed(8)),
                _ => None,
            }),
        Type::Timestamp => field
            .type_as_timestamp()
            .filter(|t| {
                matches!(
                    t.unit(),
                    TimeUnit::SECOND
                        | TimeUnit::MILLISECOND
                        | TimeUnit::MICROSECOND
                        | TimeUnit::NANOSECOND
                )
            })
            .map(|_| Layout::Fixed(8)),
        _ => None,
    };
    match layout {
        Some(l) => Ok(l),
        None => bad("column type is not accepted in a readings batch"),
    }
}

/// How a flat column's buffers are laid out after its validity bitmap.
#[derive(Debug, Clone, Copy)]
enum Layout {
    /// One values buffer of this many bytes per row.
    Fixed(u64),
    /// One bit-packed values buffer.
    Bits,
    /// An offsets buffer of `(rows + 1)` offsets of this width, then data.
    Offsets(u64),
}

impl Layout {
    fn buffers(self) -> usize {
        match self {
            Layout::Fixed(_) | Layout::Bits => 2,
            Layout::Offsets(_) => 3,
        }
    }
}

/// Checks each column's (decompressed) buffer sizes against its row count:
/// arrow-data asserts on a short validity bitmap instead of returning an
/// error (found by fuzzing).
fn check_buffer_sizes(
    layouts: &[Layout],
    rows: &[(i64, i64)],
    sizes: &[u64],
) -> Result<(), DecodeError> {
    let bad = |msg: &str| Err(DecodeError::Payload(msg.to_owned()));
    if rows.len() != layouts.len() {
        return bad("record batch does not have one node per column");
    }
    if sizes.len() != layouts.iter().map(|l| l.buffers()).sum::<usize>() {
        return bad("record batch has the wrong number of buffers for its columns");
    }
    let mut at = 0;
    for (layout, &(length, null_count)) in layouts.iter().zip(rows) {
        if length < 0 || null_count < 0 || null_count > length {
            return bad("invalid column length or null count");
        }
        let (n, bitmap) = (length as u64, (length as u64).div_ceil(8));
        let validity = sizes[at];
        if (validity == 0 && null_count > 0) || (validity != 0 && validity < bitmap) {
            return bad("validity bitmap is shorter than the column");
        }
        // Typed buffers must also be whole multiples of their element width
        // (arrow-buffer asserts otherwise; found by fuzzing).
        let values = sizes[at + 1];
        let enough = match layout {
            Layout::Fixed(width) => {
                values >= n.saturating_mul(*width) && values.is_multiple_of(*width)
            }
            Layout::Bits => values >= bitmap,
            Layout::Offsets(width) => {
                (n == 0 || values >= (n + 1).saturating_mul(*width))
                    && values.is_multiple_of(*width)
            }
        };
        if !enough {
            return bad("a column's values buffer is shorter than the column");
        }
        at += layout.buffers();
    }
    Ok(())
}

/// Bounds-checked little-endian reader over a byte slice.
struct ByteReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> ByteReader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or(DecodeError::Truncated {
                needed: self.pos.saturating_add(n),
                available: self.bytes.len(),
            })?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        Ok(self.take(N)?.try_into().expect("take returned N bytes"))
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.array().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_le_bytes)
    }
    fn is_empty(&self) -> bool {
        self.pos == self.bytes.len()
    }
}

#[cfg(test)]
mod tests;
