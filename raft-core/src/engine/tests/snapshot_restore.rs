//! A follower restoring a snapshot while the leader sends it a newer one (review finding 3).

use super::*;

fn installs(c: &Cluster, id: NodeId, since: usize) -> Vec<LogId> {
    c.log[since..]
        .iter()
        .filter_map(|(n, a)| match a {
            Action::InstallSnapshot(meta) if *n == id => Some(meta.last_included),
            _ => None,
        })
        .collect()
}

/// Final chunks the leader sent `to` since `since`.
fn final_chunks(c: &Cluster, leader: NodeId, to: NodeId, since: usize) -> usize {
    c.log[since..]
        .iter()
        .filter(|(id, a)| {
            *id == leader
                && matches!(a, Action::Send { to: t, request: RpcRequest::InstallSnapshot(r), .. }
                    if *t == to && r.done)
        })
        .count()
}

/// While its state machine restores snapshot L, a follower does not take the last chunk of a
/// newer snapshot L2 (installing L2 would supersede the snapshot being read): it answers that it
/// holds everything before that chunk, keeps answering everything else, and the leader offers the
/// chunk again a heartbeat interval later, without a busy loop. Once the restore is done, L2 is
/// installed and restored. Before, the engine emitted the install at once and the driver held it,
/// and every later write and answer of the follower behind it.
#[test]
fn a_restoring_follower_takes_a_newer_snapshot_only_after_the_restore() {
    let mut c = Cluster::with_configs(snapshot_configs(3));
    let (leader, follower) = lagging_follower(&mut c);
    c.held_restores.insert(follower, Vec::new());
    c.tick(20);
    let first = match c.held_restores[&follower].first() {
        Some(Action::Restore(meta)) => meta.last_included,
        other => panic!("restoring L: {other:?}"),
    };
    assert_eq!(c.nodes[&follower].engine.snapshot_meta().map(|m| m.last_included), Some(first));

    // The leader moves on and compacts past what the follower holds, then sends it L2.
    c.isolated.insert(follower);
    for _ in 0..20 {
        c.propose(leader, b"0123456789");
    }
    c.tick(5);
    assert!(c.nodes[&leader].engine.log.compacted().index > first.index);
    c.isolated.clear();
    let before = c.log.len();
    c.tick(100); // 1 s: 20 heartbeat intervals
    assert_eq!(installs(&c, follower, before), vec![], "no install while restoring L");
    let offered = final_chunks(&c, leader, follower, before);
    assert!((2..=25).contains(&offered), "the last chunk offered once per heartbeat: {offered}");
    assert_eq!(c.leaders(), vec![leader]);
    assert_eq!(c.nodes[&follower].engine.leader_id(), Some(leader));
    assert_eq!(
        c.nodes[&follower].engine.snapshot_meta().map(|m| m.last_included),
        Some(first),
        "L2 is not the latest snapshot before it is installed"
    );

    // The restore ends: L2 goes in, and the follower catches up.
    let held = c.held_restores.remove(&follower).unwrap();
    c.run(follower, held);
    c.propose(leader, b"after");
    c.tick(20);
    let installed = installs(&c, follower, before);
    assert_eq!(installed.len(), 1, "{installed:?}");
    assert!(installed[0].index > first.index);
    assert_eq!(commands(&c.nodes[&follower].applied), commands(&c.nodes[&leader].applied));
}
