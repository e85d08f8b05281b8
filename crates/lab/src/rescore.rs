//! `iot-lab rescore`: an archived range through another model.
//!
//! Reads the `scored` table of an archive hour partition by hour partition (all
//! hubs' files of the hour, in time order), runs the readings through a fresh
//! production scorer ([`inference_hub::scoring::Engine`], so warm-up, normalisation,
//! windows and decisions are exactly the hub's) with the given model, and
//! writes the result to the `rescored` table under `hub=<model>_<version>` with the
//! archive's commit protocol. The original scores are never touched. Memory
//! is bounded by the largest hour partition (one is loaded at a time); state
//! carries across hours, as it would live. Running the same model version
//! again replaces its earlier output for the range instead of duplicating it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use arrow_array::RecordBatch;
use schemas::envelope::{BatchHeader, DecodedBatch};

use inference_hub::archive::{self, Archive, Table};
use inference_hub::config::ArchiveSettings;
use inference_hub::model::Model;
use inference_hub::scoring::Engine;

/// Options of a rescore run.
#[derive(Debug, Clone)]
pub struct RescoreOptions {
    pub archive: PathBuf,
    pub model_dir: PathBuf,
    /// Event-time range, microseconds since the epoch (inclusive start,
    /// exclusive end); `None` = unbounded.
    pub from_us: Option<i64>,
    pub to_us: Option<i64>,
    pub warmup_readings: u32,
}

/// What a run did.
#[derive(Debug, Default)]
pub struct RescoreReport {
    pub partitions: usize,
    pub readings: u64,
    pub anomalous: u64,
    pub output_hub_dir: String,
}

const HOUR_US: i64 = 3_600_000_000;
/// Readings per scoring call (the live hub scores batches of similar size).
const CHUNK: usize = 50_000;

/// The scored-table hour partitions of an archive, oldest first.
fn hours(root: &Path) -> anyhow::Result<Vec<(i64, Vec<PathBuf>)>> {
    let mut by_hour: std::collections::BTreeMap<i64, Vec<PathBuf>> = Default::default();
    for f in archive::committed_files(root, Table::Scored)? {
        if let Some(hour) = archive::hour_of_file(&f) {
            by_hour.entry(hour).or_default().push(f);
        }
    }
    Ok(by_hour.into_iter().collect())
}

pub fn run(
    o: &RescoreOptions,
    mut progress: impl FnMut(usize, usize, u64),
) -> anyhow::Result<RescoreReport> {
    let model = Model::load(&o.model_dir)
        .with_context(|| format!("load the model from {}", o.model_dir.display()))?;
    let out_id: String = format!("{}_{}", model.manifest.id, model.manifest.version)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(64)
        .collect();
    let mut engine = Engine::new(model, o.warmup_readings, None);
    let partitions: Vec<(i64, Vec<PathBuf>)> = hours(&o.archive)?
        .into_iter()
        .filter(|(h, _)| {
            o.from_us.is_none_or(|f| (h + 1) * HOUR_US > f)
                && o.to_us.is_none_or(|t| h * HOUR_US < t)
        })
        .collect();
    // An earlier run of this model version over these hours is replaced:
    // its files leave the table in one version (the vacuum deletes them).
    let replaced: std::collections::HashSet<i64> = partitions.iter().map(|(h, _)| *h).collect();
    archive::tables::ArchiveTables::open_local(&o.archive)?.remove_files_of(
        Table::Rescored,
        &out_id,
        |hour| replaced.contains(&hour),
    )?;
    let settings = ArchiveSettings {
        max_file_age: std::time::Duration::from_secs(24 * 3600),
        ..ArchiveSettings::default()
    };
    let mut out = Archive::open(&o.archive, &out_id, settings)?;
    let mut report = RescoreReport {
        output_hub_dir: format!("hub={out_id}"),
        ..RescoreReport::default()
    };
    let mut pos = 0u64;
    let total = partitions.len();
    for (i, (_, files)) in partitions.iter().enumerate() {
        let mut batches = Vec::new();
        for f in files {
            batches.extend(archive::read_file(f)?);
        }
        let readings = readings_in_time_order(&batches, o.from_us, o.to_us)?;
        for start in (0..readings.num_rows()).step_by(CHUNK) {
            let chunk = readings.slice(start, CHUNK.min(readings.num_rows() - start));
            pos += 1;
            let ts = chunk
                .column_by_name(schemas::tables::TS)
                .and_then(|c| {
                    c.as_any()
                        .downcast_ref::<arrow_array::TimestampMicrosecondArray>()
                })
                .context("ts column")?;
            let batch = DecodedBatch {
                header: BatchHeader {
                    gateway: "rescore".into(),
                    incarnation: 1,
                    seq: pos,
                    row_count: chunk.num_rows() as u32,
                    first_event_us: ts.value(0),
                    last_event_us: ts.value(ts.len() - 1),
                },
                version: schemas::envelope::CURRENT_VERSION,
                readings: chunk,
            };
            let scored = engine.score(&batch, chrono::Utc::now().timestamp_micros());
            report.readings += scored.scored.num_rows() as u64;
            report.anomalous += scored.events.len() as u64;
            out.append(Table::Rescored, pos, &scored.scored)?;
        }
        // One hour at a time: commit before loading the next.
        out.commit_all()?;
        report.partitions += 1;
        progress(i + 1, total, report.readings);
    }
    Ok(report)
}

/// The four reading columns of `batches`, inside the range, sorted by time
/// (stable: equal timestamps keep file order).
fn readings_in_time_order(
    batches: &[RecordBatch],
    from_us: Option<i64>,
    to_us: Option<i64>,
) -> anyhow::Result<RecordBatch> {
    let schema = schemas::tables::reading_schema();
    let projected: Vec<RecordBatch> = batches
        .iter()
        .map(|b| {
            let columns = schema
                .fields()
                .iter()
                .map(|f| {
                    b.column_by_name(f.name())
                        .cloned()
                        .context("a reading column is missing")
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok(RecordBatch::try_new(Arc::clone(&schema), columns)?)
        })
        .collect::<anyhow::Result<_>>()?;
    let all = arrow_select::concat::concat_batches(&schema, &projected)?;
    let ts = all
        .column_by_name(schemas::tables::TS)
        .and_then(|c| {
            c.as_any()
                .downcast_ref::<arrow_array::TimestampMicrosecondArray>()
        })
        .context("ts column")?;
    let mut order: Vec<u32> = (0..all.num_rows() as u32)
        .filter(|&i| {
            let t = ts.value(i as usize);
            from_us.is_none_or(|f| t >= f) && to_us.is_none_or(|e| t < e)
        })
        .collect();
    order.sort_by_key(|&i| ts.value(i as usize));
    let idx = arrow_array::UInt32Array::from(order);
    let columns = all
        .columns()
        .iter()
        .map(|c| arrow_select::take::take(c.as_ref(), &idx, None))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(schema, columns)?)
}
