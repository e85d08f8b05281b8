//! `edge-agent`: thin binary over the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use edge_agent::{Agent, EdgeConfig, config::ENV_PREFIX};

#[derive(Parser)]
#[command(
    version,
    about = "Edge agent: MQTT ingest, batching and forwarding to the inference hub"
)]
struct Cli {
    /// TOML configuration file (environment overrides: EDGE__SECTION__KEY).
    #[arg(long, short, global = true, env = "EDGE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (the default).
    Run {
        /// How long to wait for in-flight batches on shutdown.
        #[arg(long, default_value = "10s", value_parser = schemas::settings::parse_duration)]
        shutdown_grace: Duration,
    },
    /// Check the configuration and report every problem with its key path.
    Validate,
    /// Run a recording of gateway messages (JSON Lines of
    /// {"topic", "payload"}) through the configured decoders and rules and
    /// print what each rule would keep and drop. Needs no broker or hub.
    DryRun {
        /// Recording files; `-` for standard input.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let config = match schemas::settings::load::<EdgeConfig>(
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
    match cli.command.unwrap_or(Command::Run {
        shutdown_grace: Duration::from_secs(10),
    }) {
        Command::Validate => {
            println!("configuration is valid");
            ExitCode::SUCCESS
        }
        Command::DryRun { files } => {
            for file in files {
                let input: Box<dyn std::io::BufRead> = if file.as_os_str() == "-" {
                    Box::new(std::io::stdin().lock())
                } else {
                    match std::fs::File::open(&file) {
                        Ok(f) => Box::new(std::io::BufReader::new(f)),
                        Err(e) => {
                            eprintln!("cannot read {}: {e}", file.display());
                            return ExitCode::FAILURE;
                        }
                    }
                };
                match edge_agent::dry_run::run(&config, input) {
                    Ok(report) => print!("{}:\n{}", file.display(), report.render()),
                    Err(e) => {
                        eprintln!("cannot read {}: {e}", file.display());
                        return ExitCode::FAILURE;
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Command::Run { shutdown_grace } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime");
            runtime.block_on(async {
                let agent = match Agent::start(config, shutdown_grace).await {
                    Ok(agent) => agent,
                    Err(e) => {
                        eprintln!("edge agent failed to start: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                edge_agent::agent::wait_for_stop_signal().await;
                tracing::info!("shutting down");
                agent.shutdown().await;
                ExitCode::SUCCESS
            })
        }
    }
}
