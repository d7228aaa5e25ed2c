//! `GET /roo/v1/events?since=<id>&type=<prefix>`: the activity stream, oldest first.

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use super::auth::Access;
use super::{consistency, only, query_param, query_u64, reply, Api, ApiError, Body};
use crate::events::{self, EVENT_PREFIX};

pub(super) const PATH: &str = "/roo/v1/events";

pub(super) async fn events(
    api: &Api,
    access: Access,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    only(&req, &[Method::GET])?;
    api.tokens.require_reader(access, EVENT_PREFIX)?;
    let since = query_u64(req.uri(), "since")?.unwrap_or(0);
    let kind = query_param(req.uri(), "type")?.unwrap_or_default();
    let events = events::list(&api.kv, since, &kind, consistency(req.uri())?).await?;
    Ok(reply::json(StatusCode::OK, &json!({"events": events})))
}
