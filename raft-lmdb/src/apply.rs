//! Applying one request to the group's write transaction: validation against the log bounds
//! (so that an invalid request fails alone and leaves nothing behind), then the LMDB changes.

use heed::{PutFlags, RwTxn};
use raft_core::{Entry, LogId, LogIndex, StorageError, Term, WriteBatch};

use crate::codec::{self, MetaRecord};
use crate::env::{Db, Handles};
use crate::error::{is_map_full, storage_error};
use crate::journal::{seq_key, split_record, JournalIndex};
use crate::layout::{GroupKeys, Layout};

/// Why a group could not be committed.
pub(crate) enum Failure {
    /// The map is full: grow it and try again.
    MapFull,
    /// Anything else: the store stops.
    Fatal(StorageError),
}

impl From<heed::Error> for Failure {
    fn from(err: heed::Error) -> Self {
        if is_map_full(&err) {
            Failure::MapFull
        } else {
            Failure::Fatal(storage_error(err))
        }
    }
}

impl From<StorageError> for Failure {
    fn from(err: StorageError) -> Self {
        Failure::Fatal(err)
    }
}

/// Why one request of a group was not applied.
pub(crate) enum Rejection {
    /// The request is invalid; it alone fails.
    Invalid(StorageError),
    /// The group fails.
    Failed(Failure),
}

impl<E: Into<Failure>> From<E> for Rejection {
    fn from(err: E) -> Self {
        Rejection::Failed(err.into())
    }
}

fn invalid(msg: String) -> Rejection {
    Rejection::Invalid(StorageError::InvalidRequest(msg))
}

/// One group's entries: in the log database and, in the multi-group layout, in the journal
/// (see `journal.rs`), with the writer's index of the journal.
#[derive(Debug)]
pub(crate) struct GroupLog<'a> {
    log: &'a Db,
    keys: GroupKeys,
    journal: Option<(&'a Db, &'a mut JournalIndex)>,
}

impl<'a> GroupLog<'a> {
    /// The group `keys`; `journal` is the writer's index of the journal of the multi-group
    /// layout (`None` in the single-group layout).
    pub(crate) fn new(
        handles: &'a Handles,
        keys: GroupKeys,
        journal: Option<&'a mut JournalIndex>,
    ) -> Self {
        let journal = handles.journal.as_ref().zip(journal);
        Self { log: &handles.log, keys, journal }
    }

    /// Stores an entry after every entry of the group: at the end of the journal if there is
    /// one and it takes the group's entries in this transaction, else at the end of the log.
    fn append(&mut self, txn: &mut RwTxn<'_>, index: LogIndex, bytes: &[u8]) -> heed::Result<()> {
        if let Some((journal, records)) = &mut self.journal {
            if records.journals(self.keys.group()) {
                return records.append(journal, txn, self.keys.group(), index, bytes);
            }
        }
        let key = self.keys.log(index);
        if self.keys.appends_at_end() {
            self.log.put_with_flags(txn, PutFlags::APPEND, key.as_slice(), bytes)
        } else {
            self.log.put(txn, key.as_slice(), bytes)
        }
    }

    /// Deletes the entries in `from..=to`, from the log and the journal.
    fn delete(&mut self, txn: &mut RwTxn<'_>, from: LogIndex, to: LogIndex) -> heed::Result<()> {
        if let Some((journal, records)) = &mut self.journal {
            records.delete(journal, txn, self.keys.group(), from, to)?;
        }
        let (from, to) = (self.keys.log(from), self.keys.log(to));
        self.log.delete_range(txn, &from.through(&to)).map(drop)
    }

    /// Deletes every entry of the group being removed: it is then no longer failed (see
    /// `journal.rs`), and a group created again under its id starts empty.
    pub(crate) fn remove(&mut self, txn: &mut RwTxn<'_>) -> heed::Result<()> {
        self.clear(txn)?;
        if let Some((_, records)) = &mut self.journal {
            records.recover(self.keys.group());
        }
        Ok(())
    }

    /// Deletes every entry of the group.
    pub(crate) fn clear(&mut self, txn: &mut RwTxn<'_>) -> heed::Result<()> {
        match self.keys.layout() {
            // The database holds this group alone.
            Layout::Single => self.log.clear(txn),
            Layout::Groups => self.delete(txn, 0, LogIndex::MAX),
        }
    }

    /// The stored bytes of entry `index` (the entry record). A journal record that does not
    /// split is this group's corruption: [`Rejection::Invalid`].
    fn get<'t>(&self, txn: &'t RwTxn<'_>, index: LogIndex) -> Result<Option<&'t [u8]>, Rejection> {
        if let Some(bytes) = self.log.get(txn, self.keys.log(index).as_slice())? {
            return Ok(Some(bytes));
        }
        let Some((journal, records)) = &self.journal else { return Ok(None) };
        let Some(seq) = records.get(self.keys.group(), index) else { return Ok(None) };
        match journal.get(txn, &seq_key(seq))? {
            Some(record) => Ok(Some(split_record(record).map_err(Rejection::Invalid)?.2)),
            None => Ok(None),
        }
    }
}

/// Applies write requests, reusing its encoding buffers from one request to the next.
#[derive(Debug, Default)]
pub(crate) struct Applier {
    /// Encoded entries of the request being applied, back to back.
    buf: Vec<u8>,
    /// `(index, end offset in buf)` of each encoded entry.
    spans: Vec<(LogIndex, usize)>,
}

impl Applier {
    /// Validates `batch` against `meta`, then applies it to `txn` and `meta`. Nothing is changed
    /// when the batch is invalid.
    ///
    /// A valid batch leaves a store that opens: the truncation point is above the purged index,
    /// the entries are contiguous and follow the log left by the truncation, and their terms
    /// never decrease, starting from the term of the entry before the first one (so no entry's
    /// term is below the purged term).
    pub(crate) fn write(
        &mut self,
        mut log: GroupLog<'_>,
        txn: &mut RwTxn<'_>,
        meta: &mut MetaRecord,
        batch: &WriteBatch,
    ) -> Result<(), Rejection> {
        let (purged, last) = (meta.purged(), meta.last());
        let cut = batch.truncate_from.filter(|&cut| cut <= last.index);
        if let Some(cut) = batch.truncate_from {
            if cut <= purged.index {
                return Err(invalid(format!(
                    "truncate_from {cut} is at or below purged index {}",
                    purged.index
                )));
            }
        }
        // The id of the entry the batch's entries follow: the last one left by the truncation.
        let before = match cut {
            Some(cut) if cut - 1 == purged.index => purged,
            Some(cut) => LogId::new(stored_term(&log, txn, cut - 1)?, cut - 1),
            None => last,
        };
        self.encode(batch, before)?;

        if let Some(hard_state) = batch.hard_state {
            meta.set_hard_state(hard_state);
        }
        if let Some(cut) = cut {
            log.delete(txn, cut, LogIndex::MAX)?;
        }
        let mut start = 0;
        for &(index, end) in &self.spans {
            log.append(txn, index, &self.buf[start..end])?;
            start = end;
        }
        if cut.is_some() || !batch.entries.is_empty() {
            meta.set_last(batch.entries.last().map_or(before, Entry::log_id));
        }
        Ok(())
    }

    /// Checks that `batch`'s entries follow `before` (contiguous indexes, terms that never
    /// decrease) and encodes them into `buf` and `spans`.
    fn encode(&mut self, batch: &WriteBatch, before: LogId) -> Result<(), Rejection> {
        self.buf.clear();
        self.spans.clear();
        let mut previous = before;
        for entry in &batch.entries {
            if previous.index.checked_add(1) != Some(entry.index) {
                return Err(invalid(format!(
                    "entry index {} does not follow index {}",
                    entry.index, previous.index
                )));
            }
            if entry.term < previous.term {
                return Err(invalid(format!(
                    "entry {} has term {}, below the term {} of entry {} before it",
                    entry.index, entry.term, previous.term, previous.index
                )));
            }
            // Encoding before touching the transaction keeps an unencodable batch without effect.
            self.buf = codec::encode_entry(entry, std::mem::take(&mut self.buf))
                .map_err(Rejection::Invalid)?;
            self.spans.push((entry.index, self.buf.len()));
            previous = entry.log_id();
        }
        Ok(())
    }
}

/// Stores the write-ahead entries of a failed group as they are, set aside in the journal (see
/// `journal.rs`): they cannot be checked against the group's log, and stay until the group is
/// removed. A record of the same index already in the journal (committed, the group's own
/// data) is kept as it is: both are set aside, nothing of the group is lost.
pub(crate) fn set_aside(
    log: GroupLog<'_>,
    txn: &mut RwTxn<'_>,
    entries: &[Entry],
) -> Result<(), Failure> {
    let group = log.keys.group();
    let Some((journal, records)) = log.journal else {
        return Err(Failure::Fatal(StorageError::Corrupt(format!(
            "the write-ahead entries of group {group} have no journal to be set aside in"
        ))));
    };
    let mut buf = Vec::new();
    for entry in entries {
        buf.clear();
        buf = codec::encode_entry(entry, buf)?;
        records.append(journal, txn, group, entry.index, &buf)?;
    }
    Ok(())
}

/// Validates a purge against `meta`, then applies it to `txn` and `meta`.
pub(crate) fn purge(
    mut log: GroupLog<'_>,
    txn: &mut RwTxn<'_>,
    meta: &mut MetaRecord,
    up_to: LogIndex,
) -> Result<(), Rejection> {
    let (purged, last) = (meta.purged(), meta.last());
    if up_to <= purged.index {
        return Ok(());
    }
    if up_to > last.index {
        return Err(invalid(format!("purge up to {up_to} beyond last index {}", last.index)));
    }
    let term = if up_to == last.index { last.term } else { stored_term(&log, txn, up_to)? };
    log.delete(txn, 0, up_to)?;
    meta.set_purged(LogId::new(term, up_to));
    Ok(())
}

/// Applies a reset (after a snapshot was installed): removes every entry and makes
/// `last_included` both the purged and the last id.
pub(crate) fn reset(
    mut log: GroupLog<'_>,
    txn: &mut RwTxn<'_>,
    meta: &mut MetaRecord,
    last_included: LogId,
) -> Result<(), Rejection> {
    log.clear(txn)?;
    meta.set_purged(last_included);
    meta.set_last(last_included);
    Ok(())
}

/// The term of the stored entry `index`, which the metadata says exists.
///
/// An entry that is missing or does not decode is this group's corruption: the request alone
/// fails ([`Rejection::Invalid`], the group stops on it), not the transaction of every group.
/// Both callers read the term before touching the transaction, so the rejection has no effect.
fn stored_term(log: &GroupLog<'_>, txn: &RwTxn<'_>, index: LogIndex) -> Result<Term, Rejection> {
    match log.get(txn, index)? {
        Some(bytes) => codec::decode_entry_term(index, bytes).map_err(Rejection::Invalid),
        None => {
            Err(Rejection::Invalid(StorageError::Corrupt(format!("log entry {index} is missing"))))
        }
    }
}
