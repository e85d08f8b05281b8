//! A small PKI for the pipeline's links (`iot-lab pki`, and the tests'
//! certificates): one CA, a server certificate for the broker, one for each
//! hub (its HTTPS listener and its MQTT client identity) and a client
//! certificate for each gateway.
//!
//! Every leaf carries its name twice: as the subject's CN (what Mosquitto's
//! `use_identity_as_username` reads, so the broker's ACLs see the gateway
//! or hub id) and as a subjectAltName DNS name (what the hub reads, see
//! `iot_tls::identity`). Server certificates also carry the host names and
//! IP addresses clients connect to. Keys are ECDSA P-256, written with mode
//! 0600.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// A CA that signs the pipeline's certificates.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (PEM).
    pub ca_pem: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A TLS server (the broker).
    Server,
    /// A TLS client (a gateway).
    Client,
    /// Both (a hub: its HTTPS listener and its broker connection).
    Both,
}

/// A certificate and its key, as PEM.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

/// When a leaf is valid: from one day ago for `days` days (negative: a
/// certificate that has already expired).
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub days: i64,
}

impl Default for Validity {
    fn default() -> Self {
        Self { days: 825 }
    }
}

/// Midnight (UTC) `offset_days` from today, as rcgen's validity bound.
fn set_validity(params: &mut CertificateParams, from_days: i64, to_days: i64) {
    use chrono::Datelike;
    let day = |offset: i64| {
        let d = chrono::Utc::now().date_naive() + chrono::Duration::days(offset);
        rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8)
    };
    params.not_before = day(from_days);
    params.not_after = day(to_days);
}

impl Authority {
    /// A new CA named `name`.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut params, -1, 3650);
        let cert = params.self_signed(&key)?;
        Ok(Self {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A leaf for `name` (CN and first subjectAltName), with `extra` host
    /// names or IP addresses.
    pub fn leaf(
        &self,
        name: &str,
        extra: &[&str],
        role: Role,
        validity: Validity,
    ) -> anyhow::Result<Leaf> {
        let key = KeyPair::generate()?;
        let sans: Vec<String> = std::iter::once(name)
            .chain(extra.iter().copied())
            .map(str::to_owned)
            .collect();
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match role {
            Role::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Role::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Role::Both => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        if validity.days >= 0 {
            set_validity(&mut params, -1, validity.days);
        } else {
            set_validity(&mut params, validity.days - 30, validity.days);
        }
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Writes `<dir>/<name>.pem` and `<dir>/<name>.key` (0600); returns both
/// paths.
pub fn write_leaf(dir: &Path, name: &str, leaf: &Leaf) -> anyhow::Result<(PathBuf, PathBuf)> {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, &leaf.cert_pem).with_context(|| cert.display().to_string())?;
    write_private(&key, &leaf.key_pem)?;
    Ok((cert, key))
}

/// Writes a file only its owner can read.
pub fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| path.display().to_string())?;
    f.write_all(text.as_bytes())
        .with_context(|| path.display().to_string())
}

/// The whole set `iot-lab pki` writes: `ca.pem` (and `ca.key`), the
/// broker's, each hub's and each gateway's certificate and key. Returns the
/// CA, to sign more.
pub fn create(
    dir: &Path,
    hosts: &[&str],
    hubs: &[&str],
    gateways: &[&str],
    validity: Validity,
) -> anyhow::Result<Authority> {
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    let ca = Authority::new("iot-pipeline CA")?;
    std::fs::write(dir.join("ca.pem"), &ca.ca_pem)?;
    write_private(&dir.join("ca.key"), &ca.issuer.key().serialize_pem())?;
    write_leaf(
        dir,
        "broker",
        &ca.leaf("broker", hosts, Role::Server, validity)?,
    )?;
    for hub in hubs {
        write_leaf(dir, hub, &ca.leaf(hub, hosts, Role::Both, validity)?)?;
    }
    for gw in gateways {
        write_leaf(dir, gw, &ca.leaf(gw, &[], Role::Client, validity)?)?;
    }
    Ok(ca)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_set_loads_as_the_pipeline_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        create(
            dir.path(),
            &["localhost", "127.0.0.1"],
            &["hub-1"],
            &["gw-a"],
            Validity::default(),
        )
        .unwrap();
        let p = |n: &str| dir.path().join(n);
        let server = iot_tls::ServerTls {
            cert_file: p("hub-1.pem"),
            key_file: p("hub-1.key"),
            client_ca_file: Some(p("ca.pem")),
            require_client_cert: true,
        };
        server.load().unwrap();
        let client = iot_tls::ClientTls {
            ca_file: Some(p("ca.pem")),
            system_roots: false,
            cert_file: Some(p("gw-a.pem")),
            key_file: Some(p("gw-a.key")),
        };
        client.load().unwrap();
        let pem = std::fs::read(p("gw-a.pem")).unwrap();
        use iot_tls::rustls::pki_types::pem::PemObject;
        let der = iot_tls::rustls::pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
        assert_eq!(iot_tls::identity::names(&der), vec!["gw-a"]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(p("gw-a.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
