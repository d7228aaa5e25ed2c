//! One request: find the host's route and choose its backend, then forward, redirect or refuse.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use roo_acme::challenge::HTTP01_PATH;
use tokio::time::Sleep;

use super::compress::{self, Coding};
use super::head::ResponseHead;
use super::{
    forward, headers, BodyError, BoxError, ConnInfo, ProxyBody, ProxyError, ProxyState,
    CHALLENGE_WAIT,
};
use crate::report::{Served, Upstream};
use crate::routes::middleware::Middlewares;
use crate::routes::model::{address_token, binding, Choice, Sticking};
use crate::routes::{split_host_port, valid_host, PathRoute, Route, Scheme};

/// Answers one request. `alarm`: a timer of the client connection's for the wait for the
/// upstream's answer ([`forward::within`]).
pub async fn handle(
    state: &ProxyState,
    req: Request<ProxyBody>,
    info: &ConnInfo,
    alarm: Pin<&mut Sleep>,
) -> Response<ProxyBody> {
    let started = Instant::now();
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
    // Kept for the access log (sharing the request's bytes) only when it is written.
    let logged = tracing::enabled!(target: "rood::access", tracing::Level::INFO)
        .then(|| (req.method().clone(), req.uri().clone()));
    let challenge = req
        .uri()
        .path()
        .strip_prefix(HTTP01_PATH)
        .filter(|_| info.scheme == Scheme::Http)
        .map(str::to_string);
    let value = host_value(&req);
    let host = value.as_ref().map_err(Clone::clone).and_then(Host::parse);
    // `routed`: the host has a route (hosts without one are counted together in metrics, so
    // that request headers cannot grow the label set).
    let (resp, reached, routed) = match (challenge, &host) {
        // A proxy to anywhere is not what this is; HTTP/1.x refuses it as it parses.
        _ if req.method() == Method::CONNECT => (
            error_response(&ProxyError::MethodNotAllowed(Method::CONNECT)),
            None,
            false,
        ),
        (Some(token), _) => (
            acme_challenge(state, &token).await,
            Some(Reached {
                route: None,
                upstream: Some(Upstream::Acme),
            }),
            false,
        ),
        // TLS: only the names the connection's certificate covers (RFC 9110 15.5.20): a client
        // must not reach one host through another's certificate, nor a host without one.
        (None, Ok(host))
            if info
                .presented
                .as_ref()
                .is_some_and(|p| !p.covers(host.name)) =>
        {
            (
                error_response(&ProxyError::Misdirected(host.name.to_string())),
                None,
                false,
            )
        }
        (None, Ok(host)) => match route(state, req, info, host, started, alarm).await {
            Ok((resp, reached)) => (resp, reached, true),
            Err(e) => (
                error_response(&e),
                None,
                !matches!(e, ProxyError::NoRoute(_)),
            ),
        },
        (None, Err(e)) => (error_response(e), None, false),
    };
    let route_name = match reached.as_ref().and_then(|r| r.route.as_ref()) {
        Some((route, _)) if routed => &*route.name,
        _ => "-",
    };
    let seconds = started.elapsed().as_secs_f64();
    let status = resp.status().as_u16();
    let backend = reached.as_ref().and_then(Reached::backend_name);
    let upstream = reached.as_ref().and_then(|r| r.upstream.as_ref());
    state.report.served(&Served {
        route: route_name,
        status,
        backend,
        upstream,
        scheme: info.scheme,
        seconds,
    });
    if let Some((method, uri)) = logged {
        tracing::info!(
            target: "rood::access",
            host = host.as_ref().map_or("-", |h| h.text),
            scheme = %info.scheme,
            client = %info.peer,
            %method,
            path = uri.path(),
            status,
            backend = backend.unwrap_or("-"),
            upstream = %upstream.map_or_else(|| "-".to_string(), Upstream::to_string),
            ms = seconds * 1000.0,
        );
    }
    resp
}

/// Where a request went: the route's backend (none for this node's own answers) and upstream
/// (none when it was not reached: the backend answered through this node's 502 or 504).
struct Reached {
    /// The route that took the request, and its backend when one was chosen.
    route: Option<(Arc<Route>, Option<Choice>)>,
    upstream: Option<Upstream>,
}

impl Reached {
    fn backend_name(&self) -> Option<&str> {
        let (route, choice) = self.route.as_ref()?;
        Some(&route.backend((*choice)?).name)
    }
}

/// The routed request's phases: match the route; choose the path and backend; the request
/// filters (the target's middlewares, which may answer themselves); forward; the response
/// filters. (Counting and the access log follow in [`handle`].)
async fn route(
    state: &ProxyState,
    mut req: Request<ProxyBody>,
    info: &ConnInfo,
    host: &Host<'_>,
    started: Instant,
    alarm: Pin<&mut Sleep>,
) -> Result<(Response<ProxyBody>, Option<Reached>), ProxyError> {
    let routes = state.tables.routes.load();
    let Some(route) = routes.find(host.name, host.port, info.scheme).cloned() else {
        if info.scheme == Scheme::Http && routes.find(host.name, host.port, Scheme::Https).is_some()
        {
            return Ok((redirect_to_https(host.name, state.https_port, &req), None));
        }
        return Err(ProxyError::NoRoute(host.text.to_string()));
    };
    drop(routes);
    let Some((choice, sticking)) = route.choose(req.uri().path(), req.headers()) else {
        return Err(ProxyError::NoRoute(format!(
            "{}{}",
            host.text,
            req.uri().path()
        )));
    };
    let middlewares = route.target_of(choice).middlewares.as_deref();
    let mut coding = None;
    if let Some(m) = middlewares {
        if let Some(answer) = request_filters(m, &mut req, info, started) {
            let reached = Reached {
                route: Some((route.clone(), None)),
                upstream: None,
            };
            return Ok((answer, Some(reached)));
        }
        if m.compress_min_bytes.is_some() && req.method() != Method::HEAD {
            coding = Coding::accepted(req.headers());
        }
    }
    if let Some(path) = route.path(choice).filter(|p| p.strip_prefix) {
        strip_prefix(&mut req, path)?;
    }
    let backend = route.backend(choice);
    let bound = match sticking {
        Sticking::Bound(token) => token,
        _ => None,
    };
    let chosen = forward::Chosen {
        backend,
        bound,
        request_changes: middlewares.map_or(&[], Middlewares::request_changes),
        answer_changes: middlewares.map_or(&[], Middlewares::answer_changes),
    };
    let (resp, upstream) =
        match forward::forward(state, chosen, host.text, req, info, started, alarm).await {
            Ok(answer) => answer,
            // The backend's failure, counted as its own, and named as the backend's answer is.
            Err(e) => {
                let mut answer = error_response(&e);
                if route.expose_backend {
                    if let Ok(name) = HeaderValue::from_str(&backend.name) {
                        answer.headers_mut().insert(X_ROO_BACKEND, name);
                    }
                }
                let reached = Reached {
                    route: Some((route.clone(), Some(choice))),
                    upstream: None,
                };
                return Ok((answer, Some(reached)));
            }
        };
    let (mut parts, mut body) = resp.into_parts();
    if route.sticky.is_some() || middlewares.is_some() || route.expose_backend {
        let mut head = ResponseHead::of(&mut parts);
        if route.expose_backend {
            if let Ok(name) = HeaderValue::from_str(&backend.name) {
                head.append(X_ROO_BACKEND, name);
            }
        }
        if let Some(cookie) = route.sticky.as_deref() {
            bind(&mut head, cookie, &backend.name, sticking, &upstream);
        }
        if let Some(m) = middlewares {
            body = response_filters(m, &mut head, body, coding);
        }
    }
    headers::strip_hop_by_hop(
        &mut parts.headers,
        parts.status == StatusCode::SWITCHING_PROTOCOLS,
    );
    let reached = Reached {
        route: Some((route, Some(choice))),
        upstream: Some(upstream),
    };
    Ok((Response::from_parts(parts, body), Some(reached)))
}

/// Binds the client to the backend and address that answered it, when it was not bound to
/// them: a new client, or one whose address went away.
fn bind(
    head: &mut ResponseHead<'_>,
    cookie: &str,
    backend: &str,
    sticking: Sticking,
    upstream: &Upstream,
) {
    let addr = match upstream {
        Upstream::Addr(a) => Some(*a),
        _ => None,
    };
    if sticking == Sticking::Bound(addr.map(address_token)) {
        return;
    }
    let value = format!(
        "{cookie}={}; Path=/; HttpOnly; SameSite=Lax",
        binding(backend, addr)
    );
    if let Ok(v) = HeaderValue::from_str(&value) {
        head.append(header::SET_COOKIE, v);
    }
}

/// The middlewares' response filters: the header fields set and removed, then compression
/// into `coding` (the client's choice, when it takes one of ours).
fn response_filters(
    m: &Middlewares,
    head: &mut ResponseHead<'_>,
    body: ProxyBody,
    coding: Option<Coding>,
) -> ProxyBody {
    let changes = m.answer_changes();
    if !changes.is_empty() && !head.changed_as_read() {
        head.edit(changes);
    }
    match m.compress_min_bytes {
        Some(min) if compress::compressible(head, min) => {
            compress::vary(head);
            match coding {
                Some(c) => compress::compress(head, body, c),
                None => body,
            }
        }
        _ => body,
    }
}

/// The middlewares' request filters: an answer of their own ends the request; a body larger
/// than the route allows is cut off where it passes the limit (413 when nothing was answered
/// yet).
fn request_filters(
    m: &Middlewares,
    req: &mut Request<ProxyBody>,
    info: &ConnInfo,
    started: Instant,
) -> Option<Response<ProxyBody>> {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    if let Some(answer) = m.request(req.headers(), path, info.peer.ip(), started) {
        let mut resp = text(answer.status, answer.text);
        resp.headers_mut()
            .extend(answer.headers.into_iter().map(|(n, v)| (Some(n), v)));
        if answer.status == StatusCode::PAYLOAD_TOO_LARGE {
            // Its body is not read: nothing after it on this connection can be told from it.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        return Some(resp);
    }
    if let Some(max) = m.max_body_bytes {
        let body = std::mem::replace(req.body_mut(), super::empty_body());
        *req.body_mut() = http_body_util::Limited::new(body, max as usize)
            .map_err(
                move |e| match e.downcast::<http_body_util::LengthLimitError>() {
                    Ok(_) => BoxError::from(BodyError::TooLarge(max)),
                    Err(e) => e,
                },
            )
            .boxed();
    }
    None
}

/// The request as its path route's upstream takes it: the prefix left out of its path, and
/// named in `X-Forwarded-Prefix`.
fn strip_prefix(req: &mut Request<ProxyBody>, path: &PathRoute) -> Result<(), ProxyError> {
    let bad = |e: &dyn std::fmt::Display| ProxyError::BadRequest(format!("request target: {e}"));
    let mut uri = std::mem::take(req.uri_mut()).into_parts();
    let sent = uri.path_and_query.as_ref().map_or("/", |p| p.as_str());
    uri.path_and_query = Some(path.upstream_path(sent).parse().map_err(|e| bad(&e))?);
    *req.uri_mut() = Uri::from_parts(uri).map_err(|e| bad(&e))?;
    let prefix = HeaderValue::from_str(path.prefix.trim_end_matches('/')).map_err(|e| bad(&e))?;
    req.headers_mut().insert(X_FORWARDED_PREFIX, prefix);
    Ok(())
}

const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
const X_ROO_BACKEND: HeaderName = HeaderName::from_static("x-roo-backend");

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

/// The Host a request names: HTTP/2's `:authority` (or an absolute-form target's), else its
/// Host header; one at most.
fn host_value<B>(req: &Request<B>) -> Result<HeaderValue, ProxyError> {
    let mut sent = req.headers().get_all(header::HOST).iter();
    let (first, more) = (sent.next(), sent.next());
    if more.is_some() {
        return Err(ProxyError::BadRequest("more than one Host header".into()));
    }
    match req.uri().authority() {
        Some(a) => HeaderValue::from_str(a.as_str())
            .map_err(|_| ProxyError::BadRequest(format!("bad Host {:?}", a.as_str()))),
        None => first
            .cloned()
            .ok_or_else(|| ProxyError::BadRequest("no Host header".into())),
    }
}

/// The host a request is for, checked: as the client sent it, and its name and port.
#[derive(Debug)]
struct Host<'a> {
    text: &'a str,
    name: &'a str,
    port: Option<u16>,
}

impl Host<'_> {
    fn parse(value: &HeaderValue) -> Result<Host<'_>, ProxyError> {
        let text = value
            .to_str()
            .map_err(|_| ProxyError::BadRequest("Host header is not text".into()))?;
        let bad = || ProxyError::BadRequest(format!("bad Host {text:?}"));
        let (name, port) = split_host_port(text).ok_or_else(bad)?;
        if !valid_host(name) && name.parse::<std::net::IpAddr>().is_err() {
            return Err(bad());
        }
        Ok(Host { text, name, port })
    }
}

/// 308 to the same host (`name`) and path over https, on `port` (None: the default one).
fn redirect_to_https<B>(name: &str, port: Option<u16>, req: &Request<B>) -> Response<ProxyBody> {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = match port {
        Some(port) => format!("https://{name}:{port}{path}"),
        None => format!("https://{name}{path}"),
    };
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
    if matches!(
        status,
        StatusCode::BAD_REQUEST | StatusCode::REQUEST_TIMEOUT | StatusCode::PAYLOAD_TOO_LARGE
    ) {
        // The request's framing may be wrong too, or its body unfinished: do not read another
        // one from this connection.
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
