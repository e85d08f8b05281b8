//! `inference-hub`: thin binary over the library (the commands are in
//! `inference_hub::cli`).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = inference_hub::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            // The Delta kernel logs every snapshot and commit at INFO.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,delta_kernel=warn".into()),
        )
        .init();
    inference_hub::cli::run(cli)
}
