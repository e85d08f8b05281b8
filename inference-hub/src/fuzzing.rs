//! The bodies of this crate's fuzz targets (`inference-hub/fuzz`), here so
//! that an ordinary `cargo test` replays the committed corpora through
//! exactly what the fuzzer runs. Each takes untrusted bytes and must never
//! panic or allocate past its bounds.

use crate::archive;
use crate::dedup::{DedupIndex, DedupLimits};

/// The dedup snapshot, as a damaged disk may return it: refused or bounded.
pub fn dedup_snapshot(data: &[u8]) {
    let limits = DedupLimits {
        max_above: 64,
        max_sources: 64,
        ..DedupLimits::default()
    };
    if let Ok((index, _)) = DedupIndex::decode(data, limits) {
        assert!(index.sources() <= 64);
    }
}

/// A Parquet footer of another hub's object in a shared bucket: the batches
/// it lists, refused or bounded.
pub fn parquet_footer(data: &[u8]) {
    if let Ok(Some(ids)) = archive::footer_batch_ids(data) {
        assert!(ids.len() <= archive::MAX_FOOTER_BATCHES);
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(ids) = archive::decode_batch_ids(text)
    {
        assert!(ids.len() <= archive::MAX_FOOTER_BATCHES);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A footer another implementation (pyarrow) wrote is read; a footer
    /// claiming more batches than a file can hold is refused.
    #[test]
    fn footers_are_read_and_bounded() {
        let corpus =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/parquet_footer");
        let footer = std::fs::read(corpus.join("pyarrow-footer")).unwrap();
        let ids = archive::footer_batch_ids(&footer).unwrap().unwrap();
        assert_eq!(ids.len(), 6);
        assert_eq!(ids[5], ("gw-1".to_owned(), 7, 9));
        let huge = std::fs::read_to_string(corpus.join("huge-range")).unwrap();
        assert!(archive::decode_batch_ids(&huge).is_err());
    }

    /// Every committed corpus input, through its target's body.
    #[test]
    fn fuzz_corpora_replay() {
        schemas::fuzzing::replay_corpora(
            env!("CARGO_MANIFEST_DIR"),
            &[
                ("dedup_snapshot", super::dedup_snapshot),
                ("parquet_footer", super::parquet_footer),
            ],
        );
    }
}
