//! Spreading the leaders of a sharded node's groups over the nodes (`kv-node --groups N`).
//!
//! Every group has a *preferred* leader: its voters in id order, index `group mod voters`
//! ([`preferred`]). With the same members in every group, as a sharded service bootstraps
//! them, N groups on M nodes give each node N / M groups to lead (rounded), whatever elections
//! decided. Each node runs a [`Balancer`]: every [`INTERVAL`] it looks at the groups it leads
//! and hands the leadership of at most one of them to that group's preferred node, and only if
//! that node is a caught-up voter the leader replicates to (in sync, no snapshot on its way,
//! at most [`MAX_LAG_ENTRIES`] behind the leader's log). So transfers are bounded (one at a
//! time per node, each waited for) and do not flap: a group led by its preferred node is never
//! moved, and a group whose transfer was tried is left alone for [`RETRY_AFTER`] (a preferred
//! node that keeps losing its leadership, e.g. behind a bad link, is not chased).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use raft_core::{GroupId, Node, NodeId, Role};
use tokio::time::Instant;
use tracing::{debug, info};

/// How often a node looks at the groups it leads.
pub const INTERVAL: Duration = Duration::from_millis(500);
/// How long a group is left alone after a transfer was tried.
pub const RETRY_AFTER: Duration = Duration::from_secs(10);
/// The most entries the preferred node may lag behind the leader's log to be handed the lead.
pub const MAX_LAG_ENTRIES: u64 = 64;

/// The preferred leader of `group` among `voters`: the `group mod len`-th in id order.
pub fn preferred(group: GroupId, voters: &BTreeSet<NodeId>) -> Option<NodeId> {
    let len = u64::try_from(voters.len()).ok().filter(|&len| len > 0)?;
    let index = usize::try_from(group % len).ok()?;
    voters.iter().nth(index).copied()
}

/// The leadership balancer of one node (see the module documentation).
#[derive(Debug)]
pub struct Balancer {
    groups: Vec<(GroupId, Node)>,
    tried: BTreeMap<GroupId, Instant>,
}

impl Balancer {
    /// A balancer for this node's `groups`.
    pub fn new(groups: Vec<(GroupId, Node)>) -> Self {
        Self { groups, tried: BTreeMap::new() }
    }

    /// Runs a round every `interval`, until the task is aborted.
    pub async fn run(mut self, interval: Duration) {
        loop {
            tokio::time::sleep(interval).await;
            self.round().await;
        }
    }

    /// One round: hands the leadership of at most one group this node leads to its preferred
    /// node, if that node is caught up; returns the group and the node it tried, if any.
    pub async fn round(&mut self) -> Option<(GroupId, NodeId)> {
        for (group, node) in &self.groups {
            let status = node.status();
            if status.role != Role::Leader {
                continue;
            }
            let membership = node.membership();
            if membership.is_joint() {
                continue;
            }
            let target = match preferred(*group, membership.voters()) {
                Some(target) if target != status.id => target,
                _ => continue,
            };
            if self.tried.get(group).is_some_and(|&at| at.elapsed() < RETRY_AFTER) {
                continue;
            }
            let replication = node.replication().await;
            let caught_up = replication.iter().any(|peer| {
                peer.id == target
                    && peer.voter
                    && peer.in_sync
                    && !peer.snapshot_in_progress
                    && peer.match_index.saturating_add(MAX_LAG_ENTRIES) >= status.last_log_index
            });
            if !caught_up {
                debug!(group, target, "preferred leader not caught up: leadership stays");
                continue;
            }
            self.tried.insert(*group, Instant::now());
            info!(group, from = status.id, to = target, "moving leadership to the preferred node");
            if let Err(error) = node.transfer_leadership(target).await {
                info!(group, to = target, %error, "leadership transfer failed");
            }
            return Some((*group, target));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preferred_leaders_spread_over_the_voters() {
        let voters: BTreeSet<NodeId> = [3, 1, 2].into_iter().collect();
        let leaders: Vec<_> = (0..6).filter_map(|g| preferred(g, &voters)).collect();
        assert_eq!(leaders, [1, 2, 3, 1, 2, 3]);
        assert_eq!(preferred(4, &BTreeSet::new()), None);
    }
}
