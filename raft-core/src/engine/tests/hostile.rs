//! Inbound validation (issue 12, item 6): malformed requests and responses are refused, counted,
//! never acknowledged, change nothing, and never panic or wrap an integer; plus a property test
//! that drives an engine, brought into a random state by legal traffic, with random and
//! adversarial messages from an authenticated peer. Tests run in debug builds, where arithmetic
//! overflow panics.

use proptest::prelude::*;

use super::*;
use crate::membership::NodeInfo;
use crate::types::{MAX_LOG_INDEX, MAX_TERM};

/// A 3-node cluster with an elected leader holding `a` committed everywhere.
fn committed_cluster() -> (Cluster, NodeId, NodeId) {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    c.propose(leader, b"a");
    c.tick(10);
    let follower = *c.nodes.keys().find(|&&id| id != leader).unwrap();
    (c, leader, follower)
}

/// Delivers `request` to `to` and returns the answer (after running `to`'s actions).
fn ask(c: &mut Cluster, to: NodeId, request: RpcRequest) -> RpcResponse {
    let reply = 1_000_000 + c.next_reply;
    c.next_reply += 1;
    c.engine(to).on_request(request, ReplyId(reply));
    let actions = c.engine(to).take_actions();
    let answer = actions.iter().find_map(|a| match a {
        Action::Respond { reply_to, response, .. } if reply_to.0 == reply => Some(response.clone()),
        _ => None,
    });
    c.replies.insert(reply, (0, SentRequest::TimeoutNow { term: 0 }));
    c.run(to, actions);
    c.queue.clear();
    answer.expect("every request is answered")
}

/// What a refused message must leave unchanged.
fn state_of(engine: &Engine) -> (HardState, LogId, LogIndex, Role) {
    (engine.hard_state(), engine.last_log_id(), engine.commit_index(), engine.role())
}

#[test]
fn a_follower_refuses_to_overwrite_committed_entries_and_does_not_acknowledge() {
    let (mut c, leader, follower) = committed_cluster();
    let engine = &c.nodes[&follower].engine;
    let commit = engine.commit_index();
    let term = engine.hard_state().current_term;
    assert!(commit >= 2, "blank entry + a committed");
    let before = state_of(engine);
    // A request of a later term whose entry at the commit index differs: a correct leader of a
    // later term holds every committed entry (Leader Completeness).
    let forged = Entry { index: commit, term: term + 1, payload: EntryPayload::Blank };
    let request = AppendEntriesRequest {
        term: term + 1,
        leader_id: leader,
        prev_log_id: LogId::new(engine.term_at(commit - 1).unwrap(), commit - 1),
        entries: vec![forged],
        leader_commit: commit,
        read_round: 0,
        quiesce: false,
    };
    let answer = ask(&mut c, follower, RpcRequest::AppendEntries(request));
    let RpcResponse::AppendEntries(answer) = answer else { panic!("{answer:?}") };
    assert_eq!(answer.match_index, None, "a refusal acknowledges nothing");
    assert_eq!(c.nodes[&follower].engine.malformed_count(), 1);
    assert_eq!(state_of(&c.nodes[&follower].engine), before, "nothing changed");
    let applied: Vec<LogId> = c.nodes[&follower].applied.iter().map(Entry::log_id).collect();
    assert!(applied.iter().all(|id| c.nodes[&leader].engine.term_at(id.index) == Some(id.term)));
}

#[test]
fn malformed_append_entries_are_refused_before_any_state_changes() {
    let (mut c, leader, follower) = committed_cluster();
    let engine = &c.nodes[&follower].engine;
    let (term, last) = (engine.hard_state().current_term, engine.last_log_id());
    let entry = |index, term| Entry { index, term, payload: EntryPayload::Blank };
    let request = |term, prev_log_id, entries| AppendEntriesRequest {
        term,
        leader_id: leader,
        prev_log_id,
        entries,
        leader_commit: 0,
        read_round: 0,
        quiesce: false,
    };
    let cases = [
        // A gap after prev_log_id, in a higher term (which must not be adopted).
        request(term + 1, last, vec![entry(last.index + 2, term + 1)]),
        // Terms decrease.
        request(term, last, vec![entry(last.index + 1, term), entry(last.index + 2, term - 1)]),
        // An entry of a later term than the request's.
        request(term, last, vec![entry(last.index + 1, term + 1)]),
        // Indexes past the bound, then wrapping.
        request(term, LogId::new(term, u64::MAX), vec![entry(0, term)]),
        request(term, LogId::new(term, MAX_LOG_INDEX), vec![entry(MAX_LOG_INDEX + 1, term)]),
        // A term no correct node reaches, whose successor overflows.
        request(u64::MAX, last, Vec::new()),
        // A prev_log_id of index 0 with a term.
        request(term, LogId::new(1, 0), Vec::new()),
        // Term 0 is nobody's.
        request(0, LogId::default(), Vec::new()),
    ];
    for (i, request) in cases.into_iter().enumerate() {
        let before = state_of(&c.nodes[&follower].engine);
        let answer = ask(&mut c, follower, RpcRequest::AppendEntries(request.clone()));
        let RpcResponse::AppendEntries(answer) = answer else { panic!("{answer:?}") };
        assert_eq!(answer.match_index, None, "case {i}: {request:?}");
        assert_eq!(c.nodes[&follower].engine.malformed_count(), i as u64 + 1, "case {i}");
        assert_eq!(state_of(&c.nodes[&follower].engine), before, "case {i}: nothing changed");
    }
}

#[test]
fn extreme_terms_indexes_and_snapshots_are_refused_without_overflow() {
    let (mut c, leader, follower) = committed_cluster();
    let term = c.nodes[&follower].engine.hard_state().current_term;
    let before = state_of(&c.nodes[&follower].engine);
    let vote = RequestVoteRequest {
        term: u64::MAX,
        candidate_id: leader,
        last_log_id: LogId::new(u64::MAX, u64::MAX),
        pre_vote: false,
        leadership_transfer: true,
    };
    let answer = ask(&mut c, follower, RpcRequest::RequestVote(vote));
    assert!(matches!(answer, RpcResponse::RequestVote(r) if !r.vote_granted));
    let meta = |index| SnapshotMeta {
        last_included: LogId::new(term, index),
        membership: Membership::with_voters([1, 2, 3]),
        size: 4,
        checksum: crate::snapshot_meta::Checksum::of(b"abcd"),
    };
    let chunk = |meta, offset, data: &'static [u8], done| InstallSnapshotRequest {
        term,
        leader_id: leader,
        meta,
        offset,
        data: Bytes::from_static(data),
        done,
    };
    for request in [
        chunk(meta(u64::MAX), 0, b"abcd", true),
        chunk(meta(100), u64::MAX, b"abcd", true),
        chunk(meta(100), 2, b"abcd", true),
        chunk(meta(100), 0, b"ab", true),
        chunk(SnapshotMeta { membership: Membership::default(), ..meta(100) }, 0, b"abcd", true),
    ] {
        let answer = ask(&mut c, follower, RpcRequest::InstallSnapshot(request));
        let RpcResponse::InstallSnapshot(answer) = answer else { panic!("{answer:?}") };
        assert!(!answer.complete && answer.refusal == Some(SnapshotRefusal::Malformed));
    }
    assert_eq!(c.nodes[&follower].engine.malformed_count(), 6);
    assert_eq!(state_of(&c.nodes[&follower].engine), before, "nothing changed");
}

#[test]
fn malformed_responses_are_counted_and_treated_as_lost() {
    let (mut c, leader, follower) = committed_cluster();
    let term = c.nodes[&leader].engine.hard_state().current_term;
    let last = c.nodes[&leader].engine.last_log_id().index;
    let sent =
        SentRequest::AppendEntries { term, prev_index: last, last_index: last, read_round: 0 };
    let before = state_of(&c.nodes[&leader].engine);
    let hint = |conflict_term, first_index_of_term, last_log_index| {
        RpcResponse::AppendEntries(AppendEntriesResponse {
            term,
            match_index: None,
            conflict: Some(ConflictHint { conflict_term, first_index_of_term, last_log_index }),
            lease_promise_ms: 0,
            quiesced: false,
        })
    };
    let responses = [
        // Issue 12: `last_log_index + 1` overflowed.
        hint(0, 0, u64::MAX),
        hint(term + 1, 1, last),
        hint(term, last + 1, last),
        RpcResponse::AppendEntries(AppendEntriesResponse {
            term,
            match_index: Some(last + 1),
            conflict: None,
            lease_promise_ms: 0,
            quiesced: false,
        }),
        RpcResponse::AppendEntries(AppendEntriesResponse {
            term: u64::MAX,
            match_index: None,
            conflict: None,
            lease_promise_ms: 0,
            quiesced: false,
        }),
        RpcResponse::RequestVote(RequestVoteResponse {
            term: term + 1,
            vote_granted: true,
            pre_vote: false,
        }),
    ];
    for (i, response) in responses.into_iter().enumerate() {
        c.engine(leader).on_response(follower, sent, response);
        c.drain(leader);
        assert_eq!(c.nodes[&leader].engine.malformed_count(), i as u64 + 1);
        assert_eq!(state_of(&c.nodes[&leader].engine), before, "response {i} changed nothing");
    }
}

// ---- terms near the cap (review finding 1) ----------------------------------------------------

/// The first term of the reserve, and how far one message may raise a term inside it.
const RESERVE: Term = 1 << 62;
const RESERVE_STEP: Term = 1 << 16;

/// One AppendEntries (or one answer to the leader's) with term `MAX_TERM` used to make every node
/// adopt it durably; every node then campaigned at `MAX_TERM + 1`, which all refused as malformed:
/// no leader ever again, even after restarts.
#[test]
fn one_message_with_the_largest_term_cannot_stop_elections() {
    let (mut c, leader, _) = committed_cluster();
    let ids: Vec<NodeId> = c.nodes.keys().copied().collect();
    for &id in &ids {
        let engine = &c.nodes[&id].engine;
        let request = AppendEntriesRequest {
            term: MAX_TERM,
            leader_id: ids.iter().copied().find(|&other| other != id).unwrap(),
            prev_log_id: engine.last_log_id(),
            entries: Vec::new(),
            leader_commit: 0,
            read_round: 0,
            quiesce: false,
        };
        ask(&mut c, id, RpcRequest::AppendEntries(request));
    }
    // The same term in an answer to the leader's AppendEntries.
    let term = c.nodes[&leader].engine.hard_state().current_term;
    let last = c.nodes[&leader].engine.last_log_id().index;
    let follower = ids.iter().copied().find(|&id| id != leader).unwrap();
    let sent =
        SentRequest::AppendEntries { term, prev_index: last, last_index: last, read_round: 0 };
    let answer = AppendEntriesResponse {
        term: MAX_TERM,
        match_index: None,
        conflict: None,
        lease_promise_ms: 0,
        quiesced: false,
    };
    c.engine(leader).on_response(follower, sent, RpcResponse::AppendEntries(answer));
    c.drain(leader);
    c.tick(3000);
    assert_eq!(c.leaders().len(), 1, "exactly one leader");
    for id in ids {
        let term = c.nodes[&id].engine.hard_state().current_term;
        assert!(term < RESERVE, "node {id} is in term {term}");
    }
}

/// Inside the reserve a message raises a term by at most `RESERVE_STEP`; below it, by any amount
/// (a node that was partitioned for long with PreVote off comes back with a much higher term).
#[test]
fn terms_climb_into_the_reserve_only_step_by_step() {
    let (mut c, leader, follower) = committed_cluster();
    let heartbeat = |c: &Cluster, term| {
        let engine = &c.nodes[&follower].engine;
        RpcRequest::AppendEntries(AppendEntriesRequest {
            term,
            leader_id: leader,
            prev_log_id: engine.last_log_id(),
            entries: Vec::new(),
            leader_commit: 0,
            read_round: 0,
            quiesce: false,
        })
    };
    let term_of = |c: &Cluster| c.nodes[&follower].engine.hard_state().current_term;
    for (term, adopted) in [
        (1 << 40, true),                     // below the reserve: any jump
        (RESERVE + 1, false),                // into the reserve in one leap
        (RESERVE, true),                     // up to its start
        (RESERVE + RESERVE_STEP + 1, false), // one more than a step
        (RESERVE + RESERVE_STEP, true),      // a step
        (MAX_TERM, false),
    ] {
        let before = term_of(&c);
        let malformed = c.nodes[&follower].engine.malformed_count();
        let request = heartbeat(&c, term);
        ask(&mut c, follower, request);
        let refused = c.nodes[&follower].engine.malformed_count() > malformed;
        assert_eq!(
            (term_of(&c) == term, refused),
            (adopted, !adopted),
            "term {term} from {before}"
        );
        if !adopted {
            assert_eq!(term_of(&c), before);
        }
    }
}

/// A node whose term is near the cap can still be elected, and a node at the cap never stores a
/// term beyond it (with PreVote off it used to store 2^63, which every other node refused).
#[test]
fn elections_work_near_the_cap_and_never_pass_it() {
    for (start, pre_vote) in [(MAX_TERM - 3, true), (MAX_TERM - 3, false), (MAX_TERM, false)] {
        let mut c = Cluster::with_configs(
            (1..=3)
                .map(|id| {
                    let mut config = config(id, 3);
                    config.pre_vote = pre_vote;
                    config
                })
                .collect(),
        );
        for id in 1..=3 {
            let hard_state = HardState { current_term: start, voted_for: None };
            let durable = DurableState { hard_state, ..DurableState::default() };
            let mut config = config(id, 3);
            config.pre_vote = pre_vote;
            c.restart(config.engine(&durable, Vec::new()), hard_state, Vec::new());
        }
        c.tick(200);
        for node in c.nodes.values() {
            let term = node.engine.hard_state().current_term;
            assert!(term <= MAX_TERM && node.durable_hard_state.current_term <= MAX_TERM);
        }
        if start < MAX_TERM {
            assert_eq!(c.leaders().len(), 1, "a leader near the cap (pre_vote: {pre_vote})");
        }
    }
}

// ---- logging malformed messages (review finding 8) --------------------------------------------

/// Counts the warnings of the validation module.
#[derive(Default)]
struct Warnings(std::sync::atomic::AtomicUsize);

impl tracing::Subscriber for Warnings {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let meta = event.metadata();
        if *meta.level() == tracing::Level::WARN && meta.target().ends_with("engine::validate") {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// A peer sending malformed messages in a loop gets one warning per 10 s, not one per message
/// (each one is still counted); another peer gets its own.
#[test]
fn malformed_messages_are_logged_at_most_once_per_peer_per_ten_seconds() {
    let (mut c, leader, follower) = committed_cluster();
    let other = *c.nodes.keys().find(|&&id| id != leader && id != follower).unwrap();
    let gap = |c: &Cluster, from: NodeId| {
        let engine = &c.nodes[&follower].engine;
        let (term, last) = (engine.hard_state().current_term, engine.last_log_id());
        let entry = Entry { index: last.index + 2, term, payload: EntryPayload::Blank };
        RpcRequest::AppendEntries(AppendEntriesRequest {
            term,
            leader_id: from,
            prev_log_id: last,
            entries: vec![entry],
            leader_commit: 0,
            read_round: 0,
            quiesce: false,
        })
    };
    let warnings = std::sync::Arc::new(Warnings::default());
    let counted = warnings.clone();
    let warned = move || counted.0.load(std::sync::atomic::Ordering::SeqCst);
    tracing::subscriber::with_default(warnings, || {
        // Tests on other threads register their own subscribers; a callsite first hit by one of
        // them while this one was being registered can keep a stale "never" interest. Rebuilding
        // the cache with this subscriber live makes the count below this test's alone.
        tracing::callsite::rebuild_interest_cache();
        for _ in 0..100 {
            let request = gap(&c, leader);
            ask(&mut c, follower, request);
        }
        assert_eq!(c.nodes[&follower].engine.malformed_count(), 100);
        assert_eq!(warned(), 1, "one warning for 100 malformed messages");
        let request = gap(&c, other);
        ask(&mut c, follower, request);
        assert_eq!(warned(), 2, "another peer gets its own");
        c.tick(1000); // 10 s
        let request = gap(&c, leader);
        ask(&mut c, follower, request);
        assert_eq!(warned(), 3, "and a peer another one after 10 s");
    });
}

// ---- memberships a leader may propose (review finding 7) -----------------------------------

/// A leader never appends a membership its followers would refuse as malformed (more than
/// `MAX_MEMBERS` members): the change is refused with a clear error instead, also when only the
/// joint membership of a change would exceed the bound (it names the old voters and the new
/// members together). Before, only inbound memberships were checked, so a leader could append
/// one that no follower would ever take.
#[test]
fn a_leader_refuses_a_membership_its_followers_would_refuse() {
    use crate::membership::{InvalidChange, MembershipChange, NodeInfo};
    let max = crate::membership::MAX_MEMBERS as u64;
    let mut config = config(1, 1);
    config.snapshot_interval_entries = 0;
    let meta = SnapshotMeta {
        last_included: LogId::new(1, 10),
        membership: Membership::from_ids([1], 2..=max).unwrap(),
        size: 0,
        checksum: crate::snapshot_meta::Checksum::of(b""),
    };
    let durable = DurableState {
        hard_state: HardState { current_term: 1, voted_for: None },
        purged: meta.last_included,
        last: meta.last_included,
    };
    let mut engine = config.engine_with_snapshots(&durable, Vec::new(), Some(meta));
    assert_eq!(engine.membership().members().len() as u64, max);
    engine.campaign(false, false); // the only voter: elected at once
    for action in engine.take_actions() {
        if let Action::Persist(batch) = action {
            engine.on_persisted(PersistedWrite::of(&batch));
        }
    }
    assert!(engine.role() == Role::Leader && engine.own_term_committed());
    let too_many = Err(MembershipRefusal::Invalid(InvalidChange::TooManyMembers(max as usize + 1)));
    let add = MembershipChange::AddLearner(max + 1, NodeInfo::default());
    assert_eq!(engine.propose_membership(add), too_many);
    // A target within the bound whose joint membership (voter 1 going, learners 2..=max staying
    // or coming, max + 1 new) is not: refused before any step is taken.
    let current = engine.membership().clone();
    let target = current.target([2], 3..=max + 1, [(max + 1, NodeInfo::default())]).unwrap();
    assert_eq!(target.members().len() as u64, max);
    assert_eq!(engine.propose_membership_target(&target), too_many);
    assert_eq!(engine.membership(), &current, "nothing appended");
    // A change that keeps the bound goes through.
    assert!(engine.propose_membership(MembershipChange::RemoveNode(max)).is_ok());
}

// ---- the property test ------------------------------------------------------------------------

/// A number chosen relative to the target's state when the message is built, so that random
/// messages hit the interesting boundaries (just below, at and above the node's term or index,
/// the bounds, and the extremes).
#[derive(Debug, Clone, Copy)]
enum Num {
    Zero,
    Rel(i8),
    MaxBound,
    AboveBound,
    Max,
    Any(u64),
}

impl Num {
    fn at(self, base: u64, bound: u64) -> u64 {
        match self {
            Num::Zero => 0,
            Num::Rel(delta) => base.saturating_add_signed(i64::from(delta)),
            Num::MaxBound => bound,
            Num::AboveBound => bound.saturating_add(1),
            Num::Max => u64::MAX,
            Num::Any(n) => n,
        }
    }
}

fn num() -> impl Strategy<Value = Num> {
    prop_oneof![
        1 => Just(Num::Zero),
        8 => (-3i8..=3).prop_map(Num::Rel),
        1 => Just(Num::MaxBound),
        1 => Just(Num::AboveBound),
        1 => Just(Num::Max),
        1 => any::<u64>().prop_map(Num::Any),
    ]
}

/// A message from the hostile peer, or something the target's own driver does meanwhile.
#[derive(Debug, Clone)]
enum Hostile {
    AppendEntries {
        term: Num,
        prev: (Num, Num),
        entries: Vec<(Num, Num, u8)>,
        commit: Num,
        quiesce: bool,
    },
    RequestVote {
        term: Num,
        last: (Num, Num),
        pre_vote: bool,
        transfer: bool,
    },
    TimeoutNow {
        term: Num,
    },
    InstallSnapshot {
        term: Num,
        last: (Num, Num),
        size: u8,
        offset: Num,
        len: u8,
        done: bool,
    },
    ReadIndex {
        term: Num,
    },
    /// A quiesce-marked heartbeat at the target's term, log end and commit index (what its leader
    /// would send), but for one of them (`off`: 1 the term, 2 the log end, 3 the commit index; 0
    /// none) set to `n` relative to it.
    QuiesceMark {
        off: u8,
        n: Num,
    },
    /// A response to one of the target's requests to the peer (`pick` chooses which).
    Response {
        pick: usize,
        term: Num,
        kind: u8,
        a: Num,
        b: Num,
        c: Num,
        flag: bool,
    },
    Tick,
    Read,
    Propose,
}

fn hostile() -> impl Strategy<Value = Hostile> {
    let pair = || (num(), num());
    prop_oneof![
        (
            num(),
            pair(),
            prop::collection::vec((num(), num(), any::<u8>()), 0..4),
            num(),
            any::<bool>()
        )
            .prop_map(|(term, prev, entries, commit, quiesce)| Hostile::AppendEntries {
                term,
                prev,
                entries,
                commit,
                quiesce
            }),
        (num(), pair(), any::<bool>(), any::<bool>()).prop_map(|(term, last, pre_vote, t)| {
            Hostile::RequestVote { term, last, pre_vote, transfer: t }
        }),
        num().prop_map(|term| Hostile::TimeoutNow { term }),
        (num(), pair(), any::<u8>(), num(), any::<u8>(), any::<bool>()).prop_map(
            |(term, last, size, offset, len, done)| Hostile::InstallSnapshot {
                term,
                last,
                size,
                offset,
                len,
                done
            }
        ),
        num().prop_map(|term| Hostile::ReadIndex { term }),
        (0u8..4, num()).prop_map(|(off, n)| Hostile::QuiesceMark { off, n }),
        (any::<usize>(), num(), 0u8..5, num(), num(), num(), any::<bool>()).prop_map(
            |(pick, term, kind, a, b, c, flag)| Hostile::Response {
                pick,
                term,
                kind,
                a,
                b,
                c,
                flag
            }
        ),
        Just(Hostile::Tick),
        Just(Hostile::Read),
        Just(Hostile::Propose),
    ]
}

/// Legal traffic that brings the cluster into a random state before the attack.
#[derive(Debug, Clone)]
enum Legal {
    Tick(usize),
    Propose,
    Isolate(NodeId),
    Heal,
}

fn legal() -> impl Strategy<Value = Legal> {
    prop_oneof![
        6 => (1usize..=20).prop_map(Legal::Tick),
        3 => Just(Legal::Propose),
        1 => (1u64..=3).prop_map(Legal::Isolate),
        1 => Just(Legal::Heal),
    ]
}

/// The target engine, detached from the cluster after the legal prefix, with a driver that
/// completes every write at once and drops every message.
struct Target {
    engine: Engine,
    peer: NodeId,
    durable_term: Term,
    /// What the target sent the peer (what a response can answer).
    sent: Vec<SentRequest>,
    next_reply: u64,
}

impl Target {
    fn build(&self, h: &Hostile) -> RpcRequest {
        let e = &self.engine;
        let (term, last) = (e.hard_state().current_term, e.last_log_id());
        let t = |n: Num| n.at(term, MAX_TERM);
        let i = |n: Num| n.at(last.index, MAX_LOG_INDEX);
        let id = |(ti, ii): (Num, Num)| LogId::new(ti.at(last.term, MAX_TERM), i(ii));
        let leader_id = self.peer;
        match h {
            Hostile::AppendEntries { term, prev, entries, commit, quiesce } => {
                let prev_log_id = id(*prev);
                let entries = entries
                    .iter()
                    .enumerate()
                    .map(|(k, &(index, entry_term, payload))| Entry {
                        // Mostly contiguous, so that valid requests are stored too.
                        index: match index {
                            Num::Rel(_) => prev_log_id.index.saturating_add(k as u64 + 1),
                            other => i(other),
                        },
                        term: t(entry_term),
                        payload: match payload % 3 {
                            0 => EntryPayload::Blank,
                            1 => EntryPayload::Command(Bytes::from(vec![payload])),
                            _ => {
                                // Often malformed: no voter, or a voter that is also a learner.
                                let voters: BTreeSet<NodeId> =
                                    [1, 2, 3].into_iter().take(payload as usize % 4).collect();
                                let learners: BTreeSet<NodeId> = [u64::from(payload % 5)].into();
                                let nodes = voters
                                    .union(&learners)
                                    .map(|&id| (id, NodeInfo::default()))
                                    .collect();
                                EntryPayload::Membership(Membership::from_parts_unchecked(
                                    voters,
                                    BTreeSet::new(),
                                    learners,
                                    nodes,
                                ))
                            }
                        },
                    })
                    .collect();
                RpcRequest::AppendEntries(AppendEntriesRequest {
                    term: t(*term),
                    leader_id,
                    prev_log_id,
                    entries,
                    leader_commit: i(*commit),
                    read_round: 0,
                    quiesce: *quiesce,
                })
            }
            Hostile::RequestVote { term, last, pre_vote, transfer } => {
                RpcRequest::RequestVote(RequestVoteRequest {
                    term: t(*term),
                    candidate_id: leader_id,
                    last_log_id: id(*last),
                    pre_vote: *pre_vote,
                    leadership_transfer: *transfer,
                })
            }
            Hostile::TimeoutNow { term } => {
                RpcRequest::TimeoutNow(TimeoutNowRequest { term: t(*term), leader_id })
            }
            Hostile::InstallSnapshot { term, last, size, offset, len, done } => {
                let data: Vec<u8> = (0..*len % 8).collect();
                let size = u64::from(*size % 16);
                RpcRequest::InstallSnapshot(InstallSnapshotRequest {
                    term: t(*term),
                    leader_id,
                    meta: SnapshotMeta {
                        last_included: id(*last),
                        membership: Membership::with_voters([1, 2, 3]),
                        size,
                        checksum: crate::snapshot_meta::Checksum::of(&data),
                    },
                    offset: offset.at(0, size),
                    data: Bytes::from(data),
                    done: *done,
                })
            }
            Hostile::QuiesceMark { off, n } => {
                let (mut term, mut prev_log_id, mut leader_commit) = (term, last, e.commit_index());
                match off {
                    1 => term = t(*n),
                    2 => {
                        let index = i(*n);
                        prev_log_id = LogId::new(e.term_at(index).unwrap_or(last.term), index);
                    }
                    3 => leader_commit = n.at(leader_commit, MAX_LOG_INDEX),
                    _ => {}
                }
                super::quiesce_mark(term, leader_id, prev_log_id, leader_commit)
            }
            Hostile::ReadIndex { term } => RpcRequest::ReadIndex(ReadIndexRequest {
                term: t(*term),
                sender: leader_id,
                read_id: 7,
            }),
            _ => unreachable!("not a request"),
        }
    }

    fn response(&self, sent: &SentRequest, h: &Hostile) -> RpcResponse {
        let Hostile::Response { term, kind, a, b, c, flag, .. } = *h else { unreachable!() };
        let own = self.engine.hard_state().current_term;
        let base_term = match *sent {
            SentRequest::RequestVote { term, .. }
            | SentRequest::AppendEntries { term, .. }
            | SentRequest::TimeoutNow { term }
            | SentRequest::InstallSnapshot { term, .. }
            | SentRequest::ReadIndex { term, .. } => term,
        };
        let term = term.at(base_term.max(own), MAX_TERM);
        let index = |n: Num| n.at(self.engine.last_log_id().index, MAX_LOG_INDEX);
        match kind {
            0 => RpcResponse::RequestVote(RequestVoteResponse {
                term,
                vote_granted: flag,
                pre_vote: matches!(sent, SentRequest::RequestVote { pre_vote: true, .. }),
            }),
            1 => RpcResponse::AppendEntries(AppendEntriesResponse {
                term,
                match_index: flag.then(|| index(a)),
                conflict: (!flag).then(|| ConflictHint {
                    conflict_term: b.at(base_term, MAX_TERM),
                    first_index_of_term: index(c),
                    last_log_index: index(a),
                }),
                lease_promise_ms: b.at(0, 1000),
                quiesced: flag,
            }),
            2 => RpcResponse::TimeoutNow(TimeoutNowResponse { term }),
            3 => RpcResponse::InstallSnapshot(InstallSnapshotResponse {
                term,
                next_offset: a.at(0, 16),
                complete: flag,
                refusal: None,
            }),
            _ => RpcResponse::ReadIndex(ReadIndexResponse {
                term,
                read_index: flag.then(|| index(a)),
                leader_id: None,
            }),
        }
    }

    /// Carries out the target's actions and checks what it says and sends.
    fn run(&mut self, expect_refusal: Option<u64>) -> Result<(), TestCaseError> {
        loop {
            let durable_before = self.durable_term;
            let actions = self.engine.take_actions();
            if actions.is_empty() {
                return Ok(());
            }
            for action in actions {
                match action {
                    Action::Persist(batch) => {
                        if let Some(hs) = batch.hard_state {
                            self.durable_term = hs.current_term;
                        }
                        self.engine.on_persisted(PersistedWrite::of(&batch));
                    }
                    Action::Send { to, request, after_persist } => {
                        let durable =
                            if after_persist { self.durable_term } else { durable_before };
                        let pre_vote = matches!(&request, RpcRequest::RequestVote(r) if r.pre_vote);
                        prop_assert!(pre_vote || request.term() <= durable, "{request:?}");
                        if to == self.peer && self.sent.len() < 64 {
                            self.sent.push(SentRequest::of(&request));
                        }
                    }
                    Action::Respond { reply_to, response, after_persist } => {
                        let durable =
                            if after_persist { self.durable_term } else { durable_before };
                        let pre_vote =
                            matches!(&response, RpcResponse::RequestVote(r) if r.pre_vote);
                        prop_assert!(pre_vote || response.term() <= durable, "{response:?}");
                        if expect_refusal == Some(reply_to.0) {
                            let acknowledges = match &response {
                                RpcResponse::AppendEntries(r) => r.match_index.is_some(),
                                RpcResponse::RequestVote(r) => r.vote_granted,
                                RpcResponse::InstallSnapshot(r) => r.complete,
                                RpcResponse::ReadIndex(r) => r.read_index.is_some(),
                                _ => false,
                            };
                            prop_assert!(!acknowledges, "a refusal acknowledged: {response:?}");
                        }
                        if let RpcResponse::AppendEntries(AppendEntriesResponse {
                            match_index: Some(m),
                            ..
                        }) = response
                        {
                            let covered =
                                self.engine.last_log_id().index.max(self.engine.commit_index());
                            prop_assert!(m <= covered, "acknowledged {m} beyond the log");
                        }
                    }
                    Action::Apply(entries) => {
                        if let Some(last) = entries.last() {
                            self.engine.on_applied(last.index);
                        }
                    }
                    Action::Restore(meta) => self.engine.on_applied(meta.last_included.index),
                    Action::InstallSnapshot(meta) => {
                        self.engine.on_snapshot_installed(meta.last_included)
                    }
                    Action::TakeSnapshot { .. } => self.engine.on_snapshot_skipped(),
                    _ => {}
                }
            }
        }
    }

    fn step(&mut self, h: &Hostile) -> Result<(), TestCaseError> {
        let before = state_of(&self.engine);
        let malformed = self.engine.malformed_count();
        let (was_quiesced, leader_before) = (self.engine.is_quiesced(), self.engine.leader_id());
        let mut expect_refusal = None;
        let mut request_sent = None;
        match h {
            Hostile::Tick => {
                self.engine.tick();
                if was_quiesced {
                    prop_assert!(self.engine.is_quiesced(), "a tick woke a quiesced node");
                    prop_assert!(self.engine.take_actions().is_empty(), "a quiesced node acted");
                }
            }
            Hostile::Read => self.engine.read_index(ReadId(self.next_reply)),
            Hostile::Propose => {
                let _ = self.engine.propose(Bytes::from_static(b"p"));
            }
            Hostile::Response { pick, .. } => {
                let Some(sent) = self.sent.get(pick % self.sent.len().max(1)).copied() else {
                    return Ok(());
                };
                let response = self.response(&sent, h);
                self.engine.on_response(self.peer, sent, response);
            }
            request => {
                let request = self.build(request);
                self.next_reply += 1;
                expect_refusal = Some(self.next_reply);
                self.engine.on_request(request.clone(), ReplyId(self.next_reply));
                request_sent = Some(request);
            }
        }
        let refused = self.engine.malformed_count() > malformed;
        let after = state_of(&self.engine);
        if refused {
            prop_assert_eq!(after, before, "a refused message changed the node's state");
        }
        if let Some(request) = &request_sent {
            self.check_quiescence(request, refused, was_quiesced, before, leader_before)?;
        }
        let expect_refusal = expect_refusal.filter(|_| refused);
        self.run(expect_refusal)?;
        let after = state_of(&self.engine);
        prop_assert!(after.0.current_term >= before.0.current_term, "term went back");
        let climb = before.0.current_term.saturating_add(RESERVE_STEP).max(RESERVE);
        prop_assert!(after.0.current_term <= climb, "the term climbed the reserve too fast");
        prop_assert!(after.2 >= before.2, "commit index went back");
        prop_assert!(after.2 <= after.1.index, "commit index beyond the log");
        Ok(())
    }
}

impl Target {
    /// After `request` (`refused` or not): only a quiesce-marked heartbeat of the leader the node
    /// already followed in its term, ending where its log ends and at its commit index, leaves
    /// it quiesced; a refused request changes nothing; any other request wakes it.
    fn check_quiescence(
        &self,
        request: &RpcRequest,
        refused: bool,
        was_quiesced: bool,
        before: (HardState, LogId, LogIndex, Role),
        leader_before: Option<NodeId>,
    ) -> Result<(), TestCaseError> {
        let e = &self.engine;
        if refused {
            prop_assert_eq!(e.is_quiesced(), was_quiesced, "a refused message changed quiescence");
            return Ok(());
        }
        if !e.is_quiesced() {
            return Ok(());
        }
        let RpcRequest::AppendEntries(r) = request else {
            return Err(TestCaseError::fail(format!("quiesced by {request:?}")));
        };
        prop_assert!(e.config.quiesce_idle, "quiesced without quiesce_idle");
        prop_assert!(r.quiesce && r.entries.is_empty(), "quiesced by an unmarked {r:?}");
        let (hard_state, _, _, role) = before;
        prop_assert!(
            role == Role::Follower
                && r.term == hard_state.current_term
                && leader_before == Some(r.leader_id),
            "a mark from a stale or wrong leader quiesced the node (term {}, leader {:?}): {r:?}",
            hard_state.current_term,
            leader_before
        );
        prop_assert_eq!(e.last_log_id(), r.prev_log_id, "quiesced with another log end");
        prop_assert_eq!(e.commit_index(), r.leader_commit, "quiesced at another commit index");
        Ok(())
    }
}

fn hostile_config() -> ProptestConfig {
    let seed = std::env::var("RAFT_PROPTEST_SEED").ok().and_then(|s| s.parse().ok());
    ProptestConfig {
        cases: 1024,
        rng_seed: proptest::test_runner::RngSeed::Fixed(seed.unwrap_or(0x5EED_0012)),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(hostile_config())]

    /// An engine in any role and state reachable by legal traffic survives any sequence of
    /// random and adversarial messages from an authenticated peer: no panic (overflow panics in
    /// debug builds), no term or commit index going back, no term climbing the reserve faster
    /// than a step per message, no message of a term not yet durable, no refused message
    /// acknowledged or changing state, no node quiesced by a quiesce mark of a stale or wrong
    /// leader (or by anything but its leader's mark), no quiesced node acting on a tick.
    #[test]
    fn hostile_messages_never_panic_wrap_or_get_acknowledged(
        prefix in prop::collection::vec(legal(), 0..60),
        pre_vote in any::<bool>(),
        quiesce in any::<bool>(),
        target in 1u64..=3,
        peer_offset in 1u64..=2,
        attack in prop::collection::vec(hostile(), 1..40),
    ) {
        // Without PreVote, isolated nodes become candidates: every role is reached.
        let mut configs = super::snapshot_configs(3);
        for config in &mut configs {
            config.pre_vote = pre_vote;
            config.quiesce_idle = quiesce;
        }
        let mut c = Cluster::with_configs(configs);
        for op in prefix {
            match op {
                Legal::Tick(n) => c.tick(n),
                Legal::Propose => {
                    if let [leader] = c.leaders()[..] {
                        let _ = c.engine(leader).propose(Bytes::from_static(b"legal"));
                        c.settle();
                    }
                }
                Legal::Isolate(id) => {
                    c.isolated.insert(id);
                }
                Legal::Heal => c.isolated.clear(),
            }
        }
        let peer = (target + peer_offset - 1) % 3 + 1;
        let sent = c
            .log
            .iter()
            .filter_map(|(id, a)| match a {
                Action::Send { to, request, .. } if *id == target && *to == peer => {
                    Some(SentRequest::of(request))
                }
                _ => None,
            })
            .rev()
            .take(32)
            .collect();
        let node = c.nodes.remove(&target).unwrap();
        let durable_term = node.durable_hard_state.current_term;
        let mut t = Target { engine: node.engine, peer, durable_term, sent, next_reply: 0 };
        for h in &attack {
            t.step(h)?;
        }
    }
}
