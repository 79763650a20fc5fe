//! `vpsie-api-sim`: a DEVELOPMENT TOOL, the local stand-in for the VPSie load-balancer API
//! (`docs/contract.md`), for tests and demos. Never shipped,
//! never on anything but loopback.
//!
//! This file parses flags, sets up logging, maps signals to a [`server::Stop`] and calls
//! [`server::run`]; the modules hold the rest:
//! - `args`: the command line, checked in two stages (what was typed, then the checked config).
//! - `server`: binds, serves, stops (one stop flag, every task tracked, a deadline).
//! - `api`: the API and `/sim/*` routes.
//! - `faults`: the queue of injected faults.
//! - `events`: event validation and the recorded events.
//! - `conn`: connections a handler can cut (the `drop` fault).
//! - `upstream`: backends that answer with their name.

mod api;
mod args;
mod conn;
mod events;
mod faults;
mod server;
mod upstream;

use anyhow::Context;
use clap::Parser;
use server::Stop;
use std::future::Future;
use std::process::ExitCode;

fn main() -> ExitCode {
    // Bad flags (a non-loopback address among them) end here with exit code 2, before any I/O.
    let args = args::Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person watching; logs redirected to files stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    tracing::warn!(
        "vpsie-api-sim is a DEVELOPMENT TOOL: a local stand-in for the VPSie API, not the real API"
    );
    match start(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn start(args: args::Args) -> anyhow::Result<()> {
    let config = args::Config::from_args(args)?;
    // One thread is plenty for a development tool serving a handful of clients.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        // Registered before anything is bound, so a signal sent right after the ready line is
        // never missed.
        let stop = stop_signal()?;
        server::run(config, stop).await
    })
}

/// TERM stops gracefully, INT at once.
fn stop_signal() -> anyhow::Result<impl Future<Output = Stop>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => Stop::Graceful,
            _ = int.recv() => Stop::Fast,
        }
    })
}
