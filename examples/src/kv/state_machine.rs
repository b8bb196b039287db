//! [`KvStateMachine`]: the [`StateMachine`] that applies log entries to a shared [`KvState`].

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use raft_core::{Bytes, Entry, StateMachine, StateMachineError};

use super::command::{decode_commands, encode_responses, Response, MAX_COMMANDS_PER_ENTRY};
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
                Some(bytes) => match decode_commands(bytes) {
                    Ok(commands) => {
                        let base = entry.index.saturating_mul(MAX_COMMANDS_PER_ENTRY as u64);
                        let responses: Vec<Response> = commands
                            .into_iter()
                            .enumerate()
                            .map(|(i, command)| state.apply(base + i as u64, command))
                            .collect();
                        encode_responses(&responses)
                    }
                    Err(e) => encode_responses(&[Err(e)]),
                },
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use raft_core::EntryPayload;

    use super::*;
    use crate::kv::command::{decode_responses, encode_commands, Command, KvError, Op, OpResult};

    #[test]
    fn applies_entries_and_answers_garbage_deterministically() {
        let state = SharedState::new();
        let mut machine = KvStateMachine::new(state.clone());
        let put = Command {
            session: None,
            op: Op::Put { key: Bytes::from_static(b"k"), value: Bytes::from_static(b"v") },
        };
        let register = Command { session: None, op: Op::Register };
        let batch = encode_commands(&[put, register.clone(), register]).unwrap();
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
        // Two registrations in one entry get distinct session ids.
        assert_ne!(answers[1], answers[2]);
        assert!(matches!(decode_responses(&responses[2], 1)[0], Err(KvError::Malformed(_))));
        assert_eq!(state.read().get(b"k"), Some(Bytes::from_static(b"v")));
    }
}
