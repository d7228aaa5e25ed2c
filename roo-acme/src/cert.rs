//! Certificates as stored and what the issuer needs to know about one.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use instant_acme::CertificateIdentifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use crate::AcmeError;

/// The value of `com.roo.cert:<host>`, the same for ACME and manual certificates:
/// `{"cert_pem":"<chain>","key_pem":"<key>","not_after":...,"source":"acme"|"manual"}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredCert {
    pub cert_pem: String,
    pub key_pem: String,
    /// Informational (RFC 3339 when roo writes it); the certificate itself is authoritative.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl StoredCert {
    /// True when roo-acme obtained it (and so may renew it).
    pub fn is_acme(&self) -> bool {
        self.source.as_deref() == Some("acme")
    }
}

/// What the issuer reads off a leaf certificate.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The issuer's common name, for display.
    pub issuer: String,
    /// The ARI identifier, when the certificate has an authority key identifier.
    pub ari_id: Option<CertificateIdentifier<'static>>,
}

impl CertInfo {
    /// Reads the first certificate of a PEM chain.
    pub fn from_pem(pem: &str) -> Result<CertInfo, AcmeError> {
        let leaf = CertificateDer::pem_slice_iter(pem.as_bytes())
            .next()
            .ok_or_else(|| AcmeError::Certificate("no certificate in the PEM".into()))?
            .map_err(|e| AcmeError::Certificate(format!("PEM: {e}")))?;
        CertInfo::from_der(&leaf)
    }

    pub fn from_der(der: &CertificateDer<'_>) -> Result<CertInfo, AcmeError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| AcmeError::Certificate(format!("X.509: {e}")))?;
        let validity = cert.validity();
        let time = |t: i64| UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
        let issuer = cert
            .issuer()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or("")
            .to_string();
        Ok(CertInfo {
            not_before: time(validity.not_before.timestamp()),
            not_after: time(validity.not_after.timestamp()),
            issuer,
            ari_id: CertificateIdentifier::try_from(der)
                .ok()
                .map(CertificateIdentifier::into_owned),
        })
    }

    /// Two thirds into the certificate's lifetime: when it is renewed unless the CA says
    /// otherwise.
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + lifetime * 2 / 3
    }

    pub fn expired(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }
}

/// Seconds since the Unix epoch.
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// RFC 3339 (UTC) of a time, as written in `not_after`.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = unix(t) as i64;
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(days: i64) -> String {
        let mut params = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now;
        params.not_after = now + time::Duration::days(days);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn renewal_is_two_thirds_into_the_lifetime() {
        let info = CertInfo::from_pem(&self_signed(90)).unwrap();
        let lifetime = info.not_after.duration_since(info.not_before).unwrap();
        assert_eq!(lifetime.as_secs(), 90 * 86400);
        let renew = info.renew_at().duration_since(info.not_before).unwrap();
        assert_eq!(renew.as_secs(), 60 * 86400);
        assert!(!info.expired(SystemTime::now()));
        assert!(info.expired(info.not_after));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(CertInfo::from_pem("").is_err());
        assert!(CertInfo::from_pem(
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        )
        .is_err());
    }

    #[test]
    fn rfc3339_is_utc() {
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(86400)),
            "1970-01-02T00:00:00Z"
        );
    }
}
