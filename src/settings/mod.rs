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

mod access_log;
mod acme;
mod envoy;
mod ha;
mod interpolate;

pub use access_log::{AccessLogMode, AccessLogSettings, ACCESS_LOG_MIN_BYTES};
pub use acme::{AcmeSettings, ExternalAccount, LETS_ENCRYPT};
pub use envoy::{
    heap_limit_for, DrainStrategy, EnvoySettings, SessionTicketSettings, SupervisorSettings,
    ANY_V4, ANY_V6, MAX_LISTEN_ADDRESSES, TICKET_ROTATE_S,
};
pub use ha::{keepalived_safe, parse_vip, HaMode, HaSettings};
use interpolate::{env_defaults, interpolate};

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

/// The agent's own metrics and health endpoints.
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
                // Relative paths in the file are the file's: the same whoever reads it, from
                // whatever directory (the agent, `status` from another shell, the supervisor).
                let dir = p.parent().filter(|d| !d.as_os_str().is_empty());
                let base = std::fs::canonicalize(dir.unwrap_or(Path::new(".")))
                    .with_context(|| format!("cannot resolve the directory of {}", p.display()))?;
                Self::parse_in(&text, &|name| std::env::var(name).ok(), Some(&base))
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
        Self::parse_in(text, env, None)
    }

    /// Parses a file whose relative paths are read from `base` (its directory, canonical), or
    /// left as they are without one.
    fn parse_in(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
        base: Option<&Path>,
    ) -> anyhow::Result<Settings> {
        let mut doc: serde_yaml::Value = serde_yaml::from_str(text)?;
        if doc.is_null() {
            doc = serde_yaml::Value::Mapping(Default::default());
        }
        interpolate(&mut doc, "", env)?;
        env_defaults(&mut doc, env)?;
        let mut s: Settings = serde_path_to_error::deserialize(doc).map_err(|e| {
            let path = e.path().to_string();
            anyhow::anyhow!("{path}: {}", e.into_inner())
        })?;
        if let Some(base) = base {
            s.resolve_paths(base);
        }
        s.check()?;
        Ok(s)
    }

    /// Every relative path made absolute against `base`. A bare program name (`envoy.binary:
    /// envoy`) stays as it is: it is looked up on the PATH.
    fn resolve_paths(&mut self, base: &Path) {
        let mut paths: Vec<&mut PathBuf> = vec![
            &mut self.vpsie.api_key_file,
            &mut self.envoy.config_dir,
            &mut self.envoy.admin_socket,
            &mut self.envoy.log_file,
            &mut self.access_log.path,
            &mut self.supervisor.socket,
            &mut self.state_dir,
        ];
        paths.extend(self.envoy.cert_dir.as_mut());
        paths.extend(self.acme.ca_file.as_mut());
        paths.extend(self.session_tickets.secret_file.as_mut());
        if let Some(ha) = &mut self.ha {
            paths.extend([
                &mut ha.keepalived_config,
                &mut ha.track_file,
                &mut ha.state_dir,
            ]);
        }
        if self.envoy.binary.components().count() > 1 {
            paths.push(&mut self.envoy.binary);
        }
        for p in paths {
            *p = under(base, p);
        }
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
        e.check_listen_addresses()?;
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
        self.acme.check()
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

/// Parses `address/prefix` (IPv4 or IPv6), with an error that says what was expected.
/// `path` read from `base` (canonical): its leading `..` taken off `base`, so that what
/// `status` and the logs show is a plain absolute path.
fn under(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_path_buf();
    }
    let mut dir = base.to_path_buf();
    let mut rest = path.components().peekable();
    while let Some(std::path::Component::ParentDir | std::path::Component::CurDir) = rest.peek() {
        if rest.next() == Some(std::path::Component::ParentDir) {
            dir.pop();
        }
    }
    dir.join(rest.collect::<PathBuf>())
}

pub fn parse_cidr(s: &str) -> Result<ipnet::IpNet, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not address/prefix (e.g. 10.0.0.0/8 or 2001:db8::/32)"))
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
    fn relative_paths_are_read_from_the_files_own_directory() {
        let root = tempfile::tempdir().unwrap();
        let conf_dir = root.path().join("etc/lb");
        std::fs::create_dir_all(&conf_dir).unwrap();
        let file = conf_dir.join("agent.yaml");
        std::fs::write(
            &file,
            "vpsie:\n  api_key_file: key\nenvoy:\n  binary: envoy\n  config_dir: ../../var/envoy\n  log_file: ./logs/envoy.log\n  admin_socket: /run/a.sock\nstate_dir: ../state\naccess_log:\n  path: sub/../access.log\n",
        )
        .unwrap();
        let s = Settings::load(Some(&file)).unwrap();
        let root = std::fs::canonicalize(root.path()).unwrap();
        let dir = root.join("etc/lb");
        assert_eq!(s.vpsie.api_key_file, dir.join("key"));
        assert_eq!(s.envoy.config_dir, root.join("var/envoy"));
        assert_eq!(s.envoy.log_file, dir.join("logs/envoy.log"));
        assert_eq!(s.state_dir, root.join("etc/state"));
        assert_eq!(s.access_log.path, dir.join("sub/../access.log"));
        // Absolute paths stay; a bare program name is looked up on the PATH.
        assert_eq!(s.envoy.admin_socket, PathBuf::from("/run/a.sock"));
        assert_eq!(s.envoy.binary, PathBuf::from("envoy"));
        // Parsed text (no file) keeps its paths as written.
        let t = Settings::parse("state_dir: rel\n").unwrap();
        assert_eq!(t.state_dir, PathBuf::from("rel"));
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
        assert_eq!(parse_cidr("10.0.0.0/8"), Ok("10.0.0.0/8".parse().unwrap()));
        assert_eq!(parse_cidr("::1/128").map(|n| n.prefix_len()), Ok(128));
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
