//! `iot-lab`: the demo, benchmarks, evaluation, rescoring and replay (the
//! workspace's default binary: `cargo run --release -- demo`).
// The doc comments below are the commands' help text (clap), with
// `<placeholders>` that are not HTML.
#![allow(rustdoc::invalid_html_tags)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use lab::demo;

#[derive(Parser)]
#[command(
    version,
    about = "The pipeline's lab: demo, benchmarks, evaluation, rescoring, replay"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum EvalDataset {
    /// NAB layout: <data>/<category>/<file>.csv with timestamp,value. Writes
    /// <out>/<category>/iothub_<file>.csv (NAB's results format) and, with
    /// --labels, prints NAB scores for the three profiles.
    Nab {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// NAB's combined_windows.json.
        #[arg(long)]
        labels: Option<PathBuf>,
        #[arg(long, default_value = inference_hub::config::bundled_model_dir())]
        model_dir: PathBuf,
        /// Readings per series before it is scored (the hub's scoring.warmup-readings).
        #[arg(long, default_value_t = 200)]
        warmup_readings: u32,
        /// Also score at the threshold frozen in the model's manifest.
        #[arg(long)]
        frozen_threshold: bool,
        /// Turn a novelty model's spatial rule off (what it contributes).
        #[arg(long)]
        without_spatial_rule: bool,
    },
    /// SKAB layout: <data>/<group>/<n>.csv, semicolon-separated, with the
    /// anomaly column; prints point-wise F1, false- and missed-alarm rates
    /// under SKAB's protocol and over all rows, and one machine-readable
    /// line for each.
    Skab {
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value = inference_hub::config::bundled_state_monitor_dir())]
        model_dir: PathBuf,
        #[arg(long, default_value_t = 200)]
        warmup_readings: u32,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole pipeline on this machine: embedded broker, hub, two edge
    /// agents and simulated devices.
    Demo {
        /// Stop after this long (e.g. 60s); default: when the recordings end
        /// or on Ctrl-C.
        #[arg(long, value_parser = schemas::settings::parse_duration)]
        duration: Option<Duration>,
        /// Where the hub keeps its WAL and Parquet archive.
        #[arg(long, default_value = "demo-data")]
        data_dir: PathBuf,
        /// Recorded datasets (NAB layout under <dir>/nab); synthetic signals if absent.
        #[arg(long, default_value = "../shared/datasets")]
        datasets: PathBuf,
        /// Address of the hub's HTTP API.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Messages per second per simulated device.
        #[arg(long, default_value_t = 100)]
        rate: u32,
        /// Model directory (manifest.json + ONNX file).
        #[arg(long, default_value = inference_hub::config::bundled_model_dir())]
        model_dir: PathBuf,
    },
    /// Measure how fast a plain subscriber, the edge agent and the hub keep up
    /// with a broker (see docs/BENCHMARKS.md).
    Bench {
        /// Distinct device topics.
        #[arg(long, default_value_t = 1000)]
        devices: usize,
        /// Messages to publish per run.
        #[arg(long, default_value_t = 200_000)]
        messages: u64,
        /// QoS of the device messages (0 or 1).
        #[arg(long, default_value_t = 1)]
        qos: u8,
        /// External broker host:port (default: embedded rumqttd).
        #[arg(long)]
        broker: Option<String>,
        /// The broker's per-client in-flight window (rumqttd: 100).
        #[arg(long, default_value_t = lab::broker::EMBEDDED_INFLIGHT)]
        broker_inflight: usize,
        /// The edge-agent binary (default: next to this one).
        #[arg(long)]
        edge_bin: Option<PathBuf>,
        /// Run the agent with its durable spool.
        #[arg(long)]
        spool: bool,
    },
    /// The hub's memory and health under hostile loads: compression bombs,
    /// a series flood, a dedup flood, idle clients, overflowing ranges (see
    /// docs/BENCHMARKS.md).
    BenchHostile,
    /// Scoring throughput on one thread: the model alone (tract) and the
    /// production scorer (see docs/BENCHMARKS.md; compare with
    /// models/bench_onnxruntime.py).
    BenchScoring {
        #[arg(long, default_value = inference_hub::config::bundled_model_dir())]
        model_dir: PathBuf,
        /// Windows per model call / readings per batch.
        #[arg(long, default_value_t = 4096)]
        batch: usize,
        /// Distinct series (readings of a multivariate model's devices).
        #[arg(long, default_value_t = 1000)]
        series: usize,
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
    /// Hub throughput from received batch bytes to committed Parquet (see
    /// docs/BENCHMARKS.md; the Python reference reads the same envelopes).
    BenchHub {
        #[arg(long, default_value_t = 400)]
        batches: u64,
        #[arg(long, default_value_t = 5000)]
        rows: usize,
        #[arg(long, default_value_t = 1000)]
        devices: usize,
        /// Also write the envelopes here (one file each) for the Python reference.
        #[arg(long)]
        write_envelopes: Option<PathBuf>,
        #[arg(long, default_value = inference_hub::config::bundled_model_dir())]
        model_dir: PathBuf,
        /// The archive's `zstd-level` (the Python reference takes the same flag).
        #[arg(long, default_value_t = inference_hub::config::ArchiveSettings::default().zstd_level)]
        zstd_level: i32,
    },
    /// Replay Parquet recordings (our own archive included: long tables with
    /// device, metric, ts, value; or wide tables with a time column) to a
    /// broker or straight to a hub, like `edge-agent replay` does for CSV.
    Replay {
        /// Parquet files or directories (e.g. an archive's table=scored).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// `max`, or a factor of the recorded pace such as `10x`.
        #[arg(long, default_value = "max", value_parser = edge_agent::replay::parse_speed)]
        speed: edge_agent::replay::Speed,
        /// Device name for wide tables (default: the file name).
        #[arg(long)]
        device: Option<String>,
        /// The broker, host:port.
        #[arg(long, default_value = "127.0.0.1:1883")]
        broker: String,
        #[arg(long, default_value = "sensors")]
        topic_prefix: String,
        /// Send straight to this hub (idempotent: replaying twice is a duplicate).
        #[arg(long)]
        hub_url: Option<String>,
        #[arg(long, default_value_t = 5000)]
        batch_rows: usize,
    },
    /// Run an archived range (table=scored) through another model; results
    /// go to table=rescored under hub=<model>_<version>, originals untouched.
    Rescore {
        /// Archive root (the hub's <data-dir>/archive by default layout).
        #[arg(long)]
        archive: PathBuf,
        #[arg(long)]
        model_dir: PathBuf,
        /// Start of the event-time range (RFC 3339 or epoch s/ms/µs).
        #[arg(long)]
        from: Option<String>,
        /// End of the range (exclusive).
        #[arg(long)]
        to: Option<String>,
        #[arg(long, default_value_t = 200)]
        warmup_readings: u32,
    },
    /// Detection quality on labelled recordings, through the production
    /// scoring path (see docs/DETECTION.md).
    Eval {
        #[command(subcommand)]
        dataset: EvalDataset,
    },
    /// The partition benchmark: the hub goes away under steady load and comes
    /// back; measures the spool's size, the drain rate and the live-data
    /// latency during the drain (see docs/BENCHMARKS.md).
    BenchPartition {
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
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rumqttd=off".into()),
        )
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match cli.command {
        Command::Demo {
            duration,
            data_dir,
            datasets,
            listen,
            rate,
            model_dir,
        } => {
            let opts = demo::DemoOptions {
                duration,
                data_dir,
                datasets: datasets.is_dir().then_some(datasets),
                http_listen: listen,
                rate,
                model_dir,
            };
            match runtime.block_on(demo::run(opts)) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("demo failed: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Bench {
            devices,
            messages,
            qos,
            broker,
            broker_inflight,
            edge_bin,
            spool,
        } => {
            let broker = match broker.as_deref().map(|b| b.rsplit_once(':')) {
                None => None,
                Some(Some((host, port))) if port.parse::<u16>().is_ok() => {
                    Some((host.to_owned(), port.parse().unwrap_or(1883)))
                }
                Some(_) => {
                    eprintln!("--broker must be host:port");
                    return ExitCode::from(2);
                }
            };
            let edge_bin = edge_bin.unwrap_or_else(|| {
                std::env::current_exe()
                    .ok()
                    .and_then(|e| e.parent().map(|d| d.join("edge-agent")))
                    .unwrap_or_default()
            });
            let opts = lab::bench::BenchOptions {
                devices,
                messages,
                qos,
                broker: broker.clone(),
                broker_inflight,
                edge_bin,
                timeout: Duration::from_secs(300),
                spool,
            };
            let name = broker.map_or("rumqttd (embedded)".to_string(), |(h, p)| {
                format!("{h}:{p}")
            });
            match runtime.block_on(lab::bench::run(opts.clone())) {
                Ok(report) => {
                    println!(
                        "| broker | spool | devices | messages | QoS | plain subscriber msg/s | edge agent msg/s | hub end to end readings/s | edge peak RSS | uplink bytes/reading |"
                    );
                    println!("|---|---|---|---|---|---|---|---|---|---|");
                    println!("{}", report.markdown_row(&opts, &name));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("bench failed: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::BenchHostile => {
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
        Command::BenchScoring {
            model_dir,
            batch,
            series,
            seconds,
        } => match lab::bench_scoring::scoring(&model_dir, batch.max(1), series.max(1), seconds) {
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
        },
        Command::BenchHub {
            batches,
            rows,
            devices,
            write_envelopes,
            model_dir,
            zstd_level,
        } => {
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
        Command::Replay {
            paths,
            speed,
            device,
            broker,
            topic_prefix,
            hub_url,
            batch_rows,
        } => {
            let recordings = match lab::replay_parquet::read(&paths, device.as_deref()) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("replay: {e:#}");
                    return ExitCode::FAILURE;
                }
            };
            let target = match hub_url {
                Some(url) => edge_agent::replay::Target::Hub {
                    url,
                    token: std::env::var("HUB_TOKEN").ok(),
                    batch_rows: batch_rows.max(1),
                },
                None => match broker
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h.to_owned(), p.parse().ok()?)))
                {
                    Some((host, port)) => edge_agent::replay::Target::Mqtt {
                        host,
                        port,
                        topic_prefix,
                    },
                    None => {
                        eprintln!("--broker must be host:port");
                        return ExitCode::from(2);
                    }
                },
            };
            for (i, rec) in recordings.iter().enumerate() {
                let edge_agent::replay::Recording::Table {
                    device,
                    metrics,
                    rows,
                } = rec
                else {
                    continue;
                };
                // The identity of a replayed recording: its content.
                let mut id = 0xcbf2_9ce4_8422_2325u64;
                for r in rows {
                    id = (id ^ r.ts_us as u64).wrapping_mul(0x100_0000_01b3);
                    for v in &r.values {
                        id = (id ^ v.to_bits()).wrapping_mul(0x100_0000_01b3);
                    }
                }
                let name = format!("{device}-{}", metrics.join("-"));
                match runtime.block_on(edge_agent::replay::replay(
                    rec,
                    &target,
                    speed,
                    &name,
                    id.max(1),
                )) {
                    Ok(n) => println!(
                        "{device} ({}): {n} rows replayed [{}/{}]",
                        metrics.join(", "),
                        i + 1,
                        recordings.len()
                    ),
                    Err(e) => {
                        eprintln!("replay of {device} failed: {e:#}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Command::Rescore {
            archive,
            model_dir,
            from,
            to,
            warmup_readings,
        } => {
            let parse = |t: &Option<String>| -> Result<Option<i64>, String> {
                t.as_deref()
                    .map(|t| edge_agent::replay::parse_time(t).ok_or(format!("bad time '{t}'")))
                    .transpose()
            };
            let (from_us, to_us) = match (parse(&from), parse(&to)) {
                (Ok(f), Ok(t)) => (f, t),
                (Err(e), _) | (_, Err(e)) => {
                    eprintln!("rescore: {e}");
                    return ExitCode::from(2);
                }
            };
            let opts = lab::rescore::RescoreOptions {
                archive,
                model_dir,
                from_us,
                to_us,
                warmup_readings,
            };
            match lab::rescore::run(&opts, |done, total, readings| {
                eprintln!("rescored {done}/{total} hour partitions, {readings} readings");
            }) {
                Ok(r) => {
                    println!(
                        "{} readings in {} hour partitions rescored ({} anomaly events) into table=rescored/.../{}",
                        r.readings, r.partitions, r.anomalous, r.output_hub_dir
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("rescore failed: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Eval { dataset } => {
            let result = match dataset {
                EvalDataset::Nab {
                    data,
                    out,
                    labels,
                    model_dir,
                    warmup_readings,
                    frozen_threshold,
                    without_spatial_rule,
                } => lab::eval::run_nab(&lab::eval::NabOptions {
                    data,
                    out: out.clone(),
                    labels: labels.clone(),
                    model_dir,
                    warmup_readings,
                    frozen_threshold,
                    without_spatial_rule,
                })
                .map(|r| {
                    if labels.is_some() {
                        print!("{}", lab::eval::nab_markdown(&r));
                    } else {
                        println!("{} files, {} rows", r.files, r.rows);
                    }
                    println!("results written under {}", out.display());
                }),
                EvalDataset::Skab {
                    data,
                    model_dir,
                    warmup_readings,
                } => lab::eval::run_skab(&lab::eval::SkabOptions {
                    data,
                    model_dir,
                    warmup_readings,
                })
                .map(|r| print!("{}", lab::eval::skab_markdown(&r))),
            };
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("eval failed: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::BenchPartition {
            devices,
            rate,
            outage,
            drain_rate,
        } => {
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
