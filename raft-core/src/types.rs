//! Basic Raft vocabulary: ids, terms, indexes, hard state and log entries.

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::membership::{Membership, MembershipV1};

pub use crate::ids::*;

/// The persistent state of Figure 2 that is not the log: `currentTerm` and `votedFor`.
///
/// A store must make a `HardState` durable before the node acts on it (grants a vote, sends a
/// message of the new term); the node guarantees it never asks for that ordering to be broken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// The latest term this node has seen.
    pub current_term: Term,
    /// The candidate this node voted for in `current_term`, if any.
    pub voted_for: Option<NodeId>,
}

/// The position of an entry: its index and the term it was created in. Two logs that hold an
/// entry with the same `LogId` are identical up to that entry (Log Matching).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct LogId {
    /// The term of the entry (compared first: a log ending in a later term is more up to date).
    pub term: Term,
    /// The index of the entry.
    pub index: LogIndex,
}

impl LogId {
    /// Creates a log id.
    pub const fn new(term: Term, index: LogIndex) -> Self {
        Self { term, index }
    }
}

/// What an entry carries.
///
/// New variants may be added in later versions; match with a wildcard arm.
///
/// **Serde form.** An enum of four variants, in this order: `Blank`, `Command`, `MembershipV1`
/// (the membership format of earlier builds: voters and learners only, decoded into a
/// [`Membership`] with empty metadata and never written any more) and `Membership` (the current,
/// versioned format). So entries stored by earlier builds still decode.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EntryPayload {
    /// An entry with no command, appended by every new leader so that it can commit entries of
    /// earlier terms (Raft paper §5.4.2 and §8). State machines answer it with an empty response.
    Blank,
    /// An application command: opaque bytes, handed to the `StateMachine` once committed.
    Command(Bytes),
    /// A new cluster membership (see [`crate::membership`]). It takes effect on every node as
    /// soon as the node appends it; state machines answer it with an empty response.
    Membership(Membership),
}

/// The name of [`EntryPayload`] in its serde form, and its variants' names and indexes.
const PAYLOAD: &str = "EntryPayload";
const PAYLOAD_VARIANTS: [&str; 4] = ["Blank", "Command", "MembershipV1", "Membership"];

impl Serialize for EntryPayload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            EntryPayload::Blank => {
                serializer.serialize_unit_variant(PAYLOAD, 0, PAYLOAD_VARIANTS[0])
            }
            EntryPayload::Command(bytes) => {
                serializer.serialize_newtype_variant(PAYLOAD, 1, PAYLOAD_VARIANTS[1], bytes)
            }
            EntryPayload::Membership(m) => {
                serializer.serialize_newtype_variant(PAYLOAD, 3, PAYLOAD_VARIANTS[3], m)
            }
        }
    }
}

/// The decoding side of [`EntryPayload`]'s serde form.
#[derive(Deserialize)]
#[serde(rename = "EntryPayload")]
enum PayloadDecoded {
    Blank,
    Command(Bytes),
    MembershipV1(MembershipV1),
    Membership(Membership),
}

impl<'de> Deserialize<'de> for EntryPayload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match PayloadDecoded::deserialize(deserializer)? {
            PayloadDecoded::Blank => EntryPayload::Blank,
            PayloadDecoded::Command(bytes) => EntryPayload::Command(bytes),
            PayloadDecoded::MembershipV1(old) => {
                EntryPayload::Membership(old.upgrade().map_err(serde::de::Error::custom)?)
            }
            PayloadDecoded::Membership(m) => EntryPayload::Membership(m),
        })
    }
}

/// One log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The entry's index in the log.
    pub index: LogIndex,
    /// The term of the leader that created the entry.
    pub term: Term,
    /// What the entry carries.
    pub payload: EntryPayload,
}

/// Bytes charged to an entry on top of its payload when budgets are counted (index, term, tag).
pub const ENTRY_OVERHEAD_BYTES: u64 = 24;

impl Entry {
    /// The entry's log id.
    pub fn log_id(&self) -> LogId {
        LogId::new(self.term, self.index)
    }

    /// The application command, or `None` for entries the library appended itself.
    pub fn command(&self) -> Option<&Bytes> {
        match &self.payload {
            EntryPayload::Command(bytes) => Some(bytes),
            EntryPayload::Blank | EntryPayload::Membership(_) => None,
        }
    }

    /// The size charged to this entry against byte budgets (batches, in-flight windows, reads):
    /// the payload length plus [`ENTRY_OVERHEAD_BYTES`]. Close to, never below, its encoded size
    /// minus framing.
    pub fn size_bytes(&self) -> u64 {
        let payload = match &self.payload {
            EntryPayload::Command(bytes) => bytes.len() as u64,
            EntryPayload::Blank => 0,
            EntryPayload::Membership(m) => m.size_bytes(),
        };
        payload + ENTRY_OVERHEAD_BYTES
    }
}

/// The role a node plays at a moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Runs a PreVote round: asks whether it could win before disturbing anyone's term.
    PreCandidate,
    /// Runs an election in a new term.
    Candidate,
    /// Leads the cluster for its term.
    Leader,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre-candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        };
        f.write_str(name)
    }
}

/// Why a snapshot transfer to a follower failed (see [`PeerReplication::snapshot_error`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotFailure {
    /// The follower keeps no snapshots (it runs without a snapshot store): it cannot catch up
    /// until it restarts with one.
    #[error("the follower cannot take snapshots (it has no snapshot store)")]
    Unsupported,
    /// The data the follower received did not match the snapshot's checksum: the leader's
    /// stored snapshot (or the transfer) is corrupt.
    #[error("the follower received data that does not match the snapshot's checksum")]
    ChecksumMismatch,
    /// The follower refused a chunk as malformed.
    #[error("the follower refused a chunk as malformed")]
    Refused,
    /// A chunk could not be read from the snapshot store or delivered to the follower.
    #[error("a chunk could not be read or delivered")]
    Unreachable,
    /// The follower stopped answering for `Config::snapshot_transfer_timeout`.
    #[error("the follower stopped answering")]
    TimedOut,
}

/// What a leader knows of one follower's replication (see `Node::replication`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PeerReplication {
    /// The follower (a voter or a learner).
    pub id: NodeId,
    /// Whether it votes.
    pub voter: bool,
    /// The highest index known to match the leader's log and be durable there (0: unknown).
    pub match_index: LogIndex,
    /// Whether the leader knows where the follower's log stands (it answered since the leader
    /// took office or since it was last unreachable).
    pub in_sync: bool,
    /// Whether a snapshot is being sent to it.
    pub snapshot_in_progress: bool,
    /// Snapshot transfers to it that failed in a row without progress. The leader waits a
    /// heartbeat interval after the first, doubling with each further one up to 64 intervals.
    pub snapshot_failures: u32,
    /// Why the latest snapshot transfer to it failed; cleared once one completes.
    pub snapshot_error: Option<SnapshotFailure>,
}

/// A point-in-time view of a node, as reported by `Node::status` and its watch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// This node's id.
    pub id: NodeId,
    /// Its current role.
    pub role: Role,
    /// Its current term.
    pub current_term: Term,
    /// The leader it knows for `current_term`, if any.
    pub leader_id: Option<NodeId>,
    /// The highest index it knows to be committed (volatile: it restarts at 0 and is relearned).
    pub commit_index: LogIndex,
    /// The highest index its state machine has applied.
    pub applied_index: LogIndex,
    /// The index of the last entry in its log (durable or not yet).
    pub last_log_index: LogIndex,
    /// Whether the node is quiesced (`Config::quiesce_idle`): an idle group's timers are
    /// suspended until something happens; it needs no ticks meanwhile.
    pub quiesced: bool,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Entries are moved and copied on every log push, store append, AppendEntries and apply:
    /// a membership payload (rare) is a pointer, so an entry is its ids plus a `Bytes`.
    #[test]
    fn an_entry_is_small() {
        assert!(std::mem::size_of::<Entry>() <= 56, "{}", std::mem::size_of::<Entry>());
        let membership = Membership::with_voters([1, 2, 3]);
        assert_eq!(membership.clone(), membership);
        let debug = format!("{membership:?}");
        assert!(debug.starts_with("Membership { voters: {1, 2, 3}, outgoing: {}"), "{debug}");
    }

    /// Entries as the build before joint consensus encoded them with postcard (bytes printed by
    /// that build, commit 3bbd55a): each still decodes, membership entries with empty metadata.
    #[test]
    fn entries_written_by_earlier_builds_still_decode() {
        let old_membership: &[u8] = &[7, 3, 2, 3, 1, 2, 3, 1, 4];
        let entry: Entry = postcard::from_bytes(old_membership).unwrap();
        let expected = Membership::from_ids([1, 2, 3], [4]).unwrap();
        assert_eq!(entry, Entry { index: 7, term: 3, payload: EntryPayload::Membership(expected) });
        let command: Entry = postcard::from_bytes(&[8, 3, 1, 2, 104, 105]).unwrap();
        assert_eq!(command.command(), Some(&Bytes::from_static(b"hi")));
        let blank: Entry = postcard::from_bytes(&[9, 3, 0]).unwrap();
        assert_eq!(blank.payload, EntryPayload::Blank);
        // A format-1 membership that breaks the invariants is refused, not upgraded.
        assert!(postcard::from_bytes::<Entry>(&[7, 3, 2, 1, 1, 1, 1]).is_err());

        // Today's encoding: membership entries are variant 3, and round-trip.
        let entry = Entry { index: 7, term: 3, payload: entry.payload };
        let bytes = postcard::to_allocvec(&entry).unwrap();
        assert_eq!(bytes[2], 3);
        assert_eq!(postcard::from_bytes::<Entry>(&bytes).unwrap(), entry);
        assert_eq!(postcard::to_allocvec(&command).unwrap(), [8, 3, 1, 2, 104, 105]);
        assert_eq!(postcard::to_allocvec(&blank).unwrap(), [9, 3, 0]);
    }
}
