//! The storage the issuer keeps its state in, and the keys it uses there.
//!
//! The caller backs [`Store`] with its replicated KV, so every node sees the same account,
//! challenges and certificates. Keys:
//!
//! | key | value |
//! |---|---|
//! | `com.roo.acme.account` | [`AccountRecord`]: directory URL and account credentials |
//! | `com.roo.acme.http01:<token>` | the HTTP-01 key authorization, plain text |
//! | `com.roo.acme.tlsalpn01:<host>` | a [`StoredCert`] for TLS-ALPN-01 |
//! | `com.roo.acme.order:<host>` | [`OrderRecord`]: the order in progress, resumed by a new leader |
//! | `com.roo.acme.status:<host>` | [`HostStatus`]: failures, last error, next attempt |
//! | `com.roo.cert:<host>` | the certificate: a [`StoredCert`] |
//!
//! [`StoredCert`]: crate::StoredCert

use std::future::Future;

use serde::{Deserialize, Serialize};

pub const ACCOUNT_KEY: &str = "com.roo.acme.account";
pub const HTTP01_PREFIX: &str = "com.roo.acme.http01:";
pub const TLSALPN01_PREFIX: &str = "com.roo.acme.tlsalpn01:";
pub const ORDER_PREFIX: &str = "com.roo.acme.order:";
pub const STATUS_PREFIX: &str = "com.roo.acme.status:";
pub const CERT_PREFIX: &str = "com.roo.cert:";

/// A storage failure, as text: the issuer only logs it and tries again later.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// A key-value store shared by every node.
pub trait Store: Clone + Send + Sync + 'static {
    /// The value of `key`, as up to date as the store can tell.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;
    /// Sets `key`; returns once the write is durable cluster-wide.
    fn put(&self, key: &str, value: Vec<u8>)
        -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Sets `key` only if it is absent; false when it was there.
    fn create(
        &self,
        key: &str,
        value: Vec<u8>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    fn delete(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Told of each step of the issuer's work that an operator would want to know of, once per
    /// cluster (only the issuer that runs tells); an activity stream keeps them.
    fn tell(&self, notice: Notice) -> impl Future<Output = ()> + Send {
        let _ = notice;
        async {}
    }
}

/// A step of the issuer's work.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// An order was placed with the CA.
    Ordered { host: String, url: String },
    /// A certificate was stored: the host's first, or a renewal.
    Issued {
        host: String,
        renewal: bool,
        issuer: String,
        /// RFC 3339.
        not_after: String,
    },
    /// An attempt failed; the next is due at `next_attempt` (Unix seconds).
    Failed {
        host: String,
        error: String,
        failures: u32,
        next_attempt: u64,
    },
}

/// The cluster's ACME account.
#[derive(Serialize, Deserialize)]
pub struct AccountRecord {
    pub directory: String,
    pub credentials: instant_acme::AccountCredentials,
}

/// An order that has been placed and not finished.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderRecord {
    pub url: String,
    /// Unix seconds.
    pub created: u64,
    /// The certificate's private key, kept from the moment the CSR is sent so that a new leader
    /// can collect a certificate the old one finalized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_pem: Option<String>,
}

/// How getting a certificate for a host has gone; every node and the API can show it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostStatus {
    /// Failures since the last success.
    pub failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Unix seconds of the last attempt and of the earliest next one.
    pub last_attempt: u64,
    pub next_attempt: u64,
    /// Unix seconds of the last certificate obtained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<u64>,
    /// When the CA's renewal information (ARI) says to renew, and when to ask it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ari_renew_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ari_next_check: Option<u64>,
}

pub fn http01_key(token: &str) -> String {
    format!("{HTTP01_PREFIX}{token}")
}

pub fn tlsalpn01_key(host: &str) -> String {
    format!("{TLSALPN01_PREFIX}{host}")
}

pub fn order_key(host: &str) -> String {
    format!("{ORDER_PREFIX}{host}")
}

pub fn status_key(host: &str) -> String {
    format!("{STATUS_PREFIX}{host}")
}

pub fn cert_key(host: &str) -> String {
    format!("{CERT_PREFIX}{host}")
}

pub(crate) async fn get_json<S: Store, T: serde::de::DeserializeOwned>(
    store: &S,
    key: &str,
) -> Result<Option<T>, StoreError> {
    match store.get(key).await? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError(format!("{key}: {e}"))),
    }
}

pub(crate) fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError(format!("encoding: {e}")))
}
