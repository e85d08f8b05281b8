//! One archive table as a Delta Lake table: its transaction log.
//!
//! The hub's archive writes its own Parquet files; this crate makes them a
//! table every Delta reader (Spark, Trino, DuckDB, Polars, the Python
//! `deltalake` package) opens, and gives the hub the commit point that
//! replaces home-made locks (docs/adr/0009):
//!
//! - [`Table::open_or_create`] opens the table at a URL (a local directory
//!   or a bucket prefix, through the hub's own `object_store` client), or
//!   creates it with the given Arrow schema and partition columns. A table
//!   whose schema or partition columns differ is refused, never written to.
//! - [`Table::snapshot`] reads one version: the data files it holds (path,
//!   partition values, size, rows) and the versions of application
//!   transactions (`txn`), which a writer uses to know what it already
//!   committed.
//! - [`Table::commit`] writes a [`Change`] (files added, files removed,
//!   application transactions) as the version after a snapshot, with a
//!   conditional create of the next log entry: of two writers only one
//!   takes a version; the other gets [`Commit::Conflict`] and re-checks its
//!   change against the newer snapshot before trying again. Nothing here
//!   waits on a lease or compares clocks.
//!
//! [`Table::checkpoint`] writes a checkpoint, so readers need not replay
//! the whole log, and [`Table::clean_log`] deletes the old log entries a
//! checkpoint covers (the kernel has no log cleanup).
//!
//! Removing a file from the table does not delete it: a reader holding an
//! older snapshot can still read it; deleting unreferenced files after a
//! retention window is the vacuum's job.
//!
//! Calls block (each table runs its I/O on a small multi-threaded runtime of
//! its own), so they belong on the archive's threads, not on an async task:
//! called from inside a Tokio runtime they panic.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use arrow_array::builder::{MapBuilder, MapFieldNames, StringBuilder};
use arrow_array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray, StructArray};
use arrow_schema::{DataType, Field, Schema};
use delta_kernel::committer::FileSystemCommitter;
use delta_kernel::engine::arrow_conversion::TryFromArrow;
use delta_kernel::engine::arrow_data::ArrowEngineData;
use delta_kernel::engine_data::FilteredEngineData;
use delta_kernel::scan::state::ScanFile;
use delta_kernel::schema::StructType;
use delta_kernel::transaction::create_table::create_table;
use delta_kernel::transaction::data_layout::DataLayout;
use delta_kernel::transaction::{CommitResult, UpdateTableOperation};
use delta_kernel::{KernelError, SnapshotRef};
use delta_kernel_default_engine::DefaultEngine;
use delta_kernel_default_engine::executor::tokio::TokioMultiThreadExecutor;
use object_store::ObjectStore;
use url::Url;

/// What the log records as the writer of each commit.
const ENGINE_INFO: &str = concat!("iot-pipeline/", env!("CARGO_PKG_VERSION"));

type Engine = DefaultEngine<TokioMultiThreadExecutor>;

/// Threads of each table's I/O runtime (with the kernel's single-thread
/// background executor a checkpoint hung; the kernel documents that
/// checkpoints need the multi-threaded one).
const IO_THREADS: usize = 2;

/// A failure reading or writing a table's log.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    /// The kernel failed (storage, a damaged or unreadable log entry, an
    /// invalid action).
    #[error("delta table {table}: {source}")]
    Kernel {
        table: String,
        #[source]
        source: Box<KernelError>,
    },
    /// The table exists with another schema or other partition columns.
    #[error("delta table {table} is not this archive's table: {reason}")]
    Foreign { table: String, reason: String },
}

/// A data file as the table's log records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFile {
    /// Relative to the table root, `/`-separated, as the log stores it.
    pub path: String,
    /// Partition column -> value.
    pub partition: BTreeMap<String, String>,
    /// Bytes.
    pub size: u64,
    /// Milliseconds since the Unix epoch.
    pub modified_ms: i64,
    /// Rows in the file (`numRecords` of its statistics; 0 when absent).
    pub rows: u64,
}

/// Why a change is committed (the log's `operation`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Operation {
    /// New data files.
    #[default]
    Append,
    /// Files merged into fewer ones: the same rows, removed and added
    /// together (`dataChange: false`).
    Compact,
    /// Files dropped because their data is older than the retention.
    Expire,
}

/// One commit's content.
#[derive(Debug, Clone, Default)]
pub struct Change {
    pub operation: Operation,
    /// Files the table holds from this version on.
    pub add: Vec<DataFile>,
    /// Paths (as [`DataFile::path`]) the table no longer holds; each must be
    /// in the snapshot the change is committed after.
    pub remove: Vec<String>,
    /// Application transactions: `(application id, version)`; a reader of a
    /// later snapshot finds the highest version each id committed.
    pub transactions: Vec<(String, i64)>,
}

/// What came of a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// The change is now this version of the table.
    Committed(u64),
    /// Another writer took the next version first; nothing was written.
    /// Take a new snapshot and check the change against it.
    Conflict { version: u64 },
}

/// See [`Table::clean_log`]; `log` is the table's `_delta_log` directory.
async fn clean_log(
    store: &dyn ObjectStore,
    log: &object_store::path::Path,
    older_than_ms: i64,
) -> Result<usize, object_store::Error> {
    use object_store::ObjectStoreExt;
    let hint = match store.get(&log.clone().join("_last_checkpoint")).await {
        Ok(got) => got.bytes().await?,
        Err(object_store::Error::NotFound { .. }) => return Ok(0),
        Err(e) => return Err(e),
    };
    let Some(checkpoint) = serde_json::from_slice::<serde_json::Value>(&hint)
        .ok()
        .and_then(|v| v.get("version")?.as_u64())
    else {
        return Ok(0);
    };
    let listed = store.list_with_delimiter(Some(log)).await?.objects;
    let checkpoint_there = listed.iter().any(|o| {
        log_entry_version(o)
            .is_some_and(|(v, kind)| v == checkpoint && kind == LogEntry::Checkpoint)
    });
    if !checkpoint_there {
        return Ok(0);
    }
    let mut expired: Vec<(u64, &object_store::path::Path)> = listed
        .iter()
        .filter(|o| o.last_modified.timestamp_millis() < older_than_ms)
        .filter_map(|o| {
            let (version, _) = log_entry_version(o)?;
            (version < checkpoint).then_some((version, &o.location))
        })
        .collect();
    // Oldest first: a cleanup cut short leaves a log without holes above
    // what it deleted.
    expired.sort();
    for (_, location) in &expired {
        match store.delete(location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(expired.len())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogEntry {
    Commit,
    Checkpoint,
    Checksum,
}

/// The version and kind of a log entry (`<20 digits>.json`,
/// `.checkpoint[.<part or id>].parquet`, `.crc`); `None` for anything else.
fn log_entry_version(object: &object_store::ObjectMeta) -> Option<(u64, LogEntry)> {
    let name = object.location.filename()?;
    let (digits, rest) = name.split_at_checked(20)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let kind = match rest {
        ".json" => LogEntry::Commit,
        ".crc" => LogEntry::Checksum,
        _ if rest.starts_with(".checkpoint.") && rest.ends_with(".parquet") => LogEntry::Checkpoint,
        _ => return None,
    };
    Some((digits.parse().ok()?, kind))
}

/// The kernel's engine and the runtime its I/O runs on. Dropping it shuts
/// the runtime down without waiting for it, so a table or snapshot may be
/// dropped anywhere, on an async task too (dropping a runtime there panics).
struct Io {
    engine: Engine,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Io {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Io").finish_non_exhaustive()
    }
}

impl Drop for Io {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl std::ops::Deref for Io {
    type Target = Engine;

    fn deref(&self) -> &Engine {
        &self.engine
    }
}

/// An open table.
#[derive(Debug, Clone)]
pub struct Table {
    root: Url,
    engine: Arc<Io>,
    /// The store the engine reads and writes (for log cleanup, which the
    /// kernel does not do).
    store: Arc<dyn ObjectStore>,
}

/// One version of a table.
#[derive(Debug, Clone)]
pub struct Snapshot {
    inner: SnapshotRef,
    engine: Arc<Io>,
}

impl Table {
    /// Opens the table at `root` (a directory URL, ending in `/`), creating
    /// it with `schema` partitioned by `partition_columns` (which must be
    /// string columns of `schema`) if it has no log yet. Two hubs creating
    /// the same table at once both end up opening the one that won.
    pub fn open_or_create(
        store: Arc<dyn ObjectStore>,
        root: Url,
        schema: &Schema,
        partition_columns: &[&str],
    ) -> Result<Table, DeltaError> {
        let table = Table::new(store, root)?;
        let kernel_schema = Arc::new(
            StructType::try_from_arrow(schema).map_err(|e| table.kernel(KernelError::Arrow(e)))?,
        );
        if !table.has_log()?
            && let Err(failed) = table.create(Arc::clone(&kernel_schema), partition_columns)
            // Another writer created it between the look and the create
            // (its commit took version 0 or its log appeared before ours
            // was built): open theirs.
            && !table.has_log()?
        {
            return Err(failed);
        }
        let snapshot = table.snapshot()?;
        if snapshot.inner.schema() != kernel_schema {
            return Err(DeltaError::Foreign {
                table: table.root.to_string(),
                reason: "its schema differs".into(),
            });
        }
        let partitioned_by = snapshot
            .inner
            .table_configuration()
            .metadata()
            .partition_columns();
        if partitioned_by != partition_columns {
            return Err(DeltaError::Foreign {
                table: table.root.to_string(),
                reason: format!("it is partitioned by {partitioned_by:?}"),
            });
        }
        Ok(table)
    }

    /// Opens the table at `root` for reading, if it has a log (`None`:
    /// nothing was ever committed there). Its schema is whatever the log
    /// says.
    pub fn open_existing(
        store: Arc<dyn ObjectStore>,
        root: Url,
    ) -> Result<Option<Table>, DeltaError> {
        let table = Table::new(store, root)?;
        Ok(table.has_log()?.then_some(table))
    }

    fn new(store: Arc<dyn ObjectStore>, root: Url) -> Result<Table, DeltaError> {
        let root = directory_url(root);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(IO_THREADS)
            .enable_all()
            .build()
            .map_err(|e| DeltaError::Kernel {
                table: root.to_string(),
                source: Box::new(KernelError::generic(format!(
                    "cannot start its I/O runtime: {e}"
                ))),
            })?;
        let executor = TokioMultiThreadExecutor::new(runtime.handle().clone());
        let engine = DefaultEngine::builder(Arc::clone(&store))
            .with_task_executor(Arc::new(executor))
            .build();
        Ok(Table {
            store,
            root,
            engine: Arc::new(Io {
                engine,
                runtime: Some(runtime),
            }),
        })
    }

    /// The table's root URL.
    pub fn root(&self) -> &Url {
        &self.root
    }

    /// The latest version.
    pub fn snapshot(&self) -> Result<Snapshot, DeltaError> {
        let inner = delta_kernel::Snapshot::builder_for(self.root.as_str())
            .build(&self.engine.engine)
            .map_err(|e| self.kernel(e))?;
        Ok(Snapshot {
            inner,
            engine: Arc::clone(&self.engine),
        })
    }

    /// `snapshot` brought up to the latest version, reading only the log
    /// entries after it (the same snapshot when nothing was committed
    /// since).
    pub fn refresh(&self, snapshot: &Snapshot) -> Result<Snapshot, DeltaError> {
        let inner = delta_kernel::Snapshot::builder_from(Arc::clone(&snapshot.inner))
            .build(&self.engine.engine)
            .map_err(|e| self.kernel(e))?;
        Ok(Snapshot {
            inner,
            engine: Arc::clone(&self.engine),
        })
    }

    /// Commits `change` as the version after `base`.
    pub fn commit(&self, base: &Snapshot, change: &Change) -> Result<Commit, DeltaError> {
        self.commit_then_snapshot(base, change)
            .map(|(commit, _)| commit)
    }

    /// [`Table::commit`], also returning the snapshot of the version it
    /// committed (when the kernel made one), so a writer that knows what it
    /// changed need not read the log again.
    pub fn commit_then_snapshot(
        &self,
        base: &Snapshot,
        change: &Change,
    ) -> Result<(Commit, Option<Snapshot>), DeltaError> {
        let (operation, data_change) = match change.operation {
            Operation::Append => (UpdateTableOperation::StreamingUpdate, true),
            Operation::Compact => (UpdateTableOperation::Optimize, false),
            Operation::Expire => (UpdateTableOperation::Delete, true),
        };
        let mut builder = Arc::clone(&base.inner).update_table(operation, ENGINE_INFO, data_change);
        for (app, version) in &change.transactions {
            builder = builder.with_transaction_id(app.clone(), *version);
        }
        let mut txn = builder
            .build(&self.engine.engine, Box::new(FileSystemCommitter::new()))
            .map_err(|e| self.kernel(e))?;
        if !change.add.is_empty() {
            txn.add_files(Box::new(ArrowEngineData::new(
                add_batch(&change.add).map_err(|e| self.kernel(KernelError::Arrow(e)))?,
            )));
        }
        if !change.remove.is_empty() {
            for files in base.files_selected(&change.remove)? {
                txn.remove_files(files);
            }
        }
        match txn
            .commit(&self.engine.engine)
            .map_err(|e| self.kernel(e))?
        {
            CommitResult::Committed(done) => Ok((
                Commit::Committed(done.commit_version()),
                done.post_commit_snapshot().map(|inner| Snapshot {
                    inner: Arc::clone(inner),
                    engine: Arc::clone(&self.engine),
                }),
            )),
            CommitResult::Conflicted(conflict) => Ok((
                Commit::Conflict {
                    version: conflict.conflict_version(),
                },
                None,
            )),
            CommitResult::Retryable(failed) => Err(self.kernel(failed.error)),
        }
    }

    /// Writes a checkpoint of `snapshot` (its live files, transactions and
    /// metadata in one Parquet file next to the log, and `_last_checkpoint`
    /// pointing at it), so readers replay the log from there instead of
    /// from version 0. Returns false when that version already has one.
    pub fn checkpoint(&self, snapshot: &Snapshot) -> Result<bool, DeltaError> {
        let (written, _) = snapshot
            .inner
            .checkpoint(&self.engine.engine, None)
            .map_err(|e| self.kernel(e))?;
        Ok(!matches!(
            written,
            delta_kernel::snapshot::CheckpointWriteResult::AlreadyExists
        ))
    }

    /// Deletes log entries the newest checkpoint made unnecessary: the
    /// commits, older checkpoints and checksums of versions before the one
    /// `_last_checkpoint` names, if they were written before
    /// `older_than_ms` (Delta's `logRetentionDuration`: a reader can no
    /// longer travel to those versions; every other reader starts from the
    /// checkpoint). Returns how many objects went. Nothing goes while the
    /// table has no checkpoint, or when the one named is not there.
    pub fn clean_log(&self, older_than_ms: i64) -> Result<usize, DeltaError> {
        let log = object_store::path::Path::from_url_path(self.root.path())
            .map_err(|e| self.kernel(KernelError::generic(e.to_string())))?
            .join("_delta_log");
        let runtime = self
            .engine
            .runtime
            .as_ref()
            .expect("the runtime lives as long as the table");
        runtime
            .block_on(clean_log(self.store.as_ref(), &log, older_than_ms))
            .map_err(|e| self.kernel(KernelError::generic(format!("log cleanup: {e}"))))
    }

    /// Creates the table (version 0); a writer that created it first makes
    /// this a conflict, which is not an error.
    fn create(
        &self,
        schema: Arc<StructType>,
        partition_columns: &[&str],
    ) -> Result<(), DeltaError> {
        let created = create_table(self.root.as_str(), schema, ENGINE_INFO, true)
            .with_data_layout(DataLayout::partitioned(partition_columns))
            .build(&self.engine.engine, Box::new(FileSystemCommitter::new()))
            .and_then(|txn| txn.commit(&self.engine.engine))
            .map_err(|e| self.kernel(e))?;
        match created {
            CommitResult::Committed(_) | CommitResult::Conflicted(_) => Ok(()),
            CommitResult::Retryable(failed) => Err(self.kernel(failed.error)),
        }
    }

    /// Whether the table has a log: any object under `_delta_log/`.
    fn has_log(&self) -> Result<bool, DeltaError> {
        use delta_kernel::Engine as _;
        let log = self
            .root
            .join("_delta_log/")
            .map_err(|e| self.kernel(KernelError::generic(e.to_string())))?;
        let mut listed = self
            .engine
            .storage_handler()
            .list_from(&log)
            .map_err(|e| self.kernel(e))?;
        match listed.next() {
            None => Ok(false),
            Some(Ok(_)) => Ok(true),
            Some(Err(e)) => Err(self.kernel(e)),
        }
    }

    fn kernel(&self, source: KernelError) -> DeltaError {
        DeltaError::Kernel {
            table: self.root.to_string(),
            source: Box::new(source),
        }
    }
}

impl Snapshot {
    /// The table version this snapshot shows.
    pub fn version(&self) -> u64 {
        self.inner.version()
    }

    /// The data files of this version.
    pub fn files(&self) -> Result<Vec<DataFile>, DeltaError> {
        let mut out = Vec::new();
        for metadata in self.scan()? {
            let metadata = metadata.map_err(|e| self.kernel(e))?;
            out = metadata
                .visit_scan_files(out, collect_file)
                .map_err(|e| self.kernel(e))?;
        }
        Ok(out)
    }

    /// The highest version application `app` committed, if it did.
    pub fn transaction_version(&self, app: &str) -> Result<Option<i64>, DeltaError> {
        self.inner
            .get_app_id_version(app, &self.engine.engine)
            .map_err(|e| self.kernel(e))
    }

    /// This version's file rows with only `paths` selected (for removal);
    /// every path must be in this version.
    fn files_selected(&self, paths: &[String]) -> Result<Vec<FilteredEngineData>, DeltaError> {
        let wanted: HashSet<&str> = paths.iter().map(String::as_str).collect();
        let mut found = HashSet::new();
        let mut out = Vec::new();
        for metadata in self.scan()? {
            let metadata = metadata.map_err(|e| self.kernel(e))?;
            let (data, selected) = metadata.scan_files.into_parts();
            let batch = data
                .any_ref()
                .downcast_ref::<ArrowEngineData>()
                .map(|d| d.record_batch().clone())
                .ok_or_else(|| self.kernel(KernelError::generic("scan rows are not Arrow")))?;
            let path_column = batch
                .column_by_name("path")
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                .ok_or_else(|| self.kernel(KernelError::generic("scan rows have no path")))?;
            let selection: Vec<bool> = (0..batch.num_rows())
                .map(|row| {
                    let live = selected.get(row).copied().unwrap_or(true);
                    let path = path_column.value(row);
                    let take = live && wanted.contains(path);
                    if take {
                        found.insert(path.to_owned());
                    }
                    take
                })
                .collect();
            out.push(FilteredEngineData::try_new(data, selection).map_err(|e| self.kernel(e))?);
        }
        if let Some(missing) = paths.iter().find(|p| !found.contains(p.as_str())) {
            return Err(self.kernel(KernelError::generic(format!(
                "{missing} is not in version {}",
                self.version()
            ))));
        }
        Ok(out)
    }

    fn scan(
        &self,
    ) -> Result<
        impl Iterator<Item = Result<delta_kernel::scan::ScanMetadata, KernelError>>,
        DeltaError,
    > {
        Arc::clone(&self.inner)
            .scan_builder()
            .build()
            .and_then(|scan| scan.scan_metadata(&self.engine.engine))
            .map_err(|e| self.kernel(e))
    }

    fn kernel(&self, source: KernelError) -> DeltaError {
        DeltaError::Kernel {
            table: self.inner.table_root().to_string(),
            source: Box::new(source),
        }
    }
}

fn collect_file(out: &mut Vec<DataFile>, file: ScanFile) {
    out.push(DataFile {
        path: file.path,
        partition: file.partition_values.into_iter().collect(),
        size: u64::try_from(file.size).unwrap_or(0),
        modified_ms: file.modification_time,
        rows: file.stats.map_or(0, |s| s.num_records),
    });
}

/// `root` with a trailing `/` (the kernel joins paths onto it).
fn directory_url(mut root: Url) -> Url {
    if !root.path().ends_with('/') {
        let path = format!("{}/", root.path());
        root.set_path(&path);
    }
    root
}

/// The kernel's add-file rows (`Transaction::add_files_schema`): path,
/// partition values, size, modification time and statistics
/// (`numRecords`).
fn add_batch(files: &[DataFile]) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let names = MapFieldNames {
        entry: "key_value".into(),
        key: "key".into(),
        value: "value".into(),
    };
    let mut partitions = MapBuilder::new(Some(names), StringBuilder::new(), StringBuilder::new());
    for file in files {
        for (column, value) in &file.partition {
            partitions.keys().append_value(column);
            partitions.values().append_value(value);
        }
        partitions.append(true)?;
    }
    let partitions = Arc::new(partitions.finish());
    let num_records: ArrayRef = Arc::new(Int64Array::from_iter_values(
        files
            .iter()
            .map(|f| i64::try_from(f.rows).unwrap_or(i64::MAX)),
    ));
    let stats = StructArray::from(vec![(
        Arc::new(Field::new("numRecords", DataType::Int64, true)),
        num_records,
    )]);
    let entry = DataType::Struct(
        vec![
            Field::new("key", DataType::Utf8, false),
            Field::new("value", DataType::Utf8, true),
        ]
        .into(),
    );
    let schema = Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new(
            "partitionValues",
            DataType::Map(Arc::new(Field::new("key_value", entry, false)), false),
            false,
        ),
        Field::new("size", DataType::Int64, false),
        Field::new("modificationTime", DataType::Int64, false),
        Field::new("stats", stats.data_type().clone(), true),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(StringArray::from_iter_values(
                files.iter().map(|f| f.path.as_str()),
            )),
            partitions,
            Arc::new(Int64Array::from_iter_values(
                files
                    .iter()
                    .map(|f| i64::try_from(f.size).unwrap_or(i64::MAX)),
            )),
            Arc::new(Int64Array::from_iter_values(
                files.iter().map(|f| f.modified_ms),
            )),
            Arc::new(stats),
        ],
    )
}

#[cfg(test)]
mod tests;
