//! The error type of the store layer.

use std::time::Duration;

/// Everything that can go wrong in the store, as its callers need to tell it apart.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("invalid key: {0}")]
    InvalidKey(String),
    #[error("value is {len} bytes, the limit is {limit}", limit = crate::MAX_VALUE_LEN)]
    ValueTooLarge { len: usize },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("revision mismatch on {key}: current revision is {current}", current = current_rev.map_or_else(|| "none (absent)".to_string(), |r| r.to_string()))]
    Conflict {
        key: String,
        current_rev: Option<u64>,
    },
    #[error("history before revision {compacted} is compacted")]
    Compacted { compacted: u64 },
    /// No quorum, no leader, or the leader did not answer in time, and nothing was applied.
    /// Safe to retry later.
    #[error("cluster unavailable: {reason}")]
    Unavailable {
        reason: String,
        retry_after: Duration,
    },
    /// A write was sent but its answer never came back in time: it may have been applied or
    /// not. Reading tells; retrying with the same idempotency key is safe.
    #[error("outcome unknown: {reason}")]
    OutcomeUnknown { reason: String },
    /// A client's idempotency key named another request before.
    #[error("idempotency key {key:?} was used before for another request")]
    IdempotencyKeyReused { key: String },
    #[error("peer {addr}: {reason}")]
    Peer { addr: String, reason: String },
    #[error("storage: {0}")]
    Storage(String),
    #[error("node is shutting down")]
    Shutdown,
}

impl KvError {
    pub(crate) fn unavailable(reason: impl Into<String>) -> Self {
        KvError::Unavailable {
            reason: reason.into(),
            retry_after: Duration::from_secs(1),
        }
    }
}

impl From<sled::Error> for KvError {
    fn from(e: sled::Error) -> Self {
        KvError::Storage(e.to_string())
    }
}

/// An error and its causes on one line: a client's own message alone ("client error (Connect)")
/// would hide the refused certificate or connection behind it.
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
