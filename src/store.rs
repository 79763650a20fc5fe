//! Writes rendered configs and their certificate files to disk: mode 0600, atomically (temporary
//! file, fsync, rename, fsync of the directory), so that Envoy never reads a half-written file.
//! Files rebuilt at every start (Envoy's xDS files) skip the fsyncs: see [`Durability`].
//!
//! [`ConfigStore`] keeps every applied config in a directory named by its hash
//! (`<config_dir>/configs/<hash>/envoy.json` and `certs/`), a `current` symlink switched in one
//! rename, and prunes all but the known-good ones the supervisor names.

use crate::render::Rendered;
use crate::spec::ConfigHash;
use anyhow::Context;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Writes `contents` to `path` with mode 0600, replacing any file there in one step.
pub fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    write_private_via(parent_dir(path)?, path, contents, Durability::Synced)
}

/// The directory `path` is in: `.` for a bare file name (whose parent is the empty path).
fn parent_dir(path: &Path) -> anyhow::Result<&Path> {
    match path.parent() {
        Some(p) if p.as_os_str().is_empty() => Ok(Path::new(".")),
        Some(p) => Ok(p),
        None => anyhow::bail!("{} has no parent directory", path.display()),
    }
}

/// Whether a write must survive a power loss once it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// File and directory are fsynced: state and stored configs.
    Synced,
    /// Only atomic (rename): files rebuilt from synced state whenever they are needed again,
    /// such as the xDS files every Envoy epoch starts with afresh. An fsync costs 5–100 ms on
    /// a busy disk, which is most of a small live apply.
    Atomic,
}

/// Like [`write_private`], with the temporary file in `tmp_dir` (same filesystem): for a
/// directory a process watches, where a temporary file must never appear (Envoy's xDS files).
pub fn write_private_via(
    tmp_dir: &Path,
    path: &Path,
    contents: &[u8],
    durability: Durability,
) -> anyhow::Result<()> {
    let synced = durability == Durability::Synced;
    let dir = parent_dir(path)?;
    create_private_dir(dir)?;
    create_private_dir(tmp_dir)?;
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = tmp_dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(contents)
            .and_then(|_| if synced { f.sync_all() } else { Ok(()) })
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        fs::rename(&tmp, path)
            .with_context(|| format!("cannot move {} into place", path.display()))?;
        if !synced {
            return Ok(());
        }
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot sync directory {}", dir.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates a directory (and its parents) with mode 0700 when missing.
///
/// The mode is set again after creating: the process umask masks the one asked for, and
/// keepalived runs its scripts (`ha-notify`) with umask 0177, which made a directory 0600 that
/// not even its owner could create files in (found by the image test).
pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create directory {}", dir.display()))?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot make {} private", dir.display()))
}

/// Writes the certificate files first, then the config that names them.
pub fn write_rendered(rendered: &Rendered, config_path: &Path) -> anyhow::Result<()> {
    for f in &rendered.files {
        write_private(&f.path, f.contents.as_bytes())?;
    }
    write_private(config_path, rendered.config.as_bytes())
}

/// Rendered configs on disk, one directory per config hash.
#[derive(Debug, Clone)]
pub struct ConfigStore {
    root: PathBuf,
}

impl ConfigStore {
    pub fn new(config_dir: &Path) -> ConfigStore {
        ConfigStore {
            root: config_dir.to_path_buf(),
        }
    }

    pub fn dir(&self, hash: &ConfigHash) -> PathBuf {
        self.root.join("configs").join(hash.as_str())
    }

    pub fn config_path(&self, hash: &ConfigHash) -> PathBuf {
        self.dir(hash).join("envoy.json")
    }

    /// Where a config's certificates go: render with this as `envoy.cert_dir`.
    pub fn cert_dir(&self, hash: &ConfigHash) -> PathBuf {
        self.dir(hash).join("certs")
    }

    /// Writes a rendered config under its hash. Every file it names must sit in the hash's
    /// certificate directory. Returns the config's path.
    pub fn write(&self, hash: &ConfigHash, rendered: &Rendered) -> anyhow::Result<PathBuf> {
        self.check(hash, rendered)?;
        let path = self.config_path(hash);
        write_rendered(rendered, &path)?;
        Ok(path)
    }

    /// What [`ConfigStore::write`] checks before it writes anything: the hash names a directory
    /// of the store and every file sits in that directory's certificate directory.
    pub fn check(&self, hash: &ConfigHash, rendered: &Rendered) -> anyhow::Result<()> {
        let certs = self.cert_dir(hash);
        for f in &rendered.files {
            let inside = f.path.parent() == Some(certs.as_path())
                && f.path
                    .file_name()
                    .is_some_and(|n| !n.to_string_lossy().starts_with('.'));
            anyhow::ensure!(
                inside,
                "{} is outside {}; render with envoy.cert_dir set to the store's certificate directory",
                f.path.display(),
                certs.display()
            );
        }
        Ok(())
    }

    /// The hash `current` points at.
    pub fn current(&self) -> Option<ConfigHash> {
        let target = fs::read_link(self.root.join("current")).ok()?;
        target.file_name()?.to_str()?.parse().ok()
    }

    /// Points `current` at a stored config, in one rename.
    pub fn set_current(&self, hash: &ConfigHash) -> anyhow::Result<()> {
        let link = self.root.join("current");
        let tmp = self
            .root
            .join(format!(".current.tmp-{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(Path::new("configs").join(hash.as_str()), &tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        fs::rename(&tmp, &link).with_context(|| format!("cannot switch {}", link.display()))?;
        File::open(&self.root)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot sync directory {}", self.root.display()))
    }

    /// Removes every stored config whose hash is not in `keep`.
    pub fn prune(&self, keep: &[ConfigHash]) -> anyhow::Result<()> {
        let configs = self.root.join("configs");
        let Ok(entries) = fs::read_dir(&configs) else {
            return Ok(());
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().parse::<ConfigHash>();
            if name.is_ok_and(|h| !keep.contains(&h)) {
                fs::remove_dir_all(e.path())
                    .with_context(|| format!("cannot remove old config {}", e.path().display()))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn files_are_private_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/envoy.json");
        write_private(&p, b"one").unwrap();
        write_private(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(p.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        let leftovers: Vec<_> = fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
    }

    #[test]
    fn store_switches_current_and_prunes() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConfigStore::new(dir.path());
        let (a, b): (ConfigHash, ConfigHash) = (
            "a".repeat(64).parse().unwrap(),
            "b".repeat(64).parse().unwrap(),
        );
        for h in [&a, &b] {
            let rendered = Rendered {
                config: format!("{{\"h\": \"{h}\"}}"),
                files: vec![crate::render::CertFile {
                    path: store.cert_dir(h).join("c-1.crt"),
                    contents: "pem".into(),
                }],
            };
            store.write(h, &rendered).unwrap();
        }
        assert_eq!(store.current(), None);
        store.set_current(&a).unwrap();
        assert_eq!(store.current(), Some(a.clone()));
        store.set_current(&b).unwrap();
        assert_eq!(store.current(), Some(b.clone()));
        store.prune(std::slice::from_ref(&b)).unwrap();
        assert!(!store.dir(&a).exists());
        assert!(store.config_path(&b).exists());

        let outside = Rendered {
            config: "{}".into(),
            files: vec![crate::render::CertFile {
                path: dir.path().join("escape.key"),
                contents: "x".into(),
            }],
        };
        assert!(store.write(&a, &outside).is_err());
        // A hash that would name a path outside the store cannot even be made.
        assert!("../x".parse::<ConfigHash>().is_err());
    }
}
