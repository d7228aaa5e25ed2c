//! The calling side of node-to-node RPCs: openraft's network, and the leader calls of followers.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::peers::Peers;
use super::tls::PeerTls;
use super::{MAX_RPC_BODY, RPC_PREFIX, SECRET_HEADER};
use crate::{NodeId, TypeConfig};

/// How an RPC failed on the way, before any answer of the peer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The peer could not be reached: the request was not sent.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The request may have been sent, but no answer came back (timeout, connection lost).
    #[error("no answer: {0}")]
    Lost(String),
    /// The peer answered something other than what was asked for.
    #[error("bad answer: {0}")]
    BadAnswer(String),
}

/// A pooled HTTP client to the other nodes, carrying the cluster secret (and the node's
/// certificate with peer TLS on), and where peers are now when that differs from the membership
/// (a redeployed container has a new address).
#[derive(Clone)]
pub struct PeerClient {
    transport: Transport,
    secret: Option<String>,
    /// `<node id> <advertise address>`: told to every peer ([`super::FROM_HEADER`]), so that a
    /// peer learns where this node is now from any RPC of its.
    from: Option<http::HeaderValue>,
    moved: Arc<RwLock<HashMap<NodeId, String>>>,
    peers: Peers,
}

/// Plain HTTP, or HTTPS with the node's certificate when peer TLS is on.
#[derive(Clone)]
enum Transport {
    Plain(Client<HttpConnector, Full<Bytes>>),
    Tls(Client<HttpsConnector<HttpConnector>, Full<Bytes>>),
}

impl PeerClient {
    pub fn new(secret: Option<String>, tls: Option<&PeerTls>, from: (NodeId, &str)) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let mut builder = Client::builder(TokioExecutor::new());
        builder.pool_idle_timeout(Duration::from_secs(60));
        let transport = match tls {
            None => Transport::Plain(builder.build(connector)),
            Some(tls) => {
                connector.enforce_http(false);
                let connector = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config((*tls.client_config()).clone())
                    .https_only()
                    .enable_http1()
                    .wrap_connector(connector);
                Transport::Tls(builder.build(connector))
            }
        };
        PeerClient {
            transport,
            secret,
            from: http::HeaderValue::from_str(&format!("{} {}", from.0, from.1)).ok(),
            moved: Arc::default(),
            peers: Peers::default(),
        }
    }

    /// How each peer has been answering raft RPCs.
    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    /// Where node `id` is: where it was last seen to have moved, else `known` (its address in
    /// the membership).
    pub fn address(&self, id: NodeId, known: &str) -> String {
        self.moved
            .read()
            .ok()
            .and_then(|m| m.get(&id).cloned())
            .unwrap_or_else(|| known.to_string())
    }

    /// Notes that node `id` answers at `addr` now; true when that is news.
    pub fn moved(&self, id: NodeId, addr: &str) -> bool {
        match self.moved.write() {
            Ok(mut m) => m.insert(id, addr.to_string()).as_deref() != Some(addr),
            Err(_) => false,
        }
    }

    /// `https` with peer TLS on, else `http`.
    pub fn scheme(&self) -> &'static str {
        match self.transport {
            Transport::Plain(_) => "http",
            Transport::Tls(_) => "https",
        }
    }

    /// POSTs `body` as JSON to `addr` + `path` and decodes the JSON answer.
    pub async fn post<Req, Resp>(
        &self,
        addr: &str,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError>
    where
        Req: Serialize + Sync + ?Sized,
        Resp: DeserializeOwned,
    {
        let payload = serde_json::to_vec(body).map_err(|e| CallError::BadAnswer(e.to_string()))?;
        self.request(
            http::Method::POST,
            addr,
            path,
            Bytes::from(payload),
            timeout,
        )
        .await
    }

    /// GETs `addr` + `path` and decodes the JSON answer.
    pub async fn get<Resp: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        self.request(http::Method::GET, addr, path, Bytes::new(), timeout)
            .await
    }

    async fn request<Resp: DeserializeOwned>(
        &self,
        method: http::Method,
        addr: &str,
        path: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("{}://{addr}{path}", self.scheme()))
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(secret) = &self.secret {
            req = req.header(SECRET_HEADER, secret.as_str());
        }
        if let Some(from) = &self.from {
            req = req.header(super::FROM_HEADER, from);
        }
        let req = req
            .body(Full::new(payload))
            .map_err(|e| CallError::BadAnswer(format!("building request: {e}")))?;
        let call = async {
            let resp = match &self.transport {
                Transport::Plain(client) => client.request(req).await,
                Transport::Tls(client) => client.request(req).await,
            }
            .map_err(|e| {
                let text = format!("{addr}: {}", crate::error::with_causes(&e));
                if e.is_connect() {
                    CallError::Unreachable(text)
                } else {
                    CallError::Lost(text)
                }
            })?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_RPC_BODY)
                .collect()
                .await
                .map_err(|e| CallError::Lost(format!("{addr}: reading answer: {e}")))?
                .to_bytes();
            if !status.is_success() {
                let text = String::from_utf8_lossy(&body);
                return Err(CallError::BadAnswer(format!(
                    "{addr}: {status}: {}",
                    text.trim()
                )));
            }
            serde_json::from_slice(&body).map_err(|e| CallError::BadAnswer(format!("{addr}: {e}")))
        };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| CallError::Lost(format!("{addr}: no answer within {timeout:?}")))?
    }
}

/// openraft's network factory: one [`PeerNetwork`] per target node.
#[derive(Clone)]
pub struct NetworkFactory {
    pub(crate) client: PeerClient,
    /// The longest pause between RPCs to a peer that fails them.
    pub(crate) max_backoff: Duration,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        PeerNetwork {
            client: self.client.clone(),
            target,
            addr: node.addr.clone(),
            max_backoff: self.max_backoff,
        }
    }
}

/// The raft RPCs to one peer.
pub struct PeerNetwork {
    client: PeerClient,
    target: NodeId,
    addr: String,
    max_backoff: Duration,
}

/// Pauses before the 1st, 2nd... retry of a failing peer: doubling from 50 ms up to `max`.
///
/// Kept below the election timeout on purpose: a peer that comes back must hear from the
/// leader before its own election timer fires, or it disrupts the cluster with a new term.
fn backoff(max: Duration) -> impl Iterator<Item = Duration> {
    std::iter::successors(Some(Duration::from_millis(50)), move |d| {
        Some((*d * 2).min(max))
    })
    .map(move |d| d.min(max))
}

impl PeerNetwork {
    async fn call<Req, Resp, E>(
        &self,
        rpc: &'static str,
        req: Req,
        option: RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize + Send + Sync + 'static,
        Resp: DeserializeOwned + Send,
        E: std::error::Error + DeserializeOwned + Send,
    {
        let path = format!("{RPC_PREFIX}{rpc}");
        let addr = self.client.address(self.target, &self.addr);
        let answer: Result<Resp, RaftError<NodeId, E>> = match self
            .client
            .post(&addr, &path, &req, option.hard_ttl())
            .await
        {
            Ok(answer) => answer,
            Err(e) => {
                self.client.peers.failed(self.target, &addr, &e.to_string());
                // Every failure is reported as unreachable: openraft backs off from those
                // only, and would retry a peer that answers garbage in a tight loop.
                return Err(RPCError::Unreachable(Unreachable::new(&e)));
            }
        };
        self.client.peers.succeeded(self.target, &addr);
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    fn backoff(&self) -> Backoff {
        Backoff::new(backoff(self.max_backoff))
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("append", rpc, option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call("snapshot", rpc, option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("vote", rpc, option).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_bound() {
        let pauses: Vec<u64> = backoff(Duration::from_millis(150))
            .take(5)
            .map(|d| d.as_millis() as u64)
            .collect();
        assert_eq!(pauses, [50, 100, 150, 150, 150]);
        assert_eq!(
            backoff(Duration::from_millis(20)).next(),
            Some(Duration::from_millis(20))
        );
    }
}
