//! What a node counts, served as Prometheus text on `GET /metrics` (API port).
//!
//! The request path only increments counters: each proxy worker its own [`RequestCounts`],
//! summed when the page is rendered, the rest [`Metrics`] fields. Values that already live
//! elsewhere (raft's state, the route and certificate tables, the ACME issuer's counts) are read
//! when the page is rendered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::UNIX_EPOCH;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use roo_kv::Kv;

use crate::report::{Handshake, Level, Report, Served, Upstream};
use crate::routes::Scheme;
use crate::stats::{Tally, Totals};
use crate::tables::Tables;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SchemeLabels {
    /// `http` or `https`.
    pub scheme: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// `full` or `resumed`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabels {
    pub host: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteInfoLabels {
    pub route: String,
    pub rev: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub webhook: String,
}

/// The ACME issuer's counts, as [`roo_acme::Issuer::stats`] gives them.
pub type AcmeStats = roo_acme::issuer::Stats;

/// Every metric of a node.
pub struct Metrics {
    registry: Registry,
    requests: Arc<Requests>,
    upstream_connect_errors: Family<UpstreamLabels, Counter>,
    upstream_ejections: Family<UpstreamLabels, Counter>,
    open_connections: Family<SchemeLabels, Gauge>,
    /// The proxy's counts of open connections, by listener ([`scheme_index`]).
    connections: [Level; 2],
    tls_handshakes: Family<HandshakeLabels, Counter>,
    // The family's two counters, kept so that a handshake takes no lock.
    tls_full: Counter,
    tls_resumed: Counter,
    tls_handshake_failures: Counter,
    swarm_reconciles: Counter,
    swarm_reconcile_errors: Counter,
    swarm_reconcile_seconds: Histogram,
    // Read when rendered.
    routes: Gauge,
    route_info: Family<RouteInfoLabels, Gauge>,
    certificates: Gauge,
    tls_ticket_keys: Gauge,
    certificate_expiry: Family<HostLabels, Gauge>,
    acme_orders: Counter,
    acme_failures: Counter,
    acme_issued: Counter,
    webhook_backlog: Family<WebhookLabels, Gauge>,
    webhook_failures: Family<WebhookLabels, Gauge>,
    webhook_last_status: Family<WebhookLabels, Gauge>,
    webhook_delivered: Family<WebhookLabels, Counter>,
    webhook_given_up: Family<WebhookLabels, Counter>,
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
        let mut m = Metrics {
            requests: Arc::default(),
            upstream_connect_errors: Family::default(),
            upstream_ejections: Family::default(),
            open_connections: Family::default(),
            connections: Default::default(),
            tls_handshakes: Family::default(),
            tls_full: Counter::default(),
            tls_resumed: Counter::default(),
            tls_handshake_failures: Counter::default(),
            swarm_reconciles: Counter::default(),
            swarm_reconcile_errors: Counter::default(),
            swarm_reconcile_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            routes: Gauge::default(),
            route_info: Family::default(),
            certificates: Gauge::default(),
            tls_ticket_keys: Gauge::default(),
            certificate_expiry: Family::default(),
            acme_orders: Counter::default(),
            acme_failures: Counter::default(),
            acme_issued: Counter::default(),
            webhook_backlog: Family::default(),
            webhook_failures: Family::default(),
            webhook_last_status: Family::default(),
            webhook_delivered: Family::default(),
            webhook_given_up: Family::default(),
            raft_term: Gauge::default(),
            raft_is_leader: Gauge::default(),
            raft_leader_id: Gauge::default(),
            raft_commit_index: Gauge::default(),
            raft_applied_index: Gauge::default(),
            raft_apply_lag: Gauge::default(),
            registry: Registry::default(),
        };
        m.tls_full = m
            .tls_handshakes
            .get_or_create(&HandshakeLabels { kind: "full" })
            .clone();
        m.tls_resumed = m
            .tls_handshakes
            .get_or_create(&HandshakeLabels { kind: "resumed" })
            .clone();
        let r = &mut registry;
        r.register_collector(Box::new(m.requests.clone()));
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
            "Completed TLS handshakes, by kind: a full one, or a session resumed",
            m.tls_handshakes.clone(),
        );
        r.register(
            "tls_handshake_failures",
            "Failed or timed out TLS handshakes",
            m.tls_handshake_failures.clone(),
        );
        r.register("routes", "Routes in the table", m.routes.clone());
        r.register(
            "route_info",
            "Each route's revision and state (ok, frozen, progressing, paused, rolled_back, invalid)",
            m.route_info.clone(),
        );
        r.register(
            "certificates",
            "Certificates in the table",
            m.certificates.clone(),
        );
        r.register(
            "tls_ticket_keys",
            "TLS ticket keys shared by the cluster that this node holds",
            m.tls_ticket_keys.clone(),
        );
        r.register(
            "certificate_expiry_timestamp_seconds",
            "When each host's certificate expires (Unix seconds)",
            m.certificate_expiry.clone(),
        );
        r.register(
            "webhook_backlog",
            "Events a webhook asks for and has not been delivered yet",
            m.webhook_backlog.clone(),
        );
        r.register(
            "webhook_failures",
            "A webhook's failed delivery attempts in a row",
            m.webhook_failures.clone(),
        );
        r.register(
            "webhook_last_status",
            "The HTTP status of a webhook's last answer (0: none)",
            m.webhook_last_status.clone(),
        );
        r.register(
            "webhook_delivered",
            "Events delivered to a webhook, by the cluster",
            m.webhook_delivered.clone(),
        );
        r.register(
            "webhook_given_up",
            "Events given up after a day of failed deliveries, by the cluster",
            m.webhook_given_up.clone(),
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

    /// A proxy worker's report: its own request counts, part of the page from now on, and the
    /// node's counters.
    pub fn worker_report(self: &Arc<Self>) -> Arc<dyn Report> {
        Arc::new(WorkerReport {
            counts: self.request_counts(),
            metrics: self.clone(),
        })
    }

    /// The backends' counts since the start of `route` (None: of every route), summed over the
    /// workers (the [`crate::stats`] source).
    pub fn backend_totals(&self, route: Option<&str>) -> Totals {
        let mut totals = Totals::new();
        for worker in lock(&self.requests.workers).iter() {
            let counts = lock(&worker.0);
            let routes: Vec<(&Arc<str>, &ByBackend)> = match route {
                Some(r) => counts.requests.get_key_value(r).into_iter().collect(),
                None => counts.requests.iter().collect(),
            };
            for (route, by_backend) in routes {
                for (backend, of_backend) in by_backend {
                    totals
                        .entry((route.clone(), backend.clone()))
                        .or_default()
                        .add(&of_backend.tally);
                }
            }
        }
        totals
    }

    fn request_counts(&self) -> Arc<RequestCounts> {
        let counts = Arc::new(RequestCounts::default());
        lock(&self.requests.workers).push(counts.clone());
        counts
    }

    /// The page, with the values read now from `kv`, `tables` and the issuer.
    pub async fn render(&self, kv: &Kv, tables: &Tables, acme: Option<AcmeStats>) -> String {
        for (scheme, level) in ["http", "https"].into_iter().zip(&self.connections) {
            self.open_connections
                .get_or_create(&SchemeLabels { scheme })
                .set(level.get());
        }
        let routes = tables.routes.load();
        self.routes.set(routes.len() as i64);
        let certs = tables.certs.load();
        self.certificates.set(certs.len() as i64);
        self.tls_ticket_keys.set(tables.tickets.load().len() as i64);
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
        self.render_webhooks(kv).await;
        self.render_route_info(kv).await;
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

impl Metrics {
    /// Each route's revision and state, as the KV on this node has them.
    async fn render_route_info(&self, kv: &Kv) {
        self.route_info.clear();
        let stale = roo_kv::Consistency::Stale;
        let read = async {
            let (routes, _) = kv.scan(crate::routes::ROUTE_PREFIX, stale).await?;
            let states = crate::api::routes::RouteStates::read(kv, stale).await?;
            Ok::<_, roo_kv::KvError>((routes, states))
        };
        let (routes, states) = match read.await {
            Ok(read) => read,
            Err(e) => {
                tracing::debug!(error = %e, "route state for the metrics");
                return;
            }
        };
        for (key, record) in routes {
            let name = key.trim_start_matches(crate::routes::ROUTE_PREFIX);
            let state = match crate::routes::Route::parse(&record.value) {
                Ok(_) => states.of(name),
                Err(_) => "invalid",
            };
            let labels = RouteInfoLabels {
                route: name.to_string(),
                rev: record.mod_rev.to_string(),
                state: state.to_string(),
            };
            self.route_info.get_or_create(&labels).set(1);
        }
    }

    /// Each webhook's deliveries, as the cluster keeps them (the same on every node).
    async fn render_webhooks(&self, kv: &Kv) {
        let families = [
            &self.webhook_backlog,
            &self.webhook_failures,
            &self.webhook_last_status,
        ];
        families.iter().for_each(|f| f.clear());
        self.webhook_delivered.clear();
        self.webhook_given_up.clear();
        let hooks = match crate::webhooks::status(kv, roo_kv::Consistency::Stale).await {
            Ok(hooks) => hooks,
            Err(e) => {
                tracing::debug!(error = %e, "webhook state for the metrics");
                return;
            }
        };
        for hook in hooks {
            let labels = WebhookLabels { webhook: hook.name };
            let d = &hook.delivery;
            self.webhook_backlog
                .get_or_create(&labels)
                .set(hook.backlog as i64);
            self.webhook_failures
                .get_or_create(&labels)
                .set(i64::from(d.failures));
            self.webhook_last_status
                .get_or_create(&labels)
                .set(i64::from(d.last_status.unwrap_or(0)));
            set_counter(&self.webhook_delivered.get_or_create(&labels), d.delivered);
            set_counter(&self.webhook_given_up.get_or_create(&labels), d.given_up);
        }
    }
}

/// Buckets of the request duration histogram, +Inf's last.
const DURATION_BUCKETS: usize = 16;
/// Their upper bounds (seconds), +Inf aside: 0.5 ms doubling.
const DURATION_BOUNDS: [f64; DURATION_BUCKETS - 1] = {
    let mut bounds = [0.0005; DURATION_BUCKETS - 1];
    let mut i = 1;
    while i < bounds.len() {
        bounds[i] = bounds[i - 1] * 2.0;
        i += 1;
    }
    bounds
};

impl crate::swarm::Report for Metrics {
    fn reconciled(&self, done: bool, seconds: f64) {
        self.swarm_reconciles.inc();
        self.swarm_reconcile_seconds.observe(seconds);
        if !done {
            self.swarm_reconcile_errors.inc();
        }
    }
}

/// What one proxy worker reports, counted.
struct WorkerReport {
    counts: Arc<RequestCounts>,
    metrics: Arc<Metrics>,
}

impl Report for WorkerReport {
    fn served(&self, s: &Served<'_>) {
        self.counts.request(s);
    }

    fn upstream_refused(&self, upstream: &Upstream, ejected: bool) {
        let labels = UpstreamLabels {
            upstream: upstream.to_string(),
        };
        let m = &self.metrics;
        m.upstream_connect_errors.get_or_create(&labels).inc();
        if ejected {
            m.upstream_ejections.get_or_create(&labels).inc();
        }
    }

    fn tls_handshake(&self, handshake: Handshake) {
        match handshake {
            Handshake::Full => self.metrics.tls_full.inc(),
            Handshake::Resumed => self.metrics.tls_resumed.inc(),
            Handshake::Failed => self.metrics.tls_handshake_failures.inc(),
        };
    }

    fn open_connections(&self, scheme: Scheme) -> Level {
        self.metrics.connections[scheme_index(scheme)].clone()
    }
}

/// The request counts of one proxy worker. Only the worker's thread writes them, so their lock
/// is taken without contention and no cache line moves between cores on a request (as with
/// counters shared by all workers); the page sums the workers' counts.
#[derive(Debug, Default)]
pub struct RequestCounts(Mutex<Counts>);

#[derive(Debug, Default)]
struct Counts {
    /// Route, then backend (`-` when none was chosen), then upstream (none when none was
    /// reached) and status class (1xx to 5xx), beside the backend's [`Tally`].
    requests: HashMap<Arc<str>, ByBackend, ahash::RandomState>,
    /// Durations, by listener ([`scheme_index`]).
    seconds: [Durations; 2],
}

type ByBackend = HashMap<Arc<str>, BackendCounts, ahash::RandomState>;
type ByUpstream = HashMap<Option<Upstream>, [u64; 5], ahash::RandomState>;

#[derive(Debug, Default)]
struct BackendCounts {
    upstreams: ByUpstream,
    tally: Tally,
}

#[derive(Debug, Default, Clone, Copy)]
struct Durations {
    /// Observations by bucket, not cumulative; the last bucket is +Inf's.
    buckets: [u64; DURATION_BUCKETS],
    sum: f64,
    count: u64,
}

fn scheme_index(scheme: Scheme) -> usize {
    match scheme {
        Scheme::Http => 0,
        Scheme::Https => 1,
    }
}

impl RequestCounts {
    /// Counts one answered request.
    fn request(&self, s: &Served<'_>) {
        let Served {
            route,
            status,
            backend,
            upstream,
            scheme,
            seconds,
        } = *s;
        let class = match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            _ => 4,
        };
        let bucket = DURATION_BOUNDS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(DURATION_BUCKETS - 1);
        let mut counts = lock(&self.0);
        let by_backend = match counts.requests.get_mut(route) {
            Some(by_backend) => by_backend,
            None => counts.requests.entry(route.into()).or_default(),
        };
        let backend = backend.unwrap_or("-");
        let of_backend = match by_backend.get_mut(backend) {
            Some(of_backend) => of_backend,
            None => by_backend.entry(backend.into()).or_default(),
        };
        of_backend.tally.count(status, seconds);
        let upstream = upstream.cloned();
        let classes = of_backend.upstreams.entry(upstream).or_default();
        classes[class] += 1;
        let d = &mut counts.seconds[scheme_index(scheme)];
        d.buckets[bucket] += 1;
        d.sum += seconds;
        d.count += 1;
    }
}

/// All workers' request counts, summed into `requests_total` and `request_duration_seconds`
/// when the page is rendered.
#[derive(Debug, Default)]
struct Requests {
    workers: Mutex<Vec<Arc<RequestCounts>>>,
}

impl Collector for Requests {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        let mut requests: HashMap<(Box<str>, Box<str>, String), [u64; 5]> = HashMap::new();
        let mut seconds = [Durations::default(); 2];
        let mut by_backend_seconds: HashMap<(Arc<str>, Arc<str>), Tally> = HashMap::new();
        for worker in lock(&self.workers).iter() {
            let counts = lock(&worker.0);
            for (route, by_backend) in &counts.requests {
                // The host part of `<host>[:<port>]:<scheme>`.
                let host: Box<str> = route.split(':').next().unwrap_or_default().into();
                for (backend, of_backend) in by_backend {
                    by_backend_seconds
                        .entry((route.clone(), backend.clone()))
                        .or_default()
                        .add(&of_backend.tally);
                    for (upstream, classes) in &of_backend.upstreams {
                        let upstream = upstream
                            .as_ref()
                            .map_or_else(|| "-".to_string(), Upstream::to_string);
                        let key = (host.clone(), Box::from(&**backend), upstream);
                        let sum = requests.entry(key).or_default();
                        for (sum, n) in sum.iter_mut().zip(classes) {
                            *sum += n;
                        }
                    }
                }
            }
            for (sum, d) in seconds.iter_mut().zip(&counts.seconds) {
                for (sum, n) in sum.buckets.iter_mut().zip(&d.buckets) {
                    *sum += n;
                }
                sum.sum += d.sum;
                sum.count += d.count;
            }
        }
        let mut rows: Vec<_> = requests.into_iter().collect();
        rows.sort();
        let mut family = encoder.encode_descriptor(
            "requests",
            "Proxied requests by host, status class, backend and upstream",
            None,
            MetricType::Counter,
        )?;
        for ((host, backend, upstream), classes) in &rows {
            for (status, n) in CLASSES.into_iter().zip(classes) {
                if *n == 0 {
                    continue;
                }
                // The route's backend (`-`: none chosen); the upstream address, `acme` for
                // challenges, `-` when none was reached.
                let labels = [
                    ("host", &**host),
                    ("status", status),
                    ("backend", &**backend),
                    ("upstream", &**upstream),
                ];
                family
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(n, None)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "request_duration_seconds",
            "Request handling time, by listener",
            None,
            MetricType::Histogram,
        )?;
        for (scheme, d) in ["http", "https"].into_iter().zip(&seconds) {
            if d.count == 0 {
                continue;
            }
            let buckets: Vec<(f64, u64)> = DURATION_BOUNDS
                .into_iter()
                .chain(std::iter::once(f64::MAX))
                .zip(d.buckets)
                .collect();
            family
                .encode_family(&SchemeLabels { scheme })?
                .encode_histogram::<NoLabelSet>(d.sum, d.count, &buckets, None)?;
        }
        let mut family = encoder.encode_descriptor(
            "backend_request_duration_seconds",
            "Request handling time, by route and backend (the statistics rollouts are checked on)",
            None,
            MetricType::Histogram,
        )?;
        let mut rows: Vec<_> = by_backend_seconds.into_iter().collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        for ((route, backend), tally) in &rows {
            // The encoder adds the buckets up itself: each bound gets what is new at it.
            let mut below = 0;
            let buckets: Vec<(f64, u64)> = DURATION_BOUNDS
                .into_iter()
                .zip(tally.at_most(&DURATION_BOUNDS))
                .chain(std::iter::once((f64::MAX, tally.requests)))
                .map(|(bound, at_most)| {
                    let new = at_most.saturating_sub(below);
                    below = below.max(at_most);
                    (bound, new)
                })
                .collect();
            let labels = [("route", &**route), ("backend", &**backend)];
            family
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(tally.seconds, tally.requests, &buckets, None)?;
        }
        Ok(())
    }
}

/// A lock whose holder cannot leave its data half changed: a poisoned one is taken as it is.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn set_counter(counter: &Counter, value: u64) {
    counter
        .inner()
        .store(value, std::sync::atomic::Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_sums_the_workers_counts() {
        let metrics = Metrics::new();
        let (one, two) = (metrics.request_counts(), metrics.request_counts());
        let upstream = Upstream::Addr(([10, 0, 0, 1], 80).into());
        let served = |route, status, backend, upstream, scheme, seconds| Served {
            route,
            status,
            backend,
            upstream,
            scheme,
            seconds,
        };
        one.request(&served(
            "example.com:http",
            200,
            Some("v1"),
            Some(&upstream),
            Scheme::Http,
            0.0007,
        ));
        two.request(&served(
            "example.com:http",
            204,
            Some("v1"),
            Some(&upstream),
            Scheme::Http,
            100.0,
        ));
        two.request(&served(
            "example.com:https",
            503,
            None,
            None,
            Scheme::Https,
            0.0001,
        ));
        let mut page = String::new();
        prometheus_client::encoding::text::encode(&mut page, &metrics.registry).unwrap();
        for line in [
            r#"roo_requests_total{host="example.com",status="2xx",backend="v1",upstream="http://10.0.0.1:80"} 2"#,
            r#"roo_requests_total{host="example.com",status="5xx",backend="-",upstream="-"} 1"#,
            r#"roo_request_duration_seconds_count{scheme="http"} 2"#,
            r#"roo_request_duration_seconds_bucket{le="0.0005",scheme="http"} 0"#,
            r#"roo_request_duration_seconds_bucket{le="0.001",scheme="http"} 1"#,
            r#"roo_request_duration_seconds_bucket{le="8.192",scheme="http"} 1"#,
            r#"roo_request_duration_seconds_bucket{le="+Inf",scheme="http"} 2"#,
            r#"roo_request_duration_seconds_bucket{le="0.0005",scheme="https"} 1"#,
            // Per route and backend, summed over the workers, from the statistics' buckets.
            r#"roo_backend_request_duration_seconds_count{route="example.com:http",backend="v1"} 2"#,
            r#"roo_backend_request_duration_seconds_sum{route="example.com:http",backend="v1"} 100.0007"#,
            r#"roo_backend_request_duration_seconds_bucket{le="0.0005",route="example.com:http",backend="v1"} 0"#,
            r#"roo_backend_request_duration_seconds_bucket{le="0.001",route="example.com:http",backend="v1"} 1"#,
            r#"roo_backend_request_duration_seconds_bucket{le="8.192",route="example.com:http",backend="v1"} 1"#,
            r#"roo_backend_request_duration_seconds_bucket{le="+Inf",route="example.com:http",backend="v1"} 2"#,
            r#"roo_backend_request_duration_seconds_count{route="example.com:https",backend="-"} 1"#,
        ] {
            assert!(page.lines().any(|l| l == line), "{line} not in\n{page}");
        }
        assert!(!page.contains("status=\"4xx\""), "{page}");
    }
}
