//! Where a group's records live in an environment: the two layouts and their keys.
//!
//! * [`Layout::Single`] (an [`crate::LmdbLogStore`] opened with `open_dir`, the format of every
//!   earlier build): one group. Databases `raft-log` (key: the entry index as a big-endian
//!   `u64`) and `raft-meta` (keys `format` and `state`).
//! * [`Layout::Groups`] (an [`crate::LmdbEnvironment`]): any number of groups in one key space.
//!   Databases `raft-groups-log` (key: the group id then the entry index, both big-endian
//!   `u64`, so that a group's entries are contiguous and in index order) and
//!   `raft-groups-meta` (keys `format`, `journal-seq`, `wal-id` and `wal-generation`, `g`
//!   followed by the big-endian group id for each group's metadata record, and `failed`
//!   followed by the big-endian group id for each failed group's mark, see `journal`), plus the
//!   journal `raft-groups-journal` where commits append new entries before they are moved to
//!   `raft-groups-log` (see `journal`). A mark's key never collides with another key: 14
//!   bytes, where the group records' keys are 9 and the others are fixed words.
//!
//! The records themselves (entries, metadata, format) are the same in both (see `codec`). One
//! key space rather than named databases per group: LMDB looks named databases up by a linear
//! search and a commit visits every one opened, which does not scale to thousands of groups.

use std::ops::Bound;

use raft_core::{GroupId, LogIndex, DEFAULT_GROUP_ID};

use crate::codec::{LOG_DB, META_DB, STATE_KEY};

/// Name of the log database of the multi-group layout.
pub(crate) const GROUPS_LOG_DB: &str = "raft-groups-log";
/// Name of the metadata database of the multi-group layout.
pub(crate) const GROUPS_META_DB: &str = "raft-groups-meta";
/// First byte of a group's metadata key in the multi-group layout.
const GROUP_META_PREFIX: u8 = b'g';
/// First bytes of a failed group's mark in the metadata database of the multi-group layout
/// (see `journal`).
pub(crate) const FAILED_MARK_PREFIX: &[u8] = b"failed";

/// The group whose failed mark is under `key` (a key starting with [`FAILED_MARK_PREFIX`]),
/// `None` if the rest of the key is not a group id.
pub(crate) fn group_of_failed_mark(key: &[u8]) -> Option<GroupId> {
    let id = key.strip_prefix(FAILED_MARK_PREFIX)?;
    Some(GroupId::from_be_bytes(id.try_into().ok()?))
}

/// How the groups of an environment are laid out in its databases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// One group ([`DEFAULT_GROUP_ID`]), in the format of single-group stores.
    Single,
    /// Any number of groups, keyed by group id.
    Groups,
}

impl Layout {
    /// The format version this build writes for the layout (see `codec`).
    pub(crate) fn format_version(self) -> u32 {
        match self {
            Layout::Single => crate::codec::STORE_FORMAT_VERSION,
            Layout::Groups => crate::codec::FORMAT_VERSION,
        }
    }

    /// The names of the log and metadata databases.
    pub(crate) fn db_names(self) -> (&'static str, &'static str) {
        match self {
            Layout::Single => (LOG_DB, META_DB),
            Layout::Groups => (GROUPS_LOG_DB, GROUPS_META_DB),
        }
    }

    /// The other layout (to recognize a directory opened the wrong way).
    pub(crate) fn other(self) -> Layout {
        match self {
            Layout::Single => Layout::Groups,
            Layout::Groups => Layout::Single,
        }
    }

    /// The keys of `group`'s records.
    pub(crate) fn keys(self, group: GroupId) -> GroupKeys {
        GroupKeys { layout: self, group }
    }

    /// The group a metadata key belongs to, if it is a group's key.
    pub(crate) fn group_of_meta_key(self, key: &[u8]) -> Option<GroupId> {
        match self {
            Layout::Single => (key == STATE_KEY.as_bytes()).then_some(DEFAULT_GROUP_ID),
            Layout::Groups => match key {
                [GROUP_META_PREFIX, id @ ..] => Some(GroupId::from_be_bytes(id.try_into().ok()?)),
                _ => None,
            },
        }
    }

    /// The prefix of every group's metadata key.
    pub(crate) fn meta_prefix(self) -> &'static [u8] {
        match self {
            Layout::Single => STATE_KEY.as_bytes(),
            Layout::Groups => &[GROUP_META_PREFIX],
        }
    }
}

/// A key of the log or metadata database: at most 16 bytes, kept inline.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Key {
    bytes: [u8; 16],
    len: usize,
}

impl Key {
    fn new(parts: &[&[u8]]) -> Key {
        let mut key = Key { bytes: [0; 16], len: 0 };
        for part in parts {
            key.bytes[key.len..key.len + part.len()].copy_from_slice(part);
            key.len += part.len();
        }
        key
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// The keys from `self` to `last`, both included.
    pub(crate) fn through<'a>(&'a self, last: &'a Key) -> KeyRange<'a> {
        (Bound::Included(self.as_slice()), Bound::Included(last.as_slice()))
    }

    /// The keys from `self` up to `end`, excluded.
    pub(crate) fn until<'a>(&'a self, end: &'a Key) -> KeyRange<'a> {
        (Bound::Included(self.as_slice()), Bound::Excluded(end.as_slice()))
    }
}

impl AsRef<[u8]> for Key {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

/// A range of keys (bounds on unsized slices: what LMDB's range operations take).
pub(crate) type KeyRange<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// The keys of one group's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GroupKeys {
    layout: Layout,
    group: GroupId,
}

impl GroupKeys {
    /// The layout.
    pub(crate) fn layout(&self) -> Layout {
        self.layout
    }

    /// The group.
    pub(crate) fn group(&self) -> GroupId {
        self.group
    }

    /// The key of the entry `index`.
    pub(crate) fn log(&self, index: LogIndex) -> Key {
        match self.layout {
            Layout::Single => Key::new(&[&index.to_be_bytes()]),
            Layout::Groups => Key::new(&[&self.group.to_be_bytes(), &index.to_be_bytes()]),
        }
    }

    /// The key of the group's metadata record.
    pub(crate) fn meta(&self) -> Key {
        match self.layout {
            Layout::Single => Key::new(&[STATE_KEY.as_bytes()]),
            Layout::Groups => Key::new(&[&[GROUP_META_PREFIX], &self.group.to_be_bytes()]),
        }
    }

    /// The key of the group's failed mark in the metadata database (multi-group layout; see
    /// `journal`).
    pub(crate) fn failed_mark(&self) -> Key {
        Key::new(&[FAILED_MARK_PREFIX, &self.group.to_be_bytes()])
    }

    /// The index of the entry under `key`, a key of this layout's log database.
    pub(crate) fn index_of(&self, key: &[u8]) -> Option<LogIndex> {
        let tail = key.len().checked_sub(8).and_then(|at| key.get(at..))?;
        Some(LogIndex::from_be_bytes(tail.try_into().ok()?))
    }

    /// Whether an entry put after every entry of the group is also after every key of the
    /// database (LMDB's `APPEND` then applies).
    pub(crate) fn appends_at_end(&self) -> bool {
        self.layout == Layout::Single
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_groups_apart_and_entries_in_order() {
        let single = Layout::Single.keys(DEFAULT_GROUP_ID);
        assert_eq!(single.log(0x0102).as_slice(), &[0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(single.meta().as_slice(), b"state");
        let (a, b) = (Layout::Groups.keys(1), Layout::Groups.keys(2));
        assert!(a.log(u64::MAX).as_slice() < b.log(0).as_slice());
        assert!(a.log(9).as_slice() < a.log(10).as_slice());
        assert_eq!(a.index_of(a.log(77).as_slice()), Some(77));
        assert_eq!(Layout::Groups.group_of_meta_key(b.meta().as_slice()), Some(2));
        assert_eq!(Layout::Groups.group_of_meta_key(b"format"), None);
        assert_eq!(Layout::Single.group_of_meta_key(b"state"), Some(DEFAULT_GROUP_ID));
        assert_eq!(Layout::Single.group_of_meta_key(b"format"), None);
        let mark = b.failed_mark();
        assert_eq!(group_of_failed_mark(mark.as_slice()), Some(2));
        assert_eq!(Layout::Groups.group_of_meta_key(mark.as_slice()), None);
        assert_eq!(group_of_failed_mark(b"failed"), None);
        assert_ne!(mark.as_slice(), b.meta().as_slice());
    }
}
