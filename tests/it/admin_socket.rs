//! Envoy's admin API is on a Unix socket (mode 0600) and nowhere else: Envoy listens on TCP only
//! for the spec's front ports, so no backend address, however spelt or resolved, reaches admin.

use crate::support::envoy::{free_port, Envoy};
use crate::support::upstream;
use serde_json::json;
use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};

/// The TCP ports process `pid` listens on: its socket inodes matched against /proc/net/tcp{,6}.
fn listening_ports(pid: u32) -> BTreeSet<u16> {
    let inodes: BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let mut ports = BTreeSet::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is f[1] (HEX_IP:HEX_PORT), st is f[3] (0A = LISTEN), inode is f[9].
            if f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]) {
                let port = f[1].rsplit(':').next().unwrap();
                ports.insert(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports
}

#[tokio::test]
async fn admin_is_a_private_unix_socket_and_envoy_listens_on_tcp_only_for_the_spec() {
    let up = upstream::http("u1", None).await;
    let (front, other) = (free_port(), free_port());
    let spec = json!({"identifier": "lb-admin", "lbName": "admin", "rules": [
        {"ruleId": "web", "scheme": "http", "frontPort": front, "backPort": up.port(),
         "backends": [{"identifier": "u1", "ip": "127.0.0.1"}]},
        {"ruleId": "raw", "scheme": "tcp", "frontPort": other, "backPort": up.port(),
         "backends": [{"identifier": "u1", "ip": "127.0.0.1"}]}
    ]});
    let envoy = Envoy::start(&spec).await;

    let sock = &envoy.settings.envoy.admin_socket;
    let meta = std::fs::metadata(sock).unwrap();
    assert!(
        meta.file_type().is_socket(),
        "{} is a socket",
        sock.display()
    );
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "only its owner may use it"
    );
    let info = envoy.admin_text("/server_info").await;
    assert!(info.contains("\"state\": \"LIVE\""), "{info}");

    assert_eq!(
        listening_ports(envoy.pid()),
        BTreeSet::from([front, other]),
        "Envoy listens on the front ports and nothing else (no admin port)"
    );
    // And what it runs says so: the admin address is a pipe.
    let dump = envoy.admin_text("/config_dump").await;
    let v: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let boot = v["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c.get("bootstrap").is_some())
        .expect("a bootstrap in the config dump");
    let admin = &boot["bootstrap"]["admin"]["address"];
    assert_eq!(
        admin["pipe"]["path"],
        sock.to_string_lossy().as_ref(),
        "{admin}"
    );
    assert!(admin.get("socket_address").is_none(), "{admin}");
}
