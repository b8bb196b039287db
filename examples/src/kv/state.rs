//! The replicated state: the map and the client sessions, serializable in full so that a
//! snapshot is "serialize the state" and a restore is "deserialize it".

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use raft_core::NodeId;
use serde::{Deserialize, Serialize};

use super::command::{Command, KvError, Op, OpResult, Response};
use super::config::MemberAddrs;
use super::sessions::{Sessions, MAX_PENDING_PER_SESSION};

/// The first bytes of an encoded state (a snapshot): a magic word and the format version.
/// Version 3 added session owners and 128-bit session ids, and made removed members permanent.
pub const STATE_FORMAT: &[u8; 8] = b"RAFTKV\x00\x03";

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
    /// Open client sessions.
    pub sessions: Sessions,
    /// The address book: where members added at run time listen (`SetMemberAddress`). The
    /// founding members' addresses come from each node's configuration and are not here unless
    /// set explicitly.
    pub members: BTreeMap<NodeId, MemberAddrs>,
    /// Tombstones: members removed from the cluster (`ForgetMember`). Their addresses are
    /// forgotten, their ids are refused by the transport from then on, and they can never be
    /// added again (their certificates stay valid until they expire).
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
                self.sessions.register(owner, id, op_id)?;
                Ok(OpResult::Registered { id })
            }
            (op, _) if op.is_internal() && owner.is_some() => {
                Err(KvError::Malformed("address-book commands come from nodes only".into()))
            }
            (Op::SetMemberAddress { id, .. }, _) if self.removed_members.contains(&id) => {
                Err(KvError::Removed(id))
            }
            (op, _) if op.is_read() || op.is_internal() => Ok(self.execute(op)),
            (op, None) => Ok(self.execute(op)),
            (op, Some(session_ref)) => {
                let owner = owner.ok_or(KvError::UnknownSession)?;
                if session_ref.ack_below > session_ref.seq {
                    return Err(KvError::BadAck);
                }
                let session = self.sessions.use_session(owner, session_ref.id, op_id)?;
                if session_ref.ack_below > session.ack_below {
                    session.ack_below = session_ref.ack_below;
                    while session
                        .responses
                        .first_key_value()
                        .is_some_and(|(&s, _)| s < session_ref.ack_below)
                    {
                        session.responses.pop_first();
                    }
                }
                if session_ref.seq < session.ack_below {
                    return Err(KvError::Stale);
                }
                if let Some(response) = session.responses.get(&session_ref.seq) {
                    return response.clone();
                }
                if session.responses.len() >= MAX_PENDING_PER_SESSION {
                    return Err(KvError::TooManyPending);
                }
                let response = Ok(Self::execute_on(&mut self.data, op));
                session.responses.insert(session_ref.seq, response.clone());
                response
            }
        }
    }

    fn execute(&mut self, op: Op) -> OpResult {
        match op {
            Op::SetMemberAddress { id, raft_addr, client_addr } => {
                self.members.insert(id, MemberAddrs { raft: raft_addr, client: client_addr });
                OpResult::MembersUpdated
            }
            Op::ForgetMember { id } => {
                self.members.remove(&id);
                self.removed_members.insert(id);
                OpResult::MembersUpdated
            }
            op => Self::execute_on(&mut self.data, op),
        }
    }

    fn execute_on(data: &mut BTreeMap<Bytes, Bytes>, op: Op) -> OpResult {
        match op {
            // Address-book changes never carry a session (`execute` handles them); a session
            // does not make one apply to the map.
            Op::Register { .. } | Op::SetMemberAddress { .. } | Op::ForgetMember { .. } => {
                OpResult::Written
            }
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
    use crate::kv::sessions::{MAX_PENDING_PER_SESSION, MAX_SESSIONS_PER_CLIENT};

    const ALICE: Option<&str> = Some("client-alice.kv");
    const MALLORY: Option<&str> = Some("client-mallory.kv");

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn put(key: &str, value: &str) -> Op {
        Op::Put { key: b(key), value: b(value) }
    }

    fn with(id: SessionId, seq: u64, ack_below: u64, op: Op) -> Command {
        Command { session: Some(SessionRef { id, seq, ack_below }), op }
    }

    fn plain(op: Op) -> Command {
        Command { session: None, op }
    }

    fn register(state: &mut KvState, owner: Option<&str>, id: SessionId, now: u64) {
        let answer = state.apply(now, owner, plain(Op::Register { id }));
        assert_eq!(answer, Ok(OpResult::Registered { id }));
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
        assert_eq!(s.apply(9999, ALICE, with(42, 0, 0, put("k", "v"))), Ok(OpResult::Written));
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
    fn the_address_book_is_replicated_state_and_removals_are_permanent() {
        let mut s = KvState::new();
        let (raft_addr, client_addr) =
            ("127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap());
        let set = Op::SetMemberAddress { id: 4, raft_addr, client_addr };
        assert_eq!(s.apply(1, None, plain(set.clone())), Ok(OpResult::MembersUpdated));
        assert_eq!(s.members[&4], MemberAddrs { raft: raft_addr, client: client_addr });
        // Clients cannot change the address book.
        assert!(matches!(
            s.apply(2, ALICE, plain(Op::ForgetMember { id: 4 })),
            Err(KvError::Malformed(_))
        ));
        assert_eq!(
            s.apply(3, None, plain(Op::ForgetMember { id: 4 })),
            Ok(OpResult::MembersUpdated)
        );
        assert!(s.members.is_empty() && s.removed_members.contains(&4));
        // A removed id is never added back, and the tombstone survives a snapshot.
        assert_eq!(s.apply(4, None, plain(set)), Err(KvError::Removed(4)));
        assert!(s.members.is_empty() && s.removed_members.contains(&4));
        let restored = KvState::from_bytes(&s.to_bytes().unwrap()).unwrap();
        assert_eq!(restored, s);
        assert!(restored.removed_members.contains(&4));
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
        other[7] = 2;
        assert!(matches!(KvState::from_bytes(&other), Err(StateDecodeError::Format)));
        assert!(matches!(KvState::from_bytes(&bytes[8..]), Err(StateDecodeError::Format)));
    }
}
