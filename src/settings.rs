//! The agent's own settings, read from `agent.yaml` and checked once at start-up.
//!
//! Unknown keys are an error: a misspelt setting must not silently fall back to a default.
//! `${NAME}` in a string value is replaced by the environment variable NAME, after the YAML is
//! parsed, so an environment value can never add structure. Precedence: command-line flags, then
//! the file, then the environment variables `VPSIE_API_URL`, `VPSIE_API_KEY_FILE`, `VPSIE_LB_ID`,
//! then the defaults here.

use anyhow::{bail, Context};
use serde::Deserialize;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub vpsie: VpsieSettings,
    #[serde(default)]
    pub envoy: EnvoySettings,
    #[serde(default)]
    pub supervisor: SupervisorSettings,
    /// Where the supervisor (and later the agent) keep their state files.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default)]
    pub metrics: MetricsSettings,
    #[serde(default)]
    pub logging: LoggingSettings,
    #[serde(default)]
    pub acme: AcmeSettings,
    #[serde(default)]
    pub access_log: AccessLogSettings,
    #[serde(default)]
    pub session_tickets: SessionTicketSettings,
    #[serde(default)]
    pub dev: DevSettings,
    /// High availability with keepalived (VRRP); absent: a single node.
    #[serde(default)]
    pub ha: Option<HaSettings>,
}

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
    #[serde(default)]
    pub multicast: bool,
    /// `address/prefix` or one address (a host route). active_standby: exactly one;
    /// active_active: one per node (this one and its peers).
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

    fn check(&self) -> anyhow::Result<()> {
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
        let unicast_host = |ip: IpAddr| {
            !(ip.is_unspecified() || ip.is_loopback() || ip.is_multicast())
                && ip != IpAddr::from([255, 255, 255, 255])
        };
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
        let nodes = self.nodes();
        for (i, p) in self.peers.iter().enumerate() {
            if !unicast_host(*p) || p.is_ipv4() != self.node_address.is_ipv4() {
                bail!("ha.peers[{i}]: {p} must be a unicast address of the same family as ha.node_address");
            }
        }
        if nodes.windows(2).any(|w| w[0] == w[1]) {
            bail!("ha.peers: every node address must appear once, ha.node_address included");
        }
        let mut vips = Vec::new();
        for (i, v) in self.virtual_ips.iter().enumerate() {
            let net = parse_vip(v).map_err(|e| anyhow::anyhow!("ha.virtual_ips[{i}]: {e}"))?;
            let ip = net.addr();
            if !unicast_host(ip) || ip.is_ipv4() != self.node_address.is_ipv4() {
                bail!("ha.virtual_ips[{i}]: {ip} must be a unicast address of the same family as ha.node_address");
            }
            if nodes.contains(&ip) || vips.iter().any(|n: &ipnet::IpNet| n.addr() == ip) {
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
        if vips.len() != want {
            bail!(
                "ha.virtual_ips: {} mode needs {want} (one {}), got {}",
                match self.mode {
                    HaMode::ActiveStandby => "active_standby",
                    HaMode::ActiveActive => "active_active",
                },
                match self.mode {
                    HaMode::ActiveStandby => "shared by the nodes",
                    HaMode::ActiveActive => "per node",
                },
                vips.len()
            );
        }
        if self.router_id == 0 || usize::from(self.router_id) + vips.len() - 1 > 255 {
            bail!(
                "ha.router_id: {} to {} must lie within 1-255",
                self.router_id,
                usize::from(self.router_id) + vips.len() - 1
            );
        }
        if !(100..=10_000).contains(&self.advert_interval_ms) || self.advert_interval_ms % 10 != 0 {
            bail!("ha.advert_interval_ms: must be 100 to 10000, in steps of 10 (VRRP counts centiseconds)");
        }
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

/// Managed certificates: https rules and domains without `tls` get theirs from this ACME CA,
/// validated by HTTP-01 on `envoy.redirect_port`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcmeSettings {
    /// The CA's directory URL (https).
    pub directory_url: String,
    /// Contact addresses for the account, e.g. `mailto:ops@example.com`.
    pub contact: Vec<String>,
    /// External account binding, for CAs that require one.
    pub external_account: Option<ExternalAccount>,
    /// Trust only this CA certificate (PEM) for the ACME server's own TLS: for test CAs such as
    /// Pebble. Absent: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Renew when this fraction of the lifetime has passed (the issue says two thirds).
    pub renew_at: f64,
    /// First wait after a failed attempt, doubled each time up to `retry_max_s`.
    pub retry_min_s: u32,
    pub retry_max_s: u32,
    /// Bound on one whole issuance (order, challenges, finalisation, download).
    pub order_timeout_s: u32,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalAccount {
    pub kid: String,
    /// The base64url HMAC key the CA gave.
    pub hmac_key: String,
}

pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

impl Default for AcmeSettings {
    fn default() -> Self {
        AcmeSettings {
            directory_url: LETS_ENCRYPT.into(),
            contact: Vec::new(),
            external_account: None,
            ca_file: None,
            renew_at: 2.0 / 3.0,
            retry_min_s: 60,
            retry_max_s: 6 * 3600,
            order_timeout_s: 300,
        }
    }
}

/// Where the load balancer's spec comes from.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct VpsieSettings {
    pub api_url: String,
    /// A file holding the API token; it must not be readable by group or others.
    pub api_key_file: PathBuf,
    pub loadbalancer_id: String,
    /// Seconds between polls; each wait is jittered by ±10%.
    pub poll_interval_s: u32,
    pub connect_timeout_s: u32,
    /// Bound on one whole request, body included.
    pub request_timeout_s: u32,
    /// Host names the API URL may name; anything else is refused before any connection.
    pub allowed_hosts: Vec<String>,
}

impl Default for VpsieSettings {
    fn default() -> Self {
        VpsieSettings {
            api_url: "https://api.vpsie.com".into(),
            api_key_file: PathBuf::from("/etc/vpsie-lb/api-key"),
            loadbalancer_id: String::new(),
            poll_interval_s: 30,
            connect_timeout_s: 5,
            request_timeout_s: 30,
            allowed_hosts: vec!["api.vpsie.com".into()],
        }
    }
}

/// The agent's own metrics and health endpoints (served from issue 5 on).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    pub address: IpAddr,
    pub port: u16,
    /// The one port Prometheus scrapes, through Envoy.
    pub scrape_port: u16,
    pub allowed_cidrs: Vec<String>,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings {
            address: IpAddr::from([127, 0, 0, 1]),
            port: 9101,
            scrape_port: 9100,
            allowed_cidrs: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingSettings {
    /// error, warn, info, debug or trace; `RUST_LOG` overrides it.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LoggingSettings {
    fn default() -> Self {
        LoggingSettings {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// What the command line may override (`run` and `once` take these flags).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub api_url: Option<String>,
    pub api_key_file: Option<PathBuf>,
    pub loadbalancer_id: Option<String>,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/vpsie-lb/state")
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            vpsie: VpsieSettings::default(),
            envoy: EnvoySettings::default(),
            supervisor: SupervisorSettings::default(),
            state_dir: default_state_dir(),
            metrics: MetricsSettings::default(),
            logging: LoggingSettings::default(),
            acme: AcmeSettings::default(),
            access_log: AccessLogSettings::default(),
            session_tickets: SessionTicketSettings::default(),
            dev: DevSettings::default(),
            ha: None,
        }
    }
}

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
    /// Where customer listeners bind.
    pub listen_address: IpAddr,
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
            listen_address: IpAddr::from([0, 0, 0, 0]),
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

/// Whether Envoy logs requests at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogMode {
    File,
    Off,
}

/// Customer traffic's access log: written by Envoy itself to a file (never through the
/// supervisor's stdout and the journal), rotated and bounded by the supervisor.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogSettings {
    /// `file`, or `off` (nothing is written). Live: a runtime value, no listener changes.
    pub mode: AccessLogMode,
    /// The file Envoy appends to; rotated files are `<path>.1` (newest) to `<path>.<keep_files>`.
    /// Rendered into every listener: a new path is a new config (the agent's next render).
    pub path: PathBuf,
    /// The share of requests logged, 0 to 100 in steps of 0.01. Requests answered 5xx or with a
    /// response flag (no healthy upstream, reset, timeout...) are always logged. Live.
    pub sample_percent: f64,
    /// The most the log files may take together, the current one included. Live.
    pub max_bytes: u64,
    /// How many rotated files to keep at most. Live.
    pub keep_files: u32,
    /// Log the path with its query string (off by default: query strings carry tokens and
    /// personal data). Rendered into the listeners, like `path`.
    pub query_string: bool,
}

impl Default for AccessLogSettings {
    fn default() -> Self {
        AccessLogSettings {
            mode: AccessLogMode::File,
            path: PathBuf::from("/var/log/vpsie-lb/access.log"),
            sample_percent: 100.0,
            max_bytes: 512 << 20,
            keep_files: 4,
            query_string: false,
        }
    }
}

/// The smallest total an access log may be bounded to: a rotation every few seconds at line
/// rate already.
pub const ACCESS_LOG_MIN_BYTES: u64 = 4 << 20;

impl AccessLogSettings {
    /// `sample_percent` as Envoy's runtime numerator over 10,000.
    pub fn sample_per_ten_thousand(&self) -> u32 {
        (self.sample_percent * 100.0).round() as u32
    }

    fn check(&self) -> anyhow::Result<()> {
        let p = &self.sample_percent;
        if !(0.0..=100.0).contains(p) || ((p * 100.0).round() - p * 100.0).abs() > 1e-6 {
            bail!("access_log.sample_percent: {p} must be between 0 and 100, in steps of 0.01");
        }
        // (A relative path is relative to the supervisor's working directory, as Envoy's.)
        if self.path.file_name().is_none()
            || self.path.as_os_str().as_encoded_bytes().ends_with(b"/")
        {
            bail!("access_log.path: {:?} must name a file", self.path);
        }
        if self.max_bytes < ACCESS_LOG_MIN_BYTES {
            bail!(
                "access_log.max_bytes: {} is below the minimum of {ACCESS_LOG_MIN_BYTES} (4 MiB)",
                self.max_bytes
            );
        }
        if !(1..=100).contains(&self.keep_files) {
            bail!("access_log.keep_files: must be between 1 and 100");
        }
        Ok(())
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

#[derive(Debug, Clone, Deserialize, serde::Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DevSettings {
    /// Lets backends sit on 127.0.0.0/8 and ::1. For tests and the local demo only.
    pub allow_loopback_backends: bool,
    /// Lets the API be plain http on a loopback host (the local stand-in). Never in production.
    pub allow_insecure_http: bool,
}

impl Settings {
    /// Reads and checks `agent.yaml`; `None` gives the defaults.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Settings> {
        let settings = match path {
            None => Settings::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read the settings file {}", p.display()))?;
                Self::parse(&text)
                    .with_context(|| format!("in the settings file {}", p.display()))?
            }
        };
        Ok(settings)
    }

    pub fn parse(text: &str) -> anyhow::Result<Settings> {
        Self::parse_with_env(text, &|name| std::env::var(name).ok())
    }

    /// Parses with `env` as the environment (tests pass their own).
    pub fn parse_with_env(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Settings> {
        let mut doc: serde_yaml::Value = serde_yaml::from_str(text)?;
        if doc.is_null() {
            doc = serde_yaml::Value::Mapping(Default::default());
        }
        interpolate(&mut doc, "", env)?;
        env_defaults(&mut doc, env)?;
        let s: Settings = serde_yaml::from_value(doc)?;
        s.check()?;
        Ok(s)
    }

    /// Applies command-line flags on top of the file, and checks the result again.
    pub fn with_overrides(mut self, o: &Overrides) -> anyhow::Result<Settings> {
        if let Some(v) = &o.api_url {
            self.vpsie.api_url = v.clone();
        }
        if let Some(v) = &o.api_key_file {
            self.vpsie.api_key_file = v.clone();
        }
        if let Some(v) = &o.loadbalancer_id {
            self.vpsie.loadbalancer_id = v.clone();
        }
        self.check()?;
        Ok(self)
    }

    fn check(&self) -> anyhow::Result<()> {
        let v = &self.vpsie;
        let id = &v.loadbalancer_id;
        if !id.is_empty()
            && (id.len() > 64
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        {
            bail!("vpsie.loadbalancer_id: {id:?} must match ^[a-zA-Z0-9_-]{{1,64}}$");
        }
        if !(1..=3600).contains(&v.poll_interval_s) {
            bail!("vpsie.poll_interval_s: must be between 1 and 3600");
        }
        if !(1..=300).contains(&v.connect_timeout_s) {
            bail!("vpsie.connect_timeout_s: must be between 1 and 300");
        }
        if !(1..=300).contains(&v.request_timeout_s) {
            bail!("vpsie.request_timeout_s: must be between 1 and 300");
        }
        if !["error", "warn", "info", "debug", "trace"].contains(&self.logging.level.as_str()) {
            bail!(
                "logging.level: {:?} is not one of error, warn, info, debug, trace",
                self.logging.level
            );
        }
        if !self.metrics.address.is_loopback() {
            bail!(
                "metrics.address: {} is not a loopback address; Prometheus scrapes through Envoy's metrics.scrape_port",
                self.metrics.address
            );
        }
        for (i, c) in self.metrics.allowed_cidrs.iter().enumerate() {
            parse_cidr(c).map_err(|e| anyhow::anyhow!("metrics.allowed_cidrs[{i}]: {e}"))?;
        }
        let e = &self.envoy;
        // sockaddr_un holds 108 bytes, the terminating NUL included.
        let admin = e.admin_socket.as_os_str().len();
        if admin == 0 || admin > 107 {
            bail!(
                "envoy.admin_socket: a Unix socket path must be 1 to 107 bytes long, got {admin}"
            );
        }
        if e.redirect_port == 0 {
            bail!("envoy.redirect_port: must be between 1 and 65535");
        }
        if !self.metrics.allowed_cidrs.is_empty() && self.metrics.scrape_port == e.redirect_port {
            bail!(
                "envoy.redirect_port: {} is also metrics.scrape_port",
                e.redirect_port
            );
        }
        if e.binary.as_os_str().is_empty() {
            bail!("envoy.binary: must not be empty");
        }
        if e.drain_time_s == 0 {
            bail!("envoy.drain_time_s: must be at least 1");
        }
        if e.parent_shutdown_time_s <= e.drain_time_s {
            bail!(
                "envoy.parent_shutdown_time_s: must be longer than envoy.drain_time_s ({}), or connections are cut before they drain",
                e.drain_time_s
            );
        }
        if e.max_heap_mb.is_some_and(|mb| mb < 64) {
            bail!("envoy.max_heap_mb: must be at least 64 (Envoy's own heap is about 7 MiB at idle; the rest is for connections)");
        }
        if !(1..=3600).contains(&e.request_headers_timeout_s) {
            bail!("envoy.request_headers_timeout_s: must be between 1 and 3600");
        }
        if e.max_requests_per_connection == 0 {
            bail!("envoy.max_requests_per_connection: must be at least 1");
        }
        if e.concurrency == Some(0) {
            bail!("envoy.concurrency: must be at least 1 (leave it out for one worker per CPU)");
        }
        if self.supervisor.live_timeout_s == 0 {
            bail!("supervisor.live_timeout_s: must be at least 1");
        }
        if let Some(ha) = &self.ha {
            ha.check()?;
        }
        self.access_log.check()?;
        if !TICKET_ROTATE_S.contains(&self.session_tickets.rotate_s) {
            bail!(
                "session_tickets.rotate_s: {} must be between {} and {} (a day)",
                self.session_tickets.rotate_s,
                TICKET_ROTATE_S.start(),
                TICKET_ROTATE_S.end()
            );
        }
        self.check_acme()
    }

    fn check_acme(&self) -> anyhow::Result<()> {
        let a = &self.acme;
        if !a.directory_url.starts_with("https://") {
            bail!(
                "acme.directory_url: {:?} must be an https URL",
                a.directory_url
            );
        }
        for (i, c) in a.contact.iter().enumerate() {
            let ok = c
                .strip_prefix("mailto:")
                .is_some_and(|m| m.contains('@') && !m.contains([',', ' ', '\n']));
            if !ok {
                bail!("acme.contact[{i}]: {c:?} must be a mailto: address");
            }
        }
        if let Some(e) = &a.external_account {
            if e.kid.is_empty() {
                bail!("acme.external_account.kid: must not be empty");
            }
            let key_ok = !e.hmac_key.is_empty()
                && e.hmac_key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=');
            if !key_ok {
                bail!("acme.external_account.hmac_key: must be base64url");
            }
        }
        if !(a.renew_at > 0.0 && a.renew_at < 1.0) {
            bail!("acme.renew_at: must be between 0 and 1 (a fraction of the lifetime)");
        }
        if a.retry_min_s == 0 || a.retry_max_s < a.retry_min_s {
            bail!("acme.retry_min_s / retry_max_s: need 1 <= retry_min_s <= retry_max_s");
        }
        if a.order_timeout_s == 0 {
            bail!("acme.order_timeout_s: must be at least 1");
        }
        Ok(())
    }

    /// The agent's state file (applied hash, epoch) and event queue live here.
    pub fn agent_state_path(&self) -> PathBuf {
        self.state_dir.join("agent.json")
    }

    /// The ACME account and the managed certificates (0700, files 0600).
    pub fn acme_dir(&self) -> PathBuf {
        self.state_dir.join("acme")
    }

    /// The secret the TLS session-ticket keys are derived from.
    pub fn ticket_secret_path(&self) -> PathBuf {
        self.session_tickets
            .secret_file
            .clone()
            .unwrap_or_else(|| self.state_dir.join("session-tickets.key"))
    }

    pub fn event_queue_path(&self) -> PathBuf {
        self.state_dir.join("events.json")
    }

    pub fn cert_dir(&self) -> PathBuf {
        self.envoy
            .cert_dir
            .clone()
            .unwrap_or_else(|| self.envoy.config_dir.join("certs"))
    }
}

/// Parses `address/prefix` (IPv4 or IPv6).
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not address/prefix (e.g. 10.0.0.0/8)"))?;
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= max)
        .ok_or_else(|| format!("prefix {len:?} must be 0 to {max}"))?;
    Ok((ip, len))
}

/// Replaces `${NAME}` in every string value; `path` names the key for errors.
fn interpolate(
    v: &mut serde_yaml::Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<()> {
    match v {
        serde_yaml::Value::String(s) if s.contains("${") => {
            let mut out = String::with_capacity(s.len());
            let mut rest = s.as_str();
            while let Some(start) = rest.find("${") {
                out.push_str(&rest[..start]);
                let Some(end) = rest[start..].find('}') else {
                    bail!("{path}: unclosed ${{ in {s:?}");
                };
                let name = &rest[start + 2..start + end];
                let valid = !name.is_empty()
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    && !name.as_bytes()[0].is_ascii_digit();
                if !valid {
                    bail!("{path}: ${{{name}}} is not a valid environment variable name");
                }
                let Some(value) = env(name) else {
                    bail!("{path}: the environment variable {name} is not set");
                };
                out.push_str(&value);
                rest = &rest[start + end + 1..];
            }
            out.push_str(rest);
            *s = out;
        }
        serde_yaml::Value::Mapping(m) => {
            for (k, v) in m.iter_mut() {
                let key = k.as_str().unwrap_or("?");
                let p = if path.is_empty() {
                    key.to_owned()
                } else {
                    format!("{path}.{key}")
                };
                interpolate(v, &p, env)?;
            }
        }
        serde_yaml::Value::Sequence(seq) => {
            for (i, v) in seq.iter_mut().enumerate() {
                interpolate(v, &format!("{path}[{i}]"), env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// The environment fills what the file leaves out of the `vpsie` section.
fn env_defaults(
    doc: &mut serde_yaml::Value,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<()> {
    let Some(top) = doc.as_mapping_mut() else {
        bail!("the settings file must be a mapping of sections");
    };
    let vpsie = top
        .entry("vpsie".into())
        .or_insert_with(|| serde_yaml::Value::Mapping(Default::default()));
    let Some(vpsie) = vpsie.as_mapping_mut() else {
        bail!("vpsie: must be a mapping");
    };
    for (key, var) in [
        ("api_url", "VPSIE_API_URL"),
        ("api_key_file", "VPSIE_API_KEY_FILE"),
        ("loadbalancer_id", "VPSIE_LB_ID"),
    ] {
        if !vpsie.contains_key(key) {
            if let Some(value) = env(var) {
                vpsie.insert(key.into(), serde_yaml::Value::String(value));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let s = Settings::parse("envoy:\n  admin_socket: /run/a.sock\n  redirect_port: 8080\n")
            .unwrap();
        assert_eq!(s.envoy.admin_socket, PathBuf::from("/run/a.sock"));
        assert_eq!(s.envoy.redirect_port, 8080);
        assert_eq!(s.cert_dir(), PathBuf::from("/var/lib/vpsie-lb/envoy/certs"));
        assert!(!s.dev.allow_loopback_backends);
    }

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

    #[test]
    fn unknown_keys_are_errors() {
        let e = Settings::parse("envoy:\n  admin_prot: 1\n").unwrap_err();
        assert!(format!("{e:#}").contains("admin_prot"), "{e:#}");
        assert!(Settings::parse("dve: {}\n").is_err());
    }

    #[test]
    fn admin_is_a_unix_socket_only() {
        // The TCP admin settings are gone: naming them is an error, not a silent no-op.
        for old in ["admin_address: 127.0.0.1", "admin_port: 9901"] {
            let e = Settings::parse(&format!("envoy:\n  {old}\n")).unwrap_err();
            assert!(format!("{e:#}").contains("unknown field"), "{old}: {e:#}");
        }
        let long = format!("envoy:\n  admin_socket: /{}\n", "a".repeat(107));
        let e = Settings::parse(&long).unwrap_err();
        assert!(e.to_string().contains("envoy.admin_socket"), "{e}");
        assert!(
            Settings::parse(&format!("envoy:\n  admin_socket: /{}\n", "a".repeat(106))).is_ok()
        );
    }

    #[test]
    fn environment_interpolation_and_precedence() {
        let env = |name: &str| match name {
            "LB" => Some("lb-7".to_owned()),
            "VPSIE_API_URL" => Some("https://env.example.com".to_owned()),
            "VPSIE_LB_ID" => Some("from-env".to_owned()),
            "EVIL" => Some("x\nenvoy:\n  redirect_port: 1".to_owned()),
            _ => None,
        };
        let text = "vpsie:\n  loadbalancer_id: ${LB}\n  allowed_hosts: [env.example.com]\n";
        let s = Settings::parse_with_env(text, &env).unwrap();
        assert_eq!(
            s.vpsie.loadbalancer_id, "lb-7",
            "the file wins over VPSIE_LB_ID"
        );
        assert_eq!(
            s.vpsie.api_url, "https://env.example.com",
            "the environment fills the rest"
        );
        let s = s
            .with_overrides(&Overrides {
                loadbalancer_id: Some("flag".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(s.vpsie.loadbalancer_id, "flag", "flags win over the file");

        let e = Settings::parse_with_env("vpsie:\n  loadbalancer_id: ${NOPE}\n", &env).unwrap_err();
        assert!(
            e.to_string().contains("vpsie.loadbalancer_id") && e.to_string().contains("NOPE"),
            "{e}"
        );
        // An environment value is a string, never YAML: it cannot add keys.
        let e = Settings::parse_with_env(
            "vpsie:\n  loadbalancer_id: ${EVIL}\n  allowed_hosts: [env.example.com]\n",
            &env,
        )
        .unwrap_err();
        assert!(e.to_string().contains("vpsie.loadbalancer_id"), "{e}");
    }

    #[test]
    fn every_value_is_checked_with_its_key() {
        for (text, key) in [
            ("vpsie:\n  poll_interval_s: 0\n", "vpsie.poll_interval_s"),
            ("vpsie:\n  loadbalancer_id: a b\n", "vpsie.loadbalancer_id"),
            ("logging:\n  level: loud\n", "logging.level"),
            ("metrics:\n  address: 0.0.0.0\n", "metrics.address"),
            (
                "envoy:\n  drain_time_s: 10\n  parent_shutdown_time_s: 5\n",
                "envoy.parent_shutdown_time_s",
            ),
        ] {
            let e = Settings::parse_with_env(text, &|_| None).unwrap_err();
            assert!(format!("{e:#}").contains(key), "{text}: {e:#}");
        }
    }

    #[test]
    fn cidrs() {
        assert_eq!(
            parse_cidr("10.0.0.0/8"),
            Ok(("10.0.0.0".parse().unwrap(), 8))
        );
        assert_eq!(parse_cidr("::1/128"), Ok(("::1".parse().unwrap(), 128)));
        for bad in ["10.0.0.0", "10.0.0.0/33", "::/129", "x/8", "10.0.0.0/-1"] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
        let e = Settings::parse_with_env("metrics:\n  allowed_cidrs: [10.0.0.0/99]\n", &|_| None)
            .unwrap_err();
        assert!(e.to_string().contains("metrics.allowed_cidrs[0]"), "{e}");
    }

    #[test]
    fn port_clash_is_an_error() {
        let text = "envoy:\n  redirect_port: 9100\nmetrics:\n  allowed_cidrs: [10.0.0.0/8]\n";
        let e = Settings::parse(text).unwrap_err();
        assert!(e.to_string().contains("envoy.redirect_port"), "{e}");
        assert!(
            Settings::parse("envoy:\n  redirect_port: 9100\n").is_ok(),
            "no scrape port"
        );
    }

    #[test]
    fn access_log_settings_are_checked_and_name_the_field() {
        let s = Settings::parse("").unwrap();
        assert_eq!(s.access_log.mode, AccessLogMode::File);
        assert_eq!(s.access_log.max_bytes, 512 << 20);
        assert_eq!(s.access_log.sample_per_ten_thousand(), 10_000);
        let s = Settings::parse("access_log:\n  mode: off\n  sample_percent: 0.25\n").unwrap();
        assert_eq!(s.access_log.mode, AccessLogMode::Off);
        assert_eq!(s.access_log.sample_per_ten_thousand(), 25);
        for (yaml, field) in [
            ("sample_percent: 100.5", "access_log.sample_percent"),
            ("sample_percent: -1", "access_log.sample_percent"),
            ("sample_percent: 0.001", "access_log.sample_percent"),
            ("path: /var/log/", "access_log.path"),
            ("path: /", "access_log.path"),
            ("max_bytes: 1000", "access_log.max_bytes"),
            ("keep_files: 0", "access_log.keep_files"),
            ("mode: stdout", "expected `file` or `off`"),
            ("rotate: daily", "rotate"),
        ] {
            let e = Settings::parse(&format!("access_log:\n  {yaml}\n")).unwrap_err();
            assert!(format!("{e:#}").contains(field), "{yaml}: {e:#}");
        }
    }
}
