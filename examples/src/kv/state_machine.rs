//! [`KvStateMachine`]: the [`StateMachine`] that applies log entries to a shared [`KvState`].

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use raft_core::{Bytes, Entry, StateMachine, StateMachineError};

use super::command::{encode_response, Command};
use super::state::KvState;

/// A handle to the state a node's state machine applies to. Clones share it: the node's
/// applier writes, the client server may read (for reads served locally once ReadIndex exists).
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

/// Applies committed entries to a [`SharedState`] and answers each with an encoded
/// [`Response`](super::command::Response).
#[derive(Clone, Debug, Default)]
pub struct KvStateMachine {
    state: SharedState,
}

impl KvStateMachine {
    /// A state machine applying to `state`.
    pub fn new(state: SharedState) -> Self {
        Self { state }
    }
}

#[async_trait]
impl StateMachine for KvStateMachine {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError> {
        let mut state = self.state.write();
        Ok(entries
            .iter()
            .map(|entry| match entry.command() {
                None => Bytes::new(),
                Some(bytes) => {
                    let response = Command::decode(bytes).and_then(|c| state.apply(entry.index, c));
                    encode_response(&response)
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use raft_core::EntryPayload;

    use super::*;
    use crate::kv::command::{decode_response, KvError, Op, OpResult};

    #[test]
    fn applies_entries_and_answers_garbage_deterministically() {
        let state = SharedState::new();
        let mut machine = KvStateMachine::new(state.clone());
        let put = Command {
            session: None,
            op: Op::Put { key: Bytes::from_static(b"k"), value: Bytes::from_static(b"v") },
        };
        let entries = vec![
            Entry { index: 1, term: 1, payload: EntryPayload::Blank },
            Entry { index: 2, term: 1, payload: EntryPayload::Command(put.encode().unwrap()) },
            Entry {
                index: 3,
                term: 1,
                payload: EntryPayload::Command(Bytes::from_static(b"\xff")),
            },
        ];
        let responses = futures::executor::block_on(machine.apply(&entries)).unwrap();
        assert_eq!(responses.len(), 3);
        assert!(responses[0].is_empty());
        assert_eq!(decode_response(&responses[1]), Ok(OpResult::Written));
        assert!(matches!(decode_response(&responses[2]), Err(KvError::Malformed(_))));
        assert_eq!(state.read().get(b"k"), Some(Bytes::from_static(b"v")));
    }
}
