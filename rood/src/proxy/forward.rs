//! Sending a request upstream and streaming the answer back.

use std::net::SocketAddr;

use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::headers;
use super::upstream::UpstreamBody;
use super::{ConnInfo, ProxyError, ProxyState};
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

/// Sends `req` to one of the route's addresses; on a refused connection of a request that is
/// safe to send again (idempotent, no body), once more to another address. An upgrade that the
/// upstream accepts (101) becomes a tunnel between client and upstream, on its own task: it
/// stays open whatever happens to the route afterwards.
pub async fn forward(
    state: &ProxyState,
    route: &Route,
    host: &str,
    mut req: Request<Incoming>,
    info: ConnInfo,
) -> Result<(Response<Incoming>, SocketAddr), ProxyError> {
    if route.destinations.iter().any(|d| d.tls) {
        return Err(ProxyError::Unsupported(
            "TLS to upstreams is not supported yet".into(),
        ));
    }
    let addrs = state.upstreams.resolve(&route.destinations).await?;
    let upgrade = is_upgrade(&req) && !route.h2c;
    // gRPC needs `te: trailers`, which is hop-by-hop but allowed on HTTP/2.
    let wants_trailers = route.h2c
        && req
            .headers()
            .get(http::header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    let mut client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    headers::add_forwarded(&mut parts.headers, info.peer.ip(), info.scheme, host);
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
    let client = if route.h2c {
        &state.upstreams.h2c
    } else {
        &state.upstreams.client
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let resendable = parts.method.is_idempotent() && hyper::body::Body::is_end_stream(&body);
    let mut body = Some(body);

    let mut tried = None;
    loop {
        let addr = state
            .upstreams
            .pick(&addrs, tried)
            .ok_or_else(|| ProxyError::Upstream {
                addr: host.to_string(),
                reason: "no address left to try".into(),
            })?;
        let uri: Uri = format!("http://{addr}{path}")
            .parse()
            .map_err(|e| ProxyError::BadRequest(format!("request target: {e}")))?;
        let upstream_body: UpstreamBody = match body.take() {
            Some(b) if !resendable => b.boxed(),
            _ => http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed(),
        };
        let mut upstream_req = Request::from_parts(parts.clone(), upstream_body);
        *upstream_req.uri_mut() = uri;
        let sent =
            tokio::time::timeout(state.upstreams.timeout, client.request(upstream_req)).await;
        let error = match sent {
            Ok(Ok(mut resp)) => {
                if let (Some(client), StatusCode::SWITCHING_PROTOCOLS) =
                    (client_upgrade.take(), resp.status())
                {
                    let upstream = hyper::upgrade::on(&mut resp);
                    tokio::spawn(tunnel(client, upstream, addr));
                }
                return Ok((resp, addr));
            }
            Err(_) => ProxyError::Timeout {
                addr: addr.to_string(),
                secs: state.upstreams.timeout.as_secs(),
            },
            Ok(Err(e)) if e.is_connect() => {
                state.upstreams.eject(addr);
                ProxyError::Connect {
                    addr: addr.to_string(),
                    reason: e.to_string(),
                }
            }
            Ok(Err(e)) => ProxyError::Upstream {
                addr: addr.to_string(),
                reason: e.to_string(),
            },
        };
        if tried.is_some() || !error.retry_safe() || !resendable || addrs.len() < 2 {
            return Err(error);
        }
        tracing::debug!(error = %error, "retrying on another address");
        tried = Some(addr);
    }
}

/// Copies bytes both ways between an upgraded client connection and its upstream until either
/// side closes.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    addr: SocketAddr,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(%addr, error = %e, "upgrade failed");
            return;
        }
    };
    let mut client = hyper_util::rt::TokioIo::new(client);
    let mut upstream = hyper_util::rt::TokioIo::new(upstream);
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => tracing::debug!(%addr, up, down, "tunnel closed"),
        Err(e) => tracing::debug!(%addr, error = %e, "tunnel closed"),
    }
}
