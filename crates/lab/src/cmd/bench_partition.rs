//! `iot-lab bench-partition`: the partition benchmark: the hub goes away under
//! steady load and comes back; measures the spool's size, the drain rate and
//! the live-data latency during the drain (see docs/BENCHMARKS.md).

use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args)]
pub(crate) struct BenchPartitionArgs {
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Device messages per second.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// How long the hub is away.
    #[arg(long, default_value = "30s", value_parser = schemas::settings::parse_duration)]
    outage: Duration,
    /// Backlog batches per second (spool.drain-rate).
    #[arg(long, default_value_t = 50.0)]
    drain_rate: f64,
}

impl BenchPartitionArgs {
    pub(crate) fn run(self, runtime: &tokio::runtime::Runtime) -> ExitCode {
        let BenchPartitionArgs {
            devices,
            rate,
            outage,
            drain_rate,
        } = self;
        {
            let opts = lab::bench_partition::PartitionOptions {
                devices,
                rate: rate.max(1),
                outage,
                drain_rate,
                broker: None,
                broker_inflight: lab::broker::EMBEDDED_INFLIGHT,
            };
            match runtime.block_on(lab::bench_partition::partition(opts)) {
                Ok(r) => {
                    println!(
                        "| outage | load msg/s | drain-rate | spool peak | backlog batches | drain time | hub archive readings/s during drain | live latency before (p50/p99/max ms) | live latency during drain (p50/p99/max ms) | all delivered |"
                    );
                    println!("|---|---|---|---|---|---|---|---|---|---|");
                    let (b, d) = (r.latency_before_ms, r.latency_during_drain_ms);
                    println!(
                        "| {:?} | {rate} | {drain_rate}/s | {:.1} MiB ({} batches) | {} | {:.1} s | {:.0} | {:.0}/{:.0}/{:.0} | {:.0}/{:.0}/{:.0} | {} ({} readings) |",
                        outage,
                        r.spool_peak_bytes as f64 / (1024.0 * 1024.0),
                        r.spool_peak_batches,
                        r.backlog_batches,
                        r.drain.as_secs_f64(),
                        r.drain_readings_per_s,
                        b.0,
                        b.1,
                        b.2,
                        d.0,
                        d.1,
                        d.2,
                        if r.archived_exactly { "yes" } else { "NO" },
                        r.readings_published
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("bench-partition failed: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
