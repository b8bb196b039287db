//! Test-only network partitions inside a node: a [`Firewall`] shared by a [`Network`] wrapper
//! (outbound RPCs to blocked peers fail) and an [`RpcHandler`] wrapper (inbound RPCs from
//! blocked peers are refused). Installing the same blocked set on both sides of a cut gives a
//! symmetric partition of the Raft traffic; client traffic is not affected.
//!
//! `kv-node` wires these in always, but lets clients change the blocked set only when started
//! with `--fault-injection`. Also [`PanicOnKey`], a state machine that panics on a chosen put
//! (`--panic-on-key`, test clusters only).

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use raft_core::{
    Bytes, Entry, Envelope, Network, NetworkError, NodeId, RpcError, RpcHandler, RpcResponse,
    SnapshotMeta, SnapshotStream, StateMachine, StateMachineError,
};

use super::command::{decode_entry, Op};
use super::node::Removals;

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
    async fn send(&self, request: Envelope) -> Result<RpcResponse, NetworkError> {
        let target = request.receiver;
        if self.firewall.blocks(target) {
            return Err(NetworkError::Unreachable { peer: target, reason: "partitioned".into() });
        }
        self.inner.send(request).await
    }

    fn members_changed(&self, members: &std::collections::BTreeMap<NodeId, raft_core::NodeInfo>) {
        self.inner.members_changed(members);
    }

    fn max_request_bytes(&self) -> Option<u64> {
        self.inner.max_request_bytes()
    }
}

/// An [`RpcHandler`] that refuses requests from blocked peers, and (with
/// [`refusing_removed`](Self::refusing_removed)) the requests of a Raft group from the peers
/// that group removed.
#[derive(Clone, Debug)]
pub struct FirewalledHandler<H> {
    inner: H,
    firewall: Firewall,
    removals: Option<Removals>,
}

impl<H> FirewalledHandler<H> {
    /// Wraps `inner`.
    pub fn new(inner: H, firewall: Firewall) -> Self {
        Self { inner, firewall, removals: None }
    }

    /// Also refuses every request of group `g` whose sender group `g`'s state machine reported
    /// removed to `removals` ([`RpcError::UnknownGroup`]: for that peer, this process no
    /// longer hosts the group), though the peer may still be a member of other groups, whose
    /// requests pass.
    pub fn refusing_removed(mut self, removals: Removals) -> Self {
        self.removals = Some(removals);
        self
    }
}

#[async_trait]
impl<H: RpcHandler> RpcHandler for FirewalledHandler<H> {
    async fn handle_rpc(&self, request: Envelope) -> Result<RpcResponse, RpcError> {
        let sender = request.request.sender();
        if self.firewall.blocks(sender) {
            // The transport turns this into a refusal, which the sender treats as unreachable.
            return Err(RpcError::Shutdown);
        }
        let group = request.group_id;
        if self.removals.as_ref().is_some_and(|removals| removals.removed_from(group, sender)) {
            return Err(RpcError::UnknownGroup { group });
        }
        self.inner.handle_rpc(request).await
    }
}

/// A [`StateMachine`] that panics when it applies a put of one key (when one is set), and is
/// `inner` otherwise: to test that a node whose state machine panics stops, and that its cluster
/// goes on without it.
#[derive(Debug)]
pub struct PanicOnKey<M> {
    inner: M,
    key: Option<Bytes>,
}

impl<M> PanicOnKey<M> {
    /// Wraps `inner`; `key: None` never panics.
    pub fn new(inner: M, key: Option<String>) -> Self {
        Self { inner, key: key.map(Bytes::from) }
    }

    fn poisoned(&self, entry: &Entry) -> bool {
        let (Some(key), Some(command)) = (&self.key, entry.command()) else { return false };
        let Ok(entry) = decode_entry(command) else { return false };
        entry.commands.iter().any(|c| matches!(&c.op, Op::Put { key: k, .. } if k == key))
    }
}

#[async_trait]
impl<M: StateMachine> StateMachine for PanicOnKey<M> {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError> {
        if let Some(entry) = entries.iter().find(|e| self.poisoned(e)) {
            #[allow(clippy::panic)]
            {
                panic!("test fault: a put of the poisoned key at index {}", entry.index);
            }
        }
        self.inner.apply(entries).await
    }
    async fn snapshot(&mut self) -> Result<Option<SnapshotStream>, StateMachineError> {
        self.inner.snapshot().await
    }
    async fn restore(
        &mut self,
        meta: &SnapshotMeta,
        data: SnapshotStream,
    ) -> Result<(), StateMachineError> {
        self.inner.restore(meta, data).await
    }
}
