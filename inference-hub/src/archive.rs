//! The Parquet archive: scored readings and anomaly events, partitioned
//! Hive-style by table and event hour.
//!
//! ```text
//! <root>/table=scored/date=2026-11-26/hour=07/hub=<hub>/<hub>-<first-pos>-<last-pos>.parquet
//! <root>/table=anomalies/date=.../hour=.../hub=.../...
//! <root>/table=shadow/...
//! ```
//!
//! Each hub writes only below its own `hub=` directory (several hubs can
//! share an archive root), which readers see as one more partition column.
//!
//! # Inside a file
//! Rows are buffered per open file and written in row groups of
//! `row-group-rows`, each sorted by device, metric and time (so readers can
//! skip row groups by device through the statistics); string columns are
//! dictionary-encoded, numeric ones are not (their dictionaries would not pay);
//! zstd; page-level statistics. `writer` writes the row groups, encoding the
//! string columns from the dictionary keys the sort gathers.
//!
//! # Commit protocol (no reader ever sees a torn file)
//! Each partition has at most one open file, written under a hidden temporary
//! name (`.<hub>-<first-pos>.parquet.inprogress`, ignored by DuckDB's
//! `*.parquet` globs and by pyarrow/Spark, which skip dot-files). When it
//! reaches the target size or maximum age it is closed, fsynced, renamed to
//! its final name and the directory is fsynced.
//!
//! # Exactly once across crashes
//! Rows reach the archive in WAL order, so the files of one partition cover
//! consecutive ranges of WAL positions, and the final name records that range.
//! After a crash the hub lists its committed files, learns per partition the
//! last WAL position already archived, and replays the WAL skipping, per
//! partition, every record at or below it. A record is therefore written once
//! per partition however often the hub dies. Left-over temporary files are
//! deleted at start-up.
//!
//! # Compaction (never a partial state)
//! In a *closed* partition (its hour ended `compaction-grace` ago, no open
//! file), the hub's *small* files (under half the target size) are merged,
//! oldest first and up to the target size, into one file fully sorted by
//! device, metric and time, named after the union of their WAL ranges. The
//! merged file is written and fsynced in a fresh directory under
//! `<root>/.staging/`, next to hard links of the partition's other files, and
//! that directory is swapped with the hub's partition directory in one atomic
//! `renameat2(RENAME_EXCHANGE)` (Linux): a reader lists either the old files
//! or the new set, never both and never neither. The old files end up
//! under `.staging/` and are deleted; whatever a crash leaves there is deleted
//! at start-up. Late data that reaches a compacted partition makes a new file,
//! merged again in a later round.
//!
//! # Retention
//! With `retention`, a partition whose hour ended longer ago than that is
//! removed: its `hub=` directory is first renamed under `.staging/` (it
//! disappears for readers at once, whole), then deleted.
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
    pub fn dir(&self, root: &Path) -> PathBuf {
        let start =
            chrono::DateTime::from_timestamp_micros(self.hour * HOUR_US).unwrap_or_default();
        root.join(format!("table={}", self.table.name()))
            .join(format!("date={}", start.format("%Y-%m-%d")))
            .join(format!("hour={}", start.format("%H")))
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

impl Archive {
    /// The hub's whole archive start-up: with `[archive.s3]`, what the
    /// bucket already holds is listed (it counts as committed); the local
    /// root is opened ([`Archive::open_with_remote`]); and the uploader is
    /// started with the local files still to upload.
    pub fn start(
        root: &Path,
        hub_id: &str,
        settings: &ArchiveSettings,
        stats: &std::sync::Arc<crate::stats::HubStats>,
    ) -> Result<(Self, Option<s3::Uploader>), ArchiveError> {
        let remote = match &settings.s3 {
            // Its own thread: the listing runs a runtime of its own, which
            // cannot start inside the hub's.
            Some(s3) => std::thread::scope(|scope| {
                scope
                    .spawn(|| s3::list_own(s3, hub_id))
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("listing the bucket panicked")))
            })?,
            None => Vec::new(),
        };
        let archive = Self::open_with_remote(root, hub_id, settings.clone(), &remote)?;
        let uploader = match &settings.s3 {
            Some(s3) => {
                let resume = s3::files_to_resume(s3, root, &remote)?;
                Some(s3::Uploader::start(
                    s3.clone(),
                    root.to_owned(),
                    hub_id,
                    archive.writer_properties(),
                    std::sync::Arc::clone(stats),
                    &resume,
                )?)
            }
            None => None,
        };
        Ok((archive, uploader))
    }

    /// Opens the archive root: removes this hub's left-over temporary files
    /// and learns what earlier runs committed.
    pub fn open(
        root: &Path,
        hub_id: &str,
        settings: ArchiveSettings,
    ) -> Result<Self, ArchiveError> {
        Self::open_with_remote(root, hub_id, settings, &[])
    }

    /// [`Archive::open`], also counting files that only exist in object
    /// storage (`remote`: paths relative to the archive root, as listed by
    /// [`s3::list_own`]) as committed.
    pub fn open_with_remote(
        root: &Path,
        hub_id: &str,
        settings: ArchiveSettings,
        remote: &[PathBuf],
    ) -> Result<Self, ArchiveError> {
        fs::create_dir_all(root)?;
        let mut committed_through: HashMap<PartitionKey, u64> = HashMap::new();
        // What an interrupted compaction or expiry left behind is invisible
        // to readers and no longer needed.
        match fs::remove_dir_all(root.join(".staging")) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        let tmp_prefix = format!(".{hub_id}-");
        let final_prefix = format!("{hub_id}-");
        let own_dir = format!("hub={hub_id}");
        for table in Table::ALL {
            let table_dir = root.join(format!("table={}", table.name()));
            for file in walk_files(&table_dir)? {
                // Only this hub's directories: on a shared root another hub's
                // id may start with this one's (`hub` and `hub-1`).
                if file.parent().and_then(|d| d.file_name()) != Some(own_dir.as_ref()) {
                    continue;
                }
                let name = file
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
                    .to_owned();
                if name.starts_with(&tmp_prefix) && name.ends_with(".inprogress") {
                    fs::remove_file(&file)?;
                    continue;
                }
                let Some(rest) = name
                    .strip_prefix(&final_prefix)
                    .and_then(|r| r.strip_suffix(".parquet"))
                else {
                    continue;
                };
                let Some((_first, last)) = rest.split_once('-') else {
                    continue;
                };
                let (Ok(last), Some(hour)) = (last.parse::<u64>(), hour_of_file(&file)) else {
                    continue;
                };
                let key = PartitionKey { table, hour };
                let e = committed_through.entry(key).or_insert(last);
                *e = (*e).max(last);
            }
        }
        for file in remote {
            let table = Table::ALL
                .into_iter()
                .find(|t| file.starts_with(format!("table={}", t.name())));
            if let (Some(table), Some((_, last)), Some(hour)) =
                (table, wal_range(file), hour_of_file(file))
            {
                let e = committed_through
                    .entry(PartitionKey { table, hour })
                    .or_insert(last);
                *e = (*e).max(last);
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

    fn commit(&mut self, key: PartitionKey) -> io::Result<CommittedFile> {
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
        let path = dir.join(format!(
            "{}-{:020}-{:020}.parquet",
            self.hub_id, file.first_pos, file.last_pos
        ));
        // Commits into one partition are serialised across the hubs sharing
        // this archive root; batches another hub already committed here are
        // left out of this file (cross-hub exactly-once).
        let lock = PartitionLock::acquire(&key.dir(&self.root), &self.hub_id)?;
        let mut rows = meta.file_metadata().num_rows() as u64;
        let taken = other_hubs_batches(&key.dir(&self.root), &self.hub_id)?;
        if !taken.is_empty() {
            rows = drop_batches(&file.tmp_path, &taken, &self.props)?;
        }
        fs::rename(&file.tmp_path, &path)?;
        File::open(&dir)?.sync_all()?;
        drop(lock);
        let bytes = fs::metadata(&path)?.len();
        self.committed_through.insert(key, file.last_pos);
        Ok(CommittedFile { path, rows, bytes })
    }

    /// Commits files older than the maximum age.
    pub fn commit_aged(&mut self) -> Result<Vec<CommittedFile>, ArchiveError> {
        Ok(self.commit_where(|f, max_age| f.opened_at.elapsed() >= max_age)?)
    }

    /// Commits every open file (shutdown).
    pub fn commit_all(&mut self) -> Result<Vec<CommittedFile>, ArchiveError> {
        Ok(self.commit_where(|_, _| true)?)
    }

    fn commit_where(
        &mut self,
        due: impl Fn(&OpenFile, Duration) -> bool,
    ) -> io::Result<Vec<CommittedFile>> {
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
mod lock;
mod maintenance;
mod read;
mod sort;

pub use error::ArchiveError;
use footer::*;
use lock::PartitionLock;

pub use footer::{
    BATCHES_KEY, MAX_FOOTER_BATCHES, MAX_FOOTER_BYTES, decode_batch_ids, encode_batch_ids,
    file_key_values, footer_batch_ids,
};
pub use read::{
    committed_files, conform, hour_of_file, read_file, read_table, wal_range, walk_files,
};
pub use sort::sort_by_device_metric_time;

pub mod s3;
mod writer;
use writer::ArchiveFileWriter;

#[cfg(test)]
mod tests;
