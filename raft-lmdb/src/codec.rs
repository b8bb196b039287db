//! The on-disk format: how keys, entries and metadata are encoded.
//!
//! # Format version 2
//!
//! The environment holds two named databases:
//!
//! * [`LOG_DB`]: one record per log entry. The key is the entry index as a big-endian `u64`
//!   (heed's `U64<BigEndian>`, so LMDB's byte order is index order and appends go to the end of
//!   the B-tree); the value is the postcard encoding of [`EntryRecord`]: the term (varint) then
//!   the payload as an enum: `0` = blank, `1` = command followed by its length-prefixed bytes,
//!   `2` = membership followed by the voters and then the learners, each a length-prefixed
//!   ascending list of varint node ids ([`MembershipRecord`]).
//! * [`META_DB`]: [`FORMAT_KEY`] holds [`FORMAT_MAGIC`] followed by the format version as a
//!   big-endian `u32`; [`STATE_KEY`] holds the postcard encoding of [`MetaRecord`]: the hard state
//!   and the log bounds (`purged` and `last` log ids).
//!
//! The records below are this crate's own types, not `raft-core`'s, so that the format changes
//! only when [`FORMAT_VERSION`] does: a change to `raft-core`'s types fails to compile here
//! instead of silently changing the bytes on disk. Every decode is strict: trailing bytes or an
//! unknown enum tag are reported as corruption.
//!
//! # Version history
//!
//! * **1**: payload tags `0` (blank) and `1` (command). Builds from the one that introduced
//!   membership changes (commit `e97b4ea`) up to format 2 also wrote tag `2` (membership, the
//!   same bytes as in version 2) while still calling the format version 1, so that an older build
//!   opening such a store met an entry it could not decode and reported corruption.
//! * **2**: tag `2` belongs to the format, and every record is otherwise unchanged: a version 1
//!   store is read as it is. Opening one rewrites only its format record to 2, in one synced
//!   transaction before anything else is written, so that an older build refuses the store with
//!   a clear "unsupported version" instead of misreading it.

use std::collections::BTreeSet;

use bytes::Bytes;
use raft_core::{
    Entry, EntryPayload, HardState, LogId, LogIndex, Membership, NodeId, StorageError, Term,
};
use serde::{Deserialize, Serialize};

/// Name of the database holding log entries.
pub(crate) const LOG_DB: &str = "raft-log";
/// Name of the database holding the format record and the hard state.
pub(crate) const META_DB: &str = "raft-meta";
/// Key of the format record in [`META_DB`].
pub(crate) const FORMAT_KEY: &str = "format";
/// Key of the [`MetaRecord`] in [`META_DB`].
pub(crate) const STATE_KEY: &str = "state";
/// First bytes of the format record: identifies a raft-lmdb store.
pub(crate) const FORMAT_MAGIC: [u8; 8] = *b"RAFTLMDB";
/// The format version this build writes.
///
/// It also reads version 1, the format of earlier builds, and upgrades such a store when it
/// opens it by rewriting only its format record (every version 1 record is a valid version 2
/// record); from then on a build that knows only version 1 refuses the store with an
/// "unsupported version" error instead of misreading it. Version 2 differs from version 1 in
/// that membership entries belong to it: builds since the membership change had written them
/// under version 1, which an older build then called corrupt.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest format version this build reads (and upgrades when it opens the store).
pub(crate) const OLDEST_READABLE_VERSION: u32 = 1;

/// Encodes the format record.
pub(crate) fn encode_format(version: u32) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[..8].copy_from_slice(&FORMAT_MAGIC);
    out[8..].copy_from_slice(&version.to_be_bytes());
    out
}

/// What a format record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FormatCheck {
    /// Our magic and the version this build writes.
    Current,
    /// Our magic and an older version this build reads and upgrades by rewriting the format
    /// record (every record of it is a valid record of the current version).
    Upgradable(u32),
    /// Our magic, but another version.
    Unsupported(u32),
    /// Not our magic: some other program's data.
    Foreign,
}

/// Checks a format record.
pub(crate) fn check_format(bytes: &[u8]) -> FormatCheck {
    let (Some(magic), Some(version)) = (bytes.get(..8), bytes.get(8..)) else {
        return FormatCheck::Foreign;
    };
    if magic != FORMAT_MAGIC {
        return FormatCheck::Foreign;
    }
    let Ok(version) = <[u8; 4]>::try_from(version) else {
        return FormatCheck::Foreign;
    };
    match u32::from_be_bytes(version) {
        FORMAT_VERSION => FormatCheck::Current,
        old @ OLDEST_READABLE_VERSION..FORMAT_VERSION => FormatCheck::Upgradable(old),
        other => FormatCheck::Unsupported(other),
    }
}

/// The metadata record: hard state and log bounds, written in the same transaction as the log
/// changes they describe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MetaRecord {
    /// `currentTerm`.
    pub(crate) current_term: Term,
    /// `votedFor`.
    pub(crate) voted_for: Option<u64>,
    /// Term and index of the last purged entry (`(0, 0)` if none).
    pub(crate) purged: (Term, LogIndex),
    /// Term and index of the last stored entry (equal to `purged` when the log is empty).
    pub(crate) last: (Term, LogIndex),
}

impl MetaRecord {
    pub(crate) fn hard_state(&self) -> HardState {
        HardState { current_term: self.current_term, voted_for: self.voted_for }
    }

    pub(crate) fn set_hard_state(&mut self, hard_state: HardState) {
        self.current_term = hard_state.current_term;
        self.voted_for = hard_state.voted_for;
    }

    pub(crate) fn purged(&self) -> LogId {
        LogId::new(self.purged.0, self.purged.1)
    }

    pub(crate) fn last(&self) -> LogId {
        LogId::new(self.last.0, self.last.1)
    }

    pub(crate) fn set_purged(&mut self, id: LogId) {
        self.purged = (id.term, id.index);
    }

    pub(crate) fn set_last(&mut self, id: LogId) {
        self.last = (id.term, id.index);
    }

    /// Checks the record's own invariants (not against the log).
    pub(crate) fn validate(&self) -> Result<(), StorageError> {
        let (purged, last) = (self.purged(), self.last());
        if last.index < purged.index || last.term < purged.term {
            return Err(StorageError::Corrupt(format!(
                "metadata bounds are inconsistent: purged {purged:?}, last {last:?}"
            )));
        }
        Ok(())
    }
}

/// The payload of an entry as stored. Variant order is part of the format: a new variant goes
/// at the end and comes with a new [`FORMAT_VERSION`].
#[derive(Debug, Serialize, Deserialize)]
enum PayloadRecord<'a> {
    Blank,
    Command(#[serde(borrow, with = "serde_bytes_borrowed")] &'a [u8]),
    Membership(MembershipRecord),
}

/// A membership as stored: voters, then learners (postcard encodes a `BTreeSet` as its length
/// followed by its elements in ascending order).
#[derive(Debug, Serialize, Deserialize)]
struct MembershipRecord {
    voters: BTreeSet<NodeId>,
    learners: BTreeSet<NodeId>,
}

impl From<&Membership> for MembershipRecord {
    fn from(membership: &Membership) -> Self {
        // Destructured so that a new field of `Membership` fails to compile here: it needs a
        // format decision (and a version) before it can be stored.
        let Membership { voters, learners } = membership;
        Self { voters: voters.clone(), learners: learners.clone() }
    }
}

impl From<MembershipRecord> for Membership {
    fn from(record: MembershipRecord) -> Self {
        let MembershipRecord { voters, learners } = record;
        Membership { voters, learners }
    }
}

/// A log entry as stored (its index is the key).
#[derive(Debug, Serialize, Deserialize)]
struct EntryRecord<'a> {
    term: Term,
    #[serde(borrow)]
    payload: PayloadRecord<'a>,
}

/// Serializes a byte slice with `serialize_bytes` (postcard: varint length + raw bytes) and
/// borrows it back on decode.
mod serde_bytes_borrowed {
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        bytes: &&[u8],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<&'de [u8], D::Error> {
        <&'de [u8] as serde::Deserialize<'de>>::deserialize(deserializer)
    }
}

/// Appends the encoding of `entry` to `buf` and returns it.
pub(crate) fn encode_entry(entry: &Entry, buf: Vec<u8>) -> Result<Vec<u8>, StorageError> {
    let payload = match &entry.payload {
        EntryPayload::Command(bytes) => PayloadRecord::Command(bytes),
        EntryPayload::Blank => PayloadRecord::Blank,
        EntryPayload::Membership(m) => PayloadRecord::Membership(m.into()),
        // `EntryPayload` is non-exhaustive: a variant this build does not know has no place in
        // the format. Refusing is better than writing something we could not read back.
        other => {
            return Err(StorageError::InvalidRequest(format!(
                "entry {} has a payload this store cannot encode: {other:?}",
                entry.index
            )))
        }
    };
    postcard::to_extend(&EntryRecord { term: entry.term, payload }, buf)
        .map_err(|e| StorageError::Other(format!("encoding entry {}: {e}", entry.index)))
}

/// Decodes the entry stored under `index`.
pub(crate) fn decode_entry(index: LogIndex, bytes: &[u8]) -> Result<Entry, StorageError> {
    let record: EntryRecord<'_> = strict_decode(bytes).map_err(|e| corrupt_entry(index, &e))?;
    let payload = match record.payload {
        PayloadRecord::Blank => EntryPayload::Blank,
        PayloadRecord::Command(bytes) => EntryPayload::Command(Bytes::copy_from_slice(bytes)),
        PayloadRecord::Membership(m) => EntryPayload::Membership(m.into()),
    };
    Ok(Entry { index, term: record.term, payload })
}

/// Decodes only the term of the entry stored under `index`.
pub(crate) fn decode_entry_term(index: LogIndex, bytes: &[u8]) -> Result<Term, StorageError> {
    let record: EntryRecord<'_> = strict_decode(bytes).map_err(|e| corrupt_entry(index, &e))?;
    Ok(record.term)
}

/// Encodes the metadata record.
pub(crate) fn encode_meta(meta: &MetaRecord) -> Result<Vec<u8>, StorageError> {
    postcard::to_stdvec(meta).map_err(|e| StorageError::Other(format!("encoding metadata: {e}")))
}

/// Decodes and validates the metadata record.
pub(crate) fn decode_meta(bytes: &[u8]) -> Result<MetaRecord, StorageError> {
    let meta: MetaRecord = strict_decode(bytes)
        .map_err(|e| StorageError::Corrupt(format!("undecodable metadata record: {e}")))?;
    meta.validate()?;
    Ok(meta)
}

fn corrupt_entry(index: LogIndex, err: &str) -> StorageError {
    StorageError::Corrupt(format!("undecodable log entry {index}: {err}"))
}

/// Decodes `bytes` as exactly one `T`: trailing bytes are an error.
fn strict_decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    match postcard::take_from_bytes(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(format!("{} trailing bytes", rest.len())),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn entry(index: u64, term: u64, payload: Option<&'static [u8]>) -> Entry {
        let payload =
            payload.map_or(EntryPayload::Blank, |p| EntryPayload::Command(Bytes::from_static(p)));
        Entry { index, term, payload }
    }

    #[test]
    fn entries_round_trip() {
        for e in
            [entry(1, 1, None), entry(7, 3, Some(b"hello")), entry(u64::MAX, u64::MAX, Some(b""))]
        {
            let buf = encode_entry(&e, Vec::new()).unwrap();
            assert_eq!(decode_entry(e.index, &buf).unwrap(), e);
            assert_eq!(decode_entry_term(e.index, &buf).unwrap(), e.term);
        }
    }

    #[test]
    fn encoding_is_stable() {
        // Term varint, payload tag, length varint, bytes.
        let buf = encode_entry(&entry(5, 2, Some(b"ab")), Vec::new()).unwrap();
        assert_eq!(buf, vec![2, 1, 2, b'a', b'b']);
        let buf = encode_entry(&entry(5, 300, None), Vec::new()).unwrap();
        assert_eq!(buf, vec![0xac, 0x02, 0]);
        // Term, tag 2, voters (count, ids), learners (count, ids).
        let membership = Membership { voters: [1, 2, 300].into(), learners: [4].into() };
        let e = Entry { index: 5, term: 2, payload: EntryPayload::Membership(membership) };
        let buf = encode_entry(&e, Vec::new()).unwrap();
        assert_eq!(buf, vec![2, 2, 3, 1, 2, 0xac, 0x02, 1, 4]);
        assert_eq!(decode_entry(5, &buf).unwrap(), e);
    }

    #[test]
    fn corrupt_records_are_errors() {
        let buf = encode_entry(&entry(5, 2, Some(b"abc")), Vec::new()).unwrap();
        for bad in [&buf[..buf.len() - 1], &[2, 9][..], &[][..], &[2, 0, 0][..]] {
            let err = decode_entry(5, bad).unwrap_err();
            assert!(matches!(err, StorageError::Corrupt(_)), "{err:?}");
        }
        assert!(matches!(decode_meta(&[1, 2, 3]), Err(StorageError::Corrupt(_))));
    }

    #[test]
    fn meta_round_trip_and_validation() {
        let mut meta = MetaRecord::default();
        meta.set_hard_state(HardState { current_term: 4, voted_for: Some(2) });
        meta.set_purged(LogId::new(1, 3));
        meta.set_last(LogId::new(4, 9));
        let bytes = encode_meta(&meta).unwrap();
        assert_eq!(decode_meta(&bytes).unwrap(), meta);
        meta.set_last(LogId::new(1, 2));
        assert!(decode_meta(&encode_meta(&meta).unwrap()).is_err());
    }

    #[test]
    fn format_records() {
        assert_eq!(check_format(&encode_format(FORMAT_VERSION)), FormatCheck::Current);
        assert_eq!(check_format(&encode_format(1)), FormatCheck::Upgradable(1));
        assert_eq!(check_format(&encode_format(0)), FormatCheck::Unsupported(0));
        assert_eq!(check_format(&encode_format(9)), FormatCheck::Unsupported(9));
        assert_eq!(check_format(b"something else"), FormatCheck::Foreign);
        assert_eq!(check_format(b""), FormatCheck::Foreign);
    }
}
