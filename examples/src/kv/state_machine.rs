//! [`KvStateMachine`]: the [`StateMachine`] that applies log entries to a shared [`KvState`].

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use futures::StreamExt;
use raft_core::{Bytes, Entry, SnapshotMeta, SnapshotStream, StateMachine, StateMachineError};

use raft_core::{EntryPayload, NodeId};

use super::command::{decode_entry, encode_responses, OpResult, Response, MAX_COMMANDS_PER_ENTRY};
use super::state::KvState;

/// What the state machine calls, on the apply path and in log order on every node, for each
/// member that a committed membership entry removed from the cluster for good (and, after a
/// restore, for every tombstone of the restored state): a node refuses its connections and
/// messages from then on (its certificate stays valid until it expires).
#[derive(Clone)]
pub struct OnRemoved(pub Arc<dyn Fn(NodeId) + Send + Sync>);

impl std::fmt::Debug for OnRemoved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnRemoved(..)")
    }
}

/// A handle to the state a node's state machine applies to. Clones share it: the node's
/// applier writes, the client server reads (after a ReadIndex, for linearizable gets).
#[derive(Clone, Debug, Default)]
pub struct SharedState(Arc<RwLock<KvState>>);

impl SharedState {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Read access. A poisoned lock (a panic while applying) still yields the state: applying
    /// is infallible, so the state is consistent.
    pub fn read(&self) -> RwLockReadGuard<'_, KvState> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, KvState> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Size of the chunks a snapshot stream yields.
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

/// Applies committed entries to a [`SharedState`]; each entry holds a list of commands and is
/// answered with the encoded list of their [`Response`]s.
#[derive(Clone, Debug, Default)]
pub struct KvStateMachine {
    state: SharedState,
    on_removed: Option<OnRemoved>,
}

impl KvStateMachine {
    /// A state machine applying to `state`.
    pub fn new(state: SharedState) -> Self {
        Self { state, on_removed: None }
    }

    /// Reports members removed for good to `on_removed`, as removals are applied or restored.
    pub fn on_removed(mut self, on_removed: OnRemoved) -> Self {
        self.on_removed = Some(on_removed);
        self
    }
}

/// Snapshots are the whole [`KvState`] (map and sessions) encoded with postcard. Capturing
/// clones the state under the read lock: a copy of the tree with reference-counted keys and
/// values (no byte is copied), a few milliseconds per hundred thousand keys. Encoding happens
/// in the stream, in the node's snapshot task, while entries keep being applied.
#[async_trait]
impl StateMachine for KvStateMachine {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError> {
        let mut removed = Vec::new();
        let answers = {
            let mut state = self.state.write();
            entries
                .iter()
                .map(|entry| match &entry.payload {
                    EntryPayload::Command(bytes) => match decode_entry(bytes) {
                        Ok(decoded) => {
                            let base = entry.index.saturating_mul(MAX_COMMANDS_PER_ENTRY as u64);
                            let owner = decoded.owner.as_deref();
                            let responses: Vec<Response> = decoded
                                .commands
                                .into_inner()
                                .into_iter()
                                .enumerate()
                                .map(|(i, command)| {
                                    // Saturates (never wraps) at indexes beyond 2^54.
                                    let op_id = base.saturating_add(i as u64);
                                    let response = state.apply(op_id, owner, command);
                                    if let Ok(OpResult::Tombstoned { id }) = response {
                                        removed.push(id);
                                    }
                                    response
                                })
                                .collect();
                            encode_responses(&responses)
                        }
                        Err(e) => encode_responses(&[Err(e)]),
                    },
                    EntryPayload::Membership(membership) => {
                        removed.extend(state.apply_membership(membership));
                        Bytes::new()
                    }
                    _ => Bytes::new(),
                })
                .collect()
        };
        if let Some(OnRemoved(report)) = &self.on_removed {
            removed.into_iter().for_each(|id| report(id));
        }
        Ok(answers)
    }

    async fn snapshot(&mut self) -> Result<Option<SnapshotStream>, StateMachineError> {
        let captured = self.state.read().clone();
        let encoded = futures::stream::once(async move {
            captured.to_bytes().map(Bytes::from).map_err(|e| StateMachineError::new(e.to_string()))
        });
        let chunks = encoded.flat_map(|result| {
            let chunks: Vec<Result<Bytes, StateMachineError>> = match result {
                Ok(bytes) => (0..bytes.len())
                    .step_by(SNAPSHOT_CHUNK_BYTES)
                    .map(|at| Ok(bytes.slice(at..(at + SNAPSHOT_CHUNK_BYTES).min(bytes.len()))))
                    .collect(),
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(chunks)
        });
        Ok(Some(chunks.boxed()))
    }

    async fn restore(
        &mut self,
        meta: &SnapshotMeta,
        mut data: SnapshotStream,
    ) -> Result<(), StateMachineError> {
        let size = usize::try_from(meta.size)
            .map_err(|_| StateMachineError::new("snapshot too large for this platform"))?;
        let mut bytes = Vec::with_capacity(size.min(64 << 20));
        while let Some(chunk) = data.next().await {
            let chunk = chunk?;
            if bytes.len() + chunk.len() > size {
                return Err(StateMachineError::new("snapshot data exceeds its recorded size"));
            }
            bytes.extend_from_slice(&chunk);
        }
        let state = KvState::from_bytes(&bytes)
            .map_err(|e| StateMachineError::new(format!("snapshot does not decode: {e}")))?;
        if let Some(OnRemoved(report)) = &self.on_removed {
            state.removed_members.iter().for_each(|&id| report(id));
        }
        *self.state.write() = state;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::kv::command::{decode_responses, encode_entry, Command, KvError, Op, OpResult};

    /// The metadata of a one-voter snapshot at entry 1 holding `chunks`.
    fn meta_of(chunks: &[Bytes]) -> SnapshotMeta {
        SnapshotMeta {
            last_included: raft_core::LogId::new(1, 1),
            membership: raft_core::Membership::with_voters([1]),
            size: chunks.iter().map(|c| c.len() as u64).sum(),
            checksum: 0,
        }
    }

    #[test]
    fn applies_entries_and_answers_garbage_deterministically() {
        let state = SharedState::new();
        let mut machine = KvStateMachine::new(state.clone());
        let put = Command {
            session: None,
            op: Op::Put { key: Bytes::from_static(b"k"), value: Bytes::from_static(b"v") },
        };
        let register = |id| Command { session: None, op: Op::Register { id } };
        let batch = encode_entry(Some("client-a.kv"), vec![put, register(1), register(1)]).unwrap();
        let garbage = Bytes::from_static(&[0xff]);
        let entries = vec![
            Entry { index: 1, term: 1, payload: EntryPayload::Blank },
            Entry { index: 2, term: 1, payload: EntryPayload::Command(batch) },
            Entry { index: 3, term: 1, payload: EntryPayload::Command(garbage) },
        ];
        let responses = futures::executor::block_on(machine.apply(&entries)).unwrap();
        assert_eq!(responses.len(), 3);
        assert!(responses[0].is_empty());
        let answers = decode_responses(&responses[1], 3);
        assert_eq!(answers[0], Ok(OpResult::Written));
        // A repeated registration answers the same.
        assert_eq!(answers[1], Ok(OpResult::Registered { id: 1, incarnation: 2049 }));
        assert_eq!(answers[1], answers[2]);
        assert!(matches!(decode_responses(&responses[2], 1)[0], Err(KvError::Malformed(_))));
        assert_eq!(state.read().get(b"k"), Some(Bytes::from_static(b"v")));
    }

    #[test]
    fn op_ids_of_huge_indexes_do_not_overflow() {
        let state = SharedState::new();
        let mut machine = KvStateMachine::new(state.clone());
        let put = |k: &'static [u8]| Command {
            session: None,
            op: Op::Put { key: Bytes::from_static(k), value: Bytes::from_static(b"v") },
        };
        let batch = encode_entry(Some("client-a.kv"), vec![put(b"a"), put(b"b")]).unwrap();
        let entries =
            vec![Entry { index: 1 << 55, term: 1, payload: EntryPayload::Command(batch) }];
        let responses = futures::executor::block_on(machine.apply(&entries)).unwrap();
        assert_eq!(decode_responses(&responses[0], 2), vec![Ok(OpResult::Written); 2]);
        assert_eq!(state.read().get(b"b"), Some(Bytes::from_static(b"v")));
    }

    #[test]
    fn removals_are_reported_on_apply_and_restore() {
        futures::executor::block_on(async {
            let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
            let record = |seen: Arc<std::sync::Mutex<Vec<NodeId>>>| {
                OnRemoved(Arc::new(move |id| seen.lock().unwrap().push(id)))
            };
            let mut machine =
                KvStateMachine::new(SharedState::new()).on_removed(record(seen.clone()));
            let membership = |index, voters: &[NodeId]| Entry {
                index,
                term: 1,
                payload: EntryPayload::Membership(raft_core::Membership::with_voters(
                    voters.iter().copied(),
                )),
            };
            let entries = [membership(1, &[1, 2, 3]), membership(2, &[2, 3])];
            let answers = machine.apply(&entries).await.unwrap();
            assert!(answers.iter().all(Bytes::is_empty));
            assert_eq!(*seen.lock().unwrap(), vec![1]);
            let chunks: Vec<Bytes> =
                machine.snapshot().await.unwrap().unwrap().map(|c| c.unwrap()).collect().await;
            let meta = meta_of(&chunks);
            let restored = Arc::new(std::sync::Mutex::new(Vec::new()));
            let mut other =
                KvStateMachine::new(SharedState::new()).on_removed(record(restored.clone()));
            let data = futures::stream::iter(chunks.into_iter().map(Ok)).boxed();
            other.restore(&meta, data).await.unwrap();
            assert_eq!(*restored.lock().unwrap(), vec![1]);
        });
    }

    #[test]
    fn a_snapshot_restores_map_and_sessions() {
        futures::executor::block_on(async {
            let state = SharedState::new();
            let mut machine = KvStateMachine::new(state.clone());
            let register = Command { session: None, op: Op::Register { id: 9 } };
            // Four values of 400 KiB: more than one chunk of state.
            let value = Bytes::from(vec![7u8; 400 << 10]);
            let mut commands = vec![register];
            for k in 0..4u8 {
                let key = Bytes::copy_from_slice(&[b'k', b'0' + k]);
                commands.push(Command { session: None, op: Op::Put { key, value: value.clone() } });
            }
            let entry = |index, commands: &[Command]| Entry {
                index,
                term: 1,
                payload: EntryPayload::Command(
                    encode_entry(Some("client-a.kv"), commands.to_vec()).unwrap(),
                ),
            };
            machine.apply(&[entry(1, &commands)]).await.unwrap();
            let stream = machine.snapshot().await.unwrap().unwrap();
            // Applying after the capture does not change the snapshot.
            let later =
                Command { session: None, op: Op::Delete { key: Bytes::from_static(b"k0") } };
            machine.apply(&[entry(2, &[later])]).await.unwrap();
            let chunks: Vec<Bytes> = stream.map(|c| c.unwrap()).collect().await;
            assert!(chunks.len() >= 2, "large states stream in several chunks");
            let meta = meta_of(&chunks);
            let restored = SharedState::new();
            let mut other = KvStateMachine::new(restored.clone());
            let data = futures::stream::iter(chunks.into_iter().map(Ok)).boxed();
            other.restore(&meta, data).await.unwrap();
            assert_eq!(restored.read().sessions.len(), 1);
            assert_eq!(restored.read().get(b"k0").map(|v| v.len()), Some(400 << 10));
            // Corrupt data is refused.
            let bad = futures::stream::iter(vec![Ok(Bytes::from_static(&[0xff; 4]))]).boxed();
            let meta = SnapshotMeta { size: 4, ..meta };
            assert!(other.restore(&meta, bad).await.is_err());
        });
    }
}
