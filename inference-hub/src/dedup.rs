//! Which batches this hub has already made durable, by
//! `(gateway, incarnation, seq)`.
//!
//! Sequence numbers of one incarnation start at 1 (the envelope rejects 0)
//! and are mostly consecutive, so each incarnation is stored as a floor
//! (every seq <= floor is known) plus the seqs above it: memory stays
//! proportional to the number of incarnations, not batches.
//!
//! # Bounded
//! Nothing a client sends can grow the index without limit:
//! - an incarnation keeps at most [`DedupLimits::max_above`] seqs above its
//!   floor; past that, the lowest are forgotten (a hub that sees only some
//!   of a gateway's batches, or a client sending sparse seqs, cannot grow
//!   it);
//! - at most [`DedupLimits::max_sources`] incarnations are kept, and one not
//!   seen for [`DedupLimits::retention`] is dropped; past the cap the least
//!   recently seen goes first.
//!
//! Forgetting never loses data: a batch whose key was forgotten and that is
//! sent again is answered `durable` once more and archived a second time.
//! Each forgotten key is counted (`hub_dedup_forgotten_total`). The defaults
//! outlast the agent's spool TTL (30 days), so a gateway's resends stay
//! recognised.
//!
//! # Persisted
//! The index is saved as a snapshot next to the WAL whenever the WAL starts
//! a segment and at shutdown (temporary file, fsync, rename); after a crash
//! it is rebuilt from the snapshot plus the WAL records after it. A snapshot
//! that cannot be read (damaged, or larger than the index can ever be) is
//! reported and ignored: the hub then rebuilds the index from the whole WAL,
//! and a batch resent from before that is archived twice rather than lost.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

use schemas::envelope::BatchKey;
use serde::{Deserialize, Serialize};

/// How much the index may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupLimits {
    pub max_above: usize,
    pub max_sources: usize,
    pub retention: Duration,
}

impl Default for DedupLimits {
    fn default() -> Self {
        Self {
            max_above: 4096,
            max_sources: 100_000,
            retention: Duration::from_secs(35 * 24 * 3600),
        }
    }
}

#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct SeqSet {
    floor: u64,
    above: BTreeSet<u64>,
    /// Seconds since the epoch when a batch of this incarnation last came.
    #[serde(default)]
    last_seen: u64,
}

impl SeqSet {
    fn contains(&self, seq: u64) -> bool {
        seq <= self.floor || self.above.contains(&seq)
    }

    /// Inserts; returns how many keys had to be forgotten.
    fn insert(&mut self, seq: u64, max_above: usize) -> u64 {
        if self.contains(seq) {
            return 0;
        }
        self.above.insert(seq);
        while self.above.remove(&(self.floor + 1)) {
            self.floor += 1;
        }
        let mut forgotten = 0;
        while self.above.len() > max_above {
            self.above.pop_first();
            forgotten += 1;
        }
        forgotten
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupIndex {
    by_source: HashMap<(String, u64), SeqSet>,
    limits: DedupLimits,
    /// Keys forgotten to stay within the limits (see the module docs).
    forgotten: u64,
}

impl Default for DedupIndex {
    fn default() -> Self {
        Self::new(DedupLimits::default())
    }
}

#[derive(Serialize, Deserialize)]
struct SnapshotEntry {
    gateway: String,
    incarnation: u64,
    floor: u64,
    above: BTreeSet<u64>,
    #[serde(default)]
    last_seen: u64,
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    /// Every WAL record below this position is reflected in `entries`.
    covers_before: u64,
    entries: Vec<SnapshotEntry>,
}

/// Why a snapshot was not used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("the dedup snapshot is larger than the index can be ({0} bytes)")]
    TooLarge(u64),
    #[error("the dedup snapshot is damaged")]
    Damaged(#[source] serde_json::Error),
    #[error("the dedup snapshot cannot be read")]
    Io(#[source] io::Error),
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl DedupIndex {
    pub fn new(limits: DedupLimits) -> Self {
        Self {
            by_source: HashMap::new(),
            limits,
            forgotten: 0,
        }
    }

    pub fn contains(&self, key: &BatchKey) -> bool {
        self.by_source
            .get(&(key.gateway.clone(), key.incarnation))
            .is_some_and(|s| s.contains(key.seq))
    }

    /// Records the key; false if it was already known.
    pub fn insert(&mut self, key: &BatchKey) -> bool {
        self.insert_at(key, now_secs())
    }

    /// [`DedupIndex::insert`] at a given time (seconds since the epoch).
    pub fn insert_at(&mut self, key: &BatchKey, now: u64) -> bool {
        if self.contains(key) {
            return false;
        }
        let source = (key.gateway.clone(), key.incarnation);
        if !self.by_source.contains_key(&source) {
            self.make_room(now);
        }
        let set = self.by_source.entry(source).or_default();
        set.last_seen = set.last_seen.max(now);
        self.forgotten += set.insert(key.seq, self.limits.max_above);
        true
    }

    /// Drops incarnations past retention, then the least recently seen
    /// while the index is full.
    fn make_room(&mut self, now: u64) {
        let oldest_kept = now.saturating_sub(self.limits.retention.as_secs());
        let before = self.by_source.len();
        self.by_source.retain(|_, s| s.last_seen >= oldest_kept);
        let mut dropped = (before - self.by_source.len()) as u64;
        if self.by_source.len() >= self.limits.max_sources {
            // A hundredth at a time, so that a flood of new incarnations
            // does not sort the index for every batch.
            let excess = (self.by_source.len() + 1 - self.limits.max_sources)
                .max(self.limits.max_sources / 100);
            let mut by_age: Vec<((String, u64), u64)> = self
                .by_source
                .iter()
                .map(|(k, s)| (k.clone(), s.last_seen))
                .collect();
            by_age.sort_by_key(|(_, seen)| *seen);
            for (key, _) in by_age.into_iter().take(excess) {
                self.by_source.remove(&key);
                dropped += 1;
            }
        }
        self.forgotten += dropped;
    }

    pub fn sources(&self) -> usize {
        self.by_source.len()
    }

    /// Keys forgotten so far to stay within the limits.
    pub fn forgotten(&self) -> u64 {
        self.forgotten
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
                    last_seen: s.last_seen,
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
    /// The limits apply to what is loaded.
    pub fn load(path: &Path, limits: DedupLimits) -> Result<(Self, u64), SnapshotError> {
        let len = match fs::metadata(path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Self::new(limits), 0)),
            Err(e) => return Err(SnapshotError::Io(e)),
        };
        if len > max_snapshot_bytes(&limits) {
            return Err(SnapshotError::TooLarge(len));
        }
        let bytes = fs::read(path).map_err(SnapshotError::Io)?;
        Self::decode(&bytes, limits)
    }

    /// Reads a snapshot's bytes (untrusted: fuzzed).
    pub fn decode(bytes: &[u8], limits: DedupLimits) -> Result<(Self, u64), SnapshotError> {
        let snapshot: Snapshot = serde_json::from_slice(bytes).map_err(SnapshotError::Damaged)?;
        let mut index = Self::new(limits);
        let mut entries = snapshot.entries;
        // The most recently seen survive the cap.
        entries.sort_by_key(|e| std::cmp::Reverse(e.last_seen));
        for e in entries.into_iter().take(limits.max_sources) {
            let mut above = e.above;
            above.retain(|&s| s > e.floor);
            while above.len() > limits.max_above {
                above.pop_first();
            }
            index.by_source.insert(
                (e.gateway, e.incarnation),
                SeqSet {
                    floor: e.floor,
                    above,
                    last_seen: e.last_seen,
                },
            );
        }
        Ok((index, snapshot.covers_before))
    }
}

/// A snapshot of a full index is far smaller than this: seqs take at most
/// 21 bytes each in JSON, names at most 128 bytes.
fn max_snapshot_bytes(limits: &DedupLimits) -> u64 {
    let per_source = 300 + 21 * limits.max_above as u64;
    1024 + per_source * limits.max_sources as u64
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
        let (back, covers) = DedupIndex::load(&path, DedupLimits::default()).unwrap();
        assert_eq!(covers, 42);
        assert_eq!(back, d);
        assert!(back.contains(&key("gw", 5, 2)) && back.contains(&key("gw", 5, 9)));
        assert!(!back.contains(&key("gw", 5, 4)));
    }

    #[test]
    fn sparse_seqs_cannot_grow_an_incarnation_without_bound() {
        let limits = DedupLimits {
            max_above: 100,
            ..DedupLimits::default()
        };
        let mut d = DedupIndex::new(limits);
        for s in 0..10_000u64 {
            d.insert(&key("gw", 1, 2 + 2 * s)); // every other seq: the floor never moves
        }
        assert_eq!(d.by_source[&("gw".to_owned(), 1)].above.len(), 100);
        assert_eq!(d.forgotten(), 9_900);
        assert!(
            d.contains(&key("gw", 1, 2 + 2 * 9_999)),
            "the newest are kept"
        );
    }

    #[test]
    fn incarnations_past_retention_or_the_cap_are_dropped_oldest_first() {
        let limits = DedupLimits {
            max_sources: 3,
            retention: Duration::from_secs(100),
            ..DedupLimits::default()
        };
        let mut d = DedupIndex::new(limits);
        for (i, inc) in [1u64, 2, 3].into_iter().enumerate() {
            d.insert_at(&key("gw", inc, 1), 1_000 + i as u64);
        }
        d.insert_at(&key("gw", 4, 1), 1_010);
        assert_eq!(d.sources(), 3);
        assert!(
            !d.contains(&key("gw", 1, 1)),
            "the least recently seen went"
        );
        assert!(d.contains(&key("gw", 2, 1)));
        d.insert_at(&key("gw", 5, 1), 1_200);
        assert_eq!(d.sources(), 1, "everything older than the retention went");
        assert_eq!(d.forgotten(), 4);
    }

    #[test]
    fn a_damaged_or_oversized_snapshot_is_refused_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dedup.json");
        fs::write(&path, b"{\"covers_before\": 3, \"entries\": [").unwrap();
        assert!(matches!(
            DedupIndex::load(&path, DedupLimits::default()),
            Err(SnapshotError::Damaged(_))
        ));
        let small = DedupLimits {
            max_above: 1,
            max_sources: 1,
            ..DedupLimits::default()
        };
        fs::write(&path, vec![b' '; 10_000]).unwrap();
        assert!(matches!(
            DedupIndex::load(&path, small),
            Err(SnapshotError::TooLarge(_))
        ));
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
