//! Work that runs on the raft leader only (the ACME issuer, the activity stream's upkeep,
//! webhook deliveries), and what the leader tells of the cluster: `leader.changed` when it
//! starts to lead, `node.joined|left|unreachable` as members come, go and stop answering. A node
//! observes these; only the leader writes them, so each is in the stream once.

use std::collections::BTreeMap;
use std::time::Duration;

use roo_kv::{Kv, Metrics};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::events::{self, Event};

/// How often the leader looks at its members.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// Failed raft RPCs in a row before a member is told unreachable: one lost heartbeat is no news.
const UNREACHABLE_AFTER: u64 = 3;

/// Whether this node leads the cluster now, by raft's metrics `m`.
pub(crate) fn leading(kv: &Kv, m: &Metrics) -> bool {
    m.current_leader == Some(kv.node_id()) && m.state.is_leader()
}

/// Waits until this node leads; the token it gives is cancelled when it stops leading (or at
/// `shutdown`). None at shutdown.
pub async fn term(
    kv: &Kv,
    metrics: &mut watch::Receiver<Metrics>,
    shutdown: &CancellationToken,
) -> Option<CancellationToken> {
    loop {
        if shutdown.is_cancelled() {
            return None;
        }
        if leading(kv, &metrics.borrow_and_update()) {
            break;
        }
        tokio::select! {
            changed = metrics.changed() => changed.ok()?,
            _ = shutdown.cancelled() => return None,
        }
    }
    let term = shutdown.child_token();
    let (kv, mut metrics, ended) = (kv.clone(), metrics.clone(), term.clone());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = metrics.changed() => {
                    if changed.is_err() || !leading(&kv, &metrics.borrow_and_update()) {
                        break;
                    }
                }
                _ = ended.cancelled() => break,
            }
        }
        ended.cancel();
    });
    Some(term)
}

/// Tells the cluster's changes while this node leads, until `shutdown`.
pub async fn run(kv: Kv, shutdown: CancellationToken) {
    let mut metrics = kv.raft().metrics();
    while let Some(term) = self::term(&kv, &mut metrics, &shutdown).await {
        let detail = json!({"node": kv.node_id(), "term": metrics.borrow().current_term});
        let subject = format!("node {}", kv.node_id());
        // Written once a term: the term's first leader is its only one.
        if let Err(e) = events::record(
            &kv,
            Event::new("leader.changed", &subject, "cluster", detail),
        )
        .await
        {
            tracing::warn!(error = %e, "recording the leader change");
        }
        watch_members(&kv, &term).await;
    }
}

/// What the leader knows of a member.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    addr: String,
    reachable: bool,
}

async fn watch_members(kv: &Kv, term: &CancellationToken) {
    // A member is taken as reachable until the leader's own RPCs to it fail.
    let mut seen: BTreeMap<u64, Seen> = members(kv)
        .into_iter()
        .map(|(id, addr)| {
            (
                id,
                Seen {
                    addr,
                    reachable: true,
                },
            )
        })
        .collect();
    let mut tick = tokio::time::interval(LOOK_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = term.cancelled() => return,
        }
        let now = members(kv);
        let health = kv.members_health().await.unwrap_or_default();
        let mut news = Vec::new();
        for (id, addr) in &now {
            if !seen.contains_key(id) {
                news.push(("node.joined", *id, json!({"node": id, "addr": addr})));
            }
        }
        for (id, s) in &seen {
            if !now.contains_key(id) {
                news.push(("node.left", *id, json!({"node": id, "addr": s.addr})));
            }
        }
        let mut next = BTreeMap::new();
        for (id, addr) in now {
            let was = seen.get(&id).is_none_or(|s| s.reachable);
            let h = health.get(&id);
            let down = h.is_some_and(|h| !h.reachable && h.failures >= UNREACHABLE_AFTER);
            let up = h.is_some_and(|h| h.reachable);
            let reachable = if was { !down } else { up };
            if was && !reachable {
                let error = h.and_then(|h| h.last_error.clone());
                news.push((
                    "node.unreachable",
                    id,
                    json!({"node": id, "addr": addr, "error": error}),
                ));
            }
            next.insert(id, Seen { addr, reachable });
        }
        for (kind, id, detail) in news {
            let event = Event::new(kind, &format!("node {id}"), "cluster", detail);
            if let Err(e) = events::record(kv, event).await {
                tracing::warn!(error = %e, kind, "recording a cluster event");
                // As if not seen yet: told at the next look.
                match seen.get(&id) {
                    Some(old) => next.insert(id, old.clone()),
                    None => next.remove(&id),
                };
                continue;
            }
            tracing::info!(node = id, kind, "cluster event");
        }
        seen = next;
    }
}

/// The members, voters and learners, with their addresses.
pub(crate) fn members(kv: &Kv) -> BTreeMap<u64, String> {
    let m = kv.raft().metrics().borrow().clone();
    m.membership_config
        .membership()
        .nodes()
        .map(|(id, node)| (*id, node.addr.clone()))
        .collect()
}
