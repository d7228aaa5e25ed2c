//! `/roo/v1/cluster`: status, joins, member removal.

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use roo_kv::network::JoinRequest;
use serde_json::json;

use super::auth::Access;
use super::{only, read_body, reply, Api, ApiError, Body};

pub(super) async fn cluster(
    api: &Api,
    access: Access,
    path: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let rest = path.strip_prefix("/roo/v1/cluster").unwrap_or_default();
    match rest {
        "" | "/" => {
            only(&req, &[Method::GET])?;
            let status = api.kv.status().await;
            let mut value =
                serde_json::to_value(status).map_err(|e| ApiError::Internal(e.to_string()))?;
            // Reachability and lag as the leader sees them; a node without a leader says why.
            // Peers finding where each other moved leave it out (`?health=false`): a node with
            // no leader would only answer it when it gives up looking for one.
            let health = super::query_param(req.uri(), "health")?.as_deref() != Some("false");
            match health.then_some(api.kv.members_health().await) {
                None => {}
                Some(Ok(health)) => {
                    value["health"] = serde_json::to_value(health)
                        .map_err(|e| ApiError::Internal(e.to_string()))?
                }
                Some(Err(e)) => value["health_error"] = e.to_string().into(),
            }
            Ok(reply::json(StatusCode::OK, &value))
        }
        "/join" => {
            only(&req, &[Method::POST])?;
            check_peer(api, &req)?;
            let body = read_body(req, 64 * 1024).await?;
            let join: JoinRequest = serde_json::from_slice(&body)
                .map_err(|e| ApiError::BadRequest(format!("malformed join request: {e}")))?;
            if join.addr.parse::<std::net::SocketAddr>().is_err() && !join.addr.contains(':') {
                return Err(ApiError::BadRequest(format!(
                    "addr {:?} is not host:port",
                    join.addr
                )));
            }
            tracing::info!(node_id = join.node_id, addr = %join.addr, "join request");
            // Answered in roo-kv's RPC shape so the joining node reads leader errors alike.
            let answer: Result<(), roo_kv::network::RpcError> =
                match api.kv.add_member(join.node_id, join.addr).await {
                    Ok(()) => Ok(()),
                    Err(roo_kv::KvError::InvalidRequest(m)) => {
                        Err(roo_kv::network::RpcError::Invalid(m))
                    }
                    Err(e) => Err(roo_kv::network::RpcError::Unavailable(e.to_string())),
                };
            let value =
                serde_json::to_value(answer).map_err(|e| ApiError::BadRequest(e.to_string()))?;
            Ok(reply::json(StatusCode::OK, &value))
        }
        _ => {
            let Some(id) = rest.strip_prefix("/members/") else {
                return Err(ApiError::NotFound);
            };
            only(&req, &[Method::DELETE])?;
            // The admin token, or a node's credentials (the cluster secret, its peer
            // certificate). An open API still needs those here when the cluster has them: this
            // removes a node.
            let peers_checked = api.kv.cluster_secret().is_some() || api.kv.peer_tls().is_some();
            let by_peer = peers_checked && check_peer(api, &req).is_ok();
            if !by_peer {
                if api.tokens.open() && peers_checked {
                    return Err(ApiError::Unauthorized(
                        "missing or wrong cluster secret or peer certificate (or set ROO_API_TOKEN and use it)".into(),
                    ));
                }
                api.tokens.require_admin(access)?;
            }
            let id: u64 = id
                .parse()
                .map_err(|_| ApiError::BadRequest(format!("{id:?} is not a node id")))?;
            api.kv.remove_member(id).await?;
            Ok(reply::json(StatusCode::OK, &json!({"ok": true})))
        }
    }
}

/// A request from a node of the cluster (the secret, and the peer certificate with peer TLS).
fn check_peer<B>(api: &Api, req: &Request<B>) -> Result<(), ApiError> {
    roo_kv::network::server::authenticate_peer(&api.kv, req)
        .map_err(|why| ApiError::Unauthorized(why.into()))
}
