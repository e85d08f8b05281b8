//! `inference-hub migrate-archive`: turns an archive in the layout before
//! Delta tables (`table=<t>/date=/hour=/hub=/<file>.parquet`, on the local
//! disk or in the bucket) into the Delta tables of [`super::tables`], in
//! place.
//!
//! Per table: each file is written to its place under the table's root
//! (rewritten when it stores unsigned columns, which Delta readers refuse;
//! see [`super::file_schema`]), the files the log does not hold yet are added in
//! versions of at most `FILES_PER_VERSION`, and only then are the old keys
//! deleted. Every step looks at what is already done, so a migration cut off
//! anywhere is finished by running it again; a hub refuses to start while
//! any `table=` directory or key is left ([`super::tables::refuse_hive_layout`],
//! [`refuse_hive_layout_in_bucket`]), so it never writes to a half-migrated
//! archive.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use futures_util::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use super::tables::{ArchiveTables, partition_path};
use super::*;

/// Files added per version of the log.
const FILES_PER_VERSION: usize = 1000;

/// What a migration did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Migrated {
    /// Files found in the old layout.
    pub files: usize,
    /// Of those, added to a table's log by this run (the rest were already).
    pub committed: usize,
    /// Rows in the files this run added.
    pub rows: u64,
}

/// Migrates the local archive at `root`.
pub fn migrate_local(root: &Path) -> Result<Migrated, ArchiveError> {
    // The tables are opened past the refusal of the old layout (this is
    // what resolves it).
    let tables = ArchiveTables::open_local_for_migration(root)?;
    let migrated = migrate(&tables)?;
    for table in Table::ALL {
        // Only directories (and `.commit.lock` files) are left.
        match fs::remove_dir_all(root.join(format!("table={}", table.name()))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(migrated)
}

/// Migrates the archive in the bucket `settings` name.
pub fn migrate_bucket(settings: &s3::S3Settings) -> Result<Migrated, ArchiveError> {
    migrate(&ArchiveTables::open_bucket(settings)?)
}

fn migrate(tables: &ArchiveTables) -> Result<Migrated, ArchiveError> {
    let mut done = Migrated::default();
    for table in Table::ALL {
        let old_root = tables
            .prefix()
            .clone()
            .join(format!("table={}", table.name()));
        let store = tables.store();
        let listed: Vec<object_store::ObjectMeta> =
            tables.block_on(store.list(Some(&old_root)).try_collect())?;
        let mut moves = Vec::new();
        for object in listed {
            let name = object.location.filename().unwrap_or_default().to_owned();
            if name.starts_with('.') || !name.ends_with(".parquet") {
                continue; // locks, temporary files
            }
            let relative: Vec<String> = object
                .location
                .prefix_match(&old_root)
                .map(|parts| parts.map(|p| p.as_ref().to_owned()).collect())
                .unwrap_or_default();
            let Some(key) = hour_of_file(Path::new(&relative.join("/")))
                .map(|hour| PartitionKey { table, hour })
            else {
                tracing::warn!(key = %object.location, "a file outside the old layout's partitions; left where it is");
                continue;
            };
            let hub = relative
                .iter()
                .find_map(|p| p.strip_prefix("hub="))
                .unwrap_or("legacy")
                .to_owned();
            let new_path = format!("{}/{name}", partition_path(key, &hub));
            moves.push((object.location, key, hub, new_path));
        }
        done.files += moves.len();
        let in_log: HashSet<String> = tables.files(table)?.into_iter().map(|f| f.path).collect();
        let mut adds = Vec::new();
        for (old, key, hub, new_path) in &moves {
            let new = tables.object_key(table, new_path);
            if tables.block_on(store.head(&new)).is_err() {
                tables.block_on(rewrite(store.as_ref(), table, old, &new))?;
            }
            if !in_log.contains(new_path) {
                let rows = tables.block_on(footer_rows(store.as_ref(), &new))?;
                let bytes = tables.block_on(store.head(&new))?.size;
                adds.push((*key, hub.clone(), new_path.clone(), bytes, rows));
            }
        }
        for chunk in adds.chunks(FILES_PER_VERSION) {
            tables.commit_migrated(table, chunk)?;
            done.committed += chunk.len();
            done.rows += chunk.iter().map(|a| a.4).sum::<u64>();
        }
        for (old, ..) in &moves {
            match tables.block_on(store.delete(old)) {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        // Locks and temporary files of the old layout.
        let left: Vec<object_store::ObjectMeta> =
            tables.block_on(store.list(Some(&old_root)).try_collect())?;
        for object in left {
            match tables.block_on(store.delete(&object.location)) {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(done)
}

/// Puts the file at `from` at `to` in the files' schema of today (unsigned
/// columns stored signed, which Delta readers need; see
/// [`super::file_schema`]), with its footer's key-value metadata; a file
/// already in that schema is copied as it is.
async fn rewrite(
    store: &dyn ObjectStore,
    table: Table,
    from: &ObjectPath,
    to: &ObjectPath,
) -> Result<(), ArchiveError> {
    let bytes = store.get(from).await?.bytes().await?;
    let builder =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes.clone())?;
    let unsigned = builder
        .schema()
        .fields()
        .iter()
        .any(|f| f.data_type() == &arrow_schema::DataType::UInt64);
    if !unsigned {
        // A plain copy: S3 has no copy-if-not-exists, and the target holds
        // the same bytes if another run of the migration got there first.
        store.copy(from, to).await?;
        return Ok(());
    }
    let footer = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .cloned()
        .unwrap_or_default();
    let schema = table.schema();
    let file_schema = file_schema(&schema);
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_statistics_enabled(EnabledStatistics::Page)
        .build();
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, Arc::clone(&file_schema), Some(props))?;
    for batch in read_parquet_bytes(bytes)? {
        writer.write(&to_file(&conform(&batch, &schema)?)?)?;
    }
    for kv in footer {
        if kv.key != "ARROW:schema" {
            writer.append_key_value_metadata(kv);
        }
    }
    writer.close()?;
    store.put(to, out.into()).await?;
    Ok(())
}

/// The rows of a Parquet object, from its footer.
async fn footer_rows(store: &dyn ObjectStore, location: &ObjectPath) -> Result<u64, ArchiveError> {
    let bytes = store.get(location).await?.bytes().await?;
    let reader = parquet::file::serialized_reader::SerializedFileReader::new(bytes)?;
    use parquet::file::reader::FileReader;
    Ok(reader.metadata().file_metadata().num_rows().max(0) as u64)
}

/// Refuses a bucket archive that still has keys of the old layout.
pub fn refuse_hive_layout_in_bucket(tables: &ArchiveTables) -> Result<(), ArchiveError> {
    for table in Table::ALL {
        let old_root = tables
            .prefix()
            .clone()
            .join(format!("table={}", table.name()));
        let first = tables.block_on(async {
            let mut listed = tables.store().list(Some(&old_root));
            listed.try_next().await
        })?;
        if let Some(object) = first {
            return Err(ArchiveError::Settings(format!(
                "the archive in the bucket holds files in the layout before Delta tables ({}); run `inference-hub migrate-archive` once (with this configuration), then start the hub",
                object.location
            )));
        }
    }
    Ok(())
}
