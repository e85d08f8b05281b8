//! Which batches this hub has already made durable, by
//! `(gateway, incarnation, seq)`.
//!
//! Sequence numbers of one incarnation start at 1 (the envelope rejects 0)
//! and are mostly consecutive,
//! so each incarnation is stored as a floor (every seq <= floor is known) plus
//! the few seqs above it: memory stays proportional to the number of
//! incarnations, not batches.
//!
//! The index is persisted as a snapshot next to the WAL whenever the WAL
//! starts a segment; after a crash it is rebuilt from the snapshot plus the
//! WAL records after it, so it survives restarts.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::{self, Write};
use std::path::Path;

use schemas::envelope::BatchKey;
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct SeqSet {
    floor: u64,
    above: BTreeSet<u64>,
}

impl SeqSet {
    fn contains(&self, seq: u64) -> bool {
        seq <= self.floor || self.above.contains(&seq)
    }

    fn insert(&mut self, seq: u64) -> bool {
        if self.contains(seq) {
            return false;
        }
        self.above.insert(seq);
        while self.above.remove(&(self.floor + 1)) {
            self.floor += 1;
        }
        true
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DedupIndex {
    by_source: HashMap<(String, u64), SeqSet>,
}

#[derive(Serialize, Deserialize)]
struct SnapshotEntry {
    gateway: String,
    incarnation: u64,
    floor: u64,
    above: BTreeSet<u64>,
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    /// Every WAL record below this position is reflected in `entries`.
    covers_before: u64,
    entries: Vec<SnapshotEntry>,
}

impl DedupIndex {
    pub fn contains(&self, key: &BatchKey) -> bool {
        self.by_source
            .get(&(key.gateway.clone(), key.incarnation))
            .is_some_and(|s| s.contains(key.seq))
    }

    /// Records the key; false if it was already known.
    pub fn insert(&mut self, key: &BatchKey) -> bool {
        self.by_source
            .entry((key.gateway.clone(), key.incarnation))
            .or_default()
            .insert(key.seq)
    }

    pub fn sources(&self) -> usize {
        self.by_source.len()
    }

    /// Writes the snapshot atomically (temp file, fsync, rename, dir fsync).
    pub fn save(&self, path: &Path, covers_before: u64) -> io::Result<()> {
        let snapshot = Snapshot {
            covers_before,
            entries: self
                .by_source
                .iter()
                .map(|((gateway, incarnation), s)| SnapshotEntry {
                    gateway: gateway.clone(),
                    incarnation: *incarnation,
                    floor: s.floor,
                    above: s.above.clone(),
                })
                .collect(),
        };
        let tmp = path.with_extension("json.tmp");
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(&snapshot).map_err(io::Error::other)?)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Loads a snapshot; a missing file is an empty index covering nothing.
    pub fn load(path: &Path) -> io::Result<(Self, u64)> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Self::default(), 0)),
            Err(e) => return Err(e),
        };
        let snapshot: Snapshot = serde_json::from_slice(&bytes).map_err(io::Error::other)?;
        let by_source = snapshot
            .entries
            .into_iter()
            .map(|e| {
                (
                    (e.gateway, e.incarnation),
                    SeqSet {
                        floor: e.floor,
                        above: e.above,
                    },
                )
            })
            .collect();
        Ok((Self { by_source }, snapshot.covers_before))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn key(g: &str, inc: u64, seq: u64) -> BatchKey {
        BatchKey {
            gateway: g.into(),
            incarnation: inc,
            seq,
        }
    }

    #[test]
    fn a_new_incarnation_is_not_confused_with_the_old_one() {
        let mut d = DedupIndex::default();
        assert!(d.insert(&key("gw", 1, 1)));
        assert!(!d.insert(&key("gw", 1, 1)));
        assert!(d.insert(&key("gw", 2, 1)));
        assert!(d.insert(&key("other", 1, 1)));
    }

    #[test]
    fn snapshot_roundtrips() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = DedupIndex::default();
        for s in [1, 2, 3, 7, 9] {
            d.insert(&key("gw", 5, s));
        }
        let path = dir.path().join("dedup.json");
        d.save(&path, 42).unwrap();
        let (back, covers) = DedupIndex::load(&path).unwrap();
        assert_eq!(covers, 42);
        assert_eq!(back, d);
        assert!(back.contains(&key("gw", 5, 2)) && back.contains(&key("gw", 5, 9)));
        assert!(!back.contains(&key("gw", 5, 4)));
    }

    proptest! {
        #[test]
        fn matches_a_plain_set(seqs in proptest::collection::vec(1u64..200, 0..300)) {
            // Sequence numbers start at 1 (the envelope decoder rejects 0).
            let mut d = DedupIndex::default();
            let mut model = std::collections::HashSet::new();
            for s in seqs {
                prop_assert_eq!(d.insert(&key("g", 1, s)), model.insert(s));
            }
            for s in 1..210 {
                prop_assert_eq!(d.contains(&key("g", 1, s)), model.contains(&s));
            }
        }
    }
}
