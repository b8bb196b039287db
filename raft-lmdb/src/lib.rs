//! # raft-lmdb
//!
//! A durable [`raft_core::LogStore`] on LMDB (through `heed`): [`LmdbLogStore`], and a durable
//! [`raft_core::SnapshotStore`] of plain files: [`FileSnapshotStore`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use raft_core::{LogStore, WriteBatch, HardState};
//! let store = raft_lmdb::LmdbLogStore::open_dir("/var/lib/my-node/raft")?;
//! let state = store.open().await?;
//! let batch = WriteBatch { hard_state: Some(HardState { current_term: 1, voted_for: None }), ..Default::default() };
//! store.write(batch).await?; // durable from here on
//! # Ok(()) }
//! ```
//!
//! ## Many Raft groups, one environment
//!
//! [`LmdbEnvironment`] keeps the logs of every Raft group of a process in one LMDB environment
//! with one writer thread: [`LmdbEnvironment::log_store`] gives each group an [`LmdbLogStore`],
//! [`LmdbEnvironment::snapshot_store`] its [`FileSnapshotStore`] (in `snapshots/<group>/`),
//! [`LmdbEnvironment::groups`] lists the groups on disk and [`LmdbEnvironment::remove_group`]
//! deletes one. A transaction of the writer merges the pending writes of every group, so one
//! sync makes many groups durable; the queue is bounded per group and overall and served
//! round-robin, so a busy group cannot starve another. The new entries of every group go to one
//! journal, appended in one place whatever the number of groups, and are moved to their groups'
//! key ranges in bulk once it reaches its bound ([`LmdbOptions::with_journal_bound`]), by the
//! next commit: a commit of 64 groups costs about what a commit of one group does.
//!
//! ```no_run
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let env = raft_lmdb::LmdbEnvironment::open("/var/lib/my-node/raft")?;
//! let shard_7 = env.log_store(7)?;
//! let shard_7_snapshots = env.snapshot_store(7)?;
//! # let _ = (shard_7, shard_7_snapshots);
//! # Ok(()) }
//! ```
//!
//! ## Durability guarantee
//!
//! A `write` or `purge` that returns `Ok` is durable: it was committed by one LMDB write
//! transaction, and LMDB's commit syncs the data pages and then the meta page (`fdatasync`/
//! `O_DSYNC`) before returning; or, when every request of the writer's cycle only appends
//! entries, by one frame of the write-ahead file `raft-wal`, written and synced with one
//! `fdatasync` (one sync instead of LMDB's two). The entries of those frames are applied to
//! LMDB by the next transaction of any other kind (or when the file is full), and at open
//! after a crash ([`LmdbOptions::with_wal_bytes`]; 0 turns the file off), and when the store
//! (environment) is closed cleanly: a closed store's `data.mdb` holds every acknowledged
//! entry. A copy (backup) is taken from a store that is not open, never from a running one,
//! with `raft-wal` (after a crash, acknowledged entries may be only there). Frames carry the environment's random id,
//! so a `raft-wal` left by another environment is never replayed. The environment is always
//! opened with LMDB's **default flags**:
//! never `NO_SYNC`, `NO_META_SYNC`, `MAP_ASYNC` or `WRITE_MAP`, and no option of this crate can
//! turn them on. A crash (`kill -9`, power loss) leaves the state of the last committed
//! transaction: every acknowledged batch is there, and no batch is there in part. The crash test
//! of this crate checks exactly that with real processes.
//!
//! ## Group commit
//!
//! One dedicated writer thread owns every write transaction (LMDB write transactions must stay
//! on the thread that began them). Callers queue requests on a bounded queue, each with a
//! oneshot channel for its answer, so the async side needs no particular runtime. Requests that
//! queue up while a commit is running are merged into the next transaction: one sync for many
//! proposals. When the callers just answered are expected back at once (several callers each
//! waiting for its own write), the writer waits for them a fraction of a commit's duration (at
//! most 0.5 ms) so that they share the next sync; a lone caller, such as a Raft node issuing one
//! write at a time, never waits. [`LmdbLogStore::submit`] lets one caller keep several writes in
//! flight, in order. Reads use LMDB read transactions on the caller's thread and never wait for
//! a commit.
//!
//! ## File headroom
//!
//! The writer keeps the data file written (with zeros) a few MiB past LMDB's last page
//! ([`LmdbOptions::with_file_headroom`]), extending it between commits in steps of MiBs. A
//! commit then overwrites blocks the file system has already allocated instead of growing the
//! file, and its sync does not also have to commit the file system's journal for a new file
//! size: a commit of many entries costs about what a commit of one costs. Durability is the
//! same with or without it.
//!
//! ## Map size
//!
//! When LMDB reports that its memory map is full, the writer abandons the transaction, closes
//! the environment, reopens it with a larger map (doubling, by at most 16 GiB at a time) and
//! applies the group again: a write never fails for that reason while the disk has room. A real
//! error (disk full, I/O error) is returned as [`raft_core::StorageError::Io`] and stops the
//! store: every later write fails with [`raft_core::StorageError::Closed`], and nothing is
//! acknowledged after an error.
//!
//! ## Format
//!
//! Entries live under big-endian `u64` keys (prefixed by the big-endian group id in an
//! [`LmdbEnvironment`], whose newest entries are in its journal); entries and metadata are encoded with `postcard`
//! behind an explicit format version ([`FORMAT_VERSION`], or [`MARKED_FORMAT_VERSION`] once an
//! environment stores a failed group's mark; [`STORE_FORMAT_VERSION`] for a single-group store); the hard state and the log bounds
//! live in a metadata database updated in the same transaction as the log. Opening checks the
//! directory, the format version and that the log matches its recorded bounds, and reports any
//! problem as an [`OpenError`]: see the `codec` module for the layout.
//!
//! ## Safety
//!
//! The crate denies `unsafe` except for one call, heed's `EnvOpenOptions::open`, made sound by a
//! process-wide registry of open directories plus an exclusive lock on the directory itself (see
//! `env.rs` and `registry.rs`).
#![deny(unsafe_code)]

mod apply;
mod codec;
mod env;
mod environment;
mod error;
#[cfg(test)]
mod faults;
mod fsdir;
mod headroom;
mod journal;
mod layout;
mod options;
mod queue;
mod registry;
mod shared;
mod snapshot_store;
mod store;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_journal;
#[cfg(test)]
mod tests_wal;
#[cfg(test)]
mod tests_wal_faults;
mod thread_io;
mod wal;
mod writer;

pub use codec::{FORMAT_VERSION, MARKED_FORMAT_VERSION, STORE_FORMAT_VERSION};
pub use environment::{LmdbEnvironment, SNAPSHOTS_DIR};
pub use error::OpenError;
pub use options::{LmdbOptions, MAX_WAL_BYTES};
pub use snapshot_store::{FileSnapshotStore, SNAPSHOT_FORMAT_VERSION};
pub use store::{DiskStats, LmdbLogStore, PendingWrite, StoreStats};
