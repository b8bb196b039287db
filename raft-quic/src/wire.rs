//! What travels inside a frame (a request frame holds an `RpcRequest`, a response frame the
//! envelope below) and the QUIC error codes used to close a stream or a connection.

use quinn::VarInt;
use raft_core::RpcResponse;
use serde::{Deserialize, Serialize};

/// The protocol version carried by every frame. A node refuses frames of any other version, so
/// two nodes that disagree on the encoding never misinterpret each other's bytes.
pub const PROTOCOL_VERSION: u8 = 1;

/// The ALPN protocol name negotiated by the TLS handshake. A peer speaking anything else is
/// refused before any stream is opened.
pub const ALPN: &[u8] = b"raft-quic/1";

/// The body of a response frame: the handler's response or the reason the request was refused.
/// (The body of a request frame is a plain [`raft_core::RpcRequest`].)
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
    /// The handler returned an error (for example, it is shutting down).
    Handler(String),
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
        }
    }
}

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
    /// The peer did not deliver its frame within the RPC timeout.
    pub const TIMEOUT: VarInt = VarInt::from_u32(5);
    /// The sender abandoned the RPC (its own timeout expired) before finishing the request.
    pub const CANCELLED: VarInt = VarInt::from_u32(6);
    /// The peer's certificate does not bind exactly one known node id.
    pub const BAD_IDENTITY: VarInt = VarInt::from_u32(0x10);
    /// The node is shutting down its network.
    pub const SHUTDOWN: VarInt = VarInt::from_u32(0x11);
}
