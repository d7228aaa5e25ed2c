//! `/roo/v1/kv/{key}` (get, put, delete) and `/roo/v1/kvs/{prefix}` (scan).

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use roo_kv::{Consistency, KvError, Op, MAX_VALUE_LEN};
use serde_json::json;

use super::auth::Access;
use super::{consistency, decode_path, only, query_u64, read_body, reply, Api, ApiError, Body};
use crate::routes::write::RouteChange;
use crate::routes::{RouteKey, ROUTE_PREFIX};
use crate::webhooks::{Webhook, WEBHOOK_PREFIX};

/// Header carrying a key's revision on `GET /roo/v1/kv/{key}`.
const REVISION_HEADER: &str = "x-roo-revision";
/// Header naming a write so that the client's retries of it apply once.
const IDEMPOTENCY_HEADER: &str = "idempotency-key";

pub(super) async fn kv(
    api: &Api,
    access: Access,
    raw_key: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    only(
        &req,
        &[Method::GET, Method::HEAD, Method::PUT, Method::DELETE],
    )?;
    let key = decode_path(raw_key)?;
    roo_kv::command::validate_key(&key)?;
    let uri = req.uri().clone();
    match *req.method() {
        Method::GET | Method::HEAD => {
            api.tokens.require_reader(access, &key)?;
            let record = api
                .kv
                .get(&key, consistency(&uri)?)
                .await?
                .ok_or(ApiError::NotFound)?;
            let value = api
                .tokens
                .visible(access, &key, record.value)
                .ok_or_else(|| ApiError::Unauthorized("reading this key needs a token".into()))?;
            let mut resp = reply::bytes(value);
            resp.headers_mut()
                .insert(REVISION_HEADER, HeaderValue::from(record.mod_rev));
            Ok(resp)
        }
        Method::PUT => {
            api.tokens.require_admin(access)?;
            let prev_rev = query_u64(&uri, "prev_rev")?;
            let idempotency_key = idempotency_key(&req)?;
            let value = read_body(req, MAX_VALUE_LEN).await?;
            if key.starts_with(ROUTE_PREFIX) {
                let rev = write_route(
                    api,
                    access,
                    &key,
                    Some(value.to_vec()),
                    prev_rev,
                    idempotency_key,
                    force(&uri)?,
                )
                .await?
                .rev;
                return Ok(reply::json(
                    StatusCode::OK,
                    &json!({"ok": true, "rev": rev}),
                ));
            }
            // A route or certificate that no node could serve is refused here, not stored to
            // take the working one down everywhere.
            if let Some(Err(e)) = crate::feed::change_from_kv(&key, Some(&value)) {
                return Err(ApiError::BadRequest(format!("{key}: {e}")));
            }
            if key.starts_with(WEBHOOK_PREFIX) {
                Webhook::parse(&value).map_err(|e| ApiError::BadRequest(format!("{key}: {e}")))?;
            }
            let op = Op::Put {
                key,
                value: value.to_vec(),
                prev_rev,
            };
            let answer = write(api, op, idempotency_key).await?;
            Ok(reply::json(
                StatusCode::OK,
                &json!({"ok": true, "rev": answer.rev}),
            ))
        }
        Method::DELETE => {
            api.tokens.require_admin(access)?;
            let prev_rev = query_u64(&uri, "prev_rev")?;
            let idempotency_key = idempotency_key(&req)?;
            let (rev, deleted) = if key.starts_with(ROUTE_PREFIX) {
                // A route that is not there has nothing to remove, nor history to add to.
                let existed = api.kv.get(&key, Consistency::Linearizable).await?.is_some();
                if existed || prev_rev.is_some() {
                    let answer = write_route(
                        api,
                        access,
                        &key,
                        None,
                        prev_rev,
                        idempotency_key,
                        force(&uri)?,
                    )
                    .await?;
                    (answer.rev, existed)
                } else {
                    (api.kv.revision(), false)
                }
            } else {
                let op = Op::Delete { key, prev_rev };
                let answer = write(api, op, idempotency_key).await?;
                (answer.rev, answer.changed > 0)
            };
            Ok(reply::json(
                StatusCode::OK,
                &json!({"ok": true, "rev": rev, "deleted": u8::from(deleted)}),
            ))
        }
        _ => Err(ApiError::NotFound),
    }
}

/// `?force=true`: a change to a frozen route (the admin token's, as every write).
fn force(uri: &http::Uri) -> Result<bool, ApiError> {
    match super::query_param(uri, "force")?.as_deref() {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(ApiError::BadRequest(format!(
            "force={other:?}: true or false"
        ))),
    }
}

/// The client's `Idempotency-Key`, if it sent one: a retry of the same request with the same
/// key, through any node within 10 minutes, gets the first answer instead of applying again.
fn idempotency_key(req: &Request<Incoming>) -> Result<Option<String>, ApiError> {
    let Some(value) = req.headers().get(IDEMPOTENCY_HEADER) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| ApiError::BadRequest("Idempotency-Key is not visible ASCII".into()))?;
    // Its draft standard quotes the key as a structured-field string; both forms are taken.
    let key = key
        .strip_prefix('"')
        .and_then(|k| k.strip_suffix('"'))
        .unwrap_or(key);
    roo_kv::command::validate_idempotency_key(key)?;
    Ok(Some(key.to_string()))
}

/// Writes a route through the one write path: checked, stored with its owner and history.
async fn write_route(
    api: &Api,
    access: Access,
    key: &str,
    value: Option<Vec<u8>>,
    prev_rev: Option<u64>,
    idempotency_key: Option<String>,
    force: bool,
) -> Result<roo_kv::Response, ApiError> {
    let route = RouteKey::parse(key).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let mut change = RouteChange::new(route, value, access.source());
    change.prev_rev = prev_rev;
    change.idempotency_key = idempotency_key;
    change.force = force;
    super::routes::write(api, change).await
}

/// Writes one op, answered as the first time when its idempotency key was seen before.
async fn write(
    api: &Api,
    op: Op,
    idempotency_key: Option<String>,
) -> Result<roo_kv::Response, ApiError> {
    let mut req = roo_kv::Request::new(vec![op]);
    req.idempotency_key = idempotency_key;
    Ok(api.kv.write(req).await?.checked()?)
}

pub(super) async fn scan(
    api: &Api,
    access: Access,
    raw_prefix: &str,
    req: &Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let prefix = decode_path(raw_prefix)?;
    if prefix.len() > roo_kv::MAX_KEY_LEN {
        return Err(KvError::InvalidKey("prefix is longer than a key may be".into()).into());
    }
    api.tokens.require_reader(access, &prefix)?;
    let (records, rev) = api.kv.scan(&prefix, consistency(req.uri())?).await?;
    let results: BTreeMap<String, String> = records
        .into_iter()
        .filter_map(|(k, r)| {
            let value = api.tokens.visible(access, &k, r.value)?;
            Some((k, STANDARD.encode(value)))
        })
        .collect();
    let mut resp = reply::json(
        StatusCode::OK,
        &json!({"results": results, "query": prefix, "rev": rev}),
    );
    resp.headers_mut()
        .insert(REVISION_HEADER, HeaderValue::from(rev));
    Ok(resp)
}
