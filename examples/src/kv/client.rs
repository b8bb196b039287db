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
    /// A membership change of a sharded service (one change per Raft group) failed in some
    /// groups. It was made in the groups of `done` and not (or not surely) in those of
    /// `failed`: nothing is undone. Every membership request is idempotent: the same command
    /// again finishes it (or, for an added node, `member remove` takes it out of every group).
    #[error("{}", partial_message(.done, .failed))]
    Groups {
        /// The groups where the change was made, in order.
        done: Vec<GroupId>,
        /// The groups where it failed, in order, with why.
        failed: Vec<GroupFailure>,
    },
}

/// Why a membership change failed in one group (see [`ClientError::Groups`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupFailure {
    /// The group.
    pub group: GroupId,
    /// What failed there.
    pub error: Box<ClientError>,
}

fn partial_message(done: &[GroupId], failed: &[GroupFailure]) -> String {
    let ids = |groups: &mut dyn Iterator<Item = GroupId>| {
        groups.map(|g| g.to_string()).collect::<Vec<_>>().join(", ")
    };
    let mut out = if done.is_empty() {
        "the membership change failed in every group:".to_owned()
    } else {
        format!(
            "the membership change was made in groups {} but not in groups {}:",
            ids(&mut done.iter().copied()),
            ids(&mut failed.iter().map(|f| f.group))
        )
    };
    for failure in failed {
        out += &format!("\n  group {}: {}", failure.group, failure.error);
    }
    out + "\nmembership requests are idempotent: run the same command again to finish the \
           change in every group (`kv status` shows each group's voters and learners)"
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
        match self {
            ClientError::Timeout { maybe_applied, .. } => *maybe_applied,
            ClientError::SessionExpired => true,
            ClientError::Groups { failed, .. } => failed.iter().any(|f| f.error.outcome_unknown()),
            _ => false,
        }
    }

    /// The exit status of the `kv` command that failed with this error (see [`exit`]).
    pub fn exit_status(&self) -> u8 {
        match self {
            ClientError::Tls { .. } => exit::TLS,
            e if e.outcome_unknown() => exit::OUTCOME_UNKNOWN,
            // The most telling failure: unavailable (retry later) before refused.
            ClientError::Groups { failed, .. } => failed
                .iter()
                .map(|f| f.error.exit_status())
                .find(|&status| status != exit::REFUSED)
                .unwrap_or(exit::REFUSED),
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

/// The most Raft groups whose membership one client changes at a time (each change is a few
/// requests to the group's leader, and a catch-up poll of the new node).
pub const MAX_PARALLEL_GROUP_CHANGES: usize = 8;

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
    /// time (adding a node waits for it to catch up). A sharded service answers a change with
    /// [`ClientError::WrongGroup`] (nothing done): see [`Connections::member_request_in`].
    pub async fn member_request(&self, request: MemberRequest) -> Result<MemberList, ClientError> {
        self.member_request_in(None, request).await
    }

    /// [`Connections::member_request`] in Raft group `group` of a sharded service (`None`: a
    /// single-group service), sent to that group's leader. A node that says the service has
    /// another number of groups ends it with [`ClientError::WrongGroup`] (nothing done), having
    /// recorded the number.
    pub async fn member_request_in(
        &self,
        group: Option<GroupId>,
        request: MemberRequest,
    ) -> Result<MemberList, ClientError> {
        let options = self.options().clone();
        let deadline = tokio::time::Instant::now() + options.op_timeout;
        // A list changes nothing: only a change can have been applied.
        let is_change = !matches!(request, MemberRequest::List);
        let request = match group {
            None => ClientRequest::Member(request),
            Some(group) => ClientRequest::MemberInGroup { group, request },
        };
        let routing = self.routing();
        let leader_group = group.unwrap_or(0);
        let mut target = routing.leader_of(leader_group).or_else(|| self.pick(None));
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
                        routing.set_leader_of(leader_group, Some(list.answered_by));
                    }
                    return Ok(list);
                }
                Ok(ClientResponse::MemberFailed(e)) => return Err(ClientError::Member(e)),
                Ok(ClientResponse::Refused(reason)) => return Err(ClientError::Refused(reason)),
                Ok(ClientResponse::Forbidden(reason)) => {
                    return Err(ClientError::Forbidden(reason))
                }
                Ok(ClientResponse::Sharded { groups }) => {
                    routing.set_groups(groups);
                    return Err(ClientError::WrongGroup { groups });
                }
                Ok(ClientResponse::NotLeader { leader: Some(leader) }) if leader.id != node => {
                    self.learn(&leader);
                    routing.set_leader_of(leader_group, Some(leader.id));
                    last_reason = format!("node {node} redirected to node {}", leader.id);
                    target = Some(leader.id);
                    pause = false;
                }
                Ok(ClientResponse::NotLeader { .. }) => {
                    routing.set_leader_of(leader_group, None);
                    last_reason = format!("node {node} knows no leader");
                    target = self.pick(Some(node));
                }
                Ok(ClientResponse::NotApplied(reason)) => {
                    last_reason = format!("node {node}: {reason}");
                }
                Ok(ClientResponse::Unknown(reason)) => {
                    maybe_applied = is_change;
                    last_reason = format!("node {node}: {reason}");
                    routing.set_leader_of(leader_group, None);
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

    /// Runs `request` in every Raft group: once (`None`) for a single-group service, once per
    /// group (at most [`MAX_PARALLEL_GROUP_CHANGES`] at a time, each at its group's leader) for
    /// a sharded one; the outcome of each, in group order. The number of groups is learned from
    /// the service: a node that says it is another makes the whole run start again (nothing is
    /// done by a request in the wrong number of groups).
    async fn for_each_group<'a, F, Fut>(
        &'a self,
        request: F,
    ) -> Vec<(Option<GroupId>, Result<MemberList, ClientError>)>
    where
        F: Fn(Option<GroupId>) -> Fut,
        Fut: std::future::Future<Output = Result<MemberList, ClientError>> + 'a,
    {
        use futures::StreamExt;
        let mut regroups = 0;
        loop {
            let groups = self.routing().groups();
            let outcomes: Vec<_> = if groups <= 1 {
                vec![(None, request(None).await)]
            } else {
                futures::stream::iter(0..GroupId::from(groups))
                    .map(|group| {
                        let outcome = request(Some(group));
                        async move { (Some(group), outcome.await) }
                    })
                    .buffered(MAX_PARALLEL_GROUP_CHANGES)
                    .collect()
                    .await
            };
            let regroup = outcomes.iter().any(|(_, outcome)| {
                matches!(outcome, Err(ClientError::WrongGroup { groups: told }) if *told != groups)
            });
            if !regroup || regroups >= MAX_REGROUPS {
                return outcomes;
            }
            regroups += 1;
        }
    }

    /// Runs the membership change `change` in every group ([`Connections::for_each_group`]);
    /// the outcomes combined by [`combine_groups`].
    async fn in_every_group<'a, F, Fut>(&'a self, change: F) -> Result<MemberList, ClientError>
    where
        F: Fn(Option<GroupId>) -> Fut,
        Fut: std::future::Future<Output = Result<MemberList, ClientError>> + 'a,
    {
        combine_groups(self.for_each_group(change).await)
    }

    /// The membership as the leader knows it (voters, learners, leader, addresses); group 0's
    /// for a sharded service (see [`Connections::member_lists`]).
    pub async fn member_list(&self) -> Result<MemberList, ClientError> {
        self.member_request(MemberRequest::List).await
    }

    /// The membership of every group as its leader knows it, in group order (one, `None`, for
    /// a single-group service).
    pub async fn member_lists(&self) -> Vec<(Option<GroupId>, Result<MemberList, ClientError>)> {
        let groups = self.routing().groups();
        if groups <= 1 {
            // A sharded service answers a list that names no group with group 0's: ask how
            // many groups there are.
            let _ = self.call_within_status(ClientRequest::Groups).await;
        }
        self.for_each_group(|group| self.member_request_in(group, MemberRequest::List)).await
    }

    /// Adds node `id` (listening at `raft_addr` for peers and `client_addr` for clients) as a
    /// voter, in every group of a sharded service. The node must be running (`kv-node --join`,
    /// with the service's `--groups`). Three steps per group, each retried as needed within the
    /// client's operation timeout: the group's leader adds the node as a learner, with its
    /// addresses in the membership; the client polls the new node's status on its client port
    /// until it has applied (in that group) the commit index the leader had then (evidence
    /// that it is reachable and caught up, which the leader's promotion check does not give in
    /// a young cluster); the leader promotes it (`Node::add_voter`). A node that never catches
    /// up stays a learner ([`MemberError::CatchUpTimeout`]; `member remove` it or retry). A
    /// change made in some groups only fails with [`ClientError::Groups`].
    pub async fn member_add(
        &self,
        id: NodeId,
        raft_addr: std::net::SocketAddr,
        client_addr: std::net::SocketAddr,
    ) -> Result<MemberList, ClientError> {
        let clock = CatchUpClock::start(self.options().op_timeout);
        let clock = &clock;
        self.in_every_group(|group| async move {
            let add = |promote| MemberRequest::Add {
                id,
                raft_addr,
                client_addr,
                catch_up_ms: clock.remaining_ms(),
                promote,
            };
            let learner = self.member_request_in(group, add(false)).await?;
            if learner.members.iter().any(|m| m.id == id && m.voter) {
                return Ok(learner);
            }
            self.learn(&Member { id, client_addr });
            self.wait_caught_up(id, group, learner.commit_index, clock).await?;
            self.member_request_in(group, add(true)).await
        })
        .await
    }

    /// Makes exactly `voters` the voters in one change (joint consensus), in every group of a
    /// sharded service: the nodes of `new_members` (running `kv-node --join`) join as learners,
    /// the client waits for each to apply the commit index the leader had then (as `member add`
    /// does), and the leader moves the group to the new voter set ([`MemberRequest::Set`]).
    /// Voters not named are removed for good. Every step is retried as needed within the
    /// client's operation timeout; a change made in some groups only fails with
    /// [`ClientError::Groups`].
    pub async fn member_set(
        &self,
        voters: Vec<NodeId>,
        new_members: Vec<NewMember>,
    ) -> Result<MemberList, ClientError> {
        let clock = CatchUpClock::start(self.options().op_timeout);
        let bounded = |what: &str, len: usize| {
            ClientError::Refused(format!("{len} {what} exceed the limit of {MAX_SET_MEMBERS}"))
        };
        let set_voters =
            Bounded::new(voters.clone()).map_err(|_| bounded("voters", voters.len()))?;
        let set_new = Bounded::new(new_members.clone())
            .map_err(|_| bounded("new members", new_members.len()))?;
        let (clock, new_members) = (&clock, &new_members);
        let (set_voters, set_new) = (&set_voters, &set_new);
        self.in_every_group(|group| async move {
            let mut commit_index = 0;
            for member in new_members {
                let add = MemberRequest::Add {
                    id: member.id,
                    raft_addr: member.raft_addr,
                    client_addr: member.client_addr,
                    catch_up_ms: clock.remaining_ms(),
                    promote: false,
                };
                let list = self.member_request_in(group, add).await?;
                commit_index = commit_index.max(list.commit_index);
                self.learn(&Member { id: member.id, client_addr: member.client_addr });
            }
            for member in new_members {
                self.wait_caught_up(member.id, group, commit_index, clock).await?;
            }
            let set = MemberRequest::Set {
                voters: set_voters.clone(),
                new_members: set_new.clone(),
                catch_up_ms: clock.remaining_ms(),
            };
            self.member_request_in(group, set).await
        })
        .await
    }

    /// Polls node `id`'s own status (in `group` of a sharded service) until it has applied
    /// `index` and knows a leader; fails with [`MemberError::CatchUpTimeout`] at the clock's
    /// deadline.
    async fn wait_caught_up(
        &self,
        id: NodeId,
        group: Option<GroupId>,
        index: u64,
        clock: &CatchUpClock,
    ) -> Result<(), ClientError> {
        loop {
            let status = match group {
                None => self.status(id).await.ok().map(|s| s.status),
                Some(group) => self.group_status_of(id, group).await,
            };
            if status.is_some_and(|s| s.leader_id.is_some() && s.applied_index >= index) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= clock.deadline {
                let waited_ms =
                    u64::try_from(clock.started.elapsed().as_millis()).unwrap_or(u64::MAX);
                return Err(ClientError::Member(MemberError::CatchUpTimeout { id, waited_ms }));
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Node `node`'s Raft status in group `group`, if it answers (within the status timeout).
    async fn group_status_of(&self, node: NodeId, group: GroupId) -> Option<Status> {
        let limit = self.options().status_timeout;
        match self.call_within(node, &ClientRequest::Groups, limit).await {
            Ok(ClientResponse::Groups(groups)) => {
                groups.into_inner().into_iter().find(|g| g.group == group).map(|g| g.status)
            }
            _ => None,
        }
    }

    /// Sends `request` to the first known node that answers it (within the status timeout),
    /// recording the number of groups a [`ClientResponse::Groups`] answer shows.
    async fn call_within_status(&self, request: ClientRequest) -> Option<ClientResponse> {
        let limit = self.options().status_timeout;
        for node in self.nodes() {
            if let Ok(answer) = self.call_within(node, &request, limit).await {
                if let ClientResponse::Groups(groups) = &answer {
                    self.routing().set_groups(u32::try_from(groups.len()).unwrap_or(u32::MAX));
                }
                return Some(answer);
            }
        }
        None
    }

    /// Removes node `id` (the leader too), from every group of a sharded service. Once every
    /// group of a node has removed it, that node's transport refuses it. A removal made in
    /// some groups only fails with [`ClientError::Groups`] (the node is still a member of the
    /// others, and still heard by them: run it again).
    pub async fn member_remove(&self, id: NodeId) -> Result<MemberList, ClientError> {
        self.in_every_group(|group| self.member_request_in(group, MemberRequest::Remove { id }))
            .await
    }

    /// Makes voter `id` the leader (of a single-group service; a sharded one answers
    /// [`ClientError::WrongGroup`]: see [`Connections::transfer_leader_in`]).
    pub async fn transfer_leader(&self, id: NodeId) -> Result<MemberList, ClientError> {
        self.transfer_leader_in(None, id).await
    }

    /// Makes voter `id` the leader of group `group` of a sharded service (`None`: of a
    /// single-group service). The balancer of a sharded service moves a group's leadership
    /// back to its preferred node within seconds.
    pub async fn transfer_leader_in(
        &self,
        group: Option<GroupId>,
        id: NodeId,
    ) -> Result<MemberList, ClientError> {
        let list = self.member_request_in(group, MemberRequest::TransferLeader { id }).await?;
        self.routing().set_leader_of(group.unwrap_or(0), Some(id));
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

/// The outcome of a membership change from the outcomes in each group (in group order; one,
/// `None`, for a single-group service): the member list of the first group if it succeeded in
/// all of them; else the error of a single group, or the same error of every group, or
/// [`ClientError::Groups`] saying where the change was made and where not (and why).
pub fn combine_groups(
    mut outcomes: Vec<(Option<GroupId>, Result<MemberList, ClientError>)>,
) -> Result<MemberList, ClientError> {
    let failed: Vec<GroupFailure> = outcomes
        .iter()
        .filter_map(|(group, outcome)| {
            let error = outcome.as_ref().err()?;
            Some(GroupFailure { group: group.unwrap_or(0), error: Box::new(error.clone()) })
        })
        .collect();
    let same = failed.windows(2).all(|pair| pair[0].error == pair[1].error);
    match failed.first() {
        None if outcomes.is_empty() => Err(ClientError::Protocol("no group to change".into())),
        None => outcomes.swap_remove(0).1,
        Some(first) if failed.len() == outcomes.len() && same => Err(*first.error.clone()),
        Some(_) => {
            let done = outcomes
                .iter()
                .filter(|(_, outcome)| outcome.is_ok())
                .map(|(group, _)| group.unwrap_or(0))
                .collect();
            Err(ClientError::Groups { done, failed })
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    fn list(answered_by: NodeId) -> MemberList {
        MemberList {
            answered_by,
            leader: None,
            commit_index: 0,
            members: Bounded::truncated(vec![]),
        }
    }

    #[test]
    fn a_change_made_in_some_groups_says_where_and_how_to_finish() {
        let refused = || ClientError::Member(MemberError::NotMember(9));
        let unavailable = || ClientError::NoLeader("no quorum".into());
        // Every group changed: the first group's list.
        let all = combine_groups(vec![(Some(0), Ok(list(1))), (Some(1), Ok(list(2)))]);
        assert_eq!(all.unwrap().answered_by, 1);
        // The same failure everywhere is that failure (a single group's too).
        let same = combine_groups(vec![(Some(0), Err(refused())), (Some(1), Err(refused()))]);
        assert_eq!(same.unwrap_err(), refused());
        assert_eq!(combine_groups(vec![(None, Err(unavailable()))]).unwrap_err(), unavailable());
        // Done in some groups only: each group's outcome, the worst exit status, how to retry.
        let partial = combine_groups(vec![
            (Some(0), Ok(list(1))),
            (Some(1), Err(refused())),
            (Some(2), Ok(list(3))),
            (Some(3), Err(unavailable())),
        ])
        .unwrap_err();
        let ClientError::Groups { done, failed } = &partial else { panic!("{partial:?}") };
        assert_eq!(done, &[0, 2]);
        assert_eq!(failed.iter().map(|f| f.group).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(partial.exit_status(), exit::UNAVAILABLE);
        assert!(!partial.outcome_unknown());
        let text = partial.to_string();
        assert!(text.contains("made in groups 0, 2 but not in groups 1, 3"), "{text}");
        assert!(text.contains("group 1: node 9 is not a member"), "{text}");
        assert!(text.contains("run the same command again"), "{text}");
        let unknown = ClientError::Timeout { maybe_applied: true, reason: "lost".into() };
        let partial = combine_groups(vec![(Some(0), Ok(list(1))), (Some(1), Err(unknown))]);
        assert_eq!(partial.unwrap_err().exit_status(), exit::OUTCOME_UNKNOWN);
    }
}
