//! The activity stream: typed events of what changed, when, and by whom, written by the control
//! side (never the request path) into the replicated KV, so that every node shows the same
//! stream and it outlives restarts and leader changes.
//!
//! An event that tells of a KV change goes in the same request as the change: it is stored once
//! per cluster, or not at all, and its id is that request's revision (a request carries one
//! event). Where events are stored:
//! - a route write's event is the route's history record (`com.roo.route.history:`,
//!   [`crate::routes::write`]), which every route write makes anyway: the stream adds no key to
//!   the write that is most of the KV's traffic;
//! - every other event is `com.roo.event:<unix ms, 15 digits>-<random>`; the value holds the
//!   rest but the time, which the key has.
//!
//! The stream is both, by id, its newest `--events-kept`; the leader keeps the event keys to
//! that bound ([`run`]), off the write path, and a route keeps its last records.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use roo_kv::{Consistency, EventKind, Kv, KvError, Op, Watch};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub const EVENT_PREFIX: &str = "com.roo.event:";
/// What a follower of the stream watches: the event keys and the routes' history records.
const STREAM_PREFIX: &str = "com.roo.";
/// `--events-kept` unless told.
pub const KEPT_DEFAULT: u64 = 10_000;
/// `--events-max-age-s` unless told: 30 days.
pub const MAX_AGE_DEFAULT_S: u64 = 30 * 86_400;
/// How often the leader trims the stream.
const TRIM_EVERY: Duration = Duration::from_secs(5);
/// The most events one trimming request deletes.
const TRIM_BATCH: usize = 1_000;

/// The events the stream keeps; 0: none are written (`--events-kept 0`). Process-wide, as the
/// writers (the route write path, ACME, the cluster, the swarm watcher) share no config.
static KEPT: AtomicU64 = AtomicU64::new(KEPT_DEFAULT);
/// The age, in milliseconds, past which an event leaves the stream (`--events-max-age-s`).
static MAX_AGE_MS: AtomicU64 = AtomicU64::new(MAX_AGE_DEFAULT_S * 1_000);

/// Sets how many events the stream keeps, and for how long, at a node's start.
pub fn keep(kept: u64, max_age: Duration) {
    KEPT.store(kept, Ordering::Relaxed);
    let ms = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
    MAX_AGE_MS.store(ms, Ordering::Relaxed);
}

/// Unix milliseconds before which events are past the age bound.
fn oldest_kept_ms() -> u64 {
    crate::now_ms().saturating_sub(MAX_AGE_MS.load(Ordering::Relaxed))
}

/// Whether events are written.
pub fn recording() -> bool {
    KEPT.load(Ordering::Relaxed) > 0
}

/// An event as the KV holds it.
#[derive(Serialize, Deserialize)]
struct Stored<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    subject: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    source: std::borrow::Cow<'a, str>,
    detail: std::borrow::Cow<'a, Value>,
}

/// One event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The revision that stored it: ids grow in the order the cluster wrote the events.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub id: u64,
    /// RFC 3339, UTC.
    pub time: String,
    /// `route.added`, `route.changed`...
    #[serde(rename = "type")]
    pub kind: String,
    /// What it is about: a route (`app.example.com:https`), a host, a node.
    pub subject: String,
    /// Who or what made it: `api`, `swarm:<services>`...
    pub source: String,
    pub detail: Value,
    /// Unix milliseconds of `time`, for the key.
    #[serde(skip)]
    at_ms: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Event {
    pub fn new(kind: &str, subject: &str, source: &str, detail: Value) -> Event {
        let now = SystemTime::now();
        Event {
            id: 0,
            time: roo_acme::cert::rfc3339(now),
            kind: kind.to_string(),
            subject: subject.to_string(),
            source: source.to_string(),
            detail,
            at_ms: now
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        }
    }

    /// An event as stored: at revision `id`, written at `at_ms` (unix milliseconds).
    pub fn stored(
        id: u64,
        at_ms: u64,
        kind: String,
        subject: String,
        source: String,
        detail: Value,
    ) -> Event {
        Event {
            id,
            time: roo_acme::cert::rfc3339(UNIX_EPOCH + Duration::from_millis(at_ms)),
            kind,
            subject,
            source,
            detail,
            at_ms,
        }
    }

    /// When it was written.
    pub fn written(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.at_ms)
    }

    /// The write that stores it, for a request of several.
    pub fn op(&self) -> Result<Op, KvError> {
        Ok(Op::Put {
            // Zero-padded, so that the keys sort by time (the trim takes the oldest first); a
            // random tail keeps two events of one millisecond apart.
            key: format!(
                "{EVENT_PREFIX}{:015}-{:08x}",
                self.at_ms,
                rand::random::<u32>()
            ),
            value: serde_json::to_vec(&Stored {
                kind: self.kind.as_str().into(),
                subject: self.subject.as_str().into(),
                source: self.source.as_str().into(),
                detail: std::borrow::Cow::Borrowed(&self.detail),
            })
            .map_err(|e| KvError::InvalidRequest(e.to_string()))?,
            prev_rev: None,
        })
    }
}

/// Stores `event` on its own (an event that tells of no KV change of its writer's); returns its
/// id.
pub async fn record(kv: &Kv, event: Event) -> Result<u64, KvError> {
    if !recording() {
        return Ok(0);
    }
    let answer = kv.write(roo_kv::Request::new(vec![event.op()?])).await?;
    Ok(answer.checked()?.rev)
}

/// Whether `event` is one of `kinds` (type prefixes; none: every type).
pub fn matches(kinds: &[String], event: &Event) -> bool {
    kinds.is_empty() || kinds.iter().any(|k| event.kind.starts_with(k.as_str()))
}

/// Reads the event stored at `key`, an event key or a route's history record; None for a value
/// that is not one.
fn parse(key: &str, value: &[u8], id: u64) -> Option<Event> {
    if !key.starts_with(EVENT_PREFIX) {
        return crate::routes::write::recorded_event(key, value, id);
    }
    let stored: Stored<'_> = serde_json::from_slice(value).ok()?;
    let at_ms = written_ms(key)?;
    Some(Event::stored(
        id,
        at_ms,
        stored.kind.into_owned(),
        stored.subject.into_owned(),
        stored.source.into_owned(),
        stored.detail.into_owned(),
    ))
}

/// When the event at `key` (an event key) was written, in unix milliseconds.
fn written_ms(key: &str) -> Option<u64> {
    key.strip_prefix(EVENT_PREFIX)?.get(..15)?.parse().ok()
}

/// The events after id `since` of `kinds` (type prefixes; none: every type), oldest first, as
/// stored: route events name their values by revision ([`crate::routes::write::with_values`]).
pub async fn list(
    kv: &Kv,
    since: u64,
    kinds: &[String],
    consistency: Consistency,
) -> Result<Vec<Event>, KvError> {
    let (events, _) = stream(kv, consistency).await?;
    Ok(selected(events, since, kinds))
}

/// The stream as this node holds it, oldest first, and the revision it was read at.
async fn stream(kv: &Kv, consistency: Consistency) -> Result<(Vec<Event>, u64), KvError> {
    let oldest = oldest_kept_ms();
    let (stored, rev) = kv.scan(EVENT_PREFIX, consistency).await?;
    // Read after, the routes' records may hold events past `rev`: those are left to a watch
    // from `rev` on, so that a follower gets each once.
    let (records, _) = kv
        .scan(crate::routes::write::HISTORY_PREFIX, Consistency::Stale)
        .await?;
    let mut events: Vec<Event> = stored
        .into_iter()
        .chain(records.into_iter().filter(|(_, r)| r.mod_rev <= rev))
        .filter_map(|(k, r)| parse(&k, &r.value, r.mod_rev))
        .filter(|e| e.at_ms >= oldest)
        .collect();
    // Keys sort by the writers' clocks; ids by the order the cluster wrote them.
    events.sort_by_key(|e| e.id);
    let kept = usize::try_from(KEPT.load(Ordering::Relaxed)).unwrap_or(usize::MAX);
    events.drain(..events.len().saturating_sub(kept));
    Ok((events, rev))
}

/// The events among `events` after id `since` of `kinds`.
fn selected(events: Vec<Event>, since: u64, kinds: &[String]) -> Vec<Event> {
    events
        .into_iter()
        .filter(|e| e.id > since && matches(kinds, e))
        .collect()
}

/// The events after an id as they are written: the stored ones first, then the new ones live,
/// route events with their values. SSE readers and webhook deliveries follow the stream with it.
pub struct Follow {
    kv: Kv,
    kinds: Vec<String>,
    /// The id of the last event passed.
    last: u64,
    watch: Option<Watch>,
    ready: VecDeque<Event>,
    /// Whether route events get their values.
    values: bool,
}

impl Follow {
    /// Events after `since` of `kinds` (type prefixes; none: every type).
    pub fn new(kv: Kv, since: u64, kinds: Vec<String>) -> Follow {
        Follow {
            kv,
            kinds,
            last: since,
            watch: None,
            ready: VecDeque::new(),
            values: true,
        }
    }

    /// The same, route events as stored (their revisions, not their values): for a reader that
    /// only needs to know that something happened.
    pub fn without_values(mut self) -> Follow {
        self.values = false;
        self
    }

    /// The next event, waiting for it when there is none yet.
    pub async fn next(&mut self) -> Result<Event, KvError> {
        loop {
            if let Some(event) = self.ready.front_mut().filter(|_| self.values) {
                crate::routes::write::with_values(&self.kv, std::slice::from_mut(event)).await?;
            }
            if let Some(event) = self.ready.pop_front() {
                self.last = event.id;
                return Ok(event);
            }
            let Some(watch) = &mut self.watch else {
                // A reader from now on has nothing to catch up with: no scan of the stream.
                if self.last >= self.kv.revision() {
                    self.watch = Some(self.kv.watch(STREAM_PREFIX, Some(self.last))?);
                    continue;
                }
                // Catch up from the node's copy, then watch from where the copy stands.
                let (events, rev) = stream(&self.kv, Consistency::Stale).await?;
                self.ready.extend(selected(events, self.last, &self.kinds));
                self.watch = Some(self.kv.watch(STREAM_PREFIX, Some(rev.max(self.last)))?);
                continue;
            };
            match watch.next().await {
                Ok(change) if change.kind == EventKind::Put && change.rev > self.last => {
                    let event = change
                        .value
                        .as_deref()
                        .and_then(|v| parse(&change.key, v, change.rev));
                    if let Some(event) = event.filter(|e| matches(&self.kinds, e)) {
                        self.ready.push_back(event);
                    }
                }
                Ok(_) => {}
                // The watch fell behind the history kept: read the stream again.
                Err(KvError::Compacted { .. }) => self.watch = None,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Keeps the event keys to the last `kept`, none past the age bound ([`keep`]), while this node
/// leads, until `shutdown`.
pub async fn run(kv: Kv, kept: usize, shutdown: CancellationToken) {
    if kept == 0 {
        return;
    }
    let mut tick = tokio::time::interval(TRIM_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        if !crate::leader::leading(&kv, &kv.raft().metrics().borrow()) {
            continue;
        }
        if let Err(e) = trim(&kv, kept).await {
            tracing::warn!(error = %e, "trimming the activity stream failed; trying again later");
        }
    }
}

/// Deletes the oldest event keys beyond the last `kept`, and those past the age bound.
async fn trim(kv: &Kv, kept: usize) -> Result<(), KvError> {
    // The leader has applied every write it acknowledged: its own copy is whole.
    let (records, _) = kv.scan(EVENT_PREFIX, Consistency::Stale).await?;
    let oldest = oldest_kept_ms();
    // The keys sort by time: the aged ones come first.
    let aged = records
        .iter()
        .take_while(|(k, _)| written_ms(k).is_some_and(|ms| ms < oldest))
        .count();
    let excess = records.len().saturating_sub(kept).max(aged);
    let old: Vec<Op> = records
        .into_iter()
        .take(excess)
        .map(|(key, _)| Op::Delete {
            key,
            prev_rev: None,
        })
        .collect();
    for batch in old.chunks(TRIM_BATCH) {
        kv.write(roo_kv::Request::new(batch.to_vec()))
            .await?
            .checked()?;
    }
    if excess > 0 {
        tracing::debug!(deleted = excess, kept, "activity stream trimmed");
    }
    Ok(())
}
