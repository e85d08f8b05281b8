//! Telling the service manager about the process (systemd's `Type=notify`
//! protocol, through `sd-notify`): ready once it serves, alive while its
//! runtime keeps scheduling work, stopping once a stop signal arrived.
//! Without a manager (`NOTIFY_SOCKET` unset: a shell, a container) every call
//! does nothing.

use std::time::Duration;

use sd_notify::NotifyState;

/// `READY=1`: start-up is complete (systemd's `systemctl start` returns and
/// units ordered after this one start).
pub fn notify_ready() {
    send(&[NotifyState::Ready]);
}

/// `STOPPING=1`: the process is shutting down gracefully.
pub fn notify_stopping() {
    send(&[NotifyState::Stopping]);
}

/// When the manager asked for a watchdog (`WatchdogSec=`, seen as
/// `WATCHDOG_USEC`), sends `WATCHDOG=1` at a third of its period from a task
/// on the current Tokio runtime, so a runtime that stops scheduling tasks
/// (a worker blocked for good, a deadlock) is restarted by the manager.
/// Returns the interval, or `None` without a watchdog.
pub fn spawn_watchdog() -> Option<Duration> {
    let period = sd_notify::watchdog_enabled()?;
    let every = (period / 3).max(Duration::from_millis(100));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            send(&[NotifyState::Watchdog]);
        }
    });
    Some(every)
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "could not notify the service manager");
    }
}
