//! The client protocol: one request and one response per bidirectional QUIC stream on the
//! node's client port, each a `u32` big-endian length followed by a `postcard` body.
//!
//! The ALPN names the protocol version ([`ALPN`]); a node and a client of different versions
//! fail the TLS handshake instead of misreading each other.
//!
//! Decoding is bounded before it allocates: a frame is at most [`MAX_FRAME_BYTES`], no type is
//! recursive (a [`ClientRequest::Batch`] holds only commands, a [`ClientResponse::Batch`] only
//! their answers, so nothing nests), and a batch's length is checked against
//! [`MAX_BATCH_LEN`] before its first item is decoded ([`Bounded`]).

use std::net::SocketAddr;

use raft_core::{GroupId, NodeId, Status};
use raft_quic::quinn::{RecvStream, SendStream};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::bounded::Bounded;
use super::command::{Command, Response};
use super::health::HealthReport;

/// The ALPN protocol id of the client port. Version 3: batches hold commands only, sessions
/// have 128-bit ids chosen by the client, requests are authorized by certificate role. Version
/// 4: `MemberRequest::Set` (joint consensus); the address book's results and errors are gone.
/// Version 5: requests in a session name its incarnation; `CommandAnswer::TooLarge`. Version 6:
/// sharded services (`ClientRequest::InGroup`, `ClientRequest::Groups`,
/// `ClientResponse::Sharded`, `ClientResponse::Groups`) and `Status::quiesced` in
/// `ClientResponse::Status`. Version 7: a sharded service's membership changes
/// (`ClientRequest::MemberInGroup`) and batches (`ClientRequest::GroupBatch`).
pub const ALPN: &[u8] = b"raft-kv/7";

/// The most voters or new members a [`MemberRequest::Set`] names (checked before decoding).
pub const MAX_SET_MEMBERS: usize = 256;
/// The most members a [`MemberList`] or a [`ClientResponse::Status`] lists (checked before
/// decoding, so that a node cannot make a client decode a 2 MiB list into 40 MB); a node lists
/// the first ones (in id order) of a larger membership.
pub const MAX_LISTED_MEMBERS: usize = 4096;

/// The largest request or response frame, in bytes: a batch of up to [`MAX_BATCH_BYTES`] of
/// requests, or one request with a value of [`MAX_VALUE_BYTES`](super::command::MAX_VALUE_BYTES),
/// fits with room to spare.
pub const MAX_FRAME_BYTES: usize = 2 << 20;
/// The most commands in one [`ClientRequest::Batch`] (checked before any is decoded).
pub const MAX_BATCH_LEN: usize = 1024;
/// The fewest bytes a [`Command`] encodes to (no session, an operation tag, one field), so a
/// request of `len` bytes holds at most `len / MIN_COMMAND_BYTES` commands.
pub const MIN_COMMAND_BYTES: usize = 3;
/// The most peers one [`AdminRequest::Partition`] names (checked before any is decoded).
pub const MAX_BLOCKED_PEERS: usize = 1024;

/// The commands of a [`ClientRequest::Batch`].
pub type CommandBatch = Bounded<Command, MAX_BATCH_LEN>;
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
    /// Several independent commands sent together (by a client process whose sessions issued
    /// them at the same moment), answered by a [`ClientResponse::Batch`] in the same order.
    /// Each is handled exactly as if sent alone.
    Batch(CommandBatch),
    /// Membership administration (served by the leader; other nodes redirect).
    Member(MemberRequest),
    /// This node's health ([`ClientResponse::Health`]); any client may ask.
    Health,
    /// A command for the Raft group `group` of a sharded service (`kv-node --groups N`): the
    /// client hashed the command's key to the group ([`super::shard::group_of`]) and sends it to
    /// the node it believes leads that group. Answered as a [`ClientRequest::Command`] of that
    /// group; a group the node does not have is answered [`ClientResponse::Sharded`].
    InGroup {
        /// The group the command's key maps to.
        group: GroupId,
        /// The command.
        command: Command,
    },
    /// The status of every group this node hosts ([`ClientResponse::Groups`]).
    Groups,
    /// A membership request for the Raft group `group` of a sharded service (each group has its
    /// own membership; a client changes every group, one request per group, each at that
    /// group's leader). Answered as a [`ClientRequest::Member`] of that group; a group the node
    /// does not have is answered [`ClientResponse::Sharded`].
    MemberInGroup {
        /// The group.
        group: GroupId,
        /// The request.
        request: MemberRequest,
    },
    /// Several independent commands of the Raft group `group` of a sharded service, sent
    /// together (a client's batch split per group), answered by a [`ClientResponse::Batch`]
    /// in the same order, each handled as if sent alone in an [`ClientRequest::InGroup`]. A
    /// group the node does not have is answered [`ClientResponse::Sharded`].
    GroupBatch {
        /// The group every command's key maps to.
        group: GroupId,
        /// The commands.
        commands: CommandBatch,
    },
}

/// Membership administration. Every request is idempotent, so a client may retry one whose
/// outcome it did not learn (at the same or another node).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberRequest {
    /// The membership as the leader knows it: [`ClientResponse::Members`].
    List,
    /// Adds node `id` as a learner, its addresses in the Raft membership (every node's
    /// transport learns them from there); with `promote`, then waits until the leader sees it
    /// caught up (at most `catch_up_ms`) and makes it a voter (`Node::add_voter`).
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
    /// commits). Its id is refused from then on, and never used again.
    Remove {
        /// The node to remove.
        id: NodeId,
    },
    /// Hands leadership to voter `id`.
    TransferLeader {
        /// The new leader.
        id: NodeId,
    },
    /// Makes exactly `voters` the voters in one change (joint consensus, `Node::set_membership`):
    /// nodes of `new_members` that are not members join as learners with their addresses, and
    /// become voters once caught up (at most `catch_up_ms`, else they stay learners); voters not
    /// named are removed (their ids are never used again); learners not named stay learners.
    /// Members whose addresses the membership does not hold yet (founders) get them from the
    /// answering node's configuration.
    Set {
        /// The voters after the change.
        voters: Bounded<NodeId, MAX_SET_MEMBERS>,
        /// The addresses of voters that are not members yet.
        new_members: Bounded<NewMember, MAX_SET_MEMBERS>,
        /// How long new voters may take to catch up.
        catch_up_ms: u64,
    },
}

/// A node that a [`MemberRequest::Set`] adds, with its addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewMember {
    /// The node's id.
    pub id: NodeId,
    /// Its Raft (peer) address.
    pub raft_addr: SocketAddr,
    /// Its client address.
    pub client_addr: SocketAddr,
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
    /// Every voter and learner, in id order (the first [`MAX_LISTED_MEMBERS`]).
    pub members: Bounded<MemberInfo, MAX_LISTED_MEMBERS>,
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
    /// The node was removed from the cluster; its id is never used again.
    #[error("node {0} was removed from the cluster; its id cannot be reused")]
    Removed(NodeId),
    /// The id is reserved or otherwise unusable.
    #[error("invalid request: {0}")]
    Invalid(String),
}

/// Fault injection for tests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminRequest {
    /// Drop all Raft traffic to and from these peers (replaces the previous set; empty heals).
    Partition {
        /// The peers to cut off.
        blocked: Bounded<NodeId, MAX_BLOCKED_PEERS>,
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
        /// Every member's client address, this node included (the first
        /// [`MAX_LISTED_MEMBERS`]).
        members: Bounded<Member, MAX_LISTED_MEMBERS>,
    },
    /// The request was refused (malformed, too large, admin disabled).
    Refused(String),
    /// Answer to an admin request.
    AdminDone,
    /// The answers to a [`ClientRequest::Batch`], in order.
    Batch(Bounded<CommandAnswer, MAX_BATCH_LEN>),
    /// The membership (answer to every successful [`MemberRequest`]; after a transfer, as the
    /// old leader sees it).
    Members(MemberList),
    /// A membership request failed for good.
    MemberFailed(MemberError),
    /// The client's certificate does not allow the request (administration needs an
    /// `admin-<name>.kv` certificate).
    Forbidden(String),
    /// The node's health (answer to [`ClientRequest::Health`]).
    Health(HealthReport),
    /// The node serves `groups` Raft groups and the request did not name a valid one (a
    /// [`ClientRequest::Command`], [`ClientRequest::Batch`] or membership change to a sharded
    /// service, or a request for a group beyond its groups): nothing was applied; send the
    /// command again in the group its key maps to ([`super::shard::group_of`]), the
    /// membership change in every group.
    Sharded {
        /// How many groups the service has.
        groups: u32,
    },
    /// The status of every group of the node (answer to [`ClientRequest::Groups`]), in group
    /// order (the first [`MAX_LISTED_GROUPS`]).
    Groups(Bounded<GroupStatus, MAX_LISTED_GROUPS>),
}

/// The most groups a [`ClientResponse::Groups`] lists (checked before decoding).
pub const MAX_LISTED_GROUPS: usize = 1024;

/// One Raft group of a node, as [`ClientResponse::Groups`] reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    /// The group's id.
    pub group: GroupId,
    /// The node's Raft status in the group.
    pub status: Status,
    /// The group's voters, in id order (the first [`MAX_LISTED_MEMBERS`]).
    pub voters: Bounded<NodeId, MAX_LISTED_MEMBERS>,
    /// The group's learners, in id order (the first [`MAX_LISTED_MEMBERS`]).
    pub learners: Bounded<NodeId, MAX_LISTED_MEMBERS>,
    /// Why the group stopped on its own, if it did.
    pub fault: Option<String>,
}

/// A node's answer to one command (alone, or in a batch).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandAnswer {
    /// See [`ClientResponse::Applied`].
    Applied(Response),
    /// See [`ClientResponse::NotLeader`].
    NotLeader {
        /// The leader this node knows of.
        leader: Option<Member>,
    },
    /// See [`ClientResponse::NotApplied`].
    NotApplied(String),
    /// See [`ClientResponse::Unknown`].
    Unknown(String),
    /// See [`ClientResponse::Refused`].
    Refused(String),
    /// A read whose value did not fit in the batch's answer frame (the values of a batch's
    /// reads add up to more than [`MAX_FRAME_BYTES`]): not answered here; send it alone
    /// (a read has no effect, so running it again is harmless).
    TooLarge,
}

impl From<CommandAnswer> for ClientResponse {
    fn from(answer: CommandAnswer) -> Self {
        match answer {
            CommandAnswer::Applied(r) => ClientResponse::Applied(r),
            CommandAnswer::NotLeader { leader } => ClientResponse::NotLeader { leader },
            CommandAnswer::NotApplied(why) => ClientResponse::NotApplied(why),
            CommandAnswer::Unknown(why) => ClientResponse::Unknown(why),
            CommandAnswer::Refused(why) => ClientResponse::Refused(why),
            CommandAnswer::TooLarge => {
                ClientResponse::Refused("the answer does not fit in a frame".into())
            }
        }
    }
}

impl ClientResponse {
    /// This response, made to fit in a frame if it is a batch whose read values add up to more
    /// than [`MAX_FRAME_BYTES`]: the values that do not fit (in order) are replaced by
    /// [`CommandAnswer::TooLarge`], for the client to read them alone. Any other response is
    /// returned as it is.
    pub fn fit_in_frame(self) -> Self {
        if frame_size(&self).is_ok() {
            return self;
        }
        let ClientResponse::Batch(answers) = self else { return self };
        let size = |answer: &CommandAnswer| {
            postcard::experimental::serialized_size(answer).unwrap_or(MAX_FRAME_BYTES)
        };
        let is_value = |answer: &CommandAnswer| {
            matches!(answer, CommandAnswer::Applied(Ok(super::command::OpResult::Value(Some(_)))))
        };
        // The batch's tag and length, and every answer that is not a value, are kept.
        let mut total = 16 + answers.iter().filter(|a| !is_value(a)).map(size).sum::<usize>();
        let fitted = answers
            .into_inner()
            .into_iter()
            .map(|answer| {
                if !is_value(&answer) {
                    return answer;
                }
                let len = size(&answer);
                if total + len <= MAX_FRAME_BYTES {
                    total += len;
                    answer
                } else {
                    total += 1;
                    CommandAnswer::TooLarge
                }
            })
            .collect();
        match Bounded::new(fitted) {
            Ok(answers) => ClientResponse::Batch(answers),
            Err(e) => ClientResponse::Refused(e.to_string()),
        }
    }
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

/// The size of `message`'s frame, computed without encoding it.
pub fn frame_size<T: Serialize>(message: &T) -> Result<usize, FrameError> {
    let len = postcard::experimental::serialized_size(message)
        .map_err(|e| FrameError::Encode(e.to_string()))?;
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge);
    }
    Ok(len + 4)
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

/// Reads the length header of the one frame of a stream direction, checked against
/// [`MAX_FRAME_BYTES`] (so that the caller can reserve memory for the body before reading it).
pub async fn read_len(recv: &mut RecvStream) -> Result<usize, FrameError> {
    let mut header = [0u8; 4];
    recv.read_exact(&mut header).await.map_err(|e| FrameError::Stream(e.to_string()))?;
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge);
    }
    Ok(len)
}

/// Reads and decodes the `len`-byte body announced by [`read_len`]; the stream must end there.
pub async fn read_body<T: DeserializeOwned>(
    recv: &mut RecvStream,
    len: usize,
) -> Result<T, FrameError> {
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(|e| match e {
        raft_quic::quinn::ReadExactError::FinishedEarly(actual) => {
            FrameError::Length { announced: len, actual }
        }
        other => FrameError::Stream(other.to_string()),
    })?;
    match recv.read(&mut [0u8; 1]).await {
        Ok(None) => {}
        Ok(Some(_)) => return Err(FrameError::Length { announced: len, actual: len + 1 }),
        Err(e) => return Err(FrameError::Stream(e.to_string())),
    }
    postcard::from_bytes(&body).map_err(|e| FrameError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn frames_carry_their_length() {
        let frame = encode(&ClientRequest::Status).unwrap();
        assert_eq!(frame_size(&ClientRequest::Status).unwrap(), frame.len());
        assert_eq!(decode::<ClientRequest>(&frame).unwrap(), ClientRequest::Status);
        assert!(matches!(
            decode::<ClientRequest>(&frame[..frame.len() - 1]),
            Err(FrameError::Length { .. })
        ));
        assert!(decode::<ClientRequest>(&[0, 0]).is_err());
    }

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        frame
    }

    #[test]
    fn nested_batches_cannot_be_expressed() {
        // The request that overflowed a node's stack in `raft-kv/2`: Batch(Batch(...(Status)))
        // (variant 3, one item, repeated); and the same shape of response (variant 7).
        let nested = |variant: u8| {
            let mut body = [variant, 1].repeat(200_000);
            body.push(1);
            framed(&body)
        };
        assert!(matches!(decode::<ClientRequest>(&nested(3)), Err(FrameError::Decode(_))));
        assert!(matches!(decode::<ClientResponse>(&nested(7)), Err(FrameError::Decode(_))));
    }

    #[test]
    fn a_long_batch_is_refused_on_its_length() {
        // 2 MiB of two-byte commands (`Get` of an empty key without a session) after the
        // `Batch` tag: refused on the announced length, before any command is decoded.
        let get = Command {
            session: None,
            op: super::super::command::Op::Get { key: bytes::Bytes::new() },
        };
        let commands = vec![get; 1 << 20];
        let mut body = vec![3];
        body.extend(postcard::to_allocvec(&commands).unwrap());
        // (`Bounded`'s own test shows that not one item is decoded.)
        assert!(matches!(decode::<ClientRequest>(&framed(&body)), Err(FrameError::Decode(_))));
        let fits = ClientRequest::Batch(CommandBatch::new(Vec::new()).unwrap());
        assert_eq!(decode::<ClientRequest>(&encode(&fits).unwrap()).unwrap(), fits);
    }

    #[test]
    fn a_long_partition_is_refused_on_its_length() {
        // Admin (2), Partition (0), 2,000,000 one-byte ids: decoded before the certificate's
        // role is checked, so refused on the announced length.
        let mut body = vec![2, 0];
        body.extend(postcard::to_allocvec(&vec![0u64; 2_000_000]).unwrap());
        assert!(body.len() <= MAX_FRAME_BYTES);
        assert!(matches!(decode::<ClientRequest>(&framed(&body)), Err(FrameError::Decode(_))));
    }

    #[test]
    fn a_batch_of_large_values_is_fitted_in_a_frame() {
        use super::super::command::OpResult;
        let big = bytes::Bytes::from(vec![7u8; 500 << 10]);
        let value = CommandAnswer::Applied(Ok(OpResult::Value(Some(big))));
        let written = CommandAnswer::Applied(Ok(OpResult::Written));
        let mut answers = vec![value; 5];
        answers.insert(2, written.clone());
        let response = ClientResponse::Batch(Bounded::new(answers).unwrap());
        assert!(frame_size(&response).is_err(), "2.5 MiB of values");
        let fitted = response.clone().fit_in_frame();
        assert!(frame_size(&fitted).is_ok());
        let ClientResponse::Batch(fitted) = fitted else { panic!("not a batch: {fitted:?}") };
        let ClientResponse::Batch(original) = response else { unreachable!() };
        assert_eq!(fitted[..5], original[..5], "the first four values and the write fit");
        assert_eq!(fitted[5], CommandAnswer::TooLarge);
        // A batch that fits is left alone.
        let small = ClientResponse::Batch(Bounded::new(vec![written; 3]).unwrap());
        assert_eq!(small.clone().fit_in_frame(), small);
    }

    #[test]
    fn a_long_member_list_is_refused_on_its_length() {
        // Members (variant 8 of the response): answered_by, leader: None, commit_index, then
        // 500,000 members of 4 bytes (id, voter, no addresses): 2 MB, 40 MB decoded.
        let mut body = vec![8, 1, 0, 0];
        let member = MemberInfo { id: 1, voter: true, raft_addr: None, client_addr: None };
        body.extend(postcard::to_allocvec(&vec![member.clone(); 500_000]).unwrap());
        assert!(body.len() <= MAX_FRAME_BYTES);
        let decoded = decode::<ClientResponse>(&framed(&body));
        assert!(matches!(decoded, Err(FrameError::Decode(_))), "{:?}", decoded.map(|_| ()));
        let fits = MemberList {
            answered_by: 1,
            leader: None,
            commit_index: 0,
            members: Bounded::truncated(vec![member; MAX_LISTED_MEMBERS + 1]),
        };
        assert_eq!(fits.members.len(), MAX_LISTED_MEMBERS);
        let fits = ClientResponse::Members(fits);
        assert_eq!(decode::<ClientResponse>(&encode(&fits).unwrap()).unwrap(), fits);
    }

    #[test]
    fn the_smallest_command_takes_min_command_bytes() {
        use super::super::command::Op;
        let key = bytes::Bytes::new();
        for op in [Op::Get { key: key.clone() }, Op::Delete { key }, Op::Register { id: 0 }] {
            let command = Command { session: None, op };
            assert_eq!(postcard::to_allocvec(&command).unwrap().len(), MIN_COMMAND_BYTES);
        }
    }
}
