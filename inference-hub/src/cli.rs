//! The `inference-hub` command line: `run` (the default) and `validate`;
//! the binary parses the arguments, sets up logging and calls [`run`]. (The
//! demo, benchmarks and evaluation are the `iot-lab` binary of `crates/lab`.)

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::HubConfig;
use crate::config::ENV_PREFIX;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Inference hub: batch intake, scoring, Parquet archive and API"
)]
pub struct Cli {
    /// TOML configuration file (environment overrides: HUB__SECTION__KEY).
    #[arg(long, short, global = true, env = "HUB_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the hub.
    Run,
    /// Check the configuration and report every problem with its key path.
    Validate,
}

/// Runs the command `cli` names (the binary's `main`, after logging is set
/// up): exit 2 for a configuration with problems, 1 when the hub cannot start.
pub fn run(cli: Cli) -> ExitCode {
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
        match crate::start(config).await {
            Ok(hub) => {
                iot_mqtt::service::notify_ready();
                iot_mqtt::service::spawn_watchdog();
                iot_mqtt::wait_for_stop_signal().await;
                tracing::info!("shutting down");
                iot_mqtt::service::notify_stopping();
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
