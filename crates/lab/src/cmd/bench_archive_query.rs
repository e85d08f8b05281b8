//! `iot-lab bench-archive-query`: latency of the hub's archive reads on an
//! archive of a given size (see docs/BENCHMARKS.md).

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub(crate) struct BenchArchiveQueryArgs {
    /// Readings in the archive's `scored` table.
    #[arg(long, default_value_t = 1_000_000)]
    readings: u64,
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Metrics per device.
    #[arg(long, default_value_t = 10)]
    metrics: usize,
    /// Seconds between two readings of one series.
    #[arg(long, default_value_t = 10)]
    interval: i64,
    /// Timed repetitions of each query.
    #[arg(long, default_value_t = 30)]
    repeat: usize,
    /// The hub's data directory; an archive of the same size already there
    /// (from an earlier run) is reused (default: a fresh temporary one,
    /// removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
}

impl BenchArchiveQueryArgs {
    pub(crate) fn run(self, runtime: &tokio::runtime::Runtime) -> ExitCode {
        let scratch = self.dir.is_none();
        let dir = self.dir.unwrap_or_else(|| {
            std::env::temp_dir().join(format!("iot-bench-archive-{}", std::process::id()))
        });
        let opts = lab::bench_archive_query::ArchiveQueryOptions {
            dir,
            readings: self.readings,
            devices: self.devices.max(1),
            metrics: self.metrics.max(1),
            interval_s: self.interval.max(1),
            repeat: self.repeat.max(1),
        };
        let result = runtime.block_on(lab::bench_archive_query::bench(&opts));
        if scratch {
            let _ = std::fs::remove_dir_all(&opts.dir);
        }
        match result {
            Ok(report) => {
                println!(
                    "archive: {} readings over {} hours, {} files of the scored table, {:.1} MB{}",
                    report.readings,
                    report.hours,
                    report.files,
                    report.archive_bytes as f64 / 1e6,
                    match report.build {
                        Some(t) => format!(", written in {:.0} s", t.as_secs_f64()),
                        None => " (reused)".to_owned(),
                    }
                );
                println!("| query | p50 ms | p99 ms | max ms | response bytes |");
                println!("|---|---|---|---|---|");
                for q in &report.queries {
                    println!(
                        "| {} | {:.1} | {:.1} | {:.1} | {} |",
                        q.name, q.p50_ms, q.p99_ms, q.max_ms, q.response_bytes
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("bench-archive-query: {e:#}");
                ExitCode::FAILURE
            }
        }
    }
}
