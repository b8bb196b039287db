//! Test hooks (compiled in tests only) that make the write-ahead file's frame writes and syncs,
//! its zeros at open, and the checkpoint transactions fail, so that `tests_wal_faults.rs` can
//! check what a user's data becomes after each failure.
//!
//! Each [`Fault`] counts down: armed with `n`, the `n`-th operation it guards from then on
//! fails (once). Release builds have none of this: every use is `#[cfg(test)]`.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// One operation that fails once, the `n`-th time it runs after [`Fault::fail_nth`].
#[derive(Debug, Default)]
pub(crate) struct Fault(AtomicU32);

impl Fault {
    /// The `n`-th operation from now fails (1: the next one; 0: none).
    pub(crate) fn fail_nth(&self, n: u32) {
        self.0.store(n, Ordering::SeqCst);
    }

    /// Counts one operation: whether it is the one that fails.
    pub(crate) fn strikes(&self) -> bool {
        let previous =
            self.0.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        previous == Ok(1)
    }
}

/// The faults of one environment (on its `Shared`, and its write-ahead file's).
#[derive(Debug, Default)]
pub(crate) struct Faults {
    /// A frame's write: half the frame reaches the file, then `ENOSPC` (a write cut short by a
    /// full disk).
    pub(crate) frame_write: Fault,
    /// A frame's `fdatasync`, after the whole frame was written: `EIO`.
    pub(crate) frame_sync: Fault,
    /// The commit of an LMDB transaction that checkpoints (moves the pending entries into LMDB
    /// and the generation on): `EIO`, nothing committed.
    pub(crate) checkpoint: Fault,
    /// The zeros written at open to bring the file to its size: one slice is written, then
    /// `EFBIG` (a file size limit).
    pub(crate) zeros: Fault,
}

thread_local! {
    /// The faults of the next environment opened by this thread (see [`arm_next_open`]).
    static NEXT_OPEN: RefCell<Option<Arc<Faults>>> = const { RefCell::new(None) };
}

/// The next environment opened by this thread gets `faults` (armed before its open: the zeros
/// at open and the checkpoint of recovered entries at open can then fail).
pub(crate) fn arm_next_open(faults: Arc<Faults>) {
    NEXT_OPEN.with(|next| *next.borrow_mut() = Some(faults));
}

/// The faults armed for the environment this thread is opening, if any.
pub(crate) fn opening() -> Option<Arc<Faults>> {
    NEXT_OPEN.with(|next| next.borrow().clone())
}

/// Takes the faults armed for the environment this thread is opening (new ones, none armed,
/// if there are none).
pub(crate) fn take_opening() -> Arc<Faults> {
    NEXT_OPEN.with(|next| next.borrow_mut().take()).unwrap_or_default()
}

/// `EIO` (Linux): an I/O error.
pub(crate) const EIO: i32 = 5;
/// `EFBIG` (Linux): the file size limit.
pub(crate) const EFBIG: i32 = 27;
/// `ENOSPC` (Linux): no space left on the device.
pub(crate) const ENOSPC: i32 = 28;
