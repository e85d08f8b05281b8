//! The univariate novelty family: three causal channels fused into one
//! per-reading score `S_t` in `[0, 1]`.
//!
//! * **A**, adaptive-resonance novelty (`art`): an ensemble of instances
//!   (calibration lengths x range margins); `A_t` is the largest confidence
//!   any instance reports at reading `t`.
//! * **B**, transition-memory surprise through an anomaly likelihood
//!   (`transition`, `likelihood`): fitted on the first 150 readings
//!   (which are then replayed), `L_t` in `[0, 1]`; the confirmer.
//! * **C**, the spatial rule: armed after 150 readings, it fires when a
//!   value leaves the range seen (over the spatial horizon) by more than
//!   5 % of that range.
//!
//! Fusion: `S_t = 1` when C fires; else `A_t` when the novelty is
//! *confirmed* (the likelihood is not yet ready, or `L` exceeded 0.3 within
//! the last 10 readings, or C fired within them); else `A_t / 2`.
//!
//! Nothing depends on a series' length, its global range or the position
//! of a reading in a file: every quantity is computed from the readings
//! before it. A series is *ready* after [`READY_AFTER`] readings; before,
//! scores are computed but not to be acted on.
//!
//! Long-run behaviour: an instance whose frozen range no longer holds the
//! data (more than a fifth of its recent representatives clipped)
//! recalibrates; the transition memory is re-encoded when more than a fifth
//! of the last 150 readings fall outside the buckets it was fitted to; the
//! spatial rule forgets extremes older than its horizon. State is bounded:
//! categories per instance, overflow synapses and likelihood history are
//! capped by [`NoveltyConfig`]; [`Novelty::approx_bytes`] reports the total.
//!
//! `../shared/design/detection.md` is the specification.

mod art;
mod likelihood;
mod transition;

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use likelihood::Likelihood;
use transition::TransitionMemory;

/// Readings a series warms up for (its scores are computed, not acted on).
pub const READY_AFTER: u64 = 200;
/// Readings that fit the transition memory (and arm the spatial rule).
const FIT_READINGS: usize = 150;
/// Readings after a fit during which the likelihood is not yet trusted to
/// confirm (every novelty counts as confirmed).
const LIKELIHOOD_READY_AFTER_FIT: u64 = 300;
/// Readings whose likelihood can confirm a novelty.
const CONFIRM_LOOKBACK: usize = 10;
/// Likelihood above which a novelty is confirmed.
const CONFIRM_LIKELIHOOD: f64 = 0.3;
/// Share of the spatial range a value must exceed it by.
const SPATIAL_MARGIN: f64 = 0.05;
/// Share of the last [`FIT_READINGS`] outside the transition memory's
/// buckets that makes it re-encode.
const REFIT_OUTSIDE_SHARE: f64 = 0.2;

/// The family's configuration (recorded in the model manifest: a restored
/// state is used only with the configuration it was built with).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoveltyConfig {
    /// Channel A: one instance per calibration length x range margin.
    pub calibration_lengths: Vec<u32>,
    pub range_margins: Vec<f64>,
    /// Categories per ART instance (the one best longest ago is evicted).
    pub max_categories: u16,
    /// Channel B: likelihood history (values).
    pub likelihood_history: u32,
    /// Channel B: synapses with an end outside the fitted buckets.
    pub max_overflow_synapses: u32,
    /// Channel C on or off (off: for measuring what it contributes).
    pub spatial_rule: bool,
    /// Readings after which the spatial rule forgets an extreme.
    pub spatial_horizon: u32,
}

impl NoveltyConfig {
    /// The specification's ensemble: 8 instances, 256 categories each.
    pub fn full() -> Self {
        Self {
            calibration_lengths: vec![200, 300, 450, 600],
            range_margins: vec![0.5, 1.0],
            max_categories: 256,
            likelihood_history: 8640,
            max_overflow_synapses: 8192,
            spatial_rule: true,
            spatial_horizon: 16 * SPATIAL_BLOCK,
        }
    }

    /// For fleets of 100k+ series: 4 instances, 128 categories each, a
    /// shorter likelihood history and a smaller overflow table.
    pub fn light() -> Self {
        Self {
            calibration_lengths: vec![200, 450],
            max_categories: 128,
            likelihood_history: 2880,
            max_overflow_synapses: 2048,
            ..Self::full()
        }
    }

    /// The lightest ensemble, for throughput first: one instance
    /// (calibration length 600, margin 1.0) of 64 categories, with the
    /// light configuration's likelihood history and overflow table. It
    /// detects markedly less than the others (docs/DETECTION.md).
    pub fn minimal() -> Self {
        Self {
            calibration_lengths: vec![600],
            range_margins: vec![1.0],
            max_categories: 64,
            ..Self::light()
        }
    }

    /// Why this configuration cannot run, if it cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.calibration_lengths.is_empty() || self.range_margins.is_empty() {
            return Err("at least one calibration length and one range margin".into());
        }
        if let Some(l) = self
            .calibration_lengths
            .iter()
            .find(|&&l| !(16..=100_000).contains(&l))
        {
            return Err(format!("calibration length {l} is outside 16..=100000"));
        }
        if let Some(m) = self
            .range_margins
            .iter()
            .find(|m| !(m.is_finite() && (0.0..=10.0).contains(*m)))
        {
            return Err(format!("range margin {m} is outside 0..=10"));
        }
        if self.max_categories == 0 || self.likelihood_history < 100 {
            return Err("max-categories >= 1 and likelihood-history >= 100".into());
        }
        if self.spatial_horizon < SPATIAL_BLOCK {
            return Err(format!("spatial-horizon is at least {SPATIAL_BLOCK}"));
        }
        Ok(())
    }
}

/// One reading's verdict.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NoveltyScore {
    /// `S_t` in `[0, 1]`.
    pub score: f64,
    /// The series has seen [`READY_AFTER`] readings.
    pub ready: bool,
    /// The channels behind it: `A_t`, `L_t`, whether C fired.
    pub novelty: f64,
    pub likelihood: f64,
    pub spatial: bool,
}

/// Readings per block of the spatial rule's range memory.
const SPATIAL_BLOCK: u32 = 1024;

/// Min and max over roughly the last `horizon` readings, in blocks.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RangeMemory {
    blocks: VecDeque<(f64, f64)>,
    current: (f64, f64),
    in_current: u32,
}

impl RangeMemory {
    fn new() -> Self {
        Self {
            blocks: VecDeque::new(),
            current: (f64::INFINITY, f64::NEG_INFINITY),
            in_current: 0,
        }
    }

    fn range(&self) -> (f64, f64) {
        self.blocks
            .iter()
            .fold(self.current, |(lo, hi), &(a, b)| (lo.min(a), hi.max(b)))
    }

    fn push(&mut self, x: f64, horizon: u32) {
        self.current = (self.current.0.min(x), self.current.1.max(x));
        self.in_current += 1;
        if self.in_current == SPATIAL_BLOCK {
            self.blocks.push_back(self.current);
            self.current = (f64::INFINITY, f64::NEG_INFINITY);
            self.in_current = 0;
            while self.blocks.len() > (horizon / SPATIAL_BLOCK) as usize {
                self.blocks.pop_front();
            }
        }
    }
}

/// What channel B does for novelties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Confirming {
    /// Early in a series' life, before the likelihood has a history: every
    /// novelty counts as confirmed.
    Everything,
    /// A likelihood above [`CONFIRM_LIKELIHOOD`] within the last
    /// [`CONFIRM_LOOKBACK`] readings confirms.
    ByLikelihood,
    /// Re-encoded after a regime change and still learning: nothing is
    /// confirmed by the likelihood (a trend that keeps re-encoding would
    /// otherwise confirm every novelty it causes).
    Nothing,
}

/// Channel B: before the fit, the readings it will be fitted to.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Surprise {
    Fitting(Vec<f64>),
    Fitted {
        memory: Box<TransitionMemory>,
        likelihood: Box<Likelihood>,
        since_fit: u64,
        /// Re-encoded after a regime change (not the first fit).
        refitted: bool,
        /// The last [`FIT_READINGS`] readings and whether each fell outside
        /// the memory's buckets (for re-encoding).
        recent: VecDeque<(f64, bool)>,
        outside: u32,
    },
}

impl Surprise {
    /// Fits a memory to `readings` and replays them through it.
    fn fit(readings: &[f64], cfg: &NoveltyConfig, refitted: bool) -> Self {
        let mut memory = TransitionMemory::fitted(readings, cfg.max_overflow_synapses as usize);
        let mut likelihood = Likelihood::new(cfg.likelihood_history as usize);
        let mut recent = VecDeque::with_capacity(FIT_READINGS + 1);
        for &x in readings {
            likelihood.step(memory.step(x));
            recent.push_back((x, false));
        }
        Surprise::Fitted {
            memory: Box::new(memory),
            likelihood: Box::new(likelihood),
            since_fit: 0,
            refitted,
            recent,
            outside: 0,
        }
    }

    /// `L_t` and what it may do ([`Confirming`]).
    fn update(&mut self, x: f64, cfg: &NoveltyConfig) -> (f64, Confirming) {
        match self {
            Surprise::Fitting(readings) => {
                readings.push(x);
                if readings.len() >= FIT_READINGS {
                    *self = Self::fit(&std::mem::take(readings), cfg, false);
                }
                (0.0, Confirming::Everything)
            }
            Surprise::Fitted {
                memory,
                likelihood,
                since_fit,
                refitted,
                recent,
                outside,
            } => {
                *since_fit += 1;
                let l = likelihood.step(memory.step(x));
                let confirming = match (*refitted, *since_fit < LIKELIHOOD_READY_AFTER_FIT) {
                    (_, false) => Confirming::ByLikelihood,
                    (false, true) => Confirming::Everything,
                    (true, true) => Confirming::Nothing,
                };
                let is_outside = !memory.last_fits();
                recent.push_back((x, is_outside));
                *outside += u32::from(is_outside);
                if recent.len() > FIT_READINGS
                    && let Some((_, was_outside)) = recent.pop_front()
                {
                    *outside -= u32::from(was_outside);
                }
                if f64::from(*outside) > REFIT_OUTSIDE_SHARE * FIT_READINGS as f64 {
                    let readings: Vec<f64> = recent.iter().map(|(v, _)| *v).collect();
                    *self = Self::fit(&readings, cfg, true);
                }
                (l, confirming)
            }
        }
    }

    fn approx_bytes(&self) -> usize {
        match self {
            Surprise::Fitting(r) => r.capacity() * 8,
            Surprise::Fitted {
                memory,
                likelihood,
                recent,
                ..
            } => memory.approx_bytes() + likelihood.approx_bytes() + recent.capacity() * 16,
        }
    }
}

/// One series' detector.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Novelty {
    readings: u64,
    instances: Vec<art::Instance>,
    surprise: Surprise,
    /// The confirmers of the last [`CONFIRM_LOOKBACK`] readings: `L_t`, or 1
    /// where the spatial rule fired.
    recent_confirmers: VecDeque<f64>,
    range: RangeMemory,
}

impl Novelty {
    /// A detector that has seen nothing (`cfg` must be valid).
    pub fn new(cfg: &NoveltyConfig) -> Self {
        let instances = cfg
            .calibration_lengths
            .iter()
            .flat_map(|&l| cfg.range_margins.iter().map(move |&m| (l, m)))
            .map(|(l, m)| art::Instance::new(l, m))
            .collect();
        Self {
            readings: 0,
            instances,
            surprise: Surprise::Fitting(Vec::new()),
            recent_confirmers: VecDeque::with_capacity(CONFIRM_LOOKBACK + 1),
            range: RangeMemory::new(),
        }
    }

    /// Scores one reading (finite; the caller keeps NaN and infinities out)
    /// and learns from it. `cfg` is the configuration it was built with.
    pub fn update(&mut self, cfg: &NoveltyConfig, x: f64) -> NoveltyScore {
        debug_assert!(x.is_finite());
        self.readings += 1;
        let max_categories = usize::from(cfg.max_categories);
        let novelty = self
            .instances
            .iter_mut()
            .map(|inst| inst.update(x, max_categories))
            .fold(0.0, f64::max);
        let (likelihood, confirming) = self.surprise.update(x, cfg);
        let (lo, hi) = self.range.range();
        let margin = SPATIAL_MARGIN * (hi - lo);
        let spatial = cfg.spatial_rule
            && self.readings > FIT_READINGS as u64
            && (x > hi + margin || x < lo - margin);
        self.range.push(x, cfg.spatial_horizon);
        let confirmer = match (spatial, confirming) {
            (true, _) => 1.0,
            (false, Confirming::Nothing) => 0.0,
            (false, _) => likelihood,
        };
        self.recent_confirmers.push_back(confirmer);
        if self.recent_confirmers.len() > CONFIRM_LOOKBACK {
            self.recent_confirmers.pop_front();
        }
        let confirmed = confirming == Confirming::Everything
            || self
                .recent_confirmers
                .iter()
                .any(|&l| l > CONFIRM_LIKELIHOOD);
        let score = if spatial {
            1.0
        } else if confirmed {
            novelty
        } else {
            0.5 * novelty
        };
        NoveltyScore {
            score,
            ready: self.readings > READY_AFTER,
            novelty,
            likelihood,
            spatial,
        }
    }

    /// Readings seen.
    pub fn readings(&self) -> u64 {
        self.readings
    }

    /// ART categories over all instances.
    pub fn categories(&self) -> usize {
        self.instances.iter().map(art::Instance::categories).sum()
    }

    /// Heap and inline bytes this detector holds, approximately.
    pub fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self
                .instances
                .iter()
                .map(art::Instance::approx_bytes)
                .sum::<usize>()
            + self.surprise.approx_bytes()
            + self.recent_confirmers.capacity() * 8
            + self.range.blocks.capacity() * 16
    }
}

#[cfg(test)]
mod tests;
