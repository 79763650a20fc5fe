//! Access logs with the real supervisor and Envoy: the JSON lines Envoy writes for each kind of
//! rule, sampling (errors always logged), `off`, settings applied live by SIGHUP without a new
//! epoch, rotation under load that loses and cuts no line, the bound on disk, and a full disk
//! that never stops traffic. Nothing per request reaches the supervisor's own log.

use crate::grpc::grpc_server;
use crate::support::access_log::{on_disk, rotated};
use crate::support::envoy::{free_port, stats};
use crate::support::load::Load;
use crate::support::supervisor::Stand;
use crate::support::{certs, upstream};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use vpsie_lb_agent::settings::{AccessLogMode, AccessLogSettings, Settings};
use vpsie_lb_agent::supervisor::protocol::ApplyMethod;

fn lb(rules: Vec<Value>) -> Value {
    json!({"identifier": "lb-log", "lbName": "log", "rules": rules})
}

fn http_rule(id: &str, front: u16, backend_port: u16) -> Value {
    json!({"ruleId": id, "scheme": "http", "frontPort": front, "backPort": backend_port,
           "backends": [{"identifier": "b1", "ip": "127.0.0.1"}]})
}

/// A port nothing listens on: requests to a pool there are answered 503 by Envoy.
fn dead_port() -> u16 {
    free_port()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Every line of the log files, oldest first, each parsed: a line that is not one whole JSON
/// object (cut at a rotation, or two run together) fails the test.
fn lines(path: &Path) -> Vec<Value> {
    try_lines(path).unwrap_or_else(|e| panic!("{e}"))
}

/// As [`lines`], but a file that ends in the middle of a line is an `Err`, not a failure: Envoy
/// may be writing it at that moment (a flush is not atomic to a concurrent reader), so only one
/// that stays cut is a fault.
fn try_lines(path: &Path) -> Result<Vec<Value>, String> {
    let mut files: Vec<PathBuf> = (1..)
        .map(|n| rotated(path, n))
        .take_while(|p| p.exists())
        .collect();
    files.reverse();
    files.push(path.to_path_buf());
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        if !(text.is_empty() || text.ends_with('\n')) {
            return Err(format!("{} ends in the middle of a line", f.display()));
        }
        for line in text.lines() {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: not one JSON object: {e}: {line}", f.display()));
            assert!(v.is_object(), "{line}");
            out.push(v);
        }
    }
    Ok(out)
}

async fn wait_lines(path: &Path, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (seen, last) = match try_lines(path) {
            Ok(l) if pred(&l) => return l,
            Ok(l) => (
                format!(
                    "{} lines: {:?}",
                    l.len(),
                    l.iter().rev().take(3).collect::<Vec<_>>()
                ),
                None,
            ),
            // Being written: read again; a line that stays cut fails at the deadline.
            Err(e) => (String::new(), Some(e)),
        };
        assert!(
            Instant::now() < deadline,
            "{what}: not seen within 15 s; {seen}{}",
            last.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn with_path<'a>(l: &'a [Value], path: &str) -> Vec<&'a Value> {
    l.iter().filter(|v| v["path"] == path).collect()
}

/// One Envoy counter, read from its admin socket.
async fn envoy_stat(settings: &Settings, name: &str) -> u64 {
    stats(settings, &format!("^{name}$")).await(name)
}

/// Changes the access log settings by SIGHUP; returns once Envoy holds them.
async fn set(stand: &mut Stand, tweak: impl FnOnce(&mut AccessLogSettings)) {
    stand
        .reload(|s| tweak(&mut s.access_log), "access log settings applied")
        .await;
}

/// Requests `url` (expecting `status`) and waits until its line (by path) is in the log.
async fn logged(c: &reqwest::Client, url: &str, status: u16, log: &Path) -> Vec<Value> {
    assert_eq!(get(c, url).await, status, "{url}");
    let path = url.splitn(4, '/').nth(3).map(|p| format!("/{p}")).unwrap();
    wait_lines(log, &path, |l| !with_path(l, &path).is_empty()).await
}

async fn get(c: &reqwest::Client, url: &str) -> u16 {
    c.get(url).send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_https_http2_and_tcp_rules_log_one_json_line_with_the_right_values() {
    let web = upstream::http("web", None).await;
    let tcp_up = upstream::tcp("plain").await;
    let grpc = grpc_server("alpha", None).await;
    let cert = certs::cert(&["shop.test"]);
    let (p_http, p_https, p_h2, p_tcp) = (free_port(), free_port(), free_port(), free_port());
    let stand = Stand::start(|_| {}).await;
    let spec = lb(vec![
        http_rule("web", p_http, web.port()),
        json!({"ruleId": "shop", "scheme": "https", "frontPort": p_https, "backPort": web.port(),
               "tls": {"certificateId": "c1", "certificatePem": cert.cert_pem, "privateKeyPem": cert.key_pem},
               "backends": [{"identifier": "b1", "ip": "127.0.0.1"}]}),
        json!({"ruleId": "h2", "scheme": "http2", "frontPort": p_h2, "backPort": grpc.addr.port(),
               "backends": [{"identifier": "g1", "ip": "127.0.0.1"}]}),
        json!({"ruleId": "raw", "scheme": "tcp", "frontPort": p_tcp, "backPort": tcp_up.port(),
               "backends": [{"identifier": "t1", "ip": "127.0.0.1"}]}),
    ]);
    stand.apply_ok(&spec).await;
    let path = stand.settings.access_log.path.clone();

    let c = reqwest::Client::builder()
        .no_proxy()
        .user_agent("it-agent/1 \"quoted\"")
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{p_http}/a/b?secret=1");
    assert_eq!(get(&c, &url).await, 200);
    let tls = reqwest::Client::builder()
        .no_proxy()
        .danger_accept_invalid_certs(true)
        .resolve("shop.test", SocketAddr::from(([127, 0, 0, 1], p_https)))
        .build()
        .unwrap();
    assert_eq!(
        get(&tls, &format!("https://shop.test:{p_https}/tls?x=1")).await,
        200
    );
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let h2_status = get(&h2, &format!("http://127.0.0.1:{p_h2}/h2")).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", p_tcp))
        .await
        .unwrap();
    let tcp_client_port = s.local_addr().unwrap().port();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(!answer.is_empty());
    // A TCP rule logs when the connection closes.
    drop(s);

    let l = wait_lines(&path, "a line of each rule", |l| {
        ["web", "shop", "h2", "raw"]
            .iter()
            .all(|r| l.iter().any(|v| v["rule"] == *r))
    })
    .await;
    let one = |rule: &str| -> Value {
        let of: Vec<&Value> = l.iter().filter(|v| v["rule"] == rule).collect();
        assert_eq!(of.len(), 1, "{rule}: {of:?}");
        of[0].clone()
    };
    let web_line = one("web");
    let time = web_line["time"].as_str().unwrap();
    assert!(
        time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "RFC 3339 with ms: {time}"
    );
    assert_eq!(web_line["type"], "http");
    assert_eq!(web_line["host"], "127.0.0.1", "Host, its port stripped");
    assert_eq!(web_line["client"], "127.0.0.1");
    assert!(web_line["client_port"].as_u64().unwrap() > 0);
    assert_eq!(web_line["method"], "GET");
    assert_eq!(web_line["path"], "/a/b", "no query string by default");
    assert_eq!(web_line["protocol"], "HTTP/1.1");
    assert_eq!(web_line["status"], 200);
    assert_eq!(web_line["flags"], "-");
    assert_eq!(web_line["bytes_in"], 0);
    assert_eq!(web_line["bytes_out"], 3, "the body 'web'");
    assert_eq!(web_line["upstream"], format!("127.0.0.1:{}", web.port()));
    assert!(web_line["duration_ms"].is_u64(), "{web_line}");
    assert!(web_line["upstream_ms"].is_u64(), "{web_line}");
    assert!(web_line["tls"].is_null());
    assert!(web_line["sni"].is_null());
    assert_eq!(web_line["user_agent"], "it-agent/1 \"quoted\"");
    assert_eq!(web_line["request_id"].as_str().unwrap().len(), 36);

    let shop = one("shop");
    assert_eq!(shop["sni"], "shop.test");
    assert_eq!(shop["host"], "shop.test");
    assert_eq!(shop["path"], "/tls");
    assert_eq!(shop["status"], 200);
    assert!(
        shop["tls"].as_str().unwrap().starts_with("TLSv1."),
        "{shop}"
    );
    assert_eq!(shop["protocol"], "HTTP/2", "ALPN h2 at the front");

    let h2_line = one("h2");
    assert_eq!(h2_line["protocol"], "HTTP/2");
    assert_eq!(h2_line["status"], h2_status);
    assert_eq!(
        h2_line["upstream"],
        format!("127.0.0.1:{}", grpc.addr.port())
    );

    let raw = one("raw");
    assert_eq!(raw["type"], "tcp");
    assert_eq!(raw["client"], "127.0.0.1");
    assert_eq!(raw["client_port"], tcp_client_port);
    assert_eq!(raw["upstream"], format!("127.0.0.1:{}", tcp_up.port()));
    assert_eq!(raw["bytes_out"], answer.len() as u64);
    assert!(raw["duration_ms"].is_u64());
    assert!(raw.get("method").is_none(), "{raw}");

    // Nothing per request in the supervisor's own log (stdout and stderr).
    let own = stand.log();
    for needle in ["/a/b", "\"rule\"", "it-agent", "shop.test:"] {
        assert!(!own.contains(needle), "{needle:?} in the supervisor's log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_logs_about_the_share_and_every_error() {
    let web = upstream::http("web", None).await;
    let (p_ok, p_bad) = (free_port(), free_port());
    let stand = Stand::start(|s| s.access_log.sample_percent = 10.0).await;
    stand
        .apply_ok(&lb(vec![
            http_rule("ok", p_ok, web.port()),
            http_rule("bad", p_bad, dead_port()),
        ]))
        .await;
    let c = client();
    for _ in 0..2000 {
        assert_eq!(get(&c, &format!("http://127.0.0.1:{p_ok}/")).await, 200);
    }
    for _ in 0..100 {
        assert_eq!(get(&c, &format!("http://127.0.0.1:{p_bad}/")).await, 503);
    }
    let l = wait_lines(&stand.settings.access_log.path, "100 lines of 503", |l| {
        l.iter().filter(|v| v["rule"] == "bad").count() >= 100
    })
    .await;
    let bad = l.iter().filter(|v| v["rule"] == "bad").count();
    let ok = l.iter().filter(|v| v["rule"] == "ok").count();
    assert_eq!(bad, 100, "every 5xx is logged");
    // Binomial(2000, 0.1): 200 ± 13.4; this band is ±5 standard deviations.
    assert!((133..=267).contains(&ok), "{ok} of 2000 logged at 10 %");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_writes_nothing_and_settings_change_live_without_a_new_epoch() {
    let web = upstream::http("web", None).await;
    let (p_ok, p_bad) = (free_port(), free_port());
    let mut stand = Stand::start(|s| s.access_log.mode = AccessLogMode::Off).await;
    stand
        .apply_ok(&lb(vec![
            http_rule("ok", p_ok, web.port()),
            http_rule("bad", p_bad, dead_port()),
        ]))
        .await;
    let before = stand.status().await;
    let path = stand.settings.access_log.path.clone();
    let c = client();
    let ok = |p: &str| format!("http://127.0.0.1:{p_ok}{p}");
    let bad = |p: &str| format!("http://127.0.0.1:{p_bad}{p}");
    for _ in 0..50 {
        assert_eq!(get(&c, &ok("/quiet")).await, 200);
    }
    assert_eq!(get(&c, &bad("/quiet-error")).await, 503);

    // Off -> file: the first line is the marker sent after the change; nothing of before.
    set(&mut stand, |a| a.mode = AccessLogMode::File).await;
    let l = logged(&c, &ok("/marker-1"), 200, &path).await;
    assert_eq!(l.len(), 1, "off wrote lines: {l:?}");

    // Sampling to 0: successes are no longer logged, errors still are.
    set(&mut stand, |a| a.sample_percent = 0.0).await;
    for _ in 0..200 {
        assert_eq!(get(&c, &ok("/sampled-out")).await, 200);
    }
    let l = logged(&c, &bad("/error-1"), 503, &path).await;
    assert!(with_path(&l, "/sampled-out").is_empty(), "{l:?}");
    assert_eq!(l.len(), 2);

    // A settings file that does not check is refused whole; the running settings stay.
    set(&mut stand, |a| a.sample_percent = 100.0).await;
    std::fs::write(
        &stand.config_file,
        std::fs::read_to_string(&stand.config_file)
            .unwrap()
            .replace("sample_percent: 100.0", "sample_percent: 250.0"),
    )
    .unwrap();
    let refused = stand.log().matches("settings not reloaded").count();
    stand.signal_supervisor(Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(15);
    while stand.log().matches("settings not reloaded").count() == refused {
        assert!(Instant::now() < deadline, "{}", stand.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(stand.log().contains("access_log.sample_percent"));
    logged(&c, &ok("/still-logged"), 200, &path).await;

    // And off again: not even errors.
    set(&mut stand, |a| a.mode = AccessLogMode::Off).await;
    assert_eq!(get(&c, &bad("/error-while-off")).await, 503);
    set(&mut stand, |a| a.mode = AccessLogMode::File).await;
    let l = logged(&c, &ok("/marker-2"), 200, &path).await;
    assert!(with_path(&l, "/error-while-off").is_empty(), "{l:?}");

    // All of it live: the same epoch and the same Envoy process.
    let after = stand.status().await;
    assert_eq!(
        (after.epoch, after.envoy_pid),
        (before.epoch, before.envoy_pid)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_loses_and_cuts_no_line() {
    let web = upstream::http("web", None).await;
    let front = free_port();
    // Room for everything (nothing is deleted), in shares of about 3 MiB: a few seconds of load
    // rotate several times.
    let stand = Stand::start(|s| {
        s.access_log.max_bytes = 64 << 20;
        s.access_log.keep_files = 20;
    })
    .await;
    stand
        .apply_ok(&lb(vec![http_rule("load", front, web.port())]))
        .await;
    let path = stand.settings.access_log.path.clone();
    let load = Load::start(&format!("http://127.0.0.1:{front}/"), 8, 0);
    let deadline = Instant::now() + Duration::from_secs(90);
    while !rotated(&path, 3).exists() {
        assert!(Instant::now() < deadline, "no third rotation within 90 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let counts = load.finish().await;
    assert_eq!(counts.failed, 0, "{counts:?}");
    let served = envoy_stat(&stand.settings, "http.load.downstream_rq_completed").await;
    assert!(served >= counts.ok, "{served} < {}", counts.ok);
    let l = wait_lines(&path, "a line for every request", |l| {
        l.len() as u64 >= served
    })
    .await;
    assert_eq!(l.len() as u64, served, "one line per request, none twice");
    assert!(l.iter().all(|v| v["rule"] == "load" && v["status"] == 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_files_never_exceed_max_bytes_under_load() {
    let web = upstream::http("web", None).await;
    let front = free_port();
    let max: u64 = 4 << 20;
    let stand = Stand::start(|s| {
        s.access_log.max_bytes = max;
        s.access_log.keep_files = 2;
    })
    .await;
    stand
        .apply_ok(&lb(vec![http_rule("load", front, web.port())]))
        .await;
    let path = stand.settings.access_log.path.clone();
    // At most ~2,000 requests a second (8 clients, 4 ms apart): the rotation keeps a margin of
    // twice what the log grows between two checks, so an unpaced load on a fast moment rotated
    // files at a third of their share and the files never came near the bound (1.7 of 4 MiB),
    // which is what this test must see them do. Slower, they only come nearer.
    let load = Load::start_paced(
        &format!("http://127.0.0.1:{front}/"),
        8,
        0,
        Duration::from_millis(4),
    );
    // Until the oldest allowed file has been replaced several times (the bound then holds
    // over several full cycles).
    let mut worst = (0, 0);
    let mut inodes_of_oldest = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while inodes_of_oldest.len() < 4 {
        assert!(
            Instant::now() < deadline,
            "only {} generations of {}.2 within 120 s",
            inodes_of_oldest.len(),
            path.display()
        );
        let (total, inodes) = on_disk(&path);
        let files = inodes.len();
        worst = worst.max((total, files));
        assert!(total <= max, "{total} bytes on disk > max_bytes {max}");
        assert!(files <= 3, "{files} files with keep_files 2");
        if let Ok(m) = std::fs::metadata(rotated(&path, 2)) {
            inodes_of_oldest.insert(std::os::unix::fs::MetadataExt::ino(&m));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let counts = load.finish().await;
    assert_eq!(counts.failed, 0, "{counts:?}");
    println!(
        "the most on disk: {} of {max} bytes, in {} files",
        worst.0, worst.1
    );
    assert!(
        worst.0 > max / 2,
        "the bound was never approached: {worst:?}"
    );
    assert!(!rotated(&path, 3).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_never_stops_traffic_and_shows() {
    let web = upstream::http("web", None).await;
    let front = free_port();
    // /dev/full: every write fails with ENOSPC, as on a full disk.
    let stand = Stand::start(|s| s.access_log.path = PathBuf::from("/dev/full")).await;
    stand
        .apply_ok(&lb(vec![http_rule("web", front, web.port())]))
        .await;
    let c = client();
    for _ in 0..200 {
        assert_eq!(get(&c, &format!("http://127.0.0.1:{front}/")).await, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while envoy_stat(&stand.settings, "filesystem.write_failed").await == 0 {
        assert!(
            Instant::now() < deadline,
            "no failed write counted within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get(&c, &format!("http://127.0.0.1:{front}/")).await, 200);
    assert_eq!(
        stand.status().await.envoy_state,
        vpsie_lb_agent::envoy::admin::EnvoyState::Live
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_string_is_logged_only_when_asked() {
    let web = upstream::http("web", None).await;
    let front = free_port();
    let stand = Stand::start(|s| s.access_log.query_string = true).await;
    stand
        .apply_ok(&lb(vec![http_rule("web", front, web.port())]))
        .await;
    let url = format!("http://127.0.0.1:{front}/a/b?secret=1");
    assert_eq!(get(&client(), &url).await, 200);
    let l = wait_lines(&stand.settings.access_log.path, "the request", |l| {
        !l.is_empty()
    })
    .await;
    assert_eq!(l[0]["path"], "/a/b?secret=1");
}

/// A new `access_log.path` is a new config (the path is rendered into every listener, and the
/// settings the render reads are part of the hash): applied live, in the same epoch, and the
/// supervisor's rotation follows the new path after SIGHUP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_path_is_a_new_config_applied_live() {
    let web = upstream::http("web", None).await;
    let front = free_port();
    let mut stand = Stand::start(|_| {}).await;
    let spec = lb(vec![http_rule("web", front, web.port())]);
    let first = stand.apply_ok(&spec).await;
    let old = stand.settings.access_log.path.clone();
    let url = |p: &str| format!("http://127.0.0.1:{front}{p}");
    logged(&client(), &url("/before"), 200, &old).await;

    let new = stand.dir.path().join("logs").join("access.log");
    stand
        .reload(|s| s.access_log.path = new.clone(), "rotation follows")
        .await;
    assert!(
        new.parent().unwrap().is_dir(),
        "the supervisor made its directory"
    );
    let second = stand.apply_ok(&spec).await;
    assert_ne!(second.hash, first.hash, "the same spec, a new config");
    assert!(
        matches!(second.method, Some(ApplyMethod::Live)) && second.epoch == first.epoch,
        "applied live, in the same epoch: {second:?}"
    );
    let l = logged(&client(), &url("/after"), 200, &new).await;
    assert_eq!(l.len(), 1);
    assert!(with_path(&lines(&old), "/after").is_empty());
}
