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
    /// Rounds back to back, each in a fresh process: every round's rows,
    /// then each configuration's median (this VM's speed drifts by 10 % and
    /// more between minutes).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Print the reports as JSON (what a round's process hands back).
    #[arg(long, hide = true)]
    json: bool,
}

impl BenchScoringArgs {
    pub(crate) fn run(self, _runtime: &tokio::runtime::Runtime) -> ExitCode {
        let BenchScoringArgs {
            model_dir,
            batch,
            series,
            seconds,
            rounds,
            json,
        } = self;
        let (batch, series) = (batch.max(1), series.max(1));
        let measured = if rounds <= 1 {
            lab::bench_scoring::scoring(&model_dir, batch, series, seconds).map(|r| vec![r])
        } else {
            // A fresh process per round: in one process a later round's
            // detectors land in the heap the earlier round's production
            // scorer fragmented, and run up to 40 % slower
            // (docs/BENCHMARKS.md).
            (0..rounds)
                .map(|_| round_in_a_fresh_process(&model_dir, batch, series, seconds))
                .collect()
        };
        let measured = match measured {
            Ok(m) => m,
            Err(e) => {
                eprintln!("bench-scoring failed: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        if json {
            println!(
                "{}",
                serde_json::to_string(&measured[0]).expect("serialisable")
            );
            return ExitCode::SUCCESS;
        }
        println!(
            "| round | model | configuration | batch | model alone (per s, 1 thread) | production scorer (readings/s, 1 thread) | state per series |"
        );
        println!("|---|---|---|---|---|---|---|");
        let medians = (measured.len() > 1).then(|| lab::bench_scoring::medians(&measured));
        let rows = measured
            .iter()
            .enumerate()
            .flat_map(|(k, reports)| reports.iter().map(move |r| ((k + 1).to_string(), r)))
            .chain(medians.iter().flatten().map(|r| ("median".to_string(), r)));
        for (round, r) in rows {
            println!(
                "| {round} | {} | {} | {} | {:.0} {} | {:.0} | {} |",
                r.model,
                r.config,
                r.batch,
                r.model_per_s,
                r.model_unit,
                r.scorer_readings_per_s,
                r.bytes_per_series.map_or_else(
                    || "-".to_string(),
                    |b| format!("{:.1} KiB", b as f64 / 1024.0)
                ) + &r
                    .fit_ms
                    .map(|ms| format!(" (fit: {ms:.1} ms once per device)"))
                    .unwrap_or_default()
            );
        }
        ExitCode::SUCCESS
    }
}

/// One round of [`lab::bench_scoring::scoring`] in a child process of this
/// binary.
fn round_in_a_fresh_process(
    model_dir: &std::path::Path,
    batch: usize,
    series: usize,
    seconds: f64,
) -> anyhow::Result<Vec<lab::bench_scoring::ScoringReport>> {
    use anyhow::Context;

    let out = std::process::Command::new(std::env::current_exe()?)
        .arg("bench-scoring")
        .arg("--model-dir")
        .arg(model_dir)
        .args([
            "--batch",
            &batch.to_string(),
            "--series",
            &series.to_string(),
        ])
        .args(["--seconds", &seconds.to_string(), "--json"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("starting a round")?;
    anyhow::ensure!(out.status.success(), "a round failed: {}", out.status);
    serde_json::from_slice(&out.stdout).context("reading a round's reports")
}
