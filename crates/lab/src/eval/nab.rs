//! The Numenta Anomaly Benchmark's scoring rules, implemented from their
//! published description (NAB v1.1 `sweeper.py`), so that detection quality is
//! measured the way the published results were.
//!
//! Per file: every row gets a *sweep score* as if it were a detection. Inside
//! a labelled window the score is `scaled_sigmoid(position)` for the relative
//! position in [-1, 0) (about 0.987 at the left edge, falling to 0 at the
//! right), scaled so the left edge is worth the profile's TP weight. Outside
//! windows it is `scaled_sigmoid(distance past the previous window / its width)
//! x fp_weight` (-fp_weight before any window and far past one). The first 15%
//! of the rows (at most 750) are probation and never scored.
//!
//! At a threshold, a row with `anomaly_score >= threshold` is a detection. A
//! window is worth its best (earliest) detection, or `-fn_weight` if none; a
//! detection outside windows adds its (negative) sweep score. The threshold is
//! optimised per profile over the whole corpus (the best total, the highest
//! threshold among ties), and the total is normalised so that a detector that
//! never fires scores 0 and one that fires at the left edge of every window
//! and nowhere else scores 100.

use std::collections::BTreeMap;

use chrono::NaiveDateTime;

/// A NAB cost profile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    pub name: &'static str,
    pub tp_weight: f64,
    pub fp_weight: f64,
    pub fn_weight: f64,
}

/// The three profiles of NAB's `config/profiles.json`.
pub const PROFILES: [Profile; 3] = [
    Profile {
        name: "standard",
        tp_weight: 1.0,
        fp_weight: 0.11,
        fn_weight: 1.0,
    },
    Profile {
        name: "reward_low_FP_rate",
        tp_weight: 1.0,
        fp_weight: 0.22,
        fn_weight: 1.0,
    },
    Profile {
        name: "reward_low_FN_rate",
        tp_weight: 1.0,
        fp_weight: 0.11,
        fn_weight: 2.0,
    },
];

const PROBATION_PERCENT: f64 = 0.15;

/// One scored file: its rows (timestamp, detector score in [0, 1]) and its
/// labelled windows (inclusive timestamps).
#[derive(Debug, Clone)]
pub struct ScoredFile {
    pub name: String,
    pub timestamps: Vec<NaiveDateTime>,
    pub scores: Vec<f64>,
    pub windows: Vec<(NaiveDateTime, NaiveDateTime)>,
}

/// A scorable row: its detector score, its sweep score and its window.
#[derive(Debug, Clone, Copy)]
struct Point {
    score: f64,
    sweep: f64,
    window: Option<usize>,
}

/// `2 / (1 + e^(5x)) - 1`, and -1 far (more than 3 widths) past a window.
pub fn scaled_sigmoid(x: f64) -> f64 {
    if x > 3.0 {
        -1.0
    } else {
        2.0 / (1.0 + (5.0 * x).exp()) - 1.0
    }
}

/// Rows at the start of a file that are never scored.
pub fn probation_rows(rows: usize) -> usize {
    ((PROBATION_PERCENT * rows as f64).floor()).min(PROBATION_PERCENT * 5000.0) as usize
}

/// The scorable rows of a file with their sweep scores; window ids are
/// offset by `first_window` so that several files can be swept together.
fn sweep(file: &ScoredFile, profile: &Profile, first_window: usize) -> Vec<Point> {
    let max_tp = scaled_sigmoid(-1.0);
    let probation = probation_rows(file.timestamps.len());
    let mut windows = file.windows.iter().enumerate().peekable();
    let mut current: Option<(usize, usize, f64, NaiveDateTime)> = None; // (id, right index, width, right ts)
    let mut previous: Option<(usize, f64)> = None; // (right index, width)
    let mut out = Vec::with_capacity(file.timestamps.len().saturating_sub(probation));
    for (i, (&t, &score)) in file.timestamps.iter().zip(&file.scores).enumerate() {
        if let Some(&(w, &(start, end))) = windows.peek()
            && t == start
        {
            windows.next();
            let right = file.timestamps.iter().position(|&x| x == end).unwrap_or(i);
            current = Some((
                first_window + w,
                right,
                (right as f64 - i as f64) + 1.0,
                end,
            ));
        }
        let (sweep_score, window) = match current {
            Some((id, right, width, _)) => {
                let position = -((right as f64 - i as f64) + 1.0) / width;
                (
                    scaled_sigmoid(position) * profile.tp_weight / max_tp,
                    Some(id),
                )
            }
            None => {
                let unweighted = match previous {
                    None => -1.0,
                    Some((right, width)) => {
                        scaled_sigmoid((right as f64 - i as f64).abs() / (width - 1.0))
                    }
                };
                (unweighted * profile.fp_weight, None)
            }
        };
        if i >= probation {
            out.push(Point {
                score,
                sweep: sweep_score,
                window,
            });
        }
        if let Some((_, _, width, end)) = current
            && t == end
        {
            previous = Some((i, width));
            current = None;
        }
    }
    out
}

/// The corpus score of one detector under one profile.
#[derive(Debug, Clone, PartialEq)]
pub struct CorpusScore {
    pub profile: &'static str,
    /// The optimised threshold (`1.1` means "never fires").
    pub threshold: f64,
    pub raw: f64,
    /// 0 = never fires, 100 = perfect.
    pub normalized: f64,
    pub true_positives: usize,
    pub false_positives: usize,
    pub windows: usize,
}

/// Optimises the threshold over the corpus and normalises the score.
pub fn score_corpus(files: &[ScoredFile], profile: &Profile) -> CorpusScore {
    evaluate(files, profile, None)
}

/// The corpus score at a threshold fixed beforehand (a row is a detection
/// when its score is at least `threshold`): what a deployed detector with a
/// frozen threshold would have scored.
pub fn score_at_threshold(files: &[ScoredFile], profile: &Profile, threshold: f64) -> CorpusScore {
    evaluate(files, profile, Some(threshold))
}

fn evaluate(files: &[ScoredFile], profile: &Profile, fixed: Option<f64>) -> CorpusScore {
    let mut points = Vec::new();
    let mut next_window = 0;
    for f in files {
        points.extend(sweep(f, profile, next_window));
        next_window += f.windows.len();
    }
    // Windows without a scorable row (inside the probation) do not count.
    let mut window_best: BTreeMap<usize, f64> = BTreeMap::new();
    for p in &points {
        if let Some(w) = p.window {
            window_best.insert(w, -profile.fn_weight);
        }
    }
    let windows = window_best.len();
    let null = -profile.fn_weight * windows as f64;
    let perfect = profile.tp_weight * windows as f64;

    points.sort_by(|a, b| b.score.total_cmp(&a.score));
    let (mut fp_total, mut fp_count) = (0.0, 0usize);
    let mut detected_windows = 0usize;
    let mut windows_total = null;
    let mut best = (fixed.unwrap_or(1.1), null, 0usize, 0usize);
    let mut i = 0;
    while i < points.len() {
        let threshold = points[i].score;
        if fixed.is_some_and(|f| threshold < f) {
            break;
        }
        while i < points.len() && points[i].score == threshold {
            let p = points[i];
            match p.window {
                None => {
                    fp_total += p.sweep;
                    fp_count += 1;
                }
                Some(w) => {
                    let slot = window_best.get_mut(&w).expect("registered above");
                    if *slot == -profile.fn_weight {
                        detected_windows += 1;
                    }
                    if p.sweep > *slot {
                        windows_total += p.sweep - *slot;
                        *slot = p.sweep;
                    }
                }
            }
            i += 1;
        }
        let total = windows_total + fp_total;
        match fixed {
            // Every threshold down to the fixed one is taken.
            Some(f) => best = (f, total, detected_windows, fp_count),
            None if total > best.1 => best = (threshold, total, detected_windows, fp_count),
            None => {}
        }
    }
    let (threshold, raw, true_positives, false_positives) = best;
    CorpusScore {
        profile: profile.name,
        threshold,
        raw,
        normalized: if perfect > null {
            100.0 * (raw - null) / (perfect - null)
        } else {
            0.0
        },
        true_positives,
        false_positives,
        windows,
    }
}

/// Parses NAB timestamps (`2014-04-10 07:15:00`, optionally with fractional
/// seconds).
pub fn parse_timestamp(text: &str) -> Option<NaiveDateTime> {
    let text = text.trim();
    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S"))
        .ok()
}

/// NAB's `combined_windows.json`: `{"<category>/<file>.csv": [[start, end], ...]}`.
pub fn parse_windows(
    json: &str,
) -> Result<BTreeMap<String, Vec<(NaiveDateTime, NaiveDateTime)>>, String> {
    let raw: BTreeMap<String, Vec<(String, String)>> =
        serde_json::from_str(json).map_err(|e| format!("labels: {e}"))?;
    raw.into_iter()
        .map(|(file, windows)| {
            let windows = windows
                .iter()
                .map(|(a, b)| match (parse_timestamp(a), parse_timestamp(b)) {
                    (Some(a), Some(b)) => Ok((a, b)),
                    _ => Err(format!("labels: bad window [{a}, {b}] for {file}")),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((file, windows))
        })
        .collect()
}

/// A results CSV in NAB's format (`timestamp,value,anomaly_score,...`).
pub fn parse_results(csv: &str) -> Result<(Vec<NaiveDateTime>, Vec<f64>), String> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| format!("results: no {name} column"))
    };
    let (ts_col, score_col) = (col("timestamp")?, col("anomaly_score")?);
    let (mut timestamps, mut scores) = (Vec::new(), Vec::new());
    for (n, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        let ts = fields
            .get(ts_col)
            .and_then(|t| parse_timestamp(t))
            .ok_or_else(|| format!("results line {}: bad timestamp", n + 2))?;
        let score: f64 = fields
            .get(score_col)
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| format!("results line {}: bad anomaly_score", n + 2))?;
        timestamps.push(ts);
        scores.push(score);
    }
    Ok((timestamps, scores))
}

#[cfg(test)]
mod tests;
