//! The novelty route of the univariate scorer: each series' own detector
//! (`detect::novelty`) scores every reading; a batch's series are scored in
//! shards over `scoring.threads`, with the same result as on one thread.

use schemas::envelope::DecodedBatch;
use schemas::tables::{ReadingView, status};

use super::{
    AnomalyEvent, BatchContext, ScoredBatch, ScoredColumns, ScoredRows, Scorer, SeriesState,
    format_ts, normalise_into,
};

impl Scorer {
    /// Scores with the novelty family: one score per reading from the
    /// series' own detector; a reading at or above the frozen threshold is
    /// anomalous once the series is ready, and a run of them is one event.
    /// A forecaster named by the manifest (`expected_values`) gives events
    /// their expected value, run only on the windows of events.
    pub(super) fn score_novelty(
        &mut self,
        batch: &DecodedBatch,
        view: &ReadingView<'_>,
        series_of: &[usize],
        order: &[u32],
        cfg: &detect::NoveltyConfig,
        ingested_at_us: i64,
    ) -> ScoredBatch {
        let n = order.len();
        let forecaster = self.model.expected_values().cloned();
        let params = NoveltyParams {
            cfg,
            threshold: self.threshold,
            warmup: self.warmup,
            clip: self.model.manifest.input.clip,
            explain: forecaster.is_some(),
        };
        // Each series' rows are one run of the output order.
        let mut runs: Vec<(usize, usize, usize)> = Vec::new(); // (series, first k, end k)
        for (k, &i) in order.iter().enumerate() {
            let series = series_of[i as usize];
            match runs.last_mut() {
                Some((s, _, end)) if *s == series => *end = k + 1,
                _ => runs.push((series, k, k + 1)),
            }
        }
        let readings = |first: usize, end: usize| -> Vec<(usize, f64, i64)> {
            (first..end)
                .map(|k| {
                    let i = order[k] as usize;
                    (k, view.value.value(i), view.ts.value(i))
                })
                .collect()
        };
        let threads = self.threads.max(1).min(runs.len().max(1));
        let passes: Vec<NoveltyPass> = if threads == 1 || n < PARALLEL_MIN_ROWS {
            let mut pass = NoveltyPass::default();
            for &(series, first, end) in &runs {
                novelty_run(
                    &params,
                    &mut self.series[series],
                    &readings(first, end),
                    &mut pass,
                );
            }
            vec![pass]
        } else {
            // Series are independent: shards of whole series, about equal
            // in rows, each on its own thread; the result is the same as
            // one thread's.
            let mut slots: Vec<Option<&mut SeriesState>> =
                self.series.iter_mut().map(Some).collect();
            let mut shards: Vec<Vec<SeriesWork<'_>>> = (0..threads).map(|_| Vec::new()).collect();
            let per_shard = n.div_ceil(threads);
            let (mut shard, mut in_shard) = (0, 0);
            for &(series, first, end) in &runs {
                if in_shard >= per_shard && shard + 1 < threads {
                    shard += 1;
                    in_shard = 0;
                }
                let state = slots[series]
                    .take()
                    .expect("a series has one run per batch");
                shards[shard].push((state, readings(first, end)));
                in_shard += end - first;
            }
            std::thread::scope(|scope| {
                let handles: Vec<_> = shards
                    .into_iter()
                    .map(|work| {
                        let params = &params;
                        scope.spawn(move || {
                            let mut pass = NoveltyPass::default();
                            for (state, rows) in work {
                                novelty_run(params, state, &rows, &mut pass);
                            }
                            pass
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("a scoring shard panicked"))
                    .collect()
            })
        };
        let mut status_at: Vec<&'static str> = vec![status::WARMING_UP; n];
        let mut score_at: Vec<Option<f64>> = vec![None; n];
        let mut anomaly_score_at: Vec<Option<f64>> = vec![None; n];
        let mut starts: Vec<EventStart> = Vec::new();
        let mut matrix: Vec<f32> = Vec::new();
        for pass in passes {
            for (k, st, score, anomaly) in pass.rows {
                status_at[k] = st;
                score_at[k] = score;
                anomaly_score_at[k] = anomaly;
            }
            starts.extend(pass.starts);
            matrix.extend(pass.matrix);
        }
        // Expected values of the events (a failure only leaves them out).
        let forecasts = match (&forecaster, matrix.is_empty()) {
            (Some(model), false) => match model.run(&matrix) {
                Ok(out) => out.forecast,
                Err(e) => {
                    tracing::warn!(error = %e, "the expected-values forecaster failed; events go without expected values");
                    None
                }
            },
            _ => None,
        };
        let bound = forecaster
            .as_ref()
            .map_or(0.0, |m| m.manifest.threshold.sqrt());
        let header = &batch.header;
        let mut events = Vec::with_capacity(starts.len());
        let mut forecast_row = 0;
        for (k, window_start, scale) in starts {
            let i = order[k] as usize;
            let state = &self.series[series_of[i]];
            let expected = scale.and_then(|(mean, std)| {
                let f = forecasts.as_ref()?.get(forecast_row).copied();
                forecast_row += 1;
                f.map(|f| (mean + f64::from(f) * std, bound * std))
            });
            let score = score_at[k].unwrap_or_default();
            events.push(AnomalyEvent {
                id: 0,
                device: state.device.to_string(),
                metric: state.metric.to_string(),
                ts: format_ts(view.ts.value(i)),
                ts_us: view.ts.value(i),
                value: view.value.value(i),
                score,
                threshold: self.threshold,
                severity: score / self.threshold,
                window_start_us: window_start,
                model_id: self.model.manifest.id.clone(),
                model_version: self.model.manifest.version.clone(),
                gateway: header.gateway.clone(),
                seq: header.seq,
                expected: expected.map(|(e, _)| e),
                expected_low: expected.map(|(e, b)| e - b),
                expected_high: expected.map(|(e, b)| e + b),
                contributions: None,
            });
        }
        events.sort_by_key(|e| e.ts_us);
        let mut anomalies = ScoredColumns::new(events.len());
        for e in &events {
            anomalies.push_anomaly(e, e.window_start_us);
        }
        let ctx = BatchContext::new(header, &self.model, ingested_at_us);
        let rows = ScoredRows {
            view,
            order,
            series_of,
            series: &self.series,
            status: &status_at,
            score: &score_at,
            anomaly_score: Some(&anomaly_score_at),
            threshold: self.threshold,
        };
        ScoredBatch {
            model_error: None,
            scored: rows.finish(&ctx),
            anomalies: anomalies.finish_anomalies(&ctx),
            events,
        }
    }
}

/// Batches with fewer readings are scored on one thread.
const PARALLEL_MIN_ROWS: usize = 2048;

/// One series of a shard and its readings `(output position, value, ts)`.
type SeriesWork<'a> = (&'a mut SeriesState, Vec<(usize, f64, i64)>);

/// What one novelty run needs besides the series.
struct NoveltyParams<'a> {
    cfg: &'a detect::NoveltyConfig,
    threshold: f64,
    warmup: u64,
    clip: f64,
    /// A forecaster explains events: keep the normalisation and queue the
    /// windows of events.
    explain: bool,
}

/// What scoring some series' readings found.
#[derive(Default)]
struct NoveltyPass {
    /// (output position, status, score, anomaly score) per reading.
    rows: Vec<(usize, &'static str, Option<f64>, Option<f64>)>,
    starts: Vec<EventStart>,
    /// The normalised windows of the events that the forecaster explains.
    matrix: Vec<f32>,
}

/// Scores one series' readings of a batch, `(output position, value, ts)`
/// in time order.
fn novelty_run(
    p: &NoveltyParams<'_>,
    state: &mut SeriesState,
    readings: &[(usize, f64, i64)],
    out: &mut NoveltyPass,
) {
    for &(k, x, ts) in readings {
        if !x.is_finite() {
            out.rows.push((k, status::UNSCORED, None, None));
            continue;
        }
        if state.window.newest_ts().is_some_and(|newest| ts < newest) {
            out.rows.push((k, status::LATE, None, None));
            continue;
        }
        state.window.push(x, ts);
        let verdict = state
            .novelty
            .get_or_insert_with(|| Box::new(detect::Novelty::new(p.cfg)))
            .update(p.cfg, x);
        if !verdict.ready {
            state.in_anomaly = false;
            out.rows
                .push((k, status::WARMING_UP, None, Some(verdict.score)));
        } else {
            let anomalous = verdict.score >= p.threshold;
            let st = if anomalous {
                status::ANOMALOUS
            } else {
                status::OK
            };
            out.rows
                .push((k, st, Some(verdict.score), Some(verdict.score)));
            if anomalous && !state.in_anomaly {
                let window_start = state.window.start_ts().unwrap_or(ts);
                // The forecaster's view of the window before this reading
                // joined the normalisation.
                let scale = (p.explain && state.norm.count >= p.warmup && state.window.is_full())
                    .then(|| {
                        let (mean, std) = (state.norm.mean, state.norm.std(p.warmup));
                        let row = out.matrix.len();
                        out.matrix.resize(row + state.window.window, 0.0);
                        normalise_into(
                            &mut out.matrix[row..],
                            state.window.values(),
                            mean,
                            std,
                            p.clip,
                        );
                        (mean, std)
                    });
                out.starts.push((k, window_start, scale));
            }
            state.in_anomaly = anomalous;
        }
        if p.explain {
            if state.norm.count < p.warmup {
                state.norm.learn_warmup(x, p.warmup);
            } else {
                state.norm.follow(x, p.warmup);
            }
        }
    }
}

/// An event found by the novelty route: its output position, its window's
/// start, and the (mean, std) its window was normalised with for the
/// forecaster (when the forecaster can explain it).
type EventStart = (usize, i64, Option<(f64, f64)>);
