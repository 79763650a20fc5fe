//! A real `vpsie-lb-agent supervise` process with its own directory, ports and socket.

use super::envoy::free_port;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use vpsie_lb_agent::command::{self, Failure};
use vpsie_lb_agent::settings::Settings;
use vpsie_lb_agent::supervisor::protocol::{ApplyOutcome, Status};

/// Base ids must differ between tests that run at the same time (they name shared memory).
fn unique_base_id() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    1000 + (std::process::id() % 1000) * 16 + NEXT.fetch_add(1, Ordering::SeqCst)
}

pub struct Stand {
    pub dir: TempDir,
    pub settings: Settings,
    pub config_file: PathBuf,
    /// Extra environment for the supervisor process (NOTIFY_SOCKET, RUST_LOG...).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Stand {
    /// Settings for a loopback stand with short drain times; `tweak` may change them.
    pub fn settings(dir: &std::path::Path, tweak: impl FnOnce(&mut Settings)) -> Settings {
        let mut s = super::envoy::test_settings(dir);
        s.envoy.config_dir = dir.join("envoy");
        s.envoy.cert_dir = None;
        s.envoy.base_id = unique_base_id();
        s.envoy.drain_time_s = 1;
        s.envoy.parent_shutdown_time_s = 2;
        s.envoy.concurrency = Some(1);
        s.supervisor.socket = dir.join("supervisor.sock");
        s.supervisor.live_timeout_s = 10;
        s.supervisor.confirm_timeout_s = 10;
        s.state_dir = dir.join("state");
        s.envoy.log_file = dir.join("envoy.log");
        tweak(&mut s);
        s
    }

    pub async fn start(tweak: impl FnOnce(&mut Settings)) -> Stand {
        Self::start_with_env(tweak, Vec::new()).await
    }

    pub async fn start_with_env(
        tweak: impl FnOnce(&mut Settings),
        env: Vec<(String, String)>,
    ) -> Stand {
        let dir = tempfile::tempdir().unwrap();
        let settings = Self::settings(dir.path(), tweak);
        let config_file = dir.path().join("agent.yaml");
        std::fs::write(&config_file, serde_yaml::to_string(&settings).unwrap()).unwrap();
        let mut stand = Stand {
            dir,
            settings,
            config_file,
            env,
            child: None,
        };
        stand.spawn_supervisor().await;
        stand
    }

    /// (Re)starts the supervisor process and waits for its socket.
    pub async fn spawn_supervisor(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("supervisor.log"))
            .unwrap();
        let child = Command::new(super::agent_bin())
            .args(["supervise", "--config"])
            .arg(&self.config_file)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.settings.supervisor.socket.exists()
            || tokio::net::UnixStream::connect(&self.settings.supervisor.socket)
                .await
                .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "the supervisor did not start:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("supervisor.log")).unwrap_or_default()
    }

    pub async fn apply(&self, spec: &Value) -> Result<ApplyOutcome, Failure> {
        let p =
            command::prepare_for_store(spec.to_string().as_bytes(), &self.settings, super::now())?;
        vpsie_lb_agent::supervisor::client::hand_over(&p, &self.settings, false).await
    }

    /// The config hash `spec` gets with this stand's settings.
    pub fn hash_of(&self, spec: &Value) -> vpsie_lb_agent::spec::ConfigHash {
        command::prepare_for_store(spec.to_string().as_bytes(), &self.settings, super::now())
            .unwrap()
            .hash
    }

    /// Applies `spec` and waits until it is in effect for traffic too: every pool that moved has
    /// finished its transition (new hosts checked, old ones gone), as `status` says.
    pub async fn apply_ok(&self, spec: &Value) -> ApplyOutcome {
        let out = self
            .apply(spec)
            .await
            .unwrap_or_else(|e| panic!("apply failed: {e}\nsupervisor log:\n{}", self.log()));
        self.settled().await;
        out
    }

    /// Waits until no pool is in transition (a stuck one fails the test).
    pub async fn settled(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.status().await;
            if s.transitions.is_empty() {
                return;
            }
            assert!(
                s.transitions.iter().all(|t| t.stuck.is_none()) && Instant::now() < deadline,
                "pools still moving: {:?}\nsupervisor log:\n{}",
                s.transitions,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The supervisor's metrics, in Prometheus text format.
    pub async fn metrics(&self) -> String {
        use vpsie_lb_agent::supervisor::protocol::{self, Request, Response};
        match protocol::call(
            &self.settings.supervisor.socket,
            &Request::Metrics,
            Duration::from_secs(5),
        )
        .await
        .unwrap()
        {
            Response::Metrics { text } => text,
            other => panic!("{other:?}"),
        }
    }

    pub async fn status(&self) -> Status {
        vpsie_lb_agent::supervisor::client::status(&self.settings)
            .await
            .unwrap()
    }

    pub fn supervisor_pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn signal_supervisor(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.supervisor_pid() as i32);
        nix::sys::signal::kill(pid, sig).unwrap();
    }

    /// Waits for the supervisor process to exit; returns whether it did in time.
    pub fn wait_supervisor(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().unwrap();
        loop {
            if child.try_wait().unwrap().is_some() {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Rewrites the settings file with `tweak` applied and sends SIGHUP; waits until the
    /// supervisor's log holds `expect` once more than before.
    pub async fn reload(&mut self, tweak: impl FnOnce(&mut Settings), expect: &str) {
        tweak(&mut self.settings);
        std::fs::write(
            &self.config_file,
            serde_yaml::to_string(&self.settings).unwrap(),
        )
        .unwrap();
        let before = self.log().matches(expect).count();
        self.signal_supervisor(nix::sys::signal::Signal::SIGHUP);
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.log().matches(expect).count() <= before {
            assert!(
                Instant::now() < deadline,
                "the supervisor did not log {expect:?} after SIGHUP:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn front_port() -> u16 {
        free_port()
    }
}

impl Drop for Stand {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // INT: stop Envoy at once; then make sure nothing is left.
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(vpsie_lb_agent::envoy::shm::path(
            self.settings.envoy.base_id,
        ));
    }
}
