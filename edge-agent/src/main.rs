//! `edge-agent`: thin binary over the library (the commands are in
//! `edge_agent::cli`).

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

fn main() -> ExitCode {
    let cli = edge_agent::cli::Cli::parse();
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer())
        .with(log_filter())
        .init();
    edge_agent::cli::run(cli)
}

/// `RUST_LOG` as a list of `target=level` directives (`info`,
/// `edge_agent=debug,rumqttc=warn`); `info` when unset. `Targets` rather
/// than `EnvFilter` keeps the regex engine out of the gateway binary (about
/// 0.3 MB); span and field filters are not supported. A value that does not
/// parse is reported and `info` is used.
fn log_filter() -> Targets {
    let default = Targets::new().with_default(LevelFilter::INFO);
    match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => spec.parse().unwrap_or_else(|error| {
            eprintln!("edge-agent: RUST_LOG={spec:?} ignored ({error}); logging at info");
            default
        }),
        _ => default,
    }
}
