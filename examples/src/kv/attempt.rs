//! The client's attempt loop ([`run`]): one operation sent until a node applies it or its
//! deadline passes, with hedging, redirects and back-off, generic over the transport
//! ([`ClientTransport`]: one request to one node) and the [`Clock`]. Production runs it over
//! QUIC ([`Connections`](super::connections::Connections)) on tokio; the simulation
//! (`examples/tests/kv_sim.rs`) runs the same loop over in-process nodes in virtual time.
//!
//! [`Routing`] is what a client process believes about the cluster: the nodes it knows, the
//! node it believes leads, and the nodes that recently failed to answer (avoided for a while).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use raft_core::{GroupId, NodeId};
use tracing::debug;

use super::client::ClientError;
use super::clock::Clock;
use super::command::{Command, Response, SessionId};
use super::connections::{CallError, ClientOptions, TlsFailure};
use super::protocol::{ClientRequest, ClientResponse, Member};
use super::shard::MAX_GROUPS;

/// One request to one node: what the attempt loop needs of a transport.
pub trait ClientTransport: Send + Sync + 'static {
    /// Sends `request` to `node` and waits for its answer, bounded by the transport (the
    /// client's attempt timeout). Nothing is sent before the future is first polled.
    fn send(
        &self,
        node: NodeId,
        request: Arc<ClientRequest>,
    ) -> BoxFuture<'static, Result<ClientResponse, CallError>>;

    /// What the client believes about the cluster, shared by every session on this transport.
    fn routing(&self) -> &Routing;

    /// The client's timeouts and pacing.
    fn options(&self) -> &ClientOptions;

    /// A fresh session id: 128 bits nobody can guess (from the operating system's random
    /// source; a simulation draws them from its seed to stay replayable).
    fn session_id(&self) -> Result<SessionId, ClientError> {
        use ring::rand::SecureRandom;
        let mut bytes = [0u8; 16];
        ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| ClientError::NoRandomness)?;
        Ok(SessionId::from_le_bytes(bytes))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The nodes a client knows (with their client addresses), the ones it believes lead (one per
/// Raft group of a sharded service), the number of groups, and the nodes it suspects of being
/// down (until an instant of the client's clock).
#[derive(Debug)]
pub struct Routing {
    addrs: Mutex<BTreeMap<NodeId, SocketAddr>>,
    leaders: Mutex<BTreeMap<GroupId, NodeId>>,
    groups: AtomicU32,
    suspects: Mutex<BTreeMap<NodeId, Duration>>,
    suspect_for: Duration,
}

impl Routing {
    /// Knows the nodes of `addrs`, no leader yet; a node that fails to answer is avoided for
    /// `suspect_for`.
    pub fn new(addrs: BTreeMap<NodeId, SocketAddr>, suspect_for: Duration) -> Self {
        Self {
            addrs: Mutex::new(addrs),
            leaders: Mutex::new(BTreeMap::new()),
            groups: AtomicU32::new(1),
            suspects: Mutex::new(BTreeMap::new()),
            suspect_for,
        }
    }

    /// The known nodes, in id order.
    pub fn nodes(&self) -> Vec<NodeId> {
        lock(&self.addrs).keys().copied().collect()
    }

    /// The client address of `node`, if known.
    pub fn address(&self, node: NodeId) -> Option<SocketAddr> {
        lock(&self.addrs).get(&node).copied()
    }

    /// Records the address of a member this client does not know yet (learned from a
    /// redirect or a status answer). A known member's address is never replaced: a node
    /// (trusted by Raft, but its key may leak) cannot steer this client away from the others.
    pub fn learn(&self, member: &Member) {
        lock(&self.addrs).entry(member.id).or_insert(member.client_addr);
    }

    /// The node believed to lead (group 0 of a sharded service), if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader_of(0)
    }

    /// Records the node believed to lead (group 0 of a sharded service; `None`: unknown); it
    /// is no longer suspect.
    pub fn set_leader(&self, leader: Option<NodeId>) {
        self.set_leader_of(0, leader);
    }

    /// The node believed to lead group `group`, if any.
    pub fn leader_of(&self, group: GroupId) -> Option<NodeId> {
        lock(&self.leaders).get(&group).copied()
    }

    /// Records the node believed to lead group `group` (`None`: unknown); it is no longer
    /// suspect.
    pub fn set_leader_of(&self, group: GroupId, leader: Option<NodeId>) {
        let mut leaders = lock(&self.leaders);
        match leader {
            Some(id) => {
                leaders.insert(group, id);
                lock(&self.suspects).remove(&id);
            }
            None => {
                leaders.remove(&group);
            }
        }
    }

    /// How many Raft groups the service shards its keys over, as far as this client knows
    /// (1 until a node said otherwise with [`ClientResponse::Sharded`]).
    pub fn groups(&self) -> u32 {
        self.groups.load(Ordering::Relaxed)
    }

    /// Records the number of groups a node said the service has (at most
    /// [`MAX_GROUPS`]; a larger number is taken as that bound, 0 as 1).
    pub fn set_groups(&self, groups: u32) {
        self.groups.store(groups.clamp(1, MAX_GROUPS), Ordering::Relaxed);
    }

    /// Marks `node` as not answering at `now`: [`Routing::pick`] avoids it for a while, and it
    /// is no longer believed to lead any group.
    pub fn suspect(&self, node: NodeId, now: Duration) {
        lock(&self.suspects).insert(node, now + self.suspect_for);
        lock(&self.leaders).retain(|_, leader| *leader != node);
    }

    /// Whether `node` is suspected of being down at `now`.
    pub fn is_suspect(&self, node: NodeId, now: Duration) -> bool {
        let mut suspects = lock(&self.suspects);
        match suspects.get(&node) {
            Some(&until) if until > now => true,
            Some(_) => {
                suspects.remove(&node);
                false
            }
            None => false,
        }
    }

    /// A node to try after `previous`: the next one in id order that is not suspect (or simply
    /// the next one if every node is suspect).
    pub fn pick(&self, previous: Option<NodeId>, now: Duration) -> Option<NodeId> {
        let rotated = rotate(&self.nodes(), previous);
        rotated.iter().copied().find(|&n| !self.is_suspect(n, now)).or(rotated.first().copied())
    }
}

/// `nodes` in id order starting after `previous` (from the first if `previous` is unknown).
fn rotate(nodes: &[NodeId], previous: Option<NodeId>) -> Vec<NodeId> {
    let start = previous.and_then(|p| nodes.iter().position(|&n| n == p)).map_or(0, |i| i + 1);
    nodes.iter().cycle().skip(start).take(nodes.len()).copied().collect()
}

/// The TLS failures of one operation, by node: once every known node failed TLS, the
/// operation fails at once (no retry can help).
#[derive(Default)]
pub(crate) struct TlsFailures(BTreeMap<NodeId, TlsFailure>);

impl TlsFailures {
    /// Records `node`'s failure; the error to fail with if every known node has failed.
    pub(crate) fn record(
        &mut self,
        routing: &Routing,
        node: NodeId,
        failure: TlsFailure,
    ) -> Option<ClientError> {
        self.0.insert(node, failure);
        let all = routing.nodes().iter().all(|n| self.0.contains_key(n));
        let (&node, failure) = self.0.iter().next()?;
        all.then(|| ClientError::Tls { node, failure: failure.clone() })
    }

    fn contains(&self, node: NodeId) -> bool {
        self.0.contains_key(&node)
    }
}

/// Sends `command` of Raft group `group` (0 for a single-group service; see
/// [`group_of`](super::shard::group_of)) until a node applies it or the deadline passes,
/// following redirects, to the node believed to lead that group. A single-group client sends
/// [`ClientRequest::Command`], a sharded one [`ClientRequest::InGroup`]. A node that answers
/// [`ClientResponse::Sharded`] (the client's number of groups was wrong) ends the operation with
/// [`ClientError::WrongGroup`] (nothing applied), having recorded the number it gave.
///
/// Normally one attempt, at the node believed to lead. Once an answer is late
/// (`hedge_after`), another node is tried with the same request every `probe_interval`, so
/// that a dead leader is routed around as soon as another node has taken over; the session
/// makes the copies harmless (a read is harmless anyway). A follower answers such a probe
/// with a redirect at once, so probing costs little.
pub async fn run<T: ClientTransport>(
    transport: &T,
    clock: &dyn Clock,
    group: GroupId,
    command: &Command,
) -> Result<Response, ClientError> {
    let routing = transport.routing();
    let options = transport.options().clone();
    let deadline = clock.now() + options.op_timeout;
    let request = if group == 0 && routing.groups() <= 1 {
        ClientRequest::Command(command.clone())
    } else {
        ClientRequest::InGroup { group, command: command.clone() }
    };
    let request = Arc::new(request);
    let mut attempts = Attempts { request, running: FuturesUnordered::new(), nodes: Vec::new() };
    // Only a write can have been applied (a session registration is a write too).
    let is_write = !command.op.is_read();
    let mut maybe_applied = false;
    let mut last_reason = String::from("no answer yet");
    let mut tls = TlsFailures::default();
    let mut redirects = 0u32;
    let first = routing.leader_of(group).or_else(|| routing.pick(None, clock.now()));
    match first {
        Some(node) => attempts.launch(transport, clock, node, None),
        None => return Err(ClientError::Protocol("no nodes configured".into())),
    }
    let mut next_hedge = clock.now() + options.hedge_after;
    loop {
        let now = clock.now();
        let hedge = clock.sleep(next_hedge.saturating_sub(now)).fuse();
        let expired = clock.sleep(deadline.saturating_sub(now)).fuse();
        futures::pin_mut!(hedge, expired);
        let (node, result) = futures::select_biased! {
            done = attempts.next().fuse() => done,
            () = hedge => {
                next_hedge = clock.now() + options.probe_interval;
                if attempts.len() < 3 {
                    if let Some(other) = attempts.pick_idle(routing, None, clock.now()) {
                        attempts.launch(transport, clock, other, None);
                    }
                }
                continue;
            }
            () = expired => {
                // An attempt still in flight may have reached a node.
                let maybe_applied = is_write && (maybe_applied || attempts.len() > 0);
                return Err(ClientError::Timeout { maybe_applied, reason: last_reason });
            }
        };
        // Where to go next, and after what pause, if nothing else is in flight.
        let mut next: Option<(Option<NodeId>, bool)> = Some((None, true));
        match result {
            Ok(ClientResponse::Applied(response)) => {
                routing.set_leader_of(group, Some(node));
                return Ok(response);
            }
            Ok(ClientResponse::Sharded { groups }) => {
                routing.set_groups(groups);
                return Err(ClientError::WrongGroup { groups });
            }
            Ok(ClientResponse::NotLeader { leader: Some(leader) })
                if leader.id != node && !routing.is_suspect(leader.id, clock.now()) =>
            {
                routing.learn(&leader);
                routing.set_leader_of(group, Some(leader.id));
                if attempts.is_in_flight(leader.id) {
                    next = None;
                } else {
                    redirects += 1;
                    // Nodes that disagree about the leader (an election settling) slow us.
                    next = Some((Some(leader.id), redirects.is_multiple_of(4)));
                }
            }
            Ok(ClientResponse::NotLeader { .. }) => {
                last_reason = format!("node {node} knows no leader");
                routing.set_leader_of(group, None);
            }
            Ok(ClientResponse::NotApplied(reason)) => {
                debug!(node, "not applied: {reason}");
                last_reason = format!("node {node}: {reason}");
            }
            Ok(ClientResponse::Unknown(reason)) => {
                debug!(node, "outcome unknown: {reason}");
                last_reason = format!("node {node}: {reason}");
                maybe_applied = true;
                routing.set_leader_of(group, None);
            }
            Ok(ClientResponse::Refused(reason)) => return Err(ClientError::Refused(reason)),
            Ok(ClientResponse::Forbidden(reason)) => return Err(ClientError::Forbidden(reason)),
            Ok(other) => return Err(ClientError::Protocol(format!("unexpected {other:?}"))),
            Err(CallError::Tls { node, failure }) => {
                debug!(node, "TLS failed: {failure}");
                last_reason = failure.to_string();
                routing.suspect(node, clock.now());
                if let Some(error) = tls.record(routing, node, failure) {
                    return Err(error);
                }
                next = Some((None, false));
            }
            Err(e) => {
                debug!(node, "attempt failed: {e}");
                last_reason = e.to_string();
                maybe_applied |= e.maybe_sent();
                if !matches!(e, CallError::UnknownNode(_)) {
                    routing.suspect(node, clock.now());
                }
                next = Some((None, false));
            }
        }
        match next {
            Some((Some(target), pause)) => {
                let delay = pause.then_some(options.retry_delay);
                attempts.launch(transport, clock, target, delay);
            }
            Some((None, pause)) if attempts.len() == 0 => {
                let now = clock.now();
                let target = routing
                    .leader_of(group)
                    .filter(|&l| l != node && !tls.contains(l))
                    .or_else(|| {
                        attempts.pick_idle(routing, Some(node), now).filter(|&n| !tls.contains(n))
                    })
                    .or_else(|| routing.pick(Some(node), now));
                if let Some(target) = target {
                    // A suspect target means every node failed lately: pause rather than spin
                    // through nodes that fail at once (cached connection failures).
                    let pause = pause || routing.is_suspect(target, now);
                    let delay = pause.then_some(options.retry_delay);
                    attempts.launch(transport, clock, target, delay);
                }
            }
            _ => {}
        }
    }
}

type AttemptFuture = BoxFuture<'static, (NodeId, Result<ClientResponse, CallError>)>;

/// The attempts of one operation in flight, by node.
struct Attempts {
    request: Arc<ClientRequest>,
    running: FuturesUnordered<AttemptFuture>,
    nodes: Vec<NodeId>,
}

impl Attempts {
    fn len(&self) -> usize {
        self.nodes.len()
    }

    fn is_in_flight(&self, node: NodeId) -> bool {
        self.nodes.contains(&node)
    }

    /// A node with no attempt in flight, not suspect if possible, after `after` in id order.
    fn pick_idle(&self, routing: &Routing, after: Option<NodeId>, now: Duration) -> Option<NodeId> {
        let idle: Vec<NodeId> = rotate(&routing.nodes(), after)
            .into_iter()
            .filter(|n| !self.is_in_flight(*n))
            .collect();
        idle.iter().copied().find(|&n| !routing.is_suspect(n, now)).or(idle.first().copied())
    }

    fn launch<T: ClientTransport>(
        &mut self,
        transport: &T,
        clock: &dyn Clock,
        node: NodeId,
        delay: Option<Duration>,
    ) {
        let pause = delay.map(|d| clock.sleep(d));
        let call = transport.send(node, self.request.clone());
        self.nodes.push(node);
        self.running.push(
            async move {
                if let Some(pause) = pause {
                    pause.await;
                }
                (node, call.await)
            }
            .boxed(),
        );
    }

    /// The next attempt to finish (never, while none is in flight).
    async fn next(&mut self) -> (NodeId, Result<ClientResponse, CallError>) {
        let Some((node, result)) = self.running.next().await else {
            return futures::future::pending().await;
        };
        if let Some(i) = self.nodes.iter().position(|&n| n == node) {
            self.nodes.swap_remove(i);
        }
        (node, result)
    }
}
