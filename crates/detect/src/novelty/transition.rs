//! Channel B's raw surprise: a transition memory over a sliding-bit
//! encoding of the value.
//!
//! A value is encoded as the [`BITS`] consecutive bits starting at its
//! bucket `floor((x - offset) / resolution)` (buckets clipped to
//! `+-MAX_BUCKET`). A synapse `i -> j` holds a permanence for "bit `i` was
//! active one reading before bit `j`". Bit `j` is *predicted* when at least
//! [`PREDICT_MIN`] of the previous reading's bits reach it with a connected
//! synapse (permanence >= 0.30); the raw surprise of a reading is the share
//! of its bits that were not predicted. Learning adds 0.10 to every synapse
//! from the previous bits to the current ones (a new synapse starts at
//! 0.20) and takes 0.02 from those to predicted bits that did not come.
//! `../shared/design/detection.md` ("Channel B") is the specification.
//!
//! # Storage, bounded
//! Permanences are whole hundredths in a byte (`0` = no synapse, else
//! `permanence + 1`), so the arithmetic is exact. Bits in the *core* (the
//! buckets of the calibration readings' 1st..99th percentile, with a
//! margin) live in a dense `CORE x CORE` matrix: predicting is a sum of 21
//! byte rows, which the compiler vectorises. Synapses with an end outside
//! the core (outliers) live in a sparse overflow table of at most
//! `max_overflow` synapses; when it is full the weakest (lowest permanence,
//! then least recently touched) tenth is dropped. A series whose values
//! leave the core for good is re-encoded by the caller (see
//! [`super::Novelty`]).
//!
//! # Speed
//! Most overflow synapses were seen once and are not connected, so the
//! keys of the connected ones are also kept in an index (derived, not
//! saved: rebuilt when a saved memory is read back), and predicting walks
//! only that. Weakening touches only the span of the core that holds
//! predicted-but-absent bits and, when the previous reading lay in the
//! core, only the overflow synapses to absent bits outside it (a core
//! source's overflow synapses all end outside the core). The outlying
//! targets a bucket's bits reach are counted in a per-thread tally, not
//! sorted. `tests::the_memory_scores_and_learns_as_the_plain_reference`
//! checks all of it against the rules above written out plainly (one map
//! of synapses, nothing indexed): same surprise at every reading, same
//! synapses after.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Bits active per value.
pub(crate) const BITS: i32 = 21;
/// Predicting bits needed to predict a bit.
const PREDICT_MIN: u8 = 10;
/// Stored value of a connected synapse's lowest permanence (0.30).
const CONNECTED: u8 = 31;
/// Stored value of a new synapse (0.20) and the most a synapse holds (1.00).
const INITIAL: u8 = 21;
const FULL: u8 = 101;
const INCREMENT: u8 = 10;
const DECREMENT: u8 = 2;
/// Buckets are clipped to this magnitude.
const MAX_BUCKET: i32 = 4000;
/// Buckets the calibration's 1st..99th percentile spans.
pub(crate) const CALIBRATION_BUCKETS: f64 = 130.0;
/// Bits of the core, and the first one (a margin below bucket 0).
const CORE: usize = 192;
const CORE_FIRST: i32 = -20;

fn in_core(bit: i32) -> bool {
    (CORE_FIRST..CORE_FIRST + CORE as i32).contains(&bit)
}

/// The overflow keys whose source is a bit of bucket `p`.
fn source_range(p: i32) -> std::ops::Range<(i16, i16)> {
    (p as i16, i16::MIN)..((p + BITS) as i16, i16::MIN)
}

/// The range from the first to the last nonzero byte, if any (eight bytes
/// at a time).
fn nonzero_span(bytes: &[u8; CORE]) -> Option<std::ops::Range<usize>> {
    let words = || {
        bytes
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
            .enumerate()
    };
    let (first_word, first) = words().find(|&(_, w)| w != 0)?;
    let (last_word, last) = words().rev().find(|&(_, w)| w != 0)?;
    let start = 8 * first_word + first.trailing_zeros() as usize / 8;
    let end = 8 * last_word + 8 - last.leading_zeros() as usize / 8;
    Some(start..end)
}

/// Scratch space for counting the outside-core targets a bucket's bits
/// reach: a count per possible bit (all zero between uses) and the list of
/// targets, per thread rather than per series.
struct OutsideTally {
    counts: Vec<u8>,
    targets: Vec<i16>,
}

thread_local! {
    static OUTSIDE_TALLY: std::cell::RefCell<OutsideTally> = std::cell::RefCell::new(OutsideTally {
        counts: vec![0; 1 << 16],
        targets: Vec::new(),
    });
}

/// A bit's slot in [`OutsideTally::counts`]: one per `i16`, so that any
/// key of the overflow table has one, a restored one included (the bits
/// the memory itself makes span only `-MAX_BUCKET..MAX_BUCKET + BITS`).
fn tally_index(bit: i16) -> usize {
    usize::from(bit.cast_unsigned())
}

fn core_index(bit: i32) -> usize {
    (bit - CORE_FIRST) as usize
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct OverflowSynapse {
    /// Stored permanence (see the module docs).
    value: u8,
    touched: u32,
}

/// The connected overflow synapses: source bit -> target bits, sorted (a
/// bucket's sources are one range, each with a short contiguous list).
#[derive(Debug, Clone, Default, PartialEq)]
struct ConnectedIndex(BTreeMap<i16, Vec<i16>>);

impl ConnectedIndex {
    fn insert(&mut self, (i, j): (i16, i16)) {
        let targets = self.0.entry(i).or_default();
        if let Err(at) = targets.binary_search(&j) {
            targets.insert(at, j);
        }
    }

    fn remove(&mut self, (i, j): (i16, i16)) {
        if let Some(targets) = self.0.get_mut(&i)
            && let Ok(at) = targets.binary_search(&j)
        {
            targets.remove(at);
            if targets.is_empty() {
                self.0.remove(&i);
            }
        }
    }

    /// The targets of the connected synapses from the bits `sources`.
    fn targets_from(&self, sources: std::ops::Range<i32>) -> impl Iterator<Item = i16> + '_ {
        self.0
            .range(sources.start as i16..sources.end as i16)
            .flat_map(|(_, targets)| targets.iter().copied())
    }

    #[cfg(test)]
    fn keys(&self) -> Vec<(i16, i16)> {
        self.0
            .iter()
            .flat_map(|(&i, targets)| targets.iter().map(move |&j| (i, j)))
            .collect()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "SavedMemory")]
pub(crate) struct TransitionMemory {
    offset: f64,
    resolution: f64,
    /// `CORE x CORE` stored permanences, row = source bit.
    core: Vec<u8>,
    /// `(source, target)` -> synapse, for synapses with an end outside the
    /// core (ordered by source: a bucket's synapses are one range).
    overflow: BTreeMap<(i16, i16), OverflowSynapse>,
    /// The keys of `overflow` whose synapse is connected (derived).
    #[serde(skip_serializing)]
    connected: ConnectedIndex,
    max_overflow: usize,
    previous: Option<i32>,
    steps: u32,
}

/// A [`TransitionMemory`] as saved: every field but the derived index (the
/// layout of the state snapshots' format 1).
#[derive(Deserialize)]
struct SavedMemory {
    offset: f64,
    resolution: f64,
    core: Vec<u8>,
    overflow: BTreeMap<(i16, i16), OverflowSynapse>,
    max_overflow: usize,
    previous: Option<i32>,
    steps: u32,
}

impl From<SavedMemory> for TransitionMemory {
    fn from(saved: SavedMemory) -> Self {
        let mut connected = ConnectedIndex::default();
        for (&key, s) in &saved.overflow {
            if s.value >= CONNECTED {
                connected.insert(key);
            }
        }
        Self {
            offset: saved.offset,
            resolution: saved.resolution,
            core: saved.core,
            overflow: saved.overflow,
            connected,
            max_overflow: saved.max_overflow,
            previous: saved.previous,
            steps: saved.steps,
        }
    }
}

impl TransitionMemory {
    /// An empty memory for values encoded with `offset` and `resolution`.
    pub(crate) fn new(offset: f64, resolution: f64, max_overflow: usize) -> Self {
        Self {
            offset,
            resolution,
            core: vec![0; CORE * CORE],
            overflow: BTreeMap::new(),
            connected: ConnectedIndex::default(),
            max_overflow: max_overflow.max(16),
            previous: None,
            steps: 0,
        }
    }

    /// A memory encoded for `readings` (1st percentile, and 1/130 of the
    /// 1st..99th percentile span per bucket).
    pub(crate) fn fitted(readings: &[f64], max_overflow: usize) -> Self {
        let mut sorted = readings.to_vec();
        sorted.sort_by(f64::total_cmp);
        let quantile = |q: f64| {
            sorted
                .get(((sorted.len().saturating_sub(1)) as f64 * q).round() as usize)
                .copied()
                .unwrap_or(0.0)
        };
        let (p1, p99) = (quantile(0.01), quantile(0.99));
        let resolution = (p99 - p1) / CALIBRATION_BUCKETS;
        let resolution = if resolution > 0.0 {
            resolution
        } else {
            p1.abs().max(1.0) * 1e-6
        };
        Self::new(p1, resolution, max_overflow)
    }

    pub(crate) fn bucket(&self, x: f64) -> i32 {
        let b = ((x - self.offset) / self.resolution).floor();
        b.clamp(-f64::from(MAX_BUCKET), f64::from(MAX_BUCKET)) as i32
    }

    /// Whether the last value stepped lies in the buckets the encoding was
    /// fitted to (false before the first).
    pub(crate) fn last_fits(&self) -> bool {
        self.previous
            .is_some_and(|b| in_core(b) && in_core(b + BITS - 1))
    }

    /// The raw surprise of `x` (the share of its bits not predicted by the
    /// previous reading's), then learns the transition.
    pub(crate) fn step(&mut self, x: f64) -> f64 {
        self.steps = self.steps.wrapping_add(1);
        let b = self.bucket(x);
        let Some(p) = self.previous.replace(b) else {
            return 0.0;
        };
        let (counts, outside) = self.counts(p);
        let active = b..b + BITS;
        // Core bits predicted but not active, as a byte mask.
        let mut absent = [0u8; CORE];
        for (a, &c) in absent.iter_mut().zip(&counts) {
            *a = u8::from(c >= PREDICT_MIN);
        }
        let mut hits = 0;
        for j in active.clone() {
            if in_core(j) {
                hits += usize::from(absent[core_index(j)]);
                absent[core_index(j)] = 0;
            } else {
                hits += usize::from(outside.iter().any(|&(t, c)| t == j && c >= PREDICT_MIN));
            }
        }
        let absent_outside: Vec<i32> = outside
            .iter()
            .filter(|&&(t, c)| c >= PREDICT_MIN && !active.contains(&t))
            .map(|&(t, _)| t)
            .collect();
        // Learning: reinforce previous -> current, weaken previous ->
        // predicted-but-absent (only the span of the core that has any).
        let absent_span = nonzero_span(&absent);
        for i in p..p + BITS {
            self.reinforce(i, b);
            if let Some(span) = absent_span.clone()
                && in_core(i)
            {
                let row = &mut self.core[core_index(i) * CORE..][..CORE];
                for (v, &a) in row[span.clone()].iter_mut().zip(&absent[span.clone()]) {
                    let lowered = v.saturating_sub(DECREMENT).max(1);
                    *v = if a != 0 && *v != 0 { lowered } else { *v };
                }
            }
        }
        if !self.overflow.is_empty() {
            if in_core(p) && in_core(p + BITS - 1) {
                // Every overflow synapse from a core bit ends outside it.
                for &j in &absent_outside {
                    for i in p..p + BITS {
                        self.weaken_overflow((i as i16, j as i16));
                    }
                }
            } else {
                let weakened: Vec<(i16, i16)> = self
                    .overflow
                    .range(source_range(p))
                    .map(|(&key, _)| key)
                    .filter(|&(_, j)| {
                        let j = i32::from(j);
                        if in_core(j) {
                            absent[core_index(j)] != 0
                        } else {
                            absent_outside.contains(&j)
                        }
                    })
                    .collect();
                for key in weakened {
                    self.weaken_overflow(key);
                }
            }
        }
        if self.overflow.len() > self.max_overflow {
            self.prune_overflow();
        }
        1.0 - hits as f64 / f64::from(BITS)
    }

    /// How many of bucket `p`'s bits reach each bit with a connected
    /// synapse: core bits in an array, others in a list (only those that
    /// [`PREDICT_MIN`] reach, in no particular order).
    fn counts(&self, p: i32) -> ([u8; CORE], Vec<(i32, u8)>) {
        let mut counts = [0u8; CORE];
        for i in (p..p + BITS).filter(|&i| in_core(i)) {
            let row = &self.core[core_index(i) * CORE..][..CORE];
            for (c, &v) in counts.iter_mut().zip(row) {
                *c += u8::from(v >= CONNECTED);
            }
        }
        OUTSIDE_TALLY.with_borrow_mut(|tally| {
            let OutsideTally {
                counts: outside_counts,
                targets,
            } = tally;
            targets.clear();
            for j in self.connected.targets_from(p..p + BITS) {
                if in_core(i32::from(j)) {
                    counts[core_index(i32::from(j))] += 1;
                } else {
                    targets.push(j);
                }
            }
            // Only a target reached from PREDICT_MIN bits can be predicted.
            let mut outside = Vec::new();
            if targets.len() >= usize::from(PREDICT_MIN) {
                for &j in targets.iter() {
                    outside_counts[tally_index(j)] += 1;
                }
                // Each target once (its count is zeroed when first seen),
                // which leaves the tally all zero again.
                for &j in targets.iter() {
                    let count = std::mem::take(&mut outside_counts[tally_index(j)]);
                    if count >= PREDICT_MIN {
                        outside.push((i32::from(j), count));
                    }
                }
            }
            (counts, outside)
        })
    }

    /// +0.10 on `i -> j` for every bit `j` of bucket `b` (new at 0.20).
    fn reinforce(&mut self, i: i32, b: i32) {
        // Branch-free (so that a row's 21 bytes are bumped in vector
        // lanes): `v + 0.10` capped at 1.00, and 0 (no synapse) to 0.20.
        let bump = |v: u8| {
            let new = u8::from(v == 0).wrapping_neg() & (INITIAL - INCREMENT);
            (v + INCREMENT).min(FULL) + new
        };
        if in_core(i) && in_core(b) && in_core(b + BITS - 1) {
            let row = &mut self.core[core_index(i) * CORE..][..CORE];
            for v in &mut row[core_index(b)..][..BITS as usize] {
                *v = bump(*v);
            }
            return;
        }
        // The overflow synapses from `i` to bucket `b` that exist: bumped
        // in one walk; the missing ones inserted after.
        let steps = self.steps;
        let mut existing = [false; BITS as usize];
        let targets = (i as i16, b as i16)..(i as i16, (b + BITS) as i16);
        for (&(_, j), s) in self.overflow.range_mut(targets) {
            s.value = bump(s.value);
            s.touched = steps;
            existing[(i32::from(j) - b) as usize] = true;
            // Connected just now (a bump adds INCREMENT).
            if (CONNECTED..CONNECTED + INCREMENT).contains(&s.value) {
                self.connected.insert((i as i16, j));
            }
        }
        for (j, existed) in (b..b + BITS).zip(existing) {
            if in_core(i) && in_core(j) {
                let v = &mut self.core[core_index(i) * CORE + core_index(j)];
                *v = bump(*v);
            } else if !existed {
                // A new synapse (0.20) is not connected.
                self.overflow.insert(
                    (i as i16, j as i16),
                    OverflowSynapse {
                        value: INITIAL,
                        touched: steps,
                    },
                );
            }
        }
    }

    /// -0.02 on an overflow synapse, if there is one (never below 0.00).
    fn weaken_overflow(&mut self, key: (i16, i16)) {
        if let Some(s) = self.overflow.get_mut(&key) {
            s.value = s.value.saturating_sub(DECREMENT).max(1);
            if s.value < CONNECTED {
                self.connected.remove(key);
            }
        }
    }

    /// Drops the weakest tenth of the overflow table (lowest permanence,
    /// then least recently touched; the lowest bits among equals).
    fn prune_overflow(&mut self) {
        let keep = self.max_overflow * 9 / 10;
        let mut ranked: Vec<(u8, u32, (i16, i16))> = self
            .overflow
            .iter()
            .map(|(&key, s)| (s.value, s.touched, key))
            .collect();
        let drop = ranked.len().saturating_sub(keep);
        if drop == 0 {
            return;
        }
        ranked.select_nth_unstable(drop - 1);
        for (_, _, key) in &ranked[..drop] {
            self.overflow.remove(key);
            self.connected.remove(*key);
        }
    }

    #[cfg(test)]
    fn overflow_synapses(&self) -> usize {
        self.overflow.len()
    }

    pub(crate) fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.core.capacity()
            // A B-tree entry: the key, the synapse and node overhead.
            + self.overflow.len() * 20
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_sequence_becomes_predicted_and_a_new_transition_surprises() {
        let readings: Vec<f64> = (0..150).map(|i| f64::from(i % 10)).collect();
        let mut tm = TransitionMemory::fitted(&readings, 1024);
        let mut last = 1.0;
        for _ in 0..20 {
            for &x in &readings[..10] {
                last = tm.step(x);
            }
        }
        assert_eq!(last, 0.0, "a learned cycle is fully predicted");
        // 9 -> 3 never happened: 0 -> 3's bits overlap little with 0's successor.
        assert!(tm.step(3.0) > 0.5);
    }

    /// The module docs' transition memory written out plainly: every
    /// synapse in one map, nothing indexed, predicted bits counted by
    /// scanning it; the overflow bound applied to the synapses with an end
    /// outside the core.
    struct Reference {
        encoding: TransitionMemory,
        /// `(source, target)` -> (stored permanence, step last reinforced).
        synapses: BTreeMap<(i32, i32), (u8, u32)>,
        max_overflow: usize,
        previous: Option<i32>,
        steps: u32,
    }

    impl Reference {
        fn step(&mut self, x: f64) -> f64 {
            self.steps = self.steps.wrapping_add(1);
            let b = self.encoding.bucket(x);
            let Some(p) = self.previous.replace(b) else {
                return 0.0;
            };
            let mut reaching: BTreeMap<i32, u32> = BTreeMap::new();
            for (&(i, j), &(v, _)) in &self.synapses {
                if (p..p + BITS).contains(&i) && v >= CONNECTED {
                    *reaching.entry(j).or_default() += 1;
                }
            }
            let predicted = |j: i32| {
                reaching
                    .get(&j)
                    .is_some_and(|&c| c >= u32::from(PREDICT_MIN))
            };
            let hits = (b..b + BITS).filter(|&j| predicted(j)).count();
            for i in p..p + BITS {
                for j in b..b + BITS {
                    let s = self.synapses.entry((i, j)).or_insert((0, 0));
                    s.0 = if s.0 == 0 {
                        INITIAL
                    } else {
                        (s.0 + INCREMENT).min(FULL)
                    };
                    s.1 = self.steps;
                }
            }
            for (&(i, j), s) in self.synapses.iter_mut() {
                if (p..p + BITS).contains(&i) && predicted(j) && !(b..b + BITS).contains(&j) {
                    s.0 = s.0.saturating_sub(DECREMENT).max(1);
                }
            }
            let outlying = |&(i, j): &(i32, i32)| !(in_core(i) && in_core(j));
            let overflow = self.synapses.keys().filter(|k| outlying(k)).count();
            if overflow > self.max_overflow {
                let mut ranked: Vec<(u8, u32, (i32, i32))> = self
                    .synapses
                    .iter()
                    .filter(|(k, _)| outlying(k))
                    .map(|(&k, &(v, t))| (v, t, k))
                    .collect();
                ranked.sort_unstable();
                for (_, _, k) in &ranked[..overflow - self.max_overflow * 9 / 10] {
                    self.synapses.remove(k);
                }
            }
            1.0 - hits as f64 / f64::from(BITS)
        }
    }

    /// Readings mostly inside the fitted range, with outliers that recur
    /// (so that their synapses connect, are weakened and are pruned).
    fn readings() -> impl Strategy<Value = Vec<f64>> {
        proptest::collection::vec(
            prop_oneof![
                6 => (0u8..10).prop_map(f64::from),
                1 => (0u8..3).prop_map(|k| 1.0e3 + f64::from(k)),
                1 => Just(-500.0),
                1 => 0.0f64..1.0e4,
            ],
            50..600,
        )
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn the_memory_scores_and_learns_as_the_plain_reference(
            values in readings(),
            max_overflow in prop_oneof![Just(16usize), Just(200), Just(4096)],
        ) {
            let fit: Vec<f64> = (0..150).map(|i| f64::from(i % 10)).collect();
            let mut tm = TransitionMemory::fitted(&fit, max_overflow);
            let mut reference = Reference {
                encoding: tm.clone(),
                synapses: BTreeMap::new(),
                max_overflow: tm.max_overflow,
                previous: None,
                steps: 0,
            };
            for (k, &x) in values.iter().enumerate() {
                prop_assert_eq!(tm.step(x), reference.step(x), "reading {}", k);
            }
            let mut learned: BTreeMap<(i32, i32), u8> = tm
                .overflow
                .iter()
                .map(|(&(i, j), s)| ((i32::from(i), i32::from(j)), s.value))
                .collect();
            for (row, values) in tm.core.chunks(CORE).enumerate() {
                for (column, &v) in values.iter().enumerate() {
                    if v != 0 {
                        learned.insert((row as i32 + CORE_FIRST, column as i32 + CORE_FIRST), v);
                    }
                }
            }
            let expected: BTreeMap<(i32, i32), u8> =
                reference.synapses.iter().map(|(&k, &(v, _))| (k, v)).collect();
            prop_assert_eq!(learned, expected);
        }
    }

    fn connected_in_the_table(tm: &TransitionMemory) -> Vec<(i16, i16)> {
        tm.overflow
            .iter()
            .filter(|(_, s)| s.value >= CONNECTED)
            .map(|(&key, _)| key)
            .collect()
    }

    #[test]
    fn a_restored_memory_with_synapses_beyond_its_own_range_still_steps() {
        let readings: Vec<f64> = (0..150).map(|i| f64::from(i % 10)).collect();
        let mut tm = TransitionMemory::fitted(&readings, 1024);
        let b = tm.bucket(5.0);
        // Connected synapses from every bit of 5's bucket to bits no
        // bucket of this memory reaches (a snapshot from elsewhere).
        for i in b..b + BITS {
            for j in [i16::MIN, 30_000, i16::MAX] {
                let synapse = OverflowSynapse {
                    value: 50,
                    touched: 0,
                };
                tm.overflow.insert((i as i16, j), synapse);
            }
        }
        let bytes = postcard::to_allocvec(&tm).unwrap();
        let mut restored: TransitionMemory = postcard::from_bytes(&bytes).unwrap();
        restored.step(5.0);
        let surprise = restored.step(5.0);
        assert!((0.0..=1.0).contains(&surprise), "{surprise}");
    }

    #[test]
    fn the_connected_index_follows_the_overflow_table_and_is_rebuilt_on_restore() {
        let readings: Vec<f64> = (0..150).map(|i| f64::from(i % 10)).collect();
        // Recurring outliers (connected overflow synapses, some weakened
        // when a predicted outlier does not come).
        let value = |k: u32| match k % 5 {
            0 => 1.0e3 + f64::from(k % 3),
            3 if (k / 5).is_multiple_of(3) => -500.0,
            _ => f64::from(k % 10),
        };
        let mut tm = TransitionMemory::fitted(&readings, 2048);
        for k in 0..2000 {
            tm.step(value(k));
            assert_eq!(tm.connected.keys(), connected_in_the_table(&tm), "step {k}");
        }
        assert!(tm.connected.keys().len() > 100);
        let bytes = postcard::to_allocvec(&tm).unwrap();
        let mut restored: TransitionMemory = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(restored.connected, tm.connected);
        for k in 2000..2500 {
            assert_eq!(tm.step(value(k)), restored.step(value(k)), "step {k}");
        }
        // Pruning that must drop connected synapses too.
        tm.max_overflow = 16;
        tm.step(value(2500));
        assert!(tm.overflow.len() < 100);
        assert_eq!(tm.connected.keys(), connected_in_the_table(&tm));
    }

    #[test]
    fn outliers_go_to_the_bounded_overflow_table() {
        let readings: Vec<f64> = (0..150).map(|i| f64::from(i % 10)).collect();
        let mut tm = TransitionMemory::fitted(&readings, 64);
        for k in 0..500 {
            tm.step(if k % 2 == 0 {
                1.0e6 + f64::from(k)
            } else {
                5.0
            });
            assert!(tm.overflow_synapses() <= 64 + 2 * 21 * 21, "bounded");
        }
        assert!(tm.overflow_synapses() > 0);
    }
}
