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

use super::command::{decode_responses, encode_commands, Command};
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

    /// Answers one request. The commands of a batch share log entries: its writes are
    /// proposed as one entry and its reads go through [`ClientService::read`] together.
    pub async fn handle(&self, request: ClientRequest) -> ClientResponse {
        match request {
            ClientRequest::Batch(requests) => {
                if requests.len() > MAX_BATCH_LEN {
                    return ClientResponse::Refused("batch too long".into());
                }
                ClientResponse::Batch(self.handle_batch(requests).await)
            }
            ClientRequest::Command(command) => {
                let mut answers = self.handle_batch(vec![ClientRequest::Command(command)]).await;
                answers.pop().unwrap_or_else(|| ClientResponse::Refused("no answer".into()))
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

    async fn handle_batch(&self, requests: Vec<ClientRequest>) -> Vec<ClientResponse> {
        let mut answers: Vec<Option<ClientResponse>> = vec![None; requests.len()];
        let (mut reads, mut writes, mut others) = (Vec::new(), Vec::new(), Vec::new());
        for (i, request) in requests.into_iter().enumerate() {
            match request {
                ClientRequest::Command(command) => match command.op.validate() {
                    Err(e) => answers[i] = Some(ClientResponse::Refused(e.to_string())),
                    Ok(()) if command.op.is_read() => reads.push((i, command)),
                    Ok(()) => writes.push((i, command)),
                },
                ClientRequest::Batch(_) => {
                    answers[i] = Some(ClientResponse::Refused("nested batch".into()))
                }
                other => others.push((i, other)),
            }
        }
        let (read_positions, reads): (Vec<usize>, Vec<Command>) = reads.into_iter().unzip();
        let (write_positions, writes): (Vec<usize>, Vec<Command>) = writes.into_iter().unzip();
        let (other_positions, others): (Vec<usize>, Vec<ClientRequest>) =
            others.into_iter().unzip();
        let others =
            futures::future::join_all(others.into_iter().map(|r| Box::pin(self.handle(r))));
        let (read_answers, write_answers, other_answers) = futures::join!(
            bounded(reads.len(), self.read(reads)),
            bounded(writes.len(), self.propose(writes)),
            others
        );
        for (positions, results) in [
            (read_positions, read_answers),
            (write_positions, write_answers),
            (other_positions, other_answers),
        ] {
            for (i, answer) in positions.into_iter().zip(results) {
                answers[i] = Some(answer);
            }
        }
        answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| ClientResponse::Refused("no answer".into())))
            .collect()
    }

    /// Linearizable reads. For now they run through the log like writes (one entry of `Get`
    /// commands): each answer reflects every write committed before the read was accepted.
    /// This is the one place to switch to ReadIndex.
    pub async fn read(&self, commands: Vec<Command>) -> Vec<ClientResponse> {
        self.propose(commands).await
    }

    /// Proposes `commands` as one log entry and returns the state machine's answer to each.
    async fn propose(&self, commands: Vec<Command>) -> Vec<ClientResponse> {
        let count = commands.len();
        if count == 0 {
            return Vec::new();
        }
        let all = |response: ClientResponse| vec![response; count];
        let bytes = match encode_commands(&commands) {
            Ok(bytes) => bytes,
            Err(e) => return all(ClientResponse::Refused(e.to_string())),
        };
        match self.node.propose(bytes).await {
            Ok(proposal) => match proposal.response().await {
                Ok(answer) => decode_responses(&answer, count)
                    .into_iter()
                    .map(ClientResponse::Applied)
                    .collect(),
                Err(e @ ProposalError::Dropped { .. }) => {
                    all(ClientResponse::NotApplied(e.to_string()))
                }
                Err(e) => all(ClientResponse::Unknown(e.to_string())),
            },
            Err(ProposeError::NotLeader { leader_hint }) => all(ClientResponse::NotLeader {
                leader: leader_hint.and_then(|id| self.member(id)),
            }),
            Err(e @ ProposeError::TooLarge { .. }) => all(ClientResponse::Refused(e.to_string())),
            Err(e) => all(ClientResponse::NotApplied(e.to_string())),
        }
    }
}

/// Bounds the time spent on `count` commands: past [`REQUEST_TIMEOUT`] each is answered
/// "outcome unknown".
async fn bounded(
    count: usize,
    work: impl std::future::Future<Output = Vec<ClientResponse>>,
) -> Vec<ClientResponse> {
    tokio::time::timeout(REQUEST_TIMEOUT, work).await.unwrap_or_else(|_| {
        vec![ClientResponse::Unknown("the node did not finish the request in time".into()); count]
    })
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
