//! `iot-lab pki`: a CA and the certificates of the broker, the hubs and the
//! gateways, written to one directory (see `lab::pki`).

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub(crate) struct PkiArgs {
    /// Where to write `ca.pem`, `ca.key`, `broker.*`, `<hub>.*`, `<gateway>.*`.
    #[arg(long)]
    out: PathBuf,
    /// Host names and IP addresses clients use to reach the broker and the
    /// hubs' HTTPS listeners.
    #[arg(long = "host", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
    hosts: Vec<String>,
    /// Hub ids (each gets a certificate for HTTPS and for its broker login).
    #[arg(long = "hub")]
    hubs: Vec<String>,
    /// Gateway ids (each gets a client certificate naming it).
    #[arg(long = "gateway")]
    gateways: Vec<String>,
    /// Days the leaf certificates are valid.
    #[arg(long, default_value_t = 825)]
    days: i64,
}

fn str_refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

impl PkiArgs {
    pub(crate) fn run(self) -> ExitCode {
        match lab::pki::create(
            &self.out,
            &str_refs(&self.hosts),
            &str_refs(&self.hubs),
            &str_refs(&self.gateways),
            lab::pki::Validity { days: self.days },
        ) {
            Ok(_) => {
                println!(
                    "wrote a CA, the broker's certificate, {} hub and {} gateway certificates to {} \
                     (keep ca.key offline; each *.key goes to its machine only)",
                    self.hubs.len(),
                    self.gateways.len(),
                    self.out.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pki: {e:#}");
                ExitCode::FAILURE
            }
        }
    }
}
