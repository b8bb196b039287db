//! [`KvClient`]: a client session with leader discovery, retries and exactly-once writes.
//!
//! Every write carries the session id (128 random bits drawn when the session is opened; the
//! session belongs to this client's certificate) and a fresh sequence number; a retry (after a
//! timeout, a lost leadership or a redirect) reuses them, and the state machine answers a duplicate with
//! the first answer instead of applying it again. One client may run many operations at once
//! (it is `Sync`); each session tells the state machine which answers it has received, so the
//! state machine keeps only the answers still awaited.

use std::collections::BTreeMap;
use std::sync::Mutex;

use bytes::Bytes;
use raft_core::session::ClientSession;
use raft_core::{GroupId, NodeId, Status};
use tracing::debug;

use super::attempt::{self, ClientTransport, TlsFailures};
use super::bounded::Bounded;
use super::clock::{Clock, TokioClock};
use super::command::{Command, KvError, Op, OpResult, Response, SessionRef};
use super::connections::{CallError, Connections, TlsFailure};
use super::health::HealthReport;
use super::protocol::{
    AdminRequest, ClientRequest, ClientResponse, GroupStatus, Member, MemberError, MemberList,
    MemberRequest, NewMember, MAX_SET_MEMBERS,
};
use super::shard::group_of;

/// Why an operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The operation did not complete before its deadline. If `maybe_applied` (only ever for
    /// a write), a request reached a node and the write may have taken effect (or may still):
    /// check before retrying it. A read, a status request or a write that never reached a node
    /// has `maybe_applied: false`.
    #[error("{}", timeout_message(*.maybe_applied, .reason))]
    Timeout {
        /// Whether the operation may have been applied.
        maybe_applied: bool,
        /// What went wrong last (why no node answered).
        reason: String,
    },
    /// TLS failed with every node tried: a certificate or the configuration must change
    /// (nothing was sent, nothing was applied).
    #[error("TLS with node {node} failed: {failure}")]
    Tls {
        /// The node (the first that failed).
        node: NodeId,
        /// What failed.
        failure: TlsFailure,
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
    /// A node could not be reached (no connection, no answer in time).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// A membership request failed for good.
    #[error(transparent)]
    Member(#[from] MemberError),
    /// No leader answered before the deadline (membership requests need one).
    #[error("no leader answered within the time limit (last reason: {0})")]
    NoLeader(String),
    /// The service shards its keys over `groups` Raft groups and the request was sent for
    /// another number: nothing was applied. [`KvClient`] sends the operation again in the
    /// key's group by itself; this reaches the caller only if the number keeps changing.
    #[error(
        "the service has {groups} groups and the request named another group: nothing applied"
    )]
    WrongGroup {
        /// The number of groups the node gave.
        groups: u32,
    },
}

fn timeout_message(maybe_applied: bool, reason: &str) -> String {
    if maybe_applied {
        format!("the write timed out and may have been applied: check before retrying it (last error: {reason})")
    } else {
        format!("timed out (last error: {reason})")
    }
}

impl ClientError {
    /// Whether the operation may have taken effect.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            ClientError::Timeout { maybe_applied: true, .. } | ClientError::SessionExpired
        )
    }

    /// The exit status of the `kv` command that failed with this error (see [`exit`]).
    pub fn exit_status(&self) -> u8 {
        match self {
            ClientError::Tls { .. } => exit::TLS,
            e if e.outcome_unknown() => exit::OUTCOME_UNKNOWN,
            ClientError::Timeout { .. }
            | ClientError::NoLeader(_)
            | ClientError::Unreachable(_) => exit::UNAVAILABLE,
            _ => exit::REFUSED,
        }
    }
}

/// The exit statuses of the `kv` command-line client (also in its usage text).
pub mod exit {
    /// The cluster refused the operation (rejected, forbidden, a membership error).
    pub const REFUSED: u8 = 1;
    /// Bad arguments or configuration (unreadable certificate or key files).
    pub const USAGE: u8 = 2;
    /// No node answered, or no leader in time: nothing was applied (retry later).
    pub const UNAVAILABLE: u8 = 3;
    /// A write's outcome is unknown: it may have been applied (read before retrying it).
    pub const OUTCOME_UNKNOWN: u8 = 4;
    /// TLS failed: a certificate or an address must change.
    pub const TLS: u8 = 5;
    /// `kv health`: a node answered but is not ready.
    pub const NOT_READY: u8 = 6;
}

/// A client session. Create as many as needed on one [`Connections`] (or, generally, one
/// [`ClientTransport`]: the same client runs over QUIC with tokio's clock, and over in-process
/// nodes in virtual time in the simulation).
#[derive(Debug)]
pub struct KvClient<T = Connections, C = TokioClock> {
    transport: T,
    clock: C,
    /// The session of each Raft group (only group 0 for a single-group service): a session
    /// lives in one group's state machine.
    sessions: Mutex<BTreeMap<GroupId, ClientSession>>,
    /// Serializes session registration.
    registering: tokio::sync::Mutex<()>,
}

/// How many times an operation is sent again after a node said the client's number of groups
/// was wrong (it cannot change more than once for a running cluster).
const MAX_REGROUPS: u32 = 2;

impl KvClient {
    /// A client on `connections`, on tokio's clock. Its session is opened with its first write.
    pub fn new(connections: Connections) -> Self {
        Self::with_transport(connections, TokioClock)
    }

    /// The connections this client uses.
    pub fn connections(&self) -> &Connections {
        &self.transport
    }
}

impl<T: ClientTransport, C: Clock> KvClient<T, C> {
    /// A client sending through `transport`, its deadlines and pauses on `clock`. Its session
    /// is opened with its first write.
    pub fn with_transport(transport: T, clock: C) -> Self {
        Self {
            transport,
            clock,
            sessions: Mutex::new(BTreeMap::new()),
            registering: tokio::sync::Mutex::new(()),
        }
    }

    /// The transport this client sends through.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, BTreeMap<GroupId, ClientSession>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The group `key` belongs to, as far as this client knows the number of groups.
    fn group_of(&self, key: &[u8]) -> (GroupId, u32) {
        let groups = self.transport.routing().groups();
        (group_of(key, groups), groups)
    }

    /// Reads `key` (linearizable).
    pub async fn get(&self, key: impl Into<Bytes>) -> Result<Option<Bytes>, ClientError> {
        let key = key.into();
        let command = Command { session: None, op: Op::Get { key: key.clone() } };
        let mut regroups = 0;
        loop {
            let (group, groups) = self.group_of(&key);
            match self.run(group, &command).await {
                Err(ClientError::WrongGroup { groups: told })
                    if told != groups && regroups < MAX_REGROUPS =>
                {
                    regroups += 1;
                }
                answer => {
                    return match answer? {
                        Ok(OpResult::Value(value)) => Ok(value),
                        other => Err(unexpected(other)),
                    }
                }
            }
        }
    }

    /// Sets `key` to `value`.
    pub async fn put(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<(), ClientError> {
        let key = key.into();
        match self.write(&key.clone(), Op::Put { key, value: value.into() }).await? {
            OpResult::Written => Ok(()),
            other => Err(unexpected(Ok(other))),
        }
    }

    /// Removes `key`; returns whether it existed.
    pub async fn delete(&self, key: impl Into<Bytes>) -> Result<bool, ClientError> {
        let key = key.into();
        match self.write(&key.clone(), Op::Delete { key }).await? {
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
        let key = key.into();
        match self.write(&key.clone(), Op::Cas { key, expected, new }).await? {
            OpResult::Cas { swapped } => Ok(swapped),
            other => Err(unexpected(Ok(other))),
        }
    }

    /// Runs a write of `key` in this client's session of the key's group (opening one first
    /// if needed), again in the right group if a node says the number of groups changed.
    async fn write(&self, key: &[u8], op: Op) -> Result<OpResult, ClientError> {
        let mut regroups = 0;
        loop {
            let (group, groups) = self.group_of(key);
            match self.write_in(group, op.clone()).await {
                Err(ClientError::WrongGroup { groups: told })
                    if told != groups && regroups < MAX_REGROUPS =>
                {
                    regroups += 1;
                }
                result => return result,
            }
        }
    }

    /// Runs a write in this client's session of group `group` (opening one first if needed).
    async fn write_in(&self, group: GroupId, op: Op) -> Result<OpResult, ClientError> {
        let session_ref = self.next_seq(group).await?;
        let (id, seq) = (session_ref.id, session_ref.seq);
        let command = Command { session: Some(session_ref), op };
        let result = self.run(group, &command).await;
        let mut sessions = self.sessions();
        if let Some(s) = sessions.get_mut(&group).filter(|s| s.id() == id) {
            s.finish(seq);
        }
        match result? {
            Ok(result) => Ok(result),
            Err(KvError::UnknownSession) => {
                if sessions.get(&group).is_some_and(|s| s.id() == id) {
                    sessions.remove(&group);
                }
                Err(ClientError::SessionExpired)
            }
            Err(e) => Err(ClientError::Rejected(e)),
        }
    }

    /// Allocates a sequence number in group `group`'s session, opening the session first if
    /// there is none.
    async fn next_seq(&self, group: GroupId) -> Result<SessionRef, ClientError> {
        if let Some(allocated) = self.allocate(group) {
            return Ok(allocated);
        }
        let _registering = self.registering.lock().await;
        if let Some(allocated) = self.allocate(group) {
            return Ok(allocated);
        }
        let id = self.transport.session_id()?;
        let register = Command { session: None, op: Op::Register { id } };
        // The write itself was not sent yet: whatever happened to the registration (an unused
        // session at worst), the write was not applied.
        let registered = self.run(group, &register).await.map_err(|e| match e {
            ClientError::Timeout { reason, .. } => ClientError::Timeout {
                maybe_applied: false,
                reason: format!("opening a session: {reason}"),
            },
            other => other,
        });
        match registered? {
            Ok(OpResult::Registered { id: opened, incarnation }) if opened == id => {
                debug!(id, incarnation, group, "session opened");
                let mut session = ClientSession::new(id);
                session.opened(incarnation);
                self.sessions().insert(group, session);
            }
            other => return Err(unexpected(other)),
        }
        self.allocate(group).ok_or(ClientError::SessionExpired)
    }

    fn allocate(&self, group: GroupId) -> Option<SessionRef> {
        self.sessions().get_mut(&group)?.begin()
    }

    /// Sends `command` of group `group` through the attempt loop ([`attempt::run`]).
    async fn run(&self, group: GroupId, command: &Command) -> Result<Response, ClientError> {
        attempt::run(&self.transport, &self.clock, group, command).await
    }
}

/// A request to one node that got no answer: a TLS failure as such, anything else as the node
/// being unreachable (nothing that can have been applied: status and health change nothing).
fn unreachable_node(error: CallError) -> ClientError {
    match error {
        CallError::Tls { node, failure } => ClientError::Tls { node, failure },
        other => ClientError::Unreachable(other.to_string()),
    }
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
    /// Its health, if it answered that too (it says whether the node stopped on a fault).
    pub health: Option<HealthReport>,
    /// Its status in each Raft group it hosts, if it answered that too (one group for a
    /// single-group service).
    pub groups: Vec<GroupStatus>,
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
        // A list changes nothing: only a change can have been applied.
        let is_change = !matches!(request, MemberRequest::List);
        let request = ClientRequest::Member(request);
        let mut target = self.leader().or_else(|| self.pick(None));
        let mut last_reason = String::from("no attempt");
        let mut maybe_applied = false;
        let mut tls = TlsFailures::default();
        loop {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(if maybe_applied {
                    ClientError::Timeout { maybe_applied, reason: last_reason }
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
                    maybe_applied = is_change;
                    last_reason = format!("node {node}: {reason}");
                    self.set_leader(None);
                    target = self.pick(Some(node));
                }
                Ok(other) => {
                    return Err(ClientError::Protocol(format!("unexpected {other:?}")));
                }
                Err(CallError::Tls { node, failure }) => {
                    last_reason = failure.to_string();
                    self.suspect(node);
                    if let Some(error) = tls.record(self.routing(), node, failure) {
                        return Err(error);
                    }
                    target = self.pick(Some(node));
                    pause = false;
                }
                Err(e) => {
                    maybe_applied |= is_change && e.maybe_sent();
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
    /// within the client's operation timeout: the leader adds the node as a learner, with its
    /// addresses in the membership; the client polls the new node's status on its client port
    /// until it has applied the commit index the leader had then (evidence that it is reachable
    /// and caught up, which the leader's promotion check does not give in a young cluster); the
    /// leader promotes it (`Node::add_voter`). A node that never catches up stays a learner
    /// ([`MemberError::CatchUpTimeout`]; `member remove` it or retry).
    pub async fn member_add(
        &self,
        id: NodeId,
        raft_addr: std::net::SocketAddr,
        client_addr: std::net::SocketAddr,
    ) -> Result<MemberList, ClientError> {
        let clock = CatchUpClock::start(self.options().op_timeout);
        let add = |promote| MemberRequest::Add {
            id,
            raft_addr,
            client_addr,
            catch_up_ms: clock.remaining_ms(),
            promote,
        };
        let learner = self.member_request(add(false)).await?;
        if learner.members.iter().any(|m| m.id == id && m.voter) {
            return Ok(learner);
        }
        self.learn(&Member { id, client_addr });
        self.wait_caught_up(id, learner.commit_index, &clock).await?;
        self.member_request(add(true)).await
    }

    /// Makes exactly `voters` the voters in one change (joint consensus): the nodes of
    /// `new_members` (running `kv-node --join`) join as learners, the client waits for each to
    /// apply the commit index the leader had then (as `member add` does), and the leader moves
    /// the cluster to the new voter set ([`MemberRequest::Set`]). Voters not named are removed
    /// for good. Every step is retried as needed within the client's operation timeout.
    pub async fn member_set(
        &self,
        voters: Vec<NodeId>,
        new_members: Vec<NewMember>,
    ) -> Result<MemberList, ClientError> {
        let clock = CatchUpClock::start(self.options().op_timeout);
        let mut commit_index = 0;
        for member in &new_members {
            let add = MemberRequest::Add {
                id: member.id,
                raft_addr: member.raft_addr,
                client_addr: member.client_addr,
                catch_up_ms: clock.remaining_ms(),
                promote: false,
            };
            commit_index = commit_index.max(self.member_request(add).await?.commit_index);
            self.learn(&Member { id: member.id, client_addr: member.client_addr });
        }
        for member in &new_members {
            self.wait_caught_up(member.id, commit_index, &clock).await?;
        }
        let bounded = |what: &str, len: usize| {
            ClientError::Refused(format!("{len} {what} exceed the limit of {MAX_SET_MEMBERS}"))
        };
        let (voter_count, new_count) = (voters.len(), new_members.len());
        let set = MemberRequest::Set {
            voters: Bounded::new(voters).map_err(|_| bounded("voters", voter_count))?,
            new_members: Bounded::new(new_members)
                .map_err(|_| bounded("new members", new_count))?,
            catch_up_ms: clock.remaining_ms(),
        };
        self.member_request(set).await
    }

    /// Polls node `id`'s own status until it has applied `index` and knows a leader; fails
    /// with [`MemberError::CatchUpTimeout`] at the clock's deadline.
    async fn wait_caught_up(
        &self,
        id: NodeId,
        index: u64,
        clock: &CatchUpClock,
    ) -> Result<(), ClientError> {
        loop {
            if let Ok(s) = self.status(id).await {
                if s.status.leader_id.is_some() && s.status.applied_index >= index {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= clock.deadline {
                let waited_ms =
                    u64::try_from(clock.started.elapsed().as_millis()).unwrap_or(u64::MAX);
                return Err(ClientError::Member(MemberError::CatchUpTimeout { id, waited_ms }));
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
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

    /// Asks `node` for its status, its health and the status of its groups, concurrently
    /// (within the status timeout).
    pub async fn status(&self, node: NodeId) -> Result<NodeStatus, ClientError> {
        let limit = self.options().status_timeout;
        let (answer, health, groups) = futures::join!(
            self.call_within(node, &ClientRequest::Status, limit),
            self.health(node),
            self.call_within(node, &ClientRequest::Groups, limit),
        );
        let groups = match groups {
            Ok(ClientResponse::Groups(groups)) => groups.into_inner(),
            _ => Vec::new(),
        };
        match answer {
            Ok(ClientResponse::Status { status, members }) => Ok(NodeStatus {
                status,
                members: members.into_inner(),
                health: health.ok(),
                groups,
            }),
            Ok(ClientResponse::Forbidden(reason)) => Err(ClientError::Forbidden(reason)),
            Ok(other) => Err(ClientError::Protocol(format!("unexpected {other:?}"))),
            Err(e) => Err(unreachable_node(e)),
        }
    }

    /// Asks `node` for its health (within the status timeout); any client certificate may.
    pub async fn health(&self, node: NodeId) -> Result<HealthReport, ClientError> {
        let limit = self.options().status_timeout;
        match self.call_within(node, &ClientRequest::Health, limit).await {
            Ok(ClientResponse::Health(report)) => Ok(report),
            Ok(ClientResponse::Forbidden(reason)) => Err(ClientError::Forbidden(reason)),
            Ok(other) => Err(ClientError::Protocol(format!("unexpected {other:?}"))),
            Err(e) => Err(unreachable_node(e)),
        }
    }

    /// Asks `nodes` for their health, concurrently.
    pub async fn healths_of(
        &self,
        nodes: &[NodeId],
    ) -> Vec<(NodeId, Result<HealthReport, ClientError>)> {
        let answers = futures::future::join_all(nodes.iter().map(|&n| self.health(n))).await;
        nodes.iter().copied().zip(answers).collect()
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
        let blocked = Bounded::new(blocked).map_err(|e| ClientError::Refused(e.to_string()))?;
        match self.call(node, &ClientRequest::Admin(AdminRequest::Partition { blocked })).await {
            Ok(ClientResponse::AdminDone) => Ok(()),
            Ok(ClientResponse::Refused(reason)) => Err(ClientError::Refused(reason)),
            Ok(ClientResponse::Forbidden(reason)) => Err(ClientError::Forbidden(reason)),
            Ok(other) => Err(ClientError::Protocol(format!("unexpected {other:?}"))),
            Err(e) => Err(ClientError::Refused(e.to_string())),
        }
    }
}

/// The deadline of a membership request that waits for new nodes to catch up.
struct CatchUpClock {
    started: tokio::time::Instant,
    deadline: tokio::time::Instant,
}

impl CatchUpClock {
    fn start(timeout: std::time::Duration) -> Self {
        let started = tokio::time::Instant::now();
        Self { started, deadline: started + timeout }
    }

    /// What the leader may spend catching up, leaving the answer half a second to arrive.
    fn remaining_ms(&self) -> u64 {
        let left = self.deadline.saturating_duration_since(tokio::time::Instant::now());
        u64::try_from(left.as_millis()).unwrap_or(u64::MAX).saturating_sub(500).max(100)
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

/// Formats status answers as a table: node, role, term, leader, commit, applied, last index,
/// and the node's health (`ready`, or why not: a fault it stopped on, no leader, lag). A node
/// that did not answer has a row saying so.
pub fn status_table(statuses: &[(NodeId, Result<NodeStatus, ClientError>)]) -> String {
    let mut out = format!(
        "{:>4}  {:<13} {:>6} {:>7} {:>9} {:>9} {:>9}  {}\n",
        "node", "role", "term", "leader", "commit", "applied", "last", "health"
    );
    for (id, answer) in statuses {
        match answer {
            Ok(NodeStatus { status: s, health, .. }) => {
                out += &format!(
                    "{:>4}  {} {:>9}  {}\n",
                    id,
                    raft_columns(s),
                    s.last_log_index,
                    health.as_ref().map_or("?".to_owned(), HealthReport::summary),
                );
            }
            Err(e @ ClientError::Unreachable(_)) => out += &format!("{id:>4}  {e}\n"),
            Err(e) => out += &format!("{id:>4}  unreachable ({e})\n"),
        }
    }
    out += &group_table(statuses);
    out.trim_end().to_owned()
}

/// The role, term, leader, commit and applied index columns of a status table.
fn raft_columns(s: &Status) -> String {
    let leader = s.leader_id.map_or("-".to_owned(), |l| l.to_string());
    format!(
        "{:<13} {:>6} {:>7} {:>9} {:>9}",
        s.role.to_string(),
        s.current_term,
        leader,
        s.commit_index,
        s.applied_index
    )
}

/// The groups of a sharded service (empty for a single group): one line per group and node
/// (group, node, role, term, leader, commit, applied, voters, learners, fault).
fn group_table(statuses: &[(NodeId, Result<NodeStatus, ClientError>)]) -> String {
    let mut rows: Vec<(NodeId, &GroupStatus)> = statuses
        .iter()
        .filter_map(|(id, answer)| Some((*id, answer.as_ref().ok()?)))
        .flat_map(|(id, status)| status.groups.iter().map(move |group| (id, group)))
        .collect();
    if rows.iter().all(|(_, g)| g.group == 0) {
        return String::new();
    }
    rows.sort_by_key(|(id, g)| (g.group, *id));
    let ids = |ids: &[NodeId]| ids.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
    let mut out = format!(
        "\n{:>5} {:>4}  {:<13} {:>6} {:>7} {:>9} {:>9}  {:<12} {}\n",
        "group", "node", "role", "term", "leader", "commit", "applied", "voters", "learners"
    );
    for (id, g) in rows {
        let learners = if g.learners.is_empty() { "-".to_owned() } else { ids(&g.learners) };
        out += &format!(
            "{:>5} {:>4}  {}  {:<12} {}{}\n",
            g.group,
            id,
            raft_columns(&g.status),
            ids(&g.voters),
            learners,
            g.fault.as_ref().map_or(String::new(), |f| format!("  FAILED: {f}")),
        );
    }
    out
}
