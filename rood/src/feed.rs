//! Where routes and certificates come from: the replicated KV, turned into [`Change`]s and
//! applied to the in-memory tables the proxy reads.
//!
//! At start (and whenever the watch history no longer reaches back), a local scan of `com.roo.`
//! builds both tables whole; from then on the KV's watch stream feeds every applied change, with
//! no polling and no KV read on a request. The scan is a stale (local) read on purpose: a node
//! without quorum keeps serving what it has.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use roo_kv::{Consistency, EventKind, Kv, KvError};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use crate::certs::{self, CertTable, CERT_PREFIX};
use crate::routes::{Route, RouteKey, RouteTable, ROUTE_PREFIX};

/// One change to the proxy's configuration. The KV watch produces them; so will the swarm
/// watcher and config files, through the KV.
#[derive(Debug, Clone)]
pub enum Change {
    SetRoute(RouteKey, Route),
    RemoveRoute(RouteKey),
    SetCert(String, Arc<CertifiedKey>),
    RemoveCert(String),
}

/// The change a KV key and value (None: deleted) make, if the key is a route or a certificate.
/// A bad value is an error (logged by the caller); the key's previous route or certificate is
/// then removed, so the table matches what the KV says.
pub fn change_from_kv(key: &str, value: Option<&[u8]>) -> Option<Result<Change, String>> {
    if key.starts_with(ROUTE_PREFIX) {
        let route_key = match RouteKey::parse(key) {
            Ok(k) => k,
            Err(e) => return Some(Err(e.to_string())),
        };
        return Some(match value {
            None => Ok(Change::RemoveRoute(route_key)),
            Some(v) => Route::parse(v)
                .map(|r| Change::SetRoute(route_key, r))
                .map_err(|e| e.to_string()),
        });
    }
    if key.starts_with(CERT_PREFIX) {
        let host = match certs::cert_host(key) {
            Ok(h) => h,
            Err(e) => return Some(Err(e.to_string())),
        };
        return Some(match value {
            None => Ok(Change::RemoveCert(host)),
            Some(v) => certs::load(v)
                .map(|c| Change::SetCert(host, c))
                .map_err(|e| e.to_string()),
        });
    }
    None
}

/// The tables the proxy reads, swapped whole on every change.
#[derive(Default)]
pub struct Tables {
    pub routes: ArcSwap<RouteTable>,
    pub certs: Arc<ArcSwap<CertTable>>,
}

impl Tables {
    /// Applies `changes` to copies of the tables and publishes them.
    pub fn apply(&self, changes: Vec<Change>) {
        let mut routes: Option<RouteTable> = None;
        let mut certs: Option<CertTable> = None;
        for change in changes {
            match change {
                Change::SetRoute(k, r) => routes
                    .get_or_insert_with(|| (**self.routes.load()).clone())
                    .insert(k, r),
                Change::RemoveRoute(k) => routes
                    .get_or_insert_with(|| (**self.routes.load()).clone())
                    .remove(&k),
                Change::SetCert(h, c) => certs
                    .get_or_insert_with(|| (**self.certs.load()).clone())
                    .insert(h, c),
                Change::RemoveCert(h) => certs
                    .get_or_insert_with(|| (**self.certs.load()).clone())
                    .remove(&h),
            }
        }
        if let Some(r) = routes {
            self.routes.store(Arc::new(r));
        }
        if let Some(c) = certs {
            self.certs.store(Arc::new(c));
        }
    }
}

const PREFIX: &str = "com.roo.";

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
            match watch.next().await {
                Ok(ev) => {
                    let value = match ev.kind {
                        EventKind::Put => ev.value.as_deref(),
                        EventKind::Delete => None,
                    };
                    if let Some(change) = checked(&ev.key, value) {
                        tables.apply(vec![change]);
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

/// Builds both tables from a local scan; returns the revision to watch from.
async fn load_all(kv: &Kv, tables: &Tables) -> Result<u64, KvError> {
    let (records, rev) = kv.scan(PREFIX, Consistency::Stale).await?;
    let mut routes = RouteTable::default();
    let mut certs = CertTable::default();
    for (key, record) in records {
        match checked(&key, Some(&record.value)) {
            Some(Change::SetRoute(k, r)) => routes.insert(k, r),
            Some(Change::SetCert(h, c)) => certs.insert(h, c),
            _ => {}
        }
    }
    tracing::info!(
        routes = routes.len(),
        certificates = certs.len(),
        rev,
        "routes and certificates loaded"
    );
    tables.routes.store(Arc::new(routes));
    tables.certs.store(Arc::new(certs));
    Ok(rev)
}

/// [`change_from_kv`], logging refused values; a refused value removes what the key had.
fn checked(key: &str, value: Option<&[u8]>) -> Option<Change> {
    match change_from_kv(key, value)? {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(%key, error = %e, "ignoring invalid route or certificate");
            change_from_kv(key, None).and_then(Result::ok)
        }
    }
}
