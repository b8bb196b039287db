//! Errors: [`OpenError`] for opening a store, and the mapping of LMDB errors to
//! [`raft_core::StorageError`].

use std::io;
use std::path::PathBuf;

use raft_core::StorageError;

/// Why [`crate::LmdbLogStore::open_dir`] or [`crate::LmdbEnvironment::open`] could not open a
/// directory, or an environment could not open or remove a group.
///
/// Every variant names the path involved; none of them leaves anything changed on disk except
/// for creating the directory when it did not exist.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The path exists and is not a directory.
    #[error("{path}: not a directory")]
    NotADirectory {
        /// The path given.
        path: PathBuf,
    },
    /// The directory holds files that a raft-lmdb store never creates: it belongs to something
    /// else, and this store refuses to write into it.
    #[error(
        "{path}: not a raft-lmdb directory (it contains {entry:?}, which raft-lmdb never creates)"
    )]
    ForeignDirectory {
        /// The directory.
        path: PathBuf,
        /// The first unexpected entry found.
        entry: String,
    },
    /// The directory holds an LMDB environment written by another program (or a file that is not
    /// LMDB at all).
    #[error("{path}: not a raft-lmdb store: {reason}")]
    NotOurStore {
        /// The directory.
        path: PathBuf,
        /// What gave it away.
        reason: String,
    },
    /// The store was written with a format version this build does not read (a newer one, or
    /// something that was never a version).
    #[error(
        "{path}: unsupported raft-lmdb format version {found} (this build reads versions {} to {supported})",
        crate::codec::OLDEST_READABLE_VERSION
    )]
    UnsupportedVersion {
        /// The directory.
        path: PathBuf,
        /// The version found on disk.
        found: u32,
        /// The newest version this build reads (it also reads every older one): the version it
        /// writes, or for a multi-group environment [`crate::MARKED_FORMAT_VERSION`] (written
        /// while a failed group's mark is stored; back to [`crate::FORMAT_VERSION`] once the
        /// last failed group is removed).
        supported: u32,
    },
    /// The store is ours but its contents are inconsistent or undecodable.
    #[error("{path}: corrupt raft-lmdb store: {reason}")]
    Corrupt {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// This process already has the directory open through another `LmdbLogStore`. Drop that one
    /// first: LMDB forbids opening one environment twice in a process.
    #[error("{path}: already open in this process")]
    AlreadyOpenInProcess {
        /// The canonical path of the directory.
        path: PathBuf,
    },
    /// Another process holds the directory open (it holds the lock on the directory).
    #[error("{path}: locked by another process (is another node running on this directory?)")]
    LockedByOtherProcess {
        /// The directory.
        path: PathBuf,
    },
    /// The store of this group of the environment is already open in this process (or the
    /// group is being removed). Drop that store first.
    #[error("{path}: group {group} is in use in this process")]
    GroupInUse {
        /// The environment's directory.
        path: PathBuf,
        /// The group.
        group: raft_core::GroupId,
    },
    /// The environment could not carry out the request: its writer has stopped after a failed
    /// commit, or reading failed.
    #[error("{path}: {source}")]
    Storage {
        /// The environment's directory.
        path: PathBuf,
        /// What failed.
        #[source]
        source: StorageError,
    },
    /// An I/O error while opening (permissions, disk full, ...).
    #[error("{path}: I/O error while opening: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// LMDB refused to open the environment for another reason.
    #[error("{path}: LMDB error while opening: {reason}")]
    Lmdb {
        /// The directory.
        path: PathBuf,
        /// LMDB's message.
        reason: String,
    },
}

impl From<OpenError> for StorageError {
    fn from(err: OpenError) -> Self {
        match err {
            OpenError::Io { source, .. } => StorageError::Io(source),
            OpenError::Storage { source, .. } => source,
            OpenError::UnsupportedVersion { found, supported, .. } => {
                StorageError::UnsupportedVersion { found, supported }
            }
            OpenError::Corrupt { path, reason } => {
                StorageError::Corrupt(format!("{}: {reason}", path.display()))
            }
            other => StorageError::Other(other.to_string()),
        }
    }
}

/// Whether a heed error says the memory map is full.
pub(crate) fn is_map_full(err: &heed::Error) -> bool {
    matches!(err, heed::Error::Mdb(heed::MdbError::MapFull))
}

/// Maps an LMDB error met while reading or writing to a [`StorageError`].
pub(crate) fn storage_error(err: heed::Error) -> StorageError {
    match err {
        heed::Error::Io(e) => StorageError::Io(e),
        heed::Error::Mdb(e @ (heed::MdbError::Corrupted | heed::MdbError::PageNotFound)) => {
            StorageError::Corrupt(format!("LMDB: {e}"))
        }
        heed::Error::Decoding(e) => StorageError::Corrupt(format!("LMDB decoding: {e}")),
        other => StorageError::Other(format!("LMDB: {other}")),
    }
}
