//! Rotation without a restart: a configuration rebuilt when its files
//! change.
//!
//! [`Reloading::refresh`] reads the files (they are small) and compares
//! their checksums with the set the current configuration was built from.
//! A changed set is built; if that fails (a half-written file, a key that
//! does not match its certificate, an expired or unknown format) the error
//! is logged once as an ERROR naming the files and the last good
//! configuration stays in force. Callers decide when to look: the hub's
//! listener polls on a timer and uses the current configuration for every
//! new handshake; the agent looks before each new connection.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::TlsError;

/// What a refresh did.
#[derive(Debug)]
pub enum Refresh {
    /// The files are as they were (or were looked at less than the minimum
    /// interval ago).
    Unchanged,
    /// The files changed and the new configuration is in force.
    Replaced,
    /// The files changed but do not make a configuration: the last good one
    /// stays in force.
    Refused(TlsError),
}

type Build<T> = Box<dyn Fn() -> Result<Arc<T>, TlsError> + Send + Sync>;

struct State<T> {
    current: Arc<T>,
    /// Checksums of the files the current configuration was built from.
    built_from: Vec<Option<u32>>,
    /// Checksums of a set that was refused (so it is reported once).
    refused: Option<Vec<Option<u32>>>,
    looked_at: Instant,
}

/// A configuration that follows its files.
pub struct Reloading<T> {
    what: String,
    files: Vec<PathBuf>,
    build: Build<T>,
    min_interval: Duration,
    state: Mutex<State<T>>,
}

impl<T> std::fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("what", &self.what)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

fn checksums(files: &[PathBuf]) -> Vec<Option<u32>> {
    files
        .iter()
        .map(|f| std::fs::read(f).ok().map(|b| crc32c::crc32c(&b)))
        .collect()
}

impl<T> Reloading<T> {
    /// Builds the first configuration (an error here is a start-up error).
    /// `what` names it in logs ("the hub's HTTPS certificate").
    pub fn new(
        what: impl Into<String>,
        files: Vec<PathBuf>,
        build: impl Fn() -> Result<Arc<T>, TlsError> + Send + Sync + 'static,
    ) -> Result<Self, TlsError> {
        let built_from = checksums(&files);
        let current = build()?;
        Ok(Self {
            what: what.into(),
            files,
            build: Box::new(build),
            min_interval: Duration::from_millis(500),
            state: Mutex::new(State {
                current,
                built_from,
                refused: None,
                looked_at: Instant::now(),
            }),
        })
    }

    /// The configuration in force.
    pub fn current(&self) -> Arc<T> {
        Arc::clone(&self.state.lock().expect("not poisoned").current)
    }

    /// Looks at the files (at most once per half second) and rebuilds the
    /// configuration if they changed.
    pub fn refresh(&self) -> Refresh {
        let mut state = self.state.lock().expect("not poisoned");
        if state.looked_at.elapsed() < self.min_interval {
            return Refresh::Unchanged;
        }
        state.looked_at = Instant::now();
        let now = checksums(&self.files);
        if now == state.built_from {
            state.refused = None;
            return Refresh::Unchanged;
        }
        match (self.build)() {
            Ok(config) => {
                state.current = config;
                state.built_from = now;
                state.refused = None;
                tracing::info!(what = %self.what, "reloaded from changed files; new connections use it");
                Refresh::Replaced
            }
            Err(e) => {
                if state.refused.as_ref() != Some(&now) {
                    tracing::error!(what = %self.what, error = %e, "changed files refused; the last good configuration stays in force");
                    state.refused = Some(now);
                }
                Refresh::Refused(e)
            }
        }
    }

    /// Looks now, whatever the minimum interval (tests, SIGHUP).
    pub fn refresh_now(&self) -> Refresh {
        self.state.lock().expect("not poisoned").looked_at -= self.min_interval;
        self.refresh()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientTls, ServerTls};

    struct Pki {
        dir: tempfile::TempDir,
        ca: rcgen::Issuer<'static, rcgen::KeyPair>,
    }

    impl Pki {
        fn new() -> Self {
            let ca_key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let cert = params.self_signed(&ca_key).unwrap();
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("ca.pem"), cert.pem()).unwrap();
            let ca = rcgen::Issuer::new(params, ca_key);
            Self { dir, ca }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        /// Writes `<name>.pem` and `<name>.key` for a leaf with these names.
        fn leaf(&self, name: &str, sans: &[&str]) {
            let key = rcgen::KeyPair::generate().unwrap();
            let params = rcgen::CertificateParams::new(
                sans.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
            .unwrap();
            let cert = params.signed_by(&key, &self.ca).unwrap();
            std::fs::write(self.path(&format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).unwrap();
        }

        fn server(&self) -> ServerTls {
            ServerTls {
                cert_file: self.path("server.pem"),
                key_file: self.path("server.key"),
                client_ca_file: Some(self.path("ca.pem")),
                require_client_cert: true,
            }
        }
    }

    #[test]
    fn good_files_load_and_every_bad_one_is_named() {
        let pki = Pki::new();
        pki.leaf("server", &["localhost"]);
        pki.leaf("other", &["other"]);
        pki.server().load().unwrap();
        let client = ClientTls {
            ca_file: Some(pki.path("ca.pem")),
            cert_file: Some(pki.path("server.pem")),
            key_file: Some(pki.path("server.key")),
            system_roots: false,
        };
        client.load().unwrap();

        let mismatched = ServerTls {
            key_file: pki.path("other.key"),
            ..pki.server()
        };
        let e = mismatched.load().unwrap_err();
        assert!(matches!(e, TlsError::KeyMismatch { .. }), "{e}");
        assert!(e.to_string().contains("other.key"), "{e}");

        let missing = ServerTls {
            cert_file: pki.path("absent.pem"),
            ..pki.server()
        };
        assert!(
            missing
                .load()
                .unwrap_err()
                .to_string()
                .contains("absent.pem")
        );

        std::fs::write(pki.path("garbage.pem"), "not pem at all").unwrap();
        let garbage = ServerTls {
            key_file: pki.path("garbage.pem"),
            ..pki.server()
        };
        let e = garbage.load().unwrap_err();
        assert!(matches!(e, TlsError::NoKey { .. }), "{e}");
        // The error never holds key material.
        let key_pem = std::fs::read_to_string(pki.path("server.key")).unwrap();
        let body = key_pem.lines().nth(1).unwrap();
        assert!(!format!("{e:?}").contains(body));

        let nothing_trusted = ClientTls::default();
        assert!(nothing_trusted.load().is_err());
    }

    #[test]
    fn changed_files_replace_the_configuration_and_bad_ones_keep_the_last_good() {
        let pki = Pki::new();
        pki.leaf("server", &["localhost"]);
        let cfg = pki.server();
        let files = cfg.files();
        let reloading = Reloading::new("test server", files, move || cfg.load()).unwrap();
        let first = reloading.current();
        assert!(matches!(reloading.refresh_now(), Refresh::Unchanged));

        // A new certificate without its key: refused, the old one stays.
        let old_key = std::fs::read(pki.path("server.key")).unwrap();
        pki.leaf("server", &["localhost"]);
        let new_key = std::fs::read(pki.path("server.key")).unwrap();
        std::fs::write(pki.path("server.key"), &old_key).unwrap();
        assert!(matches!(
            reloading.refresh_now(),
            Refresh::Refused(TlsError::KeyMismatch { .. })
        ));
        assert!(Arc::ptr_eq(&first, &reloading.current()));

        // Its key arrives: replaced.
        std::fs::write(pki.path("server.key"), &new_key).unwrap();
        assert!(matches!(reloading.refresh_now(), Refresh::Replaced));
        assert!(!Arc::ptr_eq(&first, &reloading.current()));
        assert!(matches!(reloading.refresh_now(), Refresh::Unchanged));
    }
}
