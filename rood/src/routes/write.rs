//! Where a route is written: the one write path of every writer (the API, and rooctl through
//! it; the swarm watcher; the rollout controller and a routes file to come). A change is checked
//! with the route model (nothing is stored when it is invalid), then the route, its owner and a
//! history record, which is also its event (`route.added|changed|removed`, [`crate::events`]),
//! go into the KV as one request: they change together or not at all.
//!
//! Keys, beside the route's own `com.roo.host:<route>`:
//! - `com.roo.route.owner:<route>`: who wrote it last (`api`, `swarm:<services>`, ...);
//! - `com.roo.route.history:<route>:<time>`: `{"time":..,"source":..,"value":..}` for each
//!   change (value null for a removal), with the event's `type` and `old_rev` when it made one;
//!   the last [`HISTORY_KEPT`] kept;
//! - `com.roo.route.frozen:<route>`: present while the route is frozen ([`freeze`]): a change
//!   that is not forced is refused, in the same request that would make it;
//! - `com.roo.route.rolled_back:<route>`: the revision the current value was restored from,
//!   while it stands.

use std::collections::HashMap;
use std::time::SystemTime;

use roo_kv::{Consistency, Kv, KvError, Op};
use serde::{Deserialize, Serialize};

use super::{Route, RouteError, RouteKey, ROUTE_PREFIX};
use crate::events::Event;

pub const OWNER_PREFIX: &str = "com.roo.route.owner:";
pub const HISTORY_PREFIX: &str = "com.roo.route.history:";
pub const FROZEN_PREFIX: &str = "com.roo.route.frozen:";
pub const ROLLED_BACK_PREFIX: &str = "com.roo.route.rolled_back:";
/// The events a route write makes, whose values [`with_values`] reads from the history.
const ROUTE_EVENTS: [&str; 4] = [
    "route.added",
    "route.changed",
    "route.removed",
    "route.rolled_back",
];
/// History records kept per route.
pub const HISTORY_KEPT: usize = 20;

/// Why a route change was not made.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Invalid(#[from] RouteError),
    #[error("{0} is frozen: unfreeze it first, or force the change with the admin token")]
    Frozen(String),
    #[error(transparent)]
    Kv(#[from] KvError),
}

/// A change to one route, as a writer asks for it.
#[derive(Debug, Clone)]
pub struct RouteChange {
    pub key: RouteKey,
    /// The new value (Roo's URL or a JSON route); None removes the route.
    pub value: Option<Vec<u8>>,
    /// Who makes it: `api`, `swarm:<services>`...
    pub source: String,
    /// Only if the route's revision is this (0: only if there is none).
    pub prev_rev: Option<u64>,
    /// The client's name for the request: a retry is answered as the first time.
    pub idempotency_key: Option<String>,
    /// Made even if the route is frozen (an admin's `?force=true`).
    pub force: bool,
    /// The revision whose value this restores (a rollback).
    pub rollback_of: Option<u64>,
    /// More writes that go in the same request, standing or falling with the change (a
    /// rollout's state).
    pub also: Vec<Op>,
    /// The event that tells of the change instead of the route's own (a rollout's step): a
    /// request carries one event, as the event's id is the request's revision.
    pub event: Option<Event>,
}

impl RouteChange {
    /// A change by `source`, not forced, not a rollback.
    pub fn new(key: RouteKey, value: Option<Vec<u8>>, source: &str) -> RouteChange {
        RouteChange {
            key,
            value,
            source: source.to_string(),
            prev_rev: None,
            idempotency_key: None,
            force: false,
            rollback_of: None,
            also: Vec::new(),
            event: None,
        }
    }
}

/// One entry of a route's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryRecord {
    /// Unix milliseconds.
    pub time: u64,
    pub source: String,
    /// The route as JSON (null: removed).
    pub value: serde_json::Value,
    /// The revision whose value this change restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<u64>,
    /// The event this change is in the stream (`route.added`...): none when the stream is off,
    /// or another event tells of it.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// For the event: the revision the change replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_rev: Option<u64>,
}

/// `<host>[:<port>]:<scheme>`: the route's name in the API and in its owner and history keys.
pub fn route_name(key: &RouteKey) -> String {
    key.to_string()
        .strip_prefix(ROUTE_PREFIX)
        .unwrap_or_default()
        .to_string()
}

/// Checks and makes `change`; returns what the KV answered (its revision).
pub async fn write(kv: &Kv, change: RouteChange) -> Result<roo_kv::Response, WriteError> {
    let name = route_name(&change.key);
    let key = change.key.to_string();
    let value = match &change.value {
        Some(v) => Route::parse(v)?.to_json(),
        None => serde_json::Value::Null,
    };
    let history = format!("{HISTORY_PREFIX}{name}:");
    let (kept, _) = kv.scan(&history, Consistency::Stale).await?;
    // What was there, for the event: its kind, and the revision it replaces. The event names
    // the old value by its revision, the record there ([`with_values`]). Every change of a
    // route comes this way, so its newest history record tells; only a route without one
    // (stored before history was kept) is read.
    let old = match (
        crate::events::recording(),
        kept.iter().max_by_key(|(_, r)| r.mod_rev),
    ) {
        (false, _) => None,
        (true, Some((_, newest))) => standing(&newest.value).then_some(newest.mod_rev),
        (true, None) => kv.get(&key, Consistency::Stale).await?.map(|r| r.mod_rev),
    };
    let kind = match (&old, &change.value) {
        _ if change.rollback_of.is_some() => Some("route.rolled_back"),
        (None, Some(_)) => Some("route.added"),
        (Some(_), Some(_)) => Some("route.changed"),
        (Some(_), None) => Some("route.removed"),
        (None, None) => None,
    };
    let told = change.event;
    let event = kind.filter(|_| told.is_none() && crate::events::recording());
    let now = crate::now_ms();
    let record = HistoryRecord {
        time: now,
        source: change.source.clone(),
        value,
        rollback_of: change.rollback_of,
        event: event.map(str::to_string),
        old_rev: event.and(old),
    };
    // The oldest records go in the same request, so that at most HISTORY_KEPT stay.
    let excess = (kept.len() + 1).saturating_sub(HISTORY_KEPT);
    let mut ops = vec![match change.value {
        Some(value) => Op::Put {
            key,
            value,
            prev_rev: change.prev_rev,
        },
        None => Op::Delete {
            key,
            prev_rev: change.prev_rev,
        },
    }];
    ops.push(match record.value.is_null() {
        true => Op::Delete {
            key: format!("{OWNER_PREFIX}{name}"),
            prev_rev: None,
        },
        false => Op::Put {
            key: format!("{OWNER_PREFIX}{name}"),
            value: change.source.into_bytes(),
            prev_rev: None,
        },
    });
    ops.push(Op::Put {
        // Zero-padded, so that the keys sort by time; a random tail keeps two writes of one
        // millisecond apart.
        key: format!("{history}{now:015}-{:04x}", rand::random::<u16>()),
        value: serde_json::to_vec(&record).map_err(|e| KvError::InvalidRequest(e.to_string()))?,
        prev_rev: None,
    });
    if let Some(event) = told {
        ops.push(event.op()?);
    }
    let rolled_back = format!("{ROLLED_BACK_PREFIX}{name}");
    ops.push(match change.rollback_of {
        Some(rev) => Op::Put {
            key: rolled_back,
            value: rev.to_string().into_bytes(),
            prev_rev: None,
        },
        None => Op::Delete {
            key: rolled_back,
            prev_rev: None,
        },
    });
    let frozen = format!("{FROZEN_PREFIX}{name}");
    if !change.force {
        // A guard, no change: holds while the route is not frozen.
        ops.push(Op::Delete {
            key: frozen.clone(),
            prev_rev: Some(0),
        });
    }
    ops.extend(kept.into_iter().take(excess).map(|(key, _)| Op::Delete {
        key,
        prev_rev: None,
    }));
    ops.extend(change.also);
    let mut req = roo_kv::Request::new(ops);
    req.idempotency_key = change.idempotency_key;
    match kv.write(req).await?.checked() {
        Err(KvError::Conflict { key, .. }) if key == frozen => Err(WriteError::Frozen(name)),
        answer => Ok(answer?),
    }
}

/// Whether a stored history record left its route standing (not a removal), read without
/// building the route.
fn standing(record: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Removal {
        value: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Removal>(record).is_ok_and(|r| r.value.is_some())
}

/// The event a route's history record at `key` is, stored at revision `rev`; None for a record
/// that made none.
pub fn recorded_event(key: &str, record: &[u8], rev: u64) -> Option<Event> {
    /// A record, without its value.
    #[derive(Deserialize)]
    struct Told {
        time: u64,
        source: String,
        #[serde(rename = "type")]
        event: Option<String>,
        old_rev: Option<u64>,
        rollback_of: Option<u64>,
    }
    let (name, _) = key.strip_prefix(HISTORY_PREFIX)?.rsplit_once(':')?;
    let told: Told = serde_json::from_slice(record).ok()?;
    let kind = told.event?;
    let mut detail = serde_json::json!({});
    if let Some(rev) = told.old_rev {
        detail["old_rev"] = rev.into();
    }
    if let Some(rev) = told.rollback_of {
        detail["rev"] = rev.into();
    }
    Some(Event::stored(
        rev,
        told.time,
        kind,
        name.to_string(),
        told.source,
        detail,
    ))
}

/// Freezes (`frozen`) or unfreezes a route, as `source`; its event tells the stream. Returns
/// false when it already was so.
pub async fn freeze(kv: &Kv, key: &RouteKey, frozen: bool, source: &str) -> Result<bool, KvError> {
    let name = route_name(key);
    let marker = format!("{FROZEN_PREFIX}{name}");
    let was = kv.get(&marker, Consistency::Linearizable).await?;
    if was.is_some() == frozen {
        return Ok(false);
    }
    let (kind, op) = match frozen {
        true => {
            let now = roo_acme::cert::rfc3339(SystemTime::now());
            let value = serde_json::json!({"time": now, "source": source});
            let op = Op::Put {
                key: marker,
                value: value.to_string().into_bytes(),
                prev_rev: Some(0),
            };
            ("route.frozen", op)
        }
        false => {
            let op = Op::Delete {
                key: marker,
                prev_rev: was.map(|r| r.mod_rev),
            };
            ("route.unfrozen", op)
        }
    };
    let mut ops = vec![op];
    if crate::events::recording() {
        ops.push(Event::new(kind, &name, source, serde_json::json!({})).op()?);
    }
    kv.write(roo_kv::Request::new(ops)).await?.checked()?;
    Ok(true)
}

/// A route's history, newest first.
pub async fn history(
    kv: &Kv,
    key: &RouteKey,
    consistency: Consistency,
) -> Result<Vec<(u64, HistoryRecord)>, KvError> {
    named_history(kv, &route_name(key), consistency).await
}

/// The history of the route named `name`, newest first.
async fn named_history(
    kv: &Kv,
    name: &str,
    consistency: Consistency,
) -> Result<Vec<(u64, HistoryRecord)>, KvError> {
    let prefix = format!("{HISTORY_PREFIX}{name}:");
    let (records, _) = kv.scan(&prefix, consistency).await?;
    let mut out: Vec<(u64, HistoryRecord)> = records
        .into_iter()
        .filter_map(|(_, r)| Some((r.mod_rev, serde_json::from_slice(&r.value).ok()?)))
        .collect();
    out.reverse();
    Ok(out)
}

/// Puts into the route events among `events` the values they name by revision: `detail.new`,
/// the value stored at the event's id, and `detail.old`, that at `detail.old_rev` (null for
/// none, a removal's new value too), both from the routes' history. A value whose history
/// record was trimmed away stays out; its revision remains.
pub async fn with_values(kv: &Kv, events: &mut [Event]) -> Result<(), KvError> {
    let mut histories: HashMap<String, HashMap<u64, serde_json::Value>> = HashMap::new();
    for event in events.iter_mut() {
        if !ROUTE_EVENTS.contains(&event.kind.as_str()) || event.detail.get("new").is_some() {
            continue;
        }
        if !histories.contains_key(&event.subject) {
            let records = named_history(kv, &event.subject, Consistency::Stale).await?;
            let values = records.into_iter().map(|(rev, r)| (rev, r.value)).collect();
            histories.insert(event.subject.clone(), values);
        }
        let values = &histories[&event.subject];
        let old_rev = event
            .detail
            .get("old_rev")
            .and_then(serde_json::Value::as_u64);
        let old = match old_rev {
            None => Some(serde_json::Value::Null),
            Some(rev) => values.get(&rev).cloned(),
        };
        if let (Some(old), Some(detail)) = (old, event.detail.as_object_mut()) {
            detail.insert("old".into(), old);
        }
        if let (Some(new), Some(detail)) = (values.get(&event.id), event.detail.as_object_mut()) {
            detail.insert("new".into(), new.clone());
        }
    }
    Ok(())
}
