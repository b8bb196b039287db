//! The client protocol: one request and one response per bidirectional QUIC stream on the
//! node's client port, each a `u32` big-endian length followed by a `postcard` body.
//!
//! The ALPN names the protocol version ([`ALPN`]); a node and a client of different versions
//! fail the TLS handshake instead of misreading each other.

use std::net::SocketAddr;

use raft_core::{NodeId, Status};
use raft_quic::quinn::{RecvStream, SendStream};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::command::{Command, Response};

/// The ALPN protocol id of the client port.
pub const ALPN: &[u8] = b"raft-kv/2";

/// The largest request or response frame, in bytes: a batch of up to [`MAX_BATCH_BYTES`] of
/// requests, or one request with a value of [`MAX_VALUE_BYTES`](super::command::MAX_VALUE_BYTES),
/// fits with room to spare.
pub const MAX_FRAME_BYTES: usize = 2 << 20;
/// The most requests in one [`ClientRequest::Batch`].
pub const MAX_BATCH_LEN: usize = 1024;
/// Clients stop adding requests to a batch once it holds about this many bytes.
pub const MAX_BATCH_BYTES: usize = 256 << 10;

/// A request from a client to a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequest {
    /// Run a command through the log (the node must be the leader).
    Command(Command),
    /// This node's Raft status and the cluster's client addresses.
    Status,
    /// Test-only fault injection (refused unless the node runs with `--fault-injection`).
    Admin(AdminRequest),
    /// Several independent requests sent together (by a client process whose sessions issued
    /// them at the same moment), answered by a [`ClientResponse::Batch`] in the same order.
    /// Each is handled exactly as if sent alone; batches do not nest.
    Batch(Vec<ClientRequest>),
    /// Membership administration (served by the leader; other nodes redirect).
    Member(MemberRequest),
}

/// Membership administration. Every request is idempotent, so a client may retry one whose
/// outcome it did not learn (at the same or another node).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberRequest {
    /// The membership as the leader knows it: [`ClientResponse::Members`].
    List,
    /// Adds node `id`: records its addresses in the replicated address book and adds it as a
    /// learner; with `promote`, then waits until the leader sees it caught up (at most
    /// `catch_up_ms`) and makes it a voter (`Node::add_voter`).
    ///
    /// The `kv` client sends it twice: without `promote`, then, once the new node itself reports
    /// (on its client port) that it applied the leader's commit index, with `promote`. The
    /// leader's own check alone lets an unreachable learner be promoted while the commit index
    /// is below `Config::max_promotion_lag_entries` (a young cluster).
    Add {
        /// The new node's id.
        id: NodeId,
        /// Its Raft (peer) address.
        raft_addr: SocketAddr,
        /// Its client address.
        client_addr: SocketAddr,
        /// How long the learner may take to catch up before the node gives up (it then stays
        /// a learner; retrying resumes).
        catch_up_ms: u64,
        /// Whether to promote the learner (else the request ends once it is a learner).
        promote: bool,
    },
    /// Removes node `id` (voter or learner; the leader too: it steps down once the removal
    /// commits), then forgets its addresses.
    Remove {
        /// The node to remove.
        id: NodeId,
    },
    /// Hands leadership to voter `id`.
    TransferLeader {
        /// The new leader.
        id: NodeId,
    },
}

/// A member with its addresses (as far as the answering node knows them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// The node's id.
    pub id: NodeId,
    /// Whether it votes (otherwise it is a learner).
    pub voter: bool,
    /// Its Raft address, if known.
    pub raft_addr: Option<SocketAddr>,
    /// Its client address, if known.
    pub client_addr: Option<SocketAddr>,
}

/// The answer to [`MemberRequest::List`] and to a successful change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberList {
    /// The node that answered (the leader, unless the change removed it).
    pub answered_by: NodeId,
    /// The leader the answering node knows of.
    pub leader: Option<NodeId>,
    /// The answering node's commit index.
    pub commit_index: u64,
    /// Every voter and learner, in id order.
    pub members: Vec<MemberInfo>,
}

/// Why a membership request failed for good (retrying the same request will not help).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MemberError {
    /// The node to remove, promote or transfer to is not a member.
    #[error("node {0} is not a member")]
    NotMember(NodeId),
    /// The node to add is already a voter (with these addresses now).
    #[error("node {0} is already a member")]
    AlreadyMember(NodeId),
    /// Removing the last voter would leave a cluster that can never commit.
    #[error("node {0} is the last voter and cannot be removed")]
    LastVoter(NodeId),
    /// The leadership target is not a voter.
    #[error("node {0} is not a voter")]
    NotVoter(NodeId),
    /// The new node did not catch up in time; it stays a learner (retry `member add`, or
    /// `member remove` it).
    #[error("node {id} did not catch up within {waited_ms} ms; it stays a learner (is it running and reachable at its Raft address?)")]
    CatchUpTimeout {
        /// The node.
        id: NodeId,
        /// How long the leader waited.
        waited_ms: u64,
    },
    /// The leadership transfer did not complete in time.
    #[error("leadership did not move to node {target} in time (leader now: {})", leader.map_or("unknown".to_owned(), |l| l.to_string()))]
    TransferTimedOut {
        /// The target.
        target: NodeId,
        /// The leader the node knows of now.
        leader: Option<NodeId>,
    },
    /// The id is reserved or otherwise unusable.
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl ClientRequest {
    /// Roughly how many bytes the request takes on the wire (for batch limits).
    pub fn approximate_size(&self) -> usize {
        use super::command::Op;
        let payload = match self {
            ClientRequest::Command(c) => match &c.op {
                Op::Register | Op::SetMemberAddress { .. } | Op::ForgetMember { .. } => 32,
                Op::Get { key } | Op::Delete { key } => key.len(),
                Op::Put { key, value } => key.len() + value.len(),
                Op::Cas { key, expected, new } => {
                    key.len()
                        + expected.as_ref().map_or(0, |v| v.len())
                        + new.as_ref().map_or(0, |v| v.len())
                }
            },
            ClientRequest::Batch(requests) => requests.iter().map(Self::approximate_size).sum(),
            ClientRequest::Status | ClientRequest::Admin(_) | ClientRequest::Member(_) => 0,
        };
        payload + 48
    }
}

/// Fault injection for tests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminRequest {
    /// Drop all Raft traffic to and from these peers (replaces the previous set; empty heals).
    Partition {
        /// The peers to cut off.
        blocked: Vec<NodeId>,
    },
}

/// Where a client can reach a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The node's id.
    pub id: NodeId,
    /// Its client address.
    pub client_addr: SocketAddr,
}

/// A node's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientResponse {
    /// The command was applied (committed); the state machine's answer.
    Applied(Response),
    /// This node is not the leader; retry at the leader if one is known.
    NotLeader {
        /// The leader this node knows of.
        leader: Option<Member>,
    },
    /// The command was not applied and never will be (its entry was overwritten, or the node
    /// could not accept it): safe to retry.
    NotApplied(String),
    /// The outcome is unknown (leadership lost or node stopping before the entry committed):
    /// retry with the same session and sequence number, which deduplicates.
    Unknown(String),
    /// The node's status.
    Status {
        /// Its Raft status.
        status: Status,
        /// Every member's client address, this node included.
        members: Vec<Member>,
    },
    /// The request was refused (malformed, too large, admin disabled).
    Refused(String),
    /// Answer to an admin request.
    AdminDone,
    /// The answers to a [`ClientRequest::Batch`], in order.
    Batch(Vec<ClientResponse>),
    /// The membership (answer to every successful [`MemberRequest`]; after a transfer, as the
    /// old leader sees it).
    Members(MemberList),
    /// A membership request failed for good.
    MemberFailed(MemberError),
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The frame exceeds [`MAX_FRAME_BYTES`].
    #[error("frame exceeds the limit of {MAX_FRAME_BYTES} bytes")]
    TooLarge,
    /// The frame is shorter or longer than its header says.
    #[error("frame length mismatch: header says {announced}, stream held {actual}")]
    Length {
        /// The length in the header.
        announced: usize,
        /// The body bytes received.
        actual: usize,
    },
    /// The body does not decode.
    #[error("frame does not decode: {0}")]
    Decode(String),
    /// The message does not encode.
    #[error("message does not encode: {0}")]
    Encode(String),
    /// The QUIC stream failed.
    #[error("stream: {0}")]
    Stream(String),
}

/// Encodes `message` as a frame.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    let buf = postcard::to_extend(message, vec![0u8; 4])
        .map_err(|e| FrameError::Encode(e.to_string()))?;
    let len = buf.len() - 4;
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge);
    }
    let mut buf = buf;
    buf[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(buf)
}

/// Decodes a frame received whole.
pub fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<T, FrameError> {
    let (header, body) = frame
        .split_at_checked(4)
        .ok_or(FrameError::Length { announced: 0, actual: frame.len() })?;
    let announced = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if announced != body.len() {
        return Err(FrameError::Length { announced, actual: body.len() });
    }
    postcard::from_bytes(body).map_err(|e| FrameError::Decode(e.to_string()))
}

/// Writes one frame and finishes the stream (one message per stream direction).
pub async fn write<T: Serialize>(send: &mut SendStream, message: &T) -> Result<(), FrameError> {
    let frame = encode(message)?;
    send.write_all(&frame).await.map_err(|e| FrameError::Stream(e.to_string()))?;
    send.finish().map_err(|e| FrameError::Stream(e.to_string()))
}

/// Reads the one frame of a stream direction. Memory grows only as bytes arrive, up to
/// [`MAX_FRAME_BYTES`].
pub async fn read<T: DeserializeOwned>(recv: &mut RecvStream) -> Result<T, FrameError> {
    let frame = recv.read_to_end(MAX_FRAME_BYTES + 4).await.map_err(|e| match e {
        raft_quic::quinn::ReadToEndError::TooLong => FrameError::TooLarge,
        other => FrameError::Stream(other.to_string()),
    })?;
    decode(&frame)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn frames_carry_their_length() {
        let frame = encode(&ClientRequest::Status).unwrap();
        assert_eq!(decode::<ClientRequest>(&frame).unwrap(), ClientRequest::Status);
        assert!(matches!(
            decode::<ClientRequest>(&frame[..frame.len() - 1]),
            Err(FrameError::Length { .. })
        ));
        assert!(decode::<ClientRequest>(&[0, 0]).is_err());
    }
}
