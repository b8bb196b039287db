//! [`KvClient`]: a client session with leader discovery, retries and exactly-once writes.
//!
//! Every write carries the session id (128 random bits drawn when the session is opened; the
//! session belongs to this client's certificate) and a fresh sequence number; a retry (after a
//! timeout, a lost leadership or a redirect) reuses them, and the state machine answers a duplicate with
//! the first answer instead of applying it again. One client may run many operations at once
//! (it is `Sync`); each session tells the state machine which answers it has received, so the
//! state machine keeps only the answers still awaited.

use std::collections::BTreeSet;
use std::sync::Mutex;

use bytes::Bytes;
use raft_core::{NodeId, Status};
use tracing::debug;

use super::command::{Command, KvError, Op, OpResult, Response, SessionId, SessionRef};
use super::connections::{CallError, Connections};
use super::protocol::{
    AdminRequest, ClientRequest, ClientResponse, Member, MemberError, MemberList, MemberRequest,
};

/// Why an operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The operation did not complete before its deadline. If `maybe_applied`, a request
    /// reached a node and the operation may have taken effect (or may still).
    #[error("operation timed out (may have been applied: {maybe_applied})")]
    Timeout {
        /// Whether the operation may have been applied.
        maybe_applied: bool,
    },
    /// The session expired on the cluster (too many sessions); the outcome of the operation
    /// is unknown. The client opens a new session for its next operation.
    #[error("client session expired; the outcome is unknown")]
    SessionExpired,
    /// The cluster refused the request.
    #[error("refused: {0}")]
    Refused(String),
    /// The client's certificate does not allow the request (it needs an admin certificate).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The operating system gave no randomness for a session id.
    #[error("no randomness for a session id")]
    NoRandomness,
    /// The state machine refused the operation without applying it.
    #[error("rejected: {0}")]
    Rejected(KvError),
    /// A node answered something unexpected.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A membership request failed for good.
    #[error(transparent)]
    Member(#[from] MemberError),
    /// No leader answered before the deadline (membership requests need one).
    #[error("no leader answered within the time limit (last reason: {0})")]
    NoLeader(String),
}

impl ClientError {
    /// Whether the operation may have taken effect.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, ClientError::Timeout { maybe_applied: true } | ClientError::SessionExpired)
    }
}

#[derive(Debug)]
struct Session {
    id: SessionId,
    next_seq: u64,
    outstanding: BTreeSet<u64>,
}

/// A client session. Create as many as needed on one [`Connections`].
#[derive(Debug)]
pub struct KvClient {
    connections: Connections,
    session: Mutex<Option<Session>>,
    /// Serializes session registration.
    registering: tokio::sync::Mutex<()>,
}

impl KvClient {
    /// A client on `connections`. Its session is opened with its first write.
    pub fn new(connections: Connections) -> Self {
        Self { connections, session: Mutex::new(None), registering: tokio::sync::Mutex::new(()) }
    }

    /// The connections this client uses.
    pub fn connections(&self) -> &Connections {
        &self.connections
    }

    fn session(&self) -> std::sync::MutexGuard<'_, Option<Session>> {
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads `key` (linearizable).
    pub async fn get(&self, key: impl Into<Bytes>) -> Result<Option<Bytes>, ClientError> {
        let command = Command { session: None, op: Op::Get { key: key.into() } };
        match self.run(&command).await? {
            Ok(OpResult::Value(value)) => Ok(value),
            other => Err(unexpected(other)),
        }
    }

    /// Sets `key` to `value`.
    pub async fn put(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<(), ClientError> {
        match self.write(Op::Put { key: key.into(), value: value.into() }).await? {
            OpResult::Written => Ok(()),
            other => Err(unexpected(Ok(other))),
        }
    }

    /// Removes `key`; returns whether it existed.
    pub async fn delete(&self, key: impl Into<Bytes>) -> Result<bool, ClientError> {
        match self.write(Op::Delete { key: key.into() }).await? {
            OpResult::Deleted { existed } => Ok(existed),
            other => Err(unexpected(Ok(other))),
        }
    }

    /// Sets `key` to `new` (removes it if `None`) if its value is `expected` (`None`: absent);
    /// returns whether it swapped.
    pub async fn cas(
        &self,
        key: impl Into<Bytes>,
        expected: Option<Bytes>,
        new: Option<Bytes>,
    ) -> Result<bool, ClientError> {
        match self.write(Op::Cas { key: key.into(), expected, new }).await? {
            OpResult::Cas { swapped } => Ok(swapped),
            other => Err(unexpected(Ok(other))),
        }
    }

    /// Runs a write in this client's session (opening one first if needed).
    async fn write(&self, op: Op) -> Result<OpResult, ClientError> {
        let (id, seq, ack_below) = self.next_seq().await?;
        let command = Command { session: Some(SessionRef { id, seq, ack_below }), op };
        let result = self.run(&command).await;
        let mut session = self.session();
        if let Some(s) = session.as_mut().filter(|s| s.id == id) {
            s.outstanding.remove(&seq);
        }
        match result? {
            Ok(result) => Ok(result),
            Err(KvError::UnknownSession) => {
                if session.as_ref().is_some_and(|s| s.id == id) {
                    *session = None;
                }
                Err(ClientError::SessionExpired)
            }
            Err(e) => Err(ClientError::Rejected(e)),
        }
    }

    /// Allocates a sequence number, opening the session first if there is none.
    async fn next_seq(&self) -> Result<(SessionId, u64, u64), ClientError> {
        if let Some(allocated) = self.allocate() {
            return Ok(allocated);
        }
        let _registering = self.registering.lock().await;
        if let Some(allocated) = self.allocate() {
            return Ok(allocated);
        }
        let id = new_session_id()?;
        let register = Command { session: None, op: Op::Register { id } };
        match self.run(&register).await? {
            Ok(OpResult::Registered { id: opened }) if opened == id => {
                debug!(id, "session opened");
                *self.session() = Some(Session { id, next_seq: 0, outstanding: BTreeSet::new() });
            }
            other => return Err(unexpected(other)),
        }
        self.allocate().ok_or(ClientError::SessionExpired)
    }

    fn allocate(&self) -> Option<(SessionId, u64, u64)> {
        let mut session = self.session();
        let s = session.as_mut()?;
        let seq = s.next_seq;
        s.next_seq += 1;
        s.outstanding.insert(seq);
        let ack_below = s.outstanding.first().copied().unwrap_or(seq);
        Some((s.id, seq, ack_below))
    }

    /// Sends `command` until a node applies it or the deadline passes, following redirects.
    ///
    /// Normally one attempt, at the node believed to lead. Once an answer is late
    /// (`hedge_after`), another node is tried with the same request every `probe_interval`, so
    /// that a dead leader is routed around as soon as another node has taken over; the session
    /// makes the copies harmless (a read is harmless anyway). A follower answers such a probe
    /// with a redirect at once, so probing costs little.
    async fn run(&self, command: &Command) -> Result<Response, ClientError> {
        let conns = &self.connections;
        let options = conns.options().clone();
        let deadline = tokio::time::Instant::now() + options.op_timeout;
        let request = ClientRequest::Command(command.clone());
        let mut attempts = Attempts::new(conns.clone(), request);
        let mut maybe_applied = false;
        let mut redirects = 0u32;
        let first = conns.leader().or_else(|| conns.pick(None));
        match first {
            Some(node) => attempts.launch(node, None),
            None => return Err(ClientError::Protocol("no nodes configured".into())),
        }
        let mut next_hedge = tokio::time::Instant::now() + options.hedge_after;
        loop {
            let (node, result) = tokio::select! {
                Some(done) = attempts.next() => done,
                () = tokio::time::sleep_until(next_hedge) => {
                    next_hedge = tokio::time::Instant::now() + options.probe_interval;
                    if attempts.len() < 3 {
                        if let Some(other) = attempts.pick_idle(None) {
                            attempts.launch(other, None);
                        }
                    }
                    continue;
                }
                () = tokio::time::sleep_until(deadline) => {
                    // An attempt still in flight may have reached a node.
                    let maybe_applied = maybe_applied || attempts.len() > 0;
                    return Err(ClientError::Timeout { maybe_applied });
                }
            };
            // Where to go next, and after what pause, if nothing else is in flight.
            let mut next: Option<(Option<NodeId>, bool)> = Some((None, true));
            match result {
                Ok(ClientResponse::Applied(response)) => {
                    conns.set_leader(Some(node));
                    return Ok(response);
                }
                Ok(ClientResponse::NotLeader { leader: Some(leader) })
                    if leader.id != node && !conns.is_suspect(leader.id) =>
                {
                    conns.learn(&leader);
                    conns.set_leader(Some(leader.id));
                    if attempts.is_in_flight(leader.id) {
                        next = None;
                    } else {
                        redirects += 1;
                        // Nodes that disagree about the leader (an election settling) slow us.
                        next = Some((Some(leader.id), redirects % 4 == 0));
                    }
                }
                Ok(ClientResponse::NotLeader { .. }) => conns.set_leader(None),
                Ok(ClientResponse::NotApplied(reason)) => debug!(node, "not applied: {reason}"),
                Ok(ClientResponse::Unknown(reason)) => {
                    debug!(node, "outcome unknown: {reason}");
                    maybe_applied = true;
                    conns.set_leader(None);
                }
                Ok(ClientResponse::Refused(reason)) => return Err(ClientError::Refused(reason)),
                Ok(ClientResponse::Forbidden(reason)) => {
                    return Err(ClientError::Forbidden(reason))
                }
                Ok(other) => return Err(ClientError::Protocol(format!("unexpected {other:?}"))),
                Err(e) => {
                    debug!(node, "attempt failed: {e}");
                    maybe_applied |= e.maybe_sent();
                    if !matches!(e, CallError::UnknownNode(_)) {
                        conns.suspect(node);
                    }
                    next = Some((None, false));
                }
            }
            match next {
                Some((Some(target), pause)) => {
                    attempts.launch(target, pause.then_some(options.retry_delay));
                }
                Some((None, pause)) if attempts.len() == 0 => {
                    let target = conns
                        .leader()
                        .filter(|&l| l != node)
                        .or_else(|| attempts.pick_idle(Some(node)))
                        .or_else(|| conns.pick(Some(node)));
                    if let Some(target) = target {
                        attempts.launch(target, pause.then_some(options.retry_delay));
                    }
                }
                _ => {}
            }
        }
    }
}

type AttemptFuture =
    futures::future::BoxFuture<'static, (NodeId, Result<ClientResponse, CallError>)>;

/// The attempts of one operation in flight, by node.
struct Attempts {
    connections: Connections,
    request: std::sync::Arc<ClientRequest>,
    running: futures::stream::FuturesUnordered<AttemptFuture>,
    nodes: Vec<NodeId>,
}

impl Attempts {
    fn new(connections: Connections, request: ClientRequest) -> Self {
        Self {
            connections,
            request: std::sync::Arc::new(request),
            running: futures::stream::FuturesUnordered::new(),
            nodes: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.nodes.len()
    }

    fn is_in_flight(&self, node: NodeId) -> bool {
        self.nodes.contains(&node)
    }

    /// A node with no attempt in flight, not suspect if possible, after `after` in id order.
    fn pick_idle(&self, after: Option<NodeId>) -> Option<NodeId> {
        let nodes = self.connections.nodes();
        let start = after.and_then(|p| nodes.iter().position(|&n| n == p)).map_or(0, |i| i + 1);
        let idle: Vec<NodeId> = nodes
            .iter()
            .cycle()
            .skip(start)
            .take(nodes.len())
            .copied()
            .filter(|n| !self.is_in_flight(*n))
            .collect();
        idle.iter().copied().find(|&n| !self.connections.is_suspect(n)).or(idle.first().copied())
    }

    fn launch(&mut self, node: NodeId, delay: Option<std::time::Duration>) {
        use futures::FutureExt;
        let connections = self.connections.clone();
        let request = self.request.clone();
        self.nodes.push(node);
        self.running.push(
            async move {
                if let Some(delay) = delay {
                    tokio::time::sleep(delay).await;
                }
                (node, connections.call(node, &request).await)
            }
            .boxed(),
        );
    }

    async fn next(&mut self) -> Option<(NodeId, Result<ClientResponse, CallError>)> {
        use futures::StreamExt;
        let (node, result) = self.running.next().await?;
        if let Some(i) = self.nodes.iter().position(|&n| n == node) {
            self.nodes.swap_remove(i);
        }
        Some((node, result))
    }
}

/// A fresh session id: 128 bits from the operating system's random source.
fn new_session_id() -> Result<SessionId, ClientError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| ClientError::NoRandomness)?;
    Ok(SessionId::from_le_bytes(bytes))
}

fn unexpected(response: Response) -> ClientError {
    match response {
        Err(e) => ClientError::Rejected(e),
        Ok(other) => ClientError::Protocol(format!("unexpected answer {other:?}")),
    }
}

/// A node's answer to a status request.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    /// Its Raft status.
    pub status: Status,
    /// The members it knows.
    pub members: Vec<Member>,
}

impl Connections {
    /// Sends a membership request to the leader: follows redirects, retries while the cluster
    /// says "retry" (another change in progress, no leader yet, node unreachable), until the
    /// client's operation timeout. Membership requests are idempotent, so a retry after a lost
    /// answer is harmless. No hedging: one attempt at a time, each allowed the whole remaining
    /// time (adding a node waits for it to catch up).
    pub async fn member_request(&self, request: MemberRequest) -> Result<MemberList, ClientError> {
        let options = self.options().clone();
        let deadline = tokio::time::Instant::now() + options.op_timeout;
        let request = ClientRequest::Member(request);
        let mut target = self.leader().or_else(|| self.pick(None));
        let mut last_reason = String::from("no attempt");
        let mut maybe_applied = false;
        loop {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(if maybe_applied {
                    ClientError::Timeout { maybe_applied }
                } else {
                    ClientError::NoLeader(last_reason)
                });
            }
            let Some(node) = target else {
                return Err(ClientError::Protocol("no nodes configured".into()));
            };
            let mut pause = true;
            match self.call_within(node, &request, deadline - now).await {
                Ok(ClientResponse::Members(list)) => {
                    if list.leader == Some(list.answered_by) {
                        self.set_leader(Some(list.answered_by));
                    }
                    return Ok(list);
                }
                Ok(ClientResponse::MemberFailed(e)) => return Err(ClientError::Member(e)),
                Ok(ClientResponse::Refused(reason)) => return Err(ClientError::Refused(reason)),
                Ok(ClientResponse::Forbidden(reason)) => {
                    return Err(ClientError::Forbidden(reason))
                }
                Ok(ClientResponse::NotLeader { leader: Some(leader) }) if leader.id != node => {
                    self.learn(&leader);
                    self.set_leader(Some(leader.id));
                    last_reason = format!("node {node} redirected to node {}", leader.id);
                    target = Some(leader.id);
                    pause = false;
                }
                Ok(ClientResponse::NotLeader { .. }) => {
                    self.set_leader(None);
                    last_reason = format!("node {node} knows no leader");
                    target = self.pick(Some(node));
                }
                Ok(ClientResponse::NotApplied(reason)) => {
                    last_reason = format!("node {node}: {reason}");
                }
                Ok(ClientResponse::Unknown(reason)) => {
                    maybe_applied = true;
                    last_reason = format!("node {node}: {reason}");
                    self.set_leader(None);
                    target = self.pick(Some(node));
                }
                Ok(other) => {
                    return Err(ClientError::Protocol(format!("unexpected {other:?}")));
                }
                Err(e) => {
                    maybe_applied |= e.maybe_sent();
                    last_reason = e.to_string();
                    if !matches!(e, CallError::UnknownNode(_)) {
                        self.suspect(node);
                    }
                    target = self.pick(Some(node));
                }
            }
            if pause {
                tokio::time::sleep(options.retry_delay.max(std::time::Duration::from_millis(50)))
                    .await;
            }
        }
    }

    /// The membership as the leader knows it (voters, learners, leader, addresses).
    pub async fn member_list(&self) -> Result<MemberList, ClientError> {
        self.member_request(MemberRequest::List).await
    }

    /// Adds node `id` (listening at `raft_addr` for peers and `client_addr` for clients) as a
    /// voter. The node must be running (`kv-node --join`). Three steps, each retried as needed
    /// within the client's operation timeout: the leader records the addresses and adds the node
    /// as a learner; the client polls the new node's status on its client port until it has
    /// applied the commit index the leader had then (evidence that it is reachable and caught
    /// up, which the leader's promotion check does not give in a young cluster); the leader
    /// promotes it (`Node::add_voter`). A node that never catches up stays a learner
    /// ([`MemberError::CatchUpTimeout`]; `member remove` it or retry).
    pub async fn member_add(
        &self,
        id: NodeId,
        raft_addr: std::net::SocketAddr,
        client_addr: std::net::SocketAddr,
    ) -> Result<MemberList, ClientError> {
        let started = tokio::time::Instant::now();
        let deadline = started + self.options().op_timeout;
        let remaining_ms = || {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            u64::try_from(left.as_millis()).unwrap_or(u64::MAX).saturating_sub(500).max(100)
        };
        let add = |promote| MemberRequest::Add {
            id,
            raft_addr,
            client_addr,
            catch_up_ms: remaining_ms(),
            promote,
        };
        let learner = self.member_request(add(false)).await?;
        if learner.members.iter().any(|m| m.id == id && m.voter) {
            return Ok(learner);
        }
        self.learn(&Member { id, client_addr });
        let target = learner.commit_index;
        loop {
            if let Ok(s) = self.status(id).await {
                if s.status.leader_id.is_some() && s.status.applied_index >= target {
                    break;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                let waited_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                return Err(ClientError::Member(MemberError::CatchUpTimeout { id, waited_ms }));
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        self.member_request(add(true)).await
    }

    /// Removes node `id` (the leader too) and forgets its addresses.
    pub async fn member_remove(&self, id: NodeId) -> Result<MemberList, ClientError> {
        self.member_request(MemberRequest::Remove { id }).await
    }

    /// Makes voter `id` the leader.
    pub async fn transfer_leader(&self, id: NodeId) -> Result<MemberList, ClientError> {
        let list = self.member_request(MemberRequest::TransferLeader { id }).await?;
        self.set_leader(Some(id));
        Ok(list)
    }

    /// Asks `node` for its status (within the status timeout).
    pub async fn status(&self, node: NodeId) -> Result<NodeStatus, ClientError> {
        let limit = self.options().status_timeout;
        match self.call_within(node, &ClientRequest::Status, limit).await {
            Ok(ClientResponse::Status { status, members }) => Ok(NodeStatus { status, members }),
            Ok(ClientResponse::Forbidden(reason)) => Err(ClientError::Forbidden(reason)),
            Ok(other) => Err(ClientError::Protocol(format!("unexpected {other:?}"))),
            Err(e) => Err(ClientError::Refused(e.to_string())),
        }
    }

    /// Asks `nodes` for their status, concurrently.
    pub async fn statuses_of(
        &self,
        nodes: &[NodeId],
    ) -> Vec<(NodeId, Result<NodeStatus, ClientError>)> {
        let answers = futures::future::join_all(nodes.iter().map(|&n| self.status(n))).await;
        for answer in answers.iter().flatten() {
            answer.members.iter().for_each(|m| self.learn(m));
        }
        nodes.iter().copied().zip(answers).collect()
    }

    /// Asks every known node for its status; nodes learned from the answers are asked too.
    pub async fn statuses(&self) -> Vec<(NodeId, Result<NodeStatus, ClientError>)> {
        let known = self.nodes();
        let mut answers = self.statuses_of(&known).await;
        let learned: Vec<NodeId> =
            self.nodes().into_iter().filter(|n| !known.contains(n)).collect();
        if !learned.is_empty() {
            answers.extend(self.statuses_of(&learned).await);
            answers.sort_by_key(|(id, _)| *id);
        }
        answers
    }

    /// Test-only: makes `node` drop Raft traffic with `blocked` (empty heals). The node must
    /// run with `--fault-injection`.
    pub async fn partition(&self, node: NodeId, blocked: Vec<NodeId>) -> Result<(), ClientError> {
        match self.call(node, &ClientRequest::Admin(AdminRequest::Partition { blocked })).await {
            Ok(ClientResponse::AdminDone) => Ok(()),
            Ok(ClientResponse::Refused(reason)) => Err(ClientError::Refused(reason)),
            Ok(ClientResponse::Forbidden(reason)) => Err(ClientError::Forbidden(reason)),
            Ok(other) => Err(ClientError::Protocol(format!("unexpected {other:?}"))),
            Err(e) => Err(ClientError::Refused(e.to_string())),
        }
    }
}

/// Formats a member list: one line per member (id, role, leader mark, addresses).
pub fn member_table(list: &MemberList) -> String {
    let mut out =
        format!("{:>4}  {:<8} {:<22} {}\n", "node", "role", "raft address", "client address");
    let addr = |a: Option<std::net::SocketAddr>| a.map_or("?".to_owned(), |a| a.to_string());
    for m in &list.members {
        let role = match (m.voter, list.leader == Some(m.id)) {
            (true, true) => "leader",
            (true, false) => "voter",
            (false, _) => "learner",
        };
        out += &format!(
            "{:>4}  {:<8} {:<22} {}\n",
            m.id,
            role,
            addr(m.raft_addr),
            addr(m.client_addr)
        );
    }
    if list.leader.is_none() {
        out += "(no leader known)\n";
    }
    out.trim_end().to_owned()
}

/// Formats status answers as a table: node, role, term, leader, commit, applied, last index.
pub fn status_table(statuses: &[(NodeId, Result<NodeStatus, ClientError>)]) -> String {
    let mut out = format!(
        "{:>4}  {:<13} {:>6} {:>7} {:>9} {:>9} {:>9}\n",
        "node", "role", "term", "leader", "commit", "applied", "last"
    );
    for (id, answer) in statuses {
        match answer {
            Ok(NodeStatus { status: s, .. }) => {
                let leader = s.leader_id.map_or("-".to_owned(), |l| l.to_string());
                out += &format!(
                    "{:>4}  {:<13} {:>6} {:>7} {:>9} {:>9} {:>9}\n",
                    id,
                    s.role.to_string(),
                    s.current_term,
                    leader,
                    s.commit_index,
                    s.applied_index,
                    s.last_log_index
                );
            }
            Err(e) => out += &format!("{id:>4}  unreachable ({e})\n"),
        }
    }
    out.trim_end().to_owned()
}
