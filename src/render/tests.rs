//! Unit tests of the parent module.

use super::*;

#[test]
fn quote_escapes_everything_that_could_add_structure() {
    assert_eq!(quote("plain-id_1"), "\"plain-id_1\"");
    assert_eq!(quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
    assert_eq!(quote("l1\nl2\r\t"), "\"l1\\u000al2\\u000d\\u0009\"");
    assert_eq!(quote("x\u{2028}y\u{85}z\0"), "\"x\\u2028y\\u0085z\\u0000\"");
    assert_eq!(quote("😀"), "\"😀\"");
    for s in [
        "{{ x }}",
        "{% if %}",
        "&a *a !!tag #c",
        "\u{2029}",
        "ü",
        "a😀\n",
    ] {
        let q = quote(s);
        assert_eq!(serde_json::from_str::<String>(&q).unwrap(), s);
        assert_eq!(serde_yaml::from_str::<String>(&q).unwrap(), s);
        assert!(q[1..q.len() - 1]
            .chars()
            .all(|c| (' '..='~').contains(&c) || c as u32 > 0xFFFF));
    }
}

/// Every `{{ ... }}` in every template must end in `| q` (or `| lb_endpoints`, which writes
/// with q's escaping): the escaping cannot be forgotten.
#[test]
fn every_template_value_goes_through_q() {
    for (name, text) in TEMPLATES {
        let mut rest = *text;
        let mut count = 0;
        while let Some(start) = rest.find("{{") {
            let end = rest[start..].find("}}").expect("unclosed {{") + start;
            let expr = rest[start + 2..end].trim();
            assert!(
                expr.ends_with("| q") || expr.ends_with("| lb_endpoints"),
                "{name}: `{{{{ {expr} }}}}` does not go through the q filter"
            );
            count += 1;
            rest = &rest[end + 2..];
        }
        assert!(count > 0, "{name} prints nothing");
    }
    assert!(templates().is_ok());
}

fn example() -> (crate::spec::Spec, Settings) {
    let input = include_bytes!("../../tests/it/data/render-check.json");
    let mut settings = Settings::default();
    settings.dev.allow_loopback_backends = true;
    let opts = crate::spec::Options {
        allow_loopback_backends: true,
        redirect_port: settings.envoy.redirect_port,
        reserved_ports: Vec::new(),
        now: 0,
    };
    let loaded = crate::spec::load(input, &opts).unwrap();
    (loaded.spec, settings)
}

#[test]
fn the_self_check_catches_added_or_changed_structure() {
    let (spec, settings) = example();
    let rendered = render(&spec, &settings, &Resolved::new(), &Default::default()).unwrap();
    let (view, _) = view::build(&spec, &settings, &Resolved::new(), &Default::default());
    assert!(check(&rendered.config, &view).is_ok());
    let tampered = [
        // An extra top-level key.
        rendered.config.replacen("\"node\"", "\"layered_runtime\": {}, \"node\"", 1),
        // An endpoint's address changed.
        rendered.config.replacen("\"10.0.0.1\"", "\"10.9.9.9\"", 1),
        // One cluster too many.
        rendered.config.replacen(
            "\"clusters\": [",
            "\"clusters\": [{\"name\": \"x\", \"load_assignment\": {\"endpoints\": [{\"lb_endpoints\": []}]}},",
            1,
        ),
        // A listener on another address.
        rendered.config.replacen("\"0.0.0.0\"", "\"127.0.0.1\"", 1),
    ];
    for t in tampered {
        assert_ne!(t, rendered.config, "the tampering applies");
        assert!(
            matches!(check(&t, &view), Err(RenderError::Check(_))),
            "not caught: {t}"
        );
    }
}

/// Every listener logs to `access_log.path`, without the query string unless asked; both
/// settings change the output version (so the config hash), the runtime-only ones do not.
#[test]
fn access_log_settings_shape_the_config_and_its_version() {
    let (spec, mut settings) = example();
    settings.access_log.path = "/var/log/x/a.log".into();
    let text = |s: &Settings| {
        render(&spec, s, &Resolved::new(), &Default::default())
            .unwrap()
            .config
    };
    let plain = text(&settings);
    let listeners = plain.matches("\"name\": \"envoy.filters.network.").count();
    assert!(listeners > 0);
    assert_eq!(
        plain.matches("\"path\": \"/var/log/x/a.log\"").count(),
        plain.matches("envoy.access_loggers.file").count(),
    );
    assert!(plain.contains("%PATH(NQ):1024%"));
    assert!(!plain.contains("envoy.access_loggers.stdout"));
    let v0 = output_version(&settings);
    let mut with_query = settings.clone();
    with_query.access_log.query_string = true;
    let q = text(&with_query);
    assert!(q.contains("\"%PATH(WQ):1024%\"") && !q.contains("%PATH(NQ)"));
    assert_ne!(output_version(&with_query), v0);
    let mut moved = settings.clone();
    moved.access_log.path = "/var/log/y/a.log".into();
    assert_ne!(output_version(&moved), v0);
    let mut live_only = settings.clone();
    live_only.access_log.sample_percent = 1.0;
    live_only.access_log.max_bytes = 8 << 20;
    assert_eq!(output_version(&live_only), v0);
    assert_eq!(text(&live_only), plain);
    // The command line's check writes every access log elsewhere, and nothing else.
    let moved_text = with_access_log_path(&plain, Path::new("/tmp/v/access.log")).unwrap();
    let a: Value = serde_json::from_str(&plain).unwrap();
    let b: Value = serde_json::from_str(&moved_text).unwrap();
    assert_ne!(a, b);
    assert_eq!(
        moved_text.matches("/tmp/v/access.log").count(),
        plain.matches("/var/log/x/a.log").count()
    );
}

/// The split moves every resource out of the bootstrap without changing it: listeners keep
/// their chains (route tables and certificates become references), clusters become EDS ones
/// with their endpoints in files, and only the bootstrap decides whether a hot restart is
/// needed.
#[test]
fn the_split_moves_resources_out_and_keys_the_bootstrap() {
    let (spec, settings) = example();
    let rendered = render(&spec, &settings, &Resolved::new(), &Default::default()).unwrap();
    let files: Vec<(std::path::PathBuf, String)> = rendered
        .files
        .iter()
        .map(|f| (f.path.clone(), f.contents.clone()))
        .collect();
    let dir = std::path::Path::new("/x/xds/0");
    let x = xds::split(&rendered.config, &files, dir).unwrap();
    let doc: Value = serde_json::from_str(&rendered.config).unwrap();
    let n = |k: &str| doc["static_resources"][k].as_array().unwrap().len();
    let statics = |k: &str| x.base["static_resources"][k].as_array().unwrap().len();
    assert_eq!(x.listeners.len() + statics("listeners"), n("listeners"));
    assert_eq!(x.clusters.len() + statics("clusters"), n("clusters"));
    // (Certificates to SDS: the https rules of tests/it/live.rs, rotated live.)
    assert!(!x.listeners.is_empty() && !x.routes.is_empty());
    let names: std::collections::BTreeSet<String> =
        x.all_files().into_iter().map(|f| f.name).collect();
    assert_eq!(x.file_names(), names);
    let eds = x.named_files(xds::Kind::Endpoints);
    for (name, c) in &x.clusters {
        assert_eq!(c["type"], "EDS");
        assert!(c.get("load_assignment").is_none());
        let path = c["eds_cluster_config"]["eds_config"]["path_config_source"]["path"]
            .as_str()
            .unwrap();
        assert_eq!(path, dir.join(&eds[name].name).to_str().unwrap());
        assert!(path.ends_with(".pb"), "{path}");
        use prost::Message;
        let file = xds::endpoints::DiscoveryResponse::decode(eds[name].data.as_slice()).unwrap();
        let la = xds::ClusterLoadAssignment::decode(file.resources[0].value.as_slice()).unwrap();
        assert_eq!(&la.cluster_name, name);
        assert_eq!(file.version_info, eds[name].version);
    }
    let lds = String::from_utf8(x.lds().data).unwrap();
    assert!(
        !lds.contains("route_config\""),
        "route tables are RDS: {lds}"
    );
    assert!(lds.contains("/x/xds/0/rds-"));
    let boot: Value = serde_json::from_str(&x.bootstrap()).unwrap();
    assert_eq!(
        boot["dynamic_resources"]["lds_config"]["path_config_source"]["path"],
        "/x/xds/0/lds.json"
    );
    // Another endpoint: same bootstrap (live), other endpoints file.
    let mut other = settings.clone();
    other.envoy.listen_addresses = Some(vec![[127, 0, 0, 1].into()]);
    let moved = render(&spec, &other, &Resolved::new(), &Default::default()).unwrap();
    let y = xds::split(&moved.config, &files, dir).unwrap();
    assert_eq!(
        x.bootstrap_key, y.bootstrap_key,
        "listeners are not the bootstrap"
    );
    assert_ne!(x.lds().version, y.lds().version);
    let mut bigger = spec.clone();
    bigger.max_connections += 1;
    let z = render(&bigger, &settings, &Resolved::new(), &Default::default()).unwrap();
    let z = xds::split(&z.config, &files, dir).unwrap();
    assert_ne!(
        x.bootstrap_key, z.bootstrap_key,
        "maxConnections needs a process"
    );
    // Listener limits: one runtime key per listener (and the scrape port's), out of the
    // bootstrap and into the RTDS layer, where a rule added or removed changes them live.
    assert!(x.base.get("layered_runtime").is_none());
    let share = edge::listener_limit(spec.max_connections, x.listeners.len());
    for name in x.listeners.keys() {
        let key = format!("envoy.resource_limits.listener.{name}.connection_limit");
        assert_eq!(x.runtime[&key], share, "{key}");
    }
    assert_eq!(
        x.runtime["overload.premature_reset_total_stream_count"],
        edge::PREMATURE_RESETS
    );
    let rtds = xds::runtime_file(&settings.access_log, &x.runtime);
    let rtds: Value = serde_json::from_slice(&rtds.data).unwrap();
    let layer = &rtds["resources"][0]["layer"];
    assert_eq!(layer["vpsie_lb"]["access_log"]["enabled"], 100);
    let some = x.listeners.keys().next().unwrap();
    assert_eq!(
        layer[format!("envoy.resource_limits.listener.{some}.connection_limit")],
        share
    );
    let mut fewer = spec.clone();
    fewer.rules.truncate(1);
    let w = render(&fewer, &settings, &Resolved::new(), &Default::default()).unwrap();
    let w = xds::split(&w.config, &files, dir).unwrap();
    assert_eq!(
        x.bootstrap_key, w.bootstrap_key,
        "limits are not the bootstrap"
    );
    assert_ne!(x.runtime, w.runtime);
}

/// The endpoints filter writes exactly the JSON Envoy reads, quotes the address as `q` does,
/// and refuses anything that is not `[address, port, weight]`.
#[test]
fn lb_endpoints_writes_envoys_list_and_refuses_other_shapes() {
    let none = HashMap::new();
    let write = |v: Value| lb_endpoints_filter(&v, &none);
    let Value::String(empty) = write(serde_json::json!([])).unwrap() else {
        panic!("not a string")
    };
    assert_eq!(
        serde_json::from_str::<Value>(&empty).unwrap(),
        serde_json::json!([])
    );
    let hostile = "10.0.0.1\", \"port_value\": 1}}, {\"x\u{2028}";
    let Value::String(two) =
        write(serde_json::json!([["::1", 8080, 1], [hostile, 80, 256]])).unwrap()
    else {
        panic!("not a string")
    };
    let sa = |a: &str, p: u16, w: u32| serde_json::json!({"endpoint": {"address": {"socket_address": {"address": a, "port_value": p}}}, "load_balancing_weight": w});
    assert_eq!(
        serde_json::from_str::<Value>(&two).unwrap(),
        serde_json::json!([sa("::1", 8080, 1), sa(hostile, 80, 256)])
    );
    assert_eq!(
        serde_yaml::from_str::<Value>(&two).unwrap(),
        serde_json::from_str::<Value>(&two).unwrap()
    );
    assert!(two.contains(&quote(hostile)) && !two.contains('\u{2028}'));
    for bad in [
        serde_json::json!(null),
        serde_json::json!("10.0.0.1"),
        serde_json::json!([["10.0.0.1", 80]]),
        serde_json::json!([["10.0.0.1", "80", 1]]),
        serde_json::json!([["10.0.0.1", 80, -1]]),
        serde_json::json!([["10.0.0.1", 80, 1.5]]),
        serde_json::json!([[1, 80, 1]]),
        serde_json::json!([{"address": "10.0.0.1"}]),
    ] {
        assert!(write(bad.clone()).is_err(), "{bad} was written");
    }
}

#[test]
fn q_refuses_null() {
    let t = templates().unwrap();
    let mut tera = t.clone();
    tera.add_raw_template("x", "{{ missing | q }}").unwrap();
    assert!(tera.render("x", &tera::Context::new()).is_err());
}

/// The scrape port's clusters are static: the split leaves them in the bootstrap as rendered,
/// endpoints inline (one is a Unix socket, which no endpoint file holds).
#[test]
fn the_split_leaves_the_static_clusters_as_rendered() {
    let (spec, mut settings) = example();
    settings.metrics.allowed_cidrs = vec!["127.0.0.0/8".into()];
    let rendered = render(&spec, &settings, &Resolved::new(), &Default::default()).unwrap();
    let x = xds::split(&rendered.config, &[], std::path::Path::new("/x")).unwrap();
    let doc: Value = serde_json::from_str(&rendered.config).unwrap();
    let statics_kept: Vec<&Value> = doc["static_resources"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| !x.clusters.contains_key(c["name"].as_str().unwrap()))
        .collect();
    assert!(!statics_kept.is_empty());
    assert_eq!(
        x.base["static_resources"]["clusters"].as_array().unwrap(),
        &statics_kept.into_iter().cloned().collect::<Vec<_>>()
    );
    assert!(!x.clusters.is_empty());
}

/// Every listener, the scrape port's included, binds each listen address: the first as its
/// address, the others as additional addresses, each socket of one family (no `ipv4_compat`).
#[test]
fn every_listener_binds_every_listen_address() {
    let (spec, mut settings) = example();
    settings.metrics.allowed_cidrs = vec!["127.0.0.0/8".into(), "::1/128".into()];
    let bound = |settings: &Settings| -> Vec<Vec<String>> {
        let r = render(&spec, settings, &Resolved::new(), &Default::default()).unwrap();
        let doc: Value = serde_json::from_str(&r.config).unwrap();
        doc["static_resources"]["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                let port = &l["address"]["socket_address"]["port_value"];
                let extra = l["additional_addresses"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                std::iter::once(&l["address"])
                    .chain(extra.iter().map(|a| &a["address"]))
                    .map(|a| {
                        let sa = &a["socket_address"];
                        assert!(sa.get("ipv4_compat").is_none(), "{sa}");
                        assert_eq!(&sa["port_value"], port, "{l}");
                        sa["address"].as_str().unwrap().to_owned()
                    })
                    .collect()
            })
            .collect()
    };
    for (list, want) in [
        (None, vec!["0.0.0.0", "::"]),
        (Some(vec!["::"]), vec!["::"]),
        (Some(vec!["127.0.0.1", "::1"]), vec!["127.0.0.1", "::1"]),
    ] {
        settings.envoy.listen_addresses =
            list.map(|l| l.iter().map(|a| a.parse().unwrap()).collect());
        let listeners = bound(&settings);
        assert!(listeners.len() >= 2, "{listeners:?}");
        for l in listeners {
            assert_eq!(l, want);
        }
    }
}
