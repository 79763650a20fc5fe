//! The VPSie API client: fetches this load balancer's spec and posts events.
//!
//! Owns: transport, authentication, the `{error, data}` envelope, ETags, retries, the 10 MiB
//! limit and the SSRF guard. Does not: parse the spec (the spec module does) or queue events.
//!
//! The guard, in three layers: the URL must be https (plain http only in development, and only
//! to a loopback host) and name an allowed host; an IP literal in the URL is judged at once; a
//! host name is judged at connect time by the resolver, on *every* address it resolves to, so
//! DNS rebinding cannot slip a private address in after the check. Redirects are never followed.

use crate::settings::Settings;
use anyhow::Context;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Responses over this are refused whole, never truncated.
pub const MAX_BODY: usize = 10 * 1024 * 1024;
/// Attempts per request on network errors, 5xx and 429.
const ATTEMPTS: u32 = 3;
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot reach the API: {0}")]
    Network(String),
    #[error("the API answered HTTP {status}: {message}")]
    Status {
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("the API answered with an error (code {code}): {message}")]
    Envelope { code: String, message: String },
    #[error("the API response is larger than 10 MiB; it is refused whole, never truncated")]
    TooLarge,
    #[error("refused by the SSRF guard: {0}")]
    Refused(String),
}

impl ApiError {
    /// Worth another attempt now: the network, a server error or rate limiting.
    pub fn retryable(&self) -> bool {
        match self {
            ApiError::Network(_) => true,
            ApiError::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// What a fetch brought.
#[derive(Debug)]
pub enum Fetched {
    /// 304: the spec did not change since the ETag we sent.
    NotModified,
    /// The whole enveloped body (`error` is false), and its ETag.
    Spec { body: Vec<u8>, etag: Option<String> },
}

/// What following the API needs beyond `Settings::load`'s checks: a load balancer id and an
/// allowed API URL. Kept apart on purpose: the supervisor reads the same file, and a mistake in
/// the API settings must never stop Envoy from starting.
pub fn check_settings(settings: &Settings) -> anyhow::Result<()> {
    let v = &settings.vpsie;
    if v.loadbalancer_id.is_empty() {
        anyhow::bail!("vpsie.loadbalancer_id: is required to follow the API (set it in agent.yaml, with --lb-id, or VPSIE_LB_ID)");
    }
    check_api_url(
        &v.api_url,
        &v.allowed_hosts,
        settings.dev.allow_insecure_http,
    )
    .map_err(|e| anyhow::anyhow!("vpsie.api_url: {e}"))
}

/// Checks the API URL: https (or, in development, http to a loopback host), a host from the
/// allowed list, and, for an IP literal, an allowed address.
pub fn check_api_url(
    url: &str,
    allowed_hosts: &[String],
    allow_insecure_http: bool,
) -> Result<(), String> {
    let u = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let host = u.host_str().ok_or_else(|| format!("{url:?} has no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip = host.parse::<IpAddr>().ok();
    let loopback = ip.is_some_and(|i| i.is_loopback()) || host.eq_ignore_ascii_case("localhost");
    match u.scheme() {
        "https" => {}
        "http" if allow_insecure_http && loopback => {}
        "http" if allow_insecure_http => {
            return Err(format!(
                "plain http is allowed only to a loopback host (dev.allow_insecure_http), not {host}"
            ))
        }
        "http" => {
            return Err("plain http would send the API token in the clear; use https (dev.allow_insecure_http is for the local stand-in only)".into())
        }
        other => return Err(format!("scheme {other:?} is not https")),
    }
    if !allowed_hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
        return Err(format!(
            "host {host} is not in vpsie.allowed_hosts ({})",
            allowed_hosts.join(", ")
        ));
    }
    if let Some(ip) = ip {
        if let Some(why) = crate::net::api_refusal(ip, allow_insecure_http) {
            return Err(format!("{ip} {why}"));
        }
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(
            "credentials in the URL are not allowed; the token comes from vpsie.api_key_file"
                .into(),
        );
    }
    Ok(())
}

/// Resolves host names for the client and refuses them when any address is forbidden.
/// `overrides` maps names to addresses without asking DNS (tests map names to loopback).
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    pub allow_loopback: bool,
    pub overrides: HashMap<String, Vec<IpAddr>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct GuardError(String);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let this = self.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<IpAddr> = match this.overrides.get(&host) {
                Some(v) => v.clone(),
                None => tokio::net::lookup_host((host.as_str(), 0))
                    .await?
                    .map(|sa| sa.ip())
                    .collect(),
            };
            if addrs.is_empty() {
                return Err(Box::new(GuardError(format!("{host} resolves to no address"))) as _);
            }
            for ip in &addrs {
                if let Some(why) = crate::net::api_refusal(*ip, this.allow_loopback) {
                    return Err(Box::new(GuardError(format!(
                        "refused by the SSRF guard: {host} resolves to {ip}, which {why}"
                    ))) as _);
                }
            }
            let it: reqwest::dns::Addrs =
                Box::new(addrs.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(it)
        })
    }
}

/// Reads the API token; the file must be private (no group or other permission bits).
pub fn read_key_file(path: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .with_context(|| format!("vpsie.api_key_file: cannot read {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "vpsie.api_key_file: {} is readable by group or others (mode {mode:o}); run chmod 600 on it",
            path.display()
        );
    }
    let key = std::fs::read_to_string(path)
        .with_context(|| format!("vpsie.api_key_file: cannot read {}", path.display()))?;
    let key = key.trim().to_owned();
    if key.is_empty() {
        anyhow::bail!("vpsie.api_key_file: {} is empty", path.display());
    }
    if key.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
        anyhow::bail!("vpsie.api_key_file: the token holds characters a header cannot carry");
    }
    Ok(key)
}

pub struct ApiClient {
    client: reqwest::Client,
    spec_url: reqwest::Url,
    events_url: reqwest::Url,
    /// Marked sensitive, so HTTP libraries' debug output shows it as `Sensitive`.
    token: reqwest::header::HeaderValue,
    etag: Option<String>,
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let m = inner.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = inner.source();
    }
    s
}

fn network(e: reqwest::Error) -> ApiError {
    let msg = chain(&e);
    if msg.contains("refused by the SSRF guard") {
        ApiError::Refused(msg)
    } else {
        ApiError::Network(msg)
    }
}

impl ApiClient {
    /// Builds the client from settings (already checked) and the key file.
    pub fn new(settings: &Settings) -> anyhow::Result<ApiClient> {
        Self::with_resolver(settings, HashMap::new())
    }

    /// As [`ApiClient::new`], with names resolved from `overrides` instead of DNS.
    pub fn with_resolver(
        settings: &Settings,
        overrides: HashMap<String, Vec<IpAddr>>,
    ) -> anyhow::Result<ApiClient> {
        let v = &settings.vpsie;
        // The id and the URL (scheme, host allowed, no credentials).
        check_settings(settings)?;
        let mut token = reqwest::header::HeaderValue::from_str(&read_key_file(&v.api_key_file)?)
            .context("vpsie.api_key_file: the token cannot be sent as a header")?;
        token.set_sensitive(true);
        let resolver = GuardedResolver {
            allow_loopback: settings.dev.allow_insecure_http,
            overrides,
        };
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .https_only(!settings.dev.allow_insecure_http)
            .connect_timeout(Duration::from_secs(v.connect_timeout_s.into()))
            .timeout(Duration::from_secs(v.request_timeout_s.into()))
            .dns_resolver(Arc::new(resolver))
            .user_agent(concat!("vpsie-lb-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the API client")?;
        let base = v.api_url.trim_end_matches('/');
        let id = &v.loadbalancer_id;
        Ok(ApiClient {
            client,
            spec_url: reqwest::Url::parse(&format!("{base}/api/v1/lb/{id}"))
                .context("vpsie.api_url")?,
            events_url: reqwest::Url::parse(&format!("{base}/api/v1/lb/{id}/events"))
                .context("vpsie.api_url")?,
            token,
            etag: None,
        })
    }

    /// Forget the ETag, so that the next fetch brings the whole spec (a forced resync).
    pub fn forget_etag(&mut self) {
        self.etag = None;
    }

    /// Fetches the spec, retrying network errors, 5xx and 429 with backoff. Safe to cancel: the
    /// ETag only changes once a whole response has been read.
    pub async fn fetch(&mut self) -> Result<Fetched, ApiError> {
        let out = self.retrying(|c| c.fetch_once()).await?;
        if let Fetched::Spec { etag, .. } = &out {
            self.etag = etag.clone();
        }
        Ok(out)
    }

    /// Posts one event (one attempt: the event queue decides when to try again).
    pub async fn post_event(&self, event: &impl serde::Serialize) -> Result<(), ApiError> {
        let resp = self
            .client
            .post(self.events_url.clone())
            .header("Vpsie-Auth", &self.token)
            .header("Content-Type", "application/json")
            .body(
                serde_json::to_vec(event)
                    .map_err(|e| ApiError::Network(format!("cannot encode the event: {e}")))?,
            )
            .send()
            .await
            .map_err(network)?;
        let status = resp.status();
        let retry_after = retry_after(&resp);
        let body = read_limited(resp).await?;
        if !status.is_success() {
            return Err(status_error(status.as_u16(), &body, retry_after));
        }
        check_envelope(&body)
    }

    async fn retrying<'a, F, Fut>(&'a self, f: F) -> Result<Fetched, ApiError>
    where
        F: Fn(&'a ApiClient) -> Fut,
        Fut: std::future::Future<Output = Result<Fetched, ApiError>>,
    {
        let mut attempt = 0;
        loop {
            match f(self).await {
                Err(e) if e.retryable() && attempt + 1 < ATTEMPTS => {
                    let wait = match &e {
                        ApiError::Status {
                            retry_after: Some(ra),
                            ..
                        } => (*ra).min(MAX_RETRY_AFTER),
                        _ => crate::backoff::jitter(
                            Duration::from_millis(500) * 2u32.pow(attempt),
                            0.2,
                        ),
                    };
                    tracing::warn!(attempt = attempt + 1, "{e}; retrying in {wait:?}");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn fetch_once(&self) -> Result<Fetched, ApiError> {
        let mut req = self
            .client
            .get(self.spec_url.clone())
            .header("Vpsie-Auth", &self.token)
            .header("Accept", "application/json");
        if let Some(e) = &self.etag {
            req = req.header("If-None-Match", e);
        }
        let resp = req.send().await.map_err(network)?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(Fetched::NotModified);
        }
        let etag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let retry_after = retry_after(&resp);
        let body = read_limited(resp).await?;
        if !status.is_success() {
            return Err(status_error(status.as_u16(), &body, retry_after));
        }
        check_envelope(&body)?;
        Ok(Fetched::Spec { body, etag })
    }
}

fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers()
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// Reads a body, counting as it streams, and refuses it whole past the limit.
async fn read_limited(mut resp: reqwest::Response) -> Result<Vec<u8>, ApiError> {
    if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
        return Err(ApiError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(network)? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(ApiError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[derive(serde::Deserialize)]
struct Envelope {
    error: Option<bool>,
    code: Option<serde_json::Value>,
    message: Option<String>,
}

fn shown(s: &str) -> String {
    crate::spec::shown(s)
}

/// HTTP 200 with `"error": true` is a failure too.
fn check_envelope(body: &[u8]) -> Result<(), ApiError> {
    let env: Envelope = serde_json::from_slice(body).map_err(|e| ApiError::Envelope {
        code: "-".into(),
        message: format!("the answer is not a JSON envelope: {e}"),
    })?;
    if env.error == Some(true) {
        return Err(ApiError::Envelope {
            code: env
                .code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            message: shown(env.message.as_deref().unwrap_or("")),
        });
    }
    Ok(())
}

fn status_error(status: u16, body: &[u8], retry_after: Option<Duration>) -> ApiError {
    let message = serde_json::from_slice::<Envelope>(body)
        .ok()
        .and_then(|e| e.message)
        .map(|m| shown(&m))
        .unwrap_or_else(|| "(no error message)".into());
    ApiError::Status {
        status,
        message,
        retry_after,
    }
}

#[cfg(test)]
mod tests;
