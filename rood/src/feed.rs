//! Where routes, certificates and TLS ticket keys come from: the replicated KV, turned into
//! [`Change`]s and applied to the in-memory tables the proxy reads.
//!
//! At start (and whenever the watch history no longer reaches back), a local scan of `com.roo.`
//! builds both tables whole; from then on the KV's watch stream feeds every applied change, with
//! no polling and no KV read on a request. The scan is a stale (local) read on purpose: a node
//! without quorum keeps serving what it has.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use roo_kv::{Consistency, EventKind, Kv, KvError};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use roo_acme::store::{HTTP01_PREFIX, TLSALPN01_PREFIX};

use crate::certs::{self, CertTable, CERT_PREFIX};
use crate::routes::{Route, RouteKey, RouteTable, ROUTE_PREFIX};
use crate::tables::Tables;
use crate::tickets::{self, TicketKey, TicketKeys, TICKET_KEY_PREFIX};

/// One change to the proxy's configuration. The KV watch produces them; so will the swarm
/// watcher and config files, through the KV.
#[derive(Debug, Clone)]
pub enum Change {
    SetRoute(RouteKey, Arc<Route>),
    RemoveRoute(RouteKey),
    SetCert(String, Arc<CertifiedKey>),
    RemoveCert(String),
    /// An HTTP-01 token and its key authorization.
    SetHttpChallenge(String, String),
    RemoveHttpChallenge(String),
    /// A TLS-ALPN-01 certificate for a host.
    SetTlsChallenge(String, Arc<CertifiedKey>),
    RemoveTlsChallenge(String),
    SetTicketKey(Arc<TicketKey>),
    RemoveTicketKey(u64),
}

/// The change a KV key and value (None: deleted) make, if the key is a route, a certificate or
/// an ACME challenge; an error for a value that must not be served. The API refuses such values
/// with the same check; one that is stored anyway (by an older version) is logged and left out,
/// and the key keeps serving what it had.
pub fn change_from_kv(key: &str, value: Option<&[u8]>) -> Option<Result<Change, String>> {
    if let Some(token) = key.strip_prefix(HTTP01_PREFIX) {
        if !roo_acme::challenge::valid_token(token) {
            return Some(Err(format!("invalid ACME token in {key:?}")));
        }
        return Some(match value {
            None => Ok(Change::RemoveHttpChallenge(token.to_string())),
            Some(v) => std::str::from_utf8(v)
                .map(|auth| Change::SetHttpChallenge(token.to_string(), auth.to_string()))
                .map_err(|_| "key authorization is not text".to_string()),
        });
    }
    if key.starts_with(TLSALPN01_PREFIX) {
        let host = match certs::key_host(key, TLSALPN01_PREFIX) {
            Ok(h) => h,
            Err(e) => return Some(Err(e.to_string())),
        };
        return Some(match value {
            None => Ok(Change::RemoveTlsChallenge(host)),
            Some(v) => certs::load_challenge(v)
                .map(|c| Change::SetTlsChallenge(host, c))
                .map_err(|e| e.to_string()),
        });
    }
    if key.starts_with(ROUTE_PREFIX) {
        let route_key = match RouteKey::parse(key) {
            Ok(k) => k,
            Err(e) => return Some(Err(e.to_string())),
        };
        return Some(match value {
            None => Ok(Change::RemoveRoute(route_key)),
            Some(v) => Route::parse(v)
                .map(|mut r| {
                    r.name = crate::routes::write::route_name(&route_key).into();
                    Change::SetRoute(route_key, Arc::new(r))
                })
                .map_err(|e| e.to_string()),
        });
    }
    if key.starts_with(TICKET_KEY_PREFIX) {
        return Some(
            match value {
                None => tickets::key_id(key).map(Change::RemoveTicketKey),
                Some(v) => tickets::load(key, v).map(Change::SetTicketKey),
            }
            .map_err(|e| e.to_string()),
        );
    }
    if key.starts_with(CERT_PREFIX) {
        let host = match certs::key_host(key, CERT_PREFIX) {
            Ok(h) => h,
            Err(e) => return Some(Err(e.to_string())),
        };
        return Some(match value {
            None => Ok(Change::RemoveCert(host)),
            Some(v) => certs::load(&host, v)
                .map(|c| Change::SetCert(host, c))
                .map_err(|e| e.to_string()),
        });
    }
    None
}

/// Applies `changes` to copies of `tables` and publishes them.
fn apply(tables: &Tables, changes: Vec<Change>) {
    let mut routes: Option<RouteTable> = None;
    let mut certs: Option<CertTable> = None;
    let mut http01: Option<HashMap<String, String>> = None;
    let mut ticket_keys: Option<TicketKeys> = None;
    for change in changes {
        match change {
            Change::SetHttpChallenge(t, a) => {
                http01
                    .get_or_insert_with(|| (**tables.http01.load()).clone())
                    .insert(t, a);
            }
            Change::RemoveHttpChallenge(t) => {
                http01
                    .get_or_insert_with(|| (**tables.http01.load()).clone())
                    .remove(&t);
            }
            Change::SetTlsChallenge(h, c) => certs
                .get_or_insert_with(|| (**tables.certs.load()).clone())
                .insert_challenge(h, c),
            Change::RemoveTlsChallenge(h) => certs
                .get_or_insert_with(|| (**tables.certs.load()).clone())
                .remove_challenge(&h),
            Change::SetRoute(k, r) => routes
                .get_or_insert_with(|| (**tables.routes.load()).clone())
                .insert(k, r),
            Change::RemoveRoute(k) => routes
                .get_or_insert_with(|| (**tables.routes.load()).clone())
                .remove(&k),
            Change::SetCert(h, c) => certs
                .get_or_insert_with(|| (**tables.certs.load()).clone())
                .insert(h, c),
            Change::RemoveCert(h) => certs
                .get_or_insert_with(|| (**tables.certs.load()).clone())
                .remove(&h),
            Change::SetTicketKey(k) => ticket_keys
                .get_or_insert_with(|| (**tables.tickets.load()).clone())
                .insert(k),
            Change::RemoveTicketKey(id) => ticket_keys
                .get_or_insert_with(|| (**tables.tickets.load()).clone())
                .remove(id),
        }
    }
    if let Some(r) = routes {
        tables.routes.store(Arc::new(r));
    }
    if let Some(c) = certs {
        tables.certs.store(Arc::new(c));
    }
    if let Some(h) = http01 {
        tables.http01.store(Arc::new(h));
    }
    if let Some(k) = ticket_keys {
        tables.tickets.store(Arc::new(k));
    }
    tables.published();
}

const PREFIX: &str = "com.roo.";
/// The most changes applied at once.
const BATCH: usize = 4096;

/// Keeps `tables` equal to the KV until `shutdown`.
pub async fn run(kv: Kv, tables: Arc<Tables>, shutdown: CancellationToken) {
    tokio::select! {
        _ = follow(&kv, &tables) => {}
        _ = shutdown.cancelled() => {}
    }
}

async fn follow(kv: &Kv, tables: &Tables) {
    loop {
        let rev = match load_all(kv, tables).await {
            Ok(rev) => rev,
            Err(e) => {
                tracing::error!(error = %e, "reading routes and certificates");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut watch = match kv.watch(PREFIX, Some(rev)) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "watching routes; reading them again");
                continue;
            }
        };
        loop {
            // A burst of writes becomes one new snapshot, not one for each.
            match watch.next_batch(BATCH).await {
                Ok(events) => {
                    let changes: Vec<Change> = events
                        .iter()
                        .filter_map(|ev| {
                            let value = match ev.kind {
                                EventKind::Put => ev.value.as_deref(),
                                EventKind::Delete => None,
                            };
                            checked(&ev.key, value)
                        })
                        .collect();
                    if !changes.is_empty() {
                        apply(tables, changes);
                    }
                }
                Err(KvError::Shutdown) => return,
                Err(e) => {
                    tracing::info!(error = %e, "route watch ended; reading routes again");
                    break;
                }
            }
        }
    }
}

/// Builds the tables from a local scan; returns the revision to watch from.
async fn load_all(kv: &Kv, tables: &Tables) -> Result<u64, KvError> {
    let (records, rev) = kv.scan(PREFIX, Consistency::Stale).await?;
    let mut routes = RouteTable::default();
    let mut certs = CertTable::default();
    let mut http01 = HashMap::new();
    let mut ticket_keys = TicketKeys::default();
    for (key, record) in records {
        match checked(&key, Some(&record.value)) {
            Some(Change::SetRoute(k, r)) => routes.insert(k, r),
            Some(Change::SetCert(h, c)) => certs.insert(h, c),
            Some(Change::SetTlsChallenge(h, c)) => certs.insert_challenge(h, c),
            Some(Change::SetHttpChallenge(t, a)) => {
                http01.insert(t, a);
            }
            Some(Change::SetTicketKey(k)) => ticket_keys.insert(k),
            _ => {}
        }
    }
    tracing::info!(
        routes = routes.len(),
        certificates = certs.len(),
        ticket_keys = ticket_keys.len(),
        rev,
        "routes, certificates and ticket keys loaded"
    );
    tables.routes.store(Arc::new(routes));
    tables.certs.store(Arc::new(certs));
    tables.http01.store(Arc::new(http01));
    tables.tickets.store(Arc::new(ticket_keys));
    tables.published();
    Ok(rev)
}

/// [`change_from_kv`], logging refused values (the key keeps what it had: one bad write does not
/// take a working route or certificate down on every node).
fn checked(key: &str, value: Option<&[u8]>) -> Option<Change> {
    match change_from_kv(key, value)? {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(%key, error = %e, "invalid value stored; serving what the key had before");
            None
        }
    }
}
