//! The replicated state: the map and the client sessions, serializable in full so that a
//! snapshot is "serialize the state" and a restore is "deserialize it".

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use raft_core::NodeId;
use serde::{Deserialize, Serialize};

use super::command::{Command, KvError, Op, OpResult, Response};
use super::config::MemberAddrs;

/// The most sessions kept; registering one more evicts the least recently active.
pub const MAX_SESSIONS: usize = 16_384;
/// The most unacknowledged responses one session keeps; further new requests are refused with
/// [`KvError::TooManyPending`] until the client acknowledges some.
pub const MAX_PENDING_PER_SESSION: usize = 1024;

/// One client session: what the state machine remembers to apply each request at most once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Operation id of the session's latest request (for least-recently-active eviction).
    pub last_active: u64,
    /// Requests below this sequence number were answered to the client; their responses are
    /// forgotten and a late duplicate of one is refused as [`KvError::Stale`].
    pub ack_below: u64,
    /// The responses of applied requests at or above `ack_below`, by sequence number.
    pub responses: BTreeMap<u64, Response>,
}

/// The state of the key-value service. Deterministic: the same commands give the same state
/// and the same responses on every node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvState {
    /// The map.
    pub data: BTreeMap<Bytes, Bytes>,
    /// Open client sessions by id.
    pub sessions: BTreeMap<u64, Session>,
    /// The address book: where members added at run time listen (`SetMemberAddress`). The
    /// founding members' addresses come from each node's configuration and are not here unless
    /// set explicitly.
    pub members: BTreeMap<NodeId, MemberAddrs>,
    /// Members whose addresses were forgotten after their removal (`ForgetMember`), so that a
    /// node restoring this state also drops addresses it has from its configuration.
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

    /// Applies a command. `op_id` identifies it, increasing with every command (the log index
    /// times [`MAX_COMMANDS_PER_ENTRY`](super::command::MAX_COMMANDS_PER_ENTRY) plus its place
    /// in the entry): a registration's session id, and a session's activity time.
    pub fn apply(&mut self, op_id: u64, command: Command) -> Response {
        command.op.validate()?;
        match (command.op, command.session) {
            (Op::Register, _) => Ok(self.register(op_id)),
            (op, _) if op.is_read() || op.is_internal() => Ok(self.execute(op)),
            (op, None) => Ok(self.execute(op)),
            (op, Some(session_ref)) => {
                let Some(session) = self.sessions.get_mut(&session_ref.client_id) else {
                    return Err(KvError::UnknownSession);
                };
                session.last_active = op_id;
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

    fn register(&mut self, op_id: u64) -> OpResult {
        while self.sessions.len() >= MAX_SESSIONS {
            let oldest = self.sessions.iter().min_by_key(|(_, s)| s.last_active).map(|(&id, _)| id);
            match oldest {
                Some(id) => self.sessions.remove(&id),
                None => break,
            };
        }
        self.sessions.insert(op_id, Session { last_active: op_id, ..Session::default() });
        OpResult::Registered { client_id: op_id }
    }

    fn execute(&mut self, op: Op) -> OpResult {
        match op {
            Op::SetMemberAddress { id, raft_addr, client_addr } => {
                self.removed_members.remove(&id);
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
            Op::Register | Op::SetMemberAddress { .. } | Op::ForgetMember { .. } => {
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

    /// The whole state, encoded (the body of a future snapshot).
    pub fn to_bytes(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_allocvec(self)
    }

    /// A state decoded from [`KvState::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use crate::kv::command::SessionRef;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn put(key: &str, value: &str) -> Op {
        Op::Put { key: b(key), value: b(value) }
    }

    fn with(client_id: u64, seq: u64, ack_below: u64, op: Op) -> Command {
        Command { session: Some(SessionRef { client_id, seq, ack_below }), op }
    }

    fn register(state: &mut KvState, index: u64) -> u64 {
        match state.apply(index, Command { session: None, op: Op::Register }) {
            Ok(OpResult::Registered { client_id }) => client_id,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn basic_operations() {
        let mut s = KvState::new();
        let get =
            |s: &mut KvState, k| s.apply(9, Command { session: None, op: Op::Get { key: b(k) } });
        assert_eq!(get(&mut s, "a"), Ok(OpResult::Value(None)));
        assert_eq!(s.apply(1, Command { session: None, op: put("a", "1") }), Ok(OpResult::Written));
        assert_eq!(get(&mut s, "a"), Ok(OpResult::Value(Some(b("1")))));
        let cas = |expected: Option<&str>, new: Option<&str>| Command {
            session: None,
            op: Op::Cas { key: b("a"), expected: expected.map(b), new: new.map(b) },
        };
        assert_eq!(s.apply(2, cas(Some("0"), Some("2"))), Ok(OpResult::Cas { swapped: false }));
        assert_eq!(s.apply(3, cas(Some("1"), Some("2"))), Ok(OpResult::Cas { swapped: true }));
        assert_eq!(s.get(b"a"), Some(b("2")));
        assert_eq!(s.apply(4, cas(Some("2"), None)), Ok(OpResult::Cas { swapped: true }));
        assert_eq!(s.apply(5, cas(None, Some("3"))), Ok(OpResult::Cas { swapped: true }));
        let del = Command { session: None, op: Op::Delete { key: b("a") } };
        assert_eq!(s.apply(6, del.clone()), Ok(OpResult::Deleted { existed: true }));
        assert_eq!(s.apply(7, del), Ok(OpResult::Deleted { existed: false }));
    }

    #[test]
    fn a_retried_write_applies_once() {
        let mut s = KvState::new();
        let id = register(&mut s, 1);
        let cas = Op::Cas { key: b("k"), expected: None, new: Some(b("x")) };
        assert_eq!(s.apply(2, with(id, 0, 0, cas.clone())), Ok(OpResult::Cas { swapped: true }));
        // The same request again (a retry): the first answer, not a failed swap.
        assert_eq!(s.apply(3, with(id, 0, 0, cas.clone())), Ok(OpResult::Cas { swapped: true }));
        // Out-of-order completion within a session: seq 2 before seq 1.
        assert_eq!(s.apply(4, with(id, 2, 0, put("k", "two"))), Ok(OpResult::Written));
        assert_eq!(s.apply(5, with(id, 1, 0, put("k", "one"))), Ok(OpResult::Written));
        assert_eq!(s.apply(6, with(id, 2, 0, put("k", "two"))), Ok(OpResult::Written));
        assert_eq!(s.get(b"k"), Some(b("one")));
        // Acknowledging forgets responses; a late duplicate is refused, not re-applied.
        assert_eq!(s.apply(7, with(id, 3, 3, put("k", "three"))), Ok(OpResult::Written));
        assert_eq!(s.sessions[&id].responses.len(), 1);
        assert_eq!(s.apply(8, with(id, 1, 0, put("k", "one"))), Err(KvError::Stale));
        assert_eq!(s.get(b"k"), Some(b("three")));
    }

    #[test]
    fn unknown_sessions_and_eviction() {
        let mut s = KvState::new();
        assert_eq!(s.apply(1, with(42, 0, 0, put("k", "v"))), Err(KvError::UnknownSession));
        let first = register(&mut s, 2);
        for index in 3..3 + MAX_SESSIONS as u64 {
            register(&mut s, index);
        }
        assert_eq!(s.sessions.len(), MAX_SESSIONS);
        assert!(!s.sessions.contains_key(&first), "the least recently active session is evicted");
    }

    #[test]
    fn pending_responses_are_bounded() {
        let mut s = KvState::new();
        let id = register(&mut s, 1);
        for seq in 0..MAX_PENDING_PER_SESSION as u64 {
            assert_eq!(s.apply(2 + seq, with(id, seq, 0, put("k", "v"))), Ok(OpResult::Written));
        }
        let over = with(id, MAX_PENDING_PER_SESSION as u64, 0, put("k", "v"));
        assert_eq!(s.apply(5000, over), Err(KvError::TooManyPending));
    }

    #[test]
    fn the_address_book_is_replicated_state() {
        let mut s = KvState::new();
        let (raft_addr, client_addr) =
            ("127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap());
        let set = Op::SetMemberAddress { id: 4, raft_addr, client_addr };
        assert_eq!(
            s.apply(1, Command { session: None, op: set.clone() }),
            Ok(OpResult::MembersUpdated)
        );
        assert_eq!(s.members[&4], MemberAddrs { raft: raft_addr, client: client_addr });
        let forget = Command { session: None, op: Op::ForgetMember { id: 4 } };
        assert_eq!(s.apply(2, forget), Ok(OpResult::MembersUpdated));
        assert!(s.members.is_empty() && s.removed_members.contains(&4));
        // Even with a session, an address-book change applies to the book, not the map.
        let id = register(&mut s, 3);
        assert_eq!(s.apply(4, with(id, 0, 0, set)), Ok(OpResult::MembersUpdated));
        assert!(s.removed_members.is_empty() && s.data.is_empty());
        assert_eq!(KvState::from_bytes(&s.to_bytes().unwrap()).unwrap(), s);
    }

    #[test]
    fn state_round_trips_through_bytes() {
        let mut s = KvState::new();
        let id = register(&mut s, 1);
        s.apply(2, with(id, 0, 0, put("k", "v"))).unwrap();
        assert_eq!(KvState::from_bytes(&s.to_bytes().unwrap()).unwrap(), s);
    }
}
