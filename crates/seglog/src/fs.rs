//! A log's view of its directory, behind a trait so that tests can inject
//! short writes, I/O errors and power loss.
//!
//! [`DirFs`] is the real thing (`std::fs`, with directory fsyncs on create and
//! remove). [`FaultyFs`] keeps files in memory, separating what has been
//! fsynced from what has only been written: [`FaultyFs::crash`] throws away
//! every unsynced byte, exactly what a power cut does to a page cache.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;

pub trait LogFs: Send {
    /// Names of the files in the log's directory.
    fn list(&mut self) -> io::Result<Vec<String>>;
    fn read(&mut self, name: &str) -> io::Result<Vec<u8>>;
    /// Reads exactly `len` bytes at `offset`.
    fn read_at(&mut self, name: &str, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// The file's length in bytes.
    fn size(&mut self, name: &str) -> io::Result<u64>;
    /// Creates an empty file and makes its directory entry durable.
    fn create(&mut self, name: &str) -> io::Result<()>;
    /// Appends; may write only part of `data` before failing.
    fn append(&mut self, name: &str, data: &[u8]) -> io::Result<()>;
    /// Makes everything appended to `name` durable.
    fn sync(&mut self, name: &str) -> io::Result<()>;
    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()>;
    /// Removes a file and makes the removal durable.
    fn remove(&mut self, name: &str) -> io::Result<()>;
    fn rename(&mut self, from: &str, to: &str) -> io::Result<()>;
    /// The file will not be written again for a while: release what is
    /// held for writing it.
    fn close(&mut self, _name: &str) {}
}

/// A real directory.
#[derive(Debug)]
pub struct DirFs {
    dir: PathBuf,
    open: BTreeMap<String, File>,
}

impl DirFs {
    pub fn new(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            open: BTreeMap::new(),
        })
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    fn handle(&mut self, name: &str) -> io::Result<&mut File> {
        if !self.open.contains_key(name) {
            let f = OpenOptions::new().write(true).open(self.dir.join(name))?;
            self.open.insert(name.to_owned(), f);
        }
        Ok(self.open.get_mut(name).expect("inserted"))
    }
}

impl LogFs for DirFs {
    fn list(&mut self) -> io::Result<Vec<String>> {
        let mut names: Vec<String> = fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        Ok(names)
    }

    fn read(&mut self, name: &str) -> io::Result<Vec<u8>> {
        fs::read(self.dir.join(name))
    }

    fn read_at(&mut self, name: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len];
        File::open(self.dir.join(name))?.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    fn size(&mut self, name: &str) -> io::Result<u64> {
        Ok(fs::metadata(self.dir.join(name))?.len())
    }

    fn create(&mut self, name: &str) -> io::Result<()> {
        // The handle is kept: appends, syncs and cut-backs of this file
        // never need a new descriptor (so running out of them cannot turn
        // a clean failure into a doubtful one).
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(self.dir.join(name))?;
        file.sync_all()?;
        self.sync_dir()?;
        self.open.insert(name.to_owned(), file);
        Ok(())
    }

    fn append(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        use std::io::{Seek, SeekFrom};
        let file = self.handle(name)?;
        file.seek(SeekFrom::End(0))?;
        file.write_all(data)
    }

    fn sync(&mut self, name: &str) -> io::Result<()> {
        self.handle(name)?.sync_data()
    }

    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()> {
        let f = self.handle(name)?;
        f.set_len(len)?;
        f.sync_all()
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        self.open.remove(name);
        fs::remove_file(self.dir.join(name))?;
        self.sync_dir()
    }

    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        self.open.remove(from);
        self.open.remove(to);
        fs::rename(self.dir.join(from), self.dir.join(to))?;
        self.sync_dir()
    }

    fn close(&mut self, name: &str) {
        self.open.remove(name);
    }
}

/// A fault that [`FaultyFs`] injects into the next write-like call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The next append writes only this many bytes, then fails.
    ShortWrite(usize),
    /// The next append, sync or create fails without doing anything.
    IoError,
}

#[derive(Debug, Default, Clone)]
struct MemFile {
    durable: Vec<u8>,
    written: Vec<u8>,
    /// Whether the directory entry itself is durable.
    entry_durable: bool,
}

/// In-memory files with power-loss semantics and injectable faults.
#[derive(Debug, Default, Clone)]
pub struct FaultyFs {
    files: BTreeMap<String, MemFile>,
    next_fault: Option<Fault>,
}

impl FaultyFs {
    pub fn inject(&mut self, fault: Fault) {
        self.next_fault = Some(fault);
    }

    /// Power loss: only fsynced bytes and durable directory entries survive.
    pub fn crash(&mut self) {
        self.files.retain(|_, f| f.entry_durable);
        for f in self.files.values_mut() {
            f.written = f.durable.clone();
        }
        self.next_fault = None;
    }

    /// Disarms a fault that was never triggered (a new process does not
    /// inherit the old one's transient failures).
    pub fn clear_fault(&mut self) {
        self.next_fault = None;
    }

    /// Direct access for corruption tests.
    pub fn bytes_mut(&mut self, name: &str) -> Option<&mut Vec<u8>> {
        let f = self.files.get_mut(name)?;
        Some(&mut f.written)
    }

    /// Damages one byte of a file, durably (a bad sector, not a write in
    /// flight). Does nothing past the end.
    pub fn flip(&mut self, name: &str, offset: u64) {
        if let Some(f) = self.files.get_mut(name) {
            let at = offset as usize;
            if let Some(b) = f.written.get_mut(at) {
                *b ^= 0xa5;
            }
            if let Some(b) = f.durable.get_mut(at) {
                *b ^= 0xa5;
            }
        }
    }

    pub fn total_bytes(&self) -> usize {
        self.files.values().map(|f| f.written.len()).sum()
    }

    fn fault(&mut self) -> Option<Fault> {
        self.next_fault.take()
    }

    fn missing(name: &str) -> io::Error {
        io::Error::new(io::ErrorKind::NotFound, name.to_owned())
    }
}

impl LogFs for FaultyFs {
    fn list(&mut self) -> io::Result<Vec<String>> {
        Ok(self.files.keys().cloned().collect())
    }

    fn read(&mut self, name: &str) -> io::Result<Vec<u8>> {
        self.files
            .get(name)
            .map(|f| f.written.clone())
            .ok_or_else(|| Self::missing(name))
    }

    fn read_at(&mut self, name: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let f = self.files.get(name).ok_or_else(|| Self::missing(name))?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        f.written
            .get(start..start.saturating_add(len))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))
    }

    fn size(&mut self, name: &str) -> io::Result<u64> {
        self.files
            .get(name)
            .map(|f| f.written.len() as u64)
            .ok_or_else(|| Self::missing(name))
    }

    fn create(&mut self, name: &str) -> io::Result<()> {
        if let Some(Fault::IoError) = self.fault() {
            return Err(io::Error::other("injected create failure"));
        }
        self.files.insert(
            name.to_owned(),
            MemFile {
                entry_durable: true,
                ..MemFile::default()
            },
        );
        Ok(())
    }

    fn append(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        let fault = self.fault();
        let f = self
            .files
            .get_mut(name)
            .ok_or_else(|| Self::missing(name))?;
        match fault {
            Some(Fault::ShortWrite(n)) => {
                f.written.extend_from_slice(&data[..n.min(data.len())]);
                Err(io::Error::other("injected short write"))
            }
            Some(Fault::IoError) => Err(io::Error::other("injected write failure")),
            None => {
                f.written.extend_from_slice(data);
                Ok(())
            }
        }
    }

    fn sync(&mut self, name: &str) -> io::Result<()> {
        if let Some(Fault::IoError) = self.fault() {
            return Err(io::Error::other("injected fsync failure"));
        }
        let f = self
            .files
            .get_mut(name)
            .ok_or_else(|| Self::missing(name))?;
        f.durable = f.written.clone();
        Ok(())
    }

    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()> {
        let f = self
            .files
            .get_mut(name)
            .ok_or_else(|| Self::missing(name))?;
        f.written.truncate(len as usize);
        f.durable = f.written.clone();
        Ok(())
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        self.files
            .remove(name)
            .map(drop)
            .ok_or_else(|| Self::missing(name))
    }

    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        let f = self.files.remove(from).ok_or_else(|| Self::missing(from))?;
        self.files.insert(to.to_owned(), f);
        Ok(())
    }
}
