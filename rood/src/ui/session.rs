//! Who is looking at the dashboard: a login with the read or admin token opens a session, kept
//! in this node's memory and named by an HttpOnly, SameSite=Strict cookie. Each session has
//! its own CSRF token, which every action form carries. Sessions end at logout, after
//! `--ui-session-s`, or when the node restarts (a new login then).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::HeaderMap;
use subtle::ConstantTimeEq;

use crate::api::auth::{Access, Tokens};

/// The cookie that names a session.
pub const COOKIE: &str = "roo_session";
/// Logins kept at most: past it the oldest go first (a flood of logins costs memory no more).
const MAX_SESSIONS: usize = 10_000;

#[derive(Debug, Clone)]
pub struct Session {
    pub access: Access,
    pub csrf: String,
    expires: Instant,
}

/// What a request to the dashboard may do, and why not.
#[derive(Debug, Clone)]
pub enum Viewer {
    /// No token is configured: everyone reads, nobody acts.
    Open,
    /// A valid session.
    In(Session),
    /// No session, or one that ended.
    Out { expired: bool },
}

/// This node's dashboard sessions.
pub struct Sessions {
    lifetime: Duration,
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    pub fn new(lifetime: Duration) -> Sessions {
        Sessions {
            lifetime,
            map: Mutex::new(HashMap::new()),
        }
    }

    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// A new session for `access`: its id (the cookie's value).
    pub fn open(&self, access: Access) -> String {
        let id = random_hex();
        let session = Session {
            access,
            csrf: random_hex(),
            expires: Instant::now() + self.lifetime,
        };
        let mut map = self.lock();
        let now = Instant::now();
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(id.clone(), session);
        id
    }

    pub fn close(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, COOKIE) {
            self.lock().remove(&id);
        }
    }

    /// Who sends `headers`.
    pub fn viewer(&self, tokens: &Tokens, headers: &HeaderMap) -> Viewer {
        if tokens.open() {
            return Viewer::Open;
        }
        let Some(id) = cookie(headers, COOKIE) else {
            return Viewer::Out { expired: false };
        };
        let mut map = self.lock();
        match map.get(&id) {
            Some(s) if s.expires > Instant::now() => Viewer::In(s.clone()),
            Some(_) => {
                map.remove(&id);
                Viewer::Out { expired: true }
            }
            // A session of before a restart, or a made-up one.
            None => Viewer::Out { expired: true },
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Session {
    /// Whether `given` is this session's CSRF token (in constant time).
    pub fn csrf_matches(&self, given: &str) -> bool {
        bool::from(self.csrf.as_bytes().ct_eq(given.as_bytes()))
    }
}

/// The `Set-Cookie` value that opens (`Some(id)`) or ends a session.
pub fn set_cookie(id: Option<&str>, lifetime: Duration, secure: bool) -> String {
    let (value, age) = match id {
        Some(id) => (id, lifetime.as_secs()),
        None => ("", 0),
    };
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={value}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={age}{secure}")
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// 128 random bits as hex.
fn random_hex() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_cookie(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::COOKIE, value.parse().unwrap());
        h
    }

    #[test]
    fn a_session_is_found_by_its_cookie_until_it_ends() {
        let tokens = Tokens {
            admin: Some("a".into()),
            read: Some("r".into()),
        };
        assert_eq!(tokens.role_of("r"), Some(Access::Read));
        assert_eq!(tokens.role_of("x"), None);
        let sessions = Sessions::new(Duration::from_secs(60));
        let id = sessions.open(Access::Read);
        let headers = with_cookie(&format!("other=1; {COOKIE}={id}"));
        let Viewer::In(s) = sessions.viewer(&tokens, &headers) else {
            panic!("no session");
        };
        assert_eq!(s.access, Access::Read);
        assert!(s.csrf_matches(&s.csrf.clone()) && !s.csrf_matches("nope"));
        sessions.close(&headers);
        assert!(matches!(
            sessions.viewer(&tokens, &headers),
            Viewer::Out { expired: true }
        ));
        assert!(matches!(
            sessions.viewer(&tokens, &HeaderMap::new()),
            Viewer::Out { expired: false }
        ));
        let open = Tokens::default();
        assert!(matches!(sessions.viewer(&open, &headers), Viewer::Open));
    }
}
