//! What the simulation does after every executor step: feed the checker everything observable,
//! surface the oracles' findings, handle nodes that stopped on an injected fault, and carry out
//! planned crashes.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use raft_core::{HardState, LogIndex, Membership, NodeId, Role, Status};

use super::checker::{InvariantChecker, Violation};
use super::disk::SimDisk;
use super::recorder::{lock, Event};
use super::simulation::{stuck, Planned, Simulation};

/// More executor steps than this at one virtual instant, without progress, is reported as a
/// livelock.
const MAX_STEPS_PER_INSTANT: u64 = 200_000;

impl<S: raft_core::StateMachine> Simulation<S> {
    /// Feeds everything observable since the last step to the checkers.
    pub(super) fn check_step(&mut self) {
        if self.failure.is_some() {
            return;
        }
        let checked = self
            .observe()
            .and_then(|()| self.livelock())
            .and_then(|()| self.stopped_nodes())
            .and_then(|()| self.findings())
            .and_then(|()| self.check_liveness());
        if let Err(violation) = checked {
            self.failure = Some(self.fail(violation));
            return;
        }
        self.planned_crashes();
    }

    /// Too many steps at one virtual instant without any node's log, commit or applied index
    /// moving, nor any follower's match index or snapshot transfer, is a livelock (a catch-up with zero-latency disks
    /// and links may legitimately take many steps at one instant, but it makes progress).
    fn livelock(&mut self) -> Result<(), Violation> {
        let now = self.runtime.now();
        let (at, progress, steps) = self.livelock;
        if now == at && self.progress == progress {
            self.livelock.2 = steps + 1;
            if steps + 1 > MAX_STEPS_PER_INSTANT {
                let mut spinning: Vec<(u64, u64)> = self
                    .runtime
                    .polls_by_tag()
                    .into_iter()
                    .map(|(tag, polls)| {
                        (polls - self.livelock_polls.get(&tag).copied().unwrap_or(0), tag)
                    })
                    .filter(|&(polls, _)| polls > 0)
                    .collect();
                spinning.sort_unstable_by(|a, b| b.cmp(a));
                return Err(stuck(format!(
                    "livelock: {MAX_STEPS_PER_INSTANT} steps without virtual time or any index advancing; polls by tag (0: clients and the network): {spinning:?}"
                )));
            }
        } else {
            self.livelock = (now, self.progress, 0);
            self.livelock_polls = self.runtime.polls_by_tag();
        }
        Ok(())
    }

    fn observe(&mut self) -> Result<(), Violation> {
        let mut max_commit = 0;
        let mut progress = 0u64;
        let ids: Vec<NodeId> = self.running.keys().copied().collect();
        for id in ids {
            let Some(running) = self.running.get(&id) else { continue };
            let (node, incarnation) = (running.node.clone(), running.incarnation);
            let fresh = running.record.fresh.clone();
            let status = node.status();
            max_commit = max_commit.max(status.commit_index);
            progress = progress
                .wrapping_add(status.commit_index)
                .wrapping_add(status.applied_index)
                .wrapping_add(status.last_log_index);
            self.checker.observe_status((id, incarnation), &status)?;
            if status.role == Role::Leader {
                self.observe_leader(id, incarnation, &status)?;
            }
            self.trace_status(&status);
            let events = std::mem::take(&mut *lock(&fresh));
            let disk = self.disks.get(&id).cloned();
            let checker = &mut self.checker;
            let digests = &mut self.digests;
            let at = (id, incarnation);
            feed_events(checker, at, events, disk.as_ref(), |index, digest| {
                check_digest(digests, id, index, digest)
            })?;
        }
        self.shared.max_committed.fetch_max(max_commit, Ordering::SeqCst);
        self.progress = progress.wrapping_add(self.oracle.match_progress());
        for (&id, disk) in &self.disks {
            feed_disk(&mut self.checker, id, disk, &mut self.hard_states)?;
        }
        Ok(())
    }

    /// A leader's status: whether it made its term durable (it then acted as leader), whether
    /// it just won an election (planned crashes), and, when its commit index moved, that the
    /// entry it committed is durable on a majority of its voters.
    fn observe_leader(
        &mut self,
        id: NodeId,
        incarnation: u64,
        status: &Status,
    ) -> Result<(), Violation> {
        let term = status.current_term;
        let durable_term = self.disks.get(&id).map_or(0, |d| d.hard_state().current_term);
        if durable_term >= term {
            self.checker.observe_leader_acted((id, incarnation), term)?;
        }
        let before = self.leading.insert((id, incarnation), (term, status.commit_index));
        match before {
            // A commit made by this leader's own count in this term.
            Some((was_term, was_commit)) if was_term == term => {
                if status.commit_index > was_commit {
                    self.check_commit_durable(id, status)?;
                }
            }
            // It just won: its commit index so far was learned from an earlier leader.
            _ => self.leadership_won(id),
        }
        Ok(())
    }

    /// The entry at a leader's new commit index (one of its own term: it counts replicas only
    /// for those) must be durable on a majority of every voter set of its membership (both
    /// during a joint change): it may count its own copy only once durable, a follower's only
    /// once acknowledged, which the follower does only when durable.
    fn check_commit_durable(&self, id: NodeId, status: &Status) -> Result<(), Violation> {
        let Some(node) = self.node(id) else { return Ok(()) };
        commit_durable(id, status, &node.membership(), |voter| self.disks.get(&voter))
    }

    /// Arms the planned crashes waiting for `id` (or anyone) to win an election, and runs the
    /// election hook.
    fn leadership_won(&mut self, id: NodeId) {
        if let Some(mut hook) = self.election_hook.take() {
            hook(self, id);
            if self.election_hook.is_none() {
                self.election_hook = Some(hook);
            }
        }
        let now = self.now();
        let mut armed = Vec::new();
        self.planned.retain(|planned| match *planned {
            Planned::OnLeadership { node, delay, policy } if node.is_none_or(|n| n == id) => {
                armed.push(Planned::At { at: now + delay, node: id, policy });
                false
            }
            _ => true,
        });
        for planned in armed {
            if let Planned::At { at, .. } = planned {
                self.plant_wakeup(at);
            }
            self.planned.push(planned);
        }
    }

    fn trace_status(&mut self, status: &Status) {
        let changed = self.traced.get(&status.id) != Some(status);
        if changed {
            self.traced.insert(status.id, status.clone());
            self.oracle.trace(|| {
                format!(
                    "status {} {:?} t{} leader {:?} commit {} applied {} last {}",
                    status.id,
                    status.role,
                    status.current_term,
                    status.leader_id,
                    status.commit_index,
                    status.applied_index,
                    status.last_log_index
                )
            });
        }
    }

    /// Nodes that stopped on a fatal error: expected after an injected disk or state machine
    /// failure (the node is then treated as crashed), a violation otherwise.
    fn stopped_nodes(&mut self) -> Result<(), Violation> {
        let stopped: Vec<(NodeId, bool, String)> = self
            .running
            .iter()
            .filter_map(|(&id, running)| {
                let error = running.node.fatal_error()?;
                let disk_errors = self.disks.get(&id).map_or(0, |d| d.stats().errors);
                let injected = disk_errors > running.disk_errors_at_start
                    || running.record.failed.load(Ordering::SeqCst);
                Some((id, injected, error.to_string()))
            })
            .collect();
        for (id, injected, error) in stopped {
            if !injected {
                return Err(Violation {
                    invariant: "no fatal error without an injected fault",
                    detail: format!("node {id} stopped: {error}"),
                });
            }
            self.stats.fault_stops += 1;
            self.crash(id);
        }
        Ok(())
    }

    /// What the message-boundary oracle, the network, the clients and the readers found.
    fn findings(&mut self) -> Result<(), Violation> {
        // One group: every finding is the default group's (no disk of another group is known
        // to the oracle).
        for findings in self.oracle.take_findings().into_values() {
            findings.feed(&mut self.checker)?;
        }
        if let Some(error) = self.network.take_wire_errors().into_iter().next() {
            return Err(Violation {
                invariant: "messages survive their wire encoding",
                detail: error,
            });
        }
        if let Some(violation) = lock(&self.shared.violations).first() {
            return Err(violation.clone());
        }
        Ok(())
    }

    /// Carries out planned crashes that are due, and crashes triggered by disk events.
    fn planned_crashes(&mut self) {
        let (now, step) = (self.now(), self.runtime.polls());
        let mut due = Vec::new();
        self.planned.retain(|planned| match *planned {
            Planned::At { at, node, policy } if at <= now => {
                due.push((node, policy));
                false
            }
            Planned::AtStep { step: at, node, policy } if at <= step => {
                due.push((node, policy));
                false
            }
            _ => true,
        });
        let mut wake = Vec::new();
        for (&id, disk) in &self.disks {
            if !self.running.contains_key(&id) {
                continue;
            }
            if let Some(policy) = disk.take_crash_request() {
                due.push((id, policy));
            } else if let Some(at) = disk.crash_request() {
                wake.push(at);
            }
        }
        for at in wake {
            self.plant_wakeup(at);
        }
        for (id, policy) in due {
            self.crash_with(id, policy);
        }
    }
}

/// Divergence detection: every state machine that applied up to `index` must report the same
/// digest there (`digests`: the first digest reported at each index, and by whom).
pub(super) fn check_digest(
    digests: &mut BTreeMap<LogIndex, (u64, NodeId)>,
    id: NodeId,
    index: LogIndex,
    digest: u64,
) -> Result<(), Violation> {
    let (first, by) = *digests.entry(index).or_insert((digest, id));
    if first != digest {
        return Err(Violation {
            invariant: "state machines agree at every applied index (deterministic apply)",
            detail: format!(
                "at applied index {index} node {id}'s state machine reports digest {digest:#018x}, node {by}'s reported {first:#018x}"
            ),
        });
    }
    Ok(())
}

/// Feeds what node incarnation `at`'s state machine did (`events`) to its group's checker: each
/// apply and restore must be of entries its own `disk` holds; `digest` checks the state's
/// digest at an index.
pub(super) fn feed_events(
    checker: &mut InvariantChecker,
    at: (NodeId, u64),
    events: Vec<Event>,
    disk: Option<&SimDisk>,
    mut digest: impl FnMut(LogIndex, u64) -> Result<(), Violation>,
) -> Result<(), Violation> {
    let id = at.0;
    for event in events {
        match event {
            Event::Applied(entries, state_digest) => {
                let local = disk.is_none_or(|d| entries.iter().all(|e| d.holds(e.log_id())));
                if !local {
                    return Err(Violation {
                        invariant: "apply only what is locally durable",
                        detail: format!(
                            "node {id} applied entries {:?}..={:?} that its disk does not hold",
                            entries.first().map(|e| e.log_id()),
                            entries.last().map(|e| e.log_id())
                        ),
                    });
                }
                checker.observe_applied(at, &entries)?;
                if let (Some(state_digest), Some(last)) = (state_digest, entries.last()) {
                    digest(last.index, state_digest)?;
                }
            }
            Event::Restored(last, verified, state_digest) => {
                if let Err(detail) = verified {
                    return Err(Violation {
                        invariant: "restores install a snapshot captured at its entry",
                        detail: format!("node {id}: {detail}"),
                    });
                }
                if disk.is_some_and(|d| !d.holds(last)) {
                    return Err(Violation {
                        invariant: "apply only what is locally durable",
                        detail: format!(
                            "node {id} restored snapshot {last:?} that its disk does not hold"
                        ),
                    });
                }
                checker.observe_snapshot(at, last, &[])?;
                if let Some(state_digest) = state_digest {
                    digest(last.index, state_digest)?;
                }
            }
        }
    }
    Ok(())
}

/// Feeds what node `id`'s `disk` holds durably to its group's checker (`hard_states`: the hard
/// state last fed, per node).
pub(super) fn feed_disk(
    checker: &mut InvariantChecker,
    id: NodeId,
    disk: &SimDisk,
    hard_states: &mut BTreeMap<NodeId, HardState>,
) -> Result<(), Violation> {
    // The hard state first: a disk that went back shows there most precisely.
    let hard_state = disk.hard_state();
    if hard_states.insert(id, hard_state) != Some(hard_state) {
        checker.observe_durable_hard_state(id, hard_state)?;
    }
    if let Some(meta) = disk.snapshots().latest_meta() {
        checker.observe_durable_snapshot(id, meta.last_included)?;
    }
    let store = disk.log();
    checker.observe_purged(id, store.purged())?;
    if let Some(change) = store.take_change() {
        checker.observe_log(id, &change, || store.entries())?;
    }
    Ok(())
}

/// The entry at leader `id`'s new commit index (one of its own term: it counts replicas only
/// for those) must be durable on a majority of every voter set of its `membership` (both during
/// a joint change): it may count its own copy only once durable, a follower's only once
/// acknowledged, which the follower does only when durable. `disk_of` gives each voter's disk.
pub(super) fn commit_durable<'a>(
    id: NodeId,
    status: &Status,
    membership: &Membership,
    disk_of: impl Fn(NodeId) -> Option<&'a SimDisk>,
) -> Result<(), Violation> {
    let index = status.commit_index;
    // Whether `voter`'s disk holds the entry (in its log, or under its snapshot or purge
    // point), and the terms found there otherwise, for the report.
    let mut by_term = BTreeMap::<u64, Vec<NodeId>>::new();
    let holds = |voter: NodeId| {
        let disk = disk_of(voter)?;
        let snapshot = disk.snapshots().latest_meta().map_or(0, |m| m.last_included.index);
        if index <= disk.log().purged().index.max(snapshot) {
            return Some(status.current_term);
        }
        disk.log().term_at(index)
    };
    for voter in membership.all_voters() {
        by_term.entry(holds(voter).unwrap_or(0)).or_default().push(voter);
    }
    if !super::checker::is_quorum(membership, |voter| holds(voter) == Some(status.current_term)) {
        return Err(Violation {
            invariant: "committed entries are durable on a majority",
            detail: format!(
                "leader {id} of term {} committed index {index}, not durable on a majority of each voter set of {:?} / {:?} (voters by the term they hold there, 0 for none: {by_term:?})",
                status.current_term,
                membership.voters(),
                membership.outgoing_voters()
            ),
        });
    }
    Ok(())
}
