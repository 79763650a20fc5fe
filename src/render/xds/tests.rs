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

fn list(la: &Value) -> EndpointList {
    EndpointList::from_json(&la.to_string()).unwrap()
}

#[test]
fn a_union_keeps_the_new_endpoints_and_adds_the_old_ones_it_lacks() {
    let old = list(&la(&[("10.0.0.1", 80), ("10.0.0.2", 80)]));
    let new = list(&la(&[("10.0.0.2", 80), ("10.0.0.3", 80)]));
    let u = new.assignment().union(&old.assignment());
    let got: Vec<(&str, u32, u32)> = u.list().collect();
    assert_eq!(
        got,
        [
            ("10.0.0.2", 80, 100),
            ("10.0.0.3", 80, 100),
            ("10.0.0.1", 80, 100)
        ]
    );
    // Into an empty list: the old endpoints in one locality.
    let empty = list(&json!({"cluster_name": "web"}));
    let into_empty = empty.assignment().union(&old.assignment());
    let got: Vec<(&str, u32, u32)> = into_empty.list().collect();
    assert_eq!(got, [("10.0.0.1", 80, 100), ("10.0.0.2", 80, 100)]);
    // Files are versioned by content: the same endpoints, the same version.
    let u = EndpointList::new(&u);
    assert_eq!(
        endpoints_file("web", &new),
        endpoints_file("web", &new.clone())
    );
    assert_ne!(
        endpoints_file("web", &new).version,
        endpoints_file("web", &u).version
    );
}

#[test]
fn an_endpoints_file_is_the_rendered_list_in_envoys_binary_form() {
    use prost::Message;
    let json = la(&[("10.0.0.1", 80), ("2001:2::1", 8443)]);
    let f = endpoints_file("web", &list(&json));
    assert_eq!(f.name, file_name(Kind::Endpoints, "web"));
    assert!(
        f.name.ends_with(".pb"),
        "Envoy parses by extension: {}",
        f.name
    );
    let r = endpoints::DiscoveryResponse::decode(f.data.as_slice()).unwrap();
    assert_eq!(r.version_info, f.version);
    assert_eq!(r.type_url, ENDPOINTS);
    let [res] = r.resources.as_slice() else {
        panic!("one resource: {}", r.resources.len())
    };
    assert_eq!(res.type_url, ENDPOINTS);
    let got = endpoints::ClusterLoadAssignment::decode(res.value.as_slice()).unwrap();
    assert_eq!(got.cluster_name, "web");
    let eps: Vec<(&str, u32, u32)> = got.list().collect();
    assert_eq!(eps, [("10.0.0.1", 80, 100), ("2001:2::1", 8443, 100)]);
    // The bytes by hand, for one endpoint: the field numbers are Envoy's.
    let one = list(&la(&[("a", 1)]));
    let sa = [&[0x12, 1, b'a'][..], &[0x18, 1]].concat(); // address = 2, port_value = 3
    let addr = [&[0x0a, sa.len() as u8][..], &sa].concat(); // socket_address = 1
    let ep = [&[0x0a, addr.len() as u8][..], &addr].concat(); // address = 1
    let lbe = [&[0x0a, ep.len() as u8][..], &ep, &[0x22, 2, 0x08, 100]].concat(); // endpoint = 1, weight = 4
    let loc = [&[0x12, lbe.len() as u8][..], &lbe].concat(); // lb_endpoints = 2
    let cla = [&[0x0a, 3][..], b"web", &[0x12, loc.len() as u8], &loc].concat(); // cluster_name, endpoints
    assert_eq!(one.bytes(), cla.as_slice());
}

#[test]
fn a_load_assignment_with_anything_else_is_refused_by_name() {
    for (bad, says) in [
        (
            json!({"cluster_name": "web", "policy": {}}),
            "unknown field `policy`",
        ),
        (
            json!({"cluster_name": "web", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "a", "port_value": 1}}}, "metadata": {}}]}]}),
            "unknown field `metadata`",
        ),
        (
            json!({"cluster_name": "web", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "a", "port_value": "80"}}}}]}]}),
            "invalid type: string",
        ),
    ] {
        let e = EndpointList::from_json(&bad.to_string()).unwrap_err();
        assert!(e.contains(says), "{e}");
    }
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

#[test]
fn a_pool_given_a_file_of_its_own_generation_reads_it_and_no_other_cluster_changes() {
    let cluster = |name: &str| {
        json!({"name": name, "type": "EDS", "eds_cluster_config": {"service_name": name,
               "eds_config": source(Path::new("/x"), &file_name(Kind::Endpoints, name))},
               "health_checks": [{"interval": "10.000s", "initial_jitter": "0.250s"},
                                 {"interval": "0.500s", "initial_jitter": "0.250s"}]})
    };
    let to = |file: &str, hosts: usize| Moved {
        file: file.to_owned(),
        hosts,
    };
    let x = Xds {
        base: Value::Null,
        bootstrap_key: String::new(),
        dir: "/x".into(),
        listeners: BTreeMap::new(),
        routes: BTreeMap::new(),
        clusters: [("web", cluster("web")), ("api", cluster("api"))]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        endpoints: BTreeMap::new(),
        secrets: BTreeMap::new(),
        tickets: false,
        runtime: BTreeMap::new(),
    };
    let (one, two) = (warm_file_name("web", 1), warm_file_name("web", 2));
    assert!(one.starts_with("eds-") && one.ends_with(".1.pb"), "{one}");
    assert_ne!(one, two);
    assert_ne!(one, file_name(Kind::Endpoints, "web"));
    let plain = x.cds(&BTreeMap::new(), &BTreeMap::new());
    let moved = x.cds(
        &BTreeMap::new(),
        &[("web".to_owned(), to(&one, 20_000))].into(),
    );
    assert_ne!(
        plain.version, moved.version,
        "a new cluster object for Envoy"
    );
    let read = |f: &File| -> BTreeMap<String, Value> {
        let v: Value = serde_json::from_slice(&f.data).unwrap();
        v["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["name"].as_str().unwrap().to_owned(), c.clone()))
            .collect()
    };
    let (plain, moved) = (read(&plain), read(&moved));
    assert_eq!(
        moved["web"]["eds_cluster_config"]["eds_config"]["path_config_source"]["path"],
        format!("/x/{one}")
    );
    assert_eq!(moved["api"], plain["api"]);
    // First checks spread 0.05 ms a host, within each check's interval.
    let jitter = |c: &Value, i: usize| c["health_checks"][i]["initial_jitter"].clone();
    assert_eq!(jitter(&moved["web"], 0), "1.000s");
    assert_eq!(jitter(&moved["web"], 1), "0.500s");
    let mut web = moved["web"].clone();
    web["eds_cluster_config"]["eds_config"] =
        plain["web"]["eds_cluster_config"]["eds_config"].clone();
    for i in 0..2 {
        web["health_checks"][i]["initial_jitter"] = jitter(&plain["web"], i);
    }
    assert_eq!(web, plain["web"], "nothing else of the cluster changes");
    // An extra (old) cluster can be pointed too; a name with no cluster is ignored.
    let extra: BTreeMap<String, Value> = [("old".to_owned(), cluster("old"))].into();
    let f = x.cds(
        &extra,
        &[
            ("old".to_owned(), to(&two, 100)),
            ("none".to_owned(), to(&one, 100)),
        ]
        .into(),
    );
    let all = read(&f);
    assert_eq!(all.len(), 3);
    assert_eq!(jitter(&all["old"], 0), "0.250s", "never less than rendered");
    assert_eq!(
        all["old"]["eds_cluster_config"]["eds_config"]["path_config_source"]["path"],
        format!("/x/{two}")
    );
}
