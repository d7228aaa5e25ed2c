//! How each peer has been answering this node's raft RPCs: what `GET /roo/v1/cluster` shows as
//! reachability, and what keeps a peer that is down from filling the log (one line when it
//! stops answering, one every [`LOG_EVERY`] with a count while it stays so, one when it is back).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// Least time between two warnings about the same peer.
pub const LOG_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct Contact {
    last_ok: Option<Instant>,
    /// Failed RPCs since the last one that succeeded.
    failures: u64,
    last_error: Option<String>,
    /// When a warning about this peer was last logged, and the failures since then.
    logged: Option<Instant>,
    unlogged: u64,
}

/// What one peer's RPCs have been doing, as [`Peers::view`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    /// Whether its last RPC succeeded.
    pub reachable: bool,
    /// Milliseconds since its last successful RPC; None: none yet.
    pub last_ok_ms: Option<u64>,
    /// Failed RPCs in a row.
    pub failures: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The RPC outcomes of every peer. Cheap to clone.
#[derive(Clone, Default)]
pub struct Peers {
    contacts: Arc<Mutex<HashMap<NodeId, Contact>>>,
}

impl Peers {
    // Held for a few field updates, never across an await; a poisoned lock still holds
    // consistent counters.
    fn contacts(&self) -> MutexGuard<'_, HashMap<NodeId, Contact>> {
        self.contacts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes an RPC to `id` that succeeded.
    pub(crate) fn succeeded(&self, id: NodeId, addr: &str) {
        let mut contacts = self.contacts();
        let c = contacts.entry(id).or_default();
        if c.failures > 0 {
            tracing::info!(node_id = id, %addr, failures = c.failures, "peer answers again");
        }
        *c = Contact {
            last_ok: Some(Instant::now()),
            ..Contact::default()
        };
    }

    /// Notes an RPC to `id` that failed; logs a warning when it is news, or [`LOG_EVERY`] after
    /// the last one.
    pub(crate) fn failed(&self, id: NodeId, addr: &str, error: &str) {
        let mut contacts = self.contacts();
        let c = contacts.entry(id).or_default();
        c.failures += 1;
        c.unlogged += 1;
        c.last_error = Some(error.to_string());
        let now = Instant::now();
        if c.logged
            .is_some_and(|at| now.duration_since(at) < LOG_EVERY)
        {
            return;
        }
        if c.failures == 1 {
            tracing::warn!(node_id = id, %addr, %error, "peer does not answer");
        } else {
            tracing::warn!(node_id = id, %addr, %error, failures = c.failures, since_last_line = c.unlogged, "peer still does not answer");
        }
        c.logged = Some(now);
        c.unlogged = 0;
    }

    /// What is known of peer `id`; None when no RPC went to it yet.
    pub fn view(&self, id: NodeId) -> Option<PeerView> {
        let contacts = self.contacts();
        let c = contacts.get(&id)?;
        Some(PeerView {
            reachable: c.failures == 0,
            last_ok_ms: c.last_ok.map(|t| t.elapsed().as_millis() as u64),
            failures: c.failures,
            last_error: c.last_error.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_until_a_success() {
        let peers = Peers::default();
        assert_eq!(peers.view(1), None);
        peers.failed(1, "a:1", "refused");
        peers.failed(1, "a:1", "timed out");
        let v = peers.view(1).unwrap();
        assert!(!v.reachable);
        assert_eq!((v.failures, v.last_ok_ms), (2, None));
        assert_eq!(v.last_error.as_deref(), Some("timed out"));
        // The second failure came within LOG_EVERY of the first line: not logged, counted.
        assert_eq!(peers.contacts().get(&1).map(|c| c.unlogged), Some(1));
        peers.succeeded(1, "a:1");
        let v = peers.view(1).unwrap();
        assert!(v.reachable);
        assert_eq!((v.failures, v.last_error), (0, None));
        assert!(v.last_ok_ms.is_some());
    }
}
