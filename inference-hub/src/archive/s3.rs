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
//! files. An object store has no atomic swap of a set of objects, so nothing
//! is compacted in the bucket: with `upload = "on-commit"` files are sized by
//! `target-file-bytes` and `max-file-age` when they are written; with
//! `"when-closed"` they wait until their partition is closed and merged
//! locally (see [`UploadWhen`]; files handed to the thread are never merged,
//! nor is a file the bucket already holds, see [`files_to_resume`]). Retention (`archive.retention`)
//! deletes this hub's objects of expired event hours, in the upload thread's
//! order of work. At shutdown a failed upload is not retried: the file stays
//! local for the next start.
//!
//! **Several hubs on one bucket** (a shared subscription; a batch a hub made
//! durable but could not answer is resent to another hub, so two hubs may
//! hold it): the upload into a partition is done under that partition's
//! lease lock, `<partition>/.commit.lock`, taken with a conditional PUT
//! (`If-None-Match: *`; a lease lasts 120 s, and an expired one is taken over
//! with `If-Match` on its ETag, so two hubs cannot both take it; the holder
//! starts its upload within 30 s or starts over). Holding it, the hub reads which
//! batches the other hubs' objects in the partition hold (from each file's
//! `iot.batches` footer: two small ranged GETs per object, cached, objects
//! never change), leaves those batches out of its own file, uploads, and
//! releases the lock. Whichever hub uploads second sees the first one's
//! object, so each batch is in the bucket once. This needs a store with
//! conditional writes (AWS S3, MinIO, Ceph, R2; moto in the tests). The hub
//! checks that at start-up ([`check_conditional_writes`]: a second
//! `If-None-Match: *` create of one probe object must be refused, and so
//! must an `If-Match` with a wrong ETag) and refuses to start on a store that
//! does not honour them, rather than upload without the check.

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
    /// When committed files go to the bucket.
    #[serde(default)]
    pub upload: UploadWhen,
}

/// `[archive.s3] upload`: when committed files go to the bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UploadWhen {
    /// As soon as a file is committed: the bucket lags by `max-file-age` at
    /// most, and files are sized when they are written (a quiet hub makes
    /// files of `max-file-age` worth of data).
    #[default]
    OnCommit,
    /// Once the file's hour partition is closed (`compaction-grace` after the
    /// hour) and its small files are merged locally: about one object per
    /// table, hour and hub, whatever the data rate, but the bucket lags by
    /// up to an hour plus the grace, and the local disk holds that much.
    WhenClosed,
}

fn default_region() -> String {
    "us-east-1".into()
}

impl S3Settings {
    pub fn connect(&self) -> object_store::Result<Arc<dyn ObjectStore>> {
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&self.bucket)
            .with_region(&self.region)
            .with_allow_http(self.allow_http)
            // Conditional PUTs (If-None-Match / If-Match) for the partitions'
            // commit locks.
            .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch);
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

/// Why a store cannot hold the archive.
#[derive(Debug, thiserror::Error)]
pub enum StoreCheckError {
    /// The store answered, but does not do what the exactly-once upload
    /// needs: the hub must not start on it.
    #[error(
        "the object store does not honour conditional writes ({0}); hubs sharing it could archive a batch twice, so the hub does not start on it. Use a store with conditional PUTs (AWS S3, MinIO, Ceph, Cloudflare R2)"
    )]
    NoConditionalWrites(&'static str),
    /// The store could not be asked (network, credentials, bucket).
    #[error("the object store could not be checked: {0}")]
    Store(#[from] object_store::Error),
}

/// Checks, with a probe object at `key` (removed again), that the store
/// refuses a second `If-None-Match: *` create of the same object and an
/// `If-Match` update with an ETag the object does not have: the commit lock
/// relies on both. Some S3-compatible stores answer "not implemented";
/// others silently ignore the headers, which only this check can tell.
pub async fn check_conditional_writes(
    store: &dyn ObjectStore,
    key: &ObjectPath,
) -> Result<(), StoreCheckError> {
    use object_store::{PutMode, PutOptions, UpdateVersion};
    let put = |mode: PutMode| {
        store.put_opts(
            key,
            object_store::PutPayload::from_static(b"conditional-write probe"),
            PutOptions {
                mode,
                ..Default::default()
            },
        )
    };
    let refused = |e: object_store::Error| match e {
        object_store::Error::NotImplemented { .. } => {
            StoreCheckError::NoConditionalWrites("it refuses conditional PUTs")
        }
        e => StoreCheckError::Store(e),
    };
    match store.delete(key).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    put(PutMode::Create).await.map_err(refused)?;
    let outcome = async {
        match put(PutMode::Create).await {
            Ok(_) => {
                return Err(StoreCheckError::NoConditionalWrites(
                    "it overwrote an existing object on a PUT with If-None-Match: *",
                ));
            }
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => {}
            Err(e) => return Err(refused(e)),
        }
        let stale = UpdateVersion {
            e_tag: Some("\"not-the-current-etag\"".into()),
            version: None,
        };
        match put(PutMode::Update(stale)).await {
            Ok(_) => Err(StoreCheckError::NoConditionalWrites(
                "it overwrote an object on a PUT with If-Match and a wrong ETag",
            )),
            Err(
                object_store::Error::Precondition { .. }
                | object_store::Error::AlreadyExists { .. },
            ) => Ok(()),
            Err(e) => Err(refused(e)),
        }
    }
    .await;
    // Best effort: a probe left behind is overwritten by the next check.
    let _ = store.delete(key).await;
    outcome
}

/// Checks the store ([`check_conditional_writes`], with a probe object of
/// this hub's own), then lists the keys (relative to the prefix) of this
/// hub's committed objects.
pub fn list_own(settings: &S3Settings, hub_id: &str) -> std::io::Result<Vec<PathBuf>> {
    let store = settings.connect().map_err(std::io::Error::other)?;
    let prefix = settings.prefix.trim_matches('/').to_owned();
    let marker = format!("/hub={hub_id}/");
    runtime()?.block_on(async {
        use futures_util::TryStreamExt;
        let probe = settings.key(Path::new(&format!(".conditional-write-probe/{hub_id}")));
        check_conditional_writes(store.as_ref(), &probe)
            .await
            .map_err(std::io::Error::other)?;
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

/// The committed files still under `local_root` at start-up (a crash, an
/// outage of the store, or files waiting for their partition to close) that
/// go to the uploader at once: all of them with `upload = "on-commit"`. With
/// `"when-closed"` only those the bucket already holds (`remote`, from
/// [`list_own`]): their upload was cut short after the PUT, and the
/// re-upload writes the same bytes under the same key and removes the local
/// copy. They must not be merged with others first, or the bucket would hold
/// their rows twice; the other files wait for their partition to close.
pub fn files_to_resume(
    settings: &S3Settings,
    local_root: &Path,
    remote: &[PathBuf],
) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for table in super::Table::ALL {
        files.extend(super::committed_files(local_root, table)?);
    }
    if settings.upload == UploadWhen::WhenClosed {
        let remote: std::collections::HashSet<&Path> =
            remote.iter().map(PathBuf::as_path).collect();
        files.retain(|f| {
            f.strip_prefix(local_root)
                .is_ok_and(|relative| remote.contains(relative))
        });
    }
    Ok(files)
}

/// How long a partition's commit lock is held at most; a hub that died
/// holding it delays the others' uploads into that partition by this much.
const LEASE: Duration = Duration::from_secs(120);
/// The upload must start this soon after the lock was taken, or the attempt
/// starts over: the rest of the lease covers the PUT itself and clock skew
/// between hubs (they compare the lease's wall-clock end with their own).
const LEASE_START_PUT_BY: Duration = Duration::from_secs(30);
/// The upload must finish this long before the lease ends, or it is cut off
/// (with its retries) and the lock is left to expire rather than released:
/// another hub looks at the partition only after the lease, by which time a
/// cut-off PUT has either landed or never will. So a slow store cannot make
/// a PUT outlast the lease and land after another hub's check.
const LEASE_FINISH_PUT_BEFORE_END: Duration = Duration::from_secs(30);
/// Other hubs' objects whose batches are remembered; past this the memory
/// starts over (it is only a cache of footers).
const MAX_REMEMBERED_OBJECTS: usize = 20_000;

/// Work for the upload thread, in order.
#[derive(Debug)]
enum Job {
    Upload(PathBuf),
    /// Delete this hub's objects of event hours before this one (retention).
    ExpireBefore(i64),
}

/// The background uploader.
#[derive(Debug)]
pub struct Uploader {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Set at shutdown: a failed upload is then not retried (the file stays
    /// local and goes up at the next start), so a store that is down cannot
    /// hold the hub's shutdown.
    stopping: Arc<std::sync::atomic::AtomicBool>,
    when: UploadWhen,
    /// Files handed to the thread and perhaps not uploaded yet (it removes
    /// each one once uploaded): compaction must leave their partitions alone.
    handed: std::collections::HashSet<PathBuf>,
}

impl Uploader {
    /// Starts the thread with `resume` queued (see [`files_to_resume`]).
    pub fn start(
        settings: S3Settings,
        local_root: PathBuf,
        hub_id: &str,
        props: parquet::file::properties::WriterProperties,
        stats: Arc<HubStats>,
        resume: &[PathBuf],
    ) -> std::io::Result<Self> {
        let store = settings.connect().map_err(std::io::Error::other)?;
        let when = settings.upload;
        let hub_id = hub_id.to_owned();
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping_seen = Arc::clone(&stopping);
        let (tx, rx) = mpsc::channel::<Job>();
        for f in resume {
            let _ = tx.send(Job::Upload(f.clone()));
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
                let mut upload = Upload {
                    rt: &rt,
                    store: &store,
                    settings: &settings,
                    local_root: &local_root,
                    hub_id: &hub_id,
                    props: &props,
                    stats: &stats,
                    others: std::collections::HashMap::new(),
                    stopping: &stopping_seen,
                };
                for job in rx {
                    match job {
                        Job::Upload(file) => upload.until_done(&file),
                        Job::ExpireBefore(hour) => upload.expire_before(hour),
                    }
                }
            })?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            stopping,
            when,
            handed: resume.iter().cloned().collect(),
        })
    }

    /// A file was committed: it goes up now with `upload = "on-commit"`;
    /// with `"when-closed"` it waits for [`Uploader::enqueue`].
    pub fn committed(&mut self, file: &Path) {
        if self.when == UploadWhen::OnCommit {
            self.enqueue(file.to_owned());
        }
    }

    pub fn waits_for_closed_partitions(&self) -> bool {
        self.when == UploadWhen::WhenClosed
    }

    pub fn enqueue(&mut self, file: PathBuf) {
        if let Some(tx) = &self.tx {
            if self.when == UploadWhen::WhenClosed {
                self.handed.insert(file.clone());
            }
            let _ = tx.send(Job::Upload(file));
        }
    }

    /// Files handed over and still local (being uploaded, or waiting).
    pub fn busy(&mut self) -> &std::collections::HashSet<PathBuf> {
        self.handed.retain(|f| f.exists());
        &self.handed
    }

    /// Retention in the bucket: this hub's objects of event hours before
    /// `hour` (hours since the epoch) are deleted.
    pub fn expire_before(&self, hour: i64) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Job::ExpireBefore(hour));
        }
    }

    /// Finishes the queued uploads (shutdown).
    pub fn finish(mut self) {
        self.stopping.store(true, Relaxed);
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The uploader thread's state.
struct Upload<'a> {
    rt: &'a tokio::runtime::Runtime,
    store: &'a Arc<dyn ObjectStore>,
    settings: &'a S3Settings,
    local_root: &'a Path,
    hub_id: &'a str,
    props: &'a parquet::file::properties::WriterProperties,
    stats: &'a HubStats,
    /// Batches held by other hubs' objects, by key (objects never change).
    others: std::collections::HashMap<ObjectPath, Vec<super::BatchId>>,
    stopping: &'a std::sync::atomic::AtomicBool,
}

/// Why an upload attempt did not finish (each is retried).
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// Reading the local file, or the store.
    #[error(transparent)]
    Archive(#[from] super::ArchiveError),
    /// The PUT under the partition's lock did not finish in time: the
    /// request was dropped, and the lock is left to expire.
    #[error(
        "the upload did not finish within the partition's lease (cut off after {0:?}); it is tried again under a new lock"
    )]
    CutOff(Duration),
    #[error("the partition's lock was held too long before the upload; starting over")]
    LeaseRunningOut,
    #[error("an archive file outside the partition layout")]
    OutsideLayout,
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Archive(e.into())
    }
}

impl From<object_store::Error> for Failure {
    fn from(e: object_store::Error) -> Self {
        Failure::Archive(e.into())
    }
}

impl Upload<'_> {
    fn until_done(&mut self, file: &Path) {
        let Ok(relative) = file.strip_prefix(self.local_root) else {
            return;
        };
        let key = self.settings.key(relative);
        let mut attempt = 0u32;
        loop {
            if !file.exists() {
                return; // already uploaded and removed (queued twice at start-up)
            }
            match self.attempt(file, relative, &key) {
                Ok(len) => {
                    self.stats.s3_uploads.fetch_add(1, Relaxed);
                    self.stats.s3_upload_bytes.fetch_add(len, Relaxed);
                    if let Err(e) = std::fs::remove_file(file) {
                        tracing::warn!(path = %file.display(), error = %e, "uploaded, but the local copy could not be removed");
                    }
                    return;
                }
                Err(e) if self.stopping.load(Relaxed) => {
                    self.stats.s3_upload_failures.fetch_add(1, Relaxed);
                    tracing::warn!(key = %key, error = %e, "S3 upload failed at shutdown; the file stays local and goes up at the next start");
                    return;
                }
                Err(e) => {
                    attempt += 1;
                    self.stats.s3_upload_failures.fetch_add(1, Relaxed);
                    let delay = iot_mqtt::backoff(
                        attempt,
                        Duration::from_millis(200),
                        Duration::from_secs(30),
                    );
                    tracing::warn!(key = %key, attempt, retry_in = ?delay, error = %e, "S3 upload failed; the file stays local and is retried");
                    let until = std::time::Instant::now() + delay;
                    while std::time::Instant::now() < until && !self.stopping.load(Relaxed) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        }
    }

    /// Deletes this hub's objects whose event hour is before `first_kept`
    /// (a failure is logged; the next round retries).
    fn expire_before(&mut self, first_kept: i64) {
        use futures_util::TryStreamExt;
        let prefix = self.settings.prefix.trim_matches('/').to_owned();
        let root = (!prefix.is_empty()).then(|| ObjectPath::from(prefix.as_str()));
        let own = format!("/hub={}/", self.hub_id);
        let listed: object_store::Result<Vec<object_store::ObjectMeta>> = self
            .rt
            .block_on(self.store.list(root.as_ref()).try_collect());
        let objects = match listed {
            Ok(o) => o,
            Err(e) => {
                self.stats.maintenance_errors.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "cannot list the bucket for retention");
                return;
            }
        };
        let mut hours = std::collections::BTreeSet::new();
        for o in objects {
            let key = o.location.to_string();
            if !key.contains(&own) || !key.ends_with(".parquet") {
                continue;
            }
            let Some(hour) = super::hour_of_file(Path::new(&key)) else {
                continue;
            };
            if hour >= first_kept {
                continue;
            }
            match self.rt.block_on(self.store.delete(&o.location)) {
                Ok(()) => {
                    hours.insert((key.split("/date=").next().unwrap_or("").to_owned(), hour));
                }
                Err(e) => {
                    self.stats.maintenance_errors.fetch_add(1, Relaxed);
                    tracing::error!(key = %key, error = %e, "cannot delete an object past retention");
                }
            }
        }
        if !hours.is_empty() {
            self.stats
                .partitions_expired
                .fetch_add(hours.len() as u64, Relaxed);
            tracing::info!(
                partitions = hours.len(),
                "bucket partitions past retention deleted"
            );
        }
    }

    /// One upload under the partition's lock; returns the bytes uploaded.
    fn attempt(&mut self, file: &Path, relative: &Path, key: &ObjectPath) -> Result<u64, Failure> {
        // <table>/<date>/<hour>/<hub>/<name>: the partition is two levels up.
        let partition = relative
            .parent()
            .and_then(Path::parent)
            .ok_or(Failure::OutsideLayout)?;
        let lock_key = self.settings.key(&partition.join(".commit.lock"));
        // Never without the lock: a store that stopped honouring
        // conditional writes since start-up fails the upload (the file stays
        // local and is retried).
        let locked_at = self
            .rt
            .block_on(acquire(self.store.as_ref(), &lock_key, self.hub_id))?;
        let result = self.check_and_put(file, partition, key, locked_at);
        if releases_lock(&result) {
            // Best effort: an unreleased lock expires after the lease.
            let _ = self.rt.block_on(self.store.delete(&lock_key));
        }
        result
    }

    /// Holding the partition's lock since `locked_at`: leaves
    /// out the batches other hubs' objects hold, then uploads.
    fn check_and_put(
        &mut self,
        file: &Path,
        partition: &Path,
        key: &ObjectPath,
        locked_at: std::time::Instant,
    ) -> Result<u64, Failure> {
        let taken = self.batches_of_other_hubs(partition)?;
        let ours: std::collections::HashSet<super::BatchId> =
            super::file_batches(file)?.into_iter().collect();
        let overlap: std::collections::HashSet<super::BatchId> =
            ours.intersection(&taken).cloned().collect();
        if !overlap.is_empty() {
            tracing::info!(key = %key, batches = overlap.len(), "batches another hub already archived are left out of this file");
            super::drop_batches(file, &overlap, self.props)?;
        }
        if locked_at.elapsed() > LEASE_START_PUT_BY {
            return Err(Failure::LeaseRunningOut);
        }
        let bytes = std::fs::read(file)?;
        let len = bytes.len() as u64;
        let finish_by = (LEASE - LEASE_FINISH_PUT_BEFORE_END).saturating_sub(locked_at.elapsed());
        self.rt.block_on(put_within(
            self.store.as_ref(),
            key,
            bytes.into(),
            finish_by,
        ))?;
        Ok(len)
    }

    /// The batches other hubs' objects in `partition` hold.
    fn batches_of_other_hubs(
        &mut self,
        partition: &Path,
    ) -> Result<std::collections::HashSet<super::BatchId>, Failure> {
        use futures_util::TryStreamExt;
        let prefix = self.settings.key(partition);
        let own = format!("/hub={}/", self.hub_id);
        let objects: Vec<object_store::ObjectMeta> = self
            .rt
            .block_on(self.store.list(Some(&prefix)).try_collect())?;
        if self.others.len() > MAX_REMEMBERED_OBJECTS {
            self.others.clear();
        }
        let mut out = std::collections::HashSet::new();
        for o in objects {
            let k = o.location.to_string();
            if !k.ends_with(".parquet") || k.contains(&own) || !k.contains("/hub=") {
                continue;
            }
            if !self.others.contains_key(&o.location) {
                let ids = match self.rt.block_on(footer_batches(self.store.as_ref(), &o)) {
                    Ok(ids) => ids,
                    Err(FooterError::NotParquet(why)) => {
                        // Holds no batch anybody can read: nothing to leave
                        // out for it.
                        tracing::warn!(key = %o.location, why, "an object in the archive that is not a readable Parquet file; ignored by the cross-hub check");
                        Vec::new()
                    }
                    Err(FooterError::Store(e)) => return Err(e.into()),
                };
                self.others.insert(o.location.clone(), ids);
            }
            out.extend(self.others[&o.location].iter().cloned());
        }
        Ok(out)
    }
}

/// Whether an upload attempt that held the partition's lock gives it back:
/// yes, unless its PUT was cut off, which leaves the lock to expire (no
/// other hub looks at the partition before the dropped request is settled).
fn releases_lock(result: &Result<u64, Failure>) -> bool {
    !matches!(result, Err(Failure::CutOff(_)))
}

/// Uploads `payload` to `key` if that finishes within `limit` (retries
/// included); else the request is dropped and the upload fails with
/// [`Failure::CutOff`].
async fn put_within(
    store: &dyn ObjectStore,
    key: &ObjectPath,
    payload: object_store::PutPayload,
    limit: Duration,
) -> Result<(), Failure> {
    match tokio::time::timeout(limit, store.put(key, payload)).await {
        Ok(done) => done.map(|_| ()).map_err(Failure::from),
        Err(_) => Err(Failure::CutOff(limit)),
    }
}

/// Takes the partition's commit lock, waiting while another hub holds a live
/// lease. Returns when the lease began (just before the request that took
/// it: the lease's end was computed then).
async fn acquire(
    store: &dyn ObjectStore,
    key: &ObjectPath,
    hub_id: &str,
) -> object_store::Result<std::time::Instant> {
    use object_store::{PutMode, PutOptions, UpdateVersion};
    let lease = || {
        let until = chrono::Utc::now().timestamp_millis() + LEASE.as_millis() as i64;
        object_store::PutPayload::from(format!("{hub_id} {until}"))
    };
    let started = std::time::Instant::now();
    loop {
        let create = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let issued = std::time::Instant::now();
        match store.put_opts(key, lease(), create).await {
            Ok(_) => return Ok(issued),
            Err(object_store::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
        let held = match store.get(key).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => continue, // just released
            Err(e) => return Err(e),
        };
        let etag = held.meta.e_tag.clone();
        let text = held.bytes().await?;
        let until: i64 = std::str::from_utf8(&text)
            .ok()
            .and_then(|t| t.rsplit(' ').next())
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        if until < chrono::Utc::now().timestamp_millis() {
            // Expired (its hub died holding it): take it over, unless
            // another hub does so first.
            let take_over = PutOptions {
                mode: PutMode::Update(UpdateVersion {
                    e_tag: etag,
                    version: None,
                }),
                ..Default::default()
            };
            let issued = std::time::Instant::now();
            match store.put_opts(key, lease(), take_over).await {
                Ok(_) => return Ok(issued),
                Err(object_store::Error::Precondition { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        if started.elapsed() > 4 * LEASE {
            return Err(object_store::Error::Generic {
                store: "S3",
                source: "a partition's commit lock stayed taken for longer than its lease".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Why another hub's object's batches are unknown.
enum FooterError {
    /// The store failed (retry).
    Store(object_store::Error),
    /// The object is not a readable Parquet file (it holds no batch).
    NotParquet(String),
}

impl From<object_store::Error> for FooterError {
    fn from(e: object_store::Error) -> Self {
        FooterError::Store(e)
    }
}

/// The batches an object holds, from its footer (`iot.batches`); objects
/// written before footers listed them are read whole.
async fn footer_batches(
    store: &dyn ObjectStore,
    object: &object_store::ObjectMeta,
) -> Result<Vec<super::BatchId>, FooterError> {
    let not_parquet = |why: &dyn std::fmt::Display| FooterError::NotParquet(why.to_string());
    let size = object.size;
    if size < 12 {
        return Err(not_parquet(&"too small"));
    }
    let tail = store.get_range(&object.location, size - 8..size).await?;
    let footer_len = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    if &tail[4..] != b"PAR1" || footer_len + 8 > size || footer_len > super::MAX_FOOTER_BYTES {
        return Err(not_parquet(
            &"no Parquet footer (or an implausibly large one)",
        ));
    }
    let footer = store
        .get_range(&object.location, size - 8 - footer_len..size - 8)
        .await?;
    if let Some(ids) = super::footer_batch_ids(&footer).map_err(|e| not_parquet(&e))? {
        return Ok(ids);
    }
    let whole = store.get(&object.location).await?.bytes().await?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(whole)
        .and_then(|b| b.build())
        .map_err(|e| not_parquet(&e))?;
    let mut ids = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| not_parquet(&e))?;
        ids.extend(super::batch_ids(&batch).unwrap_or_default());
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;
    use object_store::throttle::{ThrottleConfig, ThrottledStore};

    use super::*;

    /// How a store double treats conditional PUTs.
    #[derive(Debug, Clone, Copy)]
    enum Conditions {
        /// Answers "not implemented" (some S3-compatible servers).
        Refused,
        /// Ignores the headers and overwrites (the silent case).
        Ignored,
        /// Honours If-None-Match but ignores If-Match.
        IfMatchIgnored,
    }

    /// An in-memory store with one of the broken behaviours above.
    #[derive(Debug)]
    struct Broken(InMemory, Conditions);

    impl std::fmt::Display for Broken {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Broken({:?})", self.1)
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for Broken {
        async fn put_opts(
            &self,
            location: &ObjectPath,
            payload: object_store::PutPayload,
            mut opts: object_store::PutOptions,
        ) -> object_store::Result<object_store::PutResult> {
            use object_store::PutMode;
            match (self.1, &opts.mode) {
                (_, PutMode::Overwrite) => {}
                (Conditions::Refused, _) => {
                    return Err(object_store::Error::NotImplemented {
                        operation: "conditional put".into(),
                        implementer: "Broken".into(),
                    });
                }
                (Conditions::Ignored, _) | (Conditions::IfMatchIgnored, PutMode::Update(_)) => {
                    opts.mode = PutMode::Overwrite;
                }
                (Conditions::IfMatchIgnored, PutMode::Create) => {}
            }
            self.0.put_opts(location, payload, opts).await
        }

        async fn put_multipart_opts(
            &self,
            location: &ObjectPath,
            opts: object_store::PutMultipartOptions,
        ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
            self.0.put_multipart_opts(location, opts).await
        }

        async fn get_opts(
            &self,
            location: &ObjectPath,
            options: object_store::GetOptions,
        ) -> object_store::Result<object_store::GetResult> {
            self.0.get_opts(location, options).await
        }

        fn delete_stream(
            &self,
            locations: futures_util::stream::BoxStream<'static, object_store::Result<ObjectPath>>,
        ) -> futures_util::stream::BoxStream<'static, object_store::Result<ObjectPath>> {
            self.0.delete_stream(locations)
        }

        fn list(
            &self,
            prefix: Option<&ObjectPath>,
        ) -> futures_util::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
        {
            self.0.list(prefix)
        }

        async fn list_with_delimiter(
            &self,
            prefix: Option<&ObjectPath>,
        ) -> object_store::Result<object_store::ListResult> {
            self.0.list_with_delimiter(prefix).await
        }

        async fn copy_opts(
            &self,
            from: &ObjectPath,
            to: &ObjectPath,
            options: object_store::CopyOptions,
        ) -> object_store::Result<()> {
            self.0.copy_opts(from, to, options).await
        }
    }

    #[tokio::test]
    async fn a_store_that_does_not_honour_conditional_writes_is_refused_and_a_good_one_passes() {
        let probe = ObjectPath::from("archive/.conditional-write-probe/hub-a");
        let good = InMemory::new();
        // Twice: a probe left behind by an earlier check does not matter.
        check_conditional_writes(&good, &probe).await.unwrap();
        good.put(&probe, object_store::PutPayload::from_static(b"left"))
            .await
            .unwrap();
        check_conditional_writes(&good, &probe).await.unwrap();
        assert!(
            matches!(
                good.head(&probe).await,
                Err(object_store::Error::NotFound { .. })
            ),
            "the probe is removed"
        );
        for (conditions, says) in [
            (Conditions::Refused, "refuses conditional PUTs"),
            (Conditions::Ignored, "If-None-Match"),
            (Conditions::IfMatchIgnored, "If-Match and a wrong ETag"),
        ] {
            let store = Broken(InMemory::new(), conditions);
            let error = check_conditional_writes(&store, &probe).await.unwrap_err();
            assert!(
                matches!(error, StoreCheckError::NoConditionalWrites(_)),
                "{conditions:?}: {error}"
            );
            let text = error.to_string();
            assert!(
                text.contains(says) && text.contains("does not start"),
                "{text}"
            );
        }
    }

    #[tokio::test]
    async fn an_upload_that_cannot_finish_within_the_lease_is_cut_off_and_never_lands() {
        let slow = ThrottledStore::new(
            InMemory::new(),
            ThrottleConfig {
                wait_put_per_call: Duration::from_millis(500),
                ..ThrottleConfig::default()
            },
        );
        let key = ObjectPath::from("table=scored/date=2026-01-01/hour=00/hub=a/x.parquet");
        let cut = put_within(
            &slow,
            &key,
            b"rows".to_vec().into(),
            Duration::from_millis(100),
        )
        .await
        .unwrap_err();
        assert!(matches!(cut, Failure::CutOff(_)), "{cut}");
        // Well past the store's delay: the dropped request never completes.
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(
            matches!(
                slow.head(&key).await,
                Err(object_store::Error::NotFound { .. })
            ),
            "an upload cut off at the end of its lease landed afterwards"
        );
        put_within(
            &slow,
            &key,
            b"rows".to_vec().into(),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        let stored = slow.get(&key).await.unwrap().bytes().await.unwrap();
        assert_eq!(stored.as_ref(), b"rows");
    }

    #[test]
    fn only_a_cut_off_upload_keeps_the_partition_lock() {
        assert!(!releases_lock(&Err(Failure::CutOff(Duration::from_secs(
            90
        )))));
        assert!(releases_lock(&Ok(10)));
        assert!(releases_lock(&Err(Failure::LeaseRunningOut)));
        assert!(releases_lock(&Err(Failure::from(std::io::Error::other(
            "the store refused"
        )))));
    }
}
