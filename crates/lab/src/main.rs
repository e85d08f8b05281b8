//! `iot-lab`: the demo, benchmarks, evaluation, rescoring and replay (the
//! workspace's default binary: `cargo run --release -- demo`). One module
//! per subcommand under `cmd/`.
// The doc comments below are the commands' help text (clap), with
// `<placeholders>` that are not HTML.
#![allow(rustdoc::invalid_html_tags)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

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
enum Command {
    /// Run the whole pipeline on this machine: embedded broker, hub, two edge
    /// agents and simulated devices.
    Demo(cmd::demo::DemoArgs),
    /// Measure how fast a plain subscriber, the edge agent and the hub keep up
    /// with a broker (see docs/BENCHMARKS.md).
    Bench(cmd::bench::BenchArgs),
    /// The hub's memory and health under hostile loads: compression bombs,
    /// a series flood, a dedup flood, idle clients, overflowing ranges (see
    /// docs/BENCHMARKS.md).
    BenchHostile(cmd::bench_hostile::BenchHostileArgs),
    /// Scoring throughput on one thread: the model alone (tract) and the
    /// production scorer (see docs/BENCHMARKS.md; compare with
    /// models/bench_onnxruntime.py).
    BenchScoring(cmd::bench_scoring::BenchScoringArgs),
    /// Hub throughput from received batch bytes to committed Parquet (see
    /// docs/BENCHMARKS.md; the Python reference reads the same envelopes).
    BenchHub(cmd::bench_hub::BenchHubArgs),
    /// Commit latency of a Delta table as its log grows, with and without
    /// checkpoints (see docs/BENCHMARKS.md).
    BenchDelta(cmd::bench_delta::BenchDeltaArgs),
    /// Latency of the hub's archive reads (readings endpoint, /v1/query) on
    /// an archive of a given size (see docs/BENCHMARKS.md).
    BenchArchiveQuery(cmd::bench_archive_query::BenchArchiveQueryArgs),
    /// Replay Parquet recordings (our own archive included: long tables with
    /// device, metric, ts, value; or wide tables with a time column) to a
    /// broker or straight to a hub, like `edge-agent replay` does for CSV.
    Replay(cmd::replay::ReplayArgs),
    /// Run an archived range (the scored table) through another model; results
    /// go to the rescored table under hub=<model>_<version>, originals untouched.
    Rescore(cmd::rescore::RescoreArgs),
    /// Detection quality on labelled recordings, through the production
    /// scoring path (see docs/DETECTION.md).
    Eval(cmd::eval::EvalArgs),
    /// The partition benchmark: the hub goes away under steady load and comes
    /// back; measures the spool's size, the drain rate and the live-data
    /// latency during the drain (see docs/BENCHMARKS.md).
    BenchPartition(cmd::bench_partition::BenchPartitionArgs),
    /// Write a small PKI for TLS on every link: a CA, the broker's
    /// certificate, one per hub and one per gateway (see README, "Secure
    /// links").
    Pki(cmd::pki::PkiArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rumqttd=off,delta_kernel=warn".into()),
        )
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match cli.command {
        Command::Demo(args) => args.run(&runtime),
        Command::Bench(args) => args.run(&runtime),
        Command::BenchHostile(args) => args.run(&runtime),
        Command::BenchScoring(args) => args.run(&runtime),
        Command::BenchHub(args) => args.run(&runtime),
        Command::BenchDelta(args) => args.run(),
        Command::BenchArchiveQuery(args) => args.run(&runtime),
        Command::Replay(args) => args.run(&runtime),
        Command::Rescore(args) => args.run(&runtime),
        Command::Eval(args) => args.run(&runtime),
        Command::BenchPartition(args) => args.run(&runtime),
        Command::Pki(args) => args.run(),
    }
}
