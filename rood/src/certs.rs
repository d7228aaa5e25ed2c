//! Certificates: `com.roo.cert:<host>` values turned into rustls keys, the table of them the TLS
//! listener reads, and the SNI resolver over it.
//!
//! Manual and ACME certificates are the same JSON ([`roo_acme::StoredCert`]):
//! `{"cert_pem":"<chain>","key_pem":"<key>","not_after":...,"source":"acme"|"manual"}`;
//! `<host>` may be `*.example.com`, which serves one label below `example.com`. The table also
//! holds the TLS-ALPN-01 challenge certificates (`com.roo.acme.tlsalpn01:<host>`), served only to
//! handshakes that offer nothing but the `acme-tls/1` protocol.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use roo_acme::challenge::ACME_TLS_ALPN;

use crate::routes::normalize_host;

pub use roo_acme::store::CERT_PREFIX;
use roo_acme::StoredCert;

/// Why a certificate value was refused.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("invalid host in {0:?}")]
    Host(String),
    #[error("certificate JSON: {0}")]
    Json(String),
    #[error("certificate chain: {0}")]
    Chain(String),
    #[error("private key: {0}")]
    Key(String),
}

/// Parses the host of a `<prefix><host>` key (`com.roo.cert:`, `com.roo.acme.tlsalpn01:`).
pub fn key_host(key: &str, prefix: &str) -> Result<String, CertError> {
    let host = key
        .strip_prefix(prefix)
        .ok_or_else(|| CertError::Host(key.to_string()))?;
    normalize_host(host).map_err(|_| CertError::Host(key.to_string()))
}

/// Turns a stored certificate into a key rustls serves; the key must match the leaf.
pub fn load(value: &[u8]) -> Result<Arc<CertifiedKey>, CertError> {
    let (chain, key) = parse(value)?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let certified =
        CertifiedKey::from_der(chain, key, &provider).map_err(|e| CertError::Key(e.to_string()))?;
    Ok(Arc::new(certified))
}

/// Like [`load`], for a TLS-ALPN-01 certificate: its critical `acmeIdentifier` extension is one
/// the key-match check's certificate parser refuses, so that check is skipped.
pub fn load_challenge(value: &[u8]) -> Result<Arc<CertifiedKey>, CertError> {
    let (chain, key) = parse(value)?;
    let signer = rustls::crypto::aws_lc_rs::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| CertError::Key(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(chain, signer)))
}

fn parse(
    value: &[u8],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CertError> {
    let stored: StoredCert =
        serde_json::from_slice(value).map_err(|e| CertError::Json(e.to_string()))?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(stored.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| CertError::Chain(e.to_string()))?;
    if chain.is_empty() {
        return Err(CertError::Chain("no certificate in cert_pem".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(stored.key_pem.as_bytes())
        .map_err(|e| CertError::Key(e.to_string()))?;
    Ok((chain, key))
}

/// An immutable table of certificates by host, and of TLS-ALPN-01 challenge certificates.
#[derive(Debug, Clone, Default)]
pub struct CertTable {
    certs: HashMap<String, Arc<CertifiedKey>>,
    challenges: HashMap<String, Arc<CertifiedKey>>,
}

impl CertTable {
    pub fn insert_challenge(&mut self, host: String, key: Arc<CertifiedKey>) {
        self.challenges.insert(host, key);
    }

    pub fn remove_challenge(&mut self, host: &str) {
        self.challenges.remove(host);
    }

    /// The TLS-ALPN-01 certificate for an SNI name.
    pub fn challenge(&self, server_name: &str) -> Option<&Arc<CertifiedKey>> {
        self.challenges
            .get(&server_name.trim_end_matches('.').to_ascii_lowercase())
    }

    pub fn insert(&mut self, host: String, key: Arc<CertifiedKey>) {
        self.certs.insert(host, key);
    }

    pub fn remove(&mut self, host: &str) {
        self.certs.remove(host);
    }

    pub fn len(&self) -> usize {
        self.certs.len()
    }

    /// Every host and its certificate.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Arc<CertifiedKey>)> {
        self.certs.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }

    /// The certificate for an SNI name: exact, else the wildcard one label up.
    pub fn lookup(&self, server_name: &str) -> Option<&Arc<CertifiedKey>> {
        let name = server_name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(k) = self.certs.get(&name) {
            return Some(k);
        }
        let (_, parent) = name.split_once('.')?;
        self.certs.get(&format!("*.{parent}"))
    }
}

/// Chooses the certificate for each TLS handshake from the current table. No SNI, or a name
/// without a certificate: no certificate, so the handshake fails cleanly.
#[derive(Debug)]
pub struct SniResolver {
    table: Arc<ArcSwap<CertTable>>,
}

impl SniResolver {
    pub fn new(table: Arc<ArcSwap<CertTable>>) -> Self {
        SniResolver { table }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?;
        if is_acme_tls(&hello) {
            return self.table.load().challenge(name).cloned();
        }
        let found = self.table.load().lookup(name).cloned();
        if found.is_none() {
            tracing::debug!(sni = name, "no certificate");
        }
        found
    }
}

/// True for a TLS-ALPN-01 validation handshake: `acme-tls/1` is the only protocol offered.
pub fn is_acme_tls(hello: &ClientHello<'_>) -> bool {
    hello.alpn().is_some_and(|mut protocols| {
        protocols.next() == Some(ACME_TLS_ALPN) && protocols.next().is_none()
    })
}

/// The TLS server configuration of the HTTPS listener.
///
/// Defaults: TLS 1.2 and 1.3 only (rustls has nothing older), aws-lc-rs crypto, ALPN `h2` then
/// `http/1.1` (and `acme-tls/1` for the CA's TLS-ALPN-01 validations, which the listener closes
/// right after the handshake), certificate per SNI from `table`.
pub fn server_config(
    table: Arc<ArcSwap<CertTable>>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver::new(table)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    Ok(config)
}
