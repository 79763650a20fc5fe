//! `vpsie-api-sim`, the development stand-in for the VPSie API, run as the real binary on
//! 127.0.0.1 port 0 and spoken to over loopback: the contract's routes, events, every fault kind,
//! the named upstreams, the loopback-only rule and the stop signals.

use crate::support::envoy::free_port;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

const SIM: &str = env!("CARGO_BIN_EXE_vpsie-api-sim");
const TOKEN: &str = "sim-test-token";
const LB: &str = "lb-basic-01";

/// A running sim with its own directory (token, spec, log). Killed and reaped on drop.
struct Sim {
    child: Child,
    url: String,
    dir: TempDir,
    client: reqwest::Client,
}

impl Sim {
    /// Starts the sim serving `lb-basic.json` as `lb-basic-01`, plus `extra` flags.
    fn start(extra: &[&str]) -> Sim {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), format!("  {TOKEN}\n")).unwrap();
        std::fs::write(
            dir.path().join("lb.json"),
            crate::support::example("lb-basic.json"),
        )
        .unwrap();
        let mut cmd = sim_command(&dir);
        cmd.arg("--lb")
            .arg(format!("{LB}={}", dir.path().join("lb.json").display()))
            .args(extra);
        Self::spawn(cmd, dir)
    }

    fn spawn(mut cmd: Command, dir: TempDir) -> Sim {
        let log = std::fs::File::create(dir.path().join("sim.log")).unwrap();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        // Reads the ready line, then keeps the pipe drained (and open) until the sim exits.
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            for _ in lines {}
        });
        let mut sim = Sim {
            child,
            url: String::new(),
            dir,
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
        };
        let line = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Some(Ok(line))) => line,
            other => panic!("the sim did not start ({other:?}); its log:\n{}", sim.log()),
        };
        let prefix =
            "vpsie-api-sim (development stand-in, not the real API) listening on http://127.0.0.1:";
        let port: u16 = line
            .strip_prefix(prefix)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected ready line {line:?}"));
        assert_ne!(port, 0, "the ready line must give the bound port");
        sim.url = format!("http://127.0.0.1:{port}");
        sim
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sim.log")).unwrap_or_default()
    }

    fn spec_path(&self) -> PathBuf {
        self.dir.path().join("lb.json")
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.url))
            .header("Vpsie-Auth", TOKEN)
    }

    async fn get_spec(&self) -> reqwest::Response {
        self.req(reqwest::Method::GET, &format!("/api/v1/lb/{LB}"))
            .send()
            .await
            .unwrap()
    }

    async fn post_event(&self, body: &Value) -> reqwest::Response {
        self.req(reqwest::Method::POST, &format!("/api/v1/lb/{LB}/events"))
            .json_body(body)
            .send()
            .await
            .unwrap()
    }

    async fn events(&self) -> Vec<Value> {
        let r = self
            .req(reqwest::Method::GET, &format!("/sim/events?lb={LB}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = body_json(r).await;
        assert_eq!(v["error"], false);
        v["data"].as_array().unwrap().clone()
    }

    async fn fault(&self, fault: Value) {
        let r = self
            .req(reqwest::Method::POST, "/sim/faults")
            .json_body(&fault)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }

    async fn pending_faults(&self) -> Vec<Value> {
        let r = self
            .req(reqwest::Method::GET, "/sim/faults")
            .send()
            .await
            .unwrap();
        envelope(r, 200).await["data"]["pending"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// Waits until the sim's log holds `text`.
    async fn wait_log(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.log().contains(text) {
            assert!(
                Instant::now() < deadline,
                "no {text:?} in the log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, sig).unwrap();
    }

    /// Waits for the sim to exit and returns its exit code (None: still running at `timeout`).
    fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sim command with the token flag, without any `--lb`.
fn sim_command(dir: &TempDir) -> Command {
    let mut cmd = Command::new(SIM);
    cmd.arg("--token-file")
        .arg(dir.path().join("token"))
        .env("RUST_LOG", "info");
    cmd.arg("--listen").arg("127.0.0.1:0");
    cmd
}

/// An event as the agent sends it, with a fresh id.
fn event(kind: &str, message: &str) -> Value {
    json!({
        "id": uuid::Uuid::new_v4().to_string(),
        "type": kind,
        "message": message,
        "timestamp": "2026-11-23T08:15:00Z",
        "metadata": {"config_hash": "abc", "epoch": 1}
    })
}

/// reqwest is built without its `json` feature here: bodies go through serde_json by hand.
trait JsonBody {
    fn json_body(self, v: &Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, v: &Value) -> Self {
        self.header("content-type", "application/json")
            .body(v.to_string())
    }
}

async fn body_json(r: reqwest::Response) -> Value {
    let body = r.bytes().await.unwrap();
    serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&body)))
}

fn sha256_etag(body: &[u8]) -> String {
    format!("\"{}\"", hex::encode(Sha256::digest(body)))
}

async fn envelope(r: reqwest::Response, status: u16) -> Value {
    assert_eq!(r.status(), status);
    assert_eq!(r.headers()["content-type"], "application/json");
    body_json(r).await
}

#[tokio::test]
async fn the_spec_needs_the_token_and_comes_in_the_envelope_with_an_etag() {
    let sim = Sim::start(&[]);
    let url = format!("{}/api/v1/lb/{LB}", sim.url);

    let missing = sim.client.get(&url).send().await.unwrap();
    let v = envelope(missing, 401).await;
    assert_eq!(v["error"], true);
    assert_eq!(v["code"], 401);
    assert!(v["message"].as_str().unwrap().contains("Vpsie-Auth"), "{v}");
    let wrong = sim
        .client
        .get(&url)
        .header("Vpsie-Auth", "not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(envelope(wrong, 401).await["code"], 401);

    let unknown = sim
        .req(reqwest::Method::GET, "/api/v1/lb/lb-nope")
        .send()
        .await
        .unwrap();
    let v = envelope(unknown, 404).await;
    assert_eq!(
        (v["error"].clone(), v["code"].clone()),
        (json!(true), json!(404))
    );

    // lb-basic.json is an envelope already: served byte for byte.
    let r = sim.get_spec().await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    let body = r.bytes().await.unwrap();
    assert_eq!(body, crate::support::example("lb-basic.json"));
    assert_eq!(etag, sha256_etag(&body));

    let r = sim
        .req(reqwest::Method::GET, &format!("/api/v1/lb/{LB}"))
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["etag"], etag.as_str());
    assert!(r.bytes().await.unwrap().is_empty());

    let stale = sim
        .req(reqwest::Method::GET, &format!("/api/v1/lb/{LB}"))
        .header("If-None-Match", "\"0000\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 200);
}

#[tokio::test]
async fn the_spec_file_is_read_fresh_on_every_request() {
    let sim = Sim::start(&[]);
    let first = sim.get_spec().await;
    let first_etag = first.headers()["etag"].to_str().unwrap().to_owned();

    // A bare load balancer (no envelope) is wrapped in one; the edit shows at once.
    let mut spec: Value =
        serde_json::from_slice(&crate::support::example("lb-basic.json")).unwrap();
    let mut lb = spec["data"].take();
    lb["lbName"] = json!("edited");
    std::fs::write(sim.spec_path(), lb.to_string()).unwrap();
    let r = sim
        .req(reqwest::Method::GET, &format!("/api/v1/lb/{LB}"))
        .header("If-None-Match", &first_etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "an edited spec is not 'unchanged'");
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    let body = r.bytes().await.unwrap();
    assert_ne!(etag, first_etag);
    assert_eq!(etag, sha256_etag(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v, json!({"error": false, "data": lb}));

    // An error envelope in the file is served as it is (HTTP 200 with "error": true).
    let api_error = json!({"error": true, "code": 503, "message": "maintenance"});
    std::fs::write(sim.spec_path(), api_error.to_string()).unwrap();
    let r = sim.get_spec().await;
    assert_eq!(r.status(), 200);
    assert_eq!(body_json(r).await, api_error);

    // A deleted file is a deleted load balancer.
    std::fs::remove_file(sim.spec_path()).unwrap();
    assert_eq!(sim.get_spec().await.status(), 404);
}

#[tokio::test]
async fn events_are_validated_and_recorded_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.jsonl");
    let sim = Sim::start(&["--events-file", file.to_str().unwrap()]);
    assert!(sim.events().await.is_empty());

    let kinds = ["agent_started", "config_applied", "config_rejected"];
    let mut ids = Vec::new();
    for (i, kind) in kinds.iter().enumerate() {
        let r = sim.post_event(&event(kind, &format!("event {i}"))).await;
        let v = envelope(r, 201).await;
        assert_eq!(v["error"], false);
        ids.push(v["data"]["seq"].as_u64().unwrap());
    }
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "seqs increase: {ids:?}"
    );

    let listed = sim.events().await;
    assert_eq!(listed.len(), 3);
    for (i, (e, kind)) in listed.iter().zip(kinds).enumerate() {
        assert_eq!(e["type"], kind);
        assert_eq!(e["message"], format!("event {i}"));
        assert_eq!(e["seq"], ids[i]);
        assert_eq!(e["metadata"]["epoch"], 1);
    }
    let lines: Vec<Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["lb"], LB);
    assert_eq!(lines[2]["type"], "config_rejected");

    // Bad bodies: 400 with an envelope saying what is wrong; nothing recorded.
    let mut no_metadata = event("config_applied", "m");
    no_metadata.as_object_mut().unwrap().remove("metadata");
    let mut bad_time = event("config_applied", "m");
    bad_time["timestamp"] = json!("yesterday");
    let mut list_metadata = event("config_applied", "m");
    list_metadata["metadata"] = json!([1]);
    let mut no_id = event("config_applied", "m");
    no_id.as_object_mut().unwrap().remove("id");
    let mut bad_id = event("config_applied", "m");
    bad_id["id"] = json!("42");
    for (body, says) in [
        (no_metadata, "metadata: missing"),
        (bad_time, "timestamp"),
        (list_metadata, "metadata: must be an object"),
        (json!({"type": 1, "message": "m"}), "type: must be a string"),
        (no_id, "id: missing"),
        (bad_id, "is not a UUID"),
        (json!([]), "object"),
    ] {
        let v = envelope(sim.post_event(&body).await, 400).await;
        assert_eq!(v["code"], 400);
        assert!(v["message"].as_str().unwrap().contains(says), "{v}");
    }
    let not_json = sim
        .req(reqwest::Method::POST, &format!("/api/v1/lb/{LB}/events"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(envelope(not_json, 400).await["code"], 400);

    // Token and id are checked like the spec's.
    let anonymous = sim
        .client
        .post(format!("{}/api/v1/lb/{LB}/events", sim.url))
        .json_body(&event("agent_started", "m"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let unknown = sim
        .req(reqwest::Method::POST, "/api/v1/lb/lb-nope/events")
        .json_body(&event("agent_started", "m"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(sim.events().await.len(), 3);

    // The same event again (same id): acknowledged with its first seq, not recorded twice.
    let again = listed[1].clone();
    let v = envelope(sim.post_event(&again).await, 200).await;
    assert_eq!(v["data"], json!({"seq": ids[1], "duplicate": true}));
    assert_eq!(sim.events().await.len(), 3);

    // /sim/events needs the token and an lb; DELETE clears.
    let r = sim
        .client
        .get(format!("{}/sim/events?lb={LB}", sim.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = sim
        .req(reqwest::Method::GET, "/sim/events")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = sim
        .req(reqwest::Method::DELETE, &format!("/sim/events?lb={LB}"))
        .send()
        .await
        .unwrap();
    assert_eq!(envelope(r, 200).await["data"]["cleared"], 3);
    assert!(sim.events().await.is_empty());
}

#[tokio::test]
async fn each_fault_answers_for_count_requests_then_clears() {
    let sim = Sim::start(&[]);

    // status_500 twice: spec and event both fail; the event is not recorded; then normal.
    sim.fault(json!({"kind": "status_500", "count": 2})).await;
    let v = envelope(sim.get_spec().await, 500).await;
    assert_eq!(
        (v["error"].clone(), v["code"].clone()),
        (json!(true), json!(500))
    );
    let r = sim.post_event(&event("agent_started", "while down")).await;
    assert_eq!(r.status(), 500);
    assert!(sim.events().await.is_empty(), "/sim/* is not faulted");
    assert_eq!(sim.get_spec().await.status(), 200);

    sim.fault(json!({"kind": "status_429", "count": 1})).await;
    let r = sim.get_spec().await;
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(envelope(r, 429).await["code"], 429);
    assert_eq!(sim.get_spec().await.status(), 200);

    sim.fault(json!({"kind": "error_envelope", "count": 1}))
        .await;
    let v = envelope(sim.post_event(&event("agent_started", "m")).await, 200).await;
    assert_eq!(
        v,
        json!({"error": true, "code": 500, "message": "injected"})
    );
    assert!(sim.events().await.is_empty());
    assert_eq!(sim.get_spec().await.status(), 200);

    // delay: slow, then a normal answer (and an event posted then is recorded).
    sim.fault(json!({"kind": "delay", "count": 2, "delay_ms": 300}))
        .await;
    for _ in 0..2 {
        let t = Instant::now();
        let r = sim.post_event(&event("agent_started", "slow")).await;
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(r.status(), 201);
    }
    assert_eq!(sim.events().await.len(), 2);
    assert!(
        sim.pending_faults().await.is_empty(),
        "the delay is used up"
    );

    // oversize: HTTP 200, valid JSON over 10 MiB holding the spec.
    sim.fault(json!({"kind": "oversize", "count": 1})).await;
    let r = sim.get_spec().await;
    assert_eq!(r.status(), 200);
    let body = r.bytes().await.unwrap();
    assert!(body.len() > 10 * 1024 * 1024, "{} bytes", body.len());
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"], false);
    assert_eq!(v["data"]["identifier"], LB);
    assert!(sim.get_spec().await.bytes().await.unwrap().len() < 10_000);

    // drop: the connection closes without a response, quickly (not a timeout).
    sim.fault(json!({"kind": "drop", "count": 1})).await;
    let e = sim
        .req(reqwest::Method::GET, &format!("/api/v1/lb/{LB}"))
        .send()
        .await
        .expect_err("a dropped connection has no response");
    assert!(!e.is_timeout(), "{e:?}");
    assert_eq!(sim.get_spec().await.status(), 200);

    // Faults queue in order; GET lists them; DELETE clears them all.
    sim.fault(json!({"kind": "drop", "count": 5})).await;
    sim.fault(json!({"kind": "status_500", "count": 1})).await;
    let pending = sim.pending_faults().await;
    assert_eq!(pending[0]["kind"], "drop");
    assert_eq!(pending[0]["remaining"], 5);
    assert_eq!(pending[1]["kind"], "status_500");
    let r = sim
        .req(reqwest::Method::DELETE, "/sim/faults")
        .send()
        .await
        .unwrap();
    assert_eq!(envelope(r, 200).await["data"]["cleared"], 2);
    assert_eq!(sim.get_spec().await.status(), 200);

    // Bad fault requests are refused with the reason; /sim/faults needs the token.
    for bad in [
        json!({"kind": "explode"}),
        json!({"kind": "delay", "count": 1}),
        json!({"kind": "status_500", "count": 0}),
    ] {
        let r = sim
            .req(reqwest::Method::POST, "/sim/faults")
            .json_body(&bad)
            .send()
            .await
            .unwrap();
        let v = envelope(r, 400).await;
        assert!(
            v["message"].as_str().unwrap().starts_with("invalid fault"),
            "{v}"
        );
    }
    let r = sim
        .client
        .post(format!("{}/sim/faults", sim.url))
        .json_body(&json!({"kind": "drop"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(sim.get_spec().await.status(), 200, "nothing was queued");
}

#[tokio::test]
async fn upstreams_answer_with_their_names() {
    let (web1, web2, tcp1) = (free_port(), free_port(), free_port());
    let sim = Sim::start(&[
        "--upstream",
        &format!("web-1=127.0.0.1:{web1}"),
        "--upstream",
        &format!("web-2=127.0.0.1:{web2}"),
        "--tcp-upstream",
        &format!("tcp-1=127.0.0.1:{tcp1}"),
    ]);
    for (port, name) in [(web1, "web-1"), (web2, "web-2")] {
        let r = sim
            .client
            .post(format!("http://127.0.0.1:{port}/any/path?x=1"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-backend"], name);
        assert_eq!(r.text().await.unwrap(), name);
    }
    for _ in 0..2 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", tcp1)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        assert_eq!(got, "tcp-1");
    }
}

#[tokio::test]
async fn only_loopback_is_accepted_and_nothing_is_bound_before_the_check() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    std::fs::write(dir.path().join("lb.json"), "{}").unwrap();
    let lb = format!("{LB}={}", dir.path().join("lb.json").display());
    // A port this test holds: a sim that bound anything before judging its flags would fail
    // with "address in use" (exit 1) instead of refusing the address (exit 2).
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held = held.local_addr().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(SIM)
            .args(["--token-file", dir.path().join("token").to_str().unwrap()])
            .args(["--lb", &lb])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.stdout.is_empty(), "nothing may listen: {stderr}");
        (out.status.code(), stderr)
    };

    for (args, says) in [
        (
            vec!["--listen", "0.0.0.0:0"],
            "0.0.0.0 is not a loopback address",
        ),
        (vec!["--listen", "[::]:0"], ":: is not a loopback address"),
        (vec!["--listen", "192.0.2.1:80"], "not a loopback address"),
        (
            vec![
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                &format!("web=127.0.0.1:{}", held.port()),
                "--tcp-upstream",
                "t=0.0.0.0:9",
            ],
            "0.0.0.0 is not a loopback address",
        ),
    ] {
        let (code, stderr) = run(&args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(stderr.contains("development tool"), "{stderr}");
    }

    // Checked flags that fail at start: exit 1 with the reason.
    std::fs::write(dir.path().join("token"), " \n").unwrap();
    let (code, stderr) = run(&["--listen", "127.0.0.1:0"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("is empty"), "{stderr}");
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    let (code, stderr) = run(&["--listen", &held.to_string()]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {held}")),
        "{stderr}"
    );
}

#[tokio::test]
async fn term_finishes_requests_in_flight_and_int_stops_at_once() {
    let mut sim = Sim::start(&[]);
    sim.fault(json!({"kind": "delay", "count": 1, "delay_ms": 500}))
        .await;
    let (r, ()) = tokio::join!(sim.get_spec(), async {
        // The request is in the handler, sleeping, when the signal comes.
        sim.wait_log("injecting fault").await;
        sim.signal(nix::sys::signal::Signal::SIGTERM);
    });
    assert_eq!(
        r.status(),
        200,
        "a graceful stop answers the request in flight"
    );
    assert_eq!(
        sim.wait_exit(Duration::from_secs(3)),
        Some(0),
        "{}",
        sim.log()
    );
    assert!(sim.log().contains("DEVELOPMENT TOOL"), "{}", sim.log());

    let mut sim = Sim::start(&[]);
    sim.signal(nix::sys::signal::Signal::SIGINT);
    assert_eq!(
        sim.wait_exit(Duration::from_secs(2)),
        Some(0),
        "{}",
        sim.log()
    );
    let refused = std::net::TcpStream::connect(sim.url.trim_start_matches("http://"));
    assert!(refused.is_err(), "the port is closed after the stop");
    // The help says what the tool is.
    let help = Command::new(SIM).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).starts_with("DEVELOPMENT TOOL"));
}
