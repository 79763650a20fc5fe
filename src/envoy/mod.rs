//! Runs the Envoy binary: `--mode validate` (the last check before a config may be applied),
//! epochs for hot restart ([`process`]), the admin API ([`admin`]) and the hot-restart shared
//! memory ([`shm`]). Deciding *when* to do what is the supervisor's job, not this module's.

pub mod admin;
pub mod process;
pub mod shm;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// How long `envoy --mode validate` may take before we give up on it.
pub const VALIDATE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum EnvoyError {
    #[error("envoy rejected the config:\n{0}")]
    Rejected(String),
    #[error("cannot run envoy at {path} (install it with `make envoy`, or set envoy.binary or ENVOY_BIN)")]
    Spawn {
        path: String,
        source: std::io::Error,
    },
    #[error("envoy --mode validate did not finish within {0:?}")]
    Timeout(Duration),
}

/// Checks a config file with `envoy --mode validate`. Envoy's own message comes back on rejection.
pub async fn validate(binary: &Path, config: &Path) -> Result<(), EnvoyError> {
    let mut cmd = tokio::process::Command::new(binary);
    cmd.arg("--mode")
        .arg("validate")
        .arg("--config-path")
        .arg(config)
        .arg("--log-level")
        .arg("warn")
        // Validation must never touch the shared memory of the Envoy that serves traffic.
        .arg("--disable-hot-restart")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|source| EnvoyError::Spawn {
        path: binary.display().to_string(),
        source,
    })?;
    let out = tokio::time::timeout(VALIDATE_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| EnvoyError::Timeout(VALIDATE_TIMEOUT))?
        .map_err(|source| EnvoyError::Spawn {
            path: binary.display().to_string(),
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    let mut msg = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !stdout.trim().is_empty() {
        if !msg.is_empty() {
            msg.push('\n');
        }
        msg.push_str(stdout.trim());
    }
    if msg.is_empty() {
        msg = format!("envoy exited with {}", out.status);
    }
    Err(EnvoyError::Rejected(msg))
}
