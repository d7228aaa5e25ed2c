//! The routing table: where a request for a host goes. A pure data structure; the proxy reads an
//! immutable snapshot of it on every request, and [`crate::feed`] builds new snapshots from KV
//! changes.
//!
//! Keys are Roo's: `com.roo.host:<host>[:<port>]:<scheme>`, where `<scheme>` is the incoming
//! scheme (`http` or `https`) and the port is left out when it is the scheme's default. Hosts
//! match case-insensitively and exactly; a `*.example.com` route matches one label below
//! `example.com` (not `example.com` itself, not `a.b.example.com`).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// Prefix of route keys in the KV.
pub const ROUTE_PREFIX: &str = "com.roo.host:";

/// The incoming scheme a route applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    pub fn parse(s: &str) -> Option<Scheme> {
        match s {
            "http" => Some(Scheme::Http),
            "https" => Some(Scheme::Https),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a route key names: incoming host (lowercase, maybe `*.`-prefixed), port, scheme.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteKey {
    pub host: String,
    /// None: the scheme's default port.
    pub port: Option<u16>,
    pub scheme: Scheme,
}

/// Why a route key or value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("not a route key: {0}")]
    NotARouteKey(String),
    #[error("invalid host {0:?}")]
    InvalidHost(String),
    #[error("invalid port in {0:?}")]
    InvalidPort(String),
    #[error("invalid scheme {0:?}: use http or https")]
    InvalidScheme(String),
    #[error("invalid destination {0:?}: {1}")]
    InvalidDestination(String, String),
}

/// Checks a DNS host name (optionally `*.`-prefixed) and returns it lowercased.
pub fn normalize_host(host: &str) -> Result<String, RouteError> {
    if valid_host(host) {
        Ok(host.trim_end_matches('.').to_ascii_lowercase())
    } else {
        Err(RouteError::InvalidHost(host.to_string()))
    }
}

/// Whether `host` is a DNS name (any case, maybe `*.` in front and a dot at the end), checked
/// without copying it: every request's Host is.
pub fn valid_host(host: &str) -> bool {
    let name = host.trim_end_matches('.');
    let name = name.strip_prefix("*.").unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    // One pass: labels of 1 to 63 letters, digits, `-` or `_`, not starting or ending with `-`.
    let (mut label, mut last) = (0, b'.');
    for &b in name.as_bytes() {
        if b == b'.' {
            if label == 0 || last == b'-' {
                return false;
            }
            label = 0;
        } else {
            let allowed = b.is_ascii_alphanumeric() || b == b'_' || (b == b'-' && label > 0);
            label += 1;
            if !allowed || label > 63 {
                return false;
            }
        }
        last = b;
    }
    last != b'-'
}

impl RouteKey {
    /// Parses `com.roo.host:<host>[:<port>]:<scheme>`.
    pub fn parse(key: &str) -> Result<RouteKey, RouteError> {
        let rest = key
            .strip_prefix(ROUTE_PREFIX)
            .ok_or_else(|| RouteError::NotARouteKey(key.to_string()))?;
        let (host_port, scheme) = rest
            .rsplit_once(':')
            .ok_or_else(|| RouteError::InvalidScheme(String::new()))?;
        let scheme =
            Scheme::parse(scheme).ok_or_else(|| RouteError::InvalidScheme(scheme.to_string()))?;
        let (host, port) = match host_port.split_once(':') {
            Some((host, port)) => {
                let port: u16 = port
                    .parse()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| RouteError::InvalidPort(key.to_string()))?;
                (host, (port != scheme.default_port()).then_some(port))
            }
            None => (host_port, None),
        };
        Ok(RouteKey {
            host: normalize_host(host)?,
            port,
            scheme,
        })
    }
}

impl fmt::Display for RouteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{ROUTE_PREFIX}{}", self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        write!(f, ":{}", self.scheme)
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

/// Where matching requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub destinations: Vec<Destination>,
    /// Speak HTTP/2 without TLS (prior knowledge) to the upstream: gRPC servers.
    pub h2c: bool,
    /// Check the certificate of `https://` destinations (the default). Off only when the JSON
    /// form says `"tls_verify": false`.
    pub tls_verify: bool,
}

impl Route {
    /// Whether the destinations are reached over TLS.
    pub fn tls(&self) -> bool {
        self.destinations.first().is_some_and(|d| d.tls)
    }
}

impl Route {
    /// Parses a route value: Roo's destination URL, or the JSON form
    /// `{"destinations":["http://a:80","http://b:80"],"protocol":"h2c","tls_verify":false}`
    /// (`protocol`: `http1`, the default, or `h2c` for gRPC upstreams; `tls_verify`: true by
    /// default, for `https://` destinations).
    pub fn parse(value: &[u8]) -> Result<Route, RouteError> {
        let text = std::str::from_utf8(value)
            .map_err(|_| RouteError::InvalidDestination("<binary>".into(), "not UTF-8".into()))?
            .trim();
        if text.starts_with('{') {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Json {
                destinations: Vec<String>,
                #[serde(default)]
                protocol: Option<String>,
                #[serde(default = "yes")]
                tls_verify: bool,
            }
            fn yes() -> bool {
                true
            }
            let json: Json = serde_json::from_str(text)
                .map_err(|e| RouteError::InvalidDestination(text.to_string(), e.to_string()))?;
            if json.destinations.is_empty() {
                return Err(RouteError::InvalidDestination(
                    text.to_string(),
                    "no destinations".into(),
                ));
            }
            let destinations = json
                .destinations
                .iter()
                .map(|d| Destination::parse(d))
                .collect::<Result<_, _>>()?;
            let h2c = match json.protocol.as_deref() {
                None | Some("http1") => false,
                Some("h2c") => true,
                Some(other) => {
                    return Err(RouteError::InvalidDestination(
                        text.to_string(),
                        format!("protocol {other:?}: use http1 or h2c"),
                    ))
                }
            };
            let route = Route {
                destinations,
                h2c,
                tls_verify: json.tls_verify,
            };
            if route.destinations.iter().any(|d| d.tls != route.tls()) {
                return Err(RouteError::InvalidDestination(
                    text.to_string(),
                    "destinations mix http:// and https://".into(),
                ));
            }
            if route.h2c && route.tls() {
                return Err(RouteError::InvalidDestination(
                    text.to_string(),
                    "h2c is HTTP/2 without TLS: use http:// destinations".into(),
                ));
            }
            return Ok(route);
        }
        Ok(Route {
            destinations: vec![Destination::parse(text)?],
            h2c: false,
            tls_verify: true,
        })
    }
}

/// An immutable routing table.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    /// By host name (lowercase; `*.` for a wildcard), each with its few routes by port and
    /// scheme: a lookup borrows the request's host, with no key to build.
    hosts: HashMap<String, HostRoutes, ahash::RandomState>,
}

/// One host's routes, by port (None: the scheme's default) and scheme.
type HostRoutes = Vec<(Option<u16>, Scheme, Arc<Route>)>;

impl RouteTable {
    pub fn insert(&mut self, key: RouteKey, route: Route) {
        let routes = self.hosts.entry(key.host).or_default();
        let route = Arc::new(route);
        match routes
            .iter_mut()
            .find(|(port, scheme, _)| *port == key.port && *scheme == key.scheme)
        {
            Some(slot) => slot.2 = route,
            None => routes.push((key.port, key.scheme, route)),
        }
    }

    pub fn remove(&mut self, key: &RouteKey) {
        if let Some(routes) = self.hosts.get_mut(&key.host) {
            routes.retain(|(port, scheme, _)| !(*port == key.port && *scheme == key.scheme));
            if routes.is_empty() {
                self.hosts.remove(&key.host);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.hosts.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Every host with an https route: the hosts that should have a certificate.
    pub fn https_hosts(&self) -> std::collections::BTreeSet<String> {
        self.hosts
            .iter()
            .filter(|(_, routes)| routes.iter().any(|(_, s, _)| *s == Scheme::Https))
            .map(|(host, _)| host.clone())
            .collect()
    }

    /// The route for a request to `host` (as in the Host header, maybe with a port) arriving on
    /// `scheme`: `host:port:scheme` first, then `host:scheme`, then the wildcard one label up.
    pub fn lookup(&self, host: &str, scheme: Scheme) -> Option<&Arc<Route>> {
        let (name, port) = split_host_port(host)?;
        self.find(name, port, scheme)
    }

    /// [`RouteTable::lookup`] of a host already split into its name and port.
    pub fn find(&self, name: &str, port: Option<u16>, scheme: Scheme) -> Option<&Arc<Route>> {
        let name = name.trim_end_matches('.');
        let name = lowercase(name);
        let port = port.filter(|p| *p != scheme.default_port());
        let find = |h: &str| -> Option<&Arc<Route>> {
            let routes = self.hosts.get(h)?;
            let on = |p: Option<u16>| {
                routes
                    .iter()
                    .find(|(port, s, _)| *port == p && *s == scheme)
                    .map(|(_, _, r)| r)
            };
            port.and_then(|_| on(port)).or_else(|| on(None))
        };
        if let Some(r) = find(&name) {
            return Some(r);
        }
        let (_, parent) = name.split_once('.')?;
        find(&format!("*.{parent}"))
    }
}

/// `name` in lowercase, copied only when it has an uppercase letter (most hosts do not).
pub fn lowercase(name: &str) -> std::borrow::Cow<'_, str> {
    match name.bytes().any(|b| b.is_ascii_uppercase()) {
        true => std::borrow::Cow::Owned(name.to_ascii_lowercase()),
        false => std::borrow::Cow::Borrowed(name),
    }
}

/// Splits `host[:port]`; None when the port is not a number.
pub fn split_host_port(host: &str) -> Option<(&str, Option<u16>)> {
    let bytes = host.as_bytes();
    match bytes.iter().rposition(|&b| b == b':') {
        None => Some((host, None)),
        Some(colon) if bytes[..colon].contains(&b':') => None,
        Some(colon) => Some((&host[..colon], Some(host[colon + 1..].parse().ok()?))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, &str)]) -> RouteTable {
        let mut t = RouteTable::default();
        for (k, v) in entries {
            t.insert(
                RouteKey::parse(k).unwrap(),
                Route::parse(v.as_bytes()).unwrap(),
            );
        }
        t
    }

    #[test]
    fn host_names_are_checked() {
        let long_label = "a".repeat(63);
        let too_long_label = "a".repeat(64);
        let long_name = ["abcdefghi"; 25].join(".") + ".abc"; // 253 bytes
        for good in [
            "example.com",
            "Example.COM.",
            "*.example.com",
            "a",
            "a-b_c.d9",
            "x..",
            long_label.as_str(),
            long_name.as_str(),
        ] {
            assert!(valid_host(good), "{good}");
        }
        for bad in [
            "",
            ".",
            "*.",
            ".example.com",
            "a..b",
            "-a.com",
            "a-.com",
            "a.-b",
            "a.b-",
            "a b.com",
            "a:80",
            "*.*.a",
            "é.com",
            too_long_label.as_str(),
            &(long_name.clone() + "a"),
        ] {
            assert!(!valid_host(bad), "{bad}");
        }
        assert_eq!(split_host_port("a.com"), Some(("a.com", None)));
        assert_eq!(split_host_port("a.com:8080"), Some(("a.com", Some(8080))));
        assert_eq!(split_host_port("a.com:"), None);
        assert_eq!(split_host_port("a.com:x"), None);
        assert_eq!(split_host_port("a.com:70000"), None);
        assert_eq!(split_host_port("::1"), None);
    }

    fn dest(t: &RouteTable, host: &str, scheme: Scheme) -> Option<String> {
        t.lookup(host, scheme)
            .map(|r| r.destinations[0].to_string())
    }

    #[test]
    fn parses_roo_keys() {
        let k = RouteKey::parse("com.roo.host:Example.COM:https").unwrap();
        assert_eq!(
            (k.host.as_str(), k.port, k.scheme),
            ("example.com", None, Scheme::Https)
        );
        let k = RouteKey::parse("com.roo.host:example.com:8443:https").unwrap();
        assert_eq!(k.port, Some(8443));
        // The default port is the same as none.
        assert_eq!(
            RouteKey::parse("com.roo.host:example.com:443:https")
                .unwrap()
                .port,
            None
        );
        assert_eq!(k.to_string(), "com.roo.host:example.com:8443:https");
        assert!(RouteKey::parse("com.roo.host:*.example.com:http").is_ok());
        for bad in [
            "com.roo.hostexample.com:https",
            "com.roo.host:example.com:ftp",
            "com.roo.host:example.com",
            "com.roo.host:exa mple.com:https",
            "com.roo.host:-bad.com:https",
            "com.roo.host:example.com:99999:https",
            "com.roo.host:example.com:0:https",
            "com.roo.host::https",
        ] {
            assert!(RouteKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_destinations() {
        let r = Route::parse(b"http://tasks.app_web:80").unwrap();
        assert_eq!(
            r.destinations[0],
            Destination {
                tls: false,
                host: "tasks.app_web".into(),
                port: 80,
                ip: None,
            }
        );
        let ip = Route::parse(b"http://10.0.0.5:8080").unwrap().destinations[0].ip;
        assert_eq!(ip, Some([10, 0, 0, 5].into()));
        assert_eq!(
            Route::parse(b"https://10.0.0.5").unwrap().destinations[0].port,
            443
        );
        let r = Route::parse(br#"{"destinations":["http://a:81","http://b:82/"]}"#).unwrap();
        assert_eq!((r.destinations.len(), r.h2c), (2, false));
        let r =
            Route::parse(br#"{"destinations":["http://grpc:50051"],"protocol":"h2c"}"#).unwrap();
        assert!(r.h2c);
        assert!(Route::parse(br#"{"destinations":["http://a"],"protocol":"spdy"}"#).is_err());
        assert!(Route::parse(b"https://secure:8443").unwrap().tls_verify);
        let r = Route::parse(br#"{"destinations":["https://a"],"tls_verify":false}"#).unwrap();
        assert!(r.tls() && !r.tls_verify);
        assert!(Route::parse(br#"{"destinations":["https://a","http://b"]}"#).is_err());
        assert!(Route::parse(br#"{"destinations":["https://a"],"protocol":"h2c"}"#).is_err());
        for bad in [
            &b"tasks.app_web:80"[..],
            b"http://a:80/path",
            b"http://a:notaport",
            b"http://*.a.com:80",
            b"{\"destinations\":[]}",
            b"{\"destinations\":[\"ftp://a\"]}",
            b"{\"other\":1}",
            b"\xff\xfe",
        ] {
            assert!(
                Route::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn lookup_is_exact_case_insensitive_with_port_fallback() {
        let t = table(&[
            ("com.roo.host:example.com:https", "http://web:80"),
            ("com.roo.host:example.com:8443:https", "http://alt:80"),
            ("com.roo.host:example.com:http", "http://plain:80"),
        ]);
        assert_eq!(
            dest(&t, "EXAMPLE.com", Scheme::Https).as_deref(),
            Some("http://web:80")
        );
        assert_eq!(
            dest(&t, "example.com:443", Scheme::Https).as_deref(),
            Some("http://web:80")
        );
        assert_eq!(
            dest(&t, "example.com.", Scheme::Https).as_deref(),
            Some("http://web:80")
        );
        assert_eq!(
            dest(&t, "example.com:8443", Scheme::Https).as_deref(),
            Some("http://alt:80")
        );
        // A port with no route of its own falls back to the host's route.
        assert_eq!(
            dest(&t, "example.com:9000", Scheme::Https).as_deref(),
            Some("http://web:80")
        );
        assert_eq!(
            dest(&t, "example.com", Scheme::Http).as_deref(),
            Some("http://plain:80")
        );
        // Exact only: Roo's prefix check let these through.
        assert_eq!(dest(&t, "example.co", Scheme::Https), None);
        assert_eq!(dest(&t, "example.com.evil.net", Scheme::Https), None);
        assert_eq!(dest(&t, "www.example.com", Scheme::Https), None);
        assert_eq!(dest(&t, "example.com:notaport", Scheme::Https), None);
    }

    #[test]
    fn wildcards_match_one_label() {
        let t = table(&[
            ("com.roo.host:*.example.com:https", "http://any:80"),
            ("com.roo.host:api.example.com:https", "http://api:80"),
        ]);
        assert_eq!(
            dest(&t, "www.example.com", Scheme::Https).as_deref(),
            Some("http://any:80")
        );
        assert_eq!(
            dest(&t, "API.example.com", Scheme::Https).as_deref(),
            Some("http://api:80")
        );
        assert_eq!(dest(&t, "example.com", Scheme::Https), None);
        assert_eq!(dest(&t, "a.b.example.com", Scheme::Https), None);
        assert_eq!(dest(&t, "www.example.com", Scheme::Http), None);
    }
}
