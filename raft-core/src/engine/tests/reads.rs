//! ReadIndex and leadership transfer, driven by the synchronous test cluster.

use super::*;

fn append_entries_sent(c: &Cluster, from: NodeId, since: usize) -> usize {
    c.log[since..]
        .iter()
        .filter(|(id, a)| {
            *id == from && matches!(a, Action::Send { request: RpcRequest::AppendEntries(_), .. })
        })
        .count()
}

fn follower_of(c: &Cluster, leader: NodeId) -> NodeId {
    *c.nodes.keys().find(|&&id| id != leader).unwrap()
}

#[test]
fn leader_read_waits_for_a_quorum_round_and_reads_share_it() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    c.propose(leader, b"a");
    let commit = c.nodes[&leader].engine.commit_index();

    // Cut off both followers: the round gets no answer, so no read is confirmed.
    let followers: Vec<NodeId> = c.nodes.keys().copied().filter(|&id| id != leader).collect();
    c.isolated.extend(followers.iter().copied());
    c.engine(leader).read_index(ReadId(1));
    c.settle();
    assert!(c.reads.is_empty(), "no read is confirmed without a quorum");
    c.isolated.clear();

    // Three reads in one step share one round: one heartbeat per follower.
    let before = c.log.len();
    for id in 2..5 {
        c.engine(leader).read_index(ReadId(id));
    }
    c.settle();
    assert_eq!(append_entries_sent(&c, leader, before), 2, "one round for three reads");
    let answered: Vec<(ReadId, Result<LogIndex, ReadIndexRefusal>)> =
        c.reads.iter().map(|&(_, id, result)| (id, result)).collect();
    // The first read is confirmed too: a later round covers every earlier read.
    let expected: Vec<_> = (1..5).map(|id| (ReadId(id), Ok(commit))).collect();
    assert_eq!(answered, expected);
}

#[test]
fn follower_read_asks_the_leader() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    c.propose(leader, b"a");
    let commit = c.nodes[&leader].engine.commit_index();
    let follower = follower_of(&c, leader);
    let before = c.log.len();
    c.engine(follower).read_index(ReadId(6));
    c.engine(follower).read_index(ReadId(7));
    c.settle();
    assert_eq!(c.reads, vec![(follower, ReadId(6), Ok(commit)), (follower, ReadId(7), Ok(commit))]);
    let rpcs = c.log[before..]
        .iter()
        .filter(|(_, a)| matches!(a, Action::Send { request: RpcRequest::ReadIndex(_), .. }))
        .count();
    assert_eq!(rpcs, 1, "reads of one step share one ReadIndex RPC");
    c.reads.clear();

    // A follower that cannot reach the leader gets an error, not silence.
    c.isolated.insert(leader);
    c.engine(follower).read_index(ReadId(8));
    c.settle();
    assert_eq!(c.reads, vec![(follower, ReadId(8), Err(ReadIndexRefusal::Unreachable))]);
}

#[test]
fn a_deposed_leader_fails_its_pending_reads() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    c.isolated.insert(leader);
    c.engine(leader).read_index(ReadId(1));
    c.settle();
    for _ in 0..200 {
        c.tick(1);
        if c.nodes[&leader].engine.role() != Role::Leader {
            break;
        }
    }
    assert_eq!(c.reads, vec![(leader, ReadId(1), Err(ReadIndexRefusal::LeadershipLost))]);
}

#[test]
fn a_new_leader_answers_reads_only_after_committing_in_its_term() {
    let mut c = Cluster::new(1);
    c.engine(1).tick(); // not yet leader: refused
    c.engine(1).read_index(ReadId(1));
    c.drain(1);
    assert_eq!(c.reads, vec![(1, ReadId(1), Err(ReadIndexRefusal::NotLeader(None)))]);
    let leader = c.elect();
    c.engine(leader).read_index(ReadId(2));
    c.settle();
    let commit = c.nodes[&leader].engine.commit_index();
    assert_eq!(commit, 1, "the blank entry of the leader's term");
    assert_eq!(c.reads[1], (1, ReadId(2), Ok(1)));
}

#[test]
fn leadership_transfer_hands_over_and_refuses_proposals_meanwhile() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    let target = follower_of(&c, leader);
    c.isolated.insert(target);
    c.propose(leader, b"a"); // the target misses it and must be caught up first
    c.isolated.clear();
    c.engine(leader).transfer_leadership(target).unwrap();
    assert_eq!(
        c.engine(leader).propose(Bytes::from_static(b"b")),
        Err(ProposeRefusal::TransferInProgress)
    );
    assert_eq!(
        c.engine(leader).transfer_leadership(leader + 10),
        Err(TransferRefusal::InProgress(target))
    );
    c.tick(5);
    assert_eq!(c.leaders(), vec![target]);
    assert_eq!(c.nodes[&leader].engine.leader_id(), Some(target));
    assert_eq!(commands(&c.nodes[&target].applied), vec![Bytes::from_static(b"a")]);
}

#[test]
fn leadership_transfer_times_out_and_the_leader_takes_proposals_again() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    let target = follower_of(&c, leader);
    assert_eq!(c.engine(leader).transfer_leadership(99), Err(TransferRefusal::NotVoter(99)));
    c.isolated.insert(target);
    c.engine(leader).transfer_leadership(target).unwrap();
    c.tick(50);
    assert_eq!(c.nodes[&leader].engine.transfer_target(), Some(target));
    c.tick(60); // past the 1 s default timeout (10 ms ticks)
    assert_eq!(c.nodes[&leader].engine.transfer_target(), None);
    assert_eq!(c.leaders(), vec![leader]);
    c.propose(leader, b"after");
}

fn lease_cluster() -> Cluster {
    let configs = (1..=3)
        .map(|id| {
            let mut c = config(id, 3);
            c.lease_reads = true;
            c
        })
        .collect();
    Cluster::with_configs(configs)
}

#[test]
fn lease_reads_skip_the_round_while_the_lease_holds_and_expire_without_a_quorum() {
    let mut c = lease_cluster();
    let leader = c.elect();
    c.propose(leader, b"a");
    c.tick(6); // a heartbeat round is acknowledged
    let commit = c.nodes[&leader].engine.commit_index();
    let before = c.log.len();
    c.engine(leader).read_index(ReadId(1));
    c.drain(leader);
    assert_eq!(c.reads, vec![(leader, ReadId(1), Ok(commit))], "answered at once");
    assert_eq!(append_entries_sent(&c, leader, before), 0, "without a round");

    // Cut off the followers: once the lease (election timeout minus drift) runs out, reads
    // need a round again and get no answer.
    let followers: Vec<NodeId> = c.nodes.keys().copied().filter(|&id| id != leader).collect();
    c.isolated.extend(followers.iter().copied());
    c.tick(20); // 200 ms: past 300 ms - 100 ms of drift margin since the last acknowledged round
    c.engine(leader).read_index(ReadId(2));
    c.settle();
    assert_eq!(c.reads.len(), 1, "no lease, no quorum: no answer");
}

#[test]
fn no_lease_reads_after_a_transfer_started() {
    let mut c = lease_cluster();
    let leader = c.elect();
    let target = follower_of(&c, leader);
    c.tick(6);
    c.engine(leader).read_index(ReadId(0));
    c.drain(leader);
    assert_eq!(c.reads.len(), 1, "a lease read before the transfer");
    c.engine(leader).transfer_leadership(target).unwrap();
    let actions = c.engine(leader).take_actions();
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Send { request: RpcRequest::TimeoutNow(_), .. })),
        "the target is up to date: TimeoutNow goes out"
    );
    // The TimeoutNow is lost (those actions were not carried out) and the transfer times out;
    // it could still arrive late and make voters break their promise: no lease this term.
    c.isolated.insert(target);
    c.tick(110);
    assert_eq!(c.nodes[&leader].engine.transfer_target(), None);
    assert_eq!(c.leaders(), vec![leader]);
    c.engine(leader).read_index(ReadId(1));
    let actions = c.engine(leader).take_actions();
    assert!(
        !actions.iter().any(|a| matches!(a, Action::ReadIndexReady { .. })),
        "the lease is void once TimeoutNow was sent"
    );
    c.run(leader, actions);
    c.settle();
    assert_eq!(c.reads.len(), 2, "answered after a quorum round");
}

#[test]
fn a_restarted_node_refuses_votes_for_an_election_timeout_with_lease_reads() {
    let mut config = config(1, 3);
    config.lease_reads = true;
    let mut engine = config.engine(&DurableState::default(), Vec::new());
    let request = RequestVoteRequest {
        term: 5,
        candidate_id: 2,
        last_log_id: LogId::new(4, 10),
        pre_vote: false,
        leadership_transfer: false,
    };
    engine.on_request(RpcRequest::RequestVote(request.clone()), ReplyId(1));
    let granted = |actions: Vec<Action>| {
        actions.iter().any(|a| {
            matches!(a, Action::Respond { response: RpcResponse::RequestVote(r), .. } if r.vote_granted)
        })
    };
    assert!(!granted(engine.take_actions()), "refused during the boot lease");
    for _ in 0..30 {
        engine.tick();
    }
    engine.take_actions();
    engine.on_request(RpcRequest::RequestVote(request), ReplyId(2));
    assert!(granted(engine.take_actions()), "granted after an election timeout");
}

fn heartbeats_to(actions: &[(NodeId, Action)], from: NodeId, to: NodeId) -> usize {
    actions
        .iter()
        .filter(|(id, a)| {
            *id == from
                && matches!(a, Action::Send { to: t, request: RpcRequest::AppendEntries(r), .. }
                    if *t == to && r.entries.is_empty())
        })
        .count()
}

/// Issue 12, item 5: every step that registered a read used to send a heartbeat to every voter;
/// on a slow link they filled the peer's queue and dropped it to Probe.
#[test]
fn read_rounds_keep_at_most_one_heartbeat_in_flight_per_peer() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    c.propose(leader, b"a");
    c.tick(10);
    let commit = c.nodes[&leader].engine.commit_index();
    let followers: Vec<NodeId> = c.nodes.keys().copied().filter(|&id| id != leader).collect();

    // Slow followers: nothing the leader sends is delivered while 100 steps register reads.
    let mut held = Vec::new();
    for i in 0..100 {
        c.engine(leader).read_index(ReadId(i));
        held.extend(c.engine(leader).take_actions().into_iter().map(|a| (leader, a)));
    }
    for &f in &followers {
        assert_eq!(heartbeats_to(&held, leader, f), 1, "one heartbeat in flight to {f}");
    }
    assert!(c.reads.is_empty());

    // The heartbeats arrive; their answers confirm the first read, and the next step sends one
    // more heartbeat carrying the newest round, which confirms every other read.
    let before = c.log.len();
    c.run(leader, held.into_iter().map(|(_, a)| a).collect());
    c.settle();
    for &f in &followers {
        assert_eq!(heartbeats_to(&c.log[before..], leader, f), 2, "one follow-up to {f}");
    }
    let expected: Vec<_> = (0..100).map(|i| (leader, ReadId(i), Ok(commit))).collect();
    assert_eq!(c.reads, expected);
}

/// Issue 12, item 3: the lease used to be a number of the leader's ticks, so a leader whose
/// ticks stopped (paused process, stalled ticker, full input queue) while real time went on
/// kept answering reads from a lease the other nodes no longer honoured.
#[test]
fn a_leader_whose_ticks_stopped_while_time_passed_serves_no_lease_read() {
    let mut c = lease_cluster();
    let leader = c.elect();
    c.propose(leader, b"a");
    c.tick(6);
    c.engine(leader).read_index(ReadId(1));
    c.drain(leader);
    assert_eq!(c.reads.len(), 1, "a lease read");

    // The leader is paused for a second: no tick, but its clock moved on when it resumed.
    let resumed = c.now + std::time::Duration::from_secs(1);
    c.engine(leader).set_now(resumed);
    c.engine(leader).read_index(ReadId(2));
    let actions = c.engine(leader).take_actions();
    assert!(
        !actions.iter().any(|a| matches!(a, Action::ReadIndexReady { .. })),
        "not answered from the expired lease: {actions:?}"
    );
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Send { request: RpcRequest::AppendEntries(_), .. })),
        "a quorum round instead"
    );
    c.run(leader, actions);
    c.settle();
    assert_eq!(c.reads.len(), 2, "answered once a quorum confirmed the leader");
}

#[test]
fn the_lease_ends_by_the_clock_an_election_timeout_minus_tick_and_drift_after_its_round() {
    let mut c = lease_cluster();
    let leader = c.elect();
    c.propose(leader, b"a");
    c.tick(6);
    // A round stamped at `start` (any earlier lease long expired), acknowledged by both followers.
    let start = c.now + std::time::Duration::from_secs(1);
    for id in 1..=3 {
        c.engine(id).set_now(start);
    }
    c.engine(leader).tick();
    c.propose(leader, b"b");
    let followers: Vec<NodeId> = c.nodes.keys().copied().filter(|&id| id != leader).collect();
    c.isolated.extend(followers.iter().copied());
    // 300 ms election timeout - 10 ms tick - 100 ms drift margin.
    let span = std::time::Duration::from_millis(190);
    let read_at = |c: &mut Cluster, at, id| {
        c.engine(leader).set_now(at);
        c.engine(leader).read_index(ReadId(id));
        c.engine(leader).take_actions().iter().any(|a| matches!(a, Action::ReadIndexReady { .. }))
    };
    let just_before = start + span - std::time::Duration::from_millis(1);
    assert!(read_at(&mut c, just_before, 1), "answered from the lease until it ends");
    assert!(!read_at(&mut c, start + span, 2), "not once it ended");
}

/// Review finding 2: the lease assumed every voter keeps its promise as long as the leader's own
/// election timeout. After a rolling change of timeouts (leader 1000 ms, voters 200 ms), an old
/// leader cut off from the voters served a stale read while they had elected another leader and
/// committed a write. The lease now rests on what each voter promised in its answers.
#[test]
fn the_lease_is_what_the_voters_promised_not_the_leaders_own_timeout() {
    let configs = (1..=3)
        .map(|id| {
            let mut c = config(id, 3);
            c.lease_reads = true;
            if id == 1 {
                c.election_timeout_min = std::time::Duration::from_millis(1000);
                c.election_timeout_max = std::time::Duration::from_millis(2000);
            } else {
                c.election_timeout_min = std::time::Duration::from_millis(200);
                c.election_timeout_max = std::time::Duration::from_millis(400);
                c.max_clock_drift = std::time::Duration::from_millis(50);
            }
            c
        })
        .collect();
    let mut c = Cluster::with_configs(configs);
    let first = c.elect();
    if first != 1 {
        c.engine(first).transfer_leadership(1).unwrap();
        for _ in 0..100 {
            c.tick(1);
            if c.leaders() == vec![1] {
                break;
            }
        }
    }
    assert_eq!(c.leaders(), vec![1]);
    c.propose(1, b"a");
    c.tick(2); // a round acknowledged by both voters
    c.engine(1).read_index(ReadId(1));
    c.drain(1);
    let old_commit = c.nodes[&1].engine.commit_index();
    assert_eq!(c.reads, vec![(1, ReadId(1), Ok(old_commit))], "a lease read while in contact");
    let lease_start = c.now;

    // Node 1 is cut off; the voters stop honouring it after their own 200 ms, elect a leader and
    // commit a write, well within the 890 ms lease node 1 computed from its own timeout.
    c.isolated.insert(1);
    let mut new_commit = None;
    for _ in 0..60 {
        c.tick(1);
        if let Some(&leader) = c.leaders().iter().find(|&&id| id != 1) {
            let index = c.propose(leader, b"b").index;
            if c.nodes[&leader].engine.commit_index() >= index {
                new_commit = Some(index);
                break;
            }
        }
    }
    let new_commit = new_commit.expect("the voters elect a leader and commit");
    assert!(c.now < lease_start + std::time::Duration::from_millis(890));
    assert_eq!(c.nodes[&1].engine.role(), Role::Leader, "node 1 still believes it leads");
    c.engine(1).read_index(ReadId(2));
    c.drain(1);
    let stale =
        c.reads.iter().any(|&(_, id, r)| id == ReadId(2) && r.is_ok_and(|i| i < new_commit));
    assert!(!stale, "a stale read: {:?} while {new_commit} is committed", c.reads);
}

/// Review finding 8: an answer in the leader's term that refuses its AppendEntries (a malformed
/// request, or one that would overwrite committed entries) acknowledges nothing: it confirms no
/// read round and extends no lease, whatever it claims to promise.
#[test]
fn a_refusal_confirms_no_read_and_extends_no_lease() {
    let mut c = lease_cluster();
    let leader = c.elect();
    c.propose(leader, b"a");
    let followers: Vec<NodeId> = c.nodes.keys().copied().filter(|&id| id != leader).collect();
    c.isolated.extend(followers.iter().copied());
    c.tick(30); // the lease ran out
    c.engine(leader).read_index(ReadId(1));
    let actions = c.engine(leader).take_actions();
    let term = c.nodes[&leader].engine.hard_state().current_term;
    let refusal = RpcResponse::AppendEntries(AppendEntriesResponse {
        term,
        match_index: None,
        conflict: None,
        lease_promise_ms: 290,
        quiesced: false,
    });
    let mut refused = 0;
    for action in &actions {
        if let Action::Send { to, request: request @ RpcRequest::AppendEntries(_), .. } = action {
            c.engine(leader).on_response(*to, SentRequest::of(request), refusal.clone());
            refused += 1;
        }
    }
    assert_eq!(refused, 2, "the read's round went to both followers: {actions:?}");
    c.engine(leader).read_index(ReadId(2));
    let actions = c.engine(leader).take_actions();
    assert!(
        !actions.iter().any(|a| matches!(a, Action::ReadIndexReady { .. })),
        "a read confirmed by refusals: {actions:?}"
    );
}

/// A voter that would not keep its promise across a restart (lease reads off: no refusal of
/// votes after starting) promises nothing, so a leader whose voters all run so has no lease and
/// confirms every read with a round.
#[test]
fn voters_without_lease_reads_give_no_lease() {
    let configs = (1..=3)
        .map(|id| {
            let mut c = config(id, 3);
            c.lease_reads = id == 1;
            c
        })
        .collect();
    let mut c = Cluster::with_configs(configs);
    let first = c.elect();
    if first != 1 {
        c.engine(first).transfer_leadership(1).unwrap();
        c.tick(20);
    }
    assert_eq!(c.leaders(), vec![1]);
    c.propose(1, b"a");
    c.tick(6);
    let before = c.log.len();
    c.engine(1).read_index(ReadId(1));
    let actions = c.engine(1).take_actions();
    assert!(!actions.iter().any(|a| matches!(a, Action::ReadIndexReady { .. })), "no lease");
    c.run(1, actions);
    c.settle();
    assert!(append_entries_sent(&c, 1, before) > 0, "a round instead");
    assert_eq!(c.reads.len(), 1, "answered after the round");
}

fn tick_without_clock(c: &mut Cluster, ids: &[NodeId], n: usize) {
    for _ in 0..n {
        for &id in ids {
            c.engine(id).tick();
        }
        c.settle();
    }
}

/// Guards `lease_holds` without a clock: an engine user that never calls `set_now` gets no lease
/// reads. Found by review 39 (raft-core engine): such a leader's lease never ended, so a leader
/// paused while the others elected a new leader and committed served a stale read on resuming.
#[test]
fn without_a_clock_the_lease_never_ends() {
    let mut c = lease_cluster();
    let mut leader = None;
    for _ in 0..200 {
        tick_without_clock(&mut c, &[1, 2, 3], 1);
        if let [l] = c.leaders()[..] {
            leader = Some(l);
            break;
        }
    }
    let leader = leader.expect("a leader");
    c.propose(leader, b"a");
    tick_without_clock(&mut c, &[1, 2, 3], 6);
    let old_commit = c.nodes[&leader].engine.commit_index();
    // The leader is paused (no ticks, no inputs); the others elect a new leader and commit.
    c.isolated.insert(leader);
    let others: Vec<NodeId> = (1..=3).filter(|&id| id != leader).collect();
    tick_without_clock(&mut c, &others, 200);
    let new_leader = c.leaders()[0];
    c.propose(new_leader, b"b");
    tick_without_clock(&mut c, &others, 3);
    let new_commit = c.nodes[&new_leader].engine.commit_index();
    assert!(new_commit > old_commit);
    // The old leader resumes and gets a read.
    c.engine(leader).read_index(ReadId(9));
    let actions = c.engine(leader).take_actions();
    let stale = actions.iter().any(
        |a| matches!(a, Action::ReadIndexReady { id: ReadId(9), result: Ok(i) } if *i < new_commit),
    );
    assert!(!stale, "stale lease read at {old_commit} < {new_commit}: {actions:?}");
}

fn tick_some(c: &mut Cluster, ids: &[NodeId]) {
    let interval = std::time::Duration::from_millis(10);
    c.now += interval;
    for &id in ids {
        let now = c.now;
        c.engine(id).set_now(now);
        c.engine(id).tick();
    }
    c.settle();
}

/// Guards the voters' lease promise against term changes: a voter that promised the leader its
/// lease (acknowledged an AppendEntries) and then adopts a higher term from a *response* (here the
/// late answer to a pre-vote it asked for during the election the leader won) still refuses votes
/// until the promise runs out, and the node it then elects commits only after the old leader's
/// lease ended. Found by review 39 (raft-core engine): the new term cleared `leader_id` and with
/// it the promise, the voter voted for another node at once, which committed a write, while the
/// old leader, paused, still answered reads from its lease.
#[test]
fn a_higher_term_in_a_response_ends_a_voters_lease_promise_early() {
    let configs = (1..=3)
        .map(|id| {
            let mut c = config(id, 3);
            c.lease_reads = true;
            c
        })
        .collect();
    let mut c = Cluster::with_configs(configs);
    let leader = c.elect();
    let term = c.nodes[&leader].engine.hard_state().current_term;
    let mut others = (1..=3).filter(|&id| id != leader);
    let (f, k) = (others.next().unwrap(), others.next().unwrap());
    // K runs without PreVote (ARCHITECTURE: a node cut off for long with PreVote off).
    c.engine(k).config.pre_vote = false;
    // The pre-vote F asked K for in the election the leader won, whose answer is late.
    let f_pre_vote = RpcRequest::RequestVote(RequestVoteRequest {
        term,
        candidate_id: f,
        last_log_id: c.nodes[&f].engine.last_log_id(),
        pre_vote: true,
        leadership_transfer: false,
    });
    // The link leader-K fails: K campaigns (term + 1); F, in the lease, refuses it.
    c.links_down.insert((leader.min(k), leader.max(k)));
    let mut guard = 0;
    while c.nodes[&k].engine.hard_state().current_term == term {
        tick_some(&mut c, &[1, 2, 3]);
        guard += 1;
        assert!(guard < 500);
    }
    assert_eq!(c.nodes[&f].engine.hard_state().current_term, term, "F refused K's vote request");
    // Until K is about to campaign again (the leader heartbeats F all along: its lease holds).
    loop {
        let e = &c.nodes[&k].engine;
        if e.election_elapsed + 1 >= e.randomized_election_ticks {
            break;
        }
        tick_some(&mut c, &[1, 2, 3]);
    }
    let last_ack = c.now;
    // K answers F's old pre-vote now, with its current term.
    c.engine(k).on_request(f_pre_vote.clone(), ReplyId(900_000));
    let answer = c
        .engine(k)
        .take_actions()
        .into_iter()
        .find_map(|a| match a {
            Action::Respond { reply_to: ReplyId(900_000), response, .. } => Some(response),
            _ => None,
        })
        .unwrap();
    c.engine(f).on_response(k, SentRequest::of(&f_pre_vote), answer);
    c.drain(f);
    assert!(c.nodes[&f].engine.hard_state().current_term > term, "F took K's term");
    // The leader is paused from now on (or its link from F is slow).
    c.isolated.insert(leader);
    tick_some(&mut c, &[f, k]);
    c.settle();
    // (Before the fix F voted for K here, at once, and K led.)
    assert_ne!(c.nodes[&k].engine.role(), Role::Leader, "F voted for K inside its promise");
    assert_ne!(c.nodes[&f].engine.hard_state().voted_for, Some(k), "F voted inside its promise");
    // 20 ms after F's last acknowledgement the old leader gets a read: nothing newer is
    // committed (it may answer from its lease).
    let at = last_ack + std::time::Duration::from_millis(20);
    c.engine(leader).set_now(at);
    c.engine(leader).read_index(ReadId(7));
    c.engine(leader).take_actions();
    // Once F's promise ran out, K wins and commits; the old leader's lease is over by then.
    let mut guard = 0;
    while c.nodes[&k].engine.role() != Role::Leader {
        tick_some(&mut c, &[f, k]);
        guard += 1;
        assert!(guard < 500, "K never won");
    }
    c.propose(k, b"written by K");
    let new_commit = c.nodes[&k].engine.commit_index();
    assert!(c.nodes[&k].engine.commit_index() > c.nodes[&leader].engine.commit_index());
    let now = c.now;
    c.engine(leader).set_now(now);
    c.engine(leader).read_index(ReadId(8));
    let actions = c.engine(leader).take_actions();
    let stale = actions.iter().any(
        |a| matches!(a, Action::ReadIndexReady { id: ReadId(8), result: Ok(i) } if *i < new_commit),
    );
    assert!(!stale, "stale lease read (K committed {new_commit}): {actions:?}");
}
