//! Detector state shared between hubs through the archive, per gateway, so
//! that a gateway moving to another hub (its hub stopped, a hub joined and
//! the rendezvous moved it) does not send its series back into warm-up.
//!
//! # What is written, where
//! One object per gateway: `detector-state/gateway=<name>.bin` below the
//! archive root, or under the archive's prefix in its bucket when the
//! archive goes to S3 (`<name>` percent-encoded: every byte outside
//! `[A-Za-z0-9_-]` as `%XX`). An 8-byte magic, the format (`u32`), the
//! payload's length (`u64`) and CRC32C (`u32`), little-endian, then the
//! payload: every route's state of the gateway's devices, in the layout of
//! the hub's own snapshots ([`Router::save_gateway`]).
//!
//! # When
//! A hub that shares state (`scoring.state-sharing`) writes the objects of
//! the gateways it scored since the last time every
//! `scoring.state-snapshot-interval` and at a graceful stop. Before it
//! scores the first batch of a gateway in a run, it reads that gateway's
//! object and **adds** the series and devices it does not have; series it
//! has keep their state (its own snapshot restored them, or it is scoring
//! them). So the state a gateway arrives with is its last hub's as of that
//! hub's last write: a hub killed without a graceful stop hands over the
//! state of its last interval.
//!
//! # Damage and failures
//! An object whose magic, format, length or checksum does not hold, or that
//! is larger than `scoring.state-max-bytes`, is not used: the gateway's
//! series learn anew, as without sharing, and the failure is counted and
//! logged. Reads and writes to a bucket give up after
//! [`BUCKET_TIMEOUT`], also counted; after one that timed out the scoring
//! stage leaves the store alone for [`UNREACHABLE_PAUSE`] (gateways
//! arriving meanwhile learn anew, writes wait for the next interval), so
//! an unreachable bucket costs one timeout, not one per gateway.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use object_store::{ObjectStore, ObjectStoreExt};

use super::SnapshotError;
use crate::archive::s3::S3Settings;
use crate::scoring::Router;

const MAGIC: &[u8; 8] = b"IOTSHARE";
const FORMAT: u32 = 1;
const HEADER_BYTES: usize = 8 + 4 + 8 + 4;

/// How long one read or write of a gateway's object in a bucket may take.
pub const BUCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the store is left alone after a read or write timed out.
pub const UNREACHABLE_PAUSE: Duration = Duration::from_secs(60);

/// Whether an error is a timeout of the store (see [`UNREACHABLE_PAUSE`]).
pub fn timed_out(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::TimedOut
}

/// Where the shared state lives: the archive's root or its bucket.
pub enum SharedState {
    Local(PathBuf),
    Bucket {
        settings: Box<S3Settings>,
        store: Arc<dyn ObjectStore>,
        /// How long one read or write may take ([`BUCKET_TIMEOUT`]).
        timeout: Duration,
        /// The object store's async calls, on the scoring thread (made
        /// there, at the first call: a runtime must not be dropped inside
        /// the hub's async one).
        runtime: OnceLock<tokio::runtime::Runtime>,
    },
}

/// The runtime in `cell`, made on first use.
fn runtime(cell: &OnceLock<tokio::runtime::Runtime>) -> io::Result<&tokio::runtime::Runtime> {
    if cell.get().is_none() {
        let made = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let _ = cell.set(made);
    }
    Ok(cell.get().expect("set above"))
}

impl std::fmt::Debug for SharedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SharedState::Local(root) => write!(f, "SharedState::Local({})", root.display()),
            SharedState::Bucket { settings, .. } => {
                write!(
                    f,
                    "SharedState::Bucket({}/{})",
                    settings.bucket, settings.prefix
                )
            }
        }
    }
}

/// The object's path below the archive root.
fn relative(gateway: &str) -> PathBuf {
    let mut name = String::from("gateway=");
    for b in gateway.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            name.push(b as char);
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
    }
    name.push_str(".bin");
    Path::new("detector-state").join(name)
}

/// `payload` with its header.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The payload of a framed object, if its header holds.
pub fn unframe(bytes: &[u8], max_bytes: u64) -> Result<&[u8], SnapshotError> {
    let damaged = |why: &str| SnapshotError::Damaged(why.to_owned());
    if bytes.len() < HEADER_BYTES || &bytes[..8] != MAGIC {
        return Err(damaged("not a shared detector state"));
    }
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    if u32_at(8) != FORMAT {
        return Err(damaged("unknown format"));
    }
    let len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    if len > max_bytes {
        return Err(SnapshotError::TooLarge(len));
    }
    let payload = &bytes[HEADER_BYTES..];
    if payload.len() as u64 != len {
        return Err(damaged("length does not match"));
    }
    if crc32c::crc32c(payload) != u32_at(20) {
        return Err(damaged("checksum does not match"));
    }
    Ok(payload)
}

impl SharedState {
    /// State shared in the archive's bucket (with the archive's settings).
    pub fn bucket(settings: &S3Settings) -> io::Result<Self> {
        let store = settings.connect().map_err(io::Error::other)?;
        Ok(SharedState::Bucket {
            settings: Box::new(settings.clone()),
            store,
            timeout: BUCKET_TIMEOUT,
            runtime: OnceLock::new(),
        })
    }

    /// The same store with reads and writes bounded by `timeout` instead.
    #[cfg(test)]
    pub(crate) fn with_timeout(mut self, t: Duration) -> Self {
        if let SharedState::Bucket { timeout, .. } = &mut self {
            *timeout = t;
        }
        self
    }

    /// Writes the state of `gateway`'s devices held by `router`.
    pub fn write(&self, router: &Router, gateway: &str) -> io::Result<u64> {
        let payload = router
            .save_gateway(gateway, Vec::new())
            .map_err(io::Error::other)?;
        let bytes = frame(&payload);
        match self {
            SharedState::Local(root) => {
                let path = root.join(relative(gateway));
                let dir = path.parent().expect("below detector-state");
                std::fs::create_dir_all(dir)?;
                let tmp = path.with_extension("tmp");
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&bytes)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                std::fs::File::open(dir)?.sync_all()?;
            }
            SharedState::Bucket {
                settings,
                store,
                timeout,
                runtime: runtime_cell,
            } => {
                let key = settings.key(&relative(gateway));
                runtime(runtime_cell)?
                    .block_on(async {
                        tokio::time::timeout(*timeout, store.put(&key, bytes.clone().into())).await
                    })
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "bucket write"))?
                    .map_err(io::Error::other)?;
            }
        }
        Ok(bytes.len() as u64)
    }

    /// Adds to `router` the series and devices of `gateway` it does not
    /// have, from the gateway's object if there is one; how many.
    pub fn read_into(
        &self,
        router: &mut Router,
        gateway: &str,
        max_bytes: u64,
    ) -> Result<usize, SnapshotError> {
        let bytes = match self {
            SharedState::Local(root) => match std::fs::read(root.join(relative(gateway))) {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
                Err(e) => return Err(e.into()),
            },
            SharedState::Bucket {
                settings,
                store,
                timeout,
                runtime: runtime_cell,
            } => {
                let key = settings.key(&relative(gateway));
                let read = async {
                    match store.get(&key).await {
                        Ok(r) => r.bytes().await.map(Some),
                        Err(object_store::Error::NotFound { .. }) => Ok(None),
                        Err(e) => Err(e),
                    }
                };
                // The timer is made inside the runtime (it needs its clock).
                let got = runtime(runtime_cell)?
                    .block_on(async { tokio::time::timeout(*timeout, read).await });
                match got {
                    Err(_) => {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "bucket read").into());
                    }
                    Ok(Err(e)) => return Err(io::Error::other(e).into()),
                    Ok(Ok(None)) => return Ok(0),
                    Ok(Ok(Some(b))) => b.to_vec(),
                }
            }
        };
        let payload = unframe(&bytes, max_bytes)?;
        router
            .merge_state(payload)
            .map(|m| m.series)
            .map_err(|e| SnapshotError::Damaged(format!("cannot decode: {e}")))
    }
}

#[cfg(test)]
mod tests;
