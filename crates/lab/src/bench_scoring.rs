//! `iot-lab bench-scoring`: scoring throughput on one thread, the model or
//! detector alone and the production scorer.

use std::time::Instant;

/// What [`scoring`] measured.
#[derive(Debug)]
pub struct ScoringReport {
    pub model: String,
    /// The configuration measured (a novelty model: its manifest's or the
    /// light one).
    pub config: String,
    pub batch: usize,
    /// Per second through the model alone: windows (ONNX, tract) or
    /// readings (an online detector, one series after another).
    pub model_per_s: f64,
    pub model_unit: &'static str,
    /// Readings per second through the production scorer (normalisation,
    /// windows, model, decision, output columns).
    pub scorer_readings_per_s: f64,
    /// An online detector's state per series after the run (bytes).
    pub bytes_per_series: Option<usize>,
}

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
/// is measured with its manifest's configuration and with the light one.
pub fn scoring(
    model_dir: &std::path::Path,
    batch: usize,
    series: usize,
    seconds: f64,
) -> anyhow::Result<Vec<ScoringReport>> {
    use inference_hub::model::Model;

    let model = Model::load(model_dir)?;
    let mut out = vec![scoring_one(
        model.clone(),
        "manifest",
        batch,
        series,
        seconds,
    )?];
    if model.novelty().is_some() {
        let mut light = model;
        light.manifest.novelty = Some(detect::NoveltyConfig::light());
        out.push(scoring_one(light, "light", batch, series, seconds)?);
    }
    Ok(out)
}

fn scoring_one(
    model: inference_hub::model::Model,
    config: &str,
    batch: usize,
    series: usize,
    seconds: f64,
) -> anyhow::Result<ScoringReport> {
    use inference_hub::scoring::Engine;

    let name = format!("{} {}", model.manifest.id, model.manifest.version);
    let mut rng = fastrand::Rng::with_seed(1);
    let timed = |f: &mut dyn FnMut() -> usize| -> f64 {
        let (start, mut done) = (Instant::now(), 0usize);
        while start.elapsed().as_secs_f64() < seconds {
            done += f();
        }
        done as f64 / start.elapsed().as_secs_f64()
    };
    // Readings each series sees before measuring: past every calibration.
    let warm_readings = 2000i64;
    let (model_per_s, model_unit, bytes_per_series) = match model.novelty() {
        Some(cfg) => {
            let cfg = cfg.clone();
            let n = series.clamp(1, 64);
            let mut detectors: Vec<detect::Novelty> =
                (0..n).map(|_| detect::Novelty::new(&cfg)).collect();
            let mut t = 0i64;
            for _ in 0..warm_readings {
                t += 1;
                for (s, d) in detectors.iter_mut().enumerate() {
                    d.update(&cfg, signal(&mut rng, s, t));
                }
            }
            let per_s = timed(&mut || {
                for _ in 0..100 {
                    t += 1;
                    for (s, d) in detectors.iter_mut().enumerate() {
                        d.update(&cfg, signal(&mut rng, s, t));
                    }
                }
                100 * n
            });
            let bytes = detectors
                .iter()
                .map(detect::Novelty::approx_bytes)
                .sum::<usize>()
                / n;
            (per_s, "readings", Some(bytes))
        }
        None if model.state_monitor().is_some() => (0.0, "n/a", None),
        None => {
            let width = model.input_width();
            let windows: Vec<f32> = (0..batch * width)
                .map(|_| (rng.f32() - 0.5) * 4.0)
                .collect();
            let per_s = timed(&mut || {
                model.score(&windows).expect("the model runs");
                batch
            });
            (per_s, "windows", None)
        }
    };

    let metrics: Vec<String> = model
        .metrics()
        .map_or_else(|| vec!["value".to_string()], <[String]>::to_vec);
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
                let v = signal(&mut rng, r % devices * metrics.len() + m, t);
                cols.push(&device, metric, 1_700_000_000_000_000 + t * 1_000_000, v);
            }
        }
        seq += 1;
        let (_, bytes) =
            schemas::envelope::encode("bench", 1, seq, &cols.finish()).expect("non-empty");
        schemas::envelope::decode(&bytes, &schemas::DecodeLimits::default()).expect("valid")
    };
    // Warm every series up first (not measured).
    let warm: Vec<_> = (0..(warm_readings as usize * devices).div_ceil(records_per_batch) + 1)
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
    let scorer_readings_per_s = readings as f64 / started.elapsed().as_secs_f64();
    Ok(ScoringReport {
        model: name,
        config: config.to_owned(),
        batch,
        model_per_s,
        model_unit,
        scorer_readings_per_s,
        bytes_per_series,
    })
}
