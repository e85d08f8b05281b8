//! `iot-lab replay`: replay Parquet recordings (our own archive included: long
//! tables with device, metric, ts, value; or wide tables with a time column) to
//! a broker or straight to a hub, like `edge-agent replay` does for CSV.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub(crate) struct ReplayArgs {
    /// Parquet files or directories (e.g. an archive's scored/ table, read through its Delta log).
    #[arg(required_unless_present = "hub_config")]
    paths: Vec<PathBuf>,
    /// Instead of paths: the `scored` table of the archive this hub
    /// configuration names, in its bucket with `[archive.s3]` (files not
    /// uploaded yet included) or on the local disk.
    #[arg(long, conflicts_with = "paths")]
    hub_config: Option<PathBuf>,
    /// `max`, or a factor of the recorded pace such as `10x`.
    #[arg(long, default_value = "max", value_parser = edge_agent::replay::parse_speed)]
    speed: edge_agent::replay::Speed,
    /// Device name for wide tables (default: the file name).
    #[arg(long)]
    device: Option<String>,
    /// The broker, host:port.
    #[arg(long, default_value = "127.0.0.1:1883")]
    broker: String,
    #[arg(long, default_value = "sensors")]
    topic_prefix: String,
    /// Send straight to this hub (idempotent: replaying twice is a duplicate).
    #[arg(long)]
    hub_url: Option<String>,
    #[arg(long, default_value_t = 5000)]
    batch_rows: usize,
}

impl ReplayArgs {
    pub(crate) fn run(self, runtime: &tokio::runtime::Runtime) -> ExitCode {
        let ReplayArgs {
            paths,
            hub_config,
            speed,
            device,
            broker,
            topic_prefix,
            hub_url,
            batch_rows,
        } = self;
        {
            let read = match &hub_config {
                Some(config) => crate::cmd::configured_archive(config).and_then(|reader| {
                    lab::replay_parquet::read_archive(
                        &reader,
                        inference_hub::archive::Table::Scored,
                    )
                }),
                None => lab::replay_parquet::read(&paths, device.as_deref()),
            };
            let recordings = match read {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("replay: {e:#}");
                    return ExitCode::FAILURE;
                }
            };
            let target = match hub_url {
                Some(url) => edge_agent::replay::Target::Hub {
                    url,
                    token: std::env::var("HUB_TOKEN").ok(),
                    batch_rows: batch_rows.max(1),
                    tls: None,
                },
                None => match broker
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h.to_owned(), p.parse().ok()?)))
                {
                    Some((host, port)) => edge_agent::replay::Target::Mqtt {
                        host,
                        port,
                        topic_prefix,
                    },
                    None => {
                        eprintln!("--broker must be host:port");
                        return ExitCode::from(2);
                    }
                },
            };
            for (i, rec) in recordings.iter().enumerate() {
                let edge_agent::replay::Recording::Table {
                    device,
                    metrics,
                    rows,
                } = rec
                else {
                    continue;
                };
                // The identity of a replayed recording: its content.
                let mut id = 0xcbf2_9ce4_8422_2325u64;
                for r in rows {
                    id = (id ^ r.ts_us as u64).wrapping_mul(0x100_0000_01b3);
                    for v in &r.values {
                        id = (id ^ v.to_bits()).wrapping_mul(0x100_0000_01b3);
                    }
                }
                let name = format!("{device}-{}", metrics.join("-"));
                match runtime.block_on(edge_agent::replay::replay(
                    rec,
                    &target,
                    speed,
                    &name,
                    id.max(1),
                )) {
                    Ok(n) => println!(
                        "{device} ({}): {n} rows replayed [{}/{}]",
                        metrics.join(", "),
                        i + 1,
                        recordings.len()
                    ),
                    Err(e) => {
                        eprintln!("replay of {device} failed: {e:#}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            ExitCode::SUCCESS
        }
    }
}
