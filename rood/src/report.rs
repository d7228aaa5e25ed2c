//! What the data plane tells of its work: the proxy calls the [`Report`] it is given, per
//! worker; [`crate::metrics`] is the one a node gives it. Neither side knows the other's types,
//! only these.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use crate::routes::Scheme;

/// Where a request went, as its counts and its log line name it; a plain address's text is made
/// only when shown.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Upstream {
    /// A plain HTTP destination's address.
    Addr(SocketAddr),
    /// A TLS destination, `https://host:port` (its addresses rotate in the connector).
    Tls(Arc<str>),
    /// This node's own answer to an ACME HTTP-01 challenge.
    Acme,
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Upstream::Addr(addr) => write!(f, "http://{addr}"),
            Upstream::Tls(target) => f.write_str(target),
            Upstream::Acme => f.write_str("acme"),
        }
    }
}

/// One answered request.
#[derive(Debug)]
pub struct Served<'a> {
    /// The route's name (`<host>[:<port>]:<scheme>`), or `-` for a request no route took (so
    /// that request headers cannot grow a label set).
    pub route: &'a str,
    pub status: u16,
    /// The route's backend; None for this node's own answers.
    pub backend: Option<&'a str>,
    /// None when no upstream was reached.
    pub upstream: Option<&'a Upstream>,
    pub scheme: Scheme,
    pub seconds: f64,
}

/// How a client's TLS handshake went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// A new session.
    Full,
    /// A session resumed from a ticket or the session cache.
    Resumed,
    /// Failed or timed out.
    Failed,
}

/// The reports of one proxy worker. Its thread alone calls them on a request: an
/// implementation may keep per-worker counts without contention.
pub trait Report: Send + Sync {
    fn served(&self, served: &Served<'_>);
    /// A connection to `upstream` failed; `ejected`: its address left rotation for it.
    fn upstream_refused(&self, upstream: &Upstream, ejected: bool);
    /// A client's TLS handshake.
    fn tls_handshake(&self, handshake: Handshake);
    /// The count of a listener's open client connections, which the worker keeps up.
    fn open_connections(&self, scheme: Scheme) -> Level;
}

/// A number the data plane keeps up and a report reads when it likes.
#[derive(Debug, Clone, Default)]
pub struct Level(Arc<AtomicI64>);

impl Level {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_are_named_as_urls() {
        assert_eq!(
            Upstream::Addr(SocketAddr::from(([127, 0, 0, 1], 8080))).to_string(),
            "http://127.0.0.1:8080"
        );
        let v6 = Upstream::Addr("[::1]:81".parse().unwrap());
        assert_eq!(v6.to_string(), "http://[::1]:81");
        assert_eq!(
            Upstream::Tls("https://a.test:443".into()).to_string(),
            "https://a.test:443"
        );
        assert_eq!(Upstream::Acme.to_string(), "acme");
    }
}
