//! The commands of the key-value state machine (what goes into the Raft log) and its answers.
//!
//! A log entry ([`KvEntry`]) holds the authenticated client that sent it and a list of commands
//! (the commands a client batch brought together, applied one after the other), and is answered
//! with the list of their responses. Both are encoded with `postcard`, the entry after a format
//! byte ([`ENTRY_FORMAT`]). An entry that does not decode is answered with a single
//! [`KvError::Malformed`] on every node alike (the state machine never fails on user data).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::bounded::Bounded;

/// The largest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 4 << 10;
/// The largest value accepted, in bytes.
pub const MAX_VALUE_BYTES: usize = 512 << 10;

/// A client session's id and a write's place in it: raft-core's session types (the
/// registration command carries the id; every write in a session carries a [`SessionRef`]).
pub use raft_core::session::{SessionId, SessionRef};

/// One operation on the map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Opens client session `id` for the client that sends it; answered with
    /// [`OpResult::Registered`]. Idempotent for that client (a retry answers the same).
    Register {
        /// The new session's id: 128 random bits drawn by the client.
        id: SessionId,
    },
    /// Reads a key.
    Get {
        /// The key.
        key: Bytes,
    },
    /// Sets a key.
    Put {
        /// The key.
        key: Bytes,
        /// The new value.
        value: Bytes,
    },
    /// Removes a key.
    Delete {
        /// The key.
        key: Bytes,
    },
    /// Sets `key` to `new` (or removes it if `new` is `None`) only if its current value is
    /// `expected` (`None`: the key is absent).
    Cas {
        /// The key.
        key: Bytes,
        /// The value the key must have for the swap to happen.
        expected: Option<Bytes>,
        /// The value to install.
        new: Option<Bytes>,
    },
    /// Records node `id` as removed from this group for good (its tombstone), although no
    /// membership entry of the group ever held it: proposed by a node of a sharded service
    /// whose `member remove` names a node that this group never had (a `member add` that
    /// reached other groups only). Refused ([`KvError::NodeOnly`]) in an entry a client sent,
    /// and ([`KvError::Member`]) while `id` is a member of the group.
    Tombstone {
        /// The node removed.
        id: raft_core::NodeId,
    },
}

impl Op {
    /// Whether the operation only reads (reads need no deduplication: repeating one is
    /// harmless).
    pub fn is_read(&self) -> bool {
        matches!(self, Op::Get { .. })
    }

    /// The key the operation touches (`None` for a session registration or a tombstone, which
    /// touch no key of the map).
    pub fn key(&self) -> Option<&Bytes> {
        match self {
            Op::Register { .. } | Op::Tombstone { .. } => None,
            Op::Get { key } | Op::Put { key, .. } | Op::Delete { key } | Op::Cas { key, .. } => {
                Some(key)
            }
        }
    }

    /// Checks key and value sizes.
    pub fn validate(&self) -> Result<(), KvError> {
        let key_ok = |k: &Bytes| k.len() <= MAX_KEY_BYTES;
        let value_ok = |v: &Bytes| v.len() <= MAX_VALUE_BYTES;
        let ok = match self {
            Op::Register { .. } | Op::Tombstone { .. } => true,
            Op::Get { key } | Op::Delete { key } => key_ok(key),
            Op::Put { key, value } => key_ok(key) && value_ok(value),
            Op::Cas { key, expected, new } => {
                key_ok(key) && expected.iter().chain(new).all(value_ok)
            }
        };
        if ok {
            Ok(())
        } else {
            Err(KvError::TooLarge)
        }
    }
}

/// A command of the key-value service: an operation, with its session for writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// The session of a deduplicated write; `None` for reads, registrations and writes that
    /// accept at-least-once semantics.
    pub session: Option<SessionRef>,
    /// The operation.
    pub op: Op,
}

impl Command {
    /// Roughly how many bytes the command takes on the wire (for batch limits).
    pub fn approximate_size(&self) -> usize {
        let payload = match &self.op {
            Op::Register { .. } | Op::Tombstone { .. } => 32,
            Op::Get { key } | Op::Delete { key } => key.len(),
            Op::Put { key, value } => key.len() + value.len(),
            Op::Cas { key, expected, new } => {
                key.len()
                    + expected.as_ref().map_or(0, |v| v.len())
                    + new.as_ref().map_or(0, |v| v.len())
            }
        };
        payload + 48
    }
}

/// The successful outcome of an [`Op`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    /// A session was opened with this id.
    Registered {
        /// The new session's id.
        id: SessionId,
        /// Its incarnation (the operation id of the registration that created it), to name in
        /// every [`SessionRef`]. A retried registration answers the same as long as the
        /// session lives.
        incarnation: u64,
    },
    /// The value of the key read (`None`: absent).
    Value(Option<Bytes>),
    /// The put was applied.
    Written,
    /// The delete was applied; whether the key existed.
    Deleted {
        /// Whether the key was present.
        existed: bool,
    },
    /// The compare-and-swap was evaluated; whether it swapped.
    Cas {
        /// Whether the expected value matched and the new value was installed.
        swapped: bool,
    },
    /// Node `id` is recorded as removed from the group ([`Op::Tombstone`]).
    Tombstoned {
        /// The node removed.
        id: raft_core::NodeId,
    },
}

/// A deterministic refusal by the state machine (the same on every node).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum KvError {
    /// The session is unknown to the sending client: never registered, opened by another
    /// client, or evicted because too many sessions were open. The request was not applied by
    /// this entry; an earlier attempt may have been.
    #[error("unknown or expired client session")]
    UnknownSession,
    /// Another client already opened a session with this id (registering a fresh random id
    /// succeeds).
    #[error("the session id is taken")]
    SessionTaken,
    /// The request acknowledges itself or later requests (`ack_below > seq`); not applied.
    #[error("invalid acknowledgement (ack_below above the sequence number)")]
    BadAck,
    /// The request's sequence number was already acknowledged by the client (a late
    /// duplicate); it was not applied again.
    #[error("stale request (sequence number already acknowledged)")]
    Stale,
    /// The session holds too many unacknowledged responses; the request was not applied.
    #[error("too many unacknowledged requests in the session")]
    TooManyPending,
    /// A key or value exceeds its size limit.
    #[error("key or value too large")]
    TooLarge,
    /// The entry does not decode as a command.
    #[error("malformed command: {0}")]
    Malformed(String),
    /// The command may only be proposed by a node, not sent by a client ([`Op::Tombstone`]).
    #[error("only a node may propose this command")]
    NodeOnly,
    /// The node is a member of the group: it leaves through a membership change, not a
    /// tombstone ([`Op::Tombstone`]).
    #[error("node {0} is a member of the group")]
    Member(raft_core::NodeId),
}

impl From<raft_core::session::SessionError> for KvError {
    fn from(refused: raft_core::session::SessionError) -> Self {
        use raft_core::session::SessionError;
        match refused {
            SessionError::Taken => KvError::SessionTaken,
            SessionError::BadAck => KvError::BadAck,
            SessionError::Stale => KvError::Stale,
            SessionError::TooManyPending => KvError::TooManyPending,
            // `Unknown`, and any refusal a later raft-core adds: the session cannot serve.
            _ => KvError::UnknownSession,
        }
    }
}

/// The state machine's answer to one command.
pub type Response = Result<OpResult, KvError>;

/// The most commands in one log entry.
pub const MAX_COMMANDS_PER_ENTRY: usize = 1024;

/// The format byte that starts every log entry of this version of the service; an entry with
/// another one is answered [`KvError::Malformed`] (the same on every node). Version 4 added
/// session incarnations to [`SessionRef`].
pub const ENTRY_FORMAT: u8 = 4;

/// The commands of one log entry, with the authenticated client that sent them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntry {
    /// The client (its certificate name, e.g. `client-alice.kv`) whose connection brought the
    /// commands; `None` for commands a node proposes itself (none does today; entries of
    /// earlier versions held the address book's). Sessions belong to their owner: no other
    /// client can use them.
    pub owner: Option<String>,
    /// The commands, applied in order.
    pub commands: Bounded<Command, MAX_COMMANDS_PER_ENTRY>,
}

/// Encodes one log entry: `owner`'s `commands` (at most [`MAX_COMMANDS_PER_ENTRY`]).
pub fn encode_entry(owner: Option<&str>, commands: Vec<Command>) -> Result<Bytes, KvError> {
    let commands = Bounded::new(commands).map_err(|e| KvError::Malformed(e.to_string()))?;
    let entry = KvEntry { owner: owner.map(str::to_owned), commands };
    postcard::to_extend(&entry, vec![ENTRY_FORMAT])
        .map(Bytes::from)
        .map_err(|e| KvError::Malformed(e.to_string()))
}

/// Decodes one log entry (the command count is checked before any command is decoded).
pub fn decode_entry(bytes: &[u8]) -> Result<KvEntry, KvError> {
    match bytes.split_first() {
        Some((&ENTRY_FORMAT, body)) => {
            postcard::from_bytes(body).map_err(|e| KvError::Malformed(e.to_string()))
        }
        Some((format, _)) => Err(KvError::Malformed(format!("unknown entry format {format}"))),
        None => Err(KvError::Malformed("empty entry".into())),
    }
}

/// Encodes the answers to one entry.
pub fn encode_responses(responses: &[Response]) -> Bytes {
    // Encoding these plain enums into a Vec cannot fail; an empty answer decodes as malformed.
    postcard::to_allocvec(responses).map(Bytes::from).unwrap_or_default()
}

/// Decodes the answers to an entry of `count` commands: exactly `count` responses (all
/// [`KvError::Malformed`] if the answer does not match).
pub fn decode_responses(bytes: &[u8], count: usize) -> Vec<Response> {
    match postcard::from_bytes::<Vec<Response>>(bytes) {
        Ok(responses) if responses.len() == count => responses,
        Ok(responses) => match responses.into_iter().next() {
            Some(Err(e)) => vec![Err(e); count],
            _ => vec![Err(KvError::Malformed("answer count mismatch".into())); count],
        },
        Err(e) => vec![Err(KvError::Malformed(e.to_string())); count],
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn entries_round_trip() {
        let commands = vec![
            Command { session: None, op: Op::Register { id: u128::MAX } },
            Command { session: None, op: Op::Get { key: Bytes::from_static(b"k") } },
            Command {
                session: Some(SessionRef { id: 7, incarnation: 1, seq: 3, ack_below: 2 }),
                op: Op::Cas {
                    key: Bytes::from_static(b"k"),
                    expected: None,
                    new: Some(Bytes::from_static(b"v")),
                },
            },
        ];
        let entry = decode_entry(&encode_entry(Some("client-a.kv"), commands.clone()).unwrap());
        let entry = entry.unwrap();
        assert_eq!(
            (entry.owner.as_deref(), entry.commands.to_vec()),
            (Some("client-a.kv"), commands)
        );
        assert!(matches!(decode_entry(b"\x04\xff\xff\xff"), Err(KvError::Malformed(_))));
        assert!(matches!(decode_entry(b"\x02\x00\x00"), Err(KvError::Malformed(_))));
        assert!(matches!(decode_entry(b""), Err(KvError::Malformed(_))));
        let too_many = vec![Command { session: None, op: Op::Get { key: Bytes::new() } }; 1025];
        assert!(matches!(encode_entry(None, too_many), Err(KvError::Malformed(_))));
        let responses = vec![Ok(OpResult::Written), Err(KvError::Stale), Ok(OpResult::Value(None))];
        assert_eq!(decode_responses(&encode_responses(&responses), 3), responses);
        let garbage = decode_responses(b"", 2);
        assert_eq!(garbage.len(), 2);
        assert!(garbage.iter().all(|r| matches!(r, Err(KvError::Malformed(_)))));
        let one_error = encode_responses(&[Err(KvError::Malformed("x".into()))]);
        assert_eq!(decode_responses(&one_error, 2), vec![Err(KvError::Malformed("x".into())); 2]);
    }

    #[test]
    fn sizes_are_checked() {
        let big = Bytes::from(vec![0; MAX_VALUE_BYTES + 1]);
        let put = Op::Put { key: Bytes::from_static(b"k"), value: big };
        assert_eq!(put.validate(), Err(KvError::TooLarge));
        assert_eq!(Op::Register { id: 1 }.validate(), Ok(()));
    }
}
