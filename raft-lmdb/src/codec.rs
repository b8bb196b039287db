//! The on-disk format: how keys, entries and metadata are encoded.
//!
//! # Format version 4 (5 once a failed mark is stored; single-group stores: 3)
//!
//! The environment holds two named databases:
//!
//! * [`LOG_DB`]: one record per log entry. The key is the entry index as a big-endian `u64`
//!   (heed's `U64<BigEndian>`, so LMDB's byte order is index order and appends go to the end of
//!   the B-tree); the value is the postcard encoding of [`EntryRecord`]: the term (varint) then
//!   the payload as an enum: `0` = blank, `1` = command followed by its length-prefixed bytes,
//!   `2` = membership of format 2 (read only: the voters and then the learners, each a
//!   length-prefixed ascending list of varint node ids, [`MembershipRecordV2`]), `3` =
//!   membership ([`MembershipRecord`]): the voters, the outgoing voters (empty unless joint) and
//!   the learners as such lists, then the members' metadata, a length-prefixed list of (varint
//!   id, length-prefixed address bytes, length-prefixed data bytes) in ascending id order.
//! * [`META_DB`]: [`FORMAT_KEY`] holds [`FORMAT_MAGIC`] followed by the format version as a
//!   big-endian `u32`; [`STATE_KEY`] holds the postcard encoding of [`MetaRecord`]: the hard state
//!   and the log bounds (`purged` and `last` log ids).
//!
//! That is the layout of a store of its own. An [`crate::LmdbEnvironment`] holds the same records
//! for many groups in `raft-groups-log` (key: group id then index, both big-endian `u64`) and
//! `raft-groups-meta` ([`FORMAT_KEY`], `journal-seq`, `g` followed by the big-endian group
//! id for each group's [`MetaRecord`], and, from version 5, `failed` followed by the group id
//! for each failed group's mark), plus a journal, `raft-groups-journal`, where commits
//! append new entries of every group before they are moved in bulk to `raft-groups-log` (key: a
//! big-endian `u64` sequence number; value: group id and index, both big-endian `u64`, then the
//! entry record); see `layout.rs` and `journal.rs`.
//!
//! A store or environment directory may also hold the write-ahead file `raft-wal` (`wal.rs`):
//! frames `[body length u32][crc32 of the body u32][body]`, body = `[environment id u64]
//! [generation u64][frame version u16][record ...]`, record = `[group u64][index u64][entry
//! length u32][entry record]` (all big-endian; the entry record is [`LOG_DB`]'s value). The
//! frame version (1) is the file's own: a CRC-valid frame of the environment's id and generation
//! with another version is corruption (the open fails, the frame is never dropped). Their
//! metadata records in [`META_DB`] (`raft-groups-meta` for an environment): `wal-id`, the
//! environment's random id that every frame carries (big-endian `u64`), and `wal-generation`,
//! the generation of the frames that follow the committed state (big-endian `u64`, absent =
//! 0), moved on by every transaction that applies the file's entries (a checkpoint). The file
//! does not change [`FORMAT_VERSION`]. Builds from before the write-ahead file refuse a
//! directory holding it (an unknown file). Builds between the write-ahead file and its frame
//! version wrote frames without a version (body = `[environment id u64][generation u64]
//! [record ...]`): they and this build refuse each other's unchecked frames as corruption (the
//! open fails, the frames are never dropped; this build's error says to open the directory
//! with the earlier build, whose clean close checkpoints them). A directory closed cleanly
//! holds no unchecked frame and opens with either.
//!
//! The records below are this crate's own types, not `raft-core`'s, so that the format changes
//! only when [`FORMAT_VERSION`] does: a change to `raft-core`'s types fails to compile here
//! instead of silently changing the bytes on disk. Every decode is strict: trailing bytes, an
//! unknown enum tag, or node ids out of order or repeated in a membership (in any of its sets
//! or its metadata) are reported as corruption.
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
//! * **3**: memberships are written with tag `3` (joint configurations and member metadata,
//!   raft-core's joint consensus); tag `2` is still read (a membership with empty metadata) and
//!   never written. Every version 1 or 2 record is a valid version 3 record, so such a store is
//!   upgraded the same way: its format record is rewritten to 3 when it is opened.
//! * **4**: a multi-group environment has a journal (`raft-groups-journal`, see `journal.rs`)
//!   that holds the newest entries of its groups, and `journal-seq` in its metadata database;
//!   an older build would not see the entries in the journal, so it must refuse the
//!   environment. Opening an environment of version 1 to 3 creates its (empty) journal and
//!   rewrites its format record to 4 in one synced transaction before anything else is
//!   written. Single-group stores are unchanged and stay at version 3
//!   ([`STORE_FORMAT_VERSION`]), so that builds of format 3 still open them (a rollback).
//! * **5** ([`MARKED_FORMAT_VERSION`]): a multi-group environment holds a *failed mark* in its
//!   metadata database (`failed` followed by the big-endian group id; value `[1 u8][reason,
//!   UTF-8]`) for each group failed at an open (see `journal.rs`), and a failed group's journal
//!   may hold two records of one index. A build of format 4 would ignore the marks and could
//!   serve a failed group's unchecked records, so the transaction that stores the first mark
//!   rewrites the format record to 5, and the removal that deletes the last mark (no failed
//!   group nor set-aside record left) rewrites it to 4 again. An environment that never held a
//!   mark, or holds none any more, is at 4 and opens with builds of format 4 (a rollback); this
//!   build opens both without rewriting either.

use std::collections::BTreeSet;

use bytes::Bytes;
use raft_core::{
    Entry, EntryPayload, HardState, InvalidChange, LogId, LogIndex, Membership, NodeId, NodeInfo,
    StorageError, Term,
};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};

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
/// The format version this build writes in a multi-group environment
/// ([`crate::LmdbEnvironment`]).
///
/// It also reads versions 1 to 3, the formats of earlier builds, and upgrades such an
/// environment when it opens it by creating its empty journal and rewriting its format record
/// (every version 1 to 3 record is a valid version 4 record); from then on a build that knows
/// only an older version refuses the environment with an "unsupported version" error instead
/// of missing the entries in its journal. Version 2 differs from version 1 in that membership
/// entries belong to it (builds since the membership change had written them under version 1,
/// which an older build then called corrupt); version 3 writes memberships with joint
/// configurations and member metadata under a new tag; version 4 gives multi-group
/// environments a journal of new entries. Single-group stores stay at
/// [`STORE_FORMAT_VERSION`].
pub const FORMAT_VERSION: u32 = 4;
/// The format version of a multi-group environment once it holds a failed group's mark (see
/// the version history): written, in place of [`FORMAT_VERSION`], by the transaction that
/// stores the first mark, so that builds that do not know marks refuse the environment rather
/// than serve a failed group. This build reads both; an environment that never held a mark
/// stays at [`FORMAT_VERSION`], and the removal that deletes the last mark (no failed group and
/// no set-aside record left) writes [`FORMAT_VERSION`] again in the same transaction.
pub const MARKED_FORMAT_VERSION: u32 = 5;
/// The format version this build writes in a single-group store
/// ([`crate::LmdbLogStore::open_dir`]): 3, the last version that changed such a store, so that
/// the builds of format 3 still open it. Stores of versions 1 and 2 are upgraded to it when
/// opened (their format record is rewritten); a single-group store of any other version is
/// refused as unsupported.
pub const STORE_FORMAT_VERSION: u32 = 3;
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

/// Checks a format record against `current`, the version this build writes for the layout.
pub(crate) fn check_format(bytes: &[u8], current: u32) -> FormatCheck {
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
        version if version == current => FormatCheck::Current,
        old if (OLDEST_READABLE_VERSION..current).contains(&old) => FormatCheck::Upgradable(old),
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
    /// Format 2's membership: read, never written.
    MembershipV2(MembershipRecordV2),
    Membership(#[serde(borrow)] MembershipRecord<'a>),
}

/// A membership as format 2 stored it: voters, then learners (postcard encodes a `BTreeSet` as
/// its length followed by its elements in ascending order). Also the membership of snapshot
/// files of format 2.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct MembershipRecordV2 {
    #[serde(deserialize_with = "ascending_ids")]
    voters: BTreeSet<NodeId>,
    #[serde(deserialize_with = "ascending_ids")]
    learners: BTreeSet<NodeId>,
}

/// Decodes a set of node ids as written (postcard encodes a `BTreeSet` as its length and then
/// its elements in ascending order), refusing ids out of order or repeated: a `BTreeSet` would
/// take them silently, and only corruption writes them.
fn ascending_ids<'de, D: Deserializer<'de>>(deserializer: D) -> Result<BTreeSet<NodeId>, D::Error> {
    let ids = Vec::<NodeId>::deserialize(deserializer)?;
    if let Some(pair) = ids.windows(2).find(|pair| pair[0] >= pair[1]) {
        return Err(D::Error::custom(format!(
            "node ids out of order or repeated: {} then {}",
            pair[0], pair[1]
        )));
    }
    Ok(ids.into_iter().collect())
}

/// Decodes the members' metadata as written (in ascending id order, each id once), refusing
/// anything else: collecting it into a map would let the last of two records of an id win.
fn ascending_nodes<'de: 'a, 'a, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<NodeRecord<'a>>, D::Error> {
    let nodes = Vec::<NodeRecord<'a>>::deserialize(deserializer)?;
    if let Some(pair) = nodes.windows(2).find(|pair| pair[0].id >= pair[1].id) {
        return Err(D::Error::custom(format!(
            "member metadata out of order or repeated: {} then {}",
            pair[0].id, pair[1].id
        )));
    }
    Ok(nodes)
}

impl MembershipRecordV2 {
    /// The membership it describes, with empty metadata. Like format 3, it may have no voter:
    /// builds of format 2 stored the empty membership a joining node knows before its first
    /// membership entry in the snapshots it took there.
    pub(crate) fn decode(self) -> Result<Membership, InvalidChange> {
        let ids = self.voters.iter().chain(&self.learners);
        let nodes = ids.map(|&id| (id, NodeInfo::default())).collect();
        Membership::from_parts(self.voters, BTreeSet::new(), self.learners, nodes)
    }
}

/// A membership as stored since format 3: the voter sets, the learners, and each member's
/// metadata in id order.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct MembershipRecord<'a> {
    #[serde(deserialize_with = "ascending_ids")]
    voters: BTreeSet<NodeId>,
    #[serde(deserialize_with = "ascending_ids")]
    outgoing: BTreeSet<NodeId>,
    #[serde(deserialize_with = "ascending_ids")]
    learners: BTreeSet<NodeId>,
    #[serde(borrow, deserialize_with = "ascending_nodes")]
    nodes: Vec<NodeRecord<'a>>,
}

/// One member's metadata as stored.
#[derive(Debug, Serialize, Deserialize)]
struct NodeRecord<'a> {
    id: NodeId,
    #[serde(borrow, with = "serde_bytes_borrowed")]
    address: &'a [u8],
    #[serde(borrow, with = "serde_bytes_borrowed")]
    data: &'a [u8],
}

impl<'a> MembershipRecord<'a> {
    /// The record of `membership`. `NodeInfo` may gain fields in later versions of raft-core:
    /// such a field needs a format decision (and a version) before it can be stored here.
    pub(crate) fn of(membership: &'a Membership) -> Self {
        let nodes = membership
            .nodes()
            .iter()
            .map(|(&id, info)| NodeRecord { id, address: &info.address, data: &info.data })
            .collect();
        Self {
            voters: membership.voters().clone(),
            outgoing: membership.outgoing_voters().clone(),
            learners: membership.learners().clone(),
            nodes,
        }
    }

    /// The membership it describes, checked (a record breaking the invariants is corrupt).
    pub(crate) fn decode(self) -> Result<Membership, InvalidChange> {
        let nodes = self
            .nodes
            .into_iter()
            .map(|n| (n.id, NodeInfo::new(n.address.to_vec(), n.data.to_vec())))
            .collect();
        Membership::from_parts(self.voters, self.outgoing, self.learners, nodes)
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
pub(crate) mod serde_bytes_borrowed {
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
        EntryPayload::Membership(m) => PayloadRecord::Membership(MembershipRecord::of(m)),
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
    let membership = |m: Result<Membership, InvalidChange>| {
        m.map(EntryPayload::Membership).map_err(|e| corrupt_entry(index, &e.to_string()))
    };
    let payload = match record.payload {
        PayloadRecord::Blank => EntryPayload::Blank,
        PayloadRecord::Command(bytes) => EntryPayload::Command(Bytes::copy_from_slice(bytes)),
        PayloadRecord::MembershipV2(m) => membership(m.decode())?,
        PayloadRecord::Membership(m) => membership(m.decode())?,
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
pub(crate) fn strict_decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    match postcard::take_from_bytes(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(format!("{} trailing bytes", rest.len())),
        Err(e) => Err(e.to_string()),
    }
}

/// A joint membership with metadata: voters {1} moving to {2}, node 1 staying as a learner.
#[cfg(test)]
pub(crate) fn joint_membership() -> Membership {
    let info = |address: &'static str, data: &'static str| NodeInfo::new(address, data);
    let (voters, outgoing, learners) = ([2].into(), [1].into(), [1].into());
    let nodes = [(1, info("a:1", "x")), (2, info("b:2", ""))].into();
    Membership::from_parts(voters, outgoing, learners, nodes).unwrap_or_default()
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
        // Format 2's membership, still read: term, tag 2, voters (count, ids), learners (count,
        // ids); empty metadata.
        let membership = Membership::from_ids([1, 2, 300], [4]).unwrap();
        let e = Entry { index: 5, term: 2, payload: EntryPayload::Membership(membership) };
        assert_eq!(decode_entry(5, &[2, 2, 3, 1, 2, 0xac, 0x02, 1, 4]).unwrap(), e);
        // Format 3: term, tag 3, voters, outgoing voters, learners (count, ids each), then the
        // metadata (count, then id, address (length, bytes), data (length, bytes) per member).
        let buf = encode_entry(&e, Vec::new()).unwrap();
        let mut expected = vec![2, 3, 3, 1, 2, 0xac, 0x02, 0, 1, 4, 4];
        for id in [&[1][..], &[2], &[4], &[0xac, 0x02]] {
            expected.extend_from_slice(id);
            expected.extend_from_slice(&[0, 0]);
        }
        assert_eq!(buf, expected);
        assert_eq!(decode_entry(5, &buf).unwrap(), e);
        let e = Entry { index: 6, term: 2, payload: EntryPayload::Membership(joint_membership()) };
        let buf = encode_entry(&e, Vec::new()).unwrap();
        assert_eq!(
            buf,
            [&[2, 3, 1, 2, 1, 1, 1, 1, 2][..], &[1, 3], b"a:1", &[1], b"x", &[2, 3], b"b:2", &[0]]
                .concat()
        );
        assert_eq!(decode_entry(6, &buf).unwrap(), e);
    }

    /// Format 2 snapshot files of a joining node could hold the empty membership (voters and
    /// learners both empty: bytes `0, 0`); they decode as the empty membership, as in format 3,
    /// instead of making the snapshot unreadable (review LOW 2).
    #[test]
    fn a_format_2_membership_without_voters_decodes() {
        let record: MembershipRecordV2 = strict_decode(&[0, 0]).unwrap();
        assert_eq!(record.decode(), Ok(Membership::default()));
        let record: MembershipRecordV2 = strict_decode(&[0, 1, 4]).unwrap();
        let nodes = [(4, NodeInfo::default())].into();
        let learner = Membership::from_parts(BTreeSet::new(), BTreeSet::new(), [4].into(), nodes);
        assert_eq!(record.decode(), learner);
        let empty = Membership::default();
        let bytes = postcard::to_allocvec(&MembershipRecord::of(&empty)).unwrap();
        let record: MembershipRecord<'_> = strict_decode(&bytes).unwrap();
        assert_eq!(record.decode(), Ok(empty), "format 3 agrees");
    }

    #[test]
    fn corrupt_records_are_errors() {
        let buf = encode_entry(&entry(5, 2, Some(b"abc")), Vec::new()).unwrap();
        // A membership whose learner is a voter, or whose voter has no metadata.
        let voter_is_learner: &[u8] = &[2, 2, 1, 1, 1, 1];
        let no_metadata: &[u8] = &[2, 3, 1, 1, 0, 0, 0];
        // Non-canonical encodings (review NIT): voters {2, 1} or {1, 1}, in both formats, and
        // the metadata of node 1 twice or after node 2's.
        let unsorted_v2: &[u8] = &[2, 2, 2, 2, 1, 0];
        let repeated_v2: &[u8] = &[2, 2, 2, 1, 1, 0];
        let unsorted: &[u8] = &[2, 3, 2, 2, 1, 0, 0, 2, 1, 0, 0, 2, 0, 0];
        let repeated_learner: &[u8] = &[2, 3, 1, 1, 0, 2, 2, 2, 2, 1, 0, 0, 2, 0, 0];
        let repeated_node: &[u8] = &[2, 3, 1, 1, 0, 0, 2, 1, 0, 0, 1, 0, 0];
        let unsorted_nodes: &[u8] = &[2, 3, 2, 1, 2, 0, 0, 2, 2, 0, 0, 1, 0, 0];
        for bad in [
            unsorted_v2,
            repeated_v2,
            unsorted,
            repeated_learner,
            repeated_node,
            unsorted_nodes,
            &buf[..buf.len() - 1],
            &[2, 9][..],
            &[][..],
            &[2, 0, 0][..],
            voter_is_learner,
            no_metadata,
        ] {
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
        assert_eq!(MARKED_FORMAT_VERSION, FORMAT_VERSION + 1);
        let check = |bytes: &[u8]| check_format(bytes, FORMAT_VERSION);
        assert_eq!(check(&encode_format(FORMAT_VERSION)), FormatCheck::Current);
        assert_eq!(check(&encode_format(1)), FormatCheck::Upgradable(1));
        assert_eq!(check(&encode_format(3)), FormatCheck::Upgradable(3));
        assert_eq!(check(&encode_format(0)), FormatCheck::Unsupported(0));
        assert_eq!(check(&encode_format(9)), FormatCheck::Unsupported(9));
        assert_eq!(check(b"something else"), FormatCheck::Foreign);
        assert_eq!(check(b""), FormatCheck::Foreign);
        // A single-group store: 3 is current, 4 (an environment's) is not its format.
        let store = |bytes: &[u8]| check_format(bytes, STORE_FORMAT_VERSION);
        assert_eq!(store(&encode_format(3)), FormatCheck::Current);
        assert_eq!(store(&encode_format(2)), FormatCheck::Upgradable(2));
        assert_eq!(store(&encode_format(4)), FormatCheck::Unsupported(4));
    }
}
