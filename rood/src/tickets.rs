//! Where TLS session tickets come from: keys the cluster shares through the KV, so that a
//! session begun on one node resumes on any other, for TLS 1.3 and TLS 1.2 alike.
//!
//! The raft leader keeps `com.roo.tls.ticket_key:<id, 16 hex digits>` ([`run`]): a new key
//! every `--tls-ticket-rotate-s`, each accepted until its `not_after`, twice that after it was
//! made; then it deletes it. Every node reads the keys through [`crate::feed`] into
//! [`TicketKeys`], and its [`Ticketer`] seals new tickets with the newest key and opens a ticket
//! with the key it names while that key stands. Deleting a key is what ends its tickets (rustls
//! checks no lifetime of its own). Until a node has a shared key it seals with a key of its own
//! process, so tickets work before the cluster does; those resume only on that node.
//!
//! The values are secrets: the API shows them to the admin token alone ([`crate::api`]), and
//! nothing logs them. 0-RTT stays off: early data can be replayed by anyone who saw it, and the
//! proxy cannot tell which requests of a route are safe to replay.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use roo_kv::{Consistency, Kv, KvError, Op};
use rustls::server::ProducesTickets;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub const TICKET_KEY_PREFIX: &str = "com.roo.tls.ticket_key:";
/// The most a TLS 1.3 ticket may say it lasts (RFC 8446).
const MAX_LIFETIME_S: u64 = 7 * 24 * 3600;
const KEY_LEN: usize = 32;
const ID_LEN: usize = 8;
const TAG_LEN: usize = 16;

/// Why a stored ticket key was refused.
#[derive(Debug, thiserror::Error)]
pub enum TicketError {
    #[error("a ticket key's name is {TICKET_KEY_PREFIX}<16 hex digits>, not {0:?}")]
    Name(String),
    #[error("ticket key JSON: {0}")]
    Json(String),
    #[error("a ticket key is {KEY_LEN} bytes in base64")]
    Secret,
}

/// A ticket key as the KV holds it.
#[derive(Serialize, Deserialize)]
struct Stored {
    /// The secret, base64.
    key: String,
    /// Unix seconds.
    created: u64,
    /// Tickets sealed with it open until then, Unix seconds.
    not_after: u64,
}

/// One key that seals and opens tickets.
pub struct TicketKey {
    id: u64,
    created: u64,
    not_after: u64,
    aead: LessSafeKey,
}

impl fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret.
        f.debug_struct("TicketKey")
            .field("id", &format_args!("{:016x}", self.id))
            .field("created", &self.created)
            .field("not_after", &self.not_after)
            .finish()
    }
}

impl TicketKey {
    fn new(id: u64, secret: &[u8], created: u64, not_after: u64) -> Option<TicketKey> {
        let aead = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, secret).ok()?);
        Some(TicketKey {
            id,
            created,
            not_after,
            aead,
        })
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// `id | nonce | AES-256-GCM(plain)`, the id authenticated too.
    fn seal(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).ok()?;
        let id = self.id.to_be_bytes();
        let mut ticket = Vec::with_capacity(ID_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        ticket.extend_from_slice(&id);
        ticket.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        self.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(id),
                &mut sealed,
            )
            .ok()?;
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    /// The plain text of a ticket this key sealed ([`ticket_id`] named it).
    fn open(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        let nonce = ticket.get(ID_LEN..ID_LEN + NONCE_LEN)?;
        let mut sealed = ticket.get(ID_LEN + NONCE_LEN..)?.to_vec();
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let plain = self
            .aead
            .open_in_place(nonce, Aad::from(self.id.to_be_bytes()), &mut sealed)
            .ok()?;
        Some(plain.to_vec())
    }
}

/// The key a ticket names.
fn ticket_id(ticket: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(ticket.get(..ID_LEN)?.try_into().ok()?))
}

/// Parses a stored ticket key: what the API refuses to store, and what a node refuses to use.
pub fn load(key: &str, value: &[u8]) -> Result<Arc<TicketKey>, TicketError> {
    let id = key_id(key)?;
    let stored: Stored =
        serde_json::from_slice(value).map_err(|e| TicketError::Json(e.to_string()))?;
    let secret = STANDARD
        .decode(stored.key.as_bytes())
        .map_err(|_| TicketError::Secret)?;
    if secret.len() != KEY_LEN {
        return Err(TicketError::Secret);
    }
    TicketKey::new(id, &secret, stored.created, stored.not_after)
        .map(Arc::new)
        .ok_or(TicketError::Secret)
}

/// The id of a `com.roo.tls.ticket_key:<id>` key.
pub fn key_id(key: &str) -> Result<u64, TicketError> {
    key.strip_prefix(TICKET_KEY_PREFIX)
        .filter(|hex| hex.len() == 16)
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .ok_or_else(|| TicketError::Name(key.to_string()))
}

/// The shared ticket keys a node holds, newest first; swapped whole.
#[derive(Debug, Clone, Default)]
pub struct TicketKeys {
    keys: Vec<Arc<TicketKey>>,
}

impl TicketKeys {
    pub fn insert(&mut self, key: Arc<TicketKey>) {
        self.remove(key.id);
        let at = self.keys.partition_point(|k| k.created > key.created);
        self.keys.insert(at, key);
    }

    pub fn remove(&mut self, id: u64) {
        self.keys.retain(|k| k.id != id);
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key that seals tickets at `now`: the newest that still stands.
    fn sealing(&self, now: u64) -> Option<&Arc<TicketKey>> {
        self.keys.iter().find(|k| now < k.not_after)
    }

    /// Key `id`, if it still stands at `now`.
    fn opening(&self, id: u64, now: u64) -> Option<&Arc<TicketKey>> {
        self.keys.iter().find(|k| k.id == id && now < k.not_after)
    }
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Seals and opens the tickets of a node's TLS listener with the cluster's keys, or with its
/// own until it has one.
pub struct Ticketer {
    shared: Arc<ArcSwap<TicketKeys>>,
    /// This process's key: made at start, never stored.
    own: TicketKey,
    /// The lifetime told with a ticket of the node's own key.
    own_lifetime: u32,
}

impl fmt::Debug for Ticketer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticketer")
            .field("shared", &self.shared.load().len())
            .finish()
    }
}

impl Ticketer {
    /// A ticketer over the node's shared keys; `window`: how long its own key's tickets last.
    pub fn new(shared: Arc<ArcSwap<TicketKeys>>, window: Duration) -> Result<Self, TicketError> {
        let mut secret = [0u8; KEY_LEN];
        aws_lc_rs::rand::fill(&mut secret).map_err(|_| TicketError::Secret)?;
        let id = rand::random::<u64>();
        let own = TicketKey::new(id, &secret, now_s(), u64::MAX).ok_or(TicketError::Secret)?;
        Ok(Ticketer {
            shared,
            own,
            own_lifetime: window.as_secs().min(MAX_LIFETIME_S) as u32,
        })
    }
}

impl ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        true
    }

    /// Until the sealing key's `not_after`: a client need not offer a ticket no node opens.
    fn lifetime(&self) -> u32 {
        let now = now_s();
        match self.shared.load().sealing(now) {
            Some(key) => key.not_after.saturating_sub(now).clamp(1, MAX_LIFETIME_S) as u32,
            None => self.own_lifetime,
        }
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        match self.shared.load().sealing(now_s()) {
            Some(key) => key.seal(plain),
            None => self.own.seal(plain),
        }
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        let id = ticket_id(ticket)?;
        if id == self.own.id {
            return self.own.open(ticket);
        }
        self.shared.load().opening(id, now_s())?.open(ticket)
    }
}

/// How often the leader looks at the keys: often enough that a key is replaced within a tenth
/// of its period.
fn look_every(rotate: Duration) -> Duration {
    (rotate / 10).clamp(Duration::from_millis(100), Duration::from_secs(60))
}

/// Keeps the cluster's ticket keys while this node leads, until `shutdown`: a new key when the
/// newest is `rotate` old (none when `make` is false: this node has tickets off), and expired
/// ones deleted.
pub async fn run(kv: Kv, rotate: Duration, make: bool, shutdown: CancellationToken) {
    static FAILED: roo_kv::throttle::Throttles =
        roo_kv::throttle::Throttles::new(Duration::from_secs(60));
    let mut metrics = kv.raft().metrics();
    while let Some(term) = crate::leader::term(&kv, &mut metrics, &shutdown).await {
        let mut tick = tokio::time::interval(look_every(rotate));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = term.cancelled() => break,
            }
            if let Err(e) = keep(&kv, rotate, make, now_s()).await {
                if let Some(held_back) = FAILED.ready("ticket keys") {
                    tracing::warn!(error = %e, held_back, "rotating the TLS ticket keys");
                }
            }
        }
    }
}

/// One look at the keys at `now`: the writes that bring them to date, in one request.
async fn keep(kv: &Kv, rotate: Duration, make: bool, now: u64) -> Result<(), KvError> {
    let (stored, _) = kv.scan(TICKET_KEY_PREFIX, Consistency::Stale).await?;
    let rotate = rotate.as_secs().max(1);
    let mut ops = Vec::new();
    let mut fresh = false;
    for (key, record) in stored {
        match load(&key, &record.value) {
            Ok(k) if now < k.not_after => fresh |= now < k.created.saturating_add(rotate),
            // Expired, or not a key at all: nothing opens with it.
            _ => ops.push(Op::Delete {
                key,
                prev_rev: Some(record.mod_rev),
            }),
        }
    }
    if make && !fresh {
        let mut secret = [0u8; KEY_LEN];
        aws_lc_rs::rand::fill(&mut secret)
            .map_err(|_| KvError::InvalidRequest("no random bytes for a ticket key".into()))?;
        let value = Stored {
            key: STANDARD.encode(secret),
            created: now,
            not_after: now.saturating_add(2 * rotate),
        };
        ops.push(Op::Put {
            key: format!("{TICKET_KEY_PREFIX}{:016x}", rand::random::<u64>()),
            value: serde_json::to_vec(&value)
                .map_err(|e| KvError::InvalidRequest(e.to_string()))?,
            prev_rev: Some(0),
        });
    }
    if ops.is_empty() {
        return Ok(());
    }
    let made = make && !fresh;
    kv.write(roo_kv::Request::new(ops)).await?.checked()?;
    if made {
        tracing::info!(accepted_s = 2 * rotate, "new TLS ticket key");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: u64, created: u64, not_after: u64) -> Arc<TicketKey> {
        Arc::new(TicketKey::new(id, &[id as u8; KEY_LEN], created, not_after).unwrap())
    }

    #[test]
    fn seals_with_the_newest_standing_key_and_opens_while_it_stands() {
        let mut keys = TicketKeys::default();
        keys.insert(key(1, 100, 300));
        keys.insert(key(2, 200, 400));
        assert_eq!(keys.sealing(250).map(|k| k.id), Some(2));
        let ticket = keys.sealing(250).unwrap().seal(b"session").unwrap();
        assert_eq!(ticket_id(&ticket), Some(2));
        assert_eq!(
            keys.opening(2, 399).and_then(|k| k.open(&ticket)),
            Some(b"session".to_vec())
        );
        assert!(keys.opening(2, 400).is_none(), "past not_after");
        // Key 1's tickets open until its own end.
        let old = keys.opening(1, 150).unwrap().seal(b"old").unwrap();
        assert!(keys.opening(1, 299).and_then(|k| k.open(&old)).is_some());
        assert!(keys.opening(1, 300).is_none());
        assert_eq!(keys.sealing(400).map(|k| k.id), None);
    }

    #[test]
    fn a_node_without_shared_keys_seals_with_its_own_and_opens_them_after() {
        let shared = Arc::new(ArcSwap::from_pointee(TicketKeys::default()));
        let ticketer = Ticketer::new(shared.clone(), Duration::from_secs(100)).unwrap();
        let own = ticketer.encrypt(b"early").unwrap();
        assert_eq!(ticket_id(&own), Some(ticketer.own.id));
        assert_eq!(ticketer.lifetime(), 100);
        let now = now_s();
        let mut keys = TicketKeys::default();
        keys.insert(key(3, now, now + 50));
        shared.store(Arc::new(keys));
        let sealed = ticketer.encrypt(b"later").unwrap();
        assert_eq!(
            ticket_id(&sealed),
            Some(3),
            "the shared key seals once there is one"
        );
        assert!(
            (49..=50).contains(&ticketer.lifetime()),
            "{}",
            ticketer.lifetime()
        );
        assert_eq!(ticketer.decrypt(&sealed), Some(b"later".to_vec()));
        assert_eq!(ticketer.decrypt(&own), Some(b"early".to_vec()));
        assert_eq!(ticketer.decrypt(b"short"), None);
    }

    #[test]
    fn a_ticket_altered_or_cut_does_not_open() {
        let k = key(7, 0, u64::MAX);
        let ticket = k.seal(b"secret session").unwrap();
        for at in 0..ticket.len() {
            let mut bad = ticket.clone();
            bad[at] ^= 1;
            assert!(
                ticket_id(&bad) != Some(7) || k.open(&bad).is_none(),
                "byte {at}"
            );
        }
        for len in 0..ticket.len() {
            assert!(k.open(&ticket[..len]).is_none(), "cut to {len}");
        }
        assert!(key(8, 0, u64::MAX).open(&ticket).is_none(), "another key");
    }

    #[test]
    fn stored_keys_are_checked() {
        let good = format!(
            r#"{{"key":"{}","created":1,"not_after":2}}"#,
            STANDARD.encode([0u8; KEY_LEN])
        );
        let name = format!("{TICKET_KEY_PREFIX}00000000000000ff");
        assert_eq!(load(&name, good.as_bytes()).unwrap().id(), 255);
        assert!(matches!(
            load(&format!("{TICKET_KEY_PREFIX}ff"), good.as_bytes()),
            Err(TicketError::Name(_))
        ));
        let short = format!(
            r#"{{"key":"{}","created":1,"not_after":2}}"#,
            STANDARD.encode([0u8; 16])
        );
        assert!(matches!(
            load(&name, short.as_bytes()),
            Err(TicketError::Secret)
        ));
        assert!(matches!(load(&name, b"{}"), Err(TicketError::Json(_))));
    }
}
