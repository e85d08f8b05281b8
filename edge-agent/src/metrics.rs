//! A minimal HTTP endpoint for the agent's own observability:
//! `GET /metrics` (Prometheus text) and `GET /health`.
//!
//! Hand-written on tokio rather than a web framework: the agent stays small
//! for ARM gateways, and two read-only routes need nothing more. Requests are
//! read with a size limit and a timeout; anything else gets 404/405.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::stats::EdgeStats;

const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Binds `listen` and serves until `shutdown` flips. Returns the bound
/// address (useful with port 0).
pub async fn serve(
    listen: SocketAddr,
    stats: Arc<EdgeStats>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let task =
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "metrics endpoint accept failed");
                            continue;
                        }
                    },
                    _ = shutdown.changed() => return,
                };
                let stats = Arc::clone(&stats);
                tokio::spawn(async move {
                    let response =
                        match tokio::time::timeout(Duration::from_secs(5), read_head(&mut socket))
                            .await
                        {
                            Ok(Some(head)) => respond(&head, &stats),
                            _ => http(400, "text/plain", "bad request\n"),
                        };
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
    Ok((addr, task))
}

async fn read_head(socket: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() + n > MAX_REQUEST_HEAD {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(buf).ok()
}

fn respond(head: &str, stats: &EdgeStats) -> String {
    let mut parts = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    match (method, path.split('?').next().unwrap_or_default()) {
        ("GET", "/metrics") => http(200, iot_metrics::CONTENT_TYPE, &stats.render_prometheus()),
        ("GET", "/health") => health(stats),
        ("GET", _) => http(404, "text/plain", "not found\n"),
        _ => http(405, "text/plain", "method not allowed\n"),
    }
}

/// `503` while the spool cannot write (nothing new is acknowledged to
/// devices), `200` with `"degraded"` while it is full, else `200` `"ok"`.
fn health(stats: &EdgeStats) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    if stats.spool_failed.load(Relaxed) == 1 {
        http(
            503,
            "application/json",
            "{\"status\":\"failing\",\"reason\":\"the spool cannot write or fsync; device messages are not being acknowledged\"}\n",
        )
    } else if stats.spool_full.load(Relaxed) == 1 {
        http(
            200,
            "application/json",
            "{\"status\":\"degraded\",\"reason\":\"the spool is full; device messages wait at the broker\"}\n",
        )
    } else {
        http(200, "application/json", "{\"status\":\"ok\"}\n")
    }
}

fn http(status: u16, content_type: &str, body: &str) -> String {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        503 => "Service Unavailable",
        _ => "Method Not Allowed",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use super::*;

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_prometheus_text_and_health() {
        let stats = Arc::new(EdgeStats::default());
        stats.readings_accepted.fetch_add(42, Relaxed);
        let (_tx, rx) = watch::channel(false);
        let (addr, _task) = serve("127.0.0.1:0".parse().unwrap(), Arc::clone(&stats), rx)
            .await
            .unwrap();
        let metrics = get(addr, "/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(
            metrics.contains("edge_readings_accepted_total 42"),
            "{metrics}"
        );
        assert!(get(addr, "/health").await.contains("\"ok\""));
        stats.spool_full.store(1, Relaxed);
        assert!(get(addr, "/health").await.contains("\"degraded\""));
        stats.spool_failed.store(1, Relaxed);
        assert!(get(addr, "/health").await.starts_with("HTTP/1.1 503"));
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
    }
}
