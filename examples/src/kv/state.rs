//! The replicated state: the map, the client sessions and the tombstones of removed members,
//! serializable in full so that a snapshot is "serialize the state" and a restore is
//! "deserialize it".

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use raft_core::{Membership, NodeId};
use serde::{Deserialize, Serialize};

use super::command::{Command, KvError, Op, OpResult, Response};
use raft_core::session::SessionTable;

/// The first bytes of an encoded state (a snapshot): a magic word and the format version.
/// Version 3 added session owners and 128-bit session ids, and made removed members permanent;
/// version 4 dropped the address book (members' addresses live in the Raft membership) and
/// derives the tombstones from membership entries; version 5 added session incarnations.
pub const STATE_FORMAT: &[u8; 8] = b"RAFTKV\x00\x05";

/// Why an encoded state could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum StateDecodeError {
    /// The bytes do not start with [`STATE_FORMAT`]: another version, or not a state.
    #[error("not a kv state of format version {} (a snapshot of another version?)", STATE_FORMAT[7])]
    Format,
    /// The body does not decode.
    #[error("state does not decode: {0}")]
    Decode(#[from] postcard::Error),
}

/// The state of the key-value service. Deterministic: the same commands give the same state
/// and the same responses on every node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvState {
    /// The map.
    pub data: BTreeMap<Bytes, Bytes>,
    /// Open client sessions (raft-core's table: owned by the client certificate that opened
    /// each, bounded, `O(log n)` eviction), keeping each write's response for retries.
    pub sessions: SessionTable<String, Response>,
    /// The members of the latest membership entry applied (empty before the first: the
    /// bootstrap membership is no entry).
    pub members: BTreeSet<NodeId>,
    /// Tombstones: members that a committed membership entry removed from the cluster. Their
    /// ids are refused by the transport from then on, and they can never be added again (their
    /// certificates stay valid until they expire).
    pub removed_members: BTreeSet<NodeId>,
}

impl KvState {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads a key from the local state (the caller is responsible for linearizability).
    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.data.get(key).cloned()
    }

    /// Applies a command of the entry that `owner` sent (`None`: proposed by a node). `op_id`
    /// increases with every command (the log index times
    /// [`MAX_COMMANDS_PER_ENTRY`](super::command::MAX_COMMANDS_PER_ENTRY) plus its place in
    /// the entry): a session's time of last use.
    pub fn apply(&mut self, op_id: u64, owner: Option<&str>, command: Command) -> Response {
        command.op.validate()?;
        match (command.op, command.session) {
            (Op::Register { id }, _) => {
                let owner = owner.ok_or(KvError::UnknownSession)?;
                let incarnation =
                    self.sessions.register(owner, id, op_id).map_err(KvError::from)?;
                Ok(OpResult::Registered { id, incarnation })
            }
            (Op::Tombstone { id }, _) => self.tombstone(owner, id),
            (op, _) if op.is_read() => Ok(Self::execute_on(&mut self.data, op)),
            (op, None) => Ok(Self::execute_on(&mut self.data, op)),
            (op, Some(session)) => {
                let owner = owner.ok_or(KvError::UnknownSession)?;
                let data = &mut self.data;
                let answer =
                    self.sessions.apply(owner, session, op_id, || Ok(Self::execute_on(data, op)));
                answer.unwrap_or_else(|refused| Err(refused.into()))
            }
        }
    }

    /// A committed membership entry was applied: the members it drops (present in the
    /// previous membership entry, absent from this one) become tombstones. Returns them. A
    /// joint membership still holds its outgoing voters, so a voter is removed by the entry
    /// that completes the change.
    pub fn apply_membership(&mut self, membership: &Membership) -> Vec<NodeId> {
        let members = membership.members();
        let removed: Vec<NodeId> = self.members.difference(&members).copied().collect();
        self.removed_members.extend(removed.iter().copied());
        self.members = members;
        removed
    }

    /// [`Op::Tombstone`]: records `id` as removed, if a node proposed it (`owner` is `None`)
    /// and the latest membership entry applied does not hold `id`.
    fn tombstone(&mut self, owner: Option<&str>, id: NodeId) -> Response {
        if owner.is_some() {
            return Err(KvError::NodeOnly);
        }
        if self.members.contains(&id) {
            return Err(KvError::Member(id));
        }
        self.removed_members.insert(id);
        Ok(OpResult::Tombstoned { id })
    }

    fn execute_on(data: &mut BTreeMap<Bytes, Bytes>, op: Op) -> OpResult {
        match op {
            // Registrations are handled by `apply`; a session does not make one apply to the map.
            Op::Register { .. } | Op::Tombstone { .. } => OpResult::Written,
            Op::Get { key } => OpResult::Value(data.get(&key).cloned()),
            Op::Put { key, value } => {
                data.insert(key, value);
                OpResult::Written
            }
            Op::Delete { key } => OpResult::Deleted { existed: data.remove(&key).is_some() },
            Op::Cas { key, expected, new } => {
                if data.get(&key) != expected.as_ref() {
                    return OpResult::Cas { swapped: false };
                }
                match new {
                    Some(value) => data.insert(key, value),
                    None => data.remove(&key),
                };
                OpResult::Cas { swapped: true }
            }
        }
    }

    /// The whole state, encoded after [`STATE_FORMAT`] (the body of a snapshot).
    pub fn to_bytes(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_extend(self, STATE_FORMAT.to_vec())
    }

    /// A state decoded from [`KvState::to_bytes`]; a state of another format version is
    /// refused with [`StateDecodeError::Format`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StateDecodeError> {
        let body = bytes.strip_prefix(STATE_FORMAT.as_slice()).ok_or(StateDecodeError::Format)?;
        Ok(postcard::from_bytes(body)?)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use crate::kv::command::{SessionId, SessionRef};
    const MAX_PENDING_PER_SESSION: usize =
        raft_core::session::SessionLimits::DEFAULT.max_pending_per_session;
    const MAX_SESSIONS_PER_CLIENT: usize =
        raft_core::session::SessionLimits::DEFAULT.max_sessions_per_owner;

    const ALICE: Option<&str> = Some("client-alice.kv");
    const MALLORY: Option<&str> = Some("client-mallory.kv");

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn put(key: &str, value: &str) -> Op {
        Op::Put { key: b(key), value: b(value) }
    }

    /// A command in session `id` of incarnation `incarnation`.
    fn with_in(id: SessionId, incarnation: u64, seq: u64, ack_below: u64, op: Op) -> Command {
        Command { session: Some(SessionRef { id, incarnation, seq, ack_below }), op }
    }

    /// A command in session `id`, registered at operation 1 (as most sessions here are).
    fn with(id: SessionId, seq: u64, ack_below: u64, op: Op) -> Command {
        with_in(id, 1, seq, ack_below, op)
    }

    fn plain(op: Op) -> Command {
        Command { session: None, op }
    }

    /// Registers a new session `id` at operation `now` (its incarnation).
    fn register(state: &mut KvState, owner: Option<&str>, id: SessionId, now: u64) {
        let answer = state.apply(now, owner, plain(Op::Register { id }));
        assert_eq!(answer, Ok(OpResult::Registered { id, incarnation: now }));
    }

    #[test]
    fn basic_operations() {
        let mut s = KvState::new();
        let get = |s: &mut KvState, k| s.apply(9, ALICE, plain(Op::Get { key: b(k) }));
        assert_eq!(get(&mut s, "a"), Ok(OpResult::Value(None)));
        assert_eq!(s.apply(1, ALICE, plain(put("a", "1"))), Ok(OpResult::Written));
        assert_eq!(get(&mut s, "a"), Ok(OpResult::Value(Some(b("1")))));
        let cas = |expected: Option<&str>, new: Option<&str>| {
            plain(Op::Cas { key: b("a"), expected: expected.map(b), new: new.map(b) })
        };
        assert_eq!(
            s.apply(2, ALICE, cas(Some("0"), Some("2"))),
            Ok(OpResult::Cas { swapped: false })
        );
        assert_eq!(
            s.apply(3, ALICE, cas(Some("1"), Some("2"))),
            Ok(OpResult::Cas { swapped: true })
        );
        assert_eq!(s.get(b"a"), Some(b("2")));
        assert_eq!(s.apply(4, ALICE, cas(Some("2"), None)), Ok(OpResult::Cas { swapped: true }));
        assert_eq!(s.apply(5, ALICE, cas(None, Some("3"))), Ok(OpResult::Cas { swapped: true }));
        let del = plain(Op::Delete { key: b("a") });
        assert_eq!(s.apply(6, ALICE, del.clone()), Ok(OpResult::Deleted { existed: true }));
        assert_eq!(s.apply(7, ALICE, del), Ok(OpResult::Deleted { existed: false }));
    }

    #[test]
    fn a_retried_write_applies_once() {
        let mut s = KvState::new();
        let id = 0x1234_5678_9abc_def0_1234_5678_9abc_def0;
        register(&mut s, ALICE, id, 1);
        let cas = Op::Cas { key: b("k"), expected: None, new: Some(b("x")) };
        let swapped = Ok(OpResult::Cas { swapped: true });
        assert_eq!(s.apply(2, ALICE, with(id, 0, 0, cas.clone())), swapped);
        // The same request again (a retry): the first answer, not a failed swap.
        assert_eq!(s.apply(3, ALICE, with(id, 0, 0, cas.clone())), swapped);
        // Out-of-order completion within a session: seq 2 before seq 1.
        assert_eq!(s.apply(4, ALICE, with(id, 2, 0, put("k", "two"))), Ok(OpResult::Written));
        assert_eq!(s.apply(5, ALICE, with(id, 1, 0, put("k", "one"))), Ok(OpResult::Written));
        assert_eq!(s.apply(6, ALICE, with(id, 2, 0, put("k", "two"))), Ok(OpResult::Written));
        assert_eq!(s.get(b"k"), Some(b("one")));
        // Acknowledging forgets responses; a late duplicate is refused, not re-applied.
        assert_eq!(s.apply(7, ALICE, with(id, 3, 3, put("k", "three"))), Ok(OpResult::Written));
        assert_eq!(s.sessions.get(id).unwrap().responses.len(), 1);
        assert_eq!(s.apply(8, ALICE, with(id, 1, 0, put("k", "one"))), Err(KvError::Stale));
        assert_eq!(s.get(b"k"), Some(b("three")));
    }

    #[test]
    fn another_client_cannot_use_a_victims_session() {
        let mut s = KvState::new();
        let id = 77;
        register(&mut s, ALICE, id, 1);
        // Mallory knows the id: she can neither consume Alice's next sequence number...
        let stolen = s.apply(2, MALLORY, with(id, 0, 0, put("k", "mallory")));
        assert_eq!(stolen, Err(KvError::UnknownSession));
        // ...nor move her ack_below, nor take the id over.
        assert_eq!(
            s.apply(3, MALLORY, with(id, u64::MAX, u64::MAX, put("k", "m"))),
            Err(KvError::UnknownSession)
        );
        assert_eq!(s.apply(4, MALLORY, plain(Op::Register { id })), Err(KvError::SessionTaken));
        let session = s.sessions.get(id).unwrap();
        assert_eq!((session.ack_below, session.responses.len()), (0, 0));
        // Alice's write with sequence number 0 is applied, not answered from a cache.
        assert_eq!(s.apply(5, ALICE, with(id, 0, 0, put("k", "alice"))), Ok(OpResult::Written));
        assert_eq!(s.get(b"k"), Some(b("alice")));
        // Entries without an owner (proposed by a node) use no session.
        assert_eq!(s.apply(6, None, with(id, 1, 0, put("k", "x"))), Err(KvError::UnknownSession));
    }

    #[test]
    fn a_late_duplicate_registration_does_not_let_a_late_write_apply_twice() {
        let mut s = KvState::new();
        let x = 0x5eed;
        register(&mut s, ALICE, x, 1);
        assert_eq!(s.apply(2, ALICE, with(x, 0, 0, put("k", "v1"))), Ok(OpResult::Written));
        assert_eq!(s.apply(3, MALLORY, plain(put("k", "v2"))), Ok(OpResult::Written));
        for i in 0..MAX_SESSIONS_PER_CLIENT as u64 {
            register(&mut s, ALICE, 1000 + u128::from(i), 10 + i);
        }
        assert!(s.sessions.get(x).is_none(), "evicted");
        // The late duplicates of the registration and of the write arrive.
        let again = s.apply(5000, ALICE, plain(Op::Register { id: x }));
        assert_eq!(again, Ok(OpResult::Registered { id: x, incarnation: 5000 }));
        let late = s.apply(5001, ALICE, with(x, 0, 0, put("k", "v1")));
        assert_eq!(late, Err(KvError::UnknownSession));
        assert_eq!(s.get(b"k"), Some(b("v2")), "the write was applied twice");
    }

    #[test]
    fn acknowledgements_are_capped_at_the_sequence_number() {
        let mut s = KvState::new();
        register(&mut s, ALICE, 5, 1);
        assert_eq!(s.apply(2, ALICE, with(5, 3, 4, put("k", "v"))), Err(KvError::BadAck));
        assert_eq!(s.apply(3, ALICE, with(5, 0, u64::MAX, put("k", "v"))), Err(KvError::BadAck));
        assert_eq!(s.sessions.get(5).unwrap().ack_below, 0);
        assert_eq!(s.apply(4, ALICE, with(5, 0, 0, put("k", "v"))), Ok(OpResult::Written));
    }

    #[test]
    fn unknown_sessions_and_a_registration_flood() {
        let mut s = KvState::new();
        assert_eq!(s.apply(1, ALICE, with(42, 0, 0, put("k", "v"))), Err(KvError::UnknownSession));
        register(&mut s, ALICE, 42, 2);
        for id in 0..2 * MAX_SESSIONS_PER_CLIENT as u128 {
            register(&mut s, MALLORY, 1000 + id, 3 + id as u64);
        }
        assert_eq!(s.sessions.count_of("client-mallory.kv"), MAX_SESSIONS_PER_CLIENT);
        assert_eq!(
            s.apply(9999, ALICE, with_in(42, 2, 0, 0, put("k", "v"))),
            Ok(OpResult::Written)
        );
        // Registrations need an authenticated owner.
        assert_eq!(
            s.apply(10_000, None, plain(Op::Register { id: 1 })),
            Err(KvError::UnknownSession)
        );
    }

    #[test]
    fn pending_responses_are_bounded() {
        let mut s = KvState::new();
        register(&mut s, ALICE, 1, 1);
        for seq in 0..MAX_PENDING_PER_SESSION as u64 {
            let answer = s.apply(2 + seq, ALICE, with(1, seq, 0, put("k", "v")));
            assert_eq!(answer, Ok(OpResult::Written));
        }
        let over = with(1, MAX_PENDING_PER_SESSION as u64, 0, put("k", "v"));
        assert_eq!(s.apply(5000, ALICE, over), Err(KvError::TooManyPending));
    }

    #[test]
    fn membership_entries_make_removed_members_permanent_tombstones() {
        let mut s = KvState::new();
        let m = |voters: &[NodeId], learners: &[NodeId]| {
            Membership::from_ids(voters.iter().copied(), learners.iter().copied()).unwrap()
        };
        assert_eq!(s.apply_membership(&m(&[1, 2, 3], &[4])), Vec::<NodeId>::new());
        // A learner dropped; then voters 1 and 2 replaced by 5 and 6 through a joint membership:
        // they leave with the entry that completes the change.
        assert_eq!(s.apply_membership(&m(&[1, 2, 3], &[])), vec![4]);
        let old = m(&[1, 2, 3], &[]);
        let target = old.target([3, 5, 6], [], [(5, Default::default()), (6, Default::default())]);
        let target = target.unwrap();
        let joint = Membership::from_parts(
            target.voters().clone(),
            old.voters().clone(),
            BTreeSet::new(),
            old.nodes().iter().chain(target.nodes()).map(|(&id, i)| (id, i.clone())).collect(),
        )
        .unwrap();
        assert_eq!(s.apply_membership(&joint), Vec::<NodeId>::new());
        assert_eq!(s.apply_membership(&target), vec![1, 2]);
        assert_eq!(s.removed_members, [1, 2, 4].into());
        // The tombstones survive a snapshot.
        let restored = KvState::from_bytes(&s.to_bytes().unwrap()).unwrap();
        assert_eq!(restored, s);
    }

    #[test]
    fn a_node_proposed_tombstone_removes_a_never_member_only() {
        let mut s = KvState::new();
        let tombstone = |id| plain(Op::Tombstone { id });
        assert_eq!(s.apply_membership(&Membership::with_voters([1, 2, 3])), Vec::<NodeId>::new());
        // A client may not send one; a member leaves through a membership change.
        assert_eq!(s.apply(1, ALICE, tombstone(4)), Err(KvError::NodeOnly));
        assert_eq!(s.apply(2, None, tombstone(3)), Err(KvError::Member(3)));
        assert!(s.removed_members.is_empty());
        assert_eq!(s.apply(3, None, tombstone(4)), Ok(OpResult::Tombstoned { id: 4 }));
        assert_eq!(s.apply(4, None, tombstone(4)), Ok(OpResult::Tombstoned { id: 4 }));
        assert_eq!(s.removed_members, [4].into());
        assert_eq!(KvState::from_bytes(&s.to_bytes().unwrap()).unwrap(), s);
    }

    #[test]
    fn state_round_trips_through_versioned_bytes() {
        let mut s = KvState::new();
        register(&mut s, ALICE, 1, 1);
        s.apply(2, ALICE, with(1, 0, 0, put("k", "v"))).unwrap();
        let bytes = s.to_bytes().unwrap();
        assert_eq!(KvState::from_bytes(&bytes).unwrap(), s);
        // A state of another version (or the previous, unversioned format) is refused clearly.
        let mut other = bytes.clone();
        other[7] = 4;
        assert!(matches!(KvState::from_bytes(&other), Err(StateDecodeError::Format)));
        assert!(matches!(KvState::from_bytes(&bytes[8..]), Err(StateDecodeError::Format)));
    }
}
