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
use crate::network::client::PeerClient;
use crate::network::{RpcError, RPC_PREFIX};
use crate::{NodeId, Raft};

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
    pub(crate) fn start(id: NodeId, raft: Raft, client: PeerClient, timeout: Duration) -> Batcher {
        let (tx, rx) = mpsc::channel(8192);
        tokio::spawn(run(
            rx,
            Committer {
                id,
                raft,
                client,
                timeout,
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
}

impl Committer {
    async fn commit(&self, subs: Vec<Submission>) {
        let (leader, leader_addr) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let addr = m.current_leader.and_then(|id| {
                m.membership_config
                    .membership()
                    .get_node(&id)
                    .map(|n| self.client.address(id, &n.addr))
            });
            (
                m.state == ServerState::Leader && m.current_leader == Some(self.id),
                addr,
            )
        };
        if leader {
            self.append(subs).await;
            return;
        }
        let (forward, refuse): (Vec<_>, Vec<_>) = subs.into_iter().partition(|s| s.forward);
        for s in refuse {
            let _ = s.reply.send(Err(RpcError::ForwardToLeader {
                leader_addr: leader_addr.clone(),
            }));
        }
        if forward.is_empty() {
            return;
        }
        let Some(addr) = leader_addr else {
            reply_all(forward, RpcError::Unavailable("no leader".into()));
            return;
        };
        self.forward(&addr, forward).await;
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
        let result =
            tokio::time::timeout(self.timeout, self.raft.client_write(Batch { requests })).await;
        let error = match result {
            Ok(Ok(resp)) => {
                let mut answers = resp.data.into_iter();
                for (reply, n) in replies.into_iter().zip(counts) {
                    let _ = reply.send(Ok(answers.by_ref().take(n).collect()));
                }
                return;
            }
            Err(_) => RpcError::Unavailable("no quorum within the timeout".into()),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                RpcError::ForwardToLeader {
                    leader_addr: f.leader_node.map(|n| n.addr),
                }
            }
            Ok(Err(e)) => RpcError::Unavailable(e.to_string()),
        };
        for reply in replies {
            let _ = reply.send(Err(error.clone()));
        }
    }

    /// On a follower: one RPC to the leader for all of them.
    async fn forward(&self, addr: &str, subs: Vec<Submission>) {
        let requests: Vec<&Request> = subs.iter().flat_map(|s| &s.requests).collect();
        let path = format!("{RPC_PREFIX}write");
        let answer: Result<Answer, _> =
            self.client.post(addr, &path, &requests, self.timeout).await;
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
                RpcError::Failed(format!(
                    "leader {addr} answered {} of {} requests",
                    responses.len(),
                    sent
                )),
            ),
            Ok(Err(e)) => reply_all(subs, e),
            Err(e) => reply_all(subs, RpcError::Unavailable(format!("leader {addr}: {e}"))),
        }
    }
}

fn reply_all(subs: Vec<Submission>, error: RpcError) {
    for s in subs {
        let _ = s.reply.send(Err(error.clone()));
    }
}
