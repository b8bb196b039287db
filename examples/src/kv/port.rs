//! The client port: accepts QUIC connections (mutual TLS), names each one's [`Principal`]
//! from its certificate, and serves every bidirectional stream as one request.
//!
//! Admission goes through a [`Gate`] (the same as the Raft port's): a connection slot is taken
//! only once the handshake succeeded, unvalidated source addresses get a QUIC Retry, handshakes
//! are limited in number (in all and per IP) and in time, and failed attempts are logged at
//! most once per interval per remote. A flood of half-open handshakes thus holds no slot.
//!
//! Memory is bounded per connection and per node, for requests and for answers alike (two
//! [`Budget`]s: [`CONNECTION_BYTES`] and [`NODE_BYTES`] each):
//!
//! * What a client sent that the node has not read yet is bounded by the connection's receive
//!   window ([`CONNECTION_RECEIVE_WINDOW`]). A request's announced length is reserved before
//!   its body is read; the reservation is held until the request has been handled. A request must arrive within [`RECEIVE_TIMEOUT`] (its
//!   reservation included), else its stream is reset ([`REQUEST_TIMED_OUT`]).
//! * An answer's encoded size is reserved before it is encoded, and held until the client
//!   acknowledged every byte of it (so quinn's send buffers are covered too). An answer must be
//!   reserved, written and acknowledged within [`ANSWER_WRITE_TIMEOUT`], else its stream is
//!   reset ([`ANSWER_TIMED_OUT`]) and its memory released. A client that withholds
//!   flow-control credit thus holds at most its connection's budget, for at most that long per
//!   answer.

use std::sync::Arc;
use std::time::Duration;

use raft_quic::accept::ConnectionSlot;
use raft_quic::quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};
use raft_quic::{Gate, GateConfig};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::debug;

use super::auth::{principal_of, Principal};
use super::protocol::{self, ClientResponse, MAX_FRAME_BYTES};
use super::server::ClientService;

/// The longest a client may take to send its request once it opened the stream.
pub const RECEIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest an answer may take from the moment it is ready until the client acknowledged
/// all of it (waiting for the answer budgets included).
pub const ANSWER_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// The most bytes one connection may hold in requests being handled, and (separately) in
/// answers not yet acknowledged: four of the largest frames.
pub const CONNECTION_BYTES: usize = 4 * (MAX_FRAME_BYTES + 4);
/// The most bytes a client may send on one connection that the node has not read yet (quinn's
/// connection receive window; the client port's server configuration sets it).
pub const CONNECTION_RECEIVE_WINDOW: u32 = 8 << 20;
/// The most bytes all connections of a node may hold in requests, and (separately) in answers.
pub const NODE_BYTES: usize = 64 << 20;
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
    _connection: OwnedSemaphorePermit,
    _node: OwnedSemaphorePermit,
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
        Ok(Reservation { _connection: connection, _node: node })
    }
}

/// A node's client port: the service, the admission gate and the node-wide budgets.
#[derive(Debug)]
pub struct ClientPort {
    service: Arc<ClientService>,
    gate: Gate,
    requests: Arc<Semaphore>,
    answers: Arc<Semaphore>,
}

impl ClientPort {
    /// A port serving `service` to at most `max_connections` clients at once (counted after
    /// their handshake; the gate's other limits are [`GateConfig::new`]'s).
    pub fn new(service: Arc<ClientService>, max_connections: usize) -> Arc<Self> {
        let gate = Gate::new(
            "kv client port",
            GateConfig::new(max_connections),
            Arc::new(raft_quic::TokioRuntime),
        );
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
        let reservation = peer.requests.reserve(len).await?;
        let request = protocol::read_body(&mut recv, len).await?;
        Ok::<_, protocol::FrameError>((request, reservation))
    });
    let response = match received.await {
        Ok(Ok((request, reservation))) => {
            drop(recv);
            let response = port.service.handle(&peer.principal, request).await;
            drop(reservation);
            response
        }
        Ok(Err(e)) => {
            debug!("bad client request: {e}");
            ClientResponse::Refused(e.to_string())
        }
        Err(_) => {
            let _ = send.reset(REQUEST_TIMED_OUT);
            return;
        }
    };
    match tokio::time::timeout(ANSWER_WRITE_TIMEOUT, answer(&mut send, &response, &peer)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!("cannot answer a client: {e}"),
        Err(_) => {
            debug!(principal = %peer.principal, "answer not read in time: stream reset");
            let _ = send.reset(ANSWER_TIMED_OUT);
        }
    }
}

/// Reserves the answer's bytes from the connection's and the node's answer budgets, writes it,
/// and holds the reservation until the client acknowledged all of it.
async fn answer(
    send: &mut SendStream,
    response: &ClientResponse,
    peer: &Peer,
) -> Result<(), protocol::FrameError> {
    let _reservation = peer.answers.reserve(protocol::frame_size(response)?).await?;
    let frame = protocol::encode(response)?;
    send.write_all(&frame).await.map_err(|e| protocol::FrameError::Stream(e.to_string()))?;
    drop(frame);
    send.finish().map_err(|e| protocol::FrameError::Stream(e.to_string()))?;
    send.stopped().await.map_err(|e| protocol::FrameError::Stream(e.to_string()))?;
    Ok(())
}
