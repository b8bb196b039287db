//! What travels inside a frame (a request frame holds a `raft_core::Envelope`, a response frame
//! the [`WireResponse`] below), the QUIC error codes used to close a stream or a connection, and the wire
//! version.
//!
//! # Wire version policy
//!
//! [`PROTOCOL_VERSION`] and [`ALPN`] name one encoding of every message that crosses the wire:
//! the frame layout and the postcard encoding of `raft_core`'s `Envelope` (with its
//! `RpcRequest`), `RpcResponse` and `RpcError`, and of [`WireResponse`]. postcard is not self-describing, so *any* change to those types (a field
//! added, removed or reordered, a variant added anywhere but at the end of an enum) is
//! incompatible, and bumps both, together. Nodes of different versions never exchange a frame:
//! the TLS handshake fails on the ALPN, and both sides say so ("the peer speaks another protocol
//! or wire version": the dialer's `NetworkError::Unreachable` reason, the server's log line)
//! instead of failing to decode. Mixed versions cannot form one cluster: upgrade across an
//! incompatible version by replacing the whole cluster (or with an application-level
//! migration), not node by node. Compatible changes (none exist yet for postcard-encoded types)
//! keep the version.
//!
//! The test `tests/wire_golden.rs` holds the exact bytes of a frame of every request, response
//! and refusal variant of the current version, and of a batch and an answer frame: any change to the encoding fails it until the
//! version is bumped and the change is listed below (a version is fixed once released; changes
//! made before its first release belong to it).
//!
//! | version | ALPN | change |
//! |---|---|---|
//! | 1 | `raft-quic/1` | first version |
//! | 2 | `raft-quic/2` | request frames carry their sender in a fixed header; node certificates need the node role; `Refusal::RemovedNode`; and every change to raft-core's messages since version 1 that shipped without a bump (learners in `Membership`, `TimeoutNow`, `leadership_transfer`, `ReadIndex`, `read_round`) or came after the bump but before any release (`InstallSnapshotResponse.refusal`, `SnapshotRefusal`, `AppendEntriesResponse.lease_promise_ms`) |
//! | 3 | `raft-quic/3` | joint consensus and member metadata: `Membership` (in membership entries and `SnapshotMeta`) is an enum whose variant 0 holds the voters, the outgoing voters, the learners and each member's `NodeInfo` (address, data); a membership entry is `EntryPayload` variant 3 (variant 2, the old bare voters and learners, is only decoded) |
//! | 4 | `raft-quic/4` | the request body is an `Envelope` (cluster id, group id, receiver id, then the request), checked by the receiving node; `Refusal::Handler` carries the handler's typed `RpcError` (`Shutdown`, `WrongNode`, `WrongCluster`, `WrongGroup`, `UnknownGroup` from a multi-group host, and `Overloaded`, a node's bound on the requests of one group it holds; both added before version 4's first release) instead of a string; `AppendEntriesRequest.quiesce` (a bool after `read_round`: the quiesce mark of idle groups) and `AppendEntriesResponse.quiesced` (a bool after `lease_promise_ms`: the follower confirms it quiesced); batch frames (kind byte `0x84` in the version's place, a `u16` count, then that many request frames) and their answer frames (kind `0x84`, the `u16` position of the request answered, then a `WireResponse`), the coalescing of the small requests to one peer; `Refusal::Malformed` and `Refusal::Busy` (a bad request of a batch refused alone); all added before version 4's first release |

use quinn::VarInt;
use raft_core::RpcResponse;
use serde::{Deserialize, Serialize};

/// The protocol version carried by every frame. A node refuses frames of any other version, so
/// two nodes that disagree on the encoding never misinterpret each other's bytes. Bumped with
/// [`ALPN`] on every incompatible change (see the module docs).
pub const PROTOCOL_VERSION: u8 = 4;

/// The ALPN protocol name negotiated by the TLS handshake: `raft-quic/<PROTOCOL_VERSION>`. A
/// peer speaking anything else is refused before any stream is opened.
pub const ALPN: &[u8] = b"raft-quic/4";

/// The TLS alert a server sends when no ALPN protocol is common (`no_application_protocol`),
/// as QUIC carries it: a CRYPTO_ERROR transport code `0x100 + alert`.
pub(crate) const NO_APPLICATION_PROTOCOL: u64 = 0x100 + 120;

/// The body of a response frame: the handler's response or the reason the request was refused.
/// (The body of a request frame is a [`raft_core::Envelope`].)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireResponse {
    /// The handler's response.
    Ok(RpcResponse),
    /// The request was not handed to the handler, or the handler refused it.
    Refused(Refusal),
}

/// Why a server refused a well-formed request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Refusal {
    /// No handler is installed yet (the node is still starting).
    NotServing,
    /// The request's claimed sender is not the identity proved by the connection's certificate.
    SenderMismatch {
        /// `RpcRequest::sender()` of the request.
        claimed: raft_core::NodeId,
        /// The node id bound to the peer's certificate.
        authenticated: raft_core::NodeId,
    },
    /// The handler refused the request (it is shutting down, or the request's envelope names
    /// another node, cluster or group).
    Handler(raft_core::RpcError),
    /// The sender was removed from the cluster: this node refuses its requests.
    RemovedNode(raft_core::NodeId),
    /// The request, one of a batch's, does not decode: malformed, over the decoding budget, or
    /// its body names another sender than its header (the reason, at most
    /// [`MAX_REASON_LEN`] bytes). It alone is refused; the batch's other requests are served.
    /// (A lone request that does not decode has its stream reset instead.)
    Malformed(String),
    /// The request, one of a batch's, does not fit the receiver's memory budget for its sender
    /// now. It alone is refused; the batch's other requests are served. (A lone request has
    /// its stream reset with [`code::BUSY`] instead.)
    Busy,
}

/// The longest reason a [`Refusal::Malformed`] carries, in bytes: a longer one is cut (at a
/// character boundary), so that an answer always fits a small frame.
pub const MAX_REASON_LEN: usize = 256;

impl Refusal {
    /// [`Refusal::Malformed`] with `reason` cut to [`MAX_REASON_LEN`] bytes.
    pub fn malformed(reason: impl std::fmt::Display) -> Self {
        let mut reason = reason.to_string();
        let mut end = reason.len().min(MAX_REASON_LEN);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        Refusal::Malformed(reason)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NotServing => f.write_str("the node is not serving RPCs yet"),
            Refusal::SenderMismatch { claimed, authenticated } => write!(
                f,
                "request claims sender {claimed} but the connection is authenticated as {authenticated}"
            ),
            Refusal::Handler(reason) => write!(f, "handler error: {reason}"),
            Refusal::RemovedNode(id) => write!(f, "node {id} was removed from the cluster"),
            Refusal::Malformed(reason) => write!(f, "malformed request: {reason}"),
            Refusal::Busy => f.write_str("the receiver's memory budget for this peer is exhausted"),
        }
    }
}

impl std::error::Error for Refusal {}

/// Application error codes for QUIC `RESET_STREAM`, `STOP_SENDING` and `CONNECTION_CLOSE`.
pub mod code {
    use super::VarInt;

    /// Normal close (end of the network, end of a stream).
    pub const NO_ERROR: VarInt = VarInt::from_u32(0);
    /// A frame announced a length above the receiver's maximum frame size.
    pub const FRAME_TOO_LARGE: VarInt = VarInt::from_u32(1);
    /// A frame carried a protocol version the receiver does not speak.
    pub const UNSUPPORTED_VERSION: VarInt = VarInt::from_u32(2);
    /// A frame's body did not decode.
    pub const DECODE_ERROR: VarInt = VarInt::from_u32(3);
    /// The stream ended inside a frame.
    pub const TRUNCATED: VarInt = VarInt::from_u32(4);
    /// The peer did not deliver its frame within the RPC timeout (a stream reset); also the
    /// code with which a dialer closes a connection on which an RPC timed out while nothing was
    /// heard from the peer.
    pub const TIMEOUT: VarInt = VarInt::from_u32(5);
    /// The sender abandoned the RPC (its own timeout expired) before finishing the request.
    pub const CANCELLED: VarInt = VarInt::from_u32(6);
    /// A request's sender header names another node than the connection's certificate.
    pub const SENDER_MISMATCH: VarInt = VarInt::from_u32(7);
    /// The request does not fit the connection's memory budget now.
    pub const BUSY: VarInt = VarInt::from_u32(8);
    /// The peer's certificate does not name exactly one node id.
    pub const BAD_IDENTITY: VarInt = VarInt::from_u32(0x10);
    /// The node is shutting down its network.
    pub const SHUTDOWN: VarInt = VarInt::from_u32(0x11);
    /// The peer's node id was removed from the cluster: its certificate is refused.
    pub const REMOVED_NODE: VarInt = VarInt::from_u32(0x12);
    /// The server has no connection slot left (counted after the handshake).
    pub const TOO_MANY_CONNECTIONS: VarInt = VarInt::from_u32(0x13);
    /// The peer's node id opened more connections than allowed: this, its oldest, is closed.
    pub const REPLACED: VarInt = VarInt::from_u32(0x14);
    /// The peer's certificate is no longer trusted (its CA was dropped from the trust bundle).
    pub const UNTRUSTED: VarInt = VarInt::from_u32(0x15);
    /// The peer's certificate (or one of its chain) has expired.
    pub const CERT_EXPIRED: VarInt = VarInt::from_u32(0x16);
}

#[cfg(test)]
mod tests {
    use super::{Refusal, MAX_REASON_LEN};

    #[test]
    fn a_long_reason_is_cut_at_a_character_boundary() {
        let long = "é".repeat(200); // 400 bytes, 2 per character
        let reason = match Refusal::malformed(&long) {
            Refusal::Malformed(reason) => reason,
            other => other.to_string() + " (not a Malformed refusal)",
        };
        assert!(reason.len() <= MAX_REASON_LEN, "{} bytes", reason.len());
        assert!(reason.len() >= MAX_REASON_LEN - 1, "cut too short: {} bytes", reason.len());
        assert!(long.starts_with(&reason), "{reason}");
        assert!(matches!(Refusal::malformed("bad"), Refusal::Malformed(r) if r == "bad"));
    }
}
