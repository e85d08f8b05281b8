//! `iot-lab bench`: measure how fast a plain subscriber, the edge agent and the
//! hub keep up with a broker (see docs/BENCHMARKS.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    /// Distinct device topics.
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Messages to publish per run.
    #[arg(long, default_value_t = 200_000)]
    messages: u64,
    /// QoS of the device messages (0 or 1).
    #[arg(long, default_value_t = 1)]
    qos: u8,
    /// External broker host:port (default: embedded rumqttd).
    #[arg(long)]
    broker: Option<String>,
    /// The broker's per-client in-flight window (rumqttd: 100).
    #[arg(long, default_value_t = lab::broker::EMBEDDED_INFLIGHT)]
    broker_inflight: usize,
    /// The edge-agent binary (default: next to this one).
    #[arg(long)]
    edge_bin: Option<PathBuf>,
    /// Run the agent with its durable spool.
    #[arg(long)]
    spool: bool,
    /// TLS on every MQTT connection, with the files `iot-lab pki --gateway
    /// bench` wrote to this directory (ca.pem, bench.pem, bench.key); the
    /// broker (`--broker`) must offer a TLS listener (docs/BENCHMARKS.md).
    #[arg(long)]
    tls_dir: Option<PathBuf>,
}

impl BenchArgs {
    pub(crate) fn run(self, runtime: &tokio::runtime::Runtime) -> ExitCode {
        let BenchArgs {
            devices,
            messages,
            qos,
            broker,
            broker_inflight,
            edge_bin,
            spool,
            tls_dir,
        } = self;
        {
            let broker = match broker.as_deref().map(|b| b.rsplit_once(':')) {
                None => None,
                Some(Some((host, port))) if port.parse::<u16>().is_ok() => {
                    Some((host.to_owned(), port.parse().unwrap_or(1883)))
                }
                Some(_) => {
                    eprintln!("--broker must be host:port");
                    return ExitCode::from(2);
                }
            };
            let edge_bin = edge_bin.unwrap_or_else(|| {
                std::env::current_exe()
                    .ok()
                    .and_then(|e| e.parent().map(|d| d.join("edge-agent")))
                    .unwrap_or_default()
            });
            let opts = lab::bench::BenchOptions {
                devices,
                messages,
                qos,
                broker: broker.clone(),
                broker_inflight,
                edge_bin,
                timeout: Duration::from_secs(300),
                spool,
                tls: tls_dir.clone(),
            };
            let name = broker.map_or("rumqttd (embedded)".to_string(), |(h, p)| {
                format!("{h}:{p}{}", if tls_dir.is_some() { " (TLS)" } else { "" })
            });
            match runtime.block_on(lab::bench::run(opts.clone())) {
                Ok(report) => {
                    println!(
                        "| broker | spool | devices | messages | QoS | plain subscriber msg/s | edge agent msg/s | hub end to end readings/s | edge peak RSS | edge CPU per message | uplink bytes/reading |"
                    );
                    println!("|---|---|---|---|---|---|---|---|---|---|---|");
                    println!("{}", report.markdown_row(&opts, &name));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("bench failed: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
