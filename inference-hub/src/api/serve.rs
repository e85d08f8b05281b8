//! The HTTP listener: how connections are accepted and how long they may
//! take, so that idle, slow or numerous clients cannot take the hub down.
//!
//! - **A cap on open connections** (`http.max-connections`, and never more
//!   than half the process's open-file limit, so the WAL, the archive and
//!   the broker link always have descriptors left). At the cap the listener
//!   stops accepting; new clients wait in the kernel's backlog.
//! - **A header-read timeout** (`http.header-read-timeout`): a client must
//!   send a request's headers within it, and an idle keep-alive connection
//!   is closed after it (the timer restarts for every request). Bodies and
//!   handlers are bounded by `http.request-timeout` (see [`super::access`]).
//! - **Running out of descriptors is transient**: an `accept` that fails
//!   with EMFILE/ENFILE (or ENOBUFS/ENOMEM) is counted, logged once per
//!   episode, and retried after a short pause; nothing else is affected.
//!
//! - **HTTPS** (`[http.tls]`): the TLS handshake must finish within the
//!   header-read timeout too; it uses the certificate in force at that
//!   moment (see [`iot_tls::Reloading`]), so a rotated certificate serves
//!   new connections without a restart. A client certificate verified
//!   against the client CA names the gateway the connection may send for
//!   ([`PeerIdentity`], read by the batch route).
//!
//! On shutdown the listener stops accepting, asks every connection to finish
//! its current request, and waits for them (bounded by the grace period).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

use crate::stats::HubStats;

/// The HTTPS configuration in force (re-read when its files change).
pub type Https = Arc<iot_tls::Reloading<iot_tls::rustls::ServerConfig>>;

/// The names in a connection's verified client certificate (put in every
/// request's extensions on that connection).
#[derive(Debug, Clone)]
pub struct PeerIdentity(pub Vec<String>);

/// How the listener bounds its clients.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    /// How long shutdown waits for open connections.
    pub shutdown_grace: Duration,
}

/// The connection cap actually used: the configured one, but at most half
/// of the open-file limit.
pub fn effective_max_connections(configured: usize) -> usize {
    let files = open_file_limit().unwrap_or(1024);
    configured.min((files / 2) as usize).max(1)
}

/// The soft limit of open files, raised to the hard limit first (as a
/// server should: the soft default of 1024 is for interactive shells).
pub fn raise_open_file_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if let (Some(cur), Some(max)) = (limit.current, limit.maximum)
        && cur < max
    {
        limit.current = Some(max);
        if setrlimit(Resource::Nofile, limit).is_err() {
            return Some(cur);
        }
    }
    open_file_limit()
}

fn open_file_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// Errors of `accept` that mean "out of a resource for now", not "the
/// listener is broken".
fn is_resource_exhaustion(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    Errno::from_io_error(e)
        .is_some_and(|n| [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM].contains(&n))
}

/// Serves `app` on `listener` until `shutdown` flips.
pub async fn serve(
    listener: TcpListener,
    https: Option<Https>,
    app: Router,
    limits: ServeLimits,
    stats: Arc<HubStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (closing_tx, closing) = watch::channel(false);
    let mut starved = false;
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => p.expect("the semaphore is never closed"),
            _ = shutdown.changed() => break,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                if starved {
                    starved = false;
                    tracing::info!("the HTTP listener accepts connections again");
                }
                stream
            }
            Err(e) if is_resource_exhaustion(&e) => {
                stats.http_accept_errors.fetch_add(1, Relaxed);
                if !starved {
                    starved = true;
                    tracing::error!(error = %e, "the HTTP listener is out of descriptors or memory; retrying");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => {
                // A connection that failed between SYN and accept.
                tracing::debug!(error = %e, "accept failed");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        stats.http_connections.fetch_add(1, Relaxed);
        let mut closing = closing.clone();
        let stats = Arc::clone(&stats);
        let app = app.clone();
        let tls = https
            .as_ref()
            .map(|h| tokio_rustls::TlsAcceptor::from(h.current()));
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_connection(stream, app, None, limits, &mut closing, &stats).await,
                Some(acceptor) => {
                    // The handshake is bounded like a request's headers.
                    let handshake =
                        tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream));
                    match handshake.await {
                        Ok(Ok(tls)) => {
                            let peer = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|chain| chain.first())
                                .map(|cert| PeerIdentity(iot_tls::identity::names(cert)));
                            serve_connection(tls, app, peer, limits, &mut closing, &stats).await
                        }
                        Ok(Err(e)) => {
                            stats.http_tls_refused.fetch_add(1, Relaxed);
                            tracing::debug!(error = %e, "TLS handshake refused");
                        }
                        Err(_) => {
                            stats.http_tls_refused.fetch_add(1, Relaxed);
                            stats.http_timeouts.fetch_add(1, Relaxed);
                        }
                    }
                }
            }
            stats.http_connections.fetch_sub(1, Relaxed);
        });
    }
    drop(listener);
    let _ = closing_tx.send(true);
    // Every connection holds a permit: all back means all closed.
    let _ = tokio::time::timeout(
        limits.shutdown_grace,
        permits.acquire_many(limits.max_connections as u32),
    )
    .await;
}

/// Serves one connection (plain or TLS) until it ends or the listener
/// closes.
async fn serve_connection<S>(
    io: S,
    app: Router,
    peer: Option<PeerIdentity>,
    limits: ServeLimits,
    closing: &mut watch::Receiver<bool>,
    stats: &HubStats,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(
        app.map_request(move |req: Request<hyper::body::Incoming>| {
            let mut req = req.map(axum::body::Body::new);
            if let Some(peer) = &peer {
                req.extensions_mut().insert(peer.clone());
            }
            req
        })
        .map_err(|e: Infallible| match e {}),
    );
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = closing.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result
        && e.is_timeout()
    {
        stats.http_timeouts.fetch_add(1, Relaxed);
    }
}
