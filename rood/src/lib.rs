//! rood: a node of roo, the clustered edge proxy for Docker Swarm.
//!
//! Layout, one concept a module:
//! - [`config`]: every setting, from flags and `ROO_*` environment variables, checked once.
//! - [`api`]: the HTTP API on the admin port (Roo-compatible KV, cluster, watch) and the raft
//!   RPCs between nodes it mounts.
//! - [`cluster`]: how a node finds its cluster at start: restart, bootstrap, `--join` or `--dns`.
//! - [`dns`]: the DNS resolver for peers (and upstreams), `--resolver` or the system's.
//! - [`node`]: wires a node together from its config: store, API server, cluster formation,
//!   shutdown.
//!
//! The store itself is the `roo-kv` crate.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod api;
pub mod cluster;
pub mod config;
pub mod dns;
pub mod node;
