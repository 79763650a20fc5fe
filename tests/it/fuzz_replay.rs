//! The saved fuzz corpus (`tests/fuzz/corpus`, grown by `make fuzz`) replayed through the same
//! targets AFL runs (`tests/fuzz/targets.rs`), and every spec in it that is accepted handed to
//! the real Envoy: an accepted spec must render a config `envoy --mode validate` accepts.

#[path = "../fuzz/targets.rs"]
mod targets;

use crate::support::envoy_bin;
use std::path::{Path, PathBuf};
use vpsie_lb_agent::resolve::Resolved;
use vpsie_lb_agent::settings::Settings;
use vpsie_lb_agent::{envoy, render, spec, store};

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

/// Every entry of every target's corpus runs through its target without breaking an invariant.
#[test]
fn the_saved_fuzz_corpus_replays_cleanly() {
    for (name, target) in targets::TARGETS {
        let files = corpus(name);
        assert!(files.len() >= 5, "the {name} corpus is nearly empty");
        for f in files {
            let data = std::fs::read(&f).unwrap();
            if let Err(e) = std::panic::catch_unwind(|| target(&data)) {
                let why = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panic!("{name}: {} breaks an invariant: {why}", f.display());
            }
        }
    }
}

/// Each accepted spec of the corpus, rendered with its certificates written out, is accepted by
/// the real Envoy. (At least one must be: the seeds include valid specs.)
#[tokio::test]
async fn accepted_fuzz_specs_render_configs_envoy_accepts() {
    let bin = envoy_bin();
    let mut accepted = 0;
    let mut refused = Vec::new();
    for f in corpus("spec") {
        let data = std::fs::read(&f).unwrap();
        let Ok(loaded) = spec::load(&data, &targets::options()) else {
            continue;
        };
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::default();
        settings.envoy.config_dir = dir.path().to_path_buf();
        settings.envoy.cert_dir = Some(dir.path().join("certs"));
        settings.envoy.redirect_port = targets::options().redirect_port;
        settings.access_log.path = dir.path().join("access.log");
        let rendered = render::render(
            &loaded.spec,
            &settings,
            &Resolved::new(),
            &Default::default(),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        // The same config reads the same as JSON and as YAML (Envoy reads either).
        let as_json: serde_json::Value = serde_json::from_str(&rendered.config).unwrap();
        let as_yaml: serde_json::Value = serde_yaml::from_str(&rendered.config).unwrap();
        assert_eq!(as_json, as_yaml, "{}", f.display());
        let config = dir.path().join("envoy.json");
        store::write_rendered(&rendered, &config).unwrap();
        if let Err(e) = envoy::validate(&bin, &config).await {
            refused.push(format!("{}: {e}", f.display()));
        }
        accepted += 1;
    }
    assert!(
        refused.is_empty(),
        "Envoy refuses {} of {accepted} accepted specs:\n{}",
        refused.len(),
        refused.join("\n")
    );
    assert!(
        accepted >= 3,
        "only {accepted} accepted specs in the corpus"
    );
}

/// What fuzzing found (specs the agent accepted and Envoy refused), kept as `regression-*`
/// entries: each is now refused where the spec is validated, at its certificate or key field,
/// with words that say why.
#[test]
fn what_fuzzing_found_is_refused_at_its_field() {
    let found: Vec<PathBuf> = corpus("spec")
        .into_iter()
        .filter(|f| {
            f.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("regression-"))
        })
        .collect();
    assert!(found.len() >= 8, "{found:?}");
    for f in found {
        let data = std::fs::read(&f).unwrap();
        let errors = spec::load(&data, &targets::options())
            .err()
            .unwrap_or_else(|| panic!("{} is accepted again", f.display()));
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let (field, words): (&str, &[&str]) = if name.starts_with("regression-rsa-key-") {
            ("tls.privateKeyPem", &["is not a consistent RSA key"])
        } else {
            (
                "tls.certificatePem",
                &["is not valid DER", "after its end", "extension"],
            )
        };
        assert!(
            errors
                .0
                .iter()
                .any(|e| e.path.ends_with(field) && words.iter().any(|w| e.message.contains(w))),
            "{name}: {errors}"
        );
    }
}
