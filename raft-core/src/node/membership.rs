//! Membership changes through the node handle: one step at a time ([`Node::change_membership`],
//! [`Node::add_voter`]) or to any target at once through a joint configuration
//! ([`Node::set_membership`]). The engine takes each step (`Engine::propose_membership*`); this
//! side waits for entries to commit, retries while another change is in progress or a learner
//! catches up, and waits for the configuration a joint one moves to.

use std::time::Duration;

use futures::channel::oneshot;

use super::{reentrancy, Input, Node, Proposal};
use crate::engine::MembershipProgress;
use crate::error::MembershipError;
use crate::membership::{InvalidChange, Membership, MembershipChange, NodeInfo};
use crate::types::{LogIndex, NodeId, SnapshotFailure, Term};

/// What a caller asks the leader for.
#[derive(Debug, Clone)]
pub(crate) enum Request {
    /// One step relative to the membership in force.
    Change(MembershipChange),
    /// Any membership, through a joint configuration.
    Target(Membership),
}

/// What the leader did for a [`Request`].
#[derive(Debug)]
pub(crate) enum Step {
    /// Nothing to do: the membership in force (committed) is the one asked for.
    Done(Membership),
    /// An entry was appended: `membership`, at `proposal`.
    Appended { proposal: Proposal, progress: MembershipProgress, membership: Membership },
}

/// A caller waiting for a joint change to be complete, never answered with a joint membership:
/// with the final configuration (the first membership after the joint one) once it is
/// committed and applied here, if the joint entry's leadership appended it; with
/// `LeadershipLost` while it is not committed and this node does not lead in the joint entry's
/// term (it stopped leading, even if it leads again: in the same step of its main loop or
/// later, before or after the caller asked to wait), or once one another leadership appended
/// is committed. Once the entries after the joint one were compacted away (the final
/// configuration's entry is not in the log any more): `LeadershipLost` unless this node leads
/// in the joint entry's term, else its final configuration (`joint.finalized()`, never the
/// membership in force after the compacted prefix, which may fold a later change) once it is
/// applied. A node the change removed may never hear of the end: the next leader replicates
/// nothing to it.
pub(crate) struct CommitWaiter {
    pub(crate) reply: oneshot::Sender<Result<Membership, MembershipError>>,
    /// The term of the joint entry: the leadership that appended it, and so the final
    /// configuration after it.
    pub(crate) joint_term: Term,
    /// The joint membership appended at the caller's joint entry. Its leadership appends
    /// `joint.finalized()` as the first membership after it (no other change is accepted
    /// while the latest membership is joint): the caller's final configuration, known here
    /// when its entry is compacted away.
    pub(crate) joint: Membership,
    /// Holds one of the node's proposal slots while waiting (bounds the waiters).
    pub(crate) _permit: super::slots::SlotGuard,
}

impl Node {
    /// Leader: changes the membership by one step, applied to the membership in force, and
    /// returns the membership after it once the change is complete (committed and applied
    /// here). A change of the voters (`PromoteLearner`, `RemoveNode` of a voter) goes through a
    /// joint configuration, which the leader completes by itself: the call returns once the
    /// final configuration is committed and applied here.
    ///
    /// If this node stops leading after the joint configuration committed but before it knows
    /// the final one committed, the call fails with `Commit(LeadershipLost)` (outcome unknown),
    /// also when it wins leadership again at once: the next leader finishes the change, and a
    /// retry on it returns once it is complete.
    ///
    /// One change at a time: while another change is not complete (or a new leader has not
    /// committed an entry of its term yet) the call waits, checking every heartbeat interval,
    /// for at most `Config::election_timeout_max`, then fails with
    /// [`MembershipError::ChangeInProgress`]. Removing the leader itself works: it steps down
    /// (handing over) once the change is complete. New members must be reachable through this
    /// node's `Network` (which learns their [`NodeInfo`] from the membership).
    ///
    /// Called inside this node's own state machine, it fails at once with
    /// [`MembershipError::InsideStateMachine`] (it would wait for itself).
    pub async fn change_membership(
        &self,
        change: MembershipChange,
    ) -> Result<Membership, MembershipError> {
        self.drive_membership(Request::Change(change), None).await
    }

    /// Leader: changes the membership to `target` (voters, learners and their metadata: build it
    /// with [`Membership::new`] or [`Membership::target`]) in one call, through joint consensus.
    /// Target voters that are not members yet join as learners first; once each learner that
    /// becomes a voter has caught up (as for [`Node::add_voter`], retrying every heartbeat
    /// interval for at most `catch_up_timeout`, else [`MembershipError::CatchUpTimeout`]: they
    /// stay learners), the leader appends the joint configuration, in which elections and
    /// commitment need a majority of both the old and the new voters, and then the target.
    /// Returns the target once it is committed and applied here; returns at once if it is
    /// committed already.
    ///
    /// A change made by another caller meanwhile (between the learners joining and the joint
    /// configuration) is replaced by `target`. Waits for another change in progress as
    /// [`Node::change_membership`] does. A leader that is not a voter of `target` leads until
    /// the target is committed, then hands over.
    pub async fn set_membership(
        &self,
        target: Membership,
        catch_up_timeout: Duration,
    ) -> Result<Membership, MembershipError> {
        self.drive_membership(Request::Target(target), Some(catch_up_timeout)).await
    }

    /// Leader: adds `id` as a voter safely: as a learner with `info` first (skipped if it is a
    /// learner already), then promotes it once it has caught up with the log, retrying every
    /// heartbeat interval for at most `catch_up_timeout` ([`MembershipError::CatchUpTimeout`],
    /// or [`MembershipError::LearnerRefuses`] with the reason if it refused the leader's latest
    /// request, e.g. `WrongCluster`: it stays a learner). A learner that refuses the snapshot it needs for a reason that
    /// retrying does not fix (it runs without a snapshot store) ends the wait at once with
    /// [`MembershipError::SnapshotRefused`].
    pub async fn add_voter(
        &self,
        id: NodeId,
        info: NodeInfo,
        catch_up_timeout: Duration,
    ) -> Result<Membership, MembershipError> {
        if reentrancy::inside_state_machine(self.shared.token) {
            return Err(MembershipError::InsideStateMachine);
        }
        let is_learner = |node: &Node| node.membership().is_learner(id);
        if !is_learner(self) {
            match self.change_membership(MembershipChange::AddLearner(id, info)).await {
                Ok(_) => {}
                Err(MembershipError::Invalid(InvalidChange::AlreadyMember(_)))
                    if is_learner(self) => {}
                Err(error) => return Err(error),
            }
        }
        let promote = Request::Change(MembershipChange::PromoteLearner(id));
        self.drive_membership(promote, Some(catch_up_timeout)).await
    }

    /// Takes steps toward what `request` asks for until it is done. `ChangeInProgress` is
    /// retried every heartbeat interval for at most `change_wait` in a row; `LearnerBehind` for
    /// at most `catch_up` (without it, it is the caller's error).
    async fn drive_membership(
        &self,
        request: Request,
        catch_up: Option<Duration>,
    ) -> Result<Membership, MembershipError> {
        if reentrancy::inside_state_machine(self.shared.token) {
            return Err(MembershipError::InsideStateMachine);
        }
        let step = self.shared.heartbeat_interval;
        let rounds = |wait: Duration| (wait.as_millis() / step.as_millis().max(1)).max(1);
        let in_progress_rounds = rounds(self.shared.change_wait);
        let catch_up_rounds = catch_up.map(rounds);
        let (mut in_progress, mut behind) = (0, 0);
        loop {
            match self.membership_step(request.clone()).await {
                Ok(Step::Done(membership)) => return Ok(membership),
                Ok(Step::Appended { proposal, progress, membership }) => {
                    let (index, term) = (proposal.index, proposal.term);
                    proposal.response().await?;
                    match progress {
                        MembershipProgress::Joint(_) => {
                            return self.joint_complete(index, term, membership).await
                        }
                        MembershipProgress::LearnersAdded(_) => in_progress = 0,
                        MembershipProgress::Changed(_) | MembershipProgress::Done => {
                            return Ok(membership)
                        }
                    }
                }
                Err(MembershipError::ChangeInProgress) if in_progress < in_progress_rounds => {
                    in_progress += 1;
                    self.shared.runtime.sleep(step).await;
                }
                Err(MembershipError::LearnerBehind { learner, .. })
                    if catch_up_rounds.is_some() =>
                {
                    if let Some((id, reason)) = self.snapshot_refused(&request).await {
                        return Err(MembershipError::SnapshotRefused { id, reason });
                    }
                    if Some(behind) >= catch_up_rounds {
                        // Say why if the learner refuses every request (its envelope check:
                        // another cluster, another node at its address) rather than being slow.
                        return Err(match self.last_refusal(learner).await {
                            Some(refusal) => MembershipError::LearnerRefuses { learner, refusal },
                            None => MembershipError::CatchUpTimeout,
                        });
                    }
                    behind += 1;
                    self.shared.runtime.sleep(step).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Leader: a node that `request` makes a voter and that refuses the snapshot it needs for a
    /// reason retrying cannot fix, with that reason.
    async fn snapshot_refused(&self, request: &Request) -> Option<(NodeId, SnapshotFailure)> {
        let promoted = |id: NodeId| match request {
            Request::Change(change) => *change == MembershipChange::PromoteLearner(id),
            Request::Target(target) => target.is_voter(id),
        };
        let peers = self.replication().await.into_iter();
        peers.filter(|peer| !peer.voter && promoted(peer.id)).find_map(|peer| {
            match peer.snapshot_error {
                Some(SnapshotFailure::Unsupported) => Some((peer.id, SnapshotFailure::Unsupported)),
                _ => None,
            }
        })
    }

    /// Asks the leader for one step of `request`.
    async fn membership_step(&self, request: Request) -> Result<Step, MembershipError> {
        let permit = self.shared.proposal_slots.acquire().await;
        let answer = self.ask(|reply| Input::ChangeMembership { request, permit, reply }).await;
        answer.unwrap_or(Err(MembershipError::Shutdown))
    }

    /// Waits until the joint membership `joint` at `joint_index` (committed, of term
    /// `joint_term`) was replaced by the configuration it moves to, committed and applied here;
    /// returns that configuration. Fails with `LeadershipLost` if this node stopped leading in
    /// `joint_term` before it knows that configuration committed, even for a moment, and even
    /// before this call reached the main loop (the next leader finishes the change, or did: a
    /// final configuration another leadership appended fails it too).
    async fn joint_complete(
        &self,
        joint_index: LogIndex,
        joint_term: Term,
        joint: Membership,
    ) -> Result<Membership, MembershipError> {
        let permit = self.shared.proposal_slots.acquire().await;
        let answer = self
            .ask(|reply| Input::MembershipCommitted {
                after: joint_index,
                waiter: CommitWaiter { reply, joint_term, joint, _permit: permit },
            })
            .await;
        answer.unwrap_or(Err(MembershipError::Shutdown))
    }
}
