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
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use raft_core::{
    AppendEntriesRequest, Bytes, CommitError, Config, Envelope, LogId, Membership, Node,
    ProposeError, Role, RpcHandler, RpcRequest, Status, TimeoutNowRequest, WriteError,
};
use raft_mem::sim::{RecordingStateMachine, SimRuntime};
use raft_mem::MemLogStore;

/// The node under test.
const NODE: u64 = 1;
/// The fake leader whose requests the test forges.
const FAKE_LEADER: u64 = 9;
/// A step's inputs (the main loop's `MAX_INPUTS_PER_STEP`).
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
}

/// Runs the scenario of the module docs on a node with `max_unapplied_entries`.
fn win_and_lose_in_one_step(max_unapplied_entries: u64) -> Outcome {
    let rt = SimRuntime::new();
    let node_rt = rt.tagged(NODE);
    let builder = Node::builder(
        config(max_unapplied_entries),
        MemLogStore::new(),
        NoNetwork,
        RecordingStateMachine::new(),
        node_rt,
    )
    .bootstrap(Membership::with_voters([NODE]));
    let node = rt.block_on(Duration::from_secs(5), builder.start(), || {}).unwrap().unwrap();
    let leading = || {
        let s = node.status();
        s.role == Role::Leader && s.applied_index == s.last_log_index
    };
    assert!(rt.run_until(Duration::from_secs(10), || {}, leading), "it never led");
    let before = node.status();
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
    for i in 0..STEP_INPUTS - 1 {
        let writer = node.clone();
        rt.spawn_task(async move {
            let refused = writer.write(Bytes::from(format!("refused {i}"))).await;
            assert!(
                matches!(refused, Err(WriteError::Refused(ProposeError::NotLeader { .. }))),
                "{refused:?}"
            );
        });
    }
    let answer = Arc::new(Mutex::new(None));
    let (writer, slot) = (node.clone(), answer.clone());
    rt.spawn_task(async move {
        let written = writer.write(Bytes::from_static(b"w")).await;
        *slot.lock().unwrap() = Some(written);
    });
    let handler = node.clone();
    rt.spawn_task(async move {
        assert!(handler.handle_rpc(timeout_now).await.is_ok());
    });
    // The test's tasks queue their inputs; the node's wait.
    rt.run_for(Duration::ZERO, || {});
    assert_eq!(node.status().role, Role::Leader, "no step ran yet");
    rt.resume(NODE);
    rt.run_until(ANSWER_WITHIN, || {}, || answer.lock().unwrap().is_some());
    let write = answer.lock().unwrap().take();
    let status = node.status();
    rt.block_on(Duration::from_secs(5), async move { node.shutdown().await }, || {});
    rt.clear();
    Outcome { write, status, before }
}

/// Checks that the node did win term `t + 2` (its blank entry is in its log) and ended the
/// step following 9 in term `t + 3`.
fn assert_led_in_between(outcome: &Outcome, entries_appended: u64) {
    let Outcome { status, before, .. } = outcome;
    assert_eq!(status.role, Role::Follower, "{status:?}");
    assert_eq!(status.leader_id, Some(FAKE_LEADER), "{status:?}");
    assert_eq!(status.current_term, before.current_term + 3, "{status:?}");
    assert_eq!(status.last_log_index, before.last_log_index + entries_appended, "{status:?}");
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
