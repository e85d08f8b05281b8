//! `iot-lab bench-delta`: commit latency of a Delta table as the log grows,
//! with and without checkpoints (see docs/BENCHMARKS.md).

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub(crate) struct BenchDeltaArgs {
    /// Commits in all (one data-file entry each).
    #[arg(long, default_value_t = 3000)]
    commits: usize,
    /// A checkpoint after every this many commits (0: none).
    #[arg(long, default_value_t = 0)]
    checkpoint_every: usize,
    /// Commits per reported window.
    #[arg(long, default_value_t = 500)]
    window: usize,
    /// The table's directory (default: a fresh temporary one).
    #[arg(long)]
    dir: Option<PathBuf>,
}

impl BenchDeltaArgs {
    pub(crate) fn run(self) -> ExitCode {
        let scratch = self.dir.is_none();
        let dir = self.dir.unwrap_or_else(|| {
            std::env::temp_dir().join(format!("iot-bench-delta-{}", std::process::id()))
        });
        let opts = lab::bench_delta::DeltaBenchOptions {
            commits: self.commits,
            checkpoint_every: self.checkpoint_every,
            window: self.window,
            dir,
        };
        let result = lab::bench_delta::bench(&opts);
        if scratch {
            let _ = std::fs::remove_dir_all(&opts.dir);
        }
        match result {
            Ok(report) => {
                println!(
                    "commits: {}, checkpoint every: {}, {:.0} commits/s overall",
                    opts.commits,
                    match opts.checkpoint_every {
                        0 => "never".to_owned(),
                        n => format!("{n} commits"),
                    },
                    report.commits_per_s
                );
                println!("| versions from | commit p50 ms | p99 ms | max ms |");
                println!("|---|---|---|---|");
                for w in &report.windows {
                    println!(
                        "| {} | {:.2} | {:.2} | {:.2} |",
                        w.first_version, w.p50_ms, w.p99_ms, w.max_ms
                    );
                }
                if !report.checkpoint_ms.is_empty() {
                    let mut c = report.checkpoint_ms.clone();
                    c.sort_by(f64::total_cmp);
                    println!(
                        "checkpoints: {}, median {:.1} ms, max {:.1} ms",
                        c.len(),
                        c[c.len() / 2],
                        c[c.len() - 1]
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("bench-delta: {e}");
                ExitCode::FAILURE
            }
        }
    }
}
