//! Commands replicated through raft, their results, and the change events they produce.

use serde::{Deserialize, Serialize};

use crate::KvError;

/// Longest key accepted, in bytes of UTF-8.
pub const MAX_KEY_LEN: usize = 1024;
/// Largest value accepted, in bytes.
pub const MAX_VALUE_LEN: usize = 1024 * 1024;

/// One change to one key, optionally guarded by the key's current revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Set `key` to `value`.
    Put {
        key: String,
        #[serde(with = "b64")]
        value: Vec<u8>,
        /// Apply only if the key's `mod_revision` is this (0: only if the key is absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prev_rev: Option<u64>,
    },
    /// Remove `key`.
    Delete {
        key: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prev_rev: Option<u64>,
    },
}

impl Op {
    /// The key this operation changes.
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key, .. } => key,
        }
    }

    fn prev_rev(&self) -> Option<u64> {
        match self {
            Op::Put { prev_rev, .. } | Op::Delete { prev_rev, .. } => *prev_rev,
        }
    }

    /// Checks the key and value limits.
    pub fn validate(&self) -> Result<(), KvError> {
        validate_key(self.key())?;
        if let Op::Put { value, .. } = self {
            if value.len() > MAX_VALUE_LEN {
                return Err(KvError::ValueTooLarge { len: value.len() });
            }
        }
        Ok(())
    }

    /// Whether the guard of this op holds given the key's current `mod_revision` (None: absent).
    pub fn guard_holds(&self, current: Option<u64>) -> bool {
        match self.prev_rev() {
            None => true,
            Some(0) => current.is_none(),
            Some(rev) => current == Some(rev),
        }
    }
}

/// Checks that `key` is a key the store accepts.
pub fn validate_key(key: &str) -> Result<(), KvError> {
    if key.is_empty() {
        return Err(KvError::InvalidKey("empty key".into()));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(KvError::InvalidKey(format!(
            "key is {} bytes, the limit is {MAX_KEY_LEN}",
            key.len()
        )));
    }
    if key.chars().any(char::is_control) {
        return Err(KvError::InvalidKey(
            "key contains a control character".into(),
        ));
    }
    Ok(())
}

/// Longest idempotency key accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// One client request: all its ops apply atomically, or none do when a guard fails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub ops: Vec<Op>,
    /// Who proposed it; set by the node that takes the request, so that its retries apply once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    /// The client's own name for the request (`Idempotency-Key`): a request naming a key that
    /// applied before is answered as it was then, without applying again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

impl Request {
    /// A request of `ops`, with no origin or idempotency key yet.
    pub fn new(ops: Vec<Op>) -> Self {
        Request {
            ops,
            origin: None,
            idempotency_key: None,
        }
    }

    /// Checks every op and the idempotency key.
    pub fn validate(&self) -> Result<(), KvError> {
        if self.ops.is_empty() {
            return Err(KvError::InvalidRequest(
                "a request needs at least one op".into(),
            ));
        }
        if let Some(key) = &self.idempotency_key {
            validate_idempotency_key(key)?;
        }
        self.ops.iter().try_for_each(Op::validate)
    }

    /// A digest of the ops, the same on every node and version: what tells a client's retry
    /// from another request that reuses its idempotency key.
    pub fn fingerprint(&self) -> u64 {
        // FNV-1a: stable, unlike std's hasher, and plenty against accidental reuse.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for b in bytes {
                hash = (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        for op in &self.ops {
            let (tag, key, value, prev_rev) = match op {
                Op::Put {
                    key,
                    value,
                    prev_rev,
                } => (b'p', key, value.as_slice(), prev_rev),
                Op::Delete { key, prev_rev } => (b'd', key, &[][..], prev_rev),
            };
            eat(&[tag]);
            eat(&(key.len() as u64).to_be_bytes());
            eat(key.as_bytes());
            eat(&(value.len() as u64).to_be_bytes());
            eat(value);
            match prev_rev {
                Some(rev) => {
                    eat(&[1]);
                    eat(&rev.to_be_bytes());
                }
                None => eat(&[0]),
            }
        }
        hash
    }
}

/// Checks a client's idempotency key: 1 to [`MAX_IDEMPOTENCY_KEY_LEN`] visible ASCII characters.
pub fn validate_idempotency_key(key: &str) -> Result<(), KvError> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(KvError::InvalidRequest(format!(
            "an idempotency key is 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters"
        )));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(KvError::InvalidRequest(
            "an idempotency key is visible ASCII characters only".into(),
        ));
    }
    Ok(())
}

/// Where a request comes from: a proposer's session and the request's number in it (the client
/// sessions of the Raft thesis, section 6.3). The state machine remembers the answer of each
/// number until the proposer says it no longer needs it, so a request retried after an
/// ambiguous failure (a lost answer, a leader change) gets its first answer instead of applying
/// again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
// Every request carries one through the log and every RPC: `[session, seq, floor]` is short.
#[serde(from = "(u64, u64, u64)", into = "(u64, u64, u64)")]
pub struct Origin {
    /// Chosen at random each time a node starts.
    pub session: u64,
    pub seq: u64,
    /// Every request of the session numbered below this has had its answer: the state machine
    /// may forget those answers, and refuses such a request if it comes again.
    pub floor: u64,
}

impl From<(u64, u64, u64)> for Origin {
    fn from((session, seq, floor): (u64, u64, u64)) -> Self {
        Origin {
            session,
            seq,
            floor,
        }
    }
}

impl From<Origin> for (u64, u64, u64) {
    fn from(o: Origin) -> Self {
        (o.session, o.seq, o.floor)
    }
}

/// The application data of one raft entry: requests from many clients, applied in order, each
/// on its own (one failed guard fails only its request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub requests: Vec<Request>,
    /// The leader's clock when it proposed the entry (Unix milliseconds): the state machine's only
    /// notion of time, the same on every node, for forgetting old sessions and keys.
    #[serde(default)]
    pub time_ms: u64,
}

impl std::fmt::Display for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Batch({} requests)", self.requests.len())
    }
}

/// What applying one request produced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The store revision of the request's changes; on a conflict, the store revision it saw.
    pub rev: u64,
    /// How many ops changed something (a delete of an absent key changes nothing).
    pub changed: usize,
    /// Set when a guard failed: nothing was applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict: Option<Conflict>,
    /// Set when the request was refused before its guards were looked at: nothing was applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<Refusal>,
}

impl Response {
    /// The answer, or the failed guard as a [`KvError::Conflict`].
    pub fn checked(self) -> Result<Response, KvError> {
        match self.conflict {
            Some(c) => Err(KvError::Conflict {
                key: c.key,
                current_rev: c.current_rev,
            }),
            None => Ok(self),
        }
    }
}

/// Why a request was refused without being applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// Its proposer had already answered it (as unknown) and moved on: a copy late off the
    /// network must not apply now.
    Stale,
    /// Its idempotency key named another request before.
    KeyReused,
}

/// A failed compare-and-set guard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    pub key: String,
    /// The key's current `mod_revision`; None when absent.
    pub current_rev: Option<u64>,
}

/// A stored value with its revisions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    #[serde(with = "b64")]
    pub value: Vec<u8>,
    /// Revision of the last change of this key.
    pub mod_rev: u64,
    /// Revision at which the key was (last) created.
    pub create_rev: u64,
}

impl Record {
    /// Binary form kept in sled: mod_rev, create_rev (big-endian u64), then the value.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.value.len());
        out.extend_from_slice(&self.mod_rev.to_be_bytes());
        out.extend_from_slice(&self.create_rev.to_be_bytes());
        out.extend_from_slice(&self.value);
        out
    }

    pub(crate) fn decode(raw: &[u8]) -> Option<Record> {
        let mod_rev = u64::from_be_bytes(raw.get(0..8)?.try_into().ok()?);
        let create_rev = u64::from_be_bytes(raw.get(8..16)?.try_into().ok()?);
        Some(Record {
            value: raw[16..].to_vec(),
            mod_rev,
            create_rev,
        })
    }
}

/// The kind of change an [`Event`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Put,
    Delete,
}

/// One applied change, as watchers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Store revision of the request that made the change.
    pub rev: u64,
    /// Position of the op within its request.
    pub seq: u32,
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub key: String,
    #[serde(with = "b64::option", default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Vec<u8>>,
}

impl Event {
    /// The position of this event in the change history.
    pub fn position(&self) -> (u64, u32) {
        (self.rev, self.seq)
    }
}

/// Values travel as base64 in JSON (raft RPCs, watch streams).
pub(crate) mod b64 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD
            .decode(s.as_bytes())
            .map_err(serde::de::Error::custom)
    }

    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(v) => super::serialize(v, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
            let s = <Option<std::borrow::Cow<'de, str>>>::deserialize(d)?;
            s.map(|s| {
                STANDARD
                    .decode(s.as_bytes())
                    .map_err(serde::de::Error::custom)
            })
            .transpose()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards() {
        let put = |prev_rev| Op::Put {
            key: "k".into(),
            value: vec![],
            prev_rev,
        };
        assert!(put(None).guard_holds(Some(3)));
        assert!(put(Some(0)).guard_holds(None));
        assert!(!put(Some(0)).guard_holds(Some(3)));
        assert!(put(Some(3)).guard_holds(Some(3)));
        assert!(!put(Some(2)).guard_holds(Some(3)));
        assert!(!put(Some(2)).guard_holds(None));
    }

    #[test]
    fn key_limits() {
        assert!(validate_key("com.roo.host:example.com:https").is_ok());
        assert!(validate_key("").is_err());
        assert!(validate_key(&"k".repeat(MAX_KEY_LEN)).is_ok());
        assert!(validate_key(&"k".repeat(MAX_KEY_LEN + 1)).is_err());
        assert!(validate_key("a\nb").is_err());
        let big = Op::Put {
            key: "k".into(),
            value: vec![0; MAX_VALUE_LEN + 1],
            prev_rev: None,
        };
        assert!(matches!(big.validate(), Err(KvError::ValueTooLarge { .. })));
    }

    #[test]
    fn record_roundtrip() {
        let r = Record {
            value: b"hello".to_vec(),
            mod_rev: 9,
            create_rev: 4,
        };
        assert_eq!(Record::decode(&r.encode()), Some(r));
        assert_eq!(Record::decode(b"short"), None);
    }

    #[test]
    fn op_json_carries_binary_values() {
        let op = Op::Put {
            key: "k".into(),
            value: vec![0, 255, 10],
            prev_rev: Some(2),
        };
        let json = serde_json::to_string(&op).unwrap();
        assert_eq!(serde_json::from_str::<Op>(&json).unwrap(), op);
        assert!(serde_json::from_str::<Op>(r#"{"op":"put","key":"k","value":"%%"}"#).is_err());
    }

    #[test]
    fn request_json_carries_its_identity_and_reads_the_older_form() {
        let mut req = Request::new(vec![Op::Delete {
            key: "k".into(),
            prev_rev: None,
        }]);
        req.origin = Some(Origin {
            session: 7,
            seq: 9,
            floor: 8,
        });
        req.idempotency_key = Some("abc".into());
        let json = serde_json::to_string(&req).unwrap();
        assert!(json.contains(r#""origin":[7,9,8]"#), "{json}");
        assert_eq!(serde_json::from_str::<Request>(&json).unwrap(), req);
        // A request of a node from before identities: none.
        let old: Request = serde_json::from_str(r#"{"ops":[{"op":"delete","key":"k"}]}"#).unwrap();
        assert_eq!((old.origin, old.idempotency_key), (None, None));
        let batch: Batch = serde_json::from_str(r#"{"requests":[]}"#).unwrap();
        assert_eq!(batch.time_ms, 0);
    }

    #[test]
    fn fingerprints_tell_requests_apart() {
        let put = |key: &str, value: &[u8], prev_rev| {
            Request::new(vec![Op::Put {
                key: key.into(),
                value: value.to_vec(),
                prev_rev,
            }])
            .fingerprint()
        };
        assert_eq!(put("k", b"v", None), put("k", b"v", None));
        assert_ne!(put("k", b"v", None), put("k", b"w", None));
        assert_ne!(put("k", b"v", None), put("k", b"v", Some(0)));
        assert_ne!(put("k", b"v", Some(1)), put("k", b"v", Some(2)));
        // Lengths go in too: "ab"+"c" is not "a"+"bc".
        assert_ne!(put("ab", b"c", None), put("a", b"bc", None));
        let delete = Request::new(vec![Op::Delete {
            key: "k".into(),
            prev_rev: None,
        }]);
        assert_ne!(delete.fingerprint(), put("k", b"", None));
    }
}
