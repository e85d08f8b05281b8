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

use inference_hub::archive::prune::Wanted;
use inference_hub::archive::reader::{ArchiveFile, ArchiveReader};
use inference_hub::archive::{self, Archive, Table};
use inference_hub::config::ArchiveSettings;
use inference_hub::model::Model;
use inference_hub::scoring::Engine;

/// Options of a rescore run.
#[derive(Debug, Clone)]
pub struct RescoreOptions {
    /// The local archive root; with `bucket`, the hub's local staging root
    /// (its files not uploaded yet are read too).
    pub archive: PathBuf,
    /// The archive's bucket (`[archive.s3]` of the hub's configuration):
    /// read from it, and the output committed to it.
    pub bucket: Option<inference_hub::archive::s3::S3Settings>,
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
fn hours(reader: &ArchiveReader) -> anyhow::Result<Vec<(i64, Vec<ArchiveFile>)>> {
    let mut by_hour: std::collections::BTreeMap<i64, Vec<ArchiveFile>> = Default::default();
    for f in reader.files(Table::Scored, i64::MIN..i64::MAX)? {
        if let Some(hour) = f.hour() {
            by_hour.entry(hour).or_default().push(f);
        }
    }
    Ok(by_hour.into_iter().collect())
}

/// Where the output waits for upload when the archive is in a bucket: next
/// to the hub's own staging root, never inside it (the hub's uploader
/// works there).
fn output_staging(archive: &Path) -> PathBuf {
    let mut name = archive.file_name().unwrap_or_default().to_owned();
    name.push(".rescore");
    archive.with_file_name(name)
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
    let reader = ArchiveReader::open(&o.archive, o.bucket.as_ref())?;
    let partitions: Vec<(i64, Vec<ArchiveFile>)> = hours(&reader)?
        .into_iter()
        .filter(|(h, _)| {
            o.from_us.is_none_or(|f| (h + 1) * HOUR_US > f)
                && o.to_us.is_none_or(|t| h * HOUR_US < t)
        })
        .collect();
    // An earlier run of this model version over these hours is replaced:
    // its files leave the table in one version (the vacuum deletes them).
    let replaced: std::collections::HashSet<i64> = partitions.iter().map(|(h, _)| *h).collect();
    let tables = match &o.bucket {
        Some(bucket) => archive::tables::ArchiveTables::open_bucket(bucket)?,
        None => archive::tables::ArchiveTables::open_local(&o.archive)?,
    };
    tables.remove_files_of(Table::Rescored, &out_id, |hour| replaced.contains(&hour))?;
    drop(tables);
    let settings = ArchiveSettings {
        max_file_age: std::time::Duration::from_secs(24 * 3600),
        s3: o.bucket.clone(),
        ..ArchiveSettings::default()
    };
    let out_root = match o.bucket {
        Some(_) => output_staging(&o.archive),
        None => o.archive.clone(),
    };
    let stats = Arc::new(inference_hub::stats::HubStats::default());
    let (mut out, mut uploader) = Archive::start(&out_root, &out_id, &settings, &stats)?;
    let mut report = RescoreReport {
        output_hub_dir: format!("hub={out_id}"),
        ..RescoreReport::default()
    };
    let mut pos = 0u64;
    let total = partitions.len();
    for (i, (_, files)) in partitions.iter().enumerate() {
        let mut batches = Vec::new();
        for f in files {
            for batch in reader.read(f, &Wanted::everything())? {
                batches.push(batch?);
            }
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
        // One hour at a time: commit (and upload) before loading the next.
        for file in out.commit_all()? {
            if let Some(uploader) = &mut uploader {
                uploader.enqueue(file.path);
            }
        }
        report.partitions += 1;
        progress(i + 1, total, report.readings);
    }
    drop(out);
    if let Some(uploader) = uploader {
        uploader.finish();
        let left = archive::staged_files(&out_root, Table::Rescored)?;
        anyhow::ensure!(
            left.is_empty(),
            "{} rescored files could not be committed to the bucket; they wait in {} and go up when this is run again",
            left.len(),
            out_root.display()
        );
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
