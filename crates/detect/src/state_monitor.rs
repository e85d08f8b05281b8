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
//! Each of the three ratios (score / limit) is smoothed by an exponential
//! moving average of span `ema-span` (weight `2 / (span + 1)`), and a
//! record is anomalous when the largest smoothed ratio exceeds 1. Nothing
//! looks ahead: a record is judged with the records before it.
//! `../shared/design/detection.md` ("Multivariate family") is the
//! specification.

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
        }
    }
}

impl StateMonitorConfig {
    /// Why this configuration cannot run, if it cannot.
    pub fn validate(&self) -> Result<(), String> {
        if !(8..=100_000).contains(&self.warmup_records) {
            return Err("warmup-records is outside 8..=100000".into());
        }
        if !(self.explained_variance > 0.0 && self.explained_variance <= 1.0) {
            return Err("explained-variance is outside (0, 1]".into());
        }
        if !(self.confidence > 0.5 && self.confidence < 1.0) {
            return Err("confidence is outside (0.5, 1)".into());
        }
        if !(self.mset_limit.is_finite() && self.mset_limit > 0.0) {
            return Err("mset-limit must be positive".into());
        }
        if self.ema_span == 0 || !(self.t2q || self.mset) {
            return Err("ema-span >= 1 and at least one of t2q, mset".into());
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

/// The fitted model of a device's normal state.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Fitted {
    mean: Vec<f64>,
    std: Vec<f64>,
    /// Kept principal directions (unit vectors) and their variances.
    components: Vec<Vec<f64>>,
    variances: Vec<f64>,
    t2_limit: f64,
    /// None when the kept components explain everything.
    q_limit: Option<f64>,
    /// MSET memory (records) and `D G^-1`, metric-major (`metrics x memory`).
    memory: Vec<Vec<f64>>,
    operator: Vec<f64>,
    /// Smoothed ratios (T², Q, MSET).
    ema: [Option<f64>; 3],
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Phase {
    WarmingUp(Vec<Vec<f64>>),
    Fitted(Box<Fitted>),
    /// The warm-up records could not be fitted (e.g. a constant device):
    /// nothing is judged.
    Unfitted,
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
                    self.phase = match Fitted::fit(&records, cfg) {
                        Some(f) => Phase::Fitted(Box::new(f)),
                        None => Phase::Unfitted,
                    };
                }
                idle
            }
            Phase::Unfitted => StateVerdict {
                ready: true,
                ..idle
            },
            Phase::Fitted(f) => f.judge(cfg, record),
        }
    }

    /// Heap and inline bytes this monitor holds, approximately.
    pub fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + match &self.phase {
                Phase::WarmingUp(r) => r.capacity() * (24 + self.metrics * 8),
                Phase::Fitted(f) => {
                    (f.memory.len() * (24 + self.metrics * 8))
                        + f.operator.len() * 8
                        + (f.components.len() + 4) * self.metrics * 8
                }
                Phase::Unfitted => 0,
            }
    }
}

impl Fitted {
    fn fit(records: &[Vec<f64>], cfg: &StateMonitorConfig) -> Option<Self> {
        let n = records.len();
        let m = records.first()?.len();
        if n < 2 || m == 0 {
            return None;
        }
        let nf = n as f64;
        let mean: Vec<f64> = (0..m)
            .map(|j| records.iter().map(|r| r[j]).sum::<f64>() / nf)
            .collect();
        let std: Vec<f64> = (0..m)
            .map(|j| {
                let var = records
                    .iter()
                    .map(|r| (r[j] - mean[j]).powi(2))
                    .sum::<f64>()
                    / (nf - 1.0);
                let floor = 1e-6 * mean[j].abs().max(1e-6);
                var.sqrt().max(floor)
            })
            .collect();
        let z: Vec<Vec<f64>> = records
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
        // MSET: D G^-1 over the raw warm-up records.
        let mut g = Square::zeros(n);
        for i in 0..n {
            for j in i..n {
                let s = similarity(&records[i], &records[j]);
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
                operator[j * n + c] = (0..n).map(|r| records[r][j] * g_inverse.at(r, c)).sum();
            }
        }
        Some(Self {
            mean,
            std,
            components: vectors.into_iter().take(kept).collect(),
            variances: values[..kept].iter().map(|v| v.max(1e-12)).collect(),
            t2_limit,
            q_limit,
            memory: records.to_vec(),
            operator,
            ema: [None; 3],
        })
    }

    fn judge(&mut self, cfg: &StateMonitorConfig, x: &[f64]) -> StateVerdict {
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
        let shares = |v: &[f64]| {
            let total: f64 = v.iter().map(|r| r * r).sum();
            v.iter()
                .map(|r| if total > 0.0 { r * r / total } else { 0.0 })
                .collect::<Vec<f64>>()
        };
        let contributions = match best.1 {
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
}
