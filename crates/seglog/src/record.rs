//! The record format and the scan that finds valid records in a segment
//! image, resynchronising after damage.
//!
//! A record is `len: u32 | crc: u32 | id: u64 | meta | payload`,
//! little-endian, where `meta` is 0 or 8 bytes (fixed per log) and
//! `crc = crc32c(id || meta || payload)`. Nothing in a record is trusted
//! before its checksum matches; [`decode`] is the one decoder of untrusted
//! record bytes (fuzzed).
//!
//! # Resynchronisation
//! Ids are assigned consecutively, so after a damaged stretch of `d` bytes
//! the next valid record has an id at most `d / header + 1` above the last
//! good one. [`scan`] therefore tries every byte offset after damage, but
//! checksums a candidate only when its length fits the image and its id is in
//! that narrow window: a stray match needs a 32-bit checksum collision on top
//! of a plausible header.

use crate::LogOptions;

/// Bytes before `meta`: length, checksum, id.
pub const BASE_HEADER: usize = 16;

/// Largest id a record may carry: a log never gets near it, and ids above it
/// (from damaged bytes) are refused, so `id + 1` never overflows.
pub const MAX_ID: u64 = u64::MAX >> 1;

/// A valid record found in an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub id: u64,
    /// Offset of the record's first header byte.
    pub offset: u64,
    /// Payload length.
    pub len: u32,
    /// The record's metadata (0 when the log has none).
    pub meta: u64,
}

impl Found {
    /// Bytes the whole record takes.
    pub fn size(&self, meta_len: usize) -> u64 {
        (BASE_HEADER + meta_len) as u64 + u64::from(self.len)
    }
}

/// Why bytes are not a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record is cut short")]
    Truncated,
    #[error("record length {0} exceeds the limit")]
    TooLong(u32),
    #[error("record checksum mismatch")]
    Checksum,
}

/// Checksum of a record: its id and metadata, then its payload.
pub fn checksum(id: u64, meta: &[u8], payload: &[u8]) -> u32 {
    let mut crc = crc32c::crc32c(&id.to_le_bytes());
    crc = crc32c::crc32c_append(crc, meta);
    crc32c::crc32c_append(crc, payload)
}

/// Appends one encoded record to `out`.
pub fn encode(out: &mut Vec<u8>, id: u64, meta: Option<u64>, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("callers bound the payload");
    let meta_bytes = meta.map(u64::to_le_bytes);
    let meta_slice: &[u8] = meta_bytes.as_ref().map_or(&[], |m| m.as_slice());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&checksum(id, meta_slice, payload).to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(meta_slice);
    out.extend_from_slice(payload);
}

/// Decodes the record at the start of `data`: `(id, meta, payload)`.
pub fn decode(
    data: &[u8],
    meta_len: usize,
    max_len: u32,
) -> Result<(u64, u64, &[u8]), RecordError> {
    let header = BASE_HEADER + meta_len;
    let head = data.get(..header).ok_or(RecordError::Truncated)?;
    let len = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
    let id = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
    if len > max_len {
        return Err(RecordError::TooLong(len));
    }
    if id > MAX_ID {
        return Err(RecordError::Checksum);
    }
    let payload = data
        .get(header..header + len as usize)
        .ok_or(RecordError::Truncated)?;
    let meta_bytes = &head[BASE_HEADER..];
    if checksum(id, meta_bytes, payload) != crc {
        return Err(RecordError::Checksum);
    }
    let meta = match meta_bytes.len() {
        8 => u64::from_le_bytes(meta_bytes.try_into().expect("8 bytes")),
        _ => 0,
    };
    Ok((id, meta, payload))
}

/// A stretch of an image that holds no valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub start: u64,
    pub end: u64,
    /// The last valid id before the gap (`None` at the start of the image).
    pub after: Option<u64>,
    /// The first valid id after the gap (`None`: the gap runs to the end).
    pub before: Option<u64>,
}

impl Gap {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// What [`scan`] found in one image.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Scan {
    pub records: Vec<Found>,
    /// Damaged stretches, in order; the last may run to the end of the image.
    pub gaps: Vec<Gap>,
    /// Records whose length or id field was damaged but whose checksum
    /// proves them whole: an image with any must be rewritten.
    pub repaired: usize,
    /// Whole records whose ids came before (copies left by an interrupted
    /// rewrite); skipped.
    pub stale: usize,
}

impl Scan {
    /// Whether the image ends in a gap that looks like an interrupted write
    /// (too short for a record, a record cut short, or zeros) rather than
    /// damage to bytes that were once whole.
    pub fn torn_tail(&self, data: &[u8], opts: &LogOptions) -> bool {
        let Some(tail) = self.gaps.last().filter(|g| g.before.is_none()) else {
            return false;
        };
        let bytes = &data[tail.start as usize..];
        bytes.iter().all(|&b| b == 0)
            || decode(bytes, opts.meta_len(), opts.max_record) == Err(RecordError::Truncated)
    }

    /// Length of the image up to the end of the last valid record.
    pub fn valid_end(&self, meta_len: usize) -> u64 {
        self.records
            .last()
            .map_or(0, |r| r.offset + r.size(meta_len))
    }
}

/// Reads the damaged bytes at the start of `data` as one whole record whose
/// length field, or id field (then taken to be `expected_id`), was hit: its
/// checksum still covers the rest. The record's end is searched among the
/// places where the next id (`id + 1`) stands in a header, or the end of the
/// image, so a false match needs a checksum collision there.
fn repair(data: &[u8], offset: usize, expected_id: u64, opts: &LogOptions) -> Option<Found> {
    let header = BASE_HEADER + opts.meta_len();
    let head = data.get(..header)?;
    let crc = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
    let stored_id = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
    let meta_bytes = &head[BASE_HEADER..];
    let meta = match meta_bytes.len() {
        8 => u64::from_le_bytes(meta_bytes.try_into().expect("8 bytes")),
        _ => 0,
    };
    let ids: &[u64] = if stored_id == expected_id {
        &[expected_id]
    } else {
        &[stored_id, expected_id]
    };
    let last_end = data.len().min(header + opts.max_record as usize);
    for &id in ids.iter().filter(|&&id| id >= expected_id && id <= MAX_ID) {
        let next = (id + 1).to_le_bytes();
        let ends = (header..last_end)
            .filter(|&p| data.get(p + 8..p + 16) == Some(&next[..]))
            .chain((last_end == data.len()).then_some(data.len()));
        // The checksum field itself may be the damaged part: a payload that
        // carries its own check is then trusted by that check, at its
        // stored id only when that is the expected one.
        let self_checked = |payload: &[u8]| {
            id == expected_id && opts.payload_check.is_some_and(|check| check(payload))
        };
        for end in ends {
            let payload = &data[header..end];
            if checksum(id, meta_bytes, payload) == crc || self_checked(payload) {
                return Some(Found {
                    id,
                    offset: offset as u64,
                    len: payload.len() as u32,
                    meta,
                });
            }
        }
    }
    None
}

/// Finds the valid records of a segment image. `first_id` is the id the
/// segment was created for (its first record's id, unless that was lost);
/// `previous` is the last id of the segments before it. Ids must increase.
pub fn scan(data: &[u8], first_id: u64, previous: Option<u64>, opts: &LogOptions) -> Scan {
    let (meta_len, max_len) = (opts.meta_len(), opts.max_record);
    let header = BASE_HEADER + meta_len;
    let mut out = Scan::default();
    // Ids below this are out of order.
    let mut min_id = previous.map_or(first_id, |p| (p + 1).max(first_id));
    let mut last: Option<u64> = None;
    let mut pos = 0usize;
    while pos < data.len() {
        let decoded = decode(&data[pos..], meta_len, max_len);
        if let Ok((id, _, payload)) = decoded
            && id < min_id
        {
            // A whole record already seen in an earlier segment (a rewrite
            // interrupted between its renames): not damage.
            out.stale += 1;
            pos += header + payload.len();
            continue;
        }
        if let Ok((id, meta, payload)) = decoded {
            out.records.push(Found {
                id,
                offset: pos as u64,
                len: payload.len() as u32,
                meta,
            });
            last = Some(id);
            min_id = id + 1;
            pos += header + payload.len();
            continue;
        }
        if let Some(r) = repair(&data[pos..], pos, min_id, opts) {
            // A whole record whose length or id field was hit.
            out.records.push(r);
            out.repaired += 1;
            last = Some(r.id);
            min_id = r.id + 1;
            pos += header + r.len as usize;
            continue;
        }
        // Damage at `pos`: look for the next record that fits in sequence.
        let start = pos;
        let mut found = None;
        let mut q = pos + 1;
        while q + header <= data.len() {
            let max_id = min_id.saturating_add(((q - start) / header) as u64 + 1);
            let id = u64::from_le_bytes(data[q + 8..q + 16].try_into().expect("8 bytes"));
            let len = u32::from_le_bytes(data[q..q + 4].try_into().expect("4 bytes"));
            if (min_id..=max_id).contains(&id)
                && len <= max_len
                && q + header + len as usize <= data.len()
                && decode(&data[q..], meta_len, max_len).is_ok()
            {
                found = Some((q, id));
                break;
            }
            q += 1;
        }
        match found {
            Some((q, id)) => {
                out.gaps.push(Gap {
                    start: start as u64,
                    end: q as u64,
                    after: last,
                    before: Some(id),
                });
                pos = q;
            }
            None => {
                out.gaps.push(Gap {
                    start: start as u64,
                    end: data.len() as u64,
                    after: last,
                    before: None,
                });
                break;
            }
        }
    }
    out
}
