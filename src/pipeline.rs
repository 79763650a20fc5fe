//! The pipeline every command and the agent share: a spec's bytes → parsed, normalised and
//! validated model → its host names resolved and judged → hash → rendered Envoy config. Nothing
//! here talks to the supervisor or the API.

use crate::envoy;
use crate::render::{self, Rendered};
use crate::resolve::{self, Problem, Resolved, Resolver};
use crate::settings::Settings;
use crate::spec::ConfigHash;
use crate::spec::{self, Finding, Loaded, SpecErrors};
use crate::store::ConfigStore;
use sha2::{Digest, Sha256};

/// Why a spec did not become a running config, as far as a command's exit code cares.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    Invalid(#[from] SpecErrors),
    #[error("{0}")]
    Rejected(String),
    #[error("{0}")]
    RolledBack(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<envoy::EnvoyError> for Failure {
    fn from(e: envoy::EnvoyError) -> Self {
        match e {
            envoy::EnvoyError::Rejected(_) => Failure::Rejected(e.to_string()),
            other => Failure::Other(other.into()),
        }
    }
}

/// A spec taken all the way to Envoy config text: the pipeline shared by every command.
#[derive(Debug)]
pub struct Prepared {
    pub loaded: Loaded,
    pub hash: ConfigHash,
    pub rendered: Rendered,
}

impl Prepared {
    pub fn warnings(&self) -> &[Finding] {
        &self.loaded.warnings
    }
}

pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Parse, normalise and validate.
pub fn load(input: &[u8], settings: &Settings, now: i64) -> Result<Loaded, SpecErrors> {
    spec::load(input, &spec_options(settings, now))
}

/// The config hash: the spec's, and, when it names backend hosts, what they resolved to (a
/// changed answer is a changed config). A spec of IP literals only keeps its spec hash.
pub fn hash(loaded: &Loaded, resolved: &Resolved, settings: &Settings) -> ConfigHash {
    let spec_hash = spec::config_hash(&loaded.spec, &render::output_version(settings));
    if resolved.is_empty() {
        return spec_hash;
    }
    let mut h = Sha256::new();
    h.update(spec_hash.as_str());
    h.update(b"\nresolved ");
    for (name, addrs) in resolved {
        h.update(name.as_bytes());
        for a in addrs {
            h.update(b" ");
            h.update(a.to_string().as_bytes());
        }
        h.update(b"\n");
    }
    ConfigHash::of(h)
}

/// Completes a loaded spec with what the agent manages, and hashes the result: the managed
/// certificates fill the domains that wait for them ([`spec::fill_managed`], so a renewal is a
/// new config), and the pending ACME challenges count too (answering a new one is a new config).
pub fn complete(
    loaded: &mut Loaded,
    resolved: &Resolved,
    managed: &Managed,
    settings: &Settings,
) -> ConfigHash {
    spec::fill_managed(&mut loaded.spec, &managed.certificates);
    let base = hash(loaded, resolved, settings);
    if managed.challenges.is_empty() {
        return base;
    }
    let mut h = Sha256::new();
    h.update(base.as_str());
    for (token, key_auth) in &managed.challenges {
        h.update(b"\nchallenge ");
        h.update(token.as_bytes());
        h.update(b" ");
        h.update(key_auth.as_bytes());
    }
    ConfigHash::of(h)
}

/// What the agent adds to a spec for its managed certificates: the certificates it holds, by
/// host name, and the HTTP-01 challenges pending at the CA.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Managed {
    pub certificates: std::collections::BTreeMap<String, spec::Tls>,
    pub challenges: render::Challenges,
}

/// Hashes and renders a loaded spec. `for_store`: certificates go into the directory of the
/// config's hash in the supervisor's store, so that each stored config is complete on its own.
/// The spec is completed with `managed` first ([`complete`]).
pub fn finish(
    loaded: Loaded,
    resolved: &Resolved,
    managed: &Managed,
    settings: &Settings,
    for_store: bool,
) -> Result<Prepared, Failure> {
    finish_with(loaded, resolved, managed, settings, for_store, None).map(|(p, _)| p)
}

/// As [`finish`] for the store, rendering from `cache`, the last config rendered: an
/// endpoint-only change rewrites only the endpoint lists that changed ([`render::splice`]).
pub fn finish_cached(
    loaded: Loaded,
    resolved: &Resolved,
    managed: &Managed,
    settings: &Settings,
    cache: &mut render::splice::Cache,
) -> Result<(Prepared, render::splice::How), Failure> {
    finish_with(loaded, resolved, managed, settings, true, Some(cache))
}

fn finish_with(
    mut loaded: Loaded,
    resolved: &Resolved,
    managed: &Managed,
    settings: &Settings,
    for_store: bool,
    cache: Option<&mut render::splice::Cache>,
) -> Result<(Prepared, render::splice::How), Failure> {
    let hash = complete(&mut loaded, resolved, managed, settings);
    let local;
    let settings = if for_store {
        let mut s = settings.clone();
        s.envoy.cert_dir = Some(ConfigStore::new(&settings.envoy.config_dir).cert_dir(&hash));
        local = s;
        &local
    } else {
        settings
    };
    let (rendered, how) = match cache {
        Some(c) => c.render(&loaded.spec, settings, resolved, &managed.challenges),
        None => render::render(&loaded.spec, settings, resolved, &managed.challenges)
            .map(|r| (r, render::splice::How::Full)),
    }
    .map_err(anyhow::Error::from)?;
    Ok((
        Prepared {
            loaded,
            hash,
            rendered,
        },
        how,
    ))
}

/// Parse, normalise, validate, hash and render, with no host name resolved (a backend host
/// name then has no endpoint). For specs of IP literals, and tests.
pub fn prepare(input: &[u8], settings: &Settings, now: i64) -> Result<Prepared, Failure> {
    finish(
        load(input, settings, now)?,
        &Resolved::new(),
        &Managed::default(),
        settings,
        false,
    )
}

/// As [`prepare`], rendered for the supervisor's config store.
pub fn prepare_for_store(input: &[u8], settings: &Settings, now: i64) -> Result<Prepared, Failure> {
    finish(
        load(input, settings, now)?,
        &Resolved::new(),
        &Managed::default(),
        settings,
        true,
    )
}

/// The whole pipeline with the spec's host names resolved (and judged) through the system's
/// DNS: what the CLI commands use. The problems (refused or unresolvable names) come back beside
/// it. A spec without host names looks nothing up.
pub async fn prepare_resolving(
    input: &[u8],
    settings: &Settings,
    now: i64,
    for_store: bool,
) -> Result<(Prepared, Vec<Problem>), Failure> {
    let loaded = load(input, settings, now)?;
    let names = resolve::names(&loaded.spec);
    let (resolved, problems) = if names.is_empty() {
        (Resolved::new(), Vec::new())
    } else {
        resolve::Cache::default()
            .resolve(
                &Resolver::system()?,
                &names,
                settings.dev.allow_loopback_backends,
                std::time::Instant::now(),
            )
            .await
    };
    Ok((
        finish(loaded, &resolved, &Managed::default(), settings, for_store)?,
        problems,
    ))
}

/// What spec validation needs from the settings: the ports the load balancer itself holds, the
/// redirect port and the development switch for loopback backends.
pub fn spec_options(settings: &Settings, now: i64) -> spec::Options {
    // Envoy's admin is a Unix socket: it holds no port.
    let mut reserved_ports = vec![(
        settings.metrics.port,
        "the agent's metrics (setting metrics.port)".to_owned(),
    )];
    if !settings.metrics.allowed_cidrs.is_empty() {
        reserved_ports.push((
            settings.metrics.scrape_port,
            "the metrics scrape port (setting metrics.scrape_port)".to_owned(),
        ));
    }
    spec::Options {
        allow_loopback_backends: settings.dev.allow_loopback_backends,
        redirect_port: settings.envoy.redirect_port,
        reserved_ports,
        now,
    }
}
