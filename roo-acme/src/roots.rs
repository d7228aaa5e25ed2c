//! The roots a TLS client of roo trusts: the system's, plus a PEM file the operator names (a
//! private CA, Pebble's in tests). Used for the CA, for upstreams, for webhook receivers and by
//! rooctl.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

/// The system's roots and every certificate in `extra`; an error names the file and what is
/// wrong with it (unreadable, not PEM, no certificate).
pub fn system_and(extra: Option<&Path>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "loading a system root certificate");
    }
    roots.add_parsable_certificates(native.certs);
    let Some(path) = extra else {
        return Ok(roots);
    };
    let bad = |reason: &dyn std::fmt::Display| format!("{}: {reason}", path.display());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| bad(&e))?;
    if certs.is_empty() {
        return Err(bad(&"no certificate in it"));
    }
    for cert in certs {
        roots.add(cert).map_err(|e| bad(&e))?;
    }
    Ok(roots)
}

/// A TLS client configuration that checks servers against `roots`, with no client certificate.
pub fn client_config(roots: RootCertStore) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_file_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let none = dir.path().join("none.pem");
        assert!(system_and(Some(&none)).unwrap_err().contains("none.pem"));
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem at all\n").unwrap();
        assert!(system_and(Some(&empty))
            .unwrap_err()
            .contains("no certificate"));
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".into()]).unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, ca.cert.pem()).unwrap();
        let with = system_and(Some(&good)).unwrap().len();
        let without = system_and(None).unwrap().len();
        assert_eq!(with, without + 1);
    }
}
