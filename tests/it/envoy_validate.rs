//! The real `envoy --mode validate` on the contract's examples, Envoy's rejections passed on, and
//! the CLI's commands and exit codes (0 ok, 2 invalid spec, 3 Envoy rejected, 1 anything else).

use crate::support::{envoy_bin, example};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use vpsie_lb_agent::command::{self, Failure};
use vpsie_lb_agent::envoy::{self, EnvoyError};
use vpsie_lb_agent::settings::Settings;

fn example_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples/specs")
        .join(name)
}

fn settings() -> Settings {
    let mut s = Settings::default();
    s.envoy.binary = envoy_bin();
    s
}

#[tokio::test]
async fn both_examples_pass_the_real_envoy() {
    for name in ["lb-basic.json", "lb-full.json"] {
        let p = command::validate(&example_path(name), &settings())
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(p.hash.as_str().len(), 64);
        assert!(p.warnings().is_empty(), "{name}: {:?}", p.warnings());
    }
}

#[tokio::test]
async fn envoy_rejection_is_passed_on_with_envoys_message() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.yaml");
    std::fs::write(
        &config,
        "static_resources:\n  clusters:\n  - name: c\n    connect_timeout: 1s\n    lb_policy: NO_SUCH_POLICY\n",
    )
    .unwrap();
    let err = envoy::validate(&envoy_bin(), &config).await.unwrap_err();
    let EnvoyError::Rejected(msg) = &err else {
        panic!("expected a rejection, got {err}")
    };
    assert!(
        msg.contains("NO_SUCH_POLICY"),
        "Envoy's own message is kept: {msg}"
    );
    assert_eq!(
        vpsie_lb_agent::command::exit_code(&Err(Failure::from(err))),
        3
    );
}

#[tokio::test]
async fn a_missing_envoy_is_a_clear_error_not_a_rejection() {
    let err = envoy::validate(Path::new("/nonexistent/envoy"), Path::new("/dev/null"))
        .await
        .unwrap_err();
    assert!(matches!(err, EnvoyError::Spawn { .. }));
    assert!(err.to_string().contains("make envoy"), "{err}");
    assert_eq!(
        vpsie_lb_agent::command::exit_code(&Err(Failure::from(err))),
        1
    );
}

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vpsie-lb-agent"))
        .args(args)
        .env("ENVOY_BIN", envoy_bin())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn cli_validate_and_hash_agree_and_exit_zero() {
    let spec = example_path("lb-full.json");
    let v = cli(&["validate", "--spec", spec.to_str().unwrap()]);
    assert_eq!(v.status.code(), Some(0), "{}", text(&v.stderr));
    let out = text(&v.stdout);
    let hash = out
        .strip_prefix("OK ")
        .expect("prints OK <hash>")
        .trim()
        .to_owned();
    let h = cli(&["hash", "--spec", spec.to_str().unwrap()]);
    assert_eq!(h.status.code(), Some(0));
    assert_eq!(text(&h.stdout).trim(), hash);
}

#[test]
fn cli_invalid_spec_exits_2_with_every_error_on_its_own_line() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("bad.json");
    let mut v: serde_json::Value = serde_json::from_slice(&example("lb-basic.json")).unwrap();
    v["data"]["identifier"] = "bad id".into();
    v["data"]["rules"][0]["backends"][0]["ip"] = "169.254.169.254".into();
    v["data"]["rules"][0]["frontPort"] = "99999".into();
    std::fs::write(&spec, v.to_string()).unwrap();
    for cmd in ["validate", "hash", "render"] {
        let o = cli(&[cmd, "--spec", spec.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{cmd}: {}", text(&o.stderr));
        let err = text(&o.stderr);
        for path in [
            "identifier: ",
            "rules[0].frontPort: ",
            "rules[0].backends[0].ip: ",
        ] {
            assert_eq!(
                err.lines()
                    .filter(|l| l.trim_start().starts_with(path))
                    .count(),
                1,
                "{cmd}: one line for {path} in:\n{err}"
            );
        }
    }
}

#[test]
fn cli_render_writes_private_files_and_other_failures_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("agent.yaml");
    std::fs::write(
        &conf,
        format!(
            "envoy:\n  config_dir: {d}\n  cert_dir: {d}/certs\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let out = dir.path().join("envoy.json");
    let spec = example_path("lb-full.json");
    let o = cli(&[
        "render",
        "--spec",
        spec.to_str().unwrap(),
        "--config",
        conf.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&out), 0o600);
    let certs: Vec<_> = std::fs::read_dir(dir.path().join("certs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(certs.len(), 4, "two certificates and two keys: {certs:?}");
    for c in &certs {
        assert_eq!(mode(c), 0o600, "{}", c.display());
    }
    let config = std::fs::read_to_string(&out).unwrap();
    for c in &certs {
        assert!(
            config.contains(c.to_str().unwrap()),
            "the config names {}",
            c.display()
        );
    }
    // A bare file name for --out: written in the working directory.
    let o = Command::new(env!("CARGO_BIN_EXE_vpsie-lb-agent"))
        .args(["render", "--spec", spec.to_str().unwrap(), "--config"])
        .arg(&conf)
        .args(["--out", "bare.json"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("bare.json")).unwrap(),
        config
    );
    assert_eq!(mode(&dir.path().join("bare.json")), 0o600);

    let o = cli(&["hash", "--spec", "/nonexistent/spec.json"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("/nonexistent/spec.json"));

    std::fs::write(&conf, "envoy:\n  admin_adress: 127.0.0.1\n").unwrap();
    let o = cli(&[
        "hash",
        "--spec",
        spec.to_str().unwrap(),
        "--config",
        conf.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("admin_adress"),
        "{}",
        text(&o.stderr)
    );
}
