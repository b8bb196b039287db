//! Exactly-once client sessions and leader discovery (Raft thesis §6.3), for services built on
//! a [`Node`](crate::Node).
//!
//! A write whose outcome is unknown (`CommitError::LeadershipLost`, a timeout, a lost
//! answer) can only be retried safely if the state machine recognizes the retry. The pieces
//! here do that, generic over the service's commands and answers:
//!
//! * **Server side, inside the state machine:** a [`SessionTable`] that the user's state
//!   machine embeds (and snapshots with its own state). A client first *registers* a session
//!   under a random [`SessionId`]; each write then names its session and a sequence number
//!   ([`SessionRef`]), and [`SessionTable::apply`] runs the write at most once, answering a
//!   retry from the kept answer. The table is deterministic (no clock, no randomness: "time"
//!   is the index of the entry being applied), so every replica decides alike. Sessions are
//!   bound to an owner (the authenticated client), bounded per owner and in all
//!   ([`SessionLimits`]), and evicted least-recently-used in `O(log n)`.
//! * **Client side:** a [`ClientSession`] numbers requests and acknowledges answered ones (so
//!   the table forgets their answers), and [`LeaderTracker`] with [`call`] sends an attempt to
//!   the node believed to lead, follows `NotLeader { leader_id, leader_info }` redirects,
//!   rotates through the members on failures with bounded back-off, and gives up after a
//!   bounded number of attempts. [`Attempt::from_write`] classifies the node's own
//!   [`WriteError`](crate::WriteError) for a client that calls `Node::write` in-process.
//!
//! The session id must be unguessable (128 bits from the operating system's random source):
//! the table refuses another owner's use of a session anyway, but an owner's own retries are
//! recognized only by id.

mod client;
mod table;

pub use client::{call, Attempt, CallError, ClientSession, LeaderTracker, RetryPolicy};
pub use table::{Session, SessionLimits, SessionTable};

use serde::{Deserialize, Serialize};

/// A client session's id: 128 random bits drawn by the client when it registers the session.
pub type SessionId = u128;

/// A session's identity and a request's place in it, carried by every write so that a retried
/// write is applied at most once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionRef {
    /// The session id (chosen by the client when it registered).
    pub id: SessionId,
    /// The session's incarnation, as [`SessionTable::register`] returned it: a session evicted
    /// and re-created under the same id (by a late duplicate registration) is another
    /// incarnation, and refuses this one's requests.
    pub incarnation: u64,
    /// The request's sequence number within the session (unique and increasing per new
    /// request; a retry reuses it).
    pub seq: u64,
    /// Every request of this session below this sequence number has been answered to the
    /// client: the table may forget their answers. At most `seq`.
    pub ack_below: u64,
}

/// Why the session table refused a request. Deterministic: every replica refuses alike, and a
/// refused request was not applied by this entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The session is unknown to this owner: never registered, opened by another owner, another
    /// incarnation, or evicted. An earlier attempt of the request may have been applied: the
    /// client must open a new session and treat the outcome as unknown.
    #[error("unknown or expired client session")]
    Unknown,
    /// Another owner already holds a session with this id (a fresh random id succeeds).
    #[error("the session id is taken")]
    Taken,
    /// The request acknowledges itself or later requests (`ack_below > seq`).
    #[error("invalid acknowledgement (ack_below above the sequence number)")]
    BadAck,
    /// The sequence number was already acknowledged by the client (a late duplicate): not
    /// applied again, and its answer is forgotten.
    #[error("stale request (sequence number already acknowledged)")]
    Stale,
    /// The session (or its owner) keeps too many unacknowledged answers: acknowledge some.
    #[error("too many unacknowledged requests in the session")]
    TooManyPending,
}
