//! Raft RPCs between nodes, over HTTP with JSON bodies on the node's API port.
//!
//! Every path under [`RPC_PREFIX`] carries the cluster secret in [`SECRET_HEADER`] and, with peer
//! TLS on ([`tls`]), comes over a connection with a certificate of the cluster CA. Besides the
//! three raft RPCs (append, vote, snapshot chunks), a follower uses the same channel to hand
//! writes, read-index requests and membership changes to the leader.

pub mod client;
pub mod peers;
pub mod server;
pub mod tls;

use serde::{Deserialize, Serialize};

/// Path prefix of every node-to-node RPC.
pub const RPC_PREFIX: &str = "/roo/v1/raft/";
/// Header carrying the cluster secret.
pub const SECRET_HEADER: &str = "x-roo-cluster-secret";
/// Header carrying the sending node's id and advertise address, `<id> <host:port>`.
pub const FROM_HEADER: &str = "x-roo-from";
/// Largest RPC body accepted (an append batch or a snapshot chunk).
pub const MAX_RPC_BODY: usize = 256 * 1024 * 1024;

/// A request to add a node to the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    pub node_id: crate::NodeId,
    /// The API address peers use to reach the node.
    pub addr: String,
}

/// A request to remove a node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoveRequest {
    pub node_id: crate::NodeId,
}

/// Why the leader-side half of a forwarded operation failed.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum RpcError {
    /// The node asked is not the leader; it names the one it knows, if any.
    #[error("not the leader (leader: {leader_addr:?})")]
    ForwardToLeader { leader_addr: Option<String> },
    /// Nothing was applied: no leader, no quorum, or the request was never sent.
    #[error("{0}")]
    Unavailable(String),
    /// The request may or may not have been applied (sent, and its answer lost or late).
    #[error("{0}")]
    Unknown(String),
    #[error("{0}")]
    Invalid(String),
}
