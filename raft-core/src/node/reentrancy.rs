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
        let _mark = Mark::set(self.token);
        Pin::new(&mut self.call).poll(cx)
    }
}

/// The mark of a thread inside a state machine call, taken off when dropped: also when the call
/// panics (the supervisor catches the panic and the thread runs other tasks afterwards).
struct Mark {
    outer: u64,
}

impl Mark {
    fn set(token: u64) -> Self {
        Self { outer: APPLYING.with(|applying| applying.replace(token)) }
    }
}

impl Drop for Mark {
    fn drop(&mut self) {
        APPLYING.with(|applying| applying.set(self.outer));
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    /// A state machine call that panics leaves the thread unmarked (review finding 4).
    #[test]
    fn a_panicking_call_leaves_the_thread_unmarked() {
        let token = new_node_token();
        let call = StateMachineCall {
            token,
            call: futures::future::poll_fn(|_| -> Poll<()> { panic!("state machine exploded") }),
        };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            futures::executor::block_on(call)
        }));
        assert!(outcome.is_err(), "the call panicked");
        assert!(!inside_state_machine(token), "the thread is still marked");
    }
}
