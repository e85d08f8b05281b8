//! Encryption and credentials of one MQTT connection.
//!
//! Every MQTT client of the pipeline (the agent's gateway and uplink
//! connections, the hub's intake) takes the same keys: `username`,
//! `password` or `password-file`, and a `[*.tls]` table
//! ([`iot_tls::ClientTls`]). [`LinkSecurity`] applies them to the client's
//! options, and again before every reconnection ([`LinkSecurity::refresh`]),
//! so a rotated client certificate, CA bundle or password file is used from
//! the next connection on without a restart; a bad new file is refused with
//! an ERROR and the last good one stays in use.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use iot_tls::{ClientTls, Refresh, Reloading, Secret, TlsError, rustls};
use rumqttc::{MqttOptions, TlsConfiguration, Transport};

/// The security settings of one MQTT link, as its configuration gives them.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinkSettings<'a> {
    pub username: Option<&'a str>,
    pub password: Option<&'a Secret>,
    pub password_file: Option<&'a Path>,
    pub tls: Option<&'a ClientTls>,
}

/// Applies a link's security to its client options, now and at every
/// reconnection.
#[derive(Debug)]
pub struct LinkSecurity {
    username: Option<String>,
    inline_password: Option<Secret>,
    password_file: Option<PathBuf>,
    /// The password last read (kept when a re-read fails).
    password: Mutex<Option<Secret>>,
    tls: Option<Reloading<rustls::ClientConfig>>,
}

impl LinkSecurity {
    /// Reads every file once: an error here is a start-up error.
    pub fn new(what: &str, s: LinkSettings<'_>) -> Result<Self, TlsError> {
        let password = iot_tls::read_secret("password", s.password, s.password_file)?;
        if password.is_some() && s.username.is_none() {
            return Err(TlsError::Settings(format!(
                "{what}: a password needs a username"
            )));
        }
        let tls = match s.tls {
            Some(tls) => {
                let cfg = tls.clone();
                Some(Reloading::new(
                    format!("{what} TLS"),
                    tls.files(),
                    move || cfg.load(),
                )?)
            }
            None => None,
        };
        Ok(Self {
            username: s.username.map(str::to_owned),
            inline_password: s.password.cloned(),
            password_file: s.password_file.map(Path::to_owned),
            password: Mutex::new(password),
            tls,
        })
    }

    /// Whether the link is encrypted.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Sets the transport and credentials of `opts` from the current files.
    pub fn apply(&self, opts: &mut MqttOptions) {
        if let Some(tls) = &self.tls {
            opts.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls.current())));
        }
        if let Some(user) = &self.username {
            let password = self.password.lock().expect("not poisoned").clone();
            opts.set_credentials(
                user.clone(),
                password.as_ref().map(Secret::expose).unwrap_or_default(),
            );
        }
    }

    /// Re-reads changed files (a rotated certificate, key, CA bundle or
    /// password file) and applies what is good; called before reconnecting.
    pub fn refresh(&self, opts: &mut MqttOptions) {
        if let Some(tls) = &self.tls {
            // A refused set is logged by Reloading; the last good one stays.
            let _: Refresh = tls.refresh();
        }
        if self.password_file.is_some() {
            match iot_tls::read_secret(
                "password",
                self.inline_password.as_ref(),
                self.password_file.as_deref(),
            ) {
                Ok(p) => *self.password.lock().expect("not poisoned") = p,
                Err(e) => {
                    tracing::error!(error = %e, "cannot re-read the MQTT password file; the last one read stays in use")
                }
            }
        }
        self.apply(opts);
    }
}
