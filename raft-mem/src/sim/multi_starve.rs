//! The starvation oracle of a [`MultiSimulation`](super::MultiSimulation) (issue 21 item 5),
//! checked after every step in virtual time: while the leader of a light group (one not
//! loaded on purpose, see [`MultiSimConfig::hot_groups`](super::MultiSimConfig::hot_groups))
//! and one of its followers are both sound (running, not paused, not hit by the fault in
//! force), the leader, awake (not quiesced), sends that follower an AppendEntries or an
//! InstallSnapshot at least every [`starvation_bound`]. The observable is the leader's requests
//! as the network carries them (the `WireOracle` notes the virtual time each leaves): a group
//! whose steps or sends another group holds back (a host loop that does not step it, a
//! transport that queues it behind another group's stream) falls silent there first, and
//! it does not depend on the clients' pace.
//!
//! The window of a (leader, follower) pair opens at the latest of: the leader first seen
//! leading awake in its term, and each of the two nodes becoming sound plus [`SETTLE`] (a
//! request sent before the window, to a node down or cut off, resolves within the RPC
//! timeout; until then it may hold a slot of the leader's window to that follower).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use raft_core::{Config, GroupId, NodeId, Role, Status, Term};

use super::checker::Violation;
use super::wire_oracle::WireOracle;

/// How long after a node becomes sound its pairs' windows open: the RPC timeout of the
/// simulated network (every request in flight before then has resolved by then).
pub(super) const SETTLE: Duration = Duration::from_secs(2);

/// The most an awake leader of a light group may go without a request to a sound follower,
/// with the settings of `config`: one heartbeat interval plus two ticks. A leader counts, per
/// follower, the ticks since it last sent it anything, and at `heartbeat_interval` worth of
/// ticks sends an AppendEntries (entries, or an empty one), whatever is outstanding: answers
/// are not waited for, a probe is retried with the heartbeat (`tick_leader` and
/// `replicate_to` in `raft-core/src/engine/leader.rs`; only a follower below the compaction
/// point waits on a snapshot transfer's back-off, and light groups never compact: they write
/// a few thousand entries, 10,000 apart). One tick covers a send between two ticks (the count
/// starts at the next), one more the timers' jitter (at most 100 us a sleep). The link's
/// delay, disks and stalls do not enter: the gap is between two sends, both at the leader.
/// Virtual time: steps take none, so a group stepped or sent late by its host (its turn in a
/// host loop, a transport that queues it behind another group) shows as it is.
pub(super) fn starvation_bound(config: &Config) -> Duration {
    config.heartbeat_interval + 2 * config.tick_interval
}

/// What the starvation oracle saw over a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StarvationStats {
    /// The groups loaded on purpose (many concurrent writers of large entries, snapshots):
    /// the oracle checks the others.
    pub hot_groups: Vec<GroupId>,
    /// The writes of the hot groups' load writers acknowledged (not in the histories).
    pub hot_writes: u64,
    /// InstallSnapshot requests sent (all groups).
    pub snapshot_requests: u64,
    /// Gaps between two requests of a light group's leader to a sound follower, checked.
    pub gaps_checked: u64,
    /// The longest such gap, or open silence, seen inside a window, in ms.
    pub longest_gap_ms: u64,
    /// The bound they were checked against, in ms.
    pub bound_ms: u64,
}

/// What the starvation oracle tracks from one step to the next.
#[derive(Debug, Default)]
pub(super) struct StarveWatch {
    bound: Duration,
    hot: BTreeSet<GroupId>,
    /// Since when each sound node has been sound.
    sound_since: BTreeMap<NodeId, Duration>,
    /// Each awake leader of each group: its term and since when it leads awake in it.
    leading: BTreeMap<(GroupId, NodeId), (Term, Duration)>,
    /// The last request of each (group, leader, follower) whose gap was counted.
    counted: BTreeMap<(GroupId, NodeId, NodeId), Duration>,
    pub(super) stats: StarvationStats,
}

impl StarveWatch {
    /// A watch with `bound`, checking every group but `hot`.
    pub(super) fn new(bound: Duration, hot: BTreeSet<GroupId>) -> Self {
        let stats = StarvationStats {
            hot_groups: hot.iter().copied().collect(),
            bound_ms: bound.as_millis() as u64,
            ..StarvationStats::default()
        };
        Self { bound, hot, stats, ..Self::default() }
    }

    /// Takes in what every running node of every group shows after a step at `now` (`sound`:
    /// the nodes running, not paused and not hit by the fault in force; `nodes`: all of them)
    /// and checks every window open.
    pub(super) fn observe(
        &mut self,
        now: Duration,
        nodes: &[NodeId],
        sound: &BTreeSet<NodeId>,
        statuses: &[(GroupId, Status)],
        oracle: &WireOracle,
    ) -> Result<(), Violation> {
        self.sound_since.retain(|id, _| sound.contains(id));
        for &id in sound {
            self.sound_since.entry(id).or_insert(now);
        }
        let awake: BTreeMap<(GroupId, NodeId), Term> = statuses
            .iter()
            .filter(|(_, s)| s.role == Role::Leader && !s.quiesced)
            .map(|(g, s)| ((*g, s.id), s.current_term))
            .collect();
        self.leading.retain(|key, (term, _)| awake.get(key) == Some(term));
        for (&key, &term) in &awake {
            self.leading.entry(key).or_insert((term, now));
        }
        let leading: Vec<_> = self.leading.iter().map(|(&k, &v)| (k, v)).collect();
        for ((group, leader), (term, since)) in leading {
            if self.hot.contains(&group) {
                continue;
            }
            let Some(&leader_sound) = self.sound_since.get(&leader) else { continue };
            for &follower in nodes.iter().filter(|&&f| f != leader) {
                let Some(&follower_sound) = self.sound_since.get(&follower) else { continue };
                let opened = since.max(leader_sound + SETTLE).max(follower_sound + SETTLE);
                if now < opened {
                    continue;
                }
                let key = (group, leader, follower);
                let sent = oracle.leader_requests(group, leader, follower);
                let sent = sent.filter(|r| r.term == term && r.last >= opened);
                let mut last_sent = opened;
                if let Some(sent) = sent {
                    last_sent = sent.last;
                    let fresh = self.counted.get(&key).is_none_or(|&c| c < sent.last);
                    if let (true, Some(previous)) = (fresh, sent.previous) {
                        self.counted.insert(key, sent.last);
                        if previous >= opened {
                            self.stats.gaps_checked += 1;
                            self.gap(sent.last - previous, (key, term), previous)?;
                        }
                    }
                }
                self.gap(now - last_sent, (key, term), last_sent)?;
            }
        }
        Ok(())
    }

    /// Notes a gap of `gap` in the requests of `key`'s leader in `term` since `from`; fails
    /// past the bound.
    fn gap(
        &mut self,
        gap: Duration,
        ((group, leader, follower), term): ((GroupId, NodeId, NodeId), Term),
        from: Duration,
    ) -> Result<(), Violation> {
        self.stats.longest_gap_ms = self.stats.longest_gap_ms.max(gap.as_millis() as u64);
        if gap <= self.bound {
            return Ok(());
        }
        Err(Violation {
            invariant: "no group is starved: a light group's awake leader sends each sound follower a request within the starvation bound",
            detail: format!(
                "group {group}: leader {leader} (term {term}) sent node {follower} nothing for {gap:?} from {from:?} (bound {:?}, hot groups {:?})",
                self.bound, self.hot
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_bound_is_a_heartbeat_and_two_ticks() {
        let config = Config::new(1);
        assert_eq!(starvation_bound(&config), Duration::from_millis(50 + 2 * 10));
    }
}
