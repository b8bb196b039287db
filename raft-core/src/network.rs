//! The `Network` trait (outbound RPCs) and the `RpcHandler` trait (inbound RPCs).
//!
//! A transport is a request/response service addressed by node id. Any request or response may
//! be lost, delayed, duplicated or reordered; the node stays safe under all of it. A transport
//! must authenticate peers: it delivers a request only if [`RpcRequest::sender`] is the node its
//! connection proved to be (see `raft-quic` for mutual TLS).

use std::collections::BTreeMap;

use async_trait::async_trait;

use crate::membership::NodeInfo;
use crate::message::{RpcRequest, RpcResponse};
use crate::types::NodeId;

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
        /// A human-readable reason.
        reason: String,
    },
    /// A message could not be encoded or decoded, or exceeded a size limit.
    #[error("codec error: {0}")]
    Codec(String),
    /// The local transport has been shut down.
    #[error("network is shut down")]
    Shutdown,
}

/// Sends RPCs to other nodes.
///
/// The node calls `send` concurrently (several AppendEntries in flight per peer, votes to all
/// peers at once), and never needs a response in order: implementations should not serialize
/// calls to one peer behind each other. Implementations should bound the time a call can take
/// (an RPC timeout); a call that never returns holds one slot of the peer's in-flight window.
#[async_trait]
pub trait Network: Send + Sync + 'static {
    /// Delivers `request` to node `target` and returns its response.
    async fn send(&self, target: NodeId, request: RpcRequest) -> Result<RpcResponse, NetworkError>;

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
    fn members_changed(&self, members: &BTreeMap<NodeId, NodeInfo>) {
        let _ = members;
    }
}

#[async_trait]
impl<N: Network + ?Sized> Network for std::sync::Arc<N> {
    async fn send(&self, target: NodeId, request: RpcRequest) -> Result<RpcResponse, NetworkError> {
        (**self).send(target, request).await
    }

    fn members_changed(&self, members: &BTreeMap<NodeId, NodeInfo>) {
        (**self).members_changed(members)
    }
}

/// Why an inbound RPC was not answered.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RpcError {
    /// The node is shutting down or has stopped.
    #[error("node is shut down")]
    Shutdown,
    /// The request was addressed to another node id.
    #[error("request for node {expected} delivered to node {actual}")]
    WrongNode {
        /// The id the request was meant for.
        expected: NodeId,
        /// The id of the node that received it.
        actual: NodeId,
    },
}

/// Receives RPCs from a transport. Implemented by `Node`; transports hold an `Arc<dyn RpcHandler>`
/// (or a `Node`) and call it for every authenticated inbound request.
#[async_trait]
pub trait RpcHandler: Send + Sync + 'static {
    /// Handles one request and returns the response to send back. The response is returned only
    /// once everything it acknowledges is durable.
    async fn handle_rpc(&self, request: RpcRequest) -> Result<RpcResponse, RpcError>;
}
