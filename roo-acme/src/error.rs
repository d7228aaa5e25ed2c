//! The error type of the ACME layer.

/// Why getting a certificate failed.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("ACME: {0}")]
    Acme(#[from] instant_acme::Error),
    #[error("challenge for {host} failed: {detail}")]
    Challenge { host: String, detail: String },
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("{0} timed out")]
    Timeout(&'static str),
    #[error("setting: {0}")]
    Config(String),
}
