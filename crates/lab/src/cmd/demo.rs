//! `iot-lab demo`: run the whole pipeline on this machine: embedded broker,
//! hub, two edge agents and simulated devices.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args)]
pub(crate) struct DemoArgs {
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
    #[arg(long, default_value_os_t = inference_hub::config::shipped_model("novelty"))]
    model_dir: PathBuf,
}

impl DemoArgs {
    pub(crate) fn run(self, runtime: &tokio::runtime::Runtime) -> ExitCode {
        let DemoArgs {
            duration,
            data_dir,
            datasets,
            listen,
            rate,
            model_dir,
        } = self;
        {
            let opts = lab::demo::DemoOptions {
                duration,
                data_dir,
                datasets: datasets.is_dir().then_some(datasets),
                http_listen: listen,
                rate,
                model_dir,
            };
            match runtime.block_on(lab::demo::run(opts)) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("demo failed: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
