//! Keeping the data file written ahead of LMDB's last page, so that a commit overwrites blocks
//! the file system has already allocated instead of growing the file.
//!
//! LMDB writes the pages of a commit with `pwrite` and then calls `fdatasync`. A commit that
//! appends entries needs new pages; once LMDB's free list is used up (no purge freed pages)
//! they lie past the end of `data.mdb`, so the commit grows the file and its `fdatasync` must
//! also commit the file system's journal (the new size and the block allocation): on ext4 that
//! made every commit of a 60-entry group take twice the `fdatasync` time of a single-entry one,
//! which overwrites pages freed two transactions earlier. Pre-allocating with `fallocate` does
//! not help (writing into an unwritten extent converts it, which is journaled again), so the
//! file is extended with zeros, written and synced, in steps of half the headroom (MiBs): one
//! journal commit per step instead of one per commit.
//!
//! # Soundness
//!
//! Only the writer thread extends the file, and only between transactions (no write
//! transaction is open then), and only past the current end of the file: LMDB never reads a
//! page beyond the last page of the latest commit, and pages it wrote itself (even those of an
//! aborted transaction) lie below the end of the file, which is re-read before each step. The
//! zeros are therefore bytes no transaction or reader can reach until LMDB writes the page
//! itself. LMDB reads the file size only when copying an environment, and then copies at most
//! up to its last page. A larger file changes nothing else: a crash leaves zeros after the last
//! page, which a reopened environment ignores like any unused space.
//!
//! Extending is an optimisation: if it fails (disk full, file size limit), the store logs it
//! once and stops extending; the commit then grows the file itself, as LMDB always does, and
//! reports a real error if there is one.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::Path;

/// The data file's name in a store directory.
pub(crate) const DATA_FILE: &str = "data.mdb";
/// Zeros are written in slices of this size.
const ZERO_SLICE: usize = 1 << 20;
/// Room kept for the B-tree pages a commit rewrites besides the new entries (branch pages, the
/// free list, the metadata), in pages.
const TREE_PAGES: u64 = 64;
/// How much larger than the entries a group's pages may be (node headers, keys, page slack).
const ENCODING_OVERHEAD_PERCENT: u64 = 50;

/// The data file, kept written ahead of LMDB's use. Owned by the writer thread.
#[derive(Debug)]
pub(crate) struct Headroom {
    /// `None` when turned off, or after extending failed once.
    file: Option<File>,
    /// The headroom to keep, in bytes: the file is extended by about half of it at a time.
    bytes: u64,
}

impl Headroom {
    /// Opens the data file of the store in `dir` to extend it, keeping about `bytes` written
    /// past LMDB's last page (0 turns extending off).
    pub(crate) fn open(dir: &Path, bytes: u64) -> io::Result<Headroom> {
        let file = if bytes == 0 {
            None
        } else {
            Some(OpenOptions::new().write(true).open(dir.join(DATA_FILE))?)
        };
        Ok(Headroom { file, bytes })
    }

    /// Makes sure the file extends past `used` bytes (LMDB's pages up to the last committed
    /// one) plus what a commit of `entry_bytes` of entries with pages of `page_size` bytes may
    /// add, plus half the headroom. When it does not, extends it (zeros, then a sync) to the
    /// whole headroom past that. Returns the bytes of zeros written. Call only between
    /// transactions, on the thread that writes them.
    pub(crate) fn ensure(&mut self, used: u64, entry_bytes: u64, page_size: u64) -> u64 {
        let Some(file) = self.file.as_mut() else { return 0 };
        let upcoming = entry_bytes.saturating_mul(100 + ENCODING_OVERHEAD_PERCENT) / 100
            + TREE_PAGES.saturating_mul(page_size);
        let needed = used.saturating_add(upcoming).saturating_add(self.bytes / 2);
        let extended = file.metadata().and_then(|meta| {
            if meta.len() >= needed {
                return Ok(None);
            }
            let target = used.saturating_add(upcoming).saturating_add(self.bytes);
            let target = target.next_multiple_of(page_size.max(1));
            extend_with_zeros(file, meta.len(), target).map(|()| Some((meta.len(), target)))
        });
        match extended {
            Ok(None) => 0,
            Ok(Some((from, to))) => {
                tracing::debug!(from, to, "raft-lmdb data file extended ahead of use");
                to - from
            }
            Err(error) => {
                tracing::warn!(
                    %error,
                    "raft-lmdb could not extend its data file ahead of use; commits will grow it \
                     (slower syncs) from now on"
                );
                self.file = None;
                0
            }
        }
    }
}

/// Writes zeros from `from` to `to` and syncs them (with the new file size).
fn extend_with_zeros(file: &mut File, from: u64, to: u64) -> io::Result<()> {
    let zeros = vec![0u8; ZERO_SLICE];
    file.seek(SeekFrom::Start(from))?;
    let mut at = from;
    while at < to {
        let len = usize::try_from(to - at).map_or(ZERO_SLICE, |left| left.min(ZERO_SLICE));
        file.write_all(&zeros[..len])?;
        at += len as u64;
    }
    file.sync_data()
}
