//! The commit lock of a partition directory, shared by the hubs of one
//! archive root.

use std::fs::{self};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::*;

/// A commit lock on one partition directory, shared by the hubs of an
/// archive root: `.commit.lock` created exclusively, holding the owner and
/// the time. A lock older than `STALE_LOCK` (its hub died holding it), or
/// left by this hub before a restart, is broken.
pub(super) struct PartitionLock(PathBuf);

pub(super) const STALE_LOCK: Duration = Duration::from_secs(30);

impl PartitionLock {
    pub(super) fn acquire(partition: &Path, hub_id: &str) -> io::Result<Self> {
        create_dir_durable(partition)?;
        let path = partition.join(".commit.lock");
        let deadline = Instant::now() + STALE_LOCK * 2;
        loop {
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    use std::io::Write;
                    let now = chrono::Utc::now().timestamp_millis();
                    f.write_all(format!("{hub_id} {now}").as_bytes())?;
                    return Ok(Self(path));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let text = fs::read_to_string(&path).unwrap_or_default();
                    let mut parts = text.split_whitespace();
                    let (owner, at) = (parts.next().unwrap_or(""), parts.next());
                    let age_ms = at
                        .and_then(|t| t.parse::<i64>().ok())
                        .map(|t| chrono::Utc::now().timestamp_millis() - t);
                    let stale =
                        owner == hub_id || age_ms.is_none_or(|a| a > STALE_LOCK.as_millis() as i64);
                    if stale || Instant::now() > deadline {
                        let _ = fs::remove_file(&path);
                        continue;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for PartitionLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}
