//! `/roo/v1/kv/{key}` (get, put, delete) and `/roo/v1/kvs/{prefix}` (scan).

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use roo_kv::{KvError, MAX_VALUE_LEN};
use serde_json::json;

use super::auth::Access;
use super::{consistency, decode_path, only, query_u64, read_body, reply, Api, ApiError, Body};

/// Header carrying a key's revision on `GET /roo/v1/kv/{key}`.
const REVISION_HEADER: &str = "x-roo-revision";

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
            let value = read_body(req, MAX_VALUE_LEN).await?;
            let rev = api.kv.put(&key, value.to_vec(), prev_rev).await?;
            Ok(reply::json(
                StatusCode::OK,
                &json!({"ok": true, "rev": rev}),
            ))
        }
        Method::DELETE => {
            api.tokens.require_admin(access)?;
            let prev_rev = query_u64(&uri, "prev_rev")?;
            let (rev, deleted) = api.kv.delete(&key, prev_rev).await?;
            Ok(reply::json(
                StatusCode::OK,
                &json!({"ok": true, "rev": rev, "deleted": u8::from(deleted)}),
            ))
        }
        _ => Err(ApiError::NotFound),
    }
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
