//! roo-kv: the raft-replicated key-value store every roo node carries.
//!
//! Layout, one concept a module:
//! - [`command`]: what a client asks ([`Request`], [`Op`]) and what the state machine answers
//!   ([`Response`]); the [`Event`]s a watcher sees; key and value limits.
//! - [`store`]: durable storage on sled: the raft log and vote ([`store::LogStore`]) and the state
//!   machine with its snapshots and change history ([`store::StateMachine`]).
//! - [`watch`]: subscriptions to applied changes by key prefix, from a given revision.
//! - [`network`]: raft RPCs between nodes over HTTP: the client side ([`network::client`]) and the
//!   handlers a node's HTTP server mounts ([`network::server`]), both authenticated by the cluster
//!   secret and, optionally, mutual TLS ([`network::tls`]); how each peer has been answering
//!   ([`network::peers`]).
//! - `batch`: every write of a node queues there and travels to the leader and into raft
//!   entries together with the others queued meanwhile; it tells a write that surely did not
//!   apply from one that may have, and moves writes to a new leader as soon as one is known.
//! - [`node`]: [`Kv`], the handle the rest of roo uses: put, get, delete, scan, compare-and-set,
//!   watch, membership and status. Any node takes any request: writes and linearizable reads on a
//!   follower go through the leader.
//! - `session`: the identity this node's writes carry, so that each applies once however often
//!   it is retried (the state machine's side is in `store`).
//! - [`throttle`]: repeated warnings logged once per interval, with a count.
//! - [`error`]: [`KvError`], the one error type of this layer.
//!
//! The crate knows nothing of HTTP routes or certificates: keys and values are opaque here.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod batch;
pub mod command;
pub mod error;
pub mod network;
pub mod node;
mod session;
pub mod store;
pub mod throttle;
pub mod watch;

use std::io::Cursor;

pub use command::{
    Batch, Event, EventKind, Op, Origin, Record, Refusal, Request, Response, MAX_KEY_LEN,
    MAX_VALUE_LEN,
};
pub use error::KvError;
pub use node::{ClusterStatus, Consistency, Kv, KvConfig, MemberHealth};
pub use watch::Watch;

/// A raft node's id.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The raft type configuration of roo's store.
    pub TypeConfig:
        D = Batch,
        R = Vec<Response>,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The raft instance of roo's store.
pub type Raft = openraft::Raft<TypeConfig>;

/// What raft reports about a node ([`Raft::metrics`]).
pub type Metrics = openraft::RaftMetrics<NodeId, openraft::BasicNode>;
