//! `/roo/v1/routes`: every route as the route model reads it, with its owner and state;
//! `/roo/v1/routes/<route>/history`, a route's changes, newest first; and `POST` to
//! `.../freeze`, `.../unfreeze` and `.../rollback` (`{"rev":N}`, by default the value before the
//! current one).

use std::collections::{HashMap, HashSet};

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::auth::Access;
use super::{consistency, only, read_body, reply, route_key, Api, ApiError, Body};
use crate::routes::write::{
    self, RouteChange, WriteError, FROZEN_PREFIX, OWNER_PREFIX, ROLLED_BACK_PREFIX,
};
use crate::routes::{Route, RouteKey, ROUTE_PREFIX};

pub(super) const PREFIX: &str = "/roo/v1/routes";

pub(super) async fn routes(
    api: &Api,
    access: Access,
    path: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let rest = path.strip_prefix(PREFIX).unwrap_or_default();
    if rest.is_empty() || rest == "/" {
        only(&req, &[Method::GET])?;
        api.tokens.require_reader(access, ROUTE_PREFIX)?;
        return list(api, &req).await;
    }
    let (name, action) = rest
        .strip_prefix('/')
        .and_then(|r| r.rsplit_once('/'))
        .ok_or(ApiError::NotFound)?;
    let key = route_key(name)?;
    match action {
        "history" => {
            only(&req, &[Method::GET])?;
            api.tokens.require_reader(access, ROUTE_PREFIX)?;
            history(api, &key, &req).await
        }
        "freeze" | "unfreeze" => {
            only(&req, &[Method::POST])?;
            api.tokens.require_admin(access)?;
            let frozen = action == "freeze";
            let changed = freeze(api, access, &key, frozen).await?;
            let state = if frozen { "frozen" } else { "ok" };
            Ok(reply::json(
                StatusCode::OK,
                &json!({"ok": true, "state": state, "changed": changed}),
            ))
        }
        "rollback" => {
            only(&req, &[Method::POST])?;
            api.tokens.require_admin(access)?;
            rollback(api, access, key, req).await
        }
        _ => Err(ApiError::NotFound),
    }
}

/// Freezes or unfreezes a route that exists; false when it already was so.
pub(crate) async fn freeze(
    api: &Api,
    access: Access,
    key: &RouteKey,
    frozen: bool,
) -> Result<bool, ApiError> {
    let consistency = roo_kv::Consistency::Linearizable;
    if api.kv.get(&key.to_string(), consistency).await?.is_none() {
        return Err(ApiError::NotFound);
    }
    Ok(write::freeze(&api.kv, key, frozen, access.source()).await?)
}

/// Makes a route change through the write path, its errors as the API answers them.
pub(super) async fn write(api: &Api, change: RouteChange) -> Result<roo_kv::Response, ApiError> {
    let name = write::route_name(&change.key);
    match write::write(&api.kv, change).await {
        Ok(answer) => Ok(answer),
        Err(WriteError::Invalid(e)) => Err(ApiError::BadRequest(format!("{name}: {e}"))),
        Err(e @ WriteError::Frozen(_)) => Err(ApiError::Conflict(e.to_string())),
        Err(WriteError::Kv(e)) => Err(e.into()),
    }
}

async fn history(
    api: &Api,
    key: &RouteKey,
    req: &Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let history = write::history(&api.kv, key, consistency(req.uri())?).await?;
    let history: Vec<Value> = history
        .into_iter()
        .map(|(rev, r)| {
            let mut entry =
                json!({"rev": rev, "time": r.time, "source": r.source, "value": r.value});
            if let Some(of) = r.rollback_of {
                entry["rollback_of"] = of.into();
            }
            entry
        })
        .collect();
    Ok(reply::json(StatusCode::OK, &json!({"history": history})))
}

/// Restores the value a route had at revision `rev` (by default the one before the current), as
/// a new revision.
async fn rollback(
    api: &Api,
    access: Access,
    key: RouteKey,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let force = super::query_param(req.uri(), "force")?.as_deref() == Some("true");
    let body = read_body(req, 4096).await?;
    let rev =
        match body.iter().all(u8::is_ascii_whitespace) {
            true => None,
            false => {
                let asked: Value = serde_json::from_slice(&body)
                    .map_err(|e| ApiError::BadRequest(format!("body: {e}")))?;
                match &asked["rev"] {
                    Value::Null => None,
                    v => Some(v.as_u64().ok_or_else(|| {
                        ApiError::BadRequest(format!("rev: {v} is not a revision"))
                    })?),
                }
            }
        };
    let (rev, restored) = restore(api, access, key, rev, force).await?;
    Ok(reply::json(
        StatusCode::OK,
        &json!({"ok": true, "rev": rev, "restored": restored}),
    ))
}

/// Makes the value of `rev` (by default the one before the current) the route's current one;
/// returns the new revision and the one restored.
pub(crate) async fn restore(
    api: &Api,
    access: Access,
    key: RouteKey,
    rev: Option<u64>,
    force: bool,
) -> Result<(u64, u64), ApiError> {
    let history = write::history(&api.kv, &key, roo_kv::Consistency::Linearizable).await?;
    let name = write::route_name(&key);
    let (rev, record) = match rev {
        Some(rev) => history
            .into_iter()
            .find(|(r, _)| *r == rev)
            .ok_or_else(|| {
                ApiError::BadRequest(format!("{name} has no revision {rev} in its history"))
            })?,
        None => history.into_iter().nth(1).ok_or_else(|| {
            ApiError::BadRequest(format!("{name} has no earlier value to roll back to"))
        })?,
    };
    let value = match &record.value {
        Value::Null => None,
        v => Some(v.to_string().into_bytes()),
    };
    let mut change = RouteChange::new(key, value, access.source());
    change.rollback_of = Some(rev);
    change.force = force;
    let answer = write(api, change).await?;
    Ok((answer.rev, rev))
}

/// What tells a route's state beside its value: freezes, rollouts under way, rollbacks.
pub(crate) struct RouteStates {
    frozen: HashSet<String>,
    rolling: HashMap<String, &'static str>,
    rolled_back: HashSet<String>,
}

impl RouteStates {
    pub(crate) async fn read(
        kv: &roo_kv::Kv,
        consistency: roo_kv::Consistency,
    ) -> Result<RouteStates, roo_kv::KvError> {
        let names = |prefix: &'static str| async move {
            let (records, _) = kv.scan(prefix, consistency).await?;
            let names: HashSet<String> = records
                .into_iter()
                .map(|(k, _)| k.trim_start_matches(prefix).to_string())
                .collect();
            Ok::<_, roo_kv::KvError>(names)
        };
        let rolling = crate::rollout::list(kv, consistency)
            .await?
            .into_iter()
            .filter(|(_, r, _)| r.state.open())
            .map(|(name, r, _)| (name, r.state.as_str()))
            .collect();
        Ok(RouteStates {
            frozen: names(FROZEN_PREFIX).await?,
            rolling,
            rolled_back: names(ROLLED_BACK_PREFIX).await?,
        })
    }

    /// The state of the valid route `name`: a freeze first, then a rollout under way.
    pub(crate) fn of(&self, name: &str) -> &'static str {
        if self.frozen.contains(name) {
            "frozen"
        } else if let Some(state) = self.rolling.get(name) {
            state
        } else if self.rolled_back.contains(name) {
            "rolled_back"
        } else {
            "ok"
        }
    }
}

/// Who wrote each route last, by route name.
pub(crate) async fn owners(
    kv: &roo_kv::Kv,
    consistency: roo_kv::Consistency,
) -> Result<HashMap<String, String>, roo_kv::KvError> {
    let (owners, _) = kv.scan(OWNER_PREFIX, consistency).await?;
    Ok(owners
        .into_iter()
        .map(|(k, r)| {
            let name = k.trim_start_matches(OWNER_PREFIX).to_string();
            (name, String::from_utf8_lossy(&r.value).into_owned())
        })
        .collect())
}

async fn list(api: &Api, req: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let consistency = consistency(req.uri())?;
    let (records, _) = api.kv.scan(ROUTE_PREFIX, consistency).await?;
    let owners = owners(&api.kv, consistency).await?;
    let states = RouteStates::read(&api.kv, consistency).await?;
    let mut routes = Vec::with_capacity(records.len());
    for (key, record) in records {
        let key: String = key;
        let name = key.trim_start_matches(ROUTE_PREFIX);
        // Routes written before owners were recorded were put through the API.
        let owner = owners.get(name).map_or("api", String::as_str);
        let mut route = json!({"route": name, "rev": record.mod_rev, "owner": owner});
        match Route::parse(&record.value) {
            Ok(r) => {
                route["value"] = r.to_json();
                route["state"] = states.of(name).into();
            }
            Err(e) => {
                route["value"] = String::from_utf8_lossy(&record.value).into();
                route["state"] = "invalid".into();
                route["error"] = e.to_string().into();
            }
        }
        routes.push(route);
    }
    Ok(reply::json(StatusCode::OK, &json!({"routes": routes})))
}
