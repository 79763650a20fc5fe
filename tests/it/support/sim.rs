//! The API stand-in (`vpsie-api-sim`) as a process, and the agent beside it: settings for an
//! agent that talks to it and to a stand's supervisor, and the real `vpsie-lb-agent run`.

use super::supervisor::Stand;
use serde_json::{json, Value};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vpsie_lb_agent::settings::Settings;

pub const LB: &str = "lb-agent";

/// The API stand-in as a process; killed on drop.
pub struct Sim {
    pub child: Child,
    pub port: u16,
    pub token: String,
    pub spec: PathBuf,
    _dir: tempfile::TempDir,
}

impl Sim {
    pub fn start(spec: &Value) -> Sim {
        let dir = tempfile::tempdir().unwrap();
        let token = "test-token-123".to_owned();
        std::fs::write(dir.path().join("token"), &token).unwrap();
        let spec_path = dir.path().join("lb.json");
        std::fs::write(&spec_path, spec.to_string()).unwrap();
        let (child, port) = spawn(dir.path(), 0);
        Sim {
            child,
            port,
            token,
            spec: spec_path,
            _dir: dir,
        }
    }

    /// Kills the stand-in: the API is down (connections refused) until [`Sim::restart`].
    /// What it recorded is gone with it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the stand-in again on the same port, serving the same spec file.
    pub fn restart(&mut self) {
        self.kill();
        let (child, port) = spawn(self._dir.path(), self.port);
        assert_eq!(port, self.port);
        self.child = child;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Replaces the spec file by a rename: the stand-in reads it fresh on every request and
    /// must never serve half a file.
    pub fn write_spec(&self, spec: &Value) {
        let tmp = self.spec.with_extension("json.tmp");
        std::fs::write(&tmp, spec.to_string()).unwrap();
        std::fs::rename(&tmp, &self.spec).unwrap();
    }

    pub async fn events(&self) -> Vec<Value> {
        let r: Value = client()
            .get(self.url(&format!("/sim/events?lb={LB}")))
            .header("Vpsie-Auth", &self.token)
            .send()
            .await
            .unwrap()
            .json_value()
            .await;
        r["data"].as_array().cloned().unwrap_or_default()
    }

    pub async fn fault(&self, kind: &str, count: u32) {
        self.fault_ms(kind, count, 300).await;
    }

    pub async fn fault_ms(&self, kind: &str, count: u32, delay_ms: u64) {
        let r = client()
            .post(self.url("/sim/faults"))
            .header("Vpsie-Auth", &self.token)
            .header("content-type", "application/json")
            .body(json!({"kind": kind, "count": count, "delay_ms": delay_ms}).to_string())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "fault {kind}: {}", r.status());
    }
}

impl Sim {
    pub async fn clear_faults(&self) {
        let r = client()
            .delete(self.url("/sim/faults"))
            .header("Vpsie-Auth", &self.token)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The stand-in process on `port` (0: any), serving `dir`'s `lb.json` with `dir`'s `token`;
/// returns once it listens, with its port.
fn spawn(dir: &std::path::Path, port: u16) -> (Child, u16) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vpsie-api-sim"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--token-file"])
        .arg(dir.join("token"))
        .arg("--lb")
        .arg(format!("{LB}={}", dir.join("lb.json").display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .rsplit(':')
        .next()
        .and_then(|p| p.trim().trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    (child, port)
}

pub trait JsonValue {
    async fn json_value(self) -> Value;
}

impl JsonValue for reqwest::Response {
    async fn json_value(self) -> Value {
        serde_json::from_slice(&self.bytes().await.unwrap()).unwrap()
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// Settings for an agent talking to `sim` and the stand's supervisor.
pub fn agent_settings(stand: &Stand, sim: &Sim) -> Settings {
    let mut s = stand.settings.clone();
    let key = stand.dir.path().join("api-key");
    std::fs::write(&key, &sim.token).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    s.vpsie.api_url = format!("http://127.0.0.1:{}", sim.port);
    s.vpsie.allowed_hosts = vec!["127.0.0.1".into()];
    s.vpsie.api_key_file = key;
    s.vpsie.loadbalancer_id = LB.into();
    s.vpsie.poll_interval_s = 1;
    s.vpsie.request_timeout_s = 5;
    s.dev.allow_insecure_http = true;
    s.state_dir = stand.dir.path().join("agent-state");
    s.metrics.port = crate::support::envoy::free_port();
    s
}

/// A running `vpsie-lb-agent run`, killed and reaped when dropped: a test that fails midway
/// leaves no agent behind (a bare `Child` would keep running, and keep writing into the test's
/// directory after it was removed).
pub struct AgentProcess(pub Child);

impl std::ops::Deref for AgentProcess {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for AgentProcess {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes `settings` for the real `vpsie-lb-agent run` and returns what starts one.
pub fn agent_process(stand: &Stand, settings: &Settings) -> impl Fn() -> AgentProcess {
    let conf = stand.dir.path().join("agent-run.yaml");
    std::fs::write(&conf, serde_yaml::to_string(settings).unwrap()).unwrap();
    move || {
        AgentProcess(
            Command::new(super::agent_bin())
                .args(["run", "--config"])
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }
}

/// Waits until the running agent process has counted a poll with this result (its own
/// `/metrics`: a new process starts from zero, so the count is about this process only).
pub async fn wait_polls(settings: &Settings, result: &str) {
    let url = format!("http://127.0.0.1:{}/metrics", settings.metrics.port);
    let line = format!("vpsie_lb_agent_polls_total{{result=\"{result}\"}} ");
    let c = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = match c.get(&url).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let count = text
            .lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if count >= 1.0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no poll ended {result} within 20 s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One value of the running agent's own metrics (`name` with its labels), if it answers.
pub async fn agent_metric(port: u16, name: &str) -> Option<f64> {
    let text = client()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}
