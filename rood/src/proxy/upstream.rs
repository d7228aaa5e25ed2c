//! Upstream addresses: a route's destinations resolved to socket addresses (every address DNS
//! returns: `tasks.<service>` gives one per task), taken round robin, with an address that
//! refused a connection left out for a while.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hickory_resolver::TokioResolver;
use http_body_util::combinators::BoxBody;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::ProxyError;
use crate::routes::Destination;

/// How long an address that refused a connection is left out.
const EJECT_FOR: Duration = Duration::from_secs(10);

/// The body of requests sent upstream.
pub type UpstreamBody = BoxBody<Bytes, hyper::Error>;

/// Upstream connections and address choice, shared by every request.
pub struct Upstreams {
    resolver: TokioResolver,
    /// Pooled keep-alive HTTP/1.1 connections, one pool per address.
    pub(super) client: Client<HttpConnector, UpstreamBody>,
    /// HTTP/2 over plain TCP (prior knowledge), for `h2c` routes: one multiplexed connection
    /// per address.
    pub(super) h2c: Client<HttpConnector, UpstreamBody>,
    /// Addresses left out until the given time. A plain lock: held for a lookup, never across
    /// an await.
    ejected: Mutex<HashMap<SocketAddr, Instant>>,
    next: AtomicUsize,
    /// How long an upstream may take to answer with headers.
    pub(super) timeout: Duration,
}

impl Upstreams {
    pub fn new(resolver: TokioResolver, timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(3)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(connector.clone());
        let h2c = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .http2_only(true)
            .build(connector);
        Upstreams {
            resolver,
            client,
            h2c,
            ejected: Mutex::new(HashMap::new()),
            next: AtomicUsize::new(0),
            timeout,
        }
    }

    /// Every address of every destination, in a stable order.
    pub async fn resolve(
        &self,
        destinations: &[Destination],
    ) -> Result<Vec<SocketAddr>, ProxyError> {
        let mut addrs = Vec::new();
        let mut last_error = None;
        for d in destinations {
            if let Ok(ip) = d.host.parse::<IpAddr>() {
                addrs.push(SocketAddr::new(ip, d.port));
                continue;
            }
            // hickory caches answers for their TTL, so this is a lookup in memory most times.
            match crate::dns::lookup(&self.resolver, &d.host).await {
                Ok(ips) => addrs.extend(ips.into_iter().map(|ip| SocketAddr::new(ip, d.port))),
                Err(e) => last_error = Some(e),
            }
        }
        if addrs.is_empty() {
            let host = destinations
                .first()
                .map(|d| d.host.clone())
                .unwrap_or_default();
            return Err(ProxyError::Resolve {
                host,
                reason: last_error.map_or_else(|| "no address".to_string(), |e| e.to_string()),
            });
        }
        Ok(addrs)
    }

    /// The next address round robin, skipping ejected ones and `not` (when others remain).
    pub fn pick(&self, addrs: &[SocketAddr], not: Option<SocketAddr>) -> Option<SocketAddr> {
        let now = Instant::now();
        let ejected = self.ejected.lock().unwrap_or_else(|p| p.into_inner());
        let usable: Vec<SocketAddr> = addrs
            .iter()
            .copied()
            .filter(|a| Some(*a) != not && ejected.get(a).is_none_or(|until| *until <= now))
            .collect();
        drop(ejected);
        let pool = if usable.is_empty() {
            // Everything is ejected: better to try one than to fail without trying.
            addrs.iter().copied().filter(|a| Some(*a) != not).collect()
        } else {
            usable
        };
        if pool.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        Some(pool[i % pool.len()])
    }

    /// Leaves `addr` out for a while after a failed connect.
    pub fn eject(&self, addr: SocketAddr) {
        tracing::warn!(%addr, secs = EJECT_FOR.as_secs(), "upstream refused a connection; ejecting it");
        let mut ejected = self.ejected.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        ejected.retain(|_, until| *until > now);
        ejected.insert(addr, now + EJECT_FOR);
    }
}
