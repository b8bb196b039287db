//! The journal of a multi-group environment ([`crate::layout::Layout::Groups`]): where each
//! commit appends the new entries of every group, in one place.
//!
//! An environment keeps each group's entries under its own key range of `raft-groups-log`, so
//! a commit appending one entry to each of 64 groups would dirty 64 leaves and their branch
//! pages. Instead, new entries go to [`JOURNAL_DB`], keyed by a sequence number that only grows
//! (big-endian `u64`, appended at the end of the B-tree with `MDB_APPEND`): a commit dirties the
//! last one or two leaves of the journal whatever the number of groups. Once the journal holds
//! as many records or bytes as its bound ([`crate::LmdbOptions::with_journal_bound`]), the
//! next commit first moves
//! every record to its group's key range (each group's leaf then touched once for many entries)
//! and empties the journal of all but the set-aside records of failed groups (see below), in
//! the same transaction as its own writes: no extra sync.
//!
//! # Invariants (of every committed state)
//!
//! * A group's entry `(group, index)` is stored exactly once: in `raft-groups-log` or as one
//!   journal record (a failed group's set-aside records excepted, see below). Truncation,
//!   purge, reset and group removal delete the group's journal records as well as its log
//!   range; a move deletes every record it moves.
//! * A group's entries in the log come before its entries in the journal (a move takes them
//!   all, and new entries follow the last one).
//! * Sequence numbers only grow while the environment is open, so a reader never meets a
//!   number reused for another record, and each record is appended after every other one.
//!   [`JOURNAL_SEQ_KEY`] in the metadata database holds the next one as of the last move (when
//!   the journal was emptied but for failed groups' records); open continues from it or from
//!   the journal's last record.
//!
//! # A failed group
//!
//! Open checks every record against its group's metadata record, and the write-ahead file's
//! entries against it too (`environment.rs`). When that record does not decode, or a record
//! or entry disagrees with it (a journal record outside `(purged, last]` or of an entry its
//! log also holds, a write-ahead entry that does not follow), the group alone is *failed*
//! ([`JournalIndex::failed`], with the reason naming it): its records are kept as they are,
//! unchecked, and set aside (`JournalIndex::aside`, apart from the other groups' records): a
//! move leaves them in the journal (it cannot tell where they belong, nor whether its log
//! holds them already), they do not count towards the bound, and every other group opens and
//! works. Opening the group fails with `Corrupt` and that reason. Entries of a failed group
//! found in the write-ahead file at open are set aside the same way (appended to the journal
//! by the open-time checkpoint, next to any record of the same index, which stays as it is):
//! nothing of the group is lost until it is removed.
//!
//! The failed state is stored: a *failed mark* in the metadata database (key `failed` then the
//! big-endian group id, see `layout`; value `[1 u8][reason, UTF-8]`), written by the first
//! commit after the group failed, before anything else of it ([`JournalIndex::store_marks`]):
//! the open-time checkpoint that sets its write-ahead entries aside, or a commit the open makes
//! for the marks alone. That commit also rewrites the format record to
//! [`MARKED_FORMAT_VERSION`] (builds that do not know marks must refuse the environment). Every
//! later open reads the marks first: a marked group is failed with its stored reason whatever
//! its records now look like, and its records (which may hold an index twice) are set aside
//! unchecked. A mark that does not decode fails its group all the same, with a reason saying so;
//! a mark key that does not split fails the open. Removing the group deletes its records like
//! any group's and its mark in the same transaction, and the group is no longer failed
//! (created again, it starts empty); the removal that deletes the last mark (no failed group
//! nor set-aside record left) also rewrites the format record to [`codec::FORMAT_VERSION`].
//! A marked group is listed by `groups()` even without a metadata record (so that it can be
//! found and removed), and its snapshot directory is kept until then. A mark holding no reason
//! fails its group with a reason naming it.
//!
//! A failed group's set-aside records are at most the move threshold plus one transaction's
//! records (its journal records at the open that failed it) plus the write-ahead file's pending
//! entries (`MAX_PENDING_ENTRIES`), and stay until the group is removed (nothing is written to a
//! failed group, which cannot be opened). The invariants above hold for every other group; what
//! stays corruption of the whole journal (the open fails) is what no group can be blamed for
//! alone: an LMDB read error, a key or record that does not split, a record (or write-ahead
//! entry) of an unmarked group without a metadata record, the same entry twice in a group that
//! is not failed, a sequence number at its end.
//!
//! # Reads racing a move
//!
//! Readers find a journal record through [`ReadIndex`], shared with the writer, which may be
//! newer or older than the reader's LMDB snapshot. The writer publishes a record's location
//! before the commit that writes it and withdraws it only after the commit that deletes it, so
//! the index holds every record of any snapshot a reader may have unless a later commit has
//! deleted it. A reader checks that the record it finds in its own snapshot carries the group
//! and index it looks for; by the first invariant such a record is the entry. If the index no
//! longer knows an entry its snapshot needs (a move or truncation committed meanwhile), the
//! reader starts again with a fresh snapshot.

use std::collections::hash_map::Entry;
use std::collections::{btree_map, BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

use heed::{PutFlags, RoTxn, RwTxn, WithoutTls};
use raft_core::{GroupId, LogIndex, StorageError};

use crate::codec::{self, FORMAT_KEY, MARKED_FORMAT_VERSION};
use crate::env::Db;
use crate::error::storage_error;
use crate::layout::{group_of_failed_mark, Layout, FAILED_MARK_PREFIX};

/// Name of the journal database of the multi-group layout.
pub(crate) const JOURNAL_DB: &str = "raft-groups-journal";
/// Key, in the metadata database of the multi-group layout, of the next journal sequence
/// number as of the last move (big-endian `u64`).
pub(crate) const JOURNAL_SEQ_KEY: &[u8] = b"journal-seq";
/// Bytes before the entry record in a journal record: group id and index, big-endian.
const HEADER_LEN: usize = 16;

/// The key of the journal record `seq`.
pub(crate) fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// Splits a journal record into its group, index and entry record.
pub(crate) fn split_record(bytes: &[u8]) -> Result<(GroupId, LogIndex, &[u8]), StorageError> {
    let corrupt = || StorageError::Corrupt(format!("a journal record of {} bytes", bytes.len()));
    let (head, entry) = (bytes.get(..HEADER_LEN).ok_or_else(corrupt)?, &bytes[HEADER_LEN..]);
    let group = GroupId::from_be_bytes(head[..8].try_into().map_err(|_| corrupt())?);
    let index = LogIndex::from_be_bytes(head[8..].try_into().map_err(|_| corrupt())?);
    Ok((group, index, entry))
}

/// The entry record of `(group, index)` in the journal record `seq` of `txn`'s snapshot, if
/// that record exists and is that entry's.
pub(crate) fn read_record<'t>(
    journal: &Db,
    txn: &'t RoTxn<'_, WithoutTls>,
    seq: u64,
    group: GroupId,
    index: LogIndex,
) -> Result<Option<&'t [u8]>, StorageError> {
    match journal.get(txn, &seq_key(seq)).map_err(storage_error)? {
        Some(bytes) => {
            let (g, i, entry) = split_record(bytes)?;
            Ok((g == group && i == index).then_some(entry))
        }
        None => Ok(None),
    }
}

/// A change of the journal made by the current transaction.
#[derive(Debug, Clone)]
enum Change {
    Added(GroupId, LogIndex, u64),
    Removed(GroupId, LogIndex, u64),
    /// A record of a failed group was set aside (appended).
    AsideAdded(GroupId, LogIndex, u64),
    /// A record of a failed group was deleted (the group is being removed).
    AsideRemoved(GroupId, LogIndex, u64),
    /// The group was failed (why, and whether its mark was still to be stored) and no longer
    /// is (it was removed).
    Recovered(GroupId, String, bool),
    /// The group's failed mark was stored.
    MarkStored(GroupId),
}

/// Version of a failed mark's value: `[version u8][reason, UTF-8]`.
const MARK_VERSION: u8 = 1;

/// The value of a failed mark for `reason`.
fn encode_mark(reason: &str) -> Vec<u8> {
    let mut value = Vec::with_capacity(1 + reason.len());
    value.push(MARK_VERSION);
    value.extend_from_slice(reason.as_bytes());
    value
}

/// The reason stored in `group`'s failed mark `value`; a mark that does not decode, or holds
/// no reason, still fails the group, with a reason naming it and saying so (see the module
/// documentation).
fn decode_mark(group: GroupId, value: &[u8]) -> String {
    match value.split_first() {
        Some((&MARK_VERSION, [])) => failure(group, "failed (no reason stored)"),
        Some((&MARK_VERSION, reason)) => match std::str::from_utf8(reason) {
            Ok(reason) => reason.to_owned(),
            Err(_) => failure(group, "its failed mark does not decode (its reason is not UTF-8)"),
        },
        _ => failure(group, &format!("its failed mark ({} bytes) does not decode", value.len())),
    }
}

/// Why `group` failed, naming it, from what is wrong (`what`).
pub(crate) fn failure(group: GroupId, what: &str) -> String {
    format!("group {group}: {what} (remove the group to go on)")
}

/// What open knows of a group that has journal records.
#[derive(Debug, Clone, Copy)]
enum Bounds {
    /// No metadata record: the group does not exist.
    Missing,
    /// The metadata record does not decode: the group is failed.
    Failed,
    /// Purged and last index (metadata record), last index of the group's key range of the log.
    Known(LogIndex, LogIndex, LogIndex),
}

/// The writer's exact map of the journal: where each record of the current transaction's state
/// is. Bounded by the move threshold (plus one transaction's records), plus the set-aside
/// records of each failed group (see the module documentation) until it is removed.
#[derive(Debug, Default)]
pub(crate) struct JournalIndex {
    /// `(group, index)` → sequence number of its record, for every group that is not failed.
    locations: BTreeMap<(GroupId, LogIndex), u64>,
    /// `(group, index, sequence number)` of the records of failed groups, set aside (see the
    /// module documentation): an index may have several (a committed record and a write-ahead
    /// entry set aside at open).
    aside: BTreeSet<(GroupId, LogIndex, u64)>,
    /// The next sequence number.
    next_seq: u64,
    /// Bytes of the records added since the last move (deletions are not subtracted).
    bytes: u64,
    /// The changes of the current transaction, in order.
    changes: Vec<Change>,
    /// `next_seq` and `bytes` when the current transaction began.
    started: (u64, u64),
    /// A record being written or moved (one at a time: its capacity is that of the largest).
    buf: Vec<u8>,
    /// A commit moves the journal first once it holds this many records or bytes.
    bound: (usize, u64),
    /// Whether the current transaction appends to the log of a group that has no journal
    /// records instead (see [`JournalIndex::set_direct`]).
    direct: bool,
    /// The failed groups, with why (naming the group): their records are set aside (see the
    /// module documentation). Empty unless something is corrupt.
    failed: BTreeMap<GroupId, String>,
    /// The failed groups whose mark is not stored yet: the next commit stores them.
    unstored: BTreeSet<GroupId>,
}

impl JournalIndex {
    /// Reads the journal of a committed state (at open): every record, and the next sequence
    /// number. A record for an entry already met, outside its group's log (the group's
    /// metadata record says which entries it holds), or not after the last entry of the
    /// group's key range of `log` (the log holds a group's older entries), is corruption.
    ///
    /// A group whose metadata record is corrupt fails alone: its records are kept unchecked
    /// and set aside, and the group is failed (see the module documentation).
    pub(crate) fn load(
        dbs: (&Db, &Db, &Db),
        txn: &RoTxn<'_, WithoutTls>,
        bound: (usize, u64),
    ) -> Result<JournalIndex, StorageError> {
        let (journal, log, meta) = dbs;
        let mut index = JournalIndex { bound, ..JournalIndex::default() };
        let mut metas: HashMap<GroupId, Bounds> = HashMap::new();
        // The bytes of each group's records (those of failed groups do not count).
        let mut group_bytes: HashMap<GroupId, u64> = HashMap::new();
        // The stored marks first: a marked group's records are set aside unchecked.
        for item in meta.prefix_iter(txn, FAILED_MARK_PREFIX).map_err(storage_error)? {
            let (key, value) = item.map_err(storage_error)?;
            let group = group_of_failed_mark(key).ok_or_else(|| {
                StorageError::Corrupt(format!("a failed mark key of {} bytes", key.len()))
            })?;
            let reason = decode_mark(group, value);
            tracing::error!(
                group,
                %reason,
                "raft-lmdb: a group failed at an earlier open (its mark is stored); its records \
                 stay set aside until it is removed, the other groups open"
            );
            index.failed.insert(group, reason);
        }
        if let Some(bytes) = meta.get(txn, JOURNAL_SEQ_KEY).map_err(storage_error)? {
            let bytes: [u8; 8] = bytes.try_into().map_err(|_| {
                StorageError::Corrupt("the journal sequence record is not 8 bytes".into())
            })?;
            index.next_seq = u64::from_be_bytes(bytes);
        }
        for item in journal.iter(txn).map_err(storage_error)? {
            let (key, value) = item.map_err(storage_error)?;
            let seq = u64::from_be_bytes(key.try_into().map_err(|_| {
                StorageError::Corrupt(format!("a journal key of {} bytes", key.len()))
            })?);
            let (group, entry_index, _) = split_record(value)?;
            index.next_seq = index.next_seq.max(seq.saturating_add(1));
            // A failed group's records are kept as they are, unchecked (a marked group's may
            // hold an index twice: see `crate::apply::set_aside`).
            if index.failed.contains_key(&group) {
                index.aside.insert((group, entry_index, seq));
                continue;
            }
            let bounds = match metas.entry(group) {
                Entry::Occupied(known) => *known.get(),
                Entry::Vacant(vacant) => {
                    let keys = Layout::Groups.keys(group);
                    // An LMDB read error fails the open (`?`): it is no one group's corruption.
                    let meta = meta.get(txn, keys.meta().as_slice()).map_err(storage_error)?;
                    let bounds = match meta.map(codec::decode_meta).transpose() {
                        Ok(Some(m)) => {
                            let (first, end) = (keys.log(0), keys.log(LogIndex::MAX));
                            let range = first.through(&end);
                            let mut from_end = log.rev_range(txn, &range).map_err(storage_error)?;
                            let last_item = from_end.next().transpose().map_err(storage_error)?;
                            let log_last = last_item.and_then(|(key, _)| keys.index_of(key));
                            let purged = m.purged().index;
                            Bounds::Known(purged, m.last().index, log_last.unwrap_or(purged))
                        }
                        Ok(None) => Bounds::Missing,
                        Err(StorageError::Corrupt(reason)) => {
                            index.fail(group, failure(group, &reason));
                            Bounds::Failed
                        }
                        Err(err) => return Err(err),
                    };
                    *vacant.insert(bounds)
                }
            };
            match bounds {
                // A record disagreeing with its group's metadata record: that group fails.
                Bounds::Known(purged, last, log_last) => {
                    let disagrees = if !(purged < entry_index && entry_index <= last) {
                        Some(format!(
                            "the journal holds entry {entry_index}, outside its log (purged \
                             {purged}, last {last})"
                        ))
                    } else if entry_index <= log_last {
                        Some(format!(
                            "the journal holds entry {entry_index}, also in its log (which ends \
                             at {log_last})"
                        ))
                    } else {
                        None
                    };
                    if let Some(reason) = disagrees {
                        index.fail(group, failure(group, &reason));
                        metas.insert(group, Bounds::Failed);
                    }
                }
                // Kept as they are: nothing tells where they belong.
                Bounds::Failed => {
                    index.aside.insert((group, entry_index, seq));
                    continue;
                }
                Bounds::Missing => {
                    return Err(StorageError::Corrupt(format!(
                        "the journal holds entry {entry_index} of group {group}, outside its \
                         log (the group does not exist)"
                    )))
                }
            }
            if index.locations.insert((group, entry_index), seq).is_some() {
                return Err(StorageError::Corrupt(format!(
                    "entry {entry_index} of group {group} is in the journal twice"
                )));
            }
            *group_bytes.entry(group).or_default() += value.len() as u64;
        }
        // A group may fail after some of its records were met: counted once all are known.
        let failed = &index.failed;
        index.bytes =
            group_bytes.iter().filter(|(g, _)| !failed.contains_key(g)).map(|(_, b)| b).sum();
        index.set_aside_failed();
        // The last sequence number is never used (the one after it would overflow): a journal
        // that reached it was not written by this crate.
        if index.next_seq == u64::MAX {
            return Err(StorageError::Corrupt(
                "the journal's sequence numbers are used up (a record or journal-seq at the end)"
                    .into(),
            ));
        }
        Ok(index)
    }

    /// Moves the records of failed groups still in `locations` (met before their group failed)
    /// to `aside`: at open only.
    fn set_aside_failed(&mut self) {
        let failed = &self.failed;
        let (aside, kept): (BTreeMap<_, _>, BTreeMap<_, _>) = std::mem::take(&mut self.locations)
            .into_iter()
            .partition(|((g, _), _)| failed.contains_key(g));
        self.locations = kept;
        self.aside.extend(aside.into_iter().map(|((g, i), seq)| (g, i, seq)));
    }

    /// Marks the start of a transaction.
    pub(crate) fn begin(&mut self) {
        self.changes.clear();
        self.started = (self.next_seq, self.bytes);
    }

    /// Undoes the changes of the transaction (it was abandoned).
    pub(crate) fn rollback(&mut self) {
        for change in self.changes.drain(..).rev() {
            match change {
                Change::Added(group, index, _) => {
                    self.locations.remove(&(group, index));
                }
                Change::Removed(group, index, seq) => {
                    self.locations.insert((group, index), seq);
                }
                Change::AsideAdded(group, index, seq) => {
                    self.aside.remove(&(group, index, seq));
                }
                Change::AsideRemoved(group, index, seq) => {
                    self.aside.insert((group, index, seq));
                }
                Change::Recovered(group, reason, unstored) => {
                    self.failed.insert(group, reason);
                    if unstored {
                        self.unstored.insert(group);
                    }
                }
                Change::MarkStored(group) => {
                    self.unstored.insert(group);
                }
            }
        }
        (self.next_seq, self.bytes) = self.started;
    }

    /// The failed groups, with why (see the module documentation).
    pub(crate) fn failed(&self) -> &BTreeMap<GroupId, String> {
        &self.failed
    }

    /// Whether `group` is failed (see the module documentation).
    pub(crate) fn is_failed(&self, group: GroupId) -> bool {
        self.failed.contains_key(&group)
    }

    /// Marks `group` failed for `reason` (it names the group) before the writer starts: the
    /// group's records, and those the open-time checkpoint adds, are set aside. A group
    /// already failed keeps its first reason.
    pub(crate) fn set_failed(&mut self, group: GroupId, reason: String) {
        self.fail(group, reason);
        self.set_aside_failed();
    }

    /// Marks `group` failed for `reason` (logged), outside any transaction: its mark is stored
    /// by the next commit.
    fn fail(&mut self, group: GroupId, reason: String) {
        if let btree_map::Entry::Vacant(vacant) = self.failed.entry(group) {
            self.unstored.insert(group);
            tracing::error!(
                group,
                %reason,
                "raft-lmdb: a group's records disagree with its metadata record or it does not \
                 decode; its records are set aside until it is removed, the other groups open"
            );
            vacant.insert(reason);
        }
    }

    /// The group is no longer failed: it was removed, with its records and its mark (the
    /// caller deletes the mark), in the current transaction.
    pub(crate) fn recover(&mut self, group: GroupId) {
        if let Some(reason) = self.failed.remove(&group) {
            let unstored = self.unstored.remove(&group);
            self.changes.push(Change::Recovered(group, reason, unstored));
        }
    }

    /// Whether a group is failed or a record set aside (in the current transaction's state):
    /// once neither, the environment holds no failed mark.
    pub(crate) fn holds_failed(&self) -> bool {
        !self.failed.is_empty() || !self.aside.is_empty()
    }

    /// Whether a failed group's mark is still to be stored (by the next commit).
    pub(crate) fn has_unstored_marks(&self) -> bool {
        !self.unstored.is_empty()
    }

    /// Stores the marks of the failed groups that have none yet, in `meta` (see the module
    /// documentation), with the format record of an environment holding marks: called by
    /// every commit before anything else, so that the open-time checkpoint that sets a
    /// group's write-ahead entries aside stores its mark in the same transaction.
    pub(crate) fn store_marks(&mut self, meta: &Db, txn: &mut RwTxn<'_>) -> heed::Result<()> {
        if self.unstored.is_empty() {
            return Ok(());
        }
        meta.put(txn, FORMAT_KEY.as_bytes(), &codec::encode_format(MARKED_FORMAT_VERSION))?;
        for group in std::mem::take(&mut self.unstored) {
            let reason = self.failed.get(&group).map(String::as_str).unwrap_or_default();
            let key = Layout::Groups.keys(group).failed_mark();
            meta.put(txn, key.as_slice(), &encode_mark(reason))?;
            self.changes.push(Change::MarkStored(group));
        }
        Ok(())
    }

    /// The number of records set aside, and of the failed groups' records counted again (in
    /// `aside` and, wrongly, in `locations`): they must agree.
    #[cfg(test)]
    pub(crate) fn aside_counts(&self) -> (usize, usize) {
        let records = |g: &GroupId| {
            self.locations.range((*g, 0)..=(*g, LogIndex::MAX)).count()
                + self.aside.range((*g, 0, 0)..=(*g, LogIndex::MAX, u64::MAX)).count()
        };
        (self.aside.len(), self.failed.keys().map(records).sum())
    }

    /// Lets the current transaction append a group's entries straight to its log when the
    /// group has no journal records (its log then still holds all its entries): worth it when
    /// the transaction appends to one group only, whose last leaf it dirties either way, and
    /// saves writing those entries twice.
    pub(crate) fn set_direct(&mut self, direct: bool) {
        self.direct = direct;
    }

    /// Whether the group's next entry goes to the journal (else straight to its log).
    pub(crate) fn journals(&self, group: GroupId) -> bool {
        !self.direct || self.locations.range((group, 0)..=(group, LogIndex::MAX)).next().is_some()
    }

    /// Whether the journal is due to be moved to the groups' logs.
    pub(crate) fn is_due(&self) -> bool {
        // A failed group's records (`aside`) stay: they would make every commit move.
        self.locations.len() >= self.bound.0 || self.bytes >= self.bound.1
    }

    /// The bytes the next commit moves to the groups' logs (0 unless the journal is due): an
    /// upper bound (records deleted since the last move are still counted).
    pub(crate) fn due_bytes(&self) -> u64 {
        if self.is_due() {
            self.bytes
        } else {
            0
        }
    }

    /// The sequence number of the record of `(group, index)`, if it is in the journal.
    pub(crate) fn get(&self, group: GroupId, index: LogIndex) -> Option<u64> {
        self.locations.get(&(group, index)).copied()
    }

    /// Appends the record of `(group, index)` to the journal (for a failed group, set aside:
    /// its bytes are not counted towards the bound, and a record of the same index it has
    /// already is kept).
    pub(crate) fn append(
        &mut self,
        journal: &Db,
        txn: &mut RwTxn<'_>,
        group: GroupId,
        index: LogIndex,
        entry: &[u8],
    ) -> heed::Result<()> {
        let seq = self.next_seq;
        // Never `u64::MAX` (see `load`): 2^64 - 1 appends do not happen.
        let next_seq = seq.checked_add(1).filter(|&next| next < u64::MAX).ok_or_else(|| {
            heed::Error::Io(std::io::Error::other("the journal's sequence numbers are used up"))
        })?;
        let buf = &mut self.buf;
        buf.clear();
        buf.extend_from_slice(&group.to_be_bytes());
        buf.extend_from_slice(&index.to_be_bytes());
        buf.extend_from_slice(entry);
        journal.put_with_flags(txn, PutFlags::APPEND, &seq_key(seq), buf)?;
        self.next_seq = next_seq;
        if self.failed.contains_key(&group) {
            self.aside.insert((group, index, seq));
            self.changes.push(Change::AsideAdded(group, index, seq));
            return Ok(());
        }
        self.bytes += buf.len() as u64;
        if let Some(old) = self.locations.insert((group, index), seq) {
            // Callers delete an entry before writing it again; keep the map exact regardless.
            self.changes.push(Change::Removed(group, index, old));
        }
        self.changes.push(Change::Added(group, index, seq));
        Ok(())
    }

    /// Deletes the group's journal records of entries `from..=to`.
    pub(crate) fn delete(
        &mut self,
        journal: &Db,
        txn: &mut RwTxn<'_>,
        group: GroupId,
        from: LogIndex,
        to: LogIndex,
    ) -> heed::Result<()> {
        if from > to {
            return Ok(());
        }
        let doomed: Vec<_> =
            self.locations.range((group, from)..=(group, to)).map(|(&k, &s)| (k, s)).collect();
        for ((group, index), seq) in doomed {
            journal.delete(txn, &seq_key(seq))?;
            self.locations.remove(&(group, index));
            self.changes.push(Change::Removed(group, index, seq));
        }
        let aside: Vec<_> =
            self.aside.range((group, from, 0)..=(group, to, u64::MAX)).copied().collect();
        for (group, index, seq) in aside {
            journal.delete(txn, &seq_key(seq))?;
            self.aside.remove(&(group, index, seq));
            self.changes.push(Change::AsideRemoved(group, index, seq));
        }
        Ok(())
    }

    /// Moves every record to its group's key range of `log` (`log_key` gives the key) and
    /// empties the journal, recording the next sequence number in `meta`. The records of
    /// failed groups stay (see the module documentation).
    ///
    /// Records are read one at a time, in `(group, index)` order (so that each group's leaf of
    /// `log` is visited once in turn), through a buffer that holds one record: the move keeps
    /// no memory beyond the largest record. The journal must hold exactly the records of the
    /// writer's index, each carrying the group and index the index has for it: a missing
    /// record, a record holding another entry, or a record the index does not know is
    /// corruption, and the move fails.
    pub(crate) fn move_all<K: AsRef<[u8]>>(
        &mut self,
        dbs: (&Db, &Db, &Db),
        txn: &mut RwTxn<'_>,
        log_key: impl Fn(GroupId, LogIndex) -> K,
    ) -> Result<usize, MoveError> {
        let (journal, log, meta) = dbs;
        let buf = &mut self.buf;
        // Recorded first, so that a failed move is undone whole (see `rollback`). The failed
        // groups' records (`aside`) stay.
        let moved = std::mem::take(&mut self.locations);
        let kept = self.aside.len();
        self.changes.extend(moved.iter().map(|(&(g, i), &seq)| Change::Removed(g, i, seq)));
        // The index's sequence numbers are distinct and each moved one is checked below to be
        // in the journal: as many records as the index knows means no record it does not know
        // (which the clear below would drop). Kept records are not read: they stay as they are.
        let held = journal.len(txn)?;
        let known = moved.len() + kept;
        if held != known as u64 {
            return Err(MoveError::Corrupt(StorageError::Corrupt(format!(
                "the journal holds {held} records where the writer knows {known}"
            ))));
        }
        for (&(group, index), &seq) in &moved {
            buf.clear();
            let record = journal.get(txn, &seq_key(seq))?;
            match record.map(split_record).transpose()? {
                Some((g, i, entry)) if (g, i) == (group, index) => buf.extend_from_slice(entry),
                found => {
                    let found = match found {
                        Some((g, i, _)) => format!("holds entry {i} of group {g}"),
                        None => "is missing".to_owned(),
                    };
                    return Err(MoveError::Corrupt(StorageError::Corrupt(format!(
                        "journal record {seq} (entry {index} of group {group}) {found}"
                    ))));
                }
            }
            log.put(txn, log_key(group, index).as_ref(), buf)?;
        }
        if kept == 0 {
            journal.clear(txn)?;
        } else {
            for seq in moved.values() {
                journal.delete(txn, &seq_key(*seq))?;
            }
        }
        meta.put(txn, JOURNAL_SEQ_KEY, &self.next_seq.to_be_bytes())?;
        self.bytes = 0;
        Ok(moved.len())
    }

    /// The capacity of the buffer records are written and moved through (tests check that a
    /// move keeps no more than one record's worth).
    #[cfg(test)]
    pub(crate) fn buf_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Publishes to `shared` the records this transaction added (before its commit).
    pub(crate) fn publish_added(&self, shared: &ReadIndex) {
        let mut set = shared.lock();
        for change in &self.changes {
            if let Change::Added(group, index, seq) = *change {
                set.insert((group, index, seq));
            }
        }
    }

    /// Withdraws from `shared` the records this transaction deleted (after its commit): the
    /// set-aside ones too, though the index should not hold them (a safeguard: its size stays
    /// bounded like the journal's whatever happened).
    pub(crate) fn withdraw_removed(&self, shared: &ReadIndex) {
        let mut set = shared.lock();
        for change in &self.changes {
            if let Change::Removed(group, index, seq) | Change::AsideRemoved(group, index, seq) =
                *change
            {
                set.remove(&(group, index, seq));
            }
        }
    }

    /// Withdraws from `shared` the records this transaction added (it was abandoned).
    pub(crate) fn withdraw_added(&self, shared: &ReadIndex) {
        let mut set = shared.lock();
        for change in &self.changes {
            if let Change::Added(group, index, seq) = *change {
                set.remove(&(group, index, seq));
            }
        }
    }

    /// The committed records, for a new [`ReadIndex`] (not the failed groups' set-aside
    /// records: called once every failed group is known, see `environment.rs`).
    pub(crate) fn read_index(&self) -> ReadIndex {
        let set = self.locations.iter().map(|(&(g, i), &s)| (g, i, s)).collect();
        ReadIndex { set: Mutex::new(set) }
    }
}

/// Why a move failed.
#[derive(Debug)]
pub(crate) enum MoveError {
    /// LMDB failed (the map may be full).
    Lmdb(heed::Error),
    /// The journal is inconsistent.
    Corrupt(StorageError),
}

impl From<heed::Error> for MoveError {
    fn from(err: heed::Error) -> Self {
        MoveError::Lmdb(err)
    }
}

impl From<StorageError> for MoveError {
    fn from(err: StorageError) -> Self {
        MoveError::Corrupt(err)
    }
}

/// Where readers look for journal records: `(group, index, sequence number)` of every record
/// of the committed state, and of the transaction being committed, and of records deleted by a
/// commit just made (see the module documentation), but for the failed groups' set-aside
/// records (no reader opens a failed group). Its size is bounded like the journal's.
#[derive(Debug, Default)]
pub(crate) struct ReadIndex {
    set: Mutex<BTreeSet<(GroupId, LogIndex, u64)>>,
}

impl ReadIndex {
    fn lock(&self) -> MutexGuard<'_, BTreeSet<(GroupId, LogIndex, u64)>> {
        // Only inserted into or removed from: a panic elsewhere cannot leave it torn.
        self.set.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The candidate records of the group's entries `from..end`: (index, sequence number), in
    /// index order and, for one index, newest first.
    pub(crate) fn candidates(
        &self,
        group: GroupId,
        from: LogIndex,
        end: LogIndex,
    ) -> Vec<(LogIndex, u64)> {
        if from >= end {
            return Vec::new();
        }
        let set = self.lock();
        let mut out: Vec<_> =
            set.range((group, from, 0)..(group, end, 0)).map(|&(_, i, s)| (i, s)).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        out
    }

    /// The number of records it knows.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}
