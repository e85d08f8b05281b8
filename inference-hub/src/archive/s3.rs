//! Archiving to S3-compatible object storage (`[archive.s3]`).
//!
//! The archive's Delta tables live in the bucket, under the prefix
//! (`<prefix>/scored/_delta_log/...`, `<prefix>/scored/date=.../hour=.../hub=.../<name>`;
//! see [`super::tables`]). Files are written and committed locally exactly
//! as for a local archive, except that the local root only stages them; a
//! background thread then puts each file in the bucket under the same
//! relative key and commits it to its table's log in the bucket, following
//! the protocol every hub of an archive follows: the next log version is
//! created conditionally, and before each attempt the batches other hubs'
//! files of the partition hold (read from their footers) are left out of
//! this one. So several hubs on one bucket (a shared subscription; a batch a
//! hub made durable but could not answer is resent to another hub, so two
//! hubs may hold it) keep each batch in the table once, with no lock, lease
//! or clock. The local copy is deleted once the commit succeeded; attempts
//! are retried with backoff, and files still local at start-up (a crash, or
//! an outage of the object store) are committed then. A file whose put
//! landed but whose commit did not is not in any version: readers never see
//! it, the retry writes the same key again, and a file nobody commits is
//! deleted by the vacuum (`archive.vacuum-after`).
//!
//! At start-up the hub reads the newest versions of the bucket's tables:
//! its own files' names carry the WAL range, so WAL replay skips what the
//! bucket already holds, as it does for local files. With `upload =
//! "on-commit"` files are sized by `target-file-bytes` and `max-file-age`
//! when they are written, and once their partition is closed the upload
//! thread merges this hub's small files of it in the bucket (the merged
//! file put, then one version swapping it for them, as compaction does
//! locally); with `"when-closed"` they wait until their partition is
//! closed and merged locally (see [`UploadWhen`]). Retention
//! (`archive.retention`) removes this hub's files of expired event hours in
//! one version per table, and the vacuum deletes them later, in the upload
//! thread's order of work. At shutdown a failed upload is not retried: the
//! file stays local for the next start.
//!
//! The log needs a store with conditional writes (AWS S3, MinIO, Ceph, R2;
//! moto in the tests). The hub checks that at start-up
//! ([`check_conditional_writes`]: a second `If-None-Match: *` create of one
//! probe object must be refused, and so must an `If-Match` with a wrong
//! ETag) and refuses to start on a store that does not honour them.

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
/// this hub's own), opens the archive's tables in the bucket (creating
/// missing ones) and reads, per partition, the last WAL position this
/// hub's files in them hold. Must not be called on an async task.
pub fn open_bucket_tables(
    settings: &S3Settings,
    hub_id: &str,
) -> Result<
    (
        super::tables::ArchiveTables,
        std::collections::HashMap<super::PartitionKey, u64>,
    ),
    super::ArchiveError,
> {
    let store = settings.connect()?;
    let probe = settings.key(Path::new(&format!(".conditional-write-probe/{hub_id}")));
    runtime()?
        .block_on(check_conditional_writes(store.as_ref(), &probe))
        .map_err(|e| match e {
            StoreCheckError::Store(e) => super::ArchiveError::Store(e),
            refused => super::ArchiveError::Settings(refused.to_string()),
        })?;
    let tables = super::tables::ArchiveTables::open_bucket(settings)?;
    super::migrate::refuse_hive_layout_in_bucket(&tables)?;
    let committed = tables.committed_through(hub_id)?;
    Ok((tables, committed))
}

/// The files under `local_root` at start-up (a crash, an outage of the
/// store, or files waiting for their partition to close) that go to the
/// uploader at once: all of them with `upload = "on-commit"`. With
/// `"when-closed"` only those the bucket's tables already hold (their
/// commit landed, the removal of the local copy did not); the others wait
/// for their partition to close and may be merged first (a put of theirs
/// that landed without a commit is in no version and is vacuumed).
pub fn files_to_resume(
    settings: &S3Settings,
    local_root: &Path,
    bucket: &super::tables::ArchiveTables,
) -> Result<Vec<PathBuf>, super::ArchiveError> {
    let mut files = Vec::new();
    let mut in_bucket = std::collections::HashSet::new();
    for table in super::Table::ALL {
        files.extend(super::staged_files(local_root, table)?);
        if settings.upload == UploadWhen::WhenClosed {
            in_bucket.extend(
                bucket
                    .files(table)?
                    .into_iter()
                    .map(|f| local_root.join(table.name()).join(f.path)),
            );
        }
    }
    if settings.upload == UploadWhen::WhenClosed {
        files.retain(|f| in_bucket.contains(f));
    }
    Ok(files)
}

/// Work for the upload thread, in order.
#[derive(Debug)]
enum Job {
    Upload(PathBuf),
    /// Remove this hub's files of event hours before this one from the
    /// tables (retention), if any; then vacuum.
    Maintain(Option<i64>),
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
    /// Starts the thread with `resume` queued (see [`files_to_resume`]);
    /// it commits to `bucket` (from [`open_bucket_tables`]) as `settings`
    /// say (when, and the vacuum's window).
    pub fn start(
        bucket: super::tables::ArchiveTables,
        settings: &crate::config::ArchiveSettings,
        local_root: PathBuf,
        hub_id: &str,
        props: parquet::file::properties::WriterProperties,
        stats: Arc<HubStats>,
        resume: &[PathBuf],
    ) -> std::io::Result<Self> {
        let when = settings.s3.as_ref().map(|s| s.upload).unwrap_or_default();
        let vacuum_after = settings.vacuum_after;
        let compaction = BucketCompaction {
            grace: settings.compaction_grace,
            target_file_bytes: settings.target_file_bytes,
            row_group_rows: settings.row_group_rows,
        };
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
                let mut upload = Upload {
                    bucket,
                    local_root: &local_root,
                    hub_id: &hub_id,
                    props: &props,
                    stats: &stats,
                    vacuum_after,
                    compaction,
                    stopping: &stopping_seen,
                };
                for job in rx {
                    match job {
                        Job::Upload(file) => upload.until_done(&file),
                        // At shutdown only uploads are worth waiting for.
                        Job::Maintain(_) if stopping_seen.load(Relaxed) => {}
                        Job::Maintain(first_kept) => upload.maintain(first_kept),
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

    /// Maintenance of the bucket's tables, after the uploads queued
    /// before: this hub's files of event hours before `first_kept` removed
    /// (retention, if set), then the vacuum.
    pub fn maintain(&self, first_kept: Option<i64>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Job::Maintain(first_kept));
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
    bucket: super::tables::ArchiveTables,
    local_root: &'a Path,
    hub_id: &'a str,
    props: &'a parquet::file::properties::WriterProperties,
    stats: &'a HubStats,
    vacuum_after: Duration,
    compaction: BucketCompaction,
    stopping: &'a std::sync::atomic::AtomicBool,
}

/// What compaction of the bucket's files follows (`[archive]`'s settings,
/// as for local files).
#[derive(Debug, Clone, Copy)]
struct BucketCompaction {
    grace: Duration,
    target_file_bytes: u64,
    row_group_rows: usize,
}

/// Partitions compacted in the bucket per maintenance round at most, so
/// uploads queued behind a round wait for a few merges only.
const BUCKET_COMPACTIONS_PER_ROUND: usize = 4;

impl Upload<'_> {
    fn until_done(&mut self, file: &Path) {
        let Ok(relative) = file.strip_prefix(self.local_root) else {
            return;
        };
        let mut attempt = 0u32;
        loop {
            if !file.exists() {
                return; // already committed and removed (queued twice at start-up)
            }
            match self.attempt(file, relative) {
                Ok(len) => {
                    self.stats.s3_uploads.fetch_add(1, Relaxed);
                    self.stats.s3_upload_bytes.fetch_add(len, Relaxed);
                    if let Err(e) = std::fs::remove_file(file) {
                        tracing::warn!(path = %file.display(), error = %e, "committed in the bucket, but the local copy could not be removed");
                    }
                    return;
                }
                Err(e) if self.stopping.load(Relaxed) => {
                    self.stats.s3_upload_failures.fetch_add(1, Relaxed);
                    tracing::warn!(path = %relative.display(), error = %e, "S3 upload failed at shutdown; the file stays local and goes up at the next start");
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
                    tracing::warn!(path = %relative.display(), attempt, retry_in = ?delay, error = %e, "S3 upload failed; the file stays local and is retried");
                    let until = std::time::Instant::now() + delay;
                    while std::time::Instant::now() < until && !self.stopping.load(Relaxed) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        }
    }

    /// One attempt to put `file` in the bucket and commit it; returns the
    /// bytes uploaded.
    fn attempt(&mut self, file: &Path, relative: &Path) -> Result<u64, super::ArchiveError> {
        let outside = || {
            super::ArchiveError::Io(std::io::Error::other(format!(
                "{} is outside the archive layout",
                relative.display()
            )))
        };
        // <table>/date=/hour=/hub=/<name>
        let table_name = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .ok_or_else(outside)?;
        let table = super::Table::ALL
            .into_iter()
            .find(|t| t.name() == table_name)
            .ok_or_else(outside)?;
        let hour = super::hour_of_file(relative).ok_or_else(outside)?;
        let name = relative
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(outside)?;
        let key = super::PartitionKey { table, hour };
        let mut uploaded = 0u64;
        self.bucket.commit_new_file(
            key,
            self.hub_id,
            name,
            file,
            self.props,
            |tables, local, object| {
                let bytes = std::fs::read(local)?;
                uploaded = bytes.len() as u64;
                tables.block_on(tables.store().put(object, bytes.into()))?;
                Ok(())
            },
        )?;
        let object = self.bucket.object_key(
            table,
            &format!("{}/{name}", super::tables::partition_path(key, self.hub_id)),
        );
        self.put_back_if_vacuumed(&object, file)?;
        Ok(uploaded)
    }

    /// After the commit of `object`: a vacuum elsewhere may have taken it
    /// between the put and the commit if that took longer than
    /// `vacuum-after`; then `local` is put there again.
    fn put_back_if_vacuumed(
        &self,
        object: &ObjectPath,
        local: &Path,
    ) -> Result<(), super::ArchiveError> {
        if let Err(object_store::Error::NotFound { .. }) =
            self.bucket.block_on(self.bucket.store().head(object))
        {
            let bytes = std::fs::read(local)?;
            self.bucket
                .block_on(self.bucket.store().put(object, bytes.into()))?;
        }
        Ok(())
    }

    /// Merges this hub's small files of closed partitions in the bucket, as
    /// compaction does locally: the merged file is put in the bucket, then
    /// one version removes the small files and adds it (`dataChange:
    /// false`), so a reader sees either set, never both or a part, and a
    /// reader holding an older snapshot keeps reading the small files until
    /// the vacuum. Returns the partitions merged.
    fn compact_closed_partitions(&mut self, now_us: i64) -> Result<usize, super::ArchiveError> {
        let grace = self.compaction.grace.as_micros() as i64;
        let mut merged = 0;
        for table in super::Table::ALL {
            let mut partitions: std::collections::BTreeMap<_, Vec<super::tables::TableFile>> =
                std::collections::BTreeMap::new();
            for file in self.bucket.files(table)? {
                if file.hub == self.hub_id && (file.key.hour + 1) * super::HOUR_US + grace <= now_us
                {
                    partitions.entry(file.key).or_default().push(file);
                }
            }
            for (key, files) in partitions {
                if merged == BUCKET_COMPACTIONS_PER_ROUND || self.stopping.load(Relaxed) {
                    return Ok(merged);
                }
                let chosen = super::maintenance::compaction_choice(
                    &files,
                    |f| f.bytes,
                    self.compaction.target_file_bytes,
                );
                if chosen.is_empty() {
                    continue;
                }
                // A partition that cannot be merged (an unreadable object,
                // say) is left as it is and does not hold up the others.
                match self.compact_in_bucket(key, &files, &chosen) {
                    Ok(true) => merged += 1,
                    Ok(false) => {}
                    Err(e) => {
                        self.stats.maintenance_errors.fetch_add(1, Relaxed);
                        tracing::error!(table = table.name(), hour = key.hour, error = %e, "compaction of a partition in the bucket failed; it is left as it was");
                    }
                }
            }
        }
        Ok(merged)
    }

    /// Merges `chosen` of a partition's `files` (this hub's); `false` if
    /// the merged file's name is taken by a file it would not replace.
    fn compact_in_bucket(
        &mut self,
        key: super::PartitionKey,
        files: &[super::tables::TableFile],
        chosen: &[super::tables::TableFile],
    ) -> Result<bool, super::ArchiveError> {
        let (mut first, mut last) = (u64::MAX, 0u64);
        let mut batches = Vec::new();
        for file in chosen {
            if let Some((a, b)) = file.wal_range() {
                first = first.min(a);
                last = last.max(b);
            }
            let object = self.bucket.object_key(key.table, &file.path);
            let bytes = self
                .bucket
                .block_on(async { self.bucket.store().get(&object).await?.bytes().await })?;
            batches.extend(super::read_parquet_bytes(bytes)?);
        }
        let merged =
            super::maintenance::MergedFile::sort(key.table, batches, (first, last), chosen.len())?;
        let name = merged.name(self.hub_id);
        let path = format!("{}/{name}", super::tables::partition_path(key, self.hub_id));
        if files.iter().any(|f| f.path == path) {
            // A file of the same WAL range (one merged before, and late files
            // inside its range): left as they are.
            tracing::debug!(%path, "the merged file's name is taken; partition left as it is");
            return Ok(false);
        }
        let staging = self.local_root.join(".staging");
        std::fs::create_dir_all(&staging)?;
        let local = staging.join(format!(".bucket-compact-{name}.inprogress"));
        let written = (|| {
            let rows = merged.write(
                &local,
                self.hub_id,
                self.props.clone(),
                self.compaction.row_group_rows,
            )?;
            let bytes = std::fs::read(&local)?;
            let size = bytes.len() as u64;
            let object = self.bucket.object_key(key.table, &path);
            self.bucket
                .block_on(self.bucket.store().put(&object, bytes.into()))?;
            let removed: Vec<String> = chosen.iter().map(|f| f.path.clone()).collect();
            self.bucket
                .commit_compaction(key, self.hub_id, &removed, &name, size, rows)?;
            self.put_back_if_vacuumed(&object, &local)?;
            tracing::info!(%path, rows, files = chosen.len(), "compacted a closed partition in the bucket");
            Ok::<_, super::ArchiveError>(())
        })();
        let _ = std::fs::remove_file(&local);
        written.map(|()| true)
    }

    /// Retention, compaction and the vacuum in the bucket (a failure is
    /// logged; the next round retries).
    fn maintain(&mut self, first_kept: Option<i64>) {
        if let Some(first_kept) = first_kept {
            match self.bucket.expire(self.hub_id, first_kept) {
                Ok(0) => {}
                Ok(n) => {
                    self.stats.partitions_expired.fetch_add(n as u64, Relaxed);
                    tracing::info!(partitions = n, "bucket partitions past retention removed");
                }
                Err(e) => {
                    self.stats.maintenance_errors.fetch_add(1, Relaxed);
                    tracing::error!(error = %e, "retention in the bucket failed");
                }
            }
        }
        let now_us = chrono::Utc::now().timestamp_micros();
        match self.compact_closed_partitions(now_us) {
            Ok(merged) => {
                self.stats.compactions.fetch_add(merged as u64, Relaxed);
            }
            Err(e) => {
                self.stats.maintenance_errors.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "compaction in the bucket failed; the partition is left as it was");
            }
        }
        let older_than = now_us / 1000 - self.vacuum_after.as_millis() as i64;
        match self.bucket.vacuum(older_than) {
            Ok(0) => {}
            Ok(n) => tracing::info!(files = n, "files no version holds deleted from the bucket"),
            Err(e) => {
                self.stats.maintenance_errors.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "vacuum of the bucket failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;

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
}
