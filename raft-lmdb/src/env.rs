//! The LMDB environment: opening it (the crate's single `unsafe` call), creating or checking
//! its databases in either layout (see `layout`), checking a group's records, and reopening it
//! with a larger map.

use std::path::Path;
use std::time::Duration;

use heed::types::Bytes;
use heed::{CommitOrAbort, Database, DatabaseStat, Env, EnvOpenOptions, RoTxn, WithoutTls};
use raft_core::{GroupId, LogId, LogIndex, StorageError};

use crate::codec::{self, FormatCheck, MetaRecord, FORMAT_KEY};
use crate::error::{storage_error, OpenError};
use crate::headroom::DATA_FILE;
use crate::journal::{seq_key, split_record, ReadIndex, JOURNAL_DB};
use crate::layout::{group_of_failed_mark, GroupKeys, Layout, FAILED_MARK_PREFIX};
use crate::registry::DirGuard;
use crate::store::DiskStats;

/// A database of the environment: byte keys (see `layout`) → encoded records (see `codec`).
pub(crate) type Db = Database<'static, Bytes, Bytes>;

/// Map sizes are kept multiples of this (a multiple of every page size LMDB runs with).
const MAP_GRANULE: usize = 1 << 20;
/// Above this map size, the map grows by this much at a time instead of doubling.
const MAX_GROWTH_STEP: usize = 16 << 30;
/// How long closing waits for the last handle on the environment before giving up.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Named databases an environment may open: those of its layout (two, and the journal of the
/// multi-group layout), and those of the other layout, looked up (never created) to recognize
/// a directory opened the wrong way.
const MAX_DBS: u32 = 6;

#[cfg(test)]
thread_local! {
    /// Test hook: snapshots [`check_group`] has checked on this thread (its attempts).
    pub(crate) static CHECK_GROUP_ATTEMPTS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// Test hook: journal records [`check_group`] has read on this thread.
    pub(crate) static JOURNAL_RECORDS_CHECKED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// Test hook: the next [`check_group`] on this thread waits at this barrier twice between
    /// its snapshot and its journal candidates (the test commits in between).
    pub(crate) static CHECK_GROUP_BARRIER: std::cell::RefCell<Option<std::sync::Arc<std::sync::Barrier>>> =
        const { std::cell::RefCell::new(None) };
    /// Test hook: reading the metadata record of this group on this thread fails as LMDB does
    /// on a damaged page (`MDB_CORRUPTED`).
    pub(crate) static META_READ_FAILS: std::cell::Cell<Option<GroupId>> = const { std::cell::Cell::new(None) };
    /// Test hook: reading a journal record of this group in its check ([`check_group`]) on
    /// this thread fails as LMDB does on a damaged page (`MDB_CORRUPTED`).
    pub(crate) static JOURNAL_READ_FAILS: std::cell::Cell<Option<GroupId>> = const { std::cell::Cell::new(None) };
}

/// Test hook: waits at [`CHECK_GROUP_BARRIER`] twice if a test set it on this thread.
#[cfg(test)]
fn check_group_paused() {
    if let Some(barrier) = CHECK_GROUP_BARRIER.with(|b| b.borrow_mut().take()) {
        barrier.wait();
        barrier.wait();
    }
}

/// An open environment and its databases. Dropping it closes the environment.
#[derive(Debug)]
pub(crate) struct Handles {
    pub(crate) env: Env<WithoutTls>,
    pub(crate) log: Db,
    pub(crate) meta: Db,
    /// The journal ([`crate::journal`]): in the multi-group layout only.
    pub(crate) journal: Option<Db>,
    pub(crate) layout: Layout,
}

impl Handles {
    /// Starts a read transaction.
    pub(crate) fn read_txn(&self) -> Result<RoTxn<'_, WithoutTls>, StorageError> {
        self.env.read_txn().map_err(storage_error)
    }

    /// The current size of the memory map.
    pub(crate) fn map_size(&self) -> usize {
        self.env.info().map_size
    }

    /// LMDB's page size, and the bytes of the data file its pages use up to the last page of
    /// the latest commit.
    pub(crate) fn pages(&self) -> (u64, u64) {
        let page_size = u64::from(self.env.unnamed_database_stat().page_size);
        let pages = u64::try_from(self.env.info().last_page_number).unwrap_or(u64::MAX);
        (page_size, pages.saturating_add(1).saturating_mul(page_size))
    }

    /// How LMDB uses the data file as of the last commit (`written_bytes` left unknown).
    pub(crate) fn disk_stats(&self) -> Result<DiskStats, StorageError> {
        let (page_size, used_bytes) = self.pages();
        let rtxn = self.read_txn()?;
        let pages =
            |stat: DatabaseStat| (stat.branch_pages + stat.leaf_pages + stat.overflow_pages) as u64;
        let tree_pages = pages(self.env.unnamed_database_stat())
            + pages(self.log.stat(&rtxn).map_err(storage_error)?)
            + pages(self.meta.stat(&rtxn).map_err(storage_error)?)
            + match &self.journal {
                Some(journal) => pages(journal.stat(&rtxn).map_err(storage_error)?),
                None => 0,
            };
        let file_bytes = std::fs::metadata(self.env.path().join(DATA_FILE))?.len();
        Ok(DiskStats {
            page_size,
            used_pages: used_bytes / page_size.max(1),
            tree_pages,
            file_bytes,
            written_bytes: None,
        })
    }

    /// Reads a group's metadata record, `None` if the group has none (it does not exist). An
    /// LMDB read error and a record that does not decode are both errors: see
    /// [`Handles::lookup_meta`] to tell them apart.
    pub(crate) fn find_meta(
        &self,
        txn: &RoTxn<'_, WithoutTls>,
        keys: GroupKeys,
    ) -> Result<Option<MetaRecord>, StorageError> {
        self.lookup_meta(txn, keys)?.transpose()
    }

    /// Reads a group's metadata record in two steps: the outer error is LMDB's (the read
    /// failed: a damaged page, an I/O error; nothing is known of the record), `Some(Err(_))`
    /// is a record read whole that does not decode (that group's corruption, naming the group
    /// in the multi-group layout), `None` no record (the group does not exist).
    pub(crate) fn lookup_meta(
        &self,
        txn: &RoTxn<'_, WithoutTls>,
        keys: GroupKeys,
    ) -> Result<Option<Result<MetaRecord, StorageError>>, StorageError> {
        #[cfg(test)]
        if META_READ_FAILS.with(|g| g.get()) == Some(keys.group()) {
            return Err(storage_error(heed::Error::Mdb(heed::MdbError::Corrupted)));
        }
        let Some(bytes) = self.meta.get(txn, keys.meta().as_slice()).map_err(storage_error)? else {
            return Ok(None);
        };
        Ok(Some(codec::decode_meta(bytes).map_err(|e| match (e, self.layout) {
            // Which group, among all those of the environment.
            (StorageError::Corrupt(reason), Layout::Groups) => StorageError::Corrupt(format!(
                "group {}: {reason} (remove the group to go on)",
                keys.group()
            )),
            (e, _) => e,
        })))
    }

    /// The generation of the write-ahead file's frames for the snapshot of `txn` (`wal.rs`).
    pub(crate) fn wal_generation(&self, txn: &RoTxn<'_, WithoutTls>) -> Result<u64, StorageError> {
        let bytes = self.meta.get(txn, crate::wal::WAL_GENERATION_KEY).map_err(storage_error)?;
        Ok(crate::wal::decode_u64(bytes)?.unwrap_or(0))
    }

    /// The environment's id carried by its write-ahead frames (`wal.rs`), `None` if it has none
    /// yet.
    pub(crate) fn wal_id(&self, txn: &RoTxn<'_, WithoutTls>) -> Result<Option<u64>, StorageError> {
        let bytes = self.meta.get(txn, crate::wal::WAL_ID_KEY).map_err(storage_error)?;
        crate::wal::decode_u64(bytes)
    }

    /// Gives the environment a new id (`wal.rs`), in a synced transaction of its own.
    pub(crate) fn create_wal_id(&self) -> Result<u64, StorageError> {
        let id = crate::wal::new_id();
        let mut txn = self.env.write_txn().map_err(storage_error)?;
        self.meta
            .put(&mut txn, crate::wal::WAL_ID_KEY, &id.to_be_bytes())
            .map_err(storage_error)?;
        txn.commit().map_err(storage_error)?;
        Ok(id)
    }

    /// Reads the metadata record of a group that exists.
    pub(crate) fn read_meta(
        &self,
        txn: &RoTxn<'_, WithoutTls>,
        keys: GroupKeys,
    ) -> Result<MetaRecord, StorageError> {
        self.find_meta(txn, keys)?
            .ok_or_else(|| StorageError::Corrupt("the metadata record is missing".into()))
    }

    /// The groups that have a metadata record or a failed mark (a failed group is listed
    /// even without a metadata record, so that it can be found and removed, see `journal.rs`),
    /// in ascending order.
    pub(crate) fn groups(&self, txn: &RoTxn<'_, WithoutTls>) -> Result<Vec<GroupId>, StorageError> {
        let mut groups = Vec::new();
        let prefix = self.layout.meta_prefix();
        for item in self.meta.prefix_iter(txn, prefix).map_err(storage_error)? {
            let (key, _) = item.map_err(storage_error)?;
            match self.layout.group_of_meta_key(key) {
                Some(group) => groups.push(group),
                None => {
                    return Err(StorageError::Corrupt(format!("unexpected metadata key {key:?}")))
                }
            }
        }
        if self.layout == Layout::Groups {
            let marks = self.meta.prefix_iter(txn, FAILED_MARK_PREFIX).map_err(storage_error)?;
            for item in marks {
                let (key, _) = item.map_err(storage_error)?;
                match group_of_failed_mark(key) {
                    Some(group) => groups.push(group),
                    None => {
                        return Err(StorageError::Corrupt(format!(
                            "a failed mark key of {} bytes",
                            key.len()
                        )))
                    }
                }
            }
            groups.sort_unstable();
            groups.dedup();
        }
        Ok(groups)
    }

    /// Closes the environment and waits until LMDB has really closed it, so that the same path
    /// may be opened again.
    pub(crate) fn close(self) -> Result<(), StorageError> {
        let Handles { env, .. } = self;
        let closing = env.prepare_for_closing();
        if closing.wait_timeout(CLOSE_TIMEOUT) {
            Ok(())
        } else {
            Err(StorageError::Other(
                "the LMDB environment is still in use and could not be closed".into(),
            ))
        }
    }
}

/// Opens the environment in `dir`.
///
/// Default LMDB flags only (synced commits: no `NO_SYNC`, `NO_META_SYNC`, `MAP_ASYNC`); read
/// transactions are not tied to threads (`read_txn_without_tls`) so that async tasks may read
/// from any thread.
pub(crate) fn open_env(guard: &DirGuard, map_size: usize) -> Result<Env<WithoutTls>, heed::Error> {
    let mut options = EnvOpenOptions::new().read_txn_without_tls();
    options.map_size(map_size).max_dbs(MAX_DBS);
    #[allow(unsafe_code)]
    // SAFETY: `EnvOpenOptions::open` is unsafe because LMDB maps the data file into memory and
    // undefined behaviour follows if that file is changed behind the map or the same
    // environment is mapped twice in one process. Both are excluded here:
    // * `guard` proves that this environment exclusively owns `dir`: the process-wide registry
    //   in `registry.rs` admits one live owner per canonical directory (one environment, shared
    //   by all the groups of an `LmdbEnvironment`), and an environment never opens a second LMDB
    //   environment before the previous one has been closed (see `Handles::close`, used when
    //   the map grows);
    // * the same guard holds an exclusive advisory lock (`flock`) on the directory itself, which
    //   no file deletion can defeat, so no other process using this crate writes to the files
    //   while we have them mapped;
    // * no unsafe LMDB flag is set (no `NO_LOCK`, `NO_SYNC`, `WRITE_MAP`): LMDB's own locking
    //   protects readers and the writer from each other;
    // * the only other writes to `data.mdb` are the writer thread's zeros past the end of the
    //   file (`headroom.rs`), made between transactions: bytes beyond LMDB's last page, which
    //   no transaction or reader reaches before LMDB writes that page itself.
    // Foreign tools modifying the files behind our back remain the operator's responsibility,
    // as for any database.
    unsafe {
        options.open(guard.path())
    }
}

/// Opens the environment in `guard`'s directory with `layout`: creates the databases of a new
/// environment, or checks that an existing one is ours, of that layout and of a supported
/// format version (upgrading an older one).
pub(crate) fn open_environment(
    guard: &DirGuard,
    map_size: usize,
    layout: Layout,
) -> Result<Handles, OpenError> {
    let path = guard.path();
    let env = open_env(guard, map_size).map_err(|e| open_error(path, e))?;
    let (log, meta, journal) = open_databases(&env, layout).map_err(|e| open_error(path, e))?;
    let (other_log, other_meta, _) =
        open_databases(&env, layout.other()).map_err(|e| open_error(path, e))?;
    // The main database lists the named databases (and whatever another program stored there).
    let main_is_empty = env.unnamed_database_stat().entries == 0;
    if other_log.is_some() || other_meta.is_some() {
        let reason = match layout {
            Layout::Single => {
                "it holds a multi-group raft-lmdb environment (open it with \
                               LmdbEnvironment::open)"
            }
            Layout::Groups => {
                "it holds a single-group raft-lmdb store (open it with \
                               LmdbLogStore::open_dir)"
            }
        };
        return Err(OpenError::NotOurStore { path: path.to_path_buf(), reason: reason.into() });
    }
    let handles = match (log, meta) {
        (Some(log), Some(meta)) => Handles { env, log, meta, journal, layout },
        (None, None) if main_is_empty => {
            create_databases(env, layout).map_err(|e| open_error(path, e))?
        }
        (None, None) => {
            return Err(OpenError::NotOurStore {
                path: path.to_path_buf(),
                reason: "it holds an LMDB environment of another program".into(),
            })
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(OpenError::Corrupt {
                path: path.to_path_buf(),
                reason: "one of the two raft-lmdb databases is missing".into(),
            })
        }
    };
    let handles = check_format(handles, path)?;
    if layout == Layout::Groups && handles.journal.is_none() {
        return Err(OpenError::Corrupt {
            path: path.to_path_buf(),
            reason: "the journal database is missing".into(),
        });
    }
    Ok(handles)
}

/// Closes `handles` and opens the same environment again with a map of at least `map_size`
/// bytes.
pub(crate) fn reopen(
    guard: &DirGuard,
    handles: Handles,
    map_size: usize,
) -> Result<Handles, StorageError> {
    let layout = handles.layout;
    handles.close()?;
    let env = open_env(guard, map_size).map_err(storage_error)?;
    match open_databases(&env, layout).map_err(storage_error)? {
        (Some(log), Some(meta), journal) if journal.is_some() || layout == Layout::Single => {
            Ok(Handles { env, log, meta, journal, layout })
        }
        _ => Err(StorageError::Corrupt("the raft-lmdb databases vanished while reopening".into())),
    }
}

/// The map size to use after `current` turned out too small.
pub(crate) fn grown_map_size(current: usize) -> Option<usize> {
    let step = current.clamp(MAP_GRANULE, MAX_GROWTH_STEP);
    round_up_map_size(current.checked_add(step)?)
}

/// The map size to open an environment with, given the size asked for and the data file's
/// size.
pub(crate) fn initial_map_size(requested: usize, data_file_len: u64) -> usize {
    let file = usize::try_from(data_file_len).unwrap_or(usize::MAX);
    let wanted = requested.max(file.saturating_mul(2));
    round_up_map_size(wanted).unwrap_or(usize::MAX - (usize::MAX % MAP_GRANULE))
}

fn round_up_map_size(size: usize) -> Option<usize> {
    let size = size.max(MAP_GRANULE);
    size.checked_next_multiple_of(MAP_GRANULE)
}

/// The databases of an environment of `layout`: log, metadata and (multi-group layout only)
/// journal, each `None` if it does not exist.
pub(crate) type Databases = (Option<Db>, Option<Db>, Option<Db>);

/// Opens the databases of `layout` that exist.
pub(crate) fn open_databases(
    env: &Env<WithoutTls>,
    layout: Layout,
) -> Result<Databases, heed::Error> {
    let (log_name, meta_name) = layout.db_names();
    let rtxn = env.read_txn()?;
    let opened = env.open_databases_and_commit(rtxn, |opener, rtxn| -> Result<_, heed::Error> {
        let log = opener.open_database::<Bytes, Bytes>(rtxn, Some(log_name))?;
        let meta = opener.open_database::<Bytes, Bytes>(rtxn, Some(meta_name))?;
        let journal = match layout {
            Layout::Single => None,
            Layout::Groups => opener.open_database::<Bytes, Bytes>(rtxn, Some(JOURNAL_DB))?,
        };
        Ok(CommitOrAbort::<_, ()>::Commit((log, meta, journal)))
    })?;
    Ok(Result::from(opened).unwrap_or((None, None, None)))
}

/// Creates the databases and the format record of a new environment (and, in the single-group
/// layout, the metadata record of its group), in one synced transaction.
fn create_databases(env: Env<WithoutTls>, layout: Layout) -> Result<Handles, heed::Error> {
    let (log_name, meta_name) = layout.db_names();
    let wtxn = env.write_txn()?;
    let created =
        env.create_databases_and_commit(wtxn, |opener, wtxn| -> Result<_, heed::Error> {
            let meta = opener.create_database::<Bytes, Bytes>(wtxn, Some(meta_name))?;
            let log = opener.create_database::<Bytes, Bytes>(wtxn, Some(log_name))?;
            let journal = match layout {
                Layout::Single => None,
                Layout::Groups => {
                    Some(opener.create_database::<Bytes, Bytes>(wtxn, Some(JOURNAL_DB))?)
                }
            };
            meta.put(wtxn, FORMAT_KEY.as_bytes(), &codec::encode_format(layout.format_version()))?;
            if layout == Layout::Single {
                let state = codec::encode_meta(&MetaRecord::default()).map_err(|e| {
                    heed::Error::Encoding(Box::new(std::io::Error::other(e.to_string())))
                })?;
                let key = layout.keys(raft_core::DEFAULT_GROUP_ID).meta();
                meta.put(wtxn, key.as_slice(), &state)?;
            }
            Ok(CommitOrAbort::<_, ()>::Commit((meta, log, journal)))
        })?;
    match Result::from(created) {
        Ok((meta, log, journal)) => {
            tracing::info!(path = %env.path().display(), ?layout, "created a new raft-lmdb environment");
            Ok(Handles { env, log, meta, journal, layout })
        }
        Err(()) => {
            Err(heed::Error::Io(std::io::Error::other("creating the databases was aborted")))
        }
    }
}

/// Checks the format record, then upgrades an older readable version (see `codec`'s version
/// history): rewrites its format record and, for a multi-group environment of version 3 or
/// older, creates its journal, in one synced transaction before any other write.
fn check_format(mut handles: Handles, path: &Path) -> Result<Handles, OpenError> {
    let rtxn = handles.env.read_txn().map_err(|e| open_error(path, e))?;
    let format = handles.meta.get(&rtxn, FORMAT_KEY.as_bytes()).map_err(|e| open_error(path, e))?;
    let corrupt = |reason: String| OpenError::Corrupt { path: path.to_path_buf(), reason };
    let current = handles.layout.format_version();
    let upgrade_from = match format.map(|bytes| codec::check_format(bytes, current)) {
        None => return Err(corrupt("the format record is missing".into())),
        Some(FormatCheck::Current) => None,
        // An environment holding failed marks (see `codec`'s version history): read as it is.
        Some(FormatCheck::Unsupported(codec::MARKED_FORMAT_VERSION))
            if handles.layout == Layout::Groups =>
        {
            None
        }
        Some(FormatCheck::Upgradable(old)) => Some(old),
        Some(FormatCheck::Unsupported(found)) => {
            return Err(OpenError::UnsupportedVersion {
                path: path.to_path_buf(),
                found,
                // The newest it reads.
                supported: match handles.layout {
                    Layout::Single => current,
                    Layout::Groups => codec::MARKED_FORMAT_VERSION,
                },
            });
        }
        Some(FormatCheck::Foreign) => {
            return Err(OpenError::NotOurStore {
                path: path.to_path_buf(),
                reason: "its format record does not carry the raft-lmdb magic".into(),
            })
        }
    };
    drop(rtxn);
    let Some(old) = upgrade_from else { return Ok(handles) };
    let wtxn = handles.env.write_txn().map_err(|e| open_error(path, e))?;
    let meta = handles.meta;
    let create_journal = handles.layout == Layout::Groups && handles.journal.is_none();
    let upgraded = handles
        .env
        .create_databases_and_commit(wtxn, |opener, wtxn| -> Result<_, heed::Error> {
            let journal = match create_journal {
                true => Some(opener.create_database::<Bytes, Bytes>(wtxn, Some(JOURNAL_DB))?),
                false => None,
            };
            meta.put(wtxn, FORMAT_KEY.as_bytes(), &codec::encode_format(current))?;
            Ok(CommitOrAbort::<_, ()>::Commit(journal))
        })
        .map_err(|e| open_error(path, e))?;
    match Result::from(upgraded) {
        Ok(Some(journal)) => handles.journal = Some(journal),
        Ok(None) => {}
        Err(()) => return Err(corrupt("the format upgrade was aborted".into())),
    }
    tracing::info!(
        path = %path.display(),
        from = old,
        to = current,
        "upgraded the raft-lmdb format"
    );
    Ok(handles)
}

/// Why [`check_group`] failed.
#[derive(Debug)]
pub(crate) enum CheckError {
    /// A read failed in LMDB (a damaged page, an I/O error): no record's fault, nothing is
    /// known of the group's records.
    Lmdb(StorageError),
    /// The group's records do not decode or disagree with each other.
    Records(StorageError),
}

/// Reads the metadata record of the group `keys` (`None` if it does not exist) and checks that
/// its log and journal records hold exactly the entries `purged.index + 1 ..= last.index`, the
/// last one with the recorded term, those of the log before those of the journal.
///
/// The group's journal records are found through `read_index` (reading only those, not the
/// whole journal), taken *after* the snapshot: the group may be written meanwhile even though
/// it is not open (a checkpoint of the write-ahead file, started by another group's request,
/// applies the pending entries of every group, including those of a group whose store was
/// dropped; a journal move takes every group's records). A record is published before the
/// commit that adds it and withdrawn after the commit that deletes it, so the candidates hold
/// every record of the snapshot unless a commit made after the snapshot deleted it; a check
/// that fails is therefore taken again with a new snapshot if a transaction committed since,
/// at most [`CHECK_ATTEMPTS`] times, and reported (`Corrupt`) once none did (or the last
/// attempt failed too).
pub(crate) fn check_group(
    handles: &Handles,
    keys: GroupKeys,
    read_index: &ReadIndex,
) -> Result<Option<MetaRecord>, CheckError> {
    let mut attempt = 1;
    loop {
        let rtxn = handles.read_txn().map_err(CheckError::Lmdb)?;
        #[cfg(test)]
        CHECK_GROUP_ATTEMPTS.with(|n| n.set(n.get() + 1));
        #[cfg(test)]
        check_group_paused();
        let candidates = read_index.candidates(keys.group(), 0, LogIndex::MAX);
        match check_snapshot(handles, &rtxn, keys, candidates) {
            // Records the snapshot holds may have been withdrawn by a later commit.
            Err(CheckError::Records(StorageError::Corrupt(_)))
                if attempt < CHECK_ATTEMPTS
                    && handles.read_txn().map_err(CheckError::Lmdb)?.id() != rtxn.id() =>
            {
                attempt += 1;
            }
            checked => return checked,
        }
    }
}

/// How many snapshots [`check_group`] takes at most: it takes another only when its check
/// failed and a transaction committed after its snapshot (which may have deleted journal
/// records the snapshot holds), so a healthy group's attempt fails only if such a commit races
/// it again.
const CHECK_ATTEMPTS: usize = 64;

/// [`check_group`] in the snapshot `rtxn`, with the group's journal records `candidates`
/// (taken after the snapshot).
fn check_snapshot(
    handles: &Handles,
    rtxn: &RoTxn<'_, WithoutTls>,
    keys: GroupKeys,
    candidates: Vec<(LogIndex, u64)>,
) -> Result<Option<MetaRecord>, CheckError> {
    let lmdb = |e| CheckError::Lmdb(storage_error(e));
    let meta = match handles.lookup_meta(rtxn, keys).map_err(CheckError::Lmdb)? {
        None => return Ok(None),
        Some(meta) => meta.map_err(CheckError::Records)?,
    };
    let (purged, last) = (meta.purged(), meta.last());
    let expected_len = last.index - purged.index;
    let all = keys.log(0);
    let end = keys.log(u64::MAX);
    let bounds = all.through(&end);
    let log_len = match keys.layout() {
        // The whole database is the group's: LMDB keeps the count.
        Layout::Single => handles.log.len(rtxn).map_err(lmdb)?,
        Layout::Groups => {
            let mut len = 0u64;
            for item in handles.log.range(rtxn, &bounds).map_err(lmdb)? {
                item.map_err(lmdb)?;
                len += 1;
            }
            len
        }
    };
    // The group's journal records: how many, the first index, the last index and its record.
    let (mut journal_len, mut journal_first) = (0u64, None::<LogIndex>);
    let mut journal_last: Option<(LogIndex, &[u8])> = None;
    if let Some(journal) = &handles.journal {
        for (index, seq) in candidates {
            #[cfg(test)]
            JOURNAL_RECORDS_CHECKED.with(|n| n.set(n.get() + 1));
            // As `journal::read_record`, telling LMDB's errors from the record's.
            let record = journal.get(rtxn, &seq_key(seq));
            #[cfg(test)]
            let record = match JOURNAL_READ_FAILS.with(|g| g.get()) == Some(keys.group()) {
                true => Err(heed::Error::Mdb(heed::MdbError::Corrupted)),
                false => record,
            };
            let record = record.map_err(lmdb)?;
            let split = record.map(split_record).transpose().map_err(CheckError::Records)?;
            if let Some((_, _, entry)) = split.filter(|&(g, i, _)| (g, i) == (keys.group(), index))
            {
                journal_len += 1;
                journal_first = Some(journal_first.map_or(index, |first| first.min(index)));
                if journal_last.is_none_or(|(max, _)| index > max) {
                    journal_last = Some((index, entry));
                }
            }
        }
    }
    let len = log_len + journal_len;
    if len != expected_len {
        return Err(CheckError::Records(StorageError::Corrupt(format!(
            "the log holds {len} entries where the metadata (purged {purged:?}, last {last:?}) says {expected_len}"
        ))));
    }
    if len == 0 {
        return Ok(Some(meta));
    }
    let log_first = match handles.log.range(rtxn, &bounds).map_err(lmdb)?.next() {
        Some(item) => keys.index_of(item.map_err(lmdb)?.0),
        None => None,
    };
    let log_last = match handles.log.rev_range(rtxn, &bounds).map_err(lmdb)?.next() {
        Some(item) => {
            let (key, bytes) = item.map_err(lmdb)?;
            let index = keys.index_of(key).unwrap_or_default();
            Some((index, bytes))
        }
        None => None,
    };
    let first = log_first.or(journal_first);
    let stored_last = journal_last.or(log_last);
    let stored_last_id = match stored_last {
        Some((index, bytes)) => {
            LogId::new(codec::decode_entry_term(index, bytes).map_err(CheckError::Records)?, index)
        }
        None => LogId::default(),
    };
    let in_order = match (log_last, journal_first) {
        (Some((log_last, _)), Some(journal_first)) => log_last < journal_first,
        _ => true,
    };
    if first != Some(purged.index + 1) || stored_last_id != last || !in_order {
        return Err(CheckError::Records(StorageError::Corrupt(format!(
            "the log spans {first:?}..={stored_last_id:?} where the metadata says {}..={last:?}",
            purged.index + 1
        ))));
    }
    Ok(Some(meta))
}

fn open_error(path: &Path, err: heed::Error) -> OpenError {
    let path = path.to_path_buf();
    match err {
        heed::Error::Io(source) => OpenError::Io { path, source },
        heed::Error::Mdb(heed::MdbError::Invalid) => OpenError::NotOurStore {
            path,
            reason: "its data.mdb is not an LMDB environment".into(),
        },
        heed::Error::Mdb(heed::MdbError::VersionMismatch) => OpenError::NotOurStore {
            path,
            reason: "its data.mdb was written by an incompatible LMDB version".into(),
        },
        heed::Error::Mdb(heed::MdbError::Incompatible) => OpenError::NotOurStore {
            path,
            reason: "its databases have names or flags raft-lmdb does not use".into(),
        },
        heed::Error::Mdb(e @ (heed::MdbError::Corrupted | heed::MdbError::PageNotFound)) => {
            OpenError::Corrupt { path, reason: format!("LMDB: {e}") }
        }
        heed::Error::EnvAlreadyOpened => OpenError::AlreadyOpenInProcess { path },
        other => OpenError::Lmdb { path, reason: other.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_sizes_grow_and_stay_aligned() {
        assert_eq!(grown_map_size(MAP_GRANULE), Some(2 * MAP_GRANULE));
        assert_eq!(grown_map_size(100 << 20), Some(200 << 20));
        assert_eq!(grown_map_size(64 << 30), Some(80 << 30));
        assert_eq!(grown_map_size(usize::MAX - 10), None);
        assert_eq!(initial_map_size(1, 0), MAP_GRANULE);
        assert_eq!(initial_map_size(64 << 20, 100 << 20), 200 << 20);
        assert_eq!(initial_map_size(64 << 20, 1), 64 << 20);
    }
}
