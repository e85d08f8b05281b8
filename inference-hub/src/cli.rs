//! The `inference-hub` command line: `run` (the default), `validate` and
//! `migrate-archive`;
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
    /// Turn an archive in the layout before Delta tables
    /// (`table=<t>/date=/hour=/hub=/`) into Delta tables in place: the
    /// configured archive (its bucket with `[archive.s3]`), or the local
    /// directory given. Safe to run again; stop the hubs of the archive first.
    MigrateArchive {
        /// A local archive root instead of the configured archive.
        path: Option<PathBuf>,
    },
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
    match &cli.command {
        Command::Validate => {
            println!("configuration is valid");
            return ExitCode::SUCCESS;
        }
        Command::MigrateArchive { path } => return migrate_archive(&config, path.as_deref()),
        Command::Run => {}
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        // Before the hub serves anything: a SIGTERM during the start stops
        // it gracefully once started (a caller may see /health answer first).
        let stop = iot_mqtt::signal::StopSignal::install();
        match crate::start(config).await {
            Ok(hub) => {
                iot_mqtt::service::notify_ready();
                iot_mqtt::service::spawn_watchdog();
                stop.wait().await;
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

fn migrate_archive(config: &HubConfig, path: Option<&std::path::Path>) -> ExitCode {
    use crate::archive::migrate;
    let (what, result) = match (path, &config.archive.s3) {
        (None, Some(s3)) => (
            format!("s3://{}/{}", s3.bucket, s3.prefix),
            migrate::migrate_bucket(s3),
        ),
        (path, _) => {
            let root = path.map_or_else(|| config.archive_root(), ToOwned::to_owned);
            (root.display().to_string(), migrate::migrate_local(&root))
        }
    };
    match result {
        Ok(done) => {
            println!(
                "{what}: {} files in the old layout, {} added to the Delta tables by this run ({} rows); the archive is migrated",
                done.files, done.committed, done.rows
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "migrating {what} failed (run the command again to finish it): {}",
                schemas::error_chain(&e)
            );
            ExitCode::FAILURE
        }
    }
}
