//! How a node finds its cluster at start.
//!
//! - A data dir that holds a membership: the node restarts as the member it was.
//! - `--join A,B`: ask the listed members, in turn, to add this node, until one does.
//! - `--dns NAME`: resolve NAME to the peers' addresses. If a peer already belongs to a cluster,
//!   join through it. Otherwise the peer with the lowest address bootstraps, once it has seen the
//!   same set of addresses a few times in a row; every other node waits and joins it. So nodes
//!   started together form exactly one cluster.
//! - Nothing given: bootstrap a one-node cluster.
//!
//! With `--dns` (a comma list of names is allowed: `tasks.roo_roo,tasks.roo_manager`), a member
//! keeps resolving its peers: a redeployed container comes back with a new address while the
//! membership still names the old one, so each node notes where each peer answers now, and the
//! leader writes the new addresses into the membership.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use roo_kv::{ClusterStatus, Kv};
use tokio_util::sync::CancellationToken;

/// Where a node looks for its cluster.
#[derive(Clone)]
pub enum Formation {
    Bootstrap,
    Join(Vec<String>),
    Dns {
        name: String,
        resolver: Box<TokioResolver>,
        port: u16,
    },
}

/// How many identical DNS answers in a row the lowest peer waits for before it bootstraps.
const STABLE_ROUNDS: u32 = 3;
const ROUND: Duration = Duration::from_secs(1);
/// A peer's status, without the health that only its leader knows.
const STATUS_PATH: &str = "/roo/v1/cluster?health=false";

/// How often a member resolves its peers again.
const TRACK_EVERY: Duration = Duration::from_secs(3);

/// Brings `kv` into a cluster; with `--dns`, then follows the peers' addresses until shutdown.
pub async fn form(kv: &Kv, formation: Formation, shutdown: &CancellationToken) {
    let how = if kv.is_initialized().await {
        "restarted as a member of the cluster in the data dir"
    } else {
        let how = match &formation {
            Formation::Bootstrap => "started a cluster of one",
            Formation::Join(_) => "joined the cluster",
            Formation::Dns { .. } => "formed or joined the cluster its peers' DNS name gives",
        };
        let result = tokio::select! {
            r = run(kv, formation.clone()) => r,
            _ = shutdown.cancelled() => return,
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "cluster formation failed");
            return;
        }
        how
    };
    // The membership shows once its entry applies, a moment after bootstrapping or joining.
    let id = kv.node_id();
    let _ = kv
        .raft()
        .wait(Some(Duration::from_secs(5)))
        .metrics(
            |m| m.membership_config.membership().get_node(&id).is_some(),
            "this node in the membership",
        )
        .await;
    let members = kv.status().await.members;
    tracing::info!(node_id = id, ?members, "{how}");
    if let Formation::Dns {
        name,
        resolver,
        port,
    } = formation
    {
        tokio::select! {
            _ = track(kv, &name, &resolver, port) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

/// Every address the names resolve to, as `ip:port`, sorted.
async fn peers(names: &str, resolver: &TokioResolver, port: u16) -> Vec<String> {
    let mut peers = Vec::new();
    for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match crate::dns::lookup(resolver, name).await {
            Ok(ips) => peers.extend(ips.into_iter().map(|ip| SocketAddr::new(ip, port))),
            Err(e) => tracing::warn!(error = %e, "peer discovery"),
        }
    }
    peers.sort();
    peers.dedup();
    peers.into_iter().map(|p| p.to_string()).collect()
}

/// Keeps noting where each peer answers, and has the leader write changed addresses into the
/// membership.
async fn track(kv: &Kv, names: &str, resolver: &TokioResolver, port: u16) {
    let me = kv.advertise().to_string();
    loop {
        tokio::time::sleep(TRACK_EVERY).await;
        let found = peers(names, resolver, port).await;
        tracing::debug!(peers = ?found, %me, "peers resolved");
        for peer in found.iter().filter(|p| **p != me) {
            let status: Result<ClusterStatus, _> =
                kv.peer_client().get(peer, STATUS_PATH, ROUND).await;
            match status {
                Ok(s) => kv.peer_moved(s.node_id, peer),
                Err(e) => tracing::debug!(%peer, error = %e, "peer status"),
            }
        }
        // Bounded: a change of addresses commits only once a quorum hears of it, and a peer
        // that moved too is found only by the next round of this loop.
        match tokio::time::timeout(TRACK_EVERY, kv.update_addresses()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "updating member addresses"),
            Err(_) => tracing::info!("member addresses not updated yet: no quorum heard of them"),
        }
    }
}

async fn run(kv: &Kv, formation: Formation) -> Result<(), roo_kv::KvError> {
    match formation {
        Formation::Bootstrap => kv.bootstrap().await,
        Formation::Join(seeds) => {
            join_any(kv, &seeds).await;
            Ok(())
        }
        Formation::Dns {
            name,
            resolver,
            port,
        } => {
            discover(kv, &name, &resolver, port).await;
            Ok(())
        }
    }
}

/// Tries every seed in turn until one adds this node.
async fn join_any(kv: &Kv, seeds: &[String]) {
    let mut pause = Duration::from_millis(200);
    loop {
        for seed in seeds {
            if kv.is_initialized().await && kv.status().await.voters.contains(&kv.node_id()) {
                return;
            }
            match kv.join(seed, Duration::from_secs(120)).await {
                Ok(()) => return,
                Err(e) => tracing::warn!(%seed, error = %e, "join failed, will retry"),
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

async fn discover(kv: &Kv, name: &str, resolver: &TokioResolver, port: u16) {
    let me = kv.advertise().to_string();
    let mut last_seen: Vec<String> = Vec::new();
    let mut stable = 0;
    loop {
        if kv.is_initialized().await {
            return;
        }
        let peers = peers(name, resolver, port).await;
        // Any peer already in a cluster: join through it.
        for peer in peers.iter().filter(|p| **p != me) {
            let status: Result<ClusterStatus, _> =
                kv.peer_client().get(peer, STATUS_PATH, ROUND).await;
            if matches!(status, Ok(s) if s.initialized) {
                match kv.join(peer, Duration::from_secs(120)).await {
                    Ok(()) => return,
                    Err(e) => tracing::warn!(%peer, error = %e, "join failed, will retry"),
                }
            }
        }
        stable = if peers == last_seen { stable + 1 } else { 1 };
        last_seen = peers;
        let lowest = last_seen
            .iter()
            .min_by_key(|p| p.parse::<SocketAddr>().ok());
        if lowest == Some(&me) && stable >= STABLE_ROUNDS {
            tracing::info!(peers = ?last_seen, "lowest address among the peers: bootstrapping");
            if let Err(e) = kv.bootstrap().await {
                tracing::error!(error = %e, "bootstrap");
            }
            return;
        }
        tracing::debug!(peers = ?last_seen, %me, "waiting for the cluster to form");
        tokio::time::sleep(ROUND).await;
    }
}
