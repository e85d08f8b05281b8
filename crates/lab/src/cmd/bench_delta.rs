//! `iot-lab bench-delta`: commit latency of a Delta table as the log grows,
//! with and without checkpoints (see docs/BENCHMARKS.md).

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub(crate) struct BenchDeltaArgs {
    /// Commits in all (one data-file entry each).
    #[arg(long, default_value_t = 3000)]
    commits: usize,
    /// A checkpoint after every this many commits (0: none).
    #[arg(long, default_value_t = 0)]
    checkpoint_every: usize,
    /// Commits per reported window.
    #[arg(long, default_value_t = 500)]
    window: usize,
    /// The table's directory (default: a fresh temporary one); with
    /// `--s3-endpoint`, the table's prefix in the bucket.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Writers committing to the table at once (as hubs on one archive).
    #[arg(long, default_value_t = 1)]
    writers: usize,
    /// An S3-compatible endpoint (e.g. moto_server's `http://127.0.0.1:5000`):
    /// the table goes in `--bucket` there, through the hub's S3 client
    /// (credentials from `AWS_*` or `test`/`test`).
    #[arg(long)]
    s3_endpoint: Option<String>,
    /// Each writer starts a commit at most every this many milliseconds (0:
    /// back to back), as a hub commits once per rotated file.
    #[arg(long, default_value_t = 0)]
    pace_ms: u64,
    /// The bucket for `--s3-endpoint` (must exist).
    #[arg(long, default_value = "bench")]
    bucket: String,
}

impl BenchDeltaArgs {
    pub(crate) fn run(self) -> ExitCode {
        let scratch = self.dir.is_none() && self.s3_endpoint.is_none();
        let dir = self.dir.unwrap_or_else(|| match &self.s3_endpoint {
            Some(_) => PathBuf::from(format!("bench-delta-{}", std::process::id())),
            None => std::env::temp_dir().join(format!("iot-bench-delta-{}", std::process::id())),
        });
        let s3 = self.s3_endpoint.map(|endpoint| {
            let key = |name: &str| std::env::var(name).unwrap_or_else(|_| "test".into());
            inference_hub::archive::s3::S3Settings {
                bucket: self.bucket.clone(),
                prefix: String::new(),
                allow_http: endpoint.starts_with("http://"),
                endpoint: Some(endpoint),
                region: std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()),
                access_key_id: Some(key("AWS_ACCESS_KEY_ID")),
                secret_access_key: Some(key("AWS_SECRET_ACCESS_KEY")),
                upload: Default::default(),
            }
        });
        let opts = lab::bench_delta::DeltaBenchOptions {
            commits: self.commits,
            checkpoint_every: self.checkpoint_every,
            window: self.window,
            dir,
            writers: self.writers,
            s3,
            pace: std::time::Duration::from_millis(self.pace_ms),
        };
        let result = lab::bench_delta::bench(&opts);
        if scratch {
            let _ = std::fs::remove_dir_all(&opts.dir);
        }
        match result {
            Ok(report) => {
                println!(
                    "commits: {}, writers: {} (pace {} ms), checkpoint every: {}, {:.0} commits/s overall, {:.0} commits/min per writer, {} versions lost to another writer and retried",
                    opts.commits,
                    opts.writers,
                    opts.pace.as_millis(),
                    match opts.checkpoint_every {
                        0 => "never".to_owned(),
                        n => format!("{n} versions"),
                    },
                    report.commits_per_s,
                    report.commits_per_min_per_writer,
                    report.conflicts,
                );
                println!("| versions from | commit p50 ms | p99 ms | max ms |");
                println!("|---|---|---|---|");
                for w in &report.windows {
                    println!(
                        "| {} | {:.2} | {:.2} | {:.2} |",
                        w.first_version, w.p50_ms, w.p99_ms, w.max_ms
                    );
                }
                if !report.checkpoint_ms.is_empty() {
                    let mut c = report.checkpoint_ms.clone();
                    c.sort_by(f64::total_cmp);
                    println!(
                        "checkpoints: {}, median {:.1} ms, max {:.1} ms",
                        c.len(),
                        c[c.len() / 2],
                        c[c.len() - 1]
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("bench-delta: {e}");
                ExitCode::FAILURE
            }
        }
    }
}
