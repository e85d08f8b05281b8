//! The client side: which servers to trust and which certificate to show.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{TlsError, pem};

/// A `[*.tls]` table of a client link (an MQTT connection, the HTTPS
/// uplink). Present means the link is encrypted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ClientTls {
    /// PEM bundle of the CAs that may sign the server's certificate.
    pub ca_file: Option<PathBuf>,
    /// Also trust the operating system's roots (for a public broker or a
    /// hub behind a public CA).
    #[serde(default)]
    pub system_roots: bool,
    /// This client's certificate chain (PEM), for mutual TLS...
    pub cert_file: Option<PathBuf>,
    /// ...and its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
}

impl ClientTls {
    /// Every file this configuration reads (what [`crate::Reloading`]
    /// watches).
    pub fn files(&self) -> Vec<PathBuf> {
        [&self.ca_file, &self.cert_file, &self.key_file]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// The rustls client configuration: reads and checks every file.
    pub fn load(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let mut roots = match &self.ca_file {
            Some(path) => pem::roots(path)?,
            None => rustls::RootCertStore::empty(),
        };
        if self.system_roots {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "a system root certificate could not be read");
            }
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!("no usable system root certificates found");
            }
        }
        if roots.is_empty() {
            return Err(TlsError::Settings(
                "tls needs ca-file or system-roots = true: nothing would be trusted".into(),
            ));
        }
        let builder = rustls::ClientConfig::builder_with_provider(crate::provider())
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Rustls {
                what: "protocol versions",
                source,
            })?
            .with_root_certificates(roots);
        let config = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                let (chain, der) = pem::chain_and_key(cert, key)?;
                builder
                    .with_client_auth_cert(chain, der)
                    .map_err(|e| pem::key_error(cert, key, "client certificate", e))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(TlsError::Settings(
                    "tls.cert-file and tls.key-file go together".into(),
                ));
            }
        };
        Ok(Arc::new(config))
    }
}
