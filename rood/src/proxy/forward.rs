//! Sending a request upstream and streaming the answer back.

use std::sync::Arc;
use std::time::Instant;

use crate::metrics::UpstreamLabels;
use http::{Request, Response, Uri, Version};

use super::headers;
use super::upstream::SendError;
use super::{ConnInfo, ProxyBody, ProxyError, ProxyState};
use crate::routes::Route;

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

/// Sends `req` (come at `started`) to one of the route's addresses; on a refused connection of
/// a request that is safe to send again (idempotent, no body), once more to another address,
/// each try within the upstream timeout. An upgrade that the upstream accepts (101) comes back
/// with the upstream's side of it for the client connection to tunnel to.
pub async fn forward(
    state: &ProxyState,
    route: &Route,
    host: &str,
    req: Request<ProxyBody>,
    info: ConnInfo,
    started: Instant,
) -> Result<(Response<ProxyBody>, Arc<str>), ProxyError> {
    // TLS destinations are named by host (for SNI and the certificate check); their addresses
    // rotate inside the TLS connector. Plain ones are resolved here, address by address.
    let addrs = if route.tls() {
        Vec::new()
    } else {
        state.upstreams.resolve(&route.destinations).await?
    };
    let upgrade = is_upgrade(&req) && !route.h2c;
    // gRPC needs `te: trailers`, which is hop-by-hop but allowed on HTTP/2.
    let wants_trailers = route.h2c
        && req
            .headers()
            .get(http::header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    let (mut parts, body) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    let forwarded = headers::Forwarded::new(&info.client_ip, info.scheme, host);
    parts.version = if route.h2c {
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
    let path = parts.uri.path_and_query().cloned();
    let resendable = parts.method.is_idempotent() && hyper::body::Body::is_end_stream(&body);
    // Only a plain route with another address to try can send the request twice: copy the
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
        let (target, uri, addr): (Arc<str>, Uri, _) = if route.tls() {
            let d = upstreams
                .pick_destination(&route.destinations)
                .ok_or_else(no_target)?;
            let target = format!("https://{}:{}", d.host, d.port);
            let uri = format!("{target}{}", path.as_ref().map_or("/", |p| p.as_str()))
                .parse()
                .map_err(|e| ProxyError::BadRequest(format!("request target: {e}")))?;
            (target.into(), uri, None)
        } else {
            let addr = upstreams.pick(&addrs, tried).ok_or_else(no_target)?;
            let target = upstreams.target(addr)?;
            let mut uri = http::uri::Parts::default();
            // HTTP/1.1 goes on a connection to `addr` (origin form); h2c names it.
            if route.h2c {
                uri.scheme = Some(http::uri::Scheme::HTTP);
                uri.authority = Some(target.authority);
            }
            uri.path_and_query = Some(
                path.clone()
                    .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
            );
            let uri = Uri::from_parts(uri)
                .map_err(|e| ProxyError::BadRequest(format!("request target: {e}")))?;
            (target.label, uri, Some(addr))
        };
        let upstream_body = match body.take() {
            Some(b) if !resendable => b,
            _ => super::empty_body(),
        };
        let head = match &parts {
            Some(p) if may_retry && tried.is_none() => p.clone(),
            _ => parts.take().ok_or_else(no_target)?,
        };
        let mut upstream_req = Request::from_parts(head, upstream_body);
        *upstream_req.uri_mut() = uri;
        // The first try's clock is the request's: read once.
        let sent_at = match tried {
            None => started,
            Some(_) => Instant::now(),
        };
        let sent = tokio::time::timeout_at(
            (sent_at + upstreams.timeout).into(),
            upstreams.send(route, addr, upstream_req, &forwarded, sent_at),
        )
        .await;
        let error = match sent {
            Ok(Ok(resp)) => return Ok((resp, target)),
            Err(_) => ProxyError::Timeout {
                addr: target.to_string(),
                secs: upstreams.timeout.as_secs(),
            },
            Ok(Err(SendError::Connect(reason))) => {
                let labels = UpstreamLabels {
                    upstream: target.to_string(),
                };
                state
                    .metrics
                    .upstream_connect_errors
                    .get_or_create(&labels)
                    .inc();
                if let Some(addr) = addr {
                    upstreams.eject(addr);
                    state
                        .metrics
                        .upstream_ejections
                        .get_or_create(&labels)
                        .inc();
                }
                ProxyError::Connect {
                    addr: target.to_string(),
                    reason,
                }
            }
            Ok(Err(SendError::Failed(reason))) => ProxyError::Upstream {
                addr: target.to_string(),
                reason,
            },
        };
        let Some(addr) = addr else { return Err(error) };
        if tried.is_some() || !error.retry_safe() || !resendable || addrs.len() < 2 {
            return Err(error);
        }
        tracing::debug!(error = %error, "retrying on another address");
        tried = Some(addr);
    }
}
