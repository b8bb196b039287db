//! The main loop's side of snapshots: ordering storage operations across the log writer and
//! the snapshot storage task, dispatching snapshot actions, and the snapshot inputs.

use std::collections::VecDeque;

use async_channel::Sender;
use futures::channel::oneshot;

use super::super::applier::ApplyMsg;
use super::super::snapshot::{SnapOp, SnapOpRequest, SnapshotInput};
use super::super::writer::{Write, WriteRequest, WriterMsg};
use super::CoreLoop;
use super::LogWriter;
use crate::engine::Action;
use crate::error::FatalError;
use crate::snapshot::SnapshotMeta;
use crate::types::LogIndex;

/// A storage operation held back until the other storage task has finished everything issued
/// before it (the node's storage operations take effect strictly in order).
enum Held {
    Log(WriteRequest),
    Snap(SnapOpRequest),
}

/// The main loop's snapshot state.
#[derive(Default)]
pub(super) struct SnapshotDriver {
    /// The snapshot storage task (`None`: the node keeps no snapshots).
    ops: Option<Sender<SnapOpRequest>>,
    /// The sequence number of the last operation handed to the log writer / snapshot task.
    last_log_seq: u64,
    last_snap_seq: u64,
    /// Operations waiting for the other task (empty unless a snapshot operation is in flight).
    held: VecDeque<Held>,
    /// `Node::snapshot` callers: (applied index when asked, reply).
    waiters: Vec<(LogIndex, oneshot::Sender<Option<SnapshotMeta>>)>,
    /// The last snapshot attempt, at this applied index, was skipped (the state machine declined,
    /// or a build was still running): the engine makes no new attempt before something more is
    /// applied, so a request until then gets the latest snapshot at once.
    declined_at: Option<LogIndex>,
    /// `release_storage` is running (a write it dispatched finished inline and called back).
    releasing: bool,
}

impl CoreLoop {
    /// Gives the loop the queue of the snapshot storage task (the node keeps snapshots).
    pub(in crate::node) fn with_snapshots(mut self, ops: Option<Sender<SnapOpRequest>>) -> Self {
        self.snap.ops = ops;
        self
    }

    /// Hands a log write to the writer, unless a snapshot storage operation issued before it is
    /// still running.
    pub(super) fn persist(&mut self, request: WriteRequest) {
        if self.snap.held.is_empty() && self.snap.last_snap_seq <= self.durable_seq {
            self.snap.last_log_seq = request.seq;
            self.write_log(request);
        } else {
            self.snap.held.push_back(Held::Log(request));
        }
    }

    /// Writes a batch: at once, in this task, if nothing else is being written (finished in
    /// this step if the store is done at the first poll, else handed to the log writer task,
    /// or kept in flight by the inline writer of a host loop's group); else through the log
    /// writer task (or the inline writer's queue), behind the writes in progress. The task's
    /// queue holds only batches of entries that the in-memory log holds anyway; it cannot be
    /// full, only closed (the writer ended).
    fn write_log(&mut self, request: WriteRequest) {
        let seq = request.seq;
        let idle = match &self.writer {
            LogWriter::Task(_) => self.writer_seq <= self.durable_seq,
            LogWriter::Inline(inline) => !inline.busy() && !inline.is_closed(),
        };
        let message = if idle && self.stop.is_none() {
            let metrics = &self.metrics.node;
            let mut write = Write::start(&self.start_write, metrics, request.seq, request.batch);
            match write.poll_once(metrics) {
                Ok(Some(done)) => {
                    if done.result.is_err() {
                        // Nothing written after a failed write may reach the store.
                        self.writer.close();
                    }
                    return self.persisted(done);
                }
                Ok(None) => WriterMsg::Started(write),
                Err(panicked) => {
                    self.writer.close();
                    return self.fail(panicked);
                }
            }
        } else {
            WriterMsg::Batch(request)
        };
        self.writer_seq = seq;
        match &mut self.writer {
            LogWriter::Task(queue) => {
                if queue.try_send(message).is_err() {
                    self.lost("log writer");
                }
            }
            LogWriter::Inline(inline) => {
                if inline.is_closed() {
                    // As the task's closed queue: the writer ended after a failure.
                    self.lost("log writer");
                    return;
                }
                match message {
                    WriterMsg::Started(write) => inline.started(write),
                    WriterMsg::Batch(request) => inline.queue(request),
                }
            }
        }
    }

    fn snap_op(&mut self, op: SnapOp) {
        self.issued_seq += 1;
        let request = SnapOpRequest { seq: self.issued_seq, op };
        if self.snap.held.is_empty() && self.snap_op_ready() {
            self.dispatch_snap_op(request);
        } else {
            self.snap.held.push_back(Held::Snap(request));
        }
    }

    /// Whether a snapshot operation can start: everything issued before it is durable. (The
    /// engine never installs a snapshot while the state machine restores one: installing would
    /// supersede the snapshot being read.)
    fn snap_op_ready(&self) -> bool {
        self.snap.last_log_seq <= self.durable_seq
    }

    fn dispatch_snap_op(&mut self, request: SnapOpRequest) {
        self.snap.last_snap_seq = request.seq;
        if let Some(ops) = &self.snap.ops {
            if ops.try_send(request).is_err() {
                self.lost("snapshot storage task");
            }
        }
    }

    /// Dispatches held storage operations whose predecessors are all durable. A log write it
    /// dispatches may finish at once (a store done at the first poll) and call back here: that
    /// nested call returns at once and this loop goes on, so the depth stays one however many
    /// writes were held (review L1).
    pub(super) fn release_storage(&mut self) {
        if self.snap.releasing {
            return;
        }
        self.snap.releasing = true;
        self.release_held_storage();
        self.snap.releasing = false;
    }

    fn release_held_storage(&mut self) {
        while let Some(next) = self.snap.held.front() {
            let ready = match next {
                Held::Log(_) => self.snap.last_snap_seq <= self.durable_seq,
                Held::Snap(_) => self.snap_op_ready(),
            };
            if !ready {
                return;
            }
            match self.snap.held.pop_front() {
                Some(Held::Log(request)) => {
                    self.snap.last_log_seq = request.seq;
                    self.write_log(request);
                }
                Some(Held::Snap(request)) => self.dispatch_snap_op(request),
                None => return,
            }
        }
    }

    /// Carries out a snapshot action of the engine.
    pub(super) fn snapshot_action(&mut self, action: Action) {
        match action {
            Action::WriteSnapshotChunk { meta, offset, data } => {
                self.snap_op(SnapOp::Chunk { meta, offset, data })
            }
            Action::InstallSnapshot(meta) => self.snap_op(SnapOp::Install(meta)),
            Action::CompactLog { up_to } => self.snap_op(SnapOp::Compact(up_to)),
            Action::TakeSnapshot { last_included, membership } => {
                self.send_to_applier(ApplyMsg::TakeSnapshot(last_included, membership))
            }
            Action::Restore(meta) => self.send_to_applier(ApplyMsg::Restore(meta)),
            _ => {}
        }
    }

    /// Handles an input from the snapshot tasks.
    pub(super) fn snapshot_input(&mut self, input: SnapshotInput) {
        match input {
            SnapshotInput::OpDone { seq, installed, result } => {
                if let Err(error) = result {
                    return self.fail(FatalError::Snapshot(error));
                }
                self.durable_seq = seq;
                if let Some(last) = installed {
                    self.engine.on_snapshot_installed(last);
                    let bytes = self.engine.snapshot_meta().map_or(0, |m| m.size);
                    self.metrics.node.snapshot_installed(bytes);
                    // A snapshot from the leader may cover what waiters asked for.
                    self.answer_snapshot_waiters(false);
                }
                self.release_held();
                self.release_storage();
            }
            SnapshotInput::Taken(meta) => {
                self.metrics.node.snapshot_taken(meta.size);
                self.engine.on_snapshot_taken(meta);
                self.answer_snapshot_waiters(false);
            }
            SnapshotInput::Skipped { at } => {
                self.snap.declined_at = Some(at);
                self.engine.on_snapshot_skipped();
                self.answer_snapshot_waiters(true);
            }
            SnapshotInput::Failed(error) => self.fail(error),
            SnapshotInput::Trigger(reply) => {
                let applied = self.engine.status().applied_index;
                let latest = self.engine.snapshot_meta().cloned();
                let covered = latest.as_ref().map_or(0, |m| m.last_included.index) >= applied;
                // Nothing applied since the state machine last declined: it would decline again,
                // and the engine takes no snapshot without something new.
                let declined = self.snap.declined_at.is_some_and(|at| at >= applied);
                if self.snap.ops.is_none() || covered || declined {
                    let _ = reply.send(latest);
                } else {
                    self.engine.trigger_snapshot();
                    self.snap.waiters.push((applied, reply));
                }
            }
        }
    }

    /// Answers `Node::snapshot` callers whose snapshot is now taken (or all, if the state
    /// machine declined).
    fn answer_snapshot_waiters(&mut self, all: bool) {
        let latest = self.engine.snapshot_meta().cloned();
        let covered = latest.as_ref().map_or(0, |m| m.last_included.index);
        let skipped = self.snap.declined_at.unwrap_or(0);
        for (asked_at, reply) in std::mem::take(&mut self.snap.waiters) {
            if all || covered >= asked_at || skipped >= asked_at {
                let _ = reply.send(latest.clone());
            } else {
                self.snap.waiters.push((asked_at, reply));
            }
        }
        if !self.snap.waiters.is_empty() {
            self.engine.trigger_snapshot();
        }
    }

    /// Closes the snapshot storage task's queue (the node is stopping).
    pub(super) fn stop_snapshots(&mut self) {
        if let Some(ops) = &self.snap.ops {
            ops.close();
        }
        self.snap.held.clear();
        self.snap.waiters.clear();
    }
}
