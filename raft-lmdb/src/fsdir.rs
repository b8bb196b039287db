//! Durable directory operations: creating a directory so that its entry survives a power loss,
//! and syncing a directory after entries in it were created, renamed or removed.
//!
//! A new file or directory is durable only once the directory holding its entry is synced
//! (`fsync` of the directory): on a file system that does not order metadata (ext4 with
//! `data=writeback`, ext2, some network and FUSE file systems) a power loss right after creating
//! a store can otherwise lose the whole store, even though every commit inside it was synced.

use std::fs::{self, File};
use std::io;
use std::path::Path;

/// Creates `dir` and its missing ancestors like [`fs::create_dir_all`], syncing the parent of
/// each directory it creates once the directory exists. If `dir` exists already, its parent
/// is synced all the same: an earlier run may have created it and been killed before syncing
/// its entry (ancestors such a run created above `dir`'s parent are not known, and not synced).
pub(crate) fn create_dir_durably(dir: &Path) -> io::Result<()> {
    let missing: Vec<&Path> =
        dir.ancestors().take_while(|d| !d.as_os_str().is_empty() && !d.exists()).collect();
    if missing.is_empty() {
        return sync_dir(parent_of(dir));
    }
    for created in missing.iter().rev() {
        match fs::create_dir(created) {
            Ok(()) => {}
            // Created by someone else meanwhile: its entry may not be synced yet; sync below.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && created.is_dir() => {}
            Err(e) => return Err(e),
        }
        sync_dir(parent_of(created))?;
    }
    Ok(())
}

/// Syncs the directory `dir` itself: its entries (created, renamed or removed files) are durable
/// when this returns.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()?;
    #[cfg(test)]
    synced::record(dir);
    Ok(())
}

/// The directory holding `path`'s entry (`.` for a relative path of one component).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Test hook: every directory synced by this process, so that tests can check which directory
/// entries were made durable.
#[cfg(test)]
pub(crate) mod synced {
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    static SYNCED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

    pub(super) fn record(dir: &Path) {
        let canonical = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        SYNCED.lock().unwrap_or_else(|p| p.into_inner()).push(canonical);
    }

    /// The canonical paths of the directories synced so that lie under `root` (or are `root`),
    /// in the order they were synced.
    pub(crate) fn under(root: &Path) -> Vec<PathBuf> {
        let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
        let all = SYNCED.lock().unwrap_or_else(|p| p.into_inner());
        all.iter().filter(|d| d.starts_with(&root)).cloned().collect()
    }
}
