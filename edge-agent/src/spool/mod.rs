//! The durable store-and-forward spool (core): an append-only log of sealed
//! batches on the gateway's disk.
//!
//! This module is the spool's policy over [`seglog`] (single-threaded,
//! synchronous, generic over [`fs::LogFs`] so tests can inject faults);
//! [`service`] runs it on its own thread between the batcher and the uplink.
//!
//! # Layout
//! Segment files `<first-id:020>.seg` in one directory (see [`seglog`] for
//! the record format, recovery and quarantine). Each record's 8 metadata
//! bytes are its append time (µs since the epoch). Ids increase strictly
//! across segments and restarts, starting at 1.
//!
//! # Durability and deletion
//! [`Spool::append`] writes; [`Spool::sync`] fsyncs (group commit: one sync
//! covers every append before it). Only records appended before a successful
//! `sync` may be acknowledged to devices. [`Spool::ack`] marks a record as
//! delivered; a segment is deleted once all its records are delivered and it
//! is neither the one being written nor the one before it (the newest records
//! are kept a little longer so that, after a crash, the agent can recognise
//! device messages the broker redelivers although they were already spooled;
//! see [`Spool::newest_payloads`]). After a restart every record still on
//! disk is sent again unless it was recorded as delivered, and the hub's
//! dedup makes a resend harmless. To spare a metered uplink that resend,
//! [`Spool::save_deliveries`] (called at shutdown and periodically) records
//! which ids are delivered in a small `deliveries` file, written atomically
//! (temporary file, fsync, rename); opening marks those records delivered.
//! The file only ever names records the hub acknowledged, and opening
//! consumes it, so losing or ignoring it costs resends, never data. Records
//! older than the TTL are expired (counted as dropped) by [`Spool::expire`].
//!
//! # Damage
//! A damaged record costs that record only: [`seglog`] resynchronises on
//! the next valid one, keeps the bad bytes in `<segment>.corrupt` and
//! reports which ids were lost ([`SpoolRecovery::lost_records`]); the
//! service logs them at ERROR and counts them.
//!
//! # Bounds
//! `max-bytes` caps the spool. When an append would pass it, the `block`
//! policy refuses (the caller applies backpressure) and `drop-oldest` deletes
//! the oldest segment, counting its undelivered records as dropped.

pub mod service;

/// The spool's filesystem seam (re-exported from [`seglog`]).
pub use seglog::fs;

use std::io;

use fs::LogFs;
use seglog::{Log, LogError, LogOptions, Lost};

const MAX_RECORD: u32 = 64 * 1024 * 1024;
const SEGMENT_SUFFIX: &str = ".seg";
const DELIVERIES: &str = "deliveries";
const DELIVERIES_TMP: &str = "deliveries.tmp";
/// The first id a new spool hands out.
const FIRST_ID: u64 = 1;

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

impl SpoolSettings {
    fn log_options(&self) -> LogOptions {
        LogOptions {
            suffix: SEGMENT_SUFFIX,
            with_meta: true,
            segment_bytes: self.segment_bytes,
            max_record: MAX_RECORD,
            payload_check: Some(schemas::envelope::checksum_ok),
        }
    }
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

impl From<LogError> for SpoolError {
    fn from(e: LogError) -> Self {
        match e {
            LogError::Failed => SpoolError::Failed,
            LogError::TooLarge(n) => SpoolError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("record of {n} bytes is too large"),
            )),
            LogError::Io(e) => SpoolError::Io(e),
        }
    }
}

/// What opening found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SpoolRecovery {
    pub records: u64,
    /// Bytes of a write cut short by a crash (never acknowledged).
    pub truncated_bytes: u64,
    /// Segments in which damaged bytes were found and quarantined.
    pub quarantined_segments: usize,
    /// What damage cost, with the ids where they are known.
    pub damage: Vec<seglog::Damage>,
}

impl SpoolRecovery {
    /// Records known to be lost to damage (a stretch at the very end of the
    /// spool counts as one: how many it held is unknown).
    pub fn lost_records(&self) -> u64 {
        self.damage
            .iter()
            .map(|d| match d.lost {
                Lost::Nothing => 0,
                Lost::Ids { first, last } => last - first + 1,
                Lost::From { .. } => 1,
            })
            .sum()
    }
}

#[derive(Debug)]
pub struct Spool<F: LogFs> {
    log: Log<F>,
    settings: SpoolSettings,
    dropped_records: u64,
    expired_records: u64,
}

impl<F: LogFs> Spool<F> {
    pub fn open(fs: F, settings: SpoolSettings) -> io::Result<(Self, SpoolRecovery)> {
        let (mut log, rec) = Log::open(fs, settings.log_options(), FIRST_ID)?;
        let mut damaged: Vec<&str> = rec.damage.iter().map(|d| d.segment.as_str()).collect();
        damaged.dedup();
        let recovery = SpoolRecovery {
            records: rec.records,
            truncated_bytes: rec.torn_bytes,
            quarantined_segments: damaged.len(),
            damage: rec.damage.clone(),
        };
        // Deliveries recorded before the stop (an unreadable file is ignored).
        // The file is consumed: ids can be reused after a damaged tail was
        // cut, so it must never apply to records appended after this open.
        if let Ok(data) = log.fs_mut().read(DELIVERIES) {
            let ranges = decode_deliveries(&data).unwrap_or_default();
            log.settle_where(|e| {
                ranges
                    .iter()
                    .any(|(from, to)| (*from..=*to).contains(&e.id))
            });
            log.fs_mut().remove(DELIVERIES)?;
        }
        Ok((
            Self {
                log,
                settings,
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
        if self.log.is_failed() {
            return Err(SpoolError::Failed);
        }
        let size = self.log.record_size(payload.len());
        while self.log.total_bytes() + size > self.settings.max_bytes {
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
        Ok(self.log.append(appended_us as u64, payload)?.id)
    }

    /// Makes every appended record durable.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        Ok(self.log.sync()?)
    }

    /// Marks a record delivered and deletes segments that hold nothing else.
    pub fn ack(&mut self, id: u64) -> Result<(), SpoolError> {
        self.log.settle(id);
        self.remove_delivered_segments(KEPT_SEGMENTS)?;
        Ok(())
    }

    /// Expires undelivered records appended before `cutoff_us`, counting
    /// them; returns how many.
    pub fn expire(&mut self, cutoff_us: i64) -> Result<u64, SpoolError> {
        let expired = self.log.settle_where(|e| (e.meta as i64) < cutoff_us);
        self.expired_records += expired;
        self.remove_delivered_segments(KEPT_SEGMENTS)?;
        Ok(expired)
    }

    /// Deletes fully delivered segments from the front while more than
    /// `keep` segments remain; whether any was deleted.
    fn remove_delivered_segments(&mut self, keep: usize) -> Result<bool, SpoolError> {
        let mut removed = false;
        while self.log.segments().len() > keep.max(1)
            && self.log.segments().next().is_some_and(|s| s.all_settled())
        {
            self.log.pop_oldest()?;
            removed = true;
        }
        Ok(removed)
    }

    fn evict_oldest(&mut self) -> Result<bool, SpoolError> {
        match self.log.pop_oldest()? {
            Some(entries) => {
                self.dropped_records += entries.iter().filter(|e| !e.settled).count() as u64;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Undelivered record ids, oldest first.
    pub fn undelivered(&self) -> Vec<u64> {
        self.log
            .entries()
            .filter(|e| !e.settled)
            .map(|e| e.id)
            .collect()
    }

    /// Reads an undelivered record's payload with one positional read, and
    /// checks it against its checksum (the file could have been damaged
    /// since it was opened). `None` if the record is gone or delivered.
    pub fn read(&mut self, id: u64) -> Result<Option<Vec<u8>>, SpoolError> {
        if self.log.entry(id).is_none_or(|e| e.settled) {
            return Ok(None);
        }
        Ok(self.log.read(id)?)
    }

    /// Records which ids are delivered (ranges, CRC-protected) in the
    /// `deliveries` file: temporary file, fsync, rename.
    pub fn save_deliveries(&mut self) -> Result<(), SpoolError> {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for e in self.log.entries().filter(|e| e.settled) {
            match ranges.last_mut() {
                Some((_, to)) if *to + 1 == e.id => *to = e.id,
                _ => ranges.push((e.id, e.id)),
            }
        }
        let mut data = Vec::with_capacity(ranges.len() * 16 + 4);
        for (from, to) in &ranges {
            data.extend_from_slice(&from.to_le_bytes());
            data.extend_from_slice(&to.to_le_bytes());
        }
        data.extend_from_slice(&crc32c::crc32c(&data).to_le_bytes());
        let fs = self.log.fs_mut();
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
        let ids: Vec<u64> = self.log.entries().rev().take(max).map(|e| e.id).collect();
        ids.into_iter()
            .filter_map(|id| self.log.read(id).ok().flatten())
            .collect()
    }

    /// Undelivered records and their bytes (record headers included).
    pub fn backlog(&self) -> (u64, u64) {
        self.log
            .entries()
            .filter(|e| !e.settled)
            .fold((0, 0), |(n, b), e| {
                (n + 1, b + self.log.record_size(e.len as usize))
            })
    }

    /// Undelivered records expired by the TTL.
    pub fn expired_records(&self) -> u64 {
        self.expired_records
    }

    pub fn total_bytes(&self) -> u64 {
        self.log.total_bytes()
    }

    /// Undelivered records evicted by the `drop-oldest` policy.
    pub fn dropped_records(&self) -> u64 {
        self.dropped_records
    }

    pub fn is_failed(&self) -> bool {
        self.log.is_failed()
    }

    pub fn into_fs(self) -> F {
        self.log.into_fs()
    }

    #[cfg(test)]
    fn fs_mut(&mut self) -> &mut F {
        self.log.fs_mut()
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
pub(crate) fn decode_deliveries(data: &[u8]) -> Option<Vec<(u64, u64)>> {
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
