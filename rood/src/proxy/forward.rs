//! Sending a request upstream and streaming the answer back.

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use http::{Request, Response, Uri, Version};
use tokio::time::Sleep;

use super::headers;
use super::upstream::{Addrs, SendError};
use super::{ConnInfo, ProxyBody, ProxyError, ProxyState};
use crate::report::Upstream;
use crate::routes::middleware::FieldChange;
use crate::routes::Backend;

/// Whether a request asks to switch protocols (WebSocket and the like).
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(http::header::UPGRADE)
        && req
            .headers()
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// The backend a request goes to, the address token a sticky client is bound to, and the
/// fields its route sets or removes in the request and in the answer.
#[derive(Debug, Clone, Copy)]
pub struct Chosen<'a> {
    pub backend: &'a Backend,
    pub bound: Option<u64>,
    pub request_changes: &'a [FieldChange],
    pub answer_changes: &'a [FieldChange],
}

/// Sends `req` (come at `started`) to one of the backend's addresses; on a refused connection of
/// a request that is safe to send again (idempotent, no body), once more to another address,
/// each try within the upstream timeout (kept on `alarm`, see [`within`]). An upgrade that the
/// upstream accepts (101) comes back with the upstream's side of it for the client connection to
/// tunnel to. `host`: the request's, as the client sent it.
pub async fn forward(
    state: &ProxyState,
    chosen: Chosen<'_>,
    host: &str,
    req: Request<ProxyBody>,
    info: &ConnInfo,
    started: Instant,
    mut alarm: Pin<&mut Sleep>,
) -> Result<(Response<ProxyBody>, Upstream), ProxyError> {
    let Chosen {
        backend,
        bound,
        request_changes,
        answer_changes,
    } = chosen;
    // TLS destinations are named by host (for SNI and the certificate check); their addresses
    // rotate inside the TLS connector. Plain ones are resolved here, address by address.
    let addrs = if backend.tls() {
        Addrs::new()
    } else {
        state.upstreams.resolve(&backend.destinations).await?
    };
    let upgrade = is_upgrade(&req) && !backend.h2c;
    // gRPC needs `te: trailers`, which is hop-by-hop but allowed on HTTP/2.
    let wants_trailers = backend.h2c
        && req
            .headers()
            .get(http::header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    let (mut parts, body) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    let forwarded = headers::Forwarded::new(&info.client_ip, info.scheme, host, request_changes);
    parts.version = if backend.h2c {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    if wants_trailers {
        parts
            .headers
            .insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    }
    let upstreams = &state.upstreams;
    let resendable = parts.method.is_idempotent() && hyper::body::Body::is_end_stream(&body);
    // Only a plain backend with another address to try can send the request twice: copy the
    // head for that case alone.
    let may_retry = resendable && addrs.len() > 1;
    let mut body = Some(body);
    let mut parts = Some(parts);

    let mut tried = None;
    loop {
        let no_target = || ProxyError::Upstream {
            addr: host.to_string(),
            reason: "no address left to try".into(),
        };
        let (upstream, addr) = if backend.tls() {
            let d = upstreams
                .pick_destination(&backend.destinations)
                .ok_or_else(no_target)?;
            (
                Upstream::Tls(format!("https://{}:{}", d.host, d.port).into()),
                None,
            )
        } else {
            // A sticky client's address first, while it is there and not left out.
            let bound = bound
                .filter(|_| tried.is_none())
                .and_then(|token| upstreams.pick_bound(&addrs, token));
            let addr = bound
                .or_else(|| upstreams.pick(&addrs, tried))
                .ok_or_else(no_target)?;
            (Upstream::Addr(addr), Some(addr))
        };
        let upstream_body = match body.take() {
            Some(b) if !resendable => b,
            _ => super::empty_body(),
        };
        let mut head = match &parts {
            Some(p) if may_retry && tried.is_none() => p.clone(),
            _ => parts.take().ok_or_else(no_target)?,
        };
        // Plain HTTP/1.1 goes on a connection to `addr` with the request's own target (the pool
        // writes its path); hyper's clients (TLS, h2c) are given the upstream in the URI.
        if backend.tls() || backend.h2c {
            head.uri = absolute(&upstream.to_string(), &head.uri)?;
        }
        let upstream_req = Request::from_parts(head, upstream_body);
        // The first try's clock is the request's: read once.
        let sent_at = match tried {
            None => started,
            Some(_) => Instant::now(),
        };
        // Pinned where it is made: the sending's future is large, and not moved again.
        let send = std::pin::pin!(upstreams.send(
            backend,
            addr,
            upstream_req,
            &forwarded,
            answer_changes,
            sent_at,
        ));
        let sent = within(alarm.as_mut(), sent_at + upstreams.timeout, send).await;
        let error = match sent {
            Some(Ok(resp)) => return Ok((resp, upstream)),
            None => ProxyError::Timeout {
                addr: upstream.to_string(),
                secs: upstreams.timeout.as_secs(),
            },
            Some(Err(SendError::Connect(reason))) => {
                if let Some(addr) = addr {
                    upstreams.eject(addr);
                }
                state.report.upstream_refused(&upstream, addr.is_some());
                ProxyError::Connect {
                    addr: upstream.to_string(),
                    reason,
                }
            }
            Some(Err(SendError::Failed(reason))) => ProxyError::Upstream {
                addr: upstream.to_string(),
                reason,
            },
            Some(Err(SendError::ClientBody(e))) => return Err(e.into()),
        };
        let Some(addr) = addr else { return Err(error) };
        if tried.is_some() || !error.retry_safe() || !resendable || addrs.len() < 2 {
            return Err(error);
        }
        tracing::debug!(error = %error, "retrying on another address");
        tried = Some(addr);
    }
}

/// `target` (`scheme://authority`) with the path and query of `uri`.
fn absolute(target: &str, uri: &Uri) -> Result<Uri, ProxyError> {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    format!("{target}{path}")
        .parse()
        .map_err(|e| ProxyError::BadRequest(format!("request target: {e}")))
}

/// `answer`, unless `deadline` passes first (None). It waits on `alarm`, a timer of the client
/// connection's that may be set to ring earlier (an HTTP/1.1 connection's is set for its wait
/// between requests, and moved on when the next wait begins): ringing early, it is set for the
/// deadline. So a request that is answered in time, as most are, puts no timer of its own into
/// the runtime's wheel and takes none out; moving a registered timer later is a store.
pub async fn within<F: Future>(
    mut alarm: Pin<&mut Sleep>,
    deadline: Instant,
    mut answer: Pin<&mut F>,
) -> Option<F::Output> {
    let deadline = tokio::time::Instant::from_std(deadline);
    if alarm.deadline() > deadline {
        alarm.as_mut().reset(deadline);
    }
    loop {
        tokio::select! {
            biased;
            out = answer.as_mut() => return Some(out),
            () = alarm.as_mut() => {
                if tokio::time::Instant::now() >= deadline {
                    return None;
                }
                alarm.as_mut().reset(deadline);
            }
        }
    }
}
