//! Channel A: one adaptive-resonance novelty instance (and the fuzzy ART
//! network it runs).
//!
//! An instance down-samples the series, normalises it with a range frozen
//! after its calibration length, turns each window of 8 quantised values
//! into 16 features (the values and their Haar transform) and presents them,
//! complement coded, to a fuzzy ART network with two vigilances. An input
//! that founds a new *cluster* is a novelty candidate; masking and vigilance
//! adaptation decide whether it is reported, and with what confidence.
//! `../shared/design/detection.md` ("Channel A") is the specification.
//!
//! Features are bytes: a quantised level `0..=80` is stored times 3, a Haar
//! coefficient (in `[0, 1]`) times 240, rounded, and the complement of `f`
//! is `240 - f`. Match ratios are scale-free, so this is the specification's
//! arithmetic up to the 1/240 rounding of the Haar part, and the match loop
//! over categories is a byte min-and-sum the compiler vectorises (see
//! [`intersection`]).

mod filter;
mod network;

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use network::{Art, Presented};

/// Quantisation levels of a normalised value.
pub(crate) const LEVELS: u8 = 81;
/// Values in a feature window.
const WINDOW: usize = 8;
/// Features before complement coding (values, then Haar coefficients).
const FEATURES: usize = 2 * WINDOW;
/// Complement-coded input length.
pub(crate) const INPUT: usize = 2 * FEATURES;
/// Byte value of a feature equal to 1.
const FULL: u8 = 240;
/// A level within this many levels of the running median is snapped to it
/// (0.075 of the range).
const SNAP_LEVELS: u8 = 6;
/// Steps an event or a disturbance masks.
const MASK_STEPS: u32 = 12;
/// Vigilance adaptation period (steps) and the matches it looks back on.
const ADAPT_EVERY: u32 = 5;
const RECENT_MATCHES: usize = 20;
/// Highest upper vigilance.
const MAX_RHO_UB: f64 = 0.97;
/// Vigilance of the scratch network that orders the calibration.
const SCRATCH_RHO: f64 = 0.8;
/// Readings per calibration length that set the down-sampling step.
const STEP_DIVISOR: u32 = 104;
/// Share of recent representatives outside the frozen range that makes the
/// instance recalibrate (a sustained regime change).
const RECALIBRATE_CLIPPED_SHARE: f64 = 0.2;

/// A complement-coded input or a category's weights.
pub(crate) type Input = [u8; INPUT];

/// `sum(min(x, w))` over the input: the match loop's kernel. Written as a
/// plain fold over fixed-size arrays so that it compiles to byte `min` and
/// sum-of-absolute-differences vector instructions (SSE2 on x86-64, NEON on
/// aarch64); `tests::intersection_matches_a_scalar_reference` guards it.
#[inline]
pub(crate) fn intersection(x: &Input, w: &Input) -> u32 {
    let mut sum = 0u32;
    for k in 0..INPUT {
        sum += u32::from(x[k].min(w[k]));
    }
    sum
}

/// Min-max normalises `v` in place (all zeros when flat).
fn minmax_normalise(v: &mut [f64]) {
    let (lo, hi) = v
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    let span = hi - lo;
    for x in v.iter_mut() {
        *x = if span > 0.0 { (*x - lo) / span } else { 0.0 };
    }
}

/// The complement-coded features of a window of quantised levels.
fn features(levels: &[u8; WINDOW]) -> Input {
    let mut f = [0u8; INPUT];
    for k in 0..WINDOW {
        f[k] = levels[k] * 3;
    }
    // The 3-level Haar transform of the min-max normalised window: each
    // level's details ((later - earlier) / sqrt 2), then the approximation;
    // itself min-max normalised.
    let mut approx: [f64; WINDOW] = std::array::from_fn(|k| f64::from(levels[k]));
    minmax_normalise(&mut approx);
    // In place: after a level of width `n`, `approx[..n / 2]` holds the
    // approximations and the details are appended in order.
    let mut coefficients = [0.0f64; WINDOW];
    let (mut n, mut written) = (WINDOW, 0);
    while n > 1 {
        for k in 0..n / 2 {
            let (a, b) = (approx[2 * k], approx[2 * k + 1]);
            coefficients[written] = (b - a) / std::f64::consts::SQRT_2;
            written += 1;
            approx[k] = (a + b) / std::f64::consts::SQRT_2;
        }
        n /= 2;
    }
    coefficients[written] = approx[0];
    minmax_normalise(&mut coefficients);
    for (k, c) in coefficients.iter().enumerate() {
        f[WINDOW + k] = (c * f64::from(FULL)).round() as u8;
    }
    for k in 0..FEATURES {
        f[FEATURES + k] = FULL - f[k];
    }
    f
}

/// For each input, the sum of its cosine similarities (of the
/// uncomplemented features) with every input, itself included; 0 for a pair
/// with an all-zero input. The similarity is symmetric (bit for bit), so
/// each pair is computed once, with the norms computed once per input.
fn summed_cosines(inputs: &[Input]) -> Vec<f64> {
    let features: Vec<[f64; FEATURES]> = inputs
        .iter()
        .map(|a| std::array::from_fn(|k| f64::from(a[k])))
        .collect();
    let inputs = &features;
    let square = |a: &[f64; FEATURES], b: &[f64; FEATURES]| {
        (0..FEATURES).fold(0.0f64, |sum, k| sum + a[k] * b[k])
    };
    let roots: Vec<f64> = inputs.iter().map(|a| square(a, a).sqrt()).collect();
    let n = inputs.len();
    let mut similarity = vec![0.0f64; n * n];
    for a in 0..n {
        for b in a..n {
            let c = if roots[a] == 0.0 || roots[b] == 0.0 {
                0.0
            } else {
                square(&inputs[a], &inputs[b]) / (roots[a] * roots[b])
            };
            similarity[a * n + b] = c;
            similarity[b * n + a] = c;
        }
    }
    similarity
        .chunks_exact(n.max(1))
        .map(|row| row.iter().sum())
        .collect()
}

/// The running (lower) median of the quantised levels seen, all of them:
/// a histogram and a pointer that moves as levels arrive.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LevelMedian {
    counts: Vec<u64>,
    total: u64,
    median: u8,
    /// Levels at or below `median`.
    at_or_below: u64,
}

impl LevelMedian {
    fn new() -> Self {
        Self {
            counts: vec![0; usize::from(LEVELS)],
            total: 0,
            median: 0,
            at_or_below: 0,
        }
    }

    fn add(&mut self, level: u8) {
        self.counts[usize::from(level)] += 1;
        self.total += 1;
        if level <= self.median {
            self.at_or_below += 1;
        }
        // The lower median: the first level whose cumulative count reaches
        // half of the total.
        let half = self.total.div_ceil(2);
        while self.median > 0 && self.at_or_below - self.counts[usize::from(self.median)] >= half {
            self.at_or_below -= self.counts[usize::from(self.median)];
            self.median -= 1;
        }
        while self.at_or_below < half {
            self.median += 1;
            self.at_or_below += self.counts[usize::from(self.median)];
        }
    }

    fn median(&self) -> u8 {
        self.median
    }
}

/// Down-sampling of raw readings into one representative per step.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DownSampler {
    step: u32,
    n: u32,
    sum: f64,
    min: f64,
    max: f64,
    /// The fast average `a <- (a + mu) / 2` of step means.
    fast_average: Option<f64>,
}

impl DownSampler {
    fn new(step: u32) -> Self {
        Self {
            step,
            n: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            fast_average: None,
        }
    }

    /// The step's representative, when this reading completes a step: the
    /// extreme (min or max) farther from the fast average, or the mean when
    /// that extreme is within 10 % of the mean.
    fn push(&mut self, x: f64) -> Option<f64> {
        self.n += 1;
        self.sum += x;
        self.min = self.min.min(x);
        self.max = self.max.max(x);
        if self.n < self.step {
            return None;
        }
        let mu = self.sum / f64::from(self.n);
        let a = self.fast_average.unwrap_or(mu);
        let extreme = if (self.max - a).abs() >= (self.min - a).abs() {
            self.max
        } else {
            self.min
        };
        let representative = if (extreme - mu).abs() < 0.1 * mu.abs() {
            mu
        } else {
            extreme
        };
        self.fast_average = Some((a + mu) / 2.0);
        *self = Self {
            fast_average: self.fast_average,
            ..Self::new(self.step)
        };
        Some(representative)
    }
}

/// Where an instance is in its life.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Phase {
    /// Collecting its first `calibration` readings: each representative
    /// with the range of raw readings seen when it was taken.
    Calibrating {
        seen: u32,
        raw_min: f64,
        raw_max: f64,
        representatives: Vec<(f64, f64, f64)>,
    },
    Running(Box<Running>),
}

/// A calibrated instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Running {
    /// The frozen normalisation range.
    lo: f64,
    hi: f64,
    median: LevelMedian,
    window: VecDeque<u8>,
    art: Art,
    rho_ub: f64,
    rho_lb: f64,
    recent: VecDeque<f64>,
    since_adapt: u32,
    /// Sum and count of the matches of reported novelties.
    event_match_sum: f64,
    events: u64,
    since_event: u32,
    quiet: u32,
    last_event_match: f64,
    /// Whether each recent representative fell outside the range.
    clipped: VecDeque<bool>,
    clipped_count: u32,
}

/// One member of the ensemble: a calibration length and a range margin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Instance {
    calibration: u32,
    margin: f64,
    sampler: DownSampler,
    phase: Phase,
}

impl Instance {
    pub(crate) fn new(calibration: u32, margin: f64) -> Self {
        let calibration = calibration.max(WINDOW as u32);
        Self {
            calibration,
            margin,
            sampler: DownSampler::new((calibration / STEP_DIVISOR).max(1)),
            phase: Phase::Calibrating {
                seen: 0,
                raw_min: f64::INFINITY,
                raw_max: f64::NEG_INFINITY,
                representatives: Vec::new(),
            },
        }
    }

    /// One raw reading; the confidence of a reported novelty (0 when none).
    pub(crate) fn update(&mut self, x: f64, max_categories: usize) -> f64 {
        let representative = self.sampler.push(x);
        let mut confidence = 0.0;
        let mut calibrated = false;
        match &mut self.phase {
            Phase::Calibrating {
                seen,
                raw_min,
                raw_max,
                representatives,
            } => {
                *seen += 1;
                *raw_min = raw_min.min(x);
                *raw_max = raw_max.max(x);
                if let Some(r) = representative {
                    representatives.push((r, *raw_min, *raw_max));
                }
                calibrated = *seen >= self.calibration;
            }
            Phase::Running(running) => {
                if let Some(r) = representative {
                    confidence = running.step(r, max_categories);
                    if running.needs_recalibration(self.calibration / self.sampler.step) {
                        *self = Self::new(self.calibration, self.margin);
                        return confidence;
                    }
                }
            }
        }
        if calibrated {
            self.calibrate(max_categories);
        }
        confidence
    }

    /// Freezes the range and starts the network from the calibration.
    fn calibrate(&mut self, max_categories: usize) {
        let Phase::Calibrating {
            raw_min,
            raw_max,
            representatives,
            ..
        } = std::mem::replace(
            &mut self.phase,
            Phase::Calibrating {
                seen: 0,
                raw_min: 0.0,
                raw_max: 0.0,
                representatives: Vec::new(),
            },
        )
        else {
            return;
        };
        let range = |lo: f64, hi: f64| {
            let span = hi - lo;
            let span = if span > 0.0 {
                span
            } else {
                hi.abs().max(1.0) * 1e-3
            };
            (lo - self.margin * span, hi + self.margin * span)
        };
        let (lo, hi) = range(raw_min, raw_max);
        let mut running = Running {
            lo,
            hi,
            median: LevelMedian::new(),
            window: VecDeque::with_capacity(WINDOW),
            art: Art::default(),
            rho_ub: SCRATCH_RHO,
            rho_lb: SCRATCH_RHO,
            recent: VecDeque::with_capacity(RECENT_MATCHES + 1),
            since_adapt: 0,
            event_match_sum: 0.0,
            events: 0,
            since_event: u32::MAX,
            quiet: 0,
            last_event_match: 1.0,
            clipped: VecDeque::new(),
            clipped_count: 0,
        };
        // Calibration features, each quantised with the range known when
        // its representative was taken (causal).
        let mut calibration: Vec<Input> = Vec::with_capacity(representatives.len());
        for (r, seen_min, seen_max) in representatives {
            let (lo, hi) = range(seen_min, seen_max);
            let (level, _) = running.quantise(r, lo, hi);
            if let Some(x) = running.slide(level) {
                calibration.push(x);
            }
        }
        if !calibration.is_empty() {
            // Order by ascending summed cosine similarity (the odd ones
            // first), train a scratch network, and take the mean best match
            // of its second half as the starting vigilance.
            let sums = summed_cosines(&calibration);
            let mut order: Vec<usize> = (0..calibration.len()).collect();
            order.sort_by(|&a, &b| sums[a].total_cmp(&sums[b]));
            let mut scratch = Art::default();
            let matches: Vec<f64> = order
                .iter()
                .map(|&k| {
                    scratch
                        .present(&calibration[k], SCRATCH_RHO, SCRATCH_RHO, max_categories)
                        .best_match
                })
                .collect();
            let second_half = &matches[matches.len() / 2..];
            let rho = second_half.iter().sum::<f64>() / second_half.len() as f64;
            running.rho_ub = rho;
            running.rho_lb = rho;
            // Replay silently into the real network.
            for x in &calibration {
                running.art.present(x, rho, rho, max_categories);
            }
        }
        self.phase = Phase::Running(Box::new(running));
    }

    pub(crate) fn categories(&self) -> usize {
        match &self.phase {
            Phase::Running(r) => r.art.len(),
            Phase::Calibrating { .. } => 0,
        }
    }

    pub(crate) fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + match &self.phase {
                Phase::Calibrating {
                    representatives, ..
                } => representatives.capacity() * 24,
                Phase::Running(r) => {
                    std::mem::size_of::<Running>()
                        + r.art.approx_bytes()
                        + r.median.counts.capacity() * 8
                        + r.recent.capacity() * 8
                        + r.clipped.capacity()
                        + r.window.capacity()
                }
            }
    }
}

impl Running {
    /// The level of `d` in the range `lo..hi` (snapped to the running
    /// median when close), and whether it fell outside the range.
    fn quantise(&mut self, d: f64, lo: f64, hi: f64) -> (u8, bool) {
        let v = (d - lo) / (hi - lo);
        let clipped = !(0.0..=1.0).contains(&v);
        let level = (v.clamp(0.0, 1.0) * f64::from(LEVELS - 1)).round() as u8;
        self.median.add(level);
        let median = self.median.median();
        let level = if level.abs_diff(median) < SNAP_LEVELS {
            median
        } else {
            level
        };
        (level, clipped)
    }

    /// Adds a level to the window; the input once the window is full.
    fn slide(&mut self, level: u8) -> Option<Input> {
        if self.window.len() == WINDOW {
            self.window.pop_front();
        }
        self.window.push_back(level);
        (self.window.len() == WINDOW).then(|| {
            let levels: [u8; WINDOW] = std::array::from_fn(|k| self.window[k]);
            features(&levels)
        })
    }

    /// One representative of a calibrated instance.
    fn step(&mut self, d: f64, max_categories: usize) -> f64 {
        let (level, clipped) = self.quantise(d, self.lo, self.hi);
        self.clipped.push_back(clipped);
        self.clipped_count += u32::from(clipped);
        let Some(x) = self.slide(level) else {
            return 0.0;
        };
        let p = self
            .art
            .present(&x, self.rho_ub, self.rho_lb, max_categories);
        self.recent.push_back(p.best_match);
        if self.recent.len() > RECENT_MATCHES {
            self.recent.pop_front();
        }
        self.judge_then_adapt(&p)
    }

    /// Decides whether a new cluster is reported (with the vigilances it was
    /// presented at), then adapts the vigilances.
    fn judge_then_adapt(&mut self, p: &Presented) -> f64 {
        let m = p.best_match;
        self.since_event = self.since_event.saturating_add(1);
        let after_event = self.since_event < MASK_STEPS;
        let masked = after_event || self.quiet < MASK_STEPS;
        let mut confidence = 0.0;
        if p.new_cluster {
            // A much worse match than the last event's breaks the mask.
            let factor = if after_event { 0.9 } else { 0.7 };
            if !masked || m < factor * self.last_event_match {
                confidence = self.confidence(m, p.newest_match);
                self.since_event = 0;
                self.last_event_match = m;
                self.event_match_sum += m;
                self.events += 1;
            }
        }
        // A new category disturbs the network; so does the vigilance update
        // that follows an event. The periodic updates do not.
        let mut disturbed = p.new_category;
        self.since_adapt += 1;
        if self.since_event == MASK_STEPS {
            self.since_adapt = 0;
            self.adapt();
            disturbed = true;
        } else if self.since_adapt >= ADAPT_EVERY {
            self.since_adapt = 0;
            self.adapt();
        }
        self.quiet = if disturbed {
            0
        } else {
            self.quiet.saturating_add(1)
        };
        confidence
    }

    fn confidence(&self, m: f64, e: f64) -> f64 {
        let gap = (1.0 - m).max(1e-9);
        (0.35 * (self.rho_ub - m) / gap + 0.65 * (self.rho_lb - m) / gap + 1.5 * (1.0 - e))
            .clamp(0.0, 1.0)
    }

    /// The upper vigilance follows the mean recent match; the lower one
    /// rises by 19 % of its gap to the recent minimum, or falls by half the
    /// mean recent shortfall, bounded by past events' matches and the upper.
    fn adapt(&mut self) {
        if self.recent.is_empty() {
            return;
        }
        let mean = self.recent.iter().sum::<f64>() / self.recent.len() as f64;
        let min = self.recent.iter().copied().fold(f64::INFINITY, f64::min);
        self.rho_ub = mean.min(MAX_RHO_UB);
        let (mut shortfall_sum, mut shortfalls) = (0.0, 0u32);
        for m in &self.recent {
            let shortfall = self.rho_lb - m;
            if shortfall > 0.05 {
                shortfall_sum += shortfall.min(0.37);
                shortfalls += 1;
            }
        }
        if shortfalls == 0 {
            if min > self.rho_lb {
                self.rho_lb += 0.19 * (min - self.rho_lb);
            }
        } else {
            self.rho_lb -= (0.5 * shortfall_sum / f64::from(shortfalls)).max(0.01);
        }
        if self.events > 0 {
            self.rho_lb = self.rho_lb.max(self.event_match_sum / self.events as f64);
        }
        self.rho_lb = self.rho_lb.min(self.rho_ub);
    }

    /// More than a fifth of the last `horizon` representatives fell outside
    /// the frozen range.
    fn needs_recalibration(&mut self, horizon: u32) -> bool {
        let horizon = horizon.max(1) as usize;
        while self.clipped.len() > horizon {
            if self.clipped.pop_front() == Some(true) {
                self.clipped_count -= 1;
            }
        }
        self.clipped.len() == horizon
            && f64::from(self.clipped_count) > RECALIBRATE_CLIPPED_SHARE * horizon as f64
    }
}

#[cfg(test)]
mod tests;
