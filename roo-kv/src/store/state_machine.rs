//! The state machine: keys with their revisions, the change history watchers read, snapshots.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use tokio::sync::broadcast;

use super::flusher::Flusher;
use super::{bad_data, io_err};
use crate::command::{Conflict, Event, EventKind, Op, Record, Response};
use crate::{KvError, NodeId, TypeConfig};

const DATA: &[u8] = b"d:";
const EVENTS: &[u8] = b"e:";
const APPLIED: &[u8] = b"m:applied";
const MEMBERSHIP: &[u8] = b"m:membership";
const COMPACTED: &[u8] = b"m:compacted";
const SNAP_META: &[u8] = b"meta";
const SNAP_DATA: &[u8] = b"data";
const SNAP_MAGIC: &[u8] = b"ROOSNAP1";

/// How many revisions of change history are kept for watchers that resume.
const HISTORY_REVS: u64 = 100_000;
/// At most this many history events are trimmed per apply, to bound the work of one batch.
const TRIM_PER_APPLY: usize = 1024;
/// Capacity of the live event channel; a watcher that falls further behind reads history instead.
const LIVE_EVENTS: usize = 8192;

type StoredMembershipOf = StoredMembership<NodeId, openraft::BasicNode>;
type SnapshotMetaOf = SnapshotMeta<NodeId, openraft::BasicNode>;

fn data_key(key: &str) -> Vec<u8> {
    [DATA, key.as_bytes()].concat()
}

fn event_key(rev: u64, seq: u32) -> Vec<u8> {
    let mut k = EVENTS.to_vec();
    k.extend_from_slice(&rev.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The read side of the state machine, shared with [`crate::Kv`] and watchers.
#[derive(Clone)]
pub struct StateMachineHandle {
    tree: sled::Tree,
    events: broadcast::Sender<Arc<Event>>,
    applied: Arc<AtomicU64>,
}

impl StateMachineHandle {
    /// The record of `key` in the local copy.
    pub fn get(&self, key: &str) -> Result<Option<Record>, KvError> {
        let raw = self.tree.get(data_key(key))?;
        raw.map(|r| Record::decode(&r).ok_or_else(|| KvError::Storage(format!("corrupt record for {key}"))))
            .transpose()
    }

    /// Every key starting with `prefix`, in key order, from the local copy.
    pub fn scan(&self, prefix: &str) -> Result<Vec<(String, Record)>, KvError> {
        self.tree
            .scan_prefix(data_key(prefix))
            .map(|kv| {
                let (k, v) = kv?;
                let key = std::str::from_utf8(&k[DATA.len()..])
                    .map_err(|_| KvError::Storage("corrupt key".into()))?
                    .to_string();
                let rec = Record::decode(&v).ok_or_else(|| KvError::Storage(format!("corrupt record for {key}")))?;
                Ok((key, rec))
            })
            .collect()
    }

    /// The revision (log index) of the last applied entry.
    pub fn applied_rev(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Events after `after` (a `(rev, seq)` position), oldest first, at most `limit` of them.
    pub fn history(&self, after: (u64, u32), limit: usize) -> Result<Vec<Event>, KvError> {
        let compacted = self.compacted()?;
        if after.0 < compacted {
            return Err(KvError::Compacted { compacted });
        }
        let start = match after.1.checked_add(1) {
            Some(seq) => event_key(after.0, seq),
            None => event_key(after.0.saturating_add(1), 0),
        };
        let mut out = Vec::new();
        for kv in self.tree.range(start..).take(limit) {
            let (k, v) = kv?;
            if !k.starts_with(EVENTS) {
                break;
            }
            let ev: Event = serde_json::from_slice(&v).map_err(|e| KvError::Storage(format!("corrupt event: {e}")))?;
            out.push(ev);
        }
        Ok(out)
    }

    /// Revision up to which history has been dropped: watches must start at or after it.
    pub fn compacted(&self) -> Result<u64, KvError> {
        Ok(self
            .tree
            .get(COMPACTED)?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0))
    }

    /// Live events as they are applied.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }
}

/// The raft state machine, on sled.
pub struct StateMachine {
    handle: StateMachineHandle,
    snapshots: sled::Tree,
    flusher: Flusher,
}

impl StateMachine {
    pub(super) fn open(db: &sled::Db, flusher: Flusher) -> Result<Self, KvError> {
        let tree = db.open_tree("sm")?;
        let snapshots = db.open_tree("snapshot")?;
        let applied = match tree.get(APPLIED)? {
            Some(raw) => serde_json::from_slice::<Option<LogId<NodeId>>>(&raw)
                .map_err(|e| KvError::Storage(format!("corrupt applied log id: {e}")))?
                .map_or(0, |l| l.index),
            None => 0,
        };
        let (events, _) = broadcast::channel(LIVE_EVENTS);
        Ok(StateMachine {
            handle: StateMachineHandle {
                tree,
                events,
                applied: Arc::new(AtomicU64::new(applied)),
            },
            snapshots,
            flusher,
        })
    }

    /// The read side, for the node and its watchers.
    pub fn handle(&self) -> StateMachineHandle {
        self.handle.clone()
    }

    fn tree(&self) -> &sled::Tree {
        &self.handle.tree
    }

    fn read_applied(&self) -> Result<(Option<LogId<NodeId>>, StoredMembershipOf), StorageError<NodeId>> {
        let applied = match self.tree().get(APPLIED).map_err(|e| io_err(StorageIOError::read_state_machine, e))? {
            Some(raw) => serde_json::from_slice(&raw).map_err(|e| io_err(StorageIOError::read_state_machine, e))?,
            None => None,
        };
        let membership = match self
            .tree()
            .get(MEMBERSHIP)
            .map_err(|e| io_err(StorageIOError::read_state_machine, e))?
        {
            Some(raw) => serde_json::from_slice(&raw).map_err(|e| io_err(StorageIOError::read_state_machine, e))?,
            None => StoredMembership::default(),
        };
        Ok((applied, membership))
    }

    /// Drops the oldest history events past [`HISTORY_REVS`], a bounded number per call.
    fn trim_history(&self, batch: &mut sled::Batch, last_rev: u64) -> Result<(), StorageError<NodeId>> {
        let Some(cutoff) = last_rev.checked_sub(HISTORY_REVS) else {
            return Ok(());
        };
        let mut trimmed_to = None;
        for kv in self.tree().range(event_key(0, 0)..event_key(cutoff, 0)).take(TRIM_PER_APPLY) {
            let (k, _) = kv.map_err(|e| io_err(StorageIOError::write_state_machine, e))?;
            let rev = k
                .get(EVENTS.len()..EVENTS.len() + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            trimmed_to = Some(rev);
            batch.remove(k);
        }
        if let Some(rev) = trimmed_to {
            batch.insert(COMPACTED, &rev.to_be_bytes());
        }
        Ok(())
    }
}

/// Parses snapshot data into (key, encoded record) pairs, checking every length.
fn decode_snapshot(data: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, String> {
    let rest = data.strip_prefix(SNAP_MAGIC).ok_or("not a roo snapshot")?;
    let mut out = Vec::new();
    let mut rest = rest;
    let take = |rest: &mut &[u8]| -> Result<Vec<u8>, String> {
        let len = rest
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
            .ok_or("truncated snapshot")? as usize;
        let bytes = rest.get(4..4 + len).ok_or("truncated snapshot")?.to_vec();
        *rest = &rest[4 + len..];
        Ok(bytes)
    };
    while !rest.is_empty() {
        let key = take(&mut rest)?;
        let rec = take(&mut rest)?;
        if std::str::from_utf8(&key).is_err() || Record::decode(&rec).is_none() {
            return Err("corrupt snapshot entry".into());
        }
        out.push((key, rec));
    }
    Ok(out)
}

fn encode_snapshot(entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let size: usize = entries.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    let mut out = Vec::with_capacity(SNAP_MAGIC.len() + size);
    out.extend_from_slice(SNAP_MAGIC);
    for (k, v) in entries {
        out.extend_from_slice(&(k.len() as u32).to_be_bytes());
        out.extend_from_slice(k);
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v);
    }
    out
}

/// Builds a snapshot from a copy of the state taken while applies were paused.
pub struct SnapshotBuilder {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
    applied: Option<LogId<NodeId>>,
    membership: StoredMembershipOf,
    snapshots: sled::Tree,
    flusher: Flusher,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let data = encode_snapshot(&self.entries);
        let snapshot_id = match self.applied {
            Some(l) => format!("{}-{}-{:x}", l.leader_id.term, l.index, rand::random::<u32>()),
            None => format!("0-0-{:x}", rand::random::<u32>()),
        };
        let meta = SnapshotMeta {
            last_log_id: self.applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        save_snapshot(&self.snapshots, &self.flusher, &meta, &data).await?;
        tracing::info!(snapshot = %meta.snapshot_id, keys = self.entries.len(), bytes = data.len(), "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

async fn save_snapshot(
    snapshots: &sled::Tree,
    flusher: &Flusher,
    meta: &SnapshotMetaOf,
    data: &[u8],
) -> Result<(), StorageError<NodeId>> {
    let meta_raw = serde_json::to_vec(meta).map_err(|e| io_err(|e| StorageIOError::write_snapshot(None, e), e))?;
    let mut batch = sled::Batch::default();
    batch.insert(SNAP_META, meta_raw);
    batch.insert(SNAP_DATA, data);
    snapshots
        .apply_batch(batch)
        .map_err(|e| io_err(|e| StorageIOError::write_snapshot(None, e), e))?;
    flusher
        .flush()
        .await
        .map_err(|e| bad_data(|e| StorageIOError::write_snapshot(None, e), e))
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId<NodeId>>, StoredMembershipOf), StorageError<NodeId>> {
        self.read_applied()
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let sm_err = |e: sled::Error| io_err(StorageIOError::write_state_machine, e);
        let mut batch = sled::Batch::default();
        // Changes made earlier in this batch, which later guards must see.
        let mut overlay: HashMap<String, Option<Record>> = HashMap::new();
        let mut events = Vec::new();
        let mut responses = Vec::new();
        let mut last_applied = None;
        let mut membership = None;

        for entry in entries {
            let rev = entry.log_id.index;
            last_applied = Some(entry.log_id);
            let mut resp = Response {
                rev,
                ..Default::default()
            };
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Membership(m) => membership = Some(StoredMembership::new(Some(entry.log_id), m)),
                EntryPayload::Normal(req) => {
                    let current = |key: &str| -> Result<Option<Record>, StorageError<NodeId>> {
                        if let Some(r) = overlay.get(key) {
                            return Ok(r.clone());
                        }
                        let raw = self.tree().get(data_key(key)).map_err(sm_err)?;
                        Ok(raw.and_then(|r| Record::decode(&r)))
                    };
                    let mut conflict = None;
                    let mut before = Vec::with_capacity(req.ops.len());
                    for op in &req.ops {
                        let cur = current(op.key())?;
                        if !op.guard_holds(cur.as_ref().map(|r| r.mod_rev)) {
                            conflict = Some(Conflict {
                                key: op.key().to_string(),
                                current_rev: cur.map(|r| r.mod_rev),
                            });
                            break;
                        }
                        before.push(cur);
                    }
                    if conflict.is_some() {
                        resp.conflict = conflict;
                    } else {
                        for (seq, (op, cur)) in req.ops.into_iter().zip(before).enumerate() {
                            let seq = seq as u32;
                            match op {
                                Op::Put { key, value, .. } => {
                                    let rec = Record {
                                        create_rev: cur.map_or(rev, |c| c.create_rev),
                                        mod_rev: rev,
                                        value,
                                    };
                                    batch.insert(data_key(&key), rec.encode());
                                    events.push(Event {
                                        rev,
                                        seq,
                                        kind: EventKind::Put,
                                        key: key.clone(),
                                        value: Some(rec.value.clone()),
                                    });
                                    overlay.insert(key, Some(rec));
                                    resp.changed += 1;
                                }
                                Op::Delete { key, .. } => {
                                    if cur.is_some() {
                                        batch.remove(data_key(&key));
                                        events.push(Event {
                                            rev,
                                            seq,
                                            kind: EventKind::Delete,
                                            key: key.clone(),
                                            value: None,
                                        });
                                        overlay.insert(key, None);
                                        resp.changed += 1;
                                    }
                                }
                            }
                        }
                    }
                }
            }
            responses.push(resp);
        }

        let Some(last) = last_applied else {
            return Ok(responses);
        };
        for ev in &events {
            let raw = serde_json::to_vec(ev).map_err(|e| io_err(StorageIOError::write_state_machine, e))?;
            batch.insert(event_key(ev.rev, ev.seq), raw);
        }
        self.trim_history(&mut batch, last.index)?;
        let applied_raw =
            serde_json::to_vec(&Some(last)).map_err(|e| io_err(StorageIOError::write_state_machine, e))?;
        batch.insert(APPLIED, applied_raw);
        if let Some(m) = &membership {
            let raw = serde_json::to_vec(m).map_err(|e| io_err(StorageIOError::write_state_machine, e))?;
            batch.insert(MEMBERSHIP, raw);
        }
        self.tree().apply_batch(batch).map_err(sm_err)?;
        self.handle.applied.store(last.index, Ordering::Release);
        for ev in events {
            // No receiver is fine: nobody is watching.
            let _ = self.handle.events.send(Arc::new(ev));
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Copy the state now, while no apply runs, so the snapshot matches `applied` exactly.
        let (applied, membership) = self.read_applied().unwrap_or_else(|e| {
            tracing::error!(error = %e, "reading applied state for a snapshot");
            (None, StoredMembership::default())
        });
        let entries = self
            .tree()
            .scan_prefix(DATA)
            .filter_map(|kv| match kv {
                Ok((k, v)) => Some((k[DATA.len()..].to_vec(), v.to_vec())),
                Err(e) => {
                    tracing::error!(error = %e, "reading state for a snapshot");
                    None
                }
            })
            .collect();
        SnapshotBuilder {
            entries,
            applied,
            membership,
            snapshots: self.snapshots.clone(),
            flusher: self.flusher.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let snap_err = |m: String| bad_data(|e| StorageIOError::read_snapshot(None, e), m);
        // Parse all of it first: a bad snapshot must not touch the current state.
        let entries = decode_snapshot(&data).map_err(snap_err)?;
        let sm_err = |e: sled::Error| io_err(StorageIOError::write_state_machine, e);

        let mut batch = sled::Batch::default();
        for kv in self.tree().iter() {
            let (k, _) = kv.map_err(sm_err)?;
            batch.remove(k);
        }
        for (k, v) in &entries {
            batch.insert([DATA, k].concat(), v.as_slice());
        }
        let last_index = meta.last_log_id.map_or(0, |l| l.index);
        let applied_raw =
            serde_json::to_vec(&meta.last_log_id).map_err(|e| io_err(StorageIOError::write_state_machine, e))?;
        let membership_raw =
            serde_json::to_vec(&meta.last_membership).map_err(|e| io_err(StorageIOError::write_state_machine, e))?;
        batch.insert(APPLIED, applied_raw);
        batch.insert(MEMBERSHIP, membership_raw);
        batch.insert(COMPACTED, &last_index.to_be_bytes());
        self.tree().apply_batch(batch).map_err(sm_err)?;
        save_snapshot(&self.snapshots, &self.flusher, meta, &data).await?;
        self.handle.applied.store(last_index, Ordering::Release);
        tracing::info!(snapshot = %meta.snapshot_id, keys = entries.len(), "installed snapshot");
        let _ = self.handle.events.send(Arc::new(Event {
            rev: last_index,
            seq: 0,
            kind: EventKind::Reset,
            key: String::new(),
            value: None,
        }));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let read_err = |e: sled::Error| io_err(|e| StorageIOError::read_snapshot(None, e), e);
        let (Some(meta), Some(data)) = (
            self.snapshots.get(SNAP_META).map_err(read_err)?,
            self.snapshots.get(SNAP_DATA).map_err(read_err)?,
        ) else {
            return Ok(None);
        };
        let meta: SnapshotMetaOf =
            serde_json::from_slice(&meta).map_err(|e| io_err(|e| StorageIOError::read_snapshot(None, e), e))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data.to_vec())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_codec_rejects_garbage() {
        let rec = Record {
            value: b"v".to_vec(),
            mod_rev: 2,
            create_rev: 1,
        }
        .encode();
        let entries = vec![(b"a".to_vec(), rec.clone()), (b"b".to_vec(), rec)];
        let data = encode_snapshot(&entries);
        assert_eq!(decode_snapshot(&data).unwrap(), entries);
        assert!(decode_snapshot(b"nope").is_err());
        assert!(decode_snapshot(&data[..data.len() - 1]).is_err());
        let mut huge_len = SNAP_MAGIC.to_vec();
        huge_len.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_snapshot(&huge_len).is_err());
    }
}
