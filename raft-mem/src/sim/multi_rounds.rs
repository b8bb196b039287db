//! The fault rounds of a [`MultiSimulation`]: faults that hit whole nodes while every group's
//! clients run (busy rounds), alternating with idle rounds, in which some groups' clients stand
//! still long enough for those groups to go idle (and quiesce, with `Config::quiesce_idle`) and
//! the fault lands on the quiet groups, most often on the node of one's leader.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::time::Duration;

use raft_core::{GroupId, NodeId, Role, Status, Term};

use super::checker::Violation;
use super::multi::MultiSimulation;
use super::multi_quiet::{lost_leader_bound, QuietWatch};
use super::schedule::{random_link_faults, Dice};
use super::simulation::{mix, SimFailure};

/// How long every idle group, all of its nodes up and the network healthy, may take to
/// quiesce: a leader quiesces within a few heartbeat intervals of its last commit, after an
/// election that a restart may have made necessary, on disks that may stall for a second.
const IDLE_SETTLE: Duration = Duration::from_secs(5);

/// The fault of a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Every node crashes at once.
    PowerCut,
    /// The nodes hit crash.
    Crash,
    /// The nodes hit are cut off from the others.
    Partition,
    /// The nodes hit are paused (their tasks and timers stop, messages to them wait).
    Pause,
    /// The links of the nodes hit get random faults.
    Links,
}

impl MultiSimulation {
    /// Runs `rounds` rounds of faults drawn from the seed, then checks every group's client
    /// history ([`MultiSimulation::check_histories`]). Each round hits one minority of the
    /// nodes (a crash, a partition, a pause, or random link faults on its links), during which
    /// every group whose clients run must still progress (the others are a connected
    /// majority), then heals and restarts everyone and requires every group to progress again.
    /// One round in five instead crashes every node at once (a power cut) and restarts them.
    /// Every other round, starting with the first, is idle: the clients of some groups (or
    /// all) stand still until those groups quiesce (with `Config::quiesce_idle`: that every
    /// idle group does within a few seconds is checked), and the fault then lands on the quiet
    /// groups, two times in three on the node of one's leader; every quiesced group whose
    /// leader's node the fault crashes, cuts off or pauses must elect a new leader within the
    /// bound of ARCHITECTURE.md (checked, and counted in [`QuiescenceStats`](super::QuiescenceStats)).
    /// A run with quiescence on that saw no node quiesce fails: the check would be vacuous.
    /// After the last heal every group must answer reads on its leader and on a follower
    /// ([`MultiSimulation::require_reads`]: a history of writes only is always linearizable)
    /// and every node must hold every acknowledged write at its index
    /// ([`MultiSimulation::require_convergence`]), each within the liveness bound.
    pub fn run_faults(&mut self, rounds: u64) -> Result<(), SimFailure> {
        let mut dice = Dice(mix(self.seed(), 0xfa17));
        for round in 0..rounds {
            if round % 2 == 0 {
                self.idle_round(&mut dice)?;
            } else {
                self.busy_round(&mut dice)?;
            }
            self.heal()?;
            self.require_progress(&self.group_ids(), "after the cluster healed")?;
        }
        self.require_reads(&self.group_ids(), "after the last heal")?;
        self.require_convergence()?;
        if self.quiesce_check_interval().is_some() && self.quiet.stats.quiesce_events == 0 {
            return Err(self.fail(Violation {
                invariant: "the simulation exercises quiescence where it is on",
                detail: format!("no node quiesced in {rounds} rounds"),
            }));
        }
        self.check_histories()
    }

    /// A round while every group's clients run.
    fn busy_round(&mut self, dice: &mut Dice) -> Result<(), SimFailure> {
        let pause = Duration::from_millis(200 + dice.below(3_000));
        let fault = self.inject(dice, None).0;
        self.run_for(pause)?;
        if fault != Fault::PowerCut && self.minority() > 0 {
            self.require_progress(&self.group_ids(), "while a minority is down or cut off")?;
        }
        Ok(())
    }

    /// A round in which some groups go idle (and quiesce) before the fault lands.
    fn idle_round(&mut self, dice: &mut Dice) -> Result<(), SimFailure> {
        let groups = self.group_ids();
        let mut idle: BTreeSet<GroupId> = if dice.chance(25) {
            groups.iter().copied().collect()
        } else {
            groups.iter().copied().filter(|_| dice.chance(50)).collect()
        };
        if idle.is_empty() {
            idle.insert(groups[dice.below(groups.len() as u64) as usize]);
        }
        self.set_idle(idle.iter().copied());
        self.quiet.stats.idle_phases += 1;
        let interval = self.quiesce_check_interval();
        if let Some(interval) = interval {
            self.settle_idle(&idle)?;
            // The fault lands anywhere in the leaders' refresh cycle.
            self.run_for(Duration::from_millis(dice.below(2 * interval.as_millis() as u64)))?;
        } else {
            self.run_for(Duration::from_millis(1_000 + dice.below(1_000)))?;
        }
        let before = self.statuses();
        let quiet: Vec<GroupId> =
            idle.iter().copied().filter(|&g| QuietWatch::group_quiesced(&before, g)).collect();
        let prefer = if quiet.is_empty() || !dice.chance(67) {
            None
        } else {
            leader_of(&before, quiet[dice.below(quiet.len() as u64) as usize])
        };
        let (fault, hit) = self.inject(dice, prefer.map(|(id, _)| id));
        if matches!(fault, Fault::Crash | Fault::Partition | Fault::Pause) {
            self.orphan_groups(&before, &quiet, &hit);
        }
        self.run_for(Duration::from_millis(200 + dice.below(3_000)))?;
        self.await_orphans()?;
        let busy: Vec<GroupId> = groups.iter().copied().filter(|g| !idle.contains(g)).collect();
        if fault != Fault::PowerCut && self.minority() > 0 {
            self.require_progress(
                &busy,
                "while a minority is down or cut off (the idle groups quiet)",
            )?;
        }
        Ok(())
    }

    /// Runs until every idle group (all its nodes up) is quiesced, and fails if one is not
    /// within [`IDLE_SETTLE`].
    fn settle_idle(&mut self, idle: &BTreeSet<GroupId>) -> Result<(), SimFailure> {
        let quiet = Cell::new(false);
        let all_quiet = |statuses: &[(GroupId, Status)]| {
            idle.iter().all(|&g| QuietWatch::group_quiesced(statuses, g))
        };
        quiet.set(all_quiet(&self.statuses()));
        let runtime = self.runtime.clone();
        runtime.run_until(
            IDLE_SETTLE,
            || {
                self.check_step();
                quiet.set(all_quiet(&self.statuses()));
            },
            || quiet.get(),
        );
        self.outcome()?;
        if quiet.get() {
            return Ok(());
        }
        let awake: Vec<(GroupId, NodeId, Role)> = self
            .statuses()
            .into_iter()
            .filter(|(g, s)| idle.contains(g) && !s.quiesced)
            .map(|(g, s)| (g, s.id, s.role))
            .collect();
        Err(self.fail(Violation {
            invariant: "an idle group with every node up and a healthy network quiesces",
            detail: format!(
                "not quiesced after {IDLE_SETTLE:?} idle (group, node, role): {awake:?}"
            ),
        }))
    }

    /// The fault just `hit` nodes: each group of `quiet` (quiesced `before` it) whose leader's
    /// node was hit owes a new leader among the others within the bound.
    fn orphan_groups(
        &mut self,
        before: &[(GroupId, Status)],
        quiet: &[GroupId],
        hit: &BTreeSet<NodeId>,
    ) {
        let Some(config) = self.some_group_config() else { return };
        let bound = lost_leader_bound(&config, &self.disk_faults());
        for &group in quiet {
            let Some((leader, term)) = leader_of(before, group) else { continue };
            if !hit.contains(&leader) {
                continue;
            }
            let survivors = self.node_ids().into_iter().filter(|id| !hit.contains(id));
            // A quiesced group's survivors acknowledged a mark (they quiesced on one); should
            // the answer still be on its way, the mark is younger than now: the duty counts
            // from now rather than going unchecked (review L4 of oracles).
            let since = survivors.filter_map(|id| self.oracle().last_mark(group, id)).max();
            let since = since.unwrap_or_else(|| self.runtime.now());
            self.quiet.orphaned(group, hit.clone(), term, since, bound);
        }
    }

    /// Runs until every orphaned group elected a new leader, or fails at the first deadline
    /// missed.
    fn await_orphans(&mut self) -> Result<(), SimFailure> {
        let Some(deadline) = self.quiet.orphans_deadline() else { return Ok(()) };
        let left = deadline.saturating_sub(self.runtime.now()) + Duration::from_millis(1);
        let settled = Cell::new(false);
        let runtime = self.runtime.clone();
        runtime.run_until(
            left,
            || {
                self.check_step();
                settled.set(self.quiet.orphans_deadline().is_none());
            },
            || settled.get(),
        );
        self.outcome()?;
        let now = self.runtime.now();
        let statuses = self.statuses();
        self.quiet.check_orphans(now, &statuses).map_err(|v| self.fail(v))
    }

    /// Injects the fault of a round (hitting `prefer`, if given, among others) and returns it
    /// with the nodes it hit.
    fn inject(&mut self, dice: &mut Dice, prefer: Option<NodeId>) -> (Fault, BTreeSet<NodeId>) {
        self.fault_begins();
        let nodes = self.node_ids();
        if dice.chance(20) {
            for &id in &nodes {
                self.crash(id);
            }
            return (Fault::PowerCut, nodes.into_iter().collect());
        }
        let minority = self.minority();
        let mut hit = BTreeSet::new();
        if let (Some(id), true) = (prefer, minority > 0) {
            hit.insert(id);
        }
        let count = 1 + dice.below(minority.max(1));
        while (hit.len() as u64) < count.min(minority) {
            hit.insert(dice.pick(&nodes));
        }
        let fault =
            [Fault::Crash, Fault::Partition, Fault::Links, Fault::Pause][dice.below(4) as usize];
        self.impair(hit.iter().copied());
        match fault {
            Fault::Crash => hit.iter().for_each(|&id| self.crash(id)),
            Fault::Partition => {
                let rest: Vec<NodeId> =
                    nodes.iter().copied().filter(|id| !hit.contains(id)).collect();
                self.network.partition(&[rest, hit.iter().copied().collect()]);
                self.count_partition();
            }
            Fault::Links => {
                for &id in &hit {
                    self.network.set_node_faults(id, random_link_faults(dice));
                }
            }
            Fault::Pause => hit.iter().for_each(|&id| self.pause(id)),
            Fault::PowerCut => {}
        }
        (fault, hit)
    }

    /// The size of the largest minority of the nodes.
    fn minority(&self) -> u64 {
        (self.node_ids().len() as u64).saturating_sub(1) / 2
    }
}

/// The leader of `group` of the highest term among `statuses`, and its term.
fn leader_of(statuses: &[(GroupId, Status)], group: GroupId) -> Option<(NodeId, Term)> {
    statuses
        .iter()
        .filter(|(g, s)| *g == group && s.role == Role::Leader)
        .map(|(_, s)| (s.id, s.current_term))
        .max_by_key(|&(_, term)| term)
}
