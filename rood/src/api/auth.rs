//! Who may do what on the API.
//!
//! With `ROO_API_TOKEN` set, writes and membership changes need `Authorization: Bearer <admin
//! token>`, and reads of secret keys (`com.roo.cert:`, `com.roo.acme.`, `com.roo.webhook:`) need a token: the admin
//! one, or `ROO_API_READ_TOKEN`, which sees them with private keys and webhook secrets taken out. Other reads stay
//! open; TLS ticket keys (`com.roo.tls.ticket_key:`) show the read token their times alone.
//! Without `ROO_API_TOKEN` the API is open (a warning is logged at start), but private keys
//! are still never returned to a request without the admin token. A token that is given but
//! wrong is refused (401) everywhere; a read token where the admin one is needed gets 403.
//! Tokens are compared in constant time.

use http::HeaderMap;
use roo_acme::store::{ACCOUNT_KEY, CERT_PREFIX, ORDER_PREFIX, TLSALPN01_PREFIX};
use subtle::ConstantTimeEq;

use super::ApiError;
use crate::tickets::TICKET_KEY_PREFIX;
use crate::webhooks::WEBHOOK_PREFIX;

/// Keys whose values hold secrets.
const SECRET_PREFIXES: [&str; 4] = [
    CERT_PREFIX,
    "com.roo.acme.",
    WEBHOOK_PREFIX,
    TICKET_KEY_PREFIX,
];

/// The API tokens of a node.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    pub admin: Option<String>,
    pub read: Option<String>,
}

/// What a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    Anonymous,
    Read,
    Admin,
}

impl Access {
    /// The source of a change made with this access, as the activity stream and the routes'
    /// owners name it: `api` and the token's role.
    pub fn source(self) -> &'static str {
        match self {
            Access::Anonymous => "api",
            Access::Read => "api:read",
            Access::Admin => "api:admin",
        }
    }
}

impl Tokens {
    /// The access the request's bearer token gives; a token that matches none is an error.
    pub fn access(&self, headers: &HeaderMap) -> Result<Access, ApiError> {
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Ok(Access::Anonymous);
        };
        let given = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::Unauthorized("Authorization must be `Bearer <token>`".into())
            })?;
        self.role_of(given)
            .ok_or_else(|| ApiError::Unauthorized("invalid token".into()))
    }

    /// The access token `given` gives: None when it is neither token.
    pub fn role_of(&self, given: &str) -> Option<Access> {
        let matches = |t: &Option<String>| {
            t.as_ref()
                .is_some_and(|t| bool::from(t.as_bytes().ct_eq(given.as_bytes())))
        };
        if matches(&self.admin) {
            Some(Access::Admin)
        } else if matches(&self.read) {
            Some(Access::Read)
        } else {
            None
        }
    }

    /// True when no admin token is set: everything but private keys is open.
    pub fn open(&self) -> bool {
        self.admin.is_none()
    }

    /// Writes, membership changes: the admin token (anything, on an open API).
    pub fn require_admin(&self, access: Access) -> Result<(), ApiError> {
        match access {
            _ if self.open() => Ok(()),
            Access::Admin => Ok(()),
            Access::Read => Err(ApiError::Forbidden("the read token cannot do this".into())),
            Access::Anonymous => Err(ApiError::Unauthorized("an admin token is needed".into())),
        }
    }

    /// Reads of keys under `prefix` (a key, or a scan or watch prefix): a token when the prefix
    /// lies within a secret one.
    pub fn require_reader(&self, access: Access, prefix: &str) -> Result<(), ApiError> {
        let secret = SECRET_PREFIXES.iter().any(|p| prefix.starts_with(p));
        if secret && !self.open() && access == Access::Anonymous {
            return Err(ApiError::Unauthorized(format!(
                "reading {prefix:?} needs a token"
            )));
        }
        Ok(())
    }

    /// What `access` may see of `key`'s value: all of it, the value without its private key, or
    /// nothing (None: leave the key out).
    pub fn visible(&self, access: Access, key: &str, value: Vec<u8>) -> Option<Vec<u8>> {
        if access == Access::Admin {
            return Some(value);
        }
        if !SECRET_PREFIXES.iter().any(|p| key.starts_with(p)) {
            return Some(value);
        }
        if !self.open() && access == Access::Anonymous {
            return None;
        }
        Some(redact(key, value))
    }
}

/// The value of a secret key without its private parts.
fn redact(key: &str, value: Vec<u8>) -> Vec<u8> {
    if key == ACCOUNT_KEY {
        return br#"{"redacted":"account credentials need the admin token"}"#.to_vec();
    }
    if key.starts_with(WEBHOOK_PREFIX) {
        return without(&value, "secret", "a webhook");
    }
    if key.starts_with(TICKET_KEY_PREFIX) {
        return without(&value, "key", "a ticket key");
    }
    let has_key_pem = [CERT_PREFIX, TLSALPN01_PREFIX, ORDER_PREFIX]
        .iter()
        .any(|p| key.starts_with(p));
    if !has_key_pem {
        return value;
    }
    match serde_json::from_slice::<serde_json::Value>(&value) {
        Ok(serde_json::Value::Object(mut map)) => {
            if map.remove("key_pem").is_some() {
                map.insert("key_pem".into(), "redacted: needs the admin token".into());
            }
            // The API refuses a key in the chain; an older version may have stored one there.
            let chain_holds_a_key = map
                .get("cert_pem")
                .and_then(|c| c.as_str())
                .is_some_and(|c| c.contains("PRIVATE KEY-----"));
            if chain_holds_a_key {
                map.insert("cert_pem".into(), "redacted: it holds a private key".into());
            }
            serde_json::to_vec(&map).unwrap_or_default()
        }
        // Not the JSON roo writes: nothing of it is shown.
        _ => br#"{"redacted":"not a certificate record"}"#.to_vec(),
    }
}

/// A JSON object `value` with its `field` redacted; nothing of it when it is not `what`.
fn without(value: &[u8], field: &str, what: &str) -> Vec<u8> {
    match serde_json::from_slice::<serde_json::Value>(value) {
        Ok(serde_json::Value::Object(mut map)) => {
            if map.remove(field).is_some() {
                map.insert(field.into(), "redacted: needs the admin token".into());
            }
            serde_json::to_vec(&map).unwrap_or_default()
        }
        _ => serde_json::json!({ "redacted": format!("not {what}") })
            .to_string()
            .into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(token: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(t) = token {
            h.insert(
                http::header::AUTHORIZATION,
                format!("Bearer {t}").parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn tokens_give_access() {
        let t = Tokens {
            admin: Some("adm".into()),
            read: Some("rd".into()),
        };
        assert_eq!(t.access(&headers(None)).unwrap(), Access::Anonymous);
        assert_eq!(t.access(&headers(Some("rd"))).unwrap(), Access::Read);
        assert_eq!(t.access(&headers(Some("adm"))).unwrap(), Access::Admin);
        assert!(t.access(&headers(Some("admx"))).is_err());
        let mut basic = HeaderMap::new();
        basic.insert(http::header::AUTHORIZATION, "Basic YTpi".parse().unwrap());
        assert!(t.access(&basic).is_err());
        assert!(t.require_admin(Access::Read).is_err());
        assert!(t
            .require_reader(Access::Anonymous, "com.roo.cert:a")
            .is_err());
        assert!(t
            .require_reader(Access::Anonymous, "com.roo.host:a")
            .is_ok());
    }

    #[test]
    fn a_key_stored_in_the_chain_is_hidden_too() {
        let cert = br#"{"cert_pem":"C\n-----BEGIN PRIVATE KEY-----\nK","key_pem":"K"}"#.to_vec();
        let seen = Tokens::default()
            .visible(Access::Read, "com.roo.cert:a", cert)
            .unwrap();
        let seen = String::from_utf8(seen).unwrap();
        assert!(
            !seen.contains("PRIVATE KEY") && !seen.contains('K'),
            "{seen}"
        );
    }

    #[test]
    fn private_keys_only_to_the_admin() {
        let cert = br#"{"cert_pem":"C","key_pem":"K","source":"manual"}"#.to_vec();
        let open = Tokens::default();
        let seen = open
            .visible(Access::Anonymous, "com.roo.cert:a", cert.clone())
            .unwrap();
        let seen = String::from_utf8(seen).unwrap();
        assert!(seen.contains("\"C\"") && !seen.contains("\"K\""), "{seen}");
        assert_eq!(
            open.visible(Access::Admin, "com.roo.cert:a", cert.clone())
                .unwrap(),
            cert
        );
        let closed = Tokens {
            admin: Some("adm".into()),
            read: None,
        };
        assert!(closed
            .visible(Access::Anonymous, "com.roo.cert:a", cert.clone())
            .is_none());
        let account = closed
            .visible(Access::Read, ACCOUNT_KEY, b"{\"k\":1}".to_vec())
            .unwrap();
        assert!(!String::from_utf8(account).unwrap().contains("\"k\""));
        let garbage = closed
            .visible(Access::Read, "com.roo.cert:a", b"KEY".to_vec())
            .unwrap();
        assert!(!String::from_utf8(garbage).unwrap().contains("KEY"));
    }
}
