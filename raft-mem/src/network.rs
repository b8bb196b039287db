//! An in-process `Network` with fault injection.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use raft_core::{Network, NetworkError, NodeId, RpcHandler, RpcRequest, RpcResponse, Runtime};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// Faults applied to messages on a link (or to every link of a node, or to all links).
///
/// Probabilities are in `[0, 1]`. Delays need a runtime ([`MemNetwork::with_runtime`]); without
/// one, messages are delivered at once and only drops apply.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkFaults {
    /// Probability that a request is lost before reaching the target.
    pub drop_request: f64,
    /// Probability that a response is lost after the target handled the request.
    pub drop_response: f64,
    /// Probability that a request is delivered twice (the second answer is discarded).
    pub duplicate: f64,
    /// Every message (request and response) is delayed by a uniform time in this range.
    pub delay_ms: (u64, u64),
    /// Probability that a message is instead delayed by up to `long_delay_ms_max` (reordering).
    pub long_delay: f64,
    /// The upper bound of long delays.
    pub long_delay_ms_max: u64,
}

impl LinkFaults {
    /// A perfect link: no loss, no delay.
    pub const NONE: LinkFaults = LinkFaults {
        drop_request: 0.0,
        drop_response: 0.0,
        duplicate: 0.0,
        delay_ms: (0, 0),
        long_delay: 0.0,
        long_delay_ms_max: 0,
    };

    /// A reliable link with small random delays (0 to 5 ms), which already reorders messages.
    pub const RELIABLE: LinkFaults = LinkFaults { delay_ms: (0, 5), ..LinkFaults::NONE };

    /// The classic "unreliable network": 10% of requests and of responses lost, 1% duplicated,
    /// delays of 0 to 25 ms, and 10% of messages held back for up to 2 s (long reordering).
    pub const UNRELIABLE: LinkFaults = LinkFaults {
        drop_request: 0.1,
        drop_response: 0.1,
        duplicate: 0.01,
        delay_ms: (0, 25),
        long_delay: 0.1,
        long_delay_ms_max: 2000,
    };
}

impl Default for LinkFaults {
    fn default() -> Self {
        Self::NONE
    }
}

/// RPC counters: requests sent and bytes (postcard-encoded requests plus responses).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkStats {
    /// Requests sent by all nodes.
    pub rpcs: u64,
    /// Encoded bytes of all requests and responses.
    pub bytes: u64,
    /// Requests and bytes per sending node.
    pub per_node: BTreeMap<NodeId, (u64, u64)>,
}

struct Inner {
    handlers: HashMap<NodeId, Arc<dyn RpcHandler>>,
    /// The current incarnation of each node: endpoints of older ones can no longer send.
    incarnations: HashMap<NodeId, u64>,
    disconnected: BTreeSet<NodeId>,
    /// Partition group per node; nodes in different groups cannot talk. Empty = no partition.
    groups: BTreeMap<NodeId, usize>,
    default_faults: LinkFaults,
    node_faults: BTreeMap<NodeId, LinkFaults>,
    link_faults: BTreeMap<(NodeId, NodeId), LinkFaults>,
    /// How long a request on a cut link takes to fail (an RPC timeout), drawn uniformly.
    cut_link_delay_ms: (u64, u64),
    rng: ChaCha8Rng,
    stats: NetworkStats,
}

/// An in-process network: a shared registry of nodes by id, with fault injection.
///
/// Every node of a test cluster sends through its own [`MemEndpoint`] ([`MemNetwork::endpoint`])
/// and is reached through the [`RpcHandler`] registered for its id. All randomness comes from the
/// seed given to [`MemNetwork::with_runtime`], so a run on a deterministic runtime replays
/// exactly.
///
/// Faults: per-link, per-node and default [`LinkFaults`] (loss, duplication, delay, long delays
/// that reorder), partitions into arbitrary groups, and disconnection of single nodes. A request
/// that cannot be delivered fails with [`NetworkError::Unreachable`] or
/// [`NetworkError::Timeout`] after a delay, as an RPC timeout would.
#[derive(Clone)]
pub struct MemNetwork {
    inner: Arc<Mutex<Inner>>,
    runtime: Option<Arc<dyn Runtime>>,
}

impl Default for MemNetwork {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("MemNetwork")
            .field("nodes", &inner.handlers.keys().collect::<Vec<_>>())
            .field("disconnected", &inner.disconnected)
            .field("groups", &inner.groups)
            .finish_non_exhaustive()
    }
}

/// What happens to one request, decided up front from the seeded PRNG.
struct Fate {
    drop_request: bool,
    drop_response: bool,
    duplicate: bool,
    request_delay: Duration,
    response_delay: Duration,
    duplicate_delay: Duration,
}

impl MemNetwork {
    /// A network that delivers at once (no runtime: faults other than disconnection and drops
    /// are not available).
    pub fn new() -> Self {
        Self::build(None, 0)
    }

    /// A network that can delay messages with `runtime`'s timers; `seed` drives every random
    /// fault decision.
    pub fn with_runtime(runtime: impl Runtime, seed: u64) -> Self {
        Self::build(Some(Arc::new(runtime)), seed)
    }

    fn build(runtime: Option<Arc<dyn Runtime>>, seed: u64) -> Self {
        let inner = Inner {
            handlers: HashMap::new(),
            incarnations: HashMap::new(),
            disconnected: BTreeSet::new(),
            groups: BTreeMap::new(),
            default_faults: LinkFaults::NONE,
            node_faults: BTreeMap::new(),
            link_faults: BTreeMap::new(),
            cut_link_delay_ms: (50, 150),
            rng: ChaCha8Rng::seed_from_u64(seed),
            stats: NetworkStats::default(),
        };
        Self { inner: Arc::new(Mutex::new(inner)), runtime }
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

    /// The `Network` for a new incarnation of node `id`. Endpoints of earlier incarnations stop
    /// working: a crashed node's leftover requests are never delivered.
    pub fn endpoint(&self, id: NodeId) -> MemEndpoint {
        let mut inner = self.lock();
        let incarnation = inner.incarnations.entry(id).or_insert(0);
        *incarnation += 1;
        MemEndpoint { network: self.clone(), id, incarnation: *incarnation }
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

    /// Splits the network: nodes can talk only within their group. Nodes in no group are
    /// isolated from everyone.
    pub fn partition(&self, groups: &[Vec<NodeId>]) {
        let mut inner = self.lock();
        inner.groups.clear();
        for (number, group) in groups.iter().enumerate() {
            for &id in group {
                inner.groups.insert(id, number + 1);
            }
        }
        // Isolated nodes get a group of their own, numbered past the real ones.
        let ids: Vec<NodeId> = inner.handlers.keys().copied().collect();
        let mut next = groups.len() + 1;
        for id in ids {
            inner.groups.entry(id).or_insert_with(|| {
                next += 1;
                next
            });
        }
    }

    /// Removes every partition (disconnected nodes stay disconnected).
    pub fn heal(&self) {
        self.lock().groups.clear();
    }

    /// Whether `a` and `b` can currently exchange messages.
    pub fn connected(&self, a: NodeId, b: NodeId) -> bool {
        self.lock().connected(a, b)
    }

    /// Faults for every link without a more specific setting.
    pub fn set_default_faults(&self, faults: LinkFaults) {
        self.lock().default_faults = faults;
    }

    /// Faults for every message sent by or to `id` (unless a link setting applies).
    pub fn set_node_faults(&self, id: NodeId, faults: LinkFaults) {
        self.lock().node_faults.insert(id, faults);
    }

    /// Faults for messages from `from` to `to` (and their responses).
    pub fn set_link_faults(&self, from: NodeId, to: NodeId, faults: LinkFaults) {
        self.lock().link_faults.insert((from, to), faults);
    }

    /// Removes every per-node and per-link fault setting and resets the default to `NONE`.
    pub fn clear_faults(&self) {
        let mut inner = self.lock();
        inner.default_faults = LinkFaults::NONE;
        inner.node_faults.clear();
        inner.link_faults.clear();
    }

    /// How long a request on a cut link takes to fail, drawn uniformly from `range_ms`.
    pub fn set_cut_link_delay_ms(&self, range_ms: (u64, u64)) {
        self.lock().cut_link_delay_ms = range_ms;
    }

    /// The counters since the start or the last [`reset_stats`](Self::reset_stats).
    pub fn stats(&self) -> NetworkStats {
        self.lock().stats.clone()
    }

    /// Zeroes the counters.
    pub fn reset_stats(&self) {
        self.lock().stats = NetworkStats::default();
    }

    async fn pause(&self, duration: Duration) {
        if let (Some(runtime), false) = (&self.runtime, duration.is_zero()) {
            runtime.sleep(duration).await;
        }
    }
}

impl Inner {
    fn connected(&self, a: NodeId, b: NodeId) -> bool {
        if self.disconnected.contains(&a) || self.disconnected.contains(&b) {
            return false;
        }
        self.groups.is_empty() || self.groups.get(&a) == self.groups.get(&b)
    }

    fn faults(&self, from: NodeId, to: NodeId) -> LinkFaults {
        if let Some(f) = self.link_faults.get(&(from, to)) {
            return *f;
        }
        self.node_faults
            .get(&from)
            .or_else(|| self.node_faults.get(&to))
            .copied()
            .unwrap_or(self.default_faults)
    }

    fn chance(&mut self, probability: f64) -> bool {
        probability > 0.0 && (self.rng.next_u64() as f64 / u64::MAX as f64) < probability
    }

    fn uniform_ms(&mut self, (low, high): (u64, u64)) -> Duration {
        let span = high.saturating_sub(low);
        let ms = if span == 0 { low } else { low + self.rng.next_u64() % (span + 1) };
        Duration::from_millis(ms)
    }

    fn delay(&mut self, faults: &LinkFaults) -> Duration {
        if self.chance(faults.long_delay) {
            self.uniform_ms((faults.delay_ms.1, faults.long_delay_ms_max.max(faults.delay_ms.1)))
        } else {
            self.uniform_ms(faults.delay_ms)
        }
    }

    fn fate(&mut self, from: NodeId, to: NodeId) -> Fate {
        let faults = self.faults(from, to);
        Fate {
            drop_request: self.chance(faults.drop_request),
            drop_response: self.chance(faults.drop_response),
            duplicate: self.chance(faults.duplicate),
            request_delay: self.delay(&faults),
            response_delay: self.delay(&faults),
            duplicate_delay: self.delay(&faults),
        }
    }

    fn count(&mut self, from: NodeId, bytes: u64, new_rpc: bool) {
        let rpcs = u64::from(new_rpc);
        self.stats.rpcs += rpcs;
        self.stats.bytes += bytes;
        let entry = self.stats.per_node.entry(from).or_default();
        entry.0 += rpcs;
        entry.1 += bytes;
    }
}

fn encoded_size<T: serde::Serialize>(value: &T) -> u64 {
    postcard::experimental::serialized_size(value).map_or(0, |n| n as u64)
}

/// One node incarnation's view of a [`MemNetwork`]: sends as node `id`.
#[derive(Clone, Debug)]
pub struct MemEndpoint {
    network: MemNetwork,
    id: NodeId,
    incarnation: u64,
}

impl MemEndpoint {
    fn current(&self) -> bool {
        self.network.lock().incarnations.get(&self.id) == Some(&self.incarnation)
    }

    /// The handler of `target` if a message from this endpoint can reach it now.
    fn route(&self, target: NodeId) -> Result<Arc<dyn RpcHandler>, NetworkError> {
        let inner = self.network.lock();
        if inner.incarnations.get(&self.id) != Some(&self.incarnation) {
            return Err(NetworkError::Shutdown);
        }
        if !inner.connected(self.id, target) {
            return Err(NetworkError::Unreachable { peer: target, reason: "link cut".into() });
        }
        inner.handlers.get(&target).cloned().ok_or(NetworkError::UnknownPeer(target))
    }

    async fn fail_after_timeout(&self, error: NetworkError) -> NetworkError {
        let delay = {
            let mut inner = self.network.lock();
            let range = inner.cut_link_delay_ms;
            inner.uniform_ms(range)
        };
        self.network.pause(delay).await;
        error
    }
}

#[async_trait]
impl Network for MemEndpoint {
    async fn send(&self, target: NodeId, request: RpcRequest) -> Result<RpcResponse, NetworkError> {
        let fate = {
            let mut inner = self.network.lock();
            if inner.incarnations.get(&self.id) != Some(&self.incarnation) {
                return Err(NetworkError::Shutdown);
            }
            inner.count(self.id, encoded_size(&request), true);
            inner.fate(self.id, target)
        };
        if let Err(error) = self.route(target) {
            return Err(self.fail_after_timeout(error).await);
        }
        if fate.drop_request {
            return Err(self.fail_after_timeout(NetworkError::Timeout(target)).await);
        }
        if fate.duplicate {
            if let Some(runtime) = self.network.runtime.clone() {
                let (copy, endpoint, delay) = (request.clone(), self.clone(), fate.duplicate_delay);
                runtime.spawn(Box::pin(async move {
                    endpoint.network.pause(delay).await;
                    if let Ok(handler) = endpoint.route(target) {
                        let _ = handler.handle_rpc(copy).await;
                    }
                }));
            }
        }
        self.network.pause(fate.request_delay).await;
        // The link or the target may have gone down while the request was in the air.
        let handler = match self.route(target) {
            Ok(handler) => handler,
            Err(error) => return Err(self.fail_after_timeout(error).await),
        };
        let response = handler
            .handle_rpc(request)
            .await
            .map_err(|e| NetworkError::Refused { peer: target, reason: e.to_string() })?;
        self.network.lock().count(self.id, encoded_size(&response), false);
        if fate.drop_response {
            return Err(self.fail_after_timeout(NetworkError::Timeout(target)).await);
        }
        self.network.pause(fate.response_delay).await;
        if !self.current() || !self.network.connected(self.id, target) {
            return Err(NetworkError::Unreachable { peer: target, reason: "link cut".into() });
        }
        Ok(response)
    }
}
