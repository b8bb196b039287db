//! Questions a scenario asks of the cluster (who leads, what is applied) and the helpers that
//! drive it (write through the leader, change the membership, wait for a state).

use std::collections::BTreeSet;
use std::time::Duration;

use futures::FutureExt;
use raft_core::{
    Bytes, InvalidChange, LogIndex, MembershipChange, MembershipError, NodeId, ProposeError, Role,
    Status,
};

use super::simulation::{stuck, SimFailure, Simulation};

impl<S: raft_core::StateMachine> Simulation<S> {
    /// Applies `change` through whichever node leads, retrying through leader changes, lost
    /// leadership and changes still in progress, for at most `max`. A retry that finds the change
    /// already made (an earlier attempt committed after all) counts as success.
    pub fn change_membership(
        &mut self,
        change: MembershipChange,
        max: Duration,
    ) -> Result<(), SimFailure> {
        self.note_disruption();
        let deadline = self.now() + max;
        while self.now() < deadline {
            if let Some(node) = self.leader().and_then(|leader| self.node(leader).cloned()) {
                let runtime = self.runtime.clone();
                let this_change = change.clone();
                let attempt = async move {
                    futures::select_biased! {
                        result = node.change_membership(this_change).fuse() => Some(result),
                        _ = runtime.sleep_for(Duration::from_secs(3)).fuse() => None,
                    }
                };
                let outcome =
                    self.block_on("a membership change", Duration::from_secs(4), attempt)?;
                match outcome {
                    Some(Ok(_)) => return Ok(()),
                    Some(Err(MembershipError::Invalid(invalid))) => {
                        let done = matches!(
                            (&change, &invalid),
                            (MembershipChange::AddLearner(..), InvalidChange::AlreadyMember(_))
                                | (MembershipChange::RemoveNode(_), InvalidChange::NotMember(_))
                        ) || matches!(change, MembershipChange::PromoteLearner(id)
                            if self.leader().and_then(|l| self.node(l))
                                .is_some_and(|n| n.membership().is_voter(id)));
                        if done {
                            return Ok(());
                        }
                        return Err(self.fail(stuck(format!("{change:?} refused: {invalid}"))));
                    }
                    _ => {}
                }
            }
            self.run_for(Duration::from_millis(50))?;
        }
        Err(self.fail(stuck(format!("{change:?} did not complete within {max:?}"))))
    }

    /// Statuses of the running nodes.
    pub fn statuses(&self) -> Vec<Status> {
        self.running.values().map(|r| r.node.status()).collect()
    }

    /// The leader with the highest term among running nodes, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.statuses()
            .into_iter()
            .filter(|s| s.role == Role::Leader)
            .max_by_key(|s| s.current_term)
            .map(|s| s.id)
    }

    /// The leaders among the running nodes that can reach a quorum of their membership (a
    /// majority of each voter set).
    pub fn leaders_with_quorum(&self) -> Vec<NodeId> {
        self.running
            .values()
            .filter(|r| r.node.status().role == Role::Leader)
            .filter(|r| {
                let id = r.node.id();
                r.node.membership().has_quorum(|p| {
                    self.is_running(p) && (p == id || self.network.connected(id, p))
                })
            })
            .map(|r| r.node.id())
            .collect()
    }

    /// The voters and learners according to the current leader (`None` without a leader).
    pub fn members(&self) -> Option<BTreeSet<NodeId>> {
        self.leader().and_then(|l| self.node(l)).map(|n| n.membership().members())
    }

    /// Runs until some node is leader with a quorum reachable and every running member it can
    /// reach follows it in its term; returns it.
    pub fn wait_for_leader(&mut self, max: Duration) -> Result<NodeId, SimFailure> {
        self.run_until("a stable leader", max, |sim| sim.stable_leader().is_some())?;
        self.stable_leader().ok_or_else(|| self.fail(stuck("leader vanished".into())))
    }

    fn stable_leader(&self) -> Option<NodeId> {
        let [leader] = self.leaders_with_quorum()[..] else { return None };
        let node = &self.running.get(&leader)?.node;
        let (term, members) = (node.status().current_term, node.membership().members());
        self.running
            .iter()
            .filter(|(&id, _)| {
                id != leader && members.contains(&id) && self.network.connected(leader, id)
            })
            .all(|(_, r)| {
                let s = r.node.status();
                s.current_term == term && s.leader_id == Some(leader)
            })
            .then_some(leader)
    }

    /// Proposes `command` on node `id`; returns the proposal's index once applied there, or
    /// `None` if it was refused or lost (not leader, leadership lost, overwritten) or did not
    /// finish within `max`.
    pub fn propose_on(
        &mut self,
        id: NodeId,
        command: Bytes,
        max: Duration,
    ) -> Result<Option<LogIndex>, SimFailure> {
        let Some(node) = self.node(id).cloned() else { return Ok(None) };
        let runtime = self.runtime.clone();
        let attempt = async move {
            let proposal = match node.propose(command).await {
                Ok(p) => p,
                Err(ProposeError::NotLeader { .. } | ProposeError::Shutdown) => return None,
                Err(_) => return None,
            };
            let index = proposal.index;
            futures::select_biased! {
                response = proposal.response().fuse() => response.ok().map(|_| index),
                _ = runtime.sleep_for(max).fuse() => None,
            }
        };
        let value = self.block_on("a proposal", max + Duration::from_secs(1), attempt)?;
        Ok(value)
    }

    /// Writes `command` through whichever node leads, retrying (for at most `max`) until it is
    /// applied on the leader. Returns its index.
    pub fn write(&mut self, command: Bytes, max: Duration) -> Result<LogIndex, SimFailure> {
        let deadline = self.now() + max;
        while self.now() < deadline {
            if let Some(leader) = self.leader() {
                if let Some(index) =
                    self.propose_on(leader, command.clone(), Duration::from_secs(2))?
                {
                    return Ok(index);
                }
            }
            self.run_for(Duration::from_millis(50))?;
        }
        Err(self.fail(stuck(format!("write did not commit within {max:?}"))))
    }

    /// Runs until every running node has applied at least up to `index`.
    pub fn wait_applied(&mut self, index: LogIndex, max: Duration) -> Result<(), SimFailure> {
        self.run_until("applies", max, |sim| {
            sim.statuses().iter().all(|s| s.applied_index >= index)
        })
    }
}
