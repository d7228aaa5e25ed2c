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
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
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

/// Turns the stored certificate of `host` into a key rustls serves: the chain must hold no
/// private key and name `host` (one label below, for `*.` hosts), and the key must match its
/// leaf. What the API refuses to store, and what a node refuses to serve.
pub fn load(host: &str, value: &[u8]) -> Result<Arc<CertifiedKey>, CertError> {
    let (chain, key) = parse(value)?;
    check_chain(host, &chain)?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let certified =
        CertifiedKey::from_der(chain, key, &provider).map_err(|e| CertError::Key(e.to_string()))?;
    Ok(Arc::new(certified))
}

/// Checks what can be checked of a stored certificate without its key (which a read token
/// does not see): the chain parses, holds no private key, and names `host`.
pub fn check_without_key(host: &str, value: &[u8]) -> Result<(), CertError> {
    let stored: StoredCert =
        serde_json::from_slice(value).map_err(|e| CertError::Json(e.to_string()))?;
    check_chain(host, &chain_of(&stored)?)
}

fn check_chain(host: &str, chain: &[CertificateDer<'_>]) -> Result<(), CertError> {
    let leaf = chain
        .first()
        .ok_or_else(|| CertError::Chain("no certificate in cert_pem".into()))?;
    let leaf = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| CertError::Chain(format!("leaf certificate: {e}")))?;
    // A wildcard host is served for any one label below it: the leaf must name such a label.
    let probe = match host.strip_prefix("*.") {
        Some(parent) => format!("roo-wildcard-probe.{parent}"),
        None => host.to_string(),
    };
    let name =
        ServerName::try_from(probe.as_str()).map_err(|_| CertError::Host(host.to_string()))?;
    leaf.verify_is_valid_for_subject_name(&name)
        .map_err(|_| CertError::Chain(format!("the certificate does not name {host}")))
}

/// The chain of a stored certificate, refusing a private key in it: `cert_pem` is shown to
/// readers that must never see one.
fn chain_of(stored: &StoredCert) -> Result<Vec<CertificateDer<'static>>, CertError> {
    if stored.cert_pem.contains("PRIVATE KEY-----") {
        return Err(CertError::Chain(
            "cert_pem holds a private key: it belongs in key_pem alone".into(),
        ));
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(stored.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| CertError::Chain(e.to_string()))?;
    if chain.is_empty() {
        return Err(CertError::Chain("no certificate in cert_pem".into()));
    }
    Ok(chain)
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
    let chain = chain_of(&stored)?;
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

/// The certificate a TLS connection presented, and the name it was chosen for: which hosts
/// the connection may ask for.
#[derive(Debug)]
pub struct Presented {
    sni: Box<str>,
    cert: Arc<CertifiedKey>,
}

impl Presented {
    pub fn new(sni: &str, cert: Arc<CertifiedKey>) -> Self {
        Presented {
            sni: sni.into(),
            cert,
        }
    }

    /// Whether the certificate names `host`: the name the handshake asked for (the common
    /// case, a comparison), else any other name of the certificate (a client that reuses an
    /// HTTP/2 connection for another name of the same certificate, as browsers do).
    pub fn covers(&self, host: &str) -> bool {
        if host.eq_ignore_ascii_case(self.sni.trim_end_matches('.')) {
            return true;
        }
        let (Some(leaf), Ok(name)) = (self.cert.cert.first(), ServerName::try_from(host)) else {
            return false;
        };
        webpki::EndEntityCert::try_from(leaf)
            .is_ok_and(|leaf| leaf.verify_is_valid_for_subject_name(&name).is_ok())
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
/// right after the handshake), certificate per SNI from `table`, session tickets from
/// `ticketer` (None: none, only the node's own session cache). No 0-RTT ([`crate::tickets`]).
pub fn server_config(
    table: Arc<ArcSwap<CertTable>>,
    ticketer: Option<Arc<dyn rustls::server::ProducesTickets>>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver::new(table)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    if let Some(ticketer) = ticketer {
        config.ticketer = ticketer;
    }
    Ok(config)
}
