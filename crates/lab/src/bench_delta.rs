//! `iot-lab bench-delta`: what committing to a Delta table costs the archive
//! (issue 19, docs/BENCHMARKS.md). Commits one data-file entry at a time to
//! a local table, as a hub would once per rotated file (a fresh snapshot,
//! then the commit with the hub's transaction version), and reports the
//! latency per window of versions, so its growth with the log's length and
//! what checkpoints do to it show.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use iot_delta::{Change, DataFile, Table};

/// What to run.
#[derive(Debug, Clone)]
pub struct DeltaBenchOptions {
    /// Commits in all.
    pub commits: usize,
    /// A checkpoint after every this many commits (0: none).
    pub checkpoint_every: usize,
    /// Commits per reported window.
    pub window: usize,
    /// The table's directory (created; must be empty or absent).
    pub dir: PathBuf,
}

/// Latencies of one window of commits, in milliseconds.
#[derive(Debug, Clone)]
pub struct Window {
    /// The table version the window's first commit made.
    pub first_version: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The whole run.
#[derive(Debug, Clone)]
pub struct DeltaBenchReport {
    pub windows: Vec<Window>,
    /// Commits per second over the run (checkpoints included).
    pub commits_per_s: f64,
    /// How long each checkpoint took, in milliseconds.
    pub checkpoint_ms: Vec<f64>,
}

/// Runs the benchmark (blocking: call it outside an async runtime).
pub fn bench(opts: &DeltaBenchOptions) -> anyhow::Result<DeltaBenchReport> {
    std::fs::create_dir_all(&opts.dir)
        .with_context(|| format!("creating {}", opts.dir.display()))?;
    let dir = std::fs::canonicalize(&opts.dir)?;
    let root = url::Url::from_directory_path(&dir)
        .map_err(|()| anyhow::anyhow!("{} is not an absolute path", dir.display()))?;
    let schema = Schema::new(vec![
        Field::new("device", DataType::Utf8, false),
        Field::new("metric", DataType::Utf8, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("value", DataType::Float64, true),
        Field::new("date", DataType::Utf8, true),
        Field::new("hour", DataType::Utf8, true),
    ]);
    let table = Table::open_or_create(
        Arc::new(object_store::local::LocalFileSystem::new()),
        root,
        &schema,
        &["date", "hour"],
    )?;
    let window = opts.window.max(1);
    let mut windows = Vec::new();
    let mut checkpoint_ms = Vec::new();
    let mut latencies = Vec::with_capacity(window);
    let mut first_version = 0;
    let started = Instant::now();
    for n in 0..opts.commits {
        let hour = format!("{:02}", (n / 100) % 24);
        let file = DataFile {
            path: format!("date=2026-12-07/hour={hour}/hub=bench/bench-{n}.parquet"),
            partition: BTreeMap::from([
                ("date".to_owned(), "2026-12-07".to_owned()),
                ("hour".to_owned(), hour.clone()),
            ]),
            size: 4 << 20,
            modified_ms: 1_765_000_000_000,
            rows: 50_000,
        };
        let change = Change {
            add: vec![file],
            transactions: vec![(format!("bench/scored/{hour}"), n as i64)],
            ..Change::default()
        };
        let t = Instant::now();
        let base = table.snapshot()?;
        let commit = table.commit(&base, &change)?;
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
        if let iot_delta::Commit::Committed(version) = commit
            && latencies.len() == 1
        {
            first_version = version;
        }
        if latencies.len() == window {
            windows.push(summarise(first_version, &mut latencies));
        }
        if opts.checkpoint_every > 0 && (n + 1) % opts.checkpoint_every == 0 {
            let t = Instant::now();
            table.checkpoint(&table.snapshot()?)?;
            checkpoint_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    if !latencies.is_empty() {
        windows.push(summarise(first_version, &mut latencies));
    }
    Ok(DeltaBenchReport {
        windows,
        commits_per_s: opts.commits as f64 / started.elapsed().as_secs_f64(),
        checkpoint_ms,
    })
}

fn summarise(first_version: u64, latencies: &mut Vec<f64>) -> Window {
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    let window = Window {
        first_version,
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        max_ms: at(1.0),
    };
    latencies.clear();
    window
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_commit_lands_in_a_window_and_checkpoints_are_taken_on_schedule() {
        let dir = tempfile::tempdir().unwrap();
        let opts = DeltaBenchOptions {
            commits: 25,
            checkpoint_every: 10,
            window: 10,
            dir: dir.path().join("table"),
        };
        let report = bench(&opts).unwrap();
        let firsts: Vec<u64> = report.windows.iter().map(|w| w.first_version).collect();
        assert_eq!(firsts, vec![1, 11, 21], "version 0 is the creation");
        assert_eq!(report.checkpoint_ms.len(), 2);
        assert!(
            report
                .windows
                .iter()
                .all(|w| w.p50_ms <= w.p99_ms && w.p99_ms <= w.max_ms)
        );
        let log = opts.dir.join("_delta_log");
        assert!(
            log.join("00000000000000000020.checkpoint.parquet")
                .is_file()
        );
        assert!(log.join("00000000000000000025.json").is_file());
    }
}
