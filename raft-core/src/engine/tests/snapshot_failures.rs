//! Snapshot transfers that cannot succeed back off and are reported (issue 12, item 7).

use super::*;
use crate::types::{PeerReplication, SnapshotFailure};

/// Transfers the leader started to `to` (chunks at offset 0) since `since` in the action log.
fn transfers_started(c: &Cluster, leader: NodeId, to: NodeId, since: usize) -> usize {
    c.log[since..]
        .iter()
        .filter(|(id, a)| {
            *id == leader
                && matches!(a, Action::Send { to: t, request: RpcRequest::InstallSnapshot(r), .. }
                    if *t == to && r.offset == 0)
        })
        .count()
}

fn replication_of(c: &Cluster, leader: NodeId, peer: NodeId) -> PeerReplication {
    let replication = c.nodes[&leader].engine.replication();
    *replication.iter().find(|p| p.id == peer).unwrap()
}

#[test]
fn a_follower_without_a_snapshot_store_is_refused_with_back_off_and_reported() {
    let mut c = Cluster::with_configs(snapshot_configs(3));
    let leader = c.elect();
    let follower = *c.nodes.keys().find(|&&id| id != leader).unwrap();
    // The follower restarts without a snapshot store.
    let node = &c.nodes[&follower];
    let (hard_state, log) = (node.durable_hard_state, node.durable_log.clone());
    let durable = DurableState {
        hard_state,
        purged: LogId::default(),
        last: log.last().map_or(LogId::default(), Entry::log_id),
    };
    let config = snapshot_configs(3).remove(follower as usize - 1);
    c.restart(Engine::new(config, &durable, log.clone()), hard_state, log);
    c.isolated.insert(follower);
    for _ in 0..20 {
        c.propose(leader, b"0123456789");
    }
    c.tick(5);
    c.isolated.clear();

    // Before: refused with (0, false), the leader restarted the transfer at once, forever.
    let before = c.log.len();
    c.tick(200); // 2 s
    let attempts = transfers_started(&c, leader, follower, before);
    // Back-off of 1, 2, 4, 8, 16 heartbeats (5 ticks each): attempts at about 0, 5, 15, 35, 75
    // and 155 ticks.
    assert!((4..=8).contains(&attempts), "{attempts} transfers in 2 s");
    let peer = replication_of(&c, leader, follower);
    assert_eq!(peer.snapshot_error, Some(SnapshotFailure::Unsupported));
    assert!(peer.snapshot_failures >= 4, "{peer:?}");
    assert!(!peer.snapshot_in_progress, "abandoned between attempts");
    // The follower keeps hearing from the leader meanwhile: no election.
    assert_eq!(c.leaders(), vec![leader]);
    assert_eq!(c.nodes[&follower].engine.leader_id(), Some(leader));
}

#[test]
fn a_corrupt_stored_snapshot_backs_off_until_a_good_one_replaces_it() {
    let mut c = Cluster::with_configs(snapshot_configs(3));
    let (leader, follower) = lagging_follower(&mut c);
    // The leader's stored snapshot rots: every transfer fails the checksum at its last chunk.
    let snapshot = c.nodes.get_mut(&leader).unwrap().snapshot.as_mut().unwrap();
    snapshot.1[0] ^= 0xFF;
    let before = c.log.len();
    c.tick(200);
    let attempts = transfers_started(&c, leader, follower, before);
    assert!((4..=8).contains(&attempts), "{attempts} transfers in 2 s");
    let peer = replication_of(&c, leader, follower);
    assert_eq!(peer.snapshot_error, Some(SnapshotFailure::ChecksumMismatch));
    assert!(peer.snapshot_failures >= 4, "the data sent again is no progress: {peer:?}");

    // A new snapshot replaces the corrupt one: the next attempt succeeds and clears the error.
    for _ in 0..6 {
        c.propose(leader, b"fresh");
    }
    c.tick(400);
    let peer = replication_of(&c, leader, follower);
    assert_eq!((peer.snapshot_error, peer.snapshot_failures), (None, 0), "{peer:?}");
    assert_eq!(commands(&c.nodes[&follower].applied), commands(&c.nodes[&leader].applied));
}
