//! Every validation rule of the API contract (`docs/contract.md`), table-driven.
//!
//! Each rule has accepted and refused cases. A refused case names the exact path of the error,
//! a fragment of the message that says which rule was broken, and (unless the case says
//! otherwise) that no error appeared anywhere else. Cases are built by mutating the support
//! specs (`http_spec()`, `https_spec()`) through JSON pointers.

use crate::support::{
    certs, contract_path, http_spec, https_spec, load, load_err, load_ok, options,
};
use serde_json::{json, Value};
use vpsie_lb_agent::spec::{
    self, config_hash, Algorithm, BackendAddress, BackendScheme, Loaded, Options, ProxyProtocol,
    Scheme, SpecErrors, TlsVersion, DEFAULT_COOKIE_NAME, DEFAULT_MAX_CONNECTIONS, MAX_BODY_BYTES,
};

// One file per part of the contract.
mod addresses;
mod defaults;
mod document;
mod enumerations;
mod hashing;
mod health;
mod hosts;
mod http2;
mod identifiers;
mod limits;
mod numbers;
mod schemes;
mod tls;
mod uniqueness;

// ---------------------------------------------------------------------------------------------
// The table machinery.

type Mutation = Box<dyn Fn(&mut Value)>;

#[derive(Clone, Copy, Debug)]
enum Base {
    Http,
    Https,
}

enum Expect {
    Ok,
    /// Refused with an error at exactly this place (a JSON pointer into the spec; the error names
    /// it in the contract's notation, [`contract_path`]) whose message holds the fragment, and no
    /// error at any other place.
    Err(String, &'static str),
    /// As `Err`, but other errors may come along (the case breaks two rules at once).
    ErrAmong(String, &'static str),
}

struct Case {
    name: String,
    base: Base,
    mutate: Mutation,
    expect: Expect,
}

fn ok(name: impl Into<String>, base: Base, mutate: Mutation) -> Case {
    Case {
        name: name.into(),
        base,
        mutate,
        expect: Expect::Ok,
    }
}

fn err(
    name: impl Into<String>,
    base: Base,
    mutate: Mutation,
    path: impl Into<String>,
    fragment: &'static str,
) -> Case {
    Case {
        name: name.into(),
        base,
        mutate,
        expect: Expect::Err(path.into(), fragment),
    }
}

fn err_among(
    name: impl Into<String>,
    base: Base,
    mutate: Mutation,
    path: impl Into<String>,
    fragment: &'static str,
) -> Case {
    Case {
        name: name.into(),
        base,
        mutate,
        expect: Expect::ErrAmong(path.into(), fragment),
    }
}

/// Sets `v` at a JSON pointer; the last segment may be a new key, or one past an array's end.
fn put(doc: &mut Value, ptr: &str, v: Value) {
    let (parent, key) = ptr.rsplit_once('/').expect("a JSON pointer");
    let target = doc
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("no {parent:?} in the spec"));
    match target {
        Value::Object(o) => {
            o.insert(key.to_owned(), v);
        }
        Value::Array(a) => {
            let i: usize = key.parse().expect("an array index");
            if i == a.len() {
                a.push(v);
            } else {
                a[i] = v;
            }
        }
        other => panic!("{parent:?} is {other}, not a container"),
    }
}

fn take(doc: &mut Value, ptr: &str) {
    let (parent, key) = ptr.rsplit_once('/').expect("a JSON pointer");
    match doc.pointer_mut(parent) {
        Some(Value::Object(o)) => {
            o.remove(key);
        }
        Some(Value::Array(a)) => {
            a.remove(key.parse::<usize>().expect("an array index"));
        }
        _ => panic!("no {parent:?} in the spec"),
    }
}

fn set(ptr: impl Into<String>, v: Value) -> Mutation {
    let ptr = ptr.into();
    Box::new(move |d| put(d, &ptr, v.clone()))
}

fn unset(ptr: impl Into<String>) -> Mutation {
    let ptr = ptr.into();
    Box::new(move |d| take(d, &ptr))
}

fn all(ms: Vec<Mutation>) -> Mutation {
    Box::new(move |d| ms.iter().for_each(|m| m(d)))
}

fn nothing() -> Mutation {
    Box::new(|_| {})
}

fn judge(r: &Result<Loaded, SpecErrors>, expect: &Expect) -> Option<String> {
    match (expect, r) {
        (Expect::Ok, Ok(_)) => None,
        (Expect::Ok, Err(e)) => Some(format!("expected it accepted, got {e}")),
        (Expect::Err(ptr, _) | Expect::ErrAmong(ptr, _), Ok(_)) => Some(format!(
            "expected an error at {:?}, it was accepted",
            contract_path(ptr)
        )),
        (Expect::Err(ptr, frag) | Expect::ErrAmong(ptr, frag), Err(e)) => {
            let path = &contract_path(ptr);
            if !e.has(path) {
                return Some(format!("expected an error at {path:?}, got {e}"));
            }
            if !e
                .0
                .iter()
                .any(|f| f.path == *path && f.message.contains(frag))
            {
                return Some(format!(
                    "the error at {path:?} does not say {frag:?}: got {e}"
                ));
            }
            if matches!(expect, Expect::Err(..)) && e.0.iter().any(|f| f.path != *path) {
                return Some(format!("errors beyond {path:?}: {e}"));
            }
            None
        }
    }
}

/// Runs a table with production options, reporting every failing case at once.
fn run(cases: Vec<Case>) {
    run_with(cases, &options());
}

fn run_with(cases: Vec<Case>, opts: &Options) {
    assert!(!cases.is_empty());
    let http = http_spec();
    let https = https_spec();
    let n = cases.len();
    let (mut accepted, mut refused) = (0, 0);
    let mut failed = Vec::new();
    for c in cases {
        let mut doc = match c.base {
            Base::Http => http.clone(),
            Base::Https => https.clone(),
        };
        (c.mutate)(&mut doc);
        let r = spec::load(doc.to_string().as_bytes(), opts);
        match c.expect {
            Expect::Ok => accepted += 1,
            _ => refused += 1,
        }
        if let Some(why) = judge(&r, &c.expect) {
            failed.push(format!("[{:?}] {}: {why}", c.base, c.name));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {n} cases failed:\n  {}",
        failed.len(),
        failed.join("\n  ")
    );
    // Every table exercises both sides of its rules.
    assert!(
        accepted > 0 && refused > 0,
        "a table must accept and refuse"
    );
}

const B0: &str = "/rules/0/backends/0";

fn p(ptr_base: &str, key: &str) -> String {
    format!("{ptr_base}/{key}")
}

/// A second rule for `http_spec()`-shaped documents.
fn extra_rule(id: &str, port: Value) -> Value {
    json!({
        "ruleId": id,
        "scheme": "http",
        "frontPort": port,
        "backPort": 9000,
        "backends": [{"identifier": "x1", "ip": "10.9.0.1"}]
    })
}

fn extra_domain(id: &str, name: &str) -> Value {
    json!({
        "domainId": id,
        "domainName": name,
        "backends": [{"identifier": "y1", "ip": "10.8.0.1"}]
    })
}

/// The one error of `e` is at `path` and says `frag`.
fn only_error(e: &SpecErrors, path: &str, frag: &str) {
    assert_eq!(e.0.len(), 1, "{e}");
    assert_eq!(e.0[0].path, path, "{e}");
    assert!(e.0[0].message.contains(frag), "{e}");
}
