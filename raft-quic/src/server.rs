//! The inbound side: admits connections through the [`Gate`], binds each to the node id its
//! certificate proves (unless refused), and serves every bidirectional stream as one RPC in its
//! own task.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::stream::{FuturesUnordered, StreamExt};
use quinn::{Endpoint, RecvStream, SendStream};
use raft_core::{Envelope, NodeId};
use tracing::{debug, info};

use crate::accept::{Gate, Handshake};
use crate::frame::{self, FrameError, FrameKind, ReadFrameError};
use crate::identity::peer_node_id;
use crate::memory::{MemoryBudget, Reservation, ITEM_COST, REQUEST_COST};
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

/// Why an inbound request (or batch) was not read.
enum RequestError {
    Read(ReadFrameError),
    /// The sender header names another node than the connection's certificate.
    SenderMismatch(NodeId),
    /// The request (its fixed cost and its decoded elements) does not fit the peer's memory
    /// budget.
    Busy,
}

impl From<ReadFrameError> for RequestError {
    fn from(e: ReadFrameError) -> Self {
        RequestError::Read(e)
    }
}

/// What a stream brought: one request, or a batch of them, each one decoded or refused alone
/// (the sender it claims is not the certificate's, its body does not decode, it does not fit
/// the memory budget); with the memory they hold, released once they are answered.
enum Inbound {
    Lone(Envelope),
    Batch(Vec<Result<Envelope, Refusal>>),
}

/// How far the reading of a stream got, for [`serve_stream`] to say why it was refused if it
/// was (the reading future is dropped then: this outlives it).
#[derive(Debug, Default)]
struct Progress {
    /// The header's kind byte announced a batch (even if the rest of the header is refused):
    /// a refusal of the frame is a bad batch.
    batch: bool,
    /// The reader waits for this node (room in the peer's memory budget, the decoding thread),
    /// not for the peer's bytes: a timeout now is this node's doing, not the peer's.
    local: bool,
}

/// Waits for `wait`, a wait for this node (not for the peer), marked as such in `progress`.
async fn local<T>(progress: &mut Progress, wait: impl std::future::Future<Output = T>) -> T {
    progress.local = true;
    let done = wait.await;
    progress.local = false;
    done
}

/// Reads what a stream of `peer` brings: the frame header, then one request or a batch.
/// Records in `progress` whether the header announces a batch and whether it waits for this
/// node or for the peer. The frame's bytes are counted once it is read whole (whatever
/// becomes of it); the requests of a batch refused alone are counted (and logged) here, when
/// they are found, whatever becomes of their answers.
async fn read_inbound(
    recv: &mut RecvStream,
    peer: NodeId,
    shared: &Shared,
    budget: &Arc<MemoryBudget>,
    counters: &PeerCounters,
    progress: &mut Progress,
) -> Result<(Inbound, Reservation), RequestError> {
    let header = frame::read_raw_header(recv).await?;
    progress.batch = frame::announces_batch(&header);
    let (kind, len) = frame::decode_any_header(header, shared.limits.max_frame_size)
        .map_err(ReadFrameError::from)?;
    let reader = Reader { recv, len, peer, shared, budget, counters };
    match kind {
        FrameKind::Single => {
            let (request, held) = read_request(reader, progress).await?;
            Ok((Inbound::Lone(request), held))
        }
        FrameKind::Batch => {
            let (requests, held) = read_batch(reader, progress).await?;
            for refusal in requests.iter().filter_map(|request| request.as_ref().err()) {
                refused_alone(shared, peer, refusal, counters);
            }
            Ok((Inbound::Batch(requests), held))
        }
    }
}

/// What reading the rest of a frame of `peer` needs, once its header announced `len` bytes.
struct Reader<'a> {
    recv: &'a mut RecvStream,
    len: usize,
    peer: NodeId,
    shared: &'a Shared,
    budget: &'a Arc<MemoryBudget>,
    counters: &'a PeerCounters,
}

impl Reader<'_> {
    /// Reads the frame's last `body_len` bytes, and counts the frame's bytes: it is read whole.
    async fn read_body(&mut self, body_len: usize) -> Result<Vec<u8>, ReadFrameError> {
        let body = frame::read_body(self.recv, body_len).await?;
        self.counters.received_bytes.increment((frame::HEADER_LEN + self.len) as u64);
        Ok(body)
    }
}

/// Whether a frame body of `body_len` bytes is large: its bytes are taken from the budget
/// before it is read ([`reserve`]).
fn is_large(shared: &Shared, body_len: usize) -> bool {
    body_len > shared.limits.priority_frame_threshold
}

/// The bytes a frame body of `body_len` bytes takes from the budget before it is read, waiting
/// for room: those of a large one plus `fixed` (at most the whole budget), none for a small
/// one (not waited for). Every request is then charged its elements as it decodes, and
/// [`REQUEST_COST`] unless it was taken here (`fixed`, for a large lone request), or refused as
/// busy.
async fn reserve(
    shared: &Shared,
    budget: &Arc<MemoryBudget>,
    body_len: usize,
    fixed: u64,
) -> Reservation {
    if is_large(shared, body_len) {
        budget.take(body_len as u64 + fixed).await
    } else {
        Reservation::empty(budget)
    }
}

/// Runs `decode` on the helper thread if the body it decodes is large, here otherwise.
async fn decode_off<T: Send + 'static>(
    shared: &Shared,
    body_len: usize,
    decode: impl FnOnce() -> T + Send + 'static,
) -> Result<T, RequestError> {
    if body_len > OFFLOAD_ABOVE {
        // `None` only if the helper thread died; nothing can be decoded there any more.
        shared.offload.run(decode).await.ok_or(RequestError::Busy)
    } else {
        Ok(decode())
    }
}

fn decoded<T>(result: Result<T, FrameError>) -> Result<T, RequestError> {
    result.map_err(|e| match e {
        FrameError::Busy => RequestError::Busy,
        e => RequestError::Read(e.into()),
    })
}

/// Reads one request from `peer`, given the `len` its frame header announced: the sender
/// header first (checked before the body is read), then the body within the peer's memory
/// budget (its bytes if large, [`REQUEST_COST`], its elements). Returns the request and the
/// memory it holds, to be released once it is answered.
async fn read_request(
    mut reader: Reader<'_>,
    progress: &mut Progress,
) -> Result<(Envelope, Reservation), RequestError> {
    let (peer, shared) = (reader.peer, reader.shared);
    let (sender, body_len) = frame::read_sender(reader.recv, reader.len).await?;
    if sender != peer {
        return Err(RequestError::SenderMismatch(sender));
    }
    // A large request's fixed cost is taken with its bytes (so that one of the largest frame
    // with no elements fits a budget of `max_frame_size`), a small one's as it decodes.
    let large = is_large(shared, body_len);
    let reservation = local(progress, reserve(shared, reader.budget, body_len, REQUEST_COST)).await;
    let body = reader.read_body(body_len).await?;
    let decode_limits = shared.limits.decode;
    let decode = move || {
        let on_item = || reservation.try_grow(ITEM_COST);
        let decoded = if large || reservation.try_grow(REQUEST_COST) {
            frame::request_body(sender, &body, decode_limits, &on_item)
        } else {
            Err(FrameError::Busy)
        };
        (decoded, reservation)
    };
    let (request, reservation) = local(progress, decode_off(shared, body_len, decode)).await?;
    Ok((decoded(request)?, reservation))
}

/// Reads a batch of requests from `peer`, given the `len` its frame header announced: the
/// whole frame (within the memory budget, as a lone request's), then each request's sender
/// header and body. Once the frame's structure holds (its count, and each request frame's
/// header and length, fill it exactly), each request stands alone: one claiming another sender
/// than the connection's certificate (checked before its body is decoded), one whose body does
/// not decode or exceeds the decoding budget, and one that does not fit the memory budget
/// ([`REQUEST_COST`] and its elements, each request) is refused alone (`Err` of the refusal),
/// and the others are served. A broken structure refuses the whole batch.
async fn read_batch(
    mut reader: Reader<'_>,
    progress: &mut Progress,
) -> Result<(Vec<Result<Envelope, Refusal>>, Reservation), RequestError> {
    let (len, peer, shared) = (reader.len, reader.peer, reader.shared);
    let reservation = local(progress, reserve(shared, reader.budget, len, 0)).await;
    let body = reader.read_body(len).await?;
    let (max_frame_size, decode_limits) = (shared.limits.max_frame_size, shared.limits.decode);
    let decode = move || {
        let on_item = || reservation.try_grow(ITEM_COST);
        let decode_one = |(sender, body)| {
            if sender != peer {
                return Err(Refusal::SenderMismatch { claimed: sender, authenticated: peer });
            }
            if !reservation.try_grow(REQUEST_COST) {
                return Err(Refusal::Busy);
            }
            frame::request_body(sender, body, decode_limits, &on_item).map_err(|e| match e {
                FrameError::Busy => Refusal::Busy,
                e => Refusal::malformed(e),
            })
        };
        let decoded = frame::split_batch(&body, max_frame_size)
            .map(|requests| requests.into_iter().map(decode_one).collect::<Vec<_>>());
        (decoded, reservation)
    };
    let (requests, reservation) = local(progress, decode_off(shared, len, decode)).await?;
    Ok((decoded(requests)?, reservation))
}

/// Serves one stream: reads the request frame (or batch), answers it, closes the stream. A
/// bad frame closes this stream only, with a logged reason; the connection and every other
/// stream carry on. So does a frame whose bytes do not all come within the RPC timeout (a bad
/// one too); one that this node kept waiting that long itself (for room in the peer's memory
/// budget, or for the decoding thread) is refused as busy, as one the budget refuses at once:
/// neither counted nor logged as the peer's fault.
async fn serve_stream(
    mut send: SendStream,
    mut recv: RecvStream,
    peer: NodeId,
    shared: Arc<Shared>,
    budget: Arc<MemoryBudget>,
    counters: PeerCounters,
) {
    let limits = &shared.limits;
    let mut progress = Progress::default();
    let read = read_inbound(&mut recv, peer, &shared, &budget, &counters, &mut progress);
    let reject = |recv: &mut RecvStream, send: &mut SendStream, code| {
        let _ = recv.stop(code);
        let _ = send.reset(code);
    };
    let read = timeout(&*shared.runtime, limits.rpc_timeout, read).await;
    // A frame that announced a batch and was refused whole: counted once, here.
    let bad_batch = |progress: &Progress| {
        if progress.batch {
            shared.bad_batches.fetch_add(1, Ordering::Relaxed);
        }
    };
    let (response, held) = match read {
        Ok(Ok((Inbound::Lone(request), held))) => {
            drop(recv);
            // A peer that stopped waiting for the answer (its RPC timed out) stops the stream:
            // the handler is then dropped at once, so that the stream, which counts against the
            // connection's `max_concurrent_streams` until it ends, is not held for an answer
            // nobody reads (a group whose store stalls would otherwise keep its peers' streams).
            let stopped = send.stopped();
            let answered = respond(&shared, peer, request);
            match futures::future::select(Box::pin(answered), Box::pin(stopped)).await {
                futures::future::Either::Left((response, _)) => (response, held),
                futures::future::Either::Right(_) => {
                    debug!(node = shared.id, peer, "the peer stopped waiting: handler dropped");
                    let _ = send.reset(code::CANCELLED);
                    return;
                }
            }
        }
        Ok(Ok((Inbound::Batch(requests), held))) => {
            drop(recv);
            return serve_batch(send, requests, held, peer, &shared, &counters).await;
        }
        Ok(Err(RequestError::Read(ReadFrameError::Frame(e)))) => {
            bad_request(&shared, &counters);
            bad_batch(&progress);
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
            bad_request(&shared, &counters);
            refused_sender(&shared, peer, claimed);
            let _ = recv.stop(code::SENDER_MISMATCH);
            let refusal = Refusal::SenderMismatch { claimed, authenticated: peer };
            (WireResponse::Refused(refusal), Reservation::empty(&budget))
        }
        Ok(Err(RequestError::Busy)) => {
            debug!(node = shared.id, peer, "refusing request: connection memory budget exhausted");
            return reject(&mut recv, &mut send, code::BUSY);
        }
        Err(_) if progress.local => {
            // This node kept it waiting (for room in the peer's memory budget, or for the
            // decoding thread): refused as busy, as when the budget refuses it at once.
            let timeout = limits.rpc_timeout;
            debug!(node = shared.id, peer, "refusing request: no room for it within {timeout:?}");
            return reject(&mut recv, &mut send, code::BUSY);
        }
        Err(_) => {
            bad_request(&shared, &counters);
            bad_batch(&progress);
            let timeout = limits.rpc_timeout;
            shared
                .inbound
                .warn(peer, format_args!("closing stream: no request within {timeout:?}"));
            return reject(&mut recv, &mut send, code::TIMEOUT);
        }
    };
    drop(held);
    let frame = match frame::encode(&response, limits.max_response_frame_size) {
        Ok(frame) => frame,
        Err(e) => {
            shared.inbound.warn(peer, format_args!("cannot send response: {e}"));
            let _ = send.reset(e.code());
            return;
        }
    };
    let mut answer_time = AnswerTime::new(&shared);
    if write_answer(&mut send, frame, &mut answer_time, peer, &shared, &counters).await {
        // Fails only if the peer already reset the stream; nothing is left to do then.
        let _ = send.finish();
    }
}

/// Counts a bad request of `peer` (its metric and the network's total).
fn bad_request(shared: &Shared, counters: &PeerCounters) {
    counters.bad_requests.increment(1);
    shared.bad_requests.fetch_add(1, Ordering::Relaxed);
}

fn refused_sender(shared: &Shared, peer: NodeId, claimed: NodeId) {
    shared.inbound.warn(
        peer,
        format_args!(
            "refusing request: it claims sender {claimed}, not the certificate's identity"
        ),
    );
}

/// Logs why a request of a batch was refused alone (at most once per interval per peer), and
/// counts it as a bad request unless it was only refused as busy (as a lone request is).
fn refused_alone(shared: &Shared, peer: NodeId, refusal: &Refusal, counters: &PeerCounters) {
    if *refusal != Refusal::Busy {
        bad_request(shared, counters);
    }
    match refusal {
        Refusal::SenderMismatch { claimed, .. } => refused_sender(shared, peer, *claimed),
        Refusal::Busy => {
            debug!(node = shared.id, peer, "refusing a request of a batch: memory budget exhausted")
        }
        other => shared.inbound.warn(peer, format_args!("refusing a request of a batch: {other}")),
    }
}

/// The time the answers of one stream (a lone request's one, all of a batch's) may wait, in
/// all, for the peer to take them (to give the stream flow-control credit by reading it): one
/// RPC timeout per stream, not one per answer. Only the time of writes that did not complete
/// at once is charged: an answer that fits the peer's credit is written at once, whatever is
/// left. That time is the wall time of the pending write, so this node's own delays while it
/// is pending (a busy runtime, a process pause) are charged to the peer too: quinn does not
/// say when the credit came.
struct AnswerTime {
    left: std::time::Duration,
}

impl AnswerTime {
    fn new(shared: &Shared) -> Self {
        Self { left: shared.limits.rpc_timeout }
    }
}

/// Writes one answer frame on `send` within the time `answer_time` has left for the stream's
/// answers, and charges it the time the write waited; false if it could not be written: the
/// peer stopped the stream, or did not take the answer in time (then the stream is reset, and
/// counted and logged as an answer timeout).
async fn write_answer(
    send: &mut SendStream,
    frame: bytes::Bytes,
    answer_time: &mut AnswerTime,
    peer: NodeId,
    shared: &Shared,
    counters: &PeerCounters,
) -> bool {
    let frame_len = frame.len() as u64;
    let runtime = &*shared.runtime;
    let started = runtime.now();
    match timeout(runtime, answer_time.left, send.write_chunk(frame)).await {
        Ok(Ok(())) => {
            let waited = runtime.now().saturating_duration_since(started);
            answer_time.left = answer_time.left.saturating_sub(waited);
            counters.sent_bytes.increment(frame_len);
            true
        }
        Ok(Err(e)) => {
            debug!(node = shared.id, peer, "cannot write response: {e}");
            false
        }
        Err(_) => {
            counters.answer_timeouts.increment(1);
            shared.answer_timeouts.fetch_add(1, Ordering::Relaxed);
            let timeout = shared.limits.rpc_timeout;
            shared.inbound.warn(
                peer,
                format_args!(
                    "giving up a stream: its answers were not taken within {timeout:?} of \
                     waiting (wall time, this node's own delays included)"
                ),
            );
            let _ = send.reset(code::TIMEOUT);
            false
        }
    }
}

/// Answers the requests of a batch, each handled as a lone request would be and all at once:
/// each answer is written (with its position) as soon as its handler finishes, so a slow
/// handler holds up no other request's answer. A request refused when it was read (another
/// sender, undecodable, over budget) gets its refusal as its answer (it was counted and logged
/// then). The answers share one RPC timeout of waiting for the peer to take them
/// ([`AnswerTime`]): a peer that reads them slowly, or not at all, holds the stream, the
/// handlers and the batch's memory for at most that (plus the handlers' own time), not one
/// timeout per answer. If an answer cannot be written (the peer stopped the stream, or the
/// time is up: the stream is reset), the stream is given up, the handlers still running are
/// dropped and the batch's memory is released.
async fn serve_batch(
    mut send: SendStream,
    requests: Vec<Result<Envelope, Refusal>>,
    held: Reservation,
    peer: NodeId,
    shared: &Shared,
    counters: &PeerCounters,
) {
    let mut answers: FuturesUnordered<_> = requests
        .into_iter()
        .enumerate()
        .map(|(position, request)| async move {
            let response = match request {
                Ok(request) => respond(shared, peer, request).await,
                // Counted when it was read.
                Err(refusal) => WireResponse::Refused(refusal),
            };
            (position, response)
        })
        .collect();
    let mut answer_time = AnswerTime::new(shared);
    while let Some((position, response)) = answers.next().await {
        // At most `MAX_BATCH_REQUESTS` positions, which fit a u16.
        let max = shared.limits.max_response_frame_size;
        let frame = match frame::encode_answer(position as u16, &response, max) {
            Ok(frame) => frame,
            Err(e) => {
                shared.inbound.warn(peer, format_args!("cannot send response: {e}"));
                let _ = send.reset(e.code());
                return;
            }
        };
        if !write_answer(&mut send, frame, &mut answer_time, peer, shared, counters).await {
            return;
        }
    }
    drop(held);
    let _ = send.finish();
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
