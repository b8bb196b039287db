//! The LMDB environment of a store: opening it (the crate's single `unsafe` call), creating or
//! checking its databases, and reopening it with a larger map.

use std::path::Path;
use std::time::Duration;

use heed::byteorder::BigEndian;
use heed::types::{Bytes, Str, U64};
use heed::{CommitOrAbort, Database, Env, EnvOpenOptions, RoTxn, WithoutTls};
use raft_core::{LogId, StorageError};

use crate::codec::{
    self, FormatCheck, MetaRecord, FORMAT_KEY, FORMAT_VERSION, LOG_DB, META_DB, STATE_KEY,
};
use crate::error::{storage_error, OpenError};
use crate::registry::DirGuard;

/// Log entries: big-endian index → encoded [`codec::EntryRecord`].
pub(crate) type LogDb = Database<'static, U64<BigEndian>, Bytes>;
/// Metadata: name → record.
pub(crate) type MetaDb = Database<'static, Str, Bytes>;

/// Map sizes are kept multiples of this (a multiple of every page size LMDB runs with).
const MAP_GRANULE: usize = 1 << 20;
/// Above this map size, the map grows by this much at a time instead of doubling.
const MAX_GROWTH_STEP: usize = 16 << 30;
/// How long closing waits for the last handle on the environment before giving up.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// An open environment and its two databases. Dropping it closes the environment.
#[derive(Debug)]
pub(crate) struct Handles {
    pub(crate) env: Env<WithoutTls>,
    pub(crate) log: LogDb,
    pub(crate) meta: MetaDb,
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

    /// Reads the metadata record.
    pub(crate) fn read_meta(
        &self,
        txn: &RoTxn<'_, WithoutTls>,
    ) -> Result<MetaRecord, StorageError> {
        match self.meta.get(txn, STATE_KEY).map_err(storage_error)? {
            Some(bytes) => codec::decode_meta(bytes),
            None => Err(StorageError::Corrupt("the metadata record is missing".into())),
        }
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
    options.map_size(map_size).max_dbs(2);
    #[allow(unsafe_code)]
    // SAFETY: `EnvOpenOptions::open` is unsafe because LMDB maps the data file into memory and
    // undefined behaviour follows if that file is changed behind the map or the same
    // environment is mapped twice in one process. Both are excluded here:
    // * `guard` proves that this store exclusively owns `dir`: the process-wide registry in
    //   `registry.rs` admits one live store per canonical directory, and the store never opens
    //   a second environment before the previous one has been closed (see `Handles::close`,
    //   used when the map grows);
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

/// Opens the store in `guard`'s directory: creates the databases of a new store, or checks that
/// an existing one is ours, of a supported version and consistent.
pub(crate) fn open_store(
    guard: &DirGuard,
    map_size: usize,
) -> Result<(Handles, MetaRecord), OpenError> {
    let path = guard.path();
    let env = open_env(guard, map_size).map_err(|e| open_error(path, e))?;
    let (meta, log, main_is_empty) = open_databases(&env).map_err(|e| open_error(path, e))?;
    let handles = match (meta, log) {
        (Some(meta), Some(log)) => Handles { env, log, meta },
        (None, None) if main_is_empty => create_databases(env).map_err(|e| open_error(path, e))?,
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
    let meta = check_store(&handles, path)?;
    Ok((handles, meta))
}

/// Closes `handles` and opens the same store again with a map of at least `map_size` bytes.
pub(crate) fn reopen(
    guard: &DirGuard,
    handles: Handles,
    map_size: usize,
) -> Result<Handles, StorageError> {
    handles.close()?;
    let env = open_env(guard, map_size).map_err(storage_error)?;
    match open_databases(&env).map_err(storage_error)? {
        (Some(meta), Some(log), _) => Ok(Handles { env, log, meta }),
        _ => Err(StorageError::Corrupt("the raft-lmdb databases vanished while reopening".into())),
    }
}

/// The map size to use after `current` turned out too small.
pub(crate) fn grown_map_size(current: usize) -> Option<usize> {
    let step = current.clamp(MAP_GRANULE, MAX_GROWTH_STEP);
    round_up_map_size(current.checked_add(step)?)
}

/// The map size to open a store with, given the size asked for and the data file's size.
pub(crate) fn initial_map_size(requested: usize, data_file_len: u64) -> usize {
    let file = usize::try_from(data_file_len).unwrap_or(usize::MAX);
    let wanted = requested.max(file.saturating_mul(2));
    round_up_map_size(wanted).unwrap_or(usize::MAX - (usize::MAX % MAP_GRANULE))
}

fn round_up_map_size(size: usize) -> Option<usize> {
    let size = size.max(MAP_GRANULE);
    size.checked_next_multiple_of(MAP_GRANULE)
}

pub(crate) type OpenedDatabases = (Option<MetaDb>, Option<LogDb>, bool);

/// Opens the two databases if they exist, and says whether the main database is empty.
pub(crate) fn open_databases(env: &Env<WithoutTls>) -> Result<OpenedDatabases, heed::Error> {
    let rtxn = env.read_txn()?;
    let opened = env.open_databases_and_commit(rtxn, |opener, rtxn| -> Result<_, heed::Error> {
        let meta = opener.open_database::<Str, Bytes>(rtxn, Some(META_DB))?;
        let log = opener.open_database::<U64<BigEndian>, Bytes>(rtxn, Some(LOG_DB))?;
        Ok(CommitOrAbort::<_, ()>::Commit((meta, log)))
    })?;
    let (meta, log) = Result::from(opened).unwrap_or((None, None));
    // The main database lists the named databases (and whatever another program stored there).
    let main_is_empty = env.unnamed_database_stat().entries == 0;
    Ok((meta, log, main_is_empty))
}

/// Creates the databases and the format and metadata records of a new store, in one synced
/// transaction.
fn create_databases(env: Env<WithoutTls>) -> Result<Handles, heed::Error> {
    let wtxn = env.write_txn()?;
    let created =
        env.create_databases_and_commit(wtxn, |opener, wtxn| -> Result<_, heed::Error> {
            let meta = opener.create_database::<Str, Bytes>(wtxn, Some(META_DB))?;
            let log = opener.create_database::<U64<BigEndian>, Bytes>(wtxn, Some(LOG_DB))?;
            meta.put(wtxn, FORMAT_KEY, &codec::encode_format(FORMAT_VERSION))?;
            let state = codec::encode_meta(&MetaRecord::default()).map_err(|e| {
                heed::Error::Encoding(Box::new(std::io::Error::other(e.to_string())))
            })?;
            meta.put(wtxn, STATE_KEY, &state)?;
            Ok(CommitOrAbort::<_, ()>::Commit((meta, log)))
        })?;
    match Result::from(created) {
        Ok((meta, log)) => {
            tracing::info!(path = %env.path().display(), "created a new raft-lmdb store");
            Ok(Handles { env, log, meta })
        }
        Err(()) => {
            Err(heed::Error::Io(std::io::Error::other("creating the databases was aborted")))
        }
    }
}

/// Checks the format record, the metadata record and that the log matches the bounds, then
/// upgrades the format record of an older readable version (see `codec`'s version history).
fn check_store(handles: &Handles, path: &Path) -> Result<MetaRecord, OpenError> {
    let corrupt = |reason: String| OpenError::Corrupt { path: path.to_path_buf(), reason };
    let rtxn = handles.read_txn().map_err(|e| corrupt(e.to_string()))?;
    let format = handles.meta.get(&rtxn, FORMAT_KEY).map_err(|e| open_error(path, e))?;
    let upgrade_from = match format.map(codec::check_format) {
        None => return Err(corrupt("the format record is missing".into())),
        Some(FormatCheck::Current) => None,
        Some(FormatCheck::Upgradable(old)) => Some(old),
        Some(FormatCheck::Unsupported(found)) => {
            return Err(OpenError::UnsupportedVersion {
                path: path.to_path_buf(),
                found,
                supported: FORMAT_VERSION,
            })
        }
        Some(FormatCheck::Foreign) => {
            return Err(OpenError::NotOurStore {
                path: path.to_path_buf(),
                reason: "its format record does not carry the raft-lmdb magic".into(),
            })
        }
    };
    let meta = handles.read_meta(&rtxn).map_err(|e| corrupt(e.to_string()))?;
    check_log_bounds(handles, &rtxn, &meta).map_err(|e| corrupt(e.to_string()))?;
    drop(rtxn);
    if let Some(old) = upgrade_from {
        let mut wtxn = handles.env.write_txn().map_err(|e| open_error(path, e))?;
        let record = codec::encode_format(FORMAT_VERSION);
        handles.meta.put(&mut wtxn, FORMAT_KEY, &record).map_err(|e| open_error(path, e))?;
        wtxn.commit().map_err(|e| open_error(path, e))?;
        tracing::info!(
            path = %path.display(),
            from = old,
            to = FORMAT_VERSION,
            "upgraded the raft-lmdb format record"
        );
    }
    Ok(meta)
}

/// Checks that the log holds exactly the entries `purged.index + 1 ..= last.index`, and that the
/// last one has the recorded term.
fn check_log_bounds(
    handles: &Handles,
    rtxn: &RoTxn<'_, WithoutTls>,
    meta: &MetaRecord,
) -> Result<(), StorageError> {
    let (purged, last) = (meta.purged(), meta.last());
    let expected_len = last.index - purged.index;
    let len = handles.log.len(rtxn).map_err(storage_error)?;
    if len != expected_len {
        return Err(StorageError::Corrupt(format!(
            "the log holds {len} entries where the metadata (purged {purged:?}, last {last:?}) says {expected_len}"
        )));
    }
    if len == 0 {
        return Ok(());
    }
    let first = handles.log.first(rtxn).map_err(storage_error)?.map(|(index, _)| index);
    let stored_last = handles.log.last(rtxn).map_err(storage_error)?;
    let stored_last_id = match stored_last {
        Some((index, bytes)) => LogId::new(codec::decode_entry_term(index, bytes)?, index),
        None => LogId::default(),
    };
    if first != Some(purged.index + 1) || stored_last_id != last {
        return Err(StorageError::Corrupt(format!(
            "the log spans {first:?}..={stored_last_id:?} where the metadata says {}..={last:?}",
            purged.index + 1
        )));
    }
    Ok(())
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
