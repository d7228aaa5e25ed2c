//! How a node finds its cluster at start.
//!
//! - A data dir that holds a membership: the node restarts as the member it was.
//! - `--join A,B`: ask the listed members, in turn, to add this node, until one does.
//! - `--dns NAME`: resolve NAME to the peers' addresses. If a peer already belongs to a cluster,
//!   join through it. Otherwise the peer with the lowest address bootstraps, once it has seen the
//!   same set of addresses a few times in a row; every other node waits and joins it. So nodes
//!   started together form exactly one cluster.
//! - Nothing given: bootstrap a one-node cluster.

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

/// Brings `kv` into a cluster; returns once it is a member (or on shutdown).
pub async fn form(kv: &Kv, formation: Formation, shutdown: &CancellationToken) {
    if kv.is_initialized().await {
        tracing::info!(
            node_id = kv.node_id(),
            "restarting as a member of the cluster in the data dir"
        );
        return;
    }
    let result = tokio::select! {
        r = run(kv, formation) => r,
        _ = shutdown.cancelled() => return,
    };
    match result {
        Ok(()) => tracing::info!(node_id = kv.node_id(), "member of the cluster"),
        Err(e) => tracing::error!(error = %e, "cluster formation failed"),
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
        let peers: Vec<String> = match crate::dns::lookup(resolver, name).await {
            Ok(ips) => ips
                .into_iter()
                .map(|ip| SocketAddr::new(ip, port).to_string())
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "peer discovery");
                Vec::new()
            }
        };
        // Any peer already in a cluster: join through it.
        for peer in peers.iter().filter(|p| **p != me) {
            let status: Result<ClusterStatus, _> =
                kv.peer_client().get(peer, "/roo/v1/cluster", ROUND).await;
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
