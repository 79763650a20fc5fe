//! The long-running commands (`supervise`, `run`) and `once`, and what signals mean to them.

use super::api_settings;
use crate::agent::{self, Outcome};
use crate::pipeline::Failure;
use crate::settings::Settings;
use crate::supervisor::{self, StopKind};
use std::path::PathBuf;
use tokio::sync::mpsc;

/// The runtime every command runs on: current-thread, on the main thread, because Envoy's
/// hot-restart children die with the thread that spawned them (PR_SET_PDEATHSIG), and this one
/// lives as long as the process.
pub(super) fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)?)
}

/// What a signal asks of a daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intent {
    /// TERM: drain Envoy gracefully, then stop; INT: stop at once.
    Stop(StopKind),
    /// HUP: the supervisor reads its settings again; the agent polls the API now.
    Reload,
}

/// The one place signals are mapped to intents; the channel ends after the first stop.
fn intents() -> mpsc::UnboundedReceiver<Intent> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            // Without signal handlers the default actions stay: a TERM still ends the process.
            std::future::pending::<()>().await;
            return;
        };
        loop {
            let intent = tokio::select! {
                _ = term.recv() => Intent::Stop(StopKind::Graceful),
                _ = int.recv() => Intent::Stop(StopKind::Fast),
                _ = hup.recv() => Intent::Reload,
            };
            if tx.send(intent).is_err() || matches!(intent, Intent::Stop(_)) {
                return;
            }
        }
    });
    rx
}

/// Splits the intents: stops become a future, reloads a channel of `on_reload()`'s values.
fn split<T: Send + 'static>(
    mut intents: mpsc::UnboundedReceiver<Intent>,
    on_reload: impl Fn() -> T + Send + 'static,
) -> (
    impl std::future::Future<Output = StopKind>,
    mpsc::UnboundedReceiver<T>,
) {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let (reload_tx, reload_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(intent) = intents.recv().await {
            match intent {
                Intent::Stop(kind) => {
                    let _ = stop_tx.send(kind);
                    return;
                }
                Intent::Reload => {
                    let _ = reload_tx.send(on_reload());
                }
            }
        }
    });
    let stop = async move {
        match stop_rx.await {
            Ok(kind) => kind,
            Err(_) => std::future::pending().await,
        }
    };
    (stop, reload_rx)
}

/// `supervise`: the parent of every Envoy epoch, until TERM or INT; HUP re-reads the settings.
pub(super) fn supervise(config: Option<PathBuf>) -> Result<(), Failure> {
    let settings = Settings::load(config.as_deref())?;
    let socket = settings.supervisor.socket.clone();
    runtime()?.block_on(async {
        let listener = supervisor::bind(&socket).await?;
        let (stop, reloads) = split(intents(), move || Settings::load(config.as_deref()));
        let result = supervisor::run(settings, listener, stop, reloads).await;
        let _ = std::fs::remove_file(&socket);
        result
    })?;
    Ok(())
}

/// `run`: follows the API until TERM or INT; HUP asks for a poll now.
pub(super) fn run(a: &super::ApiArgs) -> Result<(), Failure> {
    let settings = api_settings(a)?;
    runtime()?.block_on(async {
        let agent = agent::Agent::new(settings)?;
        let (stop, mut resyncs) = split(intents(), || ());
        let (resync_tx, resync_rx) = mpsc::channel(1);
        tokio::spawn(async move {
            while resyncs.recv().await.is_some() {
                let _ = resync_tx.try_send(());
            }
        });
        agent::run(
            agent,
            async {
                stop.await;
            },
            resync_rx,
        )
        .await
    })?;
    Ok(())
}

/// `once`: one reconcile cycle; prints what happened, and says how it went as a [`Failure`].
pub(super) fn once(a: &super::ApiArgs) -> Result<(), Failure> {
    let settings = api_settings(a)?;
    let outcome = runtime()?.block_on(async {
        let mut agent = agent::Agent::new(settings)?;
        let outcome = agent.cycle(false).await;
        agent.flush_events().await;
        anyhow::Ok(outcome)
    })?;
    let line = once_result(outcome)?;
    println!("{line}");
    Ok(())
}

/// A cycle's outcome as the CLI reports it: the line to print, or the failure (and with it
/// the exit code, [`super::exit_code`]).
pub fn once_result(outcome: Outcome) -> Result<String, Failure> {
    match outcome {
        Outcome::Unchanged => Ok("UNCHANGED".into()),
        Outcome::Applied { hash, epoch } => Ok(format!("APPLIED epoch {epoch} {hash}")),
        Outcome::Rejected {
            by_envoy: false,
            errors,
            ..
        } => Err(Failure::Invalid(crate::spec::SpecErrors(errors))),
        Outcome::Rejected { errors, .. } => {
            let msg: Vec<String> = errors.iter().map(|e| e.message.clone()).collect();
            Err(Failure::Rejected(msg.join("\n")))
        }
        Outcome::RolledBack { hash } => Err(Failure::RolledBack(format!(
            "{hash} failed at runtime; the previous config serves (see `status`)"
        ))),
        Outcome::Failed { hash, error } => Err(anyhow::anyhow!(
            "{hash} could not be applied ({error}); the previous config serves"
        )
        .into()),
        Outcome::Critical { hash } => Err(anyhow::anyhow!(
            "CRITICAL: {hash} could not be applied and envoy is not serving"
        )
        .into()),
        Outcome::Unreachable(e) => Err(anyhow::anyhow!("{e}").into()),
    }
}
