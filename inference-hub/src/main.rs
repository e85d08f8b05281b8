//! `inference-hub`: thin binary over the library (the demo, benchmarks and
//! evaluation are the `iot-lab` binary of `crates/lab`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use inference_hub::HubConfig;
use inference_hub::config::ENV_PREFIX;

#[derive(Parser)]
#[command(
    version,
    about = "Inference hub: batch intake, scoring, Parquet archive and API"
)]
struct Cli {
    /// TOML configuration file (environment overrides: HUB__SECTION__KEY).
    #[arg(long, short, global = true, env = "HUB_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub.
    Run,
    /// Check the configuration and report every problem with its key path.
    Validate,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let config = match schemas::settings::load::<HubConfig>(
        cli.config.as_deref(),
        ENV_PREFIX,
        std::env::vars(),
    ) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(2);
        }
    };
    if matches!(cli.command, Command::Validate) {
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        match inference_hub::start(config).await {
            Ok(hub) => {
                iot_mqtt::wait_for_stop_signal().await;
                tracing::info!("shutting down");
                hub.shutdown().await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("hub failed to start: {}", schemas::error_chain(&e));
                ExitCode::FAILURE
            }
        }
    })
}
