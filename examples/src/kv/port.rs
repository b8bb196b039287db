//! The client port: accepts QUIC connections (mutual TLS), names each one's [`Principal`]
//! from its certificate, and serves every bidirectional stream as one request.
//!
//! Admission goes through a [`Gate`] (the same as the Raft port's): a connection slot is taken
//! only once the handshake succeeded, unvalidated source addresses get a QUIC Retry, handshakes
//! are limited in number (in all and per IP) and in time, and failed attempts are logged at
//! most once per interval per remote. A flood of half-open handshakes thus holds no slot.
//! Slots are shared fairly: one principal (one certificate name) holds at most
//! [`connections_per_principal`] of them, and [`ADMIN_RESERVED_CONNECTIONS`] more are kept for
//! administrators, so that clients holding every ordinary slot never lock an administrator out.
//!
//! Memory is bounded per connection and per node, for requests and for answers alike (two
//! `Budget`s: [`CONNECTION_BYTES`] and [`NODE_BYTES`] each). What is reserved is the memory a
//! message takes once decoded or built, not only its encoded size: a 3 KB batch of 1,024 reads
//! holds 160 KB of commands and 48 KB of answers.
//!
//! * What a client sent that the node has not read yet is bounded by the connection's receive
//!   window ([`connection_receive_window`]), chosen so that all connections together hold at
//!   most [`NODE_UNREAD_BYTES`].
//! * A request's [`request_cost`] (its announced length plus the decoded size of the most
//!   commands that length can hold) is reserved before its body is read, and held until the
//!   request has been handled. A request must arrive within [`RECEIVE_TIMEOUT`] (its
//!   reservation included), else its stream is reset ([`REQUEST_TIMED_OUT`]).
//! * An answer's in-memory size ([`answer_cost`], from the number of commands it answers) is
//!   reserved before it is built, and its encoded size before it is encoded; both are held
//!   until the client acknowledged every byte of it (so quinn's send buffers are covered too).
//!   An answer must be reserved, written and acknowledged within [`ANSWER_WRITE_TIMEOUT`],
//!   else its stream is reset ([`ANSWER_TIMED_OUT`]) and its memory released. A client that
//!   withholds flow-control credit thus holds at most its connection's budget, for at most
//!   that long per answer.
//!
//! Values read are shared with the map (reference-counted), not copied, until encoded. Not
//! budgeted: each open stream's task and quinn state (a few KB), at most
//! `--max-client-streams` per connection.

use std::sync::Arc;
use std::time::Duration;

use raft_quic::accept::ConnectionSlot;
use raft_quic::quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};
use raft_quic::{Gate, GateConfig, PeerIdentity};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::debug;

use super::auth::{principal_of, CertRole, Principal};
use super::command::Command;
use super::protocol::{self, ClientRequest, ClientResponse, CommandAnswer, MAX_BATCH_LEN};
use super::protocol::{MAX_FRAME_BYTES, MIN_COMMAND_BYTES};
use super::router::GroupRouter;

/// The longest a client may take to send its request once it opened the stream.
pub const RECEIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest an answer may take from the moment it is ready until the client acknowledged
/// all of it (waiting for the answer budgets included).
pub const ANSWER_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// The most bytes one connection may hold in requests being handled, and (separately) in
/// answers not yet acknowledged: four of the largest frames.
pub const CONNECTION_BYTES: usize = 4 * (MAX_FRAME_BYTES + 4);
/// The most request bytes all connections of a node may have sent that it has not read yet
/// (for the default number of connections; see [`connection_receive_window`]).
pub const NODE_UNREAD_BYTES: usize = 64 << 20;

/// Each connection's receive window (quinn's: what a client may send on one connection that
/// the node has not read yet) on a port of `max_connections` slots: an equal share of
/// [`NODE_UNREAD_BYTES`] among them and the administrators' reserve, at least 64 KiB (so
/// beyond 1,000 slots the node-wide bound is 64 KiB per connection) and at most 8 MiB.
pub fn connection_receive_window(max_connections: usize) -> u32 {
    let slots = max_connections.saturating_add(ADMIN_RESERVED_CONNECTIONS).max(1);
    let share = (NODE_UNREAD_BYTES / slots).clamp(64 << 10, 8 << 20);
    u32::try_from(share).unwrap_or(u32::MAX)
}

/// Memory a decoded command may take beyond its encoded bytes: the `Command` itself and the
/// allocator's bookkeeping of its key and value.
const DECODED_COMMAND_BYTES: usize = std::mem::size_of::<Command>() + 64;

/// What a request of `len` encoded bytes may take once decoded (reserved before its body is
/// read): its bytes (keys and values are copied out of it) and the most commands that many
/// bytes can encode (each takes at least [`MIN_COMMAND_BYTES`], at most [`MAX_BATCH_LEN`]).
pub fn request_cost(len: usize) -> usize {
    let commands = (len / MIN_COMMAND_BYTES).clamp(1, MAX_BATCH_LEN);
    len + commands * DECODED_COMMAND_BYTES
}

/// What the answer to `request` takes in memory before it is encoded (reserved before it is
/// built): one [`CommandAnswer`] per command, besides the response itself.
pub fn answer_cost(request: &ClientRequest) -> usize {
    let answers = match request {
        ClientRequest::Batch(commands) | ClientRequest::GroupBatch { commands, .. } => {
            commands.len()
        }
        _ => 0,
    };
    std::mem::size_of::<ClientResponse>() + answers * std::mem::size_of::<CommandAnswer>()
}

/// The most bytes all connections of a node may hold in requests, and (separately) in answers.
pub const NODE_BYTES: usize = 64 << 20;
/// Connection slots beyond `--max-client-connections` that only administrators may take.
pub const ADMIN_RESERVED_CONNECTIONS: usize = 8;

/// The most connections one principal may hold on a port of `max_connections` slots: a
/// sixteenth of them, at least 4 (and at most all).
pub fn connections_per_principal(max_connections: usize) -> usize {
    (max_connections / 16).max(4).min(max_connections)
}

/// Stream reset code: the answer was not read in time.
pub const ANSWER_TIMED_OUT: VarInt = VarInt::from_u32(1);
/// Stream reset code: the request was not received in time.
pub const REQUEST_TIMED_OUT: VarInt = VarInt::from_u32(2);
/// Connection close code: the certificate names no client role.
pub const NO_ROLE: VarInt = VarInt::from_u32(3);

/// A byte budget: a connection's share and the node's, reserved together.
#[derive(Debug, Clone)]
struct Budget {
    connection: Arc<Semaphore>,
    node: Arc<Semaphore>,
}

/// Bytes reserved from a [`Budget`]; released when dropped.
struct Reservation {
    connection: OwnedSemaphorePermit,
    node: OwnedSemaphorePermit,
}

impl Reservation {
    /// One reservation holding both.
    fn merge(mut self, other: Reservation) -> Reservation {
        self.connection.merge(other.connection);
        self.node.merge(other.node);
        self
    }
}

impl Budget {
    fn for_connection(node: &Arc<Semaphore>) -> Self {
        Self { connection: Arc::new(Semaphore::new(CONNECTION_BYTES)), node: Arc::clone(node) }
    }

    /// Waits until `bytes` are free in both shares (the connection's first).
    async fn reserve(&self, bytes: usize) -> Result<Reservation, protocol::FrameError> {
        let permits = u32::try_from(bytes).map_err(|_| protocol::FrameError::TooLarge)?;
        let closed = |e: tokio::sync::AcquireError| protocol::FrameError::Stream(e.to_string());
        let connection =
            Arc::clone(&self.connection).acquire_many_owned(permits).await.map_err(closed)?;
        let node = Arc::clone(&self.node).acquire_many_owned(permits).await.map_err(closed)?;
        Ok(Reservation { connection, node })
    }
}

/// A node's client port: the service, the admission gate and the node-wide budgets.
#[derive(Debug)]
pub struct ClientPort {
    service: GroupRouter,
    gate: Gate,
    requests: Arc<Semaphore>,
    answers: Arc<Semaphore>,
}

impl ClientPort {
    /// A port serving `service` to at most `max_connections` clients at once (counted after
    /// their handshake), at most [`connections_per_principal`] of them from one principal, plus
    /// [`ADMIN_RESERVED_CONNECTIONS`] for administrators; the gate's other limits are
    /// [`GateConfig::new`]'s.
    pub fn new(service: GroupRouter, max_connections: usize) -> Arc<Self> {
        let config = GateConfig {
            max_connections_per_identity: connections_per_principal(max_connections),
            reserved_connections: ADMIN_RESERVED_CONNECTIONS,
            ..GateConfig::new(max_connections)
        };
        let gate = Gate::new("kv client port", config, Arc::new(raft_quic::QuinnTokioRuntime));
        gate.set_identify(|connection| {
            let principal = principal_of(connection).ok()?;
            let privileged = principal.role == CertRole::Admin;
            Some(PeerIdentity { name: principal.dns_name(), privileged })
        });
        Arc::new(Self {
            service,
            gate,
            requests: Arc::new(Semaphore::new(NODE_BYTES)),
            answers: Arc::new(Semaphore::new(NODE_BYTES)),
        })
    }

    /// The port's admission gate (a clone sharing its state): certificate reloads revalidate
    /// the admitted connections through it, and it closes those whose certificate expires.
    pub fn gate(&self) -> Gate {
        self.gate.clone()
    }
}

/// Accepts client connections on `endpoint` until it is closed.
pub async fn accept_loop(endpoint: Endpoint, port: Arc<ClientPort>) {
    while let Some(incoming) = endpoint.accept().await {
        let Some(handshake) = port.gate.admit(incoming) else { continue };
        let port = Arc::clone(&port);
        tokio::spawn(async move {
            if let Some((connection, slot)) = handshake.complete().await {
                serve_connection(connection, slot, port).await;
            }
        });
    }
    debug!("client endpoint closed");
}

/// One connection's principal and budgets.
struct Peer {
    principal: Principal,
    requests: Budget,
    answers: Budget,
}

/// Serves an admitted connection until it ends; its gate slot is released then.
async fn serve_connection(connection: Connection, slot: ConnectionSlot, port: Arc<ClientPort>) {
    let _slot = slot;
    let remote = connection.remote_address();
    let principal = match principal_of(&connection) {
        Ok(principal) => principal,
        Err(e) => {
            // Logged through the gate: at most once per interval per remote IP.
            port.gate.reject(&connection, NO_ROLE, &e.to_string());
            return;
        }
    };
    debug!(%remote, %principal, "client connected");
    let peer = Arc::new(Peer {
        principal,
        requests: Budget::for_connection(&port.requests),
        answers: Budget::for_connection(&port.answers),
    });
    loop {
        match connection.accept_bi().await {
            Ok((send, recv)) => {
                tokio::spawn(serve_stream(send, recv, Arc::clone(&port), Arc::clone(&peer)));
            }
            Err(e) => {
                debug!(%remote, "client connection ended: {e}");
                return;
            }
        }
    }
}

async fn serve_stream(
    mut send: SendStream,
    mut recv: RecvStream,
    port: Arc<ClientPort>,
    peer: Arc<Peer>,
) {
    let received = tokio::time::timeout(RECEIVE_TIMEOUT, async {
        let len = protocol::read_len(&mut recv).await?;
        let reservation = peer.requests.reserve(request_cost(len)).await?;
        let request = protocol::read_body(&mut recv, len).await?;
        Ok::<_, protocol::FrameError>((request, reservation))
    });
    let (response, reserved) = match received.await {
        Ok(Ok((request, reservation))) => {
            drop(recv);
            let cost = answer_cost(&request);
            let answer = tokio::time::timeout(ANSWER_WRITE_TIMEOUT, peer.answers.reserve(cost));
            let reserved = match answer.await {
                Ok(Ok(reserved)) => reserved,
                Ok(Err(e)) => {
                    debug!("cannot answer a client: {e}");
                    return;
                }
                Err(_) => return answer_timed_out(&mut send, &peer),
            };
            let response = port.service.handle(&peer.principal, request).await.fit_in_frame();
            drop(reservation);
            (response, Some(reserved))
        }
        Ok(Err(e)) => {
            debug!("bad client request: {e}");
            (ClientResponse::Refused(e.to_string()), None)
        }
        Err(_) => {
            let _ = send.reset(REQUEST_TIMED_OUT);
            return;
        }
    };
    let written = answer(&mut send, &response, reserved, &peer);
    match tokio::time::timeout(ANSWER_WRITE_TIMEOUT, written).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!("cannot answer a client: {e}"),
        Err(_) => answer_timed_out(&mut send, &peer),
    }
}

/// Resets a stream whose answer the client did not take in time.
fn answer_timed_out(send: &mut SendStream, peer: &Peer) {
    debug!(principal = %peer.principal, "answer not read in time: stream reset");
    let _ = send.reset(ANSWER_TIMED_OUT);
}

/// Reserves the answer's encoded bytes from the connection's and the node's answer budgets
/// (beside `reserved`, its in-memory size, if reserved already), writes it, and holds the
/// reservations until the client acknowledged all of it.
async fn answer(
    send: &mut SendStream,
    response: &ClientResponse,
    reserved: Option<Reservation>,
    peer: &Peer,
) -> Result<(), protocol::FrameError> {
    let encoded = peer.answers.reserve(protocol::frame_size(response)?).await?;
    let _reservation = match reserved {
        Some(reserved) => reserved.merge(encoded),
        None => encoded,
    };
    let frame = protocol::encode(response)?;
    send.write_all(&frame).await.map_err(|e| protocol::FrameError::Stream(e.to_string()))?;
    drop(frame);
    send.finish().map_err(|e| protocol::FrameError::Stream(e.to_string()))?;
    send.stopped().await.map_err(|e| protocol::FrameError::Stream(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::command::Op;
    use crate::kv::protocol::CommandBatch;

    #[test]
    fn reservations_cover_decoded_requests_and_built_answers() {
        // The review's batch: 1,024 reads of the empty key, ~3 KB on the wire.
        let get = Command { session: None, op: Op::Get { key: bytes::Bytes::new() } };
        let Ok(commands) = CommandBatch::new(vec![get; MAX_BATCH_LEN]) else {
            unreachable!("MAX_BATCH_LEN commands fit a batch")
        };
        let request = ClientRequest::Batch(commands);
        let Ok(len) = protocol::frame_size(&request) else { unreachable!("a 3 KB frame") };
        let decoded = MAX_BATCH_LEN * std::mem::size_of::<Command>();
        assert!(request_cost(len) >= len + decoded, "{} < {len} + {decoded}", request_cost(len));
        let none = CommandAnswer::Applied(Ok(crate::kv::command::OpResult::Value(None)));
        let Ok(answers) = crate::kv::bounded::Bounded::new(vec![none; MAX_BATCH_LEN]) else {
            unreachable!("MAX_BATCH_LEN answers fit a batch")
        };
        let built = MAX_BATCH_LEN * std::mem::size_of::<CommandAnswer>();
        assert!(answer_cost(&request) >= built);
        let Ok(encoded) = protocol::frame_size(&ClientResponse::Batch(answers)) else {
            unreachable!("a 4 KB frame")
        };
        assert!(encoded * 4 < built, "the encoded size alone would under-reserve");
    }

    #[test]
    fn unread_bytes_are_bounded_per_node() {
        let window = connection_receive_window(256) as usize;
        assert!((256 + ADMIN_RESERVED_CONNECTIONS) * window <= NODE_UNREAD_BYTES);
        assert!(window >= MAX_FRAME_BYTES / 16, "a large request still streams in");
        assert_eq!(connection_receive_window(0), 8 << 20);
        assert_eq!(connection_receive_window(1_000_000), 64 << 10);
    }
}
