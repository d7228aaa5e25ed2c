//! `GET /roo/v1/stats/<route>?window_s=60`: the route's backends over the window, across the
//! cluster; and what a node answers its peers for its own part ([`crate::stats::PEER_PATH`],
//! and every route in brief for the dashboard, [`crate::stats::PEER_BRIEF_PATH`]).

use std::time::Duration;

use http::{Request, Response, StatusCode};

use super::{query_param, reply, route_key, Api, ApiError, Body};
use crate::stats::{self, NodeWindow, MAX_WINDOW_S};

pub(super) const PREFIX: &str = "/roo/v1/stats/";

/// The route named in the path, checked, as its counts are kept.
fn route_name(raw: &str) -> Result<String, ApiError> {
    let key = route_key(raw)?;
    Ok(crate::routes::write::route_name(&key))
}

/// The window asked for in `name`, counted in `per_s` units a second (1: seconds, 1000:
/// milliseconds), from 1 s to [`MAX_WINDOW_S`].
fn window<B>(req: &Request<B>, name: &str, per_s: u64, default: u64) -> Result<Duration, ApiError> {
    let bad = || {
        ApiError::BadRequest(format!(
            "{name}: a whole number from {per_s} to {}",
            MAX_WINDOW_S * per_s
        ))
    };
    let n = match query_param(req.uri(), name)? {
        None => default,
        Some(v) => v.parse::<u64>().map_err(|_| bad())?,
    };
    if !(per_s..=MAX_WINDOW_S * per_s).contains(&n) {
        return Err(bad());
    }
    Ok(Duration::from_millis(n * 1000 / per_s))
}

pub(super) async fn stats<B>(
    api: &Api,
    raw: &str,
    req: &Request<B>,
) -> Result<Response<Body>, ApiError> {
    let route = route_name(raw)?;
    let window = window(req, "window_s", 1, 60)?;
    let gathered = stats::gather(&api.kv, &api.stats, &route, window).await;
    Ok(reply::json(
        StatusCode::OK,
        &gathered.to_json(&route, window),
    ))
}

pub(super) fn peer<B>(api: &Api, raw: &str, req: &Request<B>) -> Result<Response<Body>, ApiError> {
    roo_kv::network::server::authenticate_peer(&api.kv, req)
        .map_err(|why| ApiError::Unauthorized(why.to_string()))?;
    let route = route_name(raw)?;
    let window = window(req, "window_ms", 1000, 60_000)?;
    let answer = NodeWindow {
        node: api.kv.node_id(),
        backends: api.stats.window(&route, window),
    };
    let answer = serde_json::to_value(&answer).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(reply::json(StatusCode::OK, &answer))
}

pub(super) fn peer_briefs<B>(api: &Api, req: &Request<B>) -> Result<Response<Body>, ApiError> {
    roo_kv::network::server::authenticate_peer(&api.kv, req)
        .map_err(|why| ApiError::Unauthorized(why.to_string()))?;
    let window = window(req, "window_ms", 1000, 60_000)?;
    let answer = serde_json::to_value(api.stats.briefs(window))
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(reply::json(StatusCode::OK, &answer))
}
