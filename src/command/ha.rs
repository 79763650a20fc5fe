//! The commands keepalived and its unit run: `keepalived-config`, `ha-enabled`, `ha-check`,
//! `ha-notify`.

use super::daemon::runtime;
use crate::pipeline::Failure;
use crate::settings::Settings;
use std::path::{Path, PathBuf};

/// `keepalived-config`: keepalived's config from the `ha` section, checked with keepalived's own
/// config test unless `keepalived` is `None`, written to `out` (default `ha.keepalived_config`)
/// when it changed.
pub(super) fn keepalived_config(
    config: Option<&Path>,
    out: Option<PathBuf>,
    keepalived: Option<&Path>,
) -> Result<(), Failure> {
    let s = Settings::load(config)?;
    let Some(ha) = &s.ha else {
        return Err(anyhow::anyhow!("the settings have no ha section").into());
    };
    let out = out.unwrap_or_else(|| ha.keepalived_config.clone());
    // keepalived runs the check and notify commands by these paths: make them absolute.
    let Some(config) = config else {
        return Err(anyhow::anyhow!(
            "--config: keepalived's scripts need the settings file's path"
        )
        .into());
    };
    let file = std::fs::canonicalize(config).map_err(anyhow::Error::from)?;
    let bin = std::env::current_exe().map_err(anyhow::Error::from)?;
    let wrote = crate::ha::write_config(&s, &file, &bin, &out, keepalived)?;
    println!(
        "{} {}",
        if wrote { "written" } else { "unchanged" },
        out.display()
    );
    Ok(())
}

/// `ha-enabled`: whether the settings have an `ha` section (exit 0) or not (exit 1).
pub(super) fn enabled(config: Option<&Path>) -> Result<(), Failure> {
    if Settings::load(config)?.ha.is_none() {
        println!("no ha section: a single node");
        return Err(anyhow::anyhow!("high availability is not configured").into());
    }
    println!("ha configured");
    Ok(())
}

/// How long `ha-check` waits for the supervisor: keepalived runs it every second.
const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// `ha-check`: exit 0 while Envoy serves a config, as the supervisor says.
pub(super) fn check(config: Option<&Path>) -> Result<(), Failure> {
    let s = Settings::load(config)?;
    let answer = runtime()?.block_on(async {
        tokio::time::timeout(CHECK_TIMEOUT, crate::ha::serving(&s))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "the supervisor did not answer within {} s",
                    CHECK_TIMEOUT.as_secs()
                ))
            })
    });
    answer.map_err(|why| anyhow::anyhow!("not serving: {why}").into())
}

/// `ha-notify`: records a virtual IP's VRRP state.
pub(super) fn notify(
    config: Option<&Path>,
    kind: &str,
    name: &str,
    state: &str,
) -> Result<(), Failure> {
    let s = Settings::load(config)?;
    let interface =
        s.ha.as_ref()
            .map(|h| h.interface.clone())
            .unwrap_or_default();
    crate::ha::record(&s, kind, name, state, crate::pipeline::now_unix(), |vip| {
        crate::ha::holds(&interface, vip)
    })?;
    Ok(())
}
