//! What the CLI's commands do, one function each, returning an outcome the binary maps to an
//! exit code. The binary itself only parses flags and sets up logging.
//!
//! Exit codes: 0 ok, 2 the spec is invalid, 3 Envoy rejected the config, 1 anything else.

use crate::render::{self, Rendered};
use crate::settings::Settings;
use crate::spec::{self, Finding, Loaded, SpecErrors};
use crate::{envoy, store};
use anyhow::Context;
use std::path::Path;

/// Why a command failed, as far as the exit code cares.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    Invalid(#[from] SpecErrors),
    #[error("{0}")]
    Rejected(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Invalid(_) => 2,
            Failure::Rejected(_) => 3,
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
    let loaded = spec::load(input, &settings.spec_options(now))?;
    let hash = spec::config_hash(&loaded.spec, render::template_version());
    let rendered = render::render(&loaded.spec, settings).map_err(anyhow::Error::from)?;
    Ok(Prepared {
        loaded,
        hash,
        rendered,
    })
}

fn read_spec(path: &Path) -> anyhow::Result<Vec<u8>> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read the spec file {}", path.display()))?;
    if meta.len() > spec::MAX_BODY_BYTES as u64 {
        // Let the spec module say it, with its own words, without reading a huge file whole.
        return Ok(vec![b' '; spec::MAX_BODY_BYTES + 1]);
    }
    std::fs::read(path).with_context(|| format!("cannot read the spec file {}", path.display()))
}

/// `hash`: the config hash of a valid spec.
pub fn hash(spec_path: &Path, settings: &Settings) -> Result<Prepared, Failure> {
    prepare(&read_spec(spec_path)?, settings, now_unix())
}

/// `render`: writes the certificate files to the certificate directory and the config to `out`
/// (mode 0600), or returns it for printing when `out` is `None`.
pub fn render(
    spec_path: &Path,
    settings: &Settings,
    out: Option<&Path>,
) -> Result<Prepared, Failure> {
    let p = prepare(&read_spec(spec_path)?, settings, now_unix())?;
    match out {
        Some(out) => store::write_rendered(&p.rendered, out)?,
        None => {
            for f in &p.rendered.files {
                store::write_private(&f.path, f.contents.as_bytes())?;
            }
        }
    }
    Ok(p)
}

/// `validate`: renders into a temporary directory and runs `envoy --mode validate` on it.
pub async fn validate(spec_path: &Path, settings: &Settings) -> Result<Prepared, Failure> {
    let input = read_spec(spec_path)?;
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let mut local = settings.clone();
    local.envoy.config_dir = dir.path().to_path_buf();
    local.envoy.cert_dir = Some(dir.path().join("certs"));
    let p = prepare(&input, &local, now_unix())?;
    let config = dir.path().join("envoy.json");
    store::write_rendered(&p.rendered, &config)?;
    envoy::validate(&settings.envoy.binary, &config).await?;
    Ok(p)
}
