//! Loading an ONNX model from a model directory and running it with tract.
//!
//! A model directory holds `manifest.json` (the contract: id, version, input
//! layout, window length, score output, calibrated threshold, sha256 of the
//! ONNX file) and the ONNX file it names. Loading verifies the checksum,
//! optimises the graph once, and runs tract behind `catch_unwind`: tract can
//! panic on models it does not support, and a bad model must be an error, not
//! a dead hub.

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
    pub file: String,
    pub sha256: String,
    pub opset: u32,
    pub input: InputSpec,
    pub score_output: String,
    pub threshold: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct InputSpec {
    pub name: String,
    pub window: usize,
    /// Normalised values are clipped to +-clip before scoring.
    pub clip: f64,
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
}

/// A loaded, optimised model ready to score windows.
#[derive(Debug, Clone)]
pub struct Model {
    pub manifest: Manifest,
    plan: Arc<TypedRunnableModel>,
    score_index: usize,
}

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
        let window = manifest.input.window;
        let loaded = catch_unwind(AssertUnwindSafe(
            || -> TractResult<(Arc<TypedRunnableModel>, usize)> {
                let model = tract_onnx::onnx().model_for_read(&mut bytes.as_slice())?;
                let batch = model.symbols.sym("batch");
                let model = model
                    .with_input_fact(0, f32::fact(&[batch.to_dim(), window.to_dim()]).into())?
                    .into_optimized()?;
                let score_index = model
                    .output_outlets()?
                    .iter()
                    .position(|o| {
                        model.node(o.node).name == manifest.score_output
                            || model.outlet_label(*o) == Some(manifest.score_output.as_str())
                    })
                    .unwrap_or(0);
                Ok((model.into_runnable()?, score_index))
            },
        ));
        let (plan, score_index) = match loaded {
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
            plan,
            score_index,
        })
    }

    pub fn window(&self) -> usize {
        self.manifest.input.window
    }

    /// Scores `n` windows laid out row-major in `windows` (`n * window`
    /// values); returns one score per window.
    pub fn score(&self, windows: &[f32]) -> Result<Vec<f32>, ModelError> {
        let w = self.window();
        debug_assert_eq!(windows.len() % w, 0);
        let n = windows.len() / w;
        if n == 0 {
            return Ok(Vec::new());
        }
        let run = catch_unwind(AssertUnwindSafe(|| -> TractResult<Vec<f32>> {
            let input = Tensor::from_shape(&[n, w], windows)?;
            let outputs = self.plan.run(tvec![input.into()])?;
            let scores = outputs[self.score_index].to_plain_array_view::<f32>()?;
            Ok(scores.iter().copied().collect())
        }));
        match run {
            Ok(Ok(scores)) if scores.len() == n => Ok(scores),
            Ok(Ok(scores)) => Err(ModelError::Run(format!(
                "model returned {} scores for {n} windows",
                scores.len()
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
