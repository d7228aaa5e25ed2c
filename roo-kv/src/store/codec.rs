//! The binary forms the state machine keeps in sled and in snapshots: big-endian integers,
//! LEB128 varints where small numbers are the rule, and length-prefixed byte strings. Reading
//! checks every length: snapshots come from the network.

use crate::command::{Conflict, Refusal, Response};

/// Appends fields to a buffer.
#[derive(Default)]
pub(super) struct Writer(pub Vec<u8>);

impl Writer {
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }

    /// Seven bits a byte, low ones first: a revision or a count takes 1 to 4 bytes, not 8.
    pub fn varint(&mut self, mut v: u64) -> &mut Self {
        while v >= 0x80 {
            self.0.push(v as u8 | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
        self
    }

    /// A byte string, after its length (u32).
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(&(v.len() as u32).to_be_bytes());
        self.0.extend_from_slice(v);
        self
    }

    pub fn response(&mut self, r: &Response) -> &mut Self {
        self.varint(r.rev).varint(r.changed as u64);
        match &r.conflict {
            None => self.u8(0),
            Some(c) => {
                self.u8(1).bytes(c.key.as_bytes());
                match c.current_rev {
                    None => self.u8(0),
                    Some(rev) => self.u8(1).varint(rev),
                }
            }
        };
        self.u8(match r.refused {
            None => 0,
            Some(Refusal::Stale) => 1,
            Some(Refusal::KeyReused) => 2,
        })
    }
}

/// Takes fields off the front of a byte slice; None when it is too short or a field is invalid.
pub(super) struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }

    pub fn u64(&mut self) -> Option<u64> {
        self.take(8)?.try_into().ok().map(u64::from_be_bytes)
    }

    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    pub fn varint(&mut self) -> Option<u64> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    pub fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = self.take(4)?.try_into().ok().map(u32::from_be_bytes)?;
        self.take(len as usize)
    }

    pub fn string(&mut self) -> Option<String> {
        std::str::from_utf8(self.bytes()?).ok().map(str::to_string)
    }

    pub fn response(&mut self) -> Option<Response> {
        let rev = self.varint()?;
        let changed = usize::try_from(self.varint()?).ok()?;
        let conflict = match self.u8()? {
            0 => None,
            1 => {
                let key = self.string()?;
                let current_rev = match self.u8()? {
                    0 => None,
                    1 => Some(self.varint()?),
                    _ => return None,
                };
                Some(Conflict { key, current_rev })
            }
            _ => return None,
        };
        let refused = match self.u8()? {
            0 => None,
            1 => Some(Refusal::Stale),
            2 => Some(Refusal::KeyReused),
            _ => return None,
        };
        Some(Response {
            rev,
            changed,
            conflict,
            refused,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_round_trip_and_short_input_is_refused() {
        let answers = [
            Response {
                rev: 7,
                changed: 2,
                conflict: None,
                refused: None,
            },
            Response {
                rev: 9,
                changed: 0,
                conflict: Some(Conflict {
                    key: "k".into(),
                    current_rev: Some(4),
                }),
                refused: None,
            },
            Response {
                rev: 9,
                changed: 0,
                conflict: Some(Conflict {
                    key: "absent".into(),
                    current_rev: None,
                }),
                refused: None,
            },
            Response {
                rev: 3,
                changed: 0,
                conflict: None,
                refused: Some(Refusal::KeyReused),
            },
        ];
        for r in &answers {
            let mut w = Writer::default();
            w.response(r);
            let mut reader = Reader(&w.0);
            assert_eq!(reader.response().as_ref(), Some(r));
            assert!(reader.is_empty());
            for cut in 0..w.0.len() {
                assert_eq!(Reader(&w.0[..cut]).response(), None, "cut at {cut}");
            }
        }
        assert_eq!(Reader(&[0, 0, 0, 9, 1]).bytes(), None);
    }

    #[test]
    fn varints_round_trip_and_overlong_ones_are_refused() {
        for v in [0, 1, 127, 128, 300, 1 << 35, u64::MAX] {
            let mut w = Writer::default();
            w.varint(v);
            assert_eq!(Reader(&w.0).varint(), Some(v), "{v}");
        }
        let mut w = Writer::default();
        w.varint(300);
        assert_eq!(w.0, [0xac, 0x02]);
        assert_eq!(Reader(&[0x80]).varint(), None, "cut short");
        assert_eq!(Reader(&[0xff; 11]).varint(), None, "longer than 64 bits");
    }
}
