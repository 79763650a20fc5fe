//! The `envoy`, `supervisor` and `session_tickets` sections: how Envoy runs, how the supervisor
//! drives it, and the TLS session-ticket keys.

use serde::Deserialize;
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorSettings {
    /// The Unix socket the agent and the CLI talk to the supervisor on (created mode 0600).
    pub socket: PathBuf,
    /// How long a new epoch may take to report LIVE before it counts as failed.
    pub live_timeout_s: u32,
    /// Before a hot restart, check that every port the new config adds can be bound, so that a
    /// port held by another process is refused before Envoy's admin hand-over can go wrong.
    pub preflight_ports: bool,
    /// How long Envoy may take to report a live update (every resource at its new version,
    /// clusters warm) before the update counts as failed and the last good one is put back.
    pub confirm_timeout_s: u32,
}

impl Default for SupervisorSettings {
    fn default() -> Self {
        SupervisorSettings {
            socket: PathBuf::from("/run/vpsie-lb/supervisor.sock"),
            live_timeout_s: 30,
            preflight_ports: true,
            confirm_timeout_s: 30,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DrainStrategy {
    Gradual,
    Immediate,
}

impl DrainStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            DrainStrategy::Gradual => "gradual",
            DrainStrategy::Immediate => "immediate",
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnvoySettings {
    /// The Envoy binary. Default: `$ENVOY_BIN`, else `envoy` on the PATH.
    pub binary: PathBuf,
    /// Where rendered configs live; certificates go to `<config_dir>/certs` unless `cert_dir` is set.
    pub config_dir: PathBuf,
    pub cert_dir: Option<PathBuf>,
    /// Envoy's admin interface: a Unix socket (mode 0600), never a TCP port, so that no
    /// address a spec names (a backend host name resolving to loopback, say) can reach it. It
    /// can stop Envoy. The supervisor and the metrics route are its only clients.
    pub admin_socket: PathBuf,
    /// Where customer listeners, the redirect port and the scrape port bind: one socket per
    /// address, each of its own family (`::` here is IPv6 only, `0.0.0.0` IPv4 only), all of
    /// them one listener in Envoy (`additional_addresses`). Default: both families' any
    /// address; on a host whose kernel has no IPv6 at all, `0.0.0.0` alone
    /// ([`EnvoySettings::listen_addresses`]).
    pub listen_addresses: Option<Vec<IpAddr>>,
    /// The older form, one address: `::` meant both families and still does, any other
    /// address that address only. Give this or `listen_addresses`, not both.
    pub listen_address: Option<IpAddr>,
    /// The plain-HTTP port of `redirectHTTP`.
    pub redirect_port: u16,
    /// Envoy's `--base-id`: names the shared memory and sockets of hot restart. Fixed, so that
    /// every epoch finds its parent.
    pub base_id: u32,
    /// `--drain-time-s`: how long an old epoch drains its connections.
    pub drain_time_s: u32,
    /// `--parent-shutdown-time-s`: when the old epoch exits; longer than the drain time.
    pub parent_shutdown_time_s: u32,
    pub drain_strategy: DrainStrategy,
    /// `--concurrency` (worker threads); default: one per CPU, Envoy's own default.
    pub concurrency: Option<u32>,
    /// Envoy's own log (`--log-path`). A file, not a pipe through the supervisor: an Envoy that
    /// outlives the supervisor would die of SIGPIPE on its next log line.
    pub log_file: PathBuf,
    /// The heap Envoy's overload manager measures against, in MiB: at 95 % Envoy returns free
    /// memory to the system and stops keep-alive, at 98 % it refuses new requests and
    /// connections. Default: from the machine's memory ([`heap_limit_for`]).
    pub max_heap_mb: Option<u64>,
    /// How long a client may take to send its request headers; then Envoy closes the connection
    /// (slowloris). HAProxy's recommended `timeout http-request`.
    pub request_headers_timeout_s: u32,
    /// Requests (HTTP/2: streams) one client connection may make; then Envoy closes it
    /// gracefully (`Connection: close`, GOAWAY) and the client opens another. Bounds what one
    /// connection can hold or cost; browsers and gRPC clients reconnect without a failure.
    pub max_requests_per_connection: u32,
}

/// Envoy's heap limit on a machine with `mem_total` bytes: all of it but 384 MiB, never less
/// than half of it. The 384 MiB are for what is not Envoy's heap: Envoy's own binary and
/// static memory (its RSS is ~60 MB above its heap at idle), the agent and the supervisor
/// (~15-22 MB each, `make bench-idle`), keepalived, the system and the page cache the logs use.
pub fn heap_limit_for(mem_total: u64) -> u64 {
    mem_total.saturating_sub(384 << 20).max(mem_total / 2)
}

impl EnvoySettings {
    /// [`EnvoySettings::max_heap_mb`] in bytes, or [`heap_limit_for`] this machine's memory
    /// (`MemTotal` in /proc/meminfo; 1 GiB if it cannot be read).
    pub fn max_heap_bytes(&self) -> u64 {
        if let Some(mb) = self.max_heap_mb {
            return mb << 20;
        }
        static MEM_TOTAL: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        let total = *MEM_TOTAL.get_or_init(|| {
            std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|t| mem_total_kib(&t))
                .map_or(1 << 30, |kib| kib << 10)
        });
        heap_limit_for(total)
    }
}

/// IPv4's and IPv6's any address.
pub const ANY_V4: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
pub const ANY_V6: IpAddr = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);

/// At most this many listen addresses: each is one more socket per worker on every port.
pub const MAX_LISTEN_ADDRESSES: usize = 16;

impl EnvoySettings {
    /// Where listeners bind, in order (the first is the listener's address in Envoy, the others
    /// its additional addresses). See [`EnvoySettings::listen_addresses`] (the field).
    pub fn listen_addresses(&self) -> Vec<IpAddr> {
        self.listen_addresses_on(host_has_ipv6())
    }

    /// Whether the default left IPv6 out because this host's kernel has none: said in the
    /// supervisor's log and `status`, since IPv6 clients then reach nothing.
    pub fn ipv6_left_out(&self) -> bool {
        self.listen_addresses.is_none() && self.listen_address.is_none() && !host_has_ipv6()
    }

    /// The same, on a host that has IPv6 (`ipv6`) or not.
    pub fn listen_addresses_on(&self, ipv6: bool) -> Vec<IpAddr> {
        match (&self.listen_addresses, self.listen_address) {
            (Some(list), _) => list.clone(),
            (None, Some(ANY_V6)) => vec![ANY_V4, ANY_V6],
            (None, Some(one)) => vec![one],
            (None, None) if ipv6 => vec![ANY_V4, ANY_V6],
            (None, None) => vec![ANY_V4],
        }
    }

    /// The rules for the listen addresses (called by the settings' check).
    pub(super) fn check_listen_addresses(&self) -> anyhow::Result<()> {
        let Some(list) = &self.listen_addresses else {
            if let Some(one) = self.listen_address {
                check_listen_address("envoy.listen_address", one)?;
            }
            return Ok(());
        };
        if self.listen_address.is_some() {
            anyhow::bail!("envoy.listen_addresses: give either listen_addresses or the older listen_address, not both");
        }
        if list.is_empty() || list.len() > MAX_LISTEN_ADDRESSES {
            anyhow::bail!(
                "envoy.listen_addresses: must name 1 to {MAX_LISTEN_ADDRESSES} addresses, got {}",
                list.len()
            );
        }
        for (i, a) in list.iter().enumerate() {
            let field = format!("envoy.listen_addresses[{i}]");
            check_listen_address(&field, *a)?;
            if list[..i].contains(a) {
                anyhow::bail!("{field}: {a} is listed twice");
            }
            // A socket on a family's any address takes every address of that family: Envoy
            // could not bind the other one to the same port.
            let any = if a.is_ipv4() { ANY_V4 } else { ANY_V6 };
            if *a != any && list.contains(&any) {
                anyhow::bail!("{field}: {a} is already covered by {any}, also listed (one socket takes every address of its family)");
            }
        }
        Ok(())
    }
}

/// One listen address: an address this host can have as its own.
fn check_listen_address(field: &str, a: IpAddr) -> anyhow::Result<()> {
    let why = match a {
        _ if a.is_multicast() => Some("a multicast address"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address"),
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => {
            Some("an IPv4-mapped IPv6 address (write the IPv4 address itself)")
        }
        _ => None,
    };
    match why {
        Some(why) => anyhow::bail!("{field}: {a} is {why}; a listener binds to one of this host's own addresses or to a family's any address"),
        None => Ok(()),
    }
}

/// Whether this host's kernel has IPv6 (a socket can be bound to `[::]`). Without it (booted
/// with `ipv6.disable=1`) Envoy could not bind `::` and would serve nothing. IPv6 turned off by
/// sysctl still binds, and costs nothing.
fn host_has_ipv6() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| std::net::TcpListener::bind((ANY_V6, 0)).is_ok())
}

/// `MemTotal` of /proc/meminfo, in KiB.
fn mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
}

impl Default for EnvoySettings {
    fn default() -> Self {
        EnvoySettings {
            binary: std::env::var_os("ENVOY_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("envoy")),
            config_dir: PathBuf::from("/var/lib/vpsie-lb/envoy"),
            cert_dir: None,
            admin_socket: PathBuf::from("/run/vpsie-lb/envoy-admin.sock"),
            listen_addresses: None,
            listen_address: None,
            redirect_port: 80,
            base_id: 7,
            drain_time_s: 30,
            parent_shutdown_time_s: 45,
            drain_strategy: DrainStrategy::Gradual,
            concurrency: None,
            log_file: PathBuf::from("/var/log/vpsie-lb/envoy.log"),
            max_heap_mb: None,
            request_headers_timeout_s: 10,
            max_requests_per_connection: 10_000,
        }
    }
}

/// TLS session tickets: the keys Envoy encrypts them with, held by the supervisor so that a
/// client resumes its session across a hot restart, a certificate rotation and an HA failover
/// instead of paying for a full handshake.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionTicketSettings {
    /// The secret every ticket key is derived from (HKDF-SHA256 with the time window): at least
    /// 32 bytes, readable by its owner only. Created (32 random bytes, 0600) if missing. The
    /// nodes of an HA pair must be given the same file, so that each resumes the other's
    /// sessions. Default: `<state_dir>/session-tickets.key`.
    pub secret_file: Option<PathBuf>,
    /// How long one key encrypts new tickets; it decrypts them one window more (Envoy's advice:
    /// rotate at least daily, preferably hourly). 1 to 86,400; seconds are for tests only.
    pub rotate_s: u32,
}

impl Default for SessionTicketSettings {
    fn default() -> Self {
        SessionTicketSettings {
            secret_file: None,
            rotate_s: 3600,
        }
    }
}

/// The bounds of `session_tickets.rotate_s`.
pub const TICKET_ROTATE_S: std::ops::RangeInclusive<u32> = 1..=86_400;

#[cfg(test)]
mod tests {
    use super::super::Settings;
    use super::*;

    #[test]
    fn the_heap_limit_follows_the_machine_unless_set() {
        const GIB: u64 = 1 << 30;
        // 1 GiB: all but 384 MiB; 512 MiB: half, never less.
        assert_eq!(heap_limit_for(GIB), 640 << 20);
        assert_eq!(heap_limit_for(GIB / 2), 256 << 20);
        assert_eq!(heap_limit_for(8 * GIB), 8 * GIB - (384 << 20));
        assert_eq!(
            mem_total_kib("MemTotal:        2014056 kB\nMemFree: 1 kB\n"),
            Some(2014056)
        );
        assert_eq!(mem_total_kib("MemFree: 1 kB\n"), None);
        let s = Settings::parse("envoy:\n  max_heap_mb: 300\n").unwrap();
        assert_eq!(s.envoy.max_heap_bytes(), 300 << 20);
        let auto = Settings::parse("{}").unwrap().envoy.max_heap_bytes();
        assert!(auto >= 256 << 20, "{auto}");
        let e = Settings::parse("envoy:\n  max_heap_mb: 10\n").unwrap_err();
        assert!(format!("{e:#}").contains("envoy.max_heap_mb"), "{e:#}");
        let e = Settings::parse("envoy:\n  request_headers_timeout_s: 0\n").unwrap_err();
        assert!(
            format!("{e:#}").contains("envoy.request_headers_timeout_s"),
            "{e:#}"
        );
    }

    /// Both families by default, one of them when the host has no IPv6; the older single
    /// address keeps its meaning (`::` both families); a list is bound as written.
    #[test]
    fn listen_addresses_default_to_both_families_and_keep_the_older_form() {
        let on = |yaml: &str, ipv6: bool| {
            Settings::parse(yaml)
                .unwrap_or_else(|e| panic!("{yaml}: {e:#}"))
                .envoy
                .listen_addresses_on(ipv6)
        };
        let v = |l: &[&str]| -> Vec<IpAddr> { l.iter().map(|a| a.parse().unwrap()).collect() };
        assert_eq!(on("{}", true), v(&["0.0.0.0", "::"]));
        assert_eq!(on("{}", false), v(&["0.0.0.0"]));
        assert_eq!(
            on("envoy:\n  listen_address: '::'\n", true),
            v(&["0.0.0.0", "::"])
        );
        assert_eq!(
            on("envoy:\n  listen_address: 0.0.0.0\n", true),
            v(&["0.0.0.0"])
        );
        assert_eq!(
            on("envoy:\n  listen_address: 127.0.0.1\n", true),
            v(&["127.0.0.1"])
        );
        // Pinned to one family, and specific addresses of both (two virtual IPs).
        assert_eq!(on("envoy:\n  listen_addresses: ['::']\n", true), v(&["::"]));
        assert_eq!(
            on(
                "envoy:\n  listen_addresses: [198.18.0.7, '2001:2::7']\n",
                false
            ),
            v(&["198.18.0.7", "2001:2::7"])
        );
        assert!(!Settings::parse("envoy:\n  listen_address: 0.0.0.0\n")
            .unwrap()
            .envoy
            .ipv6_left_out());
    }

    #[test]
    fn bad_listen_addresses_are_refused_by_field_and_rule() {
        for (yaml, field, rule) in [
            ("listen_addresses: []", "envoy.listen_addresses", "1 to 16"),
            (
                "listen_addresses: [0.0.0.0]\n  listen_address: 0.0.0.0",
                "envoy.listen_addresses",
                "not both",
            ),
            (
                "listen_addresses: [0.0.0.0, '::', 0.0.0.0]",
                "envoy.listen_addresses[2]",
                "twice",
            ),
            (
                "listen_addresses: ['::', 0.0.0.0, '::1']",
                "envoy.listen_addresses[2]",
                "covered by ::",
            ),
            (
                "listen_addresses: [127.0.0.1, 0.0.0.0]",
                "envoy.listen_addresses[0]",
                "covered by 0.0.0.0",
            ),
            (
                "listen_addresses: ['ff02::1']",
                "envoy.listen_addresses[0]",
                "multicast",
            ),
            (
                "listen_addresses: [255.255.255.255]",
                "envoy.listen_addresses[0]",
                "broadcast",
            ),
            (
                "listen_addresses: ['::ffff:127.0.0.1']",
                "envoy.listen_addresses[0]",
                "IPv4-mapped",
            ),
            (
                "listen_address: 224.0.0.1",
                "envoy.listen_address",
                "multicast",
            ),
            ("listen_addresses: [localhost]", "listen_addresses", ""),
        ] {
            let text = format!("envoy:\n  {yaml}\n");
            let e = format!("{:#}", Settings::parse(&text).unwrap_err());
            assert!(e.contains(field) && e.contains(rule), "{yaml}: {e}");
        }
        let many: Vec<String> = (1..=17).map(|i| format!("127.0.0.{i}")).collect();
        let e = Settings::parse(&format!(
            "envoy:\n  listen_addresses: [{}]\n",
            many.join(", ")
        ))
        .unwrap_err();
        assert!(format!("{e:#}").contains("got 17"), "{e:#}");
    }
}
