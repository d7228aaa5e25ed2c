//! What a route does, as one typed model that every writer and reader shares.
//!
//! A route value is Roo's destination URL (`http://tasks.app_web:80`: one backend), the older
//! JSON form `{"destinations":[...],"protocol":"h2c","tls_verify":false}`, or the JSON route:
//! named, weighted backends ("versions"), cohorts that pick a backend by header or cookie before
//! weights apply, and path prefixes with backends of their own. All three parse into [`Route`],
//! checked (an error names the field), with the order of its weighted choice compiled in;
//! [`Route::to_json`] writes the JSON route back.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, COOKIE};
use serde::{Deserialize, Serialize};

use super::middleware::{MiddlewareJson, Middlewares};
use super::{normalize_host, RouteError};

/// Backends a route (or one of its paths) may have.
pub const MAX_BACKENDS: usize = 16;
/// Paths a route may have.
pub const MAX_PATHS: usize = 64;
/// The largest weight; weights are relative.
pub const MAX_WEIGHT: u32 = 10_000;
/// The name Roo's plain URL and the older JSON form give their one backend.
pub const DEFAULT_BACKEND: &str = "default";
/// The longest weighted order: past it, weights are rounded to parts of it.
const MAX_ORDER: u32 = 1000;

/// Where a host's requests go.
#[derive(Debug)]
pub struct Route {
    /// The route's name, `<host>[:<port>]:<scheme>`, as its counts are kept under; set by the
    /// table's feed (empty for a route not in a table).
    pub name: Box<str>,
    /// The host's own backends: every request that no path takes. Empty when only paths are
    /// routed: other requests get 404.
    pub target: Target,
    /// Path prefixes, longest first.
    pub paths: Vec<PathRoute>,
    /// The cookie that binds a client to a backend and address.
    pub sticky: Option<Box<str>>,
    /// Active checks of every backend's addresses.
    pub health: Option<HealthCheck>,
    /// Answers name the backend that made them (`X-Roo-Backend`), for clients that watch a
    /// rollout (`rooctl load`).
    pub expose_backend: bool,
}

/// An active health check: `GET path` on each address of each plain-HTTP backend every
/// `interval`; an address leaves rotation after `fails` failures in a row (no answer within the
/// timeout, or a status of 400 or more) and comes back after `passes` successes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub path: String,
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    #[serde(default = "default_fails")]
    pub fails: u32,
    #[serde(default = "default_passes")]
    pub passes: u32,
}

fn default_interval_ms() -> u64 {
    2000
}
fn default_fails() -> u32 {
    3
}
fn default_passes() -> u32 {
    2
}

/// Requests under a path prefix, with backends of their own.
#[derive(Debug)]
pub struct PathRoute {
    /// Starts with `/`; matches itself and what is below it (`/api` takes `/api` and `/api/x`,
    /// not `/apix`).
    pub prefix: Box<str>,
    /// Send the path without the prefix (and the prefix in `X-Forwarded-Prefix`).
    pub strip_prefix: bool,
    pub target: Target,
}

/// Backends, the cohorts that pick one of them, the weighted order between them, and the
/// middlewares of the requests they take.
#[derive(Debug)]
pub struct Target {
    pub backends: Vec<Backend>,
    pub cohorts: Vec<Cohort>,
    /// None for most routes: nothing to run.
    pub middlewares: Option<Box<Middlewares>>,
    order: WeightedOrder,
}

/// One named set of upstream destinations: a version of a service. Its name stays through DNS
/// resolution, so counts (and later health and stickiness) are per backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub name: Arc<str>,
    pub destinations: Vec<Destination>,
    /// Relative to the other backends'; 0 takes no new requests (a drain).
    pub weight: u32,
    /// Speak HTTP/2 without TLS (prior knowledge) to the upstream: gRPC servers.
    pub h2c: bool,
    /// Check the certificate of `https://` destinations (the default).
    pub tls_verify: bool,
}

impl Backend {
    /// Whether the destinations are reached over TLS.
    pub fn tls(&self) -> bool {
        self.destinations.first().is_some_and(|d| d.tls)
    }
}

/// Requests that carry a header or cookie with a value go to one backend, whatever the weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cohort {
    pub on: CohortOn,
    pub value: Box<str>,
    /// Index into the target's backends.
    pub backend: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CohortOn {
    Header(HeaderName),
    Cookie(Box<str>),
}

impl Cohort {
    fn matches(&self, headers: &HeaderMap) -> bool {
        match &self.on {
            CohortOn::Header(name) => headers
                .get_all(name)
                .iter()
                .any(|v| v.as_bytes() == self.value.as_bytes()),
            CohortOn::Cookie(name) => cookies(headers, name).any(|v| v == &*self.value),
        }
    }
}

/// Which backend of a route a request goes to: an index, cheap to keep for the request's log and
/// counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// The path route that took the request; None: the host's own backends.
    pub path: Option<usize>,
    pub backend: usize,
}

/// The values of the cookies named `name` that a request carries.
fn cookies<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(move |(n, _)| *n == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// Where a request stands with a sticky route's cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sticking {
    /// The route is not sticky.
    No,
    /// The client is bound to the chosen backend, and to the address with this token if any.
    Bound(Option<u64>),
    /// The client is not bound (or was to a backend that is gone): bind it to the choice.
    New,
}

/// The cookie value that binds to `backend` and (when known) `addr`:
/// `<backend>` or `<backend>~<address token>`.
pub fn binding(backend: &str, addr: Option<std::net::SocketAddr>) -> String {
    match addr {
        Some(a) => format!("{backend}~{:016x}", address_token(a)),
        None => backend.to_string(),
    }
}

/// An address as a sticky cookie names it: the same on every node, and not the address itself.
pub fn address_token(addr: std::net::SocketAddr) -> u64 {
    // FNV-1a over the address's text.
    addr.to_string()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325, |h: u64, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}

impl Route {
    /// The backend for a request for `path` with `headers`: the path route that takes the path,
    /// if any; then, on a sticky route, the backend the client is bound to if it is still
    /// there; then the first of its cohorts the request belongs to, else the next backend of its
    /// weighted order. The binding's address comes with it.
    pub fn choose(&self, path: &str, headers: &HeaderMap) -> Option<(Choice, Sticking)> {
        let at = self.paths.iter().position(|p| p.covers(path));
        let target = at.map_or(&self.target, |i| &self.paths[i].target);
        let Some(cookie) = self.sticky.as_deref() else {
            let backend = target.pick(headers)?;
            return Some((Choice { path: at, backend }, Sticking::No));
        };
        let bound = cookies(headers, cookie).next().and_then(|value| {
            let (name, token) = match value.split_once('~') {
                Some((name, token)) => (name, u64::from_str_radix(token, 16).ok()),
                None => (value, None),
            };
            let i = target.backends.iter().position(|b| *b.name == *name)?;
            Some((i, token))
        });
        Some(match bound {
            Some((backend, token)) => (Choice { path: at, backend }, Sticking::Bound(token)),
            None => (
                Choice {
                    path: at,
                    backend: target.pick(headers)?,
                },
                Sticking::New,
            ),
        })
    }

    /// The backend a [`Choice`] of this route names.
    pub fn backend(&self, choice: Choice) -> &Backend {
        &self.target_of(choice).backends[choice.backend]
    }

    /// The target (the host's own or a path's) a [`Choice`] of this route is in.
    pub fn target_of(&self, choice: Choice) -> &Target {
        self.path(choice).map_or(&self.target, |p| &p.target)
    }

    /// The path route a [`Choice`] of this route names.
    pub fn path(&self, choice: Choice) -> Option<&PathRoute> {
        choice.path.map(|i| &self.paths[i])
    }

    /// Every backend of the route, its paths' too.
    pub fn backends(&self) -> impl Iterator<Item = &Backend> {
        self.target
            .backends
            .iter()
            .chain(self.paths.iter().flat_map(|p| &p.target.backends))
    }
}

impl PathRoute {
    pub fn covers(&self, path: &str) -> bool {
        match path.strip_prefix(&*self.prefix) {
            Some(rest) => rest.is_empty() || rest.starts_with('/') || self.prefix.ends_with('/'),
            None => false,
        }
    }

    /// `path` (with its query) as the upstream sees it: without the prefix when it is
    /// stripped, always starting with `/`.
    pub fn upstream_path(&self, path_and_query: &str) -> String {
        let rest = path_and_query
            .strip_prefix(self.prefix.trim_end_matches('/'))
            .unwrap_or(path_and_query);
        if rest.starts_with('/') {
            rest.to_string()
        } else {
            format!("/{rest}")
        }
    }
}

impl Target {
    /// The backend (index) for a request with these headers: the first cohort it belongs to,
    /// else the next in the weighted order; None when there are no backends.
    fn pick(&self, headers: &HeaderMap) -> Option<usize> {
        match self.cohorts.iter().find(|c| c.matches(headers)) {
            Some(c) => Some(c.backend),
            None => self.order.next(),
        }
    }
}

/// The smooth weighted order of a target's backends (nginx's: weights 5, 1, 1 give
/// a a b a c a a, not a a a a a b c), computed once per route change; a request takes the next
/// entry. A target with one backend in rotation takes no turn at all.
#[derive(Debug)]
struct WeightedOrder {
    order: Box<[u8]>,
    turn: AtomicUsize,
}

impl WeightedOrder {
    /// `weights`, at most [`MAX_BACKENDS`]; all 0 (or none) make an empty order.
    fn new(weights: &[u32]) -> WeightedOrder {
        let gcd = weights
            .iter()
            .filter(|w| **w > 0)
            .fold(0, |a, &b| gcd(a, b))
            .max(1);
        let mut parts: Vec<u32> = weights.iter().map(|w| w / gcd).collect();
        let total: u32 = parts.iter().sum();
        if total > MAX_ORDER {
            for (part, w) in parts.iter_mut().zip(weights) {
                let scaled = (u64::from(*w) * u64::from(MAX_ORDER) + u64::from(total) / 2)
                    / u64::from(weights.iter().sum::<u32>());
                *part = if *w == 0 { 0 } else { (scaled as u32).max(1) };
            }
        }
        let total: i64 = parts.iter().map(|p| i64::from(*p)).sum();
        let mut current = vec![0i64; parts.len()];
        let mut order = Vec::with_capacity(total as usize);
        for _ in 0..total {
            for (c, p) in current.iter_mut().zip(&parts) {
                *c += i64::from(*p);
            }
            let (best, _) = current
                .iter()
                .enumerate()
                .filter(|(i, _)| parts[*i] > 0)
                .fold(
                    (0, i64::MIN),
                    |best, (i, c)| if *c > best.1 { (i, *c) } else { best },
                );
            current[best] -= total;
            order.push(best as u8);
        }
        // One backend in rotation: one entry, no turn taken.
        if order.iter().all(|b| order.first() == Some(b)) {
            order.truncate(1);
        }
        WeightedOrder {
            order: order.into(),
            turn: AtomicUsize::new(0),
        }
    }

    fn next(&self) -> Option<usize> {
        match &*self.order {
            [] => None,
            [only] => Some(usize::from(*only)),
            order => Some(usize::from(
                order[self.turn.fetch_add(1, Ordering::Relaxed) % order.len()],
            )),
        }
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// An upstream address as the route names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// The host when it is an address: not looked up, nor parsed for each request.
    pub ip: Option<std::net::IpAddr>,
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

impl Destination {
    /// Parses `http://host[:port]` or `https://host[:port]` (a trailing `/` is allowed).
    pub fn parse(url: &str) -> Result<Destination, RouteError> {
        let bad = |why: &str| RouteError::InvalidDestination(url.to_string(), why.to_string());
        let (tls, rest) = if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else {
            return Err(bad("it must start with http:// or https://"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.contains('?') {
            return Err(bad("a destination has no path"));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| bad("bad port"))?,
            ),
            None => (rest, if tls { 443 } else { 80 }),
        };
        let ip = host
            .parse::<std::net::Ipv4Addr>()
            .ok()
            .map(std::net::IpAddr::V4);
        let host = if ip.is_some() {
            host.to_string()
        } else {
            normalize_host(host).map_err(|_| bad("bad host"))?
        };
        if host.starts_with("*.") {
            return Err(bad("a destination cannot be a wildcard"));
        }
        Ok(Destination {
            tls,
            host,
            port,
            ip,
        })
    }
}

/// The JSON route, as written and read.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteJson {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    backends: Vec<BackendJson>,
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    cohorts: Vec<CohortJson>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    paths: Vec<PathJson>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    middlewares: Vec<MiddlewareJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sticky: Option<StickyJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    health: Option<HealthCheck>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    expose_backend: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StickyJson {
    cookie: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendJson {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    urls: Vec<String>,
    #[serde(default = "full_weight")]
    weight: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    protocol: Option<String>,
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    tls_verify: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CohortJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cookie: Option<String>,
    value: String,
    backend: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PathJson {
    prefix: String,
    #[serde(default, skip_serializing_if = "is_false")]
    strip_prefix: bool,
    backends: Vec<BackendJson>,
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    cohorts: Vec<CohortJson>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    middlewares: Vec<MiddlewareJson>,
}

/// The older JSON form: one backend of several destinations.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LegacyJson {
    destinations: Vec<String>,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default = "yes")]
    tls_verify: bool,
}

fn full_weight() -> u32 {
    100
}
fn yes() -> bool {
    true
}
fn is_true(b: &bool) -> bool {
    *b
}
fn is_false(b: &bool) -> bool {
    !*b
}

/// A field's error: `field: reason`.
fn invalid(field: impl Into<String>, reason: impl fmt::Display) -> RouteError {
    RouteError::Invalid {
        field: field.into(),
        reason: reason.to_string(),
    }
}

/// serde's error with the path of the field it is about.
fn parse_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, RouteError> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let reason = e.into_inner();
        // serde_json's position means little in a one-line value.
        let reason = reason.to_string();
        let reason = reason.split(" at line ").next().unwrap_or_default();
        match field.as_str() {
            "." | "?" => invalid("route", reason),
            _ => invalid(field, reason),
        }
    })
}

impl Route {
    /// Parses a route value (see the module's doc).
    pub fn parse(value: &[u8]) -> Result<Route, RouteError> {
        let text = std::str::from_utf8(value)
            .map_err(|_| invalid("route", "not UTF-8"))?
            .trim();
        if !text.starts_with('{') {
            let destination = Destination::parse(text)?;
            return Ok(Route::single(Backend {
                name: DEFAULT_BACKEND.into(),
                destinations: vec![destination],
                weight: full_weight(),
                h2c: false,
                tls_verify: true,
            }));
        }
        // The older form is told by its one required field.
        let fields: serde_json::Map<String, serde_json::Value> = parse_json(text)?;
        if fields.contains_key("destinations") {
            let legacy: LegacyJson = parse_json(text)?;
            if legacy.destinations.is_empty() {
                return Err(invalid("destinations", "no destinations"));
            }
            let backend = backend(
                "destinations",
                DEFAULT_BACKEND,
                &legacy.destinations,
                full_weight(),
                legacy.protocol.as_deref(),
                legacy.tls_verify,
            )?;
            return Ok(Route::single(backend));
        }
        let json: RouteJson = parse_json(text)?;
        // The host's own backends may be left out when paths are given.
        let own = target(
            "",
            &json.backends,
            &json.cohorts,
            json.middlewares,
            !json.paths.is_empty(),
        )?;
        if json.paths.len() > MAX_PATHS {
            return Err(invalid("paths", format!("more than {MAX_PATHS}")));
        }
        let mut paths = Vec::with_capacity(json.paths.len());
        for (i, p) in json.paths.into_iter().enumerate() {
            let field = format!("paths[{i}]");
            let prefix = p.prefix.as_str();
            if !prefix.starts_with('/')
                || prefix.len() > 1024
                || prefix
                    .bytes()
                    .any(|b| !b.is_ascii_graphic() || b == b'?' || b == b'#')
            {
                return Err(invalid(
                    format!("{field}.prefix"),
                    "a path starting with /, without a query",
                ));
            }
            if paths.iter().any(|q: &PathRoute| &*q.prefix == prefix) {
                return Err(invalid(format!("{field}.prefix"), "given twice"));
            }
            paths.push(PathRoute {
                prefix: prefix.into(),
                strip_prefix: p.strip_prefix,
                target: target(
                    &format!("{field}."),
                    &p.backends,
                    &p.cohorts,
                    p.middlewares,
                    false,
                )?,
            });
        }
        // Longest first: the most precise prefix wins.
        paths.sort_by_key(|p| std::cmp::Reverse(p.prefix.len()));
        let sticky = match json.sticky {
            None => None,
            Some(s) if cookie_name(&s.cookie) => Some(s.cookie.into()),
            Some(_) => return Err(invalid("sticky.cookie", "not a cookie name")),
        };
        if let Some(h) = &json.health {
            if !h.path.starts_with('/') || h.path.bytes().any(|b| !b.is_ascii_graphic()) {
                return Err(invalid("health.path", "a path starting with /"));
            }
            if !(100..=3_600_000).contains(&h.interval_ms) {
                return Err(invalid("health.interval_ms", "from 100 to 3600000"));
            }
            if h.fails == 0 || h.passes == 0 {
                return Err(invalid("health", "fails and passes are at least 1"));
            }
        }
        Ok(Route {
            name: Box::default(),
            target: own,
            paths,
            sticky,
            health: json.health,
            expose_backend: json.expose_backend,
        })
    }

    fn single(backend: Backend) -> Route {
        Route {
            name: Box::default(),
            target: Target {
                order: WeightedOrder::new(&[backend.weight]),
                backends: vec![backend],
                cohorts: Vec::new(),
                middlewares: None,
            },
            paths: Vec::new(),
            sticky: None,
            health: None,
            expose_backend: false,
        }
    }

    /// The route as the JSON form (what the API shows; parsing it gives the same route).
    pub fn to_json(&self) -> serde_json::Value {
        let backends = |t: &Target| t.backends.iter().map(backend_json).collect();
        let cohorts = |t: &Target| {
            t.cohorts
                .iter()
                .map(|c| {
                    let (header, cookie) = match &c.on {
                        CohortOn::Header(h) => (Some(h.to_string()), None),
                        CohortOn::Cookie(c) => (None, Some(c.to_string())),
                    };
                    CohortJson {
                        header,
                        cookie,
                        value: c.value.to_string(),
                        backend: t.backends[c.backend].name.to_string(),
                    }
                })
                .collect()
        };
        let middlewares = |t: &Target| {
            t.middlewares
                .as_ref()
                .map_or_else(Vec::new, |m| m.json.clone())
        };
        let json = RouteJson {
            backends: backends(&self.target),
            cohorts: cohorts(&self.target),
            middlewares: middlewares(&self.target),
            paths: self
                .paths
                .iter()
                .map(|p| PathJson {
                    prefix: p.prefix.to_string(),
                    strip_prefix: p.strip_prefix,
                    backends: backends(&p.target),
                    cohorts: cohorts(&p.target),
                    middlewares: middlewares(&p.target),
                })
                .collect(),
            sticky: self.sticky.as_ref().map(|c| StickyJson {
                cookie: c.to_string(),
            }),
            health: self.health.clone(),
            expose_backend: self.expose_backend,
        };
        serde_json::to_value(json).unwrap_or_default()
    }
}

fn backend_json(b: &Backend) -> BackendJson {
    let mut urls: Vec<String> = b.destinations.iter().map(|d| d.to_string()).collect();
    let url = (urls.len() == 1).then(|| urls.remove(0));
    BackendJson {
        name: b.name.to_string(),
        url,
        urls,
        weight: b.weight,
        protocol: b.h2c.then(|| "h2c".to_string()),
        tls_verify: b.tls_verify,
    }
}

/// Backends and cohorts, checked; `field`: where they are (`""` or `paths[i].`).
fn target(
    field: &str,
    backends: &[BackendJson],
    cohorts: &[CohortJson],
    middlewares: Vec<MiddlewareJson>,
    may_be_empty: bool,
) -> Result<Target, RouteError> {
    if backends.is_empty() && !may_be_empty {
        return Err(invalid(format!("{field}backends"), "no backends"));
    }
    if backends.len() > MAX_BACKENDS {
        return Err(invalid(
            format!("{field}backends"),
            format!("more than {MAX_BACKENDS}"),
        ));
    }
    let mut checked: Vec<Backend> = Vec::with_capacity(backends.len());
    for (i, b) in backends.iter().enumerate() {
        let at = format!("{field}backends[{i}]");
        if !valid_backend_name(&b.name) {
            return Err(invalid(format!("{at}.name"), BACKEND_NAME_RULE));
        }
        if checked.iter().any(|c| *c.name == *b.name) {
            return Err(invalid(
                format!("{at}.name"),
                format!("{:?} given twice", b.name),
            ));
        }
        let urls: Vec<String> = match (&b.url, b.urls.is_empty()) {
            (Some(url), true) => vec![url.clone()],
            (None, false) => b.urls.clone(),
            (Some(_), false) => return Err(invalid(at, "give url or urls, not both")),
            (None, true) => return Err(invalid(at, "no url")),
        };
        if b.weight > MAX_WEIGHT {
            return Err(invalid(
                format!("{at}.weight"),
                format!("at most {MAX_WEIGHT}"),
            ));
        }
        checked.push(backend(
            &at,
            &b.name,
            &urls,
            b.weight,
            b.protocol.as_deref(),
            b.tls_verify,
        )?);
    }
    let weights: Vec<u32> = checked.iter().map(|b| b.weight).collect();
    if !weights.is_empty() && weights.iter().all(|w| *w == 0) {
        return Err(invalid(format!("{field}backends"), "the weights sum to 0"));
    }
    let mut rules = Vec::with_capacity(cohorts.len());
    for (i, c) in cohorts.iter().enumerate() {
        let at = format!("{field}match[{i}]");
        let on = match (&c.header, &c.cookie) {
            (Some(h), None) => CohortOn::Header(
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| invalid(format!("{at}.header"), "not a header name"))?,
            ),
            (None, Some(name)) => {
                if !cookie_name(name) {
                    return Err(invalid(format!("{at}.cookie"), "not a cookie name"));
                }
                CohortOn::Cookie(name.as_str().into())
            }
            _ => return Err(invalid(at, "give header or cookie, one of them")),
        };
        let backend = checked
            .iter()
            .position(|b| *b.name == *c.backend)
            .ok_or_else(|| {
                invalid(
                    format!("{at}.backend"),
                    format!("no backend named {:?}", c.backend),
                )
            })?;
        rules.push(Cohort {
            on,
            value: c.value.as_str().into(),
            backend,
        });
    }
    let middlewares = match middlewares.is_empty() {
        true => None,
        false => Some(Box::new(Middlewares::compile(field, middlewares)?)),
    };
    Ok(Target {
        order: WeightedOrder::new(&weights),
        backends: checked,
        cohorts: rules,
        middlewares,
    })
}

/// What a backend's name may be: it names a version in counts, cookies and labels.
pub const BACKEND_NAME_RULE: &str = "1 to 63 letters, digits, '-', '_' or '.'";

pub fn valid_backend_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"=;,\"~".contains(&b))
}

/// One backend, checked: its destinations all http:// or all https://, h2c only over http://.
fn backend(
    at: &str,
    name: &str,
    urls: &[String],
    weight: u32,
    protocol: Option<&str>,
    tls_verify: bool,
) -> Result<Backend, RouteError> {
    let destinations = urls
        .iter()
        .map(|u| Destination::parse(u))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(at, e))?;
    let h2c = match protocol {
        None | Some("http1") => false,
        Some("h2c") => true,
        Some(other) => {
            return Err(invalid(
                format!("{at}.protocol"),
                format!("{other:?}: use http1 or h2c"),
            ))
        }
    };
    let b = Backend {
        name: name.into(),
        destinations,
        weight,
        h2c,
        tls_verify,
    };
    if b.destinations.iter().any(|d| d.tls != b.tls()) {
        return Err(invalid(at, "destinations mix http:// and https://"));
    }
    if b.h2c && b.tls() {
        return Err(invalid(
            at,
            "h2c is HTTP/2 without TLS: use http:// destinations",
        ));
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(value: &str) -> Route {
        Route::parse(value.as_bytes()).unwrap()
    }

    fn refused(value: &str) -> String {
        match Route::parse(value.as_bytes()) {
            Ok(r) => panic!("{value} parsed: {r:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn roo_urls_and_the_older_json_are_one_backend() {
        let r = route("http://tasks.app_web:80");
        let b = &r.target.backends[0];
        assert_eq!(
            (&*b.name, b.weight, b.h2c, b.tls_verify),
            ("default", 100, false, true)
        );
        assert_eq!(
            b.destinations[0],
            Destination {
                tls: false,
                host: "tasks.app_web".into(),
                port: 80,
                ip: None,
            }
        );
        let ip = route("http://10.0.0.5:8080").target.backends[0].destinations[0].ip;
        assert_eq!(ip, Some([10, 0, 0, 5].into()));
        assert_eq!(
            route("https://10.0.0.5").target.backends[0].destinations[0].port,
            443
        );
        let r = route(r#"{"destinations":["http://a:81","http://b:82/"]}"#);
        assert_eq!(
            (
                r.target.backends[0].destinations.len(),
                r.target.backends[0].h2c
            ),
            (2, false)
        );
        assert!(
            route(r#"{"destinations":["http://grpc:50051"],"protocol":"h2c"}"#)
                .target
                .backends[0]
                .h2c
        );
        let r = route(r#"{"destinations":["https://a"],"tls_verify":false}"#);
        assert!(r.target.backends[0].tls() && !r.target.backends[0].tls_verify);
        for bad in [
            "tasks.app_web:80",
            "http://a:80/path",
            "http://a:notaport",
            "http://*.a.com:80",
            r#"{"destinations":[]}"#,
            r#"{"destinations":["ftp://a"]}"#,
            r#"{"destinations":["http://a"],"protocol":"spdy"}"#,
            r#"{"destinations":["https://a","http://b"]}"#,
            r#"{"destinations":["https://a"],"protocol":"h2c"}"#,
            r#"{"other":1}"#,
        ] {
            refused(bad);
        }
        assert!(Route::parse(b"\xff\xfe").is_err());
    }

    #[test]
    fn json_routes_parse_and_write_back_the_same() {
        let text = r#"{
            "backends": [
                {"name": "v1", "url": "http://tasks.app_v1:80", "weight": 90},
                {"name": "v2", "urls": ["http://10.0.0.1:80", "http://10.0.0.2:80"], "weight": 10, "protocol": "h2c"}
            ],
            "match": [
                {"header": "X-Canary", "value": "always", "backend": "v2"},
                {"cookie": "canary", "value": "1", "backend": "v2"}
            ],
            "paths": [
                {"prefix": "/api", "strip_prefix": true, "backends": [{"name": "api", "url": "https://api.internal:8443", "tls_verify": false}]},
                {"prefix": "/api/v2", "backends": [{"name": "api2", "url": "http://api2:80"}]}
            ]
        }"#;
        let r = route(text);
        assert_eq!(r.target.backends.len(), 2);
        assert_eq!(r.target.cohorts.len(), 2);
        // Longest prefix first.
        let prefixes: Vec<_> = r.paths.iter().map(|p| &*p.prefix).collect();
        assert_eq!(prefixes, ["/api/v2", "/api"]);
        let again = route(&r.to_json().to_string());
        assert_eq!(again.to_json(), r.to_json());
        let json = r.to_json();
        assert_eq!(json["backends"][0]["url"], "http://tasks.app_v1:80");
        assert_eq!(json["backends"][1]["urls"][1], "http://10.0.0.2:80");
        assert_eq!(json["backends"][1]["protocol"], "h2c");
        assert_eq!(json["match"][0]["header"], "x-canary");
        assert_eq!(json["paths"][1]["backends"][0]["tls_verify"], false);
        // A plain URL written back is the JSON route of its one backend.
        assert_eq!(
            route("http://a:80").to_json(),
            serde_json::json!({"backends":[{"name":"default","url":"http://a:80","weight":100}]})
        );
    }

    #[test]
    fn errors_name_the_field() {
        for (value, says) in [
            (r#"{"backends":[]}"#, "backends: no backends"),
            (
                r#"{"backends":[{"name":"a","url":"http://a","weight":0}]}"#,
                "backends: the weights sum to 0",
            ),
            (
                r#"{"backends":[{"name":"a","url":"http://a","weight":-1}]}"#,
                "backends[0].weight: invalid value",
            ),
            (
                r#"{"backends":[{"name":"a","url":"http://a","wieght":1}]}"#,
                "backends[0].wieght: unknown field `wieght`",
            ),
            (
                r#"{"backends":[{"name":"a","url":"http://a"}],"stickiness":{}}"#,
                "stickiness: unknown field `stickiness`",
            ),
            (
                r#"{"backends":[{"name":"a b","url":"http://a"}]}"#,
                "backends[0].name",
            ),
            (
                r#"{"backends":[{"name":"a","url":"http://a"},{"name":"a","url":"http://b"}]}"#,
                "backends[1].name: \"a\" given twice",
            ),
            (r#"{"backends":[{"name":"a"}]}"#, "backends[0]: no url"),
            (
                r#"{"backends":[{"name":"a","url":"http://a","urls":["http://b"]}]}"#,
                "backends[0]: give url or urls",
            ),
            (
                r#"{"backends":[{"name":"a","url":"ftp://a"}]}"#,
                "backends[0]: invalid destination",
            ),
            (
                r#"{"backends":[{"name":"a","url":"http://a","weight":10001}]}"#,
                "backends[0].weight: at most 10000",
            ),
            (
                r#"{"backends":[{"name":"a","url":"http://a"}],"match":[{"header":"x","value":"1","backend":"b"}]}"#,
                "match[0].backend: no backend named \"b\"",
            ),
            (
                r#"{"backends":[{"name":"a","url":"http://a"}],"match":[{"header":"a b","value":"1","backend":"a"}]}"#,
                "match[0].header",
            ),
            (
                r#"{"backends":[{"name":"a","url":"http://a"}],"match":[{"value":"1","backend":"a"}]}"#,
                "match[0]: give header or cookie",
            ),
            (
                r#"{"backends":[{"name":"a","url":"http://a"}],"paths":[{"prefix":"api","backends":[{"name":"b","url":"http://b"}]}]}"#,
                "paths[0].prefix",
            ),
            (
                r#"{"backends":[{"name":"a","url":"http://a"}],"paths":[{"prefix":"/x","backends":[]}]}"#,
                "paths[0].backends: no backends",
            ),
            (
                r#"{"backends":[{"name":"a","url":"http://a"}],"paths":[{"prefix":"/x","backends":[{"name":"b","url":"http://b"}]},{"prefix":"/x","backends":[{"name":"b","url":"http://b"}]}]}"#,
                "paths[1].prefix: given twice",
            ),
            ("{", "route: EOF"),
            (
                r#"{"backends":[{"name":"a","url":"http://a"}],"health":{"path":"healthz"}}"#,
                "health.path",
            ),
            (
                r#"{"backends":[{"name":"a","url":"http://a"}],"health":{"path":"/h","interval_ms":5}}"#,
                "health.interval_ms: from 100",
            ),
            (
                r#"{"backends":[{"name":"a","url":"http://a"}],"sticky":{"cookie":"a;b"}}"#,
                "sticky.cookie: not a cookie name",
            ),
        ] {
            let error = refused(value);
            assert!(
                error.starts_with(says),
                "{value}: {error:?} does not start with {says:?}"
            );
        }
    }

    fn picked(r: &Route, path: &str, headers: &HeaderMap) -> String {
        match r.choose(path, headers) {
            Some((c, _)) => r.backend(c).name.to_string(),
            None => "-".to_string(),
        }
    }

    fn counts(r: &Route, headers: &HeaderMap, n: usize) -> Vec<(String, usize)> {
        let mut seen = std::collections::BTreeMap::new();
        for _ in 0..n {
            *seen.entry(picked(r, "/", headers)).or_insert(0) += 1;
        }
        seen.into_iter().collect()
    }

    #[test]
    fn weights_are_kept_exactly_and_smoothly() {
        let r = route(
            r#"{"backends":[{"name":"a","url":"http://a","weight":5},{"name":"b","url":"http://b","weight":1},{"name":"c","url":"http://c","weight":1}]}"#,
        );
        let none = HeaderMap::new();
        let order: String = (0..7).map(|_| picked(&r, "/", &none)).collect();
        assert_eq!(order, "aabacaa");
        let r = route(
            r#"{"backends":[{"name":"v1","url":"http://a","weight":90},{"name":"v2","url":"http://b","weight":10}]}"#,
        );
        assert_eq!(
            counts(&r, &none, 4000),
            [("v1".into(), 3600), ("v2".into(), 400)]
        );
        // A drained backend takes nothing; weights past the order's length are rounded.
        let r = route(
            r#"{"backends":[{"name":"a","url":"http://a","weight":0},{"name":"b","url":"http://b","weight":3}]}"#,
        );
        assert_eq!(counts(&r, &none, 10), [("b".into(), 10)]);
        let r = route(
            r#"{"backends":[{"name":"a","url":"http://a","weight":9999},{"name":"b","url":"http://b","weight":1}]}"#,
        );
        assert_eq!(
            counts(&r, &none, 1000),
            [("a".into(), 999), ("b".into(), 1)]
        );
        assert_eq!(WeightedOrder::new(&[7919, 7907]).order.len(), 1000);
    }

    #[test]
    fn cohorts_pick_before_weights() {
        let r = route(
            r#"{"backends":[{"name":"v1","url":"http://a"},{"name":"v2","url":"http://b","weight":0}],
            "match":[{"header":"X-Canary","value":"always","backend":"v2"},{"cookie":"canary","value":"1","backend":"v2"}]}"#,
        );
        let mut headers = HeaderMap::new();
        assert_eq!(counts(&r, &headers, 5), [("v1".into(), 5)]);
        headers.insert("x-canary", "always".parse().unwrap());
        assert_eq!(counts(&r, &headers, 5), [("v2".into(), 5)]);
        headers.insert("x-canary", "no".parse().unwrap());
        headers.insert(COOKIE, "a=b; canary=1".parse().unwrap());
        assert_eq!(counts(&r, &headers, 5), [("v2".into(), 5)]);
        headers.insert(COOKIE, "canary=10; xcanary=1".parse().unwrap());
        assert_eq!(counts(&r, &headers, 5), [("v1".into(), 5)]);
    }

    #[test]
    fn paths_take_their_prefix_and_what_is_below_it() {
        let r = route(
            r#"{"backends":[{"name":"site","url":"http://a"}],"paths":[
            {"prefix":"/api","strip_prefix":true,"backends":[{"name":"api","url":"http://b"}]},
            {"prefix":"/static/","backends":[{"name":"files","url":"http://c"}]}]}"#,
        );
        let name = |path: &str| picked(&r, path, &HeaderMap::new());
        for (path, backend) in [
            ("/", "site"),
            ("/api", "api"),
            ("/api/users", "api"),
            ("/apix", "site"),
            ("/static/a.css", "files"),
            ("/static", "site"),
        ] {
            assert_eq!(name(path), backend, "{path}");
        }
        let api = r
            .path(r.choose("/api", &HeaderMap::new()).unwrap().0)
            .unwrap();
        assert_eq!(api.upstream_path("/api/users?x=1"), "/users?x=1");
        assert_eq!(api.upstream_path("/api"), "/");
        assert_eq!(api.upstream_path("/api?x=1"), "/?x=1");
        let files = r
            .path(r.choose("/static/a", &HeaderMap::new()).unwrap().0)
            .unwrap();
        assert_eq!(files.upstream_path("/static/a.css"), "/a.css");
        // Paths alone: the rest of the host is not routed.
        let r =
            route(r#"{"paths":[{"prefix":"/api","backends":[{"name":"api","url":"http://b"}]}]}"#);
        assert_eq!(picked(&r, "/api/x", &HeaderMap::new()), "api");
        assert_eq!(picked(&r, "/", &HeaderMap::new()), "-");
        assert_eq!(route(&r.to_json().to_string()).to_json(), r.to_json());
    }
}
