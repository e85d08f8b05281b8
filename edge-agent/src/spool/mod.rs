//! The durable store-and-forward spool (core): an append-only log of sealed
//! batches on the gateway's disk.
//!
//! This module is the log itself (single-threaded, synchronous, generic over
//! [`SpoolFs`] so tests can inject faults); [`service`] runs it on its own
//! thread between the batcher and the uplink.
//!
//! # Layout
//! Segment files `<first-id:020>.seg` in one directory. A record is
//! `len: u32 | crc32c(id || appended || payload): u32 | id: u64 |
//! appended: i64 (µs since the epoch) | payload`, little-endian. Ids increase
//! strictly across segments and restarts.
//!
//! # Durability and deletion
//! [`Spool::append`] writes; [`Spool::sync`] fsyncs (group commit: one sync
//! covers every append before it). Only records appended before a successful
//! `sync` may be acknowledged to devices. [`Spool::ack`] marks a record as
//! delivered; a segment is deleted once all its records are delivered and it
//! is neither the one being written nor the one before it (the newest records
//! are kept a little longer so that, after a crash, the agent can recognise
//! device messages the broker redelivers although they were already spooled;
//! see [`Spool::newest_payloads`]). Deliveries are not persisted: after a
//! restart every record still on disk is sent again, and the hub's dedup
//! makes that harmless. To spare a metered uplink that resend,
//! [`Spool::save_deliveries`] (called at shutdown and periodically) records
//! which ids are delivered in a small `deliveries` file, written atomically
//! (temporary file, fsync, rename); opening marks those records delivered.
//! The file only ever names records the hub acknowledged, and opening
//! consumes it, so losing or ignoring it costs resends, never data. Records older than the TTL are
//! expired (counted as dropped) by [`Spool::expire`].
//!
//! # Recovery never wedges
//! Opening reads every segment. A record that is cut short, fails its
//! checksum or breaks the id order ends the valid prefix of its segment. In
//! the newest segment that is a torn tail from a power cut: it is truncated.
//! In an older segment it is corruption: the bad bytes are moved to
//! `<segment>.corrupt` (quarantined for inspection), counted, and start-up
//! continues with the valid prefix. An append that fails part-way is cut back
//! at once; a failed fsync marks the spool failed (the state of the page
//! cache is then unknown), and it refuses appends until it is reopened.
//!
//! # Bounds
//! `max-bytes` caps the spool. When an append would pass it, the `block`
//! policy refuses (the caller applies backpressure) and `drop-oldest` deletes
//! the oldest segment, counting its undelivered records as dropped.

pub mod fs;
pub mod service;

use std::collections::VecDeque;
use std::io;

use fs::SpoolFs;

const RECORD_HEADER: usize = 24;
const MAX_RECORD: u32 = 64 * 1024 * 1024;
const SEGMENT_SUFFIX: &str = ".seg";
const DELIVERIES: &str = "deliveries";
const DELIVERIES_TMP: &str = "deliveries.tmp";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FullPolicy {
    Block,
    DropOldest,
}

#[derive(Debug, Clone, Copy)]
pub struct SpoolSettings {
    pub segment_bytes: u64,
    pub max_bytes: u64,
    pub policy: FullPolicy,
}

/// Segments kept after delivery: the one being written and the one before.
const KEPT_SEGMENTS: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool is full ({max_bytes} bytes)")]
    Full { max_bytes: u64 },
    #[error("spool stopped after an fsync or truncate failure; reopen it")]
    Failed,
    #[error("spool I/O failed")]
    Io(#[source] io::Error),
}

/// What opening found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SpoolRecovery {
    pub records: u64,
    pub truncated_bytes: u64,
    pub quarantined_segments: usize,
}

#[derive(Debug)]
struct Record {
    id: u64,
    /// Microseconds since the epoch when the record was appended.
    appended_us: i64,
    offset: u64,
    len: u32,
    delivered: bool,
}

#[derive(Debug)]
struct Segment {
    name: String,
    records: Vec<Record>,
    bytes: u64,
}

#[derive(Debug)]
pub struct Spool<F: SpoolFs> {
    fs: F,
    settings: SpoolSettings,
    /// Oldest first; the last one is written to.
    segments: VecDeque<Segment>,
    next_id: u64,
    total_bytes: u64,
    unsynced: bool,
    failed: bool,
    dropped_records: u64,
    expired_records: u64,
}

fn segment_name(first_id: u64) -> String {
    format!("{first_id:020}{SEGMENT_SUFFIX}")
}

/// Checksum of a record: its id and append time, then its payload.
fn record_crc(id_and_time: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(id_and_time), payload)
}

/// Valid records of a segment image and the length of the valid prefix.
fn scan(data: &[u8], mut last_id: u64) -> (Vec<Record>, u64) {
    let (mut records, mut pos) = (Vec::new(), 0usize);
    while data.len() - pos >= RECORD_HEADER {
        let len = u32::from_le_bytes(data[pos..pos + 4].try_into().expect("4"));
        let crc = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().expect("4"));
        let id = u64::from_le_bytes(data[pos + 8..pos + 16].try_into().expect("8"));
        let appended_us = i64::from_le_bytes(data[pos + 16..pos + 24].try_into().expect("8"));
        let end = pos + RECORD_HEADER + len as usize;
        if len > MAX_RECORD || end > data.len() || id <= last_id {
            break;
        }
        if record_crc(
            &data[pos + 8..pos + RECORD_HEADER],
            &data[pos + RECORD_HEADER..end],
        ) != crc
        {
            break;
        }
        records.push(Record {
            id,
            appended_us,
            offset: (pos + RECORD_HEADER) as u64,
            len,
            delivered: false,
        });
        last_id = id;
        pos = end;
    }
    (records, pos as u64)
}

impl<F: SpoolFs> Spool<F> {
    pub fn open(mut fs: F, settings: SpoolSettings) -> io::Result<(Self, SpoolRecovery)> {
        let mut names: Vec<String> = fs
            .list()?
            .into_iter()
            .filter(|n| n.ends_with(SEGMENT_SUFFIX))
            .collect();
        names.sort();
        let mut recovery = SpoolRecovery::default();
        let mut segments = VecDeque::new();
        let mut last_id = 0u64;
        let count = names.len();
        for (i, name) in names.into_iter().enumerate() {
            let data = fs.read(&name)?;
            let (records, good) = scan(&data, last_id);
            if good < data.len() as u64 {
                recovery.truncated_bytes += data.len() as u64 - good;
                if i + 1 < count {
                    // Damage before the newest segment: keep the bad bytes
                    // for inspection rather than silently dropping them.
                    let quarantine = format!("{name}.corrupt");
                    fs.create(&quarantine)?;
                    fs.append(&quarantine, &data[good as usize..])?;
                    fs.sync(&quarantine)?;
                    recovery.quarantined_segments += 1;
                }
                fs.truncate(&name, good)?;
            }
            if records.is_empty() {
                fs.remove(&name)?;
                continue;
            }
            // What survived may still be only in the page cache (a process
            // crash, not a power cut): make it durable before relying on it.
            fs.sync(&name)?;
            last_id = records.last().expect("non-empty").id;
            recovery.records += records.len() as u64;
            segments.push_back(Segment {
                name,
                records,
                bytes: good,
            });
        }
        // Deliveries recorded before the stop (an unreadable file is ignored).
        // The file is consumed: ids can be reused after a damaged tail was
        // cut, so it must never apply to records appended after this open.
        if let Ok(data) = fs.read(DELIVERIES) {
            for (from, to) in decode_deliveries(&data).unwrap_or_default() {
                for r in segments
                    .iter_mut()
                    .flat_map(|s: &mut Segment| s.records.iter_mut())
                {
                    if (from..=to).contains(&r.id) {
                        r.delivered = true;
                    }
                }
            }
            fs.remove(DELIVERIES)?;
        }
        let total_bytes = segments.iter().map(|s| s.bytes).sum();
        Ok((
            Self {
                fs,
                settings,
                segments,
                next_id: last_id + 1,
                total_bytes,
                unsynced: false,
                failed: false,
                dropped_records: 0,
                expired_records: 0,
            },
            recovery,
        ))
    }

    /// Writes one record; durable only after [`Spool::sync`].
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, SpoolError> {
        self.append_at(payload, now_us())
    }

    /// [`Spool::append`] with an explicit append time (tests of the TTL).
    pub fn append_at(&mut self, payload: &[u8], appended_us: i64) -> Result<u64, SpoolError> {
        if self.failed {
            return Err(SpoolError::Failed);
        }
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|&l| l <= MAX_RECORD)
            .ok_or_else(|| {
                SpoolError::Io(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "record too large",
                ))
            })?;
        let size = (RECORD_HEADER + payload.len()) as u64;
        while self.total_bytes + size > self.settings.max_bytes {
            // Delivered segments kept only for the redelivery guard go first.
            if self.remove_delivered_segments(1)? {
                continue;
            }
            match self.settings.policy {
                FullPolicy::Block => {
                    return Err(SpoolError::Full {
                        max_bytes: self.settings.max_bytes,
                    });
                }
                FullPolicy::DropOldest => {
                    if !self.evict_oldest()? {
                        return Err(SpoolError::Full {
                            max_bytes: self.settings.max_bytes,
                        });
                    }
                }
            }
        }
        let id = self.next_id;
        let needs_segment = self
            .segments
            .back()
            .is_none_or(|s| s.bytes + size > self.settings.segment_bytes && !s.records.is_empty());
        if needs_segment {
            self.sync()?;
            let name = segment_name(id);
            self.fs.create(&name).map_err(SpoolError::Io)?;
            self.segments.push_back(Segment {
                name,
                records: Vec::new(),
                bytes: 0,
            });
        }
        let active = self.segments.back_mut().expect("an active segment");
        let mut record = Vec::with_capacity(size as usize);
        record.extend_from_slice(&len.to_le_bytes());
        let mut id_and_time = [0u8; 16];
        id_and_time[..8].copy_from_slice(&id.to_le_bytes());
        id_and_time[8..].copy_from_slice(&appended_us.to_le_bytes());
        record.extend_from_slice(&record_crc(&id_and_time, payload).to_le_bytes());
        record.extend_from_slice(&id_and_time);
        record.extend_from_slice(payload);
        if let Err(e) = self.fs.append(&active.name, &record) {
            // Cut back whatever part of the record reached the file, so the
            // next record does not follow garbage.
            if self.fs.truncate(&active.name, active.bytes).is_err() {
                self.failed = true;
            }
            return Err(SpoolError::Io(e));
        }
        active.records.push(Record {
            id,
            appended_us,
            offset: active.bytes + RECORD_HEADER as u64,
            len,
            delivered: false,
        });
        active.bytes += size;
        self.total_bytes += size;
        self.next_id += 1;
        self.unsynced = true;
        Ok(id)
    }

    /// Makes every appended record durable.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if self.failed {
            return Err(SpoolError::Failed);
        }
        if !self.unsynced {
            return Ok(());
        }
        let name = &self
            .segments
            .back()
            .expect("unsynced implies a segment")
            .name;
        if let Err(e) = self.fs.sync(name) {
            self.failed = true;
            return Err(SpoolError::Io(e));
        }
        self.unsynced = false;
        Ok(())
    }

    /// Marks a record delivered and deletes segments that hold nothing else.
    pub fn ack(&mut self, id: u64) -> Result<(), SpoolError> {
        if let Some(r) = self.record_mut(id) {
            r.delivered = true;
        }
        self.remove_delivered_segments(KEPT_SEGMENTS)?;
        Ok(())
    }

    /// Expires undelivered records appended before `cutoff_us`, counting
    /// them; returns how many.
    pub fn expire(&mut self, cutoff_us: i64) -> Result<u64, SpoolError> {
        let mut expired = 0;
        for seg in &mut self.segments {
            for r in seg.records.iter_mut() {
                if !r.delivered && r.appended_us < cutoff_us {
                    r.delivered = true;
                    expired += 1;
                }
            }
        }
        self.expired_records += expired;
        self.remove_delivered_segments(KEPT_SEGMENTS)?;
        Ok(expired)
    }

    /// Deletes fully delivered segments from the front while more than
    /// `keep` segments remain; whether any was deleted.
    fn remove_delivered_segments(&mut self, keep: usize) -> Result<bool, SpoolError> {
        let mut removed = false;
        while self.segments.len() > keep.max(1)
            && self
                .segments
                .front()
                .is_some_and(|s| s.records.iter().all(|r| r.delivered))
        {
            let seg = self.segments.pop_front().expect("checked");
            self.fs.remove(&seg.name).map_err(SpoolError::Io)?;
            self.total_bytes -= seg.bytes;
            removed = true;
        }
        Ok(removed)
    }

    fn record_mut(&mut self, id: u64) -> Option<&mut Record> {
        let seg = self.segment_index(id)?;
        let records = &mut self.segments[seg].records;
        let i = records.binary_search_by_key(&id, |r| r.id).ok()?;
        Some(&mut records[i])
    }

    /// The segment that would hold `id` (segments are ordered by id).
    fn segment_index(&self, id: u64) -> Option<usize> {
        let i = self
            .segments
            .partition_point(|s| s.records.first().is_some_and(|r| r.id <= id));
        i.checked_sub(1)
    }

    fn evict_oldest(&mut self) -> Result<bool, SpoolError> {
        let Some(seg) = self.segments.pop_front() else {
            return Ok(false);
        };
        if self.segments.is_empty() && self.unsynced {
            self.unsynced = false;
        }
        self.dropped_records += seg.records.iter().filter(|r| !r.delivered).count() as u64;
        self.fs.remove(&seg.name).map_err(SpoolError::Io)?;
        self.total_bytes -= seg.bytes;
        Ok(true)
    }

    /// Undelivered record ids, oldest first.
    pub fn undelivered(&self) -> Vec<u64> {
        self.segments
            .iter()
            .flat_map(|s| s.records.iter().filter(|r| !r.delivered).map(|r| r.id))
            .collect()
    }

    /// Reads an undelivered record's payload with one positional read, and
    /// checks it against its checksum (the file could have been damaged
    /// since it was opened). `None` if the record is gone or delivered.
    pub fn read(&mut self, id: u64) -> Result<Option<Vec<u8>>, SpoolError> {
        let Some(seg) = self.segment_index(id) else {
            return Ok(None);
        };
        let segment = &self.segments[seg];
        let Ok(i) = segment.records.binary_search_by_key(&id, |r| r.id) else {
            return Ok(None);
        };
        let r = &segment.records[i];
        if r.delivered {
            return Ok(None);
        }
        let start = r.offset - RECORD_HEADER as u64;
        let name = segment.name.clone();
        let image = self
            .fs
            .read_at(&name, start, RECORD_HEADER + r.len as usize)
            .map_err(SpoolError::Io)?;
        let crc = u32::from_le_bytes(image[4..8].try_into().expect("4"));
        if record_crc(&image[8..RECORD_HEADER], &image[RECORD_HEADER..]) != crc {
            return Err(SpoolError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("record {id} in {name} fails its checksum"),
            )));
        }
        Ok(Some(image[RECORD_HEADER..].to_vec()))
    }

    /// Records which ids are delivered (ranges, CRC-protected) in the
    /// `deliveries` file: temporary file, fsync, rename.
    pub fn save_deliveries(&mut self) -> Result<(), SpoolError> {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for r in self.segments.iter().flat_map(|s| s.records.iter()) {
            if !r.delivered {
                continue;
            }
            match ranges.last_mut() {
                Some((_, to)) if *to + 1 == r.id => *to = r.id,
                _ => ranges.push((r.id, r.id)),
            }
        }
        let mut data = Vec::with_capacity(ranges.len() * 16 + 4);
        for (from, to) in &ranges {
            data.extend_from_slice(&from.to_le_bytes());
            data.extend_from_slice(&to.to_le_bytes());
        }
        data.extend_from_slice(&crc32c::crc32c(&data).to_le_bytes());
        let fs = &mut self.fs;
        let _ = fs.remove(DELIVERIES_TMP);
        fs.create(DELIVERIES_TMP)
            .and_then(|()| fs.append(DELIVERIES_TMP, &data))
            .and_then(|()| fs.sync(DELIVERIES_TMP))
            .and_then(|()| fs.rename(DELIVERIES_TMP, DELIVERIES))
            .map_err(SpoolError::Io)
    }

    /// Payloads of the newest records still on disk, delivered or not, newest
    /// first, at most `max` of them: what the redelivery guard is seeded from
    /// after a restart.
    pub fn newest_payloads(&mut self, max: usize) -> Vec<Vec<u8>> {
        let wanted: Vec<(String, u64, u32)> = self
            .segments
            .iter()
            .rev()
            .flat_map(|s| {
                s.records
                    .iter()
                    .rev()
                    .map(move |r| (s.name.clone(), r.offset, r.len))
            })
            .take(max)
            .collect();
        wanted
            .into_iter()
            .filter_map(|(name, offset, len)| self.fs.read_at(&name, offset, len as usize).ok())
            .collect()
    }

    /// Undelivered records and their bytes (record headers included).
    pub fn backlog(&self) -> (u64, u64) {
        self.segments
            .iter()
            .flat_map(|s| s.records.iter())
            .filter(|r| !r.delivered)
            .fold((0, 0), |(n, b), r| {
                (n + 1, b + RECORD_HEADER as u64 + u64::from(r.len))
            })
    }

    /// Undelivered records expired by the TTL.
    pub fn expired_records(&self) -> u64 {
        self.expired_records
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Undelivered records evicted by the `drop-oldest` policy.
    pub fn dropped_records(&self) -> u64 {
        self.dropped_records
    }

    pub fn is_failed(&self) -> bool {
        self.failed
    }

    pub fn into_fs(self) -> F {
        self.fs
    }

    #[cfg(test)]
    fn fs_mut(&mut self) -> &mut F {
        &mut self.fs
    }
}

#[cfg(test)]
mod tests;

/// Microseconds since the Unix epoch, by the wall clock.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// `(from, to)` id ranges of a `deliveries` file; `None` if it is damaged.
fn decode_deliveries(data: &[u8]) -> Option<Vec<(u64, u64)>> {
    let (body, crc) = data.split_at_checked(data.len().checked_sub(4)?)?;
    if body.len() % 16 != 0 || crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().ok()?) {
        return None;
    }
    Some(
        body.chunks_exact(16)
            .map(|c| {
                let from = u64::from_le_bytes(c[..8].try_into().expect("8"));
                let to = u64::from_le_bytes(c[8..].try_into().expect("8"));
                (from, to)
            })
            .collect(),
    )
}
