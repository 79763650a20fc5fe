//! The access log's files as a reader sees them: the current one and the rotated ones.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// `<path>.<n>`.
pub fn rotated(path: &Path, n: usize) -> PathBuf {
    PathBuf::from(format!("{}.{n}", path.display()))
}

/// The current file and the rotated ones (up to `.10`), newest first.
pub fn files(path: &Path) -> impl Iterator<Item = PathBuf> + '_ {
    std::iter::once(path.to_path_buf()).chain((1..=10).map(|n| rotated(path, n)))
}

/// The files' sizes together, each file counted once even if a rotation renames it while they
/// are measured (by inode), and the inodes seen.
pub fn on_disk(path: &Path) -> (u64, HashSet<u64>) {
    use std::os::unix::fs::MetadataExt;
    let mut seen = HashSet::new();
    let mut total = 0;
    for p in files(path) {
        if let Ok(m) = std::fs::metadata(&p) {
            if seen.insert(m.ino()) {
                total += m.len();
            }
        }
    }
    (total, seen)
}
