//! The client port: accepts QUIC connections (mutual TLS), names each one's [`Principal`]
//! from its certificate, and serves every bidirectional stream as one request.
//!
//! Memory held for answers not yet read is bounded per connection
//! ([`CONNECTION_ANSWER_BYTES`]) and per node ([`NODE_ANSWER_BYTES`]): before an answer is
//! encoded, its size is reserved from both budgets, and the reservation is held until the
//! client acknowledged every byte of it (so quinn's send buffers are covered too). An answer
//! must be reserved, written and acknowledged within [`ANSWER_WRITE_TIMEOUT`]; otherwise its
//! stream is reset ([`ANSWER_TIMED_OUT`]) and its memory released. A client that withholds
//! flow-control credit thus holds at most its connection's budget, for at most that long per
//! answer, and never delays the answers of other connections beyond the node budget.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raft_quic::quinn::{Endpoint, Incoming, RecvStream, SendStream, VarInt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use super::auth::{principal_of, Principal};
use super::protocol::{self, ClientResponse, MAX_FRAME_BYTES};
use super::server::ClientService;

/// The longest a client may take to send its request once it opened the stream.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest an answer may take from the moment it is ready until the client acknowledged
/// all of it (waiting for the answer budgets included).
pub const ANSWER_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// The most bytes of answers one connection may hold unread (at least one largest frame).
pub const CONNECTION_ANSWER_BYTES: usize = 4 * (MAX_FRAME_BYTES + 4);
/// The most bytes of answers all connections of a node may hold unread.
pub const NODE_ANSWER_BYTES: usize = 64 << 20;
/// Stream reset code: the answer was not read in time.
pub const ANSWER_TIMED_OUT: VarInt = VarInt::from_u32(1);
/// Stream reset code: the request was not received in time.
pub const REQUEST_TIMED_OUT: VarInt = VarInt::from_u32(2);
/// Connection close code: the certificate names no client role.
pub const NO_ROLE: VarInt = VarInt::from_u32(3);

/// A node's client port: the service, the connection slots and the node-wide answer budget.
#[derive(Debug)]
pub struct ClientPort {
    service: Arc<ClientService>,
    max_connections: usize,
    connections: AtomicUsize,
    answers: Arc<Semaphore>,
}

impl ClientPort {
    /// A port serving `service` to at most `max_connections` clients at once.
    pub fn new(service: Arc<ClientService>, max_connections: usize) -> Arc<Self> {
        Arc::new(Self {
            service,
            max_connections,
            connections: AtomicUsize::new(0),
            answers: Arc::new(Semaphore::new(NODE_ANSWER_BYTES)),
        })
    }

    /// Bytes of answers currently held for clients, node-wide.
    pub fn answer_bytes_held(&self) -> usize {
        NODE_ANSWER_BYTES - self.answers.available_permits()
    }
}

/// Accepts client connections on `endpoint` until it is closed.
pub async fn accept_loop(endpoint: Endpoint, port: Arc<ClientPort>) {
    while let Some(incoming) = endpoint.accept().await {
        if port.connections.fetch_add(1, Ordering::AcqRel) >= port.max_connections {
            port.connections.fetch_sub(1, Ordering::AcqRel);
            warn!(remote = %incoming.remote_address(), "refusing client: too many connections");
            incoming.refuse();
            continue;
        }
        tokio::spawn(serve_connection(incoming, Arc::clone(&port)));
    }
    debug!("client endpoint closed");
}

/// Releases a connection slot when dropped.
struct Slot(Arc<ClientPort>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One connection's share: its principal and its answer budget.
struct Peer {
    principal: Principal,
    answers: Arc<Semaphore>,
}

async fn serve_connection(incoming: Incoming, port: Arc<ClientPort>) {
    let slot = Slot(port);
    let remote = incoming.remote_address();
    let connection = match incoming.await {
        Ok(connection) => connection,
        Err(e) => {
            warn!(%remote, "client handshake failed: {e}");
            return;
        }
    };
    let principal = match principal_of(&connection) {
        Ok(principal) => principal,
        Err(e) => {
            info!(%remote, "refusing client connection: {e}");
            connection.close(NO_ROLE, b"the certificate names no client role");
            return;
        }
    };
    debug!(%remote, %principal, "client connected");
    let peer =
        Arc::new(Peer { principal, answers: Arc::new(Semaphore::new(CONNECTION_ANSWER_BYTES)) });
    loop {
        match connection.accept_bi().await {
            Ok((send, recv)) => {
                tokio::spawn(serve_stream(send, recv, Arc::clone(&slot.0), Arc::clone(&peer)));
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
    let response = match tokio::time::timeout(RECEIVE_TIMEOUT, protocol::read(&mut recv)).await {
        Ok(Ok(request)) => {
            drop(recv);
            port.service.handle(&peer.principal, request).await
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
    match tokio::time::timeout(ANSWER_WRITE_TIMEOUT, answer(&mut send, &response, &port, &peer))
        .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!("cannot answer a client: {e}"),
        Err(_) => {
            debug!(principal = %peer.principal, "answer not read in time: stream reset");
            let _ = send.reset(ANSWER_TIMED_OUT);
        }
    }
}

/// Reserves the answer's bytes from the connection's and the node's budgets, writes it, and
/// holds the reservation until the client acknowledged all of it.
async fn answer(
    send: &mut SendStream,
    response: &ClientResponse,
    port: &ClientPort,
    peer: &Peer,
) -> Result<(), protocol::FrameError> {
    let size = protocol::frame_size(response)?;
    let _reserved = reserve(&peer.answers, size).await?;
    let _reserved_node = reserve(&port.answers, size).await?;
    let frame = protocol::encode(response)?;
    send.write_all(&frame).await.map_err(|e| protocol::FrameError::Stream(e.to_string()))?;
    drop(frame);
    send.finish().map_err(|e| protocol::FrameError::Stream(e.to_string()))?;
    send.stopped().await.map_err(|e| protocol::FrameError::Stream(e.to_string()))?;
    Ok(())
}

async fn reserve(
    budget: &Arc<Semaphore>,
    bytes: usize,
) -> Result<OwnedSemaphorePermit, protocol::FrameError> {
    let permits = u32::try_from(bytes).map_err(|_| protocol::FrameError::TooLarge)?;
    Arc::clone(budget)
        .acquire_many_owned(permits)
        .await
        .map_err(|e| protocol::FrameError::Stream(e.to_string()))
}
