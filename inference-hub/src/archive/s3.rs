//! Archiving to S3-compatible object storage (`[archive.s3]`).
//!
//! Files are written and committed locally exactly as for a local archive
//! (the local root becomes a staging area), then uploaded by a background
//! thread under the same relative key (`<prefix>/table=.../hub=.../<name>`).
//! A PUT makes an object visible whole, so readers of the bucket never see a
//! torn file. The local copy is deleted once the upload succeeded; uploads are
//! retried with backoff, and files still local at start-up (a crash, or an
//! outage of the object store) are uploaded then. Re-uploading a file after a
//! crash writes the same key with the same bytes, so nothing is duplicated.
//!
//! At start-up the hub lists its own objects: their names carry the WAL range,
//! so WAL replay skips what the bucket already holds, as it does for local
//! files. Compaction is local-only (an object store has no atomic swap of a
//! set of objects); with S3, files are sized by `target-file-bytes` and
//! `max-file-age` when they are written.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};

use crate::stats::HubStats;

/// `[archive.s3]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct S3Settings {
    pub bucket: String,
    /// Key prefix of the archive inside the bucket (no leading slash).
    #[serde(default)]
    pub prefix: String,
    /// For S3-compatible stores (MinIO, Ceph, moto); absent = AWS.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default = "default_region")]
    pub region: String,
    /// Plain-HTTP endpoints (tests, a store on a private network).
    #[serde(default)]
    pub allow_http: bool,
    /// Credentials; absent = the standard `AWS_*` environment variables.
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<String>,
}

fn default_region() -> String {
    "us-east-1".into()
}

impl S3Settings {
    pub fn connect(&self) -> object_store::Result<Arc<dyn ObjectStore>> {
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&self.bucket)
            .with_region(&self.region)
            .with_allow_http(self.allow_http);
        if let Some(e) = &self.endpoint {
            b = b.with_endpoint(e);
        }
        if let (Some(k), Some(s)) = (&self.access_key_id, &self.secret_access_key) {
            b = b.with_access_key_id(k).with_secret_access_key(s);
        }
        Ok(Arc::new(b.build()?))
    }

    /// The object key of a file at `relative` below the archive root.
    pub fn key(&self, relative: &Path) -> ObjectPath {
        let rel = relative.to_string_lossy();
        let prefix = self.prefix.trim_matches('/');
        if prefix.is_empty() {
            ObjectPath::from(rel.as_ref())
        } else {
            ObjectPath::from(format!("{prefix}/{rel}"))
        }
    }
}

/// A blocking runtime for the object store's async API, on the calling
/// thread.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Keys (relative to the prefix) of this hub's committed objects.
pub fn list_own(settings: &S3Settings, hub_id: &str) -> std::io::Result<Vec<PathBuf>> {
    let store = settings.connect().map_err(std::io::Error::other)?;
    let prefix = settings.prefix.trim_matches('/').to_owned();
    let marker = format!("/hub={hub_id}/");
    runtime()?.block_on(async {
        use futures_util::TryStreamExt;
        let root = (!prefix.is_empty()).then(|| ObjectPath::from(prefix.as_str()));
        let objects: Vec<object_store::ObjectMeta> = store
            .list(root.as_ref())
            .try_collect()
            .await
            .map_err(std::io::Error::other)?;
        Ok(objects
            .into_iter()
            .map(|o| o.location.to_string())
            .filter(|k| k.contains(&marker) && k.ends_with(".parquet"))
            .map(|k| {
                PathBuf::from(
                    k.strip_prefix(&format!("{prefix}/"))
                        .unwrap_or(&k)
                        .to_owned(),
                )
            })
            .collect())
    })
}

/// The background uploader.
#[derive(Debug)]
pub struct Uploader {
    tx: Option<mpsc::Sender<PathBuf>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Uploader {
    /// Starts the thread and queues every committed file still under
    /// `local_root` (left by a crash or an outage).
    pub fn start(
        settings: S3Settings,
        local_root: PathBuf,
        stats: Arc<HubStats>,
    ) -> std::io::Result<Self> {
        let store = settings.connect().map_err(std::io::Error::other)?;
        let (tx, rx) = mpsc::channel::<PathBuf>();
        for table in super::Table::ALL {
            for f in super::committed_files(&local_root, table)? {
                let _ = tx.send(f);
            }
        }
        let thread = std::thread::Builder::new()
            .name("hub-s3-upload".into())
            .spawn(move || {
                let rt = match runtime() {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the S3 uploader");
                        return;
                    }
                };
                for file in rx {
                    upload_until_done(&rt, &store, &settings, &local_root, &file, &stats);
                }
            })?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    pub fn enqueue(&self, file: PathBuf) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(file);
        }
    }

    /// Finishes the queued uploads (shutdown).
    pub fn finish(mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn upload_until_done(
    rt: &tokio::runtime::Runtime,
    store: &Arc<dyn ObjectStore>,
    settings: &S3Settings,
    local_root: &Path,
    file: &Path,
    stats: &HubStats,
) {
    let Ok(relative) = file.strip_prefix(local_root) else {
        return;
    };
    let key = settings.key(relative);
    let mut attempt = 0u32;
    loop {
        let bytes = match std::fs::read(file) {
            Ok(b) => b,
            // Already uploaded and removed (queued twice at start-up).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::error!(path = %file.display(), error = %e, "cannot read a committed file for upload");
                return;
            }
        };
        let len = bytes.len() as u64;
        match rt.block_on(store.put(&key, bytes.into())) {
            Ok(_) => {
                stats.s3_uploads.fetch_add(1, Relaxed);
                stats.s3_upload_bytes.fetch_add(len, Relaxed);
                if let Err(e) = std::fs::remove_file(file) {
                    tracing::warn!(path = %file.display(), error = %e, "uploaded, but the local copy could not be removed");
                }
                return;
            }
            Err(e) => {
                attempt += 1;
                stats.s3_upload_failures.fetch_add(1, Relaxed);
                let delay = edge_agent::mqtt::backoff(
                    attempt,
                    Duration::from_millis(200),
                    Duration::from_secs(30),
                );
                tracing::warn!(key = %key, attempt, retry_in = ?delay, error = %e, "S3 upload failed; the file stays local and is retried");
                std::thread::sleep(delay);
            }
        }
    }
}
