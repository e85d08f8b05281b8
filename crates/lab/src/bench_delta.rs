//! `iot-lab bench-delta`: what committing to a Delta table costs the archive
//! (issue 19, docs/BENCHMARKS.md). Commits one data-file entry at a time to
//! a table (a local directory, or a bucket through the hub's own S3
//! client), as a hub does once per rotated file: its last snapshot brought
//! up to date, then the commit with the hub's transaction version, again on
//! a conflict. Several writers stand for several hubs on one table. Reports
//! the latency per window of versions (from the first attempt to the
//! commit), so its growth with the log and what checkpoints do to it show.
//! With checkpoints the writer that made the version checkpoints it and
//! then cleans the log it covers, as a hub past its log retention does.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use iot_delta::{Change, Commit, DataFile, Table};
use object_store::ObjectStore;

/// What to run.
#[derive(Debug, Clone)]
pub struct DeltaBenchOptions {
    /// Commits in all.
    pub commits: usize,
    /// A checkpoint (and log cleanup) at every version divisible by this
    /// (0: none).
    pub checkpoint_every: usize,
    /// Commits per reported window.
    pub window: usize,
    /// The table's directory (created; must be empty or absent), or with
    /// `s3` the table's prefix in the bucket.
    pub dir: PathBuf,
    /// Writers committing at once (hubs on one table).
    pub writers: usize,
    /// The table in this bucket instead of a local directory.
    pub s3: Option<inference_hub::archive::s3::S3Settings>,
    /// Each writer starts a commit at most this often (zero: back to back),
    /// as a hub commits once per rotated file.
    pub pace: std::time::Duration,
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
    /// Commits per second over the run, all writers (checkpoints included).
    pub commits_per_s: f64,
    /// Commits per minute of each writer.
    pub commits_per_min_per_writer: f64,
    /// Versions a writer lost to another and committed again.
    pub conflicts: u64,
    /// How long each checkpoint and its log cleanup took, in milliseconds.
    pub checkpoint_ms: Vec<f64>,
}

/// What one writer measured: (version, latency ms) per commit, conflicts,
/// checkpoint times.
type WriterResult = (Vec<(u64, f64)>, u64, Vec<f64>);

/// Runs the benchmark (blocking: call it outside an async runtime).
pub fn bench(opts: &DeltaBenchOptions) -> anyhow::Result<DeltaBenchReport> {
    let (store, root): (Arc<dyn ObjectStore>, url::Url) = match &opts.s3 {
        Some(s3) => {
            let prefix = format!(
                "{}/{}/",
                s3.prefix.trim_matches('/'),
                opts.dir.display().to_string().trim_matches('/')
            );
            let url = url::Url::parse(&format!(
                "s3://{}/{}",
                s3.bucket,
                prefix.trim_start_matches('/')
            ))?;
            (s3.connect()?, url)
        }
        None => {
            std::fs::create_dir_all(&opts.dir)
                .with_context(|| format!("creating {}", opts.dir.display()))?;
            let dir = std::fs::canonicalize(&opts.dir)?;
            let url = url::Url::from_directory_path(&dir)
                .map_err(|()| anyhow::anyhow!("{} is not an absolute path", dir.display()))?;
            (Arc::new(object_store::local::LocalFileSystem::new()), url)
        }
    };
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
    let partitions = ["date", "hour"];
    Table::open_or_create(Arc::clone(&store), root.clone(), &schema, &partitions)?;
    let writers = opts.writers.max(1);
    let started = Instant::now();
    let results: Vec<anyhow::Result<WriterResult>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let commits = opts.commits / writers + usize::from(w < opts.commits % writers);
                let (store, root, schema) = (Arc::clone(&store), root.clone(), &schema);
                scope.spawn(move || -> anyhow::Result<WriterResult> {
                    let table = Table::open_or_create(store, root, schema, &partitions)?;
                    // Writers out of phase, as hubs are.
                    let offset = opts.pace * w as u32 / writers as u32;
                    write(
                        &table,
                        w,
                        commits,
                        opts.checkpoint_every as u64,
                        (opts.pace, offset),
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a writer panicked"))
            .collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let (mut committed, mut conflicts, mut checkpoint_ms) = (Vec::new(), 0, Vec::new());
    for result in results {
        let (c, lost, cp) = result?;
        committed.extend(c);
        conflicts += lost;
        checkpoint_ms.extend(cp);
    }
    committed.sort_by_key(|(version, _)| *version);
    let windows = committed
        .chunks(opts.window.max(1))
        .map(|chunk| {
            let mut latencies: Vec<f64> = chunk.iter().map(|(_, ms)| *ms).collect();
            summarise(chunk[0].0, &mut latencies)
        })
        .collect();
    Ok(DeltaBenchReport {
        windows,
        commits_per_s: opts.commits as f64 / elapsed,
        commits_per_min_per_writer: opts.commits as f64 / writers as f64 / (elapsed / 60.0),
        conflicts,
        checkpoint_ms,
    })
}

/// One writer's commits: each a file of its own in one of 24 hours, with
/// its transaction version.
fn write(
    table: &Table,
    writer: usize,
    commits: usize,
    checkpoint_every: u64,
    (pace, offset): (std::time::Duration, std::time::Duration),
) -> anyhow::Result<WriterResult> {
    let (mut committed, mut conflicts, mut checkpoint_ms) = (Vec::new(), 0, Vec::new());
    let mut snapshot = table.snapshot()?;
    let mut next = Instant::now() + offset;
    for n in 0..commits {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        next += pace;
        let hour = format!("{:02}", (n / 100) % 24);
        let file = DataFile {
            path: format!("date=2026-12-07/hour={hour}/hub=w{writer}/w{writer}-{n}.parquet"),
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
            transactions: vec![(format!("w{writer}/scored/{hour}"), n as i64)],
            ..Change::default()
        };
        let t = Instant::now();
        let version = loop {
            snapshot = table.refresh(&snapshot)?;
            match table.commit_then_snapshot(&snapshot, &change)? {
                (Commit::Committed(version), after) => {
                    if let Some(after) = after {
                        snapshot = after;
                    }
                    break version;
                }
                (Commit::Conflict { .. }, _) => conflicts += 1,
            }
        };
        committed.push((version, t.elapsed().as_secs_f64() * 1000.0));
        if checkpoint_every > 0 && version % checkpoint_every == 0 {
            let t = Instant::now();
            table.checkpoint(&table.refresh(&snapshot)?)?;
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis() as i64;
            table.clean_log(now_ms)?;
            checkpoint_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    Ok((committed, conflicts, checkpoint_ms))
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
            writers: 1,
            s3: None,
            pace: std::time::Duration::ZERO,
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
        assert!(
            !log.join("00000000000000000019.json").exists(),
            "the log the checkpoint covers is cleaned"
        );
    }

    #[test]
    fn several_writers_take_every_version_once() {
        let dir = tempfile::tempdir().unwrap();
        let opts = DeltaBenchOptions {
            commits: 30,
            checkpoint_every: 0,
            window: 100,
            dir: dir.path().join("table"),
            writers: 3,
            s3: None,
            pace: std::time::Duration::from_millis(1),
        };
        let report = bench(&opts).unwrap();
        assert_eq!(report.windows.len(), 1);
        assert_eq!(report.windows[0].first_version, 1);
        let log = opts.dir.join("_delta_log");
        assert!(log.join("00000000000000000030.json").is_file());
        assert!(!log.join("00000000000000000031.json").exists());
    }
}
