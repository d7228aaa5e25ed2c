//! What a node counts, served as Prometheus text on `GET /metrics` (API port).
//!
//! The request path only increments counters ([`Metrics`] fields); values that already live
//! elsewhere (raft's state, the route and certificate tables, the ACME issuer's counts) are read
//! when the page is rendered.

use std::time::UNIX_EPOCH;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use roo_kv::Kv;

use crate::feed::Tables;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub host: String,
    /// `2xx`, `3xx`, `4xx`, `5xx`.
    pub status: &'static str,
    /// The upstream address, `acme` for challenges, `-` when none was reached.
    pub upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SchemeLabels {
    /// `http` or `https`.
    pub scheme: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabels {
    pub host: String,
}

/// The ACME issuer's counts, as [`roo_acme::Issuer::stats`] gives them.
pub type AcmeStats = roo_acme::issuer::Stats;

/// Every metric of a node.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: Family<SchemeLabels, Histogram>,
    pub upstream_connect_errors: Family<UpstreamLabels, Counter>,
    pub upstream_ejections: Family<UpstreamLabels, Counter>,
    pub open_connections: Family<SchemeLabels, Gauge>,
    pub tls_handshakes: Counter,
    pub tls_handshake_failures: Counter,
    pub swarm_reconciles: Counter,
    pub swarm_reconcile_errors: Counter,
    pub swarm_reconcile_seconds: Histogram,
    // Read when rendered.
    routes: Gauge,
    certificates: Gauge,
    certificate_expiry: Family<HostLabels, Gauge>,
    acme_orders: Counter,
    acme_failures: Counter,
    acme_issued: Counter,
    raft_term: Gauge,
    raft_is_leader: Gauge,
    raft_leader_id: Gauge,
    raft_commit_index: Gauge,
    raft_applied_index: Gauge,
    raft_apply_lag: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("roo");
        let m = Metrics {
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            upstream_connect_errors: Family::default(),
            upstream_ejections: Family::default(),
            open_connections: Family::default(),
            tls_handshakes: Counter::default(),
            tls_handshake_failures: Counter::default(),
            swarm_reconciles: Counter::default(),
            swarm_reconcile_errors: Counter::default(),
            swarm_reconcile_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            routes: Gauge::default(),
            certificates: Gauge::default(),
            certificate_expiry: Family::default(),
            acme_orders: Counter::default(),
            acme_failures: Counter::default(),
            acme_issued: Counter::default(),
            raft_term: Gauge::default(),
            raft_is_leader: Gauge::default(),
            raft_leader_id: Gauge::default(),
            raft_commit_index: Gauge::default(),
            raft_applied_index: Gauge::default(),
            raft_apply_lag: Gauge::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "requests",
            "Proxied requests by host, status class and upstream",
            m.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Request handling time, by listener",
            m.request_seconds.clone(),
        );
        r.register(
            "upstream_connect_errors",
            "Failed connections to upstreams",
            m.upstream_connect_errors.clone(),
        );
        r.register(
            "upstream_ejections",
            "Upstream addresses left out after a refused connection",
            m.upstream_ejections.clone(),
        );
        r.register(
            "open_connections",
            "Client connections open, by listener",
            m.open_connections.clone(),
        );
        r.register(
            "tls_handshakes",
            "Completed TLS handshakes",
            m.tls_handshakes.clone(),
        );
        r.register(
            "tls_handshake_failures",
            "Failed or timed out TLS handshakes",
            m.tls_handshake_failures.clone(),
        );
        r.register("routes", "Routes in the table", m.routes.clone());
        r.register(
            "certificates",
            "Certificates in the table",
            m.certificates.clone(),
        );
        r.register(
            "certificate_expiry_timestamp_seconds",
            "When each host's certificate expires (Unix seconds)",
            m.certificate_expiry.clone(),
        );
        r.register(
            "acme_orders",
            "ACME orders placed by this node",
            m.acme_orders.clone(),
        );
        r.register(
            "acme_failures",
            "Failed ACME orders on this node",
            m.acme_failures.clone(),
        );
        r.register(
            "acme_certificates_issued",
            "Certificates this node obtained",
            m.acme_issued.clone(),
        );
        r.register("raft_term", "Current raft term", m.raft_term.clone());
        r.register(
            "raft_is_leader",
            "1 when this node leads",
            m.raft_is_leader.clone(),
        );
        r.register(
            "raft_leader_id",
            "The leader's node id (0: none known)",
            m.raft_leader_id.clone(),
        );
        r.register(
            "raft_commit_index",
            "Last log index known committed",
            m.raft_commit_index.clone(),
        );
        r.register(
            "raft_applied_index",
            "Last log index applied",
            m.raft_applied_index.clone(),
        );
        r.register(
            "raft_apply_lag",
            "Log entries held but not applied yet",
            m.raft_apply_lag.clone(),
        );
        r.register(
            "swarm_reconciles",
            "Swarm watcher reconciles",
            m.swarm_reconciles.clone(),
        );
        r.register(
            "swarm_reconcile_errors",
            "Swarm watcher reconciles that failed",
            m.swarm_reconcile_errors.clone(),
        );
        r.register(
            "swarm_reconcile_duration_seconds",
            "Swarm watcher reconcile time",
            m.swarm_reconcile_seconds.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts one answered request (`host` in lowercase).
    pub fn request(
        &self,
        host: String,
        status: u16,
        upstream: &str,
        scheme: &'static str,
        seconds: f64,
    ) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.requests
            .get_or_create(&RequestLabels {
                host,
                status: class,
                upstream: upstream.to_string(),
            })
            .inc();
        self.request_seconds
            .get_or_create(&SchemeLabels { scheme })
            .observe(seconds);
    }

    /// The open-connections gauge of a listener.
    pub fn connections(&self, scheme: &'static str) -> Gauge {
        self.open_connections
            .get_or_create(&SchemeLabels { scheme })
            .clone()
    }

    /// The page, with the values read now from `kv`, `tables` and the issuer.
    pub async fn render(&self, kv: &Kv, tables: &Tables, acme: Option<AcmeStats>) -> String {
        let routes = tables.routes.load();
        self.routes.set(routes.len() as i64);
        let certs = tables.certs.load();
        self.certificates.set(certs.len() as i64);
        self.certificate_expiry.clear();
        for (host, key) in certs.iter() {
            let Some(leaf) = key.cert.first() else {
                continue;
            };
            if let Ok(info) = roo_acme::CertInfo::from_der(leaf) {
                let secs = info
                    .not_after
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                self.certificate_expiry
                    .get_or_create(&HostLabels { host: host.clone() })
                    .set(secs as i64);
            }
        }
        if let Some(stats) = acme {
            set_counter(&self.acme_orders, stats.orders);
            set_counter(&self.acme_failures, stats.failures);
            set_counter(&self.acme_issued, stats.issued);
        }
        let m = kv.raft().metrics().borrow().clone();
        let applied = m.last_applied.map_or(0, |l| l.index);
        let committed = kv.committed_index();
        self.raft_term.set(m.current_term as i64);
        self.raft_is_leader.set(i64::from(
            m.current_leader == Some(kv.node_id()) && m.state.is_leader(),
        ));
        self.raft_leader_id
            .set(m.current_leader.unwrap_or(0) as i64);
        self.raft_commit_index.set(committed as i64);
        self.raft_applied_index.set(applied as i64);
        self.raft_apply_lag
            .set(m.last_log_index.unwrap_or(0).saturating_sub(applied) as i64);
        let mut page = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut page, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        page
    }
}

fn set_counter(counter: &Counter, value: u64) {
    counter
        .inner()
        .store(value, std::sync::atomic::Ordering::Relaxed);
}
