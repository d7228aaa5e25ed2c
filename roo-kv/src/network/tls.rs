//! Mutual TLS between nodes (`ROO_PEER_CERT`, `ROO_PEER_KEY`, `ROO_PEER_CA`).
//!
//! Every node holds a certificate signed by the cluster's own CA. With peer TLS on, the API port
//! speaks TLS only; a client certificate is asked for but optional at the handshake (operators
//! reach the API with a token and no certificate), and every node-to-node RPC and join requires
//! one that chains to the cluster CA ([`PeerCertificate`] marks such requests). Nodes check each
//! other's chain, not names: in a swarm a node's address changes with every task, so the CA must
//! be one that signs nothing but this cluster's nodes.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    ClientConfig, DigitallySignedStruct, Error, RootCertStore, ServerConfig, SignatureScheme,
};

use crate::KvError;

/// Marks a request that came over a connection whose client certificate chains to the cluster
/// CA; the API server puts it in the request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct PeerCertificate;

/// The TLS settings of a node's peer traffic, both sides. Cheap to clone.
#[derive(Clone)]
pub struct PeerTls {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PeerTls")
    }
}

impl PeerTls {
    /// Reads the node's certificate chain, its key and the cluster CA (all PEM).
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> Result<PeerTls, KvError> {
        let read = |what: &str, path: &Path| {
            std::fs::read(path)
                .map_err(|e| KvError::InvalidRequest(format!("{what} {}: {e}", path.display())))
        };
        PeerTls::from_pem(
            &read("peer certificate", cert)?,
            &read("peer key", key)?,
            &read("peer CA", ca)?,
        )
    }

    /// Like [`PeerTls::load`], from PEM text.
    pub fn from_pem(cert: &[u8], key: &[u8], ca: &[u8]) -> Result<PeerTls, KvError> {
        let bad =
            |what: &str, e: &dyn fmt::Display| KvError::InvalidRequest(format!("{what}: {e}"));
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("peer certificate", &e))?;
        if chain.is_empty() {
            return Err(bad("peer certificate", &"no certificate in the PEM"));
        }
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| bad("peer key", &e))?;
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca) {
            let ca = ca.map_err(|e| bad("peer CA", &e))?;
            roots.add(ca).map_err(|e| bad("peer CA", &e))?;
        }
        if roots.is_empty() {
            return Err(bad("peer CA", &"no certificate in the PEM"));
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());

        let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| bad("peer CA", &e))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("peer TLS", &e))?
            .with_client_cert_verifier(clients)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| bad("peer certificate and key", &e))?;
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];

        let servers = Arc::new(ClusterCaVerifier {
            roots,
            algorithms: provider.signature_verification_algorithms,
        });
        // No ALPN here: the HTTP connector sets the protocols it speaks.
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("peer TLS", &e))?
            .dangerous()
            .with_custom_certificate_verifier(servers)
            .with_client_auth_cert(chain, key)
            .map_err(|e| bad("peer certificate and key", &e))?;
        Ok(PeerTls {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    /// What the API port serves with.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// What a node presents and checks when it calls another.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client.clone()
    }
}

/// Accepts a server whose chain leads to the cluster CA, whatever name it was reached by (see
/// the module's comment). Signatures are checked as rustls's own verifier checks them.
#[derive(Debug)]
struct ClusterCaVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ClusterCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
