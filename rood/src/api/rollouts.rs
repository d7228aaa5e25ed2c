//! `/roo/v1/rollouts/<route>`: `PUT` starts a rollout (a [`Plan`]), `GET` shows it, `POST
//! .../pause|resume|promote|abort` acts on it ([`crate::rollout`]).

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use super::auth::Access;
use super::{consistency, only, read_body, reply, route_key, Api, ApiError, Body};
use crate::rollout::{self, Action, Plan, RolloutError};
use crate::routes::ROUTE_PREFIX;

pub(super) const PREFIX: &str = "/roo/v1/rollouts/";

impl From<RolloutError> for ApiError {
    fn from(e: RolloutError) -> Self {
        match e {
            RolloutError::Invalid(why) => ApiError::BadRequest(why),
            e @ (RolloutError::NoRoute(_) | RolloutError::NoRollout(_)) => {
                ApiError::NotFoundWhy(e.to_string())
            }
            RolloutError::Conflict(why) => ApiError::Conflict(why),
            RolloutError::Kv(e) => e.into(),
        }
    }
}

pub(super) async fn rollouts(
    api: &Api,
    access: Access,
    path: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let rest = path.strip_prefix(PREFIX).unwrap_or_default();
    let (name, action) = match rest.rsplit_once('/') {
        Some((name, action)) => (name, Some(action)),
        None => (rest, None),
    };
    let key = route_key(name)?;
    let answer = |r: &rollout::Rollout| {
        let mut v = serde_json::to_value(r).map_err(|e| ApiError::Internal(e.to_string()))?;
        v["route"] = crate::routes::write::route_name(&key).into();
        Ok::<_, ApiError>(v)
    };
    match action {
        None if req.method() == Method::GET => {
            api.tokens.require_reader(access, ROUTE_PREFIX)?;
            let (r, rev) = rollout::get(&api.kv, &key, consistency(req.uri())?)
                .await?
                .ok_or(ApiError::NotFound)?;
            let mut v = answer(&r)?;
            v["rev"] = rev.into();
            Ok(reply::json(StatusCode::OK, &v))
        }
        None => {
            only(&req, &[Method::GET, Method::PUT])?;
            api.tokens.require_admin(access)?;
            let body = read_body(req, 16 * 1024).await?;
            let plan = Plan::parse(&body)?;
            let r = rollout::start(&api.kv, &key, plan, access.source()).await?;
            Ok(reply::json(
                StatusCode::OK,
                &json!({"ok": true, "rollout": answer(&r)?}),
            ))
        }
        Some(action) => {
            let action = Action::parse(action).ok_or(ApiError::NotFound)?;
            only(&req, &[Method::POST])?;
            api.tokens.require_admin(access)?;
            let r = rollout::act(&api.kv, &key, action, access.source()).await?;
            Ok(reply::json(
                StatusCode::OK,
                &json!({"ok": true, "rollout": answer(&r)?}),
            ))
        }
    }
}
