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
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::tls::PeerTls;
use super::{MAX_RPC_BODY, RPC_PREFIX, SECRET_HEADER};
use crate::{NodeId, TypeConfig};

/// How an RPC failed on the way, before any answer of the peer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The peer could not be reached (connect failure or timeout).
    #[error("unreachable: {0}")]
    Unreachable(String),
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
    moved: Arc<RwLock<HashMap<NodeId, String>>>,
}

/// Plain HTTP, or HTTPS with the node's certificate when peer TLS is on.
#[derive(Clone)]
enum Transport {
    Plain(Client<HttpConnector, Full<Bytes>>),
    Tls(Client<HttpsConnector<HttpConnector>, Full<Bytes>>),
}

impl PeerClient {
    pub fn new(secret: Option<String>, tls: Option<&PeerTls>) -> Self {
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
            moved: Arc::default(),
        }
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
        let req = req
            .body(Full::new(payload))
            .map_err(|e| CallError::BadAnswer(format!("building request: {e}")))?;
        let call = async {
            let resp = match &self.transport {
                Transport::Plain(client) => client.request(req).await,
                Transport::Tls(client) => client.request(req).await,
            }
            .map_err(|e| {
                CallError::Unreachable(format!("{addr}: {}", crate::error::with_causes(&e)))
            })?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_RPC_BODY)
                .collect()
                .await
                .map_err(|e| CallError::Unreachable(format!("{addr}: reading answer: {e}")))?
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
            .map_err(|_| CallError::Unreachable(format!("{addr}: no answer within {timeout:?}")))?
    }
}

/// openraft's network factory: one [`PeerNetwork`] per target node.
#[derive(Clone)]
pub struct NetworkFactory {
    pub(crate) client: PeerClient,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        PeerNetwork {
            client: self.client.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

/// The raft RPCs to one peer.
pub struct PeerNetwork {
    client: PeerClient,
    target: NodeId,
    addr: String,
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
        let answer: Result<Resp, RaftError<NodeId, E>> = self
            .client
            .post(&addr, &path, &req, option.hard_ttl())
            .await
            .map_err(|e| match e {
                CallError::Unreachable(_) => RPCError::Unreachable(Unreachable::new(&e)),
                CallError::BadAnswer(_) => RPCError::Network(NetworkError::new(&e)),
            })?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
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
