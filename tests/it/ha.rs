//! High availability with keepalived, in network namespaces the tests make (198.18.0.0/24, a
//! bridge between them): each "VM" namespace runs the API stand-in (with a backend that answers
//! with the node's name), a supervisor with its real Envoy, an agent and keepalived, all
//! following the same spec; a client namespace sends requests to the virtual IPs throughout.
//! Needs root, iproute2 and keepalived (`scripts/install-test-tools.sh`).

use crate::support::netns::{self, node_ip, node_ip6, Lab, Probe};
use crate::support::supervisor::Stand;
use serde_json::json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vpsie_lb_agent::settings::{HaMode, HaSettings, Settings};

const FRONT: u16 = 8080;
const SIM: u16 = 7000;
const UPSTREAM: u16 = 9000;

fn spec(max_connections: u32, weight: u32) -> serde_json::Value {
    json!({"identifier": "lb-ha", "lbName": "ha", "maxConnections": max_connections, "rules": [
        {"ruleId": "web", "scheme": "http", "frontPort": FRONT, "backPort": UPSTREAM,
         "checkInterval": 1000, "rise": 1,
         "backends": [{"identifier": "b", "ip": "127.0.0.1", "weight": weight}]}]})
}

/// The `ha.on_master` command of the tests: appends its arguments (the log file, then the
/// virtual IP keepalived appends) to the log. Kept under the target directory: keepalived runs no
/// script from a world-writable directory such as /tmp.
fn on_master_script() -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ha-on-master.sh");
    let text = "#!/bin/sh\nlog=$1\nshift\necho \"master $*\" >> \"$log\"\n";
    if std::fs::read_to_string(&path).ok().as_deref() != Some(text) {
        let tmp = path.with_extension(format!("{}", std::process::id()));
        std::fs::write(&tmp, text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }
    path
}

/// One load-balancer VM: its namespace, files and processes.
struct Node {
    name: String,
    ns: String,
    dir: tempfile::TempDir,
    settings: Settings,
    settings_file: PathBuf,
    spec_file: PathBuf,
    sim: Option<Child>,
    supervisor: Option<Child>,
    agent: Option<Child>,
    keepalived: Option<Child>,
}

fn log_file(dir: &Path, name: &str) -> Stdio {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .unwrap()
        .into()
}

impl Node {
    fn new(lab: &Lab, i: usize, mode: HaMode, vips: &[String], spec_file: &Path) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut s = Stand::settings(d, |s| {
            s.envoy.listen_addresses = None;
            s.envoy.redirect_port = 8081;
        });
        std::fs::write(d.join("api-key"), "test-token-123").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d.join("api-key"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        s.vpsie.api_url = format!("http://127.0.0.1:{SIM}");
        s.vpsie.allowed_hosts = vec!["127.0.0.1".into()];
        s.vpsie.api_key_file = d.join("api-key");
        s.vpsie.loadbalancer_id = "lb-ha".into();
        s.vpsie.poll_interval_s = 1;
        s.dev.allow_insecure_http = true;
        s.metrics.port = 9101;
        let me = node_ip(i).parse().unwrap();
        s.ha = Some(HaSettings {
            mode,
            interface: "eth0".into(),
            node_address: me,
            peers: (0..lab.nodes.len())
                .filter(|&j| j != i)
                .map(|j| node_ip(j).parse().unwrap())
                .collect(),
            node_address_v6: Some(node_ip6(i).parse().unwrap()),
            peers_v6: (0..lab.nodes.len())
                .filter(|&j| j != i)
                .map(|j| node_ip6(j).parse().unwrap())
                .collect(),
            multicast: false,
            virtual_ips: vips.to_vec(),
            router_id: 51,
            advert_interval_ms: 500,
            on_master: vec![
                on_master_script().display().to_string(),
                d.join("on-master.log").display().to_string(),
            ],
            keepalived_config: d.join("keepalived.conf"),
            // The tests run as root; the image runs the scripts as vpsie-lb.
            script_user: "root".into(),
            track_file: d.join("ha-serving"),
            state_dir: d.join("ha"),
        });
        let settings_file = d.join("agent.yaml");
        std::fs::write(&settings_file, serde_yaml::to_string(&s).unwrap()).unwrap();
        let mut node = Node {
            name: format!("node-{i}"),
            ns: lab.nodes[i].clone(),
            dir,
            settings: s,
            settings_file,
            spec_file: spec_file.to_path_buf(),
            sim: None,
            supervisor: None,
            agent: None,
            keepalived: None,
        };
        node.start_all();
        node
    }

    fn agent_cmd(&self, args: &[&str]) -> Command {
        let mut c = Lab::exec(&self.ns, env!("CARGO_BIN_EXE_vpsie-lb-agent"));
        c.args(args).arg("--config").arg(&self.settings_file);
        c
    }

    fn start_all(&mut self) {
        let d = self.dir.path().to_path_buf();
        // Booting: the node's own address only, link up.
        Lab::link(&self.ns, true);
        self.sim = Some(
            Lab::exec(&self.ns, env!("CARGO_BIN_EXE_vpsie-api-sim"))
                .args(["--listen", &format!("127.0.0.1:{SIM}"), "--token-file"])
                .arg(d.join("api-key"))
                .arg("--lb")
                .arg(format!("lb-ha={}", self.spec_file.display()))
                .arg("--upstream")
                .arg(format!("{}=127.0.0.1:{UPSTREAM}", self.name))
                .stdout(log_file(&d, "sim.log"))
                .stderr(log_file(&d, "sim.log"))
                .spawn()
                .unwrap(),
        );
        self.start_supervisor();
        self.agent = Some(
            self.agent_cmd(&["run"])
                .env("RUST_LOG", "info")
                .stdout(log_file(&d, "agent.log"))
                .stderr(log_file(&d, "agent.log"))
                .spawn()
                .unwrap(),
        );
        let out = self.agent_cmd(&["keepalived-config"]).output().unwrap();
        assert!(
            out.status.success(),
            "keepalived-config: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A VM boots with an empty /run: no pid file of a keepalived that was killed (its
        // children may linger as zombies, which keepalived would take for a running daemon).
        for f in ["keepalived.pid", "vrrp.pid", "checkers.pid"] {
            let _ = std::fs::remove_file(d.join(f));
        }
        self.keepalived = Some(
            Lab::exec(&self.ns, "keepalived")
                .args(["--dont-fork", "--log-console", "--log-detail", "--vrrp"])
                .arg("--use-file")
                .arg(&self.settings.ha.as_ref().unwrap().keepalived_config)
                .arg("--pid")
                .arg(d.join("keepalived.pid"))
                .arg("--vrrp_pid")
                .arg(d.join("vrrp.pid"))
                .arg("--checkers_pid")
                .arg(d.join("checkers.pid"))
                .stdout(log_file(&d, "keepalived.log"))
                .stderr(log_file(&d, "keepalived.log"))
                .spawn()
                .expect("keepalived (Debian package keepalived) must be installed"),
        );
    }

    fn start_supervisor(&mut self) {
        let d = self.dir.path().to_path_buf();
        self.supervisor = Some(
            self.agent_cmd(&["supervise"])
                .env("RUST_LOG", "info")
                .stdout(log_file(&d, "supervisor.log"))
                .stderr(log_file(&d, "supervisor.log"))
                .spawn()
                .unwrap(),
        );
    }

    /// The live Envoy's pid, as the supervisor reports it, once it serves a config.
    fn envoy_pid(&self, within: Duration) -> u32 {
        let deadline = Instant::now() + within;
        loop {
            let out = self.agent_cmd(&["status", "--json"]).output().unwrap();
            let v: serde_json::Value =
                serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
            let sup = &v["supervisor"];
            if sup["envoy_state"] == "LIVE" && sup["hash"].is_string() {
                if let Some(pid) = sup["envoy_pid"].as_u64() {
                    return pid as u32;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{}: envoy not serving: {v}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The agent's `/metrics`, fetched inside the node (it listens on the node's loopback).
    fn metrics(&self) -> String {
        netns::in_netns(&self.ns, || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(("127.0.0.1", 9101)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok();
            s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .ok()?;
            let mut text = String::new();
            s.read_to_string(&mut text).ok()?;
            Some(text)
        })
        .join()
        .unwrap()
        .unwrap_or_default()
    }

    /// Waits until the agent's metrics say `vip` is in `state` on this node.
    fn wait_metric_state(&self, vip: &str, state: &str, within: Duration) -> String {
        let line = format!("vpsie_lb_agent_vrrp_state{{state=\"{state}\",vip=\"{vip}\"}} 1");
        let deadline = Instant::now() + within;
        loop {
            let text = self.metrics();
            if text.contains(&line) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no `{line}` in\n{text}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The config hash the agent last applied.
    fn applied_hash(&self) -> String {
        let out = self.agent_cmd(&["status", "--json"]).output().unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        v["supervisor"]["hash"].as_str().unwrap_or("").to_owned()
    }

    /// Waits until the supervisor serves a config other than `old`.
    fn wait_applied_other_than(&self, old: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while self.applied_hash() == old || self.applied_hash().is_empty() {
            assert!(
                Instant::now() < deadline,
                "{}: the change was never applied\n{}",
                self.name,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The VRRP state `ha-notify` recorded for instance `n`, and how many changes.
    fn vrrp(&self, n: usize) -> Option<(String, u64)> {
        let ha = self.settings.ha.as_ref().unwrap();
        let bytes = std::fs::read(ha.state_dir.join(format!("vip_{n}.json"))).ok()?;
        let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        Some((v["state"].as_str()?.to_owned(), v["transitions"].as_u64()?))
    }

    fn kill(child: &mut Option<Child>) {
        if let Some(mut c) = child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The whole VM stops: every process in its namespace is killed at once and its network
    /// goes silent (a killed keepalived leaves its addresses behind; a stopped VM answers
    /// nothing).
    fn power_off(&mut self) {
        Lab::kill_everything_in(&self.ns);
        Lab::link(&self.ns, false);
        for c in [
            &mut self.keepalived,
            &mut self.agent,
            &mut self.supervisor,
            &mut self.sim,
        ] {
            Node::kill(c);
        }
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for f in ["keepalived.log", "supervisor.log", "agent.log"] {
            let text = std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            out.push_str(&format!(
                "--- {} {f}:\n{}\n",
                self.name,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        out
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.power_off();
    }
}

fn target(vip: &str) -> SocketAddr {
    SocketAddr::new(vip.parse().unwrap(), FRONT)
}

fn kill_pid(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

/// Prints one event's figures and checks the target: service back within 3 s.
fn back_within_3s(
    probe: &Probe,
    vip: &str,
    what: &str,
    from: Instant,
    to: Instant,
    nodes: &[Node],
) {
    let w = report(probe, vip, what, from, to);
    let logs: String = nodes.iter().map(Node::logs).collect();
    assert!(
        w.longest_gap < Duration::from_secs(3),
        "{what}: {w:?}\n{logs}"
    );
}

/// Prints one event's figures.
fn report(probe: &Probe, vip: &str, what: &str, from: Instant, to: Instant) -> netns::Window {
    let w = probe.window(target(vip), from, to);
    println!(
        "{what}: {vip} without service {:.2} s, {} failed / {} ok requests, served by {:?} {:?}",
        w.longest_gap.as_secs_f64(),
        w.failed,
        w.ok,
        w.served_by,
        w.errors
    );
    w
}

/// Two nodes share one virtual IP of each family (VRRP v2 for the IPv4 one, v3 over IPv6 for the
/// other). Envoy killed on the master (three times), its supervisor killed, and the whole node
/// stopped: each time the other node serves both addresses within 3 s, and the first takes them
/// back once it serves again.
#[test]
fn active_standby_moves_the_virtual_ips_when_the_master_stops_serving() {
    let lab = Lab::new(2);
    let shared = tempfile::tempdir().unwrap();
    let spec_file = shared.path().join("lb.json");
    std::fs::write(&spec_file, spec(50_000, 100).to_string()).unwrap();
    let both = ["198.18.0.100", "2001:2::100"];
    let vips = vec![format!("{}/24", both[0]), format!("{}/64", both[1])];
    let mut nodes: Vec<Node> = (0..2)
        .map(|i| Node::new(&lab, i, HaMode::ActiveStandby, &vips, &spec_file))
        .collect();
    let probe = Probe::start(&lab.client, &both.map(target));
    let dump = |nodes: &[Node]| nodes.iter().map(Node::logs).collect::<String>();
    let settle = Duration::from_secs(30);
    // When both addresses were served by `by` (the later of the two).
    let served = |by: &str, nodes: &[Node]| {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            both.map(|vip| probe.wait_served_by(target(vip), by, settle))
        }));
        let at = r.unwrap_or_else(|_| panic!("not served by {by}\n{}", dump(nodes)));
        at[0].max(at[1])
    };
    let back_within_3s = |what: &str, from: Instant, to: Instant, nodes: &[Node]| {
        for vip in both {
            back_within_3s(&probe, vip, what, from, to, nodes);
        }
    };
    served("node-0", &nodes);
    nodes[1].envoy_pid(settle);
    // keepalived ran ha.on_master with each virtual IP on becoming master.
    let log = nodes[0].dir.path().join("on-master.log");
    let deadline = Instant::now() + settle;
    let ran = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort();
        lines == ["master 198.18.0.100", "master 2001:2::100"]
    };
    while !ran() {
        assert!(
            Instant::now() < deadline,
            "on_master did not run: {:?}",
            std::fs::read_to_string(&log)
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    for round in 1..=3 {
        let pid = nodes[0].envoy_pid(settle);
        let t0 = Instant::now();
        kill_pid(pid);
        // The supervisor restarts Envoy; node-0 serves again and takes the address back.
        nodes[0].envoy_pid(settle);
        let back = served("node-0", &nodes);
        back_within_3s(&format!("envoy SIGKILL {round}"), t0, back, &nodes);
    }

    // The supervisor dies (Envoy with it): node-1 takes over, by keepalived's check.
    let t0 = Instant::now();
    Node::kill(&mut nodes[0].supervisor);
    let moved = served("node-1", &nodes);
    back_within_3s("supervisor SIGKILL", t0, moved, &nodes);
    // systemd would restart it: node-0 serves again and takes its address back.
    let t1 = Instant::now();
    nodes[0].start_supervisor();
    let back = served("node-0", &nodes);
    back_within_3s("supervisor back", t1, back, &nodes);

    // A graceful stop (maintenance, an upgrade: SIGTERM) gives the address away first, then
    // drains: only what is sent during the move itself waits (VRRP has no overlap: a SYN or
    // two, retried).
    let t0 = Instant::now();
    let pid = nodes[0].supervisor.as_ref().unwrap().id();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let moved = served("node-1", &nodes);
    back_within_3s("supervisor stopped (SIGTERM)", t0, moved, &nodes);
    // It drains and exits by itself.
    let mut sup = nodes[0].supervisor.take().unwrap();
    let deadline = Instant::now() + settle;
    while sup.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the supervisor did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let t1 = Instant::now();
    nodes[0].start_supervisor();
    let back = served("node-0", &nodes);
    back_within_3s("supervisor started again", t1, back, &nodes);

    // The whole VM stops.
    let t0 = Instant::now();
    nodes[0].power_off();
    let moved = served("node-1", &nodes);
    back_within_3s("node-0 powered off", t0, moved, &nodes);
    let t1 = Instant::now();
    nodes[0].start_all();
    let back = served("node-0", &nodes);
    back_within_3s("node-0 back", t1, back, &nodes);
    probe.stop();
}

/// Three nodes, three virtual IPs of each family, each node owning one of each. One node stops:
/// both its addresses move to the next node, and the other four never miss a request; it comes
/// back and takes its addresses back, again without a failed request on the others. Then a
/// config change applied on every node (live, then by hot restart) moves no address at all.
#[test]
fn active_active_each_node_serves_its_own_address_and_covers_a_failed_peer() {
    let lab = Lab::new(3);
    let shared = tempfile::tempdir().unwrap();
    let spec_file = shared.path().join("lb.json");
    std::fs::write(&spec_file, spec(50_000, 100).to_string()).unwrap();
    // One address of each family per node: the k-th of the list is node k % 3's.
    let vips: Vec<String> = (0..3)
        .map(|i| format!("198.18.0.{}", 100 + i))
        .chain((0..3).map(|i| format!("2001:2::{}", 100 + i)))
        .collect();
    let owner = |k: usize| k % 3;
    let with_prefix: Vec<String> = vips
        .iter()
        .map(|v| format!("{v}/{}", if v.contains(':') { 64 } else { 24 }))
        .collect();
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| Node::new(&lab, i, HaMode::ActiveActive, &with_prefix, &spec_file))
        .collect();
    let targets: Vec<SocketAddr> = vips.iter().map(|v| target(v)).collect();
    let probe = Probe::start(&lab.client, &targets);
    let dump = |nodes: &[Node]| nodes.iter().map(Node::logs).collect::<String>();
    let settle = Duration::from_secs(30);
    let served = |vip: usize, by: usize, nodes: &[Node]| {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            probe.wait_served_by(targets[vip], &format!("node-{by}"), settle)
        }));
        r.unwrap_or_else(|_| panic!("{} not served by node-{by}\n{}", vips[vip], dump(nodes)))
    };
    // Every address served by its owner (node i owns the i-th of each family: they sort the
    // same way).
    for k in 0..vips.len() {
        served(k, owner(k), &nodes);
    }
    // status and the metrics say so, on each node.
    for (n, node) in nodes.iter().enumerate() {
        for (k, vip) in vips.iter().enumerate() {
            let state = if owner(k) == n { "master" } else { "backup" };
            node.wait_metric_state(vip, state, settle);
        }
        let out = node.agent_cmd(&["status"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        for k in [n, n + 3] {
            assert!(
                text.contains(&format!("Virtual IP  {} MASTER (owner)", with_prefix[k])),
                "{text}"
            );
        }
    }

    let t0 = Instant::now();
    nodes[1].power_off();
    // node-1's addresses go to the node after it in address order, node-2, both families.
    let moved = served(1, 2, &nodes).max(served(4, 2, &nodes));
    for k in [1, 4] {
        back_within_3s(&probe, &vips[k], "node-1 powered off", t0, moved, &nodes);
    }
    for k in [0, 2, 3, 5] {
        let w = report(&probe, &vips[k], "  the others meanwhile", t0, moved);
        assert_eq!(
            (w.failed, w.served_by.clone()),
            (0, vec![format!("node-{}", owner(k))]),
            "{w:?}"
        );
    }
    let text = nodes[2].wait_metric_state(&vips[1], "master", settle);
    let changes = format!(
        "vpsie_lb_agent_vrrp_transitions_total{{vip=\"{}\"}} ",
        vips[1]
    );
    let counted: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix(changes.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(counted >= 2, "backup, then master: {counted}");

    let t1 = Instant::now();
    nodes[1].start_all();
    let back = served(1, 1, &nodes).max(served(4, 1, &nodes));
    for k in [1, 4] {
        back_within_3s(&probe, &vips[k], "node-1 back", t1, back, &nodes);
    }
    for k in [0, 2, 3, 5] {
        let w = report(&probe, &vips[k], "  the others meanwhile", t1, back);
        assert_eq!(
            (w.failed, w.served_by.clone()),
            (0, vec![format!("node-{}", owner(k))]),
            "{w:?}"
        );
    }

    // A config change on every node: live (a weight), then by hot restart (maxConnections).
    let transitions = |nodes: &[Node]| -> Vec<Option<(String, u64)>> {
        nodes
            .iter()
            .flat_map(|n| (0..vips.len()).map(|v| n.vrrp(v)))
            .collect()
    };
    // keepalived runs its notify script on its own time: the address can be back on node-1 a
    // moment before node-1 has recorded "master" (seen under load). Count from a settled state:
    // each node recorded as master of its own address and backup of the others.
    let deadline = Instant::now() + settle;
    loop {
        let states = transitions(&nodes);
        let settled = states.iter().enumerate().all(|(k, s)| {
            let (node, vip) = (k / vips.len(), k % vips.len());
            let want = if owner(vip) == node {
                "master"
            } else {
                "backup"
            };
            s.as_ref().is_some_and(|(state, _)| state == want)
        });
        if settled {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "VRRP states never settled: {states:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = transitions(&nodes);
    let t2 = Instant::now();
    for (change, s) in [
        ("live", spec(50_000, 50)),
        ("hot restart", spec(40_000, 50)),
    ] {
        let pids: Vec<u32> = nodes.iter().map(|n| n.envoy_pid(settle)).collect();
        let applied: Vec<String> = nodes.iter().map(|n| n.applied_hash()).collect();
        std::fs::write(&spec_file, s.to_string()).unwrap();
        for (n, old) in nodes.iter().zip(&applied) {
            n.wait_applied_other_than(old, settle);
        }
        let now: Vec<u32> = nodes.iter().map(|n| n.envoy_pid(settle)).collect();
        assert_eq!(
            change == "live",
            pids == now,
            "{change}: Envoy pids {pids:?} -> {now:?}"
        );
    }
    let t3 = Instant::now();
    for (k, vip) in vips.iter().enumerate() {
        let w = report(&probe, vip, "config changes on every node", t2, t3);
        assert_eq!(
            (w.failed, w.served_by.clone()),
            (0, vec![format!("node-{}", owner(k))]),
            "{w:?}"
        );
    }
    assert_eq!(transitions(&nodes), before, "no VRRP state changed");
    probe.stop();
}

/// keepalived's config test runs on the rendered config where it will be used (it checks the
/// interface), with the image's kind of script user (not root: keepalived 2.2.7's own test
/// kills itself then, so the agent tests a copy and checks the user itself), and names what is
/// wrong.
#[test]
fn keepalived_config_is_checked_by_keepalived_where_it_runs() {
    let lab = Lab::new(1);
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("agent.yaml");
    let out = dir.path().join("keepalived.conf");
    let run = |interface: &str, user: &str| {
        std::fs::write(
            &settings,
            format!(
                "ha:\n  mode: active_standby\n  interface: {interface}\n  node_address: {}\n  peers: [198.18.0.99]\n  virtual_ips: [198.18.0.100/24]\n  script_user: {user}\n",
                node_ip(0)
            ),
        )
        .unwrap();
        let o = Lab::exec(&lab.nodes[0], env!("CARGO_BIN_EXE_vpsie-lb-agent"))
            .args(["keepalived-config", "--config"])
            .arg(&settings)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (ok, err) = run("eth0", "nobody");
    assert!(ok, "{err}");
    assert!(std::fs::read_to_string(&out)
        .unwrap()
        .contains("script_user nobody"));
    let (ok, err) = run("eth9", "nobody");
    assert!(
        !ok && err.contains("interface eth9") && err.contains("doesn't exist"),
        "{err}"
    );
    let (ok, err) = run("eth0", "no-such-user");
    assert!(
        !ok && err.contains("\"no-such-user\" does not exist"),
        "{err}"
    );
}

/// keepalived runs its scripts with umask 0177: the notify script's directory must still be one
/// its user can create files in (0700), as the image test found.
#[test]
fn the_notify_script_works_under_keepalived_umask() {
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("agent.yaml");
    let state = dir.path().join("run").join("ha");
    std::fs::write(
        &settings,
        format!(
            "ha:\n  mode: active_standby\n  interface: eth1\n  node_address: 198.18.0.2\n  peers: [198.18.0.3]\n  virtual_ips: [198.18.0.100/24]\n  state_dir: {}\n",
            state.display()
        ),
    )
    .unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 0177 && exec {} ha-notify --config {} INSTANCE vip_0 BACKUP 100",
            env!("CARGO_BIN_EXE_vpsie-lb-agent"),
            settings.display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the state directory is {mode:o}");
    let rec = std::fs::read_to_string(state.join("vip_0.json")).unwrap();
    // No eth1 holds the address here: BACKUP is the state that is true.
    assert!(rec.contains("\"state\":\"backup\""), "{rec}");
}
