//! Compaction of closed partitions and retention.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;

use super::*;

/// One of this hub's committed files.
#[derive(Debug, Clone)]
struct OwnFile {
    /// On this machine.
    path: PathBuf,
    /// In the table's log (`None`: staged for upload).
    in_log: Option<String>,
    bytes: u64,
}

/// The files of a partition that compaction merges: the small ones (under
/// half of `target` bytes) up to `target` in all; none if fewer than two.
pub(super) fn compaction_choice<F: Clone>(
    files: &[F],
    bytes: impl Fn(&F) -> u64,
    target: u64,
) -> Vec<F> {
    let (mut chosen, mut total) = (Vec::new(), 0u64);
    for f in files {
        let size = bytes(f);
        if size < target / 2 && total + size <= target {
            chosen.push(f.clone());
            total += size;
        }
    }
    if chosen.len() < 2 {
        chosen.clear();
    }
    chosen
}

/// The rows of files being merged into one, sorted as every archive file
/// is (device, metric, time), with what the merged file's footer records.
pub(super) struct MergedFile {
    schema: SchemaRef,
    /// All rows, sorted.
    rows: RecordBatch,
    ids: std::collections::BTreeSet<BatchId>,
    /// The WAL range the merged files' names recorded, in all.
    wal: (u64, u64),
    files: usize,
}

impl MergedFile {
    /// `batches` (in memory form) of `files` files of `table` whose names
    /// recorded the WAL range `wal` in all.
    pub(super) fn sort(
        table: Table,
        batches: Vec<RecordBatch>,
        wal: (u64, u64),
        files: usize,
    ) -> Result<Self, ArchiveError> {
        let schema = table.schema();
        let batches: Vec<RecordBatch> = batches
            .into_iter()
            .map(|b| conform(&b, &schema))
            .collect::<io::Result<_>>()?;
        let ids = batches.iter().flat_map(distinct_batch_ids).collect();
        let rows = sort_by_device_metric_time(&schema, &batches)?;
        Ok(Self {
            schema,
            rows,
            ids,
            wal,
            files,
        })
    }

    /// Its name: the hub and the WAL range, as every file of the hub's.
    pub(super) fn name(&self, hub_id: &str) -> String {
        let (first, last) = self.wal;
        format!("{hub_id}-{first:020}-{last:020}.parquet")
    }

    /// Writes it to `path` and syncs it; returns its rows.
    pub(super) fn write(
        &self,
        path: &Path,
        hub_id: &str,
        props: parquet::file::properties::WriterProperties,
        row_group_rows: usize,
    ) -> Result<u64, ArchiveError> {
        let file = File::create(path)?;
        let sync_handle = file.try_clone()?;
        let mut writer =
            ArchiveFileWriter::try_new(file, std::sync::Arc::clone(&self.schema), props)?;
        writer.write_row_groups(&self.rows, row_group_rows)?;
        let (first, last) = self.wal;
        for (k, v) in [
            ("iot.hub_id", hub_id.to_owned()),
            ("iot.wal_first_pos", first.to_string()),
            ("iot.wal_last_pos", last.to_string()),
            ("iot.compacted_files", self.files.to_string()),
            (BATCHES_KEY, encode_batch_ids(&self.ids)),
        ] {
            writer.append_key_value_metadata(KeyValue::new(k.into(), v));
        }
        let meta = writer.close()?;
        sync_handle.sync_all()?;
        Ok(meta.file_metadata().num_rows() as u64)
    }
}

impl Archive {
    /// This hub's committed files per partition: those the tables hold, or
    /// with `[archive.s3]` those waiting for upload.
    fn own_partitions(&self) -> Result<BTreeMap<PartitionKey, Vec<OwnFile>>, ArchiveError> {
        let mut out: BTreeMap<PartitionKey, Vec<OwnFile>> = BTreeMap::new();
        for table in Table::ALL {
            match &self.tables {
                Some(tables) => {
                    for file in tables.files(table)? {
                        if file.hub != self.hub_id {
                            continue;
                        }
                        out.entry(file.key).or_default().push(OwnFile {
                            path: self.root.join(table.name()).join(&file.path),
                            in_log: Some(file.path),
                            bytes: file.bytes,
                        });
                    }
                }
                None => {
                    let hub_dir = format!("hub={}", self.hub_id);
                    for path in staged_files(&self.root, table)? {
                        let in_own_dir = path
                            .parent()
                            .and_then(Path::file_name)
                            .is_some_and(|n| n.to_str() == Some(hub_dir.as_str()));
                        if let (true, Some(hour)) = (in_own_dir, hour_of_file(&path)) {
                            let bytes = fs::metadata(&path)?.len();
                            out.entry(PartitionKey { table, hour })
                                .or_default()
                                .push(OwnFile {
                                    path,
                                    in_log: None,
                                    bytes,
                                });
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Merges the small files of one closed partition (see the module docs);
    /// returns the merged file, if a partition needed it.
    pub fn compact_one(&mut self, now_us: i64) -> Result<Option<CommittedFile>, ArchiveError> {
        self.compact_one_skipping(now_us, &HashSet::new())
    }

    /// [`Archive::compact_one`], leaving alone the partitions that hold any
    /// of `busy` (files handed to the S3 uploader).
    pub fn compact_one_skipping(
        &mut self,
        now_us: i64,
        busy: &HashSet<PathBuf>,
    ) -> Result<Option<CommittedFile>, ArchiveError> {
        for (key, files) in self.own_partitions()? {
            if !self.is_closed(key, now_us) || files.iter().any(|f| busy.contains(&f.path)) {
                continue;
            }
            let chosen = self.compaction_choice(&files);
            if chosen.is_empty() {
                continue;
            }
            let keep: Vec<OwnFile> = files
                .into_iter()
                .filter(|f| !chosen.iter().any(|c| c.path == f.path))
                .collect();
            return Ok(Some(self.compact(key, &chosen, &keep)?));
        }
        Ok(None)
    }

    /// The committed files of closed partitions that compaction has nothing
    /// left to merge in, except `busy` ones: with `upload = "when-closed"`
    /// these go to the bucket.
    pub fn settled_files(
        &self,
        now_us: i64,
        busy: &HashSet<PathBuf>,
    ) -> Result<Vec<PathBuf>, ArchiveError> {
        let mut settled = Vec::new();
        for (key, files) in self.own_partitions()? {
            if !self.is_closed(key, now_us)
                || files.iter().any(|f| busy.contains(&f.path))
                || !self.compaction_choice(&files).is_empty()
            {
                continue;
            }
            settled.extend(files.into_iter().map(|f| f.path));
        }
        Ok(settled)
    }

    /// An hour partition is closed `compaction-grace` after its hour ended,
    /// and while this hub has no file open in it.
    fn is_closed(&self, key: PartitionKey, now_us: i64) -> bool {
        let grace = self.settings.compaction_grace.as_micros() as i64;
        (key.hour + 1) * HOUR_US + grace <= now_us && !self.open.contains_key(&key)
    }

    /// The files of a partition that compaction merges (see
    /// [`compaction_choice`]).
    fn compaction_choice(&self, files: &[OwnFile]) -> Vec<OwnFile> {
        compaction_choice(files, |f| f.bytes, self.settings.target_file_bytes)
    }

    fn compact(
        &mut self,
        key: PartitionKey,
        files: &[OwnFile],
        keep: &[OwnFile],
    ) -> Result<CommittedFile, ArchiveError> {
        let (mut first, mut last) = (u64::MAX, 0u64);
        let mut batches = Vec::new();
        for f in files {
            if let Some((a, b)) = wal_range(&f.path) {
                first = first.min(a);
                last = last.max(b);
            }
            batches.extend(read_file(&f.path)?);
        }
        let merged = MergedFile::sort(key.table, batches, (first, last), files.len())?;
        let name = merged.name(&self.hub_id);
        let write = |path: &Path| -> Result<u64, ArchiveError> {
            merged.write(
                path,
                &self.hub_id,
                self.props.clone(),
                self.settings.row_group_rows,
            )
        };
        let target = key.hub_dir(&self.root, &self.hub_id);
        let path = target.join(&name);
        let Some(tables) = &self.tables else {
            let rows = self.compact_staged(key, &name, keep, write)?;
            return Ok(CommittedFile {
                bytes: fs::metadata(&path)?.len(),
                path,
                rows,
            });
        };
        // Written under a temporary name, renamed, then one version swaps
        // the small files for it; the small files stay for readers of
        // older versions until the vacuum.
        let tmp = target.join(format!(
            ".{}-compact-{first:020}.parquet.inprogress",
            self.hub_id
        ));
        let rows = write(&tmp)?;
        fs::rename(&tmp, &path)?;
        File::open(&target)?.sync_all()?;
        let bytes = fs::metadata(&path)?.len();
        let removed: Vec<String> = files.iter().filter_map(|f| f.in_log.clone()).collect();
        tables.commit_compaction(key, &self.hub_id, &removed, &name, bytes, rows)?;
        Ok(CommittedFile { path, rows, bytes })
    }

    /// Compaction of files staged for upload: the merged file, written by
    /// `write`, and hard links of the partition's other files make a fresh
    /// directory under `.staging/`, swapped with the hub's partition
    /// directory in one `renameat2(RENAME_EXCHANGE)`, so the uploader lists
    /// either the old files or the new set, never both.
    fn compact_staged(
        &self,
        key: PartitionKey,
        name: &str,
        keep: &[OwnFile],
        write: impl Fn(&Path) -> Result<u64, ArchiveError>,
    ) -> Result<u64, ArchiveError> {
        let staging = self.staging();
        create_dir_durable(&staging)?;
        let work = staging.join(format!(
            "compact-{}-{}-{}",
            key.table.name(),
            key.hour,
            self.hub_id
        ));
        let _ = fs::remove_dir_all(&work);
        fs::create_dir(&work)?;
        let rows = write(&work.join(name))?;
        // The partition's other files stay, as hard links in the new set.
        for f in keep {
            fs::hard_link(&f.path, work.join(f.path.file_name().expect("a file")))?;
        }
        File::open(&work)?.sync_all()?;
        let target = key.hub_dir(&self.root, &self.hub_id);
        exchange(&work, &target)?;
        File::open(key.dir(&self.root))?.sync_all()?;
        File::open(&staging)?.sync_all()?;
        // `work` now holds the old files, invisible to the uploader.
        fs::remove_dir_all(&work)?;
        Ok(rows)
    }

    /// The first event hour retention keeps (`None`: no retention).
    pub fn retention_first_hour(&self, now_us: i64) -> Option<i64> {
        let retention = self.settings.retention?;
        let cutoff = now_us - retention.as_micros() as i64;
        Some(cutoff.div_euclid(HOUR_US))
    }

    /// Removes this hub's partitions past retention; how many went. With
    /// local tables, one version per table removes the files (the vacuum
    /// deletes them later); with `[archive.s3]` the staged files of those
    /// hours are deleted (the uploader expires the bucket's).
    pub fn apply_retention(&mut self, now_us: i64) -> Result<usize, ArchiveError> {
        let Some(first_kept) = self.retention_first_hour(now_us) else {
            return Ok(0);
        };
        if let Some(tables) = &self.tables {
            return tables.expire(&self.hub_id, first_kept);
        }
        let mut removed = 0;
        for key in self.own_partitions()?.into_keys() {
            if key.hour >= first_kept || self.open.contains_key(&key) {
                continue;
            }
            let staging = self.staging();
            create_dir_durable(&staging)?;
            let gone = staging.join(format!(
                "expired-{}-{}-{}",
                key.table.name(),
                key.hour,
                self.hub_id
            ));
            let _ = fs::remove_dir_all(&gone);
            fs::rename(key.hub_dir(&self.root, &self.hub_id), &gone)?;
            File::open(key.dir(&self.root))?.sync_all()?;
            fs::remove_dir_all(&gone)?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Deletes the local tables' data files that no version holds any more
    /// and that are older than `vacuum-after` (see [`tables`]); how many.
    /// With `[archive.s3]` the uploader vacuums the bucket.
    pub fn vacuum(&self, now_ms: i64) -> Result<usize, ArchiveError> {
        match &self.tables {
            Some(tables) => tables.vacuum(now_ms - self.settings.vacuum_after.as_millis() as i64),
            None => Ok(0),
        }
    }
}
