//! A real Envoy serving a rendered spec, on loopback, for traffic tests.

use serde_json::Value;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use vpsie_lb_agent::command;
use vpsie_lb_agent::settings::Settings;
use vpsie_lb_agent::store;

/// A free TCP port on 127.0.0.1 for a listener Envoy will bind later. Taken from a counter below
/// the kernel's ephemeral range (32768 and up), where upstreams binding port 0 never land, so
/// that a port handed out here cannot be taken by another test before Envoy binds it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 20_000 + (std::process::id() % 60) * 200;
    loop {
        let port = (base + NEXT.fetch_add(1, Ordering::SeqCst) % 200) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A client for the admin socket of `settings` (a fresh connection per request: after a hot
/// restart a kept-alive one would reach the old epoch).
pub fn admin_client(settings: &Settings) -> reqwest::Client {
    reqwest::Client::builder()
        .unix_socket(settings.envoy.admin_socket.as_path())
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// The body of one page of the admin API of `settings`' Envoy (`path` with its query).
pub async fn admin_page(settings: &Settings, path: &str) -> String {
    admin_client(settings)
        .get(format!("http://envoy{path}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Envoy's stats matching the regex `filter`, read once from its admin socket: a lookup by name
/// (0 when missing).
pub async fn stats(settings: &Settings, filter: &str) -> impl Fn(&str) -> u64 {
    let text = admin_page(settings, &format!("/stats?filter={filter}")).await;
    move |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// A client whose connections come from `from` (a loopback address, or a namespace's), a
/// fresh one for every request; HTTP/2 with prior knowledge when `h2`.
pub fn client_from(from: std::net::IpAddr, h2: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .local_address(from)
        .pool_max_idle_per_host(0)
        .timeout(std::time::Duration::from_secs(5));
    if h2 {
        b = b.http2_prior_knowledge();
    }
    b.build().unwrap()
}

/// Settings for a test stand: loopback everything, fresh ports, files in `dir`.
pub fn test_settings(dir: &Path) -> Settings {
    let mut s = Settings::default();
    s.envoy.binary = super::envoy_bin();
    s.envoy.config_dir = dir.to_path_buf();
    s.envoy.cert_dir = Some(dir.join("certs"));
    s.envoy.admin_socket = dir.join("admin.sock");
    s.envoy.listen_addresses = Some(vec!["127.0.0.1".parse().unwrap()]);
    s.envoy.redirect_port = free_port();
    s.access_log.path = dir.join("access.log");
    s.dev.allow_loopback_backends = true;
    s
}

/// An Envoy process serving one spec (one worker unless `envoy.concurrency` says). Killed and
/// reaped on drop.
pub struct Envoy {
    child: Child,
    pub settings: Settings,
    pub log: PathBuf,
    pub hash: String,
    _dir: TempDir,
}

impl Envoy {
    /// Renders `spec` (must be valid), writes it, starts Envoy and waits until it is LIVE.
    pub async fn start(spec: &Value) -> Envoy {
        let dir = tempfile::tempdir().unwrap();
        let settings = test_settings(dir.path());
        Self::start_with(spec, settings, dir).await
    }

    pub async fn start_with(spec: &Value, settings: Settings, dir: TempDir) -> Envoy {
        let prepared = command::prepare(spec.to_string().as_bytes(), &settings, super::now())
            .unwrap_or_else(|e| panic!("spec refused: {e}"));
        let config = dir.path().join("envoy.json");
        store::write_rendered(&prepared.rendered, &config).unwrap();
        let log = dir.path().join("envoy.log");
        let logfile = std::fs::File::create(&log).unwrap();
        let child = Command::new(&settings.envoy.binary)
            .arg("--config-path")
            .arg(&config)
            .arg("--concurrency")
            .arg(settings.envoy.concurrency.unwrap_or(1).to_string())
            .args(["--log-level", "warn", "--disable-hot-restart"])
            .stdin(Stdio::null())
            .stdout(logfile.try_clone().unwrap())
            .stderr(logfile)
            .spawn()
            .expect("cannot start envoy");
        let envoy = Envoy {
            child,
            settings,
            log,
            hash: prepared.hash.to_string(),
            _dir: dir,
        };
        envoy.wait_live().await;
        envoy
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://envoy-admin{path}")
    }

    /// A client that reaches Envoy's admin socket (and nothing else).
    pub fn admin_client(&self) -> reqwest::Client {
        admin_client(&self.settings)
    }

    /// GETs an admin page and returns its body.
    /// Envoy's count of a rule's refused connections (source lists), as Prometheus scrapes it.
    pub async fn refused_count(&self, rule: &str) -> u64 {
        let text = self.admin_text("/stats/prometheus").await;
        let series =
            format!("envoy_tcp_downstream_cx_no_route{{envoy_tcp_prefix=\"refused/{rule}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    pub async fn admin_text(&self, path: &str) -> String {
        admin_page(&self.settings, path).await
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_live(&self) {
        let client = self.admin_client();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = client.get(self.admin_url("/ready")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "envoy did not become LIVE within 20 s; its log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the cluster's health checker sees `healthy` healthy hosts.
    /// The ports of the hosts Envoy counts healthy in `cluster`: active check passed, not
    /// ejected by outlier detection.
    pub async fn healthy_ports(&self, cluster: &str) -> std::collections::BTreeSet<u16> {
        let v: Value =
            serde_json::from_str(&self.admin_text("/clusters?format=json").await).unwrap();
        v["cluster_statuses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["name"] == cluster)
            .flat_map(|c| c["host_statuses"].as_array().cloned().unwrap_or_default())
            .filter(|h| {
                let s = &h["health_status"];
                s["eds_health_status"] == "HEALTHY"
                    && s.get("failed_active_health_check").is_none()
                    && s.get("failed_outlier_check").is_none()
            })
            .filter_map(|h| h["address"]["socket_address"]["port_value"].as_u64())
            .map(|p| p as u16)
            .collect()
    }

    pub async fn wait_healthy(&self, cluster: &str, healthy: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let n = self.healthy_ports(cluster).await.len();
            if n == healthy {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cluster {cluster} has {n} healthy hosts, waited for {healthy}: {}",
                self.admin_text("/clusters").await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until Envoy (reached through `settings`' admin socket) has no listener and no filter
/// chain draining: whatever an update drained has been closed by now.
pub async fn wait_not_draining(settings: &Settings) {
    let admin = admin_client(settings);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let stats = admin
            .get("http://envoy-admin/stats?filter=^listener_manager\\.total_(listeners|filter_chains)_draining$")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let draining: u64 = stats
            .lines()
            .filter_map(|l| l.rsplit_once(": ")?.1.trim().parse::<u64>().ok())
            .sum();
        if draining == 0 && stats.lines().count() == 2 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still draining: {stats}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Another Envoy holding a base id (as an installed load balancer would), stopped on drop.
pub struct Squatter {
    child: std::process::Child,
    _dir: TempDir,
}

impl Squatter {
    /// Starts it and waits until it holds `base_id` (its hot-restart socket is bound).
    pub fn start(base_id: u32) -> Squatter {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("envoy.yaml");
        std::fs::write(
            &config,
            format!(
                "admin: {{address: {{pipe: {{path: {}}}}}}}\nstatic_resources: {{}}\n",
                dir.path().join("admin.sock").display()
            ),
        )
        .unwrap();
        let child = Command::new(super::envoy_bin())
            .arg("-c")
            .arg(&config)
            .args(["--base-id", &base_id.to_string(), "--log-path"])
            .arg(dir.path().join("envoy.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let socket = format!("@envoy_domain_socket_parent_{}", base_id * 10);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string("/proc/net/unix")
            .unwrap()
            .contains(&socket)
        {
            assert!(
                Instant::now() < deadline,
                "the squatter never bound {socket}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Squatter { child, _dir: dir }
    }
}

impl Drop for Squatter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
