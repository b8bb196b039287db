//! The clients of a [`MultiSimulation`](super::MultiSimulation): per group, a writer that keeps
//! writing unique values to the group's leader and a reader that keeps reading the last value
//! written through [`Node::read_index`] on each node in turn (followers too). Every operation
//! goes into the group's [`History`], checked at the end for linearizability against a
//! register ([`Register`]) with the library's checker ([`crate::linearizability`]). A group's
//! clients can be told to stand still ([`ClientBoard::set_idle`]), so that the group goes idle
//! and, with `Config::quiesce_idle`, quiesces.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use raft_core::{Bytes, CommitError, GroupId, Node, NodeId, Role, WriteError};

use super::checker::Violation;
use super::executor::SimRuntime;
use super::history::{History, OpOutcome, OpRecord};
use super::recorder::{lock, Record, StateMachineHandle};
use crate::harness::RecordingStateMachine;
use crate::linearizability::{self, Budget, Model, Verdict};

/// How long a client waits for one operation before it gives up on it (its outcome is then
/// unknown for a write, and the read is dropped).
const OPERATION_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a client waits between operations, and with no leader.
const PAUSE: Duration = Duration::from_millis(20);

/// How often an idle client looks whether it may go on.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// How many load writers a hot group has ([`MultiSimConfig::hot_groups`](super::MultiSimConfig::hot_groups)),
/// each with one write in flight at a time.
pub(crate) const HOT_WRITERS: u64 = 4;

/// The size of a load writer's padding: its entries are about 1 KiB.
const HOT_ENTRY_PAD: usize = 1_024;

/// How long a load writer waits between its writes.
const HOT_PAUSE: Duration = Duration::from_millis(2);

/// One operation on a group's register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RegisterOp {
    /// Writes a value no other write of the run writes.
    Write(u64),
    /// Reads the last value written.
    Read,
}

/// What a [`RegisterOp`] answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RegisterOutput {
    /// The write is applied (the state machine answered its command).
    Written,
    /// The last value written, `None` before the first write.
    Read(Option<u64>),
}

/// A group's client history.
pub(crate) type GroupHistory = History<RegisterOp, RegisterOutput>;

/// The sequential specification of what a group's clients do: a register of the last value
/// written.
pub(crate) struct Register;

impl Model for Register {
    type State = Option<u64>;
    type Input = RegisterOp;
    type Output = RegisterOutput;

    fn init(&self) -> Option<u64> {
        None
    }

    fn step(&self, state: &Option<u64>, op: &RegisterOp) -> (Option<u64>, RegisterOutput) {
        match op {
            RegisterOp::Write(value) => (Some(*value), RegisterOutput::Written),
            RegisterOp::Read => (*state, RegisterOutput::Read(*state)),
        }
    }

    fn is_read_only(&self, op: &RegisterOp) -> bool {
        matches!(op, RegisterOp::Read)
    }
}

/// How many of the contradicting operations a failure shows (the last ones: where it broke).
const SHOWN: usize = 8;

/// Checks group `group`'s `history` for linearizability (a search that runs out of budget is
/// a failure too: the histories are small and nearly sequential).
pub(crate) fn check_history(
    group: GroupId,
    history: &[OpRecord<RegisterOp, RegisterOutput>],
) -> Result<(), Violation> {
    let report = linearizability::check(&Register, history, Budget::default());
    let detail = match report.verdict {
        Verdict::Linearizable => return Ok(()),
        Verdict::NotLinearizable(explanation) => {
            let ops: Vec<_> = explanation.ops.iter().filter_map(|&i| history.get(i)).collect();
            let last = &ops[ops.len().saturating_sub(SHOWN)..];
            format!(
                "group {group}: {} operations contradict each other ({}minimal), the last {} of them: {last:?}",
                ops.len(),
                if explanation.minimal { "" } else { "not " },
                last.len()
            )
        }
        Verdict::Unknown => format!(
            "group {group}: the check ran out of budget after {} steps on {} operations",
            report.steps, report.searched
        ),
    };
    Err(Violation { invariant: "each group's client history is linearizable", detail })
}

/// The command a client writes to group `group` for `value` (`g<group>-<value>`).
pub(crate) fn command_of(group: GroupId, value: u64) -> Bytes {
    Bytes::from(format!("g{group}-{value}"))
}

/// The group and the value of a command written by a client (`g<group>-<value>`).
fn parse_command(command: &[u8]) -> Option<(GroupId, u64)> {
    let text = std::str::from_utf8(command).ok()?;
    let (group, value) = text.strip_prefix('g')?.split_once('-')?;
    Some((group.parse().ok()?, value.parse().ok()?))
}

/// What a group's reader got, over a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupReads {
    /// Reads answered (recorded [`OpOutcome::Ok`] and checked for linearizability).
    pub ok: u64,
    /// Of those, the reads asked of a node that was not the group's leader when the read began.
    pub ok_on_followers: u64,
    /// Of those, the reads that began while a fault of a round was in force (before its heal).
    pub ok_during_faults: u64,
    /// Reads that failed or timed out (recorded [`OpOutcome::Failed`]: left out of the check).
    pub failed: u64,
}

/// A node of a group, as the clients reach it.
#[derive(Clone)]
pub(crate) struct GroupNode {
    pub(crate) node: Node,
    pub(crate) record: Record,
    pub(crate) state_machine: StateMachineHandle<RecordingStateMachine>,
    /// A handle on the same state machine's record of what it applied, readable without its
    /// lock (for the convergence check at the end of a run).
    pub(crate) recording: RecordingStateMachine,
}

/// Where the clients find the groups' nodes, and what they report.
#[derive(Default)]
pub(crate) struct ClientBoard {
    pub(crate) nodes: Mutex<BTreeMap<(GroupId, NodeId), GroupNode>>,
    pub(crate) acknowledged: Mutex<BTreeMap<GroupId, u64>>,
    /// What each group's reader got.
    pub(crate) reads: Mutex<BTreeMap<GroupId, GroupReads>>,
    /// Whether a fault of a round is in force (set when it is injected, cleared by the heal).
    pub(crate) faulted: AtomicBool,
    /// What a client saw that no correct cluster shows: a write answered other than by the
    /// state machine's answer to its command, a read index the state did not reach.
    pub(crate) violations: Mutex<Vec<Violation>>,
    /// Writes of the hot groups' load writers acknowledged.
    pub(crate) hot_acknowledged: AtomicU64,
    /// The groups whose clients stand still (their last operation ended): nothing wakes them.
    idle: Mutex<BTreeSet<GroupId>>,
    next_value: AtomicU64,
}

impl ClientBoard {
    fn report(&self, invariant: &'static str, detail: String) {
        lock(&self.violations).push(Violation { invariant, detail });
    }

    /// From now on, the clients of the groups in `idle` stand still once their operation in
    /// flight ended, and the others' run.
    pub(crate) fn set_idle(&self, idle: BTreeSet<GroupId>) {
        *lock(&self.idle) = idle;
    }

    /// Whether group `group`'s clients stand still.
    pub(crate) fn is_idle(&self, group: GroupId) -> bool {
        lock(&self.idle).contains(&group)
    }

    /// Group `group`'s nodes, by id.
    fn group(&self, group: GroupId) -> Vec<(NodeId, GroupNode)> {
        let nodes = lock(&self.nodes);
        nodes
            .iter()
            .filter(|((g, _), _)| *g == group)
            .map(|((_, id), n)| (*id, n.clone()))
            .collect()
    }
}

/// Spawns group `group`'s clients on `runtime`: the writer (client 0 of the history) and the
/// reader (client 1), and if the group is `hot` its [`HOT_WRITERS`] load writers (their writes
/// are load only: they leave the register alone and stay out of the history).
pub(crate) fn spawn_clients(
    board: &Arc<ClientBoard>,
    runtime: &SimRuntime,
    group: GroupId,
    history: &GroupHistory,
    hot: bool,
) {
    for _ in 0..if hot { HOT_WRITERS } else { 0 } {
        let (loader, loading) = (board.clone(), runtime.clone());
        runtime.spawn_task(async move {
            loop {
                if loader.is_idle(group) {
                    loading.sleep_for(IDLE_POLL).await;
                    continue;
                }
                load_once(&loader, &loading, group).await;
            }
        });
    }
    let (writer, reader) = (board.clone(), board.clone());
    let (writing, reading) = (runtime.clone(), runtime.clone());
    let (written, read) = (history.clone(), history.clone());
    runtime.spawn_task(async move {
        loop {
            if writer.is_idle(group) {
                writing.sleep_for(IDLE_POLL).await;
                continue;
            }
            write_once(&writer, &writing, group, &written).await;
        }
    });
    runtime.spawn_task(async move {
        let mut turn = 0u64;
        loop {
            if reader.is_idle(group) {
                reading.sleep_for(IDLE_POLL).await;
                continue;
            }
            read_once(&reader, &reading, group, &read, turn).await;
            turn += 1;
            reading.sleep_for(PAUSE).await;
        }
    });
}

/// The node that says it leads `group` in the highest term (a paused node may still believe
/// it leads an older one).
fn leader_of(board: &ClientBoard, group: GroupId) -> Option<Node> {
    board
        .group(group)
        .into_iter()
        .map(|(_, n)| (n.node.status(), n.node))
        .filter(|(status, _)| status.role == Role::Leader)
        .max_by_key(|(status, _)| status.current_term)
        .map(|(_, node)| node)
}

/// The load command a hot group's load writer writes for `value` (`h<group>-<value>-` and
/// padding to about 1 KiB): not a register command.
fn load_command(group: GroupId, value: u64) -> Bytes {
    let mut command = format!("h{group}-{value}-").into_bytes();
    command.resize(command.len() + HOT_ENTRY_PAD, b'.');
    Bytes::from(command)
}

/// Whether `command` is a load command of group `group`.
fn is_load(group: GroupId, command: &[u8]) -> bool {
    command.starts_with(format!("h{group}-").as_bytes())
}

/// One load write of a hot group (no history: the register's value stays), with a bounded
/// wait, then a short pause.
async fn load_once(board: &ClientBoard, runtime: &SimRuntime, group: GroupId) {
    let Some(leader) = leader_of(board, group) else {
        runtime.sleep_for(PAUSE).await;
        return;
    };
    let value = board.next_value.fetch_add(1, Ordering::SeqCst);
    let command = load_command(group, value);
    let write = leader.write(command.clone()).fuse();
    let timeout = runtime.sleep_for(OPERATION_TIMEOUT).fuse();
    futures::pin_mut!(write, timeout);
    futures::select! {
        answer = write => match answer {
            Ok(answer) if answer == command => {
                board.hot_acknowledged.fetch_add(1, Ordering::SeqCst);
            }
            Ok(answer) => board.report(
                "a write's answer is the state machine's for it",
                format!("group {group}: load write {value} answered {:.40?}", answer),
            ),
            Err(_) => {}
        },
        () = timeout => {}
    }
    runtime.sleep_for(HOT_PAUSE).await;
}

/// One write to whichever node says it leads `group` in the highest term (or a pause when
/// none does), with a bounded wait; counts it acknowledged when the state machine answered its command.
async fn write_once(
    board: &ClientBoard,
    runtime: &SimRuntime,
    group: GroupId,
    history: &GroupHistory,
) {
    let Some(leader) = leader_of(board, group) else {
        runtime.sleep_for(PAUSE).await;
        return;
    };
    let value = board.next_value.fetch_add(1, Ordering::SeqCst);
    let command = command_of(group, value);
    let pending = history.call(0, RegisterOp::Write(value), runtime.now());
    let write = leader.write(command.clone()).fuse();
    let timeout = runtime.sleep_for(OPERATION_TIMEOUT).fuse();
    futures::pin_mut!(write, timeout);
    // A refused proposal was never appended and a dropped entry was overwritten before it
    // committed: neither is ever applied (recorded failed, the checker holds the library to
    // it, as the single-group client does). Whatever else went wrong, the write may still be
    // applied later: its outcome is unknown.
    let outcome = futures::select! {
        answer = write => match answer {
            Ok(answer) if answer == command => {
                *lock(&board.acknowledged).entry(group).or_insert(0) += 1;
                OpOutcome::Ok(RegisterOutput::Written)
            }
            Ok(answer) => {
                board.report(
                    "a write's answer is the state machine's for it",
                    format!("group {group}: write {command:?} answered {answer:?}"),
                );
                OpOutcome::Unknown
            }
            Err(WriteError::Refused(_) | WriteError::Failed(CommitError::Dropped { .. })) => {
                OpOutcome::Failed
            }
            Err(_) => OpOutcome::Unknown,
        },
        () = timeout => OpOutcome::Unknown,
    };
    pending.finish(outcome, runtime.now());
    // Paced: the history (checked as one part: a register does not split) stays a few
    // thousand operations per group.
    runtime.sleep_for(PAUSE).await;
}

/// One linearizable read of `group`'s register on its `turn`-th node (of those running), with
/// a bounded wait: the node's read index, then its state machine's last value once it reflects
/// that index. A read that fails or times out is dropped (it has no effect).
async fn read_once(
    board: &ClientBoard,
    runtime: &SimRuntime,
    group: GroupId,
    history: &GroupHistory,
    turn: u64,
) {
    let nodes = board.group(group);
    let Some((id, target)) = nodes.get((turn % nodes.len().max(1) as u64) as usize).cloned() else {
        return;
    };
    // Where and when the read begins, for the counts of reads answered.
    let on_follower = target.node.status().role != Role::Leader;
    let during_fault = board.faulted.load(Ordering::SeqCst);
    let pending = history.call(1, RegisterOp::Read, runtime.now());
    let read = async {
        let index = target.node.read_index().await.ok()?;
        let state_machine = target.state_machine.lock().await;
        let state_end = target.record.state_end().index;
        if state_end < index {
            board.report(
                "a read index is applied before the read answers",
                format!("group {group}: node {id} returned read index {index} with its state at {state_end}"),
            );
        }
        // The last register command (a hot group's load commands leave the register alone).
        let mut commands = state_machine.commands();
        commands.retain(|(_, command)| !is_load(group, command));
        let Some((at, command)) = commands.pop() else { return Some(None) };
        // A group's state machine holds only its own clients' commands.
        match parse_command(&command) {
            Some((of, value)) if of == group => Some(Some(value)),
            _ => {
                board.report(
                    "a group applies only its own clients' commands",
                    format!("group {group}: node {id} applied {command:?} at {at}"),
                );
                None
            }
        }
    };
    let timeout = runtime.sleep_for(OPERATION_TIMEOUT).fuse();
    let read = read.fuse();
    futures::pin_mut!(read, timeout);
    let outcome = futures::select! {
        value = read => value.map_or(OpOutcome::Failed, |v| OpOutcome::Ok(RegisterOutput::Read(v))),
        () = timeout => OpOutcome::Failed,
    };
    {
        let mut reads = lock(&board.reads);
        let counts = reads.entry(group).or_default();
        if matches!(outcome, OpOutcome::Ok(_)) {
            counts.ok += 1;
            counts.ok_on_followers += u64::from(on_follower);
            counts.ok_during_faults += u64::from(during_fault);
        } else {
            counts.failed += 1;
        }
    }
    pending.finish(outcome, runtime.now());
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn op(
        client: u64,
        op: RegisterOp,
        (call, ret): (u64, u64),
        out: RegisterOutput,
    ) -> OpRecord<RegisterOp, RegisterOutput> {
        let ms = Duration::from_millis;
        OpRecord { client, op, call: ms(call), ret: Some(ms(ret)), outcome: OpOutcome::Ok(out) }
    }

    #[test]
    fn a_stale_read_is_not_linearizable() {
        let fresh = [
            op(0, RegisterOp::Write(1), (0, 10), RegisterOutput::Written),
            op(1, RegisterOp::Read, (5, 15), RegisterOutput::Read(None)),
            op(1, RegisterOp::Read, (20, 30), RegisterOutput::Read(Some(1))),
        ];
        assert!(check_history(1, &fresh).is_ok());
        let stale = [
            op(0, RegisterOp::Write(1), (0, 10), RegisterOutput::Written),
            op(1, RegisterOp::Read, (20, 30), RegisterOutput::Read(None)),
        ];
        let violation = check_history(1, &stale).unwrap_err();
        assert!(violation.detail.starts_with("group 1:"), "{violation:?}");
    }

    #[test]
    fn commands_carry_their_value() {
        assert_eq!(parse_command(b"g3-42"), Some((3, 42)));
        assert_eq!(parse_command(&command_of(12, 7)), Some((12, 7)));
        assert_eq!(parse_command(b"3-42"), None);
        assert_eq!(parse_command(b"noise"), None);
    }
}
