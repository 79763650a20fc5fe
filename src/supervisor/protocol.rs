//! What the agent and the CLI say to the supervisor: one JSON object per line over a Unix socket,
//! one request and one response per line.

use crate::render::Rendered;
use crate::spec::ConfigHash;
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The longest line either side accepts (a config of 10,000 backends is about 2 MB).
pub const MAX_LINE: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Store, validate and apply a rendered config (live, or by hot restart).
    Apply(ApplyRequest),
    Status,
    /// The supervisor's metrics, in Prometheus text format.
    Metrics,
    /// Whether Envoy serves a config, from what the supervisor knows (its process runs, a config
    /// is applied, nothing critical), without asking Envoy's admin API: that answers on Envoy's
    /// main thread, which a big update keeps busy for seconds while the workers serve. For
    /// keepalived's check (`ha-check`), which must not give a virtual IP away for that.
    Serving,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyRequest {
    pub hash: ConfigHash,
    /// On the wire as `config` and `files`.
    #[serde(flatten)]
    pub rendered: Rendered,
    /// Restart even when this hash is already live (a forced resync).
    #[serde(default)]
    pub force: bool,
}

/// How a config was put into Envoy, as `config_applied` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplyMethod {
    /// Inside the running Envoy through xDS, no new process.
    Live,
    /// A new Envoy epoch took over by hot restart.
    HotRestart,
    /// A fresh Envoy (epoch 0) started with it: the running one exited in the middle of the
    /// apply, and the new config had passed validation.
    Restart,
}

impl ApplyMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            ApplyMethod::Live => "live",
            ApplyMethod::HotRestart => "hot_restart",
            ApplyMethod::Restart => "restart",
        }
    }
}

/// How an apply ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplyResult {
    /// Envoy serves the new config (applied live, or a new epoch is LIVE with it).
    Applied,
    /// This hash was already live; nothing was restarted.
    Unchanged,
    /// `envoy --mode validate` refused the config; nothing changed.
    Rejected,
    /// The new config could not start; the previous config serves (it may be a new epoch).
    RolledBack,
    /// Envoy is not serving and could not be restored; the supervisor keeps retrying.
    Critical,
    /// The supervisor could not even try (bad request, disk error...).
    Error,
}

impl ApplyResult {
    /// The label an apply is counted under; `Unchanged` is not an apply and is not counted.
    pub fn counted(self) -> Option<crate::metrics::Apply> {
        use crate::metrics::Apply;
        match self {
            ApplyResult::Applied => Some(Apply::Applied),
            ApplyResult::Unchanged => None,
            ApplyResult::Rejected => Some(Apply::Rejected),
            ApplyResult::RolledBack => Some(Apply::RolledBack),
            ApplyResult::Critical => Some(Apply::Critical),
            ApplyResult::Error => Some(Apply::Error),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyOutcome {
    pub result: ApplyResult,
    /// How an applied config reached Envoy (set with `Applied`).
    #[serde(default)]
    pub method: Option<ApplyMethod>,
    pub hash: ConfigHash,
    /// The hash that was live before.
    pub previous_hash: Option<ConfigHash>,
    /// The epoch serving now.
    pub epoch: Option<u32>,
    pub apply_ms: u64,
    pub error: Option<String>,
    pub restore_error: Option<String>,
    /// The last lines Envoy logged, when something failed.
    #[serde(default)]
    pub envoy_log: Vec<String>,
    /// Of `apply_ms`, the time Envoy took, in microseconds: from the first xDS file written to every resource
    /// confirmed (live), or from the new epoch spawned to LIVE (hot restart).
    #[serde(default)]
    pub envoy_us: Option<u64>,
    /// Names this apply (a UUID). The agent's `config_applied` event for it carries it as its
    /// id, so a report sent twice (an agent killed before it saved what it had reported, which
    /// then hears of the apply again as unchanged) is one event to the API, which drops
    /// duplicates by id.
    #[serde(default)]
    pub apply_id: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    pub epoch: Option<u32>,
    pub hash: Option<ConfigHash>,
    pub envoy_state: crate::envoy::admin::EnvoyState,
    pub envoy_pid: Option<u32>,
    pub hot_restart_version: Option<String>,
    /// Known-good hashes kept on disk, newest first.
    pub good: Vec<ConfigHash>,
    pub last_apply: Option<ApplyOutcome>,
    /// Set while Envoy is down and could not be restored.
    pub critical: Option<String>,
    /// The dynamic resources (listeners, routes, clusters, endpoints, certificates) the live
    /// epoch serves: they change live, without a new epoch.
    #[serde(default)]
    pub resources: Option<ResourcesStatus>,
    /// Pools moving to new hosts: applied (Envoy took the change), their old hosts kept until
    /// the new ones pass their first health check.
    #[serde(default)]
    pub transitions: Vec<TransitionStatus>,
}

/// One pool on its way to the hosts its config names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitionStatus {
    /// A UUID; a stuck transition's report carries it as its event id.
    pub id: String,
    pub pool: String,
    pub config_hash: ConfigHash,
    /// Hosts new to the pool (checked or not).
    pub new_hosts: usize,
    /// Hosts of the pool (old ones included) not healthy, as last read: a new host is not
    /// healthy until its first check passed.
    pub unhealthy: u64,
    /// Old hosts that go once the new ones passed (0: nothing is held).
    pub old_hosts: usize,
    pub age_ms: u64,
    /// Set when it did not finish within `confirm_timeout_s`: the new hosts that had not passed
    /// their first health check then (the old hosts keep serving).
    #[serde(default)]
    pub stuck: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourcesStatus {
    /// The config they come from.
    pub hash: ConfigHash,
    /// The versions Envoy confirmed for its listeners and its clusters (digests of them).
    pub lds_version: String,
    pub cds_version: String,
    /// Updates applied live into the current epoch.
    pub live_applies: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Response {
    Apply(ApplyOutcome),
    // Boxed: a status is several times larger than the other answers.
    Status(Box<Status>),
    Metrics {
        text: String,
    },
    /// `reason` says why not, when not.
    Serving {
        serving: bool,
        reason: String,
    },
    Error {
        message: String,
    },
}

/// Sends one request and waits for its response. `timeout` bounds the whole exchange.
pub async fn call(socket: &Path, req: &Request, timeout: Duration) -> anyhow::Result<Response> {
    let exchange = async {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .with_context(|| {
                format!(
                    "cannot reach the supervisor at {} (is `vpsie-lb-agent supervise` running?)",
                    socket.display()
                )
            })?;
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_vec(req)?;
        line.push(b'\n');
        write.write_all(&line).await?;
        write.flush().await?;
        let mut reader = BufReader::new(read);
        let mut answer = String::new();
        let n = reader.read_line(&mut answer).await?;
        if n == 0 {
            bail!("the supervisor closed the connection without an answer");
        }
        serde_json::from_str(&answer).context("the supervisor's answer does not parse")
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("the supervisor did not answer within {timeout:?}"))?
}
