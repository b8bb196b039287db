//! An in-process `Network`.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use raft_core::{Network, NetworkError, NodeId, RpcHandler, RpcRequest, RpcResponse};

#[derive(Default)]
struct Inner {
    handlers: HashMap<NodeId, Arc<dyn RpcHandler>>,
    disconnected: BTreeSet<NodeId>,
}

/// An in-process network: a shared registry of nodes by id. Every node of a test cluster gets a
/// clone (via [`MemNetwork::endpoint`]), and requests are delivered by calling the target's
/// handler directly.
///
/// A node can be disconnected (every request to or from it fails with
/// [`NetworkError::Unreachable`]) and reconnected, and a crashed node's handler can be replaced by
/// its restarted instance with [`MemNetwork::register`].
#[derive(Clone, Default)]
pub struct MemNetwork {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for MemNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("MemNetwork")
            .field("nodes", &inner.handlers.keys().collect::<Vec<_>>())
            .field("disconnected", &inner.disconnected)
            .finish()
    }
}

impl MemNetwork {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Routes requests for `id` to `handler` from now on (replacing any earlier handler).
    pub fn register(&self, id: NodeId, handler: Arc<dyn RpcHandler>) {
        self.lock().handlers.insert(id, handler);
    }

    /// Removes `id`'s handler: requests to it fail until it is registered again (a crash).
    pub fn unregister(&self, id: NodeId) {
        self.lock().handlers.remove(&id);
    }

    /// Cuts `id` off: requests from and to it fail until [`reconnect`](Self::reconnect).
    pub fn disconnect(&self, id: NodeId) {
        self.lock().disconnected.insert(id);
    }

    /// Undoes [`disconnect`](Self::disconnect).
    pub fn reconnect(&self, id: NodeId) {
        self.lock().disconnected.remove(&id);
    }

    /// Whether `id` is currently disconnected.
    pub fn is_disconnected(&self, id: NodeId) -> bool {
        self.lock().disconnected.contains(&id)
    }

    /// The `Network` a node with id `id` uses to send.
    pub fn endpoint(&self, id: NodeId) -> MemEndpoint {
        MemEndpoint { network: self.clone(), id }
    }
}

/// One node's view of a [`MemNetwork`]: sends as node `id`.
#[derive(Clone, Debug)]
pub struct MemEndpoint {
    network: MemNetwork,
    id: NodeId,
}

#[async_trait]
impl Network for MemEndpoint {
    async fn send(&self, target: NodeId, request: RpcRequest) -> Result<RpcResponse, NetworkError> {
        let handler = {
            let inner = self.network.lock();
            if inner.disconnected.contains(&self.id) || inner.disconnected.contains(&target) {
                return Err(NetworkError::Unreachable {
                    peer: target,
                    reason: "disconnected".into(),
                });
            }
            inner.handlers.get(&target).cloned().ok_or(NetworkError::UnknownPeer(target))?
        };
        let response = handler
            .handle_rpc(request)
            .await
            .map_err(|e| NetworkError::Refused { peer: target, reason: e.to_string() })?;
        // A link cut while the request was being handled loses the response.
        if self.network.is_disconnected(self.id) || self.network.is_disconnected(target) {
            return Err(NetworkError::Unreachable { peer: target, reason: "disconnected".into() });
        }
        Ok(response)
    }
}
