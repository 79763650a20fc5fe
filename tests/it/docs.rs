//! The documentation is checked, not trusted: every settings key is in `docs/operating.md`,
//! every command in the README's table, every metric in `docs/operating.md`, every event type in
//! `docs/contract.md`, every relative link in `README.md`, `ARCHITECTURE.md` and `docs/`
//! resolves (to a file, and to a heading where it names one), and nothing points outside the
//! repository.

use clap::CommandFactory;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use vpsie_lb_agent::command::Cli;
use vpsie_lb_agent::events::EventKind;
use vpsie_lb_agent::metrics::{AgentMetrics, SupervisorMetrics};
use vpsie_lb_agent::settings::Settings;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every key of the settings as dotted paths (`envoy.base_id`), from the settings themselves:
/// the defaults, with an `ha` section so that its keys are there too.
fn settings_keys() -> BTreeSet<String> {
    fn walk(v: &Value, path: &str, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(v, &p, out);
                }
            }
            _ => {
                out.insert(path.to_owned());
            }
        }
    }
    let s = Settings::parse(
        "ha:\n  mode: active_standby\n  interface: eth1\n  node_address: 198.18.0.2\n  peers: [198.18.0.3]\n  virtual_ips: [198.18.0.100/24]\n",
    )
    .unwrap();
    let mut keys = BTreeSet::new();
    walk(&serde_json::to_value(&s).unwrap(), "", &mut keys);
    keys
}

#[test]
fn every_settings_key_is_in_the_operators_page() {
    let page = read("docs/operating.md");
    let keys = settings_keys();
    assert!(keys.len() > 50, "{keys:?}");
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !page.contains(&format!("`{k}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "settings keys docs/operating.md does not name: {missing:?}"
    );
}

#[test]
fn every_command_is_in_the_readmes_table() {
    let readme = read("README.md");
    let verbs: Vec<String> = Cli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_owned())
        .collect();
    assert!(verbs.len() >= 10, "{verbs:?}");
    let missing: Vec<&String> = verbs
        .iter()
        .filter(|v| !readme.contains(&format!("| `vpsie-lb-agent {v}")))
        .collect();
    assert!(
        missing.is_empty(),
        "commands missing from the README's table: {missing:?}"
    );
}

#[test]
fn every_metric_is_in_the_operators_page() {
    let page = read("docs/operating.md");
    // Series that exist only once there is something to say: given something to say.
    let agent = AgentMetrics::new();
    let hash: vpsie_lb_agent::spec::ConfigHash = "0".repeat(64).parse().unwrap();
    agent.set_config(&hash, 1);
    agent.build_info.with_label_values(&["v", "e"]).set(1);
    agent.certificate_expiry.with_label_values(&["c"]).set(1.0);
    agent.set_vrrp(&[vpsie_lb_agent::metrics::VrrpReading {
        vip: "198.18.0.100",
        state: vpsie_lb_agent::metrics::Vrrp::Master,
        transitions: 1,
    }]);
    let supervisor = SupervisorMetrics::new();
    supervisor.set_resources(&hash);
    let text = agent.render() + &supervisor.render();
    let names: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    assert!(names.len() >= 36, "{names:?}");
    let missing: Vec<&&str> = names
        .iter()
        .filter(|n| !page.contains(&format!("`{n}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics docs/operating.md does not name: {missing:?}"
    );
}

#[test]
fn every_event_type_is_in_the_contract() {
    let contract = read("docs/contract.md");
    let missing: Vec<&str> = EventKind::ALL
        .iter()
        .map(|k| k.as_str())
        .filter(|k| !contract.contains(&format!("`{k}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "event types docs/contract.md does not list: {missing:?}"
    );
}

/// GitHub's anchor for a heading: lower case, punctuation but `-` and `_` dropped, spaces to `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut in_code = false;
    let mut out = BTreeSet::new();
    for line in markdown.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        if !in_code && line.starts_with('#') {
            out.insert(anchor(line.trim_start_matches('#')));
        }
    }
    out
}

/// The relative links of a Markdown file: `[text](target)`, outside code blocks.
fn links(markdown: &str) -> Vec<String> {
    let mut in_code = false;
    let mut out = Vec::new();
    for line in markdown.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let Some(end) = after.find(')') else { break };
            out.push(after[..end].to_owned());
            rest = &after[end..];
        }
    }
    out
}

fn documents() -> Vec<PathBuf> {
    let mut docs = vec![repo().join("README.md"), repo().join("ARCHITECTURE.md")];
    for e in std::fs::read_dir(repo().join("docs")).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "md") {
            docs.push(e.path());
        }
    }
    docs
}

#[test]
fn every_relative_link_resolves() {
    let mut broken = Vec::new();
    let docs = documents();
    assert!(docs.len() >= 8, "{docs:?}");
    for doc in &docs {
        let text = std::fs::read_to_string(doc).unwrap();
        let dir = doc.parent().unwrap();
        for link in links(&text) {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            let (file, fragment) = match link.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (link.as_str(), None),
            };
            let target: PathBuf = if file.is_empty() {
                doc.clone()
            } else {
                dir.join(file)
            };
            let name = doc.strip_prefix(repo()).unwrap().display().to_string();
            let Ok(target) = target.canonicalize() else {
                broken.push(format!("{name}: {link} (no such file)"));
                continue;
            };
            if !target.starts_with(repo()) {
                broken.push(format!("{name}: {link} (outside the repository)"));
                continue;
            }
            if let Some(a) = fragment {
                let is_md = target.extension().is_some_and(|x| x == "md");
                let text = std::fs::read_to_string(&target).unwrap_or_default();
                if is_md && !anchors(&text).contains(a) {
                    broken.push(format!("{name}: {link} (no such heading)"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// Nothing a reader of the repository has names the team's folder beside it.
#[test]
fn nothing_points_outside_the_repository() {
    let mut found = Vec::new();
    let mut files: Vec<PathBuf> = documents();
    for dir in [
        "src",
        "tests",
        "examples",
        "scripts",
        "packer",
        "systemd",
        "templates",
    ] {
        collect(&repo().join(dir), &mut files);
    }
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        // Spelt in pieces, so that this file does not find itself.
        let team = ["sha", "red", "/"].concat();
        if text.contains(&team) {
            found.push(f.strip_prefix(repo()).unwrap().display().to_string());
        }
    }
    assert!(
        found.is_empty(),
        "files that name the team's folder outside the repository: {found:?}"
    );
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            if !p.ends_with("corpus") {
                collect(&p, out);
            }
        } else {
            out.push(p);
        }
    }
}

#[test]
fn anchors_are_githubs() {
    assert_eq!(anchor(" Edge limits"), "edge-limits");
    assert_eq!(anchor(" `make bench-live`"), "make-bench-live");
    assert_eq!(anchor(" Settings (`agent.yaml`)"), "settings-agentyaml");
}
