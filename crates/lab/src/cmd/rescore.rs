//! `iot-lab rescore`: run an archived range (the scored table) through another
//! model; results go to the rescored table under hub=<model>_<version>, originals
//! untouched.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub(crate) struct RescoreArgs {
    /// Archive root (the hub's <data-dir>/archive by default layout).
    #[arg(
        long,
        required_unless_present = "hub_config",
        conflicts_with = "hub_config"
    )]
    archive: Option<PathBuf>,
    /// Instead of --archive: the archive this hub configuration names, in
    /// its bucket with `[archive.s3]` (read from and written to the bucket).
    #[arg(long)]
    hub_config: Option<PathBuf>,
    #[arg(long)]
    model_dir: PathBuf,
    /// Start of the event-time range (RFC 3339 or epoch s/ms/µs).
    #[arg(long)]
    from: Option<String>,
    /// End of the range (exclusive).
    #[arg(long)]
    to: Option<String>,
    #[arg(long, default_value_t = 200)]
    warmup_readings: u32,
}

impl RescoreArgs {
    pub(crate) fn run(self, _runtime: &tokio::runtime::Runtime) -> ExitCode {
        let RescoreArgs {
            archive,
            hub_config,
            model_dir,
            from,
            to,
            warmup_readings,
        } = self;
        {
            let parse = |t: &Option<String>| -> Result<Option<i64>, String> {
                t.as_deref()
                    .map(|t| edge_agent::replay::parse_time(t).ok_or(format!("bad time '{t}'")))
                    .transpose()
            };
            let (from_us, to_us) = match (parse(&from), parse(&to)) {
                (Ok(f), Ok(t)) => (f, t),
                (Err(e), _) | (_, Err(e)) => {
                    eprintln!("rescore: {e}");
                    return ExitCode::from(2);
                }
            };
            let (archive, bucket) = match (archive, hub_config) {
                (Some(archive), _) => (archive, None),
                (None, Some(path)) => match crate::cmd::hub_config(&path) {
                    Ok(config) => (config.archive_root(), config.archive.s3),
                    Err(e) => {
                        eprintln!("rescore: {e:#}");
                        return ExitCode::from(2);
                    }
                },
                (None, None) => unreachable!("clap requires one"),
            };
            let opts = lab::rescore::RescoreOptions {
                archive,
                bucket,
                model_dir,
                from_us,
                to_us,
                warmup_readings,
            };
            match lab::rescore::run(&opts, |done, total, readings| {
                eprintln!("rescored {done}/{total} hour partitions, {readings} readings");
            }) {
                Ok(r) => {
                    println!(
                        "{} readings in {} hour partitions rescored ({} anomaly events) into rescored/.../{}",
                        r.readings, r.partitions, r.anomalous, r.output_hub_dir
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("rescore failed: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
