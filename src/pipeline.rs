//! The pipeline every command and the agent share: a spec's bytes → parsed, normalised and
//! validated model → hash → rendered Envoy config. Pure apart from the clock the caller passes;
//! nothing here talks to the supervisor or the API.

use crate::envoy;
use crate::render::{self, Rendered};
use crate::settings::Settings;
use crate::spec::{self, Finding, Loaded, SpecErrors};
use crate::store::ConfigStore;

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

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Invalid(_) => 2,
            Failure::Rejected(_) => 3,
            Failure::RolledBack(_) => 4,
            Failure::Other(_) => 1,
        }
    }
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
    pub hash: String,
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

/// Parse, normalise, validate, hash and render.
pub fn prepare(input: &[u8], settings: &Settings, now: i64) -> Result<Prepared, Failure> {
    let loaded = spec::load(input, &spec_options(settings, now))?;
    let hash = spec::config_hash(&loaded.spec, render::template_version());
    let rendered = render::render(&loaded.spec, settings).map_err(anyhow::Error::from)?;
    Ok(Prepared {
        loaded,
        hash,
        rendered,
    })
}

/// Renders a spec for the supervisor's config store: certificates go into the directory of the
/// config's hash, so that each stored config is complete on its own.
pub fn prepare_for_store(input: &[u8], settings: &Settings, now: i64) -> Result<Prepared, Failure> {
    let loaded = spec::load(input, &spec_options(settings, now))?;
    let hash = spec::config_hash(&loaded.spec, render::template_version());
    let mut local = settings.clone();
    local.envoy.cert_dir = Some(ConfigStore::new(&settings.envoy.config_dir).cert_dir(&hash));
    let rendered = render::render(&loaded.spec, &local).map_err(anyhow::Error::from)?;
    Ok(Prepared {
        loaded,
        hash,
        rendered,
    })
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
