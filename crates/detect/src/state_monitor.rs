//! The multivariate family: state monitoring of a record-shaped device (one
//! value per metric per record), causal.
//!
//! The first `warmup-records` complete records are the device's normal
//! state. From them the monitor fits:
//! * **T² + Q**: the records standardised with the warm-up mean and
//!   standard deviation; a PCA keeping `explained-variance` of the
//!   variance. Hotelling's T² of a record's component scores is compared
//!   with its F-distribution limit at `confidence`; the squared prediction
//!   error Q (what the kept components do not explain) with the
//!   Jackson-Mudholkar limit at `confidence`.
//! * **causal MSET**: the warm-up records are the memory `D`; the
//!   similarity of two records is `1 - |x - y| / (|x| + |y|)` (Euclidean
//!   norms); a record's estimate is `x^ = D G^-1 a(x)` with `G` the
//!   memory's similarity matrix and `a(x)` the record's similarity to each
//!   memory record (`D G^-1` is computed once); its score is
//!   `|x - x^| / |x^|` against `mset-limit`.
//!
//! * **drift of the slow metrics** (`slow_autocorrelation`): a metric whose
//!   warm-up values have a lag-1 autocorrelation above the setting (a
//!   thermal sensor) is judged by its deviation from a causal baseline, the
//!   EMA of span `drift_span` of its earlier values, instead of by its
//!   level: a rig that warms up, or stays warm after a fault, is not a new
//!   state of the machine, while a fast departure still is. Every channel
//!   reads these features (a record with its slow metrics so replaced); the
//!   MSET estimate of a slow metric is returned as baseline plus estimated
//!   drift, in the metric's units.
//! * **MEWMA** (`mewma_lambda`): the exponentially weighted moving average
//!   (weight λ) of the standardised record, compared through the inverse of
//!   its own covariance over the warm-up (so the autocorrelation of real
//!   sensors is in the limit) with the chi-square limit at
//!   `mewma_confidence`. It sees a small shift held over a few records
//!   that no single record shows.
//!
//! T², Q and MSET ratios (score / limit) are each smoothed by an
//! exponential moving average of span `ema_span` (weight `2 / (span +
//! 1)`); the MEWMA ratio is already an average. A record is anomalous when
//! the largest ratio exceeds 1. Nothing looks ahead: a record is judged with
//! the records before it. `../shared/design/detection.md` ("Multivariate
//! family") is the specification of T²+Q and MSET; the drift model and the
//! MEWMA chart are the next step it names, chosen by group-wise
//! cross-validation (docs/DETECTION.md).
//!
//! # State layout
//! The phase is saved with the detector state (postcard). A monitor fitted
//! before the drift model existed (`Phase::Fitted`) still loads and is
//! judged as then; new fits are `Phase::Tracked`.

use serde::{Deserialize, Serialize};

use crate::stats::{self, Square};

/// The family's configuration (recorded in the model manifest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateMonitorConfig {
    pub warmup_records: u32,
    /// Share of the standardised variance the PCA keeps.
    pub explained_variance: f64,
    /// Confidence of the T² and Q limits.
    pub confidence: f64,
    /// Limit of the MSET relative residual.
    pub mset_limit: f64,
    pub ema_span: u32,
    /// Which channels decide (both by default).
    pub t2q: bool,
    pub mset: bool,
    /// Metrics whose warm-up lag-1 autocorrelation exceeds this are judged
    /// by their drift from a causal baseline (absent: no drift model).
    #[serde(default)]
    pub slow_autocorrelation: Option<f64>,
    /// Span of the slow metrics' baseline EMA, in records.
    #[serde(default = "default_drift_span")]
    pub drift_span: u32,
    /// Weight of the MEWMA chart (absent: no chart).
    #[serde(default)]
    pub mewma_lambda: Option<f64>,
    /// Confidence of the MEWMA chart's chi-square limit.
    #[serde(default = "default_mewma_confidence")]
    pub mewma_confidence: f64,
    /// Warm-up records the chart's EWMA settles over before its covariance
    /// is estimated from the rest.
    #[serde(default = "default_mewma_burn_in")]
    pub mewma_burn_in: u32,
}

fn default_drift_span() -> u32 {
    100
}

fn default_mewma_confidence() -> f64 {
    0.999_99
}

fn default_mewma_burn_in() -> u32 {
    50
}

impl Default for StateMonitorConfig {
    fn default() -> Self {
        Self {
            warmup_records: 400,
            explained_variance: 0.85,
            confidence: 0.999,
            mset_limit: 0.01,
            ema_span: 5,
            t2q: true,
            mset: true,
            slow_autocorrelation: Some(0.9),
            drift_span: default_drift_span(),
            mewma_lambda: Some(0.2),
            mewma_confidence: default_mewma_confidence(),
            mewma_burn_in: default_mewma_burn_in(),
        }
    }
}

impl StateMonitorConfig {
    /// Why this configuration cannot run, if it cannot.
    pub fn validate(&self) -> Result<(), String> {
        if !(8..=100_000).contains(&self.warmup_records) {
            return Err("warmup_records is outside 8..=100000".into());
        }
        if !(self.explained_variance > 0.0 && self.explained_variance <= 1.0) {
            return Err("explained_variance is outside (0, 1]".into());
        }
        if !(self.confidence > 0.5 && self.confidence < 1.0) {
            return Err("confidence is outside (0.5, 1)".into());
        }
        if !(self.mset_limit.is_finite() && self.mset_limit > 0.0) {
            return Err("mset_limit must be positive".into());
        }
        if self.ema_span == 0 || !(self.t2q || self.mset || self.mewma_lambda.is_some()) {
            return Err("ema_span >= 1 and at least one of t2q, mset, mewma_lambda".into());
        }
        if self
            .slow_autocorrelation
            .is_some_and(|a| !(a > 0.0 && a < 1.0))
        {
            return Err("slow_autocorrelation is outside (0, 1)".into());
        }
        if self.drift_span == 0 {
            return Err("drift_span must be at least 1".into());
        }
        if self.mewma_lambda.is_some_and(|l| !(l > 0.0 && l <= 1.0)) {
            return Err("mewma_lambda is outside (0, 1]".into());
        }
        if !(self.mewma_confidence > 0.5 && self.mewma_confidence < 1.0) {
            return Err("mewma_confidence is outside (0.5, 1)".into());
        }
        if self.mewma_lambda.is_some() && self.mewma_burn_in + 2 > self.warmup_records {
            return Err("mewma_burn_in leaves fewer than 2 warm-up records for the chart".into());
        }
        Ok(())
    }
}

/// One record's verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct StateVerdict {
    /// The warm-up is over (before, nothing is judged).
    pub ready: bool,
    pub anomalous: bool,
    /// The largest smoothed ratio (score / limit); above 1 is anomalous.
    pub score: f64,
    /// The MSET estimate of the record (in the record's units).
    pub expected: Vec<f64>,
    /// Each metric's share of the residual behind the largest ratio (sums
    /// to 1, or all zero).
    pub contributions: Vec<f64>,
}

/// The fitted model of a device's normal state, over the records'
/// *features*: the record itself, or with its slow metrics replaced by their
/// drift from their baselines.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Fitted {
    /// Standardisation of the features.
    mean: Vec<f64>,
    std: Vec<f64>,
    /// Kept principal directions (unit vectors) and their variances.
    components: Vec<Vec<f64>>,
    variances: Vec<f64>,
    t2_limit: f64,
    /// None when the kept components explain everything.
    q_limit: Option<f64>,
    /// MSET memory (warm-up features) and `D G^-1`, metric-major
    /// (`metrics x memory`).
    memory: Vec<Vec<f64>>,
    operator: Vec<f64>,
    /// Smoothed ratios (T², Q, MSET).
    ema: [Option<f64>; 3],
}

/// What a drift-aware monitor follows beside its [`Fitted`] model.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Tracking {
    /// Per metric: a slow metric's baseline (the EMA of its values before
    /// the record being judged); `None` for the others.
    baselines: Vec<Option<f64>>,
    chart: Option<Chart>,
}

/// The MEWMA chart of the standardised features.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Chart {
    /// The EWMA so far.
    ewma: Vec<f64>,
    /// The inverse of the EWMA's covariance over the warm-up (row-major).
    inverse: Vec<f64>,
    limit: f64,
}

// Variants are saved by index: new ones go at the end.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Phase {
    WarmingUp(Vec<Vec<f64>>),
    /// Fitted before the drift model existed: judged on the records alone.
    Fitted(Box<Fitted>),
    /// The warm-up records could not be fitted (e.g. a constant device):
    /// nothing is judged.
    Unfitted,
    Tracked(Box<Fitted>, Box<Tracking>),
}

/// One device's monitor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateMonitor {
    metrics: usize,
    phase: Phase,
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

fn similarity(x: &[f64], y: &[f64]) -> f64 {
    let d: f64 = x
        .iter()
        .zip(y)
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f64>()
        .sqrt();
    let s = norm(x) + norm(y);
    if s == 0.0 { 1.0 } else { 1.0 - d / s }
}

/// Pearson correlation of a series with itself one step later (NaN for a
/// constant series).
fn lag1_autocorrelation(values: &[f64]) -> f64 {
    if values.len() < 3 {
        return f64::NAN;
    }
    let (a, b) = (&values[..values.len() - 1], &values[1..]);
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        ab += (x - ma) * (y - mb);
        aa += (x - ma) * (x - ma);
        bb += (y - mb) * (y - mb);
    }
    ab / (aa * bb).sqrt()
}

/// Shares of a vector's squared entries (all zero for a zero vector).
fn shares(v: &[f64]) -> Vec<f64> {
    let total: f64 = v.iter().map(|r| r * r).sum();
    v.iter()
        .map(|r| if total > 0.0 { r * r / total } else { 0.0 })
        .collect()
}

impl StateMonitor {
    /// A monitor for records of `metrics` values.
    pub fn new(metrics: usize) -> Self {
        Self {
            metrics,
            phase: Phase::WarmingUp(Vec::new()),
        }
    }

    pub fn metrics(&self) -> usize {
        self.metrics
    }

    /// Judges one complete record (finite values, `metrics` of them), then
    /// learns from it while warming up.
    pub fn update(&mut self, cfg: &StateMonitorConfig, record: &[f64]) -> StateVerdict {
        assert_eq!(record.len(), self.metrics, "one value per metric");
        let idle = StateVerdict {
            ready: false,
            anomalous: false,
            score: 0.0,
            expected: Vec::new(),
            contributions: vec![0.0; self.metrics],
        };
        match &mut self.phase {
            Phase::WarmingUp(records) => {
                records.push(record.to_vec());
                if records.len() >= cfg.warmup_records as usize {
                    let records = std::mem::take(records);
                    self.phase = match fit(&records, cfg) {
                        Some((f, t)) => Phase::Tracked(Box::new(f), Box::new(t)),
                        None => Phase::Unfitted,
                    };
                }
                idle
            }
            Phase::Unfitted => StateVerdict {
                ready: true,
                ..idle
            },
            Phase::Fitted(f) => f.judge(cfg, record, None, None),
            Phase::Tracked(f, t) => {
                let baselines: Vec<f64> = t.baselines.iter().map(|b| b.unwrap_or(0.0)).collect();
                let features = t.features(cfg, record);
                let chart = t.chart.as_mut().map(|c| c.step(cfg, f, &features));
                f.judge(cfg, &features, Some(&baselines), chart)
            }
        }
    }

    /// Heap and inline bytes this monitor holds, approximately.
    pub fn approx_bytes(&self) -> usize {
        let fitted = |f: &Fitted| {
            (f.memory.len() * (24 + self.metrics * 8))
                + f.operator.len() * 8
                + (f.components.len() + 4) * self.metrics * 8
        };
        std::mem::size_of::<Self>()
            + match &self.phase {
                Phase::WarmingUp(r) => r.capacity() * (24 + self.metrics * 8),
                Phase::Fitted(f) => fitted(f),
                Phase::Tracked(f, _) => {
                    fitted(f) + self.metrics * 16 + (self.metrics + 1) * self.metrics * 8
                }
                Phase::Unfitted => 0,
            }
    }
}

/// Fits the model of the warm-up `records`: which metrics are slow, their
/// baselines followed through the warm-up, then T²+Q, MSET and the MEWMA
/// chart on the features.
fn fit(records: &[Vec<f64>], cfg: &StateMonitorConfig) -> Option<(Fitted, Tracking)> {
    let m = records.first()?.len();
    let baselines = (0..m)
        .map(|j| {
            let values: Vec<f64> = records.iter().map(|r| r[j]).collect();
            cfg.slow_autocorrelation
                .filter(|&limit| lag1_autocorrelation(&values) > limit)
                .map(|_| values[0])
        })
        .collect();
    let mut tracking = Tracking {
        baselines,
        chart: None,
    };
    let features: Vec<Vec<f64>> = records.iter().map(|r| tracking.features(cfg, r)).collect();
    let fitted = Fitted::fit(&features, cfg)?;
    if let Some(lambda) = cfg.mewma_lambda {
        tracking.chart = Some(Chart::fit(&fitted, &features, lambda, cfg)?);
    }
    Some((fitted, tracking))
}

impl Tracking {
    /// The record's features (slow metrics as their drift from the
    /// baseline), then the baselines take the record in.
    fn features(&mut self, cfg: &StateMonitorConfig, record: &[f64]) -> Vec<f64> {
        let alpha = 2.0 / (f64::from(cfg.drift_span) + 1.0);
        record
            .iter()
            .zip(&mut self.baselines)
            .map(|(&x, baseline)| match baseline {
                Some(b) => {
                    let drift = x - *b;
                    *b += alpha * drift;
                    drift
                }
                None => x,
            })
            .collect()
    }
}

impl Chart {
    fn fit(
        fitted: &Fitted,
        features: &[Vec<f64>],
        lambda: f64,
        cfg: &StateMonitorConfig,
    ) -> Option<Self> {
        let m = fitted.mean.len();
        let mut ewma = vec![0.0; m];
        let mut settled = Vec::new();
        for (i, f) in features.iter().enumerate() {
            fitted.advance(&mut ewma, lambda, f);
            if i >= cfg.mewma_burn_in as usize {
                settled.push(ewma.clone());
            }
        }
        let n = settled.len() as f64;
        if n < 2.0 {
            return None;
        }
        let mean: Vec<f64> = (0..m)
            .map(|j| settled.iter().map(|e| e[j]).sum::<f64>() / n)
            .collect();
        let mut cov = Square::zeros(m);
        for i in 0..m {
            for j in i..m {
                let c = settled
                    .iter()
                    .map(|e| (e[i] - mean[i]) * (e[j] - mean[j]))
                    .sum::<f64>()
                    / (n - 1.0);
                cov.set(i, j, c);
                cov.set(j, i, c);
            }
        }
        // A small ridge keeps a metric that did not move in the warm-up
        // from making the covariance singular.
        let trace: f64 = (0..m).map(|i| cov.at(i, i)).sum();
        let ridge = (1e-6 * trace / m as f64).max(1e-12);
        for i in 0..m {
            cov.set(i, i, cov.at(i, i) + ridge);
        }
        Some(Self {
            ewma,
            inverse: stats::inverse(&cov)?.a,
            limit: stats::chi_square_quantile(cfg.mewma_confidence, m as f64)?,
        })
    }

    /// Takes a record's features in; the chart's ratio to its limit and
    /// the EWMA it was read from.
    fn step(
        &mut self,
        cfg: &StateMonitorConfig,
        fitted: &Fitted,
        features: &[f64],
    ) -> ChartReading {
        let lambda = cfg.mewma_lambda.unwrap_or(1.0);
        fitted.advance(&mut self.ewma, lambda, features);
        let m = self.ewma.len();
        let statistic: f64 = (0..m)
            .map(|i| {
                self.ewma[i]
                    * (0..m)
                        .map(|j| self.inverse[i * m + j] * self.ewma[j])
                        .sum::<f64>()
            })
            .sum();
        ChartReading {
            ratio: statistic / self.limit,
            contributions: shares(&self.ewma),
        }
    }
}

/// The chart's part in a record's verdict.
struct ChartReading {
    ratio: f64,
    contributions: Vec<f64>,
}

impl Fitted {
    /// T²+Q and MSET fitted on the warm-up's features.
    fn fit(features: &[Vec<f64>], cfg: &StateMonitorConfig) -> Option<Self> {
        let n = features.len();
        let m = features.first()?.len();
        if n < 2 || m == 0 {
            return None;
        }
        let nf = n as f64;
        let mean: Vec<f64> = (0..m)
            .map(|j| features.iter().map(|r| r[j]).sum::<f64>() / nf)
            .collect();
        let std: Vec<f64> = (0..m)
            .map(|j| {
                let var = features
                    .iter()
                    .map(|r| (r[j] - mean[j]).powi(2))
                    .sum::<f64>()
                    / (nf - 1.0);
                let floor = 1e-6 * mean[j].abs().max(1e-6);
                var.sqrt().max(floor)
            })
            .collect();
        let z: Vec<Vec<f64>> = features
            .iter()
            .map(|r| (0..m).map(|j| (r[j] - mean[j]) / std[j]).collect())
            .collect();
        let mut cov = Square::zeros(m);
        for i in 0..m {
            for j in i..m {
                let c = z.iter().map(|r| r[i] * r[j]).sum::<f64>() / (nf - 1.0);
                cov.set(i, j, c);
                cov.set(j, i, c);
            }
        }
        let (values, vectors) = stats::symmetric_eigen(&cov);
        let values: Vec<f64> = values.into_iter().map(|v| v.max(0.0)).collect();
        let total: f64 = values.iter().sum();
        if total <= 0.0 {
            return None;
        }
        let mut kept = 0;
        let mut explained = 0.0;
        while kept < m && explained < cfg.explained_variance * total {
            explained += values[kept];
            kept += 1;
        }
        let kept = kept.max(1);
        let k = kept as f64;
        // Hotelling's limit for a new observation.
        let t2_limit = if nf > k + 1.0 {
            stats::f_quantile(cfg.confidence, k, nf - k)? * k * (nf - 1.0) * (nf + 1.0)
                / (nf * (nf - k))
        } else {
            return None;
        };
        // Jackson-Mudholkar limit of Q from the discarded variances.
        let theta = |p: i32| values[kept..].iter().map(|v| v.powi(p)).sum::<f64>();
        let (t1, t2, t3) = (theta(1), theta(2), theta(3));
        let q_limit = (t1 > 1e-12 && t2 > 0.0).then(|| {
            let h0 = 1.0 - 2.0 * t1 * t3 / (3.0 * t2 * t2);
            let c = stats::normal_quantile(cfg.confidence);
            let inner =
                c * (2.0 * t2 * h0 * h0).sqrt() / t1 + 1.0 + t2 * h0 * (h0 - 1.0) / (t1 * t1);
            t1 * inner.max(1e-12).powf(1.0 / h0)
        });
        // MSET: D G^-1 over the warm-up.
        let mut g = Square::zeros(n);
        for i in 0..n {
            for j in i..n {
                let s = similarity(&features[i], &features[j]);
                g.set(i, j, s);
                g.set(j, i, s);
            }
        }
        // A tiny ridge keeps repeated records from making G singular.
        let ridge = 1e-9 * (0..n).map(|i| g.at(i, i)).sum::<f64>() / nf;
        for i in 0..n {
            g.set(i, i, g.at(i, i) + ridge.max(1e-12));
        }
        let g_inverse = stats::inverse(&g)?;
        let mut operator = vec![0.0; m * n];
        for j in 0..m {
            for c in 0..n {
                operator[j * n + c] = (0..n).map(|r| features[r][j] * g_inverse.at(r, c)).sum();
            }
        }
        Some(Self {
            mean,
            std,
            components: vectors.into_iter().take(kept).collect(),
            variances: values[..kept].iter().map(|v| v.max(1e-12)).collect(),
            t2_limit,
            q_limit,
            memory: features.to_vec(),
            operator,
            ema: [None; 3],
        })
    }

    /// One step of an EWMA of the standardised features.
    fn advance(&self, ewma: &mut [f64], lambda: f64, features: &[f64]) {
        for (j, e) in ewma.iter_mut().enumerate() {
            let z = (features[j] - self.mean[j]) / self.std[j];
            *e = lambda * z + (1.0 - lambda) * *e;
        }
    }

    /// Judges a record's features `x`; `baselines` (per metric, 0 for a
    /// metric judged by its level) turn the MSET estimate back into the
    /// record's units.
    fn judge(
        &mut self,
        cfg: &StateMonitorConfig,
        x: &[f64],
        baselines: Option<&[f64]>,
        chart: Option<ChartReading>,
    ) -> StateVerdict {
        let m = x.len();
        let z: Vec<f64> = (0..m)
            .map(|j| (x[j] - self.mean[j]) / self.std[j])
            .collect();
        // T² and Q.
        let scores: Vec<f64> = self
            .components
            .iter()
            .map(|c| c.iter().zip(&z).map(|(a, b)| a * b).sum())
            .collect();
        let t2: f64 = scores
            .iter()
            .zip(&self.variances)
            .map(|(t, v)| t * t / v)
            .sum();
        let residual: Vec<f64> = (0..m)
            .map(|j| {
                z[j] - self
                    .components
                    .iter()
                    .zip(&scores)
                    .map(|(c, t)| c[j] * t)
                    .sum::<f64>()
            })
            .collect();
        let q: f64 = residual.iter().map(|r| r * r).sum();
        // MSET.
        let similarities: Vec<f64> = self.memory.iter().map(|d| similarity(d, x)).collect();
        let n = similarities.len();
        let expected: Vec<f64> = (0..m)
            .map(|j| {
                self.operator[j * n..(j + 1) * n]
                    .iter()
                    .zip(&similarities)
                    .map(|(o, s)| o * s)
                    .sum()
            })
            .collect();
        let mset_residual: Vec<f64> = x.iter().zip(&expected).map(|(a, b)| a - b).collect();
        let expected_norm = norm(&expected);
        let relative = if expected_norm > 0.0 {
            norm(&mset_residual) / expected_norm
        } else {
            norm(&mset_residual)
        };
        let ratios = [
            cfg.t2q.then_some(t2 / self.t2_limit),
            cfg.t2q.then(|| self.q_limit.map(|l| q / l)).flatten(),
            cfg.mset.then_some(relative / cfg.mset_limit),
        ];
        let alpha = 2.0 / (f64::from(cfg.ema_span) + 1.0);
        let mut best = (0.0f64, 0usize);
        for (k, ratio) in ratios.iter().enumerate() {
            let Some(r) = ratio.filter(|r| r.is_finite()) else {
                continue;
            };
            let smoothed = match self.ema[k] {
                Some(previous) => alpha * r + (1.0 - alpha) * previous,
                None => r,
            };
            self.ema[k] = Some(smoothed);
            if smoothed > best.0 {
                best = (smoothed, k);
            }
        }
        let chart = chart.filter(|c| c.ratio.is_finite());
        if let Some(c) = &chart
            && c.ratio > best.0
        {
            best = (c.ratio, 3);
        }
        let contributions = match best.1 {
            3 => chart.map(|c| c.contributions).unwrap_or_default(),
            2 => {
                let scaled: Vec<f64> = mset_residual
                    .iter()
                    .zip(&self.std)
                    .map(|(r, s)| r / s)
                    .collect();
                shares(&scaled)
            }
            1 => shares(&residual),
            _ => shares(&z),
        };
        let expected = match baselines {
            Some(b) => expected.iter().zip(b).map(|(e, b)| e + b).collect(),
            None => expected,
        };
        StateVerdict {
            ready: true,
            anomalous: best.0 > 1.0,
            score: best.0,
            expected,
            contributions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records of a 4-metric device: two correlated pairs plus noise.
    fn normal_record(i: u32) -> Vec<f64> {
        let a = f64::from(i).sin();
        let b = (f64::from(i) * 0.37).cos();
        let noise = |k: u32| ((i * 7919 + k * 104_729) % 1000) as f64 / 1000.0 - 0.5;
        vec![
            10.0 + a + 0.05 * noise(1),
            20.0 + 2.0 * a + 0.05 * noise(2),
            5.0 + b + 0.05 * noise(3),
            7.0 - b + 0.05 * noise(4),
        ]
    }

    #[test]
    fn a_broken_correlation_is_anomalous_and_normal_records_are_not() {
        let cfg = StateMonitorConfig::default();
        let mut m = StateMonitor::new(4);
        for i in 0..400 {
            assert!(!m.update(&cfg, &normal_record(i)).ready);
        }
        let false_alarms = (400..1400)
            .filter(|&i| m.update(&cfg, &normal_record(i)).anomalous)
            .count();
        assert!(
            false_alarms < 20,
            "{false_alarms} false alarms in 1000 normal records"
        );
        // The first pair decouples: each value alone is in range.
        let mut flagged = 0;
        for i in 1400..1420 {
            let mut r = normal_record(i);
            r[1] = 20.0 - 2.0 * (f64::from(i)).sin();
            let v = m.update(&cfg, &r);
            flagged += usize::from(v.anomalous);
            assert!((v.contributions.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        }
        assert!(flagged >= 15, "{flagged} of 20 broken records flagged");
    }

    #[test]
    fn a_constant_device_is_never_judged_and_state_roundtrips() {
        let cfg = StateMonitorConfig {
            warmup_records: 10,
            ..Default::default()
        };
        let mut m = StateMonitor::new(2);
        for _ in 0..10 {
            m.update(&cfg, &[1.0, 1.0]);
        }
        let v = m.update(&cfg, &[5.0, 1.0]);
        assert!(v.ready);
        let json = serde_json::to_string(&m).unwrap();
        let back: StateMonitor = serde_json::from_str(&json).unwrap();
        assert_eq!(format!("{back:?}"), format!("{m:?}"));
    }

    /// The configuration of models 1.0: T²+Q and MSET only.
    fn plain(warmup_records: u32) -> StateMonitorConfig {
        StateMonitorConfig {
            warmup_records,
            slow_autocorrelation: None,
            mewma_lambda: None,
            ..Default::default()
        }
    }

    /// The records `testdata/state-monitor-1.0.postcard` was made from.
    fn fixture_record(i: u32) -> [f64; 3] {
        let x = f64::from(i);
        [
            10.0 + (x * 0.7).sin(),
            5.0 + (x * 0.3).cos(),
            1.0 + 0.01 * x + 0.1 * (x * 1.3).sin(),
        ]
    }

    #[test]
    fn a_monitor_saved_before_the_drift_model_loads_and_judges_as_it_did() {
        // Saved by the hub before this version (postcard, `Phase::Fitted`)
        // after 20 records at a warm-up of 12; the next record's score
        // then was 1.567851426180594 (bits below).
        let saved = include_bytes!("../testdata/state-monitor-1.0.postcard");
        let mut old: StateMonitor = postcard::from_bytes(saved).expect("the old layout loads");
        assert!(matches!(old.phase, Phase::Fitted(_)));
        let cfg = plain(12);
        let v = old.update(&cfg, &[10.5, 5.2, 1.4]);
        assert_eq!(v.score.to_bits(), 4_609_739_794_271_366_136, "{}", v.score);
        // A monitor fitted now without the drift model or the chart judges
        // exactly as the old one.
        let mut new = StateMonitor::new(3);
        for i in 0..20 {
            new.update(&cfg, &fixture_record(i));
        }
        assert!(matches!(new.phase, Phase::Tracked(..)));
        let w = new.update(&cfg, &[10.5, 5.2, 1.4]);
        assert_eq!(w.score.to_bits(), v.score.to_bits());
        assert_eq!(w.expected, v.expected);
        assert_eq!(w.contributions, v.contributions);
    }

    #[test]
    fn a_manifest_without_the_new_keys_keeps_the_old_channels() {
        let cfg: StateMonitorConfig = serde_json::from_str(
            r#"{"warmup_records":400,"explained_variance":0.85,"confidence":0.999,
                "mset_limit":0.01,"ema_span":5,"t2q":true,"mset":true}"#,
        )
        .unwrap();
        assert_eq!(cfg, plain(400));
        assert!(cfg.validate().is_ok());
    }

    /// A pseudo-random number in [-0.5, 0.5) (a fixed sequence).
    fn noise(state: &mut u64) -> f64 {
        *state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (*state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    }

    /// A 3-metric rig: two fast coupled metrics (flow, vibration) and a
    /// thermal one that warms up slowly and keeps warming; `heat` adds to it.
    fn rig(i: u32, state: &mut u64, heat: f64) -> Vec<f64> {
        let t = f64::from(i);
        let flow = 30.0 + 3.0 * noise(state);
        vec![
            flow,
            0.5 * flow + 0.2 * noise(state),
            60.0 + 0.004 * t + 0.3 * (t / 60.0).sin() + 0.01 * noise(state) + heat,
        ]
    }

    fn alarms(cfg: &StateMonitorConfig, records: impl Iterator<Item = Vec<f64>>) -> Vec<bool> {
        let mut m = StateMonitor::new(3);
        records.map(|r| m.update(cfg, &r).anomalous).collect()
    }

    #[test]
    fn a_slow_metric_that_keeps_drifting_is_not_an_alarm_but_a_jump_in_it_is() {
        let mut state = 7;
        let records: Vec<Vec<f64>> = (0..2000)
            .map(|i| rig(i, &mut state, if i == 1500 { 0.8 } else { 0.0 }))
            .collect();
        let with = alarms(&StateMonitorConfig::default(), records.iter().cloned());
        let without = alarms(&plain(400), records.iter().cloned());
        let count = |a: &[bool]| a[400..1500].iter().filter(|&&x| x).count();
        // Without the drift model the warming metric leaves its warm-up
        // range and stays out: most records after it are alarms.
        assert!(count(&without) > 500, "{} without", count(&without));
        assert!(count(&with) < 20, "{} with the drift model", count(&with));
        // A sudden jump of the slow metric is still seen.
        assert!(with[1500], "the jump is not flagged");
    }

    #[test]
    fn a_small_shift_held_for_a_while_is_seen_by_the_chart_and_not_by_t2_alone() {
        let mut state = 11;
        // From record 1000 the flow (and the vibration that follows it)
        // sits 1.7 standard deviations higher: no single record is extreme.
        let records: Vec<Vec<f64>> = (0..1300)
            .map(|i| {
                let mut r = rig(i, &mut state, 0.0);
                if i >= 1000 {
                    r[0] += 1.5;
                    r[1] += 0.75;
                }
                r
            })
            .collect();
        let defaults = StateMonitorConfig::default();
        let chart_only = StateMonitorConfig {
            t2q: false,
            mset: false,
            ..defaults.clone()
        };
        let t2q_only = StateMonitorConfig {
            mset: false,
            mewma_lambda: None,
            ..defaults
        };
        let share = |cfg: &StateMonitorConfig, from: usize, to: usize| {
            let a = alarms(cfg, records.iter().cloned());
            a[from..to].iter().filter(|&&x| x).count() as f64 / (to - from) as f64
        };
        assert!(share(&chart_only, 400, 1000) < 0.01, "chart's false alarms");
        assert!(
            share(&chart_only, 1000, 1300) > 0.5,
            "the chart sees {}",
            share(&chart_only, 1000, 1300)
        );
        assert!(
            share(&t2q_only, 1000, 1300) < 0.05,
            "T2+Q sees {}",
            share(&t2q_only, 1000, 1300)
        );
    }

    #[test]
    fn a_tracked_monitor_saved_and_restored_judges_the_next_records_identically() {
        let cfg = StateMonitorConfig::default();
        let mut state = 3;
        let mut m = StateMonitor::new(3);
        for i in 0..600 {
            m.update(&cfg, &rig(i, &mut state, 0.0));
        }
        assert!(matches!(m.phase, Phase::Tracked(..)));
        let mut back: StateMonitor =
            postcard::from_bytes(&postcard::to_allocvec(&m).unwrap()).unwrap();
        for i in 600..800 {
            let r = rig(i, &mut state, if i > 700 { 0.5 } else { 0.0 });
            let (a, b) = (m.update(&cfg, &r), back.update(&cfg, &r));
            assert_eq!(a, b, "record {i}");
        }
    }

    #[test]
    fn the_new_settings_are_checked() {
        let ok = StateMonitorConfig::default();
        assert!(ok.validate().is_ok());
        for (bad, key) in [
            (
                StateMonitorConfig {
                    slow_autocorrelation: Some(1.0),
                    ..ok.clone()
                },
                "slow_autocorrelation",
            ),
            (
                StateMonitorConfig {
                    drift_span: 0,
                    ..ok.clone()
                },
                "drift_span",
            ),
            (
                StateMonitorConfig {
                    mewma_lambda: Some(0.0),
                    ..ok.clone()
                },
                "mewma_lambda",
            ),
            (
                StateMonitorConfig {
                    mewma_confidence: 1.0,
                    ..ok.clone()
                },
                "mewma_confidence",
            ),
            (
                StateMonitorConfig {
                    mewma_burn_in: 399,
                    ..ok.clone()
                },
                "mewma_burn_in",
            ),
        ] {
            let e = bad.validate().unwrap_err();
            assert!(e.starts_with(key), "{e}");
        }
        // The chart alone may decide.
        let chart_only = StateMonitorConfig {
            t2q: false,
            mset: false,
            ..ok
        };
        assert!(chart_only.validate().is_ok());
    }
}
