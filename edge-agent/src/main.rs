//! `edge-agent`: thin binary over the library (the commands are in
//! `edge_agent::cli`).

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

fn main() -> ExitCode {
    let cli = edge_agent::cli::Cli::parse();
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer())
        .with(edge_agent::cli::log_filter(
            std::env::var("RUST_LOG").ok().as_deref(),
        ))
        .init();
    edge_agent::cli::run(cli)
}
