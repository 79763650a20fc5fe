//! One Envoy process (an epoch): how it is started and what it leaves behind.
//!
//! Envoy writes its own log to `envoy.log_file` (`--log-path`), never to a pipe held by the
//! supervisor: an epoch-0 Envoy outlives a supervisor that dies, and would then be killed by
//! SIGPIPE on its next log line (measured). A failed start returns the last lines that epoch
//! wrote there, found by its pid. Stdout (access logs) is the supervisor's stdout, untouched.

use crate::settings::Settings;
use crate::spec::ConfigHash;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Lines of an epoch's log returned with a failure.
const LOG_LINES: usize = 40;
/// How far back in the log file to look for them.
const LOG_WINDOW: u64 = 256 * 1024;

/// A running epoch. The process itself is owned by a task that waits for it and reports its
/// exit on the channel given to [`spawn`]; this handle signals it by pid.
#[derive(Debug)]
pub struct Epoch {
    pub epoch: u32,
    pub hash: ConfigHash,
    pub pid: u32,
    log_file: PathBuf,
    /// What Envoy writes to stderr: the errors of its first moments, before its log file is
    /// open (a base id another Envoy holds, a flag it refuses).
    stderr_file: PathBuf,
    exited: ExitWatch,
}

/// Whether an epoch's process has exited, set by the task that reaps it before the exit is
/// reported on the channel. Whatever the supervisor waits on (a confirmation, a hot restart's
/// child) races it, so a dead Envoy is never waited on as if it were a slow one.
#[derive(Debug, Clone)]
pub struct ExitWatch {
    pub epoch: u32,
    pub pid: u32,
    /// How it ended (`signal: 9 (SIGKILL)`, `exit status: 1`), once it has.
    rx: watch::Receiver<Option<String>>,
}

impl ExitWatch {
    /// True once the process has exited: reaped (the flag), or dead and not reaped yet. The
    /// flag lags a kill by one turn of the runtime (SIGCHLD, then the reaping task); a decision
    /// such as "hot restart from this parent?" must not. An unreaped pid cannot be reused, so
    /// its `/proc` entry is this process's.
    pub fn has_exited(&self) -> bool {
        if self.rx.borrow().is_some() {
            return true;
        }
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            // "pid (comm) state ...": the command may hold ')' too, so the last one ends it.
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
            Err(_) => true,
        }
    }

    /// Resolves when the process has exited.
    pub async fn exited(&self) {
        let mut rx = self.rx.clone();
        // An error means the reaping task is gone, which it is only after the exit.
        let _ = rx.wait_for(Option::is_some).await;
    }

    /// "envoy epoch N (pid P) exited (how)": what a step that stopped because of it says.
    pub fn describe(&self) -> String {
        match self.rx.borrow().as_deref() {
            Some(how) => format!(
                "envoy epoch {} (pid {}) exited ({how})",
                self.epoch, self.pid
            ),
            None => format!("envoy epoch {} (pid {}) exited", self.epoch, self.pid),
        }
    }
}

/// An epoch's exit, as the waiting task reports it.
#[derive(Debug)]
pub struct Exit {
    pub pid: u32,
    pub status: std::io::Result<ExitStatus>,
}

impl Epoch {
    /// The last lines this epoch wrote to the log file (its main thread tags them with its pid),
    /// then the last of what it wrote to stderr.
    pub fn log_tail(&self) -> Vec<String> {
        let mut lines = log_tail(&self.log_file, self.pid);
        lines.extend(stderr_tail(&self.stderr_file));
        lines
    }

    /// Signals the process, unless it has already exited and been reaped (its pid may then
    /// belong to another process).
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        if !self.has_exited() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), sig);
        }
    }

    pub fn has_exited(&self) -> bool {
        self.exited.has_exited()
    }

    /// A handle that tells when this process exits (cheap to clone).
    pub fn watch(&self) -> ExitWatch {
        self.exited.clone()
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
        "--log-path".to_owned(),
        e.log_file.display().to_string(),
        // Envoy flushes log files every 10 s by default: a crash would lose the last lines,
        // the ones worth reading.
        "--file-flush-interval-msec".to_owned(),
        "1000".to_owned(),
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
    (epoch, hash): (u32, &ConfigHash),
    stderr_file: &Path,
    exits: mpsc::UnboundedSender<Exit>,
) -> anyhow::Result<Epoch> {
    if let Some(dir) = settings.envoy.log_file.parent() {
        crate::store::create_private_dir(dir)?;
    }
    // A file, never a pipe: a pipe the supervisor holds could block Envoy, or kill it with the
    // supervisor.
    if let Some(dir) = stderr_file.parent() {
        crate::store::create_private_dir(dir)?;
    }
    let stderr = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(stderr_file)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", stderr_file.display()))?;
    let mut cmd = tokio::process::Command::new(&settings.envoy.binary);
    cmd.args(args(settings, config, epoch))
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::from(stderr))
        // systemd's notifications are the supervisor's to send, not Envoy's.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        // Envoy must outlive a dropped handle; the supervisor stops it deliberately.
        .kill_on_drop(false);
    // The flag that keeps the agent's own processes off transparent huge pages (main.rs) is
    // inherited across exec; Envoy gets the machine's setting, as its allocator expects. The
    // supervisor spawns from its one runtime thread, so nothing else allocates in between.
    let thp_off = nix::sys::prctl::get_thp_disable().unwrap_or(false);
    if thp_off {
        let _ = nix::sys::prctl::set_thp_disable(false);
    }
    let spawned = cmd.spawn();
    if thp_off {
        let _ = nix::sys::prctl::set_thp_disable(true);
    }
    let mut child = spawned.map_err(|e| {
        anyhow::anyhow!(
            "cannot start envoy at {}: {e} (install it with `make envoy`, or set envoy.binary)",
            settings.envoy.binary.display()
        )
    })?;
    let pid = child.id().unwrap_or(0);
    let (exited_tx, exited_rx) = watch::channel(None);
    tokio::spawn(async move {
        let status = child.wait().await;
        let _ = exited_tx.send(Some(describe(&status)));
        let _ = exits.send(Exit { pid, status });
    });
    Ok(Epoch {
        epoch,
        hash: hash.to_owned(),
        pid,
        log_file: settings.envoy.log_file.clone(),
        stderr_file: stderr_file.to_path_buf(),
        exited: ExitWatch {
            epoch,
            pid,
            rx: exited_rx,
        },
    })
}

/// How a process ended, in words.
pub fn describe(status: &std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(s) => s.to_string(),
        Err(e) => format!("wait failed: {e}"),
    }
}

/// What `pid` said last in an Envoy log file (`[time][pid][level]...`): its warnings and errors
/// when it logged any (the info lines of a start are mostly the list of extensions), else its
/// last few lines.
pub fn log_tail(file: &Path, pid: u32) -> Vec<String> {
    let Ok(mut f) = std::fs::File::open(file) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(LOG_WINDOW)));
    let mut text = String::new();
    let _ = f.take(LOG_WINDOW).read_to_string(&mut text);
    let tag = format!("][{pid}][");
    let mine: Vec<&str> = text.lines().filter(|l| l.contains(&tag)).collect();
    let serious: Vec<&str> = mine
        .iter()
        .copied()
        .filter(|l| {
            ["][warning][", "][error][", "][critical]["]
                .iter()
                .any(|lvl| l.contains(lvl))
        })
        .collect();
    let (lines, keep) = if serious.is_empty() {
        (mine, 5)
    } else {
        (serious, LOG_LINES)
    };
    lines[lines.len().saturating_sub(keep)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

/// The last lines of an epoch's stderr that say something: Envoy's own words when it could not
/// even open its log (its debug and info lines left out).
fn stderr_tail(file: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read(file) else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&text[text.len().saturating_sub(64 * 1024)..]).into_owned();
    let said: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains("][debug][") && !l.contains("][info]["))
        .collect();
    said[said.len().saturating_sub(5)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

/// What a start failure means, when Envoy's words say it plainly: another Envoy on this
/// machine holds the same `--base-id` (its hot-restart sockets are taken).
pub fn diagnose(lines: &[String], base_id: u32) -> Option<String> {
    lines
        .iter()
        .any(|l| l.contains("unable to bind domain socket with base_id"))
        .then(|| {
            format!(
                "another Envoy on this machine holds base-id {base_id}; set envoy.base_id to a free one"
            )
        })
}

/// How long `envoy --version` or `--hot-restart-version` may take: they print and exit, and a
/// binary that hangs instead (a broken upgrade, a stuck loader) must not hold up its caller.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `binary flag` for what it prints, killed after [`QUERY_TIMEOUT`].
pub async fn query(binary: &Path, flag: &str) -> anyhow::Result<std::process::Output> {
    let child = tokio::process::Command::new(binary)
        .arg(flag)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(QUERY_TIMEOUT, child).await {
        Ok(out) => out.map_err(|e| anyhow::anyhow!("cannot run {} {flag}: {e}", binary.display())),
        Err(_) => anyhow::bail!(
            "{} {flag} did not finish within {} s (killed)",
            binary.display(),
            QUERY_TIMEOUT.as_secs()
        ),
    }
}

/// The hot-restart version this Envoy binary speaks (`envoy --hot-restart-version`).
pub async fn binary_hot_restart_version(binary: &Path) -> anyhow::Result<String> {
    let out = query(binary, "--hot-restart-version").await?;
    let v = version_from_output(&out.stdout, &out.stderr);
    match v {
        Some(v) if out.status.success() => Ok(v),
        _ => anyhow::bail!(
            "{} --hot-restart-version printed {:?}",
            binary.display(),
            String::from_utf8_lossy(&[out.stdout.as_slice(), out.stderr.as_slice()].concat())
        ),
    }
}

/// The version line of `--hot-restart-version`'s output. Envoy prints it on stderr, and may
/// print log lines before it: 1.40 warns when its cgroup has no `cpu.max` (the cpu controller
/// is off, as it was under the unit before `CPUWeight=`). So the answer is the last line that
/// parses as a version.
fn version_from_output(stdout: &[u8], stderr: &[u8]) -> Option<String> {
    let text = [
        String::from_utf8_lossy(stdout),
        String::from_utf8_lossy(stderr),
    ]
    .join("\n");
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| super::shm::parse_version(l).is_some())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::version_from_output;

    #[test]
    fn hot_restart_version_is_the_last_version_line() {
        // What Envoy 1.40 printed under the supervisor unit's hardening, in the booted image.
        let stderr = b"[2026-11-24 07:43:52.591][892][warning][misc] [source/server/cgroup_cpu_util.cc:313] Expected cgroup v2 file not accessible at /sys/fs/cgroup/system.slice/vpsie-lb-envoy.service\n11.104\n";
        assert_eq!(version_from_output(b"", stderr).as_deref(), Some("11.104"));
        assert_eq!(
            version_from_output(b"11.104\n", b"").as_deref(),
            Some("11.104")
        );
        assert_eq!(
            version_from_output(b"", b"[warning] no version here\n"),
            None
        );
        assert_eq!(version_from_output(b"", b""), None);
    }
}
