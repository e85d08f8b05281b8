//! `inference-hub`: thin binary over the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use inference_hub::config::ENV_PREFIX;
use inference_hub::{HubConfig, demo};

#[derive(Parser)]
#[command(
    version,
    about = "Inference hub: batch intake, ONNX scoring, Parquet archive and API"
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rumqttd=warn".into()),
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
        Command::Validate | Command::Run => {
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
            runtime.block_on(async {
                match inference_hub::start(config).await {
                    Ok(hub) => {
                        wait_for_stop_signal().await;
                        tracing::info!("shutting down");
                        hub.shutdown().await;
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("hub failed to start: {}", error_chain(&e));
                        ExitCode::FAILURE
                    }
                }
            })
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// SIGINT (Ctrl-C) or SIGTERM (systemd, Kubernetes).
async fn wait_for_stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
