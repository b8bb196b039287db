//! The `Network` trait (outbound RPCs) and the `RpcHandler` trait (inbound RPCs).
//!
//! A transport is a request/response service addressed by node id. Any request or response may
//! be lost, delayed, duplicated or reordered; the node stays safe under all of it. A transport
//! must authenticate peers: it delivers a request only if [`RpcRequest::sender`](crate::RpcRequest::sender) is the node its
//! connection proved to be (see `raft-quic` for mutual TLS).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::membership::NodeInfo;
use crate::message::{Envelope, RpcResponse};
use crate::types::{ClusterId, GroupId, NodeId};

/// Why an outbound RPC produced no response. The node treats every variant the same way (the
/// peer is unreachable for now and will be retried); the variants exist for logs and metrics.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetworkError {
    /// The target is not known to the transport.
    #[error("unknown peer {0}")]
    UnknownPeer(NodeId),
    /// The target could not be reached (connection refused, partition, crashed peer).
    #[error("peer {peer} unreachable: {reason}")]
    Unreachable {
        /// The target node.
        peer: NodeId,
        /// A human-readable reason.
        reason: String,
    },
    /// No response arrived within the transport's RPC timeout.
    #[error("RPC to {0} timed out")]
    Timeout(NodeId),
    /// The peer answered, but with an error (it is shutting down, it refused the request).
    #[error("peer {peer} refused the request: {reason}")]
    Refused {
        /// The target node.
        peer: NodeId,
        /// Who refused and why: the receiving node (its [`RpcError`], typed, so that a
        /// permanent `WrongCluster` can be told from a transient `Shutdown`) or its transport.
        reason: RefusalReason,
    },
    /// A message could not be encoded or decoded, or exceeded a size limit.
    #[error("codec error: {0}")]
    Codec(String),
    /// The local transport has been shut down.
    #[error("network is shut down")]
    Shutdown,
}

/// Why a peer refused a request ([`NetworkError::Refused`]): its node refused it, or its
/// transport did before the node saw it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RefusalReason {
    /// The receiving node refused the request: the [`RpcError`] its
    /// [`RpcHandler::handle_rpc`] returned, carried back by the transport as it is.
    #[error(transparent)]
    Rpc(RpcError),
    /// The receiver's transport refused the request before any handler saw it (no handler
    /// installed yet, the sender's authenticated identity, a size or memory limit, a reset
    /// stream). It holds the transport's own error: downcast it to the transport's type
    /// (raft-quic: `raft_quic::Refusal`), or read its message.
    #[error(transparent)]
    Transport(Arc<dyn std::error::Error + Send + Sync + 'static>),
}

impl RefusalReason {
    /// A refusal by the transport, from its error or its message (a `String` or `&str`).
    pub fn transport(error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Self::Transport(Arc::from(error.into()))
    }

    /// The receiving node's refusal, if it was the node (not its transport) that refused.
    pub fn rpc_error(&self) -> Option<&RpcError> {
        match self {
            Self::Rpc(error) => Some(error),
            Self::Transport(_) => None,
        }
    }
}

/// Two refusals are equal when both are the node's with equal [`RpcError`]s, or both the
/// transport's with the same message (a transport error has no equality of its own).
impl PartialEq for RefusalReason {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Rpc(a), Self::Rpc(b)) => a == b,
            (Self::Transport(a), Self::Transport(b)) => a.to_string() == b.to_string(),
            _ => false,
        }
    }
}

impl Eq for RefusalReason {}

/// Sends RPCs to other nodes.
///
/// The node calls `send` concurrently (several AppendEntries in flight per peer, votes to all
/// peers at once), and never needs a response in order: implementations should not serialize
/// calls to one peer behind each other. Implementations should bound the time a call can take
/// (an RPC timeout); a call that never returns holds one slot of the peer's in-flight window.
#[async_trait]
pub trait Network: Send + Sync + 'static {
    /// Delivers `request` to node `request.receiver` and returns its response. The envelope
    /// must reach the receiver unchanged (its `receiver`, `cluster_id` and `group_id` are what
    /// the receiver checks).
    async fn send(&self, request: Envelope) -> Result<RpcResponse, NetworkError>;

    /// The members of the membership this node uses (voters of both sets during a joint
    /// change, and learners) with their metadata: called once when the node starts (from its log
    /// and snapshot) and again whenever that changes, before any request to a new member is
    /// sent. The membership in force may be uncommitted and may be rolled back, so this is a
    /// hint of whom to reach and where, not a decision (a transport that refuses removed nodes
    /// must not refuse a node only because it left this map). An empty
    /// [`NodeInfo::address`] means the membership does not give one: keep what is known.
    ///
    /// Called from the node's main loop: it must not block. The default does nothing (a
    /// transport that is given addresses some other way); a `Network` that wraps another must
    /// forward it, or the inner transport never learns the members' addresses.
    ///
    /// **Several groups, one transport.** When the groups of a [`Host`](crate::multi::Host)
    /// share a transport, each group's node calls this with *its own* membership, at its own
    /// times: a shared transport receives `members_changed` per group. It must keep what it
    /// learns per group (a per-group view of the transport, or a merge that one group's call
    /// cannot undo for another), never let the latest call replace what other groups said.
    fn members_changed(&self, members: &BTreeMap<NodeId, NodeInfo>) {
        let _ = members;
    }

    /// The largest encoded request this transport carries, in bytes, if it has a limit. The
    /// node checks at start that its largest requests fit (an InstallSnapshot chunk of
    /// `Config::snapshot_chunk_bytes` with the snapshot's metadata, and an AppendEntries of
    /// `Config::max_append_entries_bytes` or one maximal membership entry; see
    /// `config::REQUEST_OVERHEAD_BYTES`) and refuses to start otherwise
    /// (`StartError::ExceedsTransport`), instead of failing every such send at run time.
    ///
    /// The default has no limit; a `Network` that wraps another must forward it.
    fn max_request_bytes(&self) -> Option<u64> {
        None
    }
}

#[async_trait]
impl<N: Network + ?Sized> Network for std::sync::Arc<N> {
    async fn send(&self, request: Envelope) -> Result<RpcResponse, NetworkError> {
        (**self).send(request).await
    }

    fn members_changed(&self, members: &BTreeMap<NodeId, NodeInfo>) {
        (**self).members_changed(members)
    }

    fn max_request_bytes(&self) -> Option<u64> {
        (**self).max_request_bytes()
    }
}

/// Why an inbound RPC was not answered. Every variant but `Shutdown` is decided from the
/// [`Envelope`] alone, before the engine sees the request: the request changed nothing.
///
/// **Part of the wire format, versioned by the transport** (like the types of
/// [`message`](crate::message)): a transport carries it back to the sender as it is (raft-quic
/// encodes it with postcard, by variant index). Adding, removing or reordering a variant or a
/// field changes the encoding, so it needs a new wire version; a variant is added at the end
/// only. The exhaustive list of variants in this module's tests fails to compile when one is
/// added, and points to `raft-quic/tests/wire_golden.rs`, which holds the bytes of each.
/// `#[non_exhaustive]` lets raft-core add variants in a minor release, each with a wire
/// version bump.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum RpcError {
    /// The node is shutting down or has stopped.
    #[error("node is shut down")]
    Shutdown,
    /// The request was addressed to another node id: the transport reached the wrong node (a
    /// stale or wrong address).
    #[error("wrong node: request for node {expected} delivered to node {actual}")]
    WrongNode {
        /// The id the request was meant for (`Envelope::receiver`).
        expected: NodeId,
        /// The id of the node that received it.
        actual: NodeId,
    },
    /// The request comes from another cluster (`Envelope::cluster_id` is not the receiving
    /// node's `Config::cluster_id`): a node of another cluster, or a node of this cluster
    /// configured with another id.
    #[error(
        "wrong cluster: request of cluster {sender_cluster} delivered to a node of cluster \
         {receiver_cluster}"
    )]
    WrongCluster {
        /// The cluster written on the request by its sender (`Envelope::cluster_id`).
        sender_cluster: ClusterId,
        /// The cluster of the node that received and refused it (its `Config::cluster_id`).
        receiver_cluster: ClusterId,
    },
    /// The request is for another Raft group than the one this node serves.
    #[error(
        "wrong group: request of group {sender_group} delivered to a node of group \
         {receiver_group}"
    )]
    WrongGroup {
        /// The group written on the request by its sender (`Envelope::group_id`).
        sender_group: GroupId,
        /// The group of the node that received and refused it (its `Config::group_id`).
        receiver_group: GroupId,
    },
    /// The receiving process hosts no Raft group with the request's `group_id` (a
    /// [`Host`](crate::multi::Host) that never had it, has not finished adding it, or removed it).
    /// The sender treats it like any failed RPC and retries later.
    #[error("unknown group: this process hosts no group {group}")]
    UnknownGroup {
        /// The group written on the request (`Envelope::group_id`).
        group: GroupId,
    },
    /// The receiving node already holds `limit` unanswered requests of this group
    /// ([`Config::max_inbound_requests`](crate::Config::max_inbound_requests); its log store is
    /// stalled, for instance): the request was refused unseen, so that one group cannot take
    /// what a transport shares between groups (raft-quic's streams of a connection). Transient:
    /// the sender treats it like any failed RPC and retries later.
    #[error("overloaded: the node holds {limit} unanswered requests of group {group}")]
    Overloaded {
        /// The group written on the request (`Envelope::group_id`).
        group: GroupId,
        /// The receiving node's bound (`Config::max_inbound_requests`).
        limit: u64,
    },
}

/// How many variants [`RpcError`] has in the current wire format: raft-quic's golden wire
/// test checks that it holds the bytes of this many (raft-core's own test keeps the number
/// true).
pub const RPC_ERROR_VARIANTS: usize = 6;

impl RpcError {
    /// A short name of the variant (`"WrongCluster"`), for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            RpcError::Shutdown => "Shutdown",
            RpcError::WrongNode { .. } => "WrongNode",
            RpcError::WrongCluster { .. } => "WrongCluster",
            RpcError::WrongGroup { .. } => "WrongGroup",
            RpcError::UnknownGroup { .. } => "UnknownGroup",
            RpcError::Overloaded { .. } => "Overloaded",
        }
    }
}

/// Receives RPCs from a transport. Implemented by `Node`; transports hold an `Arc<dyn RpcHandler>`
/// (or a `Node`) and call it for every authenticated inbound request.
#[async_trait]
pub trait RpcHandler: Send + Sync + 'static {
    /// Handles one request and returns the response to send back. The response is returned only
    /// once everything it acknowledges is durable. A request whose envelope names another
    /// receiver, cluster or group is refused (`RpcError::WrongNode`, `WrongCluster`,
    /// `WrongGroup`; a [`Host`](crate::multi::Host) of several groups answers `UnknownGroup` for
    /// a group it does not host) without being looked at.
    async fn handle_rpc(&self, request: Envelope) -> Result<RpcResponse, RpcError>;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]
    use super::RpcError;

    /// `RpcError` is wire format. This match lists every variant with the index postcard
    /// encodes it by; it stops compiling when a variant is added. Whoever adds one: add it at
    /// the end (the next index), bump raft-quic's `PROTOCOL_VERSION` and its table in
    /// `raft-quic/src/wire.rs`, and add the variant's bytes to `raft-quic/tests/wire_golden.rs`
    /// (which checks that it covers `RPC_ERROR_VARIANTS` variants).
    fn wire_index(error: &RpcError) -> u8 {
        match error {
            RpcError::Shutdown => 0,
            RpcError::WrongNode { .. } => 1,
            RpcError::WrongCluster { .. } => 2,
            RpcError::WrongGroup { .. } => 3,
            RpcError::UnknownGroup { .. } => 4,
            RpcError::Overloaded { .. } => 5,
        }
    }

    #[test]
    fn every_variant_keeps_its_wire_index() {
        let all = [
            RpcError::Shutdown,
            RpcError::WrongNode { expected: 1, actual: 2 },
            RpcError::WrongCluster { sender_cluster: 1, receiver_cluster: 2 },
            RpcError::WrongGroup { sender_group: 1, receiver_group: 2 },
            RpcError::UnknownGroup { group: 3 },
            RpcError::Overloaded { group: 3, limit: 64 },
        ];
        assert_eq!(all.len(), crate::network::RPC_ERROR_VARIANTS);
        for (index, error) in all.iter().enumerate() {
            assert_eq!(usize::from(wire_index(error)), index, "{error:?}");
            let encoded = postcard::to_allocvec(error).expect("encodes");
            assert_eq!(encoded[0], wire_index(error), "postcard's variant index of {error:?}");
        }
    }
}
