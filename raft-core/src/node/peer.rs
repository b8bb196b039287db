//! One sender task per peer: runs RPCs to that peer concurrently (pipelining) and reports each
//! outcome to the main loop.

use std::collections::HashMap;
use std::task::Poll;

use async_channel::{Receiver, Sender};
use futures::channel::oneshot;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, Stream, StreamExt};

use super::quiet::QuietLog;
use super::Input;
use crate::engine::SentRequest;
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

/// The main loop's end of a peer's sender task: its request queue. Dropping it stops the task
/// at once, whatever its RPCs in flight are doing; the task then reports each of them, and each
/// request still queued, as failed, so that nothing in the engine waits for their answers.
pub(crate) struct PeerQueue {
    queue: Sender<RpcRequest>,
    /// Why the peer refused the latest RPC whose outcome the main loop saw, if it did.
    last_refusal: Option<RefusalReason>,
    /// Dropped with the queue: wakes the task even when its window is full.
    _stop: oneshot::Sender<()>,
}

impl PeerQueue {
    /// The queue and the sender task to spawn for `peer`, with at most `max_in_flight` RPCs
    /// in flight and as many queued.
    pub(crate) fn new<N: Network + Clone>(
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
        (Self { queue, last_refusal: None, _stop: stop_tx }, task)
    }

    /// The request queue (full: the peer is not answering).
    pub(crate) fn queue(&self) -> &Sender<RpcRequest> {
        &self.queue
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

impl Drop for PeerQueue {
    fn drop(&mut self) {
        self.queue.close();
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
