//! The server side: the hub's HTTPS listener.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{TlsError, pem};

/// The `[http.tls]` table of the hub. Present means the listener speaks
/// HTTPS only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ServerTls {
    /// The server's certificate chain (PEM).
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
    /// PEM bundle of the CAs that sign client (gateway) certificates. With
    /// it, a client may present a certificate, and one that does is known
    /// by its identity (see [`crate::identity`]).
    pub client_ca_file: Option<PathBuf>,
    /// Refuse the handshake of a client without a valid certificate.
    #[serde(default)]
    pub require_client_cert: bool,
}

impl ServerTls {
    /// Every file this configuration reads.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.cert_file.clone(), self.key_file.clone()];
        files.extend(self.client_ca_file.clone());
        files
    }

    /// The rustls server configuration: reads and checks every file.
    pub fn load(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let (chain, der) = pem::chain_and_key(&self.cert_file, &self.key_file)?;
        let builder = rustls::ServerConfig::builder_with_provider(crate::provider())
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Rustls {
                what: "protocol versions",
                source,
            })?;
        let builder = match &self.client_ca_file {
            Some(ca) => {
                let roots = Arc::new(pem::roots(ca)?);
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    roots,
                    crate::provider(),
                );
                let verifier = if self.require_client_cert {
                    verifier
                } else {
                    verifier.allow_unauthenticated()
                };
                let verifier = verifier
                    .build()
                    .map_err(|e| TlsError::Settings(format!("client certificate verifier: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
            None if self.require_client_cert => {
                return Err(TlsError::Settings(
                    "http.tls.require-client-cert needs http.tls.client-ca-file".into(),
                ));
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, der).map_err(|e| {
            pem::key_error(&self.cert_file, &self.key_file, "server certificate", e)
        })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}
