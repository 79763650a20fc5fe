//! High availability with keepalived (VRRP): keepalived's config from the `ha` settings, the
//! check keepalived runs to know whether this node serves, and the VRRP state its notify script
//! records.
//!
//! Who does what:
//! - the agent's binary renders the config (`keepalived-config`), checked by keepalived's own
//!   config test; the keepalived unit runs it before every start and reload, as root, so the
//!   unprivileged agent never has to signal a root daemon;
//! - keepalived elects, adds and removes the virtual IPs;
//! - the supervisor writes the track file the moment Envoy stops or serves again (keepalived
//!   watches it), and keepalived asks the supervisor every second (`ha-check`) as well, which
//!   also catches a supervisor that died without a word;
//! - keepalived runs `ha-notify` on every state change: it records the state where `status` and
//!   the agent's metrics read it (under a lock, and only while still true: keepalived does not
//!   wait for one script before starting the next, see [`record`]).
//!
//! Ownership is deterministic: every node sorts the node addresses the same way; in
//! active/active the n-th virtual IP belongs to the n-th node, and the others follow in order
//! (priority 200, 190, ...). keepalived preempts: a node that serves again takes its own back.

use crate::settings::{keepalived_safe, HaMode, HaSettings, Settings};
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

pub const TEMPLATE: &str = include_str!("../templates/keepalived.conf.tera");

/// One VRRP instance: one virtual IP (VRRP announces the addresses of one family; an IPv6 one
/// speaks VRRP version 3 over IPv6).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Instance {
    /// keepalived's instance name, `vip_<n>`.
    pub name: String,
    /// `address/prefix` as keepalived adds it.
    pub vip: String,
    /// The unicast source of its adverts (this node's address of the virtual IP's family), and
    /// where they go (unused with `ha.multicast`; `None` then when the family has no address).
    pub src: Option<String>,
    pub peers: Vec<String>,
    pub router_id: u16,
    pub priority: u16,
    /// Run on becoming master: `ha.on_master` with the virtual IP appended.
    pub on_master: Vec<String>,
    /// Whether this node owns it (in active/standby: the first node in address order).
    pub owner: bool,
}

/// This node's VRRP instances, as every node computes them.
pub fn instances(ha: &HaSettings) -> Vec<Instance> {
    let nodes = ha.nodes();
    let n = nodes.len();
    let rank = nodes
        .iter()
        .position(|a| *a == ha.node_address)
        .unwrap_or(0);
    let vips = ha.vips();
    vips.iter()
        .enumerate()
        .map(|(i, vip)| {
            // Each family's n-th virtual IP is the n-th node's: a node owns one of each.
            let of_family = vips[..i]
                .iter()
                .filter(|v| v.addr().is_ipv6() == vip.addr().is_ipv6())
                .count();
            let owner_rank = match ha.mode {
                HaMode::ActiveStandby => 0,
                HaMode::ActiveActive => of_family,
            };
            let (src, peers) = ha.vrrp_addresses(vip.addr());
            // How far behind the owner this node comes, in address order, wrapping around.
            let behind = (rank + n - owner_rank) % n;
            let mut on_master = ha.on_master.clone();
            if !on_master.is_empty() {
                on_master.push(vip.addr().to_string());
            }
            Instance {
                name: instance_name(i),
                vip: vip.to_string(),
                src: src.map(|a| a.to_string()),
                peers: peers.iter().map(|a| a.to_string()).collect(),
                router_id: u16::from(ha.router_id) + i as u16,
                priority: 200 - 10 * behind as u16,
                on_master,
                owner: behind == 0,
            }
        })
        .collect()
}

pub fn instance_name(i: usize) -> String {
    format!("vip_{i}")
}

#[derive(Serialize)]
struct View {
    settings_file: String,
    node_name: String,
    script_user: String,
    check_command: String,
    track_file: String,
    interface: String,
    advert_int: String,
    multicast: bool,
    instances: Vec<Instance>,
}

fn templates() -> anyhow::Result<&'static tera::Tera> {
    static TERA: OnceLock<Result<tera::Tera, String>> = OnceLock::new();
    TERA.get_or_init(|| {
        let mut t = tera::Tera::default();
        t.autoescape_on(vec![]);
        t.register_filter("k", k_filter);
        t.add_raw_template("keepalived.conf.tera", TEMPLATE)
            .map_err(|e| format!("{e:?}"))?;
        Ok(t)
    })
    .as_ref()
    .map_err(|e| anyhow::anyhow!("the keepalived template does not compile: {e}"))
}

/// The one filter every value of the keepalived template goes through: a value outside
/// [`keepalived_safe`] fails the render rather than being written.
fn k_filter(
    v: &serde_json::Value,
    _: &HashMap<String, serde_json::Value>,
) -> tera::Result<serde_json::Value> {
    let text = match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        other => return Err(tera::Error::msg(format!("k: cannot print {other}"))),
    };
    if !keepalived_safe(&text) {
        return Err(tera::Error::msg(format!(
            "k: {text:?} holds characters keepalived's config could read as structure"
        )));
    }
    Ok(serde_json::Value::String(text))
}

/// keepalived's config for this node. `settings_file` is the agent's settings file and
/// `agent_bin` this binary: keepalived runs them for the check and the notify script.
pub fn render(
    settings: &Settings,
    settings_file: &Path,
    agent_bin: &Path,
) -> anyhow::Result<String> {
    let Some(ha) = &settings.ha else {
        bail!("the settings have no ha section: this node is not part of a highly available pair");
    };
    let view = View {
        settings_file: settings_file.to_string_lossy().into_owned(),
        node_name: format!("vpsie-lb-{}", ha.node_address).replace(':', "-"),
        script_user: ha.script_user.clone(),
        check_command: agent_bin.to_string_lossy().into_owned(),
        track_file: ha.track_file.to_string_lossy().into_owned(),
        interface: ha.interface.clone(),
        advert_int: format!(
            "{}.{:02}",
            ha.advert_interval_ms / 1000,
            ha.advert_interval_ms % 1000 / 10
        ),
        multicast: ha.multicast,
        instances: instances(ha),
    };
    let ctx = tera::Context::from_serialize(&view).context("the keepalived view")?;
    templates()?
        .render("keepalived.conf.tera", &ctx)
        .map_err(|e| {
            anyhow::anyhow!(
                "rendering keepalived's config failed: {:#}",
                anyhow::Error::new(e)
            )
        })
}

/// Runs keepalived's own config test on `text`. keepalived checks the interface too, so this
/// runs where the config will be used.
///
/// keepalived 2.2.7 (Debian 12) kills itself in its config test when scripts run as another
/// user (acassen/keepalived#2617), so the test runs on a copy that names root, and the user is
/// checked here instead.
pub fn check_config(text: &str, script_user: &str, keepalived: &Path) -> anyhow::Result<()> {
    if nix::unistd::User::from_name(script_user)
        .ok()
        .flatten()
        .is_none()
    {
        bail!("ha.script_user: the user {script_user:?} does not exist on this machine");
    }
    let tested = text.replacen(
        &format!("script_user {script_user}\n"),
        "script_user root\n",
        1,
    );
    let mut file = tempfile::NamedTempFile::new().context("a temporary file for keepalived -t")?;
    std::io::Write::write_all(&mut file, tested.as_bytes())?;
    let out = std::process::Command::new(keepalived)
        .args(["--config-test", "--log-console", "--use-file"])
        .arg(file.path())
        .output()
        .with_context(|| format!("cannot run {}", keepalived.display()))?;
    if !out.status.success() {
        bail!(
            "keepalived's config test refused the config (exit {}): {}",
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `keepalived-config`: renders, checks with keepalived (unless `keepalived` is `None`) and
/// writes the config to `out` when it differs. Returns whether it wrote.
pub fn write_config(
    settings: &Settings,
    settings_file: &Path,
    agent_bin: &Path,
    out: &Path,
    keepalived: Option<&Path>,
) -> anyhow::Result<bool> {
    let text = render(settings, settings_file, agent_bin)?;
    if let Some(k) = keepalived {
        let user = settings
            .ha
            .as_ref()
            .map_or("root", |h| h.script_user.as_str());
        check_config(&text, user, k)?;
    }
    if std::fs::read(out).is_ok_and(|old| old == text.as_bytes()) {
        return Ok(false);
    }
    crate::store::write_private(out, text.as_bytes())?;
    Ok(true)
}

/// What `ha-notify` records for one virtual IP.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VipState {
    pub instance: String,
    pub vip: String,
    /// `master`, `backup`, `fault` or `stop`, as keepalived says it.
    pub state: String,
    /// Unix seconds of the last change.
    pub since: i64,
    /// Changes recorded since the state directory was made (it lives in /run: since boot).
    pub transitions: u64,
}

/// Whether this node holds `vip` (`address/prefix`) on `interface` now: keepalived adds a
/// virtual IP before it runs the notify script for MASTER and removes it before the others.
pub fn holds(interface: &str, vip: &str) -> bool {
    let Ok(ip) = vip.parse::<ipnet::IpNet>().map(|n| n.addr()) else {
        return false;
    };
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return false;
    };
    addrs
        .filter(|a| a.interface_name == interface)
        .filter_map(|a| a.address)
        .any(|s| {
            let v4 = s.as_sockaddr_in().map(|a| std::net::IpAddr::V4(a.ip()));
            let v6 = s.as_sockaddr_in6().map(|a| std::net::IpAddr::V6(a.ip()));
            v4.or(v6) == Some(ip)
        })
}

/// Records a state change keepalived announced (`ha-notify`): `kind` is `INSTANCE`, `name`
/// the instance, `state` MASTER, BACKUP, FAULT or STOP; `holds(vip)` whether this node holds
/// the instance's virtual IP now ([`holds`]).
///
/// keepalived starts a notify script for each change without waiting for the one before, so two
/// quick changes (master, then backup a moment later) can be recorded in either order, and the
/// last writer would stand until the next change (seen under load: a node that had handed an
/// address back still said master). So the records are written under a lock, and a change that
/// is no longer true (master announced, the address already gone again, or the reverse) only
/// counts: a later change's own script records the state. `None`: nothing recorded yet.
pub fn record(
    settings: &Settings,
    kind: &str,
    name: &str,
    state: &str,
    now: i64,
    holds: impl FnOnce(&str) -> bool,
) -> anyhow::Result<Option<VipState>> {
    let Some(ha) = &settings.ha else {
        bail!("the settings have no ha section");
    };
    if kind != "INSTANCE" {
        bail!("only VRRP instances are recorded, not {kind:?}");
    }
    let state = state.to_ascii_lowercase();
    if crate::metrics::Vrrp::parse(&state) == crate::metrics::Vrrp::Unknown {
        bail!("unknown VRRP state {state:?}");
    }
    let Some(inst) = instances(ha).into_iter().find(|i| i.name == name) else {
        bail!("{name:?} is not one of this node's VRRP instances");
    };
    crate::store::create_private_dir(&ha.state_dir)?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(ha.state_dir.join(".lock"))
        .with_context(|| format!("cannot open the lock in {}", ha.state_dir.display()))?;
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("cannot lock {}: {e}", ha.state_dir.display()))?;
    let path = ha.state_dir.join(format!("{name}.json"));
    let before: Option<VipState> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let current = (state == "master") == holds(&inst.vip);
    let rec = match (current, before) {
        (true, before) => VipState {
            instance: inst.name,
            vip: inst.vip,
            state,
            since: now,
            transitions: before.map_or(0, |b| b.transitions) + 1,
        },
        (false, Some(before)) => VipState {
            transitions: before.transitions + 1,
            ..before
        },
        (false, None) => return Ok(None),
    };
    crate::store::write_private(&path, &serde_json::to_vec(&rec)?)?;
    Ok(Some(rec))
}

/// The recorded state of each of this node's virtual IPs (`None`: keepalived has not said yet).
pub fn states(ha: &HaSettings) -> Vec<(Instance, Option<VipState>)> {
    instances(ha)
        .into_iter()
        .map(|i| {
            let rec = std::fs::read(ha.state_dir.join(format!("{}.json", i.name)))
                .ok()
                .and_then(|b| serde_json::from_slice::<VipState>(&b).ok())
                .filter(|r| r.vip == i.vip);
            (i, rec)
        })
        .collect()
}

/// Sets the VRRP metrics from what `ha-notify` recorded (read at each scrape: a few small files).
pub fn export(ha: &HaSettings, metrics: &crate::metrics::AgentMetrics) {
    let states = states(ha);
    let readings: Vec<crate::metrics::VrrpReading> = states
        .iter()
        .map(|(i, rec)| crate::metrics::VrrpReading {
            vip: i.vip.split('/').next().unwrap_or(&i.vip),
            state: rec.as_ref().map_or(crate::metrics::Vrrp::Unknown, |r| {
                crate::metrics::Vrrp::parse(&r.state)
            }),
            transitions: rec.as_ref().map_or(0, |r| r.transitions),
        })
        .collect();
    metrics.set_vrrp(&readings);
}

/// `ha-check`: whether Envoy serves a config, as the supervisor knows it (its Envoy runs, a
/// config is applied, nothing critical). Not Envoy's admin API: a big update keeps Envoy's main
/// thread busy for seconds while its workers serve, and a check that timed out then would give
/// the virtual IPs away for nothing. An Envoy that exits is seen by the supervisor at once (the
/// track file); a supervisor that dies does not answer here. `Err` says why not.
pub async fn serving(settings: &Settings) -> Result<(), String> {
    crate::supervisor::client::serving(settings, std::time::Duration::from_secs(1)).await
}

#[cfg(test)]
mod tests;
