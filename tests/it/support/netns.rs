//! Network namespaces a test makes for itself: a LAN (a bridge in a namespace of its own), a
//! client and some nodes, each joined to the bridge by a veth pair, with addresses from
//! 198.18.0.0/24 and 2001:2::/64 (the same last number in both). Dropping the lab kills
//! everything running in its namespaces and deletes them, also after a failed assertion. Needs
//! root (or CAP_NET_ADMIN and CAP_SYS_ADMIN) and `ip`.

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const CLIENT_IP: &str = "198.18.0.1";
pub const CLIENT_IP6: &str = "2001:2::1";

/// The address of node `i`.
pub fn node_ip(i: usize) -> String {
    format!("198.18.0.{}", 10 + i)
}

/// The IPv6 address of node `i`.
pub fn node_ip6(i: usize) -> String {
    format!("2001:2::{}", 10 + i)
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip (iproute2): {e}; the HA tests need it and root"));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Each namespace's own addresses (`address/prefix`), the ones `Lab::link` keeps.
static OWN: Mutex<std::collections::BTreeMap<String, Vec<String>>> =
    Mutex::new(std::collections::BTreeMap::new());

pub struct Lab {
    pub client: String,
    pub nodes: Vec<String>,
    lan: String,
}

impl Lab {
    pub fn new(nodes: usize) -> Lab {
        Lab::sweep();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "vlb{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let lab = Lab {
            client: format!("{prefix}c"),
            nodes: (0..nodes).map(|i| format!("{prefix}n{i}")).collect(),
            lan: format!("{prefix}l"),
        };
        // Dropped on any panic below too: what was made so far is removed.
        for ns in lab.all() {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&["-n", &lab.lan, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &lab.lan, "link", "set", "br0", "up"]);
        let members: Vec<(String, String, String)> = std::iter::once((
            lab.client.clone(),
            CLIENT_IP.to_owned(),
            CLIENT_IP6.to_owned(),
        ))
        .chain(
            lab.nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (n.clone(), node_ip(i), node_ip6(i))),
        )
        .collect();
        for (k, (ns, addr, addr6)) in members.iter().enumerate() {
            let port = format!("p{k}");
            ip(&[
                "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", &port, "netns",
                &lab.lan,
            ]);
            ip(&["-n", &lab.lan, "link", "set", &port, "master", "br0", "up"]);
            Lab::add_address(ns, &format!("{addr}/24"));
            Lab::add_address(ns, &format!("{addr6}/64"));
            // A link taken down keeps its IPv6 addresses, as its IPv4 ones (a VM's interface
            // going down does not unconfigure it): `link` removes what a VM would lose.
            // (/proc/sys/net is the writing thread's namespace's.)
            in_netns(ns, || {
                std::fs::write("/proc/sys/net/ipv6/conf/eth0/keep_addr_on_down", "1")
            })
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("{ns}: keep_addr_on_down: {e}"));
            OWN.lock().unwrap().insert(
                ns.clone(),
                vec![format!("{addr}/24"), format!("{addr6}/64")],
            );
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
        }
        lab
    }

    /// Adds an address (`address/prefix`) to `ns`'s eth0; an IPv6 one usable at once (no
    /// duplicate address detection: the lab's addresses are unique by construction).
    pub fn add_address(ns: &str, cidr: &str) {
        let mut args = vec!["-n", ns, "addr", "add", cidr, "dev", "eth0"];
        if cidr.contains(':') {
            args.push("nodad");
        }
        ip(&args);
    }

    /// Removes the namespaces of earlier test runs that were killed before they could clean up
    /// (`vlb<pid>x...` whose process is gone).
    fn sweep() {
        let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
            return;
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            let Some(pid) = name
                .strip_prefix("vlb")
                .and_then(|r| r.split_once('x'))
                .and_then(|(p, _)| p.parse::<u32>().ok())
            else {
                continue;
            };
            let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
            if !alive {
                Lab::kill_everything_in(name);
                let _ = Command::new("ip").args(["netns", "del", name]).output();
            }
        }
    }

    fn all(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.lan)
            .chain(std::iter::once(&self.client))
            .chain(self.nodes.iter())
    }

    /// A command run inside namespace `ns`.
    pub fn exec(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }

    /// SIGKILLs every process in `ns`: the node is gone as if its VM stopped.
    pub fn kill_everything_in(ns: &str) {
        let out = Command::new("ip").args(["netns", "pids", ns]).output();
        let Ok(out) = out else { return };
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    /// Takes `ns`'s eth0 down (every address but the node's own removed: the virtual IPs a
    /// killed keepalived left behind) or up.
    pub fn link(ns: &str, up: bool) {
        if up {
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
            return;
        }
        ip(&["-n", ns, "link", "set", "eth0", "down"]);
        let own = OWN.lock().unwrap().get(ns).cloned().unwrap_or_default();
        let listed = Lab::addresses(ns);
        for extra in listed
            .split_whitespace()
            .skip(2)
            .filter(|a| !a.starts_with("fe80:") && !own.iter().any(|o| o == a))
        {
            ip(&["-n", ns, "addr", "del", extra, "dev", "eth0"]);
        }
    }

    /// Addresses on `ns`'s eth0 (to see who holds a virtual IP).
    pub fn addresses(ns: &str) -> String {
        let out = Command::new("ip")
            .args(["-n", ns, "-brief", "addr", "show", "dev", "eth0"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.all() {
            Lab::kill_everything_in(ns);
        }
        for ns in self.all() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Runs `f` on a thread of its own inside namespace `ns`: sockets it makes belong there.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
}

/// One request's result: the backend that answered, or why none did.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    pub target: SocketAddr,
    pub answer: Result<String, String>,
}

/// Clients in the client namespace, one per target, each sending `GET /` on a fresh connection
/// every few milliseconds and recording who answered.
pub struct Probe {
    stop: Arc<AtomicBool>,
    pub samples: Arc<Mutex<Vec<Sample>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn get(target: SocketAddr) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(&target, Duration::from_millis(500))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok();
    s.write_all(b"GET / HTTP/1.1\r\nhost: lb\r\nconnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    if !text.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "answer: {}",
            text.lines().next().unwrap_or("nothing")
        ));
    }
    text.lines()
        .find_map(|l| l.strip_prefix("x-backend: "))
        .map(|n| n.trim().to_owned())
        .ok_or_else(|| "no x-backend".to_owned())
}

impl Probe {
    pub fn start(client_ns: &str, targets: &[SocketAddr]) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let threads = targets
            .iter()
            .map(|&target| {
                let (stop, samples) = (stop.clone(), samples.clone());
                in_netns(client_ns, move || {
                    while !stop.load(Ordering::Relaxed) {
                        let answer = get(target);
                        samples.lock().unwrap().push(Sample {
                            at: Instant::now(),
                            target,
                            answer,
                        });
                        // A request every 10 ms, answered or not: the rate (so that failures
                        // count time), not a wait for anything.
                        std::thread::sleep(Duration::from_millis(10));
                    }
                })
            })
            .collect();
        Probe {
            stop,
            samples,
            threads,
        }
    }

    /// Waits until the last `n` answers for `target` all came from `backend`.
    pub fn wait_served_by(&self, target: SocketAddr, backend: &str, within: Duration) -> Instant {
        let deadline = Instant::now() + within;
        loop {
            let now = Instant::now();
            {
                let s = self.samples.lock().unwrap();
                let last: Vec<&Sample> = s
                    .iter()
                    .rev()
                    .filter(|x| x.target == target)
                    .take(5)
                    .collect();
                if last.len() == 5 && last.iter().all(|x| x.answer.as_deref() == Ok(backend)) {
                    return now;
                }
                if now > deadline {
                    let tail: Vec<String> =
                        last.iter().map(|x| format!("{:?}", x.answer)).collect();
                    panic!("{target} not served by {backend} within {within:?}; last answers: {tail:?}");
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// For `target`, between `from` and `to`: the longest time without a successful answer,
    /// the failed requests, and who answered (in order, repeats collapsed).
    pub fn window(&self, target: SocketAddr, from: Instant, to: Instant) -> Window {
        let s = self.samples.lock().unwrap();
        let mut w = Window::default();
        let mut last_ok = from;
        for x in s
            .iter()
            .filter(|x| x.target == target && x.at >= from && x.at <= to)
        {
            match &x.answer {
                Ok(b) => {
                    w.longest_gap = w.longest_gap.max(x.at - last_ok);
                    last_ok = x.at;
                    if w.served_by.last() != Some(b) {
                        w.served_by.push(b.clone());
                    }
                    w.ok += 1;
                }
                Err(e) => {
                    w.failed += 1;
                    if w.errors.len() < 5 {
                        w.errors.push(e.clone());
                    }
                }
            }
        }
        w
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Probe {
    /// A failed test stops its clients too (they would loop on in a deleted namespace).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
pub struct Window {
    pub longest_gap: Duration,
    pub ok: u64,
    pub failed: u64,
    pub errors: Vec<String>,
    pub served_by: Vec<String>,
}
