//! Certificate checks: the PEM parses, the key matches the leaf, and the leaf is within its
//! validity period (expiring within 14 days is a warning).
//!
//! The PEM text is re-encoded from the parsed DER blocks, so what reaches Envoy is exactly what was
//! checked, with no stray text between blocks, and whitespace changes don't change the hash.

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer};

pub const MAX_CERT_PEM: usize = 64 * 1024;
pub const MAX_KEY_PEM: usize = 16 * 1024;
pub const EXPIRY_WARNING_S: i64 = 14 * 24 * 3600;

/// A checked certificate chain and key.
#[derive(Debug, Clone)]
pub struct CheckedPair {
    pub certificate_pem: String,
    pub private_key_pem: String,
    pub not_after: i64,
    /// Set when the leaf expires within 14 days.
    pub expiry_warning: Option<String>,
}

/// What went wrong, and in which of the two fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairError {
    Certificate(String),
    Key(String),
}

/// Parses the certificate chain (leaf first).
pub fn parse_chain(pem_text: &str) -> Result<(Vec<Vec<u8>>, String), String> {
    if pem_text.len() > MAX_CERT_PEM {
        return Err(format!("is {} bytes; at most 64 KiB", pem_text.len()));
    }
    let blocks = pem::parse_many(pem_text).map_err(|e| format!("is not valid PEM: {e}"))?;
    if blocks.is_empty() {
        return Err("holds no PEM block; expected -----BEGIN CERTIFICATE-----".into());
    }
    let mut ders = Vec::with_capacity(blocks.len());
    for (i, b) in blocks.iter().enumerate() {
        if b.tag() != "CERTIFICATE" {
            return Err(format!(
                "block {} is {:?}; only CERTIFICATE blocks belong here (the key goes in privateKeyPem)",
                i + 1,
                b.tag()
            ));
        }
        let cert = match x509_parser::parse_x509_certificate(b.contents()) {
            Ok(([], cert)) => cert,
            Ok((rest, _)) => {
                return Err(format!(
                    "certificate {} has {} bytes after its end",
                    i + 1,
                    rest.len()
                ))
            }
            Err(e) => return Err(format!("certificate {} does not parse: {e}", i + 1)),
        };
        // Envoy (BoringSSL) reads certificates as strict DER; x509-parser is lenient (found by
        // fuzzing: a long-form length inside the subject's name), so the encoding is checked
        // with a strict decoder too.
        if let Err(e) = <x509_cert::Certificate as x509_cert::der::Decode>::from_der(b.contents()) {
            return Err(format!(
                "certificate {} is not valid DER ({e}); Envoy would refuse it",
                i + 1
            ));
        }
        // x509-parser keeps going past an extension it cannot read; Envoy refuses the whole
        // certificate (found by fuzzing: a damaged basicConstraints).
        for ext in cert.extensions() {
            if let Some(e) = ext.parsed_extension().error() {
                return Err(format!(
                    "certificate {} has an extension ({}) that does not parse: {e}",
                    i + 1,
                    ext.oid
                ));
            }
        }
        ders.push(b.contents().to_vec());
    }
    let text = pem::encode_many_config(
        &blocks,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    );
    Ok((ders, text))
}

/// Parses the private key: one PKCS#8, PKCS#1 (RSA) or SEC1 (EC) block, unencrypted.
fn parse_key(pem_text: &str) -> Result<(PrivateKeyDer<'static>, String), String> {
    if pem_text.len() > MAX_KEY_PEM {
        return Err(format!("is {} bytes; at most 16 KiB", pem_text.len()));
    }
    let blocks = pem::parse_many(pem_text).map_err(|e| format!("is not valid PEM: {e}"))?;
    let [block] = blocks.as_slice() else {
        return Err(format!(
            "must hold exactly one PEM key block, found {}",
            blocks.len()
        ));
    };
    let der = block.contents().to_vec();
    let key = match block.tag() {
        "PRIVATE KEY" => PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der)),
        "RSA PRIVATE KEY" => PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der)),
        "EC PRIVATE KEY" => PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(der)),
        "ENCRYPTED PRIVATE KEY" => {
            return Err("is encrypted; give the key unencrypted (it is stored mode 0600)".into())
        }
        other => return Err(format!("is a {other:?} block; expected PRIVATE KEY")),
    };
    if let Some(e) = rsa_key_error(&key) {
        return Err(e);
    }
    let text = pem::encode_config(
        block,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    );
    Ok((key, text))
}

/// Checks a certificate chain and its key together. `now` is Unix seconds.
pub fn check_pair(cert_pem: &str, key_pem: &str, now: i64) -> Result<CheckedPair, Vec<PairError>> {
    let mut errors = Vec::new();
    let chain = parse_chain(cert_pem).map_err(PairError::Certificate);
    let key = parse_key(key_pem).map_err(PairError::Key);
    let (chain, key) = match (chain, key) {
        (Ok(c), Ok(k)) => (c, k),
        (c, k) => {
            errors.extend(c.err());
            errors.extend(k.err());
            return Err(errors);
        }
    };
    let (ders, certificate_pem) = chain;
    let (key, private_key_pem) = key;

    // parse_chain has parsed every block already; parsing the leaf again is cheap and avoids
    // holding borrowed certificates across the function.
    let leaf = match x509_parser::parse_x509_certificate(&ders[0]) {
        Ok((_, leaf)) => leaf,
        Err(e) => return Err(vec![PairError::Certificate(format!("does not parse: {e}"))]),
    };
    let not_before = leaf.validity().not_before.timestamp();
    let not_after = leaf.validity().not_after.timestamp();
    let mut expiry_warning = None;
    if not_after < now {
        errors.push(PairError::Certificate(format!(
            "expired on {} (leaf certificate notAfter); renew it",
            leaf.validity().not_after
        )));
    } else if not_after - now < EXPIRY_WARNING_S {
        expiry_warning = Some(format!(
            "expires on {}, within 14 days; renew it soon",
            leaf.validity().not_after
        ));
    }
    if not_before > now {
        errors.push(PairError::Certificate(format!(
            "is not valid before {} (leaf certificate notBefore)",
            leaf.validity().not_before
        )));
    }

    match rustls::crypto::ring::sign::any_supported_type(&key) {
        Err(e) => errors.push(PairError::Key(format!(
            "is not a supported key (RSA of 2048 bits or more, ECDSA P-256 or P-384, or Ed25519): {e}"
        ))),
        Ok(signer) => match signer.public_key() {
            Some(spki) if spki.as_ref() == leaf.tbs_certificate.subject_pki.raw => {}
            Some(_) => errors.push(PairError::Key(
                "does not match the certificate (the leaf's public key differs)".into(),
            )),
            None => errors.push(PairError::Key(
                "cannot be compared with the certificate (no public key)".into(),
            )),
        },
    }

    if errors.is_empty() {
        Ok(CheckedPair {
            certificate_pem,
            private_key_pem,
            not_after,
            expiry_warning,
        })
    } else {
        Err(errors)
    }
}

/// The RSA private key's own consistency, as Envoy (BoringSSL) checks it when it loads the key:
/// ring signs with the CRT values alone and never looks at the private exponent, so a key whose
/// `d` or CRT values were damaged passed here and failed in Envoy (found by fuzzing). `None` for
/// a consistent key, and for any other kind of key.
fn rsa_key_error(key: &PrivateKeyDer<'_>) -> Option<String> {
    use num_bigint::BigUint;
    use pkcs1::der::Decode;
    const RSA_ENCRYPTION: pkcs8::ObjectIdentifier =
        pkcs8::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
    let pkcs1_der = match key {
        PrivateKeyDer::Pkcs1(k) => k.secret_pkcs1_der(),
        PrivateKeyDer::Pkcs8(k) => match pkcs8::PrivateKeyInfo::from_der(k.secret_pkcs8_der()) {
            Ok(info) if info.algorithm.oid == RSA_ENCRYPTION => info.private_key,
            Ok(_) => return None,
            Err(e) => return Some(format!("is not a valid PKCS#8 key: {e}")),
        },
        _ => return None,
    };
    let k = match pkcs1::RsaPrivateKey::from_der(pkcs1_der) {
        Ok(k) => k,
        Err(e) => return Some(format!("is not a valid RSA key: {e}")),
    };
    let int = |u: pkcs1::UintRef<'_>| BigUint::from_bytes_be(u.as_bytes());
    let (n, e, d) = (
        int(k.modulus),
        int(k.public_exponent),
        int(k.private_exponent),
    );
    let (p, q) = (int(k.prime1), int(k.prime2));
    let (dp, dq, qinv) = (int(k.exponent1), int(k.exponent2), int(k.coefficient));
    let one = BigUint::from(1u8);
    if p <= one || q <= one || &p * &q != n {
        return Some(
            "is not a consistent RSA key: its primes do not multiply to its modulus".into(),
        );
    }
    let (p1, q1) = (&p - &one, &q - &one);
    if (&d * &e) % &p1 != one || (&d * &e) % &q1 != one {
        return Some(
            "is not a consistent RSA key: its private exponent does not invert the public one"
                .into(),
        );
    }
    if &d % &p1 != dp || &d % &q1 != dq || (&qinv * &q) % &p != one {
        return Some("is not a consistent RSA key: its CRT values are wrong".into());
    }
    None
}
