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

/// One client request: all its ops apply atomically, or none do when a guard fails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub ops: Vec<Op>,
}

impl Request {
    /// Checks every op.
    pub fn validate(&self) -> Result<(), KvError> {
        if self.ops.is_empty() {
            return Err(KvError::InvalidRequest(
                "a request needs at least one op".into(),
            ));
        }
        self.ops.iter().try_for_each(Op::validate)
    }
}

/// The application data of one raft entry: requests from many clients, applied in order, each
/// on its own (one failed guard fails only its request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub requests: Vec<Request>,
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
}
