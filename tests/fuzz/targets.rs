#![allow(dead_code)]
//! The fuzz targets: what each one feeds its input to, and the invariants it checks. A broken
//! invariant panics, which AFL records as a crash.
//!
//! Shared by the AFL binaries (`tests/fuzz/src/bin/*.rs`, `make fuzz`) and by the replay of the
//! saved corpus in `make test` (`tests/it/fuzz_replay.rs`), so that both run exactly this code.

use std::path::{Component, Path, PathBuf};
use vpsie_lb_agent::render::{self, xds, Rendered};
use vpsie_lb_agent::resolve::Resolved;
use vpsie_lb_agent::settings::Settings;
use vpsie_lb_agent::spec::{self, Options};
use vpsie_lb_agent::store::ConfigStore;
use vpsie_lb_agent::supervisor::protocol::Request;

/// A target: fed one input, panics when an invariant breaks.
pub type Target = fn(&[u8]);

/// The targets by name: the name is the binary's and the corpus directory's.
pub const TARGETS: &[(&str, Target)] = &[
    ("spec", spec_target),
    ("settings", settings_target),
    ("protocol", protocol_target),
];

/// What the spec is validated against: a fixed clock, so that a corpus entry means the same
/// thing on every run.
pub fn options() -> Options {
    Options {
        allow_loopback_backends: false,
        redirect_port: 80,
        reserved_ports: vec![(9100, "the agent's metrics".to_owned())],
        // 2026-12-01
        now: 1_796_083_200,
    }
}

/// The API's answer (envelope or bare object) through parse, validation, hash and render.
/// - A refused spec gets at least one error, each naming a path (or the document) and a rule.
/// - An accepted spec renders (the renderer's self-check reads the output back and compares its
///   listeners, clusters and endpoints with what the spec asked for), and its hash does not
///   depend on anything but the spec.
pub fn spec_target(data: &[u8]) {
    spec_rendered(data);
}

/// As [`spec_target`], returning the rendered config of an accepted spec (the replay also hands
/// it to the real Envoy).
pub fn spec_rendered(data: &[u8]) -> Option<Rendered> {
    match spec::load(data, &options()) {
        Err(errors) => {
            assert!(!errors.0.is_empty(), "refused without an error");
            for e in &errors.0 {
                assert!(
                    !e.message.trim().is_empty(),
                    "an error at {:?} without a message",
                    e.path
                );
            }
            None
        }
        Ok(loaded) => {
            let a = spec::config_hash(&loaded.spec, "fuzz");
            let b = spec::config_hash(&loaded.spec.clone(), "fuzz");
            assert_eq!(a, b, "the hash is not a function of the spec");
            let rendered = render::render(
                &loaded.spec,
                &Settings::default(),
                &Resolved::new(),
                &Default::default(),
            )
            .unwrap_or_else(|e| panic!("an accepted spec does not render: {e}"));
            Some(rendered)
        }
    }
}

/// The settings file (`agent.yaml`), with an empty environment. What is accepted reads back the
/// same after writing it out.
pub fn settings_target(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(s) = Settings::parse_with_env(text, &|_| None) else {
        return;
    };
    let out = serde_yaml::to_string(&s).expect("accepted settings serialise");
    let again = Settings::parse_with_env(&out, &|_| None)
        .unwrap_or_else(|e| panic!("accepted settings do not read back: {e:#}\n{out}"));
    assert_eq!(
        serde_yaml::to_string(&again).expect("serialises"),
        out,
        "the settings change when read back"
    );
}

/// One line of the supervisor's socket protocol, decoded as the supervisor decodes it. An apply
/// then goes through what the supervisor does before Envoy sees anything: the store's check of
/// the hash and the file paths (a path it accepts lies in the hash's certificate directory, with
/// no `..`), and the split into xDS resources. Nothing may panic. (The check is called rather
/// than the write: a fuzzer running as root must not be one bug away from writing anywhere.)
pub fn protocol_target(data: &[u8]) {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(Request::Apply(req)) = serde_json::from_str::<Request>(line) else {
        return;
    };
    let root = Path::new("/var/lib/vpsie-lb/envoy");
    let store = ConfigStore::new(root);
    let rendered = &req.rendered;
    if store.check(&req.hash, rendered).is_ok() {
        let certs = store.cert_dir(&req.hash);
        assert!(certs.starts_with(root) && store.config_path(&req.hash).starts_with(root));
        for f in &rendered.files {
            let normal = f
                .path
                .components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
            assert!(
                normal
                    && f.path.starts_with(&certs)
                    && f.path.components().count() == certs.components().count() + 1,
                "{} would be written outside {}",
                f.path.display(),
                certs.display()
            );
        }
    }
    let files: Vec<(PathBuf, String)> = rendered
        .files
        .iter()
        .map(|f| (f.path.clone(), f.contents.clone()))
        .collect();
    let _ = xds::split(&rendered.config, &files, Path::new("/run/fuzz/xds/0"));
}
