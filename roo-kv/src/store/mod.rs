//! Durable storage on sled.
//!
//! One sled database per node, in the data dir, with three trees:
//! - `log`: raft log entries keyed by big-endian index (so they sort), and `log_meta`: the vote,
//!   the committed log id and the last purged log id ([`LogStore`]).
//! - `sm`: the state machine ([`StateMachine`]): `d:<key>` records, the answers kept so that a
//!   request applies once (`s:<session>`, `i:<idempotency key>`, see `dedup`), `m:*` applied log
//!   id, membership and revision, changed together by one atomic batch per apply. The change
//!   history watches read is kept in memory ([`History`]).
//! - `snapshot`: the last built or installed snapshot, so a restarted node can still send it.
//!
//! sled writes to one ordered log for all trees, so a flush makes every earlier write of every
//! tree durable; the raft log is flushed before an append is acknowledged, by one thread that
//! group-commits every append queued meanwhile ([`flusher`]).

// openraft's storage traits fix the error type, `StorageError`, large as it is.
#![allow(clippy::result_large_err)]

mod codec;
mod dedup;
mod flusher;
mod history;
mod log;
mod state_machine;

pub use history::History;
pub use log::LogStore;
pub use state_machine::{StateMachine, StateMachineHandle};

use openraft::{AnyError, StorageError, StorageIOError};

use crate::NodeId;

/// Opens (or creates) the store in `dir`.
pub fn open(dir: &std::path::Path) -> Result<(LogStore, StateMachine), crate::KvError> {
    let db = sled::Config::new()
        .path(dir.join("sled"))
        .mode(sled::Mode::HighThroughput)
        .open()?;
    let flusher = flusher::Flusher::start(db.clone())
        .map_err(|e| crate::KvError::Storage(format!("starting the flusher thread: {e}")))?;
    let log = LogStore::open(&db, flusher.clone())?;
    let sm = StateMachine::open(&db, flusher)?;
    Ok((log, sm))
}

pub(crate) fn io_err<E: std::error::Error + 'static>(
    f: fn(AnyError) -> StorageIOError<NodeId>,
    e: E,
) -> StorageError<NodeId> {
    StorageError::IO {
        source: f(AnyError::new(&e)),
    }
}

pub(crate) fn bad_data(
    f: fn(AnyError) -> StorageIOError<NodeId>,
    what: impl std::fmt::Display,
) -> StorageError<NodeId> {
    StorageError::IO {
        source: f(AnyError::error(what)),
    }
}
