//! A segmented, append-only log of length-prefixed, CRC32C-checked records:
//! the storage under the hub's write-ahead log and the edge agent's spool.
//!
//! # Layout
//! Segment files `<first-id:020><suffix>` in one directory; each holds
//! records with strictly increasing ids (see [`record`] for the bytes).
//! Ids are assigned consecutively and never go backwards across restarts:
//! the newest segment file is kept even when it is empty, so its name
//! remembers where the ids stand, and [`Log::open`] takes a floor from the
//! caller (what it knows was already handed out, e.g. the archive's
//! positions) on top.
//!
//! # Durability
//! [`Log::append`] writes a record with one write call; [`Log::sync`] fsyncs
//! the segment being written (group commit: one sync covers every append
//! before it). Only synced records may be acknowledged by the caller. An
//! append that fails part-way is cut back at once; a failed fsync marks the
//! log failed (the page cache's state is then unknown) and it refuses appends
//! until it is reopened. Segments are deleted whole, by the caller's rule
//! ([`Log::pop_oldest`]).
//!
//! # Recovery never wedges, and damage costs only the damaged records
//! Opening reads every segment and keeps every record whose checksum holds
//! and whose id is in order. After a damaged stretch the scan resynchronises
//! on the next valid record (see [`record::scan`]), so a flipped byte costs
//! the record it hit, not the rest of the log. Damage is reported in
//! [`Recovery::damage`] with the ids it cost (exactly, when valid records
//! surround it), its bytes are kept in `<segment>.corrupt` for inspection,
//! and the segment is rewritten without them (temporary file, fsync, atomic
//! rename), so the same damage is reported once. The one exception is the
//! end of the newest segment: a record cut short, or zeros, is the torn tail
//! of a write that never completed (never synced, so never acknowledged); it
//! is truncated and counted in [`Recovery::torn_bytes`], not reported as
//! loss. Whole bytes at that place that fail their checksum are damage.
//!
//! # Files
//! All I/O goes through [`fs::LogFs`]: [`fs::DirFs`] is a real directory,
//! [`fs::FaultyFs`] an in-memory one with power-loss semantics and injected
//! faults, for the model-based property tests in this crate and its users.

pub mod fs;
#[doc(hidden)]
pub mod fuzzing;
pub mod record;

use std::collections::VecDeque;
use std::io;

use fs::LogFs;
use record::BASE_HEADER;

/// How a log names and frames its records.
#[derive(Debug, Clone, Copy)]
pub struct LogOptions {
    /// File-name suffix of segments, e.g. `".wal"`.
    pub suffix: &'static str,
    /// Whether each record carries 8 bytes of caller metadata (covered by
    /// its checksum), e.g. the time it was appended.
    pub with_meta: bool,
    /// A new segment is started when a record would take the active one
    /// past this size.
    pub segment_bytes: u64,
    /// Largest payload accepted.
    pub max_record: u32,
    /// The payload's own integrity check, if it has one (e.g. an envelope's
    /// checksum): a record whose checksum field was hit is kept when its
    /// payload passes this check.
    pub payload_check: Option<fn(&[u8]) -> bool>,
}

impl LogOptions {
    fn meta_len(&self) -> usize {
        if self.with_meta { 8 } else { 0 }
    }

    fn header(&self) -> usize {
        BASE_HEADER + self.meta_len()
    }

    fn segment_name(&self, first_id: u64) -> String {
        format!("{first_id:020}{}", self.suffix)
    }

    fn parse_name(&self, name: &str) -> Option<u64> {
        name.strip_suffix(self.suffix)?
            .parse()
            .ok()
            .filter(|&id| id <= record::MAX_ID)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("the log stopped after an fsync or truncate failure; reopen it")]
    Failed,
    #[error("record of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("log I/O failed")]
    Io(#[source] io::Error),
}

/// Which ids a damaged stretch cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// Garbage between two consecutive records: no record was lost.
    Nothing,
    /// Exactly these ids (inclusive).
    Ids { first: u64, last: u64 },
    /// At the end of the log: the ids from `first` on, however many there
    /// were.
    From { first: u64 },
}

/// A damaged stretch found when the log was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub segment: String,
    pub offset: u64,
    pub bytes: u64,
    pub lost: Lost,
    /// Where the damaged bytes were kept: this file, from this offset.
    pub quarantine: String,
    pub quarantine_offset: u64,
}

/// What opening the log found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub segments: usize,
    pub records: u64,
    /// Bytes cut from the end of the newest segment: a write that never
    /// completed.
    pub torn_bytes: u64,
    pub damage: Vec<Damage>,
}

/// Where a record is and what the caller knows of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub id: u64,
    /// Offset of the record's header in its segment.
    offset: u64,
    /// Payload length.
    pub len: u32,
    /// The record's metadata (0 without [`LogOptions::with_meta`]).
    pub meta: u64,
    /// Set by the caller ([`Log::settle`]): the record is no longer needed.
    pub settled: bool,
}

/// One segment file.
#[derive(Debug)]
pub struct Segment {
    name: String,
    first_id: u64,
    entries: Vec<Entry>,
    bytes: u64,
}

impl Segment {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// File size in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether every record in it is settled (true for an empty segment).
    pub fn all_settled(&self) -> bool {
        self.entries.iter().all(|e| e.settled)
    }

    /// The id after its last record.
    fn end_id(&self) -> u64 {
        self.entries.last().map_or(self.first_id, |e| e.id + 1)
    }
}

/// The outcome of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub id: u64,
    /// A new segment was started for this record.
    pub new_segment: bool,
}

/// An open log (single-threaded; see the crate docs).
#[derive(Debug)]
pub struct Log<F: LogFs> {
    fs: F,
    opts: LogOptions,
    /// Oldest first; never empty: the last one is written to.
    segments: VecDeque<Segment>,
    next_id: u64,
    total_bytes: u64,
    unsynced: bool,
    failed: bool,
    scratch: Vec<u8>,
}

const REWRITE_SUFFIX: &str = ".rewrite";
const QUARANTINE_SUFFIX: &str = ".corrupt";

impl<F: LogFs> Log<F> {
    /// Opens the log, repairing what a crash or damage left (see the crate
    /// docs). Ids continue at or above `id_floor`.
    pub fn open(mut fs: F, opts: LogOptions, id_floor: u64) -> io::Result<(Self, Recovery)> {
        let mut id_floor = id_floor.min(record::MAX_ID);
        let mut named: Vec<(u64, String)> = Vec::new();
        for name in fs.list()? {
            if name.ends_with(REWRITE_SUFFIX) {
                // A rewrite that did not reach its rename: the original
                // segment is intact.
                fs.remove(&name)?;
            } else if let Some(first_id) = opts.parse_name(&name) {
                named.push((first_id, name));
            }
        }
        named.sort();
        let meta_len = opts.meta_len();
        let mut recovery = Recovery::default();
        let mut segments: VecDeque<Segment> = VecDeque::new();
        let mut previous: Option<u64> = None;
        for i in 0..named.len() {
            let (first_id, name) = named[i].clone();
            let newest = i + 1 == named.len();
            let data = fs.read(&name)?;
            let scan = record::scan(&data, first_id, previous, &opts);
            let torn = newest && scan.torn_tail(&data, &opts);
            let quarantine = format!("{name}{QUARANTINE_SUFFIX}");
            let mut quarantine_exists = false;
            for gap in &scan.gaps {
                let is_tail = gap.before.is_none();
                let first_lost = gap
                    .after
                    .map_or(first_id.max(previous.map_or(0, |p| p + 1)), |a| a + 1);
                if is_tail && torn {
                    // Never acknowledged, but its ids are not reused either.
                    recovery.torn_bytes += gap.len();
                    id_floor = id_floor.max(first_lost + gap.len() / opts.header() as u64);
                    continue;
                }
                let lost = match (gap.before, named.get(i + 1)) {
                    (Some(before), _) if before > first_lost => Lost::Ids {
                        first: first_lost,
                        last: before - 1,
                    },
                    (Some(_), _) => Lost::Nothing,
                    (None, Some((next_first, _))) if *next_first > first_lost => Lost::Ids {
                        first: first_lost,
                        last: next_first - 1,
                    },
                    (None, Some(_)) => Lost::Nothing,
                    (None, None) => {
                        // However many records the stretch held, none of
                        // their ids may be handed out again.
                        id_floor = id_floor.max(first_lost + gap.len() / opts.header() as u64);
                        Lost::From { first: first_lost }
                    }
                };
                if !quarantine_exists {
                    quarantine_exists = fs.list()?.contains(&quarantine);
                    if !quarantine_exists {
                        fs.create(&quarantine)?;
                        quarantine_exists = true;
                    }
                }
                let quarantine_offset = fs.size(&quarantine)?;
                fs.append(&quarantine, &data[gap.start as usize..gap.end as usize])?;
                fs.sync(&quarantine)?;
                recovery.damage.push(Damage {
                    segment: name.clone(),
                    offset: gap.start,
                    bytes: gap.len(),
                    lost,
                    quarantine: quarantine.clone(),
                    quarantine_offset,
                });
            }
            // Within a segment ids are consecutive from its name (that is
            // what keeps the resynchronisation window tight): records
            // separated by lost ids go to segments of their own.
            let mut runs: Vec<&[record::Found]> = Vec::new();
            let mut rest = scan.records.as_slice();
            while !rest.is_empty() {
                let n = 1 + rest
                    .windows(2)
                    .take_while(|w| w[1].id == w[0].id + 1)
                    .count();
                runs.push(&rest[..n]);
                rest = &rest[n..];
            }
            let rewrite = scan.repaired > 0
                || scan.stale > 0
                || scan.gaps.iter().any(|g| g.before.is_some())
                || runs.len() > 1
                || runs.first().is_some_and(|r| r[0].id != first_id);
            if rewrite {
                // Rewrite the segment as its valid records, so the damage
                // is reported (and quarantined) once. Each run is written
                // under a temporary name and renamed; the original goes
                // last (records a crash leaves twice are skipped as stale
                // on the next open).
                let mut original_kept = false;
                for run in &runs {
                    let run_name = opts.segment_name(run[0].id);
                    let tmp = format!("{run_name}{REWRITE_SUFFIX}");
                    let mut image = Vec::with_capacity(data.len());
                    let mut entries = Vec::with_capacity(run.len());
                    for r in run.iter() {
                        let start = r.offset as usize + opts.header();
                        entries.push(Entry {
                            id: r.id,
                            offset: image.len() as u64,
                            len: r.len,
                            meta: r.meta,
                            settled: false,
                        });
                        let payload = &data[start..start + r.len as usize];
                        record::encode(&mut image, r.id, opts.with_meta.then_some(r.meta), payload);
                    }
                    fs.create(&tmp)?;
                    fs.append(&tmp, &image)?;
                    fs.sync(&tmp)?;
                    fs.rename(&tmp, &run_name)?;
                    original_kept |= run_name == name;
                    segments.push_back(Segment {
                        name: run_name,
                        first_id: run[0].id,
                        entries,
                        bytes: image.len() as u64,
                    });
                }
                if !original_kept {
                    if newest && runs.is_empty() {
                        // Keep the newest name (the ids' high-water mark).
                        fs.truncate(&name, 0)?;
                        segments.push_back(Segment {
                            name: name.clone(),
                            first_id,
                            entries: Vec::new(),
                            bytes: 0,
                        });
                    } else {
                        fs.remove(&name)?;
                    }
                }
            } else {
                let entries: Vec<Entry> = scan
                    .records
                    .iter()
                    .map(|r| Entry {
                        id: r.id,
                        offset: r.offset,
                        len: r.len,
                        meta: r.meta,
                        settled: false,
                    })
                    .collect();
                let bytes = scan.valid_end(meta_len);
                if bytes < data.len() as u64 {
                    fs.truncate(&name, bytes)?;
                }
                // What survived may be only in the page cache (a process
                // crash, not a power cut): make it durable before relying
                // on it.
                if !entries.is_empty() {
                    fs.sync(&name)?;
                }
                segments.push_back(Segment {
                    name,
                    first_id,
                    entries,
                    bytes,
                });
            }
            recovery.segments += 1;
            recovery.records += scan.records.len() as u64;
            if let Some(last) = scan.records.last() {
                previous = Some(last.id);
            }
        }
        // Empty segments go, except the newest: its name keeps the ids'
        // high-water mark.
        let newest_first = segments.back().map(|s| s.first_id);
        let mut kept = VecDeque::with_capacity(segments.len());
        for s in segments {
            if s.entries.is_empty() && Some(s.first_id) != newest_first {
                fs.remove(&s.name)?;
            } else {
                kept.push_back(s);
            }
        }
        let mut segments = kept;
        let natural = segments.back().map_or(0, Segment::end_id);
        let next_id = natural.max(id_floor);
        let mut log = Self {
            fs,
            opts,
            segments: VecDeque::new(),
            next_id,
            total_bytes: 0,
            unsynced: false,
            failed: false,
            scratch: Vec::new(),
        };
        if segments.is_empty() || next_id != natural {
            // Start a segment named after the next id, so the floor is
            // remembered; an empty newest segment it replaces goes.
            log.create_segment(next_id)?;
            let fresh = log.segments.pop_back().expect("just created");
            if segments.back().is_some_and(|s| s.entries.is_empty()) {
                let old = segments.pop_back().expect("checked");
                log.fs.remove(&old.name)?;
            }
            segments.push_back(fresh);
        }
        log.total_bytes = segments.iter().map(|s| s.bytes).sum();
        log.segments = segments;
        Ok((log, recovery))
    }

    fn create_segment(&mut self, first_id: u64) -> io::Result<()> {
        let name = self.opts.segment_name(first_id);
        self.fs.create(&name)?;
        self.segments.push_back(Segment {
            name,
            first_id,
            entries: Vec::new(),
            bytes: 0,
        });
        Ok(())
    }

    /// The id the next appended record gets.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Writes one record; durable only after [`Log::sync`].
    pub fn append(&mut self, meta: u64, payload: &[u8]) -> Result<Appended, LogError> {
        if self.failed {
            return Err(LogError::Failed);
        }
        if payload.len() > self.opts.max_record as usize {
            return Err(LogError::TooLarge(payload.len()));
        }
        let size = (self.opts.header() + payload.len()) as u64;
        let active = self.segments.back().expect("a log always has a segment");
        let new_segment =
            !active.entries.is_empty() && active.bytes + size > self.opts.segment_bytes;
        if new_segment {
            let previous = active.name.clone();
            self.sync()?;
            self.create_segment(self.next_id).map_err(LogError::Io)?;
            self.fs.close(&previous);
        }
        let id = self.next_id;
        self.scratch.clear();
        record::encode(
            &mut self.scratch,
            id,
            self.opts.with_meta.then_some(meta),
            payload,
        );
        let active = self
            .segments
            .back_mut()
            .expect("a log always has a segment");
        if let Err(e) = self.fs.append(&active.name, &self.scratch) {
            // Cut back whatever part of the record reached the file, so the
            // next record does not follow garbage.
            if self.fs.truncate(&active.name, active.bytes).is_err() {
                self.failed = true;
            }
            return Err(LogError::Io(e));
        }
        active.entries.push(Entry {
            id,
            offset: active.bytes,
            len: payload.len() as u32,
            meta,
            settled: false,
        });
        active.bytes += size;
        self.total_bytes += size;
        self.next_id += 1;
        self.unsynced = true;
        Ok(Appended { id, new_segment })
    }

    /// Makes every appended record durable.
    pub fn sync(&mut self) -> Result<(), LogError> {
        if self.failed {
            return Err(LogError::Failed);
        }
        if !self.unsynced {
            return Ok(());
        }
        let name = &self
            .segments
            .back()
            .expect("a log always has a segment")
            .name;
        if let Err(e) = self.fs.sync(name) {
            self.failed = true;
            return Err(LogError::Io(e));
        }
        self.unsynced = false;
        Ok(())
    }

    /// Reads a record's payload with one positional read and checks it
    /// against its checksum (the file may have been damaged since it was
    /// opened). `None` if no record has this id.
    pub fn read(&mut self, id: u64) -> Result<Option<Vec<u8>>, LogError> {
        let Some((s, i)) = self.locate(id) else {
            return Ok(None);
        };
        let segment = &self.segments[s];
        let entry = segment.entries[i];
        let header = self.opts.header();
        let image = self
            .fs
            .read_at(&segment.name, entry.offset, header + entry.len as usize)
            .map_err(LogError::Io)?;
        match record::decode(&image, self.opts.meta_len(), self.opts.max_record) {
            Ok((got, _, payload)) if got == id => Ok(Some(payload.to_vec())),
            _ => Err(LogError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("record {id} in {} fails its checksum", segment.name),
            ))),
        }
    }

    fn locate(&self, id: u64) -> Option<(usize, usize)> {
        let s = self
            .segments
            .partition_point(|s| s.entries.first().is_some_and(|e| e.id <= id))
            .checked_sub(1)?;
        let i = self.segments[s]
            .entries
            .binary_search_by_key(&id, |e| e.id)
            .ok()?;
        Some((s, i))
    }

    /// The record with this id, if the log holds it.
    pub fn entry(&self, id: u64) -> Option<&Entry> {
        let (s, i) = self.locate(id)?;
        Some(&self.segments[s].entries[i])
    }

    /// Marks a record as no longer needed by the caller; whether it existed.
    pub fn settle(&mut self, id: u64) -> bool {
        match self.locate(id) {
            Some((s, i)) => {
                self.segments[s].entries[i].settled = true;
                true
            }
            None => false,
        }
    }

    /// Segments, oldest first; the last one is being written.
    pub fn segments(&self) -> impl DoubleEndedIterator<Item = &Segment> + ExactSizeIterator {
        self.segments.iter()
    }

    /// Every record, oldest first.
    pub fn entries(&self) -> impl DoubleEndedIterator<Item = &Entry> {
        self.segments.iter().flat_map(|s| s.entries.iter())
    }

    /// Settles every record for which `f` says so; how many it settled.
    pub fn settle_where(&mut self, mut f: impl FnMut(&Entry) -> bool) -> u64 {
        let mut n = 0;
        for e in self.segments.iter_mut().flat_map(|s| s.entries.iter_mut()) {
            if !e.settled && f(e) {
                e.settled = true;
                n += 1;
            }
        }
        n
    }

    /// Deletes the oldest segment and returns its records. Deleting the
    /// segment being written starts a new one (ids go on).
    pub fn pop_oldest(&mut self) -> Result<Option<Vec<Entry>>, LogError> {
        if self.segments.len() == 1 {
            if self.segments[0].entries.is_empty() {
                return Ok(None);
            }
            // Its unsynced records go with it.
            self.unsynced = false;
            self.create_segment(self.next_id).map_err(LogError::Io)?;
        }
        let s = self.segments.pop_front().expect("two or more segments");
        self.fs.remove(&s.name).map_err(LogError::Io)?;
        self.total_bytes -= s.bytes;
        Ok(Some(s.entries))
    }

    /// Bytes of every segment.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Bytes one record with this payload takes.
    pub fn record_size(&self, payload_len: usize) -> u64 {
        (self.opts.header() + payload_len) as u64
    }

    pub fn is_failed(&self) -> bool {
        self.failed
    }

    pub fn fs_mut(&mut self) -> &mut F {
        &mut self.fs
    }

    pub fn into_fs(self) -> F {
        self.fs
    }
}

#[cfg(test)]
mod tests;
