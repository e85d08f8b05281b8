//! Persisted detector state: what the scorer has learned per series and per
//! device survives a restart, so the next anomaly after it is judged as it
//! would have been without one.
//!
//! # What a snapshot is
//! The scoring stage saves every route's state ([`Router::save_state`])
//! after scoring the batch at WAL position `P`: the state has absorbed
//! exactly the batches at positions `<= P`. File layout: an 8-byte magic,
//! the format version (`u32`), `P` (`u64`), the payload's length (`u64`) and
//! CRC32C (`u32`), all little-endian, then the postcard payload. The
//! payload is streamed to the file (no second copy of the state in memory)
//! and bounded by `scoring.state-max-bytes`.
//!
//! # When a snapshot may be used
//! Restoring a snapshot means the batches `<= P` are not scored again, so
//! their rows must already be in committed archive files. A snapshot is
//! therefore written *pending* (`state-<P>.pending`) and *committed*
//! (renamed to `state-<P>.bin`) only once the archive's low-water mark has
//! passed `P` ([`StateStore::promote`]); only committed snapshots are loaded.
//! The newest committed one is kept (and older ones deleted), and the WAL
//! is trimmed no further than `P + 1` of it, so the batches after it can be
//! replayed. Pending snapshots left by a crash are discarded at start-up:
//! the last committed one and the WAL replay give the same state.
//!
//! # Damage
//! A snapshot whose magic, format, length or checksum does not hold is
//! renamed `*.damaged` (kept for inspection), counted and logged, and the
//! next older committed one is tried; with none, series learn anew. A
//! snapshot whose routes no longer match the configuration (another
//! detector, window or detector configuration) restores only the routes
//! that still match.

pub mod shared;

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::scoring::Router;

const MAGIC: &[u8; 8] = b"IOTDSTAT";
const FORMAT: u32 = 1;
const HEADER_BYTES: usize = 8 + 4 + 8 + 8 + 4;

/// Why a snapshot file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot read the snapshot")]
    Io(#[from] io::Error),
    #[error("the snapshot is damaged: {0}")]
    Damaged(String),
    #[error("the snapshot holds {0} bytes, more than scoring.state-max-bytes allows")]
    TooLarge(u64),
}

/// A loaded snapshot: the WAL position its state has absorbed, and the
/// payload for [`Router::restore_state`].
#[derive(Debug)]
pub struct Snapshot {
    pub position: u64,
    pub payload: Vec<u8>,
}

/// The snapshot directory (`<data-dir>/detector-state`).
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
    max_bytes: u64,
}

/// Counts the bytes through it and their CRC32C.
struct Checksummed<W> {
    inner: W,
    crc: u32,
    len: u64,
    max: u64,
}

impl<W: Write> Write for Checksummed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.len + buf.len() as u64 > self.max {
            return Err(io::Error::other(SnapshotError::TooLarge(
                self.len + buf.len() as u64,
            )));
        }
        let n = self.inner.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn name(position: u64, suffix: &str) -> String {
    format!("state-{position:020}.{suffix}")
}

/// The position and suffix of a snapshot file name.
fn parse(file: &str) -> Option<(u64, &str)> {
    let rest = file.strip_prefix("state-")?;
    let (digits, suffix) = rest.split_once('.')?;
    Some((digits.parse().ok()?, suffix))
}

impl StateStore {
    /// The store in `dir` as it is (for committing at shutdown).
    pub fn at(dir: &Path, max_bytes: u64) -> Self {
        Self {
            dir: dir.to_path_buf(),
            max_bytes,
        }
    }

    /// Opens (creates) the directory; drops temporary files and the pending
    /// snapshots of a previous run (never known to be covered by the
    /// archive).
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let store = Self::at(dir, max_bytes);
        for (_, suffix, path) in store.files()? {
            if suffix == "tmp" || suffix == "pending" {
                fs::remove_file(path)?;
            }
        }
        Ok(store)
    }

    /// `(position, suffix, path)` of every snapshot file, oldest first.
    fn files(&self) -> io::Result<Vec<(u64, String, PathBuf)>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let file = entry.file_name();
            if let Some((position, suffix)) = file.to_str().and_then(parse) {
                out.push((position, suffix.to_owned(), entry.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Saves `router`'s state after the batch at `position` as a pending
    /// snapshot; returns its size in bytes.
    pub fn write_pending(&self, position: u64, router: &Router) -> io::Result<u64> {
        let tmp = self.dir.join(name(position, "tmp"));
        let written = (|| -> io::Result<u64> {
            let mut file = File::create(&tmp)?;
            file.write_all(&[0; HEADER_BYTES])?;
            let sink = Checksummed {
                inner: BufWriter::new(file),
                crc: 0,
                len: 0,
                max: self.max_bytes,
            };
            let mut sink = router.save_state(sink).map_err(|e| {
                io::Error::other(format!(
                    "the detector state cannot be written ({e}); is it larger than scoring.state-max-bytes?"
                ))
            })?;
            sink.flush()?;
            let (crc, len) = (sink.crc, sink.len);
            let mut file = sink.inner.into_inner().map_err(|e| e.into_error())?;
            file.seek(SeekFrom::Start(0))?;
            let mut header = Vec::with_capacity(HEADER_BYTES);
            header.extend_from_slice(MAGIC);
            header.extend_from_slice(&FORMAT.to_le_bytes());
            header.extend_from_slice(&position.to_le_bytes());
            header.extend_from_slice(&len.to_le_bytes());
            header.extend_from_slice(&crc.to_le_bytes());
            file.write_all(&header)?;
            file.sync_all()?;
            Ok(len + HEADER_BYTES as u64)
        })();
        match written {
            Ok(bytes) => {
                fs::rename(&tmp, self.dir.join(name(position, "pending")))?;
                sync_dir(&self.dir)?;
                Ok(bytes)
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Commits the newest pending snapshot whose batches are all archived
    /// (`position < low_water`), deletes what it supersedes, and returns the
    /// position of the newest committed snapshot (the WAL must keep what
    /// follows it).
    pub fn promote(&self, low_water: u64) -> io::Result<Option<u64>> {
        let files = self.files()?;
        let newest_ready = files
            .iter()
            .filter(|(p, s, _)| s == "pending" && *p < low_water)
            .map(|(p, ..)| *p)
            .max();
        if let Some(ready) = newest_ready {
            fs::rename(
                self.dir.join(name(ready, "pending")),
                self.dir.join(name(ready, "bin")),
            )?;
            for (p, s, path) in &files {
                if *p < ready && (s == "pending" || s == "bin") {
                    fs::remove_file(path)?;
                }
            }
            sync_dir(&self.dir)?;
        }
        self.newest_committed()
    }

    /// The position of the newest committed snapshot.
    pub fn newest_committed(&self) -> io::Result<Option<u64>> {
        Ok(self
            .files()?
            .iter()
            .filter(|(_, s, _)| s == "bin")
            .map(|(p, ..)| *p)
            .max())
    }

    /// The newest committed snapshot that reads back whole. Damaged ones
    /// are renamed `*.damaged` and reported through `refused`.
    pub fn load(
        &self,
        mut refused: impl FnMut(&Path, &SnapshotError),
    ) -> io::Result<Option<Snapshot>> {
        let files = self.files()?;
        for (position, _, path) in files.iter().rev().filter(|(_, s, _)| s == "bin") {
            match self.read(path, *position) {
                Ok(snapshot) => return Ok(Some(snapshot)),
                Err(e) => {
                    refused(path, &e);
                    let damaged = path.with_extension("damaged");
                    fs::rename(path, &damaged)?;
                }
            }
        }
        Ok(None)
    }

    fn read(&self, path: &Path, position: u64) -> Result<Snapshot, SnapshotError> {
        let mut file = File::open(path)?;
        let size = file.metadata()?.len();
        if size > self.max_bytes.saturating_add(HEADER_BYTES as u64) {
            return Err(SnapshotError::TooLarge(size));
        }
        let mut header = [0u8; HEADER_BYTES];
        file.read_exact(&mut header)
            .map_err(|_| SnapshotError::Damaged("shorter than its header".into()))?;
        let u32_at = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4"));
        let u64_at = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8"));
        if &header[..8] != MAGIC {
            return Err(SnapshotError::Damaged("not a detector state file".into()));
        }
        if u32_at(8) != FORMAT {
            return Err(SnapshotError::Damaged(format!(
                "format {} (this hub reads {FORMAT})",
                u32_at(8)
            )));
        }
        if u64_at(12) != position {
            return Err(SnapshotError::Damaged(
                "its position differs from its name".into(),
            ));
        }
        let len = u64_at(20);
        if len != size - HEADER_BYTES as u64 {
            return Err(SnapshotError::Damaged(format!(
                "the header says {len} payload bytes, the file holds {}",
                size - HEADER_BYTES as u64
            )));
        }
        let mut payload = Vec::with_capacity(len as usize);
        file.read_to_end(&mut payload)?;
        if crc32c::crc32c(&payload) != u32_at(28) {
            return Err(SnapshotError::Damaged("checksum mismatch".into()));
        }
        Ok(Snapshot { position, payload })
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests;
