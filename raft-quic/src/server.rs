//! The inbound side: admits connections through the [`Gate`], binds each to the node id its
//! certificate proves (unless refused), and serves every bidirectional stream as one RPC in its
//! own task.

use std::sync::Arc;

use quinn::{Endpoint, RecvStream, SendStream};
use raft_core::{Envelope, NodeId};
use tracing::{debug, info};

use crate::accept::{Gate, Handshake};
use crate::frame::{self, FrameError, ReadFrameError};
use crate::identity::peer_node_id;
use crate::memory::{MemoryBudget, Reservation, ITEM_COST};
use crate::metrics::PeerCounters;
use crate::network::Shared;
use crate::offload::OFFLOAD_ABOVE;
use crate::timer::timeout;
use crate::wire::{code, Refusal, WireResponse};

/// Accepts connections until the endpoint is closed.
pub(crate) async fn accept_loop(endpoint: Endpoint, shared: Arc<Shared>, gate: Gate) {
    while let Some(incoming) = endpoint.accept().await {
        if let Some(handshake) = gate.admit(incoming) {
            let task = serve_connection(handshake, gate.clone(), Arc::clone(&shared));
            shared.runtime.spawn(Box::pin(task));
        }
    }
    debug!(node = shared.id, "endpoint closed: no longer accepting connections");
}

async fn serve_connection(handshake: Handshake, gate: Gate, shared: Arc<Shared>) {
    let remote = handshake.remote_address();
    // Peers without a certificate, with one from another CA or without the node role, and
    // peers of another wire version fail here (logged by the gate).
    let Some((conn, _slot)) = handshake.complete().await else { return };
    let peer = match peer_node_id(&conn) {
        Ok(peer) => peer,
        Err(e) => return gate.reject(&conn, code::BAD_IDENTITY, &e.to_string()),
    };
    if shared.is_refused(peer) {
        let reason = format!("node {peer} was removed from the cluster");
        return gate.reject(&conn, code::REMOVED_NODE, &reason);
    }
    // Registered before the second refusal check, so a concurrent `refuse` sees one or the
    // other.
    let registration = shared.inbound.register(peer, &conn);
    if shared.is_refused(peer) {
        let reason = format!("node {peer} was removed from the cluster");
        return gate.reject(&conn, code::REMOVED_NODE, &reason);
    }
    info!(node = shared.id, peer, %remote, "inbound connection authenticated");
    let budget = &registration.budget;
    let counters = PeerCounters::new(shared.id, peer);
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let budget = Arc::clone(budget);
                let task =
                    serve_stream(send, recv, peer, Arc::clone(&shared), budget, counters.clone());
                shared.runtime.spawn(Box::pin(task));
            }
            Err(e) => {
                debug!(node = shared.id, peer, "inbound connection ended: {e}");
                return;
            }
        }
    }
}

/// Why an inbound request was not read.
enum RequestError {
    Read(ReadFrameError),
    /// The sender header names another node than the connection's certificate.
    SenderMismatch(NodeId),
    /// The request's decoded elements do not fit the connection's memory budget.
    Busy,
}

impl From<ReadFrameError> for RequestError {
    fn from(e: ReadFrameError) -> Self {
        RequestError::Read(e)
    }
}

/// Reads one request from `peer`: the headers first (the claimed sender is checked before the
/// body is read), then the body within the connection's memory budget. Returns the request and
/// the memory it holds, to be released once it is answered.
async fn read_request(
    recv: &mut RecvStream,
    peer: NodeId,
    shared: &Shared,
    budget: &Arc<MemoryBudget>,
    counters: &PeerCounters,
) -> Result<(Envelope, Reservation), RequestError> {
    let limits = &shared.limits;
    let len = frame::read_header(recv, limits.max_frame_size).await?;
    counters.received_bytes.increment((frame::HEADER_LEN + len) as u64);
    let (sender, body_len) = frame::read_sender(recv, len).await?;
    if sender != peer {
        return Err(RequestError::SenderMismatch(sender));
    }
    let reservation = if body_len > limits.priority_frame_threshold {
        budget.take(body_len as u64).await
    } else {
        Reservation::empty(budget)
    };
    let body = frame::read_body(recv, body_len).await?;
    let decode_limits = limits.decode;
    let decode = move || {
        let on_item = || reservation.try_grow(ITEM_COST);
        let decoded = frame::request_body(sender, &body, decode_limits, &on_item);
        (decoded, reservation)
    };
    let (decoded, reservation) = if body_len > OFFLOAD_ABOVE {
        match shared.offload.run(decode).await {
            Some(done) => done,
            // Only if the helper thread died; nothing can be decoded there any more.
            None => return Err(RequestError::Busy),
        }
    } else {
        decode()
    };
    match decoded {
        Ok(request) => Ok((request, reservation)),
        Err(FrameError::Busy) => Err(RequestError::Busy),
        Err(e) => Err(RequestError::Read(e.into())),
    }
}

/// Serves one RPC: reads the request frame, answers it, closes the stream. A bad frame closes
/// this stream only, with a logged reason; the connection and every other stream carry on.
async fn serve_stream(
    mut send: SendStream,
    mut recv: RecvStream,
    peer: NodeId,
    shared: Arc<Shared>,
    budget: Arc<MemoryBudget>,
    counters: PeerCounters,
) {
    let limits = &shared.limits;
    let read = read_request(&mut recv, peer, &shared, &budget, &counters);
    let reject = |recv: &mut RecvStream, send: &mut SendStream, code| {
        let _ = recv.stop(code);
        let _ = send.reset(code);
    };
    let (response, held) = match timeout(&*shared.runtime, limits.rpc_timeout, read).await {
        Ok(Ok((request, held))) => {
            drop(recv);
            (respond(&shared, peer, request).await, held)
        }
        Ok(Err(RequestError::Read(ReadFrameError::Frame(e)))) => {
            counters.bad_requests.increment(1);
            shared
                .inbound
                .warn(peer, format_args!("closing stream {}: bad request: {e}", recv.id()));
            return reject(&mut recv, &mut send, e.code());
        }
        Ok(Err(RequestError::Read(ReadFrameError::Stream(e)))) => {
            debug!(node = shared.id, peer, "request stream failed: {e}");
            return;
        }
        Ok(Err(RequestError::SenderMismatch(claimed))) => {
            counters.bad_requests.increment(1);
            shared.inbound.warn(
                peer,
                format_args!(
                    "refusing request: it claims sender {claimed}, not the certificate's identity"
                ),
            );
            let _ = recv.stop(code::SENDER_MISMATCH);
            let refusal = Refusal::SenderMismatch { claimed, authenticated: peer };
            (WireResponse::Refused(refusal), Reservation::empty(&budget))
        }
        Ok(Err(RequestError::Busy)) => {
            debug!(node = shared.id, peer, "refusing request: connection memory budget exhausted");
            return reject(&mut recv, &mut send, code::BUSY);
        }
        Err(_) => {
            counters.bad_requests.increment(1);
            let timeout = limits.rpc_timeout;
            shared
                .inbound
                .warn(peer, format_args!("closing stream: no request within {timeout:?}"));
            return reject(&mut recv, &mut send, code::TIMEOUT);
        }
    };
    drop(held);
    let frame = match frame::encode(&response, limits.max_frame_size) {
        Ok(frame) => frame,
        Err(e) => {
            shared.inbound.warn(peer, format_args!("cannot send response: {e}"));
            let _ = send.reset(e.code());
            return;
        }
    };
    let frame_len = frame.len() as u64;
    match timeout(&*shared.runtime, limits.rpc_timeout, send.write_chunk(frame)).await {
        Ok(Ok(())) => {
            counters.sent_bytes.increment(frame_len);
            // Fails only if the peer already reset the stream; nothing is left to do then.
            let _ = send.finish();
        }
        Ok(Err(e)) => debug!(node = shared.id, peer, "cannot write response: {e}"),
        Err(_) => {
            debug!(node = shared.id, peer, "response not accepted within the RPC timeout");
            let _ = send.reset(code::TIMEOUT);
        }
    }
}

/// Checks that the sender is still welcome and hands the request to the handler. (The claimed
/// sender was checked against the connection's identity, from the header and from the body.)
async fn respond(shared: &Shared, peer: NodeId, request: Envelope) -> WireResponse {
    if shared.is_refused(peer) {
        return WireResponse::Refused(Refusal::RemovedNode(peer));
    }
    let Some(handler) = shared.handler() else {
        debug!(
            node = shared.id,
            peer,
            kind = request.request.kind(),
            "refusing request: no handler yet"
        );
        return WireResponse::Refused(Refusal::NotServing);
    };
    match handler.handle_rpc(request).await {
        Ok(response) => WireResponse::Ok(response),
        Err(e) => WireResponse::Refused(Refusal::Handler(e)),
    }
}
