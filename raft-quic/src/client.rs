//! The outbound side: one cached connection per peer, dialed on demand with capped exponential
//! backoff, and one bidirectional stream per frame: a bulk request, a lone small request, or a
//! batch of the small requests issued together ([`crate::outbox`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;
use quinn::{ConnectionError, ConnectionStats, Endpoint, ReadError, WriteError};
use raft_core::{Envelope, NetworkError, NodeId, RefusalReason, RpcResponse};
use tracing::{debug, info, warn};

use crate::accept::describe_connection_error;
use crate::backoff::Backoff;
use crate::bulk::BulkWindow;
use crate::candidates::{Candidates, Move};
use crate::cid::cleartext;
use crate::expiry::close_at_expiry;
use crate::frame::{self, FrameError, ReadFrameError};
use crate::identity::node_dns_name;
use crate::metrics::{PeerCounters, SentCounts};
use crate::network::Shared;
use crate::outbox::{Answer, Outbox, Queued};
use crate::timer::{timeout, Sleep};
use crate::wire::{code, Refusal, WireResponse};

/// Stream priority of small frames (votes, heartbeats): sent before any bulk data.
const PRIORITY_CONTROL: i32 = 1;
/// Stream priority of large frames (batches of entries, snapshot chunks).
const PRIORITY_BULK: i32 = 0;
/// A peer that keeps failing (unreachable, bad answers) is warned about at most once per this
/// interval, with the number of failures since the last warning.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Locks a std mutex, recovering from poisoning (no code here panics while holding one, and
/// the guarded state is valid after any partial update).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct PeerState {
    /// The addresses the peer may be at, and the one dialed (see [`crate::candidates`]).
    addrs: Candidates,
    connection: Option<quinn::Connection>,
    backoff: Backoff,
    /// When a failure to reach this peer (or a bad answer of it) was last warned about, and
    /// how many were not warned about since.
    warned: Option<(Instant, u64)>,
    /// When a silence close of a connection to this peer (see [`Client::drop_if_silent`]) was
    /// last logged at info level, and how many were logged at debug level since: a silent
    /// peer is redialed every RPC timeout, logged once per [`WARN_INTERVAL`].
    silenced: Option<(Instant, u64)>,
    /// A probe task runs for this peer (see [`Client::probe_if_due`]): at most one at a time.
    probing: bool,
    /// Paces the probes of a newly preferred address, apart from `backoff` (a failed probe
    /// never delays a redial): failures back off as dials do; a move pauses the next probe
    /// for `backoff_max` (at most one move by probe per peer per `backoff_max`).
    probe_backoff: Backoff,
    /// The connection a probe's move replaced, closed one RPC timeout later (for the RPCs in
    /// flight on it): at most one per peer, a newer move closes it at once.
    retiring: Option<quinn::Connection>,
}

impl PeerState {
    /// Whether to warn about a failure now; `Some(n)`: yes, `n` failures were left out since
    /// the last warning.
    fn should_warn(&mut self, now: Instant) -> Option<u64> {
        once_per_interval(&mut self.warned, now)
    }

    /// Whether a reconnection is worth an info line: not if it follows, within
    /// [`WARN_INTERVAL`], a silence close that was itself logged at debug level only.
    fn reconnect_is_news(&self, now: Instant) -> bool {
        !matches!(self.silenced, Some((at, skipped))
            if skipped > 0 && now.duration_since(at) < WARN_INTERVAL)
    }
}

/// Rate limit of a log line: `Some(n)` if it is due at `now` (at most once per
/// [`WARN_INTERVAL`]; `n` were left out since the last), `None` if not (counted in `slot`).
fn once_per_interval(slot: &mut Option<(Instant, u64)>, now: Instant) -> Option<u64> {
    match slot {
        Some((at, skipped)) if now.duration_since(*at) < WARN_INTERVAL => {
            *skipped += 1;
            None
        }
        last => {
            let skipped = last.map_or(0, |(_, skipped)| skipped);
            *last = Some((now, 0));
            Some(skipped)
        }
    }
}

/// One remote node as seen by the dialer.
pub(crate) struct Peer {
    id: NodeId,
    server_name: String,
    state: Mutex<PeerState>,
    /// Serializes dials so that concurrent RPCs share one new connection.
    dial: async_lock::Mutex<()>,
    /// Registered on first use (they need this node's id).
    counters: OnceLock<PeerCounters>,
    /// Room for bulk requests to this peer, shared fairly by all groups.
    bulk: Arc<BulkWindow>,
    /// Small requests waiting for the next frame to this peer.
    outbox: Outbox,
    /// Callers of small requests to this peer waiting for their answer (queued or sent).
    waiting: AtomicUsize,
    /// What was sent to this peer.
    pub(crate) sent: SentCounts,
}

impl Peer {
    pub(crate) fn new(
        id: NodeId,
        addrs: Candidates,
        backoff: Backoff,
        bulk: Arc<BulkWindow>,
    ) -> Self {
        Self {
            id,
            server_name: node_dns_name(id),
            state: Mutex::new(PeerState {
                addrs,
                connection: None,
                backoff: backoff.clone(),
                warned: None,
                silenced: None,
                probing: false,
                probe_backoff: backoff,
                retiring: None,
            }),
            dial: async_lock::Mutex::new(()),
            counters: OnceLock::new(),
            bulk,
            outbox: Outbox::default(),
            waiting: AtomicUsize::new(0),
            sent: SentCounts::default(),
        }
    }

    /// Whether `matches` holds for one of the addresses the peer may be at (where it listens,
    /// and dials from).
    pub(crate) fn is_at(&self, matches: impl Fn(SocketAddr) -> bool) -> bool {
        lock(&self.state).addrs.all().iter().any(|&addr| matches(addr))
    }

    /// Gives the peer new candidate addresses (see [`Candidates::replace`]): at once (`at_once`,
    /// the application's word), or keeping the address of a working connection while it is a
    /// candidate (a newly preferred address is then probed: see [`Client::probe_if_due`]). If that
    /// changes the address in use, the peer moved: its connection is closed at once
    /// (`NO_ERROR`, "peer moved") and past failures are forgotten.
    pub(crate) fn set_addrs(&self, addrs: Candidates, at_once: bool) {
        let mut state = lock(&self.state);
        let how = if at_once {
            Move::AtOnce
        } else {
            let connected =
                state.connection.as_ref().is_some_and(|conn| conn.close_reason().is_none());
            Move::Sticky { connected }
        };
        if state.addrs.replace(addrs, how) {
            if let Some(conn) = state.connection.take() {
                conn.close(code::NO_ERROR, b"peer moved");
            }
            state.backoff.succeeded();
            state.warned = None;
        }
    }

    fn counters(&self, node: NodeId) -> &PeerCounters {
        self.counters.get_or_init(|| PeerCounters::new(node, self.id))
    }

    /// The cached connection, if it is still open.
    fn cached(&self) -> Option<quinn::Connection> {
        let mut state = lock(&self.state);
        match &state.connection {
            Some(conn) if conn.close_reason().is_none() => Some(conn.clone()),
            Some(_) => {
                state.connection = None;
                state.addrs.connection_lost();
                None
            }
            None => None,
        }
    }

    /// Drops `conn` from the cache (if it is still the cached one) after it failed.
    fn forget(&self, conn: &quinn::Connection) {
        let mut state = lock(&self.state);
        if state.connection.as_ref().is_some_and(|c| c.stable_id() == conn.stable_id()) {
            state.connection = None;
            state.addrs.connection_lost();
        }
    }

    /// Closes the cached connection and the retiring one (see [`Client::probe_if_due`]), if
    /// any.
    pub(crate) fn close(&self, reason: &[u8]) {
        let mut state = lock(&self.state);
        for conn in [state.connection.take(), state.retiring.take()].into_iter().flatten() {
            conn.close(code::SHUTDOWN, reason);
        }
    }
}

/// The sending half of an RPC's stream. If the RPC is abandoned (its timeout expired) before the
/// request was completely written, the stream is reset rather than implicitly finished, so the
/// server sees a cancelled request instead of a truncated frame.
struct RequestStream {
    send: quinn::SendStream,
    finished: bool,
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.send.reset(code::CANCELLED);
        }
    }
}

/// A check of a connection's peer (see [`Client::update_tls`]).
pub(crate) type Check = Arc<dyn Fn(&quinn::Connection) -> Result<(), String> + Send + Sync>;

/// The TLS material of new dials, and the check that connections dialed with older material
/// must pass.
pub(crate) struct ClientTls {
    /// The client configuration of new dials.
    config: quinn::ClientConfig,
    /// How many times the material was replaced.
    generation: u64,
    /// The check of the latest [`Client::update_tls`] and the code it closes connections
    /// with: a dial that began with older material must pass it before its connection is used.
    check: Option<(quinn::VarInt, Check)>,
}

impl ClientTls {
    /// The material of a new endpoint.
    pub(crate) fn new(config: quinn::ClientConfig) -> Self {
        Self { config, generation: 0, check: None }
    }
}

/// A connection dialed with the TLS material of `generation`.
struct Dialed {
    conn: quinn::Connection,
    generation: u64,
}

/// Sends RPCs from one endpoint. Clones share everything (the turns of `crate::outbox` hold
/// one, for the tasks they spawn).
#[derive(Clone)]
pub(crate) struct Client {
    pub(crate) endpoint: Endpoint,
    /// Replaced when the node's TLS material is (new connections use the new one).
    pub(crate) tls: Arc<RwLock<ClientTls>>,
    pub(crate) shared: Arc<Shared>,
}

fn codec(error: frame::FrameError) -> NetworkError {
    NetworkError::Codec(error.to_string())
}

fn unreachable(peer: NodeId, reason: impl std::fmt::Display) -> NetworkError {
    NetworkError::Unreachable { peer, reason: reason.to_string() }
}

/// The connection to `peer` failed: it is forgotten (the next RPC dials anew).
fn lost(peer: &Peer, conn: &quinn::Connection, error: ConnectionError) -> NetworkError {
    peer.forget(conn);
    unreachable(peer.id, error)
}

/// The caller's result of a response frame.
fn answer(peer: NodeId, response: WireResponse) -> Result<RpcResponse, NetworkError> {
    match response {
        WireResponse::Ok(response) => Ok(response),
        WireResponse::Refused(Refusal::Handler(error)) => {
            Err(NetworkError::Refused { peer, reason: RefusalReason::Rpc(error) })
        }
        // A peer's reason is cut to MAX_REASON_LEN here too: the bound must not rest on the
        // sender's honesty (the reason reaches the caller's error and the driver's log).
        WireResponse::Refused(Refusal::Malformed(reason)) => Err(NetworkError::Refused {
            peer,
            reason: RefusalReason::transport(Refusal::malformed(reason)),
        }),
        WireResponse::Refused(refusal) => {
            Err(NetworkError::Refused { peer, reason: RefusalReason::transport(refusal) })
        }
    }
}

/// The same error again, for each of the requests of a batch that failed as a whole.
fn duplicate(error: &NetworkError) -> NetworkError {
    match error {
        NetworkError::UnknownPeer(peer) => NetworkError::UnknownPeer(*peer),
        NetworkError::Unreachable { peer, reason } => {
            NetworkError::Unreachable { peer: *peer, reason: reason.clone() }
        }
        NetworkError::Timeout(peer) => NetworkError::Timeout(*peer),
        NetworkError::Refused { peer, reason } => {
            NetworkError::Refused { peer: *peer, reason: reason.clone() }
        }
        NetworkError::Shutdown => NetworkError::Shutdown,
        other => NetworkError::Codec(other.to_string()),
    }
}

/// Fails every request of a batch still waiting for its answer.
fn fail_all(answers: Vec<Option<Answer>>, error: &NetworkError) {
    for caller in answers.into_iter().flatten() {
        let _ = caller.send(Err(duplicate(error)));
    }
}

/// A small request's caller, counted in its peer's `waiting` until it has its answer (or gave
/// up).
struct Waiting<'a> {
    peer: &'a Peer,
    /// The other callers waiting for an answer from the peer when this one came.
    others: usize,
}

impl<'a> Waiting<'a> {
    fn enter(peer: &'a Peer) -> Self {
        Self { peer, others: peer.waiting.fetch_add(1, Ordering::AcqRel) }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.peer.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request frame written to a peer, whose answer(s) are to be read.
struct Sent {
    conn: quinn::Connection,
    recv: quinn::RecvStream,
    /// The peer stopped the request stream (with this code) before the whole frame was sent.
    stopped: Option<quinn::VarInt>,
}

/// The turn to send a peer's queued requests (see [`crate::outbox`]), passed on once its
/// holder's frame is written: to a task that sends what queued meanwhile, or back to the next
/// caller if nothing did. Passed on when dropped, so an abandoned send never strands a queue.
///
/// A turn handed to a spawned task that is dropped before it ever ran (the runtime is shutting
/// down, or closed, and drops its tasks' futures, even those spawned during the shutdown) does
/// not pass itself on again: that would spawn another task dropped at once, and so on without
/// end (a stack overflow). It fails the queued callers with [`NetworkError::Shutdown`] instead
/// and frees the turn.
struct Turn {
    client: Client,
    peer: Arc<Peer>,
    passed: bool,
    /// The turn belongs to a spawned task that has not run yet.
    unstarted: bool,
}

impl Turn {
    fn new(client: &Client, peer: &Arc<Peer>) -> Self {
        Self { client: client.clone(), peer: Arc::clone(peer), passed: false, unstarted: false }
    }

    fn pass(&mut self) {
        if std::mem::replace(&mut self.passed, true) {
            return;
        }
        if self.peer.outbox.pass() {
            let mut next = Turn::new(&self.client, &self.peer);
            next.unstarted = true;
            let client = self.client.clone();
            self.client.shared.runtime.spawn(Box::pin(client.send_queued(next)));
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if self.unstarted && !std::mem::replace(&mut self.passed, true) {
            for queued in self.peer.outbox.drain() {
                let _ = queued.answer.send(Err(NetworkError::Shutdown));
            }
            return;
        }
        self.pass();
    }
}

impl Client {
    /// Sends `request` to its receiver and waits for its response, within the RPC timeout. A
    /// bulk request (a frame above `priority_frame_threshold`) first waits for room in the
    /// peer's bulk window, in turn with the other groups' (see [`crate::bulk`]), and is encoded
    /// only then, on a stream of its own; a small one goes at once, with the higher stream
    /// priority, in one frame with the other small requests to that peer issued at the same
    /// time (see [`crate::outbox`]).
    pub(crate) async fn call(&self, request: Envelope) -> Result<RpcResponse, NetworkError> {
        let target = request.receiver;
        let kind = request.request.kind();
        let shared = &self.shared;
        if shared.is_closed() {
            return Err(NetworkError::Shutdown);
        }
        let peer = shared.peer(target).ok_or(NetworkError::UnknownPeer(target))?;
        let max = shared.limits.max_frame_size;
        let len = frame::request_len(&request, max).map_err(codec)?;
        let bulk = len > shared.limits.priority_frame_threshold;
        // The connection the RPC will use if one is open, and what it had carried so far: to
        // tell a dead peer from a slow one if the RPC times out.
        let before = peer.cached().map(|conn| (conn.stats(), conn));
        let rpc = async {
            if bulk {
                let _room = peer.bulk.admit(request.group_id, len as u64).await;
                self.exchange(&peer, &request, PRIORITY_BULK, || {}).await
            } else {
                self.coalesced(&peer, request, len).await
            }
        };
        let result = match timeout(&*shared.runtime, shared.limits.rpc_timeout, rpc).await {
            Ok(result) => result,
            Err(_) => {
                debug!(node = shared.id, peer = target, kind, "RPC timed out");
                if let Some((stats, conn)) = before {
                    self.drop_if_silent(&peer, &conn, &stats);
                }
                Err(NetworkError::Timeout(target))
            }
        };
        if let Err(error) = &result {
            peer.counters(shared.id).failed(error);
        }
        result
    }

    /// After an RPC on `conn` timed out: closes `conn` (the next RPC dials anew) if it sent
    /// datagrams since `before` but received none. A live peer acknowledges every packet that
    /// asks for it (the request's, the keep-alives) within a round trip plus its ACK delay
    /// (25 ms at most), however slow its
    /// answer; silence for a whole RPC timeout means the peer is gone. Typically it crashed
    /// and restarted at the same address while the connection was still on its handshake id,
    /// which earns no stateless reset (see [`crate::cid`]): the connection would otherwise
    /// last until its idle timeout, and every RPC on it time out, although a new dial would
    /// reach the restarted peer at once.
    fn drop_if_silent(&self, peer: &Peer, conn: &quinn::Connection, before: &ConnectionStats) {
        if conn.close_reason().is_some() {
            return;
        }
        let now = conn.stats();
        let sent = now.udp_tx.datagrams > before.udp_tx.datagrams;
        let heard = now.udp_rx.datagrams > before.udp_rx.datagrams;
        if sent && !heard {
            let due = once_per_interval(&mut lock(&peer.state).silenced, Instant::now());
            let what = "closing connection to peer: nothing received from it during an RPC timeout";
            match due {
                Some(skipped) => info!(node = self.shared.id, peer = peer.id, skipped, "{what}"),
                None => debug!(node = self.shared.id, peer = peer.id, "{what}"),
            }
            conn.close(code::TIMEOUT, b"peer silent");
            peer.forget(conn);
        }
    }

    /// Sends a small request in the peer's next frame (see [`crate::outbox`]): the caller that
    /// finds no send in progress sends it, alone on a stream of its own as before if nothing
    /// else queued meanwhile; the others wait for their answer from the frame's reader.
    async fn coalesced(
        &self,
        peer: &Arc<Peer>,
        request: Envelope,
        len: usize,
    ) -> Result<RpcResponse, NetworkError> {
        let (answer, answered) = oneshot::channel();
        let unanswered = || Err(NetworkError::Timeout(peer.id));
        let waiting = Waiting::enter(peer);
        if !peer.outbox.push(Queued { request, len, answer }) {
            return answered.await.unwrap_or_else(|_| unanswered());
        }
        let mut turn = Turn::new(self, peer);
        // Nothing else to this peer waits for an answer: this request is alone, and goes at
        // once. Otherwise the requests issued together with it get one chance to join it.
        if waiting.others > 0 {
            // Lets every ready task run once: the window in which the requests issued
            // together join the first one's frame (no timer).
            raft_core::yield_now().await;
        }
        let mut batch = peer.outbox.take(self.shared.limits.priority_frame_threshold);
        // This caller's request is the first queued (the queue was empty when it took the
        // turn), and its caller waits for it: the batch holds at least it.
        if batch.len() == 1 {
            if let Some(lone) = batch.pop() {
                return self.exchange(peer, &lone.request, PRIORITY_CONTROL, || turn.pass()).await;
            }
        }
        let client = self.clone();
        let task = async move { client.send_batch(batch, turn).await };
        self.shared.runtime.spawn(Box::pin(task));
        answered.await.unwrap_or_else(|_| unanswered())
    }

    /// Sends what queued for `turn`'s peer while its previous frame was written: the task a
    /// turn's holder spawns when it passes the turn on.
    async fn send_queued(self, mut turn: Turn) {
        turn.unstarted = false;
        let batch = turn.peer.outbox.take(self.shared.limits.priority_frame_threshold);
        self.send_batch(batch, turn).await;
    }

    /// Sends `batch` (of `turn`'s peer) in one frame, passes the turn on once it is written,
    /// and hands each answer to its caller as it arrives; within the RPC timeout (each caller
    /// also has its own). A batch of one request is an ordinary request frame.
    async fn send_batch(&self, mut batch: Vec<Queued>, mut turn: Turn) {
        let peer = Arc::clone(&turn.peer);
        let send = async {
            if batch.len() <= 1 {
                if let Some(lone) = batch.pop() {
                    let request = &lone.request;
                    let result = self.exchange(&peer, request, PRIORITY_CONTROL, || turn.pass());
                    let _ = lone.answer.send(result.await);
                }
                return;
            }
            let requests = batch.iter().map(|queued| &queued.request);
            let encode = |max| frame::encode_batch(requests, max);
            let sent = self.write(&peer, PRIORITY_CONTROL, batch.len(), encode).await;
            turn.pass();
            let answers = batch.into_iter().map(|queued| Some(queued.answer)).collect();
            match sent {
                Ok(sent) => self.read_answers(&peer, sent, answers).await,
                Err(error) => fail_all(answers, &error),
            }
        };
        let _ = timeout(&*self.shared.runtime, self.shared.limits.rpc_timeout, send).await;
    }

    /// Sends `request` on a stream of its own, calls `written` once the frame is written (or
    /// failed), and reads the answer.
    async fn exchange(
        &self,
        peer: &Peer,
        request: &Envelope,
        priority: i32,
        written: impl FnOnce(),
    ) -> Result<RpcResponse, NetworkError> {
        let sent = self.write(peer, priority, 1, |max| frame::encode_request(request, max)).await;
        written();
        let mut sent = sent?;
        let limits = &self.shared.limits;
        let max = limits.max_response_frame_size;
        let read = frame::read_sized::<WireResponse>(&mut sent.recv, max, limits.decode).await;
        let (response, frame_len) = read.map_err(|e| self.read_failed(peer, &mut sent, e))?;
        peer.counters(self.shared.id).received_bytes.increment(frame_len as u64);
        answer(peer.id, response)
    }

    /// Reads the answers on a batch's stream and hands each to its caller (`answers`, by
    /// position) as it arrives; an answer that does not decode fails its own caller only (the
    /// stream is still in step); an answer for a position nobody awaits (never part of the
    /// batch, or answered already) is skipped undecoded, ignored and counted, as its length
    /// keeps the stream in step too, but only as many as the batch has requests (a correct peer
    /// sends none): one more is taken for broken framing. The callers left without an answer
    /// when the stream ends, fails or loses its framing get the error. So a batch's reader
    /// reads at most twice as many frames as the batch has requests, plus one, whatever the
    /// peer sends (a peer writing stray answers without end does not keep it reading: the RPC
    /// timeout alone would not stop it while the frames keep coming, as reading buffered data
    /// never yields).
    async fn read_answers(&self, peer: &Peer, mut sent: Sent, mut answers: Vec<Option<Answer>>) {
        let limits = &self.shared.limits;
        let mut left = answers.len();
        let mut strays_allowed = answers.len();
        let failure = loop {
            if left == 0 {
                return;
            }
            let awaited = |position: u16| {
                answers.get(usize::from(position)).is_some_and(|caller| caller.is_some())
            };
            let read = frame::read_answer::<WireResponse>(
                &mut sent.recv,
                limits.max_response_frame_size,
                limits.decode,
                awaited,
            );
            match read.await {
                Ok(Some((position, answered, len))) => {
                    peer.counters(self.shared.id).received_bytes.increment(len as u64);
                    let awaited = answers.get_mut(usize::from(position)).and_then(Option::take);
                    let (Some(caller), Some(response)) = (awaited, answered) else {
                        // Skipped undecoded (`awaited` said no, so no caller was taken): its
                        // framing is intact and the stream still in step.
                        if strays_allowed == 0 {
                            break self.too_many_strays(peer, answers.len());
                        }
                        strays_allowed -= 1;
                        self.stray_answer(peer, position);
                        continue;
                    };
                    left -= 1;
                    let result = match response {
                        Ok(response) => answer(peer.id, response),
                        Err(e) => Err(self.bad_response(peer, e)),
                    };
                    let _ = caller.send(result);
                }
                Ok(None) => {
                    let what = format!("the batch's stream ended with {left} requests unanswered");
                    break NetworkError::Codec(what);
                }
                Err(e) => break self.read_failed(peer, &mut sent, e),
            }
        };
        fail_all(answers, &failure);
    }

    /// Opens a stream to `peer` and writes the frame `encode` makes (of `requests` requests)
    /// on it, at `priority`. The frame is encoded once the stream is open, so the RPCs that
    /// wait for a stream slot hold no frame: the encoded frames of one peer are at most its
    /// streams' (`max_concurrent_streams`) worth. The frame counts in the peer's
    /// [`PeerStats`](crate::PeerStats) as sent once the stream took it whole, as stopped if
    /// the peer stopped the stream before.
    async fn write(
        &self,
        peer: &Peer,
        priority: i32,
        requests: usize,
        encode: impl FnOnce(u32) -> Result<Bytes, FrameError>,
    ) -> Result<Sent, NetworkError> {
        let conn = self.connection(peer).await?;
        let (send, recv) = conn.open_bi().await.map_err(|e| lost(peer, &conn, e))?;
        let mut send = RequestStream { send, finished: false };
        let frame = encode(self.shared.limits.max_frame_size).map_err(codec)?;
        // Only fails if the stream is already closed, which the write below reports.
        let _ = send.send.set_priority(priority);
        // A server may stop reading a request it refuses from its header alone (a sender it
        // does not accept) and still answer why: read the answer before reporting the stop.
        let mut stopped = None;
        let counters = peer.counters(self.shared.id);
        let frame_len = frame.len() as u64;
        match send.send.write_chunk(frame).await {
            Ok(()) => {
                counters.sent_bytes.increment(frame_len);
                peer.sent.count(requests);
            }
            Err(WriteError::ConnectionLost(e)) => return Err(lost(peer, &conn, e)),
            Err(WriteError::Stopped(code)) => {
                stopped = Some(code);
                peer.sent.stopped();
            }
            Err(other) => return Err(unreachable(peer.id, other)),
        }
        // Only fails if the stream was reset, in which case the read reports why.
        let _ = send.send.finish();
        send.finished = true;
        Ok(Sent { conn, recv, stopped })
    }

    /// What a failure to read a response on `sent`'s stream means for its caller(s). A bad
    /// frame (one announcing more than the largest response, `MAX_RESPONSE_FRAME_SIZE`, a bad
    /// version, a body that does not decode) gives the stream up: it is stopped with the
    /// frame error's code, so the peer sends nothing more on it and what it sent is dropped.
    fn read_failed(&self, peer: &Peer, sent: &mut Sent, error: ReadFrameError) -> NetworkError {
        if let ReadFrameError::Frame(e) = &error {
            // Fails only if the stream already ended; nothing is left to give up then.
            let _ = sent.recv.stop(e.code());
        }
        let (conn, stopped) = (&sent.conn, sent.stopped);
        match error {
            ReadFrameError::Stream(ReadError::ConnectionLost(e)) => lost(peer, conn, e),
            _ if stopped.is_some() => NetworkError::Refused {
                peer: peer.id,
                reason: RefusalReason::transport(format!(
                    "peer stopped the request stream (code {})",
                    stopped.unwrap_or(code::NO_ERROR)
                )),
            },
            ReadFrameError::Stream(ReadError::Reset(code)) => NetworkError::Refused {
                peer: peer.id,
                reason: RefusalReason::transport(format!(
                    "peer reset the response stream (code {code})"
                )),
            },
            ReadFrameError::Stream(other) => unreachable(peer.id, other),
            ReadFrameError::Frame(e) => self.bad_response(peer, e),
        }
    }

    /// A well-framed answer of `peer` on a batch's stream for a `position` nobody awaits: a
    /// protocol violation by the peer, counted and logged (at most once per interval per peer),
    /// and otherwise ignored.
    fn stray_answer(&self, peer: &Peer, position: u16) {
        self.shared.stray_answers.fetch_add(1, Ordering::Relaxed);
        self.shared.inbound.warn(
            peer.id,
            format_args!(
                "ignoring its answer to position {position} of a batch: no request there awaits one"
            ),
        );
    }

    /// A stray answer of `peer` beyond the `allowed` ones (as many as its batch has requests)
    /// on a batch's stream: the peer is taken to have lost its framing; warned about (at most
    /// once per interval per peer, with its stray answers) and the error of the batch's
    /// callers still waiting.
    fn too_many_strays(&self, peer: &Peer, allowed: usize) -> NetworkError {
        let what = format!(
            "more answers on a batch's stream for positions nobody awaits than the {allowed} \
             requests of the batch"
        );
        self.shared.inbound.warn(peer.id, format_args!("giving up a batch's stream: {what}"));
        NetworkError::Codec(what)
    }

    /// A response frame of `peer` that is not valid: warned about (at most once per interval)
    /// and its caller's error.
    fn bad_response(&self, peer: &Peer, error: FrameError) -> NetworkError {
        let warn_now = lock(&peer.state).should_warn(self.shared.runtime.now());
        if let Some(suppressed) = warn_now {
            let node = self.shared.id;
            warn!(node, peer = peer.id, suppressed, "bad response frame: {error}");
        }
        NetworkError::Codec(error.to_string())
    }

    /// The open connection to `peer`, dialing it if needed (unless in backoff).
    async fn connection(&self, peer: &Peer) -> Result<quinn::Connection, NetworkError> {
        if let Some(conn) = peer.cached() {
            self.probe_if_due(peer);
            return Ok(conn);
        }
        let _dialing = peer.dial.lock().await;
        if let Some(conn) = peer.cached() {
            return Ok(conn);
        }
        let shared = &self.shared;
        let addr = {
            let state = lock(&peer.state);
            if let Err(wait) = state.backoff.check(shared.runtime.now()) {
                return Err(unreachable(
                    peer.id,
                    format_args!(
                        "reconnecting in {wait:?} after {} failed attempts",
                        state.backoff.failures()
                    ),
                ));
            }
            state.addrs.current()
        };
        let dialed = self.dial(peer, addr).await;
        let (result, listed, mut state) = self.settle(peer, dialed);
        match result {
            Ok(conn) if listed && state.addrs.current() == addr => {
                state.backoff.succeeded();
                state.warned = None;
                state.connection = Some(conn.clone());
                let news = state.reconnect_is_news(Instant::now());
                drop(state);
                if news {
                    info!(node = shared.id, peer = peer.id, %addr, "connected to peer");
                } else {
                    debug!(node = shared.id, peer = peer.id, %addr, "connected to peer");
                }
                self.watch(peer.id, conn.clone());
                Ok(conn)
            }
            Ok(conn) => {
                conn.close(code::NO_ERROR, b"stale");
                Err(unreachable(
                    peer.id,
                    "peer removed or refused, its address changed, or network closed while \
                     dialing",
                ))
            }
            Err(reason) => {
                peer.counters(shared.id).dial_failures.increment(1);
                // Another source may name another address of the peer (it may have moved, and
                // the source that names its new address may not be the latest): the next dial,
                // paced by the same backoff, tries the next one. Unless it moved meanwhile:
                // then the failure was at an address no longer in use, and is not charged to
                // the new one (whose backoff the move reset).
                let (delay, next) = if state.addrs.current() == addr {
                    (Some(state.backoff.failed(shared.runtime.now())), state.addrs.failed())
                } else {
                    (None, state.addrs.current())
                };
                // Once per interval, however often the backoff lets the node try again.
                if let Some(suppressed) = state.should_warn(shared.runtime.now()) {
                    warn!(
                        node = shared.id,
                        peer = peer.id,
                        %addr,
                        failures = state.backoff.failures(),
                        suppressed,
                        retry_in = ?delay,
                        %next,
                        "cannot connect to peer: {reason}"
                    );
                } else {
                    debug!(
                        node = shared.id,
                        peer = peer.id,
                        %addr,
                        %next,
                        "cannot connect to peer: {reason}"
                    );
                }
                Err(unreachable(peer.id, reason))
            }
        }
    }

    /// Dials `peer` at `addr`, within the connect timeout; the peer must prove its id (the TLS
    /// verifier checks the certificate names the id dialed). Pass the result through
    /// [`settle`](Self::settle) before using the connection.
    async fn dial(&self, peer: &Peer, addr: SocketAddr) -> Result<Dialed, String> {
        let shared = &self.shared;
        let (config, generation) = {
            let tls = self.tls.read().unwrap_or_else(|p| p.into_inner());
            (tls.config.clone(), tls.generation)
        };
        let dial = cleartext(|| self.endpoint.connect_with(config, addr, &peer.server_name));
        match dial {
            Ok(connecting) => {
                match timeout(&*shared.runtime, shared.limits.connect_timeout, connecting).await {
                    Ok(Ok(conn)) => Ok(Dialed { conn, generation }),
                    Ok(Err(e)) => Err(describe_connection_error(&e)),
                    Err(_) => Err("connection attempt timed out".to_owned()),
                }
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// The result of a dial of `peer`, once its connection passed the check of every
    /// [`update_tls`](Self::update_tls) made since the dial began (the dial verified the peer
    /// against the trust bundle of its start, and `update_tls` did not see a connection not
    /// yet cached: one that fails is closed, and the dial fails), with what
    /// [`listed`](Self::listed) returns. The TLS generation is compared with the peer's state
    /// locked, which the caller keeps until it caches the connection: an `update_tls` after
    /// that comparison finds the connection cached (it locks the peer's state to check it).
    fn settle<'p>(
        &self,
        peer: &'p Peer,
        dialed: Result<Dialed, String>,
    ) -> (Result<quinn::Connection, String>, bool, MutexGuard<'p, PeerState>) {
        let mut result = dialed;
        loop {
            let (listed, state) = self.listed(peer);
            let stale = match &result {
                Ok(dialed) => {
                    let tls = self.tls.read().unwrap_or_else(|p| p.into_inner());
                    match &tls.check {
                        Some((code, check)) if tls.generation != dialed.generation => {
                            Some((*code, Arc::clone(check), tls.generation))
                        }
                        _ => None,
                    }
                }
                Err(_) => None,
            };
            let Some((code, check, current)) = stale else {
                return (result.map(|dialed| dialed.conn), listed, state);
            };
            drop(state);
            result = result.and_then(|dialed| match check(&dialed.conn) {
                Ok(()) => Ok(Dialed { generation: current, ..dialed }),
                Err(reason) => {
                    dialed.conn.close(code, reason.as_bytes());
                    Err(format!("TLS material replaced during the handshake: {reason}"))
                }
            });
        }
    }

    /// Whether `peer`'s entry is still the one RPCs reach node `peer.id` by, the node not
    /// refused and the network not closed, and the peer's state, locked. `drop_peer` (refuse,
    /// remove_peer, the last source naming it gone) may have removed it during a dial. Checked
    /// with the peers' lock held, then the peer's state (the lock order of
    /// `place_peer`/`drop_peer`), so that no removal slips in between the check and the caching
    /// of a connection: a removal after it closes the cached connection.
    fn listed<'p>(&self, peer: &'p Peer) -> (bool, MutexGuard<'p, PeerState>) {
        let shared = &self.shared;
        let peers = shared.peers.read().unwrap_or_else(|p| p.into_inner());
        let listed = peers.get(&peer.id).is_some_and(|listed| std::ptr::eq(&**listed, peer))
            && !shared.is_refused(peer.id)
            && !shared.is_closed();
        let state = lock(&peer.state);
        drop(peers);
        (listed, state)
    }

    /// Starts probing `peer`'s newly preferred address in the background if there is one to
    /// probe (see [`crate::candidates`]), no probe runs for it and the probe's own backoff
    /// allows one now: make before break. Called only from the RPC path (an RPC that found the
    /// peer's connection working), so the probe is spawned in the runtime's context, never
    /// from a synchronous call. The probe is one dial like any (the peer must prove its id),
    /// and no RPC waits for it. If it connects while that address is still the newly preferred
    /// one, the peer moves there, the old connection retires (closed once the RPCs in flight
    /// on it are done: after one RPC timeout, `NO_ERROR`, "peer moved"; a retiring connection
    /// still open is closed at once), and the next probe waits `backoff_max`. If it fails, the
    /// old connection stays, the failure is charged to the probe's backoff only (never to the
    /// peer's), and a later RPC probes again once that backoff allows, while the address is
    /// still the newly preferred one.
    fn probe_if_due(&self, peer: &Peer) {
        let shared = &self.shared;
        let addr = {
            let mut state = lock(&peer.state);
            let Some(addr) = state.addrs.take_probe() else { return };
            if state.probing
                || state.probe_backoff.check(shared.runtime.now()).is_err()
                || shared.is_closed()
            {
                return;
            }
            state.probing = true;
            addr
        };
        // The task needs the peer's entry; an entry no longer listed is not probed.
        let listed = shared.peer(peer.id).filter(|listed| std::ptr::eq(&**listed, peer));
        let Some(peer) = listed else {
            lock(&peer.state).probing = false;
            return;
        };
        let client = self.clone();
        shared.runtime.spawn(Box::pin(async move { client.run_probe(&peer, addr).await }));
    }

    /// The probe task of `peer`: one dial at `addr` (see [`probe_if_due`](Self::probe_if_due)),
    /// unless the peer was removed or refused, the network closed or `addr` stopped being the
    /// newly preferred address.
    async fn run_probe(&self, peer: &Arc<Peer>, addr: SocketAddr) {
        let shared = &self.shared;
        {
            let (listed, mut state) = self.listed(peer);
            if !listed || !state.addrs.is_probe_target(addr) {
                state.probing = false;
                return;
            }
        }
        let dialed = self.dial(peer, addr).await;
        let (result, listed, mut state) = self.settle(peer, dialed);
        state.probing = false;
        let now = shared.runtime.now();
        match result {
            Ok(conn) if listed && state.addrs.probe_connected(addr) => {
                let old = state.connection.replace(conn.clone());
                state.backoff.succeeded();
                state.probe_backoff.pause(now, shared.limits.backoff_max);
                state.warned = None;
                if let Some(previous) = state.retiring.take() {
                    previous.close(code::NO_ERROR, b"peer moved");
                }
                state.retiring = old.clone();
                drop(state);
                info!(
                    node = shared.id,
                    peer = peer.id,
                    %addr,
                    "peer moved: connected at its newly preferred address"
                );
                self.watch(peer.id, conn);
                if let Some(old) = old {
                    self.retire(peer, old);
                }
            }
            Ok(conn) => {
                // Stale: the preferred address changed during the dial. Charged to the probes'
                // backoff like a failure, so that address changes made while probes are in
                // flight cannot start one handshake each.
                if listed {
                    state.probe_backoff.failed(now);
                }
                drop(state);
                conn.close(code::NO_ERROR, b"stale");
            }
            Err(reason) if !listed => {
                // The peer was removed or refused, or the network closed, during the dial:
                // nothing to charge or warn about.
                debug!(node = shared.id, peer = peer.id, %addr, "probe ended: {reason}");
            }
            Err(reason) => {
                peer.counters(shared.id).dial_failures.increment(1);
                // Charged to the probe's backoff only: the working connection stays, and a
                // redial once it is lost is not delayed by the probe.
                let delay = state.probe_backoff.failed(now);
                let at = state.addrs.current();
                if let Some(suppressed) = state.should_warn(now) {
                    warn!(
                        node = shared.id,
                        peer = peer.id,
                        %addr,
                        suppressed,
                        probe_in = ?delay,
                        kept = %at,
                        "cannot connect to peer at its newly preferred address, keeping \
                         its working connection: {reason}"
                    );
                } else {
                    debug!(
                        node = shared.id,
                        peer = peer.id,
                        %addr,
                        kept = %at,
                        "cannot connect to peer at its newly preferred address: {reason}"
                    );
                }
            }
        }
    }

    /// Closes `conn`, `peer`'s connection replaced by a probe's move, once the RPCs in flight
    /// on it are done: they end within one RPC timeout, and no new one starts on it. Closed
    /// at once instead by a newer move or by the peer's removal (see `PeerState::retiring`).
    fn retire(&self, peer: &Arc<Peer>, conn: quinn::Connection) {
        let runtime = Arc::clone(&self.shared.runtime);
        let linger = self.shared.limits.rpc_timeout;
        let peer = Arc::downgrade(peer);
        self.shared.runtime.spawn(Box::pin(async move {
            Sleep::new(&*runtime, linger).await;
            if let Some(peer) = peer.upgrade() {
                let mut state = lock(&peer.state);
                if state.retiring.as_ref().is_some_and(|c| c.stable_id() == conn.stable_id()) {
                    state.retiring = None;
                }
            }
            conn.close(code::NO_ERROR, b"peer moved");
        }));
    }

    /// New dials use `config` from now on; the cached connections (and those retiring) whose
    /// peer fails `check` now are closed (with `code` and the reason it gives), and so is,
    /// when it completes, any dial under way that fails it (see [`settle`](Self::settle)).
    /// Returns how many were closed now. Their next RPC dials anew.
    pub(crate) fn update_tls(
        &self,
        config: quinn::ClientConfig,
        code: quinn::VarInt,
        check: Check,
    ) -> usize {
        {
            let mut tls = self.tls.write().unwrap_or_else(|p| p.into_inner());
            tls.config = config;
            tls.generation = tls.generation.wrapping_add(1);
            tls.check = Some((code, Arc::clone(&check)));
        }
        let peers: Vec<Arc<Peer>> =
            self.shared.peers.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        let mut closed = 0;
        for peer in peers {
            if let Some(conn) = peer.cached() {
                if let Err(reason) = check(&conn) {
                    warn!(
                        node = self.shared.id,
                        peer = peer.id,
                        "closing connection to peer: {reason}"
                    );
                    conn.close(code, reason.as_bytes());
                    peer.forget(&conn);
                    closed += 1;
                }
            }
            let retiring = lock(&peer.state).retiring.clone();
            if let Some(conn) = retiring.filter(|conn| conn.close_reason().is_none()) {
                if let Err(reason) = check(&conn) {
                    conn.close(code, reason.as_bytes());
                    closed += 1;
                }
            }
        }
        closed
    }

    /// Closes an outbound connection once its peer's certificate expires, and logs when it
    /// ends.
    fn watch(&self, peer: NodeId, conn: quinn::Connection) {
        let node = self.shared.id;
        let runtime = Arc::clone(&self.shared.runtime);
        self.shared.runtime.spawn(Box::pin(async move {
            close_at_expiry(runtime, conn.clone(), std::future::pending()).await;
            let reason = conn.closed().await;
            match reason {
                ConnectionError::LocallyClosed => debug!(node, peer, "connection to peer closed"),
                _ => info!(node, peer, "connection to peer lost: {reason}"),
            }
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::{answer, once_per_interval, WARN_INTERVAL};
    use crate::wire::{Refusal, WireResponse, MAX_REASON_LEN};
    use std::time::{Duration, Instant};

    /// A hostile peer's reason is cut on receipt: the bound does not rest on the sender.
    #[test]
    fn a_peers_malformed_reason_is_cut_on_receipt() {
        let hostile = WireResponse::Refused(Refusal::Malformed("x\n".repeat(50_000)));
        let text = match answer(2, hostile) {
            Err(error) => error.to_string(),
            Ok(response) => format!("not a refusal: {response:?}"),
        };
        assert!(text.contains("x\nx"), "{text}");
        assert!(text.len() <= MAX_REASON_LEN + 200, "{} bytes: {}", text.len(), &text[..300]);
    }

    /// A silent peer redialed every RPC timeout logs its silence close once per interval,
    /// with the count of the ones left out (review L4).
    #[test]
    fn a_line_is_logged_once_per_interval_with_the_count_left_out() {
        let start = Instant::now();
        let mut slot = None;
        assert_eq!(once_per_interval(&mut slot, start), Some(0));
        for n in 1..=5 {
            assert_eq!(once_per_interval(&mut slot, start + Duration::from_millis(300 * n)), None);
        }
        assert_eq!(once_per_interval(&mut slot, start + WARN_INTERVAL), Some(5));
        assert_eq!(once_per_interval(&mut slot, start + WARN_INTERVAL), None);
    }
}
