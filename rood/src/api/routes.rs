//! `/roo/v1/routes`: every route as the route model reads it, with its owner and state; and
//! `/roo/v1/routes/<route>/history`, a route's changes, newest first.

use std::collections::HashMap;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::auth::Access;
use super::{consistency, decode_path, only, reply, Api, ApiError, Body};
use crate::routes::write::{self, OWNER_PREFIX};
use crate::routes::{Route, RouteKey, ROUTE_PREFIX};

pub(super) const PREFIX: &str = "/roo/v1/routes";

pub(super) async fn routes(
    api: &Api,
    access: Access,
    path: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    only(&req, &[Method::GET])?;
    api.tokens.require_reader(access, ROUTE_PREFIX)?;
    let rest = path.strip_prefix(PREFIX).unwrap_or_default();
    if rest.is_empty() || rest == "/" {
        return list(api, &req).await;
    }
    let name = rest
        .strip_prefix('/')
        .and_then(|r| r.strip_suffix("/history"))
        .ok_or(ApiError::NotFound)?;
    let key = RouteKey::parse(&format!("{ROUTE_PREFIX}{}", decode_path(name)?))
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let history = write::history(&api.kv, &key, consistency(req.uri())?).await?;
    let history: Vec<Value> = history
        .into_iter()
        .map(|(rev, r)| json!({"rev": rev, "time": r.time, "source": r.source, "value": r.value}))
        .collect();
    Ok(reply::json(StatusCode::OK, &json!({"history": history})))
}

async fn list(api: &Api, req: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let consistency = consistency(req.uri())?;
    let (records, _) = api.kv.scan(ROUTE_PREFIX, consistency).await?;
    let (owners, _) = api.kv.scan(OWNER_PREFIX, consistency).await?;
    let owners: HashMap<String, String> = owners
        .into_iter()
        .map(|(k, r)| {
            let name = k.trim_start_matches(OWNER_PREFIX).to_string();
            (name, String::from_utf8_lossy(&r.value).into_owned())
        })
        .collect();
    let routes: Vec<Value> = records
        .into_iter()
        .map(|(key, record)| {
            let name = key.trim_start_matches(ROUTE_PREFIX);
            // Routes written before owners were recorded were put through the API.
            let owner = owners.get(name).map_or("api", String::as_str);
            let mut route = json!({"route": name, "rev": record.mod_rev, "owner": owner});
            match Route::parse(&record.value) {
                Ok(r) => {
                    route["value"] = r.to_json();
                    route["state"] = "ok".into();
                }
                Err(e) => {
                    route["value"] = String::from_utf8_lossy(&record.value).into();
                    route["state"] = "invalid".into();
                    route["error"] = e.to_string().into();
                }
            }
            route
        })
        .collect();
    Ok(reply::json(StatusCode::OK, &json!({"routes": routes})))
}
