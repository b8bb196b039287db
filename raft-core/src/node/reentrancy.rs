//! Detects calls into a node from inside its own state machine (`apply`, `snapshot`,
//! `restore`): the node waits for those calls to return before it applies anything more, so a
//! call that waits for the state machine to move on would wait for itself. The applier marks
//! the thread while it polls a state machine call; the node's waiting methods check the mark.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;

use crate::snapshot::{SnapshotMeta, SnapshotStream};
use crate::state_machine::{StateMachine, StateMachineError};
use crate::types::Entry;

thread_local! {
    /// The node whose state machine call is being polled on this thread (0: none).
    static APPLYING: Cell<u64> = const { Cell::new(0) };
}

static NEXT_NODE: AtomicU64 = AtomicU64::new(1);

/// A token naming one node (so that a state machine may call into another node).
pub(crate) fn new_node_token() -> u64 {
    NEXT_NODE.fetch_add(1, Ordering::Relaxed)
}

/// Whether this runs inside a state machine call of the node `token`.
pub(crate) fn inside_state_machine(token: u64) -> bool {
    APPLYING.with(|applying| applying.get() == token)
}

/// A state machine call of node `token`, marked as such while it is polled.
pub(crate) struct StateMachineCall<F> {
    pub(crate) token: u64,
    pub(crate) call: F,
}

impl<F: Future + Unpin> Future for StateMachineCall<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let outer = APPLYING.with(|applying| applying.replace(self.token));
        let polled = Pin::new(&mut self.call).poll(cx);
        APPLYING.with(|applying| applying.set(outer));
        polled
    }
}

/// The node's state machine, each call marked (see [`StateMachineCall`]).
pub(crate) struct Marked<M> {
    pub(crate) token: u64,
    pub(crate) inner: M,
}

#[async_trait::async_trait]
impl<M: StateMachine> StateMachine for Marked<M> {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError> {
        StateMachineCall { token: self.token, call: self.inner.apply(entries) }.await
    }

    async fn snapshot(&mut self) -> Result<Option<SnapshotStream>, StateMachineError> {
        StateMachineCall { token: self.token, call: self.inner.snapshot() }.await
    }

    async fn restore(
        &mut self,
        meta: &SnapshotMeta,
        data: SnapshotStream,
    ) -> Result<(), StateMachineError> {
        StateMachineCall { token: self.token, call: self.inner.restore(meta, data) }.await
    }
}
