//! The data path: the config the agent renders, served by a real Envoy, beside HAProxy and
//! nginx as proxies, on the same upstreams and the same cores, in interleaved rounds.
//!
//! Upstreams: one nginx (1 worker) answering a 5-byte body on two ports, as two backends.
//! Proxies, each with 2 threads or workers: Envoy with the rendered config of one http rule
//! (round robin, TCP health checks), HAProxy 2.6 (`nbthread 2`, `check`, `option forwardfor`,
//! `http-reuse safe`), nginx (`worker_processes 2`, upstream keep-alive, X-Forwarded-For).
//! Cases (`DATAPLANE_CASES`, comma-separated; default all):
//!
//! - `keepalive`: HTTP/1.1 keep-alive, `wrk -t1 -c32`;
//! - `newconn`: a new connection per request (`Connection: close`), `wrk -t1 -c32`;
//! - `h2`: HTTP/2 front (h2c), `h2load -c8 -m16` (1 thread);
//! - `tcpbulk`: a tcp rule's throughput, 1 MiB answers through it (`wrk -c8`): requests/s are
//!   MiB/s and CPU per request is per MiB (HAProxy `mode tcp`, nginx `stream`);
//! - `tcpconn`: a tcp rule's connection rate, a new connection per small request;
//! - `sources`: an http rule with 1,000 allowed source entries (the client's last), a new
//!   connection per request (HAProxy `tcp-request connection reject unless { src -f }`, nginx
//!   `geo`);
//! - `tls-ecdsa`, `tls-rsa`: https rules with an ECDSA P-256 and an RSA 2048 certificate, a new
//!   connection (a TLS handshake) per request, by wrk, which resumes its sessions (Envoy's count
//!   of resumed handshakes is printed): resumed handshakes;
//! - `tls-full-ecdsa`, `tls-full-rsa`: the same rules, a full handshake per request (a rustls
//!   client that never resumes, 32 connections at a time on one thread);
//! - `tls-sni50`: an https rule with 50 certificates picked by SNI (ECDSA P-256; 49 domains beside
//!   the rule's own), full handshakes, the n-th connection naming the (n mod 50)-th
//!   (HAProxy `crt <dir>`, nginx 50 `server` blocks);
//! - `tls-restart` (Envoy only, under the supervisor): a client that resumes, as browsers do,
//!   through a hot restart; the share of handshakes resumed after it (target: 90 %).
//!
//! `DATAPLANE_TUNE` adds Envoys running the rendered config with changes, each set of changes
//! (`;`-separated sets of `,`-separated knobs) as a proxy of its own, so each change can be
//! measured alone and together: `nolog` (no access log), `noreqid` (no request id generated),
//! `nodynstats` (the router's dynamic stats off), `noenvoyheaders` (no `x-envoy-*` headers),
//! `nohc` (no health checks), `noheadertimeout` (no request-header time limit), `nooverload`
//! (no heap monitor, no overload actions), `ipv4compat` (both families on one `::` socket that
//! takes IPv4 too, instead of the rendered socket per family).
//!
//! For each: requests/s, p50/p99, and **CPU per request of the proxy process** (its own and its
//! workers' user + system time over the round, from /proc: the fair figure while the load
//! generator shares the cores) and what one vCPU kept busy serves at that cost (1 s / CPU per
//! request: the sizing table's figure), then the medians over `DATAPLANE_ROUNDS` rounds
//! (default 3) of `DATAPLANE_ROUND_S` seconds (default 8), and the ratios to HAProxy, nginx and
//! the cheapest Envoy of the case.
//! `make bench-dataplane` (installs wrk, haproxy, nginx). Loopback only.

#[path = "load/mod.rs"]
mod load;
#[path = "../tests/it/support/mod.rs"]
mod support;
#[path = "load/tls.rs"]
mod tls_load;

use load::{cpu_seconds, env_u64, median, Round};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::envoy::{free_port, test_settings, Envoy};

/// A process of this benchmark's (nginx, HAProxy, Envoy), stopped and reaped when dropped:
/// SIGTERM first, so that nginx's master takes its workers with it, then SIGKILL after 5 s.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `port` accepts a TCP connection.
fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} never listened on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// nginx with `conf` (the `http { }` block's inside) in `dir`, in the foreground.
fn nginx(dir: &Path, name: &str, workers: u32, http: &str, stream: &str) -> Proc {
    let prefix = dir.join(name);
    std::fs::create_dir_all(prefix.join("logs")).unwrap();
    let conf = prefix.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "{load}worker_processes {workers};\ndaemon off;\npid {pid};\nerror_log stderr error;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {tmp}/body;\n  proxy_temp_path {tmp}/proxy;\n  fastcgi_temp_path {tmp}/fastcgi;\n  uwsgi_temp_path {tmp}/uwsgi;\n  scgi_temp_path {tmp}/scgi;\n{http}\n}}\n{stream}\n",
            load = if stream.is_empty() {
                ""
            } else {
                "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n"
            },
            pid = prefix.join("nginx.pid").display(),
            tmp = prefix.display(),
        ),
    )
    .unwrap();
    let child = Command::new("nginx")
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .spawn()
        .expect("nginx is required: WITH_NGINX=1 scripts/install-test-tools.sh");
    Proc(child)
}

fn haproxy(
    dir: &Path,
    front: u16,
    h2_front: u16,
    [tcp, src, tls_ec, tls_rsa, tls_sni]: [u16; 5],
    sources: &[String],
    backends: [u16; 2],
) -> Proc {
    let conf = dir.join("haproxy.cfg");
    // HAProxy reads the certificate and its key from one file.
    for kind in ["ec", "rsa"] {
        let pem = std::fs::read_to_string(dir.join(format!("{kind}.crt"))).unwrap()
            + &std::fs::read_to_string(dir.join(format!("{kind}.key"))).unwrap();
        std::fs::write(dir.join(format!("{kind}.pem")), pem).unwrap();
    }
    std::fs::create_dir_all(dir.join("sni-haproxy")).unwrap();
    for i in 0..SNI {
        let pem = std::fs::read_to_string(dir.join(format!("sni/s{i}.crt"))).unwrap()
            + &std::fs::read_to_string(dir.join(format!("sni/s{i}.key"))).unwrap();
        std::fs::write(dir.join(format!("sni-haproxy/s{i:02}.pem")), pem).unwrap();
    }
    let list = dir.join("sources.lst");
    std::fs::write(&list, sources.join("\n") + "\n").unwrap();
    std::fs::write(
        &conf,
        format!(
            "global\n  nbthread 2\n  maxconn 8000\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 300s\n  timeout server 60s\n  http-reuse safe\nfrontend web\n  option forwardfor\n  bind 127.0.0.1:{front}\n  bind 127.0.0.1:{h2_front} proto h2\n  default_backend pool\nbackend pool\n  balance roundrobin\n  server b1 127.0.0.1:{b1} check\n  server b2 127.0.0.1:{b2} check\nlisten tcp\n  mode tcp\n  bind 127.0.0.1:{tcp}\n  balance roundrobin\n  server b1 127.0.0.1:{b1} check\n  server b2 127.0.0.1:{b2} check\nfrontend src\n  bind 127.0.0.1:{src}\n  option forwardfor\n  tcp-request connection reject unless {{ src -f {list} }}\n  default_backend pool\nfrontend tls_ec\n  bind 127.0.0.1:{tls_ec} ssl crt {d}/ec.pem\n  option forwardfor\n  default_backend pool\nfrontend tls_rsa\n  bind 127.0.0.1:{tls_rsa} ssl crt {d}/rsa.pem\n  option forwardfor\n  default_backend pool\nfrontend tls_sni\n  bind 127.0.0.1:{tls_sni} ssl crt {d}/sni-haproxy\n  option forwardfor\n  default_backend pool\n",
            d = dir.display(),
            b1 = backends[0],
            b2 = backends[1],
            list = list.display()
        ),
    )
    .unwrap();
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&conf)
        .stdin(Stdio::null())
        .spawn()
        .expect("haproxy is required: WITH_HAPROXY=1 scripts/install-test-tools.sh");
    Proc(child)
}

/// `h2load` over h2c (prior knowledge): 8 connections, 16 streams each, 1 thread.
fn h2load(url: &str, seconds: u64) -> Round {
    let out = Command::new("h2load")
        .args(["-t1", "-c8", "-m16", "-D"])
        .arg(seconds.to_string())
        .arg(url)
        .output()
        .expect("h2load is required (nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "h2load failed: {text}");
    let done = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .unwrap_or_else(|| panic!("no requests line: {text}"));
    assert!(
        done.contains(" 0 failed, 0 errored"),
        "h2load saw failures: {done}"
    );
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in"))
        .and_then(|l| l.split(',').nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no req/s in h2load's output: {text}"));
    // "time for request:  min  max  mean  sd  +/- sd": h2load prints no percentiles; the mean
    // stands in for p50 and mean + 2 sd for p99 (said so in the table).
    let l = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("time for request:"))
        .unwrap_or_else(|| panic!("no request times: {text}"));
    let f: Vec<f64> = l
        .split_whitespace()
        .filter_map(load::parse_latency)
        .collect();
    let (mean, sd) = (
        f.get(2).copied().unwrap_or(f64::NAN),
        f.get(3).copied().unwrap_or(f64::NAN),
    );
    Round {
        rps,
        p50_ms: mean,
        p99_ms: mean + 2.0 * sd,
        cpu_us: 0.0,
    }
}

/// The rendered config with `knobs` applied, listening on `port`, its admin on `admin`.
fn tuned(config: &Value, knobs: &[&str], port: u16, admin: &Path) -> Value {
    fn walk(v: &mut Value, f: &mut dyn FnMut(&mut serde_json::Map<String, Value>)) {
        match v {
            Value::Object(o) => {
                f(o);
                for x in o.values_mut() {
                    walk(x, f);
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| walk(x, f)),
            _ => {}
        }
    }
    let has = |k: &str| knobs.contains(&k);
    let mut c = config.clone();
    c["admin"]["address"]["pipe"]["path"] = json!(admin.to_string_lossy());
    if let Some(ls) = c["static_resources"]["listeners"].as_array_mut() {
        // Only the http rule, on a port of its own (the tcp rule's port is the rendered one's).
        ls.retain(|l| l["name"] == "web");
        for l in ls.iter_mut() {
            l["address"]["socket_address"]["port_value"] = json!(port);
            if let Some(extra) = l["additional_addresses"].as_array_mut() {
                for a in extra {
                    a["address"]["socket_address"]["port_value"] = json!(port);
                }
            }
            // The other way to take both families: one `::` socket that also takes IPv4
            // (`ipv4_compat`), instead of a socket per family (`additional_addresses`).
            if has("ipv4compat") {
                if let Some(o) = l.as_object_mut() {
                    o.remove("additional_addresses");
                }
                l["address"]["socket_address"]["address"] = json!("::");
                l["address"]["socket_address"]["ipv4_compat"] = json!(true);
            }
        }
    }
    if has("nooverload") {
        let om = &mut c["overload_manager"];
        if let Some(o) = om.as_object_mut() {
            o.remove("actions");
            o.remove("loadshed_points");
            o.remove("buffer_factory_config");
        }
        if let Some(ms) = om["resource_monitors"].as_array_mut() {
            ms.retain(|m| m["name"] != "envoy.resource_monitors.fixed_heap");
        }
    }
    walk(&mut c, &mut |o| {
        let ty = o
            .get("@type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if ty.ends_with("HttpConnectionManager") {
            if has("nolog") {
                o.remove("access_log");
            }
            if has("noreqid") {
                o.insert("generate_request_id".into(), json!(false));
            }
        }
        if ty.ends_with("router.v3.Router") {
            if has("nodynstats") {
                o.insert("dynamic_stats".into(), json!(false));
            }
            if has("noenvoyheaders") {
                o.insert("suppress_envoy_headers".into(), json!(true));
            }
        }
        if has("nohc") && o.contains_key("health_checks") {
            o.remove("health_checks");
        }
        if has("noheadertimeout") {
            o.remove("request_headers_timeout");
        }
    });
    for k in knobs {
        assert!(
            [
                "nolog",
                "noreqid",
                "nodynstats",
                "noenvoyheaders",
                "nohc",
                "noheadertimeout",
                "nooverload",
                "ipv4compat",
                ""
            ]
            .contains(k),
            "no such knob: {k}"
        );
    }
    c
}

/// A self-signed certificate for `name` made by Debian's `openssl`, written as `<stem>.crt` and
/// `<stem>.key` in `dir`: (cert PEM, key PEM). `kind`: `ec` (ECDSA P-256) or `rsa` (RSA 2048).
fn certificate(dir: &Path, kind: &str, stem: &str, name: &str) -> (String, String) {
    let (c, k) = (
        dir.join(format!("{stem}.crt")),
        dir.join(format!("{stem}.key")),
    );
    let newkey: &[&str] = match kind {
        "ec" => &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
        _ => &["-newkey", "rsa:2048"],
    };
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
        ])
        .args(["-addext", &format!("subjectAltName=DNS:{name}")])
        .args(newkey)
        .arg("-keyout")
        .arg(&k)
        .arg("-out")
        .arg(&c)
        .output()
        .expect("openssl is required");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        std::fs::read_to_string(c).unwrap(),
        std::fs::read_to_string(k).unwrap(),
    )
}

/// A proxy under test: name, pid, HTTP/1 port, h2c port, and the ports of the tcp rule, the
/// 1,000-source rule, the https rules with an ECDSA and an RSA certificate and the one with 50
/// (the Envoy variants have none of these).
type Proxy<'a> = (&'a str, u32, u16, u16, Option<[u16; 5]>);

/// Certificates of the SNI case.
const SNI: usize = 50;

/// The body the TCP cases fetch through the TCP proxies: 1 MiB.
const BIG: usize = 1 << 20;

fn main() {
    let rounds = env_u64("DATAPLANE_ROUNDS", 3) as usize;
    let round_s = env_u64("DATAPLANE_ROUND_S", 8);
    let cases: Vec<String> = std::env::var("DATAPLANE_CASES")
        .unwrap_or_else(|_| {
            "keepalive,newconn,h2,tcpbulk,tcpconn,sources,tls-ecdsa,tls-rsa,tls-full-ecdsa,tls-full-rsa,tls-sni50,tls-restart"
                .into()
        })
        .split(',')
        .map(|c| c.trim().to_owned())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // Upstreams: one nginx worker, two ports, a 5-byte body (and 1 MiB at /big, for the TCP
    // proxy's throughput).
    let backends = [free_port(), free_port()];
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("big"), vec![b'x'; BIG]).unwrap();
    let _upstream = nginx(
        dir.path(),
        "upstream",
        1,
        &format!(
            "  server {{ listen 127.0.0.1:{}; listen 127.0.0.1:{}; keepalive_requests 1000000; location / {{ return 200 \"hello\"; }} location /big {{ root {}; }} }}",
            backends[0], backends[1], www.display()
        ),
        "",
    );
    wait_port(backends[0], "the upstream nginx");

    // The proxies.
    let pool = json!([
        {"identifier": "b1", "ip": "127.0.0.1", "port": backends[0]},
        {"identifier": "b2", "ip": "127.0.0.1", "port": backends[1]}
    ]);
    let (envoy_port, envoy_tcp, envoy_src) = (free_port(), free_port(), free_port());
    let (envoy_ec, envoy_rsa, envoy_sni) = (free_port(), free_port(), free_port());
    let (ec, rsa) = (
        certificate(dir.path(), "ec", "ec", "lb.test"),
        certificate(dir.path(), "rsa", "rsa", "lb.test"),
    );
    let sni_dir = dir.path().join("sni");
    std::fs::create_dir_all(&sni_dir).unwrap();
    let sni: Vec<(String, (String, String))> = (0..SNI)
        .map(|i| {
            let name = format!("s{i}.lb.test");
            let c = certificate(&sni_dir, "ec", &format!("s{i}"), &name);
            (name, c)
        })
        .collect();
    let tls_of = |id: &str, (cert, key): &(String, String)| json!({"certificateId": id, "certificatePem": cert, "privateKeyPem": key});
    let sni_domains: Vec<Value> = sni[1..]
        .iter()
        .enumerate()
        .map(|(i, (name, c))| {
            json!({"domainId": format!("s{}", i + 1), "domainName": name, "backends": pool,
                   "tls": tls_of(&format!("s{}", i + 1), c)})
        })
        .collect();
    // 1,000 allowed source entries, the client's (loopback) last.
    let sources: Vec<String> = (0..999)
        .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
        .chain(["127.0.0.0/8".to_owned()])
        .collect();
    let spec = json!({"identifier": "lb-dataplane", "lbName": "dataplane", "rules": [
        {"ruleId": "web", "scheme": "http", "frontPort": envoy_port, "backPort": 1, "backends": pool},
        {"ruleId": "tcp", "scheme": "tcp", "frontPort": envoy_tcp, "backPort": 1, "backends": pool},
        {"ruleId": "src", "scheme": "http", "frontPort": envoy_src, "backPort": 1, "backends": pool,
         "allowedSources": sources},
        {"ruleId": "tls-ec", "scheme": "https", "frontPort": envoy_ec, "backPort": 1, "backends": pool,
         "tls": {"certificateId": "ec", "certificatePem": ec.0, "privateKeyPem": ec.1}},
        {"ruleId": "tls-rsa", "scheme": "https", "frontPort": envoy_rsa, "backPort": 1, "backends": pool,
         "tls": {"certificateId": "rsa", "certificatePem": rsa.0, "privateKeyPem": rsa.1}},
        {"ruleId": "tls-sni", "scheme": "https", "frontPort": envoy_sni, "backPort": 1, "backends": pool,
         "tls": tls_of("s0", &sni[0].1), "domains": sni_domains}
    ]});
    let envoy_dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(envoy_dir.path());
    settings.envoy.concurrency = Some(2);
    // As shipped: both families' any address, a socket each (the clients come over IPv4).
    settings.envoy.listen_addresses = None;
    let envoy = rt.block_on(Envoy::start_with(&spec, settings, envoy_dir));
    rt.block_on(envoy.wait_healthy("web", 2));
    // Envoys with the rendered config changed, one per set of knobs.
    let rendered: Value = {
        let p = vpsie_lb_agent::command::prepare(
            spec.to_string().as_bytes(),
            &envoy.settings,
            support::now(),
        )
        .unwrap();
        serde_json::from_str(&p.rendered.config).unwrap()
    };
    let tunes: Vec<String> = std::env::var("DATAPLANE_TUNE")
        .map(|v| {
            v.split(';')
                .map(str::to_owned)
                .filter(|t| !t.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let mut variants: Vec<(String, Proc, u16)> = Vec::new();
    for t in &tunes {
        let knobs: Vec<&str> = t.split(',').map(str::trim).collect();
        let port = free_port();
        let sub = dir.path().join(format!("envoy-{}", variants.len()));
        std::fs::create_dir_all(&sub).unwrap();
        let conf = sub.join("envoy.json");
        std::fs::write(
            &conf,
            tuned(&rendered, &knobs, port, &sub.join("admin.sock")).to_string(),
        )
        .unwrap();
        let child = Command::new(&envoy.settings.envoy.binary)
            .arg("--config-path")
            .arg(&conf)
            .args([
                "--concurrency",
                "2",
                "--log-level",
                "warn",
                "--disable-hot-restart",
            ])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        variants.push((format!("envoy +{t}"), Proc(child), port));
    }
    for (name, _, port) in &variants {
        wait_port(*port, name);
    }
    let (ha_port, ha_h2, ha_tcp, ha_src) = (free_port(), free_port(), free_port(), free_port());
    let ha_tls = [ha_tcp, ha_src, free_port(), free_port(), free_port()];
    let ha = haproxy(dir.path(), ha_port, ha_h2, ha_tls, &sources, backends);
    let (ng_port, ng_h2, ng_tcp, ng_src) = (free_port(), free_port(), free_port(), free_port());
    let (ng_ec, ng_rsa, ng_sni) = (free_port(), free_port(), free_port());
    let sni_servers: String = sni
        .iter()
        .enumerate()
        .map(|(i, (name, _))| format!(
            "  server {{ listen 127.0.0.1:{ng_sni} ssl; server_name {name}; ssl_certificate {d}/s{i}.crt; ssl_certificate_key {d}/s{i}.key;\n    location / {{ proxy_pass http://pool; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }} }}\n",
            d = sni_dir.display()
        ))
        .collect();
    // nginx's geo module (a radix tree) for the list, the fair match for Envoy's and HAProxy's.
    let geo: String = sources.iter().map(|c| format!("    {c} 1;\n")).collect();
    let ng = nginx(
        dir.path(),
        "proxy",
        2,
        &format!(
            "  upstream pool {{ server 127.0.0.1:{}; server 127.0.0.1:{}; keepalive 64; }}\n  server {{ listen 127.0.0.1:{ng_port}; listen 127.0.0.1:{ng_h2} http2; keepalive_requests 1000000;\n    location / {{ proxy_pass http://pool; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }} }}\n  geo $allowed {{\n    default 0;\n{geo}  }}\n  server {{ listen 127.0.0.1:{ng_src};\n    location / {{ if ($allowed = 0) {{ return 403; }} proxy_pass http://pool; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }} }}\n  server {{ listen 127.0.0.1:{ng_ec} ssl; ssl_certificate {d}/ec.crt; ssl_certificate_key {d}/ec.key;\n    location / {{ proxy_pass http://pool; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }} }}\n  server {{ listen 127.0.0.1:{ng_rsa} ssl; ssl_certificate {d}/rsa.crt; ssl_certificate_key {d}/rsa.key;\n    location / {{ proxy_pass http://pool; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }} }}\n{sni_servers}",
            backends[0], backends[1], d = dir.path().display()
        ),
        &format!(
            "stream {{ upstream tpool {{ server 127.0.0.1:{}; server 127.0.0.1:{}; }} server {{ listen 127.0.0.1:{ng_tcp}; proxy_pass tpool; }} }}",
            backends[0], backends[1]
        ),
    );
    for (p, what) in [(ha_port, "haproxy"), (ng_port, "nginx")] {
        wait_port(p, what);
    }
    // (name, pid, HTTP/1 port, h2c port, TCP proxy port; the variants have no TCP rule)
    let mut proxies: Vec<Proxy> = vec![
        (
            "envoy (rendered)",
            envoy.pid(),
            envoy_port,
            envoy_port,
            Some([envoy_tcp, envoy_src, envoy_ec, envoy_rsa, envoy_sni]),
        ),
        ("haproxy", ha.0.id(), ha_port, ha_h2, Some(ha_tls)),
        (
            "nginx",
            ng.0.id(),
            ng_port,
            ng_h2,
            Some([ng_tcp, ng_src, ng_ec, ng_rsa, ng_sni]),
        ),
    ];
    for (name, p, port) in &variants {
        proxies.push((name.as_str(), p.0.id(), *port, *port, None));
    }
    println!(
        "data plane: {} proxies x {} cases, {rounds} interleaved rounds of {round_s} s; load on the same 2 cores",
        proxies.len(),
        cases.len()
    );
    // Warm every path once.
    for (_, _, port, _, _) in &proxies {
        let _ = load::wrk(&format!("http://127.0.0.1:{port}/"), 8, 1, &[]);
    }

    let mut results: Vec<(String, &str, Vec<Round>)> = Vec::new();
    for case in cases.iter().filter(|c| *c != "tls-restart") {
        let mut per: Vec<Vec<Round>> = vec![Vec::new(); proxies.len()];
        for r in 0..rounds {
            // Interleaved, the order turned each round.
            for k in 0..proxies.len() {
                let i = (k + r) % proxies.len();
                let (_, pid, port, h2, more) = proxies[i];
                if !["keepalive", "newconn", "h2"].contains(&case.as_str()) && more.is_none() {
                    continue;
                }
                let [tcp, src, tls_ec, tls_rsa, tls_sni] = more.unwrap_or([0; 5]);
                let cpu = cpu_seconds(pid);
                let mut x = match case.as_str() {
                    "keepalive" => {
                        load::wrk(&format!("http://127.0.0.1:{port}/"), 32, round_s, &[])
                    }
                    "newconn" => load::wrk(
                        &format!("http://127.0.0.1:{port}/"),
                        32,
                        round_s,
                        &["-H", "Connection: close"],
                    ),
                    "h2" => h2load(&format!("http://127.0.0.1:{h2}/"), round_s),
                    // Requests/s of 1 MiB each: MiB/s.
                    "tcpbulk" => load::wrk(&format!("http://127.0.0.1:{tcp}/big"), 8, round_s, &[]),
                    // The list is judged per connection: a new one per request.
                    "sources" => load::wrk(
                        &format!("http://127.0.0.1:{src}/"),
                        32,
                        round_s,
                        &["-H", "Connection: close"],
                    ),
                    // A TLS handshake per request (resumed by wrk: see the counts printed).
                    "tls-ecdsa" | "tls-rsa" => load::wrk(
                        &format!(
                            "https://127.0.0.1:{}/",
                            if case == "tls-ecdsa" { tls_ec } else { tls_rsa }
                        ),
                        32,
                        round_s,
                        &["-H", "Connection: close"],
                    ),
                    "tls-full-ecdsa" | "tls-full-rsa" | "tls-sni50" => {
                        let (port, names) = match case.as_str() {
                            "tls-full-ecdsa" => (tls_ec, vec!["lb.test".to_owned()]),
                            "tls-full-rsa" => (tls_rsa, vec!["lb.test".to_owned()]),
                            _ => (tls_sni, sni.iter().map(|(n, _)| n.clone()).collect()),
                        };
                        let seen = rt.block_on(tls_load::run(
                            false,
                            port,
                            names.into(),
                            32,
                            round_s as f64,
                        ));
                        assert!(
                            seen.failed.is_empty(),
                            "{case}: {:?}",
                            &seen.failed[..seen.failed.len().min(5)]
                        );
                        seen.round(round_s as f64)
                    }
                    "tcpconn" => load::wrk(
                        &format!("http://127.0.0.1:{tcp}/"),
                        32,
                        round_s,
                        &["-H", "Connection: close"],
                    ),
                    other => panic!("no such case: {other}"),
                };
                x.cpu_us = (cpu_seconds(pid) - cpu) * 1e6 / (x.rps * round_s as f64);
                per[i].push(x);
            }
        }
        for (i, rs) in per.into_iter().enumerate() {
            if !rs.is_empty() {
                results.push((case.clone(), proxies[i].0, rs));
            }
        }
    }

    if cases.iter().any(|c| c.starts_with("tls")) {
        // Whether each request was a full handshake: Envoy's own counts.
        let s = rt.block_on(support::envoy::stats(
            &envoy.settings,
            "ssl\\.(handshake|session_reused)$",
        ));
        for (kind, port) in [("ecdsa", envoy_ec), ("rsa", envoy_rsa)] {
            let l = format!("listener.127.0.0.1_{port}.ssl");
            println!(
                "envoy tls-{kind}: {} handshakes, {} of them resumed",
                s(&format!("{l}.handshake")),
                s(&format!("{l}.session_reused"))
            );
        }
    }
    println!(
        "\n| case | proxy | requests/s | p50 ms | p99 ms | CPU µs/request | per busy vCPU/s | × HAProxy | × nginx | × best Envoy |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for case in &cases {
        let of = |name: &str| {
            results
                .iter()
                .find(|(c, p, _)| c == case && *p == name)
                .map(|(_, _, rs)| median(rs.iter().map(|x| x.cpu_us).collect()))
                .unwrap_or(f64::NAN)
        };
        let (ha, ng) = (of("haproxy"), of("nginx"));
        // The cheapest Envoy of this case: the rendered config or a variant (`DATAPLANE_TUNE`).
        let best = results
            .iter()
            .filter(|(c, p, _)| c == case && p.starts_with("envoy"))
            .map(|(_, p, _)| of(p))
            .fold(f64::INFINITY, f64::min);
        for (c, p, rs) in results.iter().filter(|(c, _, _)| c == case) {
            let m = |f: fn(&Round) -> f64| median(rs.iter().map(f).collect());
            let cpu = m(|x| x.cpu_us);
            println!(
                "| {c} | {p} | {:.0} | {:.2} | {:.2} | {cpu:.1} | {:.0} | {:.2} | {:.2} | {:.2} |",
                m(|x| x.rps),
                m(|x| x.p50_ms),
                m(|x| x.p99_ms),
                1e6 / cpu,
                cpu / ha,
                cpu / ng,
                cpu / best
            );
        }
    }
    println!("\n(h2: h2load prints no percentiles: p50 is its mean, p99 its mean + 2 sd. tcpbulk: requests/s are MiB/s, CPU is per MiB.)");
    drop(envoy);
    if cases.iter().any(|c| c == "tls-restart") {
        let spec = json!({"identifier": "lb-restart", "lbName": "restart", "rules": [
            {"ruleId": "tls-ec", "scheme": "https", "frontPort": free_port(), "backPort": 1,
             "backends": pool, "tls": tls_of("ec", &ec)}]});
        rt.block_on(resumption_through_a_hot_restart(spec, round_s as f64));
    }
}

/// Envoy under the supervisor, a client that resumes (as browsers do) through a hot restart
/// made a third into the run: the share of handshakes resumed from the moment the restart
/// began, against the target of 90 %.
async fn resumption_through_a_hot_restart(mut spec: Value, seconds: f64) {
    let stand = support::supervisor::Stand::start(|s| s.envoy.concurrency = Some(2)).await;
    stand.apply_ok(&spec).await;
    let port = spec["rules"][0]["frontPort"].as_u64().unwrap() as u16;
    let names = std::sync::Arc::new(vec!["lb.test".to_owned()]);
    let load = tls_load::run(true, port, names, 32, seconds);
    let restart = async {
        tokio::time::sleep(Duration::from_secs_f64(seconds / 3.0)).await;
        let began = Instant::now();
        spec["maxConnections"] = json!(40_000);
        let out = stand.apply_ok(&spec).await;
        assert_eq!(
            out.method,
            Some(vpsie_lb_agent::supervisor::protocol::ApplyMethod::HotRestart)
        );
        (began, Instant::now())
    };
    let (seen, (began, done)) = tokio::join!(load, restart);
    assert!(
        seen.failed.is_empty(),
        "tls-restart: {:?}",
        &seen.failed[..seen.failed.len().min(5)]
    );
    let (r_all, all) = seen.resumed_since(seen.connections.iter().map(|c| c.0).min().unwrap());
    let (r_began, n_began) = seen.resumed_since(began);
    let (r_before, n_before) = (r_all - r_began, all - n_began);
    let (r_done, n_done) = seen.resumed_since(done);
    let share = |r: usize, n: usize| 100.0 * r as f64 / n.max(1) as f64;
    println!("\ntls-restart: 32 clients that resume, each with its own sessions, a hot restart {:.1} s into {seconds:.0} s (took {:.2} s)", seconds / 3.0, (done - began).as_secs_f64());
    println!("| resumption attempts (by a client holding a session) | attempts | resumed | share |\n|---|---|---|---|");
    println!(
        "| before the restart | {n_before} | {r_before} | {:.1} % |",
        share(r_before, n_before)
    );
    println!(
        "| from the restart's start | {n_began} | {r_began} | {:.1} % |",
        share(r_began, n_began)
    );
    println!(
        "| after the new epoch took over | {n_done} | {r_done} | {:.1} % |",
        share(r_done, n_done)
    );
    let verdict = if share(r_began, n_began) >= 90.0 {
        "met"
    } else {
        "MISSED"
    };
    println!("verdict: resumed after a hot restart >= 90 %: {verdict}");
}
