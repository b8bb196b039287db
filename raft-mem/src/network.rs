//! An in-process `Network` with fault injection.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_trait::async_trait;
use futures::channel::oneshot;
use futures::FutureExt;
use raft_core::{
    Envelope, GroupId, Network, NetworkError, NodeId, RefusalReason, RpcHandler, RpcRequest,
    RpcResponse, Runtime,
};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::de::DeserializeOwned;
use serde::Serialize;

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

    /// Whether messages on such a link arrive, soon and in full (no loss, no long delay, delays
    /// of at most `max_delay_ms`).
    pub fn is_benign(&self, max_delay_ms: u64) -> bool {
        self.drop_request == 0.0
            && self.drop_response == 0.0
            && (self.long_delay == 0.0 || self.long_delay_ms_max <= max_delay_ms)
            && self.delay_ms.1 <= max_delay_ms
    }
}

impl Default for LinkFaults {
    fn default() -> Self {
        Self::NONE
    }
}

/// RPC counters: requests sent and bytes (postcard-encoded requests plus responses).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NetworkStats {
    /// Requests sent by all nodes.
    pub rpcs: u64,
    /// Encoded bytes of all requests and responses.
    pub bytes: u64,
    /// Requests and bytes per sending node.
    pub per_node: BTreeMap<NodeId, (u64, u64)>,
}

/// Watches every message the network carries (the simulation's message-boundary oracles).
/// `group` is the Raft group the message belongs to (the envelope's `group_id`;
/// [`DEFAULT_GROUP_ID`](raft_core::DEFAULT_GROUP_ID) for nodes that run one group), so that a
/// host of several groups is checked group by group.
pub trait WireObserver: Send + Sync + 'static {
    /// `from` sends `request` of `group` to `to`: called as the request leaves its sender.
    fn on_request(&self, group: GroupId, from: NodeId, to: NodeId, request: &RpcRequest);
    /// `request` of `group` from `from` reaches `to`'s handler. The value returned is passed to
    /// [`WireObserver::on_response`] for the answer.
    fn on_delivery(&self, group: GroupId, from: NodeId, to: NodeId, request: &RpcRequest) -> u64;
    /// `to` answers `from`'s `request` of `group` with `response`: called as the response
    /// leaves `to`. `delivered` is what [`WireObserver::on_delivery`] returned for the request.
    fn on_response(
        &self,
        group: GroupId,
        from: NodeId,
        to: NodeId,
        request: &RpcRequest,
        response: &RpcResponse,
        delivered: u64,
    );
}

struct Inner {
    handlers: HashMap<NodeId, Arc<dyn RpcHandler>>,
    /// The current incarnation of each node: endpoints of older ones can no longer send.
    incarnations: HashMap<NodeId, u64>,
    disconnected: BTreeSet<NodeId>,
    /// Partition group per node; nodes in different groups cannot talk. Empty = no partition.
    groups: BTreeMap<NodeId, usize>,
    /// Nodes that reach every group of a partition (a bridge topology).
    bridges: BTreeSet<NodeId>,
    /// One-way cuts: messages from the first node to the second are lost.
    cuts: BTreeSet<(NodeId, NodeId)>,
    /// Wrong routes: requests meant for the key reach the value's handler instead.
    misroutes: BTreeMap<NodeId, NodeId>,
    /// Paused nodes: deliveries to them wait until they resume.
    paused: BTreeSet<NodeId>,
    pause_waiters: Vec<(NodeId, Waker)>,
    default_faults: LinkFaults,
    node_faults: BTreeMap<NodeId, LinkFaults>,
    link_faults: BTreeMap<(NodeId, NodeId), LinkFaults>,
    /// How long a request on a cut link takes to fail (a refused connection), drawn uniformly.
    cut_link_delay_ms: (u64, u64),
    /// The transport's RPC timeout: no send takes longer (`None`: unbounded).
    rpc_timeout: Option<Duration>,
    /// Probability that a failed request hangs until the RPC timeout instead of failing fast.
    hang_chance: f64,
    /// Probability that a send lets every other ready task run before it starts.
    yield_chance: f64,
    /// Whether every message is round-tripped through its postcard encoding.
    wire_check: bool,
    /// Messages that did not survive their encoding.
    wire_errors: Vec<String>,
    observer: Option<Arc<dyn WireObserver>>,
    /// A group whose requests leave each sender one at a time, this far apart (test hook).
    throttle: Option<(GroupId, Duration)>,
    /// When each sender's next request of the throttled group may leave.
    throttle_next: BTreeMap<NodeId, Duration>,
    /// Bumped by every change of the fault settings.
    epoch: u64,
    rng: ChaCha8Rng,
    stats: NetworkStats,
}

/// An in-process network: a shared registry of nodes by id, with fault injection.
///
/// Every node of a test cluster sends through its own [`MemEndpoint`] ([`MemNetwork::endpoint`])
/// and is reached through the [`RpcHandler`] served for its id ([`MemNetwork::serve`]). All randomness comes from the
/// seed given to [`MemNetwork::with_runtime`], so a run on a deterministic runtime replays
/// exactly.
///
/// Faults: per-link, per-node and default [`LinkFaults`] (loss, duplication, delay, long delays
/// that reorder), partitions into arbitrary groups with optional bridge nodes that reach every
/// group, one-way cuts, disconnection of single nodes, and paused nodes (deliveries to them wait
/// until they resume, then race each other). A request that cannot be delivered fails with
/// [`NetworkError::Unreachable`] or [`NetworkError::Timeout`] after a delay, as an RPC timeout
/// would; with [`MemNetwork::set_rpc_timeout`] no call takes longer than the transport's
/// timeout, and some failed calls hang that long. With a runtime, a request in the air is
/// delivered even if its sender crashes meanwhile (only its answer is lost). Every message is
/// round-tripped through its postcard encoding (unless [`MemNetwork::set_wire_check`] turns it
/// off): one that does not decode to itself fails and is reported by
/// [`MemNetwork::take_wire_errors`].
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
            .field("cuts", &inner.cuts)
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
            bridges: BTreeSet::new(),
            cuts: BTreeSet::new(),
            misroutes: BTreeMap::new(),
            paused: BTreeSet::new(),
            pause_waiters: Vec::new(),
            default_faults: LinkFaults::NONE,
            node_faults: BTreeMap::new(),
            link_faults: BTreeMap::new(),
            cut_link_delay_ms: (50, 150),
            rpc_timeout: None,
            hang_chance: 0.0,
            yield_chance: 0.0,
            wire_check: true,
            wire_errors: Vec::new(),
            observer: None,
            throttle: None,
            throttle_next: BTreeMap::new(),
            epoch: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
            stats: NetworkStats::default(),
        };
        Self { inner: Arc::new(Mutex::new(inner)), runtime }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies a change to the fault settings and bumps the epoch.
    fn change(&self, f: impl FnOnce(&mut Inner)) {
        let mut inner = self.lock();
        f(&mut inner);
        inner.epoch += 1;
    }

    /// Routes requests for `id` to `handler` from now on (replacing any earlier handler): the
    /// handler answers the RPCs of node `id` (as `QuicNetwork::serve` does for a QUIC endpoint).
    pub fn serve(&self, id: NodeId, handler: Arc<dyn RpcHandler>) {
        self.change(|inner| {
            inner.handlers.insert(id, handler);
        });
    }

    /// Removes `id`'s handler: requests to it fail until it is served again (a crash).
    pub fn stop_serving(&self, id: NodeId) {
        self.change(|inner| {
            inner.handlers.remove(&id);
        });
    }

    /// The `Network` for a new incarnation of node `id`. Endpoints of earlier incarnations can
    /// send no more (requests they sent before are still delivered).
    ///
    /// Several Raft groups in one process (a [`raft_core::Host`]) share one endpoint: take it
    /// once per process start and give each group a clone (a second call for the same id would
    /// retire the first endpoint, and with it the other groups' sends). Serve the host once for
    /// the id ([`MemNetwork::serve`]); the envelope's group id does the rest. The
    /// endpoint keeps no per-membership state (it ignores `members_changed`), so the groups'
    /// calls cannot clobber each other; faults, partitions and crashes act on the node id, so
    /// they hit every group of the process at once.
    pub fn endpoint(&self, id: NodeId) -> MemEndpoint {
        let mut inner = self.lock();
        let incarnation = inner.incarnations.entry(id).or_insert(0);
        *incarnation += 1;
        MemEndpoint { network: self.clone(), id, incarnation: *incarnation }
    }

    /// Cuts `id` off: requests from and to it fail until [`reconnect`](Self::reconnect).
    pub fn disconnect(&self, id: NodeId) {
        self.change(|inner| {
            inner.disconnected.insert(id);
        });
    }

    /// Undoes [`disconnect`](Self::disconnect).
    pub fn reconnect(&self, id: NodeId) {
        self.change(|inner| {
            inner.disconnected.remove(&id);
        });
    }

    /// Whether `id` is currently disconnected.
    pub fn is_disconnected(&self, id: NodeId) -> bool {
        self.lock().disconnected.contains(&id)
    }

    /// Splits the network: nodes can talk only within their group (and with bridges). Nodes in
    /// no group are isolated from everyone.
    pub fn partition(&self, groups: &[Vec<NodeId>]) {
        self.change(|inner| {
            inner.groups.clear();
            for (number, group) in groups.iter().enumerate() {
                for &id in group {
                    inner.groups.insert(id, number + 1);
                }
            }
            // Isolated nodes get a group of their own, numbered past the real ones.
            let mut ids: Vec<NodeId> = inner.handlers.keys().copied().collect();
            ids.sort_unstable();
            let mut next = groups.len() + 1;
            for id in ids {
                inner.groups.entry(id).or_insert_with(|| {
                    next += 1;
                    next
                });
            }
        });
    }

    /// Makes `id` a bridge (it reaches every group of a partition) or not.
    pub fn set_bridge(&self, id: NodeId, bridge: bool) {
        self.change(|inner| {
            if bridge {
                inner.bridges.insert(id);
            } else {
                inner.bridges.remove(&id);
            }
        });
    }

    /// Cuts the link from `from` to `to` in that direction only: requests from `from` to `to`
    /// are lost, and so are responses from `from` to requests of `to`.
    pub fn cut_one_way(&self, from: NodeId, to: NodeId) {
        self.change(|inner| {
            inner.cuts.insert((from, to));
        });
    }

    /// Undoes [`cut_one_way`](Self::cut_one_way).
    pub fn restore_one_way(&self, from: NodeId, to: NodeId) {
        self.change(|inner| {
            inner.cuts.remove(&(from, to));
        });
    }

    /// Delivers requests meant for `intended` to `actual` instead, envelope unchanged, as a
    /// transport with a stale or wrong address for `intended` would (a fault only the receiver's
    /// envelope check can catch). `actual == intended` restores the route; so does
    /// [`heal`](Self::heal).
    pub fn misroute(&self, intended: NodeId, actual: NodeId) {
        self.change(|inner| {
            if intended == actual {
                inner.misroutes.remove(&intended);
            } else {
                inner.misroutes.insert(intended, actual);
            }
        });
    }

    /// Removes every partition, bridge, one-way cut and misroute (disconnected nodes stay
    /// disconnected).
    pub fn heal(&self) {
        self.change(|inner| {
            inner.groups.clear();
            inner.bridges.clear();
            inner.cuts.clear();
            inner.misroutes.clear();
        });
    }

    /// Whether `a` and `b` can currently exchange messages both ways.
    pub fn connected(&self, a: NodeId, b: NodeId) -> bool {
        let inner = self.lock();
        inner.passes(a, b) && inner.passes(b, a)
    }

    /// Whether a message from `from` to `to` passes now (in that direction).
    pub fn passes(&self, from: NodeId, to: NodeId) -> bool {
        self.lock().passes(from, to)
    }

    /// Pauses deliveries to `id` (a stopped process): they wait until [`resume`](Self::resume),
    /// then reach it in the order the runtime schedules them.
    pub fn pause(&self, id: NodeId) {
        self.change(|inner| {
            inner.paused.insert(id);
        });
    }

    /// Lets the deliveries waiting for `id` proceed.
    pub fn resume(&self, id: NodeId) {
        let waiters = {
            let mut inner = self.lock();
            inner.epoch += 1;
            inner.paused.remove(&id);
            let (go, stay): (Vec<_>, Vec<_>) =
                std::mem::take(&mut inner.pause_waiters).into_iter().partition(|(n, _)| *n == id);
            inner.pause_waiters = stay;
            go
        };
        for (_, waker) in waiters {
            waker.wake();
        }
    }

    /// Faults for every link without a more specific setting.
    pub fn set_default_faults(&self, faults: LinkFaults) {
        self.change(|inner| inner.default_faults = faults);
    }

    /// Faults for every message sent by or to `id` (unless a link setting applies).
    pub fn set_node_faults(&self, id: NodeId, faults: LinkFaults) {
        self.change(|inner| {
            inner.node_faults.insert(id, faults);
        });
    }

    /// Faults for messages from `from` to `to` (and their responses).
    pub fn set_link_faults(&self, from: NodeId, to: NodeId, faults: LinkFaults) {
        self.change(|inner| {
            inner.link_faults.insert((from, to), faults);
        });
    }

    /// Removes every per-node and per-link fault setting and resets the default to `NONE`.
    pub fn clear_faults(&self) {
        self.change(|inner| {
            inner.default_faults = LinkFaults::NONE;
            inner.node_faults.clear();
            inner.link_faults.clear();
        });
    }

    /// The faults that apply to messages from `from` to `to` (and their responses).
    pub fn faults(&self, from: NodeId, to: NodeId) -> LinkFaults {
        self.lock().faults(from, to)
    }

    /// How long a request on a cut link takes to fail, drawn uniformly from `range_ms`.
    pub fn set_cut_link_delay_ms(&self, range_ms: (u64, u64)) {
        self.change(|inner| inner.cut_link_delay_ms = range_ms);
    }

    /// The transport's RPC timeout (with a runtime): a call returns `Timeout` once it has taken
    /// `timeout` (its request may still be delivered later); a failed request hangs that long
    /// with probability `hang_chance` instead of failing after the cut-link delay. `None`: calls
    /// wait for as long as delivery takes.
    pub fn set_rpc_timeout(&self, timeout: Option<Duration>, hang_chance: f64) {
        self.change(|inner| {
            inner.rpc_timeout = timeout;
            inner.hang_chance = hang_chance;
        });
    }

    /// With probability `chance`, a send first lets every other ready task run (a random
    /// interleaving point, on a runtime that picks ready tasks at random).
    pub fn set_yield_chance(&self, chance: f64) {
        self.lock().yield_chance = chance;
    }

    /// Whether every message is round-tripped through its postcard encoding (on by default;
    /// benchmarks may turn it off for speed).
    pub fn set_wire_check(&self, on: bool) {
        self.lock().wire_check = on;
    }

    /// The messages that did not decode to themselves since the last call.
    pub fn take_wire_errors(&self) -> Vec<String> {
        std::mem::take(&mut self.lock().wire_errors)
    }

    /// Watches every message from now on.
    pub fn set_observer(&self, observer: Option<Arc<dyn WireObserver>>) {
        self.lock().observer = observer;
    }

    /// A test hook for starvation checks: from now on the requests of `group` leave each
    /// sender one at a time, `gap` apart, as if they queued behind another group's stream on a
    /// shared link (`None`: no throttle). Needs a runtime (a network built with
    /// [`with_runtime`](Self::with_runtime)); without one it does nothing.
    pub fn throttle_group(&self, throttle: Option<(GroupId, Duration)>) {
        self.change(|inner| {
            inner.throttle = throttle;
            inner.throttle_next.clear();
        });
    }

    /// A number that changes whenever a fault setting, a pause or a registration changes.
    pub fn fault_epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// The counters since the start or the last [`reset_stats`](Self::reset_stats).
    pub fn stats(&self) -> NetworkStats {
        self.lock().stats.clone()
    }

    /// Zeroes the counters.
    pub fn reset_stats(&self) {
        self.lock().stats = NetworkStats::default();
    }

    async fn pause_for(&self, duration: Duration) {
        if let (Some(runtime), false) = (&self.runtime, duration.is_zero()) {
            runtime.sleep(duration).await;
        }
    }

    /// Completes once `id` is not paused.
    fn unpaused(&self, id: NodeId) -> Unpaused {
        Unpaused { network: self.clone(), id }
    }

    /// Round-trips `value` through postcard if the wire check is on; returns it (or the decoded
    /// copy) and its encoded size.
    fn wire<T>(&self, value: T) -> Result<(T, u64), NetworkError>
    where
        T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        if !self.lock().wire_check {
            let size = postcard::experimental::serialized_size(&value).map_or(0, |n| n as u64);
            return Ok((value, size));
        }
        let failure = match postcard::to_allocvec(&value) {
            Ok(bytes) => match postcard::from_bytes::<T>(&bytes) {
                Ok(decoded) if decoded == value => return Ok((decoded, bytes.len() as u64)),
                Ok(decoded) => format!(
                    "{:.300} decodes as {:.300}",
                    format!("{value:?}"),
                    format!("{decoded:?}")
                ),
                Err(error) => format!("{:.300} does not decode: {error}", format!("{value:?}")),
            },
            Err(error) => format!("{:.300} does not encode: {error}", format!("{value:?}")),
        };
        self.lock().wire_errors.push(failure.clone());
        Err(NetworkError::Codec(failure))
    }
}

/// See [`MemNetwork::unpaused`].
struct Unpaused {
    network: MemNetwork,
    id: NodeId,
}

impl Future for Unpaused {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = self.network.lock();
        if !inner.paused.contains(&self.id) {
            return Poll::Ready(());
        }
        inner.pause_waiters.push((self.id, cx.waker().clone()));
        Poll::Pending
    }
}

impl Inner {
    fn passes(&self, from: NodeId, to: NodeId) -> bool {
        if self.disconnected.contains(&from) || self.disconnected.contains(&to) {
            return false;
        }
        if self.cuts.contains(&(from, to)) {
            return false;
        }
        self.groups.is_empty()
            || self.groups.get(&from) == self.groups.get(&to)
            || self.bridges.contains(&from)
            || self.bridges.contains(&to)
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

    /// How long a failed request takes to fail.
    fn failure_delay(&mut self) -> Duration {
        let (timeout, hang_chance, range) =
            (self.rpc_timeout, self.hang_chance, self.cut_link_delay_ms);
        match timeout {
            Some(timeout) if self.chance(hang_chance) => timeout,
            _ => self.uniform_ms(range),
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

    async fn fail_after_timeout(&self, error: NetworkError) -> NetworkError {
        let delay = self.network.lock().failure_delay();
        self.network.pause_for(delay).await;
        error
    }
}

/// Carries `request` from `from` to `to` after `delay` and returns `to`'s answer (as it leaves
/// `to`, before the way back).
async fn deliver(
    network: MemNetwork,
    from: NodeId,
    to: NodeId,
    envelope: Envelope,
    delay: Duration,
) -> Result<RpcResponse, NetworkError> {
    network.pause_for(delay).await;
    network.unpaused(to).await;
    // The link or the target may have gone down while the request was in the air.
    let (handler, observer) = {
        let inner = network.lock();
        if !inner.passes(from, to) {
            return Err(NetworkError::Unreachable { peer: to, reason: "link cut".into() });
        }
        let handler = inner.handlers.get(&to).cloned().ok_or(NetworkError::UnknownPeer(to))?;
        (handler, inner.observer.clone())
    };
    let group = envelope.group_id;
    let delivered =
        observer.as_ref().map_or(0, |o| o.on_delivery(group, from, to, &envelope.request));
    let observed = observer.as_ref().map(|_| envelope.request.clone());
    let response = handler
        .handle_rpc(envelope)
        .await
        .map_err(|e| NetworkError::Refused { peer: to, reason: RefusalReason::Rpc(e) })?;
    if let (Some(observer), Some(request)) = (&observer, &observed) {
        observer.on_response(group, from, to, request, &response, delivered);
    }
    let (response, size) = network.wire(response)?;
    network.lock().count(from, size, false);
    Ok(response)
}

#[async_trait]
impl Network for MemEndpoint {
    async fn send(&self, envelope: Envelope) -> Result<RpcResponse, NetworkError> {
        let (fate, observer, timeout, routed, yields, target, throttled) = {
            let mut inner = self.network.lock();
            if inner.incarnations.get(&self.id) != Some(&self.incarnation) {
                return Err(NetworkError::Shutdown);
            }
            // Where the request really goes: its receiver, unless a misroute says otherwise.
            let target = inner.misroutes.get(&envelope.receiver).copied();
            let target = target.unwrap_or(envelope.receiver);
            let routed = if !inner.passes(self.id, target) {
                Err(NetworkError::Unreachable { peer: target, reason: "link cut".into() })
            } else if !inner.handlers.contains_key(&target) {
                Err(NetworkError::UnknownPeer(target))
            } else {
                Ok(())
            };
            let yield_chance = inner.yield_chance;
            let yields = self.network.runtime.is_some() && inner.chance(yield_chance);
            let fate = inner.fate(self.id, target);
            let throttled = match (inner.throttle, &self.network.runtime) {
                (Some((group, gap)), Some(runtime)) if group == envelope.group_id => {
                    let now = runtime.now();
                    let next = inner.throttle_next.entry(self.id).or_default();
                    let leaves = now.max(*next);
                    *next = leaves + gap;
                    leaves - now
                }
                _ => Duration::ZERO,
            };
            (fate, inner.observer.clone(), inner.rpc_timeout, routed, yields, target, throttled)
        };
        self.network.pause_for(throttled).await;
        if yields {
            raft_core::yield_now().await;
        }
        if let Some(observer) = &observer {
            observer.on_request(envelope.group_id, self.id, target, &envelope.request);
        }
        let (request, size) = self.network.wire(envelope)?;
        self.network.lock().count(self.id, size, true);
        if let Err(error) = routed {
            return Err(self.fail_after_timeout(error).await);
        }
        if fate.drop_request {
            return Err(self.fail_after_timeout(NetworkError::Timeout(target)).await);
        }
        let Some(runtime) = self.network.runtime.clone() else {
            let response = deliver(self.network.clone(), self.id, target, request, Duration::ZERO);
            let response = response.await?;
            if fate.drop_response || !self.network.passes(target, self.id) {
                return Err(NetworkError::Timeout(target));
            }
            return Ok(response);
        };
        if fate.duplicate {
            let copy = deliver(
                self.network.clone(),
                self.id,
                target,
                request.clone(),
                fate.duplicate_delay,
            );
            runtime.spawn(Box::pin(async move {
                let _ = copy.await;
            }));
        }
        // The delivery runs on its own: it happens even if this node crashes meanwhile.
        let (answer, response) = oneshot::channel();
        let delivery = deliver(self.network.clone(), self.id, target, request, fate.request_delay);
        runtime.spawn(Box::pin(async move {
            let _ = answer.send(delivery.await);
        }));
        let network = self.network.clone();
        let (drop_response, response_delay) = (fate.drop_response, fate.response_delay);
        let round_trip = async move {
            let delivered = response.await.unwrap_or(Err(NetworkError::Timeout(target)));
            let failure = match delivered {
                Ok(_) if drop_response => NetworkError::Timeout(target),
                Ok(response) => {
                    network.pause_for(response_delay).await;
                    return Ok(response);
                }
                Err(error) => error,
            };
            // The sender learns of a failure only when its transport gives up.
            let delay = network.lock().failure_delay();
            network.pause_for(delay).await;
            Err(failure)
        };
        let response = match timeout {
            None => round_trip.await?,
            Some(timeout) => futures::select_biased! {
                outcome = round_trip.fuse() => outcome?,
                _ = runtime.sleep(timeout).fuse() => return Err(NetworkError::Timeout(target)),
            },
        };
        if !self.current() || !self.network.passes(target, self.id) {
            return Err(NetworkError::Unreachable { peer: target, reason: "link cut".into() });
        }
        Ok(response)
    }
}
