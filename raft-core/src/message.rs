//! The RPCs of the Raft paper (Figure 2 and §9.6 PreVote), as plain data.
//!
//! Every request names its sender (`candidate_id`, `leader_id`, ...). A transport must check that
//! this claimed sender is the peer its connection authenticated; [`RpcRequest::sender`] gives it.
//! Every request also travels in an [`Envelope`] that names its receiver, its cluster and its
//! group: the receiving node refuses a request meant for another node, cluster or group
//! (`RpcError::WrongNode` / `WrongCluster` / `WrongGroup`) before its engine sees it, so a
//! transport that reaches the wrong node (a stale address) cannot make a leader count another
//! node's answer.
//!
//! **These types are the wire format, versioned by the transport.** A transport encodes them
//! (and the [`Entry`], [`LogId`], [`SnapshotMeta`] and `Membership` they carry) as they are;
//! with a compact, non-self-describing encoding such as postcard (raft-quic), adding, removing or
//! reordering a field or a variant makes the encoding incompatible. Every such change must come
//! with a new protocol version of each transport (raft-quic: its version and ALPN), so that nodes
//! of different versions refuse each other with a clear error instead of misreading messages.
//!
//! Receivers validate every message before acting on it (`engine/validate.rs`): terms and
//! indexes are bounded by [`MAX_TERM`](crate::MAX_TERM) and
//! [`MAX_LOG_INDEX`](crate::MAX_LOG_INDEX), and a malformed message is refused and counted.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::snapshot_meta::SnapshotMeta;
use crate::types::{ClusterId, Entry, GroupId, LogId, LogIndex, NodeId, Term};

/// RequestVote (and its PreVote form).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestVoteRequest {
    /// The candidate's term; for a pre-vote, the term it would campaign in.
    pub term: Term,
    /// The candidate asking for the vote.
    pub candidate_id: NodeId,
    /// Index and term of the candidate's last log entry (the election restriction, §5.4.1).
    pub last_log_id: LogId,
    /// True for a PreVote: the receiver answers as it would vote but changes no state.
    pub pre_vote: bool,
    /// True when the election was asked for by the leader (TimeoutNow): voters then grant it
    /// even though they heard from that leader recently (the CheckQuorum lease).
    pub leadership_transfer: bool,
}

/// The answer to [`RequestVoteRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestVoteResponse {
    /// The responder's current term (for a granted pre-vote, the request's term).
    pub term: Term,
    /// Whether the vote (or pre-vote) was granted.
    pub vote_granted: bool,
    /// Echo of the request's `pre_vote` flag.
    pub pre_vote: bool,
}

/// AppendEntries: replicates entries and serves as the leader's heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendEntriesRequest {
    /// The leader's term.
    pub term: Term,
    /// The leader, so followers can redirect clients.
    pub leader_id: NodeId,
    /// Index and term of the entry immediately preceding `entries`.
    pub prev_log_id: LogId,
    /// Entries to store, in order, starting at `prev_log_id.index + 1`. Empty for a heartbeat.
    pub entries: Vec<Entry>,
    /// The leader's commit index.
    pub leader_commit: LogIndex,
    /// The leader's ReadIndex round when it sent this request. Followers ignore it; the leader
    /// counts an answer as confirming its leadership for every read registered in this round or
    /// before (so many reads share one heartbeat round).
    pub read_round: u64,
    /// The quiesce mark (`Config::quiesce_idle`): the leader has nothing left to replicate,
    /// commit or confirm, and this is its last heartbeat until something happens. A follower of
    /// this leader in this term whose log ends at `prev_log_id` and whose commit index is
    /// `leader_commit` then suspends its election timer until any other message arrives or its
    /// host wakes it (`Engine::wake`). It changes nothing else about how the request is handled.
    pub quiesce: bool,
}

/// Why a follower rejected an AppendEntries, so that the leader can skip a whole term per round
/// trip (fast backtracking, §5.3) instead of one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictHint {
    /// The term of the follower's entry at `prev_log_id.index`, or 0 if its log is shorter.
    pub conflict_term: Term,
    /// The first index the follower holds for `conflict_term` (0 if `conflict_term` is 0).
    pub first_index_of_term: LogIndex,
    /// The index of the follower's last log entry.
    pub last_log_index: LogIndex,
}

/// The answer to [`AppendEntriesRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendEntriesResponse {
    /// The responder's current term.
    pub term: Term,
    /// On success: the index up to which the follower's log now matches the leader's and is
    /// durable (`prev_log_id.index + entries.len()`). `None` when the request was rejected.
    pub match_index: Option<LogIndex>,
    /// On a log mismatch: where the follower's log diverges. `None` on success and on a
    /// rejection for a stale term.
    pub conflict: Option<ConflictHint>,
    /// How long, in milliseconds after it received the request, the responder refuses to vote
    /// for another candidate (the CheckQuorum lease it keeps, also across a restart): what the
    /// leader's lease reads may rely on. 0 when it promises nothing: it runs without
    /// `check_quorum` or without `lease_reads`, or the request was rejected for its term or
    /// refused (an answer with neither `match_index` nor `conflict` acknowledges nothing).
    pub lease_promise_ms: u64,
    /// The responder is quiesced after handling the request (`Config::quiesce_idle`: it
    /// accepted its leader's quiesce mark, its election timer stands still until something
    /// wakes it). A quiesced leader stays quiet only on answers that say so: an answer from a
    /// follower that did not quiesce (restarted and following nobody yet, running without the
    /// flag, ignoring marks after a wake) wakes it, and it heartbeats until the follower
    /// confirms. `false` on an answer without `match_index`.
    pub quiesced: bool,
}

/// TimeoutNow: asks the target to start an election at once (leadership transfer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeoutNowRequest {
    /// The leader's term.
    pub term: Term,
    /// The leader handing over leadership.
    pub leader_id: NodeId,
}

/// The answer to [`TimeoutNowRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeoutNowResponse {
    /// The responder's current term.
    pub term: Term,
}

/// InstallSnapshot: one chunk of the leader's latest snapshot, for a follower whose next entry
/// was compacted away (Raft paper §7, Figure 13).
///
/// Chunks are sent in order of `offset` and are at most `Config::snapshot_chunk_bytes` long. A
/// follower writes chunks that continue what it holds of the same snapshot (`meta`), answers
/// every chunk with how much it holds (`next_offset`), and installs the snapshot after the last
/// chunk (`done`). A lost or out-of-order chunk only makes the leader resume at the follower's
/// `next_offset` (or at 0).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallSnapshotRequest {
    /// The leader's term.
    pub term: Term,
    /// The leader.
    pub leader_id: NodeId,
    /// The snapshot the chunk belongs to.
    pub meta: SnapshotMeta,
    /// Where the chunk starts in the snapshot's data.
    pub offset: u64,
    /// The chunk. The engine emits the request with `data` empty; the node fills in the
    /// [`chunk_len`](crate::snapshot::chunk_len) bytes at `offset` read from its snapshot store
    /// before sending.
    pub data: Bytes,
    /// True if this is the last chunk (`offset + data.len() == meta.size`).
    pub done: bool,
}

/// The answer to [`InstallSnapshotRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallSnapshotResponse {
    /// The responder's current term.
    pub term: Term,
    /// How many bytes of `meta`'s data the follower holds, from offset 0, durably: the next
    /// chunk it expects starts there (0 asks the leader to start over). Equal to the chunk's own
    /// `offset`: the follower cannot take that chunk yet (it still restores an earlier
    /// snapshot), and the leader offers it again a heartbeat interval later.
    pub next_offset: u64,
    /// True when the follower's state now covers `meta.last_included`: the snapshot is durably
    /// installed, or the follower's log already held its last entry or a later commit point.
    /// The leader then resumes AppendEntries after `meta.last_included`.
    pub complete: bool,
    /// Set when the follower refused the chunk outright, rather than only asking the leader to
    /// resume at `next_offset`: the transfer failed, and the leader backs off before the next.
    pub refusal: Option<SnapshotRefusal>,
}

/// Why a follower refused an InstallSnapshot chunk (see [`InstallSnapshotResponse::refusal`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum SnapshotRefusal {
    /// The follower keeps no snapshots (it runs without a snapshot store): no transfer to it can
    /// succeed until it restarts with one.
    Unsupported,
    /// The data received did not match `meta.checksum`: the leader's stored snapshot, or the
    /// transfer, is corrupt.
    ChecksumMismatch,
    /// The request was malformed (inconsistent offsets, sizes, terms or indexes) and ignored.
    Malformed,
}

/// ReadIndex: a follower asks the leader for an index that makes a read linearizable (Raft
/// thesis §6.4). The leader answers once a quorum confirmed it is still the leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadIndexRequest {
    /// The follower's current term.
    pub term: Term,
    /// The follower asking.
    pub sender: NodeId,
    /// The follower's id for this read (echoed back through its `SentRequest`).
    pub read_id: u64,
}

/// The answer to [`ReadIndexRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadIndexResponse {
    /// The responder's current term.
    pub term: Term,
    /// The read index: every write acknowledged before the request was sent is at or below it.
    /// `None` if the responder is not the leader or lost leadership before confirming it.
    pub read_index: Option<LogIndex>,
    /// The leader the responder knows of, when it is not the leader itself.
    pub leader_id: Option<NodeId>,
}

/// A request one node sends another.
///
/// New variants may be added; transports must treat the enum as open and encode it as a whole.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RpcRequest {
    /// RequestVote or PreVote.
    RequestVote(RequestVoteRequest),
    /// AppendEntries (replication and heartbeat).
    AppendEntries(AppendEntriesRequest),
    /// TimeoutNow (leadership transfer).
    TimeoutNow(TimeoutNowRequest),
    /// InstallSnapshot (one chunk of a snapshot).
    InstallSnapshot(InstallSnapshotRequest),
    /// ReadIndex (a follower's linearizable read).
    ReadIndex(ReadIndexRequest),
}

/// The response to an [`RpcRequest`], variant for variant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RpcResponse {
    /// Answer to RequestVote.
    RequestVote(RequestVoteResponse),
    /// Answer to AppendEntries.
    AppendEntries(AppendEntriesResponse),
    /// Answer to TimeoutNow.
    TimeoutNow(TimeoutNowResponse),
    /// Answer to InstallSnapshot.
    InstallSnapshot(InstallSnapshotResponse),
    /// Answer to ReadIndex.
    ReadIndex(ReadIndexResponse),
}

/// A request with its address: what a transport carries from one node to another.
///
/// The sending node fills it in from its own configuration (`Config::cluster_id`,
/// `Config::group_id`) and the target's id. The receiving node answers it only if all three
/// are its own; otherwise `Node::handle_rpc` returns `RpcError::WrongNode`, `WrongCluster` or
/// `WrongGroup` at once, without the engine seeing the request. A transport delivers the
/// envelope whole (it may route by `receiver` or by an address it was given for it, and must
/// never rewrite the fields).
///
/// Build one with [`Envelope::new`] and the `with_*` methods, which name each id (the three
/// are plain `u64`s, so positional arguments could be swapped unnoticed). The struct is
/// `#[non_exhaustive]`: it will grow (multi-raft routing, tracing), and only raft-core builds
/// it by its fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Envelope {
    /// The cluster of the sender. Nodes of one cluster share it.
    pub cluster_id: ClusterId,
    /// The Raft group the request belongs to (multi-raft; [`DEFAULT_GROUP_ID`] for a node that
    /// runs one group).
    ///
    /// [`DEFAULT_GROUP_ID`]: crate::types::DEFAULT_GROUP_ID
    pub group_id: GroupId,
    /// The node the sender means to reach.
    pub receiver: NodeId,
    /// The request itself (which names its sender).
    pub request: RpcRequest,
}

impl Envelope {
    /// `request` for node `receiver`, in the default cluster and group
    /// ([`DEFAULT_CLUSTER_ID`](crate::types::DEFAULT_CLUSTER_ID),
    /// [`DEFAULT_GROUP_ID`](crate::types::DEFAULT_GROUP_ID)); set them with
    /// [`with_cluster_id`](Self::with_cluster_id) and [`with_group_id`](Self::with_group_id).
    pub fn new(receiver: NodeId, request: RpcRequest) -> Self {
        Self {
            cluster_id: crate::types::DEFAULT_CLUSTER_ID,
            group_id: crate::types::DEFAULT_GROUP_ID,
            receiver,
            request,
        }
    }

    /// The same envelope, from a node of cluster `cluster_id`.
    #[must_use]
    pub fn with_cluster_id(mut self, cluster_id: ClusterId) -> Self {
        self.cluster_id = cluster_id;
        self
    }

    /// The same envelope, for Raft group `group_id`.
    #[must_use]
    pub fn with_group_id(mut self, group_id: GroupId) -> Self {
        self.group_id = group_id;
        self
    }
}

impl RpcRequest {
    /// The node that claims to have sent this request. Transports verify it against the
    /// authenticated identity of the connection.
    pub fn sender(&self) -> NodeId {
        match self {
            RpcRequest::RequestVote(r) => r.candidate_id,
            RpcRequest::AppendEntries(r) => r.leader_id,
            RpcRequest::TimeoutNow(r) => r.leader_id,
            RpcRequest::InstallSnapshot(r) => r.leader_id,
            RpcRequest::ReadIndex(r) => r.sender,
        }
    }

    /// The term the request was sent in.
    pub fn term(&self) -> Term {
        match self {
            RpcRequest::RequestVote(r) => r.term,
            RpcRequest::AppendEntries(r) => r.term,
            RpcRequest::TimeoutNow(r) => r.term,
            RpcRequest::InstallSnapshot(r) => r.term,
            RpcRequest::ReadIndex(r) => r.term,
        }
    }

    /// A short name for logs and metrics ("RequestVote", "PreVote", "AppendEntries", ...).
    pub fn kind(&self) -> &'static str {
        match self {
            RpcRequest::RequestVote(r) if r.pre_vote => "PreVote",
            RpcRequest::RequestVote(_) => "RequestVote",
            RpcRequest::AppendEntries(_) => "AppendEntries",
            RpcRequest::TimeoutNow(_) => "TimeoutNow",
            RpcRequest::InstallSnapshot(_) => "InstallSnapshot",
            RpcRequest::ReadIndex(_) => "ReadIndex",
        }
    }
}

impl RpcResponse {
    /// The responder's term.
    pub fn term(&self) -> Term {
        match self {
            RpcResponse::RequestVote(r) => r.term,
            RpcResponse::AppendEntries(r) => r.term,
            RpcResponse::TimeoutNow(r) => r.term,
            RpcResponse::InstallSnapshot(r) => r.term,
            RpcResponse::ReadIndex(r) => r.term,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_snapshot_names_its_sender_and_term() {
        let request = RpcRequest::InstallSnapshot(InstallSnapshotRequest {
            term: 7,
            leader_id: 3,
            meta: SnapshotMeta {
                last_included: LogId::new(6, 100),
                membership: crate::Membership::with_voters([1, 2, 3]),
                size: 10,
                checksum: 0,
            },
            offset: 0,
            data: Bytes::from_static(b"0123456789"),
            done: true,
        });
        assert_eq!((request.sender(), request.term(), request.kind()), (3, 7, "InstallSnapshot"));
        let response = RpcResponse::InstallSnapshot(InstallSnapshotResponse {
            term: 8,
            next_offset: 10,
            complete: true,
            refusal: None,
        });
        assert_eq!(response.term(), 8);
    }
}
