//! A rule's or a domain's `tls`: the certificate and key (checked by `spec::tls`), versions, ALPN.

use super::{kind, Value, Walker, ALPNS, TLS_VERSIONS};
use crate::spec::error::shown;
use crate::spec::model::*;
use crate::spec::path::Path;
use crate::spec::tls;

impl Walker<'_> {
    pub(super) fn tls(&mut self, v: &Value, p: &Path) -> Option<Tls> {
        let obj = self.object(v, p)?;
        let id = self.ident(obj, p, "certificateId", 64);
        let id = self.required(id, obj, p, "certificateId");
        let cert = self.string(obj, p, "certificatePem");
        let cert = self.required(cert, obj, p, "certificatePem");
        let key = self.string(obj, p, "privateKeyPem");
        let key = self.required(key, obj, p, "privateKeyPem");
        let min_version = self.choice(obj, p, "minVersion", TLS_VERSIONS);
        let max_version = self.choice(obj, p, "maxVersion", TLS_VERSIONS);
        if let (Some(min), Some(max)) = (min_version, max_version) {
            if min > max {
                self.f
                    .error(p.field("minVersion"), "must not be above maxVersion");
            }
        }
        let alpn = match self.array(obj, p, "alpn") {
            None => vec![Alpn::H2, Alpn::Http11],
            Some(list) => {
                let ap = p.field("alpn");
                if list.is_empty() {
                    self.f.error(
                        ap,
                        "must name at least one of h2, http/1.1 (or be left out for both)",
                    );
                }
                let mut out = Vec::new();
                for (i, item) in list.iter().enumerate() {
                    let s = item.as_str().unwrap_or("");
                    match ALPNS.iter().find(|(n, _)| *n == s) {
                        Some((_, a)) if out.contains(a) => self
                            .f
                            .error(ap.index(i), format!("{} is listed twice", shown(s))),
                        Some((_, a)) => out.push(*a),
                        None => self.f.error(
                            ap.index(i),
                            format!(
                                "must be h2 or http/1.1, got {}",
                                match item {
                                    Value::Str(s) => shown(s),
                                    other => kind(other).to_owned(),
                                }
                            ),
                        ),
                    }
                }
                out
            }
        };
        let (cert, key) = (cert?, key?);
        // One certificate is often given for many domains (a wildcard, or one per rule): check
        // each distinct pair once.
        let checked = self
            .tls_checked
            .entry(format!("{cert}\0{key}"))
            .or_insert_with(|| tls::check_pair(cert, key, self.opts.now))
            .clone();
        match checked {
            Ok(pair) => {
                if let Some(w) = pair.expiry_warning {
                    self.f.warning(p.field("certificatePem"), w);
                }
                Some(Tls {
                    id: id?,
                    certificate_pem: pair.certificate_pem,
                    private_key_pem: pair.private_key_pem,
                    min_version: min_version.unwrap_or(TlsVersion::V1_2),
                    max_version: max_version.unwrap_or(TlsVersion::V1_3),
                    alpn,
                    not_after: pair.not_after,
                })
            }
            Err(errors) => {
                for e in errors {
                    match e {
                        tls::PairError::Certificate(m) => {
                            self.f.error(p.field("certificatePem"), m)
                        }
                        tls::PairError::Key(m) => self.f.error(p.field("privateKeyPem"), m),
                    }
                }
                None
            }
        }
    }
}
