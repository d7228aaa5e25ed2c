//! Routes: where a request for a host goes.
//!
//! - this file: route keys (host, port, incoming scheme) and host names;
//! - [`model`]: what a route does (backends, weights, cohorts, paths), parsed and checked;
//! - [`middleware`]: what a route does to requests and answers on the way (auth, limits...);
//! - [`table`]: the routing table the proxy reads a snapshot of on every request, which
//!   [`crate::feed`] keeps equal to the KV;
//! - [`write`]: the one write path of every writer; [`reconcile`]: a source's routes (the
//!   swarm watcher's) made to match what it wants, as typed steps through that path.
//!
//! Keys are Roo's: `com.roo.host:<host>[:<port>]:<scheme>`, where `<scheme>` is the incoming
//! scheme (`http` or `https`) and the port is left out when it is the scheme's default. Hosts
//! match case-insensitively and exactly; a `*.example.com` route matches one label below
//! `example.com` (not `example.com` itself, not `a.b.example.com`).

use std::fmt;

pub mod middleware;
pub mod model;
pub mod reconcile;
pub mod table;
pub mod write;

pub use model::{Backend, Destination, PathRoute, Route, Target};
pub use table::RouteTable;

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
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
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
}
