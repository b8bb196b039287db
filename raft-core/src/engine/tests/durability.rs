//! Persistence ordering at the action-stream level: a new term is durable before any message of
//! that term leaves the node, whatever path reached the term. (The test cluster also checks this
//! for every message of every test: `Cluster::check_term_durable`.)

use super::*;

/// Voter 1 and learner 2, both holding `[(1,1) membership]` in term 5.
fn lone_voter_with_learner() -> Cluster {
    let membership = Membership::from_ids([1], [2]).unwrap();
    let log = vec![Entry { index: 1, term: 1, payload: EntryPayload::Membership(membership) }];
    let hard_state = HardState { current_term: 5, voted_for: None };
    let mut c = Cluster::with_configs(vec![NodeConfig::new(1, [1]), NodeConfig::new(2, [1])]);
    for id in [1, 2] {
        c.restart(lone_voter_engine(id, hard_state, &log), hard_state, log.clone());
    }
    c
}

fn lone_voter_engine(id: NodeId, hard_state: HardState, log: &[Entry]) -> Engine {
    let durable = DurableState {
        hard_state,
        purged: LogId::default(),
        last: log.last().map_or(LogId::default(), Entry::log_id),
    };
    NodeConfig::new(id, [1]).engine(&durable, log.to_vec())
}

/// Runs node `id`'s actions as a node whose disk never finishes a write: its `Persist` batches
/// and every message that waits for them are lost at the coming crash; the other messages leave
/// at once. Returns what it emitted.
fn run_without_disk(c: &mut Cluster, id: NodeId) -> Vec<Action> {
    let mut emitted = Vec::new();
    loop {
        let actions = c.engine(id).take_actions();
        if actions.is_empty() {
            return emitted;
        }
        for action in actions {
            if let Action::Send { to, request, after_persist: false } = &action {
                c.queue.push_back(Msg::Request { from: id, to: *to, request: request.clone() });
            }
            emitted.push(action);
        }
    }
}

/// Delivers queued messages; node `diskless` runs without a disk (see `run_without_disk`).
fn settle_with_diskless(c: &mut Cluster, diskless: NodeId) -> Vec<Action> {
    let mut emitted = Vec::new();
    while let Some(msg) = c.queue.pop_front() {
        match msg {
            Msg::Request { from, to, request } => {
                let reply = c.next_reply;
                c.next_reply += 1;
                c.replies.insert(reply, (from, SentRequest::of(&request)));
                c.engine(to).on_request(request, ReplyId(reply));
                c.drain(to);
            }
            Msg::Response { from, to, sent, response } => {
                c.engine(to).on_response(from, sent, response);
                if to == diskless {
                    emitted.extend(run_without_disk(c, diskless));
                } else {
                    c.drain(to);
                }
            }
            Msg::Lost { .. } => {}
        }
    }
    emitted
}

/// Issue 12, item 2: a lone voter wins its election inside `campaign()`; before the fix it sent
/// the blank entry to its learner while the new term was still pending, crashed before the
/// write landed, won the same term again after the restart and appended a different entry at
/// the same index: the learner kept the first one as matching (Log Matching and State Machine
/// Safety broken).
#[test]
fn a_lone_voter_sends_nothing_of_its_new_term_before_the_term_is_durable() {
    let mut c = lone_voter_with_learner();
    // Node 1 elects itself in term 6 and takes a proposal, but none of its writes lands.
    let mut emitted = Vec::new();
    while c.nodes[&1].engine.role() != Role::Leader {
        c.engine(1).tick();
        emitted.extend(run_without_disk(&mut c, 1));
    }
    assert_eq!(c.nodes[&1].engine.hard_state().current_term, 6);
    c.engine(1).propose(Bytes::from_static(b"A")).unwrap();
    emitted.extend(run_without_disk(&mut c, 1));
    emitted.extend(settle_with_diskless(&mut c, 1));

    let first_send = emitted.iter().position(|a| matches!(a, Action::Send { .. }));
    let first_send = first_send.expect("the leader replicates to its learner");
    assert!(
        matches!(&emitted[first_send], Action::Send { after_persist: true, .. }),
        "the first AppendEntries of term 6 waits for the term: {:?}",
        emitted[first_send]
    );
    assert!(
        emitted[..first_send].iter().any(|a| matches!(
            a,
            Action::Persist(WriteBatch { hard_state: Some(hs), .. }) if hs.current_term == 6
        )),
        "term 6 is written before the first message of term 6: {emitted:?}"
    );
    assert!(
        c.nodes[&2].durable_log.len() == 1,
        "nothing of term 6 reached the learner: {:?}",
        c.nodes[&2].durable_log
    );

    // The crash: node 1 restarts from its store (term 5), wins term 6 again, appends B.
    let (hard_state, log) = (c.nodes[&1].durable_hard_state, c.nodes[&1].durable_log.clone());
    assert_eq!(hard_state.current_term, 5, "the write of term 6 never landed");
    c.restart(lone_voter_engine(1, hard_state, &log), hard_state, log);
    let leader = c.elect();
    assert_eq!(leader, 1);
    c.propose(1, b"B");
    c.tick(10);
    let log_of =
        |id: NodeId| -> Vec<LogId> { c.nodes[&id].durable_log.iter().map(Entry::log_id).collect() };
    assert_eq!(log_of(2), log_of(1), "Log Matching");
    assert_eq!(commands(&c.nodes[&1].applied), vec![Bytes::from_static(b"B")]);
    assert_eq!(commands(&c.nodes[&2].applied), commands(&c.nodes[&1].applied), "same commands");
}

/// A TimeoutNow to the only remaining voter: it wins at once, and its first messages of the new
/// term wait for the term.
#[test]
fn a_timeout_now_election_won_at_once_waits_for_the_term() {
    let mut c = lone_voter_with_learner();
    let leader = c.elect();
    assert_eq!(leader, 1);
    // Node 2 is the only voter now (as after a removal of node 1 that committed) and gets a
    // TimeoutNow from node 1.
    let membership = Membership::from_ids([2], [1]).unwrap();
    let term = c.nodes[&2].engine.hard_state().current_term;
    let last = c.nodes[&2].engine.last_log_id();
    let entry =
        Entry { index: last.index + 1, term, payload: EntryPayload::Membership(membership) };
    let mut log = c.nodes[&2].durable_log.clone();
    log.push(entry);
    let hard_state = c.nodes[&2].durable_hard_state;
    let durable = DurableState {
        hard_state,
        purged: LogId::default(),
        last: LogId::new(term, last.index + 1),
    };
    c.restart(NodeConfig::new(2, [1]).engine(&durable, log.clone()), hard_state, log);
    let heartbeat = AppendEntriesRequest {
        term,
        leader_id: 1,
        prev_log_id: LogId::new(term, last.index + 1),
        entries: Vec::new(),
        leader_commit: 0,
        read_round: 0,
        quiesce: false,
    };
    c.engine(2).on_request(RpcRequest::AppendEntries(heartbeat), ReplyId(u64::MAX - 1));
    c.engine(2).take_actions();
    c.engine(2).on_request(
        RpcRequest::TimeoutNow(TimeoutNowRequest { term, leader_id: 1 }),
        ReplyId(u64::MAX),
    );
    let actions = c.engine(2).take_actions();
    assert_eq!(c.nodes[&2].engine.role(), Role::Leader, "won at once");
    let persist = actions.iter().position(|a| {
        matches!(a, Action::Persist(WriteBatch { hard_state: Some(hs), .. }) if hs.current_term == term + 1)
    });
    let persist = persist.expect("the new term is written");
    for (i, action) in actions.iter().enumerate() {
        if let Action::Send { after_persist, request, .. } = action {
            assert!(
                *after_persist && i > persist,
                "{request:?} leaves before term {} is durable",
                term + 1
            );
        }
    }
}

fn ae(
    term: Term,
    leader: NodeId,
    prev: LogId,
    entries: &[(Term, LogIndex)],
    commit: LogIndex,
) -> RpcRequest {
    RpcRequest::AppendEntries(AppendEntriesRequest {
        term,
        leader_id: leader,
        prev_log_id: prev,
        entries: entries
            .iter()
            .map(|&(t, i)| Entry { index: i, term: t, payload: EntryPayload::Blank })
            .collect(),
        leader_commit: commit,
        read_round: 0,
        quiesce: false,
    })
}

/// Guards `persisted`: a finished write is no proof that an entry with the same id, written again
/// by a later write that has not finished (after a truncation that removed it in between), is
/// durable. Found by review 39 (raft-core engine): `durable_index` rose to 3 on the report of the
/// first write, and a follower applied entries a crash could lose.
#[test]
fn an_entry_overwritten_and_rewritten_is_not_durable_before_the_rewrite() {
    let durable = DurableState::default();
    let mut e = config(1, 5).engine(&durable, Vec::new());
    let mut writes = Vec::new();
    let mut applied = Vec::new();
    let step = |e: &mut Engine, writes: &mut Vec<WriteBatch>, applied: &mut Vec<LogIndex>| {
        for a in e.take_actions() {
            match a {
                Action::Persist(b) => writes.push(b),
                Action::Apply(entries) => applied.extend(entries.iter().map(|x| x.index)),
                _ => {}
            }
        }
    };
    // W1: leader 2 of term 2 sends (2,1) (2,2) (2,3).
    e.on_request(ae(2, 2, LogId::default(), &[(2, 1), (2, 2), (2, 3)], 0), ReplyId(1));
    step(&mut e, &mut writes, &mut applied);
    // W2: leader 3 of term 3 overwrites index 2 with (3,2).
    e.on_request(ae(3, 3, LogId::new(2, 1), &[(3, 2)], 1), ReplyId(2));
    step(&mut e, &mut writes, &mut applied);
    // W3: leader 4 of term 4 (elected by 2, 4, 5 with logs ending at (2,3)) writes (2,2) (2,3)
    // again and says index 3 is committed.
    e.on_request(ae(4, 4, LogId::new(2, 1), &[(2, 2), (2, 3)], 4), ReplyId(3));
    step(&mut e, &mut writes, &mut applied);
    assert_eq!(writes.len(), 3, "{writes:?}");
    assert_eq!(writes[1].truncate_from, Some(2));
    // Only W1 is durable: the store holds (2,1..3) now, but W2 will remove (2,2) (2,3) and W3
    // will write them back; a crash between W2 and W3 leaves the store without them.
    e.on_persisted(PersistedWrite::of(&writes[0]));
    step(&mut e, &mut writes, &mut applied);
    assert!(
        e.durable_index() <= 1,
        "durable_index {} although the write that truncates index 2 (W2) and the one that \
         rewrites it (W3) are not done; applied so far {applied:?}",
        e.durable_index()
    );
}
