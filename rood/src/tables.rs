//! The tables the proxy reads on every request: routes, certificates, ACME challenges and TLS
//! ticket keys, each an immutable snapshot swapped whole. [`crate::feed`] makes and publishes
//! them; the proxy, the API and the metrics only read them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::certs::CertTable;
use crate::routes::RouteTable;
use crate::tickets::TicketKeys;

/// The tables the proxy reads, swapped whole on every change.
pub struct Tables {
    pub routes: ArcSwap<RouteTable>,
    pub certs: Arc<ArcSwap<CertTable>>,
    /// HTTP-01 key authorizations by token.
    pub http01: ArcSwap<HashMap<String, String>>,
    /// The cluster's TLS ticket keys.
    pub tickets: Arc<ArcSwap<TicketKeys>>,
    /// Counts publications; subscribers learn that something changed.
    changed: watch::Sender<u64>,
}

impl Default for Tables {
    fn default() -> Self {
        Tables {
            routes: ArcSwap::default(),
            certs: Arc::default(),
            http01: ArcSwap::default(),
            tickets: Arc::default(),
            changed: watch::channel(0).0,
        }
    }
}

impl Tables {
    /// A receiver that sees each later publication of the tables.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Waits up to `limit` until `found` returns something from the current tables.
    pub async fn wait_for<T>(
        &self,
        limit: Duration,
        found: impl Fn(&Tables) -> Option<T>,
    ) -> Option<T> {
        let mut changes = self.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(t) = found(self) {
                return Some(t);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }

    /// Tells the subscribers that new tables are out.
    pub(crate) fn published(&self) {
        self.changed.send_modify(|n| *n += 1);
    }
}
