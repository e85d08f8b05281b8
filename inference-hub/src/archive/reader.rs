//! What the hub's own API reads of the archive: the files the newest
//! version of a table holds, wherever they are (the local disk, or the
//! bucket with `[archive.s3]`), plus, with a bucket, this hub's files still
//! waiting for upload, so acknowledged data never drops out of sight
//! between its local commit and its commit in the bucket.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::path::Path as ObjectPath;

use super::prune::{Batches, Wanted, read_local, read_object};
use super::tables::ArchiveTables;
use super::*;

/// One data file to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveFile {
    Local(PathBuf),
    /// A key in the bucket.
    Object(ObjectPath),
}

/// The partition values (`date`, `hour`, `hub`) of a staged file, from its
/// directories.
#[cfg(feature = "sql")]
fn partition_of(path: &Path) -> Option<Vec<String>> {
    let value = |dir: Option<&Path>, key: &str| -> Option<String> {
        dir?.file_name()?
            .to_str()?
            .strip_prefix(key)
            .map(str::to_owned)
    };
    let hub_dir = path.parent();
    let hour_dir = hub_dir.and_then(Path::parent);
    let date_dir = hour_dir.and_then(Path::parent);
    Some(vec![
        value(date_dir, "date=")?,
        value(hour_dir, "hour=")?,
        value(hub_dir, "hub=")?,
    ])
}

impl ArchiveFile {
    /// The event hour (hours since the epoch) of the file's partition.
    pub fn hour(&self) -> Option<i64> {
        match self {
            ArchiveFile::Local(path) => hour_of_file(path),
            ArchiveFile::Object(key) => hour_of_file(Path::new(key.as_ref())),
        }
    }
}

/// The archive as the API reads it.
#[derive(Debug)]
pub enum ArchiveReader {
    /// A local archive's tables, opened at the first read that finds them
    /// (their newest version is then brought up to date per read, reading
    /// only the log entries added since).
    Local {
        root: PathBuf,
        tables: std::sync::OnceLock<Box<ArchiveTables>>,
    },
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
            return Ok(Arc::new(ArchiveReader::local(root)));
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

    /// The reader of a local archive at `root` (which may not exist yet).
    pub fn local(root: &Path) -> Self {
        ArchiveReader::Local {
            root: root.to_owned(),
            tables: std::sync::OnceLock::new(),
        }
    }

    /// A local archive's tables, opened once `table` has a log (a reader
    /// creates no tables); `None` before.
    fn local_tables(&self, table: Table) -> Result<Option<&ArchiveTables>, ArchiveError> {
        let ArchiveReader::Local { root, tables } = self else {
            return Ok(None);
        };
        Ok(match tables.get() {
            Some(opened) => Some(opened),
            None if !root.join(table.name()).join("_delta_log").is_dir() => None,
            None => {
                let opened = Box::new(ArchiveTables::open_local(root)?);
                Some(tables.get_or_init(|| opened))
            }
        })
    }

    /// Every table as `/v1/sql` reads it: the files of its newest version,
    /// and with a bucket this hub's files still waiting for upload. Blocks.
    #[cfg(feature = "sql")]
    pub fn sql_tables(&self) -> Result<Vec<iot_sql::Table>, ArchiveError> {
        let partition_columns: Vec<String> = tables::PARTITION_COLUMNS
            .iter()
            .map(|c| (*c).to_owned())
            .collect();
        let local_disk = || -> (url::Url, Arc<dyn object_store::ObjectStore>) {
            (
                url::Url::parse("file:///").expect("static"),
                Arc::new(object_store::local::LocalFileSystem::new()),
            )
        };
        let logged = |opened: &ArchiveTables,
                      table: Table|
         -> Result<Vec<iot_sql::DataFile>, ArchiveError> {
            Ok(opened
                .files(table)?
                .into_iter()
                .map(|f| {
                    let (date, hour) = f.key.date_and_hour();
                    iot_sql::DataFile {
                        key: opened.object_key(table, &f.path),
                        bytes: f.bytes,
                        partition: vec![date, hour, f.hub],
                    }
                })
                .collect())
        };
        let mut out = Vec::new();
        for table in Table::ALL {
            let mut files = Vec::new();
            match self {
                ArchiveReader::Local { .. } => {
                    if let Some(opened) = self.local_tables(table)? {
                        let (url, store) = local_disk();
                        files.push(iot_sql::FilesIn {
                            url,
                            store,
                            files: logged(opened, table)?,
                        });
                    }
                }
                ArchiveReader::Bucket { tables, staging } => {
                    let in_bucket = logged(tables, table)?;
                    let uploaded: std::collections::HashSet<PathBuf> = tables
                        .files(table)?
                        .iter()
                        .map(|f| staging.join(table.name()).join(&f.path))
                        .collect();
                    let mut waiting = Vec::new();
                    for path in staged_files(staging, table)? {
                        let (Some(partition), false) =
                            (partition_of(&path), uploaded.contains(&path))
                        else {
                            continue;
                        };
                        let Ok(meta) = std::fs::metadata(&path) else {
                            continue;
                        };
                        waiting.push(iot_sql::DataFile {
                            key: ObjectPath::from_absolute_path(std::path::absolute(&path)?)
                                .map_err(io::Error::other)?,
                            bytes: meta.len(),
                            partition,
                        });
                    }
                    files.push(iot_sql::FilesIn {
                        url: tables.url().clone(),
                        store: Arc::clone(tables.store()),
                        files: in_bucket,
                    });
                    let (url, store) = local_disk();
                    files.push(iot_sql::FilesIn {
                        url,
                        store,
                        files: waiting,
                    });
                }
            }
            out.push(iot_sql::Table {
                name: table.name().to_owned(),
                file_schema: file_schema(&table.schema()),
                partition_columns: partition_columns.clone(),
                files,
            });
        }
        Ok(out)
    }

    /// The files of `table` in the event hours `hours`. Blocks: call it on
    /// a blocking thread.
    pub fn files(
        &self,
        table: Table,
        hours: std::ops::Range<i64>,
    ) -> Result<Vec<ArchiveFile>, ArchiveError> {
        match self {
            ArchiveReader::Local { root, .. } => {
                let Some(opened) = self.local_tables(table)? else {
                    return Ok(Vec::new());
                };
                let dir = root.join(table.name());
                Ok(opened
                    .files(table)?
                    .into_iter()
                    .filter(|f| hours.contains(&f.key.hour))
                    .map(|f| ArchiveFile::Local(dir.join(&f.path)))
                    .collect())
            }
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

    /// The rows of one file that may be `wanted` (row groups and pages
    /// that cannot hold them are skipped), decoded as they are pulled. A
    /// staged file may have gone up (and been removed locally) since it was
    /// listed: it is then read from the bucket.
    pub fn read(&self, file: &ArchiveFile, wanted: &Wanted) -> io::Result<Batches<'_>> {
        match (self, file) {
            (ArchiveReader::Bucket { tables, staging }, ArchiveFile::Local(path)) => {
                match read_local(path, wanted) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        let relative = path
                            .strip_prefix(staging)
                            .map_err(|_| io::Error::other("a file outside the archive"))?;
                        let key = relative
                            .components()
                            .filter_map(|c| c.as_os_str().to_str())
                            .fold(tables.prefix().clone(), |key, part| key.join(part));
                        read_object(tables, &key, wanted)
                    }
                    read => read,
                }
            }
            (_, ArchiveFile::Local(path)) => read_local(path, wanted),
            (ArchiveReader::Bucket { tables, .. }, ArchiveFile::Object(key)) => {
                read_object(tables, key, wanted)
            }
            (ArchiveReader::Local { .. }, ArchiveFile::Object(key)) => Err(io::Error::other(
                format!("{key} is in a bucket this hub does not archive to"),
            )),
        }
    }
}
