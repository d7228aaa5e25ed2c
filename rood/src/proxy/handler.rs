//! One request: find the host's route, then forward, redirect or refuse.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use roo_acme::challenge::HTTP01_PATH;

use super::{forward, headers, ConnInfo, ProxyBody, ProxyError, ProxyState, CHALLENGE_WAIT};
use crate::routes::{split_host_port, valid_host, Scheme};

/// Answers one request.
pub async fn handle(
    state: &ProxyState,
    req: Request<ProxyBody>,
    info: ConnInfo,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let method = req.method().clone();
    // Shares the request's bytes: kept for the access log after the request moves on.
    let uri = req.uri().clone();
    let path = uri.path();
    if info.over_limit {
        let mut resp = text(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many connections\n".into(),
        );
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return resp;
    }
    let challenge = path
        .strip_prefix(HTTP01_PATH)
        .filter(|_| info.scheme == Scheme::Http);
    let host = request_host(&req);
    // `routed`: the host has a route (hosts without one are counted together in metrics, so
    // that request headers cannot grow the label set).
    let (resp, upstream, routed) = match (challenge, &host) {
        (Some(token), _) => (
            acme_challenge(state, token).await,
            Some("acme".into()),
            false,
        ),
        (None, Ok(host)) => match route(state, req, info, host, started).await {
            Ok((resp, upstream)) => (resp, upstream, true),
            Err(e) => (
                error_response(&e),
                None,
                !matches!(e, ProxyError::NoRoute(_)),
            ),
        },
        (None, Err(e)) => (error_response(e), None, false),
    };
    let label_host = match (&host, routed) {
        (Ok(h), true) => split_host_port(h).map_or(h.as_str(), |(name, _)| name),
        _ => "-",
    };
    let seconds = started.elapsed().as_secs_f64();
    state.counts.request(
        label_host,
        resp.status().as_u16(),
        upstream.as_deref().unwrap_or("-"),
        info.scheme,
        seconds,
    );
    tracing::info!(
        target: "rood::access",
        host = host.as_deref().unwrap_or("-"),
        scheme = %info.scheme,
        client = %info.peer,
        %method,
        path,
        status = resp.status().as_u16(),
        upstream = upstream.as_deref().unwrap_or("-"),
        ms = seconds * 1000.0,
    );
    resp
}

async fn route(
    state: &ProxyState,
    req: Request<ProxyBody>,
    info: ConnInfo,
    host: &str,
    started: Instant,
) -> Result<(Response<ProxyBody>, Option<Arc<str>>), ProxyError> {
    let routes = state.tables.routes.load();
    let Some(route) = routes.lookup(host, info.scheme).cloned() else {
        if info.scheme == Scheme::Http && routes.lookup(host, Scheme::Https).is_some() {
            return Ok((redirect_to_https(host, &req), None));
        }
        return Err(ProxyError::NoRoute(host.to_string()));
    };
    drop(routes);
    // Boxed: the request's future is moved whole at each level it is awaited, and forwarding
    // is most of its size.
    let (resp, addr) = Box::pin(forward::forward(state, &route, host, req, info, started)).await?;
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(
        &mut parts.headers,
        parts.status == StatusCode::SWITCHING_PROTOCOLS,
    );
    Ok((Response::from_parts(parts, body), Some(addr)))
}

/// The key authorization of an HTTP-01 token, from the replicated challenge table, for any
/// host: the CA reaches whichever node the name points at.
async fn acme_challenge(state: &ProxyState, token: &str) -> Response<ProxyBody> {
    if !roo_acme::challenge::valid_token(token) {
        return text(StatusCode::NOT_FOUND, "no such ACME challenge\n".into());
    }
    let found = state
        .tables
        .wait_for(CHALLENGE_WAIT, |t| t.http01.load().get(token).cloned())
        .await;
    match found {
        Some(key_authorization) => text(StatusCode::OK, key_authorization),
        None => text(StatusCode::NOT_FOUND, "no such ACME challenge\n".into()),
    }
}

/// The host a request is for: HTTP/2's `:authority`, else the Host header; checked.
fn request_host<B>(req: &Request<B>) -> Result<String, ProxyError> {
    if req.headers().get_all(header::HOST).iter().count() > 1 {
        return Err(ProxyError::BadRequest("more than one Host header".into()));
    }
    let raw = match req.uri().authority() {
        Some(a) => a.as_str().to_string(),
        None => req
            .headers()
            .get(header::HOST)
            .ok_or_else(|| ProxyError::BadRequest("no Host header".into()))?
            .to_str()
            .map_err(|_| ProxyError::BadRequest("Host header is not text".into()))?
            .to_string(),
    };
    let (name, _) =
        split_host_port(&raw).ok_or_else(|| ProxyError::BadRequest(format!("bad Host {raw:?}")))?;
    if !valid_host(name) && name.parse::<std::net::IpAddr>().is_err() {
        return Err(ProxyError::BadRequest(format!("bad Host {raw:?}")));
    }
    Ok(raw)
}

/// 308 to the same host and path over https (the default port).
fn redirect_to_https<B>(host: &str, req: &Request<B>) -> Response<ProxyBody> {
    let name = split_host_port(host).map_or(host, |(n, _)| n);
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{name}{path}");
    let mut resp = text(
        StatusCode::PERMANENT_REDIRECT,
        format!("redirecting to {location}\n"),
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

fn error_response(e: &ProxyError) -> Response<ProxyBody> {
    let status = e.status();
    if status.is_server_error() {
        tracing::warn!(error = %e, %status, "proxy error");
    }
    let mut resp = text(status, format!("{e}\n"));
    if status == StatusCode::BAD_REQUEST {
        // The request's framing may be wrong too: do not read another one from this connection.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

fn text(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
