//! Where certificates come from when nobody put one by hand: the ACME issuer (`roo-acme`), run
//! on the raft leader only, over the replicated KV.
//!
//! Every node serves the challenges and certificates it learns from the KV (see [`crate::feed`]);
//! only the leader talks to the CA. It looks again whenever the routes or certificates change, when
//! a handshake waits for a certificate, and every [`RECONCILE_EVERY`]. When it stops leading, its
//! orders stop, and the next leader resumes them from what they stored.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use roo_acme::{Issuer, Notice, Store, StoreError};
use roo_kv::{Consistency, Kv, KvError};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::events::{self, Event};
use crate::tables::Tables;

/// How often the leader looks for certificates to get or renew, besides on changes and when
/// one falls due.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(10);
/// Shortest pause between two looks.
const MIN_WAIT: Duration = Duration::from_millis(200);

/// The KV as the issuer's store.
#[derive(Clone)]
pub struct KvStore(pub Kv);

fn store_error(e: KvError) -> StoreError {
    StoreError(e.to_string())
}

impl Store for KvStore {
    /// The issuer runs on the leader, which has applied every write it acknowledged: a local
    /// read is current there and costs no round trip.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let record = self
            .0
            .get(key, Consistency::Stale)
            .await
            .map_err(store_error)?;
        Ok(record.map(|r| r.value))
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        self.0.put(key, value, None).await.map_err(store_error)?;
        Ok(())
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<bool, StoreError> {
        match self.0.put(key, value, Some(0)).await {
            Ok(_) => Ok(true),
            Err(KvError::Conflict { .. }) => Ok(false),
            Err(e) => Err(store_error(e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.0.delete(key, None).await.map_err(store_error)?;
        Ok(())
    }

    /// Into the activity stream: `certificate.ordered|issued|renewed|failed`.
    async fn tell(&self, notice: Notice) {
        let (kind, host, detail) = match notice {
            Notice::Ordered { host, url } => ("certificate.ordered", host, json!({"order": url})),
            Notice::Issued {
                host,
                renewal,
                issuer,
                not_after,
            } => {
                let kind = if renewal {
                    "certificate.renewed"
                } else {
                    "certificate.issued"
                };
                (
                    kind,
                    host,
                    json!({"issuer": issuer, "not_after": not_after}),
                )
            }
            Notice::Failed {
                host,
                error,
                failures,
                next_attempt,
            } => {
                let next = roo_acme::cert::rfc3339(UNIX_EPOCH + Duration::from_secs(next_attempt));
                let detail = json!({"error": error, "failures": failures, "next_attempt": next});
                ("certificate.failed", host, detail)
            }
        };
        if let Err(e) = events::record(&self.0, Event::new(kind, &host, "acme", detail)).await {
            tracing::warn!(%host, kind, error = %e, "recording a certificate event");
        }
    }
}

/// Runs the issuer whenever this node leads, until `shutdown`.
pub async fn run(
    kv: Kv,
    tables: Arc<Tables>,
    issuer: Issuer<KvStore>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut metrics = kv.raft().metrics();
    while let Some(lead) = crate::leader::term(&kv, &mut metrics, &shutdown).await {
        tracing::info!("leading: the ACME issuer runs on this node");
        let mut changes = tables.subscribe();
        'leading: loop {
            let hosts = tables.routes.load().https_hosts();
            let due = issuer.reconcile(&hosts, &lead).await;
            let wait = due
                .map(|at| at.duration_since(SystemTime::now()).unwrap_or_default())
                .map_or(RECONCILE_EVERY, |d| d.clamp(MIN_WAIT, RECONCILE_EVERY));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                Ok(()) = changes.changed() => {}
                _ = wake.notified() => {}
                _ = lead.cancelled() => break 'leading,
            }
        }
        lead.cancel();
        if shutdown.is_cancelled() {
            return;
        }
        tracing::info!("no longer leading: the ACME issuer stopped on this node");
    }
}
