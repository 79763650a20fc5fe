//! Unit tests of the parent module.

use super::*;

fn la(eps: &[(&str, u16)]) -> Value {
    let list: Vec<Value> = eps
        .iter()
        .map(|(a, p)| {
            json!({"endpoint": {"address": {"socket_address": {"address": a, "port_value": p}}},
                   "load_balancing_weight": 100})
        })
        .collect();
    json!({"cluster_name": "web", "endpoints": [{"lb_endpoints": list}]})
}

#[test]
fn a_union_keeps_the_new_endpoints_and_adds_the_old_ones_it_lacks() {
    let old = la(&[("10.0.0.1", 80), ("10.0.0.2", 80)]);
    let new = la(&[("10.0.0.2", 80), ("10.0.0.3", 80)]);
    let u = union_endpoints(&new, &old);
    let got: Vec<(&str, u32, u32)> = endpoint_list(&u);
    assert_eq!(
        got,
        [
            ("10.0.0.2", 80, 100),
            ("10.0.0.3", 80, 100),
            ("10.0.0.1", 80, 100)
        ]
    );
    assert_eq!(host_changes(&old, &new), (true, true));
    assert_eq!(host_changes(&old, &u), (true, false));
    assert_eq!(host_changes(&new, &new), (false, false));
    // Files are versioned by content: the same endpoints, the same version.
    let (new, u) = (EndpointList::new(&new), EndpointList::new(&u));
    assert_eq!(
        endpoints_file("web", &new),
        endpoints_file("web", &new.clone())
    );
    assert_ne!(
        endpoints_file("web", &new).version,
        endpoints_file("web", &u).version
    );
    // A list kept as text is the same list, and written as the value was.
    assert_eq!(EndpointList::new(&new.parse()), new);
    assert_eq!(
        endpoints_file("web", &new).data,
        discovery_file(
            file_name(Kind::Endpoints, "web"),
            ENDPOINTS,
            &[&new.parse()]
        )
        .data
    );
}

#[test]
fn names_become_safe_file_names() {
    assert_eq!(
        file_name(Kind::Route, "redirect:80"),
        "rds-72656469726563743a3830.json"
    );
    assert!(file_name(Kind::Endpoints, "web/../x").starts_with("eds-"));
    assert!(!file_name(Kind::Endpoints, "web/../x").contains('/'));
}

#[test]
fn a_discovery_file_is_its_typed_resources_and_a_digest_of_them() {
    let a = json!({"name": "a", "zeta": [1, {"y": "\"q\"", "b": null}], "alpha": true});
    let empty = json!({});
    let f = discovery_file("x.json".into(), CLUSTER, &[&a, &empty]);
    let parsed: Value = serde_json::from_slice(&f.data).unwrap();
    let mut typed = a.as_object().unwrap().clone();
    typed.insert("@type".into(), CLUSTER.into());
    let body = json!([typed, {"@type": CLUSTER}]);
    assert_eq!(parsed["resources"], body);
    assert_eq!(parsed["version_info"], f.version.as_str());
    assert_eq!(
        f.version,
        hex::encode(&Sha256::digest(body.to_string().as_bytes())[..8])
    );
    // Byte for byte what serialising the whole response gives.
    assert_eq!(
        f.data,
        json!({"version_info": f.version, "resources": body})
            .to_string()
            .into_bytes()
    );
    let other = discovery_file("x.json".into(), CLUSTER, &[&empty, &a]);
    assert_ne!(other.version, f.version, "order is part of the version");
}
