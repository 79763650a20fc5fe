//! The command line: flags, one function per command, and the one map from outcome to exit
//! code. The binary only parses the flags and calls [`main`].
//!
//! Exit codes ([`exit_code`], the README's table): 0 ok, 2 the spec is invalid, 3 Envoy
//! rejected the config, 4 the config failed at runtime and the previous one was restored, 1
//! anything else.

mod daemon;
mod ha;
mod spec;
mod status;

pub use crate::pipeline::{now_unix, prepare, prepare_for_store, Failure, Prepared};
pub use daemon::once_result;
pub use spec::{apply, diff, hash, render, validate};
pub use status::{full_status, status_summary, FullStatus, VipReport};

use crate::settings::{LogFormat, Overrides, Settings};
use crate::supervisor::protocol::ApplyResult;
use clap::{Parser, Subcommand};
use daemon::runtime;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "vpsie-lb-agent",
    version,
    about = "Control-plane agent of the VPSie load balancer"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Render the Envoy config for a spec (certificates go to the certificate directory).
    Render {
        #[arg(long)]
        spec: PathBuf,
        /// Write the config here (mode 0600) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Render a spec into a temporary directory and check it with `envoy --mode validate`.
    Validate {
        #[arg(long)]
        spec: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the config hash of a spec.
    Hash {
        #[arg(long)]
        spec: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run the supervisor: the long-lived parent of every Envoy epoch.
    Supervise {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Render a spec and hand it to the supervisor; prints the new epoch and hash.
    Apply {
        #[arg(long)]
        spec: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Show what runs: the supervisor (epoch, hash, Envoy state and pid, last apply) and the agent
    /// (last poll, last event sent, queued events).
    Status {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print everything, as JSON, instead of the short summary.
        #[arg(long)]
        json: bool,
    },
    /// Show what applying a spec would change against the running config (a unified diff).
    Diff {
        #[arg(long)]
        spec: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Render keepalived's config from the settings' `ha` section, check it with keepalived's
    /// own config test, and write it to `ha.keepalived_config` (or `--out`) when it changed.
    KeepalivedConfig {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        out: Option<PathBuf>,
        /// The keepalived binary for the config test.
        #[arg(long, default_value = "keepalived")]
        keepalived: PathBuf,
        /// Skip keepalived's config test (it needs the interface to exist).
        #[arg(long)]
        no_check: bool,
    },
    /// Exits 0 when the settings have an `ha` section, 1 when not (the keepalived unit's
    /// ExecCondition: a single node leaves the unit inactive, not failed).
    HaEnabled {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// keepalived's health check: exits 0 while Envoy serves a config (the supervisor says so).
    HaCheck {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// keepalived's notify script: records a virtual IP's VRRP state for `status` and metrics.
    HaNotify {
        #[arg(long)]
        config: Option<PathBuf>,
        /// `INSTANCE` (what keepalived passes first).
        kind: String,
        /// The VRRP instance, `vip_<n>`.
        name: String,
        /// MASTER, BACKUP, FAULT or STOP.
        state: String,
        /// The priority keepalived passes last (not recorded).
        priority: Option<String>,
    },
    /// Follow the VPSie API: poll, apply what changed through the supervisor, report events.
    Run(ApiArgs),
    /// One reconcile cycle; the exit code says how it went (0 applied or unchanged, 2 invalid
    /// spec, 3 Envoy rejected, 4 rolled back, 1 anything else).
    Once(ApiArgs),
}

/// Flags that override agent.yaml (which overrides VPSIE_API_URL, VPSIE_API_KEY_FILE, VPSIE_LB_ID).
#[derive(clap::Args)]
struct ApiArgs {
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    api_url: Option<String>,
    #[arg(long)]
    api_key_file: Option<PathBuf>,
    #[arg(long)]
    lb_id: Option<String>,
}

/// The exit code of a command's outcome: the only place one is chosen.
pub fn exit_code(outcome: &Result<(), Failure>) -> u8 {
    match outcome {
        Ok(()) => 0,
        Err(Failure::Other(_)) => 1,
        Err(Failure::Invalid(_)) => 2,
        Err(Failure::Rejected(_)) => 3,
        Err(Failure::RolledBack(_)) => 4,
    }
}

/// Runs the command `cli` names: logging set up (the daemons at their settings' level, the
/// rest warnings only), the outcome printed, its exit code returned.
pub fn main(cli: Cli) -> ExitCode {
    let daemon_config = match &cli.command {
        Command::Supervise { config } => Some(config.clone()),
        Command::Run(a) | Command::Once(a) => Some(a.config.clone()),
        _ => None,
    };
    match daemon_config.map(|c| Settings::load(c.as_deref())) {
        Some(Ok(s)) => init_logging(&s.logging.level, s.logging.format),
        _ => init_logging("warn", LogFormat::Text),
    }
    let outcome = run(cli);
    match &outcome {
        Ok(()) => {}
        Err(Failure::Other(err)) => eprintln!("error: {err:#}"),
        Err(other) => eprintln!("error: {other}"),
    }
    ExitCode::from(exit_code(&outcome))
}

/// Logging: `RUST_LOG` when set, else `level`; text or JSON lines on stderr.
fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Colours only for a terminal: the journal and log files would keep the escape codes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn api_settings(a: &ApiArgs) -> Result<Settings, Failure> {
    let s = Settings::load(a.config.as_deref())?.with_overrides(&Overrides {
        api_url: a.api_url.clone(),
        api_key_file: a.api_key_file.clone(),
        loadbalancer_id: a.lb_id.clone(),
    })?;
    crate::api::check_settings(&s)?;
    Ok(s)
}

fn warn(p: &Prepared) {
    for w in p.warnings() {
        eprintln!("warning: {w}");
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    let load = |c: &Option<PathBuf>| Settings::load(c.as_deref());
    match cli.command {
        Command::Render { spec, out, config } => {
            let p = runtime()?.block_on(render(&spec, &load(&config)?, out.as_deref()))?;
            warn(&p);
            if out.is_none() {
                println!("{}", p.rendered.config);
            }
        }
        Command::Validate { spec, config } => {
            let p = runtime()?.block_on(validate(&spec, &load(&config)?))?;
            warn(&p);
            println!("OK {}", p.hash);
        }
        Command::Hash { spec, config } => {
            let p = runtime()?.block_on(hash(&spec, &load(&config)?))?;
            warn(&p);
            println!("{}", p.hash);
        }
        Command::Supervise { config } => daemon::supervise(config)?,
        Command::Apply { spec, config } => {
            let (p, out) = runtime()?.block_on(apply(&spec, &load(&config)?))?;
            warn(&p);
            let epoch = out.epoch.unwrap_or(0);
            match out.result {
                ApplyResult::Unchanged => println!("UNCHANGED epoch {epoch} {}", p.hash),
                _ => println!("APPLIED epoch {epoch} {} ({} ms)", p.hash, out.apply_ms),
            }
        }
        Command::Status { config, json } => {
            let s = runtime()?.block_on(full_status(&load(&config)?));
            if json {
                let text = serde_json::to_string_pretty(&s).map_err(anyhow::Error::from)?;
                println!("{text}");
            } else {
                print!("{}", status_summary(&s));
            }
            if let Some(e) = s.supervisor_error {
                return Err(anyhow::anyhow!("{e}").into());
            }
        }
        Command::Diff { spec, config } => {
            let d = runtime()?.block_on(diff(&spec, &load(&config)?))?;
            if d.is_empty() {
                println!("no change: the running config is what this spec renders to");
            } else {
                print!("{d}");
            }
        }
        Command::KeepalivedConfig {
            config,
            out,
            keepalived,
            no_check,
        } => ha::keepalived_config(
            config.as_deref(),
            out,
            (!no_check).then_some(keepalived.as_path()),
        )?,
        Command::HaEnabled { config } => ha::enabled(config.as_deref())?,
        Command::HaCheck { config } => ha::check(config.as_deref())?,
        Command::HaNotify {
            config,
            kind,
            name,
            state,
            priority: _,
        } => ha::notify(config.as_deref(), &kind, &name, &state)?,
        Command::Run(a) => daemon::run(&a)?,
        Command::Once(a) => daemon::once(&a)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every exit code the README's table names is the one this map gives, and every code
    /// this map gives is in the table.
    #[test]
    fn exit_codes_are_the_readmes_table() {
        let readme = include_str!("../../README.md");
        let table: Vec<(u8, &str)> = readme
            .lines()
            .skip_while(|l| !l.starts_with("| exit code | meaning |"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .filter_map(|l| {
                let mut cells = l.split('|').map(str::trim).filter(|c| !c.is_empty());
                Some((cells.next()?.parse().ok()?, cells.next()?))
            })
            .collect();
        let outcomes: Vec<(Result<(), Failure>, &str)> = vec![
            (Ok(()), "ok"),
            (Err(anyhow::anyhow!("x").into()), "anything else"),
            (
                Err(Failure::Invalid(crate::spec::SpecErrors(Vec::new()))),
                "the spec is invalid",
            ),
            (Err(Failure::Rejected("x".into())), "Envoy rejected"),
            (Err(Failure::RolledBack("x".into())), "failed at runtime"),
        ];
        assert_eq!(table.len(), outcomes.len(), "{table:?}");
        for (outcome, words) in &outcomes {
            let code = exit_code(outcome);
            let row = table.iter().find(|(c, _)| *c == code);
            assert!(
                row.is_some_and(|(_, meaning)| meaning.contains(words)),
                "exit code {code} ({words}) in the README: {row:?}"
            );
        }
    }
}
