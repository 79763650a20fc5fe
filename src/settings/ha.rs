//! High availability: the `ha` section (keepalived, virtual IPs), checked before keepalived
//! ever sees a value.

use anyhow::bail;
use serde::Deserialize;
use std::net::IpAddr;
use std::path::PathBuf;

/// High availability: this node shares virtual IPs with its peers through keepalived (VRRP).
/// The agent renders keepalived's config from this section (`keepalived-config`).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct HaSettings {
    pub mode: HaMode,
    /// The interface VRRP speaks on and the virtual IPs are added to.
    pub interface: String,
    /// This node's own address on `interface` (the unicast source).
    pub node_address: IpAddr,
    /// The other nodes' addresses: VRRP adverts go to them (unicast), unless `multicast`.
    pub peers: Vec<IpAddr>,
    /// This node's IPv6 address on `interface`, when `node_address` is IPv4 and a virtual IP
    /// is IPv6: the unicast source of the IPv6 virtual IPs' VRRP (VRRP runs one instance per
    /// address family, IPv6's as VRRP version 3).
    #[serde(default)]
    pub node_address_v6: Option<IpAddr>,
    /// The other nodes' IPv6 addresses, one per peer, for the same.
    #[serde(default)]
    pub peers_v6: Vec<IpAddr>,
    #[serde(default)]
    pub multicast: bool,
    /// `address/prefix` or one address (a host route), IPv4 or IPv6. active_standby: one per
    /// address family served; active_active: one per node (this one and its peers) in each
    /// family served, the n-th of a family owned by the n-th node.
    pub virtual_ips: Vec<String>,
    /// VRRP router id of the first virtual IP; the n-th uses `router_id + n`. Unique on the
    /// network segment.
    #[serde(default = "default_router_id")]
    pub router_id: u8,
    /// VRRP advertisement interval. A master is declared dead after about three of them.
    #[serde(default = "default_advert_interval_ms")]
    pub advert_interval_ms: u32,
    /// A command (program and arguments) run when this node becomes master of a virtual IP,
    /// with the virtual IP as last argument: to move a cloud floating IP where VRRP alone cannot.
    #[serde(default)]
    pub on_master: Vec<String>,
    /// Where the rendered keepalived config goes.
    #[serde(default = "default_keepalived_config")]
    pub keepalived_config: PathBuf,
    /// The user keepalived runs the health check and notify scripts as.
    #[serde(default = "default_script_user")]
    pub script_user: String,
    /// Written by the supervisor: 0 while Envoy serves a config, 1 when it does not. keepalived
    /// watches it, so a node gives its virtual IPs away the moment Envoy stops.
    #[serde(default = "default_track_file")]
    pub track_file: PathBuf,
    /// Where keepalived's notify script records each virtual IP's VRRP state (read by the agent
    /// for `status` and metrics).
    #[serde(default = "default_ha_state_dir")]
    pub state_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HaMode {
    /// One virtual IP; the first node in address order holds it while it serves.
    ActiveStandby,
    /// One virtual IP per node, each owned by one node, taken over by the others.
    ActiveActive,
}

/// Characters a value may hold to be written into keepalived's config as is: no space, quote,
/// brace, comment sign or line break can get in, so no value can add a directive.
pub fn keepalived_safe(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_./:=@,+%-".contains(&b))
}

/// An address a node or a virtual IP may have: not unspecified, loopback, multicast or broadcast.
fn unicast_host(ip: IpAddr) -> bool {
    !(ip.is_unspecified() || ip.is_loopback() || ip.is_multicast())
        && ip != IpAddr::from([255, 255, 255, 255])
}

impl HaSettings {
    /// Every node (this one and its peers) in address order: the order ownership and priority
    /// follow, the same on every node.
    pub fn nodes(&self) -> Vec<IpAddr> {
        let mut all = self.peers.clone();
        all.push(self.node_address);
        all.sort();
        all
    }

    /// The virtual IPs, parsed (`check` has accepted them).
    pub fn vips(&self) -> Vec<ipnet::IpNet> {
        self.virtual_ips
            .iter()
            .filter_map(|v| parse_vip(v).ok())
            .collect()
    }

    pub(super) fn check(&self) -> anyhow::Result<()> {
        self.check_nodes()?;
        let vips = self.check_vips()?;
        if self.router_id == 0 || usize::from(self.router_id) + vips - 1 > 255 {
            bail!(
                "ha.router_id: {} to {} must lie within 1-255",
                self.router_id,
                usize::from(self.router_id) + vips - 1
            );
        }
        if !(100..=10_000).contains(&self.advert_interval_ms) || self.advert_interval_ms % 10 != 0 {
            bail!("ha.advert_interval_ms: must be 100 to 10000, in steps of 10 (VRRP counts centiseconds)");
        }
        self.check_scripts()
    }

    /// The interface, this node and its peers.
    fn check_nodes(&self) -> anyhow::Result<()> {
        let ifname_ok = !self.interface.is_empty()
            && self.interface.len() <= 15
            && self
                .interface
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ifname_ok {
            bail!(
                "ha.interface: {:?} is not an interface name (1-15 letters, digits, '.', '_', '-')",
                self.interface
            );
        }
        if self.interface == "lo" {
            bail!("ha.interface: VRRP cannot run on the loopback interface");
        }
        if !unicast_host(self.node_address) {
            bail!(
                "ha.node_address: {} is not a unicast address of this node",
                self.node_address
            );
        }
        if self.peers.is_empty() {
            bail!("ha.peers: list the other nodes' addresses (high availability needs at least two nodes)");
        }
        if self.peers.len() > 15 {
            bail!("ha.peers: at most 15 (16 nodes)");
        }
        for (i, p) in self.peers.iter().enumerate() {
            if !unicast_host(*p) || p.is_ipv4() != self.node_address.is_ipv4() {
                bail!("ha.peers[{i}]: {p} must be a unicast address of the same family as ha.node_address");
            }
        }
        if self.nodes().windows(2).any(|w| w[0] == w[1]) {
            bail!("ha.peers: every node address must appear once, ha.node_address included");
        }
        self.check_nodes_v6()
    }

    /// The IPv6 addresses of a pair whose `node_address` is IPv4.
    fn check_nodes_v6(&self) -> anyhow::Result<()> {
        let given = self.node_address_v6.is_some() || !self.peers_v6.is_empty();
        if self.node_address.is_ipv6() {
            if given {
                bail!("ha.node_address_v6: ha.node_address is IPv6 already; node_address_v6 and peers_v6 are for a pair whose node_address is IPv4");
            }
            return Ok(());
        }
        let needed = !self.multicast && self.vips().iter().any(|v| v.addr().is_ipv6());
        let Some(me) = self.node_address_v6 else {
            if needed {
                bail!("ha.node_address_v6: an IPv6 virtual IP needs this node's IPv6 address on ha.interface (VRRP speaks IPv6 for it), and ha.peers_v6 the others'");
            }
            if given {
                bail!("ha.node_address_v6: ha.peers_v6 is given without it");
            }
            return Ok(());
        };
        if !unicast_host(me) || me.is_ipv4() {
            bail!("ha.node_address_v6: {me} is not an IPv6 unicast address");
        }
        if self.peers_v6.len() != self.peers.len() {
            bail!(
                "ha.peers_v6: one IPv6 address per peer ({}), got {}",
                self.peers.len(),
                self.peers_v6.len()
            );
        }
        for (i, p) in self.peers_v6.iter().enumerate() {
            if !unicast_host(*p) || p.is_ipv4() {
                bail!("ha.peers_v6[{i}]: {p} is not an IPv6 unicast address");
            }
            if *p == me || self.peers_v6[..i].contains(p) {
                bail!("ha.peers_v6[{i}]: {p} appears twice, ha.node_address_v6 included");
            }
        }
        Ok(())
    }

    /// The unicast source and destinations of VRRP for a virtual IP of `ip`'s family (`None`
    /// when that family has no addresses: multicast only).
    pub fn vrrp_addresses(&self, ip: IpAddr) -> (Option<IpAddr>, Vec<IpAddr>) {
        if ip.is_ipv4() == self.node_address.is_ipv4() {
            (Some(self.node_address), self.peers.clone())
        } else {
            (self.node_address_v6, self.peers_v6.clone())
        }
    }

    /// The virtual IPs, as many as the mode needs; returns how many.
    fn check_vips(&self) -> anyhow::Result<usize> {
        let nodes = self.nodes();
        let mut vips = Vec::new();
        for (i, v) in self.virtual_ips.iter().enumerate() {
            let net = parse_vip(v).map_err(|e| anyhow::anyhow!("ha.virtual_ips[{i}]: {e}"))?;
            let ip = net.addr();
            if !unicast_host(ip) {
                bail!("ha.virtual_ips[{i}]: {ip} must be a unicast address");
            }
            if ip.is_ipv4() && self.node_address.is_ipv6() {
                bail!("ha.virtual_ips[{i}]: an IPv4 virtual IP needs an IPv4 ha.node_address (IPv6 ones then take ha.node_address_v6)");
            }
            let own_v6 = self.node_address_v6 == Some(ip) || self.peers_v6.contains(&ip);
            if nodes.contains(&ip) || own_v6 || vips.iter().any(|n: &ipnet::IpNet| n.addr() == ip) {
                bail!(
                    "ha.virtual_ips[{i}]: {ip} is already a node's address or another virtual IP"
                );
            }
            vips.push(net);
        }
        let want = match self.mode {
            HaMode::ActiveStandby => 1,
            HaMode::ActiveActive => nodes.len(),
        };
        for (family, v6) in [("IPv4", false), ("IPv6", true)] {
            let n = vips.iter().filter(|v| v.addr().is_ipv6() == v6).count();
            if n != 0 && n != want {
                bail!(
                    "ha.virtual_ips: {} mode needs {want} {family} address{} (one {}), got {n}",
                    match self.mode {
                        HaMode::ActiveStandby => "active_standby",
                        HaMode::ActiveActive => "active_active",
                    },
                    if want == 1 { "" } else { "es" },
                    match self.mode {
                        HaMode::ActiveStandby => "shared by the nodes",
                        HaMode::ActiveActive => "per node",
                    },
                );
            }
        }
        if vips.is_empty() {
            bail!(
                "ha.virtual_ips: name at least one virtual IP ({want} per address family served)"
            );
        }
        Ok(vips.len())
    }

    /// What keepalived runs and writes: every value through the same character set as its
    /// config (no space, quote or brace can add a directive).
    fn check_scripts(&self) -> anyhow::Result<()> {
        for (i, a) in self.on_master.iter().enumerate() {
            if !keepalived_safe(a) || (i == 0 && !a.starts_with('/')) {
                bail!(
                    "ha.on_master[{i}]: {a:?} must be {}letters, digits and _./:=@,+%- only",
                    if i == 0 { "an absolute path of " } else { "" }
                );
            }
        }
        let user_ok = self.script_user.len() <= 32
            && self.script_user.bytes().enumerate().all(|(i, b)| {
                b.is_ascii_lowercase() || b == b'_' || (i > 0 && (b.is_ascii_digit() || b == b'-'))
            });
        if self.script_user.is_empty() || !user_ok {
            bail!("ha.script_user: {:?} is not a user name", self.script_user);
        }
        for (key, path) in [
            ("keepalived_config", &self.keepalived_config),
            ("track_file", &self.track_file),
            ("state_dir", &self.state_dir),
        ] {
            let text = path.to_string_lossy();
            if !path.is_absolute() || !keepalived_safe(&text) {
                bail!("ha.{key}: {text:?} must be an absolute path of letters, digits and _./:=@,+%- only");
            }
        }
        Ok(())
    }
}

/// A virtual IP: `address/prefix` (the prefix of the interface's network) or one address.
pub fn parse_vip(s: &str) -> Result<ipnet::IpNet, String> {
    if let Ok(net) = s.parse::<ipnet::IpNet>() {
        return Ok(net);
    }
    s.parse::<IpAddr>()
        .map(ipnet::IpNet::from)
        .map_err(|_| format!("{s:?} is not an address or address/prefix"))
}

fn default_router_id() -> u8 {
    51
}
fn default_advert_interval_ms() -> u32 {
    500
}
fn default_keepalived_config() -> PathBuf {
    PathBuf::from("/etc/keepalived/vpsie-lb.conf")
}
fn default_script_user() -> String {
    "vpsie-lb".into()
}
fn default_track_file() -> PathBuf {
    PathBuf::from("/run/vpsie-lb/ha-serving")
}
fn default_ha_state_dir() -> PathBuf {
    PathBuf::from("/run/vpsie-lb/ha")
}
