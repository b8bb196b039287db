//! Tuning knobs of an [`crate::LmdbLogStore`] or an [`crate::LmdbEnvironment`]. None of them
//! can weaken durability.

/// The largest write-ahead file ([`LmdbOptions::with_wal_bytes`] clamps to it): 1 GiB. It also
/// bounds the one frame that recovery holds in memory at a time.
pub const MAX_WAL_BYTES: u64 = 1 << 30;

/// Options for [`crate::LmdbLogStore::open_dir_with`] and [`crate::LmdbEnvironment::open_with`]. The defaults suit a Raft node; change them
/// for tests (a tiny map exercises map growth) or benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LmdbOptions {
    pub(crate) initial_map_size: usize,
    pub(crate) queue_capacity: usize,
    pub(crate) group_queue_capacity: usize,
    pub(crate) max_group_requests: usize,
    pub(crate) max_group_bytes: u64,
    pub(crate) file_headroom_bytes: u64,
    pub(crate) journal_move_records: usize,
    pub(crate) journal_move_bytes: u64,
    pub(crate) wal_bytes: u64,
}

impl Default for LmdbOptions {
    fn default() -> Self {
        Self {
            initial_map_size: 1 << 30,
            queue_capacity: 4096,
            group_queue_capacity: 1024,
            max_group_requests: 4096,
            max_group_bytes: 64 << 20,
            file_headroom_bytes: 8 << 20,
            journal_move_records: 4096,
            journal_move_bytes: 4 << 20,
            wal_bytes: 8 << 20,
        }
    }
}

impl LmdbOptions {
    /// The default options: a 1 GiB initial map (address space only: the data file grows with
    /// the data), a queue of 4096 write requests (at most 1024 of one group in an
    /// [`crate::LmdbEnvironment`]), transactions of at most 4096 requests or 64 MiB, 8 MiB
    /// of file headroom, an environment's journal moved once it holds 4096 entries or 4 MiB, and an
    /// 8 MiB write-ahead file.
    pub fn new() -> Self {
        Self::default()
    }

    /// The size of the memory map to start with (rounded up to a whole MiB, and never below
    /// twice the current data file). The map grows by itself whenever LMDB reports it full, so
    /// this only saves the cost of growing (closing and reopening the environment).
    pub fn with_initial_map_size(mut self, bytes: usize) -> Self {
        self.initial_map_size = bytes;
        self
    }

    /// How many write requests may wait for the writer thread (at least 1). Once the queue is
    /// full, `write` and `purge` wait (asynchronously) for room: back-pressure. In an
    /// [`crate::LmdbEnvironment`], a group with no request queued is admitted even then (so
    /// the queue holds at most this many plus one per group), and each group is also bounded by
    /// [`LmdbOptions::with_group_queue_capacity`].
    pub fn with_queue_capacity(mut self, requests: usize) -> Self {
        self.queue_capacity = requests.max(1);
        self
    }

    /// How many write requests of one group may wait for the writer thread of an
    /// [`crate::LmdbEnvironment`] (at least 1): a group beyond it waits for room however empty
    /// the queue is, so that one busy group cannot fill the queue that all groups share. A
    /// store of its own ([`crate::LmdbLogStore::open_dir_with`]) has one group, bounded by
    /// [`LmdbOptions::with_queue_capacity`] alone.
    pub fn with_group_queue_capacity(mut self, requests: usize) -> Self {
        self.group_queue_capacity = requests.max(1);
        self
    }

    /// The largest number of requests merged into one transaction (at least 1), of all groups
    /// together.
    pub fn with_max_group_requests(mut self, requests: usize) -> Self {
        self.max_group_requests = requests.max(1);
        self
    }

    /// Stop adding requests to a group once it holds this many bytes of entries (a single
    /// request larger than this still goes through, alone).
    pub fn with_max_group_bytes(mut self, bytes: u64) -> Self {
        self.max_group_bytes = bytes;
        self
    }

    /// How far past LMDB's last page the data file is kept written (with zeros), so that
    /// commits overwrite blocks the file system has already allocated instead of growing the
    /// file, which would make each commit's sync also commit the file system's journal. The
    /// file is extended by about half of this at a time, by the writer thread between commits
    /// (one extra sync per step). 0 turns it off. The disk holds up to this much more than the
    /// store needs. Durability is the same either way.
    pub fn with_file_headroom(mut self, bytes: u64) -> Self {
        self.file_headroom_bytes = bytes;
        self
    }

    /// When an [`crate::LmdbEnvironment`] moves its journal to the groups' logs: once the
    /// journal holds `records` entries (at least 1) or `bytes` bytes of them. Commits append
    /// the new entries of every group to the journal, in one place, and the commit that finds
    /// it this full first moves every entry to its group (in the same transaction). A larger
    /// journal spreads the cost of a move over more commits and uses more memory (the writer
    /// and the readers index every entry in it); the journal may exceed the bound by one
    /// transaction's entries. No effect on a store of its own.
    pub fn with_journal_bound(mut self, records: usize, bytes: u64) -> Self {
        self.journal_move_records = records.max(1);
        self.journal_move_bytes = bytes;
        self
    }

    /// The size of the write-ahead file (`raft-wal` in the directory) through which a writer
    /// cycle made only of pure appends (entries, no hard state, no truncation) is committed
    /// with one `fdatasync` instead of an LMDB commit's two; its entries are applied to LMDB
    /// (a checkpoint) by the next transaction of any other kind, or once the file is full.
    /// The file is written with zeros to this size at open (disk space), and the entries not
    /// yet checkpointed are also kept in memory (at most about this many bytes of entries).
    /// 0 turns it off: every cycle is an LMDB transaction (a file an earlier run left is still
    /// recovered at open, then deleted). A size below the file's (an earlier run's larger
    /// option) shrinks the file at open, once that open has applied the entries it held to
    /// LMDB (an open that fails leaves the file as it was). Durability is the same either way: a write returns
    /// once it is synced, in the file or in LMDB. Values above [`MAX_WAL_BYTES`] are clamped
    /// to it.
    ///
    /// A clean close applies the file's entries to LMDB. A copy (backup) of the store is taken
    /// from a store that is not open, never from a running one, with `raft-wal` (after a
    /// crash, acknowledged entries may be only there until the next open).
    pub fn with_wal_bytes(mut self, bytes: u64) -> Self {
        self.wal_bytes = bytes.min(MAX_WAL_BYTES);
        self
    }
}
