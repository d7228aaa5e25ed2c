//! This node's proposal session: the identity each of its writes carries ([`Origin`]), so that
//! the state machine applies a write once however often it is retried (see `store::dedup`).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::command::Origin;

/// Numbers the writes this node proposes and tracks which of them still wait for an answer.
#[derive(Clone)]
pub(crate) struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    id: u64,
    numbers: Mutex<Numbers>,
}

#[derive(Default)]
struct Numbers {
    next: u64,
    waiting: BTreeSet<u64>,
}

impl Session {
    /// A new session: a restarted node must not reuse the numbers of its previous life.
    pub(crate) fn new() -> Session {
        Session {
            inner: Arc::new(Inner {
                // Below 2^53, like node ids: short in JSON, exact in any reader.
                id: rand::random::<u64>() >> 11,
                numbers: Mutex::default(),
            }),
        }
    }

    // Held for a counter and a set update, never across an await; a poisoned lock still holds
    // consistent numbers.
    fn numbers(&self) -> MutexGuard<'_, Numbers> {
        self.inner.numbers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A number for a new write, given back when the returned ticket drops (the write answered).
    pub(crate) fn begin(&self) -> Ticket {
        let mut n = self.numbers();
        let seq = n.next;
        n.next += 1;
        n.waiting.insert(seq);
        Ticket {
            session: self.clone(),
            seq,
        }
    }
}

/// A write in progress.
pub(crate) struct Ticket {
    session: Session,
    seq: u64,
}

impl Ticket {
    /// The identity the write carries on this attempt: its number, and the lowest number of the
    /// session still waiting (every one below has its answer and may be forgotten).
    pub(crate) fn origin(&self) -> Origin {
        let floor = self
            .session
            .numbers()
            .waiting
            .first()
            .copied()
            .unwrap_or(self.seq);
        Origin {
            session: self.session.inner.id,
            seq: self.seq,
            floor,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.session.numbers().waiting.remove(&self.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_is_the_oldest_write_still_waiting() {
        let session = Session::new();
        let a = session.begin();
        let b = session.begin();
        let c = session.begin();
        assert_eq!((a.origin().seq, b.origin().seq, c.origin().seq), (0, 1, 2));
        assert_eq!(c.origin().floor, 0);
        drop(b);
        assert_eq!(c.origin().floor, 0, "0 still waits");
        drop(a);
        assert_eq!(c.origin().floor, 2);
        let d = session.begin();
        assert_eq!((d.origin().seq, d.origin().floor), (3, 2));
        assert_eq!(d.origin().session, c.origin().session);
        assert_ne!(Session::new().begin().origin().session, d.origin().session);
    }
}
