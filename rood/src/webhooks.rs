//! Webhooks: each event of the activity stream that a webhook asks for, POSTed once per cluster
//! by the leader, in the stream's order.
//!
//! `com.roo.webhook:<name>` holds a [`Webhook`]. Its delivery state ([`Delivery`]: the last event
//! handled, the last answer) is kept at `com.roo.webhook.state:<name>`, written after every
//! attempt, so that the next leader resumes where this one stopped: a receiver gets every event
//! at least once, and the same `X-Roo-Delivery` (the event's id) each time it gets one again. A
//! failed delivery is retried with exponential back-off until the event is [`GIVE_UP_AFTER`]
//! old; each webhook has its own task, so a receiver that is slow or down holds up no other.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use roo_kv::{Consistency, Kv, KvError};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::events::{self, Event, Follow};

pub const WEBHOOK_PREFIX: &str = "com.roo.webhook:";
pub const STATE_PREFIX: &str = "com.roo.webhook.state:";
/// How long a receiver has to answer.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The first pause after a failed delivery; it doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(600);
/// An event not delivered by this age is given up, and the next one is tried.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);

/// A webhook, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// Where events are POSTed: `http://` or `https://`.
    pub url: String,
    /// Event type prefixes it asks for (`rollout.`, `certificate.issued`); none: every event.
    #[serde(default)]
    pub events: Vec<String>,
    /// Signs each body (`X-Roo-Signature: sha256=<hex HMAC-SHA256>`); only the admin token reads
    /// it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default)]
    pub format: Format,
}

/// What a delivery's body is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The event as the stream gives it.
    #[default]
    Json,
    /// `{"text": ...}`, a line a chat's incoming webhook posts as it is.
    Slack,
}

impl Webhook {
    /// Reads and checks a stored or submitted webhook.
    pub fn parse(value: &[u8]) -> Result<Webhook, String> {
        let de = &mut serde_json::Deserializer::from_slice(value);
        let hook: Webhook = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            match path.as_str() {
                "." => e.into_inner().to_string(),
                _ => format!("{path}: {}", e.into_inner()),
            }
        })?;
        let uri: http::Uri = hook.url.parse().map_err(|e| format!("url: {e}"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(format!("url: {:?} is not http:// or https://", hook.url));
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(format!("url: {:?} names no host", hook.url));
        }
        if hook.secret.as_deref() == Some("") {
            return Err("secret: empty; leave it out to send unsigned".into());
        }
        if hook.events.iter().any(String::is_empty) {
            return Err("events: an empty type; leave the list empty for every event".into());
        }
        Ok(hook)
    }

    /// The body a delivery of `event` sends.
    fn body(&self, event: &Event) -> Vec<u8> {
        let value = match self.format {
            Format::Json => serde_json::to_value(event).unwrap_or_default(),
            Format::Slack => json!({"text": text(event)}),
        };
        serde_json::to_vec(&value).unwrap_or_default()
    }
}

/// The event as one line of text.
fn text(event: &Event) -> String {
    let mut line = format!(
        "roo: {} {} (by {})",
        event.kind, event.subject, event.source
    );
    if let Some(error) = event.detail.get("error").and_then(|e| e.as_str()) {
        let _ = write!(line, ": {error}");
    }
    line
}

/// `sha256=<hex>` of `body` with `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = aws_lc_rs::hmac::sign(&key, body);
    let mut out = String::from("sha256=");
    for byte in tag.as_ref() {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// How a webhook's deliveries stand.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// The id of the last event handled: delivered, or given up.
    pub done: u64,
    /// Events delivered, and given up.
    pub delivered: u64,
    pub given_up: u64,
    /// Failed attempts in a row.
    pub failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt: Option<String>,
}

/// A webhook and its deliveries, as the API and the metrics show them.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub name: String,
    pub url: String,
    pub events: Vec<String>,
    pub format: Format,
    /// Matching events not handled yet.
    pub backlog: usize,
    #[serde(flatten)]
    pub delivery: Delivery,
}

/// Every webhook and how its deliveries stand.
pub async fn status(kv: &Kv, consistency: Consistency) -> Result<Vec<Status>, KvError> {
    let (hooks, _) = kv.scan(WEBHOOK_PREFIX, consistency).await?;
    let (states, _) = kv.scan(STATE_PREFIX, Consistency::Stale).await?;
    let all = events::list(kv, 0, &[], Consistency::Stale).await?;
    let states: HashMap<String, Delivery> = states
        .into_iter()
        .filter_map(|(k, r)| {
            let name = k.strip_prefix(STATE_PREFIX)?.to_string();
            Some((name, serde_json::from_slice(&r.value).ok()?))
        })
        .collect();
    Ok(hooks
        .into_iter()
        .filter_map(|(key, record)| {
            let name = key.strip_prefix(WEBHOOK_PREFIX)?.to_string();
            let hook = Webhook::parse(&record.value).ok()?;
            let delivery = states.get(&name).cloned().unwrap_or(Delivery {
                done: record.create_rev,
                ..Delivery::default()
            });
            let backlog = all
                .iter()
                .filter(|e| e.id > delivery.done && events::matches(&hook.events, e))
                .count();
            Some(Status {
                name,
                url: hook.url,
                events: hook.events,
                format: hook.format,
                backlog,
                delivery,
            })
        })
        .collect())
}

/// The client deliveries go out with.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client that checks receivers' certificates against `roots` (the upstreams' roots: the
/// system's and `ROO_UPSTREAM_CA_FILE`'s).
pub fn client(roots: rustls::RootCertStore) -> Result<HttpClient, String> {
    let tls = roo_acme::roots::client_config(roots).map_err(|e| e.to_string())?;
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(TIMEOUT));
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// Delivers events to the webhooks while this node leads, until `shutdown`.
pub async fn run(kv: Kv, client: HttpClient, shutdown: CancellationToken) {
    let mut metrics = kv.raft().metrics();
    while let Some(term) = crate::leader::term(&kv, &mut metrics, &shutdown).await {
        if let Err(e) = supervise(&kv, &client, &term).await {
            tracing::warn!(error = %e, "webhook deliveries stopped; starting again");
            tokio::select! {
                _ = tokio::time::sleep(RETRY_FIRST) => {}
                _ = term.cancelled() => {}
            }
        }
        term.cancel();
    }
}

/// Keeps one delivery task per webhook for this term, each started again when its webhook
/// changes. The tasks end with the term, which the caller ends when this returns.
async fn supervise(kv: &Kv, client: &HttpClient, term: &CancellationToken) -> Result<(), KvError> {
    let mut running: HashMap<String, (Webhook, CancellationToken)> = HashMap::new();
    let (_, rev) = kv.scan(WEBHOOK_PREFIX, Consistency::Stale).await?;
    let mut changes = kv.watch(WEBHOOK_PREFIX, Some(rev))?;
    loop {
        let (hooks, _) = kv.scan(WEBHOOK_PREFIX, Consistency::Stale).await?;
        let mut wanted = HashMap::new();
        let mut names = std::collections::HashSet::new();
        for (key, record) in hooks {
            let name = key.trim_start_matches(WEBHOOK_PREFIX).to_string();
            names.insert(name.clone());
            match Webhook::parse(&record.value) {
                Ok(hook) => {
                    wanted.insert(name, (hook, record.create_rev));
                }
                Err(e) => tracing::warn!(%key, error = %e, "invalid webhook; not delivering to it"),
            }
        }
        // A webhook removed takes its state along: one added again under its name starts anew.
        let (states, _) = kv.scan(STATE_PREFIX, Consistency::Stale).await?;
        for (key, _) in states {
            let name = key.trim_start_matches(STATE_PREFIX);
            if !names.contains(name) {
                kv.delete(&key, None).await?;
            }
        }
        running.retain(|name, (hook, stop)| {
            let keep = wanted.get(name).is_some_and(|(h, _)| h == hook);
            if !keep {
                stop.cancel();
            }
            keep
        });
        for (name, (hook, created)) in wanted {
            if running.contains_key(&name) {
                continue;
            }
            let stop = term.child_token();
            running.insert(name.clone(), (hook.clone(), stop.clone()));
            let (kv, client) = (kv.clone(), client.clone());
            tokio::spawn(async move { deliver(kv, client, name, hook, created, stop).await });
        }
        tokio::select! {
            changed = changes.next_batch(256) => { changed?; }
            _ = term.cancelled() => return Ok(()),
        }
    }
}

/// Delivers `hook`'s events in order until `stop`. A webhook without a state yet starts after
/// the revision `created` that made it.
async fn deliver(
    kv: Kv,
    client: HttpClient,
    name: String,
    hook: Webhook,
    created: u64,
    stop: CancellationToken,
) {
    let state_key = format!("{STATE_PREFIX}{name}");
    let pause = || async {
        tokio::select! {
            _ = tokio::time::sleep(RETRY_FIRST) => true,
            _ = stop.cancelled() => false,
        }
    };
    let (mut state, mut rev) = loop {
        match kv.get(&state_key, Consistency::Stale).await {
            Ok(Some(r)) => {
                break (
                    serde_json::from_slice(&r.value).unwrap_or_default(),
                    r.mod_rev,
                )
            }
            Ok(None) => {
                let fresh = Delivery {
                    done: created,
                    ..Delivery::default()
                };
                break (fresh, 0);
            }
            Err(e) => tracing::warn!(webhook = %name, error = %e, "reading the delivery state"),
        }
        if !pause().await {
            return;
        }
    };
    let mut follow = Follow::new(kv.clone(), state.done, hook.events.clone());
    loop {
        let event = tokio::select! {
            next = follow.next() => next,
            _ = stop.cancelled() => return,
        };
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(webhook = %name, error = %e, "reading the activity stream");
                if !pause().await {
                    return;
                }
                follow = Follow::new(kv.clone(), state.done, hook.events.clone());
                continue;
            }
        };
        let body = Bytes::from(hook.body(&event));
        loop {
            let outcome = tokio::select! {
                outcome = post(&client, &hook, &event, body.clone()) => outcome,
                _ = stop.cancelled() => return,
            };
            state.attempted(event.id, outcome, &name, age(&event));
            match save(&kv, &state_key, &state, rev).await {
                Ok(r) => rev = r,
                Err(KvError::Conflict { .. }) => {
                    tracing::info!(webhook = %name, "another node delivers this webhook now");
                    return;
                }
                // Kept in memory: the next save carries it.
                Err(e) => tracing::warn!(webhook = %name, error = %e, "saving the delivery state"),
            }
            if state.done == event.id {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff(state.failures)) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}

impl Delivery {
    /// Notes an attempt to deliver event `id`, `age` old: its receiver's status, or why there
    /// was none.
    fn attempted(&mut self, id: u64, outcome: Result<u16, String>, name: &str, age: Duration) {
        self.last_attempt = Some(roo_acme::cert::rfc3339(SystemTime::now()));
        let error = match outcome {
            Ok(status) if (200..300).contains(&status) => {
                self.done = id;
                self.delivered += 1;
                self.failures = 0;
                self.last_status = Some(status);
                self.last_error = None;
                return;
            }
            Ok(status) => {
                self.last_status = Some(status);
                format!("the receiver answered {status}")
            }
            Err(e) => {
                self.last_status = None;
                e
            }
        };
        self.failures = self.failures.saturating_add(1);
        // One line when deliveries start failing, not one per attempt.
        if self.failures == 1 {
            tracing::warn!(webhook = %name, event = id, %error, "webhook delivery failed; retrying with back-off");
        }
        if age >= GIVE_UP_AFTER {
            tracing::warn!(webhook = %name, event = id, %error, "webhook delivery given up");
            self.done = id;
            self.given_up += 1;
            self.failures = 0;
        }
        self.last_error = Some(error);
    }
}

/// Writes the state if it still is at `rev` (a node that led before may not write over this
/// one's); returns its new revision.
async fn save(kv: &Kv, key: &str, state: &Delivery, rev: u64) -> Result<u64, KvError> {
    let value = serde_json::to_vec(state).map_err(|e| KvError::InvalidRequest(e.to_string()))?;
    kv.put(key, value, Some(rev)).await
}

/// POSTs one event; the receiver's status, or why there was none.
async fn post(
    client: &HttpClient,
    hook: &Webhook,
    event: &Event,
    body: Bytes,
) -> Result<u16, String> {
    let mut req = http::Request::post(&hook.url)
        .header(header::CONTENT_TYPE, "application/json")
        .header(
            header::USER_AGENT,
            concat!("roo/", env!("CARGO_PKG_VERSION")),
        )
        .header("x-roo-event", &event.kind)
        .header("x-roo-delivery", event.id);
    if let Some(secret) = &hook.secret {
        req = req.header("x-roo-signature", signature(secret, &body));
    }
    let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
    match tokio::time::timeout(TIMEOUT, client.request(req)).await {
        Err(_) => Err(format!("no answer in {} s", TIMEOUT.as_secs())),
        Ok(Err(e)) => Err(roo_kv::error::with_causes(&e)),
        Ok(Ok(rsp)) => Ok(rsp.status().as_u16()),
    }
}

/// The pause after `failures` failed attempts in a row.
fn backoff(failures: u32) -> Duration {
    let doubled = RETRY_FIRST.saturating_mul(1 << failures.saturating_sub(1).min(16));
    doubled.min(RETRY_MAX)
}

/// How long ago `event` was written.
fn age(event: &Event) -> Duration {
    SystemTime::now()
        .duration_since(event.written())
        .unwrap_or_default()
}
