//! The anomaly likelihood: how improbable the recent average of a raw
//! surprise score is, given that score's own history.
//!
//! The last [`AVERAGE`] raw scores are averaged; the averages (after the
//! first [`LEARNING`] scores, which only teach the raw model) form a history
//! of at most `history` values whose mean and variance are re-estimated
//! every [`REFIT`] values (floors: mean 0.03, variance 3e-4; a history
//! without variance gives the null distribution, likelihood 0). The tail
//! probability `q` of the current average is one-sided (an average below
//! the mean is likely); of consecutive `q <= 1e-5` only the first counts.
//! The output is `L = ln(q + 1e-10) / ln(1e-10)` in `[0, 1]`: 0.5 at
//! `q = 1e-5`, 0.3 at `q = 1e-3`. `../shared/design/detection.md`
//! ("Channel B") is the specification.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

const AVERAGE: usize = 10;
const LEARNING: u64 = 150;
const REFIT: u32 = 100;
const MEAN_FLOOR: f64 = 0.03;
const VARIANCE_FLOOR: f64 = 3e-4;
/// Tail probabilities at or below this are "very unlikely".
const VERY_UNLIKELY: f64 = 1e-5;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Likelihood {
    raw: VecDeque<f32>,
    history: VecDeque<f32>,
    max_history: usize,
    seen: u64,
    mean: f64,
    std: f64,
    /// No distribution yet, or a flat one.
    null: bool,
    fitted: bool,
    since_fit: u32,
    previous_very_unlikely: bool,
}

impl Likelihood {
    pub(crate) fn new(max_history: usize) -> Self {
        Self {
            raw: VecDeque::with_capacity(AVERAGE + 1),
            history: VecDeque::new(),
            max_history: max_history.max(REFIT as usize),
            seen: 0,
            mean: 0.0,
            std: 1.0,
            null: true,
            fitted: false,
            since_fit: 0,
            previous_very_unlikely: false,
        }
    }

    fn fit(&mut self) {
        let n = self.history.len() as f64;
        if n < 2.0 {
            return;
        }
        let mean = self.history.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let variance = self
            .history
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        self.fitted = true;
        self.null = variance == 0.0;
        self.mean = mean.max(MEAN_FLOOR);
        self.std = variance.max(VARIANCE_FLOOR).sqrt();
    }

    /// The likelihood of one raw score.
    pub(crate) fn step(&mut self, raw: f64) -> f64 {
        self.seen += 1;
        self.raw.push_back(raw as f32);
        if self.raw.len() > AVERAGE {
            self.raw.pop_front();
        }
        let average = self.raw.iter().map(|&v| f64::from(v)).sum::<f64>() / self.raw.len() as f64;
        if self.seen > LEARNING {
            if self.history.len() == self.history.capacity() {
                // Grow by doubling, but never past the cap (a VecDeque
                // would double 8,640 to 16,384).
                let target = (2 * self.history.capacity()).clamp(64, self.max_history + 1);
                self.history
                    .reserve_exact(target.saturating_sub(self.history.len()).max(1));
            }
            self.history.push_back(average as f32);
            if self.history.len() > self.max_history {
                self.history.pop_front();
            }
            self.since_fit += 1;
            if !self.fitted || self.since_fit >= REFIT {
                self.since_fit = 0;
                self.fit();
            }
        }
        if self.null {
            return 0.0;
        }
        let z = (average - self.mean) / self.std;
        let mut q = 0.5 * libm::erfc(z / std::f64::consts::SQRT_2);
        let very_unlikely = q <= VERY_UNLIKELY;
        if very_unlikely && self.previous_very_unlikely {
            q = 0.5;
        }
        self.previous_very_unlikely = very_unlikely;
        ((q + 1e-10).ln() / 1e-10f64.ln()).clamp(0.0, 1.0)
    }

    pub(crate) fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + (self.raw.capacity() + self.history.capacity()) * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_after_a_quiet_history_is_unlikely_and_a_flat_one_is_null() {
        let mut l = Likelihood::new(8640);
        for k in 0..2000 {
            let raw = if k % 7 == 0 { 0.2 } else { 0.0 };
            assert!(l.step(raw) < 0.3);
        }
        let peak = (0..10).map(|_| l.step(1.0)).fold(0.0, f64::max);
        assert!(peak > 0.5, "{peak}");
        let mut flat = Likelihood::new(8640);
        assert!((0..1000).all(|_| flat.step(0.0) == 0.0));
    }

    #[test]
    fn the_history_buffer_stops_at_its_cap() {
        let mut l = Likelihood::new(8640);
        for k in 0..20_000 {
            l.step(if k % 7 == 0 { 0.2 } else { 0.0 });
        }
        assert_eq!(l.history.len(), 8640);
        assert!(l.history.capacity() <= 8641, "{}", l.history.capacity());
    }
}
