//! The shape of `src/`: the library's top-level modules form no import cycle, each imports only
//! from the layers below it in ARCHITECTURE.md's order, and `settings` stands below everything,
//! importing nothing of the crate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Top-level module → the crate's top-level modules its code names (`crate::x`), comments left
/// out. `main.rs`, `lib.rs` and the stand-in binary are not library modules.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        if first == "bin" || first == "main.rs" || first == "lib.rs" {
            continue;
        }
        let module = first.trim_end_matches(".rs").to_owned();
        let deps = graph.entry(module.clone()).or_default();
        let text = std::fs::read_to_string(&f).unwrap();
        let mut in_group = false;
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or("");
            let mut names: Vec<&str> = Vec::new();
            let mut rest = code;
            while let Some(i) = rest.find("crate::") {
                rest = &rest[i + "crate::".len()..];
                if let Some(group) = rest.strip_prefix('{') {
                    in_group = !group.contains('}');
                    names.extend(group.split(|c: char| !c.is_alphanumeric() && c != '_'));
                } else {
                    names.push(
                        rest.split(|c: char| !c.is_alphanumeric() && c != '_')
                            .next()
                            .unwrap_or(""),
                    );
                }
            }
            if in_group && !code.contains("crate::") {
                // A `use crate::{` list that spans lines: its first names are its modules.
                names.extend(
                    code.split(|c: char| !c.is_alphanumeric() && c != '_')
                        .take(2),
                );
                in_group = !code.contains('}');
            }
            for n in names {
                let n = n.trim();
                if !n.is_empty()
                    && n != "self"
                    && n != module
                    && n.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                {
                    deps.insert(n.to_owned());
                }
            }
        }
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for deps in graph.values_mut() {
        deps.retain(|d| modules.contains(d));
    }
    graph
}

fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(n.to_owned());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_owned());
        for d in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(d, g, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_modules_import_no_cycle() {
    let g = module_graph();
    // The graph is read from the code, not assumed: these edges exist today.
    assert!(
        g["agent"].contains("pipeline") && g["agent"].contains("supervisor"),
        "{g:?}"
    );
    assert!(g["command"].contains("agent"), "{g:?}");
    assert_eq!(
        find_cycle(&g),
        None,
        "import cycle between top-level modules; graph: {g:#?}"
    );
}

/// The layers as ARCHITECTURE.md draws them (`settings ─ ... ─ command`), lowest first.
fn documented_layers() -> Vec<String> {
    let doc =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("ARCHITECTURE.md"))
            .unwrap();
    let line = doc
        .lines()
        .find(|l| l.starts_with("settings ─"))
        .expect("ARCHITECTURE.md draws the layers on a line starting `settings ─`");
    line.split('─').map(|m| m.trim().to_owned()).collect()
}

/// Every module imports only from the layers below it, in the documented order, and the
/// documented order names every module there is (and none that is not).
#[test]
fn the_modules_import_only_from_the_layers_below_them() {
    let g = module_graph();
    let layers = documented_layers();
    let modules: BTreeSet<&String> = g.keys().collect();
    let drawn: BTreeSet<&String> = layers.iter().collect();
    assert_eq!(modules, drawn, "ARCHITECTURE.md's layers and src/ differ");
    let at = |m: &str| layers.iter().position(|l| l == m).unwrap();
    let upward: Vec<String> = g
        .iter()
        .flat_map(|(m, deps)| {
            deps.iter()
                .filter(|d| at(d) > at(m))
                .map(move |d| format!("{m} imports {d}, a layer above it"))
        })
        .collect();
    assert!(upward.is_empty(), "{upward:#?}");
}

#[test]
fn settings_imports_nothing_of_the_crate() {
    let g = module_graph();
    assert_eq!(g["settings"], BTreeSet::new(), "{g:#?}");
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.insert("a".into(), ["b".to_owned()].into());
    g.insert("b".into(), ["c".to_owned()].into());
    g.insert("c".into(), ["a".to_owned()].into());
    assert_eq!(
        find_cycle(&g),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    g.insert("c".into(), BTreeSet::new());
    assert_eq!(find_cycle(&g), None);
}
