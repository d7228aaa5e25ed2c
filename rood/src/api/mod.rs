//! The HTTP API on the admin port (`--api-addr`, default :6299).
//!
//! Roo-compatible where Roo had it (`/roo/ping`, `/roo/v1/kv`, `/roo/v1/kvs`), plus typed routes
//! and their history, cluster membership, watch streams, and the raft RPCs between nodes
//! (mounted from `roo_kv::network`).
//! With peer TLS on, the port speaks TLS only and marks requests whose client certificate
//! chains to the cluster CA (`roo_kv::network::tls`).
//! Every error is one JSON line `{"ok":false,"error":"..."}` with the status that fits.

pub mod auth;
mod cluster;
pub(crate) mod events;
mod kv;
mod pprof;
pub(crate) mod reply;
mod rollouts;
pub(crate) mod routes;
mod stats;
mod watch;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::sync::Arc;

use roo_acme::Issuer;
use roo_kv::network::tls::PeerCertificate;
use roo_kv::Kv;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub use reply::{ApiError, Body};

use crate::acme::KvStore;
use crate::metrics::Metrics;
use crate::tables::Tables;

/// What every handler can reach.
#[derive(Clone)]
pub struct Api {
    pub kv: Kv,
    pub tokens: auth::Tokens,
    /// Cancelled when the node stops: long-lived answers (watch streams) end.
    pub shutdown: CancellationToken,
    pub metrics: Arc<Metrics>,
    /// The tables the proxy serves (for metrics).
    pub tables: Arc<Tables>,
    /// The ACME issuer, when ACME is on (for metrics).
    pub acme: Option<Issuer<KvStore>>,
    /// This node's recent counts by backend.
    pub stats: Arc<crate::stats::Stats>,
    /// The addresses the health checks took out of rotation (for the dashboard).
    pub down: Arc<crate::proxy::health::Down>,
    /// The dashboard's logins and renders.
    pub ui: Arc<crate::ui::Dashboard>,
    /// Whether the port speaks TLS (the dashboard's cookie is then `Secure`).
    pub tls: bool,
}

/// How long a TLS client may take over its handshake on the API port.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the API on `listener` (TLS only when `tls` is given: peer TLS is on) until the API's
/// shutdown token is cancelled, then drains open connections for up to `drain`.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    api: Api,
    drain: Duration,
) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let acceptor = tls.map(TlsAcceptor::from);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "api accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = api.shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            builder: builder.clone(),
            watcher: graceful.watcher(),
            api: api.clone(),
            peer,
        };
        let Some(acceptor) = acceptor.clone() else {
            tokio::spawn(conn.serve(stream, None));
            continue;
        };
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::info!(%peer, error = %e, "api TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(%peer, "api TLS handshake timed out");
                        return;
                    }
                };
            // rustls only keeps a client certificate that chains to the cluster CA.
            let node = stream
                .get_ref()
                .1
                .peer_certificates()
                .is_some_and(|chain| !chain.is_empty());
            conn.serve(stream, node.then_some(PeerCertificate)).await;
        });
    }
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("api connections still open after the drain timeout");
    }
}

/// One accepted API connection.
struct Conn {
    builder: auto::Builder<TokioExecutor>,
    watcher: Watcher,
    api: Api,
    peer: SocketAddr,
}

impl Conn {
    /// Serves its requests, marking each as a peer's when the client certificate was one.
    async fn serve<I>(self, io: I, node: Option<PeerCertificate>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let api = self.api;
        let service = service_fn(move |mut req: Request<Incoming>| {
            if let Some(node) = node {
                req.extensions_mut().insert(node);
            }
            let api = api.clone();
            async move { Ok::<_, Infallible>(route(&api, req).await) }
        });
        let conn = self.builder.serve_connection(TokioIo::new(io), service);
        if let Err(e) = self.watcher.watch(conn).await {
            tracing::debug!(peer = %self.peer, error = %e, "api connection");
        }
    }
}

/// Finds the handler for a request.
pub async fn route(api: &Api, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    if let Some(route) = path.strip_prefix(crate::stats::PEER_PATH) {
        // Between nodes too: the same peer check as raft's.
        return stats::peer(api, route, &req).unwrap_or_else(|e| e.into_response());
    }
    if path == crate::stats::PEER_BRIEF_PATH {
        return stats::peer_briefs(api, &req).unwrap_or_else(|e| e.into_response());
    }
    if path == crate::ui::PREFIX || path.starts_with("/ui/") {
        // Its own login: a session cookie, not the bearer token.
        return crate::ui::handle(api, &path, req).await;
    }
    if path.starts_with(roo_kv::network::RPC_PREFIX) {
        // Between nodes: the cluster secret, checked by roo-kv.
        return roo_kv::network::server::handle(&api.kv, req)
            .await
            .map(reply::boxed);
    }
    let result = match api.tokens.access(req.headers()) {
        Err(e) => Err(e),
        Ok(access) => handle(api, &path, access, req).await,
    };
    result.unwrap_or_else(|e| e.into_response())
}

async fn handle(
    api: &Api,
    path: &str,
    access: auth::Access,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    if path == "/roo/ping" {
        only(&req, &[Method::GET, Method::HEAD]).map(|()| reply::text(StatusCode::OK, "PONG"))
    } else if let Some(what) = path.strip_prefix(pprof::PREFIX) {
        only(&req, &[Method::GET])?;
        api.tokens.require_admin(access)?;
        pprof::pprof(what, &req).await
    } else if path == "/metrics" {
        only(&req, &[Method::GET])?;
        let stats = api.acme.as_ref().map(Issuer::stats);
        let page = api.metrics.render(&api.kv, &api.tables, stats).await;
        let mut resp = reply::bytes(page.into_bytes());
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
        );
        Ok(resp)
    } else if let Some(key) = path.strip_prefix("/roo/v1/kv/") {
        kv::kv(api, access, key, req).await
    } else if path == "/roo/v1/kvs" || path.starts_with("/roo/v1/kvs/") {
        let prefix = path.strip_prefix("/roo/v1/kvs").unwrap_or_default();
        let prefix = prefix.strip_prefix('/').unwrap_or(prefix);
        only(&req, &[Method::GET])?;
        kv::scan(api, access, prefix, &req).await
    } else if path == "/roo/v1/watch" || path.starts_with("/roo/v1/watch/") {
        let prefix = path.strip_prefix("/roo/v1/watch").unwrap_or_default();
        let prefix = prefix.strip_prefix('/').unwrap_or(prefix);
        only(&req, &[Method::GET])?;
        watch::watch(api, access, prefix, &req)
    } else if path == events::PATH {
        events::events(api, access, req).await
    } else if path == events::WEBHOOKS_PATH {
        events::webhooks(api, req).await
    } else if path == routes::PREFIX || path.starts_with("/roo/v1/routes/") {
        routes::routes(api, access, path, req).await
    } else if let Some(route) = path.strip_prefix(stats::PREFIX) {
        only(&req, &[Method::GET])?;
        api.tokens
            .require_reader(access, crate::routes::ROUTE_PREFIX)?;
        stats::stats(api, route, &req).await
    } else if path.starts_with(rollouts::PREFIX) {
        rollouts::rollouts(api, access, path, req).await
    } else if path == "/roo/v1/cluster" || path.starts_with("/roo/v1/cluster/") {
        cluster::cluster(api, access, path, req).await
    } else {
        Err(ApiError::NotFound)
    }
}

/// Fails with 405 unless the request uses one of `methods`.
fn only<B>(req: &Request<B>, methods: &[Method]) -> Result<(), ApiError> {
    if methods.contains(req.method()) {
        Ok(())
    } else {
        Err(ApiError::MethodNotAllowed(methods.to_vec()))
    }
}

/// The value of query parameter `name`, percent-decoded.
pub(crate) fn query_param(uri: &http::Uri, name: &str) -> Result<Option<String>, ApiError> {
    let Some(query) = uri.query() else {
        return Ok(None);
    };
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == name {
            let v = percent_encoding::percent_decode_str(v)
                .decode_utf8()
                .map_err(|_| {
                    ApiError::BadRequest(format!("query parameter {name} is not UTF-8"))
                })?;
            return Ok(Some(v.into_owned()));
        }
    }
    Ok(None)
}

/// Query parameter `name` as a number.
fn query_u64(uri: &http::Uri, name: &str) -> Result<Option<u64>, ApiError> {
    query_param(uri, name)?
        .map(|v| {
            v.parse().map_err(|_| {
                ApiError::BadRequest(format!(
                    "query parameter {name}={v:?} is not a revision number"
                ))
            })
        })
        .transpose()
}

/// `?consistency=stale` reads the local copy; anything else but `linearizable` is refused.
fn consistency(uri: &http::Uri) -> Result<roo_kv::Consistency, ApiError> {
    match query_param(uri, "consistency")?.as_deref() {
        None | Some("linearizable") => Ok(roo_kv::Consistency::Linearizable),
        Some("stale") => Ok(roo_kv::Consistency::Stale),
        Some(other) => Err(ApiError::BadRequest(format!(
            "consistency={other:?}: use linearizable or stale"
        ))),
    }
}

/// A key or prefix from the path, percent-decoded.
fn decode_path(raw: &str) -> Result<String, ApiError> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ApiError::BadRequest("key is not valid UTF-8".into()))
}

/// The route named in the path (`<host>[:<port>]:<scheme>`, percent-encoded), checked.
pub(crate) fn route_key(raw: &str) -> Result<crate::routes::RouteKey, ApiError> {
    let name = decode_path(raw)?;
    crate::routes::RouteKey::parse(&format!("{}{name}", crate::routes::ROUTE_PREFIX))
        .map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// How much of a body over the limit is still read (and dropped) before the 413 goes out, and for
/// how long. A client that is still writing when the answer comes and the connection closes sees
/// "broken pipe" instead of the 413 (HTTP/1.1 has no way to stop a sender mid-body), so bodies up
/// to this size are drained first; beyond it the connection is closed at once.
const DRAIN_LIMIT: u64 = 16 * 1024 * 1024;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Request body up to `limit` bytes; 413 beyond.
pub(crate) async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt;
    let too_large =
        |len: u64| ApiError::TooLarge(format!("body is {len} bytes, the limit is {limit}"));
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared.filter(|&len| len > DRAIN_LIMIT) {
        return Err(too_large(len));
    }
    let mut body = req.into_body();
    let mut kept = bytes::BytesMut::new();
    let mut seen: u64 = 0;
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ApiError::BadRequest(format!("reading body: {e}")))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            seen += data.len() as u64;
            if seen > DRAIN_LIMIT {
                break;
            }
            if seen <= limit as u64 {
                kept.extend_from_slice(&data);
            }
        }
        Ok(())
    };
    match tokio::time::timeout(DRAIN_TIMEOUT, read).await {
        Ok(Err(e)) => Err(e),
        _ if seen > limit as u64 => Err(declared.map_or_else(
            || ApiError::TooLarge(format!("body is over the limit of {limit} bytes")),
            too_large,
        )),
        Ok(Ok(())) => Ok(kept.freeze()),
        Err(_) => Err(ApiError::BadRequest("timed out reading the body".into())),
    }
}
