//! The client port of a node: accepts QUIC connections from clients (mutual TLS) and serves
//! each bidirectional stream as one request.
//!
//! Writes go through the log: on a follower the answer is a redirect naming the leader's
//! client address. Reads go through [`ClientService::read`]: a ReadIndex (no log entry), then
//! the local state; any node serves them, a follower by asking the leader for the read index.
//! Membership requests ([`MemberRequest`]) are served by the leader, like writes. Every request
//! is first authorized against the connection's [`Principal`] (see [`auth`](super::auth)).
//! The port itself (connections, streams, answer budgets) is [`port`](super::port).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use raft_core::{
    CommitError, GroupId, InvalidChange, MembershipChange, MembershipError, Node, NodeId,
    ProposeError, ReadIndexError, Role, TransferError, WriteError,
};
use tracing::{debug, info};

use super::auth::Principal;
use super::clock::{within, Clock, TokioClock};
use super::command::{decode_responses, encode_entry, Command, KvError, Op, OpResult};
use super::config::MemberAddrs;
use super::fault::Firewall;
use super::health::{HealthConfig, HealthReport};
use super::protocol::{
    AdminRequest, ClientRequest, ClientResponse, CommandAnswer, GroupStatus, Member, MemberError,
    MemberInfo, MemberList, MemberRequest, NewMember,
};
use super::state_machine::SharedState;

/// The longest the node works on one request before answering "outcome unknown".
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the client port serves requests with.
#[derive(Debug)]
pub struct ClientService {
    /// The Raft node.
    pub node: Node,
    /// The state its state machine applies to.
    pub state: SharedState,
    /// The members' addresses from this node's configuration (`--node`); the addresses in the
    /// Raft membership add to and override them.
    pub configured: BTreeMap<NodeId, MemberAddrs>,
    /// The node's partition switch.
    pub firewall: Firewall,
    /// Whether admin (fault injection) requests are honoured.
    pub fault_injection: bool,
    /// How health reports are judged (see [`HealthReport`]).
    pub health: HealthConfig,
    /// The clock that bounds each request ([`REQUEST_TIMEOUT`]): tokio's by default, the
    /// simulation's virtual time under `raft_mem::sim`.
    pub clock: Arc<dyn Clock>,
    /// The Raft group `node` is in (0 for a single-group service).
    pub group: GroupId,
    /// Whether the service has more than one group: then `member remove` of a node this group
    /// never had records its tombstone here ([`Op::Tombstone`]) instead of failing (see
    /// `ClientService::tombstone` for a tombstone racing a `member add` of the same id).
    pub sharded: bool,
}

/// `None` if `principal`'s role allows `request`; else the answer refusing it.
pub fn authorize(principal: &Principal, request: &ClientRequest) -> Option<ClientResponse> {
    if principal.may(request) {
        return None;
    }
    // Not logged above debug: a client could fill the log with such requests.
    debug!(%principal, "refused a request that needs the admin role");
    Some(ClientResponse::Forbidden(format!(
        "{principal} may not make this request: it needs an admin certificate"
    )))
}

impl ClientService {
    /// A service for `node`.
    pub fn new(
        node: Node,
        state: SharedState,
        configured: BTreeMap<NodeId, MemberAddrs>,
        firewall: Firewall,
        fault_injection: bool,
    ) -> Self {
        let health = HealthConfig::default();
        let clock = Arc::new(TokioClock);
        Self {
            node,
            state,
            configured,
            firewall,
            fault_injection,
            health,
            clock,
            group: 0,
            sharded: false,
        }
    }

    /// The node's status in its group, with the group's members and fault.
    pub fn group_status(&self) -> GroupStatus {
        let membership = self.node.membership();
        let ids = |set: &std::collections::BTreeSet<NodeId>| {
            super::bounded::Bounded::truncated(set.iter().copied().collect())
        };
        GroupStatus {
            group: self.group,
            status: self.node.status(),
            voters: ids(membership.voters()),
            learners: ids(membership.learners()),
            fault: self.node.fatal_error().map(|e| e.to_string()),
        }
    }

    /// The node's health now (see [`HealthReport`]).
    pub async fn health(&self) -> HealthReport {
        HealthReport::of(&self.node, &self.health).await
    }

    /// Every address this node knows: its configuration, minus the members removed for good,
    /// plus (overriding) the addresses the Raft membership holds (every member added at run
    /// time, and founders once a change gave them theirs).
    pub fn addresses(&self) -> BTreeMap<NodeId, MemberAddrs> {
        let mut book = self.configured.clone();
        book.retain(|id, _| !self.state.read().removed_members.contains(id));
        for (&id, info) in self.node.membership().nodes() {
            if let Some(addrs) = MemberAddrs::from_node_info(info) {
                book.insert(id, addrs);
            }
        }
        book
    }

    fn member(&self, id: NodeId) -> Option<Member> {
        self.addresses().get(&id).map(|addrs| Member { id, client_addr: addrs.client })
    }

    /// The client addresses of the current members (voters and learners) and of this node; of
    /// every known node while this node knows no membership (a node waiting to join).
    fn client_members(&self) -> Vec<Member> {
        let members = self.node.membership().members();
        let own = self.node.id();
        self.addresses()
            .into_iter()
            .filter(|(id, _)| members.is_empty() || members.contains(id) || *id == own)
            .map(|(id, addrs)| Member { id, client_addr: addrs.client })
            .collect()
    }

    fn leader_member(&self, leader_id: Option<NodeId>) -> Option<Member> {
        leader_id.filter(|&l| l != self.node.id()).and_then(|id| self.member(id))
    }

    fn redirect(&self, leader_id: Option<NodeId>) -> ClientResponse {
        ClientResponse::NotLeader { leader: self.leader_member(leader_id) }
    }

    /// Answers one request of `principal`, if its role allows it. The commands of a batch
    /// share log entries: its writes are proposed as one entry (owned by `principal`, whose
    /// sessions they may use) and its reads go through [`ClientService::read`] together.
    pub async fn handle(&self, principal: &Principal, request: ClientRequest) -> ClientResponse {
        if let Some(refused) = authorize(principal, &request) {
            return refused;
        }
        match request {
            ClientRequest::Batch(commands) | ClientRequest::GroupBatch { commands, .. } => {
                let answers = self.handle_batch(principal, commands.into_inner()).await;
                match super::bounded::Bounded::new(answers) {
                    Ok(answers) => ClientResponse::Batch(answers),
                    Err(e) => ClientResponse::Refused(e.to_string()),
                }
            }
            ClientRequest::Command(command) | ClientRequest::InGroup { command, .. } => {
                let mut answers = self.handle_batch(principal, vec![command]).await;
                answers
                    .pop()
                    .map_or_else(|| ClientResponse::Refused("no answer".into()), Into::into)
            }
            ClientRequest::Health => ClientResponse::Health(self.health().await),
            ClientRequest::Groups => ClientResponse::Groups(super::bounded::Bounded::truncated(
                vec![self.group_status()],
            )),
            ClientRequest::Status => ClientResponse::Status {
                status: self.node.status(),
                members: super::bounded::Bounded::truncated(self.client_members()),
            },
            ClientRequest::Member(request) | ClientRequest::MemberInGroup { request, .. } => {
                // Bounded like every request; a catch-up gets the time the client allowed.
                let limit = match &request {
                    MemberRequest::Add { catch_up_ms, .. }
                    | MemberRequest::Set { catch_up_ms, .. } => {
                        Duration::from_millis((*catch_up_ms).min(MAX_CATCH_UP_MS))
                    }
                    _ => Duration::ZERO,
                } + REQUEST_TIMEOUT;
                // Boxed: a membership change's future is large and rare; inline, it would
                // size the future of every request (reads included) held per open stream.
                let change = Box::pin(self.handle_member(request));
                within(&*self.clock, limit, change).await.unwrap_or_else(|| {
                    ClientResponse::Unknown("the node did not finish the request in time".into())
                })
            }
            ClientRequest::Admin(AdminRequest::Partition { blocked }) => {
                if !self.fault_injection {
                    return ClientResponse::Refused("fault injection is disabled".into());
                }
                info!(node = self.node.id(), ?blocked, "partition set by a client");
                self.firewall.set_blocked(blocked.into_inner());
                ClientResponse::AdminDone
            }
        }
    }

    async fn handle_batch(
        &self,
        principal: &Principal,
        commands: Vec<Command>,
    ) -> Vec<CommandAnswer> {
        let mut answers: Vec<Option<CommandAnswer>> = vec![None; commands.len()];
        let (mut reads, mut writes) = (Vec::new(), Vec::new());
        for (i, command) in commands.into_iter().enumerate() {
            match command.op.validate() {
                Err(e) => answers[i] = Some(CommandAnswer::Refused(e.to_string())),
                Ok(()) if matches!(command.op, Op::Tombstone { .. }) => {
                    answers[i] = Some(CommandAnswer::Refused(KvError::NodeOnly.to_string()));
                }
                Ok(()) if command.op.is_read() => reads.push((i, command)),
                Ok(()) => writes.push((i, command)),
            }
        }
        let (read_positions, reads): (Vec<usize>, Vec<Command>) = reads.into_iter().unzip();
        let (write_positions, writes): (Vec<usize>, Vec<Command>) = writes.into_iter().unzip();
        let owner = principal.dns_name();
        let clock = &*self.clock;
        let (read_answers, write_answers) = futures::join!(
            bounded(clock, reads.len(), self.read(reads)),
            bounded(clock, writes.len(), self.propose(Some(&owner), writes)),
        );
        for (positions, results) in
            [(read_positions, read_answers), (write_positions, write_answers)]
        {
            for (i, answer) in positions.into_iter().zip(results) {
                answers[i] = Some(answer);
            }
        }
        answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| CommandAnswer::Refused("no answer".into())))
            .collect()
    }

    /// Linearizable reads, without a log entry: one ReadIndex for the whole batch (on a
    /// follower, one RPC to the leader), and once this node has applied up to the read index,
    /// the answers from the local state. Each answer reflects every write acknowledged before
    /// the read arrived. Without a known leader the answer is a redirect (the client tries
    /// another node); any other failure is "not applied", which a read may always retry.
    pub async fn read(&self, commands: Vec<Command>) -> Vec<CommandAnswer> {
        let count = commands.len();
        if count == 0 {
            return Vec::new();
        }
        match self.node.read_index().await {
            Ok(_) => {
                let state = self.state.read();
                commands
                    .into_iter()
                    .map(|command| match command.op {
                        Op::Get { key } => {
                            CommandAnswer::Applied(Ok(OpResult::Value(state.get(&key))))
                        }
                        _ => CommandAnswer::Refused("not a read".into()),
                    })
                    .collect()
            }
            Err(ReadIndexError::NotLeader { leader_id, .. }) => {
                vec![CommandAnswer::NotLeader { leader: self.leader_member(leader_id) }; count]
            }
            Err(e) => vec![CommandAnswer::NotApplied(e.to_string()); count],
        }
    }

    /// Proposes `commands` of `owner` (`None`: the node's own) as one log entry and returns
    /// the state machine's answer to each.
    async fn propose(&self, owner: Option<&str>, commands: Vec<Command>) -> Vec<CommandAnswer> {
        let count = commands.len();
        if count == 0 {
            return Vec::new();
        }
        let all = |response: CommandAnswer| vec![response; count];
        let bytes = match encode_entry(owner, commands) {
            Ok(bytes) => bytes,
            Err(e) => return all(CommandAnswer::Refused(e.to_string())),
        };
        // One call to the node: proposed, then answered once applied.
        match self.node.write(bytes).await {
            Ok(answer) => {
                decode_responses(&answer, count).into_iter().map(CommandAnswer::Applied).collect()
            }
            Err(WriteError::Failed(e @ CommitError::Dropped { .. })) => {
                all(CommandAnswer::NotApplied(e.to_string()))
            }
            Err(WriteError::Refused(ProposeError::NotLeader { leader_id, .. })) => {
                all(CommandAnswer::NotLeader { leader: self.leader_member(leader_id) })
            }
            Err(WriteError::Refused(e @ ProposeError::TooLarge { .. })) => {
                all(CommandAnswer::Refused(e.to_string()))
            }
            Err(WriteError::Refused(e)) => all(CommandAnswer::NotApplied(e.to_string())),
            Err(e) => all(CommandAnswer::Unknown(e.to_string())),
        }
    }
}

impl ClientService {
    /// Serves a membership request on the leader (others redirect).
    async fn handle_member(&self, request: MemberRequest) -> ClientResponse {
        let status = self.node.status();
        if status.role != Role::Leader {
            return self.redirect(status.leader_id);
        }
        info!(node = self.node.id(), ?request, "membership request");
        match request {
            MemberRequest::List => ClientResponse::Members(self.member_list()),
            MemberRequest::Add { id, raft_addr, client_addr, catch_up_ms, promote } => {
                let addrs = MemberAddrs { raft: raft_addr, client: client_addr };
                let change = self.add_member(id, addrs, catch_up_ms.min(MAX_CATCH_UP_MS), promote);
                self.unless_tombstoned(&[id], change).await
            }
            MemberRequest::Remove { id } => self.remove_member(id).await,
            MemberRequest::TransferLeader { id } => self.transfer_leader(id).await,
            MemberRequest::Set { voters, new_members, catch_up_ms } => {
                let (voters, new_members) = (voters.into_inner(), new_members.into_inner());
                let named: Vec<NodeId> =
                    voters.iter().copied().chain(new_members.iter().map(|m| m.id)).collect();
                let change =
                    self.set_members(voters, new_members, catch_up_ms.min(MAX_CATCH_UP_MS));
                self.unless_tombstoned(&named, change).await
            }
        }
    }

    /// The membership as this node knows it, with addresses.
    pub fn member_list(&self) -> MemberList {
        let membership = self.node.membership();
        let book = self.addresses();
        let info = |id: NodeId, voter: bool| MemberInfo {
            id,
            voter,
            raft_addr: book.get(&id).map(|a| a.raft),
            client_addr: book.get(&id).map(|a| a.client),
        };
        let mut members: Vec<MemberInfo> =
            membership.members().into_iter().map(|id| info(id, membership.is_voter(id))).collect();
        members.sort_by_key(|m| m.id);
        let status = self.node.status();
        MemberList {
            answered_by: self.node.id(),
            leader: status.leader_id,
            commit_index: status.commit_index,
            members: super::bounded::Bounded::truncated(members),
        }
    }

    /// `member add`: learner with its addresses in the membership (the leader and every other
    /// node reach it through them); with `promote`, catch-up and promotion. Called through
    /// [`ClientService::unless_tombstoned`].
    async fn add_member(
        &self,
        id: NodeId,
        addrs: MemberAddrs,
        catch_up_ms: u64,
        promote: bool,
    ) -> ClientResponse {
        let membership = self.node.membership();
        let info = addrs.to_node_info();
        if membership.contains(id) && membership.node(id) != Some(&info) {
            // A second node under a member's id is refused.
            return ClientResponse::MemberFailed(MemberError::AlreadyMember(id));
        }
        if membership.is_voter(id) {
            return ClientResponse::Members(self.member_list()); // a retry of a completed add
        }
        if !promote {
            if membership.contains(id) {
                return ClientResponse::Members(self.member_list());
            }
            return match self.node.change_membership(MembershipChange::AddLearner(id, info)).await {
                Ok(_) => ClientResponse::Members(self.member_list()),
                Err(MembershipError::Invalid(InvalidChange::AlreadyMember(_)))
                    if self.node.membership().is_learner(id) =>
                {
                    ClientResponse::Members(self.member_list())
                }
                Err(e) => self.membership_error(e),
            };
        }
        match self.node.add_voter(id, info, Duration::from_millis(catch_up_ms)).await {
            Ok(_) => ClientResponse::Members(self.member_list()),
            Err(MembershipError::CatchUpTimeout) => {
                ClientResponse::MemberFailed(MemberError::CatchUpTimeout {
                    id,
                    waited_ms: catch_up_ms,
                })
            }
            Err(e) => self.membership_error(e),
        }
    }

    /// `member remove`: the Raft change. Once it is applied the state machine tombstones the id
    /// (every node refuses it from then on). Removing this node (the leader) makes it step down
    /// once the change commits. Idempotent: removing a removed node succeeds. A group of a
    /// sharded service that never had the node records its tombstone all the same (a `member
    /// add` may have reached other groups only): the removal then completes in every group.
    async fn remove_member(&self, id: NodeId) -> ClientResponse {
        if !self.node.membership().contains(id) {
            return if self.state.read().removed_members.contains(&id) {
                ClientResponse::Members(self.member_list())
            } else if self.sharded {
                self.tombstone(id).await
            } else {
                ClientResponse::MemberFailed(MemberError::NotMember(id))
            };
        }
        match self.node.change_membership(MembershipChange::RemoveNode(id)).await {
            Ok(_) | Err(MembershipError::Invalid(InvalidChange::NotMember(_))) => {
                ClientResponse::Members(self.member_list())
            }
            Err(e) => self.membership_error(e),
        }
    }

    /// Records `id`, a node this group never had, as removed ([`Op::Tombstone`]). If the node
    /// became a member meanwhile, the answer is "retry" (the retry removes it by a change).
    ///
    /// A tombstone and a `member add` (or `member set`) of the same id do not both stay in
    /// force, whatever their order in the log and whoever leads: if the add's membership entry
    /// is first, the state machine refuses the tombstone (it holds `id`: "retry", and the
    /// retry removes the member by a change); if the tombstone is first, the add sees it once
    /// its own change is applied (or before proposing it) and removes `id` again by a change,
    /// answering [`MemberError::Removed`]. Residual: if that compensating removal fails (the
    /// leader stops leading or crashes in between), `id` stays tombstoned and a member until a
    /// retry of the add (which removes it first) or a `member remove` (a change, as for any
    /// member).
    async fn tombstone(&self, id: NodeId) -> ClientResponse {
        let command = Command { session: None, op: Op::Tombstone { id } };
        match self.propose(None, vec![command]).await.pop() {
            Some(CommandAnswer::Applied(Ok(_))) => ClientResponse::Members(self.member_list()),
            Some(CommandAnswer::Applied(Err(e @ KvError::Member(_)))) => {
                ClientResponse::NotApplied(e.to_string())
            }
            Some(answer) => answer.into(),
            None => ClientResponse::Refused("no answer".into()),
        }
    }

    /// Runs `change`, a membership change making `ids` members, unless one of them is
    /// tombstoned: the check is made once this node applied its whole log (tombstones of
    /// earlier leaders), and again once the change is done (applied here: every tombstone
    /// before it in the log is applied too). A tombstoned id that became a member is removed
    /// again by a change; see [`ClientService::tombstone`].
    async fn unless_tombstoned(
        &self,
        ids: &[NodeId],
        change: impl std::future::Future<Output = ClientResponse>,
    ) -> ClientResponse {
        if let Err(stopped) = self.applied_own_log().await {
            return stopped;
        }
        if let Some(removed) = self.undo_tombstoned(ids).await {
            return removed;
        }
        let answer = change.await;
        self.undo_tombstoned(ids).await.unwrap_or(answer)
    }

    /// `member set`: exactly `voters` vote after one joint change; see [`MemberRequest::Set`].
    /// Called through [`ClientService::unless_tombstoned`].
    async fn set_members(
        &self,
        voters: Vec<NodeId>,
        new_members: Vec<NewMember>,
        catch_up_ms: u64,
    ) -> ClientResponse {
        let current = self.node.membership();
        let mut nodes: BTreeMap<NodeId, raft_core::NodeInfo> = BTreeMap::new();
        for member in &new_members {
            let addrs = MemberAddrs { raft: member.raft_addr, client: member.client_addr };
            let info = addrs.to_node_info();
            if current.node(member.id).is_some_and(|known| *known != info) {
                return ClientResponse::MemberFailed(MemberError::AlreadyMember(member.id));
            }
            nodes.insert(member.id, info);
        }
        let learners: Vec<NodeId> =
            current.learners().iter().copied().filter(|id| !voters.contains(id)).collect();
        // Members the membership gives no addresses (founders) get this node's configured ones.
        for &id in voters.iter().chain(&learners) {
            let empty = current.node(id).is_some_and(raft_core::NodeInfo::is_empty);
            if let (true, Some(addrs)) = (empty, self.configured.get(&id)) {
                nodes.entry(id).or_insert_with(|| addrs.to_node_info());
            }
        }
        let target = match current.target(voters.iter().copied(), learners, nodes) {
            Ok(target) => target,
            Err(e) => return self.membership_error(MembershipError::Invalid(e)),
        };
        match self.node.set_membership(target, Duration::from_millis(catch_up_ms)).await {
            Ok(_) => ClientResponse::Members(self.member_list()),
            Err(MembershipError::CatchUpTimeout) => {
                let membership = self.node.membership();
                let id = voters.iter().copied().find(|&id| membership.is_learner(id));
                ClientResponse::MemberFailed(MemberError::CatchUpTimeout {
                    id: id.unwrap_or_default(),
                    waited_ms: catch_up_ms,
                })
            }
            Err(e) => self.membership_error(e),
        }
    }

    /// `None` if no id of `ids` is tombstoned. Else the answer refusing the change that names
    /// them ([`MemberError::Removed`]), once every tombstoned id that is a member (a change
    /// that lost the race with its tombstone, see [`ClientService::tombstone`]) was removed
    /// by a change; a failed removal is answered as such (a retry removes it).
    async fn undo_tombstoned(&self, ids: &[NodeId]) -> Option<ClientResponse> {
        let tombstoned: Vec<NodeId> = {
            let state = self.state.read();
            ids.iter().copied().filter(|id| state.removed_members.contains(id)).collect()
        };
        for &id in &tombstoned {
            if !self.node.membership().contains(id) {
                continue;
            }
            info!(node = self.node.id(), id, "removing a tombstoned member again");
            match self.node.change_membership(MembershipChange::RemoveNode(id)).await {
                Ok(_) | Err(MembershipError::Invalid(InvalidChange::NotMember(_))) => {}
                Err(e) => return Some(self.membership_error(e)),
            }
        }
        let first = tombstoned.first()?;
        Some(ClientResponse::MemberFailed(MemberError::Removed(*first)))
    }

    /// Waits until this node applied every entry its log holds now (the tombstones proposed
    /// before, by this leader or an earlier one, are then in its state), or stops leading: then
    /// the answer is a redirect (entries it could not commit may never be).
    async fn applied_own_log(&self) -> Result<(), ClientResponse> {
        let last = self.node.status().last_log_index;
        let done = |status: &raft_core::Status| {
            status.applied_index >= last || status.role != Role::Leader
        };
        match self.node.watch().wait_for(done).await {
            Some(status) if status.applied_index >= last => Ok(()),
            Some(status) => Err(self.redirect(status.leader_id)),
            None => Err(ClientResponse::NotApplied("the node stopped".into())),
        }
    }

    async fn transfer_leader(&self, id: NodeId) -> ClientResponse {
        match self.node.transfer_leadership(id).await {
            Ok(()) => ClientResponse::Members(self.member_list()),
            Err(TransferError::NotLeader { leader_id, .. }) => self.redirect(leader_id),
            Err(TransferError::NotVoter(id)) => {
                ClientResponse::MemberFailed(if self.node.membership().contains(id) {
                    MemberError::NotVoter(id)
                } else {
                    MemberError::NotMember(id)
                })
            }
            Err(TransferError::TimedOut { leader_id: leader }) => {
                ClientResponse::MemberFailed(MemberError::TransferTimedOut { target: id, leader })
            }
            Err(e @ (TransferError::InProgress(_) | TransferError::Shutdown)) => {
                ClientResponse::NotApplied(e.to_string())
            }
            Err(e) => ClientResponse::Unknown(e.to_string()),
        }
    }

    /// The answer to a failed membership change: a redirect, "retry" (not applied), "outcome
    /// unknown", or a failure for good.
    fn membership_error(&self, error: MembershipError) -> ClientResponse {
        match error {
            MembershipError::NotLeader { leader_id, .. } => self.redirect(leader_id),
            MembershipError::Invalid(InvalidChange::NotMember(id)) => {
                ClientResponse::MemberFailed(MemberError::NotMember(id))
            }
            MembershipError::Invalid(InvalidChange::AlreadyMember(id)) => {
                ClientResponse::MemberFailed(MemberError::AlreadyMember(id))
            }
            MembershipError::Invalid(InvalidChange::LastVoter(id)) => {
                ClientResponse::MemberFailed(MemberError::LastVoter(id))
            }
            MembershipError::Invalid(InvalidChange::UnknownNode(id)) => {
                ClientResponse::MemberFailed(MemberError::NotMember(id))
            }
            MembershipError::Invalid(e) => {
                ClientResponse::MemberFailed(MemberError::Invalid(e.to_string()))
            }
            e @ (MembershipError::ChangeInProgress
            | MembershipError::TransferInProgress
            | MembershipError::LearnerBehind { .. }
            | MembershipError::Shutdown) => ClientResponse::NotApplied(e.to_string()),
            e @ (MembershipError::CatchUpTimeout | MembershipError::LearnerRefuses { .. }) => {
                ClientResponse::NotApplied(e.to_string())
            }
            e => ClientResponse::Unknown(e.to_string()),
        }
    }
}

/// The longest a `member add` may wait for the new node to catch up.
pub const MAX_CATCH_UP_MS: u64 = 10 * 60 * 1000;

/// Bounds the time spent on `count` commands: past [`REQUEST_TIMEOUT`] each is answered
/// "outcome unknown".
async fn bounded(
    clock: &dyn Clock,
    count: usize,
    work: impl std::future::Future<Output = Vec<CommandAnswer>>,
) -> Vec<CommandAnswer> {
    within(clock, REQUEST_TIMEOUT, work).await.unwrap_or_else(|| {
        vec![CommandAnswer::Unknown("the node did not finish the request in time".into()); count]
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::kv::auth::CertRole;
    use crate::kv::state_machine::KvStateMachine;
    use crate::kv::testing::one_voter_node;

    /// A group of a sharded service: node 1 alone, leading.
    async fn sharded_group() -> ClientService {
        let state = SharedState::new();
        let node = one_voter_node(KvStateMachine::new(state.clone())).await;
        let mut service = ClientService::new(node, state, BTreeMap::new(), Firewall::new(), false);
        service.sharded = true;
        service
    }

    fn add(id: NodeId) -> ClientRequest {
        ClientRequest::Member(learner_add(id))
    }

    /// `member add` of learner `id` (no promotion) at an address nobody serves.
    fn learner_add(id: NodeId) -> MemberRequest {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
        MemberRequest::Add {
            id,
            raft_addr: addr,
            client_addr: addr,
            catch_up_ms: 0,
            promote: false,
        }
    }

    /// An operator removes node 5 (which this group never had: a tombstone) and adds it at the
    /// same time, the two requests reaching the leader together. Whichever lands first in the
    /// log wins, and the id never ends up both tombstoned and a member (a member whose
    /// connections every node refuses once all groups removed it, and whose removal could never
    /// complete: `member remove` of a tombstoned id answers "done").
    #[tokio::test(flavor = "current_thread")]
    async fn a_tombstone_and_an_add_of_the_same_id_at_once_leave_it_one_or_the_other() {
        let admin = Principal { role: CertRole::Admin, name: "ops".into() };
        for remove_first in [true, false] {
            let service = sharded_group().await;
            let remove = ClientRequest::Member(MemberRequest::Remove { id: 5 });
            let (removed, added) = if remove_first {
                futures::join!(service.handle(&admin, remove), service.handle(&admin, add(5)))
            } else {
                let (added, removed) =
                    futures::join!(service.handle(&admin, add(5)), service.handle(&admin, remove));
                (removed, added)
            };
            let tombstoned = service.state.read().removed_members.contains(&5);
            let member = service.node.membership().contains(5);
            let outcome = format!(
                "remove first: {remove_first}; remove: {removed:?}; add: {added:?}; \
                 tombstoned: {tombstoned}, member: {member}"
            );
            assert!(!(tombstoned && member), "{outcome}");
            // The request polled first reaches the leader first and wins; the other fails
            // without effect ("removed" for the add, "retry" for the removal).
            if remove_first {
                assert!(tombstoned && !member, "{outcome}");
                assert!(matches!(removed, ClientResponse::Members(_)), "{outcome}");
                let refused = ClientResponse::MemberFailed(MemberError::Removed(5));
                assert_eq!(added, refused, "{outcome}");
            } else {
                assert!(member && !tombstoned, "{outcome}");
                assert!(matches!(added, ClientResponse::Members(_)), "{outcome}");
                assert!(matches!(removed, ClientResponse::NotApplied(_)), "{outcome}");
                // The retry removes the member by a membership change.
                let retry = ClientRequest::Member(MemberRequest::Remove { id: 5 });
                let retried = service.handle(&admin, retry).await;
                assert!(matches!(retried, ClientResponse::Members(_)), "{retried:?}");
                assert!(!service.node.membership().contains(5));
                service.applied_own_log().await.unwrap();
                assert!(service.state.read().removed_members.contains(&5));
            }
            service.node.shutdown().await;
        }
    }

    /// The removal of node 5 (which the group never had) is given up (its time limit, or the
    /// node's queue deferred its proposal) after its tombstone reached the node; `request`, a
    /// change making 5 a member, follows. The tombstone lands first in the log: the change,
    /// once applied, sees it, removes 5 again and answers "removed" (review H1 of cleanup).
    async fn given_up_tombstone_then(request: MemberRequest) {
        use futures::FutureExt;
        let admin = Principal { role: CertRole::Admin, name: "ops".into() };
        let service = sharded_group().await;
        let remove = ClientRequest::Member(MemberRequest::Remove { id: 5 });
        assert!(service.handle(&admin, remove).now_or_never().is_none());
        let answer = service.handle(&admin, ClientRequest::Member(request)).await;
        service.applied_own_log().await.unwrap();
        let tombstoned = service.state.read().removed_members.contains(&5);
        let member = service.node.membership().contains(5);
        let outcome = format!("answer: {answer:?}; tombstoned: {tombstoned}, member: {member}");
        assert!(tombstoned && !member, "{outcome}");
        assert_eq!(answer, ClientResponse::MemberFailed(MemberError::Removed(5)), "{outcome}");
        service.node.shutdown().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_given_up_tombstone_request_still_wins_over_a_later_add() {
        given_up_tombstone_then(learner_add(5)).await;
    }

    /// Through `member set`, node 5 joins as a learner, then would be promoted once caught up.
    #[tokio::test(flavor = "current_thread")]
    async fn a_given_up_tombstone_request_still_wins_over_a_later_set() {
        use super::super::bounded::Bounded;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
        let new = NewMember { id: 5, raft_addr: addr, client_addr: addr };
        given_up_tombstone_then(MemberRequest::Set {
            voters: Bounded::new(vec![1, 5]).unwrap(),
            new_members: Bounded::new(vec![new]).unwrap(),
            catch_up_ms: 0,
        })
        .await;
    }

    /// An add catching up its learner (id 4, unreachable) does not hold up the removal of
    /// another never-member (id 6) of the group (review M1 of cleanup).
    #[tokio::test(flavor = "current_thread")]
    async fn an_add_catching_up_does_not_block_another_ids_tombstone() {
        let admin = Principal { role: CertRole::Admin, name: "ops".into() };
        let service = sharded_group().await;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
        let slow = MemberRequest::Add {
            id: 4,
            raft_addr: addr,
            client_addr: addr,
            catch_up_ms: 2_000,
            promote: true,
        };
        let remove = ClientRequest::Member(MemberRequest::Remove { id: 6 });
        let (added, removed) =
            futures::join!(service.handle(&admin, ClientRequest::Member(slow)), async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                service.handle(&admin, remove).await
            });
        let outcome = format!("remove 6: {removed:?}; add 4: {added:?}");
        assert!(matches!(removed, ClientResponse::Members(_)), "{outcome}");
        assert!(service.state.read().removed_members.contains(&6), "{outcome}");
        service.node.shutdown().await;
    }

    /// Two voters on one in-memory network; returns the leader's service (sharded) and the
    /// other node, once one leads. Panics (a test failure) if none does within 30 s.
    async fn two_voter_group(network: &raft_mem::MemNetwork) -> (ClientService, Node) {
        use raft_core::runtime::TokioRuntime;
        use raft_core::{Config, Membership};
        let runtime = TokioRuntime::current().unwrap();
        let mut nodes = Vec::new();
        for id in [1, 2] {
            let state = SharedState::new();
            let machine = KvStateMachine::new(state.clone());
            let store = raft_mem::MemLogStore::new();
            let endpoint = network.endpoint(id);
            let builder = Node::builder(Config::new(id), store, endpoint, machine, runtime.clone());
            let node = builder.bootstrap(Membership::with_voters([1, 2])).start().await.unwrap();
            network.serve(id, Arc::new(node.clone()));
            nodes.push((node, state));
        }
        let led = async {
            loop {
                if let Some(i) = nodes.iter().position(|(n, _)| n.status().role == Role::Leader) {
                    return i;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let leader = tokio::time::timeout(Duration::from_secs(30), led).await.unwrap();
        let (node, state) = nodes.swap_remove(leader);
        let other = nodes.pop().unwrap().0;
        let mut service = ClientService::new(node, state, BTreeMap::new(), Firewall::new(), false);
        service.sharded = true;
        (service, other)
    }

    /// A `member add` waits until its leader applied its whole log; a leader cut off from its
    /// group cannot commit its last entry and steps down (check quorum): the add answers a
    /// redirect then, not "outcome unknown" at its time limit (review L1 of cleanup).
    #[tokio::test(flavor = "current_thread")]
    async fn an_add_waiting_for_its_log_answers_a_redirect_once_its_node_stops_leading() {
        let admin = Principal { role: CertRole::Admin, name: "ops".into() };
        let network = raft_mem::MemNetwork::new();
        let (service, other) = two_voter_group(&network).await;
        network.disconnect(other.id());
        let put = Op::Put { key: bytes::Bytes::from_static(b"k"), value: bytes::Bytes::new() };
        let entry = encode_entry(None, vec![Command { session: None, op: put }]).unwrap();
        let writer = service.node.clone();
        let write = tokio::spawn(async move { writer.write(entry).await });
        let mut watch = service.node.watch();
        watch.wait_for(|s| s.last_log_index > s.commit_index).await.unwrap();
        let added = service.handle(&admin, add(5)).await;
        assert!(matches!(added, ClientResponse::NotLeader { .. }), "{added:?}");
        assert!(!service.node.membership().contains(5));
        write.abort();
        service.node.shutdown().await;
        other.shutdown().await;
    }
}
