//! `iot-lab bench-hostile`: the hub's memory and health under hostile loads:
//! compression bombs, a series flood, a dedup flood, idle clients, overflowing
//! ranges (see docs/BENCHMARKS.md).

use std::process::ExitCode;

#[derive(clap::Args)]
pub(crate) struct BenchHostileArgs {}

impl BenchHostileArgs {
    pub(crate) fn run(self, runtime: &tokio::runtime::Runtime) -> ExitCode {
        {
            let dir = std::env::temp_dir().join(format!("iot-hostile-{}", std::process::id()));
            if let Err(e) = std::fs::create_dir_all(&dir) {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
            // The production hub binary, built next to this one.
            let exe = std::env::current_exe()
                .expect("the running binary")
                .with_file_name("inference-hub");
            match runtime.block_on(lab::bench_hostile::run(&exe, &dir)) {
                Ok(steps) => {
                    println!("| load | RSS after (MiB) | peak RSS so far (MiB) | /health | |");
                    println!("|---|---|---|---|---|");
                    for s in steps {
                        println!(
                            "| {} | {:.1} | {:.1} | {} | {} |",
                            s.load,
                            s.rss_kib as f64 / 1024.0,
                            s.peak_kib as f64 / 1024.0,
                            if s.healthy { "200" } else { "not 200" },
                            s.note
                        );
                    }
                    let _ = std::fs::remove_dir_all(&dir);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
