//! [`GroupRouter`]: what a node's client port serves requests with, one [`ClientService`] per
//! Raft group of the node (one for a single-group service).
//!
//! Routing is the client's job: it hashes each key to its group
//! ([`group_of`]) and sends [`ClientRequest::InGroup`] to the node it
//! believes leads that group; the group's service answers exactly as a single-group node does
//! (a write on a follower is redirected to the group's leader, a read goes through the group's
//! ReadIndex on any node), and so do a group's batches ([`ClientRequest::GroupBatch`]) and
//! membership requests ([`ClientRequest::MemberInGroup`]: each group has its own membership, so
//! an administrator's change is one request per group). A sharded node answers a command or a
//! membership change that names no group, or a group it does not have, with
//! [`ClientResponse::Sharded`] (nothing applied), which tells the client the number of groups;
//! so does a command sent in a group that its key does not belong to (a batch holding one
//! such command applies none of its commands): a group only ever holds its own keys.
//! A single-group node serves every request as before.

use std::sync::Arc;

use raft_core::GroupId;

use super::auth::Principal;
use super::bounded::Bounded;
use super::command::Command;
use super::health::HealthReport;
use super::protocol::{ClientRequest, ClientResponse, MemberRequest};
use super::server::{authorize, ClientService};
use super::shard::group_of;

/// The client services of a node's groups, by group id (`0..N`).
#[derive(Debug, Clone)]
pub struct GroupRouter {
    groups: Arc<[Arc<ClientService>]>,
}

impl GroupRouter {
    /// Serves `groups`, the services of groups `0..groups.len()` in order; `None` if empty.
    pub fn new(groups: Vec<Arc<ClientService>>) -> Option<Self> {
        (!groups.is_empty()).then(|| Self { groups: groups.into() })
    }

    /// How many groups the node serves.
    pub fn group_count(&self) -> u32 {
        u32::try_from(self.groups.len()).unwrap_or(u32::MAX)
    }

    /// The service of every group, in group order.
    pub fn groups(&self) -> &[Arc<ClientService>] {
        &self.groups
    }

    fn first(&self) -> &ClientService {
        // Never empty (see `new`).
        &self.groups[0]
    }

    fn sharded(&self) -> ClientResponse {
        ClientResponse::Sharded { groups: self.group_count() }
    }

    /// Answers one request of `principal` (see the module documentation). Requests that are not
    /// about one group's data (status, health, partitions) are answered by group 0's service,
    /// which shares the node's firewall with every group. A sharded service changes its
    /// membership one group at a time ([`ClientRequest::MemberInGroup`]): a membership change
    /// that names no group is answered [`ClientResponse::Sharded`] (nothing done), as is a
    /// command that names none; a member list that names none is group 0's.
    pub async fn handle(&self, principal: &Principal, request: ClientRequest) -> ClientResponse {
        if let Some(refused) = authorize(principal, &request) {
            return refused;
        }
        let sharded = self.groups.len() > 1;
        match request {
            ClientRequest::InGroup { group, command } => {
                if !self.holds(group, std::slice::from_ref(&command)) {
                    return self.sharded();
                }
                self.in_group(principal, group, ClientRequest::Command(command)).await
            }
            ClientRequest::GroupBatch { group, commands } => {
                if !self.holds(group, &commands) {
                    return self.sharded();
                }
                self.in_group(principal, group, ClientRequest::Batch(commands)).await
            }
            ClientRequest::MemberInGroup { group, request } => {
                self.in_group(principal, group, ClientRequest::Member(request)).await
            }
            ClientRequest::Command(_) | ClientRequest::Batch(_) if sharded => self.sharded(),
            ClientRequest::Member(request) if sharded && request != MemberRequest::List => {
                self.sharded()
            }
            ClientRequest::Groups => ClientResponse::Groups(Bounded::truncated(
                self.groups.iter().map(|service| service.group_status()).collect(),
            )),
            ClientRequest::Health => ClientResponse::Health(self.health().await),
            request => self.first().handle(principal, request).await,
        }
    }

    /// Whether every key of `commands` belongs to group `group` ([`group_of`]; commands without
    /// a key, such as a session's registration, belong to any group).
    fn holds(&self, group: GroupId, commands: &[Command]) -> bool {
        let groups = self.group_count();
        commands.iter().filter_map(|c| c.op.key()).all(|key| group_of(key, groups) == group)
    }

    /// Answers `request` with group `group`'s service; [`ClientResponse::Sharded`] if the node
    /// has no such group.
    async fn in_group(
        &self,
        principal: &Principal,
        group: GroupId,
        request: ClientRequest,
    ) -> ClientResponse {
        match usize::try_from(group).ok().and_then(|g| self.groups.get(g)) {
            Some(service) => service.handle(principal, request).await,
            None => self.sharded(),
        }
    }

    /// The node's health: the report of the first group that is not live, else of the first
    /// that is not ready, else group 0's (a sharded node is ready when every group is).
    pub async fn health(&self) -> HealthReport {
        let mut reports =
            futures::future::join_all(self.groups.iter().map(|service| service.health())).await;
        let worst =
            reports.iter().position(|r| !r.live).or_else(|| reports.iter().position(|r| !r.ready));
        reports.swap_remove(worst.unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use bytes::Bytes;

    use super::*;
    use crate::kv::auth::CertRole;
    use crate::kv::command::Op;
    use crate::kv::fault::Firewall;
    use crate::kv::protocol::CommandBatch;
    use crate::kv::state_machine::{KvStateMachine, SharedState};
    use crate::kv::testing::one_voter_node;

    /// A one-voter group (node 1 alone, on its own in-memory network), once it leads.
    async fn one_voter_group(group: GroupId) -> Arc<ClientService> {
        let state = SharedState::new();
        let node = one_voter_node(KvStateMachine::new(state.clone())).await;
        let configured = Default::default();
        let mut service = ClientService::new(node, state, configured, Firewall::new(), false);
        service.group = group;
        service.sharded = true;
        Arc::new(service)
    }

    /// A key of group `group` of 2.
    fn key_in(group: GroupId) -> Bytes {
        let key = (0..).map(|i| format!("key-{i}")).find(|k| group_of(k.as_bytes(), 2) == group);
        Bytes::from(key.unwrap())
    }

    fn put(key: &Bytes) -> Command {
        Command { session: None, op: Op::Put { key: key.clone(), value: Bytes::from("v") } }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_command_sent_to_another_group_than_its_keys_is_refused_unapplied() {
        let router = GroupRouter::new(vec![one_voter_group(0).await, one_voter_group(1).await]);
        let router = router.unwrap();
        let alice = Principal { role: CertRole::Client, name: "alice".into() };
        let (ours, theirs) = (key_in(1), key_in(0));
        // A batch for group 1 that holds a key of group 0 applies nothing of it.
        let batch = CommandBatch::new(vec![put(&ours), put(&theirs)]).unwrap();
        let answer =
            router.handle(&alice, ClientRequest::GroupBatch { group: 1, commands: batch }).await;
        assert_eq!(answer, ClientResponse::Sharded { groups: 2 });
        let single = ClientRequest::InGroup { group: 1, command: put(&theirs) };
        assert_eq!(router.handle(&alice, single).await, ClientResponse::Sharded { groups: 2 });
        for service in router.groups() {
            let state = service.state.read();
            assert!(state.data.is_empty(), "group {} applied {:?}", service.group, state.data);
        }
        // The keys' own groups apply them.
        let right = ClientRequest::InGroup { group: 1, command: put(&ours) };
        assert!(matches!(router.handle(&alice, right).await, ClientResponse::Applied(Ok(_))));
        assert_eq!(router.groups()[1].state.read().get(&ours), Some(Bytes::from("v")));
    }
}
