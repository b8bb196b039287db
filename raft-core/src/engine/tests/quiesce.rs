//! Quiescence of idle groups (`Config::quiesce_idle`, issue 21 item 4): an idle group stops
//! heartbeating and ticking its election timers; anything that happens wakes it; a host wakes
//! the followers of a dead leader, which then elect a new one; leases and CheckQuorum stay what
//! they were.

use super::*;

/// Heartbeat interval and minimum election timeout of the test configuration, in ticks.
const HEARTBEAT_TICKS: usize = 5;
const ELECTION_TICKS_MIN: usize = 30;

fn quiet_configs(n: u64) -> Vec<NodeConfig> {
    (1..=n)
        .map(|id| {
            let mut c = config(id, n);
            c.quiesce_idle = true;
            c
        })
        .collect()
}

fn lease_configs(n: u64) -> Vec<NodeConfig> {
    let mut configs = quiet_configs(n);
    for c in &mut configs {
        c.lease_reads = true;
    }
    configs
}

/// Messages sent (requests) since log position `since`.
fn sends(c: &Cluster, since: usize) -> usize {
    c.log[since..].iter().filter(|(_, a)| matches!(a, Action::Send { .. })).count()
}

/// Whether an action sends a quiesce-marked AppendEntries (to `to`, if given).
fn is_mark(action: &Action, to: Option<NodeId>) -> bool {
    matches!(action, Action::Send { to: t, request: RpcRequest::AppendEntries(r), .. }
        if r.quiesce && to.is_none_or(|to| to == *t))
}

fn all_quiesced(c: &Cluster) -> bool {
    c.nodes.values().all(|n| n.engine.is_quiesced())
}

fn followers(c: &Cluster, leader: NodeId) -> Vec<NodeId> {
    c.nodes.keys().copied().filter(|&id| id != leader).collect()
}

fn term_of(c: &Cluster, id: NodeId) -> Term {
    c.nodes[&id].engine.hard_state().current_term
}

/// Ticks until every node is quiesced: within four heartbeat intervals of the last commit (one
/// to tell the followers the commit index, one to hear from them again if a CheckQuorum round
/// just began, one for the marked heartbeat, and slack).
fn tick_until_quiet(c: &mut Cluster) {
    for _ in 0..4 * HEARTBEAT_TICKS {
        if all_quiesced(c) {
            return;
        }
        c.tick(1);
    }
    let states: Vec<(NodeId, Role, bool)> =
        c.nodes.iter().map(|(&id, n)| (id, n.engine.role(), n.engine.is_quiesced())).collect();
    assert!(all_quiesced(c), "not quiet within 4 heartbeat intervals: {states:?}");
}

/// A 3-node cluster with `a` committed everywhere, quiesced.
fn quiet_cluster(configs: Vec<NodeConfig>) -> (Cluster, NodeId) {
    let mut c = Cluster::with_configs(configs);
    let leader = c.elect();
    c.propose(leader, b"a");
    tick_until_quiet(&mut c);
    (c, leader)
}

/// Sends `request` to `to` as if from the network and returns the answer.
fn ask(c: &mut Cluster, from: NodeId, to: NodeId, request: RpcRequest) -> RpcResponse {
    let reply = c.next_reply;
    c.next_reply += 1;
    c.replies.insert(reply, (from, SentRequest::of(&request)));
    c.engine(to).on_request(request, ReplyId(reply));
    let actions = c.engine(to).take_actions();
    let answer = actions.iter().find_map(|a| match a {
        Action::Respond { reply_to, response, .. } if reply_to.0 == reply => Some(response.clone()),
        _ => None,
    });
    c.replies.remove(&reply);
    let actions = actions
        .into_iter()
        .filter(|a| !matches!(a, Action::Respond { reply_to, .. } if reply_to.0 == reply));
    c.run(to, actions.collect());
    answer.expect("every request is answered")
}

/// A vote request (`pre_vote` or real) from `candidate` for the next term, with an up-to-date log.
fn vote_request(c: &Cluster, candidate: NodeId, pre_vote: bool) -> RpcRequest {
    let engine = &c.nodes[&candidate].engine;
    RpcRequest::RequestVote(RequestVoteRequest {
        term: engine.hard_state().current_term + 1,
        candidate_id: candidate,
        last_log_id: engine.last_log_id(),
        pre_vote,
        leadership_transfer: false,
    })
}

fn granted(answer: &RpcResponse) -> bool {
    matches!(answer, RpcResponse::RequestVote(r) if r.vote_granted)
}

#[test]
fn an_idle_cluster_goes_quiet_after_its_last_commit_and_sends_nothing() {
    let (mut c, leader) = quiet_cluster(quiet_configs(3));
    let term = term_of(&c, leader);
    // The leader's last heartbeat carried the mark, once to each follower.
    for follower in followers(&c, leader) {
        let marks = c.log.iter().filter(|(id, a)| *id == leader && is_mark(a, Some(follower)));
        assert_eq!(marks.count(), 1, "one quiesce-marked heartbeat to {follower}");
    }
    for n in c.nodes.values() {
        assert!(n.engine.status().quiesced && n.engine.ticks_until_needed() > 1);
        assert_eq!(n.engine.commit_index(), 2, "blank entry + a, known everywhere");
    }
    let before = c.log.len();
    c.tick(1_000); // 10 s: 200 heartbeat intervals, 33 minimum election timeouts
                   // Nothing but the leader's refreshed marks, at most one per follower per half check
                   // interval (5 s by default): at most 4 each in 10 s, instead of 200 heartbeats.
    let sent: Vec<&Action> = c.log[before..]
        .iter()
        .map(|(_, a)| a)
        .filter(|a| matches!(a, Action::Send { .. }))
        .collect();
    assert!(sent.iter().all(|a| is_mark(a, None)), "only refreshed marks: {sent:?}");
    assert!(sent.len() <= 2 * 4, "a quiesced group sends only its refreshes: {}", sent.len());
    assert!(all_quiesced(&c));
    assert_eq!(c.leaders(), vec![leader]);
    assert!(c.nodes.keys().all(|&id| term_of(&c, id) == term), "no election");
}

#[test]
fn a_proposal_wakes_the_group_commits_and_it_goes_quiet_again() {
    let (mut c, leader) = quiet_cluster(quiet_configs(3));
    c.engine(leader).propose(Bytes::from_static(b"b")).unwrap();
    assert!(!c.nodes[&leader].engine.is_quiesced(), "a proposal wakes the leader");
    c.settle();
    assert_eq!(c.nodes[&leader].engine.commit_index(), 3, "committed at once");
    for follower in followers(&c, leader) {
        assert!(!c.nodes[&follower].engine.is_quiesced(), "the unmarked AppendEntries woke it");
    }
    tick_until_quiet(&mut c);
    for n in c.nodes.values() {
        assert_eq!(commands(&n.applied), [&b"a"[..], b"b"], "applied everywhere");
    }
    // So do a read, a membership change and a transfer.
    c.engine(leader).read_index(ReadId(1));
    assert!(!c.nodes[&leader].engine.is_quiesced(), "a read wakes the leader");
    c.settle();
    assert_eq!(c.reads, vec![(leader, ReadId(1), Ok(3))]);
    tick_until_quiet(&mut c);
    let change = crate::membership::MembershipChange::AddLearner(4, Default::default());
    c.engine(leader).propose_membership(change).unwrap();
    assert!(!c.nodes[&leader].engine.is_quiesced(), "a membership change wakes the leader");
    c.settle();
    c.tick(3 * HEARTBEAT_TICKS); // learner 4 is unreachable (no such node): never quiet
    assert!(!c.nodes[&leader].engine.is_quiesced(), "a member being probed keeps it awake");
    let back = crate::membership::MembershipChange::RemoveNode(4);
    c.engine(leader).propose_membership(back).unwrap();
    c.settle();
    tick_until_quiet(&mut c);
    let target = followers(&c, leader)[0];
    c.engine(leader).transfer_leadership(target).unwrap();
    assert!(!c.nodes[&leader].engine.is_quiesced(), "a transfer wakes the leader");
    c.tick(5);
    assert_eq!(c.leaders(), vec![target]);
}

/// Ticks once, dropping (without telling the sender) the quiesce-marked heartbeat to `victim`.
fn tick_losing_mark(c: &mut Cluster, victim: NodeId) -> Option<Msg> {
    let ids: Vec<NodeId> = c.nodes.keys().copied().collect();
    c.now += std::time::Duration::from_millis(10);
    for id in ids {
        let now = c.now;
        c.engine(id).set_now(now);
        c.engine(id).tick();
    }
    c.drain_all();
    let position = c.queue.iter().position(|m| {
        matches!(m, Msg::Request { to, request: RpcRequest::AppendEntries(r), .. }
            if *to == victim && r.quiesce)
    });
    let lost = position.and_then(|p| c.queue.remove(p));
    c.settle();
    lost
}

#[test]
fn a_follower_that_missed_the_mark_keeps_ticking_and_campaigns_as_today() {
    let mut c = Cluster::with_configs(quiet_configs(3));
    let leader = c.elect();
    c.propose(leader, b"a");
    let victim = followers(&c, leader)[0];
    let mut lost = None;
    for _ in 0..3 * HEARTBEAT_TICKS {
        lost = tick_losing_mark(&mut c, victim);
        if lost.is_some() {
            break;
        }
    }
    let Some(Msg::Request { from, to, request }) = lost else { panic!("no mark sent") };
    assert!(c.nodes[&leader].engine.is_quiesced());
    assert!(!c.nodes[&victim].engine.is_quiesced(), "it missed the mark");
    let term = term_of(&c, leader);
    let pre_votes = c.nodes[&victim].engine.counters().pre_votes_started;
    // Its election timer runs on: it times out and campaigns (PreVote), which wakes the others;
    // they refuse (the leader is alive), and the leader's heartbeats bring it back.
    let mut campaigned = false;
    for _ in 0..2 * ELECTION_TICKS_MIN + 30 {
        c.tick(1);
        if c.nodes[&victim].engine.counters().pre_votes_started > pre_votes {
            campaigned = true;
            break;
        }
    }
    assert!(campaigned, "the follower that missed the mark timed out and campaigned");
    assert!(!c.nodes[&leader].engine.is_quiesced(), "its PreVote woke the leader");
    // The transport reports the lost mark (a request timeout longer than an election timeout).
    c.engine(from).on_unreachable(to, SentRequest::of(&request));
    c.settle();
    c.tick(2 * HEARTBEAT_TICKS);
    assert_eq!(c.leaders(), vec![leader], "no leader change");
    assert!(c.nodes.keys().all(|&id| term_of(&c, id) == term), "no term change (PreVote)");
    assert_eq!(c.nodes[&victim].engine.leader_id(), Some(leader));
    tick_until_quiet(&mut c);
}

#[test]
fn followers_woken_by_the_host_elect_a_new_leader_when_the_leader_died() {
    for wake_both in [true, false] {
        let (mut c, leader) = quiet_cluster(quiet_configs(3));
        let term = term_of(&c, leader);
        c.isolated.insert(leader); // it died
        c.tick(500); // within the followers' fallback deadline (2 to 3 check intervals)
        assert!(
            followers(&c, leader)
                .iter()
                .all(|id| term_of(&c, *id) == term && c.nodes[id].engine.is_quiesced()),
            "quiesced followers do not notice a dead leader before their fallback deadline"
        );
        // The host's liveness layer suspects the leader's node and wakes the group: on both
        // followers' nodes at once, or on one only (the other learns from the PreVote).
        let woken = followers(&c, leader);
        let woken = if wake_both { &woken[..] } else { &woken[..1] };
        for &id in woken {
            c.engine(id).wake();
            assert_eq!(c.nodes[&id].engine.ticks_until_needed(), 1);
        }
        let mut elected = None;
        for tick in 0..10 * ELECTION_TICKS_MIN {
            c.tick(1);
            if let [new_leader] = c.leaders()[..] {
                elected = Some((new_leader, tick));
                break;
            }
        }
        let (new_leader, ticks) = elected.expect("a new leader within 10 election timeouts");
        assert_ne!(new_leader, leader);
        assert!(ticks >= ELECTION_TICKS_MIN, "not before an election timeout ({ticks} ticks)");
        assert_eq!(term_of(&c, new_leader), term + 1, "one election (PreVote first)");
        c.propose(new_leader, b"b");
        c.tick(2 * HEARTBEAT_TICKS);
        for id in followers(&c, leader) {
            assert_eq!(commands(&c.nodes[&id].applied), [&b"a"[..], b"b"]);
        }
        // A member that does not answer (the dead node) keeps the new leader awake.
        c.tick(10 * HEARTBEAT_TICKS);
        assert!(!c.nodes[&new_leader].engine.is_quiesced(), "quiet with a member unreachable");
    }
}

#[test]
fn a_woken_follower_keeps_the_promise_it_made_and_refuses_votes_for_an_election_timeout() {
    let (mut c, leader) = quiet_cluster(lease_configs(3));
    let [voter, candidate] = followers(&c, leader)[..] else { unreachable!() };
    c.tick(200); // long after the promise ran out by the clock: quiescence held the timer
    c.isolated.insert(leader);
    c.engine(voter).wake();
    // The voter refuses (pre-)votes for its minimum election timeout after waking, as after an
    // AppendEntries it acknowledged: its timer restarted at zero.
    for _ in 0..ELECTION_TICKS_MIN - 1 {
        for pre_vote in [true, false] {
            let request = vote_request(&c, candidate, pre_vote);
            let answer = ask(&mut c, candidate, voter, request);
            assert!(!granted(&answer), "granted inside the promise: {answer:?}");
        }
        c.engine(voter).tick();
        c.drain(voter);
        c.queue.clear();
    }
    c.engine(voter).tick();
    c.drain(voter);
    let request = vote_request(&c, candidate, true);
    assert!(granted(&ask(&mut c, candidate, voter, request)), "granted once the promise ran out");
}

#[test]
fn a_quiesced_leader_never_answers_a_lease_read_after_its_lease_expired() {
    let (mut c, leader) = quiet_cluster(lease_configs(3));
    // Right after quiescing, the lease of the last round still holds: served without a round.
    let before = c.log.len();
    c.engine(leader).read_index(ReadId(1));
    c.drain(leader);
    assert_eq!(c.reads, vec![(leader, ReadId(1), Ok(2))], "answered from the lease");
    // Without a round: answered before any message was delivered; the read woke the leader,
    // whose wake-up heartbeats (one per follower) are no read round.
    let sent: Vec<&Action> = c.log[before..]
        .iter()
        .map(|(_, a)| a)
        .filter(|a| matches!(a, Action::Send { .. }))
        .collect();
    assert_eq!(sent.len(), 2, "one wake-up heartbeat per follower: {sent:?}");
    c.settle();
    tick_until_quiet(&mut c);
    // Time passes (ticks included, as a host that keeps ticking; none renews the lease).
    c.tick(2 * ELECTION_TICKS_MIN);
    assert!(all_quiesced(&c));
    for follower in followers(&c, leader) {
        c.isolated.insert(follower);
    }
    let before = c.log.len();
    c.engine(leader).read_index(ReadId(2));
    c.settle();
    assert_eq!(c.reads.len(), 1, "no answer from an expired lease: {:?}", c.reads);
    assert!(sends(&c, before) > 0, "the read woke the leader, which asks a quorum");
    // A host that stopped ticking the quiesced leader gives it only the clock: same answer.
    let (mut c, leader) = quiet_cluster(lease_configs(3));
    c.now += std::time::Duration::from_secs(5);
    for follower in followers(&c, leader) {
        c.isolated.insert(follower);
    }
    let now = c.now;
    c.engine(leader).set_now(now);
    c.engine(leader).read_index(ReadId(3));
    c.settle();
    assert!(c.reads.is_empty(), "no answer from an expired lease: {:?}", c.reads);
}

#[test]
fn check_quorum_deposes_a_partitioned_quiesced_leader_within_an_election_timeout_of_waking() {
    let (mut c, leader) = quiet_cluster(quiet_configs(3));
    c.isolated.insert(leader);
    c.tick(200);
    assert_eq!(c.nodes[&leader].engine.role(), Role::Leader, "quiesced: nothing counts");
    c.engine(leader).wake();
    for tick in 0..=ELECTION_TICKS_MIN {
        if c.nodes[&leader].engine.role() != Role::Leader {
            assert!(tick >= ELECTION_TICKS_MIN - 1, "not before a round ({tick} ticks)");
            return;
        }
        c.tick(1);
    }
    panic!("CheckQuorum counted answers from before the leader quiesced");
}

#[test]
fn a_quiesce_mark_from_another_leader_or_of_another_log_does_not_quiesce() {
    let (mut c, leader) = quiet_cluster(quiet_configs(3));
    let [follower, other] = followers(&c, leader)[..] else { unreachable!() };
    let engine = &c.nodes[&follower].engine;
    let (term, last, commit) =
        (engine.hard_state().current_term, engine.last_log_id(), engine.commit_index());
    let mark = super::quiesce_mark;
    let earlier = LogId::new(last.term, last.index - 1);
    let mut check = |what: &str, request: RpcRequest, quiesces: bool| {
        // Awake, by an unmarked heartbeat of the leader it follows (after which marks count).
        let engine = &c.nodes[&follower].engine;
        let (term, leader_id) = (engine.hard_state().current_term, engine.leader_id().unwrap());
        let RpcRequest::AppendEntries(mut heartbeat) =
            mark(term, leader_id, engine.last_log_id(), engine.commit_index())
        else {
            unreachable!()
        };
        heartbeat.quiesce = false;
        ask(&mut c, leader_id, follower, RpcRequest::AppendEntries(heartbeat));
        assert!(!c.nodes[&follower].engine.is_quiesced());
        let answer = ask(&mut c, leader, follower, request);
        assert_eq!(c.nodes[&follower].engine.is_quiesced(), quiesces, "{what}: {answer:?}");
        c.queue.clear();
    };
    check("a stale term", mark(term - 1, leader, last, commit), false);
    check("a commit index it does not hold", mark(term, leader, last, commit + 1), false);
    check("not at the end of its log", mark(term, leader, earlier, commit), false);
    check("its leader's mark", mark(term, leader, last, commit), true);
    check("a new leader it did not follow yet", mark(term + 1, other, last, commit), false);
    check("that leader's next mark", mark(term + 1, other, last, commit), true);
    let RpcRequest::AppendEntries(mut unmarked) = mark(term + 1, other, last, commit) else {
        unreachable!()
    };
    unmarked.quiesce = false;
    let answer = ask(&mut c, leader, follower, RpcRequest::AppendEntries(unmarked));
    assert!(!c.nodes[&follower].engine.is_quiesced(), "an unmarked heartbeat wakes it: {answer:?}");
}

/// The action trace of a scenario run with `quiesce_idle` off, summarized without the new
/// fields (`AppendEntriesRequest::quiesce`, `AppendEntriesResponse::quiesced`, and
/// `WriteBatch::seq`, added since): it must be what it was before quiescence existed (digest
/// taken on the commit before it).
fn flag_off_trace_digest() -> (u64, usize) {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    for _ in 0..5 {
        c.propose(leader, b"x");
    }
    c.tick(300);
    let follower = *c.nodes.keys().find(|&&id| id != leader).unwrap();
    c.isolated.insert(follower);
    c.tick(100);
    c.isolated.clear();
    c.tick(100);
    let mut digest: u64 = 0xcbf2_9ce4_8422_2325;
    let mut sends = 0;
    for (id, action) in &c.log {
        let line = match action {
            Action::Send { to, request, after_persist } => {
                sends += 1;
                let detail = match request {
                    RpcRequest::AppendEntries(r) => format!(
                        "AE {} {} {:?} {} {} {}",
                        r.term,
                        r.leader_id,
                        r.prev_log_id,
                        r.entries.len(),
                        r.leader_commit,
                        r.read_round
                    ),
                    other => format!("{other:?}"),
                };
                format!("{id} send {to} {after_persist} {detail}")
            }
            // As `Debug` printed it before `quiesced` existed (never set with the flag off).
            Action::Respond { response: RpcResponse::AppendEntries(r), .. } => {
                assert!(!r.quiesced, "nothing quiesces with the flag off: {r:?}");
                format!(
                    "{id} respond AppendEntries(AppendEntriesResponse {{ term: {:?}, match_index: {:?}, conflict: {:?}, lease_promise_ms: {:?} }})",
                    r.term, r.match_index, r.conflict, r.lease_promise_ms
                )
            }
            Action::Respond { response, .. } => format!("{id} respond {response:?}"),
            // As `Debug` printed it before `seq` existed.
            Action::Persist(WriteBatch { hard_state, truncate_from, entries, .. }) => format!(
                "{id} Persist(WriteBatch {{ hard_state: {hard_state:?}, truncate_from: \
                 {truncate_from:?}, entries: {entries:?} }})"
            ),
            other => format!("{id} {other:?}"),
        };
        for byte in line.bytes().chain([b'\n']) {
            digest = (digest ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    (digest, sends)
}

#[test]
fn with_the_flag_off_the_behaviour_is_unchanged() {
    assert!(!Config::new(1).quiesce_idle, "off by default");
    let (digest, sends) = flag_off_trace_digest();
    // Taken on commit 82e74a4, before quiescence existed.
    let before_quiescence = (9_773_888_056_477_573_946, 220);
    assert_eq!((digest, sends), before_quiescence, "the flag-off scenario's actions changed");
}

/// `quiesce_check_interval` of the test configuration (the default), in ticks.
const CHECK_TICKS: usize = 500;
const ELECTION_TICKS_MAX: usize = 60;

/// Ticks until some node other than `old` leads (not isolated), at most `bound` ticks; returns
/// the new leader and the ticks it took.
fn tick_until_new_leader(c: &mut Cluster, old: NodeId, bound: usize) -> Option<(NodeId, usize)> {
    for tick in 1..=bound {
        c.tick(1);
        if let [leader] = c.leaders()[..] {
            if leader != old {
                return Some((leader, tick));
            }
        }
    }
    None
}

#[test]
fn a_quiesced_group_whose_leader_group_died_on_a_live_node_elects_a_new_leader() {
    // Review M1: the group stops on the leader's node (a store failure, removed there), the
    // node itself lives on, so no host liveness layer wakes the followers: the fallback
    // deadline does, within 3 check intervals, and they elect a new leader within two more
    // election timeouts.
    let (mut c, leader) = quiet_cluster(quiet_configs(3));
    let term = term_of(&c, leader);
    c.isolated.insert(leader);
    let bound = 3 * CHECK_TICKS + 3 * ELECTION_TICKS_MAX;
    let (new_leader, ticks) =
        tick_until_new_leader(&mut c, leader, bound).expect("a new leader within the bound");
    assert!(ticks >= 2 * CHECK_TICKS, "not before the fallback deadline ({ticks} ticks)");
    assert_eq!(term_of(&c, new_leader), term + 1, "one election (PreVote first)");
}

#[test]
fn a_stale_mark_does_not_requiesce_a_follower_woken_by_the_host() {
    // Review M2: marks the leader sent before it died, delivered after the host woke the
    // followers, must not put them back to sleep.
    let (mut c, leader) = quiet_cluster(quiet_configs(3));
    let term = term_of(&c, leader);
    let marks: Vec<(NodeId, RpcRequest)> = followers(&c, leader)
        .into_iter()
        .map(|f| {
            let e = &c.nodes[&f].engine;
            (f, super::quiesce_mark(term, leader, e.last_log_id(), e.commit_index()))
        })
        .collect();
    c.isolated.insert(leader);
    for (f, _) in &marks {
        c.engine(*f).wake();
    }
    c.tick(ELECTION_TICKS_MIN / 2);
    for (f, mark) in &marks {
        ask(&mut c, leader, *f, mark.clone());
        assert!(!c.nodes[f].engine.is_quiesced(), "a stale mark quiesced {f} again");
    }
    let elected = tick_until_new_leader(&mut c, leader, 10 * ELECTION_TICKS_MIN);
    assert!(elected.is_some(), "a new leader within 10 election timeouts");
}

#[test]
fn a_false_suspicion_does_not_depose_a_live_reachable_leader() {
    // Review M3: the host wakes both followers although the leader is alive: they tell it, it
    // heartbeats, nothing changes, and the group goes quiet again.
    let (mut c, leader) = quiet_cluster(quiet_configs(3));
    let term = term_of(&c, leader);
    for f in followers(&c, leader) {
        c.engine(f).wake();
    }
    c.tick(5 * ELECTION_TICKS_MIN);
    assert_eq!(c.leaders(), vec![leader], "no leader change");
    assert!(c.nodes.keys().all(|&id| term_of(&c, id) == term), "no term change");
    tick_until_quiet(&mut c);
}

#[test]
fn a_suspicion_by_a_follower_cut_from_the_leader_does_not_depose_it() {
    // Review M3, scenario B: the link between one follower and the leader is down, the other
    // works; the cut-off follower is woken. The other hears the leader and refuses it.
    let (mut c, leader) = quiet_cluster(quiet_configs(3));
    let term = term_of(&c, leader);
    let [cut, other] = followers(&c, leader)[..] else { unreachable!() };
    c.links_down.insert((leader.min(cut), leader.max(cut)));
    c.engine(cut).wake();
    c.tick(10 * ELECTION_TICKS_MIN);
    assert_eq!(c.leaders(), vec![leader], "no leader change");
    assert_eq!(term_of(&c, other), term, "the follower that hears the leader kept its term");
}

#[test]
fn quiesce_idle_needs_check_quorum_and_pre_vote() {
    // Review M4: without them a woken follower deposes a live leader.
    let mut config = Config::new(1);
    config.quiesce_idle = true;
    assert!(config.validate().is_ok());
    for (check_quorum, pre_vote) in [(false, true), (true, false), (false, false)] {
        let mut config = config.clone();
        config.check_quorum = check_quorum;
        config.pre_vote = pre_vote;
        assert!(config.validate().is_err(), "check_quorum {check_quorum}, pre_vote {pre_vote}");
    }
    let mut short = config.clone();
    short.quiesce_check_interval = short.election_timeout_max;
    assert!(short.validate().is_err(), "a check interval within an election timeout");
}

#[test]
fn a_quiesced_leader_refreshes_its_marks_and_followers_stay_asleep() {
    let (mut c, leader) = quiet_cluster(quiet_configs(3));
    let term = term_of(&c, leader);
    let before = c.log.len();
    c.tick(10 * CHECK_TICKS);
    // Only marks, at most one per follower per half check interval; nobody woke.
    let sent: Vec<&Action> = c.log[before..]
        .iter()
        .filter(|(_, a)| matches!(a, Action::Send { .. }))
        .map(|(_, a)| a)
        .collect();
    assert!(sent.iter().all(|a| is_mark(a, None)), "only refreshed marks: {sent:?}");
    assert!(sent.len() >= 2 * 10, "refreshed at least every check interval: {}", sent.len());
    assert!(sent.len() <= 2 * 20, "at most every half check interval: {}", sent.len());
    assert!(all_quiesced(&c));
    assert!(c.nodes.keys().all(|&id| term_of(&c, id) == term), "no election");
    for id in followers(&c, leader) {
        let wait = c.nodes[&id].engine.ticks_until_needed();
        assert!(wait > 1 && wait <= 3 * CHECK_TICKS as u64, "a deadline: {wait}");
    }
}

#[test]
fn a_quiesced_leader_whose_refresh_fails_wakes_and_steps_down_without_a_quorum() {
    let (mut c, leader) = quiet_cluster(quiet_configs(3));
    for id in followers(&c, leader) {
        c.isolated.insert(id);
    }
    c.tick(CHECK_TICKS + ELECTION_TICKS_MIN + 1);
    assert_ne!(c.nodes[&leader].engine.role(), Role::Leader, "CheckQuorum after the refresh");
}

#[test]
fn a_follower_that_acknowledged_a_mark_without_quiescing_keeps_the_leader_awake() {
    // Review L6: a follower restarted from its durable state follows no leader, so the mark it
    // gets first does not quiesce it, yet it acknowledges it. The leader must not take that
    // acknowledgement for the follower's quiescence (or the follower's election timer runs
    // while the leader stays silent, and it campaigns): it stays awake and heartbeats until
    // the follower confirms it quiesced.
    let (mut c, leader) = quiet_cluster(quiet_configs(3));
    let term = term_of(&c, leader);
    let mut waited = 0;
    while c.nodes[&leader].engine.ticks_until_needed() > 1 {
        c.tick(1);
        waited += 1;
        assert!(waited <= CHECK_TICKS, "the leader refreshes its marks within a check interval");
    }
    // The follower restarts just before the refresh.
    let victim = followers(&c, leader)[0];
    let node = &c.nodes[&victim];
    let (hard_state, log) = (node.durable_hard_state, node.durable_log.clone());
    let last = log.last().map(|e| e.log_id()).unwrap_or_default();
    let durable = DurableState { hard_state, purged: LogId::default(), last };
    let engine = node.config.clone().engine(&durable, log.clone());
    c.restart(engine, hard_state, log);
    assert_eq!(c.nodes[&victim].engine.leader_id(), None, "a restarted node follows nobody");
    let before = c.log.len();
    c.tick(1);
    let marked = c.log[before..].iter().any(|(id, a)| *id == leader && is_mark(a, Some(victim)));
    assert!(marked, "the refresh reached the restarted follower");
    assert!(!c.nodes[&victim].engine.is_quiesced(), "the mark did not quiesce it");
    c.tick(3 * ELECTION_TICKS_MIN);
    let pre_votes = c.nodes[&victim].engine.counters().pre_votes_started;
    assert_eq!(pre_votes, 0, "the leader kept heartbeating the follower: no PreVote");
    assert_eq!(c.leaders(), vec![leader], "no leader change");
    assert!(c.nodes.keys().all(|&id| term_of(&c, id) == term), "no term change");
    tick_until_quiet(&mut c);
}

#[test]
fn ticks_a_driver_delivers_late_count_only_from_the_last_mark() {
    // Found by the multi-group simulation's idle phases (a quiet group woke every few seconds):
    // a driver sleeps until the follower's deadline and then delivers the ticks it slept in
    // one batch. A mark that came meanwhile (one tick before the batch, or at the same
    // instant) restarted the fallback count, yet the batch then counted in full from it
    // (ticks from before the mark), so the follower woke long before its fallback deadline,
    // and woke the group. With a clock (`set_now`), ticks count no more than the time since
    // the last mark.
    for ticks_before in [1, 0] {
        let (mut c, leader) = quiet_cluster(quiet_configs(3));
        let follower = followers(&c, leader)[0];
        let tick = c.nodes[&follower].engine.config.tick_interval;
        let mut sleep = c.nodes[&follower].engine.ticks_until_needed();
        assert!(sleep > 2, "a quiesced follower sleeps until its deadline");
        // The driver sleeps; the leader's refresh arrives just before it wakes.
        let mut now = c.now + tick * (sleep as u32);
        let marked_at = now - tick * ticks_before;
        c.engine(follower).set_now(marked_at);
        let engine = &c.nodes[&leader].engine;
        let (term, last, commit) =
            (engine.hard_state().current_term, engine.last_log_id(), engine.status().commit_index);
        ask(&mut c, leader, follower, quiesce_mark(term, leader, last, commit));
        assert!(c.nodes[&follower].engine.is_quiesced());
        // The driver delivers what it slept, as the node's ticker does, until the follower
        // wakes.
        let woke_at = loop {
            c.engine(follower).set_now(now);
            for delivered in 0..sleep {
                if delivered > 0 && !c.nodes[&follower].engine.is_quiesced() {
                    break;
                }
                c.engine(follower).tick();
            }
            if !c.nodes[&follower].engine.is_quiesced() {
                break now;
            }
            sleep = c.nodes[&follower].engine.ticks_until_needed();
            now += tick * (sleep as u32);
            assert!(now < marked_at + tick * (4 * CHECK_TICKS as u32), "it wakes by its deadline");
        };
        let earliest = marked_at + tick * (2 * CHECK_TICKS as u32);
        let after = woke_at - marked_at;
        assert!(
            woke_at >= earliest,
            "{ticks_before} tick(s) before: woke {after:?} after the mark"
        );
    }
}

#[test]
fn ticks_delivered_at_the_instant_of_a_mark_count_nothing() {
    // The same, when the driver's batch of ticks is fed right after a mark that came at the
    // very instant its sleep ended: no time passed since the mark, so none of them counts.
    let (mut c, leader) = quiet_cluster(quiet_configs(3));
    let follower = followers(&c, leader)[0];
    let tick = c.nodes[&follower].engine.config.tick_interval;
    let mut now = c.now;
    for round in 0..10 {
        let sleep = c.nodes[&follower].engine.ticks_until_needed();
        now += tick * (sleep as u32);
        c.engine(follower).set_now(now);
        let engine = &c.nodes[&leader].engine;
        let (term, last, commit) =
            (engine.hard_state().current_term, engine.last_log_id(), engine.status().commit_index);
        ask(&mut c, leader, follower, quiesce_mark(term, leader, last, commit));
        for _ in 0..sleep {
            c.engine(follower).tick();
        }
        assert!(c.nodes[&follower].engine.is_quiesced(), "round {round}: woke at a mark");
    }
}

/// A PreVote of a node that is no member of the group (a replica left on a node removed from
/// this group but still in the cluster for other groups, which the shared transport cannot
/// refuse; or any authenticated node of the cluster) is refused and leaves the quiesced group
/// asleep. (Found by review: it woke the follower, which woke its leader with a ReadIndex, and
/// the whole group heartbeated again until it quiesced anew.)
#[test]
fn a_non_members_pre_vote_does_not_wake_a_quiesced_group() {
    let (mut c, leader) = quiet_cluster(quiet_configs(3));
    let follower = followers(&c, leader)[0];
    let engine = &c.nodes[&leader].engine;
    let request = RpcRequest::RequestVote(RequestVoteRequest {
        term: engine.hard_state().current_term + 1,
        candidate_id: 9,
        last_log_id: engine.last_log_id(),
        pre_vote: true,
        leadership_transfer: false,
    });
    let answer = ask(&mut c, 9, follower, request);
    assert!(!granted(&answer), "a quiesced follower refuses the pre-vote: {answer:?}");
    c.tick(1);
    let awake: Vec<NodeId> =
        c.nodes.iter().filter(|(_, n)| !n.engine.is_quiesced()).map(|(&id, _)| id).collect();
    assert!(awake.is_empty(), "a non-member's PreVote woke {awake:?} (leader {leader})");
}

/// Guards a huge `quiesce_check_interval` (review 39, L): `validate` accepts any value above the
/// election timeout, and one whose tick count exceeds `u64::MAX / 2` overflowed a follower's
/// fallback deadline (`2 * interval` in `Engine::quiesce`) when the leader's mark arrived. Such
/// an interval means "effectively never": the group quiesces and no deadline overflows.
#[test]
fn a_huge_check_interval_does_not_overflow_a_followers_deadline() {
    let mut configs = quiet_configs(3);
    for c in &mut configs {
        c.quiesce_check_interval = std::time::Duration::MAX;
        c.validate().unwrap();
    }
    let (c, _leader) = quiet_cluster(configs);
    assert!(all_quiesced(&c));
}
