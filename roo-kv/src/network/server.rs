//! The answering side of node-to-node RPCs, mounted by the node's HTTP server under
//! [`super::RPC_PREFIX`].

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde::de::DeserializeOwned;
use serde::Serialize;
use subtle::ConstantTimeEq;

use super::tls::PeerCertificate;
use super::{JoinRequest, RemoveRequest, RpcError, MAX_RPC_BODY, RPC_PREFIX, SECRET_HEADER};
use crate::throttle::Throttle;
use crate::Kv;

/// Whether `req` comes from a node of the cluster: with the cluster secret when there is one,
/// and over a connection with a certificate of the cluster CA when peer TLS is on. A node with
/// neither has no way to tell a peer from anyone else, and takes no peer's request at all. The
/// reason when not.
pub fn authenticate_peer<B>(kv: &Kv, req: &http::Request<B>) -> Result<(), &'static str> {
    if kv.peer_tls().is_some() && req.extensions().get::<PeerCertificate>().is_none() {
        return Err("a client certificate signed by the cluster CA is required");
    }
    let Some(secret) = kv.cluster_secret() else {
        if kv.peer_tls().is_some() {
            return Ok(());
        }
        return Err("this node has no cluster secret and takes no raft messages or joins: set the same ROO_CLUSTER_SECRET on every node");
    };
    let given = req
        .headers()
        .get(SECRET_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if bool::from(given.ct_eq(secret.as_bytes())) {
        Ok(())
    } else {
        Err("missing or wrong cluster secret")
    }
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

fn error(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({"ok": false, "error": msg});
    json_response(status, body.to_string().into_bytes())
}

fn ok<T: Serialize>(value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec(value) {
        Ok(body) => json_response(StatusCode::OK, body),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("encoding answer: {e}"),
        ),
    }
}

async fn read_json<T: DeserializeOwned, B>(body: B) -> Result<T, Response<Full<Bytes>>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let bytes = match Limited::new(body, MAX_RPC_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("reading body: {e}"),
            ))
        }
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("malformed JSON: {e}")))
}

/// Answers one RPC. The caller has matched the path prefix; method, secret and body are checked
/// here.
pub async fn handle<B>(kv: &Kv, req: http::Request<B>) -> Response<Full<Bytes>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Some(rpc) = req
        .uri()
        .path()
        .strip_prefix(RPC_PREFIX)
        .map(str::to_string)
    else {
        return error(StatusCode::NOT_FOUND, "not found");
    };
    const RPCS: [&str; 8] = [
        "append",
        "vote",
        "snapshot",
        "write",
        "read-index",
        "add-member",
        "remove-member",
        "members",
    ];
    if !RPCS.contains(&rpc.as_str()) {
        return error(StatusCode::NOT_FOUND, "not found");
    }
    if req.method() != http::Method::POST {
        return error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    if let Err(why) = authenticate_peer(kv, &req) {
        static REFUSED: Throttle = Throttle::new(super::peers::LOG_EVERY);
        if let Some(held_back) = REFUSED.ready() {
            tracing::warn!(rpc, why, held_back, "raft RPC refused");
        }
        return error(StatusCode::UNAUTHORIZED, why);
    }
    // A peer that moved (a redeployed container) says where it is now: the raft messages this
    // node sends it go there from now on, even before any DNS or membership change tells.
    let from = req
        .headers()
        .get(super::FROM_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .and_then(|(id, addr)| Some((id.parse::<crate::NodeId>().ok()?, addr.to_string())));
    if let Some((id, addr)) = from {
        kv.peer_moved(id, &addr);
    }
    let body = req.into_body();
    macro_rules! body {
        () => {
            match read_json(body).await {
                Ok(v) => v,
                Err(resp) => return resp,
            }
        };
    }
    let raft = kv.raft();
    match rpc.as_str() {
        "append" => ok(&raft.append_entries(body!()).await),
        "vote" => ok(&raft.vote(body!()).await),
        "snapshot" => ok(&raft.install_snapshot(body!()).await),
        // The caller gives up after its own timeout; do not keep working for it past ours.
        "write" => ok(&kv.bounded(kv.write_from_peer(body!())).await),
        "read-index" => {
            let _: serde_json::Value = body!();
            ok(&kv.bounded(kv.read_index_as_leader()).await)
        }
        "members" => {
            let _: serde_json::Value = body!();
            ok(&kv.members_health_as_leader())
        }
        "add-member" => {
            let join: JoinRequest = body!();
            ok(&kv.add_member_as_leader(join.node_id, join.addr).await)
        }
        "remove-member" => {
            let rm: RemoveRequest = body!();
            ok(&kv.remove_member_as_leader(rm.node_id).await)
        }
        _ => ok(&Err::<(), _>(RpcError::Invalid(format!(
            "unknown rpc {rpc}"
        )))),
    }
}
