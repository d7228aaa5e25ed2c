//! What nodes answer the CA with.
//!
//! HTTP-01: the CA fetches `http://<host>/.well-known/acme-challenge/<token>` and expects the key
//! authorization. TLS-ALPN-01: the CA connects to `<host>:443` offering only the `acme-tls/1`
//! protocol and expects a self-signed certificate for the host carrying the SHA-256 digest of the
//! key authorization in the `acmeIdentifier` extension (RFC 8737). The issuer puts both in the
//! store; every node serves them from its copy.

use rcgen::{CertificateParams, CustomExtension, KeyPair};

use crate::{AcmeError, StoredCert};

/// Path prefix of HTTP-01 requests.
pub const HTTP01_PATH: &str = "/.well-known/acme-challenge/";

/// ALPN protocol of TLS-ALPN-01 handshakes.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// True for a token the CA could have sent: base64url characters only.
pub fn valid_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 256
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The TLS-ALPN-01 certificate for `host` given the key authorization's digest.
pub fn tls_alpn01_cert(host: &str, digest: &[u8]) -> Result<StoredCert, AcmeError> {
    let rcgen_err = |e: rcgen::Error| AcmeError::Certificate(format!("TLS-ALPN-01: {e}"));
    let mut params = CertificateParams::new(vec![host.to_string()]).map_err(rcgen_err)?;
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    let key = KeyPair::generate().map_err(rcgen_err)?;
    let cert = params.self_signed(&key).map_err(rcgen_err)?;
    Ok(StoredCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_after: None,
        source: Some("acme-tls-alpn-01".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        assert!(valid_token("LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"));
        assert!(!valid_token(""));
        assert!(!valid_token("../etc"));
        assert!(!valid_token("a b"));
    }

    #[test]
    fn tls_alpn_certificate_carries_the_digest() {
        let digest = [7u8; 32];
        let stored = tls_alpn01_cert("a.test", &digest).unwrap();
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(stored.cert_pem.as_bytes())
            .map(|d: rustls::pki_types::CertificateDer<'static>| d)
            .unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        // id-pe-acmeIdentifier, critical, an OCTET STRING of the digest.
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .unwrap();
        assert!(ext.critical);
        assert_eq!(&ext.value[2..], &digest);
    }
}
