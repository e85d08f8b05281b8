//! The archive's one error type: what failed, and whether trying again
//! later may succeed without anyone changing the hub.
//!
//! The hub retries every archive failure (the pipeline is rebuilt from the
//! WAL with backoff, see `hub`), since a full disk or a lost network comes
//! back; [`ArchiveError::is_retryable`] tells the log (and an operator) when
//! waiting will not help: a bug or a setting that needs fixing.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The file system refused: disk full, out of descriptors, permissions,
    /// an I/O error.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// Parquet could not encode or decode a file.
    #[error("Parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// Rows that do not fit the table (a bug).
    #[error("Arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    /// Object storage refused or could not be reached.
    #[error("object storage: {0}")]
    Store(#[from] object_store::Error),
    /// A table's Delta log could not be read or written, or belongs to
    /// something else.
    #[error(transparent)]
    Table(#[from] iot_delta::DeltaError),
    /// A setting the archive cannot work with, or an archive in a layout
    /// this hub does not write.
    #[error("archive settings: {0}")]
    Settings(String),
}

impl ArchiveError {
    /// Whether the same operation may succeed later as things are (space
    /// freed, descriptors released, the network back, permissions fixed).
    /// `false` for damaged or mismatched data and bad settings.
    pub fn is_retryable(&self) -> bool {
        match self {
            ArchiveError::Io(e) => io_is_retryable(e),
            ArchiveError::Parquet(parquet::errors::ParquetError::External(inner)) => inner
                .downcast_ref::<io::Error>()
                .is_none_or(io_is_retryable),
            ArchiveError::Parquet(_) | ArchiveError::Arrow(_) | ArchiveError::Settings(_) => false,
            ArchiveError::Store(_) => true,
            // Storage failures (the kernel says no more); a foreign table
            // stays foreign.
            ArchiveError::Table(iot_delta::DeltaError::Kernel { .. }) => true,
            ArchiveError::Table(iot_delta::DeltaError::Foreign { .. }) => false,
        }
    }
}

/// An I/O error is retryable unless it says the data or the request is
/// wrong (which a wrapped Parquet or Arrow error also says).
fn io_is_retryable(e: &io::Error) -> bool {
    if let Some(inner) = e.get_ref() {
        if inner.is::<arrow_schema::ArrowError>() {
            return false;
        }
        if let Some(p) = inner.downcast_ref::<parquet::errors::ParquetError>() {
            return matches!(p, parquet::errors::ParquetError::External(_));
        }
    }
    !matches!(
        e.kind(),
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_disks_and_lost_descriptors_are_retryable_bad_data_is_not() {
        let retryable = [
            ArchiveError::Io(io::Error::from(io::ErrorKind::StorageFull)),
            ArchiveError::Io(io::Error::from_raw_os_error(24)), // EMFILE
            ArchiveError::Io(io::Error::from(io::ErrorKind::PermissionDenied)),
            ArchiveError::Parquet(parquet::errors::ParquetError::External(Box::new(
                io::Error::from(io::ErrorKind::StorageFull),
            ))),
        ];
        for e in &retryable {
            assert!(e.is_retryable(), "{e}");
        }
        let not = [
            ArchiveError::Io(io::Error::from(io::ErrorKind::InvalidData)),
            ArchiveError::Io(io::Error::other(parquet::errors::ParquetError::General(
                "bad page".into(),
            ))),
            ArchiveError::Io(io::Error::other(arrow_schema::ArrowError::SchemaError(
                "no such column".into(),
            ))),
            ArchiveError::Parquet(parquet::errors::ParquetError::EOF("short".into())),
            ArchiveError::Settings("zstd level 99".into()),
        ];
        for e in &not {
            assert!(!e.is_retryable(), "{e}");
        }
    }
}
