//! Write batching: every write of a node goes through its [`Batcher`].
//!
//! openraft 0.9 appends (and flushes) each client write as its own raft entry, one after the
//! other, so a leader's write rate would be bounded by its flush rate. The batcher instead keeps
//! a small number of raft entries in flight and puts every request that queued up meanwhile into
//! the next one, so one entry, one flush and one replication round carry many writes. On a
//! follower it sends the same batches to the leader in one RPC.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::ServerState;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::command::{Batch, Op, Request, Response};
use crate::network::client::{CallError, PeerClient};
use crate::network::{RpcError, RPC_PREFIX};
use crate::{Metrics, NodeId, Raft};

/// Most requests in one raft entry.
const MAX_REQUESTS: usize = 1024;
/// Most value bytes in one raft entry (a single larger request still goes alone).
const MAX_BYTES: usize = 4 * 1024 * 1024;
/// Raft entries (or forwarded batches) in flight at once.
const IN_FLIGHT: usize = 2;

type Answer = Result<Vec<Response>, RpcError>;

struct Submission {
    requests: Vec<Request>,
    /// Whether a follower may pass it on to the leader (false for batches that came from a peer:
    /// they go back to the peer, which retries, so a batch never travels in a loop).
    forward: bool,
    reply: oneshot::Sender<Answer>,
}

fn size(req: &Request) -> usize {
    req.ops
        .iter()
        .map(|op| match op {
            Op::Put { key, value, .. } => key.len() + value.len(),
            Op::Delete { key, .. } => key.len(),
        })
        .sum()
}

/// The queue of a node's writes.
#[derive(Clone)]
pub(crate) struct Batcher {
    tx: mpsc::Sender<Submission>,
}

impl Batcher {
    pub(crate) fn start(
        id: NodeId,
        raft: Raft,
        client: PeerClient,
        timeout: Duration,
        lease: Duration,
    ) -> Batcher {
        let (tx, rx) = mpsc::channel(8192);
        tokio::spawn(run(
            rx,
            Committer {
                id,
                raft,
                client,
                timeout,
                lease,
            },
        ));
        Batcher { tx }
    }

    /// Commits `requests` (in one raft entry, with others) and returns their answers in order.
    pub(crate) async fn submit(&self, requests: Vec<Request>, forward: bool) -> Answer {
        let (reply, rx) = oneshot::channel();
        let gone = || RpcError::Unavailable("node is shutting down".into());
        self.tx
            .send(Submission {
                requests,
                forward,
                reply,
            })
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

async fn run(mut rx: mpsc::Receiver<Submission>, committer: Committer) {
    let committer = Arc::new(committer);
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        // Wait for a free slot first: requests queue up meanwhile and travel together.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else { return };
        let mut count = first.requests.len();
        let mut bytes: usize = first.requests.iter().map(size).sum();
        let mut subs = vec![first];
        while count < MAX_REQUESTS && bytes < MAX_BYTES {
            let Ok(next) = rx.try_recv() else { break };
            count += next.requests.len();
            bytes += next.requests.iter().map(size).sum::<usize>();
            subs.push(next);
        }
        let committer = committer.clone();
        tokio::spawn(async move {
            committer.commit(subs).await;
            drop(permit);
        });
    }
}

struct Committer {
    id: NodeId,
    raft: Raft,
    client: PeerClient,
    timeout: Duration,
    /// How long a leader may go without hearing from a quorum before it stops taking writes.
    lease: Duration,
}

/// Whether this node leads but has heard from no quorum for longer than `lease`: the other nodes
/// may have elected another leader meanwhile, so it must take no writes.
pub(crate) fn cut_off(m: &Metrics, lease: Duration) -> bool {
    m.state == ServerState::Leader
        && m.millis_since_quorum_ack
            .is_some_and(|ms| Duration::from_millis(ms) > lease)
}

/// Whom this node takes for the leader, and where to reach it.
struct Leader {
    id: Option<NodeId>,
    addr: Option<String>,
    /// This node leads, and a quorum acknowledged it within the lease.
    here: bool,
    /// This node leads but no quorum acknowledged it within the lease (it is cut off).
    isolated: bool,
}

impl Committer {
    fn leader(&self) -> Leader {
        let m = self.raft.metrics();
        let m = m.borrow();
        let addr = m.current_leader.and_then(|id| {
            m.membership_config
                .membership()
                .get_node(&id)
                .map(|n| self.client.address(id, &n.addr))
        });
        let leading = m.state == ServerState::Leader && m.current_leader == Some(self.id);
        let isolated = cut_off(&m, self.lease);
        Leader {
            id: m.current_leader,
            addr,
            here: leading && !isolated,
            isolated,
        }
    }

    /// Resolves once `leader` is no longer the leader this node knows (with `leader` this node:
    /// once it stops leading).
    async fn leader_changed(&self, leader: Option<NodeId>) {
        // The server metrics change with the vote, state and leader only; the full metrics with
        // every log index, which would wake this for each write.
        let mut m = self.raft.server_metrics();
        let stopped = m
            .wait_for(|m| {
                m.current_leader != leader
                    || (leader == Some(self.id) && m.state != ServerState::Leader)
            })
            .await
            .is_err();
        if stopped {
            // Raft stopped: the call in flight fails by itself.
            std::future::pending::<()>().await
        }
    }

    async fn commit(&self, subs: Vec<Submission>) {
        let leader = self.leader();
        if leader.here {
            self.append(subs).await;
            return;
        }
        if leader.isolated {
            let ms = self.lease.as_millis();
            reply_all(
                subs,
                RpcError::Unavailable(format!(
                    "this node leads but has heard from no quorum for over {ms} ms"
                )),
            );
            return;
        }
        let (forward, refuse): (Vec<_>, Vec<_>) = subs.into_iter().partition(|s| s.forward);
        for s in refuse {
            let _ = s.reply.send(Err(RpcError::ForwardToLeader {
                leader_addr: leader.addr.clone(),
            }));
        }
        if forward.is_empty() {
            return;
        }
        let Some(addr) = leader.addr else {
            reply_all(forward, RpcError::Unavailable("no leader".into()));
            return;
        };
        self.forward(&addr, leader.id, forward).await;
    }

    /// On the leader: one raft entry for all of them.
    async fn append(&self, subs: Vec<Submission>) {
        let mut counts = Vec::with_capacity(subs.len());
        let mut requests = Vec::new();
        let mut replies = Vec::with_capacity(subs.len());
        for s in subs {
            counts.push(s.requests.len());
            requests.extend(s.requests);
            replies.push(s.reply);
        }
        let time_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let write = self.raft.client_write(Batch { requests, time_ms });
        let result = tokio::select! {
            result = tokio::time::timeout(self.timeout, write) => result,
            // Deposed with the entry in flight: its fate is the next leader's to decide, and
            // the writers are better off asking that one (a retry applies once) than waiting.
            () = self.leader_changed(Some(self.id)) => {
                let error = RpcError::Unknown("this node stopped leading with the write in flight".into());
                return reply_all_to(replies, error);
            }
        };
        let error = match result {
            Ok(Ok(resp)) => {
                let mut answers = resp.data.into_iter();
                for (reply, n) in replies.into_iter().zip(counts) {
                    let _ = reply.send(Ok(answers.by_ref().take(n).collect()));
                }
                return;
            }
            Err(_) => RpcError::Unknown("no quorum within the timeout".into()),
            // Refused before it was appended, or its entry was truncated: not applied.
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                RpcError::ForwardToLeader {
                    leader_addr: f.leader_node.map(|n| n.addr),
                }
            }
            Ok(Err(e)) => RpcError::Unknown(e.to_string()),
        };
        reply_all_to(replies, error);
    }

    /// On a follower: one RPC to the leader for all of them.
    async fn forward(&self, addr: &str, leader: Option<NodeId>, subs: Vec<Submission>) {
        let requests: Vec<&Request> = subs.iter().flat_map(|s| &s.requests).collect();
        let path = format!("{RPC_PREFIX}write");
        let call = self.client.post(addr, &path, &requests, self.timeout);
        let answer: Result<Answer, _> = tokio::select! {
            answer = call => answer,
            // A new leader is known: the writers retry there at once (a retry applies once)
            // instead of waiting out the old one.
            () = self.leader_changed(leader) => Err(CallError::Lost(format!("{addr}: no longer the leader"))),
        };
        let sent = requests.len();
        drop(requests);
        match answer {
            Ok(Ok(responses)) if responses.len() == sent => {
                let mut answers = responses.into_iter();
                for s in subs {
                    let n = s.requests.len();
                    let _ = s.reply.send(Ok(answers.by_ref().take(n).collect()));
                }
            }
            Ok(Ok(responses)) => reply_all(
                subs,
                RpcError::Unknown(format!(
                    "leader {addr} answered {} of {} requests",
                    responses.len(),
                    sent
                )),
            ),
            Ok(Err(e)) => reply_all(subs, e),
            Err(e @ CallError::Unreachable(_)) => {
                reply_all(subs, RpcError::Unavailable(format!("leader {e}")))
            }
            Err(e) => reply_all(subs, RpcError::Unknown(format!("leader {e}"))),
        }
    }
}

fn reply_all(subs: Vec<Submission>, error: RpcError) {
    reply_all_to(subs.into_iter().map(|s| s.reply).collect(), error);
}

fn reply_all_to(replies: Vec<oneshot::Sender<Answer>>, error: RpcError) {
    for reply in replies {
        let _ = reply.send(Err(error.clone()));
    }
}
