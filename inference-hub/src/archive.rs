//! The Parquet archive: scored readings and anomaly events, as Delta Lake
//! tables partitioned by event date, hour and hub (see [`tables`] for the
//! layout, the log and the commit protocol several hubs share).
//!
//! ```text
//! <root>/scored/_delta_log/...
//! <root>/scored/date=2026-11-26/hour=07/hub=<hub>/<hub>-<first-pos>-<last-pos>.parquet
//! <root>/anomalies/...  <root>/shadow/...  <root>/rescored/...
//! ```
//!
//! # Inside a file
//! Rows are buffered per open file and written in row groups of
//! `row-group-rows`, each sorted by device, metric and time (so readers can
//! skip row groups by device through the statistics); string columns are
//! dictionary-encoded, numeric ones are not (their dictionaries would not pay);
//! zstd; page-level statistics. `writer` writes the row groups, encoding the
//! string columns from the dictionary keys the sort gathers. Each file's
//! footer lists the batches it holds (`iot.batches`), which other hubs read.
//!
//! # Writing and committing
//! Each partition has at most one open file, written under a hidden temporary
//! name (`.<hub>-<first-pos>.parquet.inprogress`). When it reaches the target
//! size or maximum age it is closed, fsynced and renamed to its final name;
//! with a local archive it is then committed to its table's log (the log
//! entry fsynced), with `[archive.s3]` the uploader puts it in the bucket
//! and commits it there ([`s3`]). A reader sees a file only once a version
//! of the log adds it.
//!
//! # Exactly once across crashes
//! Rows reach the archive in WAL order, so the files of one partition cover
//! consecutive ranges of WAL positions, and the final name records that range.
//! After a crash the hub learns from the newest version of each table (and,
//! with `[archive.s3]`, from the files still waiting for upload) per
//! partition the last WAL position already archived, and replays the WAL
//! skipping, per partition, every record at or below it. A record is
//! therefore written once per partition however often the hub dies.
//! Left-over temporary files are deleted at start-up; a renamed file whose
//! commit a crash cut off is rewritten by the replay (or, under another name,
//! deleted by the vacuum).
//!
//! # Compaction and retention (versions, never a partial state)
//! In a *closed* partition (its hour ended `compaction-grace` ago, no open
//! file), the hub's *small* files (under half the target size) are merged,
//! oldest first and up to the target size, into one file fully sorted by
//! device, metric and time, named after the union of their WAL ranges; one
//! version removes the small files and adds the merged one. With
//! `retention`, one version per table removes this hub's files of hours that
//! ended longer ago. The removed files stay readable for readers of older
//! versions until the vacuum deletes them (`vacuum-after`). With
//! `[archive.s3] upload = "when-closed"` the files waiting locally are merged
//! before upload instead, by swapping the partition's staging directory in one
//! `renameat2(RENAME_EXCHANGE)`.
//!
//! The WAL may drop a segment only when no open file still holds rows from it:
//! [`Archive::low_water`] is the smallest WAL position that is not yet in a
//! committed file.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arrow_array::{Array, RecordBatch, TimestampMicrosecondArray, UInt32Array};
use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::config::ArchiveSettings;
use crate::names::{NumberedNames, StrColumn};

/// The archive's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Scored,
    Anomalies,
    /// What shadow models scored (the scored schema), for comparison.
    Shadow,
    /// What `iot-lab rescore` produced from an archived range with
    /// another model (the scored schema); the original scores stay.
    Rescored,
}

impl Table {
    pub const ALL: [Table; 4] = [
        Table::Scored,
        Table::Anomalies,
        Table::Shadow,
        Table::Rescored,
    ];
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Scored => "scored",
            Table::Anomalies => "anomalies",
            Table::Shadow => "shadow",
            Table::Rescored => "rescored",
        }
    }

    pub fn schema(self) -> SchemaRef {
        match self {
            Table::Scored => schemas::tables::scored_schema(),
            Table::Anomalies => schemas::tables::anomaly_schema(),
            Table::Shadow | Table::Rescored => schemas::tables::scored_schema(),
        }
    }
}

const HOUR_US: i64 = 3_600_000_000;

/// `(gateway, incarnation, seq)`: a batch's identity.
pub type BatchId = (String, u64, u64);

/// One table-hour partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionKey {
    pub table: Table,
    /// Hours since the Unix epoch (UTC).
    pub hour: i64,
}

impl PartitionKey {
    /// The partition's directory below an archive root (its table's root,
    /// then `date=`/`hour=`).
    pub fn dir(&self, root: &Path) -> PathBuf {
        let (date, hour) = self.date_and_hour();
        root.join(self.table.name())
            .join(format!("date={date}"))
            .join(format!("hour={hour}"))
    }

    /// The partition values: `YYYY-MM-DD` and `HH` (UTC).
    pub fn date_and_hour(&self) -> (String, String) {
        let start =
            chrono::DateTime::from_timestamp_micros(self.hour * HOUR_US).unwrap_or_default();
        (
            start.format("%Y-%m-%d").to_string(),
            start.format("%H").to_string(),
        )
    }

    /// The directory one hub writes this partition's files in.
    pub fn hub_dir(&self, root: &Path, hub_id: &str) -> PathBuf {
        self.dir(root).join(format!("hub={hub_id}"))
    }
}

/// Creates `dir` and any missing ancestors, fsyncing each parent whose
/// entries changed, so a new directory survives a power cut.
fn create_dir_durable(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_durable(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    if let Some(parent) = dir.parent() {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

struct OpenFile {
    writer: ArchiveFileWriter,
    row_group_rows: usize,
    /// Rows waiting to be sorted into the next row group.
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    /// Second handle on the same file, to fsync after the writer closes it.
    sync_handle: File,
    tmp_path: PathBuf,
    first_pos: u64,
    last_pos: u64,
    opened_at: Instant,
    /// `Archive::appends` when rows were last added (least recently
    /// written files are committed first when too many are open).
    last_append: u64,
    /// The batches whose rows the file holds (its `iot.batches` footer).
    batches: std::collections::BTreeSet<BatchId>,
}

/// A file that became visible.
#[derive(Debug, Clone)]
pub struct CommittedFile {
    pub path: PathBuf,
    pub rows: u64,
    pub bytes: u64,
}

pub struct Archive {
    root: PathBuf,
    hub_id: String,
    settings: ArchiveSettings,
    props: WriterProperties,
    /// The tables of a local archive (`None` with `[archive.s3]`: the root
    /// then stages files for the uploader, which commits them in the bucket).
    tables: Option<tables::ArchiveTables>,
    open: HashMap<PartitionKey, OpenFile>,
    /// Per partition, the last WAL position already in a committed file.
    committed_through: HashMap<PartitionKey, u64>,
    /// The WAL position after the last record appended.
    appended_until: u64,
    /// Partitions appended to so far (a clock for `OpenFile::last_append`).
    appends: u64,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive")
            .field("root", &self.root)
            .field("open_files", &self.open.len())
            .finish()
    }
}

/// Runs `f` on a thread of its own: opening tables starts runtimes, which
/// cannot start inside the hub's.
fn off_runtime<T: Send>(
    f: impl FnOnce() -> Result<T, ArchiveError> + Send,
) -> Result<T, ArchiveError> {
    std::thread::scope(|scope| {
        scope
            .spawn(f)
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("opening the archive panicked").into()))
    })
}

impl Archive {
    /// The hub's whole archive start-up: with `[archive.s3]` the bucket is
    /// checked for conditional writes, its tables are opened and what they
    /// hold of this hub counts as committed, and the uploader is started
    /// with the files still waiting under the local root; without, the
    /// local tables are opened ([`Archive::open`]).
    pub fn start(
        root: &Path,
        hub_id: &str,
        settings: &ArchiveSettings,
        stats: &std::sync::Arc<crate::stats::HubStats>,
    ) -> Result<(Self, Option<s3::Uploader>), ArchiveError> {
        let Some(s3) = &settings.s3 else {
            let mut archive = off_runtime(|| Self::open(root, hub_id, settings.clone()))?;
            if let Some(tables) = archive.tables.as_mut() {
                tables.count_conflicts_in(std::sync::Arc::clone(stats));
            }
            return Ok((archive, None));
        };
        let (mut bucket, remote) = off_runtime(|| s3::open_bucket_tables(s3, hub_id))?;
        bucket.count_conflicts_in(std::sync::Arc::clone(stats));
        bucket.keep_log_for(settings.log_retention);
        let archive = Self::open_staging(root, hub_id, settings.clone(), &remote)?;
        let resume = s3::files_to_resume(s3, root, &bucket)?;
        let uploader = s3::Uploader::start(
            bucket,
            settings,
            root.to_owned(),
            hub_id,
            archive.writer_properties(),
            std::sync::Arc::clone(stats),
            &resume,
        )?;
        Ok((archive, Some(uploader)))
    }

    /// Opens a local archive root: its tables (created where missing),
    /// what earlier runs of this hub committed to them, and removes this
    /// hub's left-over temporary files. Must not be called on an async
    /// task.
    pub fn open(
        root: &Path,
        hub_id: &str,
        settings: ArchiveSettings,
    ) -> Result<Self, ArchiveError> {
        let mut tables = tables::ArchiveTables::open_local(root)?;
        tables.keep_log_for(settings.log_retention);
        let committed_through = tables.committed_through(hub_id)?;
        Self::open_with(root, hub_id, settings, Some(tables), committed_through)
    }

    /// Opens the local root of an archive in the bucket, where committed
    /// files wait for upload: they count as committed, as do the files the
    /// bucket's tables hold of this hub (`remote`, per partition the last
    /// WAL position).
    pub fn open_staging(
        root: &Path,
        hub_id: &str,
        settings: ArchiveSettings,
        remote: &HashMap<PartitionKey, u64>,
    ) -> Result<Self, ArchiveError> {
        let mut committed_through = remote.clone();
        for table in Table::ALL {
            for file in staged_files(root, table)? {
                if file.parent().and_then(|d| d.file_name())
                    != Some(format!("hub={hub_id}").as_ref())
                {
                    continue;
                }
                if let (Some((_, last)), Some(hour)) = (wal_range(&file), hour_of_file(&file)) {
                    let e = committed_through
                        .entry(PartitionKey { table, hour })
                        .or_insert(last);
                    *e = (*e).max(last);
                }
            }
        }
        Self::open_with(root, hub_id, settings, None, committed_through)
    }

    fn open_with(
        root: &Path,
        hub_id: &str,
        settings: ArchiveSettings,
        tables: Option<tables::ArchiveTables>,
        committed_through: HashMap<PartitionKey, u64>,
    ) -> Result<Self, ArchiveError> {
        fs::create_dir_all(root)?;
        tables::refuse_hive_layout(root)?;
        // What an interrupted staging compaction or expiry left behind is
        // invisible to readers and no longer needed.
        match fs::remove_dir_all(root.join(".staging")) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        let tmp_prefix = format!(".{hub_id}-");
        let own_dir = format!("hub={hub_id}");
        for table in Table::ALL {
            for file in walk_files(&root.join(table.name()))? {
                // Only this hub's directories: on a shared root another hub's
                // id may start with this one's (`hub` and `hub-1`).
                if file.parent().and_then(|d| d.file_name()) != Some(own_dir.as_ref()) {
                    continue;
                }
                let name = file
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                if name.starts_with(&tmp_prefix)
                    && (name.ends_with(".inprogress") || name.ends_with(".rewrite"))
                {
                    fs::remove_file(&file)?;
                }
            }
        }
        let mut props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(settings.zstd_level)
                    .map_err(|e| ArchiveError::Settings(e.to_string()))?,
            ))
            .set_max_row_group_row_count(Some(settings.row_group_rows))
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_dictionary_enabled(true);
        for column in [
            schemas::tables::VALUE,
            schemas::tables::SCORE,
            schemas::tables::ANOMALY_SCORE,
            schemas::tables::THRESHOLD,
            schemas::tables::SEVERITY,
            schemas::tables::TS,
            schemas::tables::INGESTED_AT,
            schemas::tables::SEQ,
        ] {
            props = props.set_column_dictionary_enabled(ColumnPath::from(column), false);
        }
        // Times and batch numbers grow slowly within a series: delta
        // encoding stores them in a few bits each (files 15 % smaller, no
        // extra CPU); every Parquet reader knows it.
        for column in [
            schemas::tables::TS,
            schemas::tables::INGESTED_AT,
            schemas::tables::SEQ,
            schemas::tables::WINDOW_START,
        ] {
            props = props.set_column_encoding(
                ColumnPath::from(column),
                parquet::basic::Encoding::DELTA_BINARY_PACKED,
            );
        }
        if settings.float_encoding == crate::config::FloatEncoding::ByteStreamSplit {
            for column in [
                schemas::tables::VALUE,
                schemas::tables::SCORE,
                schemas::tables::ANOMALY_SCORE,
                schemas::tables::THRESHOLD,
                schemas::tables::SEVERITY,
                schemas::tables::EXPECTED,
                schemas::tables::EXPECTED_LOW,
                schemas::tables::EXPECTED_HIGH,
            ] {
                props = props.set_column_encoding(
                    ColumnPath::from(column),
                    parquet::basic::Encoding::BYTE_STREAM_SPLIT,
                );
            }
        }
        let props = props
            .set_created_by(format!("inference-hub {}", env!("CARGO_PKG_VERSION")))
            .build();
        let appended_until = committed_through.values().max().map_or(0, |p| p + 1);
        Ok(Self {
            root: root.to_owned(),
            hub_id: hub_id.to_owned(),
            settings,
            props,
            tables,
            open: HashMap::new(),
            committed_through,
            appended_until,
            appends: 0,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Appends the rows of the batch at WAL position `pos` to `table`,
    /// splitting them by event hour. Rows of a partition that already holds
    /// `pos` in a committed file are skipped (crash replay). Returns files
    /// committed because they reached the target size.
    pub fn append(
        &mut self,
        table: Table,
        pos: u64,
        batch: &RecordBatch,
    ) -> Result<Vec<CommittedFile>, ArchiveError> {
        self.appended_until = self.appended_until.max(pos + 1);
        if batch.num_rows() == 0 {
            return Ok(Vec::new());
        }
        let ts = batch
            .column_by_name(schemas::tables::TS)
            .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
            .expect("archive tables have a ts column");
        let mut by_hour: Vec<(i64, Vec<u32>)> = Vec::new();
        for (i, t) in ts.values().iter().enumerate() {
            let hour = t.div_euclid(HOUR_US);
            match by_hour.iter_mut().find(|(h, _)| *h == hour) {
                Some((_, rows)) => rows.push(i as u32),
                None => by_hour.push((hour, vec![i as u32])),
            }
        }
        let mut committed = Vec::new();
        let single = by_hour.len() == 1;
        for (hour, rows) in by_hour {
            let key = PartitionKey { table, hour };
            if self.committed_through.get(&key).is_some_and(|&c| c >= pos) {
                continue;
            }
            let part = if single {
                batch.clone()
            } else {
                let idx = UInt32Array::from(rows);
                let cols = batch
                    .columns()
                    .iter()
                    .map(|c| arrow_select::take::take(c.as_ref(), &idx, None))
                    .collect::<Result<Vec<_>, _>>()?;
                RecordBatch::try_new(batch.schema(), cols)?
            };
            if !self.open.contains_key(&key) {
                if self.open.len() >= self.settings.max_open_files
                    && let Some(lru) = self
                        .open
                        .iter()
                        .min_by_key(|(_, f)| f.last_append)
                        .map(|(k, _)| *k)
                {
                    committed.push(self.commit(lru)?);
                }
                let f = self.create(key, pos)?;
                self.open.insert(key, f);
            }
            self.appends += 1;
            let file = self.open.get_mut(&key).expect("opened above");
            file.last_append = self.appends;
            file.batches.extend(distinct_batch_ids(&part));
            file.pending_rows += part.num_rows();
            file.pending.push(part);
            if file.pending_rows >= self.settings.row_group_rows {
                file.flush_row_group()?;
            }
            file.last_pos = pos;
            let size = file.writer.bytes_written()
                + file
                    .pending
                    .iter()
                    .map(RecordBatch::get_array_memory_size)
                    .sum::<usize>()
                    / 4;
            if size as u64 >= self.settings.target_file_bytes {
                committed.push(self.commit(key)?);
            }
        }
        self.bound_buffered_rows()?;
        Ok(committed)
    }

    /// Rows waiting for their row group, over all open files.
    pub fn buffered_rows(&self) -> usize {
        self.open.values().map(|f| f.pending_rows).sum()
    }

    /// Writes row groups early, largest first, until the buffered rows are
    /// within `max-buffered-rows`.
    fn bound_buffered_rows(&mut self) -> io::Result<()> {
        while self.buffered_rows() > self.settings.max_buffered_rows {
            let Some(largest) = self.open.values_mut().max_by_key(|f| f.pending_rows) else {
                break;
            };
            largest.flush_row_group()?;
        }
        Ok(())
    }

    fn create(&self, key: PartitionKey, first_pos: u64) -> io::Result<OpenFile> {
        let dir = key.hub_dir(&self.root, &self.hub_id);
        create_dir_durable(&dir)?;
        let tmp_path = dir.join(format!(
            ".{}-{first_pos:020}.parquet.inprogress",
            self.hub_id
        ));
        let file = File::create(&tmp_path)?;
        let sync_handle = file.try_clone()?;
        let writer = ArchiveFileWriter::try_new(file, key.table.schema(), self.props.clone())?;
        Ok(OpenFile {
            writer,
            row_group_rows: self.settings.row_group_rows,
            pending: Vec::new(),
            pending_rows: 0,
            sync_handle,
            tmp_path,
            first_pos,
            last_pos: first_pos,
            opened_at: Instant::now(),
            last_append: 0,
            batches: std::collections::BTreeSet::new(),
        })
    }

    fn commit(&mut self, key: PartitionKey) -> Result<CommittedFile, ArchiveError> {
        let mut file = self.open.remove(&key).expect("commit of an open partition");
        file.flush_row_group()?;
        file.writer
            .append_key_value_metadata(KeyValue::new("iot.hub_id".into(), self.hub_id.clone()));
        file.writer.append_key_value_metadata(KeyValue::new(
            "iot.wal_first_pos".into(),
            file.first_pos.to_string(),
        ));
        file.writer.append_key_value_metadata(KeyValue::new(
            "iot.wal_last_pos".into(),
            file.last_pos.to_string(),
        ));
        file.writer.append_key_value_metadata(KeyValue::new(
            BATCHES_KEY.into(),
            encode_batch_ids(&file.batches),
        ));
        let meta = file.writer.close()?;
        file.sync_handle.sync_all()?;
        let dir = key.hub_dir(&self.root, &self.hub_id);
        let name = format!(
            "{}-{:020}-{:020}.parquet",
            self.hub_id, file.first_pos, file.last_pos
        );
        let path = dir.join(&name);
        fs::rename(&file.tmp_path, &path)?;
        File::open(&dir)?.sync_all()?;
        let rows = match &mut self.tables {
            // Into the table's log, leaving out batches other hubs of this
            // archive committed (see `tables`); the file is in place already.
            Some(tables) => tables.commit_new_file(
                key,
                &self.hub_id,
                &name,
                &path,
                &self.props,
                |_, _, _| Ok(()),
            )?,
            // Staged for the uploader, which does the same in the bucket.
            None => meta.file_metadata().num_rows() as u64,
        };
        let bytes = fs::metadata(&path)?.len();
        self.committed_through.insert(key, file.last_pos);
        Ok(CommittedFile { path, rows, bytes })
    }

    /// Commits files older than the maximum age.
    pub fn commit_aged(&mut self) -> Result<Vec<CommittedFile>, ArchiveError> {
        self.commit_where(|f, max_age| f.opened_at.elapsed() >= max_age)
    }

    /// Commits every open file (shutdown).
    pub fn commit_all(&mut self) -> Result<Vec<CommittedFile>, ArchiveError> {
        self.commit_where(|_, _| true)
    }

    fn commit_where(
        &mut self,
        due: impl Fn(&OpenFile, Duration) -> bool,
    ) -> Result<Vec<CommittedFile>, ArchiveError> {
        let mut keys: Vec<PartitionKey> = self
            .open
            .iter()
            .filter(|(_, f)| due(f, self.settings.max_file_age))
            .map(|(k, _)| *k)
            .collect();
        keys.sort();
        keys.into_iter().map(|k| self.commit(k)).collect()
    }

    /// Smallest WAL position not yet in a committed file.
    pub fn low_water(&self) -> u64 {
        self.open
            .values()
            .map(|f| f.first_pos)
            .min()
            .unwrap_or(self.appended_until)
    }

    pub fn open_files(&self) -> usize {
        self.open.len()
    }

    /// How often compaction and retention run.
    /// How this archive writes Parquet (a file rewritten elsewhere keeps it).
    pub fn writer_properties(&self) -> WriterProperties {
        self.props.clone()
    }

    /// Rows sorted into one row group.
    pub fn row_group_rows(&self) -> usize {
        self.settings.row_group_rows
    }

    pub fn maintenance_interval(&self) -> Duration {
        self.settings.compaction_interval
    }

    fn staging(&self) -> PathBuf {
        self.root.join(".staging")
    }
}

/// Swaps two directories atomically (Linux `renameat2` with
/// `RENAME_EXCHANGE`).
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE).map_err(io::Error::from)
}

impl OpenFile {
    /// Sorts the pending rows by device, metric and time and writes them as
    /// one row group.
    fn flush_row_group(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batches = std::mem::take(&mut self.pending);
        self.pending_rows = 0;
        let sorted = sort_by_device_metric_time(&batches[0].schema(), &batches)?;
        self.writer.write_row_groups(&sorted, self.row_group_rows)
    }
}

mod error;
mod footer;
mod maintenance;
pub mod migrate;
pub mod prune;
mod read;
pub mod reader;
mod sort;
pub mod tables;

pub use error::ArchiveError;
use footer::*;

pub use footer::{
    BATCHES_KEY, MAX_FOOTER_BATCHES, MAX_FOOTER_BYTES, decode_batch_ids, encode_batch_ids,
    file_key_values, footer_batch_ids,
};
use read::to_file;
pub use read::{
    committed_files, committed_files_in, conform, file_schema, hour_of_file, read_file,
    read_parquet_bytes, read_table, staged_files, table_files, wal_range, walk_files,
};
pub use sort::sort_by_device_metric_time;

pub mod s3;
mod writer;
use writer::ArchiveFileWriter;

#[cfg(test)]
mod tests;
