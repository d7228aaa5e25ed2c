//! [`Kv`]: a running node of the store and the API the rest of roo uses.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, Config, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::batch::Batcher;
use crate::command::{Op, Record, Refusal, Request, Response};
use crate::network::client::{CallError, NetworkFactory, PeerClient};
use crate::network::tls::PeerTls;
use crate::network::{JoinRequest, RpcError, RPC_PREFIX};
use crate::session::Session;
use crate::store::{self, StateMachineHandle};
use crate::{KvError, NodeId, Raft, Watch};

/// How a node of the store is set up.
#[derive(Debug, Clone)]
pub struct KvConfig {
    /// The raft node id; None: the one kept in the data dir, or a new random one.
    pub node_id: Option<NodeId>,
    pub data_dir: PathBuf,
    /// The API address other nodes reach this one at (`host:port`).
    pub advertise: String,
    /// Shared secret every RPC between nodes carries; None: peers are not authenticated by it.
    pub cluster_secret: Option<String>,
    /// Mutual TLS between nodes; None: plain HTTP.
    pub peer_tls: Option<PeerTls>,
    /// Build a snapshot (and purge the log before it) after this many entries.
    pub snapshot_every: u64,
    /// How long a write or read may wait for a leader and a quorum before failing.
    pub request_timeout: Duration,
    /// The shortest election timeout (the longest is twice this; heartbeats go three times as
    /// often). What a leader's failure costs: followers elect a new one between 3 and 4 times
    /// this after its last heartbeat. Too short for the network or disks, and a slow heartbeat
    /// starts needless elections.
    pub election_timeout: Duration,
}

impl KvConfig {
    pub fn new(data_dir: impl Into<PathBuf>, advertise: impl Into<String>) -> Self {
        KvConfig {
            node_id: None,
            data_dir: data_dir.into(),
            advertise: advertise.into(),
            cluster_secret: None,
            peer_tls: None,
            snapshot_every: 20_000,
            request_timeout: Duration::from_secs(5),
            election_timeout: DEFAULT_ELECTION_TIMEOUT,
        }
    }

    /// How long a leader keeps its leadership without hearing from a quorum; openraft's
    /// followers likewise refuse to vote for another node within it.
    fn lease(&self) -> Duration {
        self.election_timeout * 2
    }
}

/// The default of [`KvConfig::election_timeout`].
pub const DEFAULT_ELECTION_TIMEOUT: Duration = Duration::from_millis(300);

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Sees every write acknowledged before the read started (read-index through the leader).
    #[default]
    Linearizable,
    /// The local copy as it is; works without a quorum.
    Stale,
}

/// What `GET /roo/v1/cluster` reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub node_id: NodeId,
    pub leader_id: Option<NodeId>,
    pub term: u64,
    /// Raft log index of the last applied entry.
    pub last_applied: u64,
    pub last_log_index: u64,
    /// Store revision: that of the last applied change.
    pub revision: u64,
    /// On a leader: milliseconds since a quorum last acknowledged it. Past the lease (twice the
    /// election timeout) it takes no writes and reports no leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum_ack_ms: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    pub state: String,
    pub initialized: bool,
    /// Every node of the membership (voters and learners), id to API address.
    pub members: BTreeMap<String, String>,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
}

/// A member as the leader sees it ([`Kv::members_health`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberHealth {
    /// Whether the leader's last raft RPC to it succeeded (always true for the leader itself).
    pub reachable: bool,
    /// Milliseconds since its last successful RPC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ok_ms: Option<u64>,
    /// Failed RPCs in a row.
    pub failures: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The last log index it is known to hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched_index: Option<u64>,
    /// Log entries it is behind the leader.
    pub lag: u64,
}

/// A node of the store. Cheap to clone.
#[derive(Clone)]
pub struct Kv {
    inner: Arc<Inner>,
}

struct Inner {
    id: NodeId,
    raft: Raft,
    sm: StateMachineHandle,
    client: PeerClient,
    batcher: Batcher,
    session: Session,
    config: KvConfig,
    committed: Arc<std::sync::atomic::AtomicU64>,
}

fn raft_config(config: &KvConfig) -> Result<Arc<Config>, KvError> {
    let election = config.election_timeout.as_millis() as u64;
    let snapshot_every = config.snapshot_every;
    let config = Config {
        cluster_name: "roo".into(),
        heartbeat_interval: (election / 3).max(1),
        election_timeout_min: election,
        election_timeout_max: election * 2,
        install_snapshot_timeout: 10_000,
        max_payload_entries: 64,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_every.max(1)),
        max_in_snapshot_log_to_keep: (snapshot_every / 10).min(1000),
        snapshot_max_chunk_size: 1024 * 1024,
        ..Default::default()
    };
    config
        .validate()
        .map(Arc::new)
        .map_err(|e| KvError::InvalidRequest(format!("raft config: {e}")))
}

/// Reads the node id kept in the data dir, or keeps `wanted` (or a new random id) there.
fn node_identity(config: &KvConfig) -> Result<NodeId, KvError> {
    let path = config.data_dir.join("node_id");
    let io = |e: std::io::Error| KvError::Storage(format!("{}: {e}", path.display()));
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let stored: NodeId = text
                .trim()
                .parse()
                .map_err(|e| KvError::Storage(format!("{}: not a node id: {e}", path.display())))?;
            if let Some(wanted) = config.node_id {
                if wanted != stored {
                    return Err(KvError::InvalidRequest(format!(
                        "node id {wanted} asked for, but {} belongs to node {stored}",
                        config.data_dir.display()
                    )));
                }
            }
            Ok(stored)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Ids stay below 2^53 so that JSON readers in any language keep them exact.
            let id = config
                .node_id
                .unwrap_or_else(|| rand::random::<u64>() >> 11 | 1);
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, format!("{id}\n")).map_err(io)?;
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(io)?;
            std::fs::rename(&tmp, &path).map_err(io)?;
            Ok(id)
        }
        Err(e) => Err(io(e)),
    }
}

impl Kv {
    /// Opens the store in the data dir and starts the raft node. A node whose data dir holds a
    /// cluster's state rejoins it; a new one waits for [`Kv::bootstrap`] or [`Kv::join`].
    pub async fn open(config: KvConfig) -> Result<Kv, KvError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| KvError::Storage(format!("{}: {e}", config.data_dir.display())))?;
        let id = node_identity(&config)?;
        let (log, sm) = store::open(&config.data_dir)?;
        let handle = sm.handle();
        let committed = log.committed_index();
        let client = PeerClient::new(
            config.cluster_secret.clone(),
            config.peer_tls.as_ref(),
            (id, &config.advertise),
        );
        let network = NetworkFactory {
            client: client.clone(),
            max_backoff: config.election_timeout / 2,
        };
        let raft = Raft::new(id, raft_config(&config)?, network, log, sm)
            .await
            .map_err(|e| KvError::Storage(format!("starting raft: {e}")))?;
        tracing::debug!(node_id = id, advertise = %config.advertise, "store opened");
        let batcher = Batcher::start(
            id,
            raft.clone(),
            client.clone(),
            config.request_timeout,
            config.lease(),
        );
        Ok(Kv {
            inner: Arc::new(Inner {
                id,
                raft,
                sm: handle,
                client,
                batcher,
                session: Session::new(),
                config,
                committed,
            }),
        })
    }

    /// The last raft log index this node knows to be committed.
    pub fn committed_index(&self) -> u64 {
        self.inner
            .committed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.id
    }

    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    pub fn advertise(&self) -> &str {
        &self.inner.config.advertise
    }

    pub fn cluster_secret(&self) -> Option<&str> {
        self.inner.config.cluster_secret.as_deref()
    }

    /// The peer TLS settings, when nodes talk over mutual TLS.
    pub fn peer_tls(&self) -> Option<&PeerTls> {
        self.inner.config.peer_tls.as_ref()
    }

    /// The client this node uses to reach its peers (with the cluster secret).
    pub fn peer_client(&self) -> &PeerClient {
        &self.inner.client
    }

    fn timeout(&self) -> Duration {
        self.inner.config.request_timeout
    }

    /// Whether this node belongs to a cluster (bootstrapped, joined, or restarted as a member).
    pub async fn is_initialized(&self) -> bool {
        self.inner.raft.is_initialized().await.unwrap_or(false)
    }

    /// Starts a one-node cluster of this node. Does nothing on an initialized node.
    pub async fn bootstrap(&self) -> Result<(), KvError> {
        if self.is_initialized().await {
            return Ok(());
        }
        let members =
            BTreeMap::from([(self.inner.id, BasicNode::new(&self.inner.config.advertise))]);
        match self.inner.raft.initialize(members).await {
            Ok(()) => {
                tracing::debug!(node_id = self.inner.id, "bootstrapped a new cluster");
                Ok(())
            }
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(KvError::Storage(format!("bootstrap: {e}"))),
        }
    }

    /// Asks the member at `seed` (an API address) to add this node, as a learner first and a
    /// voter once it has caught up. Returns when the change is committed.
    pub async fn join(&self, seed: &str, timeout: Duration) -> Result<(), KvError> {
        let req = JoinRequest {
            node_id: self.inner.id,
            addr: self.inner.config.advertise.clone(),
        };
        let answer: Result<(), RpcError> = self
            .inner
            .client
            .post(seed, "/roo/v1/cluster/join", &req, timeout)
            .await
            .map_err(|e| peer_error(seed, e))?;
        answer.map_err(rpc_to_kv)
    }

    /// Adds node `id` at `addr` to the cluster (on the leader, wherever this is called).
    pub async fn add_member(&self, id: NodeId, addr: String) -> Result<(), KvError> {
        let req = JoinRequest { node_id: id, addr };
        // Catching up a new node can take a while on a large store.
        let deadline = Instant::now() + self.timeout() * 24;
        self.on_leader(deadline, "add-member", &req, |kv| {
            let req = req.clone();
            async move { kv.add_member_as_leader(req.node_id, req.addr).await }
        })
        .await
    }

    /// Removes node `id` from the cluster.
    pub async fn remove_member(&self, id: NodeId) -> Result<(), KvError> {
        let req = crate::network::RemoveRequest { node_id: id };
        let deadline = Instant::now() + self.timeout();
        self.on_leader(deadline, "remove-member", &req, |kv| async move {
            kv.remove_member_as_leader(id).await
        })
        .await
    }

    /// Replicates `req` and returns what applying it produced. Runs on the leader, wherever it
    /// is called, batched with other writes, and applies once however often it is retried
    /// through leader changes. Fails with [`KvError::Unavailable`] when no quorum commits it in
    /// time and nothing was applied, with [`KvError::OutcomeUnknown`] when it was sent but its
    /// answer was lost.
    pub async fn write(&self, mut req: Request) -> Result<Response, KvError> {
        req.validate()?;
        let ticket = self.inner.session.begin();
        let deadline = Instant::now() + self.timeout();
        let mut pause = Duration::from_millis(20);
        // Once an attempt may have applied, a failure to learn its answer is an unknown outcome.
        let mut maybe_applied = false;
        loop {
            req.origin = Some(ticket.origin());
            let leader = self.inner.raft.metrics().borrow().current_leader;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let submitted = self.inner.batcher.submit(vec![req.clone()], true);
            let error = match tokio::time::timeout(remaining, submitted).await {
                Ok(Ok(mut answers)) => return settle(answers.pop(), &req),
                Ok(Err(RpcError::Invalid(m))) => return Err(KvError::InvalidRequest(m)),
                Ok(Err(e @ RpcError::Unknown(_))) => {
                    maybe_applied = true;
                    e.to_string()
                }
                // Not sent, or refused before it could apply: no leader yet, or it just changed.
                Ok(Err(e)) => e.to_string(),
                // Still queued or in flight: it may yet apply.
                Err(_) => {
                    maybe_applied = true;
                    "no quorum within the timeout".into()
                }
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(if maybe_applied {
                    KvError::OutcomeUnknown {
                        reason: format!("write: {error}"),
                    }
                } else {
                    KvError::unavailable(format!("write: {error}"))
                });
            }
            self.new_leader_or(leader, pause.min(remaining)).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    /// Waits until a leader other than `leader` is known, or for `pause` at most.
    async fn new_leader_or(&self, leader: Option<NodeId>, pause: Duration) {
        let mut m = self.inner.raft.server_metrics();
        let elected = m.wait_for(|m| m.current_leader.is_some() && m.current_leader != leader);
        let _ = tokio::time::timeout(pause, elected).await;
    }

    /// Sets `key` to `value`; with `prev_rev`, only if the key's revision is that (0: absent).
    /// Returns the new revision.
    pub async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        prev_rev: Option<u64>,
    ) -> Result<u64, KvError> {
        let resp = self
            .write(Request::new(vec![Op::Put {
                key: key.to_string(),
                value,
                prev_rev,
            }]))
            .await?;
        resp.checked().map(|r| r.rev)
    }

    /// Removes `key`; with `prev_rev`, only if the key's revision is that. Returns the revision
    /// and whether the key existed.
    pub async fn delete(&self, key: &str, prev_rev: Option<u64>) -> Result<(u64, bool), KvError> {
        let resp = self
            .write(Request::new(vec![Op::Delete {
                key: key.to_string(),
                prev_rev,
            }]))
            .await?;
        resp.checked().map(|r| (r.rev, r.changed > 0))
    }

    /// The record of `key`.
    pub async fn get(
        &self,
        key: &str,
        consistency: Consistency,
    ) -> Result<Option<Record>, KvError> {
        crate::command::validate_key(key)?;
        self.read_barrier(consistency).await?;
        self.inner.sm.get(key)
    }

    /// Every key starting with `prefix`, in key order, and the revision the answer is at.
    pub async fn scan(
        &self,
        prefix: &str,
        consistency: Consistency,
    ) -> Result<(Vec<(String, Record)>, u64), KvError> {
        self.read_barrier(consistency).await?;
        // Read the revision first: the scan sees at least this revision.
        let rev = self.inner.sm.revision();
        Ok((self.inner.sm.scan(prefix)?, rev))
    }

    /// The store revision on this node: that of the last change it applied.
    pub fn revision(&self) -> u64 {
        self.inner.sm.revision()
    }

    /// Changes of keys under `prefix` after revision `after_rev` (None: from now on).
    pub fn watch(&self, prefix: &str, after_rev: Option<u64>) -> Result<Watch, KvError> {
        let after = after_rev.unwrap_or_else(|| self.inner.sm.revision());
        Watch::new(self.inner.sm.clone(), prefix, after)
    }

    /// Waits until this node has applied every write acknowledged before the call.
    pub async fn read_barrier(&self, consistency: Consistency) -> Result<(), KvError> {
        if consistency == Consistency::Stale {
            return Ok(());
        }
        let deadline = Instant::now() + self.timeout();
        let index: Option<u64> = self
            .on_leader(
                deadline,
                "read-index",
                &serde_json::Value::Null,
                |kv| async move { kv.read_index_as_leader().await },
            )
            .await?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        self.inner
            .raft
            .wait(Some(remaining))
            .applied_index_at_least(index, "read barrier")
            .await
            .map_err(|e| {
                KvError::unavailable(format!("waiting to apply up to the read index: {e}"))
            })?;
        Ok(())
    }

    /// The node's view of the cluster.
    pub async fn status(&self) -> ClusterStatus {
        let m = self.inner.raft.metrics().borrow().clone();
        let quorum_ack_ms = m
            .state
            .is_leader()
            .then_some(m.millis_since_quorum_ack)
            .flatten();
        let isolated = crate::batch::cut_off(&m, self.inner.config.lease());
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members: BTreeMap<String, String> = membership
            .nodes()
            .map(|(id, node)| (id.to_string(), node.addr.clone()))
            .collect();
        let learners = membership.learner_ids().collect();
        ClusterStatus {
            node_id: self.inner.id,
            // A leader cut off from its quorum is one no more, whatever raft still says.
            leader_id: m.current_leader.filter(|_| !isolated),
            term: m.current_term,
            last_applied: m.last_applied.map_or(0, |l| l.index),
            last_log_index: m.last_log_index.unwrap_or(0),
            revision: self.inner.sm.revision(),
            quorum_ack_ms,
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            state: format!("{:?}", m.state),
            initialized: !voters.is_empty(),
            members,
            voters: voters.into_iter().collect(),
            learners,
        }
    }

    /// Every member as the leader sees it: whether its raft RPCs succeed, and how far behind the
    /// leader's log it is. A follower asks the leader (within 2 s at most).
    pub async fn members_health(&self) -> Result<BTreeMap<NodeId, MemberHealth>, KvError> {
        let deadline = Instant::now() + self.timeout().min(Duration::from_secs(2));
        self.on_leader(
            deadline,
            "members",
            &serde_json::Value::Null,
            |kv| async move { kv.members_health_as_leader() },
        )
        .await
    }

    /// The leader half of [`Kv::members_health`].
    pub(crate) fn members_health_as_leader(
        &self,
    ) -> Result<BTreeMap<NodeId, MemberHealth>, RpcError> {
        let m = self.inner.raft.metrics().borrow().clone();
        if !(m.state.is_leader() && m.current_leader == Some(self.inner.id)) {
            return Err(self.forward_error(m.current_leader));
        }
        let last = m.last_log_index.unwrap_or(0);
        let matched = |id: &NodeId| -> Option<u64> {
            let replication = m.replication.as_ref()?;
            replication.get(id).copied().flatten().map(|l| l.index)
        };
        let health = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, _)| {
                let (view, matched) = if *id == self.inner.id {
                    (None, Some(last))
                } else {
                    (self.inner.client.peers().view(*id), matched(id))
                };
                let health = MemberHealth {
                    reachable: *id == self.inner.id || view.as_ref().is_some_and(|v| v.reachable),
                    last_ok_ms: view.as_ref().and_then(|v| v.last_ok_ms),
                    failures: view.as_ref().map_or(0, |v| v.failures),
                    last_error: view.and_then(|v| v.last_error),
                    matched_index: matched,
                    lag: last.saturating_sub(matched.unwrap_or(0)),
                };
                (*id, health)
            })
            .collect();
        Ok(health)
    }

    /// Notes that node `id` answers at `addr` now (a redeployed container comes back with a
    /// new address, while the membership still names the old one). RPCs go there at once; the
    /// leader also writes the new addresses into the membership ([`Kv::update_addresses`]).
    pub fn peer_moved(&self, id: NodeId, addr: &str) {
        if id != self.inner.id && self.inner.client.moved(id, addr) {
            tracing::info!(node_id = id, %addr, "peer seen at a new address");
        }
    }

    /// On the leader: writes the addresses nodes are at now (this node's advertise address and
    /// those of [`Kv::peer_moved`]) into the membership when they differ. Elsewhere: nothing.
    pub async fn update_addresses(&self) -> Result<(), KvError> {
        let raft = &self.inner.raft;
        let (leading, membership) = {
            let m = raft.metrics().borrow().clone();
            (
                m.current_leader == Some(self.inner.id) && m.state.is_leader(),
                m.membership_config.membership().clone(),
            )
        };
        if !leading {
            return Ok(());
        }
        let mut changed = BTreeMap::new();
        for (id, node) in membership.nodes() {
            let now = if *id == self.inner.id {
                self.inner.config.advertise.clone()
            } else {
                self.inner.client.address(*id, &node.addr)
            };
            if now != node.addr {
                changed.insert(*id, BasicNode::new(&now));
            }
        }
        if changed.is_empty() {
            return Ok(());
        }
        tracing::info!(nodes = ?changed, "membership: new addresses");
        raft.change_membership(ChangeMembers::SetNodes(changed), false)
            .await
            .map_err(|e| KvError::unavailable(format!("updating member addresses: {e}")))?;
        Ok(())
    }

    /// Stops the raft node.
    pub async fn shutdown(&self) {
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }

    /// Runs `local` if this node leads, else sends `rpc` to the leader, retrying through leader
    /// changes until `deadline`.
    async fn on_leader<T, Req, F, Fut>(
        &self,
        deadline: Instant,
        rpc: &str,
        req: &Req,
        local: F,
    ) -> Result<T, KvError>
    where
        T: serde::de::DeserializeOwned,
        Req: Serialize + Sync,
        F: Fn(Kv) -> Fut,
        Fut: std::future::Future<Output = Result<T, RpcError>>,
    {
        let mut last_error = String::from("no leader");
        let mut pause = Duration::from_millis(20);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(KvError::unavailable(format!("{rpc}: {last_error}")));
            }
            let result = match tokio::time::timeout(remaining, local(self.clone())).await {
                Err(_) => Err(RpcError::Unavailable("no quorum within the timeout".into())),
                Ok(Err(RpcError::ForwardToLeader {
                    leader_addr: Some(addr),
                })) => {
                    let path = format!("{RPC_PREFIX}{rpc}");
                    match self
                        .inner
                        .client
                        .post::<_, Result<T, RpcError>>(&addr, &path, req, remaining)
                        .await
                    {
                        Ok(answer) => answer,
                        Err(e) => Err(RpcError::Unavailable(format!("leader {addr}: {e}"))),
                    }
                }
                Ok(other) => other,
            };
            match result {
                Ok(v) => return Ok(v),
                Err(RpcError::Invalid(msg)) => return Err(KvError::InvalidRequest(msg)),
                // Reads and membership changes are safe to repeat.
                Err(
                    e @ (RpcError::ForwardToLeader { .. }
                    | RpcError::Unavailable(_)
                    | RpcError::Unknown(_)),
                ) => last_error = e.to_string(),
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(pause.min(remaining)).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    fn forward_error(&self, leader_id: Option<NodeId>) -> RpcError {
        let leader_addr = leader_id.and_then(|id| {
            let m = self.inner.raft.metrics().borrow().membership_config.clone();
            let addr = m.membership().get_node(&id).map(|n| n.addr.clone());
            addr.map(|a| self.inner.client.address(id, &a))
        });
        RpcError::ForwardToLeader { leader_addr }
    }

    /// Runs a leader half within the request timeout.
    pub(crate) async fn bounded<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, RpcError>>,
    ) -> Result<T, RpcError> {
        tokio::time::timeout(self.timeout(), f)
            .await
            .unwrap_or_else(|_| Err(RpcError::Unavailable("no quorum within the timeout".into())))
    }

    /// The leader half of [`Kv::write`]: a batch a follower forwarded.
    pub(crate) async fn write_from_peer(
        &self,
        requests: Vec<Request>,
    ) -> Result<Vec<Response>, RpcError> {
        if let Err(e) = requests.iter().try_for_each(Request::validate) {
            return Err(RpcError::Invalid(e.to_string()));
        }
        self.inner.batcher.submit(requests, false).await
    }

    /// The leader half of [`Kv::read_barrier`]: confirms leadership with a quorum and returns the
    /// index a reader must have applied.
    pub(crate) async fn read_index_as_leader(&self) -> Result<Option<u64>, RpcError> {
        match self.inner.raft.get_read_log_id().await {
            Ok((read, _applied)) => Ok(read.map(|l| l.index)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(self.forward_error(f.leader_id))
            }
            Err(e) => Err(RpcError::Unavailable(e.to_string())),
        }
    }

    /// The leader half of [`Kv::add_member`].
    pub(crate) async fn add_member_as_leader(
        &self,
        id: NodeId,
        addr: String,
    ) -> Result<(), RpcError> {
        let raft = &self.inner.raft;
        let membership = raft.metrics().borrow().membership_config.clone();
        let membership = membership.membership();
        if membership.voter_ids().any(|v| v == id) {
            return match membership.get_node(&id) {
                Some(node) if node.addr == addr => Ok(()),
                _ => Err(RpcError::Invalid(format!(
                    "node {id} is already a member with another address; remove it first"
                ))),
            };
        }
        let map_err = |e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>| match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                self.forward_error(f.leader_id)
            }
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                RpcError::Unavailable(e.to_string())
            }
            e => RpcError::Unavailable(e.to_string()),
        };
        tracing::info!(node_id = id, %addr, "adding learner");
        let added = raft
            .add_learner(id, BasicNode::new(&addr), true)
            .await
            .map_err(map_err)?;
        // openraft takes a learner within thousands of entries for caught up, even one that
        // never answered; a voter that cannot be reached would cost the cluster its quorum.
        // So it must hold the membership that added it first.
        let added = added.log_id.index;
        raft.wait(Some(self.timeout() * 24))
            .metrics(
                |m| {
                    let matched = m.replication.as_ref().and_then(|r| r.get(&id).copied());
                    matched.flatten().is_some_and(|l| l.index >= added)
                },
                "the learner holds its membership",
            )
            .await
            .map_err(|e| {
                RpcError::Unavailable(format!("node {id} at {addr} does not replicate: {e}"))
            })?;
        tracing::info!(node_id = id, "promoting learner to voter");
        raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    /// The leader half of [`Kv::remove_member`].
    pub(crate) async fn remove_member_as_leader(&self, id: NodeId) -> Result<(), RpcError> {
        let raft = &self.inner.raft;
        let membership = raft.metrics().borrow().membership_config.clone();
        let membership = membership.membership();
        let change = if membership.voter_ids().any(|v| v == id) {
            if membership.voter_ids().count() == 1 {
                return Err(RpcError::Invalid("cannot remove the last voter".into()));
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else if membership.get_node(&id).is_some() {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        } else {
            return Err(RpcError::Invalid(format!("node {id} is not a member")));
        };
        tracing::info!(node_id = id, "removing member");
        raft.change_membership(change, false)
            .await
            .map_err(|e| match e {
                RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                    self.forward_error(f.leader_id)
                }
                e => RpcError::Unavailable(e.to_string()),
            })?;
        Ok(())
    }
}

/// What the answer of a write means to its caller.
fn settle(answer: Option<Response>, req: &Request) -> Result<Response, KvError> {
    let answer =
        answer.ok_or_else(|| KvError::Storage("write: no answer for the request".into()))?;
    match answer.refused {
        None => Ok(answer),
        Some(Refusal::KeyReused) => Err(KvError::IdempotencyKeyReused {
            key: req.idempotency_key.clone().unwrap_or_default(),
        }),
        // Only a copy its proposer gave up on is refused so; never one that is still awaited.
        Some(Refusal::Stale) => Err(KvError::OutcomeUnknown {
            reason: "write: the store took it for a stale copy".into(),
        }),
    }
}

fn peer_error(addr: &str, e: CallError) -> KvError {
    match e {
        CallError::Unreachable(reason) | CallError::Lost(reason) => KvError::unavailable(reason),
        CallError::BadAnswer(reason) => KvError::Peer {
            addr: addr.to_string(),
            reason,
        },
    }
}

fn rpc_to_kv(e: RpcError) -> KvError {
    match e {
        RpcError::Invalid(m) => KvError::InvalidRequest(m),
        e => KvError::unavailable(e.to_string()),
    }
}
