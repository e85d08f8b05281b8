//! `iot-lab bench-hub`: hub throughput from received batch bytes to committed
//! Parquet (see docs/BENCHMARKS.md; the Python reference reads the same
//! envelopes).

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub(crate) struct BenchHubArgs {
    #[arg(long, default_value_t = 400)]
    batches: u64,
    #[arg(long, default_value_t = 5000)]
    rows: usize,
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Also write the envelopes here (one file each) for the Python reference.
    #[arg(long)]
    write_envelopes: Option<PathBuf>,
    #[arg(long, default_value_os_t = inference_hub::config::shipped_model("novelty"))]
    model_dir: PathBuf,
    /// The archive's `zstd-level` (the Python reference takes the same flag).
    #[arg(long, default_value_t = inference_hub::config::ArchiveSettings::default().zstd_level)]
    zstd_level: i32,
}

impl BenchHubArgs {
    pub(crate) fn run(self, runtime: &tokio::runtime::Runtime) -> ExitCode {
        let BenchHubArgs {
            batches,
            rows,
            devices,
            write_envelopes,
            model_dir,
            zstd_level,
        } = self;
        {
            let envelopes = lab::bench_hub::bench_envelopes(batches, rows.max(1), devices.max(1));
            if let Some(dir) = &write_envelopes
                && let Err(e) = std::fs::create_dir_all(dir).and_then(|()| {
                    envelopes.iter().enumerate().try_for_each(|(i, e)| {
                        std::fs::write(dir.join(format!("batch-{:06}.iotb", i + 1)), e)
                    })
                })
            {
                eprintln!("cannot write envelopes to {}: {e}", dir.display());
                return ExitCode::FAILURE;
            }
            match runtime.block_on(lab::bench_hub::hub_throughput(
                envelopes, &model_dir, zstd_level,
            )) {
                Ok(r) => {
                    let wall = r.wall.as_secs_f64();
                    let cpu = r.cpu.as_secs_f64();
                    println!(
                        "| readings | envelope bytes | wall | CPU (all threads) | readings/s | readings per CPU-second | Parquet bytes |"
                    );
                    println!("|---|---|---|---|---|---|---|");
                    println!(
                        "| {} | {} | {:.2} s | {:.2} s | {:.0} | {:.0} | {} |",
                        r.readings,
                        r.envelope_bytes,
                        wall,
                        cpu,
                        r.readings as f64 / wall,
                        r.readings as f64 / cpu.max(1e-9),
                        r.parquet_bytes
                    );
                    let [score, archive, state] = r.pipeline_stages.map(|d| d.as_secs_f64());
                    println!(
                        "\npipeline (one thread per stage): scoring {score:.2} s, API state {state:.2} s, archive {archive:.2} s; \
                         other threads (decode, dedup, WAL) {:.2} s of CPU",
                        (cpu - score - archive - state).max(0.0)
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("bench-hub failed: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
