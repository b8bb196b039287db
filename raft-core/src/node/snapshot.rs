//! The driver's snapshot machinery: the snapshot storage task (received chunks, installs, log
//! compaction), the builder task (streams a state machine's snapshot into the store off the
//! apply path), the apply-path steps (take, restore), reading a stored snapshot as a stream, and
//! the network wrapper that fills InstallSnapshot chunks from the store.

use std::sync::Arc;

use async_channel::{Receiver, Sender};
use async_trait::async_trait;
use futures::StreamExt;

use super::applier::Waiter;
use super::waiters::IndexQueue;
use super::Input;
use crate::error::{CommitError, FatalError};
use crate::membership::Membership;
use crate::message::{Envelope, RpcRequest, RpcResponse};
use crate::network::{Network, NetworkError};
use crate::snapshot::{
    chunk_len, Checksum, SnapshotMeta, SnapshotStore, SnapshotStream, SnapshotWriter,
};
use crate::state_machine::{StateMachine, StateMachineError};
use crate::storage::{LogStore, StorageError};
use crate::types::{LogId, LogIndex, NodeId};

/// What the snapshot tasks tell the main loop.
pub(crate) enum SnapshotInput {
    /// A storage operation finished (`installed`: the snapshot it installed).
    OpDone { seq: u64, installed: Option<LogId>, result: Result<(), Arc<StorageError>> },
    /// A snapshot asked for by `TakeSnapshot` is durable.
    Taken(SnapshotMeta),
    /// No snapshot was taken at applied index `at` (the state machine declined, or the
    /// previous snapshot was still being built).
    Skipped { at: LogIndex },
    /// Building a snapshot failed: the node stops.
    Failed(FatalError),
    /// `Node::snapshot`: take a snapshot now and answer with the latest one once done.
    Trigger(futures::channel::oneshot::Sender<Option<SnapshotMeta>>),
}

/// A storage operation on the snapshot store (and the log store's prefix), in the node's
/// ordered sequence of storage operations.
pub(super) enum SnapOp {
    Chunk { meta: SnapshotMeta, offset: u64, data: bytes::Bytes },
    Install(SnapshotMeta),
    Compact(LogIndex),
}

pub(super) struct SnapOpRequest {
    pub(super) seq: u64,
    pub(super) op: SnapOp,
}

/// Runs snapshot storage operations in order and reports each one. Stops at the first error
/// (the node stops too) or when the main loop closes `ops`.
pub(super) async fn run_ops<S: LogStore>(
    log: Arc<S>,
    store: Arc<dyn SnapshotStore>,
    ops: Receiver<SnapOpRequest>,
    inputs: Sender<Input>,
) {
    let mut receiving: Option<(SnapshotMeta, Box<dyn SnapshotWriter>)> = None;
    while let Ok(SnapOpRequest { seq, op }) = ops.recv().await {
        let mut installed = None;
        let result = match op {
            SnapOp::Chunk { meta, offset, data } => {
                write_chunk(&*store, &mut receiving, meta, offset, data).await
            }
            SnapOp::Install(meta) => match receiving.take() {
                Some((received, writer)) if received == meta => {
                    let last = meta.last_included;
                    let result = match writer.commit(meta).await {
                        Ok(()) => log.reset(last).await,
                        Err(error) => Err(error),
                    };
                    installed = Some(last);
                    result
                }
                _ => Err(StorageError::InvalidRequest(format!(
                    "install of snapshot {:?} that was not received",
                    meta.last_included
                ))),
            },
            SnapOp::Compact(up_to) => log.purge(up_to).await,
        };
        let failed = result.is_err();
        let result = result.map_err(Arc::new);
        let done = Input::Snapshot(SnapshotInput::OpDone { seq, installed, result });
        if inputs.send(done).await.is_err() || failed {
            return;
        }
    }
}

async fn write_chunk(
    store: &dyn SnapshotStore,
    receiving: &mut Option<(SnapshotMeta, Box<dyn SnapshotWriter>)>,
    meta: SnapshotMeta,
    offset: u64,
    data: bytes::Bytes,
) -> Result<(), StorageError> {
    let continues = receiving.as_ref().is_some_and(|(m, _)| *m == meta);
    if offset == 0 {
        // A new transfer; dropping the writer of an unfinished one abandons it.
        *receiving = None;
        *receiving = Some((meta, store.begin().await?));
    } else if !continues {
        return Err(StorageError::InvalidRequest(format!(
            "snapshot chunk at {offset} of {:?} without its beginning",
            meta.last_included
        )));
    }
    match receiving.as_mut() {
        Some((_, writer)) if !data.is_empty() => writer.write(data).await,
        _ => Ok(()),
    }
}

/// A state machine's snapshot to stream into the store.
pub(super) struct BuildJob {
    pub(super) last_included: LogId,
    pub(super) membership: Membership,
    pub(super) stream: SnapshotStream,
}

/// Writes each snapshot stream into the store as it is produced, commits it and reports it.
/// Ends when the applier (the only sender) is gone; a build in progress is then abandoned.
pub(super) async fn run_builder(
    store: Arc<dyn SnapshotStore>,
    jobs: Receiver<BuildJob>,
    inputs: Sender<Input>,
) {
    while let Ok(job) = jobs.recv().await {
        let input = match build(&*store, job, &jobs).await {
            Ok(Some(meta)) => SnapshotInput::Taken(meta),
            Ok(None) => return,
            Err(error) => SnapshotInput::Failed(error),
        };
        let failed = matches!(input, SnapshotInput::Failed(_));
        if inputs.send(Input::Snapshot(input)).await.is_err() || failed {
            return;
        }
    }
}

async fn build(
    store: &dyn SnapshotStore,
    job: BuildJob,
    jobs: &Receiver<BuildJob>,
) -> Result<Option<SnapshotMeta>, FatalError> {
    let storage = |e: StorageError| FatalError::Snapshot(Arc::new(e));
    let mut writer = store.begin().await.map_err(storage)?;
    let mut checksum = Checksum::new();
    let mut stream = job.stream;
    while let Some(chunk) = stream.next().await {
        if jobs.is_closed() {
            return Ok(None); // the node is stopping
        }
        let chunk = chunk.map_err(|e| FatalError::StateMachine(Arc::new(e)))?;
        if chunk.is_empty() {
            continue;
        }
        checksum.update(&chunk);
        writer.write(chunk).await.map_err(storage)?;
    }
    let meta = SnapshotMeta {
        last_included: job.last_included,
        membership: job.membership,
        size: checksum.len(),
        checksum: checksum.value(),
    };
    writer.commit(meta.clone()).await.map_err(storage)?;
    Ok(Some(meta))
}

/// What the applier needs for snapshots.
pub(super) struct ApplierSnapshots {
    pub(super) store: Arc<dyn SnapshotStore>,
    pub(super) builder: Sender<BuildJob>,
    pub(super) chunk_bytes: u64,
}

/// `TakeSnapshot` on the apply path: captures the state machine's snapshot and hands its
/// stream to the builder. Returns false if the node must stop.
pub(super) async fn take<M: StateMachine>(
    state_machine: &mut M,
    snapshots: Option<&ApplierSnapshots>,
    (last_included, membership): (LogId, Membership),
    inputs: &Sender<Input>,
) -> bool {
    let outcome = match snapshots {
        None => Ok(None),
        Some(_) => state_machine.snapshot().await,
    };
    let skipped = Input::Snapshot(SnapshotInput::Skipped { at: last_included.index });
    let input = match (outcome, snapshots) {
        (Ok(Some(stream)), Some(s)) => {
            match s.builder.try_send(BuildJob { last_included, membership, stream }) {
                Ok(()) => return true,
                Err(_) => skipped,
            }
        }
        (Ok(_), _) => skipped,
        (Err(error), _) => {
            let _ = inputs.send(Input::ApplyFailed(Arc::new(error))).await;
            return false;
        }
    };
    inputs.send(input).await.is_ok()
}

/// `Restore` on the apply path: replaces the state machine's state by the stored snapshot
/// `meta`. Proposers waiting for entries it covers learn nothing more of them (their entries
/// may or may not be in it). Returns false if the node must stop.
pub(super) async fn restore<M: StateMachine>(
    state_machine: &mut M,
    snapshots: Option<&ApplierSnapshots>,
    meta: SnapshotMeta,
    waiters: &mut IndexQueue<Waiter>,
    inputs: &Sender<Input>,
) -> bool {
    let last = meta.last_included.index;
    for (_, waiter) in waiters.split_up_to(last) {
        waiter.reply.send(Err(CommitError::LeadershipLost));
    }
    let Some(s) = snapshots else {
        let error = StateMachineError::new("restore without a snapshot store");
        let _ = inputs.send(Input::ApplyFailed(Arc::new(error))).await;
        return false;
    };
    let data = read_stream(s.store.clone(), meta.clone(), s.chunk_bytes);
    if let Err(error) = state_machine.restore(&meta, data).await {
        let _ = inputs.send(Input::ApplyFailed(Arc::new(error))).await;
        return false;
    }
    tracing::debug!(snapshot = ?meta.last_included, "state machine restored from snapshot");
    inputs.send(Input::Applied(last)).await.is_ok()
}

/// The data of the stored snapshot `meta`, read in chunks of `chunk_bytes`, checked against
/// its size and checksum (the stream ends with an error if they do not match).
pub(crate) fn read_stream(
    store: Arc<dyn SnapshotStore>,
    meta: SnapshotMeta,
    chunk_bytes: u64,
) -> SnapshotStream {
    let state = (store, meta, 0u64, Checksum::new(), false);
    futures::stream::unfold(
        state,
        move |(store, meta, offset, mut checksum, finished)| async move {
            if finished {
                return None;
            }
            if offset >= meta.size {
                if checksum.value() == meta.checksum && checksum.len() == meta.size {
                    return None;
                }
                let error = StateMachineError::new(format!(
                    "snapshot {:?} is corrupt (checksum mismatch)",
                    meta.last_included
                ));
                return Some((Err(error), (store, meta, offset, checksum, true)));
            }
            match store.read(&meta, offset, chunk_bytes).await {
                Ok(data) if !data.is_empty() => {
                    checksum.update(&data);
                    let next = offset + data.len() as u64;
                    Some((Ok(data), (store, meta, next, checksum, false)))
                }
                Ok(_) => {
                    let error = StateMachineError::new(format!(
                        "snapshot {:?} ends at {offset} of {} bytes",
                        meta.last_included, meta.size
                    ));
                    Some((Err(error), (store, meta, offset, checksum, true)))
                }
                Err(error) => {
                    let error = StateMachineError::new(format!("reading the snapshot: {error}"));
                    Some((Err(error), (store, meta, offset, checksum, true)))
                }
            }
        },
    )
    .boxed()
}

/// The node's network: fills the data of the InstallSnapshot chunks the engine emits (with
/// `data` empty) from the snapshot store, then sends through the application's network. A
/// chunk that cannot be read (the snapshot was just superseded) fails like an unreachable peer:
/// the engine resumes the transfer with the new snapshot.
pub(super) struct ChunkFiller<N> {
    pub(super) inner: N,
    pub(super) store: Option<Arc<dyn SnapshotStore>>,
    pub(super) chunk_bytes: u64,
}

#[async_trait]
impl<N: Network> Network for ChunkFiller<N> {
    async fn send(&self, mut envelope: Envelope) -> Result<RpcResponse, NetworkError> {
        let target = envelope.receiver;
        if let RpcRequest::InstallSnapshot(req) = &mut envelope.request {
            let len = chunk_len(req.meta.size, req.offset, self.chunk_bytes);
            if req.data.is_empty() && len > 0 {
                let unavailable = |reason: String| NetworkError::Unreachable {
                    peer: target,
                    reason: format!("snapshot chunk unavailable: {reason}"),
                };
                let Some(store) = &self.store else {
                    return Err(unavailable("no snapshot store".into()));
                };
                let data = store.read(&req.meta, req.offset, len).await.map_err(|e| {
                    tracing::debug!(peer = target, error = %e, "reading a snapshot chunk failed");
                    unavailable(e.to_string())
                })?;
                if data.len() as u64 != len {
                    return Err(unavailable(format!("read {} of {len} bytes", data.len())));
                }
                req.data = data;
            }
        }
        self.inner.send(envelope).await
    }

    fn members_changed(
        &self,
        members: &std::collections::BTreeMap<NodeId, crate::membership::NodeInfo>,
    ) {
        self.inner.members_changed(members)
    }

    fn max_request_bytes(&self) -> Option<u64> {
        self.inner.max_request_bytes()
    }
}

/// Loads the latest snapshot at start, checks it against the log store, restores the state
/// machine from it (unless `applied`, what a persistent state machine holds, is at or after
/// it: then checks that the stores hold that), and returns it with the log to start the engine
/// from. Resets the log store
/// after the snapshot if its log does not hold the snapshot's last entry (a crash between
/// installing a snapshot and resetting the log).
pub(super) async fn recover<S: LogStore, M: StateMachine>(
    store: &S,
    snapshots: &Arc<dyn SnapshotStore>,
    state_machine: &mut M,
    (durable, entries): (&mut crate::storage::DurableState, &mut Vec<crate::types::Entry>),
    chunk_bytes: u64,
    applied: Option<crate::types::LogId>,
) -> Result<Option<SnapshotMeta>, crate::error::StartError> {
    use crate::error::StartError;
    let latest = snapshots.latest().await?;
    let snapshot_index = latest.as_ref().map_or(0, |m| m.last_included.index);
    if durable.purged.index > snapshot_index {
        return Err(StartError::LogAfterSnapshot {
            purged: durable.purged,
            snapshot: latest.map(|m| m.last_included),
        });
    }
    let Some(meta) = latest else {
        if let Some(applied) = applied {
            super::resume::check(applied, durable, entries, None)?;
        }
        return Ok(None);
    };
    let last = meta.last_included;
    // A state machine that holds its own state at or after the snapshot is not restored.
    let resume = applied.filter(|a| a.index >= last.index);
    if let Some(applied) = resume {
        super::resume::check(applied, durable, entries, Some(&meta))?;
    }
    let holds = if last == durable.purged {
        true
    } else {
        let position = last.index.checked_sub(durable.first_index());
        let position = position.and_then(|p| usize::try_from(p).ok());
        position.and_then(|p| entries.get(p)).is_some_and(|e| e.log_id() == last)
    };
    if !holds {
        tracing::info!(snapshot = ?last, log_last = ?durable.last, "log does not hold the snapshot's last entry; resetting it");
        store.reset(last).await?;
        entries.clear();
        durable.purged = last;
        durable.last = last;
    }
    if let Some(applied) = resume {
        tracing::info!(snapshot = ?last, ?applied, "the state machine holds its own state: no restore");
        return Ok(Some(meta));
    }
    let data = read_stream(snapshots.clone(), meta.clone(), chunk_bytes);
    state_machine.restore(&meta, data).await?;
    tracing::info!(snapshot = ?last, "state machine restored from the latest snapshot");
    Ok(Some(meta))
}
