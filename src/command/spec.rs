//! The commands that take a spec file: `hash`, `render`, `validate`, `apply`, `diff`.

use crate::envoy;
use crate::pipeline::{now_unix, Failure, Prepared};
use crate::render;
use crate::settings::Settings;
use crate::spec;
use crate::store::{self, ConfigStore};
use crate::supervisor::client::{hand_over, status};
use crate::supervisor::protocol::ApplyOutcome;
use anyhow::Context;
use std::path::Path;

fn read_spec(path: &Path) -> anyhow::Result<Vec<u8>> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read the spec file {}", path.display()))?;
    if meta.len() > spec::MAX_BODY_BYTES as u64 {
        // Let the spec module say it, with its own words, without reading a huge file whole.
        return Ok(vec![b' '; spec::MAX_BODY_BYTES + 1]);
    }
    std::fs::read(path).with_context(|| format!("cannot read the spec file {}", path.display()))
}

/// The pipeline with the spec's host names resolved by the system's DNS; what a name's answer
/// held that cannot be used is said on stderr.
async fn resolving(
    input: &[u8],
    settings: &Settings,
    for_store: bool,
) -> Result<Prepared, Failure> {
    let (p, problems) =
        crate::pipeline::prepare_resolving(input, settings, now_unix(), for_store).await?;
    for problem in problems {
        tracing::warn!("{}", problem.message());
    }
    Ok(p)
}

/// `hash`: the config hash of a valid spec.
pub async fn hash(spec_path: &Path, settings: &Settings) -> Result<Prepared, Failure> {
    resolving(&read_spec(spec_path)?, settings, false).await
}

/// `render`: writes the certificate files to the certificate directory and the config to `out`
/// (mode 0600), or returns it for printing when `out` is `None`.
pub async fn render(
    spec_path: &Path,
    settings: &Settings,
    out: Option<&Path>,
) -> Result<Prepared, Failure> {
    let p = resolving(&read_spec(spec_path)?, settings, false).await?;
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
    let mut p = resolving(&input, &local, false).await?;
    let config = dir.path().join("envoy.json");
    p.rendered.config =
        render::with_access_log_path(&p.rendered.config, &dir.path().join("access.log"))
            .map_err(anyhow::Error::from)?;
    store::write_rendered(&p.rendered, &config)?;
    envoy::validate(&settings.envoy.binary, &config).await?;
    Ok(p)
}

/// `apply`: render, hand to the supervisor, wait for the outcome.
pub async fn apply(
    spec_path: &Path,
    settings: &Settings,
) -> Result<(Prepared, ApplyOutcome), Failure> {
    let p = resolving(&read_spec(spec_path)?, settings, true).await?;
    let out = hand_over(&p, settings, false).await?;
    Ok((p, out))
}

/// `diff`: what applying `spec_path` would change against the running config, as a unified diff
/// of the two Envoy configs (pretty-printed). Empty when nothing would change.
pub async fn diff(spec_path: &Path, settings: &Settings) -> Result<String, Failure> {
    let p = resolving(&read_spec(spec_path)?, settings, true).await?;
    let store = ConfigStore::new(&settings.envoy.config_dir);
    let running_hash = match status(settings).await {
        Ok(s) => s.hash,
        Err(_) => store.current(),
    };
    let running = match &running_hash {
        Some(h) => std::fs::read_to_string(store.config_path(h)).with_context(|| {
            format!(
                "cannot read the running config {}",
                store.config_path(h).display()
            )
        })?,
        None => String::new(),
    };
    let pretty = |text: &str| -> String {
        serde_json::from_str::<serde_json::Value>(text)
            .and_then(|v| serde_json::to_string_pretty(&v))
            .unwrap_or_default()
    };
    let (old, new) = (pretty(&running), pretty(&p.rendered.config));
    if old == new {
        return Ok(String::new());
    }
    let old_name = format!(
        "running {}",
        running_hash.as_ref().map_or("(none)", |h| h.as_str())
    );
    let new_name = format!("{} {}", spec_path.display(), p.hash);
    Ok(similar::TextDiff::from_lines(&old, &new)
        .unified_diff()
        .context_radius(3)
        .header(&old_name, &new_name)
        .to_string())
}
