//! What the hub's own API reads of the archive: the files the newest
//! version of a table holds, wherever they are (the local disk, or the
//! bucket with `[archive.s3]`), plus, with a bucket, this hub's files still
//! waiting for upload, so acknowledged data never drops out of sight
//! between its local commit and its commit in the bucket.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::RecordBatch;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;

use super::tables::ArchiveTables;
use super::*;

/// One data file to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveFile {
    Local(PathBuf),
    /// A key in the bucket.
    Object(ObjectPath),
}

/// The archive as the API reads it.
#[derive(Debug)]
pub enum ArchiveReader {
    /// A local archive's tables (each read opens the table's log).
    Local(PathBuf),
    /// The bucket's tables, and the local root where files wait for upload.
    Bucket {
        tables: Box<ArchiveTables>,
        staging: PathBuf,
    },
}

impl ArchiveReader {
    /// The reader of the hub's archive: local at `root`, or in the bucket
    /// `s3` names with `root` staging. Safe on an async task (the bucket's
    /// tables are opened on a thread of their own).
    pub fn open(root: &Path, s3: Option<&s3::S3Settings>) -> Result<Arc<Self>, ArchiveError> {
        let Some(s3) = s3 else {
            return Ok(Arc::new(ArchiveReader::Local(root.to_owned())));
        };
        let tables = std::thread::scope(|scope| {
            scope
                .spawn(|| ArchiveTables::open_bucket(s3))
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("opening the bucket panicked").into()))
        })?;
        Ok(Arc::new(ArchiveReader::Bucket {
            tables: Box::new(tables),
            staging: root.to_owned(),
        }))
    }

    /// The files of `table` in the event hours `hours`. Blocks: call it on
    /// a blocking thread.
    pub fn files(
        &self,
        table: Table,
        hours: std::ops::Range<i64>,
    ) -> Result<Vec<ArchiveFile>, ArchiveError> {
        match self {
            ArchiveReader::Local(root) => Ok(committed_files_in(root, table, hours)?
                .into_iter()
                .map(ArchiveFile::Local)
                .collect()),
            ArchiveReader::Bucket { tables, staging } => {
                let mut out = Vec::new();
                let mut in_log = std::collections::HashSet::new();
                for file in tables.files(table)? {
                    if hours.contains(&file.key.hour) {
                        out.push(ArchiveFile::Object(tables.object_key(table, &file.path)));
                    }
                    in_log.insert(staging.join(table.name()).join(&file.path));
                }
                for file in staged_files(staging, table)? {
                    // A file whose commit landed while its local copy is
                    // still there is read once, from the bucket.
                    if !in_log.contains(&file)
                        && hour_of_file(&file).is_some_and(|h| hours.contains(&h))
                    {
                        out.push(ArchiveFile::Local(file));
                    }
                }
                Ok(out)
            }
        }
    }

    /// Every record batch of one file. A staged file may have gone up (and
    /// been removed locally) since it was listed: it is then read from the
    /// bucket.
    pub fn read(&self, file: &ArchiveFile) -> io::Result<Vec<RecordBatch>> {
        match (self, file) {
            (ArchiveReader::Bucket { tables, staging }, ArchiveFile::Local(path)) => {
                match read_file(path) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        let relative = path
                            .strip_prefix(staging)
                            .map_err(|_| io::Error::other("a file outside the archive"))?;
                        let key = relative
                            .components()
                            .filter_map(|c| c.as_os_str().to_str())
                            .fold(tables.prefix().clone(), |key, part| key.join(part));
                        read_object(tables, &key)
                    }
                    read => read,
                }
            }
            (_, ArchiveFile::Local(path)) => read_file(path),
            (ArchiveReader::Bucket { tables, .. }, ArchiveFile::Object(key)) => {
                read_object(tables, key)
            }
            (ArchiveReader::Local(_), ArchiveFile::Object(key)) => Err(io::Error::other(format!(
                "{key} is in a bucket this hub does not archive to"
            ))),
        }
    }
}

/// A whole object, read into memory and decoded.
fn read_object(tables: &ArchiveTables, key: &ObjectPath) -> io::Result<Vec<RecordBatch>> {
    let bytes = tables
        .block_on(async { tables.store().get(key).await?.bytes().await })
        .map_err(io::Error::other)?;
    read_parquet_bytes(bytes)
}
