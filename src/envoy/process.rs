//! One Envoy process (an epoch): how it is started and what it leaves behind.
//!
//! Envoy's own log (stderr) is read line by line into the supervisor's log and a short ring
//! buffer, so a failed start can return its last lines. Its stdout (access logs) is passed
//! through untouched: it can be busy and nobody here needs to read it.

use crate::settings::Settings;
use std::collections::VecDeque;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

/// Lines of Envoy's log kept per epoch.
const LOG_LINES: usize = 40;

/// A running epoch. The process itself is owned by a task that waits for it and reports its
/// exit on the channel given to [`spawn`]; this handle signals it by pid.
#[derive(Debug)]
pub struct Epoch {
    pub epoch: u32,
    pub hash: String,
    pub pid: u32,
    log: Arc<Mutex<VecDeque<String>>>,
}

/// An epoch's exit, as the waiting task reports it.
#[derive(Debug)]
pub struct Exit {
    pub pid: u32,
    pub status: std::io::Result<ExitStatus>,
}

impl Epoch {
    /// The last lines Envoy wrote to its log.
    pub fn log_tail(&self) -> Vec<String> {
        self.log
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), sig);
    }
}

/// The command line of one epoch.
pub fn args(settings: &Settings, config: &Path, epoch: u32) -> Vec<String> {
    let e = &settings.envoy;
    let mut a = vec![
        "--config-path".to_owned(),
        config.display().to_string(),
        "--restart-epoch".to_owned(),
        epoch.to_string(),
        "--base-id".to_owned(),
        e.base_id.to_string(),
        "--drain-time-s".to_owned(),
        e.drain_time_s.to_string(),
        "--parent-shutdown-time-s".to_owned(),
        e.parent_shutdown_time_s.to_string(),
        "--drain-strategy".to_owned(),
        e.drain_strategy.as_str().to_owned(),
        "--log-level".to_owned(),
        "info".to_owned(),
    ];
    if let Some(c) = e.concurrency {
        a.push("--concurrency".to_owned());
        a.push(c.to_string());
    }
    a
}

/// Starts one epoch. Must be called from a thread that lives as long as the supervisor: Envoy's
/// hot-restart children set PR_SET_PDEATHSIG, so they are killed when the *thread* that started
/// them exits (the supervisor runs a current-thread runtime on its main thread for this reason).
pub fn spawn(
    settings: &Settings,
    config: &Path,
    epoch: u32,
    hash: &str,
    exits: mpsc::UnboundedSender<Exit>,
) -> anyhow::Result<Epoch> {
    let mut cmd = tokio::process::Command::new(&settings.envoy.binary);
    cmd.args(args(settings, config, epoch))
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        // Envoy must outlive a dropped handle; the supervisor stops it deliberately.
        .kill_on_drop(false);
    let mut child = cmd.spawn().map_err(|e| {
        anyhow::anyhow!(
            "cannot start envoy at {}: {e} (install it with `make envoy`, or set envoy.binary)",
            settings.envoy.binary.display()
        )
    })?;
    let pid = child.id().unwrap_or(0);
    let log = Arc::new(Mutex::new(VecDeque::with_capacity(LOG_LINES)));
    if let Some(stderr) = child.stderr.take() {
        let log = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!(target: "envoy", epoch, "{line}");
                if let Ok(mut l) = log.lock() {
                    if l.len() == LOG_LINES {
                        l.pop_front();
                    }
                    l.push_back(line);
                }
            }
        });
    }
    tokio::spawn(async move {
        let status = child.wait().await;
        let _ = exits.send(Exit { pid, status });
    });
    Ok(Epoch {
        epoch,
        hash: hash.to_owned(),
        pid,
        log,
    })
}

/// The hot-restart version this Envoy binary speaks (`envoy --hot-restart-version`).
pub async fn binary_hot_restart_version(binary: &Path) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(binary)
        .arg("--hot-restart-version")
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| {
            anyhow::anyhow!("cannot run {} --hot-restart-version: {e}", binary.display())
        })?;
    // Envoy prints it on stderr.
    let mut v = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if v.is_empty() {
        v = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    }
    if !out.status.success() || super::shm::parse_version(&v).is_none() {
        anyhow::bail!("{} --hot-restart-version printed {v:?}", binary.display());
    }
    Ok(v)
}
