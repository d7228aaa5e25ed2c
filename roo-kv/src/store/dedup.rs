//! What makes every request apply once: the answers the state machine remembers for requests
//! that may come again.
//!
//! - Sessions: each node numbers the requests it proposes within a session of its own
//!   ([`Origin`]) and retries one after an ambiguous failure (its answer lost with a leader, a
//!   timed-out forward). The answer of each number is kept until the node says it no longer
//!   waits for it (the request's `floor`); a copy below the floor is refused as stale.
//! - Idempotency keys: a client names a request (`Idempotency-Key`) and may send it again
//!   through any node; the answer is kept [`KEY_TTL_MS`], at most [`MAX_KEYS`] keys.
//!
//! Both live in the state machine's tree (`s:<session>`, `i:<key>`) and in its snapshots, and
//! change only with the log: time is the proposing leader's clock carried by each entry
//! ([`crate::Batch::time_ms`]), so every node keeps and forgets the same answers.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::codec::{Reader, Writer};
use crate::command::{Op, Origin, Refusal, Request, Response};

pub(super) const SESSION_PREFIX: &[u8] = b"s:";
pub(super) const KEY_PREFIX: &[u8] = b"i:";

/// How long a session that proposes nothing is kept.
const SESSION_TTL_MS: u64 = 10 * 60 * 1000;
/// How long a client's idempotency key is kept.
pub const KEY_TTL_MS: u64 = 10 * 60 * 1000;
/// Most idempotency keys kept; the oldest go first.
pub const MAX_KEYS: usize = 100_000;

#[derive(Debug, Default, PartialEq)]
struct Session {
    floor: u64,
    last_ms: u64,
    answers: BTreeMap<u64, Response>,
}

#[derive(Debug, PartialEq)]
struct KeyAnswer {
    fingerprint: u64,
    time_ms: u64,
    /// Order of remembering, which also orders forgetting.
    order: u64,
    response: Response,
}

/// What tells a request that comes again: its origin and its client's key, with the digest of
/// its ops (computed only when there is a key).
#[derive(Debug)]
pub(super) struct Identity {
    origin: Option<Origin>,
    key: Option<(String, u64)>,
}

impl Identity {
    /// Splits a request into its identity and its ops.
    pub(super) fn of(req: Request) -> (Identity, Vec<Op>) {
        let key = req.idempotency_key.as_ref().map(|_| req.fingerprint());
        let identity = Identity {
            origin: req.origin,
            key: req.idempotency_key.zip(key),
        };
        (identity, req.ops)
    }
}

/// The remembered answers, in memory, with what changed since they were last written out.
#[derive(Debug, Default)]
pub(super) struct Dedup {
    /// The latest entry time applied (never goes back, whatever the leaders' clocks do).
    clock: u64,
    next_order: u64,
    sessions: HashMap<u64, Session>,
    keys: HashMap<String, KeyAnswer>,
    key_order: BTreeMap<u64, String>,
    dirty_sessions: HashSet<u64>,
    dirty_keys: HashSet<String>,
}

/// A snapshot's or the tree's form of the clock and ordering counter.
pub(super) fn encode_meta(clock: u64, next_order: u64) -> Vec<u8> {
    let mut w = Writer::default();
    w.u64(clock).u64(next_order);
    w.0
}

pub(super) fn decode_meta(raw: &[u8]) -> Option<(u64, u64)> {
    let mut r = Reader(raw);
    let meta = (r.u64()?, r.u64()?);
    r.is_empty().then_some(meta)
}

// A session is written out whole with every entry that touches it: kept small with varints.
fn encode_session(s: &Session) -> Vec<u8> {
    let mut w = Writer::default();
    w.varint(s.floor)
        .varint(s.last_ms)
        .varint(s.answers.len() as u64);
    for (seq, answer) in &s.answers {
        w.varint(*seq).response(answer);
    }
    w.0
}

fn decode_session(raw: &[u8]) -> Option<Session> {
    let mut r = Reader(raw);
    let (floor, last_ms, count) = (r.varint()?, r.varint()?, r.varint()?);
    let mut answers = BTreeMap::new();
    for _ in 0..count {
        answers.insert(r.varint()?, r.response()?);
    }
    r.is_empty().then_some(Session {
        floor,
        last_ms,
        answers,
    })
}

fn encode_key(k: &KeyAnswer) -> Vec<u8> {
    let mut w = Writer::default();
    w.u64(k.fingerprint)
        .u64(k.time_ms)
        .u64(k.order)
        .response(&k.response);
    w.0
}

fn decode_key(raw: &[u8]) -> Option<KeyAnswer> {
    let mut r = Reader(raw);
    let (fingerprint, time_ms, order) = (r.u64()?, r.u64()?, r.u64()?);
    let response = r.response()?;
    r.is_empty().then_some(KeyAnswer {
        fingerprint,
        time_ms,
        order,
        response,
    })
}

/// Whether `(key, value)`, a raw entry of the tree under one of this module's prefixes, is well
/// formed (snapshot data comes from the network).
pub(super) fn valid_entry(key: &[u8], value: &[u8]) -> bool {
    if let Some(id) = key.strip_prefix(SESSION_PREFIX) {
        id.len() == 8 && decode_session(value).is_some()
    } else if let Some(name) = key.strip_prefix(KEY_PREFIX) {
        std::str::from_utf8(name).is_ok() && decode_key(value).is_some()
    } else {
        false
    }
}

impl Dedup {
    /// Rebuilds the tables from the tree's entries under the two prefixes and the meta record.
    pub(super) fn load<'a>(
        meta: Option<&[u8]>,
        entries: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Result<Dedup, String> {
        let mut d = Dedup::default();
        if let Some(raw) = meta {
            (d.clock, d.next_order) = decode_meta(raw).ok_or("corrupt dedup meta record")?;
        }
        for (key, value) in entries {
            if let Some(id) = key.strip_prefix(SESSION_PREFIX) {
                let id = id
                    .try_into()
                    .map(u64::from_be_bytes)
                    .map_err(|_| "corrupt session key")?;
                let session = decode_session(value).ok_or("corrupt session record")?;
                d.sessions.insert(id, session);
            } else if let Some(name) = key.strip_prefix(KEY_PREFIX) {
                let name = std::str::from_utf8(name).map_err(|_| "corrupt idempotency key")?;
                let answer = decode_key(value).ok_or("corrupt idempotency record")?;
                d.key_order.insert(answer.order, name.to_string());
                d.keys.insert(name.to_string(), answer);
            }
        }
        Ok(d)
    }

    /// The clock and ordering counter, as kept in the tree and in snapshots.
    pub(super) fn meta(&self) -> Vec<u8> {
        encode_meta(self.clock, self.next_order)
    }

    /// Moves the clock to an entry's time and forgets what has expired by then.
    pub(super) fn advance(&mut self, time_ms: u64) {
        if time_ms <= self.clock {
            return;
        }
        self.clock = time_ms;
        let clock = self.clock;
        let expired: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.last_ms.saturating_add(SESSION_TTL_MS) < clock)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.sessions.remove(&id);
            self.dirty_sessions.insert(id);
        }
        while let Some((_, name)) = self.key_order.first_key_value() {
            match self.keys.get(name) {
                Some(k) if k.time_ms.saturating_add(KEY_TTL_MS) >= clock => break,
                _ => self.forget_oldest_key(),
            }
        }
    }

    fn forget_oldest_key(&mut self) {
        if let Some((_, name)) = self.key_order.pop_first() {
            self.keys.remove(&name);
            self.dirty_keys.insert(name);
        }
    }

    /// The answer `req` gets without applying, if any: the remembered one of a request seen
    /// before, or a refusal (a stale copy, a reused key). `revision` is the store's current one.
    pub(super) fn seen(&mut self, req: &Identity, revision: u64) -> Option<Response> {
        let refused = |why| Response {
            rev: revision,
            changed: 0,
            conflict: None,
            refused: Some(why),
        };
        if let Some(Origin {
            session,
            seq,
            floor,
        }) = req.origin
        {
            let s = self.sessions.entry(session).or_default();
            if floor > s.floor {
                s.floor = floor;
                while s
                    .answers
                    .first_key_value()
                    .is_some_and(|(seq, _)| *seq < floor)
                {
                    s.answers.pop_first();
                }
            }
            s.last_ms = self.clock;
            self.dirty_sessions.insert(session);
            if seq < s.floor {
                return Some(refused(Refusal::Stale));
            }
            if let Some(answer) = s.answers.get(&seq) {
                return Some(answer.clone());
            }
        }
        let (name, fingerprint) = req.key.as_ref()?;
        let known = self.keys.get(name)?;
        Some(if known.fingerprint == *fingerprint {
            known.response.clone()
        } else {
            refused(Refusal::KeyReused)
        })
    }

    /// Remembers the answer `req` got (applied, or from [`Dedup::seen`]).
    pub(super) fn remember(&mut self, req: &Identity, answer: &Response) {
        if answer.refused == Some(Refusal::Stale) {
            return;
        }
        if let Some(origin) = req.origin {
            let s = self.sessions.entry(origin.session).or_default();
            s.answers
                .entry(origin.seq)
                .or_insert_with(|| answer.clone());
            s.last_ms = self.clock;
            self.dirty_sessions.insert(origin.session);
        }
        let Some((name, fingerprint)) = &req.key else {
            return;
        };
        if answer.refused == Some(Refusal::KeyReused) || self.keys.contains_key(name) {
            return;
        }
        let order = self.next_order;
        self.next_order += 1;
        self.keys.insert(
            name.clone(),
            KeyAnswer {
                fingerprint: *fingerprint,
                time_ms: self.clock,
                order,
                response: answer.clone(),
            },
        );
        self.key_order.insert(order, name.clone());
        self.dirty_keys.insert(name.clone());
        while self.keys.len() > MAX_KEYS {
            self.forget_oldest_key();
        }
    }

    /// Writes what changed since the last call into `batch` (keys of the state machine's tree).
    pub(super) fn write_changes(&mut self, batch: &mut sled::Batch) {
        for id in self.dirty_sessions.drain() {
            let key = [SESSION_PREFIX, &id.to_be_bytes()].concat();
            match self.sessions.get(&id) {
                Some(s) => batch.insert(key, encode_session(s)),
                None => batch.remove(key),
            }
        }
        for name in self.dirty_keys.drain() {
            let key = [KEY_PREFIX, name.as_bytes()].concat();
            match self.keys.get(&name) {
                Some(k) => batch.insert(key, encode_key(k)),
                None => batch.remove(key),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Op;

    fn put(key: &str, value: &str) -> Request {
        Request::new(vec![Op::Put {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            prev_rev: None,
        }])
    }

    fn from(session: u64, seq: u64, floor: u64, mut req: Request) -> Identity {
        req.origin = Some(Origin {
            session,
            seq,
            floor,
        });
        Identity::of(req).0
    }

    fn keyed(mut req: Request) -> Request {
        req.idempotency_key = Some("order-1".into());
        req
    }

    fn alone(req: Request) -> Identity {
        Identity::of(req).0
    }

    fn applied(rev: u64) -> Response {
        Response {
            rev,
            changed: 1,
            ..Response::default()
        }
    }

    /// Writes the changes of `d` into `db` as the state machine does, and loads them back.
    fn reload(db: &sled::Db, d: &mut Dedup) -> Dedup {
        let mut batch = sled::Batch::default();
        d.write_changes(&mut batch);
        db.apply_batch(batch).unwrap();
        let entries: Vec<(sled::IVec, sled::IVec)> = db.iter().map(Result::unwrap).collect();
        Dedup::load(
            Some(&d.meta()),
            entries.iter().map(|(k, v)| (k.as_ref(), v.as_ref())),
        )
        .unwrap()
    }

    fn temporary() -> sled::Db {
        sled::Config::new().temporary(true).open().unwrap()
    }

    #[test]
    fn a_retried_request_gets_its_first_answer_until_the_floor_passes_it() {
        let mut d = Dedup::default();
        d.advance(1_000);
        let first = from(7, 0, 0, put("k", "a"));
        assert_eq!(d.seen(&first, 1), None);
        d.remember(&first, &applied(2));
        // The same request again (say through a new leader): its first answer.
        assert_eq!(d.seen(&first, 5), Some(applied(2)));
        // A later request of the session whose floor passed it: the copy is refused as stale.
        let second = from(7, 1, 1, put("k", "b"));
        assert_eq!(d.seen(&second, 5), None);
        d.remember(&second, &applied(6));
        let stale = d.seen(&first, 6).unwrap();
        assert_eq!((stale.rev, stale.refused), (6, Some(Refusal::Stale)));
        // Other sessions are their own.
        assert_eq!(d.seen(&from(8, 0, 0, put("k", "c")), 6), None);
        // What was kept survives a write-out and a load.
        let db = temporary();
        let mut back = reload(&db, &mut d);
        assert_eq!(back.sessions, d.sessions);
        assert_eq!(back.seen(&second, 9), Some(applied(6)));
    }

    #[test]
    fn idempotency_keys_answer_the_same_request_and_refuse_another() {
        let mut d = Dedup::default();
        d.advance(1_000);
        let first = from(1, 0, 0, keyed(put("k", "a")));
        assert_eq!(d.seen(&first, 1), None);
        d.remember(&first, &applied(2));
        // The client's own retry comes through another node: another session, same key.
        assert_eq!(
            d.seen(&from(2, 0, 0, keyed(put("k", "a"))), 3),
            Some(applied(2))
        );
        let reused = d.seen(&from(2, 1, 0, keyed(put("k", "b"))), 3).unwrap();
        assert_eq!(reused.refused, Some(Refusal::KeyReused));
        let db = temporary();
        let mut back = reload(&db, &mut d);
        assert_eq!(back.keys, d.keys);
        assert_eq!(
            back.seen(&alone(keyed(put("k", "a"))), 3),
            Some(applied(2)),
            "kept after a reload"
        );
        // Kept for its time to live, then forgotten.
        d.advance(1_000 + KEY_TTL_MS);
        assert!(d.seen(&alone(keyed(put("k", "a"))), 3).is_some());
        d.advance(1_001 + KEY_TTL_MS);
        assert_eq!(d.seen(&alone(keyed(put("k", "a"))), 3), None);
        assert!(
            reload(&db, &mut d).keys.is_empty(),
            "forgotten in the tree too"
        );
    }

    #[test]
    fn idle_sessions_expire_and_keys_are_bounded() {
        let mut d = Dedup::default();
        d.advance(1);
        d.remember(&from(3, 0, 0, put("k", "a")), &applied(1));
        d.advance(1 + SESSION_TTL_MS);
        assert!(d.sessions.contains_key(&3));
        d.advance(2 + SESSION_TTL_MS);
        assert!(!d.sessions.contains_key(&3));

        for i in 0..MAX_KEYS + 5 {
            let mut r = put("k", "v");
            r.idempotency_key = Some(format!("key-{i}"));
            d.remember(&alone(r), &applied(i as u64));
        }
        assert_eq!(d.keys.len(), MAX_KEYS);
        assert!(!d.keys.contains_key("key-4"), "the oldest went first");
        assert!(d.keys.contains_key("key-5"));
    }
}
