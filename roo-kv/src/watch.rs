//! Watches: every applied change under a key prefix, in order, from a given revision.
//!
//! A watch reads the node's recent history ([`crate::store::History`]) from the position it has
//! reached, and sleeps on the applied revision when it has caught up. It marks the revision seen
//! before reading, so a change applied between the read and the sleep still wakes it.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::watch;

use crate::command::Event;
use crate::store::StateMachineHandle;
use crate::KvError;

const CHUNK: usize = 1024;

/// A subscription to the changes of keys starting with a prefix.
pub struct Watch {
    prefix: String,
    sm: StateMachineHandle,
    applied: watch::Receiver<u64>,
    /// Position of the last change passed (delivered, or skipped by the prefix filter).
    pos: (u64, u32),
    backlog: VecDeque<Arc<Event>>,
}

impl Watch {
    /// Changes with a revision above `after_rev`.
    pub(crate) fn new(
        sm: StateMachineHandle,
        prefix: &str,
        after_rev: u64,
    ) -> Result<Watch, KvError> {
        let pos = (after_rev, u32::MAX);
        // Fail now, not at the first change, when the history does not reach back that far.
        sm.history().after(pos, 0)?;
        Ok(Watch {
            prefix: prefix.to_string(),
            applied: sm.history().subscribe(),
            sm,
            pos,
            backlog: VecDeque::new(),
        })
    }

    /// The revision of the last change this watch has passed.
    pub fn revision(&self) -> u64 {
        self.pos.0
    }

    /// The next change. Fails with [`KvError::Compacted`] when the history it needs is gone (a
    /// snapshot replaced the state, or it fell too far behind): scan again and watch from the
    /// scan's revision.
    pub async fn next(&mut self) -> Result<Event, KvError> {
        loop {
            self.applied.borrow_and_update();
            if let Some(ev) = self.ready()? {
                return Ok(ev);
            }
            self.applied
                .changed()
                .await
                .map_err(|_| KvError::Shutdown)?;
        }
    }

    /// The next change, then every other one already applied, `max` in all at most: a burst of
    /// writes is taken in one go.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<Event>, KvError> {
        let mut batch = vec![self.next().await?];
        while batch.len() < max {
            match self.ready()? {
                Some(ev) => batch.push(ev),
                None => break,
            }
        }
        Ok(batch)
    }

    /// The next change already applied, if any.
    fn ready(&mut self) -> Result<Option<Event>, KvError> {
        loop {
            while let Some(ev) = self.backlog.pop_front() {
                self.pos = ev.position();
                if ev.key.starts_with(&self.prefix) {
                    return Ok(Some((*ev).clone()));
                }
            }
            let chunk = self.sm.history().after(self.pos, CHUNK)?;
            if chunk.is_empty() {
                return Ok(None);
            }
            self.backlog.extend(chunk);
        }
    }
}
