//! The raft log and vote, on sled.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{Entry, LogId, LogState, RaftLogReader, StorageError, StorageIOError, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::flusher::Flusher;
use super::{bad_data, io_err};
use crate::{NodeId, TypeConfig};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

/// The raft log store. Cheap to clone: sled trees are shared handles.
#[derive(Clone)]
pub struct LogStore {
    flusher: Flusher,
    log: sled::Tree,
    meta: sled::Tree,
    /// The last index raft told the store was committed, for metrics.
    committed: Arc<AtomicU64>,
}

impl LogStore {
    pub(super) fn open(db: &sled::Db, flusher: Flusher) -> Result<Self, sled::Error> {
        Ok(LogStore {
            flusher,
            log: db.open_tree("log")?,
            meta: db.open_tree("log_meta")?,
            committed: Arc::default(),
        })
    }

    /// Where the last committed index is kept as raft reports it.
    pub fn committed_index(&self) -> Arc<AtomicU64> {
        self.committed.clone()
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError<NodeId>> {
        let Some(raw) = self
            .meta
            .get(key)
            .map_err(|e| io_err(StorageIOError::read, e))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&raw)
            .map(Some)
            .map_err(|e| io_err(StorageIOError::read, e))
    }

    fn put_meta<T: Serialize>(&self, key: &[u8], value: &T) -> Result<(), StorageError<NodeId>> {
        let raw = serde_json::to_vec(value).map_err(|e| io_err(StorageIOError::write, e))?;
        self.meta
            .insert(key, raw)
            .map_err(|e| io_err(StorageIOError::write, e))?;
        Ok(())
    }

    async fn flush(
        &self,
        what: fn(openraft::AnyError) -> StorageIOError<NodeId>,
    ) -> Result<(), StorageError<NodeId>> {
        self.flusher.flush().await.map_err(|e| bad_data(what, e))
    }
}

impl LogStore {
    /// Removes the entries in `range` (of index keys), in one batch.
    fn remove<R: RangeBounds<[u8; 8]>>(&self, range: R) -> Result<(), StorageError<NodeId>> {
        let mut batch = sled::Batch::default();
        for kv in self.log.range(range) {
            let (k, _) = kv.map_err(|e| io_err(StorageIOError::write_logs, e))?;
            batch.remove(k);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| io_err(StorageIOError::write_logs, e))
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn decode_entry(raw: &[u8]) -> Result<Entry<TypeConfig>, StorageError<NodeId>> {
    serde_json::from_slice(raw).map_err(|e| io_err(StorageIOError::read_logs, e))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let start = match range.start_bound() {
            Bound::Included(i) => Bound::Included(index_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(index_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        self.log
            .range::<[u8; 8], _>((start, end))
            .map(|kv| {
                let (_, raw) = kv.map_err(|e| io_err(StorageIOError::read_logs, e))?;
                decode_entry(&raw)
            })
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.get_meta(LAST_PURGED)?;
        let last = self
            .log
            .last()
            .map_err(|e| io_err(StorageIOError::read_logs, e))?;
        let last_log_id = match last {
            Some((_, raw)) => Some(decode_entry(&raw)?.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.put_meta(VOTE, vote)?;
        // A vote must be durable before it is answered.
        self.flush(StorageIOError::write_vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.get_meta(VOTE)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        // Not flushed: it only lets a restart re-apply sooner; raft recomputes it otherwise.
        if let Some(c) = committed {
            self.committed.store(c.index, Ordering::Relaxed);
        }
        self.put_meta(COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.get_meta::<Option<LogId<NodeId>>>(COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let raw =
                serde_json::to_vec(&entry).map_err(|e| io_err(StorageIOError::write_logs, e))?;
            batch.insert(&index_key(entry.log_id.index), raw);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| io_err(StorageIOError::write_logs, e))?;
        // Durable later, together with whatever else is appended meanwhile; raft counts the
        // entries as stored only when the callback runs.
        self.flusher.after_flush(callback);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        tracing::debug!(%log_id, "truncating log");
        self.remove(index_key(log_id.index)..)?;
        self.flush(StorageIOError::write_logs).await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        tracing::debug!(%log_id, "purging log");
        // Everything applied so far (the snapshot covering these entries) must be durable
        // before the entries go.
        self.flush(StorageIOError::write_logs).await?;
        self.put_meta(LAST_PURGED, &log_id)?;
        self.remove(..=index_key(log_id.index))?;
        self.flush(StorageIOError::write_logs).await
    }
}
