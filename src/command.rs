//! What the CLI's commands do, one function each, returning an outcome the binary maps to an
//! exit code. The binary itself only parses flags and sets up logging.
//!
//! Exit codes: 0 ok, 2 the spec is invalid, 3 Envoy rejected the config, 4 the config failed at
//! runtime and the previous one was restored, 1 anything else.

use crate::envoy;
pub use crate::pipeline::{now_unix, prepare, prepare_for_store, Failure, Prepared};
use crate::settings::Settings;
use crate::spec;
use crate::store::{self, ConfigStore};
use crate::supervisor::client::{hand_over, status};
use crate::supervisor::protocol::{ApplyOutcome, Status};
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

/// `apply`: render, hand to the supervisor, wait for the outcome.
pub async fn apply(
    spec_path: &Path,
    settings: &Settings,
) -> Result<(Prepared, ApplyOutcome), Failure> {
    let p = prepare_for_store(&read_spec(spec_path)?, settings, now_unix())?;
    let out = hand_over(&p, settings, false).await?;
    Ok((p, out))
}

/// What `status` prints: the supervisor's view and the agent's.
#[derive(Debug, serde::Serialize)]
pub struct FullStatus {
    pub supervisor: Option<Status>,
    pub supervisor_error: Option<String>,
    pub agent: crate::agent::AgentState,
    pub queued_events: usize,
    pub dropped_events: u64,
}

/// `status`: the supervisor's answer (if it answers) plus the agent's state files.
pub async fn full_status(settings: &Settings) -> FullStatus {
    let (supervisor, supervisor_error) = match status(settings).await {
        Ok(s) => (Some(s), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let agent = std::fs::read(settings.agent_state_path())
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let (queued_events, dropped_events) =
        crate::events::EventQueue::open(&settings.event_queue_path(), crate::agent::QUEUE_CAPACITY)
            .map(|q| (q.len(), q.dropped()))
            .unwrap_or((0, 0));
    FullStatus {
        supervisor,
        supervisor_error,
        agent,
        queued_events,
        dropped_events,
    }
}

/// `diff`: what applying `spec_path` would change against the running config, as a unified diff
/// of the two Envoy configs (pretty-printed). Empty when nothing would change.
pub async fn diff(spec_path: &Path, settings: &Settings) -> Result<String, Failure> {
    let p = prepare_for_store(&read_spec(spec_path)?, settings, now_unix())?;
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
    let old_name = format!("running {}", running_hash.as_deref().unwrap_or("(none)"));
    let new_name = format!("{} {}", spec_path.display(), p.hash);
    Ok(similar::TextDiff::from_lines(&old, &new)
        .unified_diff()
        .context_radius(3)
        .header(&old_name, &new_name)
        .to_string())
}
