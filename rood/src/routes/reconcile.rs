//! A source's routes made to match what it wants now: the swarm watcher's (and a routes file's,
//! the rollout controller's to come). A source remembers the value it wrote at each key it made;
//! [`diff`] turns that and what it wants into typed [`Step`]s, and [`reconcile`] makes them
//! through the one write path. A source never writes over a route put by hand before it named
//! the key, nor deletes one changed by hand since.

use std::collections::{BTreeMap, BTreeSet};

use roo_kv::{Consistency, Kv, KvError};

use super::write::{self, RouteChange, WriteError};
use super::{Route, RouteKey};

/// What a source wants at a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    /// This value, written under this source name (`swarm:<services>`...).
    Value { value: String, source: String },
    /// Left as it is: what the source would say of it now is invalid.
    Held,
}

/// One step of a reconcile, at one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Write `value` over what the source made before (`made`).
    Change {
        key: String,
        value: String,
        made: String,
        source: String,
    },
    /// Write `value` where the source made nothing: unless the key has a route already.
    Add {
        key: String,
        value: String,
        source: String,
    },
    /// Delete what the source made (`made`), unless someone changed it since.
    Remove {
        key: String,
        made: String,
        source: String,
    },
    /// Nothing to write; the source still stands for `value` there.
    Keep { key: String, value: String },
}

/// The steps that take the keys a source made (`made`: key -> the value it wrote and the
/// source name it wrote it under) to what it wants (`wanted`), in key order.
pub fn diff(
    made: &BTreeMap<String, (String, String)>,
    wanted: &BTreeMap<String, Wanted>,
) -> Vec<Step> {
    let keys: BTreeSet<&String> = made.keys().chain(wanted.keys()).collect();
    let mut steps = Vec::new();
    for key in keys {
        let before = made.get(key);
        let step = match (wanted.get(key), before) {
            (Some(Wanted::Held), Some((value, _))) => Step::Keep {
                key: key.clone(),
                value: value.clone(),
            },
            (Some(Wanted::Held), None) => continue,
            (None, Some((value, source))) => Step::Remove {
                key: key.clone(),
                made: value.clone(),
                source: source.clone(),
            },
            (None, None) => continue,
            (Some(Wanted::Value { value, .. }), Some((was, _))) if value == was => Step::Keep {
                key: key.clone(),
                value: value.clone(),
            },
            (Some(Wanted::Value { value, source }), Some((made, _))) => Step::Change {
                key: key.clone(),
                value: value.clone(),
                made: made.clone(),
                source: source.clone(),
            },
            (Some(Wanted::Value { value, source }), None) => Step::Add {
                key: key.clone(),
                value: value.clone(),
                source: source.clone(),
            },
        };
        steps.push(step);
    }
    steps
}

/// What a reconcile did.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// Keys written or deleted.
    pub changes: usize,
    /// The value at each key the source now stands for: what it should remember.
    pub standing: BTreeMap<String, String>,
    /// Frozen routes left as they are, and the source that would have changed them.
    pub held: Vec<(String, String)>,
}

impl Reconciled {
    /// A frozen route left as it is: the source still stands for what it `made` there, so that
    /// it makes the change once the route is unfrozen.
    fn hold(&mut self, key: String, source: String, made: Option<String>) {
        tracing::info!(%source, %key, "the route is frozen; left as it is");
        if let Some(made) = made {
            self.standing.insert(key.clone(), made);
        }
        self.held.push((key, source));
    }
}

/// Makes `steps` through the one write path.
pub async fn reconcile(kv: &Kv, steps: Vec<Step>) -> Result<Reconciled, WriteError> {
    let mut done = Reconciled::default();
    for step in steps {
        match step {
            Step::Keep { key, value } => {
                done.standing.insert(key, value);
            }
            Step::Add { key, value, source } => {
                if kv.get(&key, Consistency::Linearizable).await?.is_some() {
                    tracing::warn!(%source, %key, "a route put by hand exists; left as it is");
                    continue;
                }
                match put(kv, &key, Some(value.clone()), &source, None).await {
                    Ok(()) => {
                        tracing::info!(%source, %key, %value, "route added");
                        done.changes += 1;
                        done.standing.insert(key, value);
                    }
                    Err(WriteError::Frozen(_)) => done.hold(key, source, None),
                    Err(e) => return Err(e),
                }
            }
            Step::Change {
                key,
                value,
                made,
                source,
            } => {
                if same_route(kv, &key, &value).await? {
                    // Already so (a rollout set these weights): the source stands for it now.
                    done.standing.insert(key, value);
                    continue;
                }
                match put(kv, &key, Some(value.clone()), &source, None).await {
                    Ok(()) => {
                        tracing::info!(%source, %key, %value, "route changed");
                        done.changes += 1;
                        done.standing.insert(key, value);
                    }
                    Err(WriteError::Frozen(_)) => done.hold(key, source, Some(made)),
                    Err(e) => return Err(e),
                }
            }
            Step::Remove { key, made, source } => {
                let current = kv.get(&key, Consistency::Linearizable).await?;
                let Some(record) = current.filter(|r| reads_as(&r.value, &made)) else {
                    tracing::info!(%source, %key, "route changed by hand since; left alone");
                    continue;
                };
                match put(kv, &key, None, &source, Some(record.mod_rev)).await {
                    Ok(()) => {
                        tracing::info!(%source, %key, "route removed");
                        done.changes += 1;
                    }
                    Err(WriteError::Kv(KvError::Conflict { .. })) => {
                        tracing::info!(%source, %key, "route changed by hand meanwhile; left alone");
                    }
                    Err(WriteError::Frozen(_)) => done.hold(key, source, Some(made)),
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(done)
}

/// Whether the route stored at `key` reads as `value` does.
async fn same_route(kv: &Kv, key: &str, value: &str) -> Result<bool, KvError> {
    let record = kv.get(key, Consistency::Linearizable).await?;
    Ok(record.is_some_and(|r| reads_as(&r.value, value)))
}

/// Whether a stored route value is `value`, or reads as the same route (the rollout controller
/// writes the weights it sets in the model's own form).
fn reads_as(stored: &[u8], value: &str) -> bool {
    let read = |v: &[u8]| Route::parse(v).ok().map(|r| r.to_json());
    stored == value.as_bytes() || read(stored).is_some_and(|s| Some(s) == read(value.as_bytes()))
}

async fn put(
    kv: &Kv,
    key: &str,
    value: Option<String>,
    source: &str,
    prev_rev: Option<u64>,
) -> Result<(), WriteError> {
    let mut change = RouteChange::new(RouteKey::parse(key)?, value.map(String::into_bytes), source);
    change.prev_rev = prev_rev;
    write::write(kv, change).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_diff_names_each_key_s_step() {
        let made: BTreeMap<String, (String, String)> = [
            ("kept", "a"),
            ("changed", "b"),
            ("gone", "c"),
            ("held", "d"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), (v.to_string(), "s:1".to_string())))
        .collect();
        let value = |v: &str| Wanted::Value {
            value: v.into(),
            source: "s:2".into(),
        };
        let wanted: BTreeMap<String, Wanted> = [
            ("kept", value("a")),
            ("changed", value("B")),
            ("held", Wanted::Held),
            ("new", value("e")),
            ("held-new", Wanted::Held),
        ]
        .into_iter()
        .map(|(k, w)| (k.to_string(), w))
        .collect();
        let s = |v: &str| v.to_string();
        assert_eq!(
            diff(&made, &wanted),
            [
                Step::Change {
                    key: s("changed"),
                    value: s("B"),
                    made: s("b"),
                    source: s("s:2")
                },
                Step::Remove {
                    key: s("gone"),
                    made: s("c"),
                    source: s("s:1")
                },
                Step::Keep {
                    key: s("held"),
                    value: s("d")
                },
                Step::Keep {
                    key: s("kept"),
                    value: s("a")
                },
                Step::Add {
                    key: s("new"),
                    value: s("e"),
                    source: s("s:2")
                },
            ]
        );
    }
}
