//! The proxy: HTTP and HTTPS listeners, each request routed by host to an upstream.
//!
//! Top-down: [`serve_http`] / [`serve_https`] accept connections (TLS with a certificate per SNI
//! from [`crate::certs`]) and hand each request to [`handler::handle`], which finds the route in
//! the current [`crate::routes::RouteTable`] snapshot, then [`upstream`] picks an address and
//! [`forward`] sends the request on, with [`headers`] fixing the forwarding headers.

mod error;
mod forward;
pub mod handler;
mod headers;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::ProxyError;

use crate::feed::Tables;
use crate::routes::Scheme;

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a TLS handshake may take.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections get to finish on shutdown.
const DRAIN: Duration = Duration::from_secs(10);

/// What the proxy's request path reads.
pub struct ProxyState {
    pub tables: Arc<Tables>,
    pub upstreams: upstream::Upstreams,
    pub limits: Limits,
}

/// Bounds on what clients may hold or send.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once on each listener; beyond, every request gets 503.
    pub max_connections: usize,
    /// Largest request header section, in bytes; beyond, 431.
    pub max_header_bytes: usize,
}

/// Who a request came from and on which listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub scheme: Scheme,
    /// The connection is over [`Limits::max_connections`]: answer 503 and close.
    pub over_limit: bool,
}

fn builder(limits: Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(limits.max_header_bytes);
    builder.http2().timer(TokioTimer::new());
    builder
}

/// Serves plain HTTP on `listener` until `shutdown`, then drains.
pub async fn serve_http(
    listener: TcpListener,
    state: Arc<ProxyState>,
    shutdown: CancellationToken,
) {
    serve(listener, state, None, shutdown).await
}

/// Serves HTTPS on `listener` until `shutdown`, then drains.
pub async fn serve_https(
    listener: TcpListener,
    state: Arc<ProxyState>,
    tls: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) {
    serve(
        listener,
        state,
        Some(tokio_rustls::TlsAcceptor::from(tls)),
        shutdown,
    )
    .await
}

async fn serve(
    listener: TcpListener,
    state: Arc<ProxyState>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let builder = Arc::new(builder(state.limits));
    let slots = Arc::new(tokio::sync::Semaphore::new(state.limits.max_connections));
    let graceful = GracefulShutdown::new();
    let scheme = if tls.is_some() {
        Scheme::Https
    } else {
        Scheme::Http
    };
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, %scheme, "accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        // Held for the connection's life; None: over the limit.
        let slot = slots.clone().try_acquire_owned().ok();
        let info = ConnInfo {
            peer,
            scheme,
            over_limit: slot.is_none(),
        };
        let state = state.clone();
        let service = service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, std::convert::Infallible>(handler::handle(&state, req, info).await) }
        });
        let (builder, watcher, tls) = (builder.clone(), graceful.watcher(), tls.clone());
        tokio::spawn(async move {
            let result = match tls {
                None => {
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    watcher.watch(conn.into_owned()).await
                }
                Some(acceptor) => {
                    let tls_stream =
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(tls_stream), service);
                    watcher.watch(conn.into_owned()).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "client connection");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(%scheme, "connections still open after the drain timeout");
    }
}
