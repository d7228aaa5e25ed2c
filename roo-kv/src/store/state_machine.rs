//! The state machine: keys with their revisions, snapshots, and the change history watches read.
//!
//! Every request that applies (no failed guard) takes the next store revision, a counter kept
//! with the state: several requests share one raft entry when writes are batched, and each still
//! gets a revision of its own, so compare-and-set on revisions stays exact. A request that comes
//! again (a retry) gets the answer it got the first time ([`super::dedup`]).

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};

use super::codec::{Reader, Writer};
use super::dedup::{self, Dedup, Identity};
use super::flusher::Flusher;
use super::history::History;
use super::{bad_data, io_err};
use crate::command::{Batch, Conflict, Event, EventKind, Op, Record, Request, Response};
use crate::{KvError, NodeId, TypeConfig};

const DATA: &[u8] = b"d:";
const APPLIED: &[u8] = b"m:applied";
const MEMBERSHIP: &[u8] = b"m:membership";
const REVISION: &[u8] = b"m:revision";
const DEDUP_META: &[u8] = b"m:dedup";
const SNAP_META: &[u8] = b"meta";
const SNAP_DATA: &[u8] = b"data";
/// Snapshots of keys only, from before requests were deduplicated: still read.
const SNAP_MAGIC_V2: &[u8] = b"ROOSNAP2";
const SNAP_MAGIC: &[u8] = b"ROOSNAP3";

type StoredMembershipOf = StoredMembership<NodeId, openraft::BasicNode>;
type SnapshotMetaOf = SnapshotMeta<NodeId, openraft::BasicNode>;

fn data_key(key: &str) -> Vec<u8> {
    [DATA, key.as_bytes()].concat()
}

fn sm_read_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    io_err(StorageIOError::read_state_machine, e)
}

fn sm_write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    io_err(StorageIOError::write_state_machine, e)
}

/// The read side of the state machine, shared with [`crate::Kv`] and watchers.
#[derive(Clone)]
pub struct StateMachineHandle {
    tree: sled::Tree,
    history: Arc<History>,
}

impl StateMachineHandle {
    /// The record of `key` in the local copy.
    pub fn get(&self, key: &str) -> Result<Option<Record>, KvError> {
        let raw = self.tree.get(data_key(key))?;
        raw.map(|r| {
            Record::decode(&r).ok_or_else(|| KvError::Storage(format!("corrupt record for {key}")))
        })
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
                let rec = Record::decode(&v)
                    .ok_or_else(|| KvError::Storage(format!("corrupt record for {key}")))?;
                Ok((key, rec))
            })
            .collect()
    }

    /// The store revision: that of the last applied change.
    pub fn revision(&self) -> u64 {
        self.history.revision()
    }

    /// The recent changes, for watches.
    pub fn history(&self) -> &History {
        &self.history
    }
}

/// The raft state machine, on sled.
pub struct StateMachine {
    handle: StateMachineHandle,
    snapshots: sled::Tree,
    flusher: Flusher,
    revision: u64,
    dedup: Dedup,
}

/// The remembered answers as the tree holds them.
fn load_dedup(tree: &sled::Tree) -> Result<Dedup, KvError> {
    let meta = tree.get(DEDUP_META)?;
    let mut entries = Vec::new();
    for prefix in [dedup::SESSION_PREFIX, dedup::KEY_PREFIX] {
        for kv in tree.scan_prefix(prefix) {
            entries.push(kv?);
        }
    }
    Dedup::load(
        meta.as_deref(),
        entries.iter().map(|(k, v)| (k.as_ref(), v.as_ref())),
    )
    .map_err(KvError::Storage)
}

impl StateMachine {
    pub(super) fn open(db: &sled::Db, flusher: Flusher) -> Result<Self, KvError> {
        let tree = db.open_tree("sm")?;
        let snapshots = db.open_tree("snapshot")?;
        let revision = read_u64(&tree, REVISION)?;
        let dedup = load_dedup(&tree)?;
        Ok(StateMachine {
            handle: StateMachineHandle {
                tree,
                history: Arc::new(History::new(revision)),
            },
            snapshots,
            flusher,
            revision,
            dedup,
        })
    }

    /// The read side, for the node and its watchers.
    pub fn handle(&self) -> StateMachineHandle {
        self.handle.clone()
    }

    fn tree(&self) -> &sled::Tree {
        &self.handle.tree
    }

    fn read_applied(
        &self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembershipOf), StorageError<NodeId>> {
        let applied = match self.tree().get(APPLIED).map_err(sm_read_err)? {
            Some(raw) => serde_json::from_slice(&raw).map_err(sm_read_err)?,
            None => None,
        };
        let membership = match self.tree().get(MEMBERSHIP).map_err(sm_read_err)? {
            Some(raw) => serde_json::from_slice(&raw).map_err(sm_read_err)?,
            None => StoredMembership::default(),
        };
        Ok((applied, membership))
    }

    /// Applies one request into `batch`, unless it was seen before: then its first answer.
    fn apply_once(
        &mut self,
        req: Request,
        overlay: &mut HashMap<String, Option<Record>>,
        batch: &mut sled::Batch,
        events: &mut Vec<Event>,
    ) -> Result<Response, StorageError<NodeId>> {
        let (identity, ops) = Identity::of(req);
        if let Some(answer) = self.dedup.seen(&identity, self.revision) {
            self.dedup.remember(&identity, &answer);
            return Ok(answer);
        }
        let answer = self.apply_request(ops, overlay, batch, events)?;
        self.dedup.remember(&identity, &answer);
        Ok(answer)
    }

    /// Applies the ops of one request into `batch`: all of them, or none when a guard fails.
    fn apply_request(
        &mut self,
        ops: Vec<Op>,
        overlay: &mut HashMap<String, Option<Record>>,
        batch: &mut sled::Batch,
        events: &mut Vec<Event>,
    ) -> Result<Response, StorageError<NodeId>> {
        let tree = &self.handle.tree;
        let current = |overlay: &HashMap<String, Option<Record>>,
                       key: &str|
         -> Result<Option<Record>, StorageError<NodeId>> {
            if let Some(r) = overlay.get(key) {
                return Ok(r.clone());
            }
            let raw = tree.get(data_key(key)).map_err(sm_write_err)?;
            Ok(raw.and_then(|r| Record::decode(&r)))
        };
        let mut before = Vec::with_capacity(ops.len());
        for op in &ops {
            let cur = current(overlay, op.key())?;
            if !op.guard_holds(cur.as_ref().map(|r| r.mod_rev)) {
                return Ok(Response {
                    rev: self.revision,
                    changed: 0,
                    conflict: Some(Conflict {
                        key: op.key().to_string(),
                        current_rev: cur.map(|r| r.mod_rev),
                    }),
                    refused: None,
                });
            }
            before.push(cur);
        }
        self.revision += 1;
        let rev = self.revision;
        let mut changed = 0;
        for (seq, (op, cur)) in ops.into_iter().zip(before).enumerate() {
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
                    changed += 1;
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
                        changed += 1;
                    }
                }
            }
        }
        Ok(Response {
            rev,
            changed,
            conflict: None,
            refused: None,
        })
    }
}

fn read_u64(tree: &sled::Tree, key: &[u8]) -> Result<u64, KvError> {
    match tree.get(key)? {
        None => Ok(0),
        Some(raw) => raw
            .as_ref()
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| KvError::Storage(format!("corrupt {}", String::from_utf8_lossy(key)))),
    }
}

/// Snapshot data: magic, store revision, the remembered answers' clock, then every entry of
/// the tree but the raft metadata (keys, sessions, idempotency keys) as (key, value) pairs,
/// each length-prefixed.
struct SnapshotData {
    revision: u64,
    dedup_meta: Vec<u8>,
    entries: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Whether a raw entry of the tree belongs in a snapshot, and is well formed there.
fn valid_entry(key: &[u8], value: &[u8]) -> bool {
    match key.strip_prefix(DATA) {
        Some(k) => std::str::from_utf8(k).is_ok() && Record::decode(value).is_some(),
        None => dedup::valid_entry(key, value),
    }
}

impl SnapshotData {
    fn encode(&self) -> Vec<u8> {
        let size: usize = self
            .entries
            .iter()
            .map(|(k, v)| 8 + k.len() + v.len())
            .sum();
        let mut w = Writer(Vec::with_capacity(SNAP_MAGIC.len() + 12 + size));
        w.0.extend_from_slice(SNAP_MAGIC);
        w.u64(self.revision).bytes(&self.dedup_meta);
        for (k, v) in &self.entries {
            w.bytes(k).bytes(v);
        }
        w.0
    }

    /// Parses snapshot data, checking every length and record: it may come from the network.
    fn decode(data: &[u8]) -> Result<SnapshotData, String> {
        let (v2, rest) = match (
            data.strip_prefix(SNAP_MAGIC),
            data.strip_prefix(SNAP_MAGIC_V2),
        ) {
            (Some(rest), _) => (false, rest),
            (None, Some(rest)) => (true, rest),
            (None, None) => return Err("not a roo snapshot".into()),
        };
        let mut r = Reader(rest);
        let truncated = || "truncated snapshot".to_string();
        let revision = r.u64().ok_or_else(truncated)?;
        let dedup_meta = if v2 {
            dedup::encode_meta(0, 0)
        } else {
            r.bytes().ok_or_else(truncated)?.to_vec()
        };
        if dedup::decode_meta(&dedup_meta).is_none() {
            return Err("corrupt snapshot header".into());
        }
        let mut entries = Vec::new();
        while !r.is_empty() {
            let key = r.bytes().ok_or_else(truncated)?;
            let value = r.bytes().ok_or_else(truncated)?;
            // Version 2 held the data keys alone, without their prefix.
            let key = if v2 {
                [DATA, key].concat()
            } else {
                key.to_vec()
            };
            if !valid_entry(&key, value) {
                return Err("corrupt snapshot entry".into());
            }
            entries.push((key, value.to_vec()));
        }
        Ok(SnapshotData {
            revision,
            dedup_meta,
            entries,
        })
    }
}

/// Builds a snapshot from a copy of the state taken while applies were paused.
pub struct SnapshotBuilder {
    data: SnapshotData,
    applied: Option<LogId<NodeId>>,
    membership: StoredMembershipOf,
    snapshots: sled::Tree,
    flusher: Flusher,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let data = self.data.encode();
        let snapshot_id = match self.applied {
            Some(l) => format!(
                "{}-{}-{:x}",
                l.leader_id.term,
                l.index,
                rand::random::<u32>()
            ),
            None => format!("0-0-{:x}", rand::random::<u32>()),
        };
        let meta = SnapshotMeta {
            last_log_id: self.applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        save_snapshot(&self.snapshots, &self.flusher, &meta, &data).await?;
        tracing::info!(snapshot = %meta.snapshot_id, keys = self.data.entries.len(), bytes = data.len(), "built snapshot");
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
    let write_err = |e: String| bad_data(|e| StorageIOError::write_snapshot(None, e), e);
    let meta_raw = serde_json::to_vec(meta).map_err(|e| write_err(e.to_string()))?;
    let mut batch = sled::Batch::default();
    batch.insert(SNAP_META, meta_raw);
    batch.insert(SNAP_DATA, data);
    snapshots
        .apply_batch(batch)
        .map_err(|e| write_err(e.to_string()))?;
    flusher.flush().await.map_err(write_err)
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembershipOf), StorageError<NodeId>> {
        self.read_applied()
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Response>>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut batch = sled::Batch::default();
        // Changes made earlier in this call, which later guards must see.
        let mut overlay: HashMap<String, Option<Record>> = HashMap::new();
        let mut events = Vec::new();
        let mut responses = Vec::new();
        let mut last_applied = None;
        let mut membership = None;

        for entry in entries {
            last_applied = Some(entry.log_id);
            let mut answers = Vec::new();
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(entry.log_id), m))
                }
                EntryPayload::Normal(Batch { requests, time_ms }) => {
                    self.dedup.advance(time_ms);
                    for req in requests {
                        answers.push(self.apply_once(
                            req,
                            &mut overlay,
                            &mut batch,
                            &mut events,
                        )?);
                    }
                }
            }
            responses.push(answers);
        }

        let Some(last) = last_applied else {
            return Ok(responses);
        };
        batch.insert(
            APPLIED,
            serde_json::to_vec(&Some(last)).map_err(sm_write_err)?,
        );
        batch.insert(REVISION, &self.revision.to_be_bytes());
        self.dedup.write_changes(&mut batch);
        batch.insert(DEDUP_META, self.dedup.meta());
        if let Some(m) = &membership {
            batch.insert(MEMBERSHIP, serde_json::to_vec(m).map_err(sm_write_err)?);
        }
        self.tree().apply_batch(batch).map_err(sm_write_err)?;
        self.handle.history.record(events, self.revision);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Copy the state now, while no apply runs, so the snapshot matches `applied` exactly.
        let (applied, membership) = self.read_applied().unwrap_or_else(|e| {
            tracing::error!(error = %e, "reading applied state for a snapshot");
            (None, StoredMembership::default())
        });
        let entries = [DATA, dedup::SESSION_PREFIX, dedup::KEY_PREFIX]
            .into_iter()
            .flat_map(|prefix| self.tree().scan_prefix(prefix))
            .filter_map(|kv| match kv {
                Ok((k, v)) => Some((k.to_vec(), v.to_vec())),
                Err(e) => {
                    tracing::error!(error = %e, "reading state for a snapshot");
                    None
                }
            })
            .collect();
        SnapshotBuilder {
            data: SnapshotData {
                revision: self.revision,
                dedup_meta: self.dedup.meta(),
                entries,
            },
            applied,
            membership,
            snapshots: self.snapshots.clone(),
            flusher: self.flusher.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        // Parse all of it first: a bad snapshot must not touch the current state.
        let parsed = SnapshotData::decode(&data)
            .map_err(|m| bad_data(|e| StorageIOError::read_snapshot(None, e), m))?;

        let mut batch = sled::Batch::default();
        for kv in self.tree().iter() {
            let (k, _) = kv.map_err(sm_write_err)?;
            batch.remove(k);
        }
        for (k, v) in &parsed.entries {
            batch.insert(k.as_slice(), v.as_slice());
        }
        batch.insert(DEDUP_META, parsed.dedup_meta.as_slice());
        batch.insert(
            APPLIED,
            serde_json::to_vec(&meta.last_log_id).map_err(sm_write_err)?,
        );
        batch.insert(
            MEMBERSHIP,
            serde_json::to_vec(&meta.last_membership).map_err(sm_write_err)?,
        );
        batch.insert(REVISION, &parsed.revision.to_be_bytes());
        self.tree().apply_batch(batch).map_err(sm_write_err)?;
        save_snapshot(&self.snapshots, &self.flusher, meta, &data).await?;
        self.revision = parsed.revision;
        self.dedup = load_dedup(self.tree())
            .map_err(|e| bad_data(|e| StorageIOError::read_snapshot(None, e), e))?;
        tracing::info!(snapshot = %meta.snapshot_id, keys = parsed.entries.len(), "installed snapshot");
        self.handle.history.reset(parsed.revision);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let read_err = |e: sled::Error| io_err(|e| StorageIOError::read_snapshot(None, e), e);
        let (Some(meta), Some(data)) = (
            self.snapshots.get(SNAP_META).map_err(read_err)?,
            self.snapshots.get(SNAP_DATA).map_err(read_err)?,
        ) else {
            return Ok(None);
        };
        let meta: SnapshotMetaOf = serde_json::from_slice(&meta)
            .map_err(|e| io_err(|e| StorageIOError::read_snapshot(None, e), e))?;
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
        // A session with one remembered answer: floor, last time, count, (seq, answer).
        let mut session = Writer::default();
        session
            .varint(0)
            .varint(5)
            .varint(1)
            .varint(3)
            .response(&Response::default());
        let snap = SnapshotData {
            revision: 7,
            dedup_meta: dedup::encode_meta(5, 0),
            entries: vec![
                (b"d:a".to_vec(), rec.clone()),
                (b"d:b".to_vec(), rec.clone()),
                ([b"s:".as_slice(), &9u64.to_be_bytes()].concat(), session.0),
            ],
        };
        let data = snap.encode();
        let back = SnapshotData::decode(&data).unwrap();
        assert_eq!(
            (back.revision, &back.dedup_meta, &back.entries),
            (7, &snap.dedup_meta, &snap.entries)
        );
        assert!(SnapshotData::decode(b"nope").is_err());
        assert!(SnapshotData::decode(&data[..data.len() - 1]).is_err());
        assert!(SnapshotData::decode(&data[..SNAP_MAGIC.len() + 4]).is_err());
        let mut huge_len = SNAP_MAGIC.to_vec();
        huge_len.extend_from_slice(&1u64.to_be_bytes());
        huge_len.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(SnapshotData::decode(&huge_len).is_err());
        let mut bad = Writer(SNAP_MAGIC.to_vec());
        bad.u64(1).bytes(b"short");
        assert!(SnapshotData::decode(&bad.0).is_err(), "a bad header");
        // An entry under no known prefix, or a session record that does not parse.
        for (key, value) in [
            (b"x:a".to_vec(), rec.clone()),
            (b"s:12345678".to_vec(), vec![1]),
        ] {
            let mut bad = Writer(SNAP_MAGIC.to_vec());
            bad.u64(1)
                .bytes(&dedup::encode_meta(0, 0))
                .bytes(&key)
                .bytes(&value);
            assert!(SnapshotData::decode(&bad.0).is_err(), "{key:?}");
        }

        // A snapshot of the version before: data keys without their prefix.
        let mut v2 = Writer(SNAP_MAGIC_V2.to_vec());
        v2.u64(4).bytes(b"a").bytes(&rec);
        let back = SnapshotData::decode(&v2.0).unwrap();
        assert_eq!(back.revision, 4);
        assert_eq!(back.entries, vec![(b"d:a".to_vec(), rec)]);
    }
}
