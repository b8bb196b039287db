//! The seeded fault schedule: rounds of random faults drawn from one seed, the same nemesis
//! the swarm runs, for any state machine ([`Simulation::run_fault_schedule`]).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use raft_core::{EntryPayload, Membership, MembershipChange, Node, NodeId, NodeInfo, StateMachine};

use super::disk::{CrashTrigger, InFlight};
use super::executor::NodeClock;
use super::simulation::{SimFailure, Simulation};
use crate::LinkFaults;

/// How long scenario helpers of the schedule wait at most (a membership change, a query).
const LONG: Duration = Duration::from_secs(30);

/// What [`Simulation::run_fault_schedule`] does: rounds of faults, each followed by a random
/// stretch of virtual time. Every choice is drawn from [`FaultSchedule::seed`], so a run
/// replays exactly from the simulation's seed.
///
/// Each round draws one action: crash a node (now, after a random delay, after a random number
/// of executor steps, right after a write is issued or a snapshot committed, or the next leader
/// right after its election), start or restart one, crash every node at once, pause or resume
/// one, fill or free its disk, disconnect or reconnect it, cut a link one way, make a link flap
/// or lose bursts of messages, set random faults (loss, duplication, delays) on a link,
/// partition the cluster in two (any split, majority or minority, with a bridge node that sees
/// both sides three times in ten), heal, shut a node down gracefully, isolate the leader (by a
/// partition or a disconnection) while a reader keeps asking it, pause the leader for longer
/// than an election timeout while a reader keeps asking it, and (with
/// [`FaultSchedule::membership_changes`]) change the membership: add a learner (a removed
/// learner's id again, on an empty disk, four times in five), promote one, remove a node,
/// change several voters at once through joint consensus, or transfer the leadership.
///
/// The schedule leaves faults in place when it ends: [`Simulation::calm`] (or
/// [`Simulation::converge`]) heals the cluster afterwards.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultSchedule {
    /// The seed of the schedule's draws (`None`: derived from the simulation's seed).
    pub seed: Option<u64>,
    /// How many rounds (`None`: 5 to 24, drawn).
    pub rounds: Option<u64>,
    /// Each round is followed by up to this much virtual time (uniform).
    pub max_round: Duration,
    /// Confine every fault to these nodes (crashes, pauses, full disks, cut links): the others
    /// stay a healthy majority, so liveness can be checked throughout. `None`: faults hit
    /// anyone, and majority partitions, isolated leaders and crashes of every node are drawn too.
    pub minority: Option<Vec<NodeId>>,
    /// Draw membership changes and leadership transfers.
    pub membership_changes: bool,
    /// Membership storms: every new leader proposes a membership change at once (it removes a
    /// voter while the cluster has as many voters as it began with, else it adds a learner)
    /// and is cut off (alone or with one voter in turn) or crashes right after; the cluster
    /// regrows between rounds (promoting in-sync learners, adding nodes).
    pub membership_storm: bool,
    /// When the leader is isolated, slow its clock and speed up the others' as far as a lease's
    /// drift margin allows (for clusters with lease reads).
    pub skew_clocks_of_isolated_leader: bool,
}

impl Default for FaultSchedule {
    /// Every fault on every node, membership changes on, no storm.
    fn default() -> Self {
        Self {
            seed: None,
            rounds: None,
            max_round: Duration::from_secs(2),
            minority: None,
            membership_changes: true,
            membership_storm: false,
            skew_clocks_of_isolated_leader: false,
        }
    }
}

/// What a fault schedule did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScheduleStats {
    /// Rounds run.
    pub rounds: u64,
    /// Removed ids added again (on an empty disk).
    pub readded: u64,
    /// Changes of several voters at once (joint consensus) started.
    pub joint_changes_started: u64,
}

/// A small deterministic random stream for scenario choices (SplitMix64): the state is the
/// field, so a scenario can hand its stream on (to [`FaultSchedule::seed`]) and the draws
/// continue exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dice(pub u64);

impl Dice {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A number below `n` (0 if `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    /// One of `from` (which must not be empty).
    pub fn pick(&mut self, from: &[NodeId]) -> NodeId {
        from[self.below(from.len() as u64) as usize]
    }
}

/// Random faults for a link: none, the reliable or unreliable presets, or a random mix of
/// loss, duplication and delays (up to 3 s).
pub fn random_link_faults(dice: &mut Dice) -> LinkFaults {
    match dice.below(4) {
        0 => LinkFaults::NONE,
        1 => LinkFaults::RELIABLE,
        2 => LinkFaults::UNRELIABLE,
        _ => LinkFaults {
            drop_request: dice.below(30) as f64 / 100.0,
            drop_response: dice.below(30) as f64 / 100.0,
            duplicate: dice.below(10) as f64 / 100.0,
            delay_ms: (0, dice.below(50)),
            long_delay: dice.below(20) as f64 / 100.0,
            long_delay_ms_max: dice.below(3000),
        },
    }
}

/// The state of one run of a schedule.
struct Run<'a> {
    schedule: &'a FaultSchedule,
    dice: Dice,
    next_id: NodeId,
    removed: Vec<NodeId>,
    /// Stops the changing faults when the schedule ends.
    stop: Arc<AtomicBool>,
    storm_partitions: Arc<AtomicU64>,
    stats: ScheduleStats,
}

impl<S: StateMachine> Simulation<S> {
    /// Runs `schedule`: rounds of random faults drawn from its seed (see [`FaultSchedule`]),
    /// each followed by a random stretch of virtual time, checking every invariant after every
    /// step as always. Clients a test started keep running meanwhile. The faults stay in place
    /// afterwards: [`Simulation::converge`] heals the cluster and waits for it to agree.
    pub fn run_fault_schedule(
        &mut self,
        schedule: &FaultSchedule,
    ) -> Result<ScheduleStats, SimFailure> {
        let seed = schedule.seed.unwrap_or_else(|| super::simulation::mix(self.seed(), 0x5EED));
        let next_id = self.ids().iter().max().copied().unwrap_or(0) + 1;
        let mut run = Run {
            schedule,
            dice: Dice(seed),
            next_id,
            removed: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            storm_partitions: Arc::new(AtomicU64::new(0)),
            stats: ScheduleStats::default(),
        };
        let outcome = self.schedule_rounds(&mut run);
        run.stop.store(true, Ordering::SeqCst);
        outcome.map(|()| run.stats)
    }

    fn schedule_rounds(&mut self, run: &mut Run<'_>) -> Result<(), SimFailure> {
        if run.schedule.membership_storm {
            // Spare nodes, idle until a leader adds them.
            for _ in 0..2 {
                let id = run.next_id;
                run.next_id += 1;
                self.add_node(id)?;
            }
            let voters = self.founders().len() as u64;
            let partitions = run.storm_partitions.clone();
            self.on_election(Some(Box::new(move |sim: &mut Simulation<S>, leader: NodeId| {
                membership_storm(sim, leader, voters, &partitions)
            })));
        }
        let rounds = run.schedule.rounds.unwrap_or_else(|| 5 + run.dice.below(20));
        for _ in 0..rounds {
            self.schedule_round(run)?;
            let max = run.schedule.max_round.as_micros() as u64;
            self.run_for(Duration::from_micros(run.dice.below(max)))?;
            self.oracle.trace(|| {
                format!(
                    "schedule round ends t={:?} polls={} statuses={:?}",
                    self.now(),
                    self.runtime.polls(),
                    self.statuses()
                        .iter()
                        .map(|s| (s.id, s.role, s.current_term, s.commit_index, s.last_log_index))
                        .collect::<Vec<_>>()
                )
            });
            run.stats.rounds += 1;
        }
        Ok(())
    }

    /// One round: one action drawn at random (and, in a storm, the storm's own moves).
    fn schedule_round(&mut self, run: &mut Run<'_>) -> Result<(), SimFailure> {
        retire_removed(self, &mut run.removed);
        let ids: Vec<NodeId> = self.ids().to_vec();
        let hit = match &run.schedule.minority {
            Some(minority) => minority.clone(),
            None => ids.clone(),
        };
        let dice = &mut run.dice;
        let action = dice.below(if run.schedule.minority.is_some() { 12 } else { 23 });
        if run.schedule.membership_storm {
            // The storm's crashed leaders come back, and the cluster regrows.
            for id in self.ids().to_vec() {
                if !self.is_running(id) && dice.chance(50) {
                    self.start(id)?;
                }
            }
            let voters = self.founders().len() as u64;
            regrow(self, voters, &mut run.next_id, &mut run.removed)?;
            // And the leader is cut off in one round of two: the next one's storm begins.
            if let Some(leader) = self.leader().filter(|_| dice.chance(50)) {
                cut_off_with(self, leader, None, &run.storm_partitions);
            }
        }
        self.oracle.trace(|| format!("schedule action {action}"));
        match action {
            0 => self.crash(dice.pick(&hit)),
            1 => self.start(dice.pick(&hit))?,
            2 => {
                let id = dice.pick(&hit);
                self.restart(id)?;
            }
            3 => {
                let id = dice.pick(&hit);
                let delay = Duration::from_micros(dice.below(2_000_000));
                self.crash_after(id, delay, InFlight::Random);
            }
            4 => self.crash_after_steps(dice.pick(&hit), dice.below(20_000), InFlight::Random),
            5 => {
                let id = dice.pick(&hit);
                if self.is_paused(id) {
                    self.resume(id);
                } else {
                    self.pause(id);
                }
            }
            6 => {
                let (id, trigger) = match dice.below(2) {
                    0 => {
                        let delay = Duration::from_micros(dice.below(20_000));
                        (dice.pick(&hit), CrashTrigger::AfterWriteIssued { delay })
                    }
                    _ => (dice.pick(&hit), CrashTrigger::AfterSnapshotCommit),
                };
                if let Some(disk) = self.disk(id) {
                    disk.set_crash_trigger(Some((trigger, InFlight::Random)));
                }
            }
            7 => {
                let id = dice.pick(&hit);
                let full = self.disk(id).is_some_and(|d| !d.is_full());
                self.set_disk_full(id, full);
            }
            8 => self.network.disconnect(dice.pick(&hit)),
            9 => self.network.reconnect(dice.pick(&hit)),
            10 => {
                let (a, b) = (dice.pick(&hit), dice.pick(&ids));
                self.network.cut_one_way(a, b);
            }
            11 => spawn_changing_fault(self, dice, &hit, &run.stop),
            // Faults that may touch a majority.
            12 => {
                let split = 1 + dice.below(ids.len().max(2) as u64 - 1) as usize;
                let mut shuffled = ids.clone();
                for i in (1..shuffled.len()).rev() {
                    shuffled.swap(i, dice.below(i as u64 + 1) as usize);
                }
                let (left, right) = shuffled.split_at(split.min(shuffled.len()));
                self.network.partition(&[left.to_vec(), right.to_vec()]);
                if dice.chance(30) {
                    self.network.set_bridge(dice.pick(&ids), true);
                }
            }
            13 => self.network.heal(),
            14 => {
                let id = dice.pick(&ids);
                self.network.set_link_faults(id, dice.pick(&ids), random_link_faults(dice));
            }
            15 => {
                if dice.chance(30) {
                    self.crash_all();
                } else {
                    self.crash_on_leadership(
                        None,
                        Duration::from_micros(dice.below(5_000)),
                        InFlight::Random,
                    );
                }
            }
            16 => {
                let id = dice.pick(&ids);
                if dice.chance(50) {
                    self.shutdown(id)?;
                } else {
                    self.start(id)?;
                }
            }
            20 | 21 => {
                // Isolate the leader: it may believe it leads (and hold a lease) for a while.
                if let Some(leader) = self.leader().filter(|l| hit.contains(l)) {
                    if run.schedule.skew_clocks_of_isolated_leader {
                        // Its clock slow and the others' fast, as far as the lease's drift
                        // margin allows: the margin is all that keeps its reads fresh.
                        for &id in &ids {
                            let rate = if id == leader { 0.87 } else { 1.13 };
                            self.set_clock(id, NodeClock { rate, ..self.runtime.clock(id) });
                        }
                    }
                    // A client keeps reading from the node it believes leads.
                    self.pin_readers(leader, Duration::from_secs(3));
                    if dice.chance(50) {
                        self.network.disconnect(leader);
                    } else {
                        let others: Vec<NodeId> =
                            ids.iter().copied().filter(|&i| i != leader).collect();
                        self.network.partition(&[vec![leader], others]);
                    }
                }
            }
            22 => {
                // Pause the leader (SIGSTOP, a VM freeze) for longer than an election timeout
                // while a client keeps reading from it: the others elect a leader and take
                // writes, and the paused one runs its backlog when it resumes.
                let leader = self.leader().filter(|&l| hit.contains(&l) && !self.is_paused(l));
                if let Some(leader) = leader {
                    let max = self.config(leader).map_or(600, |c| {
                        u64::try_from(c.election_timeout_max.as_millis()).unwrap_or(u64::MAX)
                    });
                    let pause = Duration::from_millis(max + dice.below(3 * max));
                    self.pin_readers(leader, pause + Duration::from_secs(1));
                    self.pause(leader);
                    self.run_for(pause)?;
                    self.resume(leader);
                }
            }
            _ if run.schedule.membership_changes => change_at_random(self, run)?,
            _ => {}
        }
        Ok(())
    }

    /// Heals the cluster ([`Simulation::calm`]), starts every node of the scenario (twice: an
    /// operation in flight before the calm may still fail and stop a node), waits for a stable
    /// leader and until every member of its membership applied its commit index. Returns the
    /// leader.
    pub fn converge(&mut self, max: Duration) -> Result<NodeId, SimFailure> {
        self.calm();
        for id in self.ids().to_vec() {
            self.start(id)?;
        }
        self.run_for(Duration::from_secs(2))?;
        for id in self.ids().to_vec() {
            self.start(id)?;
        }
        let leader = self.wait_for_leader(max)?;
        let commit = self.node(leader).map_or(0, |n| n.status().commit_index);
        self.run_until("every member applied the leader's commit index", max, |sim| {
            let Some(members) = sim.members() else { return false };
            members
                .iter()
                .all(|&id| sim.node(id).is_some_and(|n| n.status().applied_index >= commit))
        })?;
        Ok(leader)
    }
}

/// A background fault that changes during the run: a link that flaps, or a burst of loss.
fn spawn_changing_fault<S: StateMachine>(
    sim: &Simulation<S>,
    dice: &mut Dice,
    ids: &[NodeId],
    stop: &Arc<AtomicBool>,
) {
    let (network, runtime, stop) = (sim.network.clone(), sim.runtime.clone(), stop.clone());
    let (a, b) = (dice.pick(ids), dice.pick(ids));
    let period = Duration::from_millis(20 + dice.below(500));
    let rounds = 1 + dice.below(20);
    let burst = dice.chance(30);
    let burst_faults = LinkFaults { drop_request: 0.5, drop_response: 0.5, ..LinkFaults::RELIABLE };
    sim.runtime.spawn_task(async move {
        for round in 0..rounds {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let on = round % 2 == 0;
            match (burst, on) {
                (true, true) => network.set_link_faults(a, b, burst_faults),
                (true, false) => network.set_link_faults(a, b, LinkFaults::RELIABLE),
                (false, true) => network.cut_one_way(a, b),
                (false, false) => network.restore_one_way(a, b),
            }
            runtime.sleep_for(period).await;
        }
        network.restore_one_way(a, b);
    });
}

/// The election hook of membership storms: the new leader proposes a change at once (before it
/// has committed anything of its term): while it has `voters` voters (the size the cluster
/// started with, which [`regrow`] restores) it removes another voter, else it adds a learner.
/// In one election of five it crashes soon after; in the others it is cut off for a while
/// ([`cut_off_with`]), alone or with one other voter in turn, and removes one of the voters it
/// lost, as an operator replacing failed nodes would.
fn membership_storm<S: StateMachine>(
    sim: &mut Simulation<S>,
    leader: NodeId,
    voters: u64,
    partitions: &Arc<AtomicU64>,
) {
    let Some(node) = sim.node(leader).cloned() else { return };
    let membership = node.membership();
    let pick = |sim: &Simulation<S>, from: Vec<NodeId>| {
        (!from.is_empty()).then(|| from[sim.runtime.below(from.len() as u64) as usize])
    };
    let outsiders: Vec<NodeId> =
        sim.ids().iter().copied().filter(|id| !membership.members().contains(id)).collect();
    let other_voters: Vec<NodeId> =
        membership.voters().iter().copied().filter(|&id| id != leader).collect();
    let fate = sim.runtime.below(5);
    let mut kept = None;
    match fate {
        0 => {
            let delay = Duration::from_micros(sim.runtime.below(20_000));
            sim.crash_after(leader, delay, InFlight::Random);
        }
        _ => {
            // Alone after a leader was cut off with another voter, and the other way round: the
            // leader elected while one is cut off alone is then cut off with one voter.
            let alone = partitions.load(Ordering::SeqCst).is_multiple_of(2);
            kept = pick(sim, other_voters.clone()).filter(|_| !alone);
            cut_off_with(sim, leader, kept, partitions);
        }
    }
    let lost: Vec<NodeId> = other_voters.into_iter().filter(|&id| Some(id) != kept).collect();
    let change = if membership.voters().len() as u64 >= voters {
        pick(sim, lost).map(MembershipChange::RemoveNode)
    } else {
        pick(sim, outsiders).map(|id| MembershipChange::AddLearner(id, NodeInfo::default()))
    };
    if let Some(change) = change {
        sim.runtime.spawn_task(async move {
            let _ = node.change_membership(change).await;
        });
    }
}

/// Storms remove voters: brings the cluster back toward `voters` voters, one step per call on
/// a leader that reaches a quorum: promote a learner that is in sync, or, without learners,
/// add a node (a removed id first) as a learner.
fn regrow<S: StateMachine>(
    sim: &mut Simulation<S>,
    voters: u64,
    next_id: &mut NodeId,
    removed: &mut Vec<NodeId>,
) -> Result<(), SimFailure> {
    retire_removed(sim, removed);
    let leader = sim.leaders_with_quorum().into_iter().next();
    let Some(node) = leader.and_then(|l| sim.node(l)).cloned() else { return Ok(()) };
    let membership = node.membership();
    if membership.voters().len() as u64 >= voters || membership.is_joint() {
        return Ok(());
    }
    let change = if membership.learners().is_empty() {
        let id = match reusable(sim, removed).first() {
            Some(&index) => removed.remove(index),
            None => {
                *next_id += 1;
                *next_id
            }
        };
        sim.add_node(id)?;
        MembershipChange::AddLearner(id, NodeInfo::default())
    } else {
        // A paused leader does not answer: give up after a moment.
        let (leader, runtime) = (node.clone(), sim.runtime.clone());
        let replication = sim.block_on("the leader's replication", LONG, async move {
            futures::select_biased! {
                replication = leader.replication().fuse() => replication,
                _ = runtime.sleep_for(Duration::from_millis(100)).fuse() => Vec::new(),
            }
        })?;
        let ready =
            replication.iter().filter(|p| !p.voter && p.in_sync).max_by_key(|p| p.match_index);
        match ready {
            Some(learner) => MembershipChange::PromoteLearner(learner.id),
            None => return Ok(()),
        }
    };
    sim.runtime.spawn_task(async move {
        let _ = node.change_membership(change).await;
    });
    Ok(())
}

/// Storms: partitions the cluster into the new leader with `kept` and everyone else, from the
/// moment it took office and for a while, so that what it appends (its membership change)
/// reaches at most `kept`, as when a leader is cut off right after proposing. The others may
/// elect a leader of their own, whose change the storm treats the same way (that partition
/// replaces this one: the first leader and the second one's cut-off peers are together), and
/// the two leaders' memberships may be in force side by side.
fn cut_off_with<S: StateMachine>(
    sim: &mut Simulation<S>,
    leader: NodeId,
    kept: Option<NodeId>,
    partitions: &Arc<AtomicU64>,
) {
    let (inside, outside): (Vec<NodeId>, Vec<NodeId>) =
        sim.ids().iter().partition(|&&id| id == leader || Some(id) == kept);
    let hold = Duration::from_millis(200 + sim.runtime.below(3_000));
    let (network, runtime, partitions) =
        (sim.network.clone(), sim.runtime.clone(), partitions.clone());
    let mine = partitions.fetch_add(1, Ordering::SeqCst) + 1;
    sim.network.partition(&[inside, outside]);
    sim.runtime.spawn_task(async move {
        runtime.sleep_for(hold).await;
        // Unless a later storm partition replaced this one.
        if partitions.load(Ordering::SeqCst) == mine {
            network.heal();
        }
    });
}

/// Retires the nodes whose removal committed (members of an earlier committed membership that
/// the latest one lacks): they may be added again later, on an empty disk.
fn retire_removed<S: StateMachine>(sim: &mut Simulation<S>, removed: &mut Vec<NodeId>) {
    let memberships: Vec<_> = sim
        .checker()
        .committed_entries()
        .filter_map(|e| match &e.payload {
            EntryPayload::Membership(m) => Some(m.members()),
            _ => None,
        })
        .collect();
    let Some(latest) = memberships.last() else { return };
    for id in sim.ids().to_vec() {
        let was_member = memberships.iter().any(|m| m.contains(&id));
        if was_member && !latest.contains(&id) && !removed.contains(&id) {
            sim.retire(id);
            removed.push(id);
        }
    }
}

/// Starts a random membership change or leadership transfer on the current leader, without
/// waiting for its outcome (it may fail, commit or be overwritten under the faults). Removed
/// nodes are retired once their removal is committed, and may be added again later (on an
/// empty disk).
fn change_at_random<S: StateMachine>(
    sim: &mut Simulation<S>,
    run: &mut Run<'_>,
) -> Result<(), SimFailure> {
    retire_removed(sim, &mut run.removed);
    let Some(leader) = sim.leader() else { return Ok(()) };
    let Some(node) = sim.node(leader).cloned() else { return Ok(()) };
    let membership = node.membership();
    let pick = |dice: &mut Dice, set: &BTreeSet<NodeId>| {
        let v: Vec<NodeId> = set.iter().copied().collect();
        (!v.is_empty()).then(|| dice.pick(&v))
    };
    sim.note_disruption();
    let change = match run.dice.below(7) {
        0 => {
            let id = fresh_node(sim, run)?;
            MembershipChange::AddLearner(id, NodeInfo::default())
        }
        5 | 6 => return joint_change(sim, run, node, &membership),
        1 => match pick(&mut run.dice, membership.learners()) {
            Some(id) => MembershipChange::PromoteLearner(id),
            None => return Ok(()),
        },
        2 => match pick(&mut run.dice, &membership.members()) {
            Some(id) => MembershipChange::RemoveNode(id),
            None => return Ok(()),
        },
        _ => {
            if let Some(target) = pick(&mut run.dice, membership.voters()) {
                sim.runtime.spawn_task(async move {
                    let _ = node.transfer_leadership(target).await;
                });
            }
            return Ok(());
        }
    };
    sim.oracle.trace(|| format!("schedule: {change:?} on leader {leader}"));
    sim.runtime.spawn_task(async move {
        let _ = node.change_membership(change).await;
    });
    Ok(())
}

/// A node to add: a removed id again (on an empty disk) four times in five, else a new one.
fn fresh_node<S: StateMachine>(
    sim: &mut Simulation<S>,
    run: &mut Run<'_>,
) -> Result<NodeId, SimFailure> {
    let reusable = reusable(sim, &run.removed);
    let id = if !reusable.is_empty() && run.dice.chance(80) {
        run.stats.readded += 1;
        run.removed.remove(reusable[run.dice.below(reusable.len() as u64) as usize])
    } else {
        run.next_id += 1;
        run.next_id
    };
    sim.add_node(id)?;
    Ok(id)
}

/// The positions in `removed` of the ids that may come back on an empty disk: those that were
/// never voters. A former voter's id must never be used again by a node without its log (as
/// openraft's FAQ warns too): replaying the log from the start, the new node passes through the
/// old memberships that name it a voter, and one in which it was the only voter (a cluster that
/// began as a lone voter) makes it leader on its own, beside the real cluster. Raft-core allows
/// a removed learner to come back under its id.
fn reusable<S: StateMachine>(sim: &Simulation<S>, removed: &[NodeId]) -> Vec<usize> {
    let mut voted: BTreeSet<NodeId> = sim
        .checker()
        .committed_entries()
        .filter_map(|e| match &e.payload {
            EntryPayload::Membership(m) => Some(m.all_voters()),
            _ => None,
        })
        .flatten()
        .collect();
    // The founders are voters of the bootstrap entry, committed first.
    for id in sim.ids() {
        if let Some(node) = sim.node(*id) {
            voted.extend(node.membership().all_voters());
        }
        if sim.founders().contains(id) {
            voted.insert(*id);
        }
    }
    (0..removed.len()).filter(|&i| !voted.contains(&removed[i])).collect()
}

/// Starts a change of several voters at once on the leader `node` (through joint consensus),
/// without waiting for its outcome: replace two voters (two of three, say), grow by two (3 to
/// 5), shrink by two (5 to 3) or swap the whole voter set, the incoming voters being new nodes.
fn joint_change<S: StateMachine>(
    sim: &mut Simulation<S>,
    run: &mut Run<'_>,
    node: Node,
    membership: &Membership,
) -> Result<(), SimFailure> {
    if membership.is_joint() {
        return Ok(());
    }
    let mut voters: Vec<NodeId> = membership.voters().iter().copied().collect();
    for i in (1..voters.len()).rev() {
        voters.swap(i, run.dice.below(i as u64 + 1) as usize);
    }
    let n = voters.len();
    let (keep, incoming) = match run.dice.below(4) {
        0 if n >= 2 => (n - 2, 2),
        1 if n <= 5 => (n, 2),
        2 if n >= 3 => (n - 2, 0),
        _ => (0, n),
    };
    voters.truncate(keep);
    let mut new_nodes = Vec::new();
    for _ in 0..incoming {
        let id = fresh_node(sim, run)?;
        voters.push(id);
        new_nodes.push((id, NodeInfo::default()));
    }
    let learners: Vec<NodeId> =
        membership.learners().iter().copied().filter(|id| !voters.contains(id)).collect();
    let Ok(target) = membership.target(voters, learners, new_nodes) else { return Ok(()) };
    sim.oracle.trace(|| {
        format!("schedule: joint change to {:?} on leader {}", target.voters(), node.id())
    });
    run.stats.joint_changes_started += 1;
    sim.runtime.spawn_task(async move {
        let _ = node.set_membership(target, Duration::from_secs(3)).await;
    });
    Ok(())
}
