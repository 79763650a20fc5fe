//! The load-balancer specification: parse the API's JSON, normalise it, validate it, hash it.
//!
//! Owns: the contract's rules (`docs/contract.md`) and the
//! canonical form the hash is taken over. Does not: fetch anything, know Envoy's format, or touch
//! the disk. The only clock it reads is the `now` its caller passes, for certificate validity.

mod address;
mod error;
mod hash;
mod model;
mod parse;
mod path;
mod tls;

pub use address::{backend_address, dns_name_error, source_cidr};
pub use error::{shown, Finding, SpecErrors};
pub use hash::{ConfigHash, NotAHash};
pub use model::*;
pub use parse::{
    Options, DEFAULT_COOKIE_NAME, DEFAULT_MAX_CONNECTIONS, MAX_BACKENDS, MAX_BODY_BYTES,
    MAX_DOMAINS, MAX_RULES, MAX_SOURCES,
};
pub use tls::check_pair;

use sha2::{Digest, Sha256};

/// A spec that passed validation, with what validation had to say short of refusing it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub spec: Spec,
    pub warnings: Vec<Finding>,
}

/// Parses, normalises and validates a spec: the API's enveloped response or the bare `data`
/// object. Returns every error at once, in document order.
pub fn load(input: &[u8], opts: &Options) -> Result<Loaded, SpecErrors> {
    let mut walker = parse::Walker {
        opts,
        f: error::Findings::default(),
        tls_checked: Default::default(),
    };
    let spec = parse::document(input, &mut walker.f).and_then(|doc| walker.spec(&doc));
    match spec {
        Some(spec) if walker.f.errors.is_empty() => Ok(Loaded {
            spec,
            warnings: walker.f.warnings,
        }),
        _ => Err(SpecErrors(walker.f.errors)),
    }
}

/// The certificate id of a managed certificate for `name`: the same through every renewal, so
/// a renewal replaces the secret Envoy serves without touching the listener.
pub fn managed_id(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    format!("managed-{}", &hex::encode(digest)[..16])
}

/// A managed certificate as the spec carries one: checked like a spec's own (`check_pair`),
/// with the contract's default versions and ALPN.
pub fn managed_tls(name: &str, cert_pem: &str, key_pem: &str, now: i64) -> Result<Tls, String> {
    let pair = tls::check_pair(cert_pem, key_pem, now).map_err(|errors| {
        errors
            .iter()
            .map(|e| match e {
                tls::PairError::Certificate(m) => format!("certificate {m}"),
                tls::PairError::Key(m) => format!("key {m}"),
            })
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    Ok(Tls {
        id: managed_id(name),
        certificate_pem: pair.certificate_pem,
        private_key_pem: pair.private_key_pem,
        min_version: TlsVersion::V1_2,
        max_version: TlsVersion::V1_3,
        alpn: vec![Alpn::H2, Alpn::Http11],
        not_after: pair.not_after,
    })
}

/// Fills each domain that waits for a managed certificate with the one held for its name; a
/// domain with none stays without (it is not served until one exists).
pub fn fill_managed(spec: &mut Spec, certificates: &std::collections::BTreeMap<String, Tls>) {
    for d in spec.rules.iter_mut().flat_map(|r| r.domains.iter_mut()) {
        if d.managed {
            d.tls = certificates.get(&d.host.to_string()).cloned();
        }
    }
}

/// SHA-256 (hex) over the canonical spec, the template set's version and the agent's version,
/// so that only a change that alters the config (or how it is rendered) gives a new hash.
pub fn config_hash(spec: &Spec, template_version: &str) -> ConfigHash {
    let mut h = Sha256::new();
    h.update(b"vpsie-lb-agent ");
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update(b"\ntemplates ");
    h.update(template_version.as_bytes());
    h.update(b"\n");
    // The canonical form is streamed into the hash rather than built first: at 10,000 backends
    // it is over a megabyte. Serialising plain structs, enums and strings into a hash cannot fail
    // (the test below pins the bytes hashed).
    // (Sha256 is an io::Write; the buffer saves it a call per JSON token.)
    let mut w = std::io::BufWriter::with_capacity(64 * 1024, &mut h);
    let _ = serde_json::to_writer(&mut w, spec);
    let _ = std::io::Write::flush(&mut w);
    drop(w);
    ConfigHash::of(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash is over exactly the header lines and the spec's JSON, whatever the buffering.
    #[test]
    fn the_hash_covers_the_whole_canonical_form() {
        let input = include_bytes!("../../tests/it/data/render-check.json");
        let opts = Options {
            allow_loopback_backends: true,
            redirect_port: 80,
            reserved_ports: Vec::new(),
            now: 0,
        };
        let spec = load(input, &opts).unwrap().spec;
        let canonical = serde_json::to_vec(&spec).unwrap();
        assert!(canonical.len() > 1000);
        let mut h = Sha256::new();
        h.update(format!(
            "vpsie-lb-agent {}\ntemplates t1\n",
            env!("CARGO_PKG_VERSION")
        ));
        h.update(&canonical);
        assert_eq!(config_hash(&spec, "t1"), ConfigHash::of(h));
        assert_ne!(config_hash(&spec, "t1"), config_hash(&spec, "t2"));
    }
}
