//! Randomized swarm: many seeds, each drawing a whole scenario from its seed: the cluster
//! (1 to 7 voters, learners, a lone voter with learners), the protocol settings (PreVote,
//! CheckQuorum, lease reads, timing, flow control, snapshots; different settings per node), the
//! disks (latency, stalls, I/O errors), the state machine (slow, failing), the clocks (skew, late
//! timers), the network (loss, delay, duplication, hung RPCs) and payload sizes; then a schedule
//! of faults while clients write and readers read: partitions with and without a bridge, one-way
//! cuts, flapping links, loss bursts, disconnections, crashes at random steps and at events
//! (during a write, right after an election, after a snapshot commit), crashes of every node at
//! once, pauses, full disks, graceful shutdowns, membership changes (re-adding removed ids) and
//! leadership transfers; and targeted nemeses: the leader isolated (with lease reads, its clock
//! slow and the others' fast) or paused (SIGSTOP) while a client keeps reading from it, and
//! membership storms (every new leader changes the membership at once and is cut off, alone or
//! with one voter in turn, or crashes; most storms start from four voters, and the cluster
//! regrows). A quarter of the seeds keep every fault on a fixed minority, so that the liveness
//! oracle watches a healthy majority for the whole run. Every invariant is checked after every
//! step; at the end the cluster must converge with every acknowledged write in place.
//!
//! CI runs `SWARM_SEEDS_CI` seeds (split across tests so they run in parallel). Run more with
//! `RAFT_SWARM_SEEDS=<n>`, start elsewhere with `RAFT_SWARM_FIRST=<seed>`, replay one with
//! `RAFT_SIM_SEED=<seed>`, print each seed's draws with `RAFT_SWARM_VERBOSE=1` and a failing
//! seed's whole trace with `RAFT_SWARM_TRACE=1`. The first failing seed stops every shard;
//! `RAFT_SWARM_KEEP_GOING=1` runs every seed and lists the failing ones.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod sim_support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;

use raft_core::{Config, EntryPayload, Membership, MembershipChange, NodeId, NodeInfo};
use raft_mem::sim::{
    ClientOptions, ConfigHook, CrashTrigger, DiskFaults, InFlight, LivenessBounds, NodeClock,
    Simulation, SimulationConfig, StateMachineFaults,
};
use raft_mem::LinkFaults;
use sim_support::*;

const SWARM_SEEDS_CI: u64 = 400;
const SHARDS: u64 = 4;

fn verbose() -> bool {
    std::env::var("RAFT_SWARM_VERBOSE").is_ok()
}

fn random_faults(dice: &mut Dice) -> LinkFaults {
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

/// Timing profiles: (tick, heartbeat, election min, election max) in ms.
const TIMINGS: [(u64, u64, u64, u64); 4] =
    [(10, 50, 300, 600), (5, 20, 100, 200), (20, 100, 800, 1600), (10, 30, 150, 300)];

/// Settings of one node, drawn from the seed.
#[derive(Debug, Clone, Copy)]
struct NodeSettings {
    timing: (u64, u64, u64, u64),
    max_append_entries: usize,
    max_inflight_append_entries: usize,
}

/// Everything a seed draws before the run.
#[derive(Debug, Clone)]
struct Draws {
    voters: u64,
    learners: u64,
    pre_vote: bool,
    check_quorum: bool,
    lease_reads: bool,
    /// (interval, keep, chunk, window, timeout) when snapshots are on.
    snapshots: Option<(u64, u64, u64, usize, u64)>,
    nodes: BTreeMap<NodeId, NodeSettings>,
    disk: DiskFaults,
    state_machine: StateMachineFaults,
    faults: LinkFaults,
    hang_chance: f64,
    payload: (usize, usize),
    clients: u64,
    readers: u64,
    /// The nodes every fault is confined to (`None`: faults hit anyone).
    minority: Option<Vec<NodeId>>,
    clock_skew: bool,
    late_timers: bool,
    /// Every new leader proposes a membership change at once, and may crash right after.
    membership_storm: bool,
}

fn draw(seed: u64) -> Draws {
    let mut dice = Dice(seed ^ 0xD4A5);
    let voters = [1, 1, 2, 3, 3, 4, 5, 5, 6, 7][dice.below(10) as usize];
    let learners = if voters == 1 { 1 + dice.below(2) } else { dice.below(3) / 2 };
    let pre_vote = dice.chance(80);
    let check_quorum = dice.chance(80);
    let lease_reads = check_quorum && dice.chance(35);
    let snapshots = dice.chance(33).then(|| {
        (
            3 + dice.below(40),
            dice.below(8),
            64 + dice.below(2048),
            1 + dice.below(3) as usize,
            200 + dice.below(3000),
        )
    });
    let base_timing = TIMINGS[dice.below(4) as usize];
    let heterogeneous = !lease_reads && dice.chance(30);
    let flow = [(1, 1), (4, 2), (64, 8), (4096, 32)];
    let mut nodes = BTreeMap::new();
    for id in 1..=voters + learners + 8 {
        let timing = if heterogeneous && dice.chance(50) {
            TIMINGS[dice.below(4) as usize]
        } else {
            base_timing
        };
        let (max_append_entries, max_inflight_append_entries) = flow[dice.below(4) as usize];
        nodes.insert(id, NodeSettings { timing, max_append_entries, max_inflight_append_entries });
    }
    let mut disk = match dice.below(5) {
        0 => DiskFaults::INSTANT,
        1 | 2 => DiskFaults::SSD,
        3 => DiskFaults::SPINNING,
        _ => DiskFaults {
            latency_us: (0, dice.below(20_000)),
            read_latency_us: (0, dice.below(1_000)),
            stall_chance: dice.below(30) as f64 / 1000.0,
            stall_ms: (10, 10 + dice.below(1500)),
            error_chance: 0.0,
            yield_chance: dice.below(50) as f64 / 100.0,
        },
    };
    if dice.chance(20) {
        disk.error_chance = 0.0005;
    }
    let mut state_machine = StateMachineFaults::default();
    if dice.chance(20) {
        state_machine.slow_chance = 0.05;
        state_machine.slow_us = (100, 50_000);
    }
    if dice.chance(10) {
        state_machine.error_chance = 0.001;
    }
    let faults = random_faults(&mut dice);
    let hang_chance = if dice.chance(40) { dice.below(30) as f64 / 100.0 } else { 0.0 };
    // The recorder's snapshots hold every entry: with snapshots on, payloads stay small enough
    // that a snapshot transfer in small chunks ends within the final convergence bound.
    let payload_max = if snapshots.is_some() { 1 << 10 } else { 16 << 10 };
    let payload = if dice.chance(30) { (0, 1 + dice.below(payload_max) as usize) } else { (0, 0) };
    let clients = 1 + dice.below(3);
    let readers = 1 + dice.below(3);
    let minority = (voters >= 3 && dice.chance(25)).then(|| {
        let size = 1 + dice.below((voters - 1) / 2);
        let mut ids: Vec<NodeId> = (1..=voters).collect();
        for i in (1..ids.len()).rev() {
            ids.swap(i, dice.below(i as u64 + 1) as usize);
        }
        ids.truncate(size as usize);
        ids
    });
    let minority_free = minority.is_none();
    let clock_skew = dice.chance(if lease_reads { 60 } else { 30 });
    let late_timers = dice.chance(20);
    let membership_storm = minority_free && voters >= 3 && dice.chance(40);
    // Two one-voter changes by successive leaders can elect two leaders only from an even
    // number of voters: most storms start from four.
    let voters = if membership_storm && voters % 2 == 1 && dice.chance(67) { 4 } else { voters };
    Draws {
        voters,
        learners,
        pre_vote,
        check_quorum,
        lease_reads,
        snapshots,
        nodes,
        disk,
        state_machine,
        faults,
        hang_chance,
        payload,
        clients,
        readers,
        minority,
        clock_skew,
        late_timers,
        membership_storm,
    }
}

fn config_hook(draws: &Draws) -> ConfigHook {
    let draws = draws.clone();
    Arc::new(move |c: &mut Config| {
        let settings = draws.nodes.get(&c.id).copied().unwrap_or(draws.nodes[&1]);
        let (tick, heartbeat, min, max) = settings.timing;
        c.tick_interval_ms = tick;
        c.heartbeat_interval_ms = heartbeat;
        c.election_timeout_ms_min = min;
        c.election_timeout_ms_max = max;
        c.leadership_transfer_timeout_ms = c.leadership_transfer_timeout_ms.max(heartbeat);
        c.pre_vote = draws.pre_vote;
        c.check_quorum = draws.check_quorum;
        c.lease_reads = draws.lease_reads;
        c.max_clock_drift_ms = min / 3;
        c.max_append_entries = settings.max_append_entries;
        c.max_inflight_append_entries = settings.max_inflight_append_entries;
        if let Some((interval, keep, chunk, window, timeout)) = draws.snapshots {
            c.snapshot_interval_entries = interval;
            c.snapshot_keep_entries = keep;
            c.snapshot_chunk_bytes = chunk;
            c.snapshot_max_inflight_chunks = window;
            c.snapshot_transfer_timeout_ms = timeout.max(heartbeat);
        }
    })
}

/// Counters over every seed of the process.
#[derive(Default)]
struct Totals {
    seeds: AtomicU64,
    pauses: AtomicU64,
    crashes: AtomicU64,
    in_flight_landed: AtomicU64,
    in_flight_lost: AtomicU64,
    fault_stops: AtomicU64,
    membership_changes: AtomicU64,
    joint_changes_started: AtomicU64,
    joint_memberships: AtomicU64,
    restores: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
    lone_voter: AtomicU64,
    minority_mode: AtomicU64,
    healthy_periods: AtomicU64,
    live_periods: AtomicU64,
    readded: AtomicU64,
    shutdowns: AtomicU64,
}

static TOTALS: std::sync::LazyLock<Totals> = std::sync::LazyLock::new(Totals::default);

/// Set by the first shard that finds a failing seed: the others stop.
static FAILED: AtomicBool = AtomicBool::new(false);

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// A background fault that changes during the run: a link that flaps, or a burst of loss.
fn spawn_changing_fault(sim: &Simulation, dice: &mut Dice, ids: &[NodeId], stop: &Arc<AtomicBool>) {
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

/// The nodes a fault may hit: the minority in minority mode, anyone otherwise.
fn targets(draws: &Draws, ids: &[NodeId]) -> Vec<NodeId> {
    match &draws.minority {
        Some(minority) => minority.clone(),
        None => ids.to_vec(),
    }
}

fn swarm_run(seed: u64) -> Outcome {
    let draws = draw(seed);
    if verbose() {
        println!("  draws: {draws:?}");
    }
    let mut config = SimulationConfig::new(draws.voters, seed);
    config.faults = if draws.minority.is_some() { LinkFaults::RELIABLE } else { draws.faults };
    // Injected failures stop nodes: they begin once the cluster is set up.
    config.disk = DiskFaults { error_chance: 0.0, ..draws.disk };
    config.state_machine = StateMachineFaults { error_chance: 0.0, ..draws.state_machine };
    config.rpc_timeout = Some((Duration::from_secs(2), draws.hang_chance));
    config.trace = std::env::var("RAFT_SWARM_TRACE").is_ok();
    let mut sim = Simulation::with_config_hook(config, Some(config_hook(&draws)))?;
    sim.enable_liveness(LivenessBounds::default());
    let outcome = swarm_scenario(&mut sim, seed, &draws);
    if outcome.is_err() && std::env::var("RAFT_SWARM_TRACE").is_ok() {
        for event in sim.take_trace() {
            println!("{event}");
        }
    }
    outcome
}

fn swarm_scenario(sim: &mut Simulation, seed: u64, draws: &Draws) -> Outcome {
    let mut dice = Dice(seed ^ 0x5EED);
    let mut next_id = draws.voters + 1;
    let mut removed: Vec<NodeId> = Vec::new();
    for _ in 0..draws.learners {
        let id = next_id;
        next_id += 1;
        sim.add_node(id)?;
        sim.change_membership(MembershipChange::AddLearner(id, NodeInfo::default()), LONG)?;
    }
    let ids: Vec<NodeId> = sim.ids().to_vec();
    // In minority mode, failures and stalls hit only the minority.
    let hit = targets(draws, &ids);
    let calm_disk = DiskFaults { error_chance: 0.0, stall_chance: 0.0, ..draws.disk };
    for &id in &ids {
        sim.set_disk_faults(id, if hit.contains(&id) { draws.disk } else { calm_disk });
    }
    if draws.minority.is_none() {
        sim.set_state_machine_faults(draws.state_machine);
    }
    if let Some(minority) = &draws.minority {
        for &id in minority {
            sim.network.set_node_faults(id, draws.faults);
        }
    }
    if draws.clock_skew || draws.late_timers {
        for &id in &targets(draws, &ids) {
            let (_, heartbeat, min, _) = draws.nodes[&id].timing;
            let mut clock = NodeClock::EXACT;
            if draws.clock_skew {
                // Rates differ by at most 26%: within the lease's drift margin (a third of the
                // election timeout), which a lease without its margin then misses. Half the
                // time at the edges, where the margin matters most.
                clock.rate = if dice.chance(50) {
                    if dice.chance(50) {
                        0.87
                    } else {
                        1.13
                    }
                } else {
                    0.87 + dice.below(261) as f64 / 1000.0
                };
            }
            if draws.late_timers {
                clock.late_chance = 0.01;
                clock.late_max_us = (min.saturating_sub(2 * heartbeat) / 2) * 1_000;
            }
            sim.set_clock(id, clock);
        }
    }
    let options = ClientOptions {
        timeout: Duration::from_millis(300 + dice.below(3000)),
        payload_bytes: draws.payload,
    };
    let clients: Vec<_> =
        (0..draws.clients).map(|c| sim.spawn_client_with(&format!("s{c}"), options)).collect();
    let readers: Vec<_> = (0..draws.readers).map(|_| sim.spawn_reader()).collect();
    let storm_partitions = Arc::new(AtomicU64::new(0));
    if draws.membership_storm {
        // Spare nodes, idle until a leader adds them.
        for _ in 0..2 {
            let id = next_id;
            next_id += 1;
            sim.add_node(id)?;
        }
        let voters = draws.voters;
        let partitions = storm_partitions.clone();
        sim.on_election(Some(Box::new(move |sim: &mut Simulation, leader: NodeId| {
            membership_storm(sim, leader, voters, &partitions)
        })));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = 5 + dice.below(20);
    for _ in 0..rounds {
        retire_removed(sim, &mut removed);
        let ids: Vec<NodeId> = sim.ids().to_vec();
        let hit = targets(draws, &ids);
        let action = dice.below(if draws.minority.is_some() { 12 } else { 23 });
        if draws.membership_storm {
            // The storm's crashed leaders come back, and the cluster regrows.
            for id in sim.ids().to_vec() {
                if !sim.is_running(id) && dice.chance(50) {
                    sim.start(id)?;
                }
            }
            regrow(sim, draws.voters, &mut next_id, &mut removed)?;
            // And the leader is cut off in one round of two: the next one's storm begins.
            if let Some(leader) = sim.leader().filter(|_| dice.chance(50)) {
                cut_off_with(sim, leader, None, &storm_partitions);
            }
        }
        match action {
            0 => sim.crash(dice.pick(&hit)),
            1 => sim.start(dice.pick(&hit))?,
            2 => {
                let id = dice.pick(&hit);
                sim.restart(id)?;
            }
            3 => {
                let id = dice.pick(&hit);
                let delay = Duration::from_micros(dice.below(2_000_000));
                sim.crash_after(id, delay, InFlight::Random);
            }
            4 => sim.crash_after_steps(dice.pick(&hit), dice.below(20_000), InFlight::Random),
            5 => {
                let id = dice.pick(&hit);
                if sim.is_paused(id) {
                    sim.resume(id);
                } else {
                    sim.pause(id);
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
                if let Some(disk) = sim.disk(id) {
                    disk.set_crash_trigger(Some((trigger, InFlight::Random)));
                }
            }
            7 => {
                let id = dice.pick(&hit);
                let full = sim.disk(id).is_some_and(|d| !d.is_full());
                sim.set_disk_full(id, full);
            }
            8 => sim.network.disconnect(dice.pick(&hit)),
            9 => sim.network.reconnect(dice.pick(&hit)),
            10 => {
                let (a, b) = (dice.pick(&hit), dice.pick(&ids));
                sim.network.cut_one_way(a, b);
            }
            11 => spawn_changing_fault(sim, &mut dice, &hit, &stop),
            // Faults that may touch a majority.
            12 => {
                let split = 1 + dice.below(ids.len().max(2) as u64 - 1) as usize;
                let mut shuffled = ids.clone();
                for i in (1..shuffled.len()).rev() {
                    shuffled.swap(i, dice.below(i as u64 + 1) as usize);
                }
                let (left, right) = shuffled.split_at(split.min(shuffled.len()));
                sim.network.partition(&[left.to_vec(), right.to_vec()]);
                if dice.chance(30) {
                    sim.network.set_bridge(dice.pick(&ids), true);
                }
            }
            13 => sim.network.heal(),
            14 => {
                let id = dice.pick(&ids);
                sim.network.set_link_faults(id, dice.pick(&ids), random_faults(&mut dice));
            }
            15 => {
                if dice.chance(30) {
                    sim.crash_all();
                } else {
                    sim.crash_on_leadership(
                        None,
                        Duration::from_micros(dice.below(5_000)),
                        InFlight::Random,
                    );
                }
            }
            16 => {
                let id = dice.pick(&ids);
                if dice.chance(50) {
                    sim.shutdown(id)?;
                } else {
                    sim.start(id)?;
                }
            }
            20 | 21 => {
                // Isolate the leader: it may believe it leads (and hold a lease) for a while.
                if let Some(leader) = sim.leader().filter(|l| hit.contains(l)) {
                    if draws.lease_reads && draws.clock_skew {
                        // Its clock slow and the others' fast, as far as the lease's drift
                        // margin allows: the margin is all that keeps its reads fresh.
                        for &id in &ids {
                            let rate = if id == leader { 0.87 } else { 1.13 };
                            sim.set_clock(id, NodeClock { rate, ..sim.runtime.clock(id) });
                        }
                    }
                    // A client keeps reading from the node it believes leads.
                    sim.spawn_reader_on(leader, Duration::from_secs(3));
                    if dice.chance(50) {
                        sim.network.disconnect(leader);
                    } else {
                        let others: Vec<NodeId> =
                            ids.iter().copied().filter(|&i| i != leader).collect();
                        sim.network.partition(&[vec![leader], others]);
                    }
                }
            }
            22 => {
                // Pause the leader (SIGSTOP, a VM freeze) for longer than an election timeout
                // while a client keeps reading from it: the others elect a leader and take
                // writes, and the paused one runs its backlog when it resumes.
                let leader = sim.leader().filter(|&l| hit.contains(&l) && !sim.is_paused(l));
                if let Some(leader) = leader {
                    let max = sim.config(leader).map_or(600, |c| c.election_timeout_ms_max);
                    let pause = Duration::from_millis(max + dice.below(3 * max));
                    sim.spawn_reader_on(leader, pause + Duration::from_secs(1));
                    sim.pause(leader);
                    sim.run_for(pause)?;
                    sim.resume(leader);
                }
            }
            _ => change_at_random(sim, &mut dice, &mut next_id, &mut removed)?,
        }
        sim.run_for(Duration::from_micros(dice.below(2_000_000)))?;
        if verbose() {
            println!(
                "  t={:?} action {action} polls={} statuses={:?}",
                sim.now(),
                sim.runtime.polls(),
                sim.statuses()
                    .iter()
                    .map(|s| (s.id, s.role, s.current_term, s.commit_index, s.last_log_index))
                    .collect::<Vec<_>>()
            );
        }
    }
    stop.store(true, Ordering::SeqCst);
    for reader in &readers {
        reader.stop();
    }
    converge_and_check(sim, &clients)?;
    let stats = sim.stats();
    add(&TOTALS.seeds, 1);
    add(&TOTALS.pauses, stats.pauses);
    add(&TOTALS.crashes, stats.crashes);
    add(&TOTALS.in_flight_landed, stats.crash_landed);
    add(&TOTALS.in_flight_lost, stats.crash_lost);
    add(&TOTALS.fault_stops, stats.fault_stops + stats.failed_starts);
    add(&TOTALS.healthy_periods, stats.healthy_periods);
    add(&TOTALS.shutdowns, stats.shutdowns);
    add(&TOTALS.live_periods, stats.live_periods);
    let changes = sim
        .checker()
        .committed_entries()
        .filter(|e| matches!(e.payload, EntryPayload::Membership(_)))
        .count();
    add(&TOTALS.membership_changes, changes as u64);
    let joint = sim
        .checker()
        .committed_entries()
        .filter(|e| matches!(&e.payload, EntryPayload::Membership(m) if m.is_joint()))
        .count();
    add(&TOTALS.joint_memberships, joint as u64);
    let restores: usize = sim.ids().iter().map(|&id| sim.restores(id).len()).sum();
    add(&TOTALS.restores, restores as u64);
    add(&TOTALS.reads, readers.iter().map(|r| r.completed()).sum());
    add(&TOTALS.writes, clients.iter().map(|c| c.acknowledged().len() as u64).sum());
    add(&TOTALS.lone_voter, u64::from(draws.voters == 1));
    add(&TOTALS.minority_mode, u64::from(draws.minority.is_some()));
    Ok(())
}

/// The election hook of membership storms: the new leader proposes a change at once (before it
/// has committed anything of its term): while it has `voters` voters (the size the seed started
/// with, which [`regrow`] restores) it removes another voter, else it adds a learner. In one
/// election of five it crashes soon after; in the others it is cut off for a while
/// ([`cut_off_with`]), alone or with one other voter in turn, and removes one of the voters it
/// lost, as an operator replacing failed nodes would.
fn membership_storm(
    sim: &mut Simulation,
    leader: NodeId,
    voters: u64,
    partitions: &Arc<AtomicU64>,
) {
    let Some(node) = sim.node(leader).cloned() else { return };
    let membership = node.membership();
    let pick = |sim: &Simulation, from: Vec<NodeId>| {
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
fn regrow(
    sim: &mut Simulation,
    voters: u64,
    next_id: &mut NodeId,
    removed: &mut Vec<NodeId>,
) -> Outcome {
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
/// reaches at most `kept`, as when a leader is cut off right after
/// proposing. The others may elect a leader of their own, whose change the storm treats the
/// same way (that partition replaces this one: the first leader and the second one's cut-off
/// peers are together), and the two leaders' memberships may be in force side by side.
fn cut_off_with(
    sim: &mut Simulation,
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
fn retire_removed(sim: &mut Simulation, removed: &mut Vec<NodeId>) {
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
fn change_at_random(
    sim: &mut Simulation,
    dice: &mut Dice,
    next_id: &mut NodeId,
    removed: &mut Vec<NodeId>,
) -> Outcome {
    retire_removed(sim, removed);
    let Some(leader) = sim.leader() else { return Ok(()) };
    let Some(node) = sim.node(leader).cloned() else { return Ok(()) };
    let membership = node.membership();
    let pick = |dice: &mut Dice, set: &std::collections::BTreeSet<NodeId>| {
        let v: Vec<NodeId> = set.iter().copied().collect();
        (!v.is_empty()).then(|| dice.pick(&v))
    };
    sim.note_disruption();
    let change = match dice.below(7) {
        0 => {
            let id = fresh_node(sim, dice, next_id, removed)?;
            MembershipChange::AddLearner(id, NodeInfo::default())
        }
        5 | 6 => return joint_change(sim, dice, next_id, removed, node, &membership),
        1 => match pick(dice, membership.learners()) {
            Some(id) => MembershipChange::PromoteLearner(id),
            None => return Ok(()),
        },
        2 => match pick(dice, &membership.members()) {
            Some(id) => MembershipChange::RemoveNode(id),
            None => return Ok(()),
        },
        _ => {
            if let Some(target) = pick(dice, membership.voters()) {
                sim.runtime.spawn_task(async move {
                    let _ = node.transfer_leadership(target).await;
                });
            }
            return Ok(());
        }
    };
    if verbose() {
        println!("  t={:?} {change:?} on leader {leader}", sim.now());
    }
    sim.runtime.spawn_task(async move {
        let _ = node.change_membership(change).await;
    });
    Ok(())
}

/// A node to add: a removed id again (on an empty disk) four times in five, else a new one.
fn fresh_node(
    sim: &mut Simulation,
    dice: &mut Dice,
    next_id: &mut NodeId,
    removed: &mut Vec<NodeId>,
) -> Result<NodeId, raft_mem::sim::SimFailure> {
    let reusable = reusable(sim, removed);
    let id = if !reusable.is_empty() && dice.chance(80) {
        add(&TOTALS.readded, 1);
        removed.remove(reusable[dice.below(reusable.len() as u64) as usize])
    } else {
        *next_id += 1;
        *next_id
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
fn reusable(sim: &Simulation, removed: &[NodeId]) -> Vec<usize> {
    let mut voted: std::collections::BTreeSet<NodeId> = sim
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
fn joint_change(
    sim: &mut Simulation,
    dice: &mut Dice,
    next_id: &mut NodeId,
    removed: &mut Vec<NodeId>,
    node: raft_core::Node,
    membership: &Membership,
) -> Outcome {
    if membership.is_joint() {
        return Ok(());
    }
    let mut voters: Vec<NodeId> = membership.voters().iter().copied().collect();
    for i in (1..voters.len()).rev() {
        voters.swap(i, dice.below(i as u64 + 1) as usize);
    }
    let n = voters.len();
    let (keep, incoming) = match dice.below(4) {
        0 if n >= 2 => (n - 2, 2),
        1 if n <= 5 => (n, 2),
        2 if n >= 3 => (n - 2, 0),
        _ => (0, n),
    };
    voters.truncate(keep);
    let mut new_nodes = Vec::new();
    for _ in 0..incoming {
        let id = fresh_node(sim, dice, next_id, removed)?;
        voters.push(id);
        new_nodes.push((id, NodeInfo::default()));
    }
    let learners: Vec<NodeId> =
        membership.learners().iter().copied().filter(|id| !voters.contains(id)).collect();
    let Ok(target) = membership.target(voters, learners, new_nodes) else { return Ok(()) };
    if verbose() {
        println!(
            "  t={:?} joint change to {:?} on leader {}",
            sim.now(),
            target.voters(),
            node.id()
        );
    }
    add(&TOTALS.joint_changes_started, 1);
    sim.runtime.spawn_task(async move {
        let _ = node.set_membership(target, Duration::from_secs(3)).await;
    });
    Ok(())
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn shard(index: u64) {
    if let Some(seed) = env_u64("RAFT_SIM_SEED") {
        if index == 0 {
            swarm_run(seed).unwrap_or_else(|failure| panic!("swarm failed: {failure}"));
        }
        return;
    }
    let total = env_u64("RAFT_SWARM_SEEDS").unwrap_or(SWARM_SEEDS_CI);
    let first = env_u64("RAFT_SWARM_FIRST").unwrap_or(1_000_000);
    let started = std::time::Instant::now();
    let keep_going = std::env::var("RAFT_SWARM_KEEP_GOING").is_ok();
    let mut failures = Vec::new();
    let mut ran = 0;
    for seed in (first..first + total).filter(|s| s % SHARDS == index) {
        if FAILED.load(Ordering::SeqCst) {
            return; // another shard failed: its seed is the report
        }
        if verbose() {
            println!("seed {seed}");
        }
        if let Err(failure) = swarm_run(seed) {
            let found = format!(
                "swarm failed: {failure} (found after {} seeds in {:?})",
                TOTALS.seeds.load(Ordering::Relaxed) + 1,
                started.elapsed()
            );
            if !keep_going {
                FAILED.store(true, Ordering::SeqCst);
                panic!("{found}");
            }
            println!("{found}");
            failures.push(seed);
        }
        ran += 1;
    }
    let t = &*TOTALS;
    let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
    println!(
        "swarm shard {index}: {ran} seeds run ({} failed) in {:?} (all shards so far: {} seeds, {} lone voters, {} minority-fault runs, {} writes and {} reads checked, {} crashes with {} in-flight operations landed and {} lost, {} pauses, {} fault stops, {} graceful shutdowns, {} committed membership changes ({} joint memberships committed, {} multi-voter changes started), {} removed ids added again, {} snapshot restores, {} healthy periods watched of which {} saw a leader commit)",
        failures.len(),
        started.elapsed(),
        n(&t.seeds),
        n(&t.lone_voter),
        n(&t.minority_mode),
        n(&t.writes),
        n(&t.reads),
        n(&t.crashes),
        n(&t.in_flight_landed),
        n(&t.in_flight_lost),
        n(&t.pauses),
        n(&t.fault_stops),
        n(&t.shutdowns),
        n(&t.membership_changes),
        n(&t.joint_memberships),
        n(&t.joint_changes_started),
        n(&t.readded),
        n(&t.restores),
        n(&t.healthy_periods),
        n(&t.live_periods)
    );
    assert!(failures.is_empty(), "swarm shard {index}: failing seeds {failures:?}");
}

#[test]
fn swarm_shard_0() {
    shard(0);
}

#[test]
fn swarm_shard_1() {
    shard(1);
}

#[test]
fn swarm_shard_2() {
    shard(2);
}

#[test]
fn swarm_shard_3() {
    shard(3);
}
