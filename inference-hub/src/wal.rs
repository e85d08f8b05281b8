//! The hub's write-ahead log: the point where a batch becomes durable.
//!
//! A batch is acknowledged to its gateway once its envelope bytes are in the
//! log and the log is fsynced (group commit: one fsync covers every batch that
//! arrived while the previous one ran). Scoring and Parquet archiving happen
//! after the acknowledgement and are redone from the log after a crash.
//!
//! # Layout
//! `<data-dir>/wal/<first-pos:020>.wal` segments. Each record is
//! `len: u32 | crc32c(pos || payload): u32 | pos: u64 | payload`, little-endian.
//! `pos` numbers records consecutively across segments; it is the batch's
//! position in this hub's log and names archive files (see `archive`).
//!
//! # Recovery never wedges
//! Opening scans every segment. A record that is cut short or fails its
//! checksum ends the segment: the rest is truncated (the torn tail of a power
//! loss) and counted; if this happens before the last segment the lost bytes
//! are reported as corruption. A new segment is started on every open, so an
//! old segment is never appended to. Segments are deleted whole, only when
//! every record in them has been archived.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const RECORD_HEADER: usize = 16;
/// Upper bound of one record's payload, far above any accepted envelope.
const MAX_RECORD: u32 = 1 << 30;

#[derive(Debug)]
struct Segment {
    first_pos: u64,
    /// Position after the last record (== first_pos when empty).
    end_pos: u64,
    path: PathBuf,
}

/// What opening the log found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WalRecovery {
    pub segments: usize,
    pub records: u64,
    /// Bytes cut from the end of a segment (torn or corrupt tail).
    pub truncated_bytes: u64,
    /// Segments whose damage was not at the very end of the log.
    pub corrupt_segments: usize,
}

#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    segment_bytes: u64,
    closed: Vec<Segment>,
    active: Segment,
    writer: BufWriter<File>,
    active_len: u64,
}

impl Wal {
    /// Opens (creating if needed) the log in `dir`, repairing torn tails.
    pub fn open(dir: &Path, segment_bytes: u64) -> io::Result<(Self, WalRecovery)> {
        fs::create_dir_all(dir)?;
        let mut paths: Vec<(u64, PathBuf)> = fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let pos = name.strip_suffix(".wal")?.parse().ok()?;
                Some((pos, e.path()))
            })
            .collect();
        paths.sort();
        let mut recovery = WalRecovery::default();
        let mut closed = Vec::new();
        let count = paths.len();
        for (i, (first_pos, path)) in paths.into_iter().enumerate() {
            let (end_pos, good_len, file_len) = scan_segment(&path, first_pos)?;
            recovery.segments += 1;
            recovery.records += end_pos - first_pos;
            if good_len < file_len {
                recovery.truncated_bytes += file_len - good_len;
                if i + 1 < count {
                    recovery.corrupt_segments += 1;
                }
                let f = OpenOptions::new().write(true).open(&path)?;
                f.set_len(good_len)?;
                f.sync_all()?;
            }
            if end_pos == first_pos {
                fs::remove_file(&path)?;
            } else {
                closed.push(Segment {
                    first_pos,
                    end_pos,
                    path,
                });
            }
        }
        let next = closed.last().map_or(0, |s| s.end_pos);
        let (active, writer) = create_segment(dir, next)?;
        Ok((
            Self {
                dir: dir.to_owned(),
                segment_bytes,
                closed,
                active,
                writer,
                active_len: 0,
            },
            recovery,
        ))
    }

    /// Position the next appended record will get.
    pub fn next_pos(&self) -> u64 {
        self.active.end_pos
    }

    /// Buffers one record; durable only after [`Wal::sync`]. Returns its
    /// position and whether a new segment was started before it.
    pub fn append(&mut self, payload: &[u8]) -> io::Result<(u64, bool)> {
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|&l| l <= MAX_RECORD)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "WAL record too large"))?;
        let mut rolled = false;
        if self.active_len >= self.segment_bytes {
            self.roll()?;
            rolled = true;
        }
        let pos = self.active.end_pos;
        let mut crc = crc32c::crc32c(&pos.to_le_bytes());
        crc = crc32c::crc32c_append(crc, payload);
        self.writer.write_all(&len.to_le_bytes())?;
        self.writer.write_all(&crc.to_le_bytes())?;
        self.writer.write_all(&pos.to_le_bytes())?;
        self.writer.write_all(payload)?;
        self.active.end_pos += 1;
        self.active_len += RECORD_HEADER as u64 + payload.len() as u64;
        Ok((pos, rolled))
    }

    /// Writes buffered records and fsyncs the active segment.
    pub fn sync(&mut self) -> io::Result<()> {
        self.writer.flush()?;
        self.writer.get_ref().sync_data()
    }

    fn roll(&mut self) -> io::Result<()> {
        self.sync()?;
        let (segment, writer) = create_segment(&self.dir, self.active.end_pos)?;
        let old = std::mem::replace(&mut self.active, segment);
        self.writer = writer;
        self.active_len = 0;
        self.closed.push(old);
        Ok(())
    }

    /// Deletes closed segments whose records all lie below `pos`. Returns the
    /// number deleted.
    pub fn delete_below(&mut self, pos: u64) -> io::Result<usize> {
        let keep_from = self
            .closed
            .iter()
            .position(|s| s.end_pos > pos)
            .unwrap_or(self.closed.len());
        for s in self.closed.drain(..keep_from) {
            fs::remove_file(&s.path)?;
        }
        if keep_from > 0 {
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(keep_from)
    }

    /// Reads every record of the closed segments at or after `from`, in
    /// order, one at a time (memory: one record).
    pub fn replay(&self, from: u64, mut f: impl FnMut(u64, &[u8])) -> io::Result<()> {
        let mut buf = Vec::new();
        for seg in self.closed.iter().filter(|s| s.end_pos > from) {
            let mut r = BufReader::new(File::open(&seg.path)?);
            for _ in seg.first_pos..seg.end_pos {
                let Some(pos) = read_record(&mut r, &mut buf)? else {
                    break;
                };
                if pos >= from {
                    f(pos, &buf);
                }
            }
        }
        Ok(())
    }
}

fn create_segment(dir: &Path, first_pos: u64) -> io::Result<(Segment, BufWriter<File>)> {
    let path = dir.join(format!("{first_pos:020}.wal"));
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)?;
    file.sync_all()?;
    File::open(dir)?.sync_all()?;
    Ok((
        Segment {
            first_pos,
            end_pos: first_pos,
            path,
        },
        BufWriter::with_capacity(1 << 20, file),
    ))
}

/// Reads one record into `buf`; `None` at a clean end, a torn record or a
/// checksum failure.
fn read_record(r: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<Option<u64>> {
    let mut head = [0u8; RECORD_HEADER];
    match r.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
    let pos = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
    if len > MAX_RECORD {
        return Ok(None);
    }
    buf.resize(len as usize, 0);
    match r.read_exact(buf) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let actual = crc32c::crc32c_append(crc32c::crc32c(&pos.to_le_bytes()), buf);
    Ok((actual == crc).then_some(pos))
}

/// Returns (end position, length of the valid prefix, file length).
fn scan_segment(path: &Path, first_pos: u64) -> io::Result<(u64, u64, u64)> {
    let mut file = File::open(path)?;
    let file_len = file.seek(SeekFrom::End(0))?;
    file.seek(SeekFrom::Start(0))?;
    let mut r = BufReader::new(file);
    let mut buf = Vec::new();
    let (mut expected, mut good) = (first_pos, 0u64);
    while let Some(pos) = read_record(&mut r, &mut buf)? {
        if pos != expected {
            break;
        }
        expected += 1;
        good += RECORD_HEADER as u64 + buf.len() as u64;
    }
    Ok((expected, good, file_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(wal: &Wal, from: u64) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        wal.replay(from, |p, b| out.push((p, b.to_vec()))).unwrap();
        out
    }

    #[test]
    fn records_survive_reopen_in_order_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 64).unwrap();
        for i in 0..10u8 {
            assert_eq!(wal.append(&[i; 40]).unwrap().0, u64::from(i));
        }
        wal.sync().unwrap();
        drop(wal);
        let (wal, rec) = Wal::open(dir.path(), 64).unwrap();
        assert_eq!(rec.records, 10);
        assert_eq!(rec.truncated_bytes, 0);
        let got = records(&wal, 0);
        assert_eq!(got.len(), 10);
        assert!(
            got.iter()
                .enumerate()
                .all(|(i, (p, b))| *p == i as u64 && b == &vec![i as u8; 40])
        );
        assert_eq!(wal.next_pos(), 10);
        assert_eq!(records(&wal, 7).len(), 3);
    }

    #[test]
    fn torn_tail_is_truncated_and_the_log_keeps_going() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 1 << 20).unwrap();
        for i in 0..5u8 {
            wal.append(&[i; 100]).unwrap();
        }
        wal.sync().unwrap();
        drop(wal);
        let seg = dir.path().join(format!("{:020}.wal", 0));
        let len = fs::metadata(&seg).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 30)
            .unwrap();
        let (mut wal, rec) = Wal::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(rec.records, 4);
        assert_eq!(rec.truncated_bytes, 116 - 30);
        assert_eq!(wal.append(b"after").unwrap().0, 4);
        wal.sync().unwrap();
        drop(wal);
        let (wal, _) = Wal::open(dir.path(), 1 << 20).unwrap();
        let got = records(&wal, 0);
        assert_eq!(got.len(), 5);
        assert_eq!(got[4], (4, b"after".to_vec()));
    }

    #[test]
    fn corrupt_record_ends_its_segment_without_blocking_startup() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 1 << 20).unwrap();
        for i in 0..5u8 {
            wal.append(&[i; 100]).unwrap();
        }
        wal.sync().unwrap();
        drop(wal);
        let seg = dir.path().join(format!("{:020}.wal", 0));
        let mut bytes = fs::read(&seg).unwrap();
        bytes[2 * 116 + 20] ^= 0xff; // inside record 2's payload
        fs::write(&seg, bytes).unwrap();
        let (wal, rec) = Wal::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(rec.records, 2);
        assert_eq!(records(&wal, 0).len(), 2);
    }

    #[test]
    fn deletes_only_whole_segments_below_the_position() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 100).unwrap();
        for i in 0..6u8 {
            wal.append(&[i; 90]).unwrap(); // one record per segment
        }
        wal.sync().unwrap();
        assert_eq!(wal.delete_below(3).unwrap(), 3);
        assert_eq!(wal.delete_below(3).unwrap(), 0);
        drop(wal);
        let (wal, _) = Wal::open(dir.path(), 100).unwrap();
        let got: Vec<u64> = records(&wal, 0).into_iter().map(|(p, _)| p).collect();
        assert_eq!(got, vec![3, 4, 5]);
    }
}
