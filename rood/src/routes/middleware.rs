//! Middlewares: what a route (or one of its paths) does to a request before it is forwarded,
//! and to the answer on its way back. They are parsed and compiled with the route, into its
//! snapshot: a route without any carries none and pays nothing for them.
//!
//! Request filters run in the order the route lists them, on what the client sent; the first
//! that answers itself (401, 403, 429, a redirect, 413) ends the request before it reaches the
//! upstream. The request fields the route sets or removes are changed as the request leaves,
//! written into its head with the forwarding fields.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

use super::RouteError;

/// Credentials checked with bcrypt (a deliberately slow hash) and found good are remembered,
/// up to this many per route: a client sends them with every request.
const VERIFIED_KEPT: usize = 1024;
/// Clients a rate limit keeps buckets for before it forgets those that are full again.
const BUCKETS_KEPT: usize = 65_536;

/// A header field set to a value (Some) or removed (None).
pub type FieldChange = (HeaderName, Option<HeaderValue>);

/// One middleware as the JSON route writes it: an object with one field, its kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum MiddlewareJson {
    BasicAuth(BasicAuthJson),
    IpAllow(IpAllowJson),
    RateLimit(RateLimitJson),
    Headers(HeadersJson),
    Redirect(RedirectJson),
    Compress(CompressJson),
    MaxBodyBytes(u64),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthJson {
    /// `name:bcrypt-hash`, as `htpasswd -B` writes them.
    pub users: Vec<String>,
    #[serde(default = "default_realm")]
    pub realm: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpAllowJson {
    pub cidrs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitJson {
    /// Requests a second, on average.
    pub average: f64,
    /// Requests at once above the average.
    #[serde(default = "default_burst")]
    pub burst: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadersJson {
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub request_set: HashMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_remove: Vec<String>,
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub response_set: HashMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectJson {
    /// Matched against the request's path and query.
    pub regex: String,
    /// `$1`... name the regex's groups.
    pub replacement: String,
    #[serde(default)]
    pub permanent: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressJson {
    /// Answers that say they are shorter are sent as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_bytes: Option<u64>,
}

/// Below this, a compressed body saves less than its coding's own framing costs.
const COMPRESS_MIN_BYTES: u64 = 1024;

fn default_realm() -> String {
    "roo".into()
}
fn default_burst() -> u32 {
    1
}

/// A route's middlewares, compiled.
#[derive(Debug)]
pub struct Middlewares {
    filters: Vec<Filter>,
    /// The request fields set (Some) or removed (None), the last change of each name.
    request: Vec<FieldChange>,
    /// The headers set and removed on answers, in order.
    response: Vec<FieldChange>,
    /// The largest request body let through.
    pub max_body_bytes: Option<u64>,
    /// Compressible answers at least this long (or of unknown length) are compressed for the
    /// clients that accept a coding roo has.
    pub compress_min_bytes: Option<u64>,
    /// As written, for [`super::Route::to_json`].
    pub(super) json: Vec<MiddlewareJson>,
}

#[derive(Debug)]
enum Filter {
    BasicAuth(BasicAuth),
    IpAllow(Vec<Cidr>),
    RateLimit(RateLimit),
    Redirect(Redirect),
    MaxBody(u64),
}

/// A middleware's own answer to a request.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub text: String,
}

impl Answer {
    fn new(status: StatusCode, text: impl Into<String>) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            text: text.into(),
        }
    }
}

impl Middlewares {
    /// Compiles `json` (`field`: where it is in the route, for errors).
    pub fn compile(field: &str, json: Vec<MiddlewareJson>) -> Result<Middlewares, RouteError> {
        let mut filters = Vec::new();
        let mut request = Vec::new();
        let mut response = Vec::new();
        let mut max_body_bytes = None;
        let mut compress_min_bytes = None;
        for (i, m) in json.iter().enumerate() {
            let at = |what: &str| format!("{field}middlewares[{i}].{what}");
            let invalid = |what: &str, reason: String| RouteError::Invalid {
                field: at(what),
                reason,
            };
            match m {
                MiddlewareJson::BasicAuth(b) => {
                    let mut users = Vec::with_capacity(b.users.len());
                    for u in &b.users {
                        let (name, hash) = u
                            .split_once(':')
                            .filter(|(n, h)| !n.is_empty() && h.starts_with("$2"))
                            .ok_or_else(|| {
                                invalid(
                                    "basic_auth.users",
                                    format!("{u:?} is not name:bcrypt-hash"),
                                )
                            })?;
                        // A hash bcrypt cannot read would refuse everyone: say so now.
                        if bcrypt::verify("", hash).is_err() {
                            return Err(invalid(
                                "basic_auth.users",
                                format!("bad bcrypt hash for {name:?}"),
                            ));
                        }
                        users.push((name.to_string(), hash.to_string()));
                    }
                    if users.is_empty() {
                        return Err(invalid("basic_auth.users", "no users".into()));
                    }
                    let challenge = format!("Basic realm=\"{}\", charset=\"UTF-8\"", b.realm);
                    let challenge = HeaderValue::from_str(&challenge)
                        .ok()
                        .filter(|_| !b.realm.contains('"'))
                        .ok_or_else(|| {
                            invalid(
                                "basic_auth.realm",
                                "not a header value without quotes".into(),
                            )
                        })?;
                    filters.push(Filter::BasicAuth(BasicAuth {
                        users,
                        challenge,
                        verified: Mutex::default(),
                    }));
                }
                MiddlewareJson::IpAllow(a) => {
                    let cidrs = a
                        .cidrs
                        .iter()
                        .map(|c| {
                            Cidr::parse(c).ok_or_else(|| {
                                invalid("ip_allow.cidrs", format!("{c:?} is not a CIDR"))
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    if cidrs.is_empty() {
                        return Err(invalid("ip_allow.cidrs", "no CIDRs".into()));
                    }
                    filters.push(Filter::IpAllow(cidrs));
                }
                MiddlewareJson::RateLimit(r) => {
                    if !(r.average.is_finite() && r.average > 0.0) {
                        return Err(invalid(
                            "rate_limit.average",
                            "a number of requests a second above 0".into(),
                        ));
                    }
                    if r.burst == 0 {
                        return Err(invalid("rate_limit.burst", "at least 1".into()));
                    }
                    filters.push(Filter::RateLimit(RateLimit {
                        average: r.average,
                        burst: f64::from(r.burst),
                        buckets: Mutex::default(),
                    }));
                }
                MiddlewareJson::Headers(h) => {
                    let name = |what: &str, n: &str| {
                        HeaderName::from_bytes(n.as_bytes())
                            .map_err(|_| invalid(what, format!("{n:?} is not a header name")))
                    };
                    let value = |what: &str, v: &str| {
                        HeaderValue::from_str(v)
                            .map_err(|_| invalid(what, format!("{v:?} is not a header value")))
                    };
                    for n in &h.request_remove {
                        request.push((name("headers.request_remove", n)?, None));
                    }
                    for (n, v) in sorted(&h.request_set) {
                        request.push((
                            name("headers.request_set", n)?,
                            Some(value("headers.request_set", v)?),
                        ));
                    }
                    for n in &h.response_remove {
                        response.push((name("headers.response_remove", n)?, None));
                    }
                    for (n, v) in sorted(&h.response_set) {
                        response.push((
                            name("headers.response_set", n)?,
                            Some(value("headers.response_set", v)?),
                        ));
                    }
                }
                MiddlewareJson::Redirect(r) => {
                    let regex = regex::Regex::new(&r.regex).map_err(|e| {
                        invalid(
                            "redirect.regex",
                            e.to_string()
                                .lines()
                                .last()
                                .unwrap_or("bad regex")
                                .trim()
                                .to_string(),
                        )
                    })?;
                    filters.push(Filter::Redirect(Redirect {
                        regex,
                        replacement: r.replacement.clone(),
                        status: if r.permanent {
                            StatusCode::PERMANENT_REDIRECT
                        } else {
                            StatusCode::TEMPORARY_REDIRECT
                        },
                    }));
                }
                MiddlewareJson::Compress(c) => {
                    compress_min_bytes = Some(c.min_bytes.unwrap_or(COMPRESS_MIN_BYTES));
                }
                MiddlewareJson::MaxBodyBytes(n) => {
                    max_body_bytes = Some(max_body_bytes.map_or(*n, |m: u64| m.min(*n)));
                    filters.push(Filter::MaxBody(*n));
                }
            }
        }
        // A later change of a name overrides an earlier one.
        let mut seen = HashSet::new();
        request.reverse();
        request.retain(|(name, _): &(HeaderName, _)| seen.insert(name.clone()));
        request.reverse();
        Ok(Middlewares {
            filters,
            request,
            response,
            max_body_bytes,
            compress_min_bytes,
            json,
        })
    }

    /// The request filters, in order, on a request from `client` with `path_and_query`, come
    /// at `now`: None to go on, else the answer that ends it.
    pub fn request(
        &self,
        headers: &HeaderMap,
        path_and_query: &str,
        client: IpAddr,
        now: Instant,
    ) -> Option<Answer> {
        for f in &self.filters {
            let answer = match f {
                Filter::IpAllow(cidrs) => {
                    let client = canonical(client);
                    (!cidrs.iter().any(|c| c.contains(client)))
                        .then(|| Answer::new(StatusCode::FORBIDDEN, "forbidden\n"))
                }
                Filter::BasicAuth(auth) => auth.check(headers),
                Filter::RateLimit(limit) => limit.take(canonical(client), now),
                Filter::Redirect(r) => r.answer(path_and_query),
                Filter::MaxBody(max) => {
                    let length = headers
                        .get(CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                    length.filter(|n| n > max).map(|n| {
                        Answer::new(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            format!("request body of {n} bytes: at most {max}\n"),
                        )
                    })
                }
            };
            if answer.is_some() {
                return answer;
            }
        }
        None
    }

    /// The request fields to set (Some) or remove (None) as the request leaves.
    pub fn request_changes(&self) -> &[FieldChange] {
        &self.request
    }

    /// The response filters: header fields to set (Some) or remove (None), in order.
    pub fn answer_changes(&self) -> &[FieldChange] {
        &self.response
    }
}

fn sorted(map: &HashMap<String, String>) -> Vec<(&String, &String)> {
    let mut v: Vec<_> = map.iter().collect();
    v.sort();
    v
}

/// An IPv4 client on an IPv6 socket, as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

struct BasicAuth {
    users: Vec<(String, String)>,
    challenge: HeaderValue,
    /// Credentials (as sent, base64) found good. Kept as they are: they pass through this
    /// process's memory with every request anyway, and a lookup must cost next to nothing.
    verified: Mutex<HashSet<Box<[u8]>, ahash::RandomState>>,
}

impl fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicAuth")
            .field("users", &self.users.len())
            .finish()
    }
}

impl BasicAuth {
    fn check(&self, headers: &HeaderMap) -> Option<Answer> {
        let good = headers
            .get(AUTHORIZATION)
            .map(HeaderValue::as_bytes)
            .and_then(|v| {
                v.strip_prefix(b"Basic ")
                    .or_else(|| v.strip_prefix(b"basic "))
            })
            .is_some_and(|b64| self.verify(b64.trim_ascii()));
        if good {
            return None;
        }
        let mut answer = Answer::new(StatusCode::UNAUTHORIZED, "unauthorized\n");
        answer
            .headers
            .push((WWW_AUTHENTICATE, self.challenge.clone()));
        Some(answer)
    }

    fn verify(&self, b64: &[u8]) -> bool {
        if lock(&self.verified).contains(b64) {
            return true;
        }
        let Some(decoded) = STANDARD
            .decode(b64)
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
        else {
            return false;
        };
        let Some((name, password)) = decoded.split_once(':') else {
            return false;
        };
        // Checked outside the lock: bcrypt takes milliseconds on purpose.
        let good = self
            .users
            .iter()
            .any(|(n, hash)| n == name && bcrypt::verify(password, hash).unwrap_or(false));
        if good {
            let mut verified = lock(&self.verified);
            if verified.len() >= VERIFIED_KEPT {
                verified.clear();
            }
            verified.insert(b64.into());
        }
        good
    }
}

/// A token bucket per client address, on this node.
#[derive(Debug)]
struct RateLimit {
    average: f64,
    burst: f64,
    /// Tokens left and when they were counted, by client.
    buckets: Mutex<HashMap<IpAddr, (f64, Instant), ahash::RandomState>>,
}

impl RateLimit {
    fn take(&self, client: IpAddr, now: Instant) -> Option<Answer> {
        let mut buckets = lock(&self.buckets);
        if buckets.len() >= BUCKETS_KEPT && !buckets.contains_key(&client) {
            let (average, burst) = (self.average, self.burst);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * average < burst
            });
        }
        let (tokens, at) = buckets.entry(client).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.average).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return None;
        }
        let wait = ((1.0 - *tokens) / self.average).ceil().max(1.0) as u64;
        let mut answer = Answer::new(StatusCode::TOO_MANY_REQUESTS, "too many requests\n");
        answer.headers.push((RETRY_AFTER, HeaderValue::from(wait)));
        Some(answer)
    }
}

#[derive(Debug)]
struct Redirect {
    regex: regex::Regex,
    replacement: String,
    status: StatusCode,
}

impl Redirect {
    fn answer(&self, path_and_query: &str) -> Option<Answer> {
        let captures = self.regex.captures(path_and_query)?;
        let mut location = String::new();
        captures.expand(&self.replacement, &mut location);
        let value = HeaderValue::from_str(&location).ok()?;
        let mut answer = Answer::new(self.status, format!("redirecting to {location}\n"));
        answer.headers.push((LOCATION, value));
        Some(answer)
    }
}

/// An address block, `10.0.0.0/8` or `fd00::/8` (a bare address is one host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    fn parse(text: &str) -> Option<Cidr> {
        let (addr, bits) = match text.split_once('/') {
            Some((a, b)) => (a.parse::<IpAddr>().ok()?, Some(b.parse::<u8>().ok()?)),
            None => (text.parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(max);
        (bits <= max).then_some(Cidr { net: addr, bits })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let masked = |a: u128, width: u8| {
            if self.bits == 0 {
                0
            } else {
                a >> (width - self.bits)
            }
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => {
                masked(u128::from(u32::from(n)), 32) == masked(u128::from(u32::from(i)), 32)
            }
            (IpAddr::V6(n), IpAddr::V6(i)) => {
                masked(u128::from(n), 128) == masked(u128::from(i), 128)
            }
            _ => false,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compiled(json: serde_json::Value) -> Result<Middlewares, RouteError> {
        let list: Vec<MiddlewareJson> = serde_json::from_value(json).unwrap();
        Middlewares::compile("", list)
    }

    #[test]
    fn cidrs_contain_what_they_should() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("127.0.0.1")
            .unwrap()
            .contains("127.0.0.1".parse().unwrap()));
        assert!(!Cidr::parse("127.0.0.1")
            .unwrap()
            .contains("127.0.0.2".parse().unwrap()));
        assert!(Cidr::parse("fd00::/8")
            .unwrap()
            .contains("fd12::1".parse().unwrap()));
        assert!(!Cidr::parse("fd00::/8")
            .unwrap()
            .contains("10.0.0.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "fd00::/129", "10.0.0/8", "x", "10.0.0.0/"] {
            assert!(Cidr::parse(bad).is_none(), "{bad}");
        }
        assert_eq!(
            canonical("::ffff:10.0.0.1".parse().unwrap()),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn a_bucket_lets_a_burst_through_then_the_average() {
        let limit = RateLimit {
            average: 10.0,
            burst: 3.0,
            buckets: Mutex::default(),
        };
        let (client, other) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limit.take(client, t0).is_none());
        }
        let refused = limit.take(client, t0).unwrap();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.headers[0].1, "1");
        // Another client has its own bucket; a tenth of a second gives one more.
        assert!(limit.take(other, t0).is_none());
        assert!(limit
            .take(client, t0 + std::time::Duration::from_millis(100))
            .is_none());
        assert!(limit
            .take(client, t0 + std::time::Duration::from_millis(100))
            .is_some());
    }

    #[test]
    fn redirects_expand_groups_and_bad_middlewares_name_their_field() {
        let m = compiled(serde_json::json!([{"redirect": {"regex": "^/old/(.*)", "replacement": "/new/$1", "permanent": true}}])).unwrap();
        let answer = m
            .request(
                &HeaderMap::new(),
                "/old/a?b=1",
                [127, 0, 0, 1].into(),
                Instant::now(),
            )
            .unwrap();
        assert_eq!(answer.status, StatusCode::PERMANENT_REDIRECT);
        assert_eq!(answer.headers[0].1, "/new/a?b=1");
        assert!(m
            .request(
                &HeaderMap::new(),
                "/other",
                [127, 0, 0, 1].into(),
                Instant::now(),
            )
            .is_none());
        for (json, says) in [
            (
                serde_json::json!([{"ip_allow": {"cidrs": ["10.0.0.0/40"]}}]),
                "middlewares[0].ip_allow.cidrs",
            ),
            (
                serde_json::json!([{"ip_allow": {"cidrs": []}}]),
                "middlewares[0].ip_allow.cidrs: no CIDRs",
            ),
            (
                serde_json::json!([{"redirect": {"regex": "(", "replacement": "/"}}]),
                "middlewares[0].redirect.regex",
            ),
            (
                serde_json::json!([{"rate_limit": {"average": 0}}]),
                "middlewares[0].rate_limit.average",
            ),
            (
                serde_json::json!([{"rate_limit": {"average": 1, "burst": 0}}]),
                "middlewares[0].rate_limit.burst",
            ),
            (
                serde_json::json!([{"basic_auth": {"users": ["alice"]}}]),
                "middlewares[0].basic_auth.users",
            ),
            (
                serde_json::json!([{"basic_auth": {"users": ["alice:$2y$05$short"]}}]),
                "middlewares[0].basic_auth.users: bad bcrypt hash",
            ),
            (
                serde_json::json!([{"headers": {"request_set": {"a b": "1"}}}]),
                "middlewares[0].headers.request_set",
            ),
            (
                serde_json::json!([{"headers": {"response_set": {"x": "a\nb"}}}]),
                "middlewares[0].headers.response_set",
            ),
        ] {
            let error = compiled(json.clone()).unwrap_err().to_string();
            assert!(error.starts_with(says), "{json}: {error}");
        }
    }
}
