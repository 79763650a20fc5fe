//! What the CLI's commands do, one function each, returning an outcome the binary maps to an
//! exit code. The binary itself only parses flags and sets up logging.
//!
//! Exit codes: 0 ok, 2 the spec is invalid, 3 Envoy rejected the config, 4 the config failed at
//! runtime and the previous one was restored, 1 anything else.

use crate::render::{self, Rendered};
use crate::settings::Settings;
use crate::spec::{self, Finding, Loaded, SpecErrors};
use crate::store::ConfigStore;
use crate::supervisor::protocol::{
    self, ApplyOutcome, ApplyRequest, ApplyResult, FileData, Request, Response, Status,
};
use crate::{envoy, store};
use anyhow::Context;
use std::path::Path;
use std::time::Duration;

/// Why a command failed, as far as the exit code cares.
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

/// Renders a spec for the supervisor's config store: certificates go into the directory of the
/// config's hash, so that each stored config is complete on its own.
pub fn prepare_for_store(input: &[u8], settings: &Settings, now: i64) -> Result<Prepared, Failure> {
    let loaded = spec::load(input, &settings.spec_options(now))?;
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

/// How long an apply may take: validation, the previous epoch's drain, a start and a restore.
fn apply_timeout(settings: &Settings) -> Duration {
    let e = &settings.envoy;
    Duration::from_secs(
        envoy::VALIDATE_TIMEOUT.as_secs()
            + u64::from(e.parent_shutdown_time_s)
            + 3 * u64::from(settings.supervisor.live_timeout_s)
            + 30,
    )
}

/// Hands a prepared config to the supervisor and returns its outcome as it is.
pub async fn hand_over_raw(
    p: &Prepared,
    settings: &Settings,
    force: bool,
) -> anyhow::Result<ApplyOutcome> {
    let req = Request::Apply(ApplyRequest {
        hash: p.hash.clone(),
        config: p.rendered.config.clone(),
        files: p
            .rendered
            .files
            .iter()
            .map(|f| FileData {
                path: f.path.clone(),
                contents: f.contents.clone(),
            })
            .collect(),
        force,
    });
    match protocol::call(&settings.supervisor.socket, &req, apply_timeout(settings)).await? {
        Response::Apply(out) => Ok(out),
        Response::Error { message } => {
            anyhow::bail!("the supervisor refused the request: {message}")
        }
        Response::Status(_) | Response::Metrics { .. } => {
            anyhow::bail!("the supervisor answered out of turn")
        }
    }
}

/// Hands a prepared config to the supervisor and maps its outcome onto a result.
pub async fn hand_over(
    p: &Prepared,
    settings: &Settings,
    force: bool,
) -> Result<ApplyOutcome, Failure> {
    let out = hand_over_raw(p, settings, force).await?;
    let detail = |out: &ApplyOutcome| {
        let mut s = out.error.clone().unwrap_or_default();
        if let Some(r) = &out.restore_error {
            s.push_str(&format!("; restoring the previous config failed too: {r}"));
        }
        if !out.envoy_log.is_empty() {
            s.push_str("\nenvoy's last lines:\n  ");
            s.push_str(&out.envoy_log.join("\n  "));
        }
        s
    };
    match out.result {
        ApplyResult::Applied | ApplyResult::Unchanged => Ok(out),
        ApplyResult::Rejected => Err(Failure::Rejected(detail(&out))),
        ApplyResult::RolledBack => Err(Failure::RolledBack(format!(
            "the new config failed at runtime; the previous config ({}) serves again: {}",
            out.previous_hash.as_deref().unwrap_or("none"),
            detail(&out)
        ))),
        ApplyResult::Critical => {
            Err(anyhow::anyhow!("CRITICAL: envoy is not serving: {}", detail(&out)).into())
        }
        ApplyResult::Error => Err(anyhow::anyhow!(
            "the supervisor could not apply the config: {}",
            detail(&out)
        )
        .into()),
    }
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

/// `status`: what the supervisor reports.
pub async fn status(settings: &Settings) -> Result<Status, Failure> {
    match protocol::call(
        &settings.supervisor.socket,
        &Request::Status,
        Duration::from_secs(10),
    )
    .await?
    {
        Response::Status(s) => Ok(s),
        other => Err(anyhow::anyhow!("unexpected answer from the supervisor: {other:?}").into()),
    }
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
