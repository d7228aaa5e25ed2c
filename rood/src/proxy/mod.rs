//! The proxy: HTTP and HTTPS listeners, each request routed by host to an upstream.
//!
//! Top-down: [`spawn_workers`] starts the worker threads, whose loops accept connections (TLS
//! with a certificate per SNI from [`crate::certs`]) and hand each request to
//! [`handler::handle`], which finds the route in the current [`crate::routes::RouteTable`]
//! snapshot, then [`upstream`] picks an address and [`forward`] sends the request on (plain
//! HTTP/1.1 over the worker's [`pool`] of keep-alive connections), with [`headers`] fixing the
//! forwarding headers.

mod error;
mod forward;
pub mod handler;
mod headers;
mod pool;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use roo_acme::challenge::ACME_TLS_ALPN;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;
use tokio_util::sync::CancellationToken;

pub use error::ProxyError;

use crate::certs::is_acme_tls;
use crate::feed::Tables;
use crate::routes::Scheme;

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an ACME validation waits for a challenge this node has not applied yet: the CA may
/// validate as soon as the issuer's write commits, a moment before a follower applies it.
pub const CHALLENGE_WAIT: Duration = Duration::from_secs(2);
/// How long a TLS handshake may take.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections get to finish on shutdown.
const DRAIN: Duration = Duration::from_secs(10);

/// What the proxy's request path reads.
pub struct ProxyState {
    pub tables: Arc<Tables>,
    pub upstreams: upstream::Upstreams,
    pub limits: Limits,
    /// How long a TLS handshake for a routed https host without a certificate waits for one to
    /// be issued; zero without ACME.
    pub cert_wait: Duration,
    /// Woken by such a handshake: tells the local ACME issuer (if it runs here) to look now.
    pub acme_wake: Arc<tokio::sync::Notify>,
    pub metrics: Arc<crate::metrics::Metrics>,
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

/// Serves plain HTTP on `http` and HTTPS on `https` with one worker thread per state in
/// `workers`, each running a single-threaded runtime with its own upstream connections (as
/// nginx's worker processes): a request, its upstream connection and the answer stay on one
/// thread, without wake-ups across threads. The workers take turns accepting on both listeners.
/// Each returned task ends when its worker has drained after `shutdown`.
pub fn spawn_workers(
    workers: Vec<ProxyState>,
    http: TcpListener,
    https: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) -> std::io::Result<Vec<tokio::task::JoinHandle<()>>> {
    let (http, https) = (http.into_std()?, https.into_std()?);
    // The connection limit holds per listener, across workers.
    let max = workers.first().map_or(1, |w| w.limits.max_connections);
    let slots = (Arc::new(Semaphore::new(max)), Arc::new(Semaphore::new(max)));
    let mut tasks = Vec::new();
    for (i, state) in workers.into_iter().enumerate() {
        let (http, https) = (http.try_clone()?, https.try_clone()?);
        let (slots, tls, shutdown) = (slots.clone(), tls.clone(), shutdown.clone());
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name(format!("rood-proxy-{i}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let (http, https) = match (
                        TcpListener::from_std(http),
                        TcpListener::from_std(https),
                    ) {
                        (Ok(h), Ok(s)) => (h, s),
                        (Err(e), _) | (_, Err(e)) => {
                            tracing::error!(error = %e, worker = i, "proxy worker cannot listen");
                            return;
                        }
                    };
                    let state = Arc::new(state);
                    tokio::join!(
                        serve(http, state.clone(), None, slots.0, shutdown.clone()),
                        serve(https, state, Some(tls), slots.1, shutdown),
                    );
                });
                drop(done);
            })?;
        tasks.push(tokio::spawn(async move {
            let _ = finished.await;
        }));
    }
    Ok(tasks)
}

/// One worker's accept loop on one listener, until `shutdown`; then drains its connections.
async fn serve(
    listener: TcpListener,
    state: Arc<ProxyState>,
    tls: Option<Arc<rustls::ServerConfig>>,
    slots: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    let builder = Arc::new(builder(state.limits));
    let graceful = GracefulShutdown::new();
    let scheme = if tls.is_some() {
        Scheme::Https
    } else {
        Scheme::Http
    };
    let open_connections = state.metrics.connections(scheme.as_str());
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
        let conn_state = state.clone();
        // Boxed: hyper keeps room for this future per connection, idle or not.
        let service = service_fn(move |req| {
            let state = conn_state.clone();
            Box::pin(async move {
                Ok::<_, std::convert::Infallible>(handler::handle(&state, req, info).await)
            })
        });
        let open = open_connections.clone();
        open.inc();
        // Held for the connection's life: its slot, and its count in the gauge.
        let held = (
            slot,
            OnDrop(move || {
                open.dec();
            }),
        );
        let watcher = graceful.watcher();
        // Two tasks, not one with both branches: a plain connection's stays small.
        match &tls {
            None => {
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                let conn = watcher.watch(conn.into_owned());
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "client connection");
                    }
                    drop(held);
                });
            }
            Some(config) => {
                let (builder, state, config) = (builder.clone(), state.clone(), config.clone());
                tokio::spawn(async move {
                    let Some(tls_stream) = tls_accept(stream, config, &state, peer).await else {
                        return;
                    };
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(tls_stream), service);
                    if let Err(e) = watcher.watch(conn.into_owned()).await {
                        tracing::debug!(%peer, error = %e, "client connection");
                    }
                    drop(held);
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(%scheme, "connections still open after the drain timeout");
    }
}

/// The TLS handshake of a new connection, within [`TLS_HANDSHAKE_TIMEOUT`], counted; None when
/// it failed or was a TLS-ALPN-01 validation (the handshake was the answer).
async fn tls_accept(
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    state: &ProxyState,
    peer: SocketAddr,
) -> Option<TlsStream<TcpStream>> {
    let tls_stream =
        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls_handshake(stream, config, state))
            .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                state.metrics.tls_handshake_failures.inc();
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return None;
            }
            Err(_) => {
                state.metrics.tls_handshake_failures.inc();
                tracing::debug!(%peer, "TLS handshake timed out");
                return None;
            }
        };
    state.metrics.tls_handshakes.inc();
    if tls_stream.get_ref().1.alpn_protocol() == Some(ACME_TLS_ALPN) {
        tracing::info!(%peer, "answered a TLS-ALPN-01 validation");
        return None;
    }
    Some(tls_stream)
}

/// The server side of a TLS handshake. A handshake for a routed https host that has no
/// certificate yet waits up to [`ProxyState::cert_wait`] for the issuer to get one.
async fn tls_handshake(
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    state: &ProxyState,
) -> std::io::Result<TlsStream<TcpStream>> {
    let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
    let hello = start.client_hello();
    if is_acme_tls(&hello) {
        // A TLS-ALPN-01 validation may arrive a moment before this node applied the challenge
        // certificate the issuer just wrote.
        if let Some(name) = hello.server_name().map(str::to_string) {
            state
                .tables
                .wait_for(CHALLENGE_WAIT, |t| {
                    t.certs.load().challenge(&name).map(drop)
                })
                .await;
        }
        return start.into_stream(config).await;
    }
    let waiting_for = hello
        .server_name()
        .filter(|_| !state.cert_wait.is_zero())
        .filter(|name| {
            state.tables.certs.load().lookup(name).is_none()
                && state
                    .tables
                    .routes
                    .load()
                    .lookup(name, Scheme::Https)
                    .is_some()
        })
        .map(str::to_string);
    if let Some(name) = waiting_for {
        state.acme_wake.notify_one();
        let issued = state
            .tables
            .wait_for(state.cert_wait, |t| t.certs.load().lookup(&name).map(drop))
            .await;
        tracing::debug!(sni = %name, issued = issued.is_some(), "handshake waited for a certificate");
    }
    start.into_stream(config).await
}

/// Runs a closure when dropped (however the connection task ends).
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}
