//! The agent's own settings, read from `agent.yaml` and checked once at start-up.
//!
//! Unknown keys are an error: a misspelt setting must not silently fall back to a default.
//! Issue 2 needs the `envoy` and `dev` sections; the other sections of `agent.yaml` (API, state,
//! metrics, logging) arrive with the features that read them.

use anyhow::{bail, Context};
use serde::Deserialize;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub envoy: EnvoySettings,
    #[serde(default)]
    pub supervisor: SupervisorSettings,
    /// Where the supervisor (and later the agent) keep their state files.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default)]
    pub dev: DevSettings,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/vpsie-lb/state")
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            envoy: EnvoySettings::default(),
            supervisor: SupervisorSettings::default(),
            state_dir: default_state_dir(),
            dev: DevSettings::default(),
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
}

impl Default for SupervisorSettings {
    fn default() -> Self {
        SupervisorSettings {
            socket: PathBuf::from("/run/vpsie-lb/supervisor.sock"),
            live_timeout_s: 30,
            preflight_ports: true,
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
    /// Envoy's admin interface. It can stop Envoy, so it must stay on loopback.
    pub admin_address: IpAddr,
    pub admin_port: u16,
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
}

impl Default for EnvoySettings {
    fn default() -> Self {
        EnvoySettings {
            binary: std::env::var_os("ENVOY_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("envoy")),
            config_dir: PathBuf::from("/var/lib/vpsie-lb/envoy"),
            cert_dir: None,
            admin_address: IpAddr::from([127, 0, 0, 1]),
            admin_port: 9901,
            listen_address: IpAddr::from([0, 0, 0, 0]),
            redirect_port: 80,
            base_id: 7,
            drain_time_s: 30,
            parent_shutdown_time_s: 45,
            drain_strategy: DrainStrategy::Gradual,
            concurrency: None,
            log_file: PathBuf::from("/var/log/vpsie-lb/envoy.log"),
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DevSettings {
    /// Lets backends sit on 127.0.0.0/8 and ::1. For tests and the local demo only.
    pub allow_loopback_backends: bool,
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
        let s: Settings = serde_yaml::from_str(text)?;
        s.check()?;
        Ok(s)
    }

    fn check(&self) -> anyhow::Result<()> {
        let e = &self.envoy;
        if !e.admin_address.is_loopback() {
            bail!(
                "envoy.admin_address: {} is not a loopback address; the admin interface can stop Envoy and must never be exposed",
                e.admin_address
            );
        }
        if e.admin_port == 0 {
            bail!("envoy.admin_port: must be between 1 and 65535");
        }
        if e.redirect_port == 0 {
            bail!("envoy.redirect_port: must be between 1 and 65535");
        }
        if e.redirect_port == e.admin_port {
            bail!(
                "envoy.redirect_port: {} is also envoy.admin_port",
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
        if e.concurrency == Some(0) {
            bail!("envoy.concurrency: must be at least 1 (leave it out for one worker per CPU)");
        }
        if self.supervisor.live_timeout_s == 0 {
            bail!("supervisor.live_timeout_s: must be at least 1");
        }
        Ok(())
    }

    pub fn cert_dir(&self) -> PathBuf {
        self.envoy
            .cert_dir
            .clone()
            .unwrap_or_else(|| self.envoy.config_dir.join("certs"))
    }

    /// What spec validation needs from the settings.
    pub fn spec_options(&self, now: i64) -> crate::spec::Options {
        crate::spec::Options {
            allow_loopback_backends: self.dev.allow_loopback_backends,
            redirect_port: self.envoy.redirect_port,
            reserved_ports: vec![(
                self.envoy.admin_port,
                "the Envoy admin interface (setting envoy.admin_port)".to_owned(),
            )],
            now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let s = Settings::parse("envoy:\n  admin_port: 19901\n  redirect_port: 8080\n").unwrap();
        assert_eq!(s.envoy.admin_port, 19901);
        assert_eq!(s.envoy.redirect_port, 8080);
        assert_eq!(s.cert_dir(), PathBuf::from("/var/lib/vpsie-lb/envoy/certs"));
        assert!(!s.dev.allow_loopback_backends);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = Settings::parse("envoy:\n  admin_prot: 1\n").unwrap_err();
        assert!(format!("{e:#}").contains("admin_prot"), "{e:#}");
        assert!(Settings::parse("dve: {}\n").is_err());
    }

    #[test]
    fn admin_must_stay_on_loopback() {
        let e = Settings::parse("envoy:\n  admin_address: 0.0.0.0\n").unwrap_err();
        assert!(e.to_string().contains("envoy.admin_address"), "{e}");
        assert!(Settings::parse("envoy:\n  admin_address: \"::1\"\n").is_ok());
    }

    #[test]
    fn port_clash_is_an_error() {
        let e = Settings::parse("envoy:\n  admin_port: 80\n").unwrap_err();
        assert!(e.to_string().contains("envoy.redirect_port"), "{e}");
    }
}
