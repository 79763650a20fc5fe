//! The `acme` section: the CA of managed certificates and how often to try it.

use anyhow::bail;
use serde::Deserialize;
use std::path::PathBuf;

/// Managed certificates: https rules and domains without `tls` get theirs from this ACME CA,
/// validated by HTTP-01 on `envoy.redirect_port`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcmeSettings {
    /// The CA's directory URL (https).
    pub directory_url: String,
    /// Contact addresses for the account, e.g. `mailto:ops@example.com`.
    pub contact: Vec<String>,
    /// External account binding, for CAs that require one.
    pub external_account: Option<ExternalAccount>,
    /// Trust only this CA certificate (PEM) for the ACME server's own TLS: for test CAs such as
    /// Pebble. Absent: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Renew when this fraction of the lifetime has passed (the issue says two thirds).
    pub renew_at: f64,
    /// First wait after a failed attempt, doubled each time up to `retry_max_s`.
    pub retry_min_s: u32,
    pub retry_max_s: u32,
    /// Bound on one whole issuance (order, challenges, finalisation, download).
    pub order_timeout_s: u32,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalAccount {
    pub kid: String,
    /// The base64url HMAC key the CA gave.
    pub hmac_key: String,
}

pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

impl Default for AcmeSettings {
    fn default() -> Self {
        AcmeSettings {
            directory_url: LETS_ENCRYPT.into(),
            contact: Vec::new(),
            external_account: None,
            ca_file: None,
            renew_at: 2.0 / 3.0,
            retry_min_s: 60,
            retry_max_s: 6 * 3600,
            order_timeout_s: 300,
        }
    }
}

impl AcmeSettings {
    pub(super) fn check(&self) -> anyhow::Result<()> {
        let a = self;
        if !a.directory_url.starts_with("https://") {
            bail!(
                "acme.directory_url: {:?} must be an https URL",
                a.directory_url
            );
        }
        for (i, c) in a.contact.iter().enumerate() {
            let ok = c
                .strip_prefix("mailto:")
                .is_some_and(|m| m.contains('@') && !m.contains([',', ' ', '\n']));
            if !ok {
                bail!("acme.contact[{i}]: {c:?} must be a mailto: address");
            }
        }
        if let Some(e) = &a.external_account {
            if e.kid.is_empty() {
                bail!("acme.external_account.kid: must not be empty");
            }
            let key_ok = !e.hmac_key.is_empty()
                && e.hmac_key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=');
            if !key_ok {
                bail!("acme.external_account.hmac_key: must be base64url");
            }
        }
        if !(a.renew_at > 0.0 && a.renew_at < 1.0) {
            bail!("acme.renew_at: must be between 0 and 1 (a fraction of the lifetime)");
        }
        if a.retry_min_s == 0 || a.retry_max_s < a.retry_min_s {
            bail!("acme.retry_min_s / retry_max_s: need 1 <= retry_min_s <= retry_max_s");
        }
        if a.order_timeout_s == 0 {
            bail!("acme.order_timeout_s: must be at least 1");
        }
        Ok(())
    }
}
