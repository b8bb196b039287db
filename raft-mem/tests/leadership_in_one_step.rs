//! A node that wins and loses leadership inside one step of its main loop (review MEDIUM-2 of
//! perf6 and its follow-up). The node runs on the deterministic executor (FIFO, virtual time);
//! a fake leader 9 reaches it through forged requests (`handle_rpc`). The node's tasks are
//! paused while the test queues its inputs, so which inputs share a step is decided here, not
//! by the scheduler:
//!
//! 1. Node 1, the only voter, leads in term `t` and publishes it; paused, it is sent 9's
//!    AppendEntries of term `t + 1`, then 1,024 writes (they pass the node's "am I leader"
//!    check, which reads the published status) and 9's TimeoutNow of term `t + 1`.
//! 2. Its first step takes the AppendEntries and 1,023 writes (a step's 1,024 inputs): it
//!    follows 9 and refuses them, and the inbox wakes it again for the last write `w`, behind
//!    the TimeoutNow. The step ends with the node a follower.
//! 3. Answered, the test's first request is followed by 9's AppendEntries of term `t + 3`,
//!    queued while the main loop yields before its next step, so that step handles the
//!    TimeoutNow (the node campaigns and, alone, wins term `t + 2` at once), `w`, and the
//!    AppendEntries (it follows 9 again): leadership won and lost within one step.
//!
//! A third scenario checks when the loss is reported: a step in which node 1 accepts a write
//! `w`, follows 9 (AppendEntries of term `t + 1`), and then learns from 9 that `w`'s entry is
//! committed (a second AppendEntries whose commit index covers it).
//!
//! The last scenarios check a membership change whose leader loses and re-wins leadership
//! within one step (9's AppendEntries of term `t + 1`, then its TimeoutNow: the node wins term
//! `t + 2` alone): a change that keeps the voters (its proposer is answered by the applier),
//! and the end of a joint change (its caller waits in the main loop for the final
//! configuration), with the final configuration overwritten by 9 or kept. The last ones check
//! a caller waiting for its final configuration while a snapshot compacts the joint entry away,
//! one that asks only after its final configuration (and a later change) were compacted into a
//! snapshot, and one whose entries after the joint one a snapshot installed from 9 replaced.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use raft_core::{
    AppendEntriesRequest, AppendEntriesResponse, Bytes, Checksum, CommitError, Config, Entry,
    EntryPayload, Envelope, InstallSnapshotRequest, LogId, LogIndex, Membership, MembershipChange,
    MembershipError, Node, NodeInfo, ProposeError, RequestVoteResponse, Role, RpcHandler,
    RpcRequest, RpcResponse, SnapshotMeta, SnapshotStream, Status, Term, TimeoutNowRequest,
    WriteError,
};
use raft_mem::sim::{RecordingStateMachine, SimRuntime};
use raft_mem::{MemLogStore, MemSnapshotStore};

/// The node under test.
const NODE: u64 = 1;
/// The fake leader whose requests the test forges.
const FAKE_LEADER: u64 = 9;
/// A step's inputs: a copy of the main loop's `MAX_INPUTS_PER_STEP`, which raft-core does not
/// export (if it changes, the first step no longer ends right before `w`, and the checks that
/// the win and the loss share a step fail).
const STEP_INPUTS: usize = 1024;

fn config(max_unapplied_entries: u64) -> Config {
    let mut config = Config::new(NODE);
    config.tick_interval = Duration::from_millis(5);
    config.heartbeat_interval = Duration::from_millis(25);
    // No election of its own for seconds after it follows 9: long after the answers checked.
    config.election_timeout_min = Duration::from_secs(2);
    config.election_timeout_max = Duration::from_secs(3);
    config.max_unapplied_entries = max_unapplied_entries;
    config
}

/// How long (virtual time) the node has to answer the write: far less than its election
/// timeout, after which it would lead again and could answer it otherwise.
const ANSWER_WITHIN: Duration = Duration::from_millis(100);

/// What the test saw: the last write's answer, and the node's status after it.
struct Outcome {
    write: Option<Result<Bytes, WriteError>>,
    status: Status,
    /// The node's status while it led, before the step.
    before: Status,
    /// The statuses the node published from the first step on (one per step).
    published: Vec<Status>,
    /// The writes refused with `NotLeader`, of the 1,023 that should be.
    refused: usize,
}

/// Starts node 1, the only voter, with `max_unapplied_entries`, and runs it until it leads with
/// everything applied: returns it, its state machine and its status then.
fn start_leader(
    rt: &SimRuntime,
    max_unapplied_entries: u64,
) -> (Node, RecordingStateMachine, Status) {
    let state_machine = RecordingStateMachine::new();
    let builder = Node::builder(
        config(max_unapplied_entries),
        MemLogStore::new(),
        NoNetwork,
        state_machine.clone(),
        rt.tagged(NODE),
    )
    .bootstrap(Membership::with_voters([NODE]));
    let node = rt.block_on(Duration::from_secs(5), builder.start(), || {}).unwrap().unwrap();
    let leading = || {
        let s = node.status();
        s.role == Role::Leader && s.applied_index == s.last_log_index
    };
    assert!(rt.run_until(Duration::from_secs(10), || {}, leading), "it never led");
    let before = node.status();
    (node, state_machine, before)
}

/// The answer to `w`, once `node` gave it.
type Answer = Arc<Mutex<Option<Result<Bytes, WriteError>>>>;

/// Spawns the write `w` on `node` (not run yet): its answer lands in the slot returned.
fn spawn_write_w(rt: &SimRuntime, node: &Node) -> Answer {
    let answer = Answer::default();
    let (writer, slot) = (node.clone(), answer.clone());
    rt.spawn_task(async move {
        let written = writer.write(Bytes::from_static(b"w")).await;
        *slot.lock().unwrap() = Some(written);
    });
    answer
}

/// Runs the scenario of the module docs on a node with `max_unapplied_entries`.
fn win_and_lose_in_one_step(max_unapplied_entries: u64) -> Outcome {
    let rt = SimRuntime::new();
    let (node, _, before) = start_leader(&rt, max_unapplied_entries);
    let (term, last, commit) = (before.current_term, before.last_log_index, before.commit_index);
    let append = move |term| {
        Envelope::new(
            NODE,
            RpcRequest::AppendEntries(AppendEntriesRequest {
                term,
                leader_id: FAKE_LEADER,
                prev_log_id: LogId::new(before.current_term, last),
                entries: Vec::new(),
                leader_commit: commit,
                read_round: 0,
                quiesce: false,
            }),
        )
    };
    let timeout_now = Envelope::new(
        NODE,
        RpcRequest::TimeoutNow(TimeoutNowRequest { term: term + 1, leader_id: FAKE_LEADER }),
    );

    rt.pause(NODE);
    let handler = node.clone();
    rt.spawn_task(async move {
        assert!(handler.handle_rpc(append(term + 1)).await.is_ok());
        assert!(handler.handle_rpc(append(term + 3)).await.is_ok());
    });
    let refused = Arc::new(AtomicUsize::new(0));
    for i in 0..STEP_INPUTS - 1 {
        let (writer, refused) = (node.clone(), refused.clone());
        rt.spawn_task(async move {
            let answer = writer.write(Bytes::from(format!("refused {i}"))).await;
            assert!(
                matches!(answer, Err(WriteError::Refused(ProposeError::NotLeader { .. }))),
                "{answer:?}"
            );
            refused.fetch_add(1, Ordering::SeqCst);
        });
    }
    let answer = spawn_write_w(&rt, &node);
    let handler = node.clone();
    rt.spawn_task(async move {
        assert!(handler.handle_rpc(timeout_now).await.is_ok());
    });
    // The test's tasks queue their inputs; the node's wait.
    rt.run_for(Duration::ZERO, || {});
    assert_eq!(node.status().role, Role::Leader, "no step ran yet");
    rt.resume(NODE);
    // Every step yields before it takes its inputs (fewer than a step's inputs wait), so a
    // status published at the end of a step is seen after the executor step that ran it.
    let published = Mutex::new(Vec::new());
    let sample = || published.lock().unwrap().push(node.status());
    rt.run_until(ANSWER_WITHIN, sample, || answer.lock().unwrap().is_some());
    // The refused writers' tasks finish at this instant.
    rt.run_for(Duration::ZERO, sample);
    let write = answer.lock().unwrap().take();
    let status = node.status();
    let refused = refused.load(Ordering::SeqCst);
    rt.block_on(Duration::from_secs(5), async move { node.shutdown().await }, || {});
    rt.clear();
    Outcome { write, status, before, published: published.into_inner().unwrap(), refused }
}

/// Checks that the node did win term `t + 2` (its blank entry is in its log) and ended the
/// step following 9 in term `t + 3`; that no step ended with it leading in term `t + 2` (the
/// win and the loss shared a step); and that the first step refused the 1,023 other writes.
fn assert_led_in_between(outcome: &Outcome, entries_appended: u64) {
    let Outcome { status, before, published, refused, .. } = outcome;
    assert_eq!(status.role, Role::Follower, "{status:?}");
    assert_eq!(status.leader_id, Some(FAKE_LEADER), "{status:?}");
    assert_eq!(status.current_term, before.current_term + 3, "{status:?}");
    assert_eq!(status.last_log_index, before.last_log_index + entries_appended, "{status:?}");
    let won = before.current_term + 2;
    assert!(
        !published.iter().any(|s| s.role == Role::Leader && s.current_term == won),
        "a step ended with the node leading in term {won}: the win and the loss did not share one"
    );
    // The sampling sees every step's status: that of the first step (following 9 in t + 1) too.
    let first_step = |s: &&Status| s.role == Role::Follower && s.current_term == won - 1;
    assert!(published.iter().any(|s| first_step(&s)), "the first step's status was not sampled");
    assert!(published.iter().any(|s| s.current_term == won + 1), "no status sampled");
    assert_eq!(*refused, STEP_INPUTS - 1);
}

/// A write that waits for room (the backlog of one unapplied entry is full with the node's
/// blank entry) at a node that wins and loses leadership within one step is refused with
/// `NotLeader` when the step ends. Before (main before 937873e), deferred proposals were
/// refused only when the node had led at the end of the previous step: this one waited until
/// the node led again, and every later proposal queued behind it.
#[test]
fn a_write_waiting_for_room_at_a_leader_lost_in_the_same_step_is_refused() {
    let outcome = win_and_lose_in_one_step(1);
    assert!(
        matches!(
            &outcome.write,
            Some(Err(WriteError::Refused(ProposeError::NotLeader {
                leader_id: Some(FAKE_LEADER),
                ..
            })))
        ),
        "{:?}",
        outcome.write
    );
    assert_led_in_between(&outcome, 1);
}

/// A write accepted by a node that wins and loses leadership within one step fails with
/// `LeadershipLost` (outcome unknown) at once, as one accepted in an earlier step does. Before,
/// the applier was told of a lost leadership only when the node had led at the end of the
/// previous step: this write waited until its index was applied or overwritten, that is until
/// a leader (here the node itself, seconds later) committed it.
#[test]
fn a_write_accepted_by_a_leader_lost_in_the_same_step_fails_at_once() {
    let outcome = win_and_lose_in_one_step(1024);
    assert!(
        matches!(&outcome.write, Some(Err(WriteError::Failed(CommitError::LeadershipLost)))),
        "{:?}",
        outcome.write
    );
    // The blank entry of term t + 2 and the write.
    assert_led_in_between(&outcome, 2);
}

/// A write accepted by a leader that follows 9 on the next input and learns on a later input of
/// the same step that the write's entry is committed gets its response, as when the loss was
/// reported at the end of the step: the loss is reported with the commit index of the end of
/// the step (or of the node's next win), not of the input that ended the leadership. It got
/// `LeadershipLost` when the loss was reported at that input (review MEDIUM-1 of corefix).
#[test]
fn a_write_committed_after_the_loss_in_the_same_step_is_answered() {
    let rt = SimRuntime::new();
    let (node, state_machine, before) = start_leader(&rt, 1024);
    let (term, last, commit) = (before.current_term, before.last_log_index, before.commit_index);
    let append = move |prev_log_id, leader_commit| {
        Envelope::new(
            NODE,
            RpcRequest::AppendEntries(AppendEntriesRequest {
                term: term + 1,
                leader_id: FAKE_LEADER,
                prev_log_id,
                entries: Vec::new(),
                leader_commit,
                read_round: 0,
                quiesce: false,
            }),
        )
    };
    rt.pause(NODE);
    let answer = spawn_write_w(&rt, &node);
    let handler = node.clone();
    rt.spawn_task(async move {
        // Follows 9 (its log matches up to the entry before `w`'s, nothing is truncated) ...
        assert!(handler.handle_rpc(append(LogId::new(term, last), commit)).await.is_ok());
    });
    let handler = node.clone();
    rt.spawn_task(async move {
        // ... and learns that `w`'s entry is committed.
        assert!(handler.handle_rpc(append(LogId::new(term, last + 1), last + 1)).await.is_ok());
    });
    rt.run_for(Duration::ZERO, || {});
    assert_eq!(node.status().role, Role::Leader, "no step ran yet");
    rt.resume(NODE);
    rt.run_until(ANSWER_WITHIN, || {}, || answer.lock().unwrap().is_some());
    let write = answer.lock().unwrap().take();
    let status = node.status();
    rt.block_on(Duration::from_secs(5), async move { node.shutdown().await }, || {});
    rt.clear();
    assert_eq!((status.role, status.current_term), (Role::Follower, term + 1), "{status:?}");
    let applied = state_machine.entries();
    assert!(
        applied.iter().any(|e| e.index == last + 1
            && e.term == term
            && e.command().map(|c| &c[..]) == Some(&b"w"[..])),
        "w's entry was not applied: {:?}",
        applied.last()
    );
    assert!(matches!(write, Some(Ok(_))), "w's entry was applied with its term, but: {write:?}");
}

/// Runs until `node` leads with everything committed and applied; returns its status then.
fn run_until_leading_idle(rt: &SimRuntime, node: &Node) -> Status {
    let idle = || {
        let s = node.status();
        s.role == Role::Leader
            && s.commit_index == s.last_log_index
            && s.applied_index == s.last_log_index
    };
    assert!(rt.run_until(Duration::from_secs(10), || {}, idle), "it never led");
    node.status()
}

/// 9's AppendEntries of term `term`: `entries` after `prev_log_id`, commit index `commit`.
fn append_from_9(
    term: Term,
    prev_log_id: LogId,
    entries: Vec<Entry>,
    commit: LogIndex,
) -> Envelope {
    Envelope::new(
        NODE,
        RpcRequest::AppendEntries(AppendEntriesRequest {
            term,
            leader_id: FAKE_LEADER,
            prev_log_id,
            entries,
            leader_commit: commit,
            read_round: 0,
            quiesce: false,
        }),
    )
}

/// Pauses the node, queues `requests` (forged, from 9) while it is paused, and lets it take
/// them in one step; returns the statuses it published from that step on, for `within`.
fn one_step(
    rt: &SimRuntime,
    node: &Node,
    requests: Vec<Envelope>,
    within: Duration,
) -> Vec<Status> {
    rt.pause(NODE);
    for request in requests {
        let handler = node.clone();
        // The answers wait for writes that may be held: nobody waits for them.
        rt.spawn_task(async move {
            let _ = handler.handle_rpc(request).await;
        });
    }
    rt.run_for(Duration::ZERO, || {});
    rt.resume(NODE);
    let published = Mutex::new(Vec::new());
    rt.run_for(within, || published.lock().unwrap().push(node.status()));
    published.into_inner().unwrap()
}

/// Checks that a membership change was answered `LeadershipLost` (outcome unknown).
fn assert_leadership_lost(answer: &MembershipAnswerValue) {
    assert!(
        matches!(answer, Some(Err(MembershipError::Commit(CommitError::LeadershipLost)))),
        "{answer:?}"
    );
}

/// What a membership change returned.
type MembershipAnswerValue = Option<Result<Membership, MembershipError>>;

/// The answer to a membership change.
type MembershipAnswer = Arc<Mutex<MembershipAnswerValue>>;

/// Spawns `change` on `node` (not run yet): its answer lands in the slot returned.
fn spawn_change(rt: &SimRuntime, node: &Node, change: MembershipChange) -> MembershipAnswer {
    let answer = MembershipAnswer::default();
    let (changer, slot) = (node.clone(), answer.clone());
    rt.spawn_task(async move {
        let changed = changer.change_membership(change).await;
        *slot.lock().unwrap() = Some(changed);
    });
    answer
}

/// A change that keeps the voters (adding a learner: one entry, whose proposer the applier
/// answers) proposed in the step in which the leader's entry for it is overwritten by 9's
/// AppendEntries of term `t + 1` and the node wins term `t + 2` on 9's TimeoutNow: the caller
/// gets `LeadershipLost` (outcome unknown; here: overwritten) when the step ends, not an answer
/// that waits for the new leadership.
#[test]
fn a_learner_added_at_a_leader_lost_and_rewon_in_one_step_fails() {
    let rt = SimRuntime::new();
    let (node, _, before) = start_leader(&rt, 1024);
    let (term, last, commit) = (before.current_term, before.last_log_index, before.commit_index);
    rt.pause(NODE);
    let answer = spawn_change(&rt, &node, MembershipChange::AddLearner(2, NodeInfo::default()));
    rt.run_for(Duration::ZERO, || {});
    // 9's entry replaces the change's at `last + 1` (the membership in force reverts).
    let overwrite = Entry { index: last + 1, term: term + 1, payload: EntryPayload::Blank };
    let requests = vec![
        append_from_9(term + 1, LogId::new(term, last), vec![overwrite], commit),
        Envelope::new(
            NODE,
            RpcRequest::TimeoutNow(TimeoutNowRequest { term: term + 1, leader_id: FAKE_LEADER }),
        ),
    ];
    let published = one_step(&rt, &node, requests, ANSWER_WITHIN);
    let status = node.status();
    let answer = answer.lock().unwrap().take();
    let membership = node.membership();
    rt.block_on(Duration::from_secs(5), async move { node.shutdown().await }, || {});
    rt.clear();
    assert_eq!((status.role, status.current_term), (Role::Leader, term + 2), "{status:?}");
    assert!(published.iter().all(|s| s.role == Role::Leader), "not one step: {published:?}");
    assert!(!membership.contains(2), "the change was overwritten: {membership:?}");
    assert_leadership_lost(&answer);
}

/// Node 2 as node 1 sees it through its network: grants every vote and acknowledges every
/// AppendEntries; once it acknowledges index `hold_writes_from` (or beyond), node 1's log
/// writes are held at a gate (the test opens it). With `held_acks` (an index and a gate), its
/// answers to AppendEntries reaching that index (or beyond) wait at that gate.
struct YesPeer {
    store: support::FaultyStore,
    hold_writes_from: Arc<AtomicU64>,
    held_acks: Option<(Arc<AtomicU64>, support::Gate)>,
}

impl YesPeer {
    /// A peer that holds node 1's writes from `hold_writes_from` on, and no acknowledgement.
    fn new(store: &support::FaultyStore, hold_writes_from: &Arc<AtomicU64>) -> Self {
        Self { store: store.clone(), hold_writes_from: hold_writes_from.clone(), held_acks: None }
    }
}

#[async_trait]
impl raft_core::Network for YesPeer {
    async fn send(
        &self,
        envelope: Envelope,
    ) -> Result<raft_core::RpcResponse, raft_core::NetworkError> {
        match envelope.request {
            RpcRequest::RequestVote(vote) if envelope.receiver == 2 => {
                Ok(RpcResponse::RequestVote(RequestVoteResponse {
                    term: vote.term,
                    vote_granted: true,
                    pre_vote: vote.pre_vote,
                }))
            }
            RpcRequest::AppendEntries(append) if envelope.receiver == 2 => {
                let match_index = append.prev_log_id.index + append.entries.len() as u64;
                if match_index >= self.hold_writes_from.load(Ordering::SeqCst) {
                    let mut gate = self.store.write_gate.lock().unwrap();
                    gate.get_or_insert_with(support::Gate::default);
                }
                if let Some((from, gate)) = &self.held_acks {
                    if match_index >= from.load(Ordering::SeqCst) {
                        gate.pass().await;
                    }
                }
                Ok(RpcResponse::AppendEntries(AppendEntriesResponse {
                    term: append.term,
                    match_index: Some(match_index),
                    conflict: None,
                    lease_promise_ms: 0,
                    quiesced: false,
                }))
            }
            _ => {
                let reason = "no network in this test".to_owned();
                Err(raft_core::NetworkError::Unreachable { peer: envelope.receiver, reason })
            }
        }
    }
}

/// How the joint change's final configuration fares in the step that loses and re-wins.
enum Final {
    /// 9's AppendEntries holds another configuration at its index (it replaces it).
    Overwritten,
    /// 9's AppendEntries holds no entries (the node keeps it; its next leadership commits it).
    Kept,
}

/// A state machine whose applies of entries at `hold_from` or later wait at `gate`.
#[derive(Clone)]
struct HeldMachine {
    hold_from: Arc<AtomicU64>,
    gate: support::Gate,
}

impl Default for HeldMachine {
    fn default() -> Self {
        Self { hold_from: Arc::new(AtomicU64::new(u64::MAX)), gate: support::Gate::default() }
    }
}

#[async_trait]
impl raft_core::StateMachine for HeldMachine {
    async fn apply(
        &mut self,
        entries: &[Entry],
    ) -> Result<Vec<Bytes>, raft_core::StateMachineError> {
        let hold_from = self.hold_from.load(Ordering::SeqCst);
        if entries.last().is_some_and(|entry| entry.index >= hold_from) {
            self.gate.pass().await;
        }
        Ok(entries.iter().map(|entry| entry.command().cloned().unwrap_or_default()).collect())
    }

    /// An empty state: the tests read only the node's log, membership and answers.
    async fn snapshot(&mut self) -> Result<Option<SnapshotStream>, raft_core::StateMachineError> {
        Ok(Some(futures::stream::iter([Ok(Bytes::new())]).boxed()))
    }

    /// Takes any state (a snapshot installed from 9): the tests do not read it.
    async fn restore(
        &mut self,
        _meta: &SnapshotMeta,
        mut data: SnapshotStream,
    ) -> Result<(), raft_core::StateMachineError> {
        while let Some(chunk) = data.next().await {
            chunk?;
        }
        Ok(())
    }
}

/// Whether the caller of the joint change waits in the main loop for the final configuration
/// when the node loses and re-wins leadership.
#[derive(PartialEq)]
enum Caller {
    /// It waits there (the joint entry was applied before the step).
    Waiting,
    /// It is not there yet: the applier is held before the joint entry (committed), and the
    /// caller asks to wait only after the step, at the leader of `t + 2`, before that
    /// leadership commits the entry at `j + 1`.
    Late,
    /// As `Late`, but the caller asks after the leadership of `t + 2` committed `j + 1`.
    AfterCommit,
}

/// Runs `node` a while longer, then takes the caller's answer and the node's status and
/// membership, and shuts it down.
fn answer_and_shut_down(
    rt: &SimRuntime,
    node: Node,
    answer: &MembershipAnswer,
) -> (MembershipAnswerValue, Status, Membership) {
    rt.run_for(ANSWER_WITHIN, || {});
    let answer = answer.lock().unwrap().take();
    let (status, membership) = (node.status(), node.membership());
    rt.block_on(Duration::from_secs(5), async move { node.shutdown().await }, || {});
    rt.clear();
    (answer, status, membership)
}

/// Runs until the joint configuration at `joint` is committed, applied up to `applied`, and
/// the final one appended after it (not durable); checks that, a while later, the final one is
/// still not committed, nor applied further, and the caller has no answer.
fn run_until_final_configuration_appended(
    rt: &SimRuntime,
    node: &Node,
    answer: &MembershipAnswer,
    joint: LogIndex,
    applied: LogIndex,
) {
    let waiting = || {
        let s = node.status();
        s.commit_index == joint && s.applied_index == applied && s.last_log_index == joint + 1
    };
    assert!(rt.run_until(ANSWER_WITHIN, || {}, waiting), "{:?}", node.status());
    rt.run_for(ANSWER_WITHIN, || {});
    assert!(answer.lock().unwrap().is_none(), "{:?}", answer.lock().unwrap());
    assert_eq!(node.status().commit_index, joint, "the final configuration committed");
    assert_eq!(node.status().applied_index, applied, "{:?}", node.status());
}

/// Node 1 leads voters {1, 2} (node 2 acknowledges everything) in term `t` and removes 2: the
/// joint configuration at `j` commits, the node appends the final one ({1}) at `j + 1`, and
/// its writes are held from then on, so the final configuration is not committed when the
/// caller waits for it (`caller` says whether the caller waits before the step or only after
/// it). In one step the node follows 9 (term `t + 1`, `final_entry` decides what becomes of
/// `j + 1`) and, on 9's TimeoutNow, wins term `t + 2` alone. Then its writes resume, and its
/// leadership commits what is at `j + 1`. Returns the caller's answer and the membership in
/// force then.
fn end_of_joint_change_lost_and_rewon(
    final_entry: &Final,
    caller: &Caller,
) -> (MembershipAnswerValue, Membership) {
    let rt = SimRuntime::new();
    let store = support::FaultyStore::default();
    let hold_writes_from = Arc::new(AtomicU64::new(u64::MAX));
    let network = YesPeer::new(&store, &hold_writes_from);
    let machine = HeldMachine::default();
    let (hold_applies_from, applies) = (machine.hold_from.clone(), machine.gate.clone());
    // One proposal slot: a caller waiting for the final configuration holds it (checked
    // below), so the main loop has its wait before the step.
    let mut config = config(1024);
    config.max_pending_proposals = 1;
    let builder = Node::builder(config, store.clone(), network, machine, rt.tagged(NODE))
        .bootstrap(Membership::with_voters([NODE, 2]));
    let node = rt.block_on(Duration::from_secs(5), builder.start(), || {}).unwrap().unwrap();
    let before = run_until_leading_idle(&rt, &node);
    let (term, last) = (before.current_term, before.last_log_index);
    let (joint, last_config) = (last + 1, last + 2);
    hold_writes_from.store(joint, Ordering::SeqCst);
    if *caller != Caller::Waiting {
        hold_applies_from.store(joint, Ordering::SeqCst);
    }
    let answer = spawn_change(&rt, &node, MembershipChange::RemoveNode(2));
    // The joint configuration commits (and, with the caller waiting, is applied: its caller
    // then waits for the final one); the final one is appended but not durable.
    let applied = if *caller == Caller::Waiting { joint } else { last };
    run_until_final_configuration_appended(&rt, &node, &answer, joint, applied);
    assert!(node.membership().voters().len() == 1, "{:?}", node.membership());
    if *caller == Caller::Waiting {
        // The joint proposal was answered (its slot is free again), so the slot is the
        // waiting caller's: it took it just before handing its wait to the main loop, which
        // takes that input before the step's. A write waits for the slot meanwhile.
        let probe = Arc::new(Mutex::new(None));
        let (writer, slot) = (node.clone(), probe.clone());
        rt.spawn_task(async move {
            *slot.lock().unwrap() = Some(writer.propose(Bytes::from_static(b"probe")).await);
        });
        rt.run_for(ANSWER_WITHIN, || {});
        assert!(probe.lock().unwrap().is_none(), "the slot is free: the caller does not wait");
    }

    let (prev, entries) = match final_entry {
        Final::Overwritten => {
            // 9's configuration: voter 1 with other metadata, and 2 as a learner.
            let info = NodeInfo::new("9's address of 1", "");
            let theirs = Membership::new([(NODE, info)], [(2, NodeInfo::default())]).unwrap();
            let entry = Entry {
                index: last_config,
                term: term + 1,
                payload: EntryPayload::Membership(theirs),
            };
            (LogId::new(term, joint), vec![entry])
        }
        Final::Kept => (LogId::new(term, last_config), Vec::new()),
    };
    let requests = vec![
        append_from_9(term + 1, prev, entries, joint),
        Envelope::new(
            NODE,
            RpcRequest::TimeoutNow(TimeoutNowRequest { term: term + 1, leader_id: FAKE_LEADER }),
        ),
    ];
    let published = one_step(&rt, &node, requests, Duration::from_millis(10));
    let status = node.status();
    assert_eq!((status.role, status.current_term), (Role::Leader, term + 2), "{status:?}");
    assert!(published.iter().all(|s| s.role == Role::Leader), "not one step: {published:?}");
    assert_eq!(status.commit_index, joint, "{status:?}");
    if *caller != Caller::Waiting {
        // The loss did not fail the joint proposal (committed: only proposals above the commit
        // index fail then); its applier answers it, `Ok` (same term), once it applies it. So a
        // later `LeadershipLost` comes from the wait for the final configuration (review LOW-2
        // of memwait), which the caller can only start after that `Ok`.
        rt.run_for(ANSWER_WITHIN, || {});
        assert!(answer.lock().unwrap().is_none(), "{:?}", answer.lock().unwrap());
        assert!(node.status().applied_index < joint, "{:?}", node.status());
    }
    if *caller == Caller::Late {
        // The joint entry is applied: its caller asks to wait for the final configuration,
        // which the leadership of t + 2 cannot commit yet (its writes are held).
        applies.open();
        let applied = || node.status().applied_index == joint;
        assert!(rt.run_until(ANSWER_WITHIN, || {}, applied), "{:?}", node.status());
        rt.run_for(ANSWER_WITHIN, || {});
        assert_eq!(node.status().commit_index, joint, "{:?}", node.status());
    }
    // The writes resume: the leadership of t + 2 commits its blank entry, and so `j + 1`.
    if let Some(gate) = store.write_gate.lock().unwrap().take() {
        gate.open();
    }
    if *caller == Caller::AfterCommit {
        let committed = || node.status().commit_index > last_config;
        assert!(rt.run_until(ANSWER_WITHIN, || {}, committed), "{:?}", node.status());
        // The joint entry is applied: its caller asks to wait for the final configuration.
        applies.open();
    }
    let committed = || node.status().applied_index > last_config;
    assert!(rt.run_until(ANSWER_WITHIN, || {}, committed), "{:?}", node.status());
    let (answer, _, membership) = answer_and_shut_down(&rt, node, &answer);
    (answer, membership)
}

/// `end_of_joint_change_lost_and_rewon` with the final configuration overwritten: checks that
/// 9's configuration is in force at the end; returns the caller's answer.
fn overwritten(caller: &Caller) -> MembershipAnswerValue {
    let (answer, membership) = end_of_joint_change_lost_and_rewon(&Final::Overwritten, caller);
    assert!(membership.is_learner(2), "9's configuration is not in force: {membership:?}");
    answer
}

/// `end_of_joint_change_lost_and_rewon` with the final configuration kept: checks that the
/// change completed; returns the caller's answer.
fn kept(caller: &Caller) -> MembershipAnswerValue {
    let (answer, membership) = end_of_joint_change_lost_and_rewon(&Final::Kept, caller);
    assert_eq!(membership, Membership::with_voters([NODE]), "the change did not complete");
    answer
}

/// The caller of a joint change waits (in the main loop) for the final configuration; its
/// leader loses and re-wins leadership within one step, in which 9 replaces that
/// configuration with its own: the caller gets `LeadershipLost`, as when the node does not
/// lead at the end of the step. Before, the waiter looked only at the role at the end of the
/// step: it waited on, and got `Ok` with 9's membership once the new leadership committed it.
#[test]
fn a_joint_change_whose_final_configuration_is_overwritten_in_one_step_fails() {
    assert_leadership_lost(&overwritten(&Caller::Waiting));
}

/// The same with the final configuration kept (9 sends no entries): the next leadership (the
/// node's own, term `t + 2`) commits it. The caller gets `LeadershipLost`, the documented
/// answer when the node stops leading before it knows the final configuration committed
/// (outcome unknown: here the change did complete). Before, it got `Ok` once term `t + 2`
/// committed it: a true answer, but not the documented one, and unlike a proposal accepted in
/// the same circumstances.
#[test]
fn a_joint_change_whose_final_configuration_is_kept_in_one_step_fails_as_documented() {
    assert_leadership_lost(&kept(&Caller::Waiting));
}

/// The caller of a joint change asks to wait for the final configuration only after its
/// leader lost and re-won leadership in one step in which 9 replaced that configuration (the
/// applier was held before the joint entry, committed): it asks the leader of `t + 2`, which
/// has not committed the entry at `j + 1` yet. It gets `LeadershipLost`, as a caller that
/// waited before the step does. Before (review MEDIUM-1 of memwait), the wait was stored with
/// the joint index only: the new leadership's commit of 9's configuration answered it `Ok`.
#[test]
fn a_joint_change_asking_for_its_end_after_a_loss_and_rewin_fails() {
    assert_leadership_lost(&overwritten(&Caller::Late));
}

/// The same with the final configuration kept: `LeadershipLost` (outcome unknown when the
/// caller asked: the leader of `t + 2` had not committed it), as for a caller that waited
/// before the step.
#[test]
fn a_joint_change_asking_for_its_end_after_a_loss_and_rewin_with_its_final_kept_fails() {
    assert_leadership_lost(&kept(&Caller::Late));
}

/// The caller asks to wait for the end of its joint change only after the leader of `t + 2`
/// committed 9's configuration at `j + 1`: `LeadershipLost` (the joint entry's leadership ended
/// before it knew its final configuration committed; another leadership appended the one
/// committed). Before, `Ok` with 9's configuration.
#[test]
fn a_joint_change_asking_for_its_end_after_an_overwrite_committed_fails() {
    assert_leadership_lost(&overwritten(&Caller::AfterCommit));
}

/// The same with the final configuration kept: the configuration committed at `j + 1` is the
/// one the joint entry's leadership appended, the caller's own: `Ok` with it.
#[test]
fn a_joint_change_asking_for_its_end_after_its_own_final_committed_succeeds() {
    let answer = kept(&Caller::AfterCommit);
    let own = Membership::with_voters([NODE]);
    assert!(matches!(&answer, Some(Ok(m)) if *m == own), "{answer:?}");
}

/// Node 1 leads voters {1, 2} in term `t` and removes 2: the joint configuration at `j`
/// commits and is applied, the final one ({1}) at `j + 1` commits but its apply is held; a
/// second change (adding learner 4) is accepted at `j + 2` (its write held: not committed).
/// Node 1 then follows 9 (term `t + 1`) and the applies resume: the first caller gets `Ok`
/// with its final configuration, committed before the loss. Before (review LOW-1 of memwait),
/// "committed" was decided from the latest membership (the learner's, not committed): the
/// caller got `LeadershipLost`; with the leader still leading it would have waited for, and
/// got, the second change's membership.
#[test]
fn a_joint_change_whose_final_configuration_committed_before_a_later_change_succeeds() {
    let rt = SimRuntime::new();
    let store = support::FaultyStore::default();
    let network = YesPeer::new(&store, &Arc::new(AtomicU64::new(u64::MAX)));
    let machine = HeldMachine::default();
    let (hold_applies_from, applies) = (machine.hold_from.clone(), machine.gate.clone());
    let builder = Node::builder(config(1024), store.clone(), network, machine, rt.tagged(NODE))
        .bootstrap(Membership::with_voters([NODE, 2]));
    let node = rt.block_on(Duration::from_secs(5), builder.start(), || {}).unwrap().unwrap();
    let before = run_until_leading_idle(&rt, &node);
    let (term, last) = (before.current_term, before.last_log_index);
    let (joint, last_config) = (last + 1, last + 2);
    hold_applies_from.store(last_config, Ordering::SeqCst);
    let first = spawn_change(&rt, &node, MembershipChange::RemoveNode(2));
    let waiting = || {
        let s = node.status();
        s.commit_index == last_config && s.applied_index == joint
    };
    assert!(rt.run_until(ANSWER_WITHIN, || {}, waiting), "{:?}", node.status());
    // The second change's entry is appended, not written.
    *store.write_gate.lock().unwrap() = Some(support::Gate::default());
    let second = spawn_change(&rt, &node, MembershipChange::AddLearner(4, NodeInfo::default()));
    let appended = || node.status().last_log_index == last_config + 1;
    assert!(rt.run_until(ANSWER_WITHIN, || {}, appended), "{:?}", node.status());
    rt.run_for(ANSWER_WITHIN, || {});
    assert!(first.lock().unwrap().is_none(), "{:?}", first.lock().unwrap());
    assert!(node.membership().is_learner(4), "{:?}", node.membership());
    assert_eq!(node.status().commit_index, last_config, "{:?}", node.status());

    let requests =
        vec![append_from_9(term + 1, LogId::new(term, last_config), Vec::new(), last_config)];
    one_step(&rt, &node, requests, Duration::from_millis(10));
    assert_eq!(node.status().role, Role::Follower, "{:?}", node.status());
    applies.open();
    let applied = || node.status().applied_index >= last_config;
    assert!(rt.run_until(ANSWER_WITHIN, || {}, applied), "{:?}", node.status());
    rt.run_for(ANSWER_WITHIN, || {});
    let first = first.lock().unwrap().take();
    let second = second.lock().unwrap().take();
    if let Some(gate) = store.write_gate.lock().unwrap().take() {
        gate.open();
    }
    rt.block_on(Duration::from_secs(5), async move { node.shutdown().await }, || {});
    rt.clear();
    assert!(
        matches!(&first, Some(Ok(membership)) if *membership == Membership::with_voters([NODE])),
        "{first:?}"
    );
    assert_leadership_lost(&second);
}

/// Node 1 leads voters {1, 2} in term `t`, takes a snapshot after every entry applied and keeps
/// no entry below it, and removes 2 with two writes proposed in the same step: the joint
/// configuration at `j`, the writes at `j + 1` and `j + 2`, the final configuration ({1}) at
/// `j + 3`, whose write is held. The joint entry and the writes commit and are applied, and the
/// snapshot at `j + 2` folds the joint configuration into the compacted prefix (in force at
/// `j + 2`): the caller, waiting for its final configuration, gets nothing while `j + 3` is not
/// committed, and `Ok({1})` once it is committed and applied. Before (review HIGH-1 of
/// memwait), the compacted prefix was taken for the first membership after `j`: the caller got
/// `Ok` with the joint configuration while its final one was not committed.
#[test]
fn a_joint_change_compacted_before_its_final_configuration_commits_waits_for_it() {
    let answer = joint_change_compacted_before_its_final_configuration(false);
    let own = Membership::with_voters([NODE]);
    assert!(matches!(&answer, Some(Ok(m)) if *m == own), "{answer:?}");
}

/// The same, but node 1 then follows 9 (term `t + 1`) instead of committing the final
/// configuration: the entries after the joint one are compacted, so the final configuration is
/// not known from the log, and the node no longer leads in the joint entry's term: the caller
/// gets `LeadershipLost` (outcome unknown). Before, `Ok` with the joint configuration, before
/// the loss.
#[test]
fn a_joint_change_compacted_before_its_leader_is_lost_fails() {
    assert_leadership_lost(&joint_change_compacted_before_its_final_configuration(true));
}

/// Starts node 1 as the leader of voters {1, 2} (node 2 is a `YesPeer` that holds node 1's
/// writes once it acknowledges `hold_writes_from`), with a snapshot store; if `compacting`, it
/// takes a snapshot after every entry applied and keeps no entry below it. Runs it until it
/// leads with everything applied; returns it, its log store, its snapshot store and its status
/// then.
fn start_leader_of_two(
    rt: &SimRuntime,
    hold_writes_from: &Arc<AtomicU64>,
    compacting: bool,
) -> (Node, support::FaultyStore, MemSnapshotStore, Status) {
    let store = support::FaultyStore::default();
    let network = YesPeer::new(&store, hold_writes_from);
    start_leader_of_two_with(rt, network, compacting, |_| {})
}

/// `start_leader_of_two` with node 2 as `network` (its store is node 1's log store) and the
/// configuration changed by `adjust`.
fn start_leader_of_two_with(
    rt: &SimRuntime,
    network: YesPeer,
    compacting: bool,
    adjust: impl FnOnce(&mut Config),
) -> (Node, support::FaultyStore, MemSnapshotStore, Status) {
    let store = network.store.clone();
    let snapshots = MemSnapshotStore::new();
    let mut config = config(1024);
    if compacting {
        config.snapshot_interval_entries = 1;
        config.snapshot_keep_entries = 0;
    }
    adjust(&mut config);
    let builder =
        Node::builder(config, store.clone(), network, HeldMachine::default(), rt.tagged(NODE))
            .snapshot_store(snapshots.clone())
            .bootstrap(Membership::with_voters([NODE, 2]));
    let node = rt.block_on(Duration::from_secs(5), builder.start(), || {}).unwrap().unwrap();
    let before = run_until_leading_idle(rt, &node);
    (node, store, snapshots, before)
}

/// Queues `change` and two writes at `node`, paused meanwhile so that they share a step: the
/// joint entry at `j`, the writes at `j + 1` and `j + 2`. Returns the change's answer slot.
fn change_then_two_writes(
    rt: &SimRuntime,
    node: &Node,
    change: MembershipChange,
) -> MembershipAnswer {
    rt.pause(NODE);
    let answer = spawn_change(rt, node, change);
    for command in [&b"w1"[..], &b"w2"[..]] {
        let writer = node.clone();
        rt.spawn_task(async move {
            let _ = writer.write(Bytes::from_static(command)).await;
        });
    }
    rt.run_for(Duration::ZERO, || {});
    rt.resume(NODE);
    answer
}

/// Whether `node` committed and applied its log up to `last_write`, which `snapshots` holds
/// (the joint entry before it compacted), and its log ends at `last_config`, the final
/// configuration.
fn writes_compacted_before(
    node: &Node,
    snapshots: &MemSnapshotStore,
    last_write: LogIndex,
    last_config: LogIndex,
) -> bool {
    let s = node.status();
    s.commit_index == last_write
        && s.applied_index == last_write
        && s.last_log_index == last_config
        && snapshot_index(snapshots) == last_write
}

/// The scenario of `a_joint_change_compacted_before_its_final_configuration_commits_waits_for_it`
/// up to the compaction; then, if `lose`, node 1 follows 9 (term `t + 1`), else its writes
/// resume and the final configuration commits. Returns the caller's answer then.
fn joint_change_compacted_before_its_final_configuration(lose: bool) -> MembershipAnswerValue {
    let rt = SimRuntime::new();
    let hold_writes_from = Arc::new(AtomicU64::new(u64::MAX));
    let (node, store, snapshots, before) = start_leader_of_two(&rt, &hold_writes_from, true);
    let (term, last) = (before.current_term, before.last_log_index);
    let (joint, last_write, last_config) = (last + 1, last + 3, last + 4);
    hold_writes_from.store(last_write, Ordering::SeqCst);
    let answer = change_then_two_writes(&rt, &node, MembershipChange::RemoveNode(2));
    let compacted = || writes_compacted_before(&node, &snapshots, last_write, last_config);
    // The first answer seen before the final configuration can commit.
    let early = Mutex::new(None);
    let watch = || {
        if let Some(answer) = answer.lock().unwrap().as_ref() {
            early.lock().unwrap().get_or_insert_with(|| format!("{answer:?}"));
        }
    };
    assert!(rt.run_until(ANSWER_WITHIN, watch, compacted), "{:?}", node.status());
    rt.run_for(ANSWER_WITHIN, watch);
    let status = node.status();
    assert_eq!((status.commit_index, status.applied_index), (last_write, last_write));
    assert!(node.membership().voters().len() == 1, "{:?}", node.membership());
    assert_eq!(
        snapshot_index(&snapshots),
        last_write,
        "no snapshot folded the joint configuration"
    );
    let early = early.into_inner().unwrap();
    assert!(early.is_none(), "answered before {last_config} committed: {early:?}");
    assert!(joint < last_write, "the snapshot does not end above the joint entry");

    if lose {
        let prev = LogId::new(term, last_write);
        let requests = vec![append_from_9(term + 1, prev, Vec::new(), last_write)];
        one_step(&rt, &node, requests, ANSWER_WITHIN);
        assert_eq!(node.status().role, Role::Follower, "{:?}", node.status());
    } else {
        // The writes resume: the final configuration commits and is applied.
        if let Some(gate) = store.write_gate.lock().unwrap().take() {
            gate.open();
        }
        let applied = || node.status().applied_index >= last_config;
        assert!(rt.run_until(ANSWER_WITHIN, || {}, applied), "{:?}", node.status());
        rt.run_for(ANSWER_WITHIN, || {});
    }
    let answer = answer.lock().unwrap().take();
    if let Some(gate) = store.write_gate.lock().unwrap().take() {
        gate.open();
    }
    rt.block_on(Duration::from_secs(5), async move { node.shutdown().await }, || {});
    rt.clear();
    answer
}

/// The tag of the caller's task in the tests whose caller asks late: pausing it holds the
/// caller between its joint proposal's answer and its wait for the final configuration, while
/// the node runs on.
const CALLER: u64 = 7;

/// Snapshots `store` holds up to (0: none).
fn snapshot_index(store: &MemSnapshotStore) -> LogIndex {
    store.latest_meta().map_or(0, |meta| meta.last_included.index)
}

/// Node 1 leads voters {1, 2} in term `t`, takes a snapshot after every entry applied and keeps
/// no entry below it, and removes 2 (joint configuration at `j`, final one, {1}, at `j + 1`).
/// The caller's task is paused once the joint entry is appended, so it asks to wait for the
/// final configuration only after that configuration was committed, applied and compacted into
/// a snapshot: its wait finds `FirstAfter::Compacted` while the node leads in `t`. If `second`,
/// another caller adds learner 4 after the final configuration, and that change too is
/// committed, applied and compacted before the first caller asks. The node has one proposal
/// slot, which a caller waiting for its final configuration holds: a write that gets its
/// answer before the caller is resumed shows the caller had not asked yet. Returns the first
/// caller's answer and the membership in force then.
fn joint_change_compacted_before_its_caller_asks(
    second: bool,
) -> (MembershipAnswerValue, Membership) {
    let rt = SimRuntime::new();
    let store = support::FaultyStore::default();
    let network = YesPeer::new(&store, &Arc::new(AtomicU64::new(u64::MAX)));
    let (node, _, snapshots, before) =
        start_leader_of_two_with(&rt, network, true, |config| config.max_pending_proposals = 1);
    let (term, joint) = (before.current_term, before.last_log_index + 1);
    let answer = spawn_change(&rt.tagged(CALLER), &node, MembershipChange::RemoveNode(2));
    let proposed = || node.status().last_log_index >= joint;
    assert!(rt.run_until(ANSWER_WITHIN, || {}, proposed), "{:?}", node.status());
    rt.pause(CALLER);
    let own = Membership::with_voters([NODE]);
    let final_compacted = || {
        let s = node.status();
        node.membership() == own && s.applied_index > joint && snapshot_index(&snapshots) > joint
    };
    assert!(rt.run_until(ANSWER_WITHIN, || {}, final_compacted), "{:?}", node.status());
    if second {
        let learner =
            spawn_change(&rt, &node, MembershipChange::AddLearner(4, NodeInfo::default()));
        let done = || learner.lock().unwrap().is_some();
        assert!(rt.run_until(ANSWER_WITHIN, || {}, done), "{:?}", node.status());
        let learner = learner.lock().unwrap().take();
        assert!(matches!(&learner, Some(Ok(m)) if m.is_learner(4)), "{learner:?}");
    }
    // The slot is free: the paused caller has not asked to wait yet.
    let probe = Arc::new(Mutex::new(None));
    let (writer, slot) = (node.clone(), probe.clone());
    rt.spawn_task(async move {
        *slot.lock().unwrap() = Some(writer.propose(Bytes::from_static(b"probe")).await);
    });
    let probed = || probe.lock().unwrap().is_some();
    assert!(rt.run_until(ANSWER_WITHIN, || {}, probed), "{:?}", node.status());
    let probe = probe.lock().unwrap().take();
    assert!(matches!(probe, Some(Ok(_))), "{probe:?}");
    let idle = || {
        let s = node.status();
        s.applied_index == s.last_log_index && snapshot_index(&snapshots) == s.applied_index
    };
    assert!(rt.run_until(ANSWER_WITHIN, || {}, idle), "{:?}", node.status());
    rt.run_for(ANSWER_WITHIN, || {});
    let status = node.status();
    assert_eq!((status.role, status.current_term), (Role::Leader, term), "{status:?}");
    assert_eq!(snapshot_index(&snapshots), status.last_log_index, "not all compacted");
    assert!(answer.lock().unwrap().is_none(), "{:?}", answer.lock().unwrap());
    rt.resume(CALLER);
    let (answer, _, membership) = answer_and_shut_down(&rt, node, &answer);
    (answer, membership)
}

/// The caller of a joint change (removing 2 from {1, 2}) asks to wait for the final
/// configuration only after it was committed, applied and compacted into a snapshot, its node
/// still leading in the joint entry's term: the entries after the joint one are compacted
/// (`FirstAfter::Compacted` with a base that is not joint), and the caller gets `Ok` with its
/// final configuration, {1}. It would catch an answer of `LeadershipLost` or a wait that never
/// ends when the final configuration is known only as compacted.
#[test]
fn a_joint_change_whose_final_configuration_is_compacted_before_its_caller_asks_succeeds() {
    let (answer, membership) = joint_change_compacted_before_its_caller_asks(false);
    let own = Membership::with_voters([NODE]);
    assert_eq!(membership, own);
    assert!(matches!(&answer, Some(Ok(m)) if *m == own), "{answer:?}");
}

/// The same, with a second change (adding learner 4) committed, applied and compacted into the
/// same snapshot before the first caller asks: the compacted prefix's membership is the second
/// change's, {1} with learner 4. The first caller still gets its own final configuration, {1},
/// as `Node::change_membership` promises. Before, the waiter answered with the membership in
/// force at the end of the compacted prefix: `Ok` with the second change's membership, labelled
/// as the caller's final configuration.
#[test]
fn a_joint_change_compacted_with_a_later_change_before_its_caller_asks_gets_its_own() {
    let (answer, membership) = joint_change_compacted_before_its_caller_asks(true);
    assert!(membership.is_learner(4), "{membership:?}");
    let own = Membership::with_voters([NODE]);
    assert!(matches!(&answer, Some(Ok(m)) if *m == own), "{answer:?}");
}

/// Node 1 leads voters {1, 2} in term `t` and removes 2: the joint configuration at `j` commits
/// and is applied, the final one ({1}) at `j + 1` is appended but its write is held (not
/// committed). If `late`, the caller's task is paused after the joint entry is appended, so it
/// asks to wait only at the end; else it waits from before. In one step, 9 (term `t + 1`)
/// sends a snapshot whose last entry is `j + 3` (term `t + 1`), with its own membership ({1}
/// with other metadata, 2 a learner): the node follows 9, and once the writes resume it
/// installs the snapshot, which replaces every entry after the joint one. Then 9's TimeoutNow
/// makes it win term `t + 2` alone, and the caller (if late) asks. Returns the caller's answer,
/// and the node's status and membership then.
fn joint_change_replaced_by_an_installed_snapshot(
    late: bool,
) -> (MembershipAnswerValue, Status, Membership) {
    let rt = SimRuntime::new();
    let hold_writes_from = Arc::new(AtomicU64::new(u64::MAX));
    let (node, store, _, before) = start_leader_of_two(&rt, &hold_writes_from, false);
    let (term, last) = (before.current_term, before.last_log_index);
    let (joint, last_config) = (last + 1, last + 2);
    hold_writes_from.store(joint, Ordering::SeqCst);
    let answer = spawn_change(&rt.tagged(CALLER), &node, MembershipChange::RemoveNode(2));
    let proposed = || node.status().last_log_index >= joint;
    assert!(rt.run_until(ANSWER_WITHIN, || {}, proposed), "{:?}", node.status());
    if late {
        rt.pause(CALLER);
    }
    run_until_final_configuration_appended(&rt, &node, &answer, joint, joint);

    let info = NodeInfo::new("9's address of 1", "");
    let theirs = Membership::new([(NODE, info)], [(2, NodeInfo::default())]).unwrap();
    let data = b"9's state";
    let meta = SnapshotMeta {
        last_included: LogId::new(term + 1, last_config + 2),
        membership: theirs.clone(),
        size: data.len() as u64,
        checksum: Checksum::of(data),
    };
    let install = RpcRequest::InstallSnapshot(InstallSnapshotRequest {
        term: term + 1,
        leader_id: FAKE_LEADER,
        meta,
        offset: 0,
        data: Bytes::from_static(data),
        done: true,
    });
    one_step(&rt, &node, vec![Envelope::new(NODE, install)], Duration::from_millis(10));
    assert_eq!(node.status().role, Role::Follower, "{:?}", node.status());
    if let Some(gate) = store.write_gate.lock().unwrap().take() {
        gate.open();
    }
    let installed = || node.status().applied_index == last_config + 2;
    assert!(rt.run_until(ANSWER_WITHIN, || {}, installed), "{:?}", node.status());
    assert_eq!(node.membership(), theirs);
    let timeout_now =
        RpcRequest::TimeoutNow(TimeoutNowRequest { term: term + 1, leader_id: FAKE_LEADER });
    one_step(&rt, &node, vec![Envelope::new(NODE, timeout_now)], ANSWER_WITHIN);
    if late {
        assert!(answer.lock().unwrap().is_none(), "{:?}", answer.lock().unwrap());
        rt.resume(CALLER);
    }
    answer_and_shut_down(&rt, node, &answer)
}

/// The caller of a joint change asks to wait for its final configuration only after its node
/// stopped leading (9's snapshot of term `t + 1`), installed 9's snapshot covering the joint
/// entry and beyond (`FirstAfter::Compacted`, with 9's membership as the base), and won term
/// `t + 2` alone: it gets `LeadershipLost` (outcome unknown), never `Ok` with 9's membership or
/// its own final configuration, which the node never knew committed, and it does not hang.
/// It would catch a waiter that took a leader's role (not its term) for the joint entry's
/// leadership when the entries after the joint one are compacted.
#[test]
fn a_joint_change_asking_for_its_end_after_an_installed_snapshot_fails() {
    let (answer, status, membership) = joint_change_replaced_by_an_installed_snapshot(true);
    assert_eq!(status.role, Role::Leader, "{status:?}");
    assert!(membership.is_learner(2), "9's membership is not in force: {membership:?}");
    assert_leadership_lost(&answer);
}

/// The same with the caller waiting from before 9's snapshot: `LeadershipLost` too, when the
/// node follows 9 (its final configuration not committed), not an answer after the install.
#[test]
fn a_joint_change_waiting_when_a_snapshot_is_installed_fails() {
    let (answer, status, membership) = joint_change_replaced_by_an_installed_snapshot(false);
    assert_eq!(status.role, Role::Leader, "{status:?}");
    assert!(membership.is_learner(2), "9's membership is not in force: {membership:?}");
    assert_leadership_lost(&answer);
}

/// A network that reaches nobody (the node is the only voter; the fake leader's requests are
/// forged by the test, and its answers go nowhere).
struct NoNetwork;

#[async_trait]
impl raft_core::Network for NoNetwork {
    async fn send(
        &self,
        envelope: Envelope,
    ) -> Result<raft_core::RpcResponse, raft_core::NetworkError> {
        let reason = "no network in this test".to_owned();
        Err(raft_core::NetworkError::Unreachable { peer: envelope.receiver, reason })
    }
}

/// Node 1 leads voters {1, 2} in term `t` (if `compacting`, it takes a snapshot after every
/// entry applied and keeps no entry below it) and removes itself: joint configuration at `j`,
/// final one, {2}, at `j + 1`. The caller's task is paused once the joint entry is appended, so
/// it asks to wait for the final configuration only after that configuration was committed
/// (the node then steps down, still in `t`), applied and, if `compacting`, compacted into a
/// snapshot with the joint entry. Returns the caller's answer.
fn leader_removing_itself_whose_caller_asks_late(compacting: bool) -> MembershipAnswerValue {
    let rt = SimRuntime::new();
    let (node, _, snapshots, before) =
        start_leader_of_two(&rt, &Arc::new(AtomicU64::new(u64::MAX)), compacting);
    let (term, joint) = (before.current_term, before.last_log_index + 1);
    let answer = spawn_change(&rt.tagged(CALLER), &node, MembershipChange::RemoveNode(NODE));
    let proposed = || node.status().last_log_index >= joint;
    assert!(rt.run_until(ANSWER_WITHIN, || {}, proposed), "{:?}", node.status());
    rt.pause(CALLER);
    let done = || {
        let s = node.status();
        s.role == Role::Follower
            && s.applied_index > joint
            && (!compacting || snapshot_index(&snapshots) > joint)
    };
    assert!(rt.run_until(ANSWER_WITHIN, || {}, done), "{:?}", node.status());
    rt.run_for(ANSWER_WITHIN, || {});
    assert_eq!(node.status().current_term, term, "{:?}", node.status());
    assert!(answer.lock().unwrap().is_none(), "{:?}", answer.lock().unwrap());
    rt.resume(CALLER);
    let (answer, _, membership) = answer_and_shut_down(&rt, node, &answer);
    assert_eq!(membership, Membership::with_voters([2]));
    answer
}

/// A leader removes itself ({1, 2} to {2}); its caller asks to wait only after the final
/// configuration was committed (the node stepped down, in the joint entry's term) and
/// applied, the entries still in the log: `Ok({2})`. The control of the compacted test below
/// (passed before).
#[test]
fn a_leader_removing_itself_whose_caller_asks_after_the_end_succeeds() {
    let answer = leader_removing_itself_whose_caller_asks_late(false);
    assert!(matches!(&answer, Some(Ok(m)) if *m == Membership::with_voters([2])), "{answer:?}");
}

/// The same, with the joint entry and the final configuration compacted into a snapshot before
/// the caller asks (`FirstAfter::Compacted` with a base that is not joint, node no longer
/// leading but still in the joint entry's term): `Ok({2})`. Failed before (review MEDIUM-1 of
/// memtest) with `LeadershipLost`, though the final configuration committed in the caller's
/// leadership and `Node::change_membership` promises removing the leader itself works.
#[test]
fn a_leader_removing_itself_whose_caller_asks_after_the_compaction_succeeds() {
    let answer = leader_removing_itself_whose_caller_asks_late(true);
    assert!(matches!(&answer, Some(Ok(m)) if *m == Membership::with_voters([2])), "{answer:?}");
}

/// Leader 1 removes itself from {1, 2}; two writes follow the joint entry, and a snapshot folds
/// the joint entry and the writes (`FirstAfter::Compacted`, the joint membership in force at
/// the end of the prefix) before node 2 acknowledges the final configuration {2}. Then 2's
/// acknowledgements resume: {2} commits in the caller's term, node 1 steps down at once (same
/// term), then applies it. The caller, waiting all along, gets `Ok({2})`. Failed before
/// (review MEDIUM-1 of memtest) with `LeadershipLost`: the waiter answered it for any node not
/// leading in the joint entry's term when the joint entry was compacted.
#[test]
fn a_leader_removing_itself_with_its_joint_entry_compacted_succeeds() {
    let rt = SimRuntime::new();
    let (hold_acks_from, acks) = (Arc::new(AtomicU64::new(u64::MAX)), support::Gate::default());
    let store = support::FaultyStore::default();
    let mut network = YesPeer::new(&store, &Arc::new(AtomicU64::new(u64::MAX)));
    network.held_acks = Some((hold_acks_from.clone(), acks.clone()));
    let (node, _, snapshots, before) = start_leader_of_two_with(&rt, network, true, |_| {});
    let (term, last) = (before.current_term, before.last_log_index);
    let (last_write, last_config) = (last + 3, last + 4);
    hold_acks_from.store(last_config, Ordering::SeqCst);
    let answer = change_then_two_writes(&rt, &node, MembershipChange::RemoveNode(NODE));
    let compacted = || writes_compacted_before(&node, &snapshots, last_write, last_config);
    assert!(rt.run_until(ANSWER_WITHIN, || {}, compacted), "{:?}", node.status());
    rt.run_for(ANSWER_WITHIN, || {});
    assert!(answer.lock().unwrap().is_none(), "{:?}", answer.lock().unwrap());
    acks.open();
    let applied = || node.status().applied_index >= last_config;
    assert!(rt.run_until(ANSWER_WITHIN, || {}, applied), "{:?}", node.status());
    let (answer, status, membership) = answer_and_shut_down(&rt, node, &answer);
    assert_eq!(status.current_term, term);
    assert_eq!(membership, Membership::with_voters([2]));
    assert!(matches!(&answer, Some(Ok(m)) if *m == Membership::with_voters([2])), "{answer:?}");
}
