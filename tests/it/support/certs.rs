//! Test certificates, made fresh with rcgen (self-signed, ECDSA P-256 unless asked otherwise).

use rcgen::{CertificateParams, KeyPair};
use time::{Duration, OffsetDateTime};

#[derive(Debug, Clone)]
pub struct TestCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A certificate for `names`, valid from yesterday for a year.
pub fn cert(names: &[&str]) -> TestCert {
    cert_valid(names, -1, 365)
}

/// A certificate valid from `from_days` to `to_days` relative to now (negative = past).
pub fn cert_valid(names: &[&str], from_days: i64, to_days: i64) -> TestCert {
    let key = KeyPair::generate().unwrap();
    cert_with_key(names, from_days, to_days, &key)
}

pub fn cert_with_key(names: &[&str], from_days: i64, to_days: i64, key: &KeyPair) -> TestCert {
    let mut params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let now = OffsetDateTime::now_utc();
    params.not_before = now + Duration::days(from_days);
    params.not_after = now + Duration::days(to_days);
    let cert = params.self_signed(key).unwrap();
    TestCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// A key that belongs to no certificate (for "key does not match").
pub fn other_key_pem() -> String {
    KeyPair::generate().unwrap().serialize_pem()
}
