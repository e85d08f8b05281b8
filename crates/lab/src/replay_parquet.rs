//! Parquet recordings for `iot-lab replay` (the edge agent links no
//! Parquet, so this side of replay lives in the hub's binary and hands the
//! rows to the agent library's replay, which publishes or posts them).
//!
//! Two shapes are read:
//! - **long** (our own archive, or any table with `device`, `metric`, a time
//!   column and `value`): one recording per device, each of its metrics a
//!   column, rows aligned on time (a metric missing at a time is skipped for
//!   that row by publishing only complete rows per metric set);
//! - **wide** (a time column and numeric columns): one device named after the
//!   file (or `--device`), each numeric column a metric.
//!
//! A directory is read recursively (`*.parquet`); a Delta table's
//! directory (an archive's `scored/`) through its log: the files its newest
//! version holds, never one that was replaced or never committed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use arrow_array::{Array, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use edge_agent::replay::{Recording, Row};

const TIME_COLUMNS: [&str; 4] = ["ts", "timestamp", "datetime", "time"];

fn files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.join("_delta_log").is_dir() {
            out.extend(inference_hub::archive::table_files(p, i64::MIN..i64::MAX)?);
        } else if p.is_dir() {
            out.extend(
                inference_hub::archive::walk_files(p)?
                    .into_iter()
                    .filter(|f| f.extension().is_some_and(|e| e == "parquet")),
            );
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn time_values(batch: &RecordBatch, name: &str) -> anyhow::Result<Vec<i64>> {
    let col = batch.column_by_name(name).context("time column")?;
    if let Some(ts) = col.as_any().downcast_ref::<TimestampMicrosecondArray>() {
        return Ok(ts.values().to_vec());
    }
    if let Some(s) = col.as_any().downcast_ref::<StringArray>() {
        return (0..s.len())
            .map(|i| edge_agent::replay::parse_time(s.value(i)).context("a time cannot be parsed"))
            .collect();
    }
    let cast = arrow_cast_i64(col.as_ref())?;
    Ok(cast
        .into_iter()
        .map(|v| edge_agent::replay::parse_time(&v.to_string()).unwrap_or(v))
        .collect())
}

fn arrow_cast_i64(col: &dyn Array) -> anyhow::Result<Vec<i64>> {
    use arrow_array::{Int32Array, Int64Array, UInt64Array};
    let any = col.as_any();
    if let Some(a) = any.downcast_ref::<Int64Array>() {
        return Ok(a.values().to_vec());
    }
    if let Some(a) = any.downcast_ref::<Int32Array>() {
        return Ok(a.values().iter().map(|v| i64::from(*v)).collect());
    }
    if let Some(a) = any.downcast_ref::<UInt64Array>() {
        return Ok(a.values().iter().map(|v| *v as i64).collect());
    }
    bail!("the time column is neither a timestamp, a string nor an integer")
}

/// device -> metric -> ts -> value
type Series = BTreeMap<String, BTreeMap<String, BTreeMap<i64, f64>>>;

/// Reads Parquet recordings into one [`Recording`] per device, rows in time
/// order.
pub fn read(paths: &[PathBuf], device: Option<&str>) -> anyhow::Result<Vec<Recording>> {
    let mut long = Series::new();
    for file in files(paths)? {
        for batch in inference_hub::archive::read_file(&file)? {
            add(
                &mut long,
                &batch,
                &file.display().to_string(),
                &stem(&file),
                device,
            )?;
        }
    }
    Ok(recordings(long))
}

/// Reads `table` of the archive a hub is configured with (local, or in its
/// bucket with the files it has not uploaded yet) into one [`Recording`]
/// per device, as [`read`] does for files.
pub fn read_archive(
    reader: &inference_hub::archive::reader::ArchiveReader,
    table: inference_hub::archive::Table,
) -> anyhow::Result<Vec<Recording>> {
    let mut long = Series::new();
    let everything = inference_hub::archive::prune::Wanted::everything();
    for file in reader.files(table, i64::MIN..i64::MAX)? {
        let name = format!("{file:?}");
        for batch in reader.read(&file, &everything)? {
            add(&mut long, &batch?, &name, table.name(), None)?;
        }
    }
    Ok(recordings(long))
}

/// The rows of one batch of a long or wide table (from `source`, a wide
/// table's device named `stem` unless `device` says).
fn add(
    long: &mut Series,
    batch: &RecordBatch,
    source: &str,
    stem: &str,
    device: Option<&str>,
) -> anyhow::Result<()> {
    {
        {
            let schema = batch.schema();
            let time = TIME_COLUMNS
                .iter()
                .find(|c| schema.index_of(c).is_ok())
                .with_context(|| format!("{source}: no time column"))?;
            let ts = time_values(batch, time)?;
            let strings = |n: &str| {
                batch
                    .column_by_name(n)
                    .and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned())
            };
            match (
                strings("device"),
                strings("metric"),
                batch.column_by_name("value"),
            ) {
                (Some(d), Some(m), Some(v)) => {
                    let v = v
                        .as_any()
                        .downcast_ref::<Float64Array>()
                        .context("value is not a float64 column")?;
                    for (i, t) in ts.iter().enumerate() {
                        long.entry(d.value(i).to_owned())
                            .or_default()
                            .entry(m.value(i).to_owned())
                            .or_default()
                            .insert(*t, v.value(i));
                    }
                }
                _ => {
                    let name = device.unwrap_or(stem).to_owned();
                    for (idx, field) in schema.fields().iter().enumerate() {
                        let Some(values) =
                            batch.column(idx).as_any().downcast_ref::<Float64Array>()
                        else {
                            continue;
                        };
                        if TIME_COLUMNS.contains(&field.name().as_str()) {
                            continue;
                        }
                        let series = long
                            .entry(name.clone())
                            .or_default()
                            .entry(field.name().clone())
                            .or_default();
                        for (i, t) in ts.iter().enumerate() {
                            if values.is_valid(i) {
                                series.insert(*t, values.value(i));
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// One recording per device (or per series where a device's metrics were
/// not read at the same times).
fn recordings(long: Series) -> Vec<Recording> {
    long.into_iter()
        .map(|(device, metrics)| {
            // One recording per (device, metric): metrics of a device may
            // have different timestamps in a long table.
            let names: Vec<String> = metrics.keys().cloned().collect();
            let mut rows: BTreeMap<i64, Vec<Option<f64>>> = BTreeMap::new();
            for (k, series) in metrics.values().enumerate() {
                for (ts, v) in series {
                    rows.entry(*ts).or_insert_with(|| vec![None; names.len()])[k] = Some(*v);
                }
            }
            if rows.values().all(|r| r.iter().all(Option::is_some)) {
                return vec![Recording::Table {
                    device,
                    metrics: names,
                    rows: rows
                        .into_iter()
                        .map(|(ts_us, values)| Row {
                            ts_us,
                            values: values.into_iter().map(|v| v.expect("complete")).collect(),
                        })
                        .collect(),
                }];
            }
            metrics
                .into_iter()
                .map(|(metric, series)| Recording::Table {
                    device: device.clone(),
                    metrics: vec![metric],
                    rows: series
                        .into_iter()
                        .map(|(ts_us, v)| Row {
                            ts_us,
                            values: vec![v],
                        })
                        .collect(),
                })
                .collect()
        })
        .flat_map(|v: Vec<Recording>| v.into_iter())
        .collect()
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "replay".into())
}
