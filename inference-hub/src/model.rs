//! Loading a model directory: an ONNX model run with tract, or one of the
//! online detector families of the `detect` crate.
//!
//! A model directory holds `manifest.json`, the contract. Its `detector`
//! says what it is:
//! * `onnx` (the default): id, version, input layout, window length, the
//!   metrics of a multivariate model, score output and optional
//!   contributions/forecast outputs, calibrated threshold, sha256 of the
//!   ONNX file it names. A model without `input.metrics` is univariate: it
//!   scores windows of one series. With `input.metrics` it scores windows of
//!   records (one value per listed metric, time-major) of one device.
//!   Loading verifies the checksum, optimises the graph once, and runs tract
//!   behind `catch_unwind`: tract can panic on models it does not support,
//!   and a bad model must be an error, not a dead hub.
//! * `novelty`: the univariate novelty family with its configuration
//!   (`novelty`) and the threshold frozen on the development data; an
//!   optional `expected_values` names a forecaster model directory (relative
//!   to this one) whose forecasts explain events.
//! * `state-monitor`: the multivariate family (`detect::state_monitor`)
//!   with its configuration (`state_monitor`) for the devices whose records
//!   carry `input.metrics`, or, without `input.metrics`, for every
//!   record-shaped device, each with the metrics of its first record
//!   (`scoring::records`); its threshold is 1 (a ratio to the limits).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tract_onnx::prelude::*;

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub id: String,
    pub version: String,
    #[serde(default)]
    pub detector: DetectorKind,
    /// ONNX models: the file, its checksum and opset, the score output.
    #[serde(default)]
    pub file: String,
    #[serde(default)]
    pub sha256: String,
    #[serde(default)]
    pub opset: u32,
    #[serde(default)]
    pub input: InputSpec,
    #[serde(default)]
    pub score_output: String,
    /// Per-metric contributions to the score, `[batch, metrics]`.
    #[serde(default)]
    pub contributions_output: Option<String>,
    /// The expected newest value(s), normalised: `[batch]` or `[batch, metrics]`.
    #[serde(default)]
    pub forecast_output: Option<String>,
    pub threshold: f64,
    #[serde(default)]
    pub decision: Decision,
    /// `novelty` models: the family's configuration.
    #[serde(default)]
    pub novelty: Option<detect::NoveltyConfig>,
    /// `novelty` models: a forecaster model directory, relative to this
    /// one, for the expected values of events.
    #[serde(default)]
    pub expected_values: Option<String>,
    /// `state-monitor` models: the family's configuration.
    #[serde(default)]
    pub state_monitor: Option<detect::StateMonitorConfig>,
}

/// What scores readings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DetectorKind {
    /// An ONNX model (tract).
    #[default]
    Onnx,
    /// The univariate novelty family (`detect::novelty`).
    Novelty,
    /// The multivariate state monitor (`detect::state_monitor`).
    StateMonitor,
}

/// How a score becomes a status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    /// Above the threshold *and* extreme for the series' own recent scores;
    /// the normalisation keeps following the data (change detection that
    /// adapts to a new normal).
    #[default]
    Adaptive,
    /// Above the threshold, with the normalisation learned at warm-up kept
    /// fixed (state monitoring: a machine that stays in a bad state stays
    /// anomalous).
    Fixed,
}

#[derive(Debug, Clone, Deserialize)]
pub struct InputSpec {
    #[serde(default)]
    pub name: String,
    #[serde(default = "one")]
    pub window: usize,
    /// Normalised values are clipped to +-clip before scoring.
    #[serde(default = "ten")]
    pub clip: f64,
    /// The metrics of one record, in input order (multivariate models).
    #[serde(default)]
    pub metrics: Option<Vec<String>>,
}

fn one() -> usize {
    1
}

fn ten() -> f64 {
    10.0
}

impl Default for InputSpec {
    fn default() -> Self {
        Self {
            name: String::new(),
            window: one(),
            clip: ten(),
            metrics: None,
        }
    }
}

/// What a model run produced for `n` windows.
#[derive(Debug, Clone, Default)]
pub struct ModelOutput {
    pub scores: Vec<f32>,
    /// `n x metrics`, when the model reports contributions.
    pub contributions: Option<Vec<f32>>,
    /// `n` (univariate) or `n x metrics`, when the model reports forecasts.
    pub forecast: Option<Vec<f32>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid manifest {path}: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("checksum of {path} is {actual}, manifest says {expected}")]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("tract cannot load the model: {0}")]
    Load(String),
    #[error("model run failed: {0}")]
    Run(String),
    #[error("{0}")]
    Route(String),
}

/// A loaded model: an optimised ONNX model ready to score windows, or a
/// detector family's configuration.
#[derive(Debug, Clone)]
pub struct Model {
    pub manifest: Manifest,
    /// One plan per chunk size of [`CHUNK_ROWS`], largest first (ONNX).
    plans: Arc<[(usize, Arc<TypedRunnableModel>)]>,
    score_index: usize,
    contributions_index: Option<usize>,
    forecast_index: Option<usize>,
    /// A novelty model's forecaster for expected values.
    expected_values: Option<Arc<Model>>,
}

/// Windows per model call. tract optimises a plan for concrete shapes about
/// three times better than for a symbolic batch dimension (it then picks its
/// matrix kernels and lays out every intermediate once, at load time), so the
/// model is compiled for these batch sizes and a call is split into chunks
/// of them, largest first; only the last few windows (under the smallest
/// size) are padded.
const CHUNK_ROWS: [usize; 5] = [4096, 1024, 256, 64, 16];

type Loaded = (
    Arc<[(usize, Arc<TypedRunnableModel>)]>,
    usize,
    Option<usize>,
    Option<usize>,
);

impl Model {
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let manifest_path = dir.join("manifest.json");
        let text = std::fs::read(&manifest_path).map_err(|source| ModelError::Read {
            path: manifest_path.clone(),
            source,
        })?;
        let manifest: Manifest =
            serde_json::from_slice(&text).map_err(|e| ModelError::Manifest {
                path: manifest_path.clone(),
                message: e.to_string(),
            })?;
        if manifest.input.window == 0
            || !(manifest.threshold.is_finite() && manifest.threshold > 0.0)
        {
            return Err(ModelError::Manifest {
                path: manifest_path,
                message: "window must be positive and threshold a positive number".into(),
            });
        }
        let invalid = |message: String| ModelError::Manifest {
            path: manifest_path.clone(),
            message,
        };
        match manifest.detector {
            DetectorKind::Onnx => {}
            DetectorKind::Novelty => {
                let cfg = manifest
                    .novelty
                    .as_ref()
                    .ok_or_else(|| invalid("a novelty model needs `novelty`".into()))?;
                cfg.validate().map_err(invalid)?;
                if manifest.input.metrics.is_some() {
                    return Err(invalid("a novelty model scores one metric".into()));
                }
                let expected_values = match &manifest.expected_values {
                    Some(rel) => {
                        let model = Self::load(&dir.join(rel))?;
                        if model.manifest.detector != DetectorKind::Onnx
                            || model.metrics().is_some()
                            || model.forecast_index.is_none()
                        {
                            return Err(invalid(format!(
                                "expected_values {rel} is not a univariate ONNX forecaster"
                            )));
                        }
                        Some(Arc::new(model))
                    }
                    None => None,
                };
                let mut manifest = manifest;
                // The window of the forecaster explaining events.
                manifest.input.window = expected_values.as_ref().map_or(1, |m| m.window());
                manifest.input.clip = expected_values
                    .as_ref()
                    .map_or(manifest.input.clip, |m| m.manifest.input.clip);
                return Ok(Self::detector(manifest, expected_values));
            }
            DetectorKind::StateMonitor => {
                let cfg = manifest
                    .state_monitor
                    .as_ref()
                    .ok_or_else(|| invalid("a state-monitor model needs `state_monitor`".into()))?;
                cfg.validate().map_err(invalid)?;
                // Without `input.metrics` the model finds record-shaped
                // devices by their readings (`scoring::records`).
                if manifest.input.metrics.as_ref().is_some_and(Vec::is_empty) {
                    return Err(invalid(
                        "a state-monitor model lists its metrics (`input.metrics`) or omits them"
                            .into(),
                    ));
                }
                return Ok(Self::detector(manifest, None));
            }
        }
        let onnx_path = dir.join(&manifest.file);
        let bytes = std::fs::read(&onnx_path).map_err(|source| ModelError::Read {
            path: onnx_path.clone(),
            source,
        })?;
        let actual = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        if !actual.eq_ignore_ascii_case(&manifest.sha256) {
            return Err(ModelError::Checksum {
                path: onnx_path,
                expected: manifest.sha256.clone(),
                actual,
            });
        }
        let width = manifest.input.window * manifest.input.metrics.as_ref().map_or(1, Vec::len);
        let loaded = catch_unwind(AssertUnwindSafe(|| -> TractResult<Loaded> {
            let model = tract_onnx::onnx().model_for_read(&mut bytes.as_slice())?;
            let index_of = |name: &str| {
                model.output_outlets().ok()?.iter().position(|o| {
                    model.node(o.node).name == name || model.outlet_label(*o) == Some(name)
                })
            };
            let score_index = index_of(&manifest.score_output).unwrap_or(0);
            let contributions = manifest.contributions_output.as_deref().and_then(index_of);
            let forecast = manifest.forecast_output.as_deref().and_then(index_of);
            let plans = CHUNK_ROWS
                .iter()
                .map(|&rows| -> TractResult<(usize, Arc<TypedRunnableModel>)> {
                    let plan = model
                        .clone()
                        .with_input_fact(0, f32::fact([rows, width]).into())?
                        .into_optimized()?
                        .into_runnable()?;
                    Ok((rows, plan))
                })
                .collect::<TractResult<Vec<_>>>()?;
            Ok((plans.into(), score_index, contributions, forecast))
        }));
        let (plans, score_index, contributions_index, forecast_index) = match loaded {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => return Err(ModelError::Load(format!("{e:#}"))),
            Err(_) => {
                return Err(ModelError::Load(
                    "tract panicked while loading the model".into(),
                ));
            }
        };
        Ok(Self {
            manifest,
            plans,
            score_index,
            contributions_index,
            forecast_index,
            expected_values: None,
        })
    }

    /// A model that is a detector family's configuration (no ONNX plans).
    fn detector(manifest: Manifest, expected_values: Option<Arc<Model>>) -> Self {
        Self {
            manifest,
            plans: Arc::from(Vec::new()),
            score_index: 0,
            contributions_index: None,
            forecast_index: None,
            expected_values,
        }
    }

    /// The novelty family's configuration, for a `novelty` model.
    pub fn novelty(&self) -> Option<&detect::NoveltyConfig> {
        (self.manifest.detector == DetectorKind::Novelty)
            .then_some(self.manifest.novelty.as_ref())
            .flatten()
    }

    /// The state monitor's configuration, for a `state-monitor` model.
    pub fn state_monitor(&self) -> Option<&detect::StateMonitorConfig> {
        (self.manifest.detector == DetectorKind::StateMonitor)
            .then_some(self.manifest.state_monitor.as_ref())
            .flatten()
    }

    /// A novelty model's forecaster for the expected values of events.
    pub fn expected_values(&self) -> Option<&Model> {
        self.expected_values.as_deref()
    }

    /// Records per window.
    pub fn window(&self) -> usize {
        self.manifest.input.window
    }

    /// The metrics of a multivariate model (`None`: univariate).
    pub fn metrics(&self) -> Option<&[String]> {
        self.manifest.input.metrics.as_deref()
    }

    /// Values per window: `window x metrics` (1 metric if univariate).
    pub fn input_width(&self) -> usize {
        self.window() * self.metrics().map_or(1, <[String]>::len)
    }

    /// Scores `n` windows laid out row-major in `windows` (`n * input_width`
    /// values); returns one score per window.
    pub fn score(&self, windows: &[f32]) -> Result<Vec<f32>, ModelError> {
        self.run(windows).map(|o| o.scores)
    }

    /// Like [`Model::score`], with the contributions and forecasts the
    /// model reports.
    pub fn run(&self, windows: &[f32]) -> Result<ModelOutput, ModelError> {
        if self.manifest.detector != DetectorKind::Onnx {
            return Err(ModelError::Run(format!(
                "{} is a {:?} detector, not an ONNX model",
                self.manifest.id, self.manifest.detector
            )));
        }
        let w = self.input_width();
        debug_assert_eq!(windows.len() % w, 0);
        let n = windows.len() / w;
        if n == 0 {
            return Ok(ModelOutput::default());
        }
        let per_window = self.metrics().map_or(1, <[String]>::len);
        let run = catch_unwind(AssertUnwindSafe(|| -> TractResult<ModelOutput> {
            let mut out = ModelOutput {
                scores: Vec::with_capacity(n),
                contributions: self
                    .contributions_index
                    .map(|_| Vec::with_capacity(n * per_window)),
                forecast: self.forecast_index.map(|_| Vec::with_capacity(n)),
            };
            let mut start = 0;
            while start < n {
                let left = n - start;
                let (rows, plan) = self
                    .plans
                    .iter()
                    .find(|(rows, _)| *rows <= left)
                    .unwrap_or_else(|| self.plans.last().expect("a plan per chunk size"));
                let (rows, used) = (*rows, (*rows).min(left));
                let chunk = &windows[start * w..(start + used) * w];
                let input = if used == rows {
                    Tensor::from_shape(&[rows, w], chunk)?
                } else {
                    // The last windows, padded up to the smallest plan.
                    let mut padded = chunk.to_vec();
                    padded.resize(rows * w, 0.0);
                    Tensor::from_shape(&[rows, w], &padded)?
                };
                let outputs = plan.run(tvec![input.into()])?;
                let take = |i: usize, into: &mut Vec<f32>| -> TractResult<()> {
                    let view = outputs[i].to_plain_array_view::<f32>()?;
                    let per_row = view.len() / rows;
                    match view.as_slice() {
                        // Contiguous (as outputs are): one copy.
                        Some(values) => into.extend_from_slice(&values[..used * per_row]),
                        None => into.extend(view.iter().copied().take(used * per_row)),
                    }
                    Ok(())
                };
                take(self.score_index, &mut out.scores)?;
                if let (Some(i), Some(into)) =
                    (self.contributions_index, out.contributions.as_mut())
                {
                    take(i, into)?;
                }
                if let (Some(i), Some(into)) = (self.forecast_index, out.forecast.as_mut()) {
                    take(i, into)?;
                }
                start += used;
            }
            Ok(out)
        }));
        let per_metric = n * self.metrics().map_or(1, <[String]>::len);
        match run {
            Ok(Ok(out))
                if out.scores.len() == n
                    && out
                        .contributions
                        .as_ref()
                        .is_none_or(|c| c.len() == per_metric)
                    && out
                        .forecast
                        .as_ref()
                        .is_none_or(|f| f.len() == n || f.len() == per_metric) =>
            {
                Ok(out)
            }
            Ok(Ok(out)) => Err(ModelError::Run(format!(
                "model returned {} scores for {n} windows (or mis-shaped contributions/forecasts)",
                out.scores.len()
            ))),
            Ok(Err(e)) => Err(ModelError::Run(format!("{e:#}"))),
            Err(_) => Err(ModelError::Run(
                "tract panicked while running the model".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests;
