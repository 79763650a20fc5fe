//! The supervisor's client side: hand a prepared config over and ask for its status, over the
//! Unix socket and the JSON-lines protocol of [`super::protocol`].

use super::protocol::{self, ApplyOutcome, ApplyRequest, ApplyResult, Request, Response, Status};
use crate::envoy;
use crate::pipeline::{Failure, Prepared};
use crate::settings::Settings;
use std::time::Duration;

/// How long an apply may take: validation, the previous epoch's drain, a start and a restore.
fn apply_timeout(settings: &Settings) -> Duration {
    let e = &settings.envoy;
    Duration::from_secs(
        envoy::VALIDATE_TIMEOUT.as_secs()
            + u64::from(e.parent_shutdown_time_s)
            + 3 * u64::from(settings.supervisor.live_timeout_s)
            + 3 * u64::from(settings.supervisor.confirm_timeout_s)
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
        rendered: p.rendered.clone(),
        force,
    });
    match protocol::call(&settings.supervisor.socket, &req, apply_timeout(settings)).await? {
        Response::Apply(out) => Ok(out),
        Response::Error { message } => {
            anyhow::bail!("the supervisor refused the request: {message}")
        }
        Response::Status(_) | Response::Metrics { .. } | Response::Serving { .. } => {
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
            out.previous_hash.as_ref().map_or("none", |h| h.as_str()),
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

/// `status`: what the supervisor reports.
pub async fn status(settings: &Settings) -> Result<Status, Failure> {
    match protocol::call(
        &settings.supervisor.socket,
        &Request::Status,
        Duration::from_secs(10),
    )
    .await?
    {
        Response::Status(s) => Ok(*s),
        other => Err(anyhow::anyhow!("unexpected answer from the supervisor: {other:?}").into()),
    }
}

/// Whether Envoy serves a config, as the supervisor knows it (`Err` says why not).
pub async fn serving(settings: &Settings, timeout: Duration) -> Result<(), String> {
    match protocol::call(&settings.supervisor.socket, &Request::Serving, timeout).await {
        Ok(Response::Serving { serving: true, .. }) => Ok(()),
        Ok(Response::Serving { reason, .. }) => Err(reason),
        Ok(other) => Err(format!("unexpected answer from the supervisor: {other:?}")),
        Err(e) => Err(format!("{e:#}")),
    }
}
