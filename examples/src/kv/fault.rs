//! Test-only network partitions inside a node: a [`Firewall`] shared by a [`Network`] wrapper
//! (outbound RPCs to blocked peers fail) and an [`RpcHandler`] wrapper (inbound RPCs from
//! blocked peers are refused). Installing the same blocked set on both sides of a cut gives a
//! symmetric partition of the Raft traffic; client traffic is not affected.
//!
//! `kv-node` wires these in always, but lets clients change the blocked set only when started
//! with `--fault-injection`.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use raft_core::{Network, NetworkError, NodeId, RpcError, RpcHandler, RpcRequest, RpcResponse};

/// The set of peers this node must not talk to. Clones share it.
#[derive(Clone, Debug, Default)]
pub struct Firewall(Arc<RwLock<BTreeSet<NodeId>>>);

impl Firewall {
    /// A firewall that blocks nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the blocked set (empty heals every partition).
    pub fn set_blocked(&self, blocked: impl IntoIterator<Item = NodeId>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = blocked.into_iter().collect();
    }

    /// Whether traffic with `peer` is blocked.
    pub fn blocks(&self, peer: NodeId) -> bool {
        self.0.read().unwrap_or_else(|p| p.into_inner()).contains(&peer)
    }
}

/// A [`Network`] whose RPCs to blocked peers fail as unreachable.
#[derive(Clone, Debug)]
pub struct FirewalledNetwork<N> {
    inner: N,
    firewall: Firewall,
}

impl<N> FirewalledNetwork<N> {
    /// Wraps `inner`.
    pub fn new(inner: N, firewall: Firewall) -> Self {
        Self { inner, firewall }
    }
}

#[async_trait]
impl<N: Network> Network for FirewalledNetwork<N> {
    async fn send(&self, target: NodeId, request: RpcRequest) -> Result<RpcResponse, NetworkError> {
        if self.firewall.blocks(target) {
            return Err(NetworkError::Unreachable { peer: target, reason: "partitioned".into() });
        }
        self.inner.send(target, request).await
    }
}

/// An [`RpcHandler`] that refuses requests from blocked peers.
#[derive(Clone, Debug)]
pub struct FirewalledHandler<H> {
    inner: H,
    firewall: Firewall,
}

impl<H> FirewalledHandler<H> {
    /// Wraps `inner`.
    pub fn new(inner: H, firewall: Firewall) -> Self {
        Self { inner, firewall }
    }
}

#[async_trait]
impl<H: RpcHandler> RpcHandler for FirewalledHandler<H> {
    async fn handle_rpc(&self, request: RpcRequest) -> Result<RpcResponse, RpcError> {
        if self.firewall.blocks(request.sender()) {
            // The transport turns this into a refusal, which the sender treats as unreachable.
            return Err(RpcError::Shutdown);
        }
        self.inner.handle_rpc(request).await
    }
}
