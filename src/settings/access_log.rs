//! The `access_log` section: customer traffic's log, written by Envoy, bounded by the supervisor.

use anyhow::bail;
use serde::Deserialize;
use std::path::PathBuf;

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

    pub(super) fn check(&self) -> anyhow::Result<()> {
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
