//! The bytes a thread has written, from Linux's `/proc/<pid>/task/<tid>/io`: how the writer
//! thread's commits are measured (`DiskStats::written_bytes`). Elsewhere, or when `/proc` is not
//! mounted, nothing is known.

use std::fs;
use std::path::{Path, PathBuf};

/// The I/O counters file of the calling thread, if `/proc` has one.
pub(crate) fn current_thread_io() -> Option<PathBuf> {
    // `/proc/thread-self` links to `<pid>/task/<tid>`; the link's target stays valid from
    // other threads, unlike `thread-self` itself.
    let target = fs::read_link("/proc/thread-self").ok()?;
    let path = Path::new("/proc").join(target).join("io");
    path.is_file().then_some(path)
}

/// The bytes the thread of `io` (a file from [`current_thread_io`]) has passed to write system
/// calls (`wchar`); `None` if the file cannot be read (the thread has ended).
pub(crate) fn written_bytes(io: &Path) -> Option<u64> {
    let text = fs::read_to_string(io).ok()?;
    text.lines().find_map(|line| line.strip_prefix("wchar:")?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]

    use super::*;

    #[test]
    fn counts_what_this_thread_writes() {
        let Some(io) = current_thread_io() else { return };
        let dir = tempfile::tempdir().expect("temp dir");
        let before = written_bytes(&io).expect("own counters");
        fs::write(dir.path().join("f"), [7u8; 10_000]).expect("write");
        let after = written_bytes(&io).expect("own counters");
        assert!(after - before >= 10_000, "{before} -> {after}");
    }
}
