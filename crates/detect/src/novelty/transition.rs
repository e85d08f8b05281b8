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

fn core_index(bit: i32) -> usize {
    (bit - CORE_FIRST) as usize
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct OverflowSynapse {
    /// Stored permanence (see the module docs).
    value: u8,
    touched: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TransitionMemory {
    offset: f64,
    resolution: f64,
    /// `CORE x CORE` stored permanences, row = source bit.
    core: Vec<u8>,
    /// `(source, target)` -> synapse, for synapses with an end outside the
    /// core (ordered by source: a bucket's synapses are one range).
    overflow: BTreeMap<(i16, i16), OverflowSynapse>,
    max_overflow: usize,
    previous: Option<i32>,
    steps: u32,
}

impl TransitionMemory {
    /// An empty memory for values encoded with `offset` and `resolution`.
    pub(crate) fn new(offset: f64, resolution: f64, max_overflow: usize) -> Self {
        Self {
            offset,
            resolution,
            core: vec![0; CORE * CORE],
            overflow: BTreeMap::new(),
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

    /// Whether `x` lies in the buckets the encoding was fitted to.
    pub(crate) fn fits(&self, x: f64) -> bool {
        let b = self.bucket(x);
        in_core(b) && in_core(b + BITS - 1)
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
        // predicted-but-absent.
        for i in p..p + BITS {
            self.reinforce(i, b);
            if in_core(i) {
                let row = &mut self.core[core_index(i) * CORE..][..CORE];
                for (v, &a) in row.iter_mut().zip(&absent) {
                    let lowered = v.saturating_sub(DECREMENT).max(1);
                    *v = if a != 0 && *v != 0 { lowered } else { *v };
                }
            }
        }
        if !self.overflow.is_empty() {
            for (&(_, j), s) in self.overflow.range_mut(source_range(p)) {
                let j = i32::from(j);
                let is_absent = if in_core(j) {
                    absent[core_index(j)] != 0
                } else {
                    absent_outside.contains(&j)
                };
                if is_absent {
                    s.value = s.value.saturating_sub(DECREMENT).max(1);
                }
            }
        }
        if self.overflow.len() > self.max_overflow {
            self.prune_overflow();
        }
        1.0 - hits as f64 / f64::from(BITS)
    }

    /// How many of bucket `p`'s bits reach each bit with a connected
    /// synapse: core bits in an array, others in a list.
    fn counts(&self, p: i32) -> ([u8; CORE], Vec<(i32, u8)>) {
        let mut counts = [0u8; CORE];
        for i in (p..p + BITS).filter(|&i| in_core(i)) {
            let row = &self.core[core_index(i) * CORE..][..CORE];
            for (c, &v) in counts.iter_mut().zip(row) {
                *c += u8::from(v >= CONNECTED);
            }
        }
        let mut targets: Vec<i32> = Vec::new();
        for (&(_, j), s) in self.overflow.range(source_range(p)) {
            if s.value >= CONNECTED {
                let j = i32::from(j);
                if in_core(j) {
                    counts[core_index(j)] += 1;
                } else {
                    targets.push(j);
                }
            }
        }
        targets.sort_unstable();
        let outside = targets
            .chunk_by(|a, b| a == b)
            .map(|run| (run[0], u8::try_from(run.len()).unwrap_or(u8::MAX)))
            .collect();
        (counts, outside)
    }

    /// +0.10 on `i -> j` for every bit `j` of bucket `b` (new at 0.20).
    fn reinforce(&mut self, i: i32, b: i32) {
        let bump = |v: u8| {
            if v == 0 {
                INITIAL
            } else {
                (v + INCREMENT).min(FULL)
            }
        };
        if in_core(i) && in_core(b) && in_core(b + BITS - 1) {
            let row = &mut self.core[core_index(i) * CORE..][..CORE];
            for v in &mut row[core_index(b)..][..BITS as usize] {
                *v = bump(*v);
            }
            return;
        }
        for j in b..b + BITS {
            if in_core(i) && in_core(j) {
                let v = &mut self.core[core_index(i) * CORE + core_index(j)];
                *v = bump(*v);
            } else {
                let steps = self.steps;
                self.overflow
                    .entry((i as i16, j as i16))
                    .and_modify(|s| {
                        s.value = bump(s.value);
                        s.touched = steps;
                    })
                    .or_insert(OverflowSynapse {
                        value: INITIAL,
                        touched: steps,
                    });
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
