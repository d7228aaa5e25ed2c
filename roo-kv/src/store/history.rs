//! The recent change history, in memory, that watches read.
//!
//! Kept out of sled on purpose: writing every change twice (the value, and the event) cost a
//! third of the apply time. The price is that history starts at the revision a node was started
//! at: a watch from before that, or from before what the bounds below keep, gets
//! [`KvError::Compacted`] and must scan again.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::command::Event;
use crate::KvError;

/// Most events kept.
const MAX_EVENTS: usize = 100_000;
/// Most key and value bytes kept.
const MAX_BYTES: usize = 64 * 1024 * 1024;

struct Ring {
    events: VecDeque<Arc<Event>>,
    bytes: usize,
    /// Every event at or below this revision may be gone.
    compacted: u64,
}

/// Recent events and the store revision, shared by the apply loop and the watches.
pub struct History {
    ring: Mutex<Ring>,
    applied: watch::Sender<u64>,
}

fn size(ev: &Event) -> usize {
    ev.key.len() + ev.value.as_ref().map_or(0, Vec::len)
}

impl History {
    /// An empty history at revision `applied`.
    pub fn new(applied: u64) -> Self {
        History {
            ring: Mutex::new(Ring {
                events: VecDeque::new(),
                bytes: 0,
                compacted: applied,
            }),
            applied: watch::Sender::new(applied),
        }
    }

    // The lock is never held across an await, and no code panics while holding it; a poisoned
    // lock still holds consistent data, so it is used as is.
    fn ring(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds the events of changes applied up to store revision `applied`, then wakes the watches.
    pub fn record(&self, events: Vec<Event>, applied: u64) {
        if !events.is_empty() {
            let mut ring = self.ring();
            for ev in events {
                ring.bytes += size(&ev);
                ring.events.push_back(Arc::new(ev));
            }
            // Drop whole revisions from the front until within bounds.
            while ring.events.len() > MAX_EVENTS || ring.bytes > MAX_BYTES {
                let Some(rev) = ring.events.front().map(|e| e.rev) else {
                    break;
                };
                while ring.events.front().is_some_and(|e| e.rev == rev) {
                    if let Some(ev) = ring.events.pop_front() {
                        ring.bytes -= size(&ev);
                    }
                }
                ring.compacted = rev;
            }
        }
        self.applied.send_replace(applied);
    }

    /// Forgets everything: the state was replaced (snapshot installed) at revision `applied`.
    pub fn reset(&self, applied: u64) {
        let mut ring = self.ring();
        ring.events.clear();
        ring.bytes = 0;
        ring.compacted = applied;
        drop(ring);
        self.applied.send_replace(applied);
    }

    /// Up to `limit` events after position `after`, oldest first.
    pub fn after(&self, after: (u64, u32), limit: usize) -> Result<Vec<Arc<Event>>, KvError> {
        let ring = self.ring();
        if after < (ring.compacted, u32::MAX) {
            return Err(KvError::Compacted {
                compacted: ring.compacted,
            });
        }
        let start = ring.events.partition_point(|e| e.position() <= after);
        Ok(ring.events.range(start..).take(limit).cloned().collect())
    }

    /// The store revision: that of the last applied change.
    pub fn revision(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Wakes on every change of the store revision.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventKind;

    fn ev(rev: u64, seq: u32) -> Event {
        Event {
            rev,
            seq,
            kind: EventKind::Put,
            key: "k".into(),
            value: Some(vec![0; 10]),
        }
    }

    #[test]
    fn reads_after_a_position_and_refuses_compacted_history() {
        let h = History::new(5);
        h.record(vec![ev(6, 0), ev(6, 1), ev(8, 0)], 8);
        let revs = |v: Vec<Arc<Event>>| v.iter().map(|e| e.position()).collect::<Vec<_>>();
        assert_eq!(
            revs(h.after((5, u32::MAX), 10).unwrap()),
            vec![(6, 0), (6, 1), (8, 0)]
        );
        assert_eq!(revs(h.after((6, 0), 10).unwrap()), vec![(6, 1), (8, 0)]);
        assert_eq!(revs(h.after((6, 0), 1).unwrap()), vec![(6, 1)]);
        assert!(h.after((8, u32::MAX), 10).unwrap().is_empty());
        assert!(matches!(
            h.after((4, u32::MAX), 10),
            Err(KvError::Compacted { compacted: 5 })
        ));
        assert_eq!(h.revision(), 8);
        h.reset(20);
        assert!(h.after((8, u32::MAX), 10).is_err());
        assert!(h.after((20, u32::MAX), 10).unwrap().is_empty());
    }

    #[test]
    fn drops_whole_revisions_past_the_bound() {
        let h = History::new(0);
        for rev in 1..=(MAX_EVENTS as u64 / 2 + 1) {
            h.record(vec![ev(rev, 0), ev(rev, 1)], rev);
        }
        // Revision 1 went as a whole: nothing half-kept.
        assert!(matches!(
            h.after((0, u32::MAX), 10),
            Err(KvError::Compacted { compacted: 1 })
        ));
        assert_eq!(h.after((1, u32::MAX), 1).unwrap()[0].position(), (2, 0));
    }
}
