//! Compaction of closed partitions and retention.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;

use super::*;

impl Archive {
    /// This hub's committed files per partition.
    fn own_partitions(&self) -> io::Result<BTreeMap<PartitionKey, Vec<PathBuf>>> {
        let mut out: BTreeMap<PartitionKey, Vec<PathBuf>> = BTreeMap::new();
        let hub_dir = format!("hub={}", self.hub_id);
        for table in Table::ALL {
            for file in committed_files(&self.root, table)? {
                let in_own_dir = file
                    .parent()
                    .and_then(Path::file_name)
                    .is_some_and(|n| n.to_str() == Some(hub_dir.as_str()));
                if let (true, Some(hour)) = (in_own_dir, hour_of_file(&file)) {
                    out.entry(PartitionKey { table, hour })
                        .or_default()
                        .push(file);
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
            if !self.is_closed(key, now_us) || files.iter().any(|f| busy.contains(f)) {
                continue;
            }
            let chosen = self.compaction_choice(&files)?;
            if chosen.is_empty() {
                continue;
            }
            let keep: Vec<PathBuf> = files.into_iter().filter(|f| !chosen.contains(f)).collect();
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
                || files.iter().any(|f| busy.contains(f))
                || !self.compaction_choice(&files)?.is_empty()
            {
                continue;
            }
            settled.extend(files);
        }
        Ok(settled)
    }

    /// An hour partition is closed `compaction-grace` after its hour ended,
    /// and while this hub has no file open in it.
    fn is_closed(&self, key: PartitionKey, now_us: i64) -> bool {
        let grace = self.settings.compaction_grace.as_micros() as i64;
        (key.hour + 1) * HOUR_US + grace <= now_us && !self.open.contains_key(&key)
    }

    /// The files of a partition that compaction merges: the small ones (under
    /// half the target size) up to the target in all; none if fewer than two.
    fn compaction_choice(&self, files: &[PathBuf]) -> io::Result<Vec<PathBuf>> {
        let target = self.settings.target_file_bytes;
        let (mut chosen, mut total) = (Vec::new(), 0u64);
        for f in files {
            let size = fs::metadata(f)?.len();
            if size < target / 2 && total + size <= target {
                chosen.push(f.clone());
                total += size;
            }
        }
        if chosen.len() < 2 {
            chosen.clear();
        }
        Ok(chosen)
    }

    fn compact(
        &mut self,
        key: PartitionKey,
        files: &[PathBuf],
        keep: &[PathBuf],
    ) -> io::Result<CommittedFile> {
        let (mut first, mut last) = (u64::MAX, 0u64);
        let mut batches = Vec::new();
        for f in files {
            if let Some((a, b)) = wal_range(f) {
                first = first.min(a);
                last = last.max(b);
            }
            batches.extend(read_file(f)?);
        }
        let schema = key.table.schema();
        let batches: Vec<RecordBatch> = batches
            .into_iter()
            .map(|b| conform(&b, &schema))
            .collect::<io::Result<_>>()?;
        let ids: std::collections::BTreeSet<BatchId> =
            batches.iter().flat_map(distinct_batch_ids).collect();
        let merged = sort_by_device_metric_time(&schema, &batches)?;
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
        let name = format!("{}-{first:020}-{last:020}.parquet", self.hub_id);
        let path = work.join(&name);
        let file = File::create(&path)?;
        let sync_handle = file.try_clone()?;
        let mut writer = ArchiveFileWriter::try_new(file, schema, self.props.clone())?;
        writer.write_row_groups(&merged, self.settings.row_group_rows)?;
        for (k, v) in [
            ("iot.hub_id", self.hub_id.clone()),
            ("iot.wal_first_pos", first.to_string()),
            ("iot.wal_last_pos", last.to_string()),
            ("iot.compacted_files", files.len().to_string()),
            (BATCHES_KEY, encode_batch_ids(&ids)),
        ] {
            writer.append_key_value_metadata(KeyValue::new(k.into(), v));
        }
        let meta = writer.close()?;
        sync_handle.sync_all()?;
        // The partition's other files stay, as hard links in the new set.
        for f in keep {
            fs::hard_link(f, work.join(f.file_name().expect("a file")))?;
        }
        File::open(&work)?.sync_all()?;
        let target = key.hub_dir(&self.root, &self.hub_id);
        exchange(&work, &target)?;
        File::open(key.dir(&self.root))?.sync_all()?;
        File::open(&staging)?.sync_all()?;
        // `work` now holds the old files, invisible to readers.
        fs::remove_dir_all(&work)?;
        Ok(CommittedFile {
            path: target.join(name),
            rows: meta.file_metadata().num_rows() as u64,
            bytes: fs::metadata(
                target.join(format!("{}-{first:020}-{last:020}.parquet", self.hub_id)),
            )?
            .len(),
        })
    }

    /// Deletes this hub's partitions older than the retention; returns how
    /// many.
    /// The first event hour retention keeps (`None`: no retention).
    pub fn retention_first_hour(&self, now_us: i64) -> Option<i64> {
        let retention = self.settings.retention?;
        let cutoff = now_us - retention.as_micros() as i64;
        Some(cutoff.div_euclid(HOUR_US))
    }

    /// Removes this hub's partitions past retention; how many went.
    pub fn apply_retention(&mut self, now_us: i64) -> Result<usize, ArchiveError> {
        let Some(retention) = self.settings.retention else {
            return Ok(0);
        };
        let cutoff = now_us - retention.as_micros() as i64;
        let mut removed = 0;
        for key in self.own_partitions()?.into_keys() {
            if (key.hour + 1) * HOUR_US > cutoff || self.open.contains_key(&key) {
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
}
