//! The activity stream: typed events of what changed, when, and by whom, written by the control
//! side (never the request path) into the replicated KV, so that every node shows the same
//! stream and it outlives restarts and leader changes.
//!
//! An event that tells of a KV change goes in the same request as the change: it is stored once
//! per cluster, or not at all, and its id is that request's revision. The leader keeps the
//! stream to its bound ([`run`]), off the write path. Keys: `com.roo.event:<unix ms, 15
//! digits>-<random>`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use roo_kv::{Consistency, Kv, KvError, Op};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub const EVENT_PREFIX: &str = "com.roo.event:";
/// How often the leader trims the stream.
const TRIM_EVERY: Duration = Duration::from_secs(5);
/// The most events one trimming request deletes.
const TRIM_BATCH: usize = 1_000;

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
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Event {
    pub fn new(kind: &str, subject: &str, source: &str, detail: Value) -> Event {
        Event {
            id: 0,
            time: roo_acme::cert::rfc3339(SystemTime::now()),
            kind: kind.to_string(),
            subject: subject.to_string(),
            source: source.to_string(),
            detail,
        }
    }

    /// The write that stores it, for a request of several.
    pub fn op(&self) -> Result<Op, KvError> {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        Ok(Op::Put {
            // Zero-padded, so that the keys sort by time (the trim takes the oldest first); a
            // random tail keeps two events of one millisecond apart.
            key: format!("{EVENT_PREFIX}{ms:015}-{:08x}", rand::random::<u32>()),
            value: serde_json::to_vec(self).map_err(|e| KvError::InvalidRequest(e.to_string()))?,
            prev_rev: None,
        })
    }
}

/// The events after id `since` whose type starts with `kind` (every one when empty), oldest
/// first.
pub async fn list(
    kv: &Kv,
    since: u64,
    kind: &str,
    consistency: Consistency,
) -> Result<Vec<Event>, KvError> {
    let (records, _) = kv.scan(EVENT_PREFIX, consistency).await?;
    let mut events: Vec<Event> = records
        .into_iter()
        .filter(|(_, r)| r.mod_rev > since)
        .filter_map(|(_, r)| {
            let mut event: Event = serde_json::from_slice(&r.value).ok()?;
            event.id = r.mod_rev;
            Some(event)
        })
        .filter(|e| e.kind.starts_with(kind))
        .collect();
    // Keys sort by the writers' clocks; ids by the order the cluster wrote them.
    events.sort_by_key(|e| e.id);
    Ok(events)
}

/// Keeps the stream to its last `kept` events while this node leads, until `shutdown`.
pub async fn run(kv: Kv, kept: usize, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(TRIM_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        if !crate::acme::leading(&kv, &kv.raft().metrics().borrow()) {
            continue;
        }
        if let Err(e) = trim(&kv, kept).await {
            tracing::warn!(error = %e, "trimming the activity stream failed; trying again later");
        }
    }
}

/// Deletes the oldest events beyond the last `kept`.
async fn trim(kv: &Kv, kept: usize) -> Result<(), KvError> {
    // The leader has applied every write it acknowledged: its own copy is whole.
    let (records, _) = kv.scan(EVENT_PREFIX, Consistency::Stale).await?;
    let excess = records.len().saturating_sub(kept);
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
