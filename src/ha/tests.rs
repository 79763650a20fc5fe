//! Unit tests of the parent module.

use super::*;

fn ha(mode: &str, node: &str, peers: &[&str], vips: &[&str]) -> Settings {
    let yaml = format!(
        "ha:\n  mode: {mode}\n  interface: eth1\n  node_address: {node}\n  peers: [{}]\n  virtual_ips: [{}]\n",
        peers.join(", "),
        vips.join(", ")
    );
    Settings::parse_with_env(&yaml, &|_| None).unwrap_or_else(|e| panic!("{e:#}"))
}

/// keepalived's config as the image's paths render it.
fn shipped(s: &Settings) -> String {
    render(
        s,
        Path::new("/etc/vpsie-lb/agent.yaml"),
        Path::new("/usr/local/bin/vpsie-lb-agent"),
    )
    .unwrap()
}

#[test]
fn active_active_gives_each_node_its_own_address_and_the_others_in_order() {
    let nodes = ["198.18.0.3", "198.18.0.2", "198.18.0.4"];
    let vips = ["198.18.0.100/24", "198.18.0.101/24", "198.18.0.102/24"];
    let mut owners = Vec::new();
    for me in nodes {
        let peers: Vec<&str> = nodes.iter().copied().filter(|n| *n != me).collect();
        let s = ha("active_active", me, &peers, &vips);
        let inst = instances(s.ha.as_ref().unwrap());
        let prios: Vec<u16> = inst.iter().map(|i| i.priority).collect();
        owners.push((me, inst.iter().position(|i| i.owner).unwrap(), prios));
    }
    // .2 owns the first address, .3 the second, .4 the third; each comes next for the
    // address of the node before it.
    assert_eq!(
        owners,
        [
            ("198.18.0.3", 1, vec![190, 200, 180]),
            ("198.18.0.2", 0, vec![200, 180, 190]),
            ("198.18.0.4", 2, vec![180, 190, 200]),
        ]
    );
}

/// Every `{{ ... }}` of the template must end in `| k`: the check cannot be forgotten.
#[test]
fn every_template_value_goes_through_k() {
    let mut rest = TEMPLATE;
    let mut count = 0;
    while let Some(start) = rest.find("{{") {
        let end = rest[start..].find("}}").expect("unclosed {{") + start;
        let expr = rest[start + 2..end].trim();
        assert!(
            expr.ends_with("| k"),
            "`{{{{ {expr} }}}}` does not go through k"
        );
        count += 1;
        rest = &rest[end + 2..];
    }
    assert!(count > 10, "the template prints its values");
}

#[test]
fn the_config_renders_every_value_through_the_filter() {
    let mut s = ha(
        "active_standby",
        "198.18.0.2",
        &["198.18.0.3"],
        &["198.18.0.100/24"],
    );
    s.ha.as_mut().unwrap().on_master = vec!["/usr/local/bin/move-ip".into(), "--fast".into()];
    let text = shipped(&s);
    for want in [
        "virtual_router_id 51",
        "priority 200",
        "advert_int 0.50",
        "unicast_src_ip 198.18.0.2",
        "198.18.0.100/24 dev eth1",
        "script \"/usr/local/bin/vpsie-lb-agent ha-check --config /etc/vpsie-lb/agent.yaml\"",
        "notify_master \"/usr/local/bin/move-ip --fast 198.18.0.100\"",
        "file \"/run/vpsie-lb/ha-serving\"",
    ] {
        assert!(text.contains(want), "{want} in:\n{text}");
    }
    // A value that could add structure fails the render instead of reaching the file.
    let err = render(
        &s,
        Path::new("/etc/x\"\n}\nvrrp_script evil {"),
        Path::new("/bin/x"),
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("could read as structure"),
        "{err:#}"
    );
}

#[test]
fn multicast_sends_no_unicast_adverts() {
    let mut s = ha(
        "active_standby",
        "198.18.0.2",
        &["198.18.0.3"],
        &["198.18.0.100/24"],
    );
    s.ha.as_mut().unwrap().multicast = true;
    let text = render(&s, Path::new("/etc/a.yaml"), Path::new("/bin/a")).unwrap();
    assert!(!text.contains("unicast_"), "{text}");
    assert!(
        !text.contains("notify_master"),
        "no on_master command: none run"
    );
}

#[test]
fn settings_refuse_what_keepalived_would_misread_or_vrrp_cannot_do() {
    let base = "ha:\n  mode: active_standby\n  interface: eth1\n  node_address: 198.18.0.2\n  peers: [198.18.0.3]\n  virtual_ips: [198.18.0.100/24]\n";
    let bad = [
        ("interface: eth1", "interface: \"eth1 }\"", "ha.interface"),
        ("interface: eth1", "interface: lo", "loopback"),
        ("peers: [198.18.0.3]", "peers: []", "at least two nodes"),
        ("peers: [198.18.0.3]", "peers: [198.18.0.2]", "appear once"),
        (
            "peers: [198.18.0.3]",
            "peers: [\"2001:db8::3\"]",
            "same family",
        ),
        (
            "virtual_ips: [198.18.0.100/24]",
            "virtual_ips: [198.18.0.100/24, 198.18.0.101/24]",
            "needs 1",
        ),
        (
            "virtual_ips: [198.18.0.100/24]",
            "virtual_ips: [198.18.0.3]",
            "already a node's address",
        ),
        (
            "virtual_ips: [198.18.0.100/24]",
            "virtual_ips: [vip]",
            "not an address",
        ),
        ("mode: active_standby", "mode: active_active", "needs 2"),
        // IPv6 virtual IPs beside IPv4 ones.
        (
            "virtual_ips: [198.18.0.100/24]",
            "virtual_ips: [198.18.0.100/24, \"2001:2::100/64\"]",
            "ha.node_address_v6: an IPv6 virtual IP needs",
        ),
        (
            "virtual_ips: [198.18.0.100/24]",
            "virtual_ips: [198.18.0.100/24, \"2001:2::100/64\", \"2001:2::101/64\"]\n  node_address_v6: \"2001:2::2\"\n  peers_v6: [\"2001:2::3\"]",
            "needs 1 IPv6 address",
        ),
        (
            "peers: [198.18.0.3]",
            "peers: [198.18.0.3]\n  node_address_v6: \"2001:2::2\"\n  peers_v6: []",
            "ha.peers_v6: one IPv6 address per peer (1), got 0",
        ),
        (
            "peers: [198.18.0.3]",
            "peers: [198.18.0.3]\n  node_address_v6: \"2001:2::2\"\n  peers_v6: [\"2001:2::2\"]",
            "ha.peers_v6[0]: 2001:2::2 appears twice",
        ),
        (
            "peers: [198.18.0.3]",
            "peers: [198.18.0.3]\n  node_address_v6: 198.18.0.9\n  peers_v6: [\"2001:2::3\"]",
            "ha.node_address_v6: 198.18.0.9 is not an IPv6",
        ),
        (
            "peers: [198.18.0.3]",
            "peers: [198.18.0.3]\n  peers_v6: [\"2001:2::3\"]",
            "without it",
        ),
        (
            "node_address: 198.18.0.2\n  peers: [198.18.0.3]",
            "node_address: \"2001:2::2\"\n  peers: [\"2001:2::3\"]",
            "an IPv4 virtual IP needs an IPv4 ha.node_address",
        ),
    ];
    for (from, to, want) in bad {
        let text = base.replace(from, to);
        let err = Settings::parse_with_env(&text, &|_| None).unwrap_err();
        assert!(format!("{err:#}").contains(want), "{to}: {err:#}");
    }
    for extra in [
        "  on_master: [relative/cmd]\n",
        "  on_master: [/bin/x, \"a b\"]\n",
        "  advert_interval_ms: 55\n",
        "  router_id: 0\n",
        "  script_user: \"root;\"\n",
        "  track_file: \"/run/x y\"\n",
    ] {
        let text = format!("{base}{extra}");
        assert!(
            Settings::parse_with_env(&text, &|_| None).is_err(),
            "{extra}"
        );
    }
    assert!(Settings::parse_with_env(base, &|_| None).is_ok());
}

/// IPv4 and IPv6 virtual IPs side by side: one VRRP instance per address, each speaking
/// from this node's address of its family to the peers' of that family; in active/active
/// the n-th address of each family belongs to the n-th node, so a node fails over both.
#[test]
fn each_family_has_its_own_instances_owned_like_the_other() {
    let nodes = [("198.18.0.2", "2001:2::2"), ("198.18.0.3", "2001:2::3")];
    for (k, (me, me6)) in nodes.iter().enumerate() {
        let (peer, peer6) = nodes[1 - k];
        let yaml = format!(
            "ha:\n  mode: active_active\n  interface: eth1\n  node_address: {me}\n  peers: [{peer}]\n  node_address_v6: \"{me6}\"\n  peers_v6: [\"{peer6}\"]\n  virtual_ips: [198.18.0.100/24, \"2001:2::100/64\", 198.18.0.101/24, \"2001:2::101/64\"]\n"
        );
        let s = Settings::parse_with_env(&yaml, &|_| None).unwrap_or_else(|e| panic!("{e:#}"));
        let inst = instances(s.ha.as_ref().unwrap());
        let owned: Vec<&str> = inst
            .iter()
            .filter(|i| i.owner)
            .map(|i| i.vip.as_str())
            .collect();
        let want: &[&str] = if k == 0 {
            &["198.18.0.100/24", "2001:2::100/64"]
        } else {
            &["198.18.0.101/24", "2001:2::101/64"]
        };
        assert_eq!(owned, want, "node {me}");
        for i in &inst {
            let v6 = i.vip.contains(':');
            let (src, to) = if v6 { (*me6, peer6) } else { (*me, peer) };
            assert_eq!(
                (i.src.as_deref(), i.peers.as_slice()),
                (Some(src), &[to.to_owned()][..])
            );
        }
        let routers: Vec<u16> = inst.iter().map(|i| i.router_id).collect();
        assert_eq!(routers, [51, 52, 53, 54]);
        let text = shipped(&s);
        for want in [
            format!("unicast_src_ip {me6}\n    unicast_peer {{\n        {peer6}\n    }}"),
            format!("unicast_src_ip {me}\n    unicast_peer {{\n        {peer}\n    }}"),
            "2001:2::101/64 dev eth1".to_owned(),
        ] {
            assert!(text.contains(&want), "{want} in:\n{text}");
        }
    }
}

#[test]
fn notify_records_each_change_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = ha(
        "active_standby",
        "198.18.0.2",
        &["198.18.0.3"],
        &["198.18.0.100/24"],
    );
    s.ha.as_mut().unwrap().state_dir = dir.path().join("ha");
    // A MASTER announced after the address was given back again: nothing to record yet.
    assert_eq!(
        record(&s, "INSTANCE", "vip_0", "MASTER", 5, |_| false).unwrap(),
        None
    );
    record(&s, "INSTANCE", "vip_0", "BACKUP", 10, |_| false).unwrap();
    let r = record(&s, "INSTANCE", "vip_0", "MASTER", 20, |v| {
        v == "198.18.0.100/24"
    })
    .unwrap()
    .unwrap();
    assert_eq!(
        (r.state.as_str(), r.since, r.transitions),
        ("master", 20, 2)
    );
    let st = states(s.ha.as_ref().unwrap());
    assert_eq!(st[0].1.as_ref().map(|r| r.state.as_str()), Some("master"));
    // Two quick changes whose scripts ran out of order: BACKUP (the address gone) recorded
    // first, then the MASTER before it, no longer true, only counts.
    record(&s, "INSTANCE", "vip_0", "BACKUP", 30, |_| false).unwrap();
    let r = record(&s, "INSTANCE", "vip_0", "MASTER", 31, |_| false)
        .unwrap()
        .unwrap();
    assert_eq!(
        (r.state.as_str(), r.since, r.transitions),
        ("backup", 30, 4)
    );
    // And the reverse: a late BACKUP while the address is held again.
    let r = record(&s, "INSTANCE", "vip_0", "BACKUP", 40, |_| true)
        .unwrap()
        .unwrap();
    assert_eq!((r.state.as_str(), r.transitions), ("backup", 5));
    let r = record(&s, "INSTANCE", "vip_0", "MASTER", 41, |_| true)
        .unwrap()
        .unwrap();
    assert_eq!((r.state.as_str(), r.transitions), ("master", 6));
    let any = |_: &str| true;
    assert!(record(&s, "INSTANCE", "vip_9", "MASTER", 50, any).is_err());
    assert!(record(&s, "INSTANCE", "vip_0", "LEADER", 50, any).is_err());
    assert!(record(&s, "GROUP", "vip_0", "MASTER", 50, any).is_err());
}
