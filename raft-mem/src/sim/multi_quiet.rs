//! Quiescence as a [`MultiSimulation`](super::MultiSimulation) sees it: what its groups' nodes
//! did (quiesced, woke, and why as far as the simulation can tell), and the liveness duty of a
//! quiesced group that loses its leader's node: a new leader within the bound ARCHITECTURE.md
//! states ("Quiescence": `3 * quiesce_check_interval + 2 * election_timeout_max` plus a few
//! round trips after the last mark its members acknowledged).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use raft_core::{Config, GroupId, NodeId, Role, Status, Term};

use super::checker::Violation;
use super::disk::DiskFaults;

/// The longest one-way delay of a healthy simulated link (`LinkFaults::RELIABLE`), in ms.
const LINK_DELAY_MS_MAX: u64 = 5;

/// What a [`MultiSimulation`](super::MultiSimulation) saw of quiescence
/// (`Config::quiesce_idle`) over a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuiescenceStats {
    /// Phases in which some groups' clients stood still so that those groups could quiesce.
    pub idle_phases: u64,
    /// Times a node of a group entered quiescence.
    pub quiesce_events: u64,
    /// Group-milliseconds during which a group's leader was quiesced.
    pub quiesced_group_ms: u64,
    /// Wakes while the group's clients were running (a write or a read woke it, or traffic
    /// they caused).
    pub wakes_by_clients: u64,
    /// Wakes of an idle group while a fault was in effect (a crash, a partition, a pause, link
    /// faults).
    pub wakes_by_faults: u64,
    /// Wakes of an idle group with every node up and the network healthy (a fallback
    /// deadline, a restarted member's campaign, a lost mark).
    pub wakes_unprompted: u64,
    /// Quiesced groups whose leader's node was crashed, cut off or paused: each elected a new
    /// leader within the bound (checked).
    pub leaders_lost: u64,
    /// The longest time such a group took to elect a new leader, from the last mark its
    /// surviving members acknowledged, in ms.
    pub slowest_recovery_ms: u64,
    /// The bound it was checked against, in ms (0 before the first such loss).
    pub recovery_bound_ms: u64,
}

/// A quiesced group that lost its leader's node: it owes a new leader by `deadline`.
#[derive(Debug)]
struct Orphan {
    group: GroupId,
    /// The nodes the fault hit (the lost leader's among them).
    lost: BTreeSet<NodeId>,
    term: Term,
    /// The last mark a surviving member acknowledged.
    since: Duration,
    deadline: Duration,
}

/// What the simulation tracks of quiescence from one step to the next.
#[derive(Debug, Default)]
pub(super) struct QuietWatch {
    /// Each running node's quiescence in each group, as last observed.
    quiesced: BTreeMap<(GroupId, NodeId), bool>,
    last_at: Duration,
    /// Group-microseconds quiesced (the stats show milliseconds).
    quiesced_group_us: u128,
    /// A fault is in effect (set when one is injected, cleared when the cluster heals).
    pub(super) fault_active: bool,
    orphans: Vec<Orphan>,
    pub(super) stats: QuiescenceStats,
}

impl QuietWatch {
    /// Takes in what every running node of every group shows after a step (`idle`: whether a
    /// group's clients stand still), and checks the orphans' duty.
    pub(super) fn observe(
        &mut self,
        now: Duration,
        statuses: &[(GroupId, Status)],
        idle: impl Fn(GroupId) -> bool,
    ) -> Result<(), Violation> {
        let elapsed = now.saturating_sub(self.last_at);
        self.last_at = now;
        let mut quiet_leaders = BTreeSet::new();
        for (group, status) in statuses {
            let was = self.quiesced.insert((*group, status.id), status.quiesced).unwrap_or(false);
            if status.quiesced && !was {
                self.stats.quiesce_events += 1;
            } else if was && !status.quiesced {
                let cause = if !idle(*group) {
                    &mut self.stats.wakes_by_clients
                } else if self.fault_active {
                    &mut self.stats.wakes_by_faults
                } else {
                    &mut self.stats.wakes_unprompted
                };
                *cause += 1;
            }
            if status.quiesced && status.role == Role::Leader {
                quiet_leaders.insert(*group);
            }
        }
        self.quiesced_group_us += elapsed.as_micros() * quiet_leaders.len() as u128;
        self.stats.quiesced_group_ms = (self.quiesced_group_us / 1_000) as u64;
        self.check_orphans(now, statuses)
    }

    /// Node `id` crashed: its groups' nodes are gone (not woken).
    pub(super) fn crashed(&mut self, id: NodeId) {
        self.quiesced.retain(|&(_, node), _| node != id);
    }

    /// Whether every node of `group` in `statuses` (all of its nodes, running) is quiesced.
    pub(super) fn group_quiesced(statuses: &[(GroupId, Status)], group: GroupId) -> bool {
        let mut members = statuses.iter().filter(|(g, _)| *g == group).peekable();
        members.peek().is_some() && members.all(|(_, s)| s.quiesced)
    }

    /// Quiesced group `group`, led by `leader` in `term`, just lost the nodes `lost` (its
    /// leader's among them) at `now`: it must elect a leader of a higher term among the others
    /// within `bound` of `since`, the last mark they acknowledged.
    pub(super) fn orphaned(
        &mut self,
        group: GroupId,
        lost: BTreeSet<NodeId>,
        term: Term,
        since: Duration,
        bound: Duration,
    ) {
        self.stats.recovery_bound_ms = bound.as_millis() as u64;
        self.orphans.push(Orphan { group, lost, term, since, deadline: since + bound });
    }

    /// Whether some orphan still owes a leader, and the latest deadline among them.
    pub(super) fn orphans_deadline(&self) -> Option<Duration> {
        self.orphans.iter().map(|o| o.deadline).max()
    }

    /// Settles the orphans that found a new leader by their deadline; fails on one past it
    /// (found or not).
    pub(super) fn check_orphans(
        &mut self,
        now: Duration,
        statuses: &[(GroupId, Status)],
    ) -> Result<(), Violation> {
        let mut late = None;
        let stats = &mut self.stats;
        self.orphans.retain(|orphan| {
            let elected = statuses.iter().any(|(g, s)| {
                *g == orphan.group
                    && !orphan.lost.contains(&s.id)
                    && s.role == Role::Leader
                    && s.current_term > orphan.term
            });
            // Statuses are seen after every step and the clock jumps between steps: a leader
            // first seen past the deadline was elected late.
            if elected && now <= orphan.deadline {
                stats.leaders_lost += 1;
                let took = now.saturating_sub(orphan.since).as_millis() as u64;
                stats.slowest_recovery_ms = stats.slowest_recovery_ms.max(took);
                return false;
            }
            if now > orphan.deadline && late.is_none() {
                late = Some(Violation {
                    invariant: "a quiesced group that lost its leader elects a new one within 3 quiesce_check_interval + 2 election_timeout_max + a few round trips",
                    detail: format!(
                        "group {}: nodes {:?} (its leader of term {} among them) lost, last mark acknowledged at {:?}, no new leader by {:?}",
                        orphan.group, orphan.lost, orphan.term, orphan.since, orphan.deadline
                    ),
                });
            }
            true
        });
        late.map_or(Ok(()), Err)
    }
}

/// The bound within which a quiesced group whose leader vanished elects a new leader, from the
/// last mark its members acknowledged (ARCHITECTURE.md, "Quiescence"): the latest fallback
/// deadline (3 check intervals, plus one slot of the quiesced ticker's wake-up grid,
/// [`raft_core::quiesced_wake_grid`], which only ever delays a deadline), two election timeouts (the first PreVote wakes the other
/// members, which refuse it inside their lease; the next one wins), and a few round trips: four
/// over healthy links with a write on `disk` each, two of those writes stalled (the candidate's
/// and a voter's vote), and two ticks of timer granularity.
pub(super) fn lost_leader_bound(config: &Config, disk: &DiskFaults) -> Duration {
    let round_trip =
        Duration::from_millis(2 * LINK_DELAY_MS_MAX) + Duration::from_micros(disk.latency_us.1);
    3 * config.quiesce_check_interval
        + raft_core::quiesced_wake_grid(config.quiesce_check_interval)
        + 2 * config.election_timeout_max
        + 4 * round_trip
        + 2 * Duration::from_millis(disk.stall_ms.1)
        + 2 * config.tick_interval
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader(id: NodeId, term: Term) -> (GroupId, Status) {
        let status = Status {
            id,
            role: Role::Leader,
            current_term: term,
            leader_id: Some(id),
            commit_index: 0,
            applied_index: 0,
            last_log_index: 0,
            quiesced: false,
        };
        (1, status)
    }

    /// Group 1 lost its leader (node 1, term 3); its last mark was acknowledged at 1 s and the
    /// bound is 2 s.
    fn orphaned() -> QuietWatch {
        let mut watch = QuietWatch::default();
        let bound = Duration::from_secs(2);
        watch.orphaned(1, BTreeSet::from([1]), 3, Duration::from_secs(1), bound);
        watch
    }

    #[test]
    fn a_new_leader_within_the_bound_settles_the_loss() {
        let mut watch = orphaned();
        let at = Duration::from_millis(2_500);
        assert!(watch.check_orphans(at, &[]).is_ok(), "no leader yet, within the bound");
        assert!(watch.check_orphans(at, &[leader(1, 4)]).is_ok(), "the lost node is no heir");
        assert_eq!(watch.stats.leaders_lost, 0);
        assert!(watch.check_orphans(Duration::from_secs(3), &[leader(2, 4)]).is_ok());
        assert_eq!((watch.stats.leaders_lost, watch.stats.slowest_recovery_ms), (1, 2_000));
        assert_eq!(watch.orphans_deadline(), None);
    }

    #[test]
    fn a_new_leader_first_seen_past_the_bound_is_late() {
        // The simulation's clock jumps from step to step: the first step to show the new
        // leader may come after the deadline, and that election was late.
        let mut watch = orphaned();
        assert!(watch.check_orphans(Duration::from_millis(2_900), &[]).is_ok());
        let late = watch.check_orphans(Duration::from_millis(3_001), &[leader(2, 4)]);
        assert!(late.is_err(), "elected 2.001 s after the last mark, the bound is 2 s");
        assert_eq!(watch.stats.leaders_lost, 0);
    }
}
