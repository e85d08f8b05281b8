//! `iot-lab bench-scoring`: scoring throughput on one thread: the model alone
//! (tract) and the production scorer (see docs/BENCHMARKS.md; compare with
//! models/bench_onnxruntime.py).

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub(crate) struct BenchScoringArgs {
    #[arg(long, default_value_os_t = inference_hub::config::shipped_model("novelty"))]
    model_dir: PathBuf,
    /// Windows per model call / readings per batch.
    #[arg(long, default_value_t = 4096)]
    batch: usize,
    /// Distinct series (readings of a multivariate model's devices).
    #[arg(long, default_value_t = 1000)]
    series: usize,
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
}

impl BenchScoringArgs {
    pub(crate) fn run(self, _runtime: &tokio::runtime::Runtime) -> ExitCode {
        let BenchScoringArgs {
            model_dir,
            batch,
            series,
            seconds,
        } = self;
        match lab::bench_scoring::scoring(&model_dir, batch.max(1), series.max(1), seconds) {
            Ok(reports) => {
                println!(
                    "| model | configuration | batch | model alone (per s, 1 thread) | production scorer (readings/s, 1 thread) | state per series |"
                );
                println!("|---|---|---|---|---|---|");
                for r in reports {
                    println!(
                        "| {} | {} | {} | {:.0} {} | {:.0} | {} |",
                        r.model,
                        r.config,
                        r.batch,
                        r.model_per_s,
                        r.model_unit,
                        r.scorer_readings_per_s,
                        r.bytes_per_series.map_or_else(
                            || "-".to_string(),
                            |b| format!("{:.1} KiB", b as f64 / 1024.0)
                        )
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("bench-scoring failed: {e:#}");
                ExitCode::FAILURE
            }
        }
    }
}
