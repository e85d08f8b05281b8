//! The hub's write-ahead log: the point where a batch becomes durable.
//!
//! A batch is acknowledged to its gateway once its envelope bytes are in the
//! log and the log is fsynced (group commit: one fsync covers every batch that
//! arrived while the previous one ran). Scoring and Parquet archiving happen
//! after the acknowledgement and are redone from the log after a crash.
//!
//! # Layout
//! A [`seglog`] log in `<data-dir>/wal/`: `<first-pos:020>.wal` segments of
//! records `len: u32 | crc32c(pos || payload): u32 | pos: u64 | payload`.
//! `pos` numbers records consecutively across segments and restarts; it is
//! the batch's position in this hub's log and names archive files (see
//! `archive`), so it must never go back: the newest segment is kept even when
//! empty, and [`Wal::open`] starts at or above a floor the hub takes from
//! what the archive and the dedup snapshot have already seen.
//!
//! # Recovery never wedges; damage is loud
//! A torn tail (a write cut short, never acknowledged) is truncated. A
//! damaged record costs that record only: the log resynchronises on the next
//! valid one, keeps the bad bytes in `<segment>.corrupt`, and reports which
//! positions were lost; the hub logs them at ERROR, counts them and records
//! them in its loss ledger (`losses`). Segments are deleted whole, only when
//! every record in them has been archived.

use std::io;
use std::path::Path;

use seglog::fs::DirFs;
use seglog::{Log, LogError, LogOptions, Recovery};

/// Upper bound of one record's payload, far above any accepted envelope.
const MAX_RECORD: u32 = 1 << 30;

#[derive(Debug)]
pub struct Wal {
    log: Log<DirFs>,
}

fn io_error(e: LogError) -> io::Error {
    match e {
        LogError::Io(e) => e,
        other => io::Error::other(other),
    }
}

impl Wal {
    /// Opens (creating if needed) the log in `dir`, repairing torn tails and
    /// quarantining damage. Positions continue at or above `floor`.
    pub fn open(dir: &Path, segment_bytes: u64, floor: u64) -> io::Result<(Self, Recovery)> {
        let opts = LogOptions {
            suffix: ".wal",
            with_meta: false,
            segment_bytes,
            max_record: MAX_RECORD,
            // Every record is an envelope with its own checksum.
            payload_check: Some(schemas::envelope::checksum_ok),
        };
        let (log, recovery) = Log::open(DirFs::new(dir)?, opts, floor)?;
        Ok((Self { log }, recovery))
    }

    /// Position the next appended record will get.
    pub fn next_pos(&self) -> u64 {
        self.log.next_id()
    }

    /// Buffers one record; durable only after [`Wal::sync`]. Returns its
    /// position and whether a new segment was started before it.
    pub fn append(&mut self, payload: &[u8]) -> io::Result<(u64, bool)> {
        let a = self.log.append(0, payload).map_err(io_error)?;
        Ok((a.id, a.new_segment))
    }

    /// Whether an fsync or a cut-back failed: the log then refuses appends
    /// until it is reopened (other errors are transient).
    pub fn is_failed(&self) -> bool {
        self.log.is_failed()
    }

    /// Fsyncs everything appended.
    pub fn sync(&mut self) -> io::Result<()> {
        self.log.sync().map_err(io_error)
    }

    /// Deletes closed segments whose records all lie below `pos`. Returns the
    /// number deleted.
    pub fn delete_below(&mut self, pos: u64) -> io::Result<usize> {
        let mut deleted = 0;
        while self.log.segments().len() > 1
            && self
                .log
                .segments()
                .next()
                .is_some_and(|s| s.entries().last().is_none_or(|e| e.id < pos))
        {
            self.log.pop_oldest().map_err(io_error)?;
            deleted += 1;
        }
        Ok(deleted)
    }

    /// Positions of the records at or after `from`, oldest first.
    pub fn positions_from(&self, from: u64) -> Vec<u64> {
        self.log
            .entries()
            .map(|e| e.id)
            .filter(|&p| p >= from)
            .collect()
    }

    /// One record's bytes, checked against its checksum.
    pub fn read(&mut self, pos: u64) -> io::Result<Option<Vec<u8>>> {
        self.log.read(pos).map_err(io_error)
    }

    /// Reads every record at or after `from`, in order, one at a time
    /// (memory: one record). A record that fails its checksum now (damaged
    /// since the log was opened) is passed as an error.
    pub fn replay(
        &mut self,
        from: u64,
        mut f: impl FnMut(u64, io::Result<&[u8]>),
    ) -> io::Result<()> {
        for pos in self.positions_from(from) {
            match self.log.read(pos) {
                Ok(Some(bytes)) => f(pos, Ok(&bytes)),
                Ok(None) => {}
                Err(LogError::Io(e)) if e.kind() == io::ErrorKind::InvalidData => f(pos, Err(e)),
                Err(e) => return Err(io_error(e)),
            }
        }
        Ok(())
    }
}

/// Best effort: the headers of the batches in a damaged stretch of the WAL,
/// read from the quarantined bytes (envelope headers found in them,
/// unverified), so that an ERROR can name what was lost.
pub fn salvage_headers(dir: &Path, damage: &seglog::Damage) -> Vec<schemas::envelope::BatchHeader> {
    use std::io::{Read, Seek, SeekFrom};
    let mut bytes = Vec::new();
    let read = std::fs::File::open(dir.join(&damage.quarantine)).and_then(|mut f| {
        f.seek(SeekFrom::Start(damage.quarantine_offset))?;
        f.take(damage.bytes).read_to_end(&mut bytes)
    });
    if read.is_err() {
        return Vec::new();
    }
    let mut headers: Vec<schemas::envelope::BatchHeader> = Vec::new();
    let mut at = 0;
    while let Some(found) = bytes[at..]
        .windows(schemas::envelope::MAGIC.len())
        .position(|w| w == schemas::envelope::MAGIC)
    {
        let start = at + found;
        if let Some((header, _)) = schemas::envelope::salvage_header(&bytes[start..])
            && !headers.iter().any(|h| h.key() == header.key())
        {
            headers.push(header);
        }
        at = start + 1;
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(wal: &mut Wal, from: u64) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        wal.replay(from, |p, b| out.push((p, b.unwrap().to_vec())))
            .unwrap();
        out
    }

    #[test]
    fn records_survive_reopen_in_order_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 64, 0).unwrap();
        for i in 0..10u8 {
            assert_eq!(wal.append(&[i; 40]).unwrap().0, u64::from(i));
        }
        wal.sync().unwrap();
        drop(wal);
        let (mut wal, rec) = Wal::open(dir.path(), 64, 0).unwrap();
        assert_eq!(rec.records, 10);
        assert_eq!(rec.torn_bytes, 0);
        let got = records(&mut wal, 0);
        assert_eq!(got.len(), 10);
        assert!(
            got.iter()
                .enumerate()
                .all(|(i, (p, b))| *p == i as u64 && b == &vec![i as u8; 40])
        );
        assert_eq!(wal.next_pos(), 10);
        assert_eq!(records(&mut wal, 7).len(), 3);
    }

    #[test]
    fn a_flipped_byte_costs_one_batch_and_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 1 << 20, 0).unwrap();
        for i in 0..10u8 {
            wal.append(&[i; 100]).unwrap();
        }
        wal.sync().unwrap();
        drop(wal);
        let seg = dir.path().join(format!("{:020}.wal", 0));
        let mut bytes = std::fs::read(&seg).unwrap();
        let middle = bytes.len() / 2 + 20; // inside record 5's payload
        bytes[middle] ^= 0xff;
        std::fs::write(&seg, bytes).unwrap();
        let (mut wal, rec) = Wal::open(dir.path(), 1 << 20, 0).unwrap();
        assert_eq!(rec.damage.len(), 1);
        assert_eq!(rec.damage[0].lost, seglog::Lost::Ids { first: 5, last: 5 });
        assert_eq!(records(&mut wal, 0).len(), 9);
    }

    #[test]
    fn positions_continue_after_an_idle_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 64, 0).unwrap();
        for i in 0..5u8 {
            wal.append(&[i; 40]).unwrap();
        }
        wal.sync().unwrap();
        wal.delete_below(5).unwrap();
        drop(wal);
        // Started and stopped with no traffic, then started again.
        let (wal, _) = Wal::open(dir.path(), 64, 0).unwrap();
        drop(wal);
        let (mut wal, _) = Wal::open(dir.path(), 64, 0).unwrap();
        assert_eq!(wal.append(b"next").unwrap().0, 5);
    }

    #[test]
    fn deletes_only_whole_segments_below_the_position() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 100, 0).unwrap();
        for i in 0..6u8 {
            wal.append(&[i; 90]).unwrap(); // one record per segment
        }
        wal.sync().unwrap();
        assert_eq!(wal.delete_below(3).unwrap(), 3);
        assert_eq!(wal.delete_below(3).unwrap(), 0);
        drop(wal);
        let (mut wal, _) = Wal::open(dir.path(), 100, 0).unwrap();
        let got: Vec<u64> = records(&mut wal, 0).into_iter().map(|(p, _)| p).collect();
        assert_eq!(got, vec![3, 4, 5]);
    }
}
