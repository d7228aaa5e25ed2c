//! The proxy: HTTP and HTTPS listeners, each request routed by host to an upstream.
//!
//! Top-down: [`spawn_workers`] starts the worker threads (each kept on a CPU of its own by
//! [`affinity`], when asked), whose loops accept connections (TLS with a certificate per SNI
//! from [`crate::certs`]) and serve them: HTTP/1.x by [`h1`] (plain connections idle for a while
//! wait in the worker's [`park`] lot), HTTP/2 by hyper. Each
//! request goes to [`handler::handle`], which finds the route in the current
//! [`crate::routes::RouteTable`] snapshot, runs its phases (the route's middlewares among them),
//! then [`upstream`] picks an address and [`forward`] sends the request on (plain HTTP/1.1 over
//! the worker's [`pool`] of keep-alive connections), with [`headers`] fixing the forwarding
//! headers. The response filters see the answer's [`head`] and may [`compress`] its body.
//! [`wire`] is the HTTP/1.1 both sides speak.

mod affinity;
mod compress;
mod error;
mod forward;
mod h1;
pub mod handler;
mod head;
mod headers;
pub mod health;
mod park;
mod pool;
pub mod upstream;
mod wire;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use roo_acme::challenge::ACME_TLS_ALPN;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use error::{BodyError, ProxyError};

use crate::certs::{self, is_acme_tls};
use crate::report::{Handshake, Level, Report};
use crate::routes::Scheme;
use crate::tables::Tables;

/// The error of a body streamed through the proxy (from the client, an upstream, or ours).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every body the proxy passes on: requests to upstreams, answers to clients.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// A body with nothing in it.
fn empty_body() -> ProxyBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

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
    /// The HTTPS port clients use, when it is not 443: redirects to https name it.
    pub https_port: Option<u16>,
    /// How long a TLS handshake for a routed https host without a certificate waits for one to
    /// be issued; zero without ACME.
    pub cert_wait: Duration,
    /// Woken by such a handshake: tells the local ACME issuer (if it runs here) to look now.
    pub acme_wake: Arc<tokio::sync::Notify>,
    /// Where this worker tells of its work.
    pub report: Arc<dyn Report>,
}

/// Bounds on what clients may hold or send.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once on each listener; beyond, every request gets 503.
    pub max_connections: usize,
    /// Largest request header section, in bytes; beyond, 431.
    pub max_header_bytes: usize,
    /// How long a client may take to send a request's head once begun, and to begin its first.
    pub header_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// How long a client may send nothing mid-body.
    pub body_timeout: Duration,
}

/// Who a request came from and on which listener.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The peer's address as the forwarding headers give it.
    pub client_ip: headers::IpText,
    pub scheme: Scheme,
    /// The connection is over [`Limits::max_connections`]: answer 503 and close.
    pub over_limit: bool,
    /// On TLS: the certificate the connection presented, for the names it may serve.
    pub presented: Option<Arc<certs::Presented>>,
}

impl ConnInfo {
    fn new(peer: SocketAddr, scheme: Scheme, over_limit: bool) -> ConnInfo {
        ConnInfo {
            peer,
            client_ip: headers::IpText::new(peer.ip()),
            scheme,
            over_limit,
            presented: None,
        }
    }
}

/// Serves plain HTTP on `http` and HTTPS on `https` with one worker thread per state in
/// `workers`, each running a single-threaded runtime with its own upstream connections (as
/// nginx's worker processes): a request, its upstream connection and the answer stay on one
/// thread, without wake-ups across threads. One task per listener (on the caller's runtime)
/// accepts and hands each connection to the worker with the fewest open: workers accepting on a
/// shared socket themselves took them in bursts, at times every connection on one worker.
/// `pin`: each worker stays on a CPU of its own ([`affinity`]).
/// Each returned task ends when its worker has drained after `shutdown`, or its listener closed.
pub fn spawn_workers(
    workers: Vec<ProxyState>,
    http: TcpListener,
    https: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    pin: bool,
    shutdown: CancellationToken,
) -> std::io::Result<Vec<tokio::task::JoinHandle<()>>> {
    // The connection limit holds per listener, across workers.
    let max = workers.first().map_or(1, |w| w.limits.max_connections);
    let cpus = match pin.then(affinity::allowed) {
        Some(Ok(allowed)) => {
            tracing::info!(
                ?allowed,
                workers = workers.len(),
                "proxy workers pinned to CPUs"
            );
            affinity::plan(&allowed, workers.len())
        }
        Some(Err(e)) => {
            tracing::warn!(error = %e, "the CPUs rood may run on are unknown; proxy workers not pinned");
            Vec::new()
        }
        None => Vec::new(),
    };
    let mut tasks = Vec::new();
    let (mut to_http, mut to_https) = (Vec::new(), Vec::new());
    for (i, state) in workers.into_iter().enumerate() {
        let cpu = cpus.get(i).copied();
        let (http_tx, http_rx) = mpsc::unbounded_channel();
        let (https_tx, https_rx) = mpsc::unbounded_channel();
        let load = Arc::new(AtomicUsize::new(0));
        to_http.push(Worker {
            accepted: http_tx,
            load: load.clone(),
        });
        to_https.push(Worker {
            accepted: https_tx,
            load: load.clone(),
        });
        // A token of the worker's own: every connection waits on it between requests, and
        // waiting on one token from both threads had them share its waiter list's lock.
        let (tls, shutdown) = (tls.clone(), shutdown.child_token());
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name(format!("rood-proxy-{i}"))
            .spawn(move || {
                if let Some(cpu) = cpu {
                    if let Err(e) = affinity::pin_current_thread(cpu) {
                        tracing::warn!(error = %e, worker = i, cpu, "proxy worker not pinned");
                    }
                }
                runtime.block_on(async move {
                    let state = Arc::new(state);
                    tokio::join!(
                        serve(http_rx, state.clone(), None, load.clone(), shutdown.clone()),
                        serve(https_rx, state, Some(tls), load, shutdown),
                    );
                });
                drop(done);
            })?;
        tasks.push(tokio::spawn(async move {
            let _ = finished.await;
        }));
    }
    for (listener, workers) in [(http, to_http), (https, to_https)] {
        let slots = Arc::new(Semaphore::new(max));
        tasks.push(tokio::spawn(accept(
            listener,
            workers,
            slots,
            shutdown.clone(),
        )));
    }
    Ok(tasks)
}

/// A worker as its listener's accept loop sees it.
struct Worker {
    accepted: mpsc::UnboundedSender<Accepted>,
    /// Connections open on the worker (both listeners).
    load: Arc<AtomicUsize>,
}

/// A connection accepted for a worker.
struct Accepted {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    /// Held for the connection's life; None: over the limit.
    slot: Option<OwnedSemaphorePermit>,
}

/// Accepts on `listener` until `shutdown`, each connection going to the worker with the fewest
/// open.
async fn accept(
    listener: TcpListener,
    workers: Vec<Worker>,
    slots: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let slot = slots.clone().try_acquire_owned().ok();
        // Leaves this runtime for the worker's.
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, %peer, "accepted connection");
                continue;
            }
        };
        let Some(worker) = workers
            .iter()
            .filter(|w| !w.accepted.is_closed())
            .min_by_key(|w| w.load.load(Ordering::Relaxed))
        else {
            break;
        };
        worker.load.fetch_add(1, Ordering::Relaxed);
        if worker
            .accepted
            .send(Accepted { stream, peer, slot })
            .is_err()
        {
            worker.load.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// One worker's connections from one listener, until `shutdown`; then drains them. `load`
/// counts the worker's open connections.
async fn serve(
    mut accepted: mpsc::UnboundedReceiver<Accepted>,
    state: Arc<ProxyState>,
    tls: Option<Arc<rustls::ServerConfig>>,
    load: Arc<AtomicUsize>,
    shutdown: CancellationToken,
) {
    let connections = TaskTracker::new();
    let scheme = if tls.is_some() {
        Scheme::Https
    } else {
        Scheme::Http
    };
    let open_connections = state.report.open_connections(scheme);
    // Plain connections idle for a while wait in the lot (TLS ones keep their session in
    // their task).
    let (mut lot, mut waiter) = match tls {
        None => match park::ParkingLot::new(open_connections.clone(), load.clone()) {
            Ok((lot, waiter)) => (Some(lot), Some(waiter)),
            Err(e) => {
                tracing::warn!(error = %e, "no parking lot for idle connections");
                (None, None)
            }
        },
        Some(_) => (None, None),
    };
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    loop {
        let mut lot_failed = false;
        {
            let (lot, waiter) = (lot.as_ref(), waiter.as_mut());
            tokio::select! {
                next = accepted.recv() => {
                    let Some(Accepted { stream, peer, slot }) = next else { break };
                    open_connections.inc();
                    let held = Held {
                        slot,
                        open: open_connections.clone(),
                        load: load.clone(),
                    };
                    let stream = match TcpStream::from_std(stream) {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(error = %e, %peer, "connection handed to a worker");
                            continue;
                        }
                    };
                    let info = ConnInfo::new(peer, scheme, held.slot.is_none());
                    let (state, shutdown) = (state.clone(), shutdown.clone());
                    // Two tasks, not one with both branches: a plain connection's stays small.
                    match (&tls, lot) {
                        (None, lot) => {
                            let plain = Plain { state, info, held, lot: lot.cloned(), shutdown };
                            connections.spawn(plain.serve(stream, true));
                        }
                        (Some(config), _) => {
                            let tls = Tls { state, info, held, config: config.clone(), shutdown };
                            connections.spawn(tls.serve(stream));
                        }
                    }
                }
                woken = async { Some(waiter?.woken(lot?).await) }, if waiter.is_some() => {
                    let woken = match woken {
                        Some(Ok(woken)) => woken,
                        _ => {
                            lot_failed = true;
                            Vec::new()
                        }
                    };
                    for (stream, held) in woken {
                        // Its peer asked again: the lot keeps no more than the socket.
                        let stream = match TcpStream::from_std(stream) {
                            Ok(s) => s,
                            Err(e) => {
                                tracing::debug!(error = %e, "parked connection");
                                continue;
                            }
                        };
                        let Ok(peer) = stream.peer_addr() else { continue };
                        let plain = Plain {
                            state: state.clone(),
                            info: ConnInfo::new(peer, scheme, false),
                            held,
                            lot: lot.cloned(),
                            shutdown: shutdown.clone(),
                        };
                        connections.spawn(plain.serve(stream, false));
                    }
                }
                _ = sweep.tick(), if lot.is_some() => {
                    if let Some(lot) = lot {
                        // A connection is parked once idle for a while already.
                        lot.expire(state.limits.idle_timeout.saturating_sub(park::PARK_AFTER));
                    }
                }
                _ = shutdown.cancelled() => break,
            }
        }
        if lot_failed {
            // Its epoll set failed: what was parked closes, and idle connections stay tasks.
            tracing::warn!("the parking lot for idle connections failed; parking no more");
            if let Some(lot) = lot.take() {
                lot.close();
            }
            waiter = None;
        }
    }
    if let Some(lot) = &lot {
        lot.close();
    }
    drop(accepted);
    connections.close();
    if tokio::time::timeout(DRAIN, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(%scheme, "connections still open after the drain timeout");
    }
}

/// A plain connection's task: HTTP/1.x (or HTTP/2 by its preface), parked when idle.
struct Plain {
    state: Arc<ProxyState>,
    info: ConnInfo,
    held: Held,
    lot: Option<Arc<park::ParkingLot>>,
    shutdown: CancellationToken,
}

impl Plain {
    /// Serves the connection; `new`: it has not sent a request yet.
    async fn serve(self, stream: TcpStream, new: bool) {
        let Plain {
            state,
            info,
            held,
            lot,
            shutdown,
        } = self;
        let park_after = lot.as_ref().map(|_| park::PARK_AFTER);
        match h1::serve::<_, h1::Inline>(stream, &state, &info, new, park_after, &shutdown).await {
            Ok(h1::Outcome::Closed) => {}
            Ok(h1::Outcome::Parked(stream)) => {
                if let Some(lot) = lot.filter(|_| !shutdown.is_cancelled()) {
                    if let Err(e) = lot.park(stream, held) {
                        tracing::debug!(peer = %info.peer, error = %e, "parking a connection");
                    }
                }
            }
            Ok(h1::Outcome::Http2(io)) => Box::pin(serve_h2(io, state, info, shutdown)).await,
            Err(e) => tracing::debug!(peer = %info.peer, error = %e, "client connection"),
        }
    }
}

/// A TLS connection's task: the handshake, then HTTP/2 or HTTP/1.x as ALPN chose.
struct Tls {
    state: Arc<ProxyState>,
    info: ConnInfo,
    held: Held,
    config: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
}

impl Tls {
    async fn serve(self, stream: TcpStream) {
        let Tls {
            state,
            info,
            held,
            config,
            shutdown,
        } = self;
        if let Some(tls) = tls_accept(stream, config, &state, info.peer).await {
            let info = ConnInfo {
                presented: tls.get_ref().1.server_name().and_then(|sni| {
                    let cert = state.tables.certs.load().lookup(sni).cloned()?;
                    Some(Arc::new(certs::Presented::new(sni, cert)))
                }),
                ..info
            };
            if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                Box::pin(serve_h2(tls, state, info, shutdown)).await;
            } else {
                serve_connection(tls, &state, info, &shutdown).await;
            }
        }
        drop(held);
    }
}

/// A client connection, HTTP/1.x until it shows itself HTTP/2.
async fn serve_connection<T>(
    io: T,
    state: &Arc<ProxyState>,
    info: ConnInfo,
    shutdown: &CancellationToken,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static,
{
    match h1::serve::<_, h1::Boxed>(io, state, &info, true, None, shutdown).await {
        Ok(h1::Outcome::Closed | h1::Outcome::Parked(_)) => {}
        Ok(h1::Outcome::Http2(io)) => {
            Box::pin(serve_h2(io, state.clone(), info.clone(), shutdown.clone())).await
        }
        Err(e) => tracing::debug!(peer = %info.peer, error = %e, "client connection"),
    }
}

/// An HTTP/2 client connection, served by hyper; on shutdown it is told to finish its streams.
async fn serve_h2<T>(io: T, state: Arc<ProxyState>, info: ConnInfo, shutdown: CancellationToken)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = info.peer;
    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let (state, info) = (state.clone(), info.clone());
        Box::pin(async move {
            let req = req.map(|b| b.map_err(BoxError::from).boxed());
            // A stream's own timer: the connection's streams are answered at once.
            let alarm = std::pin::pin!(tokio::time::sleep(state.upstreams.timeout));
            let mut resp = handler::handle(&state, req, &info, alarm).await;
            wire::Lines::move_to_map(&mut resp);
            Ok::<_, std::convert::Infallible>(resp)
        })
    });
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let done = tokio::select! {
        done = conn.as_mut() => done,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = done {
        tracing::debug!(%peer, error = %e, "client connection");
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
                state.report.tls_handshake(Handshake::Failed);
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return None;
            }
            Err(_) => {
                state.report.tls_handshake(Handshake::Failed);
                tracing::debug!(%peer, "TLS handshake timed out");
                return None;
            }
        };
    state
        .report
        .tls_handshake(match tls_stream.get_ref().1.handshake_kind() {
            Some(rustls::HandshakeKind::Resumed) => Handshake::Resumed,
            _ => Handshake::Full,
        });
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
    let uncertified = hello
        .server_name()
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
    if let Some(name) = uncertified {
        let acme = !state.cert_wait.is_zero();
        let issued = if acme {
            state.acme_wake.notify_one();
            let issued = state
                .tables
                .wait_for(state.cert_wait, |t| t.certs.load().lookup(&name).map(drop))
                .await;
            tracing::debug!(sni = %name, issued = issued.is_some(), "handshake waited for a certificate");
            issued.is_some()
        } else {
            false
        };
        // A routed host whose handshakes fail: its operator needs to hear of it, once in a while.
        static NO_CERTIFICATE: roo_kv::throttle::Throttles =
            roo_kv::throttle::Throttles::new(Duration::from_secs(60));
        if !issued {
            if let Some(held_back) = NO_CERTIFICATE.ready(&name) {
                let why = if acme {
                    "no certificate yet; ACME is on (`rooctl certs ls` shows its order and last error)"
                } else {
                    "no certificate under com.roo.cert: and ACME is off"
                };
                tracing::warn!(host = %name, why, held_back, "TLS handshake failed for a routed host");
            }
        }
    }
    start.into_stream(config).await
}

/// What a connection holds for its life, wherever it is (task or parking lot): its slot under
/// the connection limit, and its counts.
pub struct Held {
    slot: Option<OwnedSemaphorePermit>,
    open: Level,
    load: Arc<AtomicUsize>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.open.dec();
        self.load.fetch_sub(1, Ordering::Relaxed);
    }
}
