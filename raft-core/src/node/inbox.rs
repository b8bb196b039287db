//! Proposals on their way to the main loop: a shared buffer, not one input queue message each.
//!
//! With many proposers, a message per proposal through the input queue cost each write the
//! queue's push and pop and three wake-up list locks (the queue's send notifies its receivers
//! and its streams, its receive notifies waiting senders): bench-mem spent more on them than on
//! the engine's work for the write. Here a proposer locks the buffer once and appends; only the
//! proposer that finds it empty sends the main loop one [`Input::Proposals`](super::Input) to
//! wake it, and the main loop takes every proposal gathered meanwhile with one lock.
//!
//! Bounded by the proposal slots: every proposal in the buffer holds one of the node's
//! `max_pending_proposals` permits. Closed with the input queue (`Inputs::close`, or when the
//! main loop's task is dropped without it): what it still holds is dropped (the proposers see
//! `Shutdown`), and later proposals are refused.

use std::sync::Mutex;

use async_channel::{Sender, TrySendError};
use async_lock::SemaphoreGuardArc;
use bytes::Bytes;

use super::{Input, ProposeReply};
use crate::runtime::Runtime;

/// A proposal on its way to the engine: the command, its proposal slot and whom to answer.
pub(crate) struct Proposed {
    pub(crate) command: Bytes,
    pub(crate) permit: SemaphoreGuardArc,
    pub(crate) reply: ProposeReply,
}

/// What [`Inbox::push`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Queued; the main loop was already told, or is told by another proposer.
    Queued,
    /// Queued in an empty buffer: the caller must wake the main loop (`Input::Proposals`).
    WakeMainLoop,
}

/// Proposals waiting for the main loop to take them.
#[derive(Default)]
pub(crate) struct Inbox {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    proposals: Vec<Proposed>,
    /// A wake-up is on its way to the main loop (or being handled) for what the buffer holds.
    woken: bool,
    closed: bool,
}

impl Inbox {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `proposal`, or gives it back if the node stopped.
    pub(crate) fn push(&self, proposal: Proposed) -> Result<Pushed, Proposed> {
        let mut state = self.state();
        if state.closed {
            return Err(proposal);
        }
        state.proposals.push(proposal);
        if std::mem::replace(&mut state.woken, true) {
            Ok(Pushed::Queued)
        } else {
            Ok(Pushed::WakeMainLoop)
        }
    }

    /// Moves every queued proposal, in arrival order, to the end of `into` (the main loop keeps
    /// one buffer for this, so no allocation per batch). The next proposal wakes the main loop
    /// again.
    pub(crate) fn take(&self, into: &mut Vec<Proposed>) {
        let mut state = self.state();
        state.woken = false;
        if into.is_empty() {
            std::mem::swap(into, &mut state.proposals);
        } else {
            into.append(&mut state.proposals);
        }
    }

    /// Refuses every later proposal and drops those queued (their proposers see `Shutdown`).
    pub(crate) fn close(&self) {
        let dropped = {
            let mut state = self.state();
            state.closed = true;
            std::mem::take(&mut state.proposals)
        };
        drop(dropped); // outside the lock: dropping a permit may wake a waiting proposer
    }
}

/// Sends the main loop the wake-up for the proposals in the inbox. Never waits: if the input
/// queue is full, a task sends it once there is room, so that a proposer that gives up cannot
/// lose it (no later proposal would send another while this one is due).
pub(crate) fn wake_main_loop(inputs: &Sender<Input>, runtime: &dyn Runtime) {
    match inputs.try_send(Input::Proposals) {
        // Closed: whoever closed the queue closed the inbox too (`Inputs::close`, or dropping
        // `Inputs`), which dropped this proposal and refuses later ones.
        Ok(()) | Err(TrySendError::Closed(_)) => {}
        Err(TrySendError::Full(wake)) => {
            let inputs = inputs.clone();
            runtime.spawn(Box::pin(async move {
                let _ = inputs.send(wake).await;
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use std::sync::Arc;

    use futures::channel::oneshot;

    use super::*;
    use crate::error::WriteError;

    fn proposal(slots: &Arc<async_lock::Semaphore>) -> (Proposed, oneshot::Receiver<WriteResult>) {
        let (reply, answer) = oneshot::channel();
        let permit = slots.try_acquire_arc().unwrap();
        let command = Bytes::from_static(b"x");
        (Proposed { command, permit, reply: ProposeReply::Applied(reply) }, answer)
    }

    type WriteResult = Result<Bytes, WriteError>;

    /// Only the proposal that finds the buffer empty wakes the main loop; after the main loop
    /// took the batch, the next one wakes it again.
    #[test]
    fn one_wake_up_per_batch() {
        let slots = Arc::new(async_lock::Semaphore::new(8));
        let inbox = Inbox::default();
        let mut pushed = Vec::new();
        let mut answers = Vec::new();
        for _ in 0..3 {
            let (p, answer) = proposal(&slots);
            answers.push(answer);
            pushed.push(inbox.push(p).ok().unwrap());
        }
        assert_eq!(pushed, [Pushed::WakeMainLoop, Pushed::Queued, Pushed::Queued]);
        let mut batch = Vec::new();
        inbox.take(&mut batch);
        assert_eq!(batch.len(), 3);
        let (p, _answer) = proposal(&slots);
        assert_eq!(inbox.push(p).ok(), Some(Pushed::WakeMainLoop));
        inbox.take(&mut batch);
        assert_eq!(batch.len(), 4, "appended behind what the main loop had not handled");
        let mut empty = Vec::new();
        inbox.take(&mut empty);
        assert!(empty.is_empty());
    }

    /// Runs what is spawned on it when the test says.
    #[derive(Default)]
    struct Deferred(Mutex<Vec<futures::future::BoxFuture<'static, ()>>>);

    impl Runtime for Deferred {
        fn spawn(&self, future: futures::future::BoxFuture<'static, ()>) {
            self.0.lock().unwrap().push(future);
        }
        fn sleep(&self, _: std::time::Duration) -> futures::future::BoxFuture<'static, ()> {
            Box::pin(futures::future::pending())
        }
        fn now(&self) -> std::time::Duration {
            std::time::Duration::ZERO
        }
    }

    /// A wake-up that finds the input queue full is not lost: it arrives once there is room,
    /// even though the proposer did not wait for it.
    #[test]
    fn a_wake_up_waits_for_room_in_a_full_queue() {
        let (inputs, receiver) = async_channel::bounded(1);
        inputs.try_send(Input::Shutdown).unwrap();
        let runtime = Deferred::default();
        wake_main_loop(&inputs, &runtime);
        assert!(matches!(receiver.try_recv(), Ok(Input::Shutdown)));
        assert!(receiver.try_recv().is_err(), "nothing more yet: the queue was full");
        let spawned: Vec<_> = runtime.0.lock().unwrap().drain(..).collect();
        assert_eq!(spawned.len(), 1);
        futures::executor::block_on(futures::future::join_all(spawned));
        assert!(matches!(receiver.try_recv(), Ok(Input::Proposals)));
        wake_main_loop(&inputs, &runtime);
        assert!(matches!(receiver.try_recv(), Ok(Input::Proposals)), "room: sent at once");
        assert!(runtime.0.lock().unwrap().is_empty());
    }

    /// Closing drops what is queued (its proposers' answers end, its slots come back) and
    /// refuses what comes later.
    #[test]
    fn closing_drops_the_queued_and_refuses_the_later() {
        let slots = Arc::new(async_lock::Semaphore::new(2));
        let inbox = Inbox::default();
        let (p, answer) = proposal(&slots);
        assert!(inbox.push(p).is_ok());
        assert_eq!(slots.available_permits(), 1);
        inbox.close();
        assert_eq!(slots.available_permits(), 2, "the queued proposal's slot is back");
        assert!(futures::executor::block_on(answer).is_err(), "its proposer sees the end");
        let (p, _answer) = proposal(&slots);
        assert!(inbox.push(p).is_err(), "refused after close");
    }
}
