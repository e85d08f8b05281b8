//! `iot-lab eval`: detection quality on labelled recordings, through the
//! production scoring path (see docs/DETECTION.md).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

#[derive(clap::Args)]
pub(crate) struct EvalArgs {
    #[command(subcommand)]
    dataset: EvalDataset,
}

#[derive(Subcommand)]
pub(crate) enum EvalDataset {
    /// NAB layout: <data>/<category>/<file>.csv with timestamp,value. Writes
    /// <out>/<category>/iothub_<file>.csv (NAB's results format) and, with
    /// --labels, prints NAB scores for the three profiles.
    Nab {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// NAB's combined_windows.json.
        #[arg(long)]
        labels: Option<PathBuf>,
        #[arg(long, default_value_os_t = inference_hub::config::shipped_model("novelty"))]
        model_dir: PathBuf,
        /// Readings per series before it is scored (the hub's scoring.warmup-readings).
        #[arg(long, default_value_t = 200)]
        warmup_readings: u32,
        /// Also score at the threshold frozen in the model's manifest.
        #[arg(long)]
        frozen_threshold: bool,
        /// Turn a novelty model's spatial rule off (what it contributes).
        #[arg(long)]
        without_spatial_rule: bool,
    },
    /// SKAB layout: <data>/<group>/<n>.csv, semicolon-separated, with the
    /// anomaly column; prints point-wise F1, false- and missed-alarm rates
    /// under SKAB's protocol and over all rows, and one machine-readable
    /// line for each.
    Skab {
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value_os_t = inference_hub::config::shipped_model("state-monitor"))]
        model_dir: PathBuf,
        #[arg(long, default_value_t = 200)]
        warmup_readings: u32,
        /// Instead: score a grid of the state monitor's drift and chart
        /// settings and choose among them by group-wise cross-validation
        /// (each of SKAB's groups held out in turn).
        #[arg(long)]
        cross_validate: bool,
    },
}

impl EvalArgs {
    pub(crate) fn run(self, _runtime: &tokio::runtime::Runtime) -> ExitCode {
        let EvalArgs { dataset } = self;
        {
            let result = match dataset {
                EvalDataset::Nab {
                    data,
                    out,
                    labels,
                    model_dir,
                    warmup_readings,
                    frozen_threshold,
                    without_spatial_rule,
                } => lab::eval::run_nab(&lab::eval::NabOptions {
                    data,
                    out: out.clone(),
                    labels: labels.clone(),
                    model_dir,
                    warmup_readings,
                    frozen_threshold,
                    without_spatial_rule,
                })
                .map(|r| {
                    if labels.is_some() {
                        print!("{}", lab::eval::nab_markdown(&r));
                    } else {
                        println!("{} files, {} rows", r.files, r.rows);
                    }
                    println!("results written under {}", out.display());
                }),
                EvalDataset::Skab {
                    data,
                    model_dir,
                    warmup_readings,
                    cross_validate,
                } => {
                    let o = lab::eval::SkabOptions {
                        data,
                        model_dir,
                        warmup_readings,
                    };
                    if cross_validate {
                        lab::eval::load_model(&o.model_dir, false)
                            .and_then(|m| lab::eval::skab_cv::cross_validate(&m, &o))
                            .map(|cv| print!("{}", lab::eval::skab_cv::markdown(&cv)))
                    } else {
                        lab::eval::run_skab(&o).map(|r| print!("{}", lab::eval::skab_markdown(&r)))
                    }
                }
            };
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("eval failed: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
