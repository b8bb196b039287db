//! Leadership transfer (Raft thesis §3.10): the leader stops taking proposals, brings the
//! target's log up to date, then sends it TimeoutNow so that it campaigns at once (its vote
//! requests carry `leadership_transfer`, which voters honour despite the leader lease). The
//! transfer ends when the leader steps down, or is abandoned after
//! `Config::leadership_transfer_timeout`.

use super::{Engine, RoleState};
use crate::message::{RpcRequest, TimeoutNowRequest};
use crate::types::NodeId;

/// Why a leadership transfer could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransferRefusal {
    /// This node is not the leader; the known leader, if any.
    NotLeader(Option<NodeId>),
    /// The target is not a voter of the current membership.
    NotVoter(NodeId),
    /// A transfer to another node is in progress.
    InProgress(NodeId),
}

/// A transfer in progress.
#[derive(Debug)]
pub(super) struct LeaderTransfer {
    pub(super) target: NodeId,
    elapsed_ticks: u64,
    /// TimeoutNow was sent and the next heartbeat has not come yet.
    timeout_now_sent: bool,
}

impl LeaderTransfer {
    /// A transfer to `target` starting now.
    pub(super) fn new(target: NodeId) -> Self {
        Self { target, elapsed_ticks: 0, timeout_now_sent: false }
    }
}

impl Engine {
    /// Starts handing leadership to `target`. Until the transfer ends, proposals are refused
    /// with [`ProposeRefusal::TransferInProgress`](super::ProposeRefusal) and membership
    /// changes with [`MembershipRefusal::TransferInProgress`](super::MembershipRefusal).
    /// Asking again for the same target is a no-op, and so is a transfer to this node.
    pub fn transfer_leadership(&mut self, target: NodeId) -> Result<(), TransferRefusal> {
        let leader_id = self.leader_id;
        let is_voter = self.log.membership().latest().is_voter(target);
        let RoleState::Leader(leader) = &mut self.role else {
            return Err(TransferRefusal::NotLeader(leader_id));
        };
        match &leader.transfer {
            Some(t) if t.target == target => return Ok(()),
            Some(t) => return Err(TransferRefusal::InProgress(t.target)),
            None => {}
        }
        if target == self.id {
            return Ok(());
        }
        if !is_voter {
            return Err(TransferRefusal::NotVoter(target));
        }
        tracing::info!(id = self.id, target, "leadership transfer started");
        leader.transfer = Some(LeaderTransfer::new(target));
        self.unquiesce(super::quiesce::Waker::Other);
        Ok(())
    }

    /// The target of the transfer in progress, if any.
    pub fn transfer_target(&self) -> Option<NodeId> {
        match &self.role {
            RoleState::Leader(leader) => leader.transfer.as_ref().map(|t| t.target),
            _ => None,
        }
    }

    /// Leader, after replicating: sends TimeoutNow once the target holds the whole log.
    pub(super) fn advance_transfer(&mut self) {
        let last_index = self.log.last_index();
        let term = self.hard_state.current_term;
        let RoleState::Leader(leader) = &mut self.role else { return };
        let Some(transfer) = &mut leader.transfer else { return };
        if transfer.timeout_now_sent {
            return;
        }
        let caught_up =
            leader.progress.get(&transfer.target).is_some_and(|p| p.match_index >= last_index);
        if caught_up {
            transfer.timeout_now_sent = true;
            leader.lease.void();
            let request = RpcRequest::TimeoutNow(TimeoutNowRequest { term, leader_id: self.id });
            tracing::debug!(id = self.id, target = transfer.target, "sending TimeoutNow");
            let to = transfer.target;
            self.send(to, request, false);
        }
    }

    /// Leader tick: ages the transfer, abandons it after the timeout, and lets TimeoutNow be
    /// sent again with each heartbeat (in case it was lost).
    pub(super) fn tick_transfer(&mut self, heartbeat_due: bool) {
        let timeout = self.config.ticks(self.config.leadership_transfer_timeout);
        let RoleState::Leader(leader) = &mut self.role else { return };
        let Some(transfer) = &mut leader.transfer else { return };
        transfer.elapsed_ticks += 1;
        if heartbeat_due {
            transfer.timeout_now_sent = false;
        }
        if transfer.elapsed_ticks >= timeout {
            tracing::warn!(id = self.id, target = transfer.target, "leadership transfer timed out");
            leader.transfer = None;
        }
    }

    /// Abandons a transfer whose target is no longer a voter.
    pub(super) fn check_transfer_target(&mut self) {
        let membership = self.log.membership().latest();
        let RoleState::Leader(leader) = &mut self.role else { return };
        if leader.transfer.as_ref().is_some_and(|t| !membership.is_voter(t.target)) {
            leader.transfer = None;
        }
    }
}
