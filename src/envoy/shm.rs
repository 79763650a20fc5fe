//! Envoy's hot-restart shared memory (`/dev/shm/envoy_shared_memory_<base_id * 10>`).
//!
//! What we found with Envoy 1.40 (see docs/internals.md, "Hot restart, as measured"): a child
//! epoch sets an INITIALIZING flag here when it starts and clears it once it is up. A child that
//! dies first leaves the flag set, and every later hot restart then refuses with "previous envoy
//! process is still initializing". The supervisor is that child's parent: once it has reaped the
//! child it *knows* the flag is stale and clears it. The layout is checked against what
//! `envoy --hot-restart-version` declares (`<version>.<size of the shared struct>`) before any byte
//! is written; on a mismatch nothing is touched.

use anyhow::{bail, Context};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const INITIALIZING: u64 = 0x1;

pub fn path(base_id: u32) -> PathBuf {
    PathBuf::from(format!(
        "/dev/shm/envoy_shared_memory_{}",
        u64::from(base_id) * 10
    ))
}

/// Removes the shared memory a dead Envoy left behind. Only call this when no Envoy of this
/// base id is running.
pub fn remove_stale(base_id: u32) -> anyhow::Result<bool> {
    let p = path(base_id);
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot remove stale {}", p.display())),
    }
}

/// `11.104` → (11, 104): the hot-restart protocol version and the size of the shared struct.
pub fn parse_version(v: &str) -> Option<(u64, u64)> {
    let (a, b) = v.trim().split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Clears a stale INITIALIZING flag. Returns whether it was set.
pub fn clear_initializing(base_id: u32, hot_restart_version: &str) -> anyhow::Result<bool> {
    clear_initializing_at(&path(base_id), hot_restart_version)
}

pub fn clear_initializing_at(p: &Path, hot_restart_version: &str) -> anyhow::Result<bool> {
    let Some((version, size)) = parse_version(hot_restart_version) else {
        bail!("unexpected hot restart version {hot_restart_version:?}");
    };
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .with_context(|| format!("cannot open {}", p.display()))?;
    let len = f.metadata()?.len();
    let mut head = [0u8; 16];
    f.read_exact_at(&mut head, 0)?;
    let stored_size = u64::from_ne_bytes(head[..8].try_into()?);
    let stored_version = u64::from_ne_bytes(head[8..].try_into()?);
    if len != size || stored_size != size || stored_version != version || size < 24 {
        bail!(
            "{} does not have the layout of hot restart version {hot_restart_version} (size {len}, header {stored_size}/{stored_version}); not touching it",
            p.display()
        );
    }
    // The flags word is the struct's last field.
    let mut flags = [0u8; 8];
    f.read_exact_at(&mut flags, size - 8)?;
    let value = u64::from_ne_bytes(flags);
    if value & INITIALIZING == 0 {
        return Ok(false);
    }
    f.write_all_at(&(value & !INITIALIZING).to_ne_bytes(), size - 8)?;
    f.sync_all()?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(words: &[u64]) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        std::fs::write(f.path(), bytes).unwrap();
        f
    }

    #[test]
    fn clears_only_a_set_flag_in_the_declared_layout() {
        let mut words = vec![0u64; 13];
        words[0] = 104;
        words[1] = 11;
        words[12] = 0x3;
        let f = file(&words);
        assert!(clear_initializing_at(f.path(), "11.104").unwrap());
        let after = std::fs::read(f.path()).unwrap();
        assert_eq!(u64::from_ne_bytes(after[96..104].try_into().unwrap()), 0x2);
        assert!(
            !clear_initializing_at(f.path(), "11.104").unwrap(),
            "already clear"
        );
    }

    #[test]
    fn refuses_an_unknown_layout() {
        let mut words = vec![0u64; 13];
        words[0] = 104;
        words[1] = 12;
        words[12] = 1;
        let f = file(&words);
        assert!(clear_initializing_at(f.path(), "11.104").is_err());
        assert!(clear_initializing_at(f.path(), "12.112").is_err());
        assert_eq!(std::fs::read(f.path()).unwrap()[96], 1, "untouched");
    }
}
