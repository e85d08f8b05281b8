//! Detection quality on labelled recordings, through exactly the production
//! scoring path: the same [`inference_hub::scoring::Engine`] (per-series warm-up, normalisation,
//! model windows, calibrated threshold and adaptive score test) the hub runs,
//! fed one batch per recorded row, in file order, as a device sending live
//! would feed it.
//!
//! - [`nab`]: the Numenta Anomaly Benchmark's scoring rules (windows,
//!   probation, sigmoid weighting, per-profile threshold optimisation,
//!   normalisation).
//! - [`run_nab`]: `iot-lab eval nab`: any folder laid out like NAB's
//!   `data/` in, NAB results CSVs out (and scores when labels are given).
//! - [`run_skab`]: `iot-lab eval skab`: SKAB's multi-sensor files in,
//!   point-wise precision, recall, F1, false-alarm and missed-alarm rates out.
//! - [`skab_cv`]: `iot-lab eval skab --cross-validate`: the state monitor's
//!   drift and chart settings chosen by group-wise cross-validation.
//!
//! What a row's `anomaly_score` means (NAB output): the scored table's
//! `anomaly_score` column when the detector writes one (the novelty family:
//! its per-reading score in [0, 1], so NAB's sweep sees a continuous
//! score). For a detector without one (an ONNX model), the hub raises an
//! anomaly *event* at the first anomalous reading of a run; such a row
//! scores `1 - 0.5 / severity` (severity = model score / threshold >= 1, so
//! the value is in [0.5, 1)) and every other row 0.
//!
//! NAB is reported at the swept threshold (NAB's protocol, comparable with
//! published numbers) and, with `--frozen-threshold`, at the threshold
//! frozen in the model's manifest (what the deployed hub does). SKAB is
//! reported two ways: SKAB's protocol (each file's first 400 rows fit the
//! detector and are not scored) and all rows (the first 400 predicted
//! normal), each next to the trivial detector that flags every row.

pub mod nab;
pub mod skab_cv;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use chrono::NaiveDateTime;
use schemas::envelope::{BatchHeader, DecodedBatch};
use schemas::tables::status;

use inference_hub::model::Model;
use inference_hub::scoring::Engine;

/// Detector name in NAB result files.
pub const DETECTOR: &str = "iothub";

/// What the scorer said about one recorded row.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RowVerdict {
    /// Some metric of the row is `anomalous`.
    pub anomalous: bool,
    /// Largest severity of an anomaly event that starts at this row.
    pub event_severity: Option<f64>,
    /// Largest `anomaly_score` of the row's readings, if the detector
    /// writes one.
    pub anomaly_score: Option<f64>,
}

impl RowVerdict {
    /// NAB's `anomaly_score` in [0, 1].
    pub fn nab_score(&self) -> f64 {
        match self.anomaly_score {
            Some(a) => a.clamp(0.0, 1.0),
            None => self
                .event_severity
                .map_or(0.0, |s| (1.0 - 0.5 / s.max(1.0)).clamp(0.0, 1.0)),
        }
    }
}

/// Runs recorded rows of one device through a fresh production scorer.
#[derive(Debug)]
pub struct Replay {
    scorer: Engine,
    seq: u64,
}

impl Replay {
    pub fn new(model_dir: &Path, warmup_readings: u32) -> anyhow::Result<Self> {
        Self::with_model(load_model(model_dir, false)?, warmup_readings)
    }

    /// A replay through an already loaded model.
    pub fn with_model(model: Model, warmup_readings: u32) -> anyhow::Result<Self> {
        Ok(Self {
            scorer: Engine::new(model, warmup_readings, None),
            seq: 0,
        })
    }

    /// Scores one row (all its metrics at one timestamp) as one batch.
    pub fn row(&mut self, device: &str, ts_us: i64, metrics: &[(&str, f64)]) -> RowVerdict {
        let mut cols = schemas::ReadingColumns::with_capacity(metrics.len());
        for (metric, value) in metrics {
            cols.push(device, metric, ts_us, *value);
        }
        self.seq += 1;
        let batch = DecodedBatch {
            header: BatchHeader {
                gateway: "eval".into(),
                incarnation: 1,
                seq: self.seq,
                row_count: metrics.len() as u32,
                first_event_us: ts_us,
                last_event_us: ts_us,
            },
            version: schemas::envelope::CURRENT_VERSION,
            readings: cols.finish(),
        };
        let scored = self.scorer.score(&batch, ts_us);
        let anomaly_score = scored
            .scored
            .column_by_name(schemas::tables::ANOMALY_SCORE)
            .and_then(|c| {
                c.as_any()
                    .downcast_ref::<arrow_array::Float64Array>()
                    .and_then(|a| a.iter().flatten().max_by(f64::total_cmp))
            });
        RowVerdict {
            anomaly_score,
            anomalous: scored
                .scored
                .column_by_name(schemas::tables::STATUS)
                .is_some_and(|c| any_anomalous(c.as_ref())),
            event_severity: scored
                .events
                .iter()
                .map(|e| e.severity)
                .max_by(f64::total_cmp),
        }
    }
}

/// Loads a model for evaluation; `without_spatial_rule` turns a novelty
/// model's spatial rule off (to measure what it contributes).
pub fn load_model(model_dir: &Path, without_spatial_rule: bool) -> anyhow::Result<Model> {
    let mut model = Model::load(model_dir)
        .with_context(|| format!("load the model from {}", model_dir.display()))?;
    if without_spatial_rule {
        let cfg = model
            .manifest
            .novelty
            .as_mut()
            .context("--without-spatial-rule needs a novelty model")?;
        cfg.spatial_rule = false;
    }
    Ok(model)
}

/// Whether a status column (plain or keyed strings) says `anomalous`.
fn any_anomalous(column: &dyn arrow_array::Array) -> bool {
    use arrow_array::cast::AsArray;
    use arrow_array::types::UInt32Type;
    match column.as_string_opt::<i32>() {
        Some(plain) => plain.iter().flatten().any(|s| s == status::ANOMALOUS),
        None => column
            .as_dictionary_opt::<UInt32Type>()
            .and_then(|d| {
                let values = d.values().as_string_opt::<i32>()?;
                Some(
                    d.keys()
                        .iter()
                        .flatten()
                        .any(|k| values.value(k as usize) == status::ANOMALOUS),
                )
            })
            .unwrap_or(false),
    }
}

/// Options of `iot-lab eval nab`.
#[derive(Debug, Clone)]
pub struct NabOptions {
    /// A folder laid out like NAB's `data/`: category folders of
    /// `timestamp,value` CSVs.
    pub data: PathBuf,
    pub out: PathBuf,
    /// NAB's `combined_windows.json`; without it only results are written.
    pub labels: Option<PathBuf>,
    pub model_dir: PathBuf,
    pub warmup_readings: u32,
    /// Also score at the threshold frozen in the model's manifest.
    pub frozen_threshold: bool,
    /// Turn a novelty model's spatial rule off.
    pub without_spatial_rule: bool,
}

/// Per-profile corpus scores, when labels were given.
#[derive(Debug)]
pub struct NabReport {
    pub files: usize,
    pub rows: usize,
    /// At the threshold NAB's sweep chose (NAB's protocol).
    pub scores: Vec<nab::CorpusScore>,
    /// At the model's frozen threshold (with `frozen_threshold`).
    pub frozen: Vec<nab::CorpusScore>,
    /// The model's id, version and frozen threshold.
    pub model: String,
    pub threshold: f64,
}

/// `timestamp,value` rows of a NAB data file (header required).
fn read_nab_data(path: &Path) -> anyhow::Result<Vec<(String, NaiveDateTime, f64)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let (Some(t), Some(v)) = (
        header.iter().position(|h| h.trim() == "timestamp"),
        header.iter().position(|h| h.trim() == "value"),
    ) else {
        bail!("{}: expected a timestamp,value header", path.display());
    };
    let mut rows = Vec::new();
    for (n, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        let raw_ts = fields.get(t).copied().unwrap_or_default().trim().to_owned();
        let ts = nab::parse_timestamp(&raw_ts)
            .with_context(|| format!("{} line {}: bad timestamp", path.display(), n + 2))?;
        let value: f64 = fields
            .get(v)
            .and_then(|x| x.trim().parse().ok())
            .with_context(|| format!("{} line {}: bad value", path.display(), n + 2))?;
        rows.push((raw_ts, ts, value));
    }
    Ok(rows)
}

/// Runs every CSV under `data/<category>/` through the production scorer and
/// writes `<out>/<category>/iothub_<file>.csv` (NAB's results format, same
/// rows in the same order); scores the corpus when labels are given.
pub fn run_nab(o: &NabOptions) -> anyhow::Result<NabReport> {
    let windows = match &o.labels {
        Some(path) => Some(
            nab::parse_windows(
                &std::fs::read_to_string(path)
                    .with_context(|| format!("read {}", path.display()))?,
            )
            .map_err(anyhow::Error::msg)?,
        ),
        None => None,
    };
    let mut inputs: Vec<(String, PathBuf)> = Vec::new();
    for category in sorted_dir(&o.data)? {
        if !category.is_dir() {
            continue;
        }
        let cat = file_name(&category);
        for file in sorted_dir(&category)? {
            if file.extension().is_some_and(|e| e == "csv") {
                inputs.push((format!("{cat}/{}", file_name(&file)), file));
            }
        }
    }
    if inputs.is_empty() {
        bail!("no <category>/<file>.csv under {}", o.data.display());
    }
    let model = load_model(&o.model_dir, o.without_spatial_rule)?;
    let mut scored_files = Vec::new();
    let mut rows_total = 0;
    for (key, path) in &inputs {
        let rows = read_nab_data(path)?;
        rows_total += rows.len();
        let mut replay = Replay::with_model(model.clone(), o.warmup_readings)?;
        let file_windows = windows
            .as_ref()
            .and_then(|w| w.get(key))
            .cloned()
            .unwrap_or_default();
        let mut csv = String::from("timestamp,value,anomaly_score,label\n");
        let mut scores = Vec::with_capacity(rows.len());
        for (raw_ts, ts, value) in &rows {
            let verdict = replay.row("nab", ts.and_utc().timestamp_micros(), &[("value", *value)]);
            let label = u8::from(file_windows.iter().any(|(a, b)| a <= ts && ts <= b));
            let score = verdict.nab_score();
            scores.push(score);
            let _ = writeln!(csv, "{raw_ts},{value},{score},{label}");
        }
        let (category, file) = key.split_once('/').expect("built with a slash");
        let dir = o.out.join(category);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("{DETECTOR}_{file}")), csv)?;
        scored_files.push(nab::ScoredFile {
            name: key.clone(),
            timestamps: rows.iter().map(|r| r.1).collect(),
            scores,
            windows: file_windows,
        });
    }
    // The threshold a row's NAB score must reach to be an event: the
    // anomaly score's own for detectors that write one, else an event's.
    let threshold = if model.manifest.detector == inference_hub::model::DetectorKind::Onnx {
        0.5
    } else {
        model.manifest.threshold
    };
    let (scores, frozen) = if windows.is_some() {
        let swept = nab::PROFILES
            .iter()
            .map(|p| nab::score_corpus(&scored_files, p))
            .collect();
        let frozen = if o.frozen_threshold {
            nab::PROFILES
                .iter()
                .map(|p| nab::score_at_threshold(&scored_files, p, threshold))
                .collect()
        } else {
            Vec::new()
        };
        (swept, frozen)
    } else {
        (Vec::new(), Vec::new())
    };
    Ok(NabReport {
        files: inputs.len(),
        rows: rows_total,
        scores,
        frozen,
        model: format!("{} {}", model.manifest.id, model.manifest.version),
        threshold,
    })
}

/// Point-wise confusion counts and the rates SKAB reports.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Confusion {
    pub tp: u64,
    pub fp: u64,
    pub tn: u64,
    pub fn_: u64,
}

impl Confusion {
    pub fn add(&mut self, predicted: bool, actual: bool) {
        match (predicted, actual) {
            (true, true) => self.tp += 1,
            (true, false) => self.fp += 1,
            (false, false) => self.tn += 1,
            (false, true) => self.fn_ += 1,
        }
    }

    pub fn merge(&mut self, other: &Confusion) {
        self.tp += other.tp;
        self.fp += other.fp;
        self.tn += other.tn;
        self.fn_ += other.fn_;
    }

    fn ratio(a: u64, b: u64) -> f64 {
        if b == 0 { 0.0 } else { a as f64 / b as f64 }
    }

    pub fn precision(&self) -> f64 {
        Self::ratio(self.tp, self.tp + self.fp)
    }

    pub fn recall(&self) -> f64 {
        Self::ratio(self.tp, self.tp + self.fn_)
    }

    pub fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }

    /// False-alarm rate: FP / (FP + TN).
    pub fn false_alarm_rate(&self) -> f64 {
        Self::ratio(self.fp, self.fp + self.tn)
    }

    /// Missed-alarm rate: FN / (FN + TP).
    pub fn missed_alarm_rate(&self) -> f64 {
        Self::ratio(self.fn_, self.fn_ + self.tp)
    }
}

/// Options of `iot-lab eval skab`.
#[derive(Debug, Clone)]
pub struct SkabOptions {
    /// SKAB's `data/` folder (`valve1/`, `valve2/`, `other/` with labelled
    /// files; `anomaly-free/` is skipped).
    pub data: PathBuf,
    pub model_dir: PathBuf,
    pub warmup_readings: u32,
}

/// Rows of each SKAB file its own protocol fits on (and does not score).
pub const SKAB_FIT_ROWS: usize = 400;

#[derive(Debug)]
pub struct SkabReport {
    pub files: usize,
    /// SKAB's protocol: rows after each file's first [`SKAB_FIT_ROWS`].
    pub protocol: Confusion,
    /// Every row (the detector's warm-up predicted normal).
    pub total: Confusion,
    /// Per file: (name, protocol, all rows).
    pub per_file: Vec<(String, Confusion, Confusion)>,
}

impl SkabReport {
    /// The trivial detector that flags every row, on the same rows.
    pub fn trivial(c: &Confusion) -> Confusion {
        Confusion {
            tp: c.tp + c.fn_,
            fp: c.fp + c.tn,
            tn: 0,
            fn_: 0,
        }
    }
}

/// Runs every labelled SKAB file through the production scorer (each sensor
/// is a metric of one device; a row is predicted anomalous when any of its
/// metrics is: with a multivariate model all of them share the record's
/// verdict) and counts point-wise against the `anomaly` column.
pub fn run_skab(o: &SkabOptions) -> anyhow::Result<SkabReport> {
    run_skab_with(&load_model(&o.model_dir, false)?, o)
}

/// [`run_skab`] with an already loaded model (`o.model_dir` unused).
pub fn run_skab_with(model: &Model, o: &SkabOptions) -> anyhow::Result<SkabReport> {
    let mut per_file = Vec::new();
    let (mut protocol, mut total) = (Confusion::default(), Confusion::default());
    for group in sorted_dir(&o.data)? {
        if !group.is_dir() || file_name(&group) == "anomaly-free" {
            continue;
        }
        for file in sorted_dir(&group)? {
            if file.extension().is_none_or(|e| e != "csv") {
                continue;
            }
            let name = format!("{}/{}", file_name(&group), file_name(&file));
            let (p, all) = skab_file(&file, model, o)?;
            protocol.merge(&p);
            total.merge(&all);
            per_file.push((name, p, all));
        }
    }
    if per_file.is_empty() {
        bail!("no labelled SKAB files under {}", o.data.display());
    }
    Ok(SkabReport {
        files: per_file.len(),
        protocol,
        total,
        per_file,
    })
}

/// One SKAB record: timestamp (µs), sensor values, anomaly label.
pub type SkabRecord = (i64, Vec<f64>, bool);

/// SKAB's `datetime;<sensors...>;anomaly;changepoint` rows: the sensor names
/// and the records.
pub fn read_skab(path: &Path) -> anyhow::Result<(Vec<String>, Vec<SkabRecord>)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .unwrap_or_default()
        .split(';')
        .map(|h| h.trim().to_owned())
        .collect();
    let time_col = header
        .iter()
        .position(|h| h == "datetime")
        .with_context(|| format!("{}: no datetime column", path.display()))?;
    let label_col = header.iter().position(|h| h == "anomaly");
    let sensors: Vec<(usize, String)> = header
        .iter()
        .enumerate()
        .filter(|(i, h)| *i != time_col && *h != "anomaly" && *h != "changepoint")
        .map(|(i, h)| (i, h.clone()))
        .collect();
    let mut rows = Vec::new();
    for (n, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(';').collect();
        let ts = fields
            .get(time_col)
            .and_then(|t| nab::parse_timestamp(t))
            .with_context(|| format!("{} line {}: bad datetime", path.display(), n + 2))?
            .and_utc()
            .timestamp_micros();
        let values = sensors
            .iter()
            .map(|(i, _)| fields.get(*i).and_then(|x| x.trim().parse::<f64>().ok()))
            .collect::<Option<Vec<f64>>>()
            .with_context(|| format!("{} line {}: bad sensor value", path.display(), n + 2))?;
        let label = label_col
            .and_then(|c| fields.get(c))
            .and_then(|x| x.trim().parse::<f64>().ok())
            .is_some_and(|x| x >= 0.5);
        rows.push((ts, values, label));
    }
    Ok((sensors.into_iter().map(|(_, h)| h).collect(), rows))
}

/// One file's confusion under SKAB's protocol and over all rows.
fn skab_file(
    path: &Path,
    model: &Model,
    o: &SkabOptions,
) -> anyhow::Result<(Confusion, Confusion)> {
    let (sensors, rows) = read_skab(path)?;
    let mut replay = Replay::with_model(model.clone(), o.warmup_readings)?;
    let (mut protocol, mut confusion) = (Confusion::default(), Confusion::default());
    for (row, (ts, values, label)) in rows.into_iter().enumerate() {
        let metrics: Vec<(&str, f64)> = sensors
            .iter()
            .map(String::as_str)
            .zip(values.iter().copied())
            .collect();
        let verdict = replay.row("skab", ts, &metrics);
        confusion.add(verdict.anomalous, label);
        if row >= SKAB_FIT_ROWS {
            protocol.add(verdict.anomalous, label);
        }
    }
    Ok((protocol, confusion))
}

fn sorted_dir(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    Ok(entries)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The NAB report as Markdown.
pub fn nab_markdown(report: &NabReport) -> String {
    let mut out = format!(
        "{} files, {} rows, model {}\n\nNAB's protocol (threshold swept per profile):\n\n",
        report.files, report.rows, report.model
    );
    out.push_str(&nab_table(&report.scores));
    if !report.frozen.is_empty() {
        let _ = write!(
            out,
            "\nAt the frozen threshold {} (the model's manifest):\n\n",
            report.threshold
        );
        out.push_str(&nab_table(&report.frozen));
    }
    out
}

fn nab_table(scores: &[nab::CorpusScore]) -> String {
    let mut out = String::from(
        "| profile | score (0 = never fires, 100 = perfect) | threshold | windows detected | false-positive rows |\n|---|---|---|---|---|\n",
    );
    for s in scores {
        let _ = writeln!(
            out,
            "| {} | {:.2} | {} | {} of {} | {} |",
            s.profile, s.normalized, s.threshold, s.true_positives, s.windows, s.false_positives
        );
    }
    out
}

/// The SKAB report as Markdown, ending with one machine-readable line per
/// protocol (`skab-protocol f1=... far=... mar=...`, `all-rows ...`).
pub fn skab_markdown(report: &SkabReport) -> String {
    let line = |name: &str, c: &Confusion| {
        format!(
            "| {name} | {:.3} | {:.3} | {:.3} | {:.1} % | {:.1} % |\n",
            c.f1(),
            c.precision(),
            c.recall(),
            100.0 * c.false_alarm_rate(),
            100.0 * c.missed_alarm_rate()
        )
    };
    let mut out = format!(
        "{} files\n\n| rows | F1 | precision | recall | false-alarm rate | missed-alarm rate |\n|---|---|---|---|---|---|\n",
        report.files
    );
    out.push_str(&line(
        "SKAB's protocol (after each file's first 400)",
        &report.protocol,
    ));
    out.push_str(&line(
        "  trivial: every row anomalous",
        &SkabReport::trivial(&report.protocol),
    ));
    out.push_str(&line("all rows", &report.total));
    out.push_str(&line(
        "  trivial: every row anomalous",
        &SkabReport::trivial(&report.total),
    ));
    let mut groups: BTreeMap<&str, (Confusion, Confusion)> = BTreeMap::new();
    for (name, p, all) in &report.per_file {
        let g = groups
            .entry(name.split('/').next().unwrap_or_default())
            .or_default();
        g.0.merge(p);
        g.1.merge(all);
    }
    out.push_str(
        "\n| group | F1 (protocol) | false-alarm rate | F1 (all rows) |\n|---|---|---|---|\n",
    );
    for (g, (p, all)) in groups {
        let _ = writeln!(
            out,
            "| {g} | {:.3} | {:.1} % | {:.3} |",
            p.f1(),
            100.0 * p.false_alarm_rate(),
            all.f1()
        );
    }
    for (name, c) in [
        ("skab-protocol", &report.protocol),
        ("all-rows", &report.total),
    ] {
        let _ = writeln!(
            out,
            "\n{name} f1={:.3} far={:.3} mar={:.3}",
            c.f1(),
            c.false_alarm_rate(),
            c.missed_alarm_rate()
        );
    }
    out.replace("\n\nall-rows", "\nall-rows")
}
