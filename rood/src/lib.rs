//! rood: a node of roo, the clustered edge proxy for Docker Swarm.
//!
//! Layout, one concept a module:
//! - [`config`]: every setting, from flags and `ROO_*` environment variables, checked once.
//! - [`api`]: the HTTP API on the admin port (Roo-compatible KV, typed routes and history,
//!   cluster, watch) and the raft RPCs between nodes it mounts.
//! - [`cluster`]: how a node finds its cluster at start: restart, bootstrap, `--join` or `--dns`.
//! - [`dns`]: the DNS resolver for peers and upstreams, `--resolver` or the system's.
//! - [`routes`]: what a route is and does: keys, the typed model (backends, weights, cohorts,
//!   paths, stickiness, health checks), middlewares, the route table (a pure lookup by host) and
//!   the one write path every writer uses.
//! - [`certs`]: certificates as the TLS listener serves them: `com.roo.cert:` values, the table
//!   and the SNI resolver.
//! - [`swarm`]: where a route comes from when a service asks for one: the Docker Swarm watcher
//!   (one node holds its lease), service labels to routes.
//! - [`acme`]: where a certificate comes from when nobody put one by hand: the ACME issuer
//!   (`roo-acme`), run on the raft leader over the KV.
//! - [`tickets`]: where TLS session tickets come from: keys the leader rotates in the KV, so
//!   that any node resumes a session any node began.
//! - [`events`]: the activity stream: typed events of what changed and who changed it, kept in
//!   the KV; [`webhooks`] deliver it, once per cluster.
//! - [`stats`]: how each backend (version) of a route is doing, over a recent window, on this
//!   node and across the cluster.
//! - [`rollout`]: where a rollout is decided: stepped canaries that promote or abort on the
//!   [`stats`], run by the raft leader, their state in the KV.
//! - [`leader`]: work that runs on the raft leader only, and the cluster's events.
//! - [`feed`]: routes, certificates and ticket keys from the KV (scan, then watch), as typed changes applied
//!   to the [`tables`] the proxy reads (immutable snapshots, swapped whole).
//! - [`proxy`]: where a request is routed: the HTTP and HTTPS listeners, the request's phases,
//!   the upstreams and their health checks.
//! - [`report`]: what the proxy tells of its work, through a trait the metrics implement.
//! - [`metrics`]: what a node counts, and the Prometheus page of `GET /metrics`.
//! - [`ui`]: the dashboard at `/ui/` on the API port: pages rendered on the server, a login
//!   for the API's tokens, live updates from the activity stream.
//! - [`cli`]: `rooctl`, the operator's command line over the API.
//! - [`node`]: wires a node together from its config: store, servers, cluster formation,
//!   shutdown.
//!
//! Imports flow one way. The data plane ([`proxy`]) reads the [`tables`] and [`routes`] and
//! tells of its work through [`report::Report`]; control ([`feed`], [`swarm`], [`acme`]) writes
//! the KV and the tables and reports through traits of its own; admin ([`api`], [`metrics`])
//! reads both, and the dashboard ([`ui`]) reads through admin. Neither the proxy nor control
//! imports admin, and control's writers of routes all
//! go through [`routes::write`].
//!
//! The store itself is the `roo-kv` crate.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod acme;
pub mod api;
pub mod certs;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod dns;
pub mod events;
pub mod feed;
pub mod leader;
pub mod metrics;
pub mod node;
pub mod proxy;
pub mod report;
pub mod rollout;
pub mod routes;
pub mod stats;
pub mod swarm;
pub mod tables;
pub mod tickets;
pub mod ui;
pub mod webhooks;

/// Unix milliseconds now, by this node's clock (0 before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
