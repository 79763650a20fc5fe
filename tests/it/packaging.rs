//! What the image ships, checked without booting it (`make image-test` boots it): the systemd
//! units verify and stay within their exposure targets (figures printed), the shipped settings
//! are production settings that fit the units' writable paths, and the example user data writes
//! what the units read.

use std::path::PathBuf;
use std::process::Command;

fn analyze(args: &[&str], unit: &std::path::Path) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .output()
        .expect("systemd-analyze is required for this test (Debian package systemd)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn exposure(text: &str) -> f64 {
    text.lines()
        .find(|l| l.contains("Overall exposure level"))
        .and_then(|l| l.split(':').nth(1)?.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure figure in:\n{text}"))
}

#[test]
fn the_units_verify_and_stay_within_their_exposure_targets() {
    let dir = tempfile::tempdir().unwrap();
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("systemd");
    for (unit, target) in [
        ("vpsie-lb-agent.service", 2.0),
        ("vpsie-lb-envoy.service", 2.0),
        // keepalived stays root (addresses, raw sockets, scripts as another user).
        ("vpsie-lb-keepalived.service", 5.0),
    ] {
        let text = std::fs::read_to_string(src.join(unit)).unwrap();
        // verify checks that ExecStart exists: point it at the binary this build made.
        let text = text.replace(
            "/usr/local/bin/vpsie-lb-agent",
            env!("CARGO_BIN_EXE_vpsie-lb-agent"),
        );
        let path = dir.path().join(unit);
        std::fs::write(&path, text).unwrap();
        let (ok, out) = analyze(&["verify"], &path);
        assert!(
            ok && out.trim().is_empty(),
            "{unit}: systemd-analyze verify:\n{out}"
        );
        let (_, out) = analyze(&["security", "--offline=true"], &path);
        let e = exposure(&out);
        println!("{unit}: systemd-analyze security exposure {e}");
        assert!(e <= target, "{unit}: exposure {e} above {target}\n{out}");
    }
}

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The `ReadWritePaths=` of a unit file, without systemd's "-" (ignore if missing) prefix.
fn writable_paths(unit: &str) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(repo("systemd").join(unit)).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("ReadWritePaths="))
        .flat_map(|l| l.split_whitespace())
        .map(|p| PathBuf::from(p.trim_start_matches('-')))
        .collect()
}

/// The settings the image ships (`packer/files/agent.yaml`) are production settings, load as
/// both units load them, and put every file where the units may write: a path outside
/// `ReadWritePaths=` would only fail at boot, on a read-only file system.
#[test]
fn the_shipped_settings_are_valid_and_fit_the_units() {
    use vpsie_lb_agent::settings::Settings;
    let text = std::fs::read_to_string(repo("packer/files/agent.yaml")).unwrap();
    // The units' environment, as cloud-init's user data writes it (agent.env).
    let env = |name: &str| (name == "VPSIE_LB_ID").then(|| "lb-0123".to_owned());
    let s = Settings::parse_with_env(&text, &env).expect("packer/files/agent.yaml must load");
    vpsie_lb_agent::api::check_settings(&s)
        .expect("the agent must be able to follow the API with the shipped settings");
    assert_eq!(s.vpsie.api_url, "https://api.vpsie.com");
    assert_eq!(s.vpsie.loadbalancer_id, "lb-0123");
    assert!(!s.dev.allow_insecure_http && !s.dev.allow_loopback_backends);
    assert_eq!(
        s.envoy.admin_socket,
        PathBuf::from("/run/vpsie-lb/envoy-admin.sock")
    );
    assert_eq!(
        s.envoy.listen_addresses_on(true),
        [
            vpsie_lb_agent::settings::ANY_V4,
            vpsie_lb_agent::settings::ANY_V6
        ]
    );
    assert_eq!(s.envoy.binary, PathBuf::from("/usr/local/bin/envoy"));
    assert!(
        s.metrics.allowed_cidrs.is_empty(),
        "nobody may scrape until the operator says who"
    );

    let supervisor = writable_paths("vpsie-lb-envoy.service");
    let agent = writable_paths("vpsie-lb-agent.service");
    let under = |p: &std::path::Path, allowed: &[PathBuf]| allowed.iter().any(|a| p.starts_with(a));
    for (what, path) in [
        ("envoy.config_dir", &s.envoy.config_dir),
        ("envoy.log_file", &s.envoy.log_file),
        ("access_log.path", &s.access_log.path),
        ("envoy.admin_socket", &s.envoy.admin_socket),
        ("supervisor.socket", &s.supervisor.socket),
        ("state_dir", &s.state_dir),
    ] {
        assert!(
            under(path, &supervisor),
            "{what} = {} is not writable by vpsie-lb-envoy.service ({supervisor:?})",
            path.display()
        );
    }
    for (what, path) in [
        ("state_dir", &s.state_dir),
        ("supervisor.socket", &s.supervisor.socket),
    ] {
        assert!(
            under(path, &agent),
            "{what} = {} is not writable by vpsie-lb-agent.service ({agent:?})",
            path.display()
        );
    }
}

/// The example user data is cloud-config that writes the two files the units read, with the
/// owners and modes the agent demands (a token others can read is refused).
#[test]
fn the_example_user_data_writes_what_the_units_read() {
    let text = std::fs::read_to_string(repo("packer/cloud-init/user-data.example")).unwrap();
    assert!(text.starts_with("#cloud-config\n"));
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let files = doc["write_files"].as_sequence().expect("write_files");
    let file = |path: &str| {
        files
            .iter()
            .find(|f| f["path"].as_str() == Some(path))
            .unwrap_or_else(|| panic!("the example does not write {path}"))
    };
    let env = file("/etc/vpsie-lb/agent.env");
    assert!(env["content"]
        .as_str()
        .unwrap()
        .lines()
        .any(|l| l.starts_with("VPSIE_LB_ID=")));
    let key = file("/etc/vpsie-lb/api-key");
    assert_eq!(key["owner"].as_str(), Some("vpsie-lb:vpsie-lb"));
    assert_eq!(key["permissions"].as_str(), Some("0600"));
    for unit in ["vpsie-lb-envoy.service", "vpsie-lb-agent.service"] {
        let text = std::fs::read_to_string(repo("systemd").join(unit)).unwrap();
        assert!(
            text.contains("EnvironmentFile=-/etc/vpsie-lb/agent.env"),
            "{unit} must read agent.env"
        );
    }
    let agent = std::fs::read_to_string(repo("systemd/vpsie-lb-agent.service")).unwrap();
    assert!(agent.contains("ConditionPathExists=/etc/vpsie-lb/api-key"));
}

/// The keepalived unit renders and runs the config the settings name by default, is skipped on
/// a single node, and a settings change reloads it (the path unit).
#[test]
fn the_keepalived_units_fit_the_settings_and_each_other() {
    let unit = std::fs::read_to_string(repo("systemd/vpsie-lb-keepalived.service")).unwrap();
    let default = vpsie_lb_agent::settings::Settings::parse_with_env(
        "ha:\n  mode: active_standby\n  interface: eth1\n  node_address: 10.0.0.2\n  peers: [10.0.0.3]\n  virtual_ips: [10.0.0.100/24]\n",
        &|_| None,
    )
    .unwrap()
    .ha
    .unwrap();
    let conf = default.keepalived_config.display().to_string();
    assert!(unit.contains(
        "ExecCondition=/usr/local/bin/vpsie-lb-agent ha-enabled --config /etc/vpsie-lb/agent.yaml"
    ));
    assert_eq!(
        unit.matches(&format!("--out {conf}")).count(),
        2,
        "ExecStartPre and ExecReload render {conf}"
    );
    assert!(
        unit.contains(&format!("--use-file {conf}")),
        "keepalived reads {conf}"
    );
    assert!(unit.contains("After=vpsie-lb-envoy.service"));
    let path = std::fs::read_to_string(repo("systemd/vpsie-lb-keepalived-reload.path")).unwrap();
    assert!(path.contains("PathChanged=/etc/vpsie-lb/agent.yaml"));
    let reload =
        std::fs::read_to_string(repo("systemd/vpsie-lb-keepalived-reload.service")).unwrap();
    assert!(reload.contains("try-reload-or-restart vpsie-lb-keepalived.service"));
    let dir = tempfile::tempdir().unwrap();
    for u in [
        "vpsie-lb-keepalived-reload.path",
        "vpsie-lb-keepalived-reload.service",
    ] {
        std::fs::copy(repo("systemd").join(u), dir.path().join(u)).unwrap();
    }
    let (ok, out) = analyze(
        &["verify"],
        &dir.path().join("vpsie-lb-keepalived-reload.path"),
    );
    assert!(ok && out.trim().is_empty(), "{out}");
    // `ha-enabled` is the condition: 0 with an ha section, 1 (skip) without.
    let settings = dir.path().join("agent.yaml");
    for (text, code) in [("{}\n", 1), ("ha:\n  mode: active_standby\n  interface: eth1\n  node_address: 10.0.0.2\n  peers: [10.0.0.3]\n  virtual_ips: [10.0.0.100/24]\n", 0)] {
        std::fs::write(&settings, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_vpsie-lb-agent"))
            .args(["ha-enabled", "--config"])
            .arg(&settings)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(code), "{text}");
    }
}

/// The high-availability user data examples are the shipped settings plus a valid `ha` section:
/// the pair is active/standby with this node the owner; of the three, node 1 owns the first
/// address.
#[test]
fn the_ha_user_data_examples_are_the_shipped_settings_plus_a_valid_ha_section() {
    use vpsie_lb_agent::settings::{HaMode, Settings};
    let env = |name: &str| (name == "VPSIE_LB_ID").then(|| "lb-0123".to_owned());
    let shipped = Settings::parse_with_env(
        &std::fs::read_to_string(repo("packer/files/agent.yaml")).unwrap(),
        &env,
    )
    .unwrap();
    for (file, mode, vips) in [
        ("user-data-ha-pair.example", HaMode::ActiveStandby, 1),
        ("user-data-ha-three.example", HaMode::ActiveActive, 3),
    ] {
        let text = std::fs::read_to_string(repo("packer/cloud-init").join(file)).unwrap();
        assert!(text.starts_with("#cloud-config\n"), "{file}");
        let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        let files = doc["write_files"].as_sequence().expect("write_files");
        let settings = files
            .iter()
            .find(|f| f["path"].as_str() == Some("/etc/vpsie-lb/agent.yaml"))
            .and_then(|f| f["content"].as_str())
            .unwrap_or_else(|| panic!("{file} writes no agent.yaml"));
        let mut s =
            Settings::parse_with_env(settings, &env).unwrap_or_else(|e| panic!("{file}: {e:#}"));
        let ha =
            s.ha.take()
                .unwrap_or_else(|| panic!("{file}: no ha section"));
        assert_eq!(ha.mode, mode, "{file}");
        let instances = vpsie_lb_agent::ha::instances(&ha);
        assert_eq!(instances.len(), vips, "{file}");
        assert!(
            instances[0].owner,
            "{file}: the first node owns the first address"
        );
        // The nodes share the secret of the TLS session-ticket keys, written beside the
        // settings for the supervisor's user only.
        let secret = s
            .session_tickets
            .secret_file
            .take()
            .expect("a shared ticket secret");
        let written = files
            .iter()
            .find(|f| f["path"].as_str() == secret.to_str())
            .unwrap_or_else(|| panic!("{file} does not write {}", secret.display()));
        assert_eq!(
            written["owner"].as_str(),
            Some("vpsie-lb:vpsie-lb"),
            "{file}"
        );
        assert_eq!(written["permissions"].as_str(), Some("0600"), "{file}");
        s.session_tickets.secret_file = shipped.session_tickets.secret_file.clone();
        assert_eq!(
            serde_yaml::to_string(&s).unwrap(),
            serde_yaml::to_string(&shipped).unwrap(),
            "{file}: everything but ha and the shared ticket secret as shipped"
        );
        for f in ["/etc/vpsie-lb/agent.env", "/etc/vpsie-lb/api-key"] {
            assert!(
                files.iter().any(|x| x["path"].as_str() == Some(f)),
                "{file} writes {f}"
            );
        }
    }
}
