//! The signals on which both binaries stop gracefully.

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (systemd, Kubernetes).
pub async fn wait_for_stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
