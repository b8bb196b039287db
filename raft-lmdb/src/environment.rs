//! [`LmdbEnvironment`]: one LMDB environment and one writer thread for all the Raft groups of a
//! process; and the running environment every [`LmdbLogStore`] stands on (a store opened with
//! `open_dir` has one of its own, with one group).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{JoinHandle, Thread};

use raft_core::{GroupId, StorageError, DEFAULT_GROUP_ID};

use crate::codec::MetaRecord;
use crate::env::{self, CheckError, Handles};
use crate::error::OpenError;
use crate::fsdir;
use crate::headroom::{Headroom, DATA_FILE};
use crate::journal::{self, JournalIndex, ReadIndex};
use crate::layout::Layout;
use crate::options::LmdbOptions;
use crate::queue::{Queue, QueueLimits};
use crate::registry::{DirGuard, LegacyLock, LEGACY_LOCK_FILE};
use crate::shared::{with_handles, Shared};
use crate::store::{enqueue, DiskStats, LmdbLogStore, StoreStats};
use crate::wal::{self, Pending, WAL_FILE};
use crate::writer::{self, GroupLimits, Op};
use crate::FileSnapshotStore;

/// The sub-directory of an environment's directory that holds the groups' snapshot stores,
/// one directory per group named by its id in decimal.
pub const SNAPSHOTS_DIR: &str = "snapshots";

/// Files LMDB and this crate (this build or an older one) create in a single-group store's
/// directory; anything else makes the directory foreign.
const SINGLE_OWN_FILES: &[&str] = &[DATA_FILE, "lock.mdb", LEGACY_LOCK_FILE, WAL_FILE];
/// The same for an environment's directory.
const GROUPS_OWN_FILES: &[&str] = &[DATA_FILE, "lock.mdb", SNAPSHOTS_DIR, WAL_FILE];

/// An open environment with its writer thread. Dropping it (its last handle) closes the queue,
/// waits for the writer to answer what was queued and stop, and then (with the last
/// [`Shared`]) closes LMDB and releases the directory.
#[derive(Debug)]
pub(crate) struct Running {
    pub(crate) shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shared.queue.close();
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                tracing::error!("the raft-lmdb writer thread panicked");
            }
        }
    }
}

/// Opens (or creates) the environment of `layout` in `dir` and starts its writer thread.
pub(crate) fn start(
    dir: &Path,
    options: LmdbOptions,
    layout: Layout,
) -> Result<Arc<Running>, OpenError> {
    let guard = DirGuard::open(dir)?;
    let dir = guard.path().to_path_buf();
    let own_files = match layout {
        Layout::Single => SINGLE_OWN_FILES,
        Layout::Groups => GROUPS_OWN_FILES,
    };
    check_own_files(&dir, own_files)?;
    let legacy_lock = LegacyLock::take(&dir)?;
    let data_len = fs::metadata(dir.join(DATA_FILE)).map(|m| m.len()).unwrap_or(0);
    let map_size = env::initial_map_size(options.initial_map_size, data_len);
    let handles = env::open_environment(&guard, map_size, layout)?;
    let mut committed = HashMap::new();
    if layout == Layout::Single {
        let meta = check_group(&handles, &ReadIndex::default(), &dir, DEFAULT_GROUP_ID)?
            .ok_or_else(|| OpenError::Corrupt {
                path: dir.clone(),
                reason: "the metadata record is missing".into(),
            })?;
        tracing::debug!(path = %dir.display(), map_size, ?meta, "opened raft-lmdb store");
        committed.insert(DEFAULT_GROUP_ID, meta);
    }
    let io_err = |source| OpenError::Io { path: dir.clone(), source };
    // The entries of LMDB's files (created by the first open) become durable.
    fsdir::sync_dir(&dir).map_err(io_err)?;
    if let Some(legacy_lock) = legacy_lock {
        legacy_lock.remove().map_err(io_err)?;
    }
    let mut headroom = Headroom::open(&dir, options.file_headroom_bytes).map_err(io_err)?;
    // Before the first write, not during it (the writer thread has not started).
    let (page_size, used) = handles.pages();
    let zeros = headroom.ensure(used, 0, page_size);
    let per_group = match layout {
        // One group: its bound is the queue's.
        Layout::Single => options.queue_capacity,
        Layout::Groups => options.group_queue_capacity,
    };
    let queue = Queue::new(QueueLimits { per_group, total: options.queue_capacity });
    let mut journal = match &handles.journal {
        Some(journal) => Some(load_journal(&handles, journal, &dir, &options)?),
        None => None,
    };
    let storage_err = |e: StorageError| match e {
        StorageError::Corrupt(reason) => OpenError::Corrupt { path: dir.clone(), reason },
        StorageError::Io(source) => OpenError::Io { path: dir.clone(), source },
        source => OpenError::Storage { path: dir.clone(), source },
    };
    // A failed group's write-ahead entries are set aside unchecked.
    let failed = journal.as_ref().map(|j| j.failed().clone()).unwrap_or_default();
    let mut recovered =
        recover_wal(&handles, &dir, options.wal_bytes, failed).map_err(storage_err)?;
    // Their frames are set aside in the journal by the open-time checkpoint.
    if let Some(journal) = &mut journal {
        for (&group, reason) in &recovered.failed {
            journal.set_failed(group, reason.clone());
        }
    }
    // Once every failed group is known: their records, set aside, are not in it.
    let read_index = journal.as_ref().map(JournalIndex::read_index).unwrap_or_default();
    let recovered_entries = recovered.records.len() as u64;
    let pending = Pending::new(recovered.generation, std::mem::take(&mut recovered.records));
    let shared = Arc::new(Shared::new(handles, guard, queue, read_index, pending));
    if let Some(journal) = &journal {
        shared.set_failed_groups(journal.failed().clone());
    }
    shared.recovered_entries.store(recovered_entries, std::sync::atomic::Ordering::Relaxed);
    shared.headroom_bytes.fetch_add(zeros, std::sync::atomic::Ordering::Relaxed);
    let limits = GroupLimits {
        max_requests: options.max_group_requests,
        max_bytes: options.max_group_bytes,
    };
    let writer =
        writer::spawn(Arc::clone(&shared), committed, journal, limits, headroom, recovered)
            .map_err(storage_err)?;
    let running = Arc::new(Running { shared, writer: Some(writer) });
    if options.wal_bytes == 0 {
        // Its frames (if any) were checkpointed by `spawn`.
        wal::remove_if_off(&dir).map_err(io_err)?;
    }
    Ok(running)
}

/// What open found in the write-ahead file.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    /// The file, `None` when off.
    pub(crate) wal: Option<wal::Wal>,
    /// LMDB's generation of the frames.
    pub(crate) generation: u64,
    /// The records of the file's valid frames, each checked to extend its group's log.
    pub(crate) records: Vec<(GroupId, raft_core::Entry)>,
    /// The bytes of their entries (`Entry::size_bytes`).
    pub(crate) bytes: u64,
    /// The last recovered entry of each group that has some.
    pub(crate) lasts: HashMap<GroupId, raft_core::LogId>,
    /// Whether the file holds anything but zeros after its valid frames, or records: the writer
    /// then checkpoints before the store is handed out, moving to the next generation.
    pub(crate) dirty: bool,
    /// The failed groups of the multi-group layout (see `journal.rs`): those the journal's load
    /// failed (a stored mark, a metadata record that does not decode or disagrees with the
    /// group's records) and those whose write-ahead entries do not follow their record. Their
    /// entries are set aside unchecked.
    pub(crate) failed: BTreeMap<GroupId, String>,
}

/// Opens (creating it when on) and reads the write-ahead file: its frames of LMDB's
/// generation, each record checked to extend its group's log contiguously (anything else is
/// corruption: such a frame was never written by this crate). The records of the groups of
/// `failed` (failed by the journal's load, see `journal.rs`) are set aside unchecked.
fn recover_wal(
    handles: &Handles,
    dir: &Path,
    bytes: u64,
    mut failed: BTreeMap<GroupId, String>,
) -> Result<Recovered, StorageError> {
    let (id, foreign) = match handles.wal_id(&handles.read_txn()?)? {
        Some(id) => (id, false),
        // Before any frame of this environment is written: whatever the file holds is another
        // environment's (see `wal.rs`).
        None => (handles.create_wal_id()?, true),
    };
    let txn = handles.read_txn()?;
    let generation = handles.wal_generation(&txn)?;
    let (wal, scanned) = wal::open(dir, bytes, (id, generation))?;
    if foreign && scanned.stopped_on_data {
        tracing::warn!(
            path = %dir.display(),
            "raft-lmdb ignores the write-ahead file it found: it was not written by this \
             environment (LMDB's files were removed or replaced); its frames are overwritten"
        );
    }
    let mut lasts: HashMap<GroupId, raft_core::LogId> = HashMap::new();
    for (group, entry) in &scanned.records {
        // A failed group's entries are set aside as they are (see `journal.rs`).
        if failed.contains_key(group) {
            lasts.insert(*group, entry.log_id());
            continue;
        }
        let last = match lasts.get(group) {
            Some(last) => Ok(*last),
            // An LMDB read error fails the open (`?`): it is no one group's corruption.
            None => match handles.lookup_meta(&txn, handles.layout.keys(*group))? {
                Some(Ok(meta)) => Ok(meta.last()),
                None => {
                    return Err(StorageError::Corrupt(format!(
                    "the write-ahead file holds entry {} of group {group}, which does not exist",
                    entry.index
                )))
                }
                // Names the group (multi-group layout).
                Some(Err(err)) => Err(err),
            },
        };
        let wrong = match last {
            Ok(last)
                if last.index.checked_add(1) == Some(entry.index) && entry.term >= last.term =>
            {
                None
            }
            Ok(last) => {
                let what = format!(
                    "the write-ahead file holds entry {} (term {}), which does not follow its \
                     entry {} (term {})",
                    entry.index, entry.term, last.index, last.term
                );
                Some(StorageError::Corrupt(match handles.journal {
                    Some(_) => journal::failure(*group, &what),
                    None => format!("group {group}: {what}"),
                }))
            }
            Err(err) => Some(err),
        };
        match wrong {
            None => {}
            // That group alone fails: its entries are set aside (multi-group layout; logged
            // when the journal index marks it failed).
            Some(StorageError::Corrupt(reason)) if handles.journal.is_some() => {
                failed.insert(*group, reason);
            }
            Some(err) => return Err(err),
        }
        lasts.insert(*group, entry.log_id());
    }
    if !scanned.records.is_empty() {
        tracing::info!(
            records = scanned.records.len(),
            generation,
            "raft-lmdb recovers entries from its write-ahead file"
        );
    }
    let dirty = !scanned.records.is_empty() || scanned.stopped_on_data;
    let bytes = scanned.bytes;
    Ok(Recovered { wal, generation, records: scanned.records, bytes, lasts, dirty, failed })
}

/// Checks the records of `group` (see [`env::check_group`]): its metadata, `None` if the group
/// does not exist.
fn check_group(
    handles: &Handles,
    read_index: &ReadIndex,
    dir: &Path,
    group: GroupId,
) -> Result<Option<MetaRecord>, OpenError> {
    env::check_group(handles, handles.layout.keys(group), read_index).map_err(|e| match e {
        // Which group, among all those of the environment (a record that does not decode
        // names it already).
        CheckError::Records(StorageError::Corrupt(reason))
            if handles.layout == Layout::Groups && !reason.starts_with("group ") =>
        {
            OpenError::Corrupt { path: dir.to_path_buf(), reason: journal::failure(group, &reason) }
        }
        // An LMDB read error (a damaged page) is no one group's corruption: LMDB's error, not
        // "remove the group".
        CheckError::Records(StorageError::Corrupt(reason))
        | CheckError::Lmdb(StorageError::Corrupt(reason)) => {
            OpenError::Corrupt { path: dir.to_path_buf(), reason }
        }
        CheckError::Records(source) | CheckError::Lmdb(source) => {
            OpenError::Storage { path: dir.to_path_buf(), source }
        }
    })
}

/// Reads the journal of a multi-group environment (bounded: it is moved to the groups' logs
/// once it reaches its bound).
fn load_journal(
    handles: &Handles,
    journal: &env::Db,
    dir: &Path,
    options: &LmdbOptions,
) -> Result<JournalIndex, OpenError> {
    let bound = (options.journal_move_records, options.journal_move_bytes);
    let loaded = handles
        .read_txn()
        .and_then(|txn| JournalIndex::load((journal, &handles.log, &handles.meta), &txn, bound));
    loaded.map_err(|e| match e {
        StorageError::Corrupt(reason) => OpenError::Corrupt { path: dir.to_path_buf(), reason },
        source => OpenError::Storage { path: dir.to_path_buf(), source },
    })
}

/// Checks that `dir` holds no file a raft-lmdb store does not create.
fn check_own_files(dir: &Path, own: &[&str]) -> Result<(), OpenError> {
    let io_err = |source: io::Error| OpenError::Io { path: dir.to_path_buf(), source };
    for entry in fs::read_dir(dir).map_err(io_err)? {
        let name = entry.map_err(io_err)?.file_name();
        if !own.iter().any(|own| name == *own) {
            return Err(OpenError::ForeignDirectory {
                path: dir.to_path_buf(),
                entry: name.to_string_lossy().into_owned(),
            });
        }
    }
    Ok(())
}

/// One LMDB environment holding the logs of many Raft groups, with one writer thread whose
/// transactions merge the pending writes of every group: one sync makes many groups durable.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use raft_core::LogStore;
/// let env = raft_lmdb::LmdbEnvironment::open("/var/lib/my-node/raft")?;
/// for group in env.groups()? {
///     // A group found failed at an open (its records contradict each other) is listed too, so
///     // that it can be removed; opening it fails with `Corrupt`, naming the group and why.
///     let log = match env.log_store(group) {
///         Ok(log) => log, // a `LogStore` for this group's node
///         Err(raft_lmdb::OpenError::Corrupt { reason, .. }) => {
///             eprintln!("skipping {reason}");
///             continue;
///         }
///         Err(e) => return Err(e.into()),
///     };
///     let snapshots = env.snapshot_store(group)?; // its `SnapshotStore`
///     # let _ = (log.open().await?, snapshots);
/// }
/// # Ok(()) }
/// ```
///
/// # Layout
///
/// `dir` holds LMDB's files (`data.mdb`, `lock.mdb`), the write-ahead file `raft-wal` (see
/// [`LmdbOptions::with_wal_bytes`]) and `snapshots/<group>/`, the snapshot store of each group
/// (see [`LmdbEnvironment::snapshot_store`]). Every group's log, hard
/// state and log bounds live in two databases keyed by group id (see the crate documentation),
/// the newest entries of every group in a journal where each commit appends in one place (moved
/// in bulk to the groups' keys once it reaches [`LmdbOptions::with_journal_bound`]); the
/// records are those of a single-group store. A directory of [`LmdbLogStore::open_dir`] is
/// not an environment and the other way round: each refuses the other's directory with
/// [`OpenError::NotOurStore`] (there is no automatic migration between them).
///
/// # Guarantees
///
/// Every [`LmdbLogStore`] of the environment has the guarantees of a store of its own
/// (durability, atomicity, order); in addition:
///
/// * **Group commit across groups.** The writer merges the requests of every group queued while
///   it commits into the next transaction, and validates each one against its own group's log:
///   an invalid request is answered with its error and changes nothing, without disturbing any
///   other request of the transaction.
/// * **Fairness.** The queue holds at most [`LmdbOptions::with_group_queue_capacity`] requests
///   of one group and [`LmdbOptions::with_queue_capacity`] overall, except that a group with
///   nothing queued is always admitted; the writer takes requests round-robin over the groups.
///   A busy group can neither keep another group's request out of the queue nor hold it
///   behind its own backlog: a queued request goes into the next transaction while fewer than
///   [`LmdbOptions::with_max_group_requests`] groups have requests queued.
/// * **Failures are per environment.** A full map grows (closing and reopening the environment
///   for all groups) and the transaction is retried. Any other failure of a commit answers all
///   its requests with the error and stops the environment: every later write of every group
///   fails with [`StorageError::Closed`], nothing more is acknowledged.
/// * **Groups on disk.** A group exists from the moment its first store (log or snapshot) is
///   opened until it is removed ([`LmdbEnvironment::remove_group`]), durably:
///   [`LmdbEnvironment::groups`] lists them after a restart.
///
/// The environment holds its directory exclusively, like a single store (process-wide registry
/// and a lock on the directory). It stays open while this handle or any store of it exists:
/// dropping the last one waits for the writer to answer what was queued, then closes it.
/// Cloning gives another handle to the same environment.
#[derive(Debug, Clone)]
pub struct LmdbEnvironment {
    running: Arc<Running>,
}

impl LmdbEnvironment {
    /// Opens the environment in `dir` with default [`LmdbOptions`], creating the directory and a
    /// new environment if it does not exist. See [`LmdbEnvironment::open_with`].
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, OpenError> {
        Self::open_with(dir, LmdbOptions::default())
    }

    /// Opens the environment in `dir`, creating the directory and a new environment if it does
    /// not exist, and starts its writer thread.
    ///
    /// Fails with a clear [`OpenError`], never a panic, for the reasons
    /// [`LmdbLogStore::open_dir_with`] does (a single-group store's directory is refused as
    /// [`OpenError::NotOurStore`]). The directory is durable when this returns, and held
    /// exclusively until the environment and all its stores are dropped. A group's records are
    /// checked when its store is opened. A snapshot directory of a group that does not exist
    /// (left by a [`LmdbEnvironment::remove_group`] that a crash interrupted) is deleted.
    pub fn open_with(dir: impl AsRef<Path>, options: LmdbOptions) -> Result<Self, OpenError> {
        let env = Self { running: start(dir.as_ref(), options, Layout::Groups)? };
        env.delete_orphan_snapshot_dirs()?;
        Ok(env)
    }

    fn shared(&self) -> &Shared {
        &self.running.shared
    }

    /// The shared state, for the crate's tests (test hooks).
    #[cfg(test)]
    pub(crate) fn running_shared(&self) -> &Shared {
        self.shared()
    }

    /// The environment's directory (canonical).
    pub fn path(&self) -> &Path {
        self.shared().guard.path()
    }

    /// The directory of `group`'s snapshot store: `snapshots/<group>` in the environment's
    /// directory.
    pub fn snapshot_dir(&self, group: GroupId) -> PathBuf {
        self.path().join(SNAPSHOTS_DIR).join(group.to_string())
    }

    /// The groups on disk, in ascending order: every group whose store was opened and that was
    /// not removed since, and every group failed at an open (its log store fails to open with
    /// [`OpenError::Corrupt`] until it is removed; its failed mark is stored) even if its
    /// metadata record is gone. Their snapshot directories are kept (those of groups not listed
    /// are deleted at open).
    pub fn groups(&self) -> Result<Vec<GroupId>, StorageError> {
        with_handles(self.shared(), |handles| handles.groups(&handles.read_txn()?))
    }

    /// Opens the [`raft_core::LogStore`] of `group`, creating the group (an empty log, durably)
    /// if it does not exist. Blocks the calling thread until then, like
    /// [`LmdbLogStore::open_dir`].
    ///
    /// Checks the group's records first (the log holds exactly the entries its metadata says).
    /// One store per group at a time: fails with [`OpenError::GroupInUse`] while another store
    /// of the group is open (or the group is being removed); [`OpenError::Storage`] if the
    /// environment has stopped.
    pub fn log_store(&self, group: GroupId) -> Result<LmdbLogStore, OpenError> {
        let shared = self.shared();
        let _changing = shared.changing_groups();
        if !shared.claim_group(group) {
            return Err(OpenError::GroupInUse { path: self.path().to_path_buf(), group });
        }
        let opened = self.open_group(group);
        match opened {
            Ok(()) => Ok(LmdbLogStore::new(Arc::clone(&self.running), group)),
            Err(err) => {
                shared.release_group(group);
                Err(err)
            }
        }
    }

    /// Checks `group`'s records and makes sure the group exists on disk.
    fn open_group(&self, group: GroupId) -> Result<(), OpenError> {
        let dir = self.path();
        let shared = self.shared();
        if let Some(reason) = shared.failed_group(group) {
            return Err(OpenError::Corrupt { path: dir.to_path_buf(), reason });
        }
        let checked = with_handles(shared, |handles| {
            check_group(handles, &shared.read_index, dir, group).map_err(StorageError::from)
        });
        match checked {
            Ok(Some(_)) => Ok(()),
            Ok(None) => {
                // A snapshot directory of a group that is not on disk is an orphan (a removal
                // whose deletion failed): the group created now must not adopt its snapshots.
                let orphan = self.snapshot_dir(group);
                match orphan.try_exists() {
                    Ok(false) => {}
                    Ok(true) => delete_orphan_snapshot_dir(&orphan)?,
                    Err(source) => return Err(OpenError::Io { path: orphan, source }),
                }
                self.run(group, Op::Open)
            }
            Err(StorageError::Corrupt(reason)) => {
                Err(OpenError::Corrupt { path: dir.to_path_buf(), reason })
            }
            Err(source) => Err(OpenError::Storage { path: dir.to_path_buf(), source }),
        }
    }

    /// Runs `op` for `group` on the writer and waits until it is durable.
    fn run(&self, group: GroupId, op: Op) -> Result<(), OpenError> {
        let storage = |source| OpenError::Storage { path: self.path().to_path_buf(), source };
        wait_here(async { enqueue(self.shared(), group, op).await?.await }).map_err(storage)?;
        Ok(())
    }

    /// Opens the [`raft_core::SnapshotStore`] of `group` in [`LmdbEnvironment::snapshot_dir`]
    /// (see [`FileSnapshotStore::open_dir`]), creating the group if it does not exist. One
    /// snapshot store per group at a time (the directory is locked like any snapshot store's).
    pub fn snapshot_store(&self, group: GroupId) -> Result<FileSnapshotStore, OpenError> {
        let _changing = self.shared().changing_groups();
        // The group's record comes first: a snapshot directory without one is an orphan that
        // the next open deletes.
        self.open_group(group)?;
        FileSnapshotStore::open_dir(self.snapshot_dir(group))
    }

    /// Deletes everything of `group`: its log, hard state and metadata (one synced transaction),
    /// then its snapshot directory. Removing a group that does not exist does nothing.
    ///
    /// Refused with [`OpenError::GroupInUse`] while a log store or the snapshot store of the
    /// group is open. Once this returns, the group is gone durably; if the process dies before
    /// the snapshot directory is deleted, or its deletion fails, the next
    /// [`LmdbEnvironment::open`] deletes it, and so does creating the group again. A group
    /// whose metadata record is corrupt, or that failed at an open, can still be removed (its
    /// failed mark goes with it).
    ///
    /// The group's hard state (term and vote) goes with it: a replica of this process must not
    /// rejoin the same cluster of that group under the same node id (it could vote twice in
    /// a term); join it as a new node id, as for any replica whose disk was wiped.
    pub fn remove_group(&self, group: GroupId) -> Result<(), OpenError> {
        let shared = self.shared();
        let _changing = shared.changing_groups();
        let path = self.path().to_path_buf();
        if !shared.claim_group(group) {
            return Err(OpenError::GroupInUse { path, group });
        }
        let removed = self.remove_claimed(group);
        shared.release_group(group);
        removed
    }

    fn remove_claimed(&self, group: GroupId) -> Result<(), OpenError> {
        let snapshots = self.snapshot_dir(group);
        // Hold the snapshot directory so that no snapshot store opens it meanwhile.
        let held = match snapshots.try_exists() {
            Ok(true) => Some(DirGuard::acquire(&snapshots).map_err(|e| match e {
                OpenError::AlreadyOpenInProcess { .. } => {
                    OpenError::GroupInUse { path: self.path().to_path_buf(), group }
                }
                other => other,
            })?),
            Ok(false) => None,
            Err(source) => return Err(OpenError::Io { path: snapshots, source }),
        };
        self.run(group, Op::Remove)?;
        // Durably gone, with its records: created again, it starts empty.
        self.shared().group_removed(group);
        if let Some(held) = held {
            delete_dir_durably(&snapshots)?;
            drop(held);
        }
        tracing::info!(path = %self.path().display(), group, "removed a raft group");
        Ok(())
    }

    /// Deletes the snapshot directories of groups that do not exist.
    fn delete_orphan_snapshot_dirs(&self) -> Result<(), OpenError> {
        let root = self.path().join(SNAPSHOTS_DIR);
        let io_err = |source: io::Error| OpenError::Io { path: root.clone(), source };
        let entries = match fs::read_dir(&root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(e)),
        };
        let groups = self
            .groups()
            .map_err(|source| OpenError::Storage { path: self.path().to_path_buf(), source })?;
        for entry in entries {
            let name = entry.map_err(io_err)?.file_name();
            let Some(group) = name.to_str().and_then(|n| n.parse::<GroupId>().ok()) else {
                return Err(OpenError::ForeignDirectory {
                    path: root.clone(),
                    entry: name.to_string_lossy().into_owned(),
                });
            };
            if groups.binary_search(&group).is_err() {
                delete_orphan_snapshot_dir(&root.join(&name))?;
            }
        }
        Ok(())
    }

    /// Counters of the writer thread since the environment was opened (all groups).
    pub fn stats(&self) -> StoreStats {
        self.shared().stats()
    }

    /// How the environment uses its data file as of the last commit, and what its writer
    /// thread has written (a diagnostic: it reads the disk and `/proc`).
    pub fn disk_stats(&self) -> Result<DiskStats, StorageError> {
        self.shared().disk_stats()
    }

    /// True once a write has failed: the environment then accepts no more writes.
    pub fn has_failed(&self) -> bool {
        self.shared().is_poisoned()
    }

    /// The current size of LMDB's memory map in bytes (it grows when full), or `None` once the
    /// environment has stopped.
    pub fn map_size(&self) -> Option<usize> {
        self.shared().handles().as_ref().map(Handles::map_size)
    }
}

/// Deletes the snapshot directory `dir` of a group that is not on disk, durably, holding it
/// meanwhile (so that no snapshot store opens it).
fn delete_orphan_snapshot_dir(dir: &Path) -> Result<(), OpenError> {
    let held = DirGuard::acquire(dir)?;
    tracing::info!(dir = %dir.display(), "deleting the snapshots of a removed group");
    delete_dir_durably(dir)?;
    drop(held);
    Ok(())
}

/// Deletes `dir` and everything in it, then syncs its parent so that the deletion is durable.
fn delete_dir_durably(dir: &Path) -> Result<(), OpenError> {
    let io_err = |source| OpenError::Io { path: dir.to_path_buf(), source };
    fs::remove_dir_all(dir).map_err(io_err)?;
    match dir.parent() {
        Some(parent) => fsdir::sync_dir(parent).map_err(io_err),
        None => Ok(()),
    }
}

/// Runs `future` to completion on the calling thread, parking it while the future waits. Unlike
/// an executor's `block_on`, it may be called from within any executor (it blocks that
/// executor's thread meanwhile, as opening a store does).
fn wait_here<F: Future>(future: F) -> F::Output {
    struct Unpark(Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let mut future = pin!(future);
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::park();
    }
}
