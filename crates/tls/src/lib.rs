//! TLS for every link of the pipeline, built once: the agent's connections
//! to its gateway broker, to the cloud broker and to a hub over HTTPS, the
//! hub's connection to its broker, and the hub's own HTTPS listener.
//!
//! - **One crypto provider**: rustls with `ring` ([`provider`]); it
//!   cross-compiles for aarch64 and armv7 without cmake or an assembler, and
//!   aws-lc-rs stays out of the tree.
//! - [`ClientTls`] / [`ServerTls`]: the `[*.tls]` tables of both
//!   configurations (CA bundle, certificate and key from PEM files, system
//!   roots optional, client certificates optional or required) and the
//!   rustls configurations built from them. Every file problem is a
//!   [`TlsError`] that names the file (never its content).
//! - [`Secret`]: a password or token that prints as `<redacted>` in logs,
//!   errors and `Debug`, read inline or from a file ([`read_secret`]).
//! - [`Reloading`]: a configuration rebuilt when one of its files changes
//!   (rotation without a restart); a bad new set of files is refused with an
//!   ERROR and the last good configuration stays in force.
//! - [`identity`]: which gateway a verified client certificate stands for
//!   (its subjectAltName DNS names).

mod client;
pub mod identity;
mod pem;
mod reload;
mod secret;
mod server;

use std::path::PathBuf;
use std::sync::Arc;

pub use client::ClientTls;
pub use reload::{Refresh, Reloading};
pub use rustls;
pub use secret::{Secret, read_secret};
pub use server::ServerTls;

/// The crypto provider of every TLS configuration in the pipeline.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why a TLS configuration could not be built. Names files, never their
/// content.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: PathBuf },
    #[error("{path} is not valid PEM: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("the key in {key} does not belong to the certificate in {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{what}: {source}")]
    Rustls {
        what: &'static str,
        source: rustls::Error,
    },
    #[error("{0}")]
    Settings(String),
}
