//! `iot-lab bench-scoring`: scoring throughput on one thread, the model or
//! detector alone and the production scorer.

use std::time::Instant;

/// What [`scoring`] measured.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ScoringReport {
    pub model: String,
    /// The configuration measured (a novelty model: its manifest's, the
    /// light or the minimal one).
    pub config: String,
    pub batch: usize,
    /// Per second through the model alone: windows (ONNX, tract) or
    /// readings (an online detector, one series after another).
    pub model_per_s: f64,
    pub model_unit: String,
    /// Readings per second through the production scorer (normalisation,
    /// windows, model, decision, output columns).
    pub scorer_readings_per_s: f64,
    /// An online detector's state per series after the run (bytes; the
    /// state monitor: per device).
    pub bytes_per_series: Option<usize>,
    /// The state monitor's fit at the end of a device's warm-up, once per
    /// device (milliseconds).
    #[serde(default)]
    pub fit_ms: Option<f64>,
}

/// Metrics of the record-shaped devices the state monitor is measured on
/// (as many as SKAB's rig).
const RECORD_METRICS: usize = 8;

/// A NAB-like signal for series `s` at reading `t`: a daily cycle of 288
/// readings with noise, a level shift every 5000 readings and a spike every
/// 997.
fn signal(rng: &mut fastrand::Rng, s: usize, t: i64) -> f64 {
    let base = 10.0 * (s % 7 + 1) as f64;
    let cycle = (t as f64 * std::f64::consts::TAU / 288.0 + s as f64).sin();
    let shift = if (t / 5000) % 2 == 1 { 0.3 * base } else { 0.0 };
    let spike = if t % 997 == 0 { 0.8 * base } else { 0.0 };
    base + 0.2 * base * cycle + shift + spike + 0.05 * base * (rng.f64() - 0.5)
}

/// The scoring benchmark: one thread, one model. Measures the model alone
/// (an ONNX model on random normalised windows, `batch` per call; an online
/// detector per reading on NAB-like signals), then the production scorer
/// on batches of `batch` readings spread over `series` warmed-up series (a
/// multivariate model gets whole records of its metrics). A novelty model
/// is measured with its manifest's configuration, the light one and the
/// minimal one.
pub fn scoring(
    model_dir: &std::path::Path,
    batch: usize,
    series: usize,
    seconds: f64,
) -> anyhow::Result<Vec<ScoringReport>> {
    use inference_hub::model::Model;

    let model = Model::load(model_dir)?;
    let mut configs = vec![("manifest", model.clone())];
    if model.novelty().is_some() {
        for (name, config) in [
            ("light", detect::NoveltyConfig::light()),
            ("minimal", detect::NoveltyConfig::minimal()),
        ] {
            let mut lighter = model.clone();
            lighter.manifest.novelty = Some(config);
            configs.push((name, lighter));
        }
    }
    // Every model-alone measurement before the production scorers': those
    // allocate and free the state of `series` series (hundreds of MB with
    // a novelty model), after which the heap is fragmented and a
    // detector's state is scattered over more pages (measured: the minimal
    // configuration 0.72 M readings/s after them, 0.91 M before).
    let mut rng = fastrand::Rng::with_seed(1);
    let alone: Vec<_> = configs
        .iter()
        .map(|(_, model)| model_alone(model, batch, series, seconds, &mut rng))
        .collect();
    configs
        .into_iter()
        .zip(alone)
        .map(
            |((config, model), (model_per_s, model_unit, bytes_per_series, fit_ms))| {
                Ok(ScoringReport {
                    model: format!("{} {}", model.manifest.id, model.manifest.version),
                    config: config.to_owned(),
                    batch,
                    model_per_s,
                    model_unit: model_unit.to_owned(),
                    scorer_readings_per_s: production_scorer(
                        model, batch, series, seconds, &mut rng,
                    ),
                    bytes_per_series,
                    fit_ms,
                })
            },
        )
        .collect()
}

/// Per configuration, the median over rounds of each measurement (rounds
/// of [`scoring`] with the same arguments: the same configurations in the
/// same order). With an even number of rounds, the upper of the two middle
/// values.
pub fn medians(rounds: &[Vec<ScoringReport>]) -> Vec<ScoringReport> {
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(0.0)
    };
    let Some(first) = rounds.first() else {
        return Vec::new();
    };
    first
        .iter()
        .enumerate()
        .map(|(k, r)| {
            let of = |f: fn(&ScoringReport) -> f64| {
                median(
                    rounds
                        .iter()
                        .filter_map(|round| round.get(k))
                        .map(f)
                        .collect(),
                )
            };
            ScoringReport {
                model: r.model.clone(),
                config: r.config.clone(),
                batch: r.batch,
                model_per_s: of(|r| r.model_per_s),
                model_unit: r.model_unit.clone(),
                scorer_readings_per_s: of(|r| r.scorer_readings_per_s),
                bytes_per_series: r
                    .bytes_per_series
                    .map(|_| of(|r| r.bytes_per_series.unwrap_or(0) as f64) as usize),
                fit_ms: r.fit_ms.map(|_| of(|r| r.fit_ms.unwrap_or(0.0))),
            }
        })
        .collect()
}

/// Readings at which each series has passed every calibration.
const WARM_READINGS: i64 = 2000;

/// Readings before a detector alone is measured: its state has reached its
/// caps (categories, overflow synapses, likelihood history), where a
/// long-running series stays; until then it is up to 1.6x faster.
const STEADY_READINGS: i64 = 50_000;

/// Runs `f` (which returns the work it did) for `seconds`: work per second.
fn timed(seconds: f64, f: &mut dyn FnMut() -> usize) -> f64 {
    let (start, mut done) = (Instant::now(), 0usize);
    while start.elapsed().as_secs_f64() < seconds {
        done += f();
    }
    done as f64 / start.elapsed().as_secs_f64()
}

/// The model or detector alone: per second, its unit, and an online
/// detector's state per series.
fn model_alone(
    model: &inference_hub::model::Model,
    batch: usize,
    series: usize,
    seconds: f64,
    rng: &mut fastrand::Rng,
) -> (f64, &'static str, Option<usize>, Option<f64>) {
    match model.novelty() {
        Some(cfg) => {
            let n = series.clamp(1, 64);
            let mut detectors: Vec<detect::Novelty> =
                (0..n).map(|_| detect::Novelty::new(cfg)).collect();
            let mut t = 0i64;
            for _ in 0..STEADY_READINGS {
                t += 1;
                for (s, d) in detectors.iter_mut().enumerate() {
                    d.update(cfg, signal(rng, s, t));
                }
            }
            let per_s = timed(seconds, &mut || {
                for _ in 0..100 {
                    t += 1;
                    for (s, d) in detectors.iter_mut().enumerate() {
                        d.update(cfg, signal(rng, s, t));
                    }
                }
                100 * n
            });
            let bytes = detectors
                .iter()
                .map(detect::Novelty::approx_bytes)
                .sum::<usize>()
                / n;
            (per_s, "readings", Some(bytes), None)
        }
        None => match model.state_monitor() {
            Some(cfg) => state_monitor_alone(cfg, series, seconds, rng),
            None => onnx_alone(model, batch, seconds, rng),
        },
    }
}

/// The state monitor alone: records per second of devices of
/// [`RECORD_METRICS`] metrics after their warm-up, state per device and the
/// fit's time per device.
fn state_monitor_alone(
    cfg: &detect::StateMonitorConfig,
    series: usize,
    seconds: f64,
    rng: &mut fastrand::Rng,
) -> (f64, &'static str, Option<usize>, Option<f64>) {
    let n = series.clamp(1, 64);
    let mut monitors: Vec<detect::StateMonitor> = (0..n)
        .map(|_| detect::StateMonitor::new(RECORD_METRICS))
        .collect();
    let record = |rng: &mut fastrand::Rng, d: usize, t: i64| -> Vec<f64> {
        (0..RECORD_METRICS)
            .map(|m| signal(rng, d * RECORD_METRICS + m, t))
            .collect()
    };
    let mut t = 0i64;
    let mut fitting = std::time::Duration::ZERO;
    for _ in 0..cfg.warmup_records {
        t += 1;
        for (d, monitor) in monitors.iter_mut().enumerate() {
            let r = record(rng, d, t);
            let started = Instant::now();
            monitor.update(cfg, &r);
            fitting += started.elapsed();
        }
    }
    let per_s = timed(seconds, &mut || {
        for _ in 0..100 {
            t += 1;
            for (d, monitor) in monitors.iter_mut().enumerate() {
                monitor.update(cfg, &record(rng, d, t));
            }
        }
        100 * n
    });
    let bytes = monitors
        .iter()
        .map(detect::StateMonitor::approx_bytes)
        .sum::<usize>()
        / n;
    (
        per_s,
        "records",
        Some(bytes),
        Some(fitting.as_secs_f64() * 1000.0 / n as f64),
    )
}

/// An ONNX model alone: windows per second.
fn onnx_alone(
    model: &inference_hub::model::Model,
    batch: usize,
    seconds: f64,
    rng: &mut fastrand::Rng,
) -> (f64, &'static str, Option<usize>, Option<f64>) {
    let width = model.input_width();
    let windows: Vec<f32> = (0..batch * width)
        .map(|_| (rng.f32() - 0.5) * 4.0)
        .collect();
    let per_s = timed(seconds, &mut || {
        model.score(&windows).expect("the model runs");
        batch
    });
    (per_s, "windows", None, None)
}

/// Readings per second through the production scorer.
fn production_scorer(
    model: inference_hub::model::Model,
    batch: usize,
    series: usize,
    seconds: f64,
    rng: &mut fastrand::Rng,
) -> f64 {
    use inference_hub::scoring::Engine;

    // A state monitor that lists no metrics finds its devices by their
    // records: give it devices of RECORD_METRICS metrics.
    let metrics: Vec<String> = match model.metrics() {
        Some(m) => m.to_vec(),
        None if model.state_monitor().is_some() => {
            (0..RECORD_METRICS).map(|m| format!("m{m}")).collect()
        }
        None => vec!["value".to_string()],
    };
    let mut engine = Engine::new(model, 200, None);
    let devices = (series / metrics.len()).max(1);
    let records_per_batch = (batch / metrics.len()).max(1);
    let mut seq = 0u64;
    let mut t = 0i64;
    let mut next_batch = || {
        let mut cols = schemas::ReadingColumns::with_capacity(records_per_batch * metrics.len());
        for r in 0..records_per_batch {
            let device = format!("dev{}", r % devices);
            if r % devices == 0 {
                t += 1;
            }
            for (m, metric) in metrics.iter().enumerate() {
                let v = signal(rng, r % devices * metrics.len() + m, t);
                cols.push(&device, metric, 1_700_000_000_000_000 + t * 1_000_000, v);
            }
        }
        seq += 1;
        let (_, bytes) =
            schemas::envelope::encode("bench", 1, seq, &cols.finish()).expect("non-empty");
        schemas::envelope::decode(&bytes, &schemas::DecodeLimits::default()).expect("valid")
    };
    // Warm every series up first (not measured).
    let warm: Vec<_> = (0..(WARM_READINGS as usize * devices).div_ceil(records_per_batch) + 1)
        .map(|_| next_batch())
        .collect();
    for b in &warm {
        engine.score(b, 0);
    }
    // Fresh batches, each scored once and in time order: a batch scored
    // twice would be all `late` the second time (no model call).
    let batches: Vec<_> = (0..(2_000_000 / batch.max(1)).max(64))
        .map(|_| next_batch())
        .collect();
    let started = Instant::now();
    let mut readings = 0usize;
    for b in &batches {
        let out = engine.score(b, 0);
        debug_assert!(out.model_error.is_none());
        readings += b.readings.num_rows();
        if started.elapsed().as_secs_f64() > 4.0 * seconds {
            break;
        }
    }
    readings as f64 / started.elapsed().as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(config: &str, alone: f64, scorer: f64) -> ScoringReport {
        ScoringReport {
            model: "m".into(),
            config: config.into(),
            batch: 1,
            model_per_s: alone,
            model_unit: "readings".into(),
            scorer_readings_per_s: scorer,
            bytes_per_series: Some(alone as usize),
            fit_ms: None,
        }
    }

    #[test]
    fn medians_are_taken_per_configuration_and_measurement() {
        let rounds = vec![
            vec![report("a", 3.0, 30.0), report("b", 9.0, 10.0)],
            vec![report("a", 1.0, 20.0), report("b", 7.0, 30.0)],
            vec![report("a", 2.0, 10.0), report("b", 8.0, 20.0)],
        ];
        let m = medians(&rounds);
        let got: Vec<_> = m
            .iter()
            .map(|r| {
                (
                    r.config.as_str(),
                    r.model_per_s,
                    r.scorer_readings_per_s,
                    r.bytes_per_series,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![("a", 2.0, 20.0, Some(2)), ("b", 8.0, 20.0, Some(8))]
        );
    }
}
