//! Which model scores which readings, shadow models, and hot reload.
//!
//! Routes come from `[[scoring.routes]]` (device and metric globs, a model
//! directory), then the `records` route (`scoring.records-model-dir`: the
//! state monitor for record-shaped devices, found by their readings; see
//! [`super::records`]), then the default `scoring.model-dir`, which takes
//! every reading no live route took. A reading is scored by the **first live
//! route** whose globs match it and whose model takes its metric (a
//! multivariate model takes only the metrics its manifest lists). Every
//! matching **shadow route** scores it too, independently: shadow rows go to
//! the `shadow` table (same schema as `scored`, each row naming its model id
//! and version) and never raise events or touch the API's state, so a new
//! model can be compared with the live one on real traffic before it is
//! promoted.
//!
//! Hot reload: [`Router::reload_changed`] (called by the pipeline's scoring thread
//! between batches, every `scoring.reload-interval`) re-reads each route's
//! `manifest.json`; when it changed, the new model is loaded and verified
//! (checksum, tract) and swapped in before the next batch. A batch is
//! therefore scored entirely by the old or entirely by the new model, never
//! both and never twice. Per-series state (normalisation, windows, score
//! history) is kept when the new model has the same input layout, so a new
//! version does not send the fleet back into warm-up. A model that fails to
//! load is logged and the old one keeps scoring.

use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::{RecordBatch, UInt32Array};
use schemas::envelope::DecodedBatch;
use schemas::tables::ReadingView;
use sha2::{Digest, Sha256};

use super::{Engine, ScoredBatch};
use crate::config::{RouteConfig, ScoringSettings};
use crate::model::{Model, ModelError};

/// A device or metric glob of a route (`*`, `?`, `[...]`, `{a,b}`; `*`
/// crosses `/`).
pub fn glob(pattern: &str) -> Result<globset::GlobMatcher, globset::Error> {
    Ok(globset::Glob::new(pattern)?.compile_matcher())
}

#[derive(Debug)]
struct Route {
    name: String,
    device: Option<globset::GlobMatcher>,
    metric: Option<globset::GlobMatcher>,
    model_dir: PathBuf,
    threshold: Option<f64>,
    manifest_sha: [u8; 32],
    engine: Engine,
    threads: usize,
}

impl Route {
    fn load(cfg: &RouteConfig, warmup: u32, threads: usize) -> Result<Self, ModelError> {
        let model = Model::load(&cfg.model_dir)?;
        let compile = |pattern: &Option<String>| {
            pattern
                .as_deref()
                .map(glob)
                .transpose()
                .map_err(|e| ModelError::Route(format!("route {}: {e}", cfg.name)))
        };
        Ok(Self {
            name: cfg.name.clone(),
            device: compile(&cfg.device)?,
            metric: compile(&cfg.metric)?,
            manifest_sha: manifest_sha(&cfg.model_dir).unwrap_or_default(),
            model_dir: cfg.model_dir.clone(),
            threshold: cfg.threshold,
            engine: {
                let mut engine = Engine::new(model, warmup, cfg.threshold);
                engine.set_threads(threads);
                engine
            },
            threads,
        })
    }

    /// Whether the route's globs match the reading.
    fn matches(&self, device: &str, metric: &str) -> bool {
        self.device.as_ref().is_none_or(|g| g.is_match(device))
            && self.metric.as_ref().is_none_or(|g| g.is_match(metric))
    }

    /// A route that finds record-shaped devices looks for new ones among
    /// `rows` its globs match; other routes do nothing.
    fn claim(&mut self, view: &ReadingView<'_>, rows: &[u32]) {
        let Engine::Records(records) = &mut self.engine else {
            return;
        };
        let (device, metric) = (&self.device, &self.metric);
        records.claim(
            view,
            rows.iter().map(|&i| i as usize).filter(|&i| {
                device
                    .as_ref()
                    .is_none_or(|g| g.is_match(view.device.value(i)))
                    && metric
                        .as_ref()
                        .is_none_or(|g| g.is_match(view.metric.value(i)))
            }),
        );
    }

    fn takes(&self, device: &str, metric: &str) -> bool {
        self.matches(device, metric)
            && match &self.engine {
                Engine::Records(r) => r.takes(device, metric),
                engine => engine
                    .model()
                    .metrics()
                    .is_none_or(|ms| ms.iter().any(|m| m == metric)),
            }
    }
}

fn manifest_sha(dir: &std::path::Path) -> Option<[u8; 32]> {
    let bytes = std::fs::read(dir.join("manifest.json")).ok()?;
    Some(Sha256::digest(&bytes).into())
}

/// What one batch produced across the routes.
#[derive(Debug)]
pub struct RoutedBatch {
    /// Live routes, merged (rows grouped by route).
    pub live: ScoredBatch,
    /// Shadow routes' scored rows, if any route shadows this batch.
    pub shadow: Option<RecordBatch>,
}

/// A model swap that happened (or failed) during [`Router::reload_changed`].
#[derive(Debug)]
pub struct Reload {
    pub route: String,
    pub result: Result<String, ModelError>,
}

#[derive(Debug)]
pub struct Router {
    live: Vec<Route>,
    shadows: Vec<Route>,
    warmup: u32,
    /// Each device's gateway (the one whose batch carried it last), when
    /// state is shared between hubs (see [`sharing`]).
    gateways: Option<super::FastMap<Arc<str>, Arc<str>>>,
}

impl Router {
    /// Loads every route's model and the default one.
    pub fn new(cfg: &ScoringSettings) -> Result<Self, ModelError> {
        let mut live = Vec::new();
        let mut shadows = Vec::new();
        for r in &cfg.routes {
            let route = Route::load(r, cfg.warmup_readings, cfg.threads())?;
            if r.shadow {
                shadows.push(route);
            } else {
                live.push(route);
            }
        }
        if let Some(model_dir) = cfg.records_model_dir() {
            let route = Route::load(
                &RouteConfig {
                    name: "records".into(),
                    device: None,
                    metric: None,
                    model_dir,
                    shadow: false,
                    threshold: None,
                },
                cfg.warmup_readings,
                cfg.threads(),
            )?;
            let mut route = route;
            let Engine::Records(records) = &mut route.engine else {
                return Err(ModelError::Route(
                    "scoring.records-model-dir: not a state-monitor model that lists no metrics"
                        .into(),
                ));
            };
            records.claim_after(super::records::RECORDS_TO_CLAIM);
            live.push(route);
        }
        live.push(Route::load(
            &RouteConfig {
                name: "default".into(),
                device: None,
                metric: None,
                model_dir: cfg.model_dir.clone(),
                shadow: false,
                threshold: cfg.threshold,
            },
            cfg.warmup_readings,
            cfg.threads(),
        )?);
        Ok(Self {
            live,
            shadows,
            warmup: cfg.warmup_readings,
            gateways: None,
        })
    }

    /// The default route's model.
    pub fn default_model(&self) -> &Model {
        self.live.last().expect("the default route").engine.model()
    }

    /// Series (univariate) plus devices (multivariate) with state.
    pub fn series_count(&self) -> usize {
        self.live
            .iter()
            .chain(&self.shadows)
            .map(|r| match &r.engine {
                Engine::Univariate(s) => s.series_count(),
                Engine::Multivariate(s) => s.device_count(),
                Engine::Records(s) => s.device_count(),
            })
            .sum()
    }

    pub fn score(&mut self, batch: &DecodedBatch, ingested_at_us: i64) -> RoutedBatch {
        let view =
            ReadingView::try_new(&batch.readings).expect("decoder verified the reading columns");
        let n = batch.readings.num_rows();
        self.note_gateway(&view, &batch.header.gateway);
        let mut by_route: Vec<Vec<u32>> = vec![Vec::new(); self.live.len()];
        let mut by_shadow: Vec<Vec<u32>> = vec![Vec::new(); self.shadows.len()];
        let last = self.live.len() - 1;
        // Each live route in turn takes what it takes of the rows no route
        // before it took (a route that finds record-shaped devices looks
        // for them among those rows first); the default takes the rest.
        let names = |i: u32| (view.device.value(i as usize), view.metric.value(i as usize));
        let mut open: Vec<u32> = (0..n as u32).collect();
        for (r, route) in self.live[..last].iter_mut().enumerate() {
            route.claim(&view, &open);
            open.retain(|&i| {
                let (device, metric) = names(i);
                let taken = route.takes(device, metric);
                if taken {
                    by_route[r].push(i);
                }
                !taken
            });
        }
        by_route[last] = open;
        let all: Vec<u32> = if self.shadows.is_empty() {
            Vec::new()
        } else {
            (0..n as u32).collect()
        };
        for (s, shadow) in self.shadows.iter_mut().enumerate() {
            shadow.claim(&view, &all);
            by_shadow[s] = all
                .iter()
                .copied()
                .filter(|&i| {
                    let (device, metric) = names(i);
                    shadow.takes(device, metric)
                })
                .collect();
        }
        let mut parts = Vec::new();
        for (route, rows) in self.live.iter_mut().zip(&by_route) {
            if let Some(sub) = subset(batch, rows) {
                parts.push(
                    route
                        .engine
                        .score(sub.as_ref().unwrap_or(batch), ingested_at_us),
                );
            }
        }
        if parts.is_empty() {
            // An empty batch: the default route answers for it.
            parts.push(self.live[last].engine.score(batch, ingested_at_us));
        }
        let live = merge(parts);
        let mut shadow_parts = Vec::new();
        for (route, rows) in self.shadows.iter_mut().zip(&by_shadow) {
            if let Some(sub) = subset(batch, rows) {
                let out = route
                    .engine
                    .score(sub.as_ref().unwrap_or(batch), ingested_at_us);
                if let Some(e) = out.model_error {
                    tracing::warn!(route = %route.name, error = %e, "shadow model failed on a batch");
                }
                shadow_parts.push(out.scored);
            }
        }
        let shadow = (!shadow_parts.is_empty()).then(|| concat(shadow_parts));
        RoutedBatch { live, shadow }
    }

    /// Swaps in every model whose manifest changed since it was loaded.
    pub fn reload_changed(&mut self) -> Vec<Reload> {
        let warmup = self.warmup;
        let mut out = Vec::new();
        for route in self.live.iter_mut().chain(self.shadows.iter_mut()) {
            let Some(sha) = manifest_sha(&route.model_dir) else {
                continue;
            };
            if sha == route.manifest_sha {
                continue;
            }
            route.manifest_sha = sha;
            let result = Model::load(&route.model_dir).map(|model| {
                let version = format!("{} {}", model.manifest.id, model.manifest.version);
                route.engine.swap_model(model, warmup, route.threshold);
                route.engine.set_threads(route.threads);
                version
            });
            out.push(Reload {
                route: route.name.clone(),
                result,
            });
        }
        out
    }
}

/// A route's state as saved: its name, what it was saved for, the engine's.
#[derive(Debug, serde::Serialize)]
struct SavedRouteRef<'a> {
    name: &'a str,
    key: String,
    engine: super::SavedEngineRef<'a>,
}

#[derive(Debug, serde::Deserialize)]
struct SavedRoute {
    name: String,
    key: String,
    engine: super::SavedEngine,
}

/// What [`Router::restore_state`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Routes whose state was restored.
    pub routes: usize,
    /// Saved routes left out: no route of that name now, or one whose
    /// model keeps another kind of state (it learns anew).
    pub skipped: Vec<String>,
}

impl Router {
    /// Writes every route's state (live, then shadows) to `w` (postcard).
    pub fn save_state<W: std::io::Write>(&self, w: W) -> Result<W, postcard::Error> {
        let routes: Vec<SavedRouteRef<'_>> = self
            .live
            .iter()
            .chain(&self.shadows)
            .map(|r| SavedRouteRef {
                name: &r.name,
                key: r.engine.state_key(),
                engine: r.engine.saved(),
            })
            .collect();
        postcard::to_io(&routes, w)
    }

    /// The route (live or shadow) of a saved route's name whose model keeps
    /// the kind of state it was saved for.
    fn route_saved_as(&mut self, saved: &SavedRoute) -> Option<&mut Route> {
        self.live
            .iter_mut()
            .chain(self.shadows.iter_mut())
            .find(|r| r.name == saved.name && r.engine.state_key() == saved.key)
    }

    /// Restores the routes saved in `bytes` (see [`Router::save_state`])
    /// whose name and state key match a route of this router.
    pub fn restore_state(&mut self, bytes: &[u8]) -> Result<Restored, postcard::Error> {
        let saved: Vec<SavedRoute> = postcard::from_bytes(bytes)?;
        let mut out = Restored::default();
        for s in saved {
            let restored = match self.route_saved_as(&s) {
                Some(r) => r.engine.restore(s.engine),
                None => false,
            };
            if restored {
                out.routes += 1;
            } else {
                out.skipped.push(s.name);
            }
        }
        Ok(out)
    }
}

/// The rows of `batch` at `rows`: `None` when there are none, `Some(None)`
/// when they are all of them (no copy), else a copy.
#[allow(clippy::option_option)]
pub(super) fn subset(batch: &DecodedBatch, rows: &[u32]) -> Option<Option<DecodedBatch>> {
    if rows.is_empty() {
        return None;
    }
    if rows.len() == batch.readings.num_rows() {
        return Some(None);
    }
    let idx = UInt32Array::from(rows.to_vec());
    let columns = batch
        .readings
        .columns()
        .iter()
        .map(|c| arrow_select::take::take(c.as_ref(), &idx, None))
        .collect::<Result<Vec<_>, _>>()
        .expect("indices are in range");
    let readings =
        RecordBatch::try_new(batch.readings.schema(), columns).expect("same schema, same lengths");
    Some(Some(DecodedBatch {
        header: batch.header.clone(),
        version: batch.version,
        readings,
    }))
}

fn concat(parts: Vec<RecordBatch>) -> RecordBatch {
    if parts.len() == 1 {
        return parts.into_iter().next().expect("one");
    }
    let schema = parts[0].schema();
    if parts.iter().all(|p| p.schema() == schema) {
        return arrow_select::concat::concat_batches(&schema, &parts)
            .expect("parts share one schema");
    }
    // Routes whose scorers key different string columns: all plain.
    let plain: Vec<RecordBatch> = parts.iter().map(crate::names::plain_strings).collect();
    arrow_select::concat::concat_batches(&plain[0].schema(), &plain)
        .expect("plain parts share the table schema")
}

pub(super) fn merge(parts: Vec<ScoredBatch>) -> ScoredBatch {
    let mut parts = parts.into_iter();
    let mut first = parts
        .next()
        .expect("every batch has a row, so some route took it");
    let (mut scored, mut anomalies) = (vec![first.scored.clone()], vec![first.anomalies.clone()]);
    for p in parts {
        scored.push(p.scored);
        anomalies.push(p.anomalies);
        first.events.extend(p.events);
        if first.model_error.is_none() {
            first.model_error = p.model_error;
        }
    }
    first.scored = concat(scored);
    first.anomalies = concat(anomalies);
    first
}

mod sharing;
#[cfg(test)]
mod tests;
