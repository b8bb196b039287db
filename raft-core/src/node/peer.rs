//! One sender per peer: runs RPCs to that peer concurrently (pipelining) and reports each
//! outcome to the main loop. The sender is a task of its own, or, in a hosted node (run by a
//! host loop, plan S3b-lite), a future the host loop polls in the group's turn
//! ([`InlineSenders`]): the same future either way, with the same window and the same report
//! of abandoned RPCs; a hosted node sends InstallSnapshot through a sender task of its own
//! ([`PeerQueue`]).

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::task::{Context, Poll};

use async_channel::{Receiver, Sender};
use futures::channel::oneshot;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, Stream, StreamExt};

use super::quiet::QuietLog;
use super::Input;
use crate::engine::SentRequest;
use crate::error::FatalError;
use crate::message::{Envelope, RpcRequest, RpcResponse};
use crate::metrics::{rpc_kind_name, PeerMetrics};
use crate::network::{Network, NetworkError, RefusalReason, RpcError};
use crate::types::{ClusterId, GroupId, NodeId};

/// What a node writes on the envelope of every request it sends, besides the receiver, and
/// what it requires on every request it receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Address {
    pub(crate) cluster_id: ClusterId,
    pub(crate) group_id: GroupId,
}

impl Address {
    /// The envelope of `request` for `receiver`.
    fn envelope(self, receiver: NodeId, request: RpcRequest) -> Envelope {
        Envelope::new(receiver, request)
            .with_cluster_id(self.cluster_id)
            .with_group_id(self.group_id)
    }

    /// Whether node `id` of this cluster and group may handle `envelope`: the cluster first
    /// (a node of another cluster may well have the same id), then the group, then the node.
    pub(crate) fn accepts(self, id: NodeId, envelope: &Envelope) -> Result<(), RpcError> {
        if envelope.cluster_id != self.cluster_id {
            return Err(RpcError::WrongCluster {
                sender_cluster: envelope.cluster_id,
                receiver_cluster: self.cluster_id,
            });
        }
        if envelope.group_id != self.group_id {
            return Err(RpcError::WrongGroup {
                sender_group: envelope.group_id,
                receiver_group: self.group_id,
            });
        }
        if envelope.receiver != id {
            return Err(RpcError::WrongNode { expected: envelope.receiver, actual: id });
        }
        Ok(())
    }
}

/// One request queue of a peer's sender: dropping it stops the sender at once, whatever its
/// RPCs in flight are doing; the sender then reports each of them, and each request still
/// queued, as failed, so that nothing in the engine waits for their answers.
struct Lane {
    queue: Sender<RpcRequest>,
    /// Dropped with the queue: wakes the sender even when its window is full.
    _stop: oneshot::Sender<()>,
}

impl Lane {
    /// The queue and the sender (its future, to spawn or to poll) for `peer`, with at most
    /// `max_in_flight` RPCs in flight and as many queued.
    fn new<N: Network + Clone>(
        peer: NodeId,
        address: Address,
        network: N,
        inputs: Sender<Input>,
        max_in_flight: usize,
        metrics: PeerMetrics,
    ) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let (queue, requests) = async_channel::bounded(max_in_flight);
        let (stop_tx, stop) = oneshot::channel();
        let task = run(peer, address, network, requests, stop, inputs, max_in_flight, metrics);
        (Self { queue, _stop: stop_tx }, task)
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        self.queue.close();
    }
}

/// The main loop's end of a peer's sender: its request queue. Dropping it stops the sender at
/// once, whatever its RPCs in flight are doing; the sender then reports each of them, and each
/// request still queued, as failed, so that nothing in the engine waits for their answers.
///
/// In a hosted node (run by a host loop) the sender is a future the host loop polls in the
/// group's turn ([`InlineSenders`]), not a task; InstallSnapshot requests, whose chunks are
/// read from the snapshot store inside the send, go through a second queue to a sender task
/// of their own, spawned when the first one is sent ([`PeerQueue::snapshots`]). Each queue's
/// sender keeps at most `max_in_flight` RPCs in flight and as many queued: a hosted node has
/// at most `2 x max_in_flight` RPCs in flight to one peer (a node run by its own task
/// `max_in_flight`).
pub(crate) struct PeerQueue {
    lane: Lane,
    /// Hosted node: the queue of the InstallSnapshot sender task, once one was sent.
    snapshots: Option<Lane>,
    /// Why the peer refused the latest RPC whose outcome the main loop saw, if it did.
    last_refusal: Option<RefusalReason>,
}

impl PeerQueue {
    /// The queue and the sender (a future, to spawn as a task or to poll inline) for `peer`,
    /// with at most `max_in_flight` RPCs in flight and as many queued.
    pub(crate) fn new<N: Network + Clone>(
        peer: NodeId,
        address: Address,
        network: N,
        inputs: Sender<Input>,
        max_in_flight: usize,
        metrics: PeerMetrics,
    ) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let (lane, task) = Lane::new(peer, address, network, inputs, max_in_flight, metrics);
        (Self { lane, snapshots: None, last_refusal: None }, task)
    }

    /// The request queue (full: the peer is not answering).
    pub(crate) fn queue(&self) -> &Sender<RpcRequest> {
        &self.lane.queue
    }

    /// Hosted node: the queue of the peer's InstallSnapshot sender task, started by `start`
    /// (a [`PeerQueue`] whose sender it spawned) the first time.
    pub(crate) fn snapshots(&mut self, start: impl FnOnce() -> PeerQueue) -> &Sender<RpcRequest> {
        &self.snapshots.get_or_insert_with(|| start().lane).queue
    }

    /// Notes the outcome of an RPC to the peer: the refusal if the peer refused it (its node
    /// refused the envelope: `RpcError::WrongCluster`, ...), else none.
    pub(crate) fn outcome(&mut self, result: &Result<RpcResponse, NetworkError>) {
        self.last_refusal = match result {
            Err(NetworkError::Refused { reason, .. }) => Some(reason.clone()),
            _ => None,
        };
    }

    /// Why the peer refused the latest RPC to it, if it did.
    pub(crate) fn last_refusal(&self) -> Option<RefusalReason> {
        self.last_refusal.clone()
    }
}

/// The senders of a hosted node's peers, as futures its host loop polls in the group's turn
/// with the group's waker ([`InlineSenders::poll`]), instead of a task per peer. A sender
/// whose [`PeerQueue`] is dropped while the node runs (the peer left) is polled on until it
/// has reported its abandoned RPCs, as a task would; all of them are dropped with the node's
/// main loop (the node stopped, or its host loop is gone).
#[derive(Default)]
pub(crate) struct InlineSenders {
    senders: Vec<(NodeId, BoxFuture<'static, ()>)>,
}

impl InlineSenders {
    /// Keeps `sender`, the sender future of `peer`, to poll.
    pub(crate) fn push(&mut self, peer: NodeId, sender: BoxFuture<'static, ()>) {
        self.senders.push((peer, sender));
    }

    /// Polls every sender with `cx`, each under `catch_unwind`, and drops the ones that ended.
    /// A sender that panics is dropped too (a panic of its drop is caught, and its payload
    /// leaked); returns the failure of each one that panicked, for the node to stop as when a
    /// task of it panics (`FatalError::Panicked` with task "sender to peer N").
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Vec<FatalError> {
        let mut failed = Vec::new();
        let mut i = 0;
        while i < self.senders.len() {
            let sender = &mut self.senders[i].1;
            let polled = catch_unwind(AssertUnwindSafe(|| sender.as_mut().poll(cx)));
            let message = match polled {
                Ok(Poll::Pending) => {
                    i += 1;
                    continue;
                }
                Ok(Poll::Ready(())) => None,
                Err(payload) => {
                    let message = super::panic_message(payload.as_ref());
                    super::Hosted::drop_payload(payload);
                    Some(message)
                }
            };
            let (peer, sender) = self.senders.swap_remove(i);
            drop_sender(peer, sender);
            if let Some(message) = message {
                failed
                    .push(FatalError::Panicked { task: format!("sender to peer {peer}"), message });
            }
        }
        failed
    }
}

/// The senders go with the node's main loop (its stop, a panic, the host loop's task dropped):
/// each is dropped under `catch_unwind`, as its own task would drop it, so that a user's
/// network future whose drop panics cannot unwind into the host loop (which would drop every
/// group of the host) nor change how the node ended.
impl Drop for InlineSenders {
    fn drop(&mut self) {
        for (peer, sender) in self.senders.drain(..) {
            drop_sender(peer, sender);
        }
    }
}

/// Drops `sender`, the sender future of `peer`, under `catch_unwind`: a panic of its drop (a
/// user's network future) is logged and its payload leaked, as [`super::Hosted::drop_payload`]
/// does.
fn drop_sender(peer: NodeId, sender: BoxFuture<'static, ()>) {
    if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(sender))) {
        tracing::error!(peer, "dropping a sender to a peer panicked: its payload is leaked");
        std::mem::forget(again);
    }
}

enum Event {
    Done((u64, Result<RpcResponse, NetworkError>)),
    Request(RpcRequest),
    Closed,
}

/// Runs until the main loop drops its [`PeerQueue`] or stops listening.
#[allow(clippy::too_many_arguments)]
async fn run<N: Network + Clone>(
    peer: NodeId,
    address: Address,
    network: N,
    requests: Receiver<RpcRequest>,
    mut stop: oneshot::Receiver<()>,
    inputs: Sender<Input>,
    max_in_flight: usize,
    metrics: PeerMetrics,
) {
    let mut in_flight = FuturesUnordered::new();
    // What was sent, and when (the runtime's clock), by request id.
    let mut sent: HashMap<u64, (SentRequest, std::time::Duration)> = HashMap::new();
    let mut next_id = 0u64;
    // Refusals by the peer (its node refused the envelope, or it is shutting down), by kind.
    let mut refusals = QuietLog::default();
    let mut requests = std::pin::pin!(requests);
    loop {
        let event = futures::future::poll_fn(|cx| {
            // Checked first: a full window must not hide the stop.
            if stop.poll_unpin(cx).is_ready() {
                return Poll::Ready(Event::Closed);
            }
            if let Poll::Ready(Some(done)) = in_flight.poll_next_unpin(cx) {
                return Poll::Ready(Event::Done(done));
            }
            if in_flight.len() < max_in_flight {
                match requests.as_mut().poll_next(cx) {
                    Poll::Ready(Some(request)) => return Poll::Ready(Event::Request(request)),
                    Poll::Ready(None) => return Poll::Ready(Event::Closed),
                    Poll::Pending => {}
                }
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Done((id, result)) => {
                let Some((sent, started)) = sent.remove(&id) else { continue };
                metrics.done(&sent, started, &result);
                if let Err(error @ NetworkError::Refused { .. }) = &result {
                    let kind = rpc_kind_name(&sent);
                    if let Some(suppressed) = refusals.record(kind, metrics.now()) {
                        tracing::warn!(peer, kind, suppressed, "{error}");
                    }
                }
                if inputs.send(Input::Response { from: peer, sent, result }).await.is_err() {
                    return;
                }
            }
            Event::Request(request) => {
                let network = network.clone();
                let id = next_id;
                next_id += 1;
                let summary = SentRequest::of(&request);
                let payload = match &request {
                    RpcRequest::AppendEntries(r) => r.entries.iter().map(|e| e.size_bytes()).sum(),
                    _ => 0,
                };
                metrics.sending(&summary, payload);
                sent.insert(id, (summary, metrics.now()));
                let envelope = address.envelope(peer, request);
                in_flight.push(async move { (id, network.send(envelope).await) });
            }
            Event::Closed => break,
        }
    }
    // Abandon the RPCs in flight (their answers no longer arrive) and the queued requests:
    // report them failed. Once the whole node stops, the inputs are closed and this ends at once.
    drop(in_flight);
    let queued = std::iter::from_fn(|| requests.try_recv().ok()).map(|r| SentRequest::of(&r));
    let abandoned: Vec<SentRequest> = sent.into_values().map(|(s, _)| s).chain(queued).collect();
    for sent in abandoned {
        let result = Err(NetworkError::Unreachable {
            peer,
            reason: "no longer talking to this peer".into(),
        });
        if inputs.send(Input::Response { from: peer, sent, result }).await.is_err() {
            return;
        }
    }
}
