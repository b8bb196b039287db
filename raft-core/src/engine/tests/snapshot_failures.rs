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
    c.restart(config.engine(&durable, log.clone()), hard_state, log);
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

/// Loses every chunk of the leader's current snapshot sent before the next call.
fn lose_every_chunk(c: &mut Cluster, leader: NodeId) {
    let size = c.nodes[&leader].engine.snapshot_meta().unwrap().size;
    let chunk = c.nodes[&leader].engine.config.snapshot_chunk_bytes;
    c.drop_chunks.extend((0..size).step_by(chunk as usize));
}

/// A cluster of `snapshot_configs` changed by `tune`.
fn tuned(tune: impl Fn(&mut Config)) -> Cluster {
    let mut configs = snapshot_configs(3);
    configs.iter_mut().for_each(|c| tune(c));
    Cluster::with_configs(configs)
}

/// Review finding 5a: one lost window counts as one failure, not one per chunk (the chunks after
/// the first were written off by its rewind). A window of 8 lost chunks made a streak of 8: a
/// back-off of 2^7 heartbeats.
#[test]
fn a_lost_window_is_one_failure() {
    let mut c = tuned(|config| {
        config.snapshot_chunk_bytes = 80;
        config.snapshot_max_inflight_chunks = 8;
    });
    let (leader, follower) = lagging_follower(&mut c);
    let size = c.nodes[&leader].engine.snapshot_meta().unwrap().size;
    assert!((3..=8).contains(&size.div_ceil(80)), "a window holds the snapshot: {size} bytes");
    // The transfer started while the follower was cut off and failed already: the next flight,
    // after the back-off, is lost whole.
    let failed = replication_of(&c, leader, follower).snapshot_failures;
    let before = c.log.len();
    while transfers_started(&c, leader, follower, before) == 0 {
        lose_every_chunk(&mut c, leader);
        c.tick(1);
    }
    let peer = replication_of(&c, leader, follower);
    assert_eq!(peer.snapshot_error, Some(SnapshotFailure::Unreachable));
    assert!(peer.snapshot_failures <= failed + 1, "{peer:?}, {failed} before");
}

/// Review finding 5b: while a paused transfer backs off, the follower still hears from the
/// leader (heartbeats), so it neither forgets its leader (PreVote) nor deposes it (no PreVote).
/// Before, nothing was sent during the back-off: after four failures it outlasted the election
/// timeout.
#[test]
fn a_follower_hears_from_the_leader_while_its_transfer_backs_off() {
    for pre_vote in [true, false] {
        let mut c = tuned(|config| config.pre_vote = pre_vote);
        let (leader, follower) = lagging_follower(&mut c);
        let term = c.nodes[&leader].engine.hard_state().current_term;
        for _ in 0..200 {
            lose_every_chunk(&mut c, leader);
            c.tick(1);
            let engine = &c.nodes[&follower].engine;
            assert_eq!(
                (engine.role(), engine.leader_id(), engine.hard_state().current_term),
                (Role::Follower, Some(leader), term),
                "pre_vote: {pre_vote}"
            );
        }
        let peer = replication_of(&c, leader, follower);
        assert!(peer.snapshot_failures >= 4, "the back-off outlasts an election timeout: {peer:?}");
        assert_eq!(c.leaders(), vec![leader]);
    }
}

/// Review finding 5c: a paused transfer has nothing in flight, so it cannot time out during its
/// own back-off. With a long heartbeat interval the back-off outlasted
/// `snapshot_transfer_timeout` and counted a `TimedOut` failure without any attempt.
#[test]
fn a_paused_transfer_does_not_time_out_during_its_back_off() {
    let mut c = tuned(|config| {
        config.heartbeat_interval = std::time::Duration::from_millis(100);
        config.snapshot_transfer_timeout = std::time::Duration::from_millis(150);
    });
    let (leader, follower) = lagging_follower(&mut c);
    let before = c.log.len();
    let failed = replication_of(&c, leader, follower).snapshot_failures as usize;
    for _ in 0..150 {
        lose_every_chunk(&mut c, leader);
        c.tick(1);
    }
    let attempts = transfers_started(&c, leader, follower, before);
    let peer = replication_of(&c, leader, follower);
    assert_eq!(peer.snapshot_error, Some(SnapshotFailure::Unreachable), "{peer:?}");
    let failures = peer.snapshot_failures as usize - failed;
    assert!(failures <= attempts, "{failures} failures in {attempts} attempts: {peer:?}");
}
