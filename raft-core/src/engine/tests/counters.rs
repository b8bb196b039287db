//! The engine's event counters (elections started and won), which the driver's metrics read.

use super::*;

#[test]
fn elections_are_counted_when_started_and_won() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    let won: u64 = c.nodes.values().map(|n| n.engine.counters().elections_won).sum();
    assert_eq!(won, 1, "one election won in the cluster");
    let counters = c.nodes[&leader].engine.counters();
    assert_eq!((counters.elections_started, counters.elections_won), (1, 1));
    assert!(counters.pre_votes_started >= 1, "PreVote is on by default");

    // An isolated follower runs PreVote rounds that fail: no election starts.
    let follower = *c.nodes.keys().find(|&&id| id != leader).unwrap();
    let before = c.nodes[&follower].engine.counters();
    c.isolated.insert(follower);
    c.tick(200);
    let after = c.nodes[&follower].engine.counters();
    assert!(after.pre_votes_started > before.pre_votes_started);
    assert_eq!(after.elections_started, before.elections_started);
    assert_eq!(after.elections_won, before.elections_won);
}
