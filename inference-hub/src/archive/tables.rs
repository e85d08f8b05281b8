//! The archive's tables as Delta Lake tables (docs/adr/0009, through
//! `iot-delta`): what is committed, and the commit protocol every hub of an
//! archive follows.
//!
//! ```text
//! <archive>/scored/_delta_log/00000000000000000000.json ...
//! <archive>/scored/date=2026-11-26/hour=07/hub=<hub>/<hub>-<first-pos>-<last-pos>.parquet
//! <archive>/anomalies/... <archive>/shadow/... <archive>/rescored/...
//! ```
//!
//! `<archive>` is the local archive root, or the prefix in the bucket with
//! `[archive.s3]`. A data file belongs to a table once a version of the
//! table's log adds it, and no longer once a version removes it: readers
//! (the hub's own, DuckDB, Polars, Spark, `deltalake`) see whole versions,
//! never a file that is being written, that lost a race, or that compaction
//! replaced. Partition columns `date`, `hour` and `hub` are in the log (and,
//! by convention, the directories), not in the files.
//!
//! # Committing a file (exactly once across hubs)
//! A hub commits a finished file as the next version after the newest
//! snapshot, with a conditional create of that log entry, so of two hubs
//! only one takes a version. Before each attempt it reads which batches the
//! *other* hubs' files of the partition hold (their `iot.batches` footers,
//! cached: files never change) and leaves those batches out of its own file;
//! if another hub took the version first, it does the same against the newer
//! snapshot and tries again. So whichever hub commits second has seen the
//! first one's file, and each batch is in the table once. No lock, lease or
//! clock is involved.
//!
//! A hub's own files carry the WAL range in their names; the newest
//! snapshot therefore tells a restarted hub, per partition, how far its WAL
//! is archived (the log is the record, not a listing of directories).
//!
//! # Files outside the log
//! A file a crash left written but uncommitted, one that lost a race, or one
//! compaction or retention removed stays where it is until the vacuum
//! deletes it: a data file the newest version does not hold and that is
//! older than `vacuum-after` (so a reader holding an older snapshot, or a
//! hub between writing a file and committing it, is not cut off).
//!
//! Every `CHECKPOINT_EVERY` versions the hub that committed it writes a
//! checkpoint, so reading a snapshot stays fast as the log grows, and then
//! deletes the log entries before that checkpoint that are older than
//! `archive.log-retention` (7 days by default), so the log does not grow
//! without bound either.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema};
use iot_delta::{Change, Commit, DataFile, Operation};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use url::Url;

use super::*;

/// The partition columns of every archive table, in the log.
pub const PARTITION_COLUMNS: [&str; 3] = ["date", "hour", "hub"];

/// A checkpoint is written at every version divisible by this.
pub const CHECKPOINT_EVERY: u64 = 100;

/// How long log entries a checkpoint covers are kept by default. Delta's
/// own default `logRetentionDuration` is 30 days; a hub commits every few
/// minutes per table, and a snapshot of a local table lists the whole log
/// directory, so a week (about 2,000 entries per hub and table).
pub const DEFAULT_LOG_RETENTION: std::time::Duration =
    std::time::Duration::from_secs(7 * 24 * 3600);

/// Attempts at one commit before giving up (each lost attempt means another
/// hub committed; this many in a row means something is wrong).
const MAX_COMMIT_ATTEMPTS: usize = 200;

/// Other hubs' files whose batches are remembered; past this the memory
/// starts over (it is only a cache of footers).
const MAX_REMEMBERED_FILES: usize = 20_000;

/// The table's schema in the log: the files' columns, then the partition
/// columns.
pub fn delta_schema(table: Table) -> Schema {
    let mut fields: Vec<Field> = file_schema(&table.schema())
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.extend(
        PARTITION_COLUMNS
            .iter()
            .map(|c| Field::new(*c, DataType::Utf8, true)),
    );
    Schema::new(fields)
}

/// A data file the log holds, as the archive sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableFile {
    pub key: PartitionKey,
    pub hub: String,
    /// Relative to the table root (`date=.../hour=.../hub=.../name`).
    pub path: String,
    pub bytes: u64,
    pub rows: u64,
}

impl TableFile {
    /// The WAL range its name records.
    pub fn wal_range(&self) -> Option<(u64, u64)> {
        wal_range(Path::new(&self.path))
    }

    fn from_log(table: Table, file: DataFile) -> Option<TableFile> {
        let hour = read::hour_index(file.partition.get("date")?, file.partition.get("hour")?)?;
        Some(TableFile {
            key: PartitionKey { table, hour },
            hub: file.partition.get("hub")?.clone(),
            path: file.path,
            bytes: file.size,
            rows: file.rows,
        })
    }
}

/// Where a partition's files of one hub go, relative to the table root.
pub fn partition_path(key: PartitionKey, hub_id: &str) -> String {
    let (date, hour) = key.date_and_hour();
    format!("date={date}/hour={hour}/hub={hub_id}")
}

/// How the log records a file of `hub_id` in partition `key` (`path`
/// relative to the table root), committed now.
fn data_file(key: PartitionKey, hub_id: &str, path: &str, bytes: u64, rows: u64) -> DataFile {
    DataFile {
        path: path.to_owned(),
        partition: partition_values(key, hub_id),
        size: bytes,
        modified_ms: chrono::Utc::now().timestamp_millis(),
        rows,
    }
}

fn partition_values(key: PartitionKey, hub_id: &str) -> BTreeMap<String, String> {
    let (date, hour) = key.date_and_hour();
    BTreeMap::from([
        ("date".to_owned(), date),
        ("hour".to_owned(), hour),
        ("hub".to_owned(), hub_id.to_owned()),
    ])
}

/// The four tables of one archive (a local root or a bucket prefix).
pub struct ArchiveTables {
    store: Arc<dyn ObjectStore>,
    /// The archive's root as a URL (`file:///...` or `s3://bucket/prefix/`).
    url: Url,
    /// The archive's key prefix in `store`.
    prefix: ObjectPath,
    /// The local root, when the tables are on this machine's disk (log
    /// entries are then fsynced once committed).
    local: Option<PathBuf>,
    tables: BTreeMap<Table, iot_delta::Table>,
    /// For the footer reads and listings (the tables have their own);
    /// shut down without waiting when dropped (see `Drop`).
    rt: Option<tokio::runtime::Runtime>,
    /// Batches of other hubs' files, by object key.
    footers: HashMap<ObjectPath, Vec<BatchId>>,
    /// The last version seen of each table and its files: brought up to
    /// date by reading only newer log entries, and after this hub's own
    /// commit by applying the change (a full read of the files only when
    /// another writer committed).
    known: std::sync::Mutex<HashMap<Table, (iot_delta::Snapshot, Vec<TableFile>)>>,
    /// Versions another writer took first.
    lost: std::sync::atomic::AtomicU64,
    /// Where lost versions are counted for `/metrics` too.
    stats: Option<Arc<crate::stats::HubStats>>,
    /// After a checkpoint, log entries it covers that are older than this
    /// are deleted.
    log_retention: std::time::Duration,
}

impl std::fmt::Debug for ArchiveTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveTables")
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// The URL of a local directory (made absolute) and its key prefix in a
/// [`object_store::local::LocalFileSystem`].
fn local_location(root: &Path) -> io::Result<(Url, ObjectPath)> {
    let absolute = std::path::absolute(root)?;
    let url = Url::from_directory_path(&absolute)
        .map_err(|()| io::Error::other(format!("{} is not a usable path", root.display())))?;
    let prefix = ObjectPath::from_url_path(url.path()).map_err(io::Error::other)?;
    Ok((url, prefix))
}

/// Dropping a runtime on an async task panics: the tables may be dropped
/// anywhere (a tool's archive inside a test's runtime).
impl Drop for ArchiveTables {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl ArchiveTables {
    /// Opens (creating where missing) the tables under a local archive
    /// root. Must not be called on an async task (see `iot-delta`).
    pub fn open_local(root: &Path) -> Result<Self, ArchiveError> {
        refuse_hive_layout(root)?;
        Self::open_local_for_migration(root)
    }

    /// [`ArchiveTables::open_local`] on a root that may still hold the old
    /// layout (see [`super::migrate`]).
    pub(super) fn open_local_for_migration(root: &Path) -> Result<Self, ArchiveError> {
        for table in Table::ALL {
            // The kernel looks for a local table's directory before its log.
            std::fs::create_dir_all(root.join(table.name()))?;
        }
        let (url, prefix) = local_location(root)?;
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::local::LocalFileSystem::new());
        Self::open(store, url, prefix, Some(root.to_owned()))
    }

    /// Opens (creating where missing) the tables under `settings`' prefix
    /// in the bucket.
    pub fn open_bucket(settings: &s3::S3Settings) -> Result<Self, ArchiveError> {
        let store = settings.connect()?;
        let prefix = settings.prefix.trim_matches('/');
        let url = Url::parse(&format!("s3://{}/{prefix}/", settings.bucket))
            .map_err(|e| ArchiveError::Settings(format!("bucket or prefix: {e}")))?;
        Self::open(store, url, ObjectPath::from(prefix), None)
    }

    fn open(
        store: Arc<dyn ObjectStore>,
        url: Url,
        prefix: ObjectPath,
        local: Option<PathBuf>,
    ) -> Result<Self, ArchiveError> {
        let mut tables = BTreeMap::new();
        for table in Table::ALL {
            let root = url
                .join(&format!("{}/", table.name()))
                .map_err(|e| ArchiveError::Settings(e.to_string()))?;
            let opened = iot_delta::Table::open_or_create(
                Arc::clone(&store),
                root,
                &delta_schema(table),
                &PARTITION_COLUMNS,
            )?;
            tables.insert(table, opened);
        }
        Ok(Self {
            store,
            url,
            prefix,
            local,
            tables,
            rt: Some(
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?,
            ),
            footers: HashMap::new(),
            known: std::sync::Mutex::new(HashMap::new()),
            lost: std::sync::atomic::AtomicU64::new(0),
            stats: None,
            log_retention: DEFAULT_LOG_RETENTION,
        })
    }

    fn table(&self, table: Table) -> &iot_delta::Table {
        &self.tables[&table]
    }

    /// The object key of a file of `table` (`path` relative to its root).
    pub fn object_key(&self, table: Table, path: &str) -> ObjectPath {
        let mut key = self.prefix.clone();
        for part in std::iter::once(table.name()).chain(path.split('/')) {
            key = key.clone().join(part);
        }
        key
    }

    /// Counts lost versions in `stats` too (`hub_archive_commit_conflicts_total`).
    pub fn count_conflicts_in(&mut self, stats: Arc<crate::stats::HubStats>) {
        self.stats = Some(stats);
    }

    /// Keeps log entries a checkpoint covers for `retention` (instead of
    /// [`DEFAULT_LOG_RETENTION`]).
    pub fn keep_log_for(&mut self, retention: std::time::Duration) {
        self.log_retention = retention;
    }

    /// Commits of this hub that another writer beat to a version (each was
    /// checked again and retried).
    pub fn lost_versions(&self) -> u64 {
        self.lost.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The archive's root: `file:///...` or `s3://<bucket>/<prefix>/`.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The archive's key prefix in [`ArchiveTables::store`].
    pub fn prefix(&self) -> &ObjectPath {
        &self.prefix
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Runs a request to [`ArchiveTables::store`] to completion.
    pub fn block_on<F: std::future::Future>(&self, request: F) -> F::Output {
        self.rt.as_ref().expect("until dropped").block_on(request)
    }

    /// The files the newest version of `table` holds.
    pub fn files(&self, table: Table) -> Result<Vec<TableFile>, ArchiveError> {
        Ok(self.current(table)?.1)
    }

    /// The newest version of `table` and its files.
    fn current(&self, table: Table) -> Result<(iot_delta::Snapshot, Vec<TableFile>), ArchiveError> {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = match known.get(&table) {
            Some((seen, files)) => {
                let newest = self.table(table).refresh(seen)?;
                if newest.version() == seen.version() {
                    return Ok((newest, files.clone()));
                }
                newest
            }
            None => self.table(table).snapshot()?,
        };
        let files = files_of(table, &fresh)?;
        known.insert(table, (fresh.clone(), files.clone()));
        Ok((fresh, files))
    }

    /// Per partition, the last WAL position `hub_id`'s committed files hold.
    pub fn committed_through(
        &self,
        hub_id: &str,
    ) -> Result<HashMap<PartitionKey, u64>, ArchiveError> {
        let mut out: HashMap<PartitionKey, u64> = HashMap::new();
        for table in Table::ALL {
            for file in self.files(table)? {
                if file.hub != hub_id {
                    continue;
                }
                if let Some((_, last)) = file.wal_range() {
                    let e = out.entry(file.key).or_insert(last);
                    *e = (*e).max(last);
                }
            }
        }
        Ok(out)
    }

    /// Commits a finished file of `hub_id` in partition `key`, named `name`,
    /// following the protocol in the module docs. `local` is the file on
    /// this machine (rewritten without the batches other hubs hold);
    /// `place` puts it where the table's readers find it (called before
    /// every attempt, after any rewrite). Returns the rows committed.
    pub fn commit_new_file(
        &mut self,
        key: PartitionKey,
        hub_id: &str,
        name: &str,
        local: &Path,
        props: &WriterProperties,
        mut place: impl FnMut(&Self, &Path, &ObjectPath) -> Result<(), ArchiveError>,
    ) -> Result<u64, ArchiveError> {
        let path = format!("{}/{name}", partition_path(key, hub_id));
        let object = self.object_key(key.table, &path);
        let ours: HashSet<BatchId> = file_batches(local)?.into_iter().collect();
        for _ in 0..MAX_COMMIT_ATTEMPTS {
            let (snapshot, files) = self.current(key.table)?;
            if files.iter().any(|f| f.path == path) {
                // Committed before a crash (or a timeout that did land).
                return Ok(files.iter().find(|f| f.path == path).map_or(0, |f| f.rows));
            }
            let taken = self.batches_of_other_hubs(key, hub_id, &files)?;
            let overlap: HashSet<BatchId> = ours.intersection(&taken).cloned().collect();
            if !overlap.is_empty() {
                tracing::info!(file = %path, batches = overlap.len(), "batches another hub already archived are left out of this file");
                drop_batches(local, &overlap, props)?;
            }
            let rows = parquet_rows(local)?;
            let bytes = std::fs::metadata(local)?.len();
            place(self, local, &object)?;
            let change = Change {
                operation: Operation::Append,
                add: vec![data_file(key, hub_id, &path, bytes, rows)],
                ..Change::default()
            };
            if self.commit(key.table, &snapshot, &change)? {
                return Ok(rows);
            }
        }
        Err(too_many_attempts(key.table))
    }

    /// Replaces `removed` (paths of one partition's files) by `added` in one
    /// version (compaction: the same rows; readers of older versions keep
    /// the old files until the vacuum).
    pub fn commit_compaction(
        &self,
        key: PartitionKey,
        hub_id: &str,
        removed: &[String],
        added_name: &str,
        bytes: u64,
        rows: u64,
    ) -> Result<(), ArchiveError> {
        let path = format!("{}/{added_name}", partition_path(key, hub_id));
        let change = Change {
            operation: Operation::Compact,
            add: vec![data_file(key, hub_id, &path, bytes, rows)],
            remove: removed.to_vec(),
            transactions: Vec::new(),
        };
        self.commit_until_taken(key.table, &change)
    }

    /// Adds files that are already in place (a migration: partition, hub,
    /// path relative to the table root, bytes, rows) in one version.
    pub(super) fn commit_migrated(
        &self,
        table: Table,
        files: &[(PartitionKey, String, String, u64, u64)],
    ) -> Result<(), ArchiveError> {
        let change = Change {
            operation: Operation::Append,
            add: files
                .iter()
                .map(|(key, hub, path, bytes, rows)| data_file(*key, hub, path, *bytes, *rows))
                .collect(),
            ..Change::default()
        };
        self.commit_until_taken(table, &change)
    }

    /// Removes `hub_id`'s files of event hours before `first_kept` from every
    /// table (retention); returns the partitions that went.
    pub fn expire(&self, hub_id: &str, first_kept: i64) -> Result<usize, ArchiveError> {
        let mut partitions = 0;
        for table in Table::ALL {
            partitions += self.remove_files_of(table, hub_id, |hour| hour < first_kept)?;
        }
        Ok(partitions)
    }

    /// Removes `hub_id`'s files of `table` in the event hours `hours` picks
    /// in one version (retention, or a tool replacing what it wrote);
    /// returns the partitions that went.
    pub fn remove_files_of(
        &self,
        table: Table,
        hub_id: &str,
        hours: impl Fn(i64) -> bool,
    ) -> Result<usize, ArchiveError> {
        let files = self.files(table)?;
        let gone: Vec<&TableFile> = files
            .iter()
            .filter(|f| f.hub == hub_id && hours(f.key.hour))
            .collect();
        if gone.is_empty() {
            return Ok(0);
        }
        let change = Change {
            operation: Operation::Expire,
            remove: gone.iter().map(|f| f.path.clone()).collect(),
            ..Change::default()
        };
        self.commit_until_taken(table, &change)?;
        Ok(gone.iter().map(|f| f.key).collect::<HashSet<_>>().len())
    }

    /// Commits a change whose removals only this hub makes (its own files):
    /// a lost version is simply tried again after the newer one.
    fn commit_until_taken(&self, table: Table, change: &Change) -> Result<(), ArchiveError> {
        for _ in 0..MAX_COMMIT_ATTEMPTS {
            let (snapshot, _) = self.current(table)?;
            if self.commit(table, &snapshot, change)? {
                return Ok(());
            }
        }
        Err(too_many_attempts(table))
    }

    /// One attempt: `true` if `change` is now a version. A version taken
    /// on the local disk is fsynced; a version divisible by
    /// [`CHECKPOINT_EVERY`] gets a checkpoint.
    fn commit(
        &self,
        table: Table,
        snapshot: &iot_delta::Snapshot,
        change: &Change,
    ) -> Result<bool, ArchiveError> {
        let (version, after) = match self.table(table).commit_then_snapshot(snapshot, change)? {
            (Commit::Committed(v), after) => (v, after),
            (Commit::Conflict { .. }, _) => {
                self.lost.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Some(stats) = &self.stats {
                    stats
                        .archive_commit_conflicts
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                return Ok(false);
            }
        };
        self.remember(table, snapshot, change, after);
        if let Some(root) = &self.local {
            let log = root.join(table.name()).join("_delta_log");
            File::open(log.join(format!("{version:020}.json")))?.sync_all()?;
            File::open(&log)?.sync_all()?;
        }
        if version % CHECKPOINT_EVERY == 0 {
            self.checkpoint_and_clean(table, version);
        }
        Ok(true)
    }

    /// Writes a checkpoint of the newest version, then deletes the log
    /// entries before it that are older than the log retention. A failure
    /// is only logged: readers replay a longer log, and the next checkpoint
    /// covers it.
    fn checkpoint_and_clean(&self, table: Table, version: u64) {
        let delta = self.table(table);
        if let Err(e) = delta.snapshot().and_then(|s| delta.checkpoint(&s)) {
            tracing::warn!(table = table.name(), version, error = %e, "could not write a checkpoint");
            return;
        }
        let older_than = chrono::Utc::now().timestamp_millis()
            - i64::try_from(self.log_retention.as_millis()).unwrap_or(i64::MAX);
        match delta.clean_log(older_than) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(table = table.name(), entries = n, "old log entries deleted"),
            Err(e) => {
                tracing::warn!(table = table.name(), error = %e, "could not delete old log entries")
            }
        }
    }

    /// After this hub committed `change` on `base`: the version it made is
    /// `base`'s files with the change applied.
    fn remember(
        &self,
        table: Table,
        base: &iot_delta::Snapshot,
        change: &Change,
        after: Option<iot_delta::Snapshot>,
    ) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let Some(after) = after.filter(|a| a.version() == base.version() + 1) else {
            known.remove(&table);
            return;
        };
        let Some((seen, files)) = known.get(&table) else {
            return;
        };
        if seen.version() != base.version() {
            known.remove(&table);
            return;
        }
        let removed: HashSet<&String> = change.remove.iter().collect();
        let mut files: Vec<TableFile> = files
            .iter()
            .filter(|f| !removed.contains(&f.path))
            .cloned()
            .collect();
        files.extend(
            change
                .add
                .iter()
                .filter_map(|f| TableFile::from_log(table, f.clone())),
        );
        files.sort_by(|a, b| a.path.cmp(&b.path));
        known.insert(table, (after, files));
    }

    /// Deletes the data files of every table that the newest version does
    /// not hold and that were last written before `older_than_ms` (see the
    /// module docs); returns how many.
    pub fn vacuum(&self, older_than_ms: i64) -> Result<usize, ArchiveError> {
        use futures_util::TryStreamExt;
        let mut deleted = 0;
        for table in Table::ALL {
            // The snapshot first: a file committed after it was listed would
            // look unreferenced, but it is younger than the window.
            let live: HashSet<ObjectPath> = self
                .files(table)?
                .iter()
                .map(|f| self.object_key(table, &f.path))
                .collect();
            let root = self.prefix.clone().join(table.name());
            let objects: Vec<object_store::ObjectMeta> =
                self.block_on(self.store.list(Some(&root)).try_collect())?;
            for object in objects {
                let name = object.location.filename().unwrap_or_default();
                let in_log = object
                    .location
                    .prefix_match(&root.clone().join("_delta_log"))
                    .is_some();
                if in_log
                    || name.starts_with('.')
                    || !name.ends_with(".parquet")
                    || live.contains(&object.location)
                    || object.last_modified.timestamp_millis() >= older_than_ms
                {
                    continue;
                }
                match self.block_on(self.store.delete(&object.location)) {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(deleted)
    }

    /// The batches other hubs' files in `key`'s partition hold.
    fn batches_of_other_hubs(
        &mut self,
        key: PartitionKey,
        hub_id: &str,
        files: &[TableFile],
    ) -> Result<HashSet<BatchId>, ArchiveError> {
        if self.footers.len() > MAX_REMEMBERED_FILES {
            self.footers.clear();
        }
        let mut out = HashSet::new();
        for file in files.iter().filter(|f| f.key == key && f.hub != hub_id) {
            let object = self.object_key(key.table, &file.path);
            if !self.footers.contains_key(&object) {
                let ids = match self.block_on(footer_batches(self.store.as_ref(), &object)) {
                    Ok(ids) => ids,
                    Err(FooterError::NotParquet(why)) => {
                        // Holds no batch anybody can read: nothing to leave
                        // out for it.
                        tracing::warn!(key = %object, why, "a file in the archive that is not a readable Parquet file; ignored by the cross-hub check");
                        Vec::new()
                    }
                    Err(FooterError::Store(e)) => return Err(e.into()),
                };
                self.footers.insert(object.clone(), ids);
            }
            out.extend(self.footers[&object].iter().cloned());
        }
        Ok(out)
    }
}

fn files_of(table: Table, snapshot: &iot_delta::Snapshot) -> Result<Vec<TableFile>, ArchiveError> {
    let mut out = Vec::new();
    for file in snapshot.files()? {
        let path = file.path.clone();
        match TableFile::from_log(table, file) {
            Some(f) => out.push(f),
            None => tracing::warn!(
                table = table.name(),
                path,
                "a file in the log without the archive's partition values; ignored"
            ),
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn too_many_attempts(table: Table) -> ArchiveError {
    ArchiveError::Io(io::Error::other(format!(
        "table {}: lost {MAX_COMMIT_ATTEMPTS} commits in a row to other writers",
        table.name()
    )))
}

fn parquet_rows(path: &Path) -> io::Result<u64> {
    use parquet::file::reader::FileReader;
    let reader = parquet::file::reader::SerializedFileReader::new(File::open(path)?)
        .map_err(io::Error::other)?;
    Ok(reader.metadata().file_metadata().num_rows().max(0) as u64)
}

/// Refuses an archive root that still has (or again has) directories of the
/// old layout (`table=scored/...`): the `migrate-archive` command turns it
/// into Delta tables first.
pub fn refuse_hive_layout(root: &Path) -> Result<(), ArchiveError> {
    let old: Vec<String> = Table::ALL
        .iter()
        .map(|t| format!("table={}", t.name()))
        .filter(|d| root.join(d).exists())
        .collect();
    if old.is_empty() {
        return Ok(());
    }
    Err(ArchiveError::Settings(format!(
        "the archive at {} holds files in the layout before Delta tables ({}); run `inference-hub migrate-archive {}` once, then start the hub",
        root.display(),
        old.join(", "),
        root.display()
    )))
}

/// Why a file's batches are unknown.
pub(super) enum FooterError {
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

/// The batches an object holds, from its footer (`iot.batches`: two small
/// ranged reads); objects written before footers listed them are read whole.
pub(super) async fn footer_batches(
    store: &dyn ObjectStore,
    location: &ObjectPath,
) -> Result<Vec<BatchId>, FooterError> {
    let not_parquet = |why: &dyn std::fmt::Display| FooterError::NotParquet(why.to_string());
    let size = store.head(location).await?.size;
    if size < 12 {
        return Err(not_parquet(&"too small"));
    }
    let tail = store.get_range(location, size - 8..size).await?;
    let footer_len = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    if &tail[4..] != b"PAR1" || footer_len + 8 > size || footer_len > MAX_FOOTER_BYTES {
        return Err(not_parquet(
            &"no Parquet footer (or an implausibly large one)",
        ));
    }
    let footer = store
        .get_range(location, size - 8 - footer_len..size - 8)
        .await?;
    if let Some(ids) = footer_batch_ids(&footer).map_err(|e| not_parquet(&e))? {
        return Ok(ids);
    }
    let whole = store.get(location).await?.bytes().await?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(whole)
        .and_then(|b| b.build())
        .map_err(|e| not_parquet(&e))?;
    let mut ids = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| not_parquet(&e))?;
        ids.extend(batch_ids(&batch).unwrap_or_default());
    }
    Ok(ids)
}

#[cfg(test)]
mod tests;
