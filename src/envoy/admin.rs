//! A client for Envoy's admin API on its Unix socket: what the supervisor asks a running Envoy.

use anyhow::{bail, Context};
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Admin {
    base: String,
    client: reqwest::Client,
}

/// What `/server_info` says about the Envoy that holds the admin port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// `LIVE`, `DRAINING`, `PRE_INITIALIZING` or `INITIALIZING`.
    pub state: String,
    pub restart_epoch: u32,
}

#[derive(Deserialize)]
struct RawInfo {
    state: String,
    command_line_options: RawOptions,
}

#[derive(Deserialize)]
struct RawOptions {
    restart_epoch: u32,
}

impl Admin {
    pub fn new(socket: &Path) -> anyhow::Result<Admin> {
        // No connection reuse: after a hot restart a kept-alive connection would still reach the
        // old epoch's admin server, which keeps answering for its old epoch until it exits.
        let client = reqwest::Client::builder()
            .unix_socket(socket)
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(2))
            .build()
            .context("cannot build the admin HTTP client")?;
        Ok(Admin {
            // Every request goes to the socket; the host only fills the Host header.
            base: "http://envoy-admin".to_owned(),
            client,
        })
    }

    async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .with_context(|| format!("envoy admin {path}"))?;
        if !r.status().is_success() {
            bail!("envoy admin {path} answered {}", r.status());
        }
        Ok(r.text().await?)
    }

    pub async fn server_info(&self) -> anyhow::Result<ServerInfo> {
        let text = self.get_text("/server_info").await?;
        let raw: RawInfo = serde_json::from_str(&text).context("envoy admin /server_info")?;
        Ok(ServerInfo {
            state: raw.state,
            restart_epoch: raw.command_line_options.restart_epoch,
        })
    }

    pub async fn hot_restart_version(&self) -> anyhow::Result<String> {
        Ok(self
            .get_text("/hot_restart_version")
            .await?
            .trim()
            .to_owned())
    }

    pub async fn post(&self, path: &str) -> anyhow::Result<()> {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .send()
            .await
            .with_context(|| format!("envoy admin POST {path}"))?;
        if !r.status().is_success() {
            bail!("envoy admin POST {path} answered {}", r.status());
        }
        Ok(())
    }

    /// Downstream connections open on the customer listeners right now. (`server.total_connections`
    /// would be simpler, but it is only refreshed at each stats flush, every 5 s.)
    pub async fn active_connections(&self) -> anyhow::Result<u64> {
        let text = self
            .get_text("/stats?filter=^listener\\..*\\.downstream_cx_active$")
            .await?;
        Ok(text
            .lines()
            .filter(|l| !l.starts_with("listener.admin."))
            .filter_map(|l| l.rsplit_once(": ")?.1.trim().parse::<u64>().ok())
            .sum())
    }
}
