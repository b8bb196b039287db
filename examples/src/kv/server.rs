//! The client port of a node: accepts QUIC connections from clients (mutual TLS) and serves
//! each bidirectional stream as one request.
//!
//! Writes go through the log. On a follower the answer is a redirect naming the leader's client
//! address. Every linearizable read goes through [`ClientService::read`], the one place to
//! switch to ReadIndex once raft-core offers it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raft_core::{Node, NodeId, ProposalError, ProposeError};
use raft_quic::quinn::{Endpoint, Incoming, RecvStream, SendStream};
use tracing::{debug, info, warn};

use super::command::{decode_response, Command};
use super::fault::Firewall;
use super::protocol::{self, AdminRequest, ClientRequest, ClientResponse, Member, MAX_BATCH_LEN};
use super::state_machine::SharedState;

/// The longest the node works on one request before answering "outcome unknown".
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a client may take to send its request once it opened the stream.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the client port serves requests with.
#[derive(Debug)]
pub struct ClientService {
    /// The Raft node.
    pub node: Node,
    /// The state its state machine applies to.
    pub state: SharedState,
    /// Every member's client address.
    pub members: Vec<Member>,
    /// The node's partition switch.
    pub firewall: Firewall,
    /// Whether admin (fault injection) requests are honoured.
    pub fault_injection: bool,
    /// The most client connections served at once.
    pub max_connections: usize,
    connections: AtomicUsize,
}

impl ClientService {
    /// A service for `node`.
    pub fn new(
        node: Node,
        state: SharedState,
        members: Vec<Member>,
        firewall: Firewall,
        fault_injection: bool,
        max_connections: usize,
    ) -> Self {
        Self {
            node,
            state,
            members,
            firewall,
            fault_injection,
            max_connections,
            connections: AtomicUsize::new(0),
        }
    }

    fn member(&self, id: NodeId) -> Option<Member> {
        self.members.iter().find(|m| m.id == id).cloned()
    }

    /// Answers one request (a batch: each of its requests, concurrently).
    pub async fn handle(&self, request: ClientRequest) -> ClientResponse {
        match request {
            ClientRequest::Batch(requests) => {
                if requests.len() > MAX_BATCH_LEN
                    || requests.iter().any(|r| matches!(r, ClientRequest::Batch(_)))
                {
                    return ClientResponse::Refused("batch too long or nested".into());
                }
                let answers = requests.into_iter().map(|r| self.handle_one(r));
                ClientResponse::Batch(futures::future::join_all(answers).await)
            }
            other => self.handle_one(other).await,
        }
    }

    async fn handle_one(&self, request: ClientRequest) -> ClientResponse {
        match request {
            ClientRequest::Batch(_) => ClientResponse::Refused("nested batch".into()),
            ClientRequest::Command(command) => {
                if let Err(e) = command.op.validate() {
                    return ClientResponse::Refused(e.to_string());
                }
                let work = async {
                    if command.op.is_read() {
                        self.read(command).await
                    } else {
                        self.propose(command).await
                    }
                };
                tokio::time::timeout(REQUEST_TIMEOUT, work).await.unwrap_or_else(|_| {
                    ClientResponse::Unknown("the node did not finish the request in time".into())
                })
            }
            ClientRequest::Status => {
                ClientResponse::Status { status: self.node.status(), members: self.members.clone() }
            }
            ClientRequest::Admin(AdminRequest::Partition { blocked }) => {
                if !self.fault_injection {
                    return ClientResponse::Refused("fault injection is disabled".into());
                }
                info!(node = self.node.id(), ?blocked, "partition set by a client");
                self.firewall.set_blocked(blocked);
                ClientResponse::AdminDone
            }
        }
    }

    /// A linearizable read. For now it runs through the log like a write (a `Get` entry): its
    /// answer reflects every write committed before the read was accepted.
    pub async fn read(&self, command: Command) -> ClientResponse {
        self.propose(command).await
    }

    /// Runs `command` through the log and returns the state machine's answer.
    async fn propose(&self, command: Command) -> ClientResponse {
        let bytes = match command.encode() {
            Ok(bytes) => bytes,
            Err(e) => return ClientResponse::Refused(e.to_string()),
        };
        match self.node.propose(bytes).await {
            Ok(proposal) => match proposal.response().await {
                Ok(answer) => ClientResponse::Applied(decode_response(&answer)),
                Err(e @ ProposalError::Dropped { .. }) => ClientResponse::NotApplied(e.to_string()),
                Err(e) => ClientResponse::Unknown(e.to_string()),
            },
            Err(ProposeError::NotLeader { leader_hint }) => {
                ClientResponse::NotLeader { leader: leader_hint.and_then(|id| self.member(id)) }
            }
            Err(e @ ProposeError::TooLarge { .. }) => ClientResponse::Refused(e.to_string()),
            Err(e) => ClientResponse::NotApplied(e.to_string()),
        }
    }
}

/// Accepts client connections on `endpoint` until it is closed.
pub async fn accept_loop(endpoint: Endpoint, service: Arc<ClientService>) {
    while let Some(incoming) = endpoint.accept().await {
        if service.connections.fetch_add(1, Ordering::AcqRel) >= service.max_connections {
            service.connections.fetch_sub(1, Ordering::AcqRel);
            warn!(remote = %incoming.remote_address(), "refusing client: too many connections");
            incoming.refuse();
            continue;
        }
        tokio::spawn(serve_connection(incoming, Arc::clone(&service)));
    }
    debug!("client endpoint closed");
}

/// Releases a connection slot when dropped.
struct Slot(Arc<ClientService>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn serve_connection(incoming: Incoming, service: Arc<ClientService>) {
    let slot = Slot(service);
    let remote = incoming.remote_address();
    let connection = match incoming.await {
        Ok(connection) => connection,
        Err(e) => {
            warn!(%remote, "client handshake failed: {e}");
            return;
        }
    };
    debug!(%remote, "client connected");
    loop {
        match connection.accept_bi().await {
            Ok((send, recv)) => {
                tokio::spawn(serve_stream(send, recv, Arc::clone(&slot.0)));
            }
            Err(e) => {
                debug!(%remote, "client connection ended: {e}");
                return;
            }
        }
    }
}

async fn serve_stream(mut send: SendStream, mut recv: RecvStream, service: Arc<ClientService>) {
    let request = match tokio::time::timeout(RECEIVE_TIMEOUT, protocol::read(&mut recv)).await {
        Ok(Ok(request)) => request,
        Ok(Err(e)) => {
            debug!("bad client request: {e}");
            let _ = protocol::write(&mut send, &ClientResponse::Refused(e.to_string())).await;
            return;
        }
        Err(_) => {
            let _ = send.reset(0u32.into());
            return;
        }
    };
    drop(recv);
    let response = service.handle(request).await;
    if let Err(e) = protocol::write(&mut send, &response).await {
        debug!("cannot answer a client: {e}");
    }
}
