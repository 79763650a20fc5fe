//! The access log on disk: rotated by size and bounded in total, whatever the traffic.
//!
//! Envoy appends every logged request to `access_log.path` itself (buffered, flushed every
//! second or every 64 KiB). This task checks the file's size a few times a second; when it is
//! due, it renames the file to `<path>.1` (older ones shift up, the oldest beyond `keep_files`
//! goes) and asks Envoy to reopen its log files (admin `/reopen_logs`). Envoy writes a line in
//! one piece and moves its whole buffer to the file it has open before it reopens, so a line is
//! never cut at a rotation: it lands whole in the old file or whole in the new one.
//!
//! The bound: rotated files are deleted, oldest first, while the files together plus a margin
//! (twice what the log grew in the last check, so what comes before the next check) would exceed
//! `max_bytes`. A draining parent epoch (hot restart) keeps writing to the file it had open: its
//! bytes are counted where they land.
//!
//! A full disk never reaches Envoy's data path: Envoy's writes fail on its flush thread and are
//! counted (`filesystem.write_failed`), requests are served all the same.

use super::Supervisor;
use crate::envoy::admin::Admin;
use crate::metrics::SupervisorMetrics;
use crate::render::xds;
use crate::settings::{AccessLogSettings, Settings};
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Creates the access log's directory (0750) if it is missing.
pub(super) fn prepare_dir(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let Some(dir) = path.parent() else {
        return Ok(());
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
        .with_context(|| format!("access_log.path: cannot create {}", dir.display()))
}

/// The top-level sections of the settings file that differ between `a` and `b`.
fn changed_sections(a: &Settings, b: &Settings) -> Vec<String> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(a), serde_json::to_value(b))
    else {
        return Vec::new();
    };
    a.keys()
        .chain(b.keys().filter(|k| !a.contains_key(*k)))
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

impl Supervisor {
    /// SIGHUP: the settings file, read again. The access log's settings take effect at once,
    /// without a new epoch: the rotation task follows them, and the runtime layer the listeners'
    /// filters read (mode, sampling) is rewritten and confirmed from Envoy's stats. Everything
    /// else is read at start only: it is named in the log, and nothing of it changes.
    pub(super) async fn reload(&mut self, new: anyhow::Result<Settings>) {
        let new = match new {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("settings not reloaded, the running ones stay: {e:#}");
                return;
            }
        };
        let mut others = changed_sections(&self.settings, &new);
        others.retain(|k| k != "access_log");
        if !others.is_empty() {
            tracing::warn!(
                "settings changed that are read at start only (restart the service that reads them): {}",
                others.join(", ")
            );
        }
        let old = &self.settings.access_log;
        if new.access_log == *old {
            tracing::info!("settings reloaded; access log settings unchanged");
            return;
        }
        if new.access_log.path != old.path {
            if let Err(e) = prepare_dir(&new.access_log.path) {
                tracing::error!("settings not reloaded, the running ones stay: {e:#}");
                return;
            }
            tracing::warn!(
                "access_log.path changed: rotation follows {} now; Envoy writes there once the agent renders with the new settings (restart the agent)",
                new.access_log.path.display()
            );
        }
        self.settings.access_log = new.access_log.clone();
        self.access_log_tx.send_replace(new.access_log);
        match self.put_runtime().await {
            Ok(Some(version)) => tracing::info!(
                version,
                mode = ?self.settings.access_log.mode,
                sample_percent = self.settings.access_log.sample_percent,
                "access log settings applied"
            ),
            Ok(None) => tracing::info!("access log settings kept for the next Envoy start"),
            Err(e) => tracing::error!("access log settings not confirmed by Envoy: {e}"),
        }
    }

    /// Rewrites the live epoch's runtime layer from the settings and waits until Envoy says it
    /// holds it (`runtime.version_text`). `None` when no epoch runs (the next one starts with it).
    async fn put_runtime(&mut self) -> Result<Option<String>, String> {
        let (Some(files), Some(epoch)) = (&mut self.files, &self.live) else {
            return Ok(None);
        };
        let file = xds::runtime_file(&self.settings.access_log, &files.xds.runtime);
        files.put_always(&file)?;
        let watch = epoch.watch();
        let deadline =
            Instant::now() + Duration::from_secs(self.settings.supervisor.confirm_timeout_s.into());
        loop {
            match self.admin.xds_stats().await {
                Ok(s) if s.version("runtime") == Some(file.version.as_str()) => {
                    return Ok(Some(file.version))
                }
                Ok(s) if s.number("runtime.update_rejected") > 0 => {
                    return Err("Envoy rejected the runtime layer".into())
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "runtime version {} not seen within {} s",
                    file.version, self.settings.supervisor.confirm_timeout_s
                ));
            }
            super::confirm::pause(&watch, Duration::from_millis(25)).await?;
        }
    }
}

/// How often the files are measured. At 20,000 requests a second the log grows about 2 MB
/// between two checks, a small share of any bound the settings allow (at least 4 MiB).
pub(super) const CHECK: Duration = Duration::from_millis(250);
/// The least margin kept under the bound: Envoy's write buffer flushes at 64 KiB.
const MIN_MARGIN: u64 = 256 << 10;

/// What one check decides, from the sizes of the files: whether to rotate, and how many rotated
/// files (the newest) may stay afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Plan {
    pub rotate: bool,
    pub keep: usize,
}

/// `current` is the size of the file Envoy writes, `rotated[0]` that of `<path>.1` (the newest),
/// and so on; `margin` is how much the log may grow before the next check.
pub(super) fn plan(current: u64, rotated: &[u64], s: &AccessLogSettings, margin: u64) -> Plan {
    let keep_files = s.keep_files as usize;
    // Each file gets an equal share, so that a full set of files stays within the bound.
    let segment = s.max_bytes / (keep_files as u64 + 1);
    let rotate = current > 0 && current + margin >= segment;
    let (current_after, files): (u64, Vec<u64>) = if rotate {
        let mut f = vec![current];
        f.extend_from_slice(rotated);
        (0, f)
    } else {
        (current, rotated.to_vec())
    };
    let mut keep = files.len().min(keep_files);
    while keep > 0 && current_after + files[..keep].iter().sum::<u64>() + margin > s.max_bytes {
        keep -= 1;
    }
    Plan { rotate, keep }
}

/// `<path>.<n>`.
fn rotated_path(path: &Path, n: usize) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(format!(".{n}"));
    PathBuf::from(p)
}

/// Sizes of `<path>.1`, `<path>.2`, ... up to the first one missing (at most `limit`).
fn rotated_sizes(path: &Path, limit: usize) -> Vec<u64> {
    (1..=limit)
        .map_while(|n| {
            std::fs::metadata(rotated_path(path, n))
                .ok()
                .map(|m| m.len())
        })
        .collect()
}

/// Highest rotated number looked for: files beyond `keep_files` (after it was lowered) are
/// deleted up to here.
const MAX_ROTATED: usize = 100;

/// The rotation task, until the supervisor stops. `settings` carries live changes (SIGHUP).
pub(super) async fn run(
    mut settings: watch::Receiver<AccessLogSettings>,
    admin: Admin,
    metrics: Arc<SupervisorMetrics>,
) {
    let mut tick = tokio::time::interval(CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_total: Option<u64> = None;
    let mut reopen_pending = false;
    loop {
        tick.tick().await;
        let s = settings.borrow_and_update().clone();
        let path = &s.path;
        // Only a regular file is rotated (a path such as /dev/null is left alone).
        let current = match std::fs::metadata(path) {
            Ok(m) if m.is_file() => m.len(),
            Ok(_) => continue,
            Err(_) => 0,
        };
        let rotated = rotated_sizes(path, MAX_ROTATED);
        let total = current + rotated.iter().sum::<u64>();
        let grew = last_total.map_or(0, |t| total.saturating_sub(t));
        let margin = (2 * grew).max(MIN_MARGIN);
        let p = plan(current, &rotated, &s, margin);
        if p.rotate {
            match rotate(path, rotated.len().min(s.keep_files as usize)) {
                Ok(()) => {
                    metrics.access_log_rotations.inc();
                    reopen_pending = true;
                }
                Err(e) => tracing::warn!("access log: cannot rotate {}: {e}", path.display()),
            }
        }
        // Files beyond what the plan keeps go, oldest first (and any left beyond keep_files).
        let present = rotated_sizes(path, MAX_ROTATED).len();
        for n in (p.keep + 1..=present).rev() {
            let f = rotated_path(path, n);
            if let Err(e) = std::fs::remove_file(&f) {
                tracing::warn!("access log: cannot delete {}: {e}", f.display());
            }
        }
        if reopen_pending {
            // Envoy may be down (it opens the path afresh when it starts) or busy: retried at
            // every check until it answers.
            match admin.post("/reopen_logs").await {
                Ok(()) => reopen_pending = false,
                Err(e) => {
                    metrics.access_log_reopen_failures.inc();
                    tracing::debug!("access log: reopen: {e:#}");
                }
            }
        }
        let now_current = std::fs::metadata(path).map_or(0, |m| m.len());
        let now_rotated = rotated_sizes(path, MAX_ROTATED);
        let now_total = now_current + now_rotated.iter().sum::<u64>();
        metrics.access_log_bytes.set(now_total as i64);
        metrics
            .access_log_files
            .set((now_rotated.len() + usize::from(path.exists())) as i64);
        if let Some(dir) = path.parent() {
            if let Ok(v) = nix::sys::statvfs::statvfs(dir) {
                let block = v.fragment_size();
                metrics
                    .access_log_disk_free
                    .set((v.blocks_available() * block) as i64);
                metrics
                    .access_log_disk_size
                    .set((v.blocks() * block) as i64);
            }
        }
        last_total = Some(now_total);
    }
}

/// Shifts `<path>.n` to `<path>.n+1` for the `present` newest ones and the current file to
/// `<path>.1`. (The one that would become `.keep_files + 1` is deleted by the caller's bound.)
fn rotate(path: &Path, present: usize) -> std::io::Result<()> {
    for n in (1..=present).rev() {
        std::fs::rename(rotated_path(path, n), rotated_path(path, n + 1))?;
    }
    std::fs::rename(path, rotated_path(path, 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_bytes: u64, keep_files: u32) -> AccessLogSettings {
        AccessLogSettings {
            max_bytes,
            keep_files,
            ..AccessLogSettings::default()
        }
    }

    #[test]
    fn rotates_at_an_equal_share_of_the_bound() {
        let s = settings(100, 4); // a share of 20
        let p = plan(10, &[], &s, 0);
        assert_eq!(
            p,
            Plan {
                rotate: false,
                keep: 0
            }
        );
        let p = plan(20, &[20, 20], &s, 0);
        assert_eq!(
            p,
            Plan {
                rotate: true,
                keep: 3
            }
        );
        // The margin brings the rotation forward.
        assert!(plan(15, &[], &s, 5).rotate);
        assert!(!plan(15, &[], &s, 4).rotate);
        // An empty file is never rotated, whatever the margin.
        assert!(!plan(0, &[], &s, 1000).rotate);
    }

    #[test]
    fn keeps_at_most_keep_files_and_deletes_the_oldest_to_hold_the_bound() {
        let s = settings(100, 2);
        // Four rotated files on disk (keep_files was lowered): only two stay.
        assert_eq!(plan(1, &[10, 10, 10, 10], &s, 0).keep, 2);
        // Rotating a full set: the oldest goes.
        assert_eq!(
            plan(33, &[33, 33], &s, 0),
            Plan {
                rotate: true,
                keep: 2
            }
        );
        // Files grown past their share (a burst between checks): the oldest go until the
        // total and the margin fit.
        assert_eq!(
            plan(30, &[40, 40], &s, 0),
            Plan {
                rotate: false,
                keep: 1
            }
        );
        assert_eq!(
            plan(10, &[45, 45], &s, 2),
            Plan {
                rotate: false,
                keep: 1
            }
        );
        // A margin that brings the rotation forward counts against what stays.
        assert_eq!(
            plan(30, &[40, 40], &s, 31),
            Plan {
                rotate: true,
                keep: 1
            }
        );
        assert_eq!(
            plan(30, &[40, 40], &s, 71),
            Plan {
                rotate: true,
                keep: 0
            }
        );
    }

    #[test]
    fn the_plan_never_leaves_more_than_the_bound_when_growth_stays_within_the_margin() {
        // Simulated: a log growing `rate` bytes per check, checked and rotated by the plan; the
        // margin is twice the last growth, as in `run`. The total stays within the bound at
        // every check and just before the next one.
        for (max, keep, rate) in [(4u64 << 20, 1u32, 900_000u64), (64 << 20, 4, 2 << 20)] {
            let s = settings(max, keep);
            let (mut current, mut rotated): (u64, Vec<u64>) = (0, Vec::new());
            let mut rotations = 0;
            for _ in 0..1000 {
                current += rate;
                let total = current + rotated.iter().sum::<u64>();
                assert!(total <= max, "{total} > {max} (max {max}, keep {keep})");
                let p = plan(current, &rotated, &s, 2 * rate);
                if p.rotate {
                    rotated.insert(0, current);
                    current = 0;
                    rotations += 1;
                }
                rotated.truncate(p.keep);
            }
            assert!(rotations > 10, "{rotations}");
        }
    }

    #[test]
    fn rotation_shifts_files_and_keeps_their_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        std::fs::write(&path, "c\n").unwrap();
        std::fs::write(rotated_path(&path, 1), "b\n").unwrap();
        std::fs::write(rotated_path(&path, 2), "a\n").unwrap();
        rotate(&path, 2).unwrap();
        assert!(!path.exists());
        let read = |n| std::fs::read_to_string(rotated_path(&path, n)).unwrap();
        assert_eq!(
            (read(1), read(2), read(3)),
            ("c\n".into(), "b\n".into(), "a\n".into())
        );
        assert_eq!(rotated_sizes(&path, 10), vec![2, 2, 2]);
    }
}
