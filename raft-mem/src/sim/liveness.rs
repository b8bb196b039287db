//! Bounded liveness: while a majority of voters is up and connected by healthy links, a leader
//! commits an entry of its term within a few election timeouts, entries it holds keep
//! committing, and leaders do not keep changing.
//!
//! The oracle watches the cluster's health: the nodes that run (not paused, disk neither full
//! nor stalled: a follower answers nothing while an earlier write of it is in flight)
//! and whose links to each other pass both ways without loss or long delays form the healthy
//! set (the largest found by dropping the worst-connected node until every link is good). The
//! cluster is healthy when that set holds a majority of every voter set a running node uses,
//! and, when some node runs without PreVote or CheckQuorum (which let a cut-off or removed node
//! disrupt a leader, as Raft allows), no other running node can reach it and each of its nodes
//! is a member of every membership in use. The set is computed again whenever a fault, a node's
//! state or the membership a running node uses changes. While the healthy set stays the
//! same, within the bound (`election_timeouts` of the slowest node's longest election timeout,
//! plus the snapshot transfer timeout and the RPC timeout configured):
//!
//! * the leader of the highest term has committed an entry of its term;
//! * after that, its commit index advances whenever it holds uncommitted entries, or a follower
//!   of the healthy set that holds less than the committed log catches up: its durable log
//!   grows, in agreement with the leader's, while it ends below the leader's commit index (a
//!   leader whose flow control allows one entry per round trip brings a follower thousands of
//!   entries behind back in more than the bound, and its commit index cannot move before that
//!   follower passes it when the third node is down: swarm seed 20985615). Once the follower
//!   reaches the commit index, only the commit index counts again, so a leader that replicates
//!   but never commits still fails the check;
//! * at most `max_leader_changes` other leaders follow the first one.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use raft_core::{LogIndex, Membership, NodeId, Role, Status, Term};

use super::checker::Violation;
use super::simulation::Simulation;

/// Bounds of the liveness oracle ([`Simulation::enable_liveness`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessBounds {
    /// Progress is due within this many election timeouts (plus the stall allowances).
    pub election_timeouts: u32,
    /// At most this many leader changes while one healthy set lasts.
    pub max_leader_changes: u32,
    /// Links whose delays exceed this many milliseconds (or that lose messages) are unhealthy.
    pub max_link_delay_ms: u64,
}

impl Default for LivenessBounds {
    fn default() -> Self {
        Self { election_timeouts: 10, max_leader_changes: 3, max_link_delay_ms: 50 }
    }
}

/// How often (virtual time) the oracle looks.
const PERIOD: Duration = Duration::from_millis(10);

/// A period during which the same healthy set held.
#[derive(Debug)]
struct Window {
    members: BTreeSet<NodeId>,
    since: Duration,
    bound: Duration,
    /// The terms of the leaders seen committing entries of their term.
    terms: BTreeSet<Term>,
    /// The highest commit index seen and when it last advanced (or had nothing to do).
    commit: LogIndex,
    progress_at: Duration,
    /// For each follower of the healthy set, the highest index up to which its durable log was
    /// seen to agree with the leader's.
    caught_up: BTreeMap<NodeId, LogIndex>,
}

/// What the healthy set was computed from: when any of it changes, it is computed again.
#[derive(Debug, PartialEq)]
struct Seen {
    /// The network's fault epoch.
    faults: u64,
    /// The simulation's epoch plus every disk's stall epoch.
    epoch: u64,
    /// The membership each running node uses: whether a node is a member of every membership
    /// in use (and which voter sets need a majority) changes as changes commit, without any
    /// fault (seed 11001094: a removed node kept campaigning, its removal came after the set
    /// was computed, and its disruption was taken for a liveness failure).
    memberships: BTreeMap<NodeId, Membership>,
}

#[derive(Debug)]
pub(super) struct LivenessState {
    bounds: LivenessBounds,
    last_look: Duration,
    /// What the healthy set was last computed from (`None` before the first look).
    seen: Option<Seen>,
    window: Option<Window>,
}

impl LivenessState {
    pub(super) fn new(bounds: LivenessBounds) -> Self {
        Self { bounds, last_look: Duration::ZERO, seen: None, window: None }
    }
}

fn liveness(detail: String) -> Violation {
    Violation { invariant: "bounded liveness", detail }
}

impl<S: raft_core::StateMachine> Simulation<S> {
    pub(super) fn check_liveness(&mut self) -> Result<(), Violation> {
        let now = self.now();
        let Some(state) = &self.liveness else { return Ok(()) };
        if now < state.last_look + PERIOD {
            return Ok(());
        }
        let stalls: u64 = self.disks.values().map(|d| d.stall_epoch()).sum();
        let memberships = self.running.iter().map(|(&id, r)| (id, r.node.membership())).collect();
        let seen = Seen {
            faults: self.network.fault_epoch(),
            epoch: self.epoch.wrapping_add(stalls),
            memberships,
        };
        let recompute = state.seen.as_ref() != Some(&seen);
        let healthy = recompute.then(|| self.healthy_set(&seen.memberships));
        let bound = if recompute { self.liveness_bound() } else { Duration::ZERO };
        let leader = self.highest_leader();
        let own_term_commit = leader.as_ref().is_some_and(|s| {
            self.disks.get(&s.id).and_then(|d| d.log().term_at(s.commit_index))
                == Some(s.current_term)
        });
        let agreeing = leader.as_ref().map_or_else(Vec::new, |s| self.agreeing_logs(s.id));
        let Some(state) = &mut self.liveness else { return Ok(()) };
        state.last_look = now;
        if let Some(healthy) = healthy {
            state.seen = Some(seen);
            let same = state.window.as_ref().map(|w| &w.members) == healthy.as_ref();
            if !same {
                self.stats.healthy_periods += u64::from(healthy.is_some());
                state.window = healthy.map(|members| Window {
                    members,
                    since: now,
                    bound,
                    terms: BTreeSet::new(),
                    commit: 0,
                    progress_at: now,
                    caught_up: BTreeMap::new(),
                });
            }
        }
        let bounds = state.bounds;
        let Some(window) = &mut state.window else { return Ok(()) };
        let members = &window.members;
        if let (Some(leader), true) = (&leader, own_term_commit) {
            if window.terms.is_empty() {
                self.stats.live_periods += 1;
            }
            window.terms.insert(leader.current_term);
            let pending = leader.last_log_index > leader.commit_index;
            if leader.commit_index > window.commit || !pending {
                window.commit = window.commit.max(leader.commit_index);
                window.progress_at = now;
            }
            for &(id, index) in agreeing.iter().filter(|(id, _)| members.contains(id)) {
                // The highest agreement seen only grows, so a follower's catch-up counts for at
                // most the committed entries it lacked when the healthy set formed.
                let seen = window.caught_up.entry(id).or_insert(index);
                if index > *seen {
                    if *seen < leader.commit_index {
                        window.progress_at = now;
                    }
                    *seen = index;
                }
            }
        }
        if window.terms.is_empty() && now > window.since + window.bound {
            return Err(liveness(format!(
                "no leader committed an entry of its term within {:?} of nodes {members:?} being up and connected (leader now: {:?})",
                window.bound,
                leader.map(|s| (s.id, s.current_term, s.commit_index))
            )));
        }
        if !window.terms.is_empty() && now > window.progress_at + window.bound {
            return Err(liveness(format!(
                "the commit index stayed at {} for {:?} with nodes {members:?} up and connected while the leader held uncommitted entries (leader now: {:?})",
                window.commit,
                window.bound,
                leader.map(|s| (s.id, s.current_term, s.commit_index, s.last_log_index))
            )));
        }
        if window.terms.len() > bounds.max_leader_changes as usize + 1 {
            return Err(liveness(format!(
                "leaders of terms {:?} followed each other within {:?} with nodes {members:?} up and connected",
                window.terms,
                now - window.since
            )));
        }
        Ok(())
    }

    /// The running, unpaused leader of the highest term.
    fn highest_leader(&self) -> Option<Status> {
        self.running
            .iter()
            .filter(|(id, _)| !self.paused.contains(id))
            .map(|(_, r)| r.node.status())
            .filter(|s| s.role == Role::Leader)
            .max_by_key(|s| s.current_term)
    }

    /// The running nodes other than `leader` whose durable log ends with an entry the leader's
    /// log holds too (same index and term, so the logs agree up to there), with that index.
    fn agreeing_logs(&self, leader: NodeId) -> Vec<(NodeId, LogIndex)> {
        let Some(leader_log) = self.disks.get(&leader).map(|d| d.log()) else { return Vec::new() };
        self.running
            .keys()
            .filter(|&&id| id != leader)
            .filter_map(|id| {
                let last = self.disks.get(id)?.log().last_id();
                (last.index > 0 && leader_log.term_at(last.index) == Some(last.term))
                    .then_some((*id, last.index))
            })
            .collect()
    }

    /// How long progress may take while the cluster is healthy.
    fn liveness_bound(&self) -> Duration {
        let Some(state) = &self.liveness else { return Duration::ZERO };
        let mut election = Duration::ZERO;
        let mut snapshot = Duration::ZERO;
        for (&id, config) in &self.configs {
            let rate = self.runtime.clock(id).rate.clamp(0.01, 100.0);
            let timeout = config.election_timeout_max.div_f64(rate);
            election = election.max(timeout);
            snapshot = snapshot.max(config.snapshot_transfer_timeout);
        }
        let rpc = Duration::from_secs(2);
        election * state.bounds.election_timeouts + snapshot + rpc
    }

    /// The healthy set if the cluster is healthy (see the module docs), given the membership
    /// each running node uses.
    fn healthy_set(&self, memberships: &BTreeMap<NodeId, Membership>) -> Option<BTreeSet<NodeId>> {
        let max_delay = self.liveness.as_ref()?.bounds.max_link_delay_ms;
        let mut set: BTreeSet<NodeId> = self
            .running
            .keys()
            .copied()
            .filter(|id| !self.paused.contains(id))
            .filter(|id| !self.disks.get(id).is_some_and(|d| d.is_full() || d.stalled()))
            .collect();
        let good = |a: NodeId, b: NodeId| {
            self.network.passes(a, b)
                && self.network.passes(b, a)
                && self.network.faults(a, b).is_benign(max_delay)
                && self.network.faults(b, a).is_benign(max_delay)
        };
        loop {
            let worst = set
                .iter()
                .map(|&a| (set.iter().filter(|&&b| b != a && !good(a, b)).count(), a))
                .max();
            match worst {
                Some((bad, id)) if bad > 0 => set.remove(&id),
                _ => break,
            };
        }
        let mut voter_sets: Vec<BTreeSet<NodeId>> = Vec::new();
        for membership in memberships.values() {
            voter_sets.extend(super::checker::voter_sets(membership));
        }
        voter_sets.retain(|v| !v.is_empty());
        voter_sets.sort();
        voter_sets.dedup();
        if voter_sets.is_empty() {
            return None;
        }
        let majorities =
            voter_sets.iter().all(|voters| voters.intersection(&set).count() * 2 > voters.len());
        let disruptable = self
            .configs
            .iter()
            .any(|(id, c)| self.running.contains_key(id) && !(c.pre_vote && c.check_quorum));
        let isolated =
            self.running.keys().filter(|id| !set.contains(id) && !self.paused.contains(id)).all(
                |&out| {
                    set.iter().all(|&inside| {
                        !self.network.passes(out, inside) && !self.network.passes(inside, out)
                    })
                },
            );
        // A removed node that has not learnt it may campaign (thesis 4.2.3).
        let members_only = set.iter().all(|&id| memberships.values().all(|m| m.contains(id)));
        (majorities && (!disruptable || (isolated && members_only))).then_some(set)
    }
}
