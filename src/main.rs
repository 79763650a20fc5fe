//! The `vpsie-lb-agent` binary: flags, logging, and a call into the library.

use clap::{Parser, Subcommand};

/// mimalloc rather than glibc's malloc: a spec of 10,000 backends builds and frees large JSON
/// and template trees on every change, and glibc's free list made that a fifth of the time
/// (`make bench`). The benchmark uses the same allocator, so it measures what ships.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;
use vpsie_lb_agent::agent;
use vpsie_lb_agent::command::{self, Failure, Prepared};
use vpsie_lb_agent::settings::{LogFormat, Overrides, Settings};
use vpsie_lb_agent::supervisor::{self, protocol::ApplyResult, StopKind};

#[derive(Parser)]
#[command(
    name = "vpsie-lb-agent",
    version,
    about = "Control-plane agent of the VPSie load balancer"
)]
struct Cli {
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

/// Logging: `RUST_LOG` when set, else `level` (the settings' for the daemons, warn for one-shot
/// commands); text or JSON lines on stderr.
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

fn main() -> ExitCode {
    // No transparent huge pages: mimalloc asks for them on its arenas, and each one made 2 MiB
    // resident for the few KiB an idle daemon uses (idle RSS 20 -> 16.6 MB, `make bench-idle`).
    // Envoy is started with the machine's setting again (envoy::process::spawn). Failing to set
    // it only costs memory.
    let _ = nix::sys::prctl::set_thp_disable(true);
    let cli = Cli::parse();
    // The daemons log at the level their settings ask for; the rest only warns.
    let daemon_config = match &cli.command {
        Command::Supervise { config } => Some(config.clone()),
        Command::Run(a) | Command::Once(a) => Some(a.config.clone()),
        _ => None,
    };
    match daemon_config.map(|c| Settings::load(c.as_deref())) {
        Some(Ok(s)) => init_logging(&s.logging.level, s.logging.format),
        _ => init_logging("warn", LogFormat::Text),
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match &e {
                Failure::Other(err) => eprintln!("error: {err:#}"),
                other => eprintln!("error: {other}"),
            }
            ExitCode::from(e.exit_code())
        }
    }
}

fn api_settings(a: &ApiArgs) -> Result<Settings, Failure> {
    let s = Settings::load(a.config.as_deref())?.with_overrides(&Overrides {
        api_url: a.api_url.clone(),
        api_key_file: a.api_key_file.clone(),
        loadbalancer_id: a.lb_id.clone(),
    })?;
    vpsie_lb_agent::api::check_settings(&s)?;
    Ok(s)
}

fn settings(path: Option<&PathBuf>) -> Result<Settings, Failure> {
    Ok(Settings::load(path.map(PathBuf::as_path))?)
}

fn warn(p: &Prepared) {
    for w in p.warnings() {
        eprintln!("warning: {w}");
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    // Current-thread on the main thread: Envoy's hot-restart children die with the thread that
    // spawned them (PR_SET_PDEATHSIG), and this one lives as long as the process.
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)?)
}

/// TERM drains Envoy gracefully; INT stops it at once.
async fn stop_signal() -> StopKind {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => StopKind::Graceful,
        _ = int.recv() => StopKind::Fast,
    }
}

/// HUP reads the settings file again, for the supervisor to apply what can change live.
fn reloads(
    path: Option<PathBuf>,
) -> tokio::sync::mpsc::UnboundedReceiver<anyhow::Result<Settings>> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            if tx.send(Settings::load(path.as_deref())).is_err() {
                return;
            }
        }
    });
    rx
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Render { spec, out, config } => {
            let settings = settings(config.as_ref())?;
            let p = runtime()?.block_on(command::render(&spec, &settings, out.as_deref()))?;
            warn(&p);
            if out.is_none() {
                println!("{}", p.rendered.config);
            }
        }
        Command::Validate { spec, config } => {
            let settings = settings(config.as_ref())?;
            let p = runtime()?.block_on(command::validate(&spec, &settings))?;
            warn(&p);
            println!("OK {}", p.hash);
        }
        Command::Hash { spec, config } => {
            let settings = settings(config.as_ref())?;
            let p = runtime()?.block_on(command::hash(&spec, &settings))?;
            warn(&p);
            println!("{}", p.hash);
        }
        Command::Supervise { config } => {
            let settings = settings(config.as_ref())?;
            let socket = settings.supervisor.socket.clone();
            let result = runtime()?.block_on(async {
                let listener = supervisor::bind(&socket).await?;
                let result =
                    supervisor::run(settings, listener, stop_signal(), reloads(config)).await;
                let _ = std::fs::remove_file(&socket);
                result
            });
            result?;
        }
        Command::Apply { spec, config } => {
            let settings = settings(config.as_ref())?;
            let (p, out) = runtime()?.block_on(command::apply(&spec, &settings))?;
            warn(&p);
            match out.result {
                ApplyResult::Unchanged => {
                    println!("UNCHANGED epoch {} {}", out.epoch.unwrap_or(0), p.hash)
                }
                _ => println!(
                    "APPLIED epoch {} {} ({} ms)",
                    out.epoch.unwrap_or(0),
                    p.hash,
                    out.apply_ms
                ),
            }
        }
        Command::Status { config, json } => {
            let s = runtime()?.block_on(command::full_status(&settings(config.as_ref())?));
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&s).map_err(anyhow::Error::from)?
                );
            } else {
                print!("{}", command::status_summary(&s));
            }
            if let Some(e) = s.supervisor_error {
                return Err(anyhow::anyhow!("{e}").into());
            }
        }
        Command::Diff { spec, config } => {
            let settings = settings(config.as_ref())?;
            let d = runtime()?.block_on(command::diff(&spec, &settings))?;
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
        } => {
            let s = settings(config.as_ref())?;
            let Some(ha) = &s.ha else {
                return Err(anyhow::anyhow!("the settings have no ha section").into());
            };
            let out = out.unwrap_or_else(|| ha.keepalived_config.clone());
            // keepalived runs the check and notify commands by these paths: make them absolute.
            let file = match &config {
                Some(c) => std::fs::canonicalize(c).map_err(anyhow::Error::from)?,
                None => {
                    return Err(anyhow::anyhow!(
                        "--config: keepalived's scripts need the settings file's path"
                    )
                    .into())
                }
            };
            let bin = std::env::current_exe().map_err(anyhow::Error::from)?;
            let check = (!no_check).then_some(keepalived.as_path());
            let wrote = vpsie_lb_agent::ha::write_config(&s, &file, &bin, &out, check)?;
            println!(
                "{} {}",
                if wrote { "written" } else { "unchanged" },
                out.display()
            );
        }
        Command::HaEnabled { config } => {
            if settings(config.as_ref())?.ha.is_none() {
                println!("no ha section: a single node");
                return Err(Failure::Other(anyhow::anyhow!(
                    "high availability is not configured"
                )));
            }
            println!("ha configured");
        }
        Command::HaCheck { config } => {
            let s = settings(config.as_ref())?;
            let answer = runtime()?.block_on(async {
                tokio::time::timeout(
                    std::time::Duration::from_secs(1),
                    vpsie_lb_agent::ha::serving(&s),
                )
                .await
                .unwrap_or_else(|_| Err("the supervisor did not answer within 1 s".into()))
            });
            if let Err(why) = answer {
                return Err(anyhow::anyhow!("not serving: {why}").into());
            }
        }
        Command::HaNotify {
            config,
            kind,
            name,
            state,
            priority: _,
        } => {
            let s = settings(config.as_ref())?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            vpsie_lb_agent::ha::record(&s, &kind, &name, &state, now)?;
        }
        Command::Run(a) => {
            let settings = api_settings(&a)?;
            runtime()?.block_on(async {
                let agent = agent::Agent::new(settings)?;
                let (resync_tx, resync_rx) = tokio::sync::mpsc::channel(1);
                tokio::spawn(async move {
                    use tokio::signal::unix::{signal, SignalKind};
                    let Ok(mut hup) = signal(SignalKind::hangup()) else {
                        return;
                    };
                    while hup.recv().await.is_some() {
                        let _ = resync_tx.try_send(());
                    }
                });
                agent::run(
                    agent,
                    async {
                        stop_signal().await;
                    },
                    resync_rx,
                )
                .await
            })?;
        }
        Command::Once(a) => {
            let settings = api_settings(&a)?;
            let outcome = runtime()?.block_on(async {
                let mut agent = agent::Agent::new(settings)?;
                let outcome = agent.cycle(false).await;
                agent.flush_events().await;
                anyhow::Ok(outcome)
            })?;
            match outcome {
                agent::Outcome::Unchanged => println!("UNCHANGED"),
                agent::Outcome::Applied { hash, epoch } => println!("APPLIED epoch {epoch} {hash}"),
                agent::Outcome::Rejected {
                    by_envoy: false,
                    errors,
                    ..
                } => return Err(Failure::Invalid(vpsie_lb_agent::spec::SpecErrors(errors))),
                agent::Outcome::Rejected { errors, .. } => {
                    let msg: Vec<String> = errors.iter().map(|e| e.message.clone()).collect();
                    return Err(Failure::Rejected(msg.join("\n")));
                }
                agent::Outcome::RolledBack { hash } => {
                    return Err(Failure::RolledBack(format!(
                        "{hash} failed at runtime; the previous config serves (see `status`)"
                    )))
                }
                agent::Outcome::Failed { hash, error } => {
                    return Err(anyhow::anyhow!(
                        "{hash} could not be applied ({error}); the previous config serves"
                    )
                    .into())
                }
                agent::Outcome::Critical { hash } => {
                    return Err(anyhow::anyhow!(
                        "CRITICAL: {hash} could not be applied and envoy is not serving"
                    )
                    .into())
                }
                agent::Outcome::Unreachable(e) => return Err(anyhow::anyhow!("{e}").into()),
            }
        }
    }
    Ok(())
}
