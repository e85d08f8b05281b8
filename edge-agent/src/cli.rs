//! The `edge-agent` command line: what each subcommand runs in production
//! (`run`, `validate`, `dry-run`, device `replay`); the binary parses the
//! arguments, sets up logging and calls [`run`].
// The doc comments below are the commands' help text (clap), with
// `<placeholders>` that are not HTML.
#![allow(rustdoc::invalid_html_tags)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::ENV_PREFIX;
use crate::{Agent, EdgeConfig};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Edge agent: MQTT ingest, batching and forwarding to the inference hub"
)]
pub struct Cli {
    /// TOML configuration file (environment overrides: EDGE__SECTION__KEY).
    #[arg(long, short, global = true, env = "EDGE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
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
    /// Publish recorded device data (CSV with a time column, e.g. NAB's
    /// timestamp,value or SKAB's semicolon files; JSON Lines of
    /// {"topic","payload"}) to the gateway broker as the devices would have,
    /// or straight to a hub over HTTP with --hub-url.
    Replay {
        /// Files or directories (searched for .csv/.jsonl).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// `max`, or a factor of the recorded pace such as `10x`.
        #[arg(long, default_value = "max", value_parser = crate::replay::parse_speed)]
        speed: crate::replay::Speed,
        /// Device name (default: each file's name).
        #[arg(long)]
        device: Option<String>,
        /// Time column (default: timestamp, datetime, time or ts).
        #[arg(long)]
        time_column: Option<String>,
        /// Only these columns become metrics (comma-separated).
        #[arg(long, value_delimiter = ',')]
        columns: Option<Vec<String>>,
        /// Topic prefix: messages go to <prefix>/<device>/<metric>.
        #[arg(long, default_value = "sensors")]
        topic_prefix: String,
        /// Send straight to this hub (e.g. http://127.0.0.1:8080), bypassing
        /// broker and agent; replaying the same file twice is idempotent.
        #[arg(long)]
        hub_url: Option<String>,
        /// Readings per envelope with --hub-url.
        #[arg(long, default_value_t = 5000)]
        batch_rows: usize,
        /// The broker, host:port (default: the configuration's mqtt.host and
        /// mqtt.port; replay needs no configuration file).
        #[arg(long)]
        broker: Option<String>,
    },
}

/// Runs the command `cli` names (the binary's `main`, after logging is set up).
pub fn run(cli: Cli) -> ExitCode {
    let replay_without_config =
        cli.config.is_none() && matches!(cli.command, Some(Command::Replay { .. }));
    let config = match schemas::settings::load::<EdgeConfig>(
        cli.config.as_deref(),
        ENV_PREFIX,
        std::env::vars(),
    ) {
        Ok(c) => c,
        Err(_) if replay_without_config => EdgeConfig::for_gateway("replay", 1883),
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
        Command::DryRun { files } => dry_run(&config, &files),
        Command::Replay {
            files,
            speed,
            device,
            time_column,
            columns,
            topic_prefix,
            hub_url,
            batch_rows,
            broker,
        } => replay(
            &config,
            &files,
            ReplayArgs {
                speed,
                csv: crate::replay::CsvOptions {
                    device,
                    time_column,
                    columns,
                },
                topic_prefix,
                hub_url,
                batch_rows,
                broker,
            },
        ),
        Command::Run { shutdown_grace } => run_agent(config, shutdown_grace),
    }
}

/// `dry-run`: each recording through the configured decoders and rules.
fn dry_run(config: &EdgeConfig, files: &[PathBuf]) -> ExitCode {
    for file in files {
        let input: Box<dyn std::io::BufRead> = if file.as_os_str() == "-" {
            Box::new(std::io::stdin().lock())
        } else {
            match std::fs::File::open(file) {
                Ok(f) => Box::new(std::io::BufReader::new(f)),
                Err(e) => {
                    eprintln!("cannot read {}: {e}", file.display());
                    return ExitCode::FAILURE;
                }
            }
        };
        match crate::dry_run::run(config, input) {
            Ok(report) => print!("{}:\n{}", file.display(), report.render()),
            Err(e) => {
                eprintln!("cannot read {}: {e}", file.display());
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

/// `replay`'s options besides the files.
struct ReplayArgs {
    speed: crate::replay::Speed,
    csv: crate::replay::CsvOptions,
    topic_prefix: String,
    hub_url: Option<String>,
    batch_rows: usize,
    broker: Option<String>,
}

/// `replay`: recorded device data to the gateway broker or a hub.
fn replay(config: &EdgeConfig, files: &[PathBuf], args: ReplayArgs) -> ExitCode {
    let ReplayArgs {
        speed,
        csv,
        topic_prefix,
        hub_url,
        batch_rows,
        broker,
    } = args;
    let (host, port) = match broker.as_deref().map(|b| b.rsplit_once(':')) {
        None => (config.mqtt.host.clone(), config.mqtt.port),
        Some(Some((h, p))) if p.parse::<u16>().is_ok() => (h.to_owned(), p.parse().unwrap_or(1883)),
        Some(_) => {
            eprintln!("--broker must be host:port");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let http = &config.uplink.http;
    let token = match iot_tls::read_secret("token", http.token.as_ref(), http.token_file.as_deref())
    {
        Ok(token) => token.map(|t| t.expose().to_owned()),
        Err(e) => {
            eprintln!("uplink.http.token: {e}");
            return ExitCode::from(2);
        }
    };
    let target = match hub_url {
        Some(url) => crate::replay::Target::Hub {
            url,
            token,
            batch_rows: batch_rows.max(1),
            tls: http.tls.clone(),
        },
        None => crate::replay::Target::Mqtt {
            host,
            port,
            topic_prefix,
        },
    };
    let files = match crate::replay::expand(files) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("replay: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    for file in files {
        let result = runtime.block_on(async {
            let recording = crate::replay::read(&file, &csv)?;
            let name = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let id = crate::replay::replay_id(&file, &format!("{csv:?}"))?;
            crate::replay::replay(&recording, &target, speed, &name, id).await
        });
        match result {
            Ok(n) => println!("{}: {n} rows replayed", file.display()),
            Err(e) => {
                eprintln!("replay of {} failed: {e:#}", file.display());
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

/// `run`: the agent until a stop signal.
fn run_agent(config: EdgeConfig, shutdown_grace: Duration) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        // Before the agent starts: a SIGTERM while it starts (a service
        // manager stopping it at once) stops it gracefully once started,
        // instead of killing it with the signal's default action.
        let stop = iot_mqtt::signal::StopSignal::install();
        let agent = match Agent::start(config, shutdown_grace).await {
            Ok(agent) => agent,
            Err(e) => {
                eprintln!("edge agent failed to start: {e}");
                return ExitCode::FAILURE;
            }
        };
        iot_mqtt::service::notify_ready();
        iot_mqtt::service::spawn_watchdog();
        stop.wait().await;
        tracing::info!("shutting down");
        iot_mqtt::service::notify_stopping();
        agent.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// The log filter for a `RUST_LOG` value: a list of `target=level`
/// directives (`info`, `edge_agent=debug,rumqttc=warn`); `info` when unset
/// or blank. `Targets` rather than `EnvFilter` keeps the regex engine out of
/// the gateway binary (about 0.4 MB, docs/BENCHMARKS.md); span and field
/// filters are not supported. A value that does not parse is reported on
/// stderr and `info` is used.
pub fn log_filter(spec: Option<&str>) -> tracing_subscriber::filter::Targets {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    let default = Targets::new().with_default(LevelFilter::INFO);
    match spec {
        Some(spec) if !spec.trim().is_empty() => spec.parse().unwrap_or_else(|error| {
            eprintln!("edge-agent: RUST_LOG={spec:?} ignored ({error}); logging at info");
            default
        }),
        _ => default,
    }
}

#[cfg(test)]
mod log_filter_tests {
    use tracing::Level;

    use super::log_filter;

    #[test]
    fn rust_log_directives_set_levels_per_target_and_a_bad_value_means_info() {
        let f = log_filter(Some("edge_agent=debug,rumqttc=warn"));
        assert!(f.would_enable("edge_agent::uplink", &Level::DEBUG));
        assert!(!f.would_enable("rumqttc::state", &Level::INFO));
        assert!(f.would_enable("rumqttc::state", &Level::WARN));
        assert!(
            !f.would_enable("other", &Level::ERROR),
            "no default directive: other targets off"
        );
        for info in [None, Some(""), Some("  "), Some("edge_agent=loud")] {
            let f = log_filter(info);
            assert!(f.would_enable("edge_agent", &Level::INFO), "{info:?}");
            assert!(!f.would_enable("edge_agent", &Level::DEBUG), "{info:?}");
        }
        assert!(log_filter(Some("trace")).would_enable("anything", &Level::TRACE));
    }
}
