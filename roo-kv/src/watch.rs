//! Watches: every applied change under a key prefix, in order, from a given revision.
//!
//! A watch reads the stored change history until it has caught up, then follows the live events
//! of the apply loop. Subscribing before reading history and skipping positions already delivered
//! means no change is missed or repeated; a watcher that falls behind the live channel goes back
//! to the history.

use std::collections::VecDeque;

use tokio::sync::broadcast::error::RecvError;

use crate::command::{Event, EventKind};
use crate::store::StateMachineHandle;
use crate::KvError;

const HISTORY_CHUNK: usize = 1024;

/// A subscription to the changes of keys starting with a prefix.
pub struct Watch {
    prefix: String,
    sm: StateMachineHandle,
    live: tokio::sync::broadcast::Receiver<std::sync::Arc<Event>>,
    /// Position of the last change delivered (or skipped by the prefix filter).
    pos: (u64, u32),
    backlog: VecDeque<Event>,
    catching_up: bool,
}

impl Watch {
    /// Changes with a revision above `after_rev`.
    pub(crate) fn new(sm: StateMachineHandle, prefix: &str, after_rev: u64) -> Result<Watch, KvError> {
        let live = sm.subscribe();
        let compacted = sm.compacted()?;
        if after_rev < compacted {
            return Err(KvError::Compacted { compacted });
        }
        Ok(Watch {
            prefix: prefix.to_string(),
            sm,
            live,
            pos: (after_rev, u32::MAX),
            backlog: VecDeque::new(),
            catching_up: true,
        })
    }

    /// The revision of the last change this watch has passed.
    pub fn revision(&self) -> u64 {
        self.pos.0
    }

    /// The next change. [`EventKind::Reset`] means a snapshot replaced the whole state: re-read
    /// what you keep. Fails with [`KvError::Compacted`] when the history it needs is gone.
    pub async fn next(&mut self) -> Result<Event, KvError> {
        loop {
            if let Some(ev) = self.backlog.pop_front() {
                self.pos = ev.position();
                if ev.key.starts_with(&self.prefix) {
                    return Ok(ev);
                }
                continue;
            }
            if self.catching_up {
                let chunk = self.sm.history(self.pos, HISTORY_CHUNK)?;
                if chunk.is_empty() {
                    self.catching_up = false;
                } else {
                    self.backlog.extend(chunk);
                }
                continue;
            }
            match self.live.recv().await {
                Ok(ev) if ev.kind == EventKind::Reset => {
                    self.pos = (ev.rev, u32::MAX);
                    return Ok((*ev).clone());
                }
                Ok(ev) => {
                    if ev.position() <= self.pos {
                        continue;
                    }
                    self.pos = ev.position();
                    if ev.key.starts_with(&self.prefix) {
                        return Ok((*ev).clone());
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::debug!(missed = n, prefix = %self.prefix, "watch lagged, reading history");
                    self.catching_up = true;
                }
                Err(RecvError::Closed) => return Err(KvError::Shutdown),
            }
        }
    }
}
