//! The signals on which both binaries stop gracefully.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// SIGINT (Ctrl-C) and SIGTERM (systemd, Kubernetes), listened for from
/// [`StopSignal::install`] on: a signal that arrives while a binary is
/// still starting is kept and stops it once started, instead of killing it
/// (the default action) half-way through its start.
#[derive(Debug)]
pub struct StopSignal {
    interrupt: Signal,
    terminate: Signal,
}

impl StopSignal {
    /// Installs the handlers (inside a Tokio runtime).
    pub fn install() -> Self {
        Self {
            interrupt: signal(SignalKind::interrupt()).expect("install a SIGINT handler"),
            terminate: signal(SignalKind::terminate()).expect("install a SIGTERM handler"),
        }
    }

    /// Resolves on the first SIGINT or SIGTERM since [`StopSignal::install`].
    pub async fn wait(mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
