//! Proposals on their way to the main loop: a shared buffer, not one input queue message each.
//!
//! With many proposers, a message per proposal through the input queue cost each write the
//! queue's push and pop and three wake-up list locks (the queue's send notifies its receivers
//! and its streams, its receive notifies waiting senders): bench-mem spent more on them than on
//! the engine's work for the write. Here a proposer locks the buffer once and appends; only the
//! proposer that finds it empty sends the main loop one [`Input::Proposals`](super::Input) to
//! wake it, and the main loop takes the proposals gathered meanwhile with one lock: at most as
//! many as its step has room for (each counts as one of the step's inputs). If more are left,
//! the inbox sends the wake-up again itself, behind the inputs already queued, so a burst of
//! proposals is spread over steps like any other inputs and no proposer waits for a wake-up
//! that nobody sends.
//!
//! Bounded by the proposal slots: every proposal in the buffer holds one of the node's
//! `max_pending_proposals` permits. The buffer gives back the memory of a burst once it is
//! over ([`CapacityCheck`]). Closed with the input queue (`Inputs::close`, or when the
//! main loop's task is dropped without it): what it still holds is dropped (the proposers see
//! `Shutdown`), and later proposals are refused.

use std::collections::VecDeque;
use std::sync::Mutex;

use async_channel::{Sender, TrySendError};
use bytes::Bytes;

use super::waiters::CapacityCheck;
use super::{Input, ProposeReply};
use crate::runtime::Runtime;

/// A proposal on its way to the engine: the command, its proposal slot and whom to answer.
pub(crate) struct Proposed {
    pub(crate) command: Bytes,
    pub(crate) permit: super::slots::SlotGuard,
    pub(crate) reply: ProposeReply,
}

/// What [`Inbox::push`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Queued; the main loop was already told, or is told by another proposer.
    Queued,
    /// Queued in an empty buffer: the caller must wake the main loop
    /// ([`Inbox::wake_main_loop`]).
    WakeMainLoop,
}

/// Proposals waiting for the main loop to take them.
pub(crate) struct Inbox {
    state: Mutex<State>,
    /// The main loop's input queue, where the wake-ups go.
    inputs: Sender<Input>,
}

#[derive(Default)]
struct State {
    proposals: VecDeque<Proposed>,
    /// A wake-up is on its way to the main loop (or being handled) for what the buffer holds.
    woken: bool,
    closed: bool,
    capacity: CapacityCheck,
}

impl Inbox {
    /// An empty inbox whose wake-ups go to `inputs`.
    pub(crate) fn new(inputs: Sender<Input>) -> Self {
        Self { state: Mutex::default(), inputs }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `proposal`, or gives it back if the node stopped.
    pub(crate) fn push(&self, proposal: Proposed) -> Result<Pushed, Proposed> {
        let mut state = self.state();
        if state.closed {
            return Err(proposal);
        }
        state.proposals.push_back(proposal);
        if std::mem::replace(&mut state.woken, true) {
            Ok(Pushed::Queued)
        } else {
            Ok(Pushed::WakeMainLoop)
        }
    }

    /// Moves the oldest queued proposals, at most `max`, in arrival order, to the end of `into`
    /// (the main loop keeps one buffer for this, so no allocation per batch). If that leaves
    /// some queued, wakes the main loop again (through `runtime` if its queue is full, see
    /// [`Inbox::wake_main_loop`]); otherwise the next proposal does.
    pub(crate) fn take(&self, into: &mut Vec<Proposed>, max: usize, runtime: &dyn Runtime) {
        let more = {
            let mut state = self.state();
            let State { proposals, capacity, .. } = &mut *state;
            capacity.grew_to(proposals.len());
            let count = proposals.len().min(max);
            into.extend(proposals.drain(..count));
            capacity.removed(proposals, count);
            let more = !proposals.is_empty();
            state.woken = more;
            more
        };
        if more {
            self.wake_main_loop(runtime);
        }
    }

    /// Makes sure a wake-up is on its way to the main loop, for the proposals it left waiting
    /// for room at the end of a step (a step hands the engine at most its room of them): sends
    /// one unless one is already due, so that at most one is queued at a time.
    pub(crate) fn wake_again(&self, runtime: &dyn Runtime) {
        if std::mem::replace(&mut self.state().woken, true) {
            return;
        }
        self.wake_main_loop(runtime);
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

    /// Sends the main loop the wake-up for the proposals in the inbox. Never waits: if the
    /// input queue is full, a task spawned on `runtime` sends it once there is room, so that a
    /// proposer that gives up cannot lose it (no later proposal would send another while this
    /// one is due).
    pub(crate) fn wake_main_loop(&self, runtime: &dyn Runtime) {
        match self.inputs.try_send(Input::Proposals) {
            // Closed: whoever closed the queue closed the inbox too (`Inputs::close`, or
            // dropping `Inputs`), which dropped this proposal and refuses later ones.
            Ok(()) | Err(TrySendError::Closed(_)) => {}
            Err(TrySendError::Full(wake)) => {
                let inputs = self.inputs.clone();
                runtime.spawn(Box::pin(async move {
                    let _ = inputs.send(wake).await;
                }));
            }
        }
    }

    /// The capacity of the buffer (for tests of its memory bound).
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.state().proposals.capacity()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use std::sync::Arc;

    use async_channel::Receiver;

    use super::*;
    use crate::error::WriteError;
    use crate::node::reply::Reply;
    use crate::node::slots::Slots;

    fn proposal(slots: &Arc<Slots>) -> (Proposed, Reply<WriteResult>) {
        let (reply, answer) = crate::node::reply::channel();
        let permit = slots.try_acquire().unwrap();
        let command = Bytes::from_static(b"x");
        (Proposed { command, permit, reply: ProposeReply::Applied(reply) }, answer)
    }

    type WriteResult = Result<Bytes, WriteError>;

    /// Pushes `count` proposals; returns their answers.
    fn push_many(inbox: &Inbox, slots: &Arc<Slots>, count: usize) -> Vec<Reply<WriteResult>> {
        (0..count)
            .map(|_| {
                let (p, answer) = proposal(slots);
                assert!(inbox.push(p).is_ok());
                answer
            })
            .collect()
    }

    /// An inbox and the input queue its wake-ups go to.
    fn inbox(queue: usize) -> (Inbox, Receiver<Input>) {
        let (inputs, receiver) = async_channel::bounded(queue);
        (Inbox::new(inputs), receiver)
    }

    /// How many wake-ups wait in the input queue.
    fn wake_ups(receiver: &Receiver<Input>) -> usize {
        std::iter::from_fn(|| receiver.try_recv().ok())
            .filter(|input| matches!(input, Input::Proposals))
            .count()
    }

    /// Only the proposal that finds the buffer empty wakes the main loop; after the main loop
    /// took the batch, the next one wakes it again.
    #[test]
    fn one_wake_up_per_batch() {
        let slots = Arc::new(Slots::new(8));
        let (inbox, _receiver) = inbox(8);
        let runtime = Deferred::default();
        let mut pushed = Vec::new();
        let mut answers = Vec::new();
        for _ in 0..3 {
            let (p, answer) = proposal(&slots);
            answers.push(answer);
            pushed.push(inbox.push(p).ok().unwrap());
        }
        assert_eq!(pushed, [Pushed::WakeMainLoop, Pushed::Queued, Pushed::Queued]);
        let mut batch = Vec::new();
        inbox.take(&mut batch, 1024, &runtime);
        assert_eq!(batch.len(), 3);
        let (p, _answer) = proposal(&slots);
        assert_eq!(inbox.push(p).ok(), Some(Pushed::WakeMainLoop));
        inbox.take(&mut batch, 1024, &runtime);
        assert_eq!(batch.len(), 4, "appended behind what the main loop had not handled");
        let mut empty = Vec::new();
        inbox.take(&mut empty, 1024, &runtime);
        assert!(empty.is_empty());
    }

    /// A step takes no more proposals than it has room for (review L1 of perf5: one wake-up
    /// took the whole inbox, up to `max_pending_proposals`), and what it leaves is not
    /// stranded: the inbox queues the wake-up again, once, behind the inputs already queued.
    #[test]
    fn a_take_is_bounded_and_the_rest_wakes_the_main_loop_again() {
        let slots = Arc::new(Slots::new(3000));
        let (inbox, receiver) = inbox(16);
        let runtime = Deferred::default();
        let _answers = push_many(&inbox, &slots, 2500);
        let mut batch = Vec::new();
        inbox.take(&mut batch, 1024, &runtime);
        assert_eq!(batch.len(), 1024, "at most the step's room");
        assert_eq!(wake_ups(&receiver), 1, "the rest wakes the main loop again");
        let (p, _answer) = proposal(&slots);
        assert_eq!(inbox.push(p).ok(), Some(Pushed::Queued), "a wake-up is already due");
        assert_eq!(wake_ups(&receiver), 0);
        batch.clear();
        inbox.take(&mut batch, 1000, &runtime);
        assert_eq!(batch.len(), 1000);
        assert_eq!(wake_ups(&receiver), 1);
        batch.clear();
        inbox.take(&mut batch, 1024, &runtime);
        assert_eq!(batch.len(), 477, "the last ones, the late proposal among them");
        assert_eq!(wake_ups(&receiver), 0, "nothing left: the next proposal wakes it");
        let (p, _answer) = proposal(&slots);
        assert_eq!(inbox.push(p).ok(), Some(Pushed::WakeMainLoop));
        assert!(runtime.0.lock().unwrap().is_empty(), "the queue had room: sent at once");
    }

    /// The main loop's own wake-up (proposals it left waiting for room) is sent only if none
    /// is due, and a proposal arriving meanwhile counts on it (review L1 of perf6).
    #[test]
    fn waking_again_sends_at_most_one_wake_up() {
        let slots = Arc::new(Slots::new(4));
        let (inbox, receiver) = inbox(8);
        let runtime = Deferred::default();
        inbox.wake_again(&runtime);
        inbox.wake_again(&runtime);
        let _answers = push_many(&inbox, &slots, 1);
        assert_eq!(wake_ups(&receiver), 1, "one wake-up, for the loop and the proposal");
        let mut batch = Vec::new();
        inbox.take(&mut batch, 1024, &runtime);
        assert_eq!(batch.len(), 1);
        inbox.wake_again(&runtime);
        assert_eq!(wake_ups(&receiver), 1, "none was due after the take: sent");
    }

    /// After a burst, the buffer gives its memory back once the traffic is small again (review
    /// L2 of perf5: it kept the capacity of a 64k burst for good).
    #[test]
    fn the_buffer_shrinks_after_a_burst() {
        let burst = 20_000;
        let slots = Arc::new(Slots::new(burst));
        let (inbox, _receiver) = inbox(4);
        let runtime = Deferred::default();
        let answers = push_many(&inbox, &slots, burst);
        let peak = inbox.capacity();
        assert!(peak >= burst);
        let mut batch = Vec::new();
        // The burst is taken, then small batches: within a window the buffer shrinks.
        while batch.len() < burst {
            inbox.take(&mut batch, 1024, &runtime);
        }
        drop((batch, answers));
        for _ in 0..(2 * crate::node::waiters::CAPACITY_WINDOW / 10) {
            let _answers = push_many(&inbox, &slots, 10);
            let mut batch = Vec::new();
            inbox.take(&mut batch, 1024, &runtime);
            assert_eq!(batch.len(), 10);
        }
        let shrunk = inbox.capacity();
        assert!(shrunk <= 2 * crate::node::waiters::MIN_CAPACITY, "{peak} -> {shrunk}");
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
        let (inbox, receiver) = inbox(1);
        inbox.inputs.try_send(Input::Shutdown).unwrap();
        let runtime = Deferred::default();
        inbox.wake_main_loop(&runtime);
        assert!(matches!(receiver.try_recv(), Ok(Input::Shutdown)));
        assert!(receiver.try_recv().is_err(), "nothing more yet: the queue was full");
        let spawned: Vec<_> = runtime.0.lock().unwrap().drain(..).collect();
        assert_eq!(spawned.len(), 1);
        futures::executor::block_on(futures::future::join_all(spawned));
        assert!(matches!(receiver.try_recv(), Ok(Input::Proposals)));
        inbox.wake_main_loop(&runtime);
        assert!(matches!(receiver.try_recv(), Ok(Input::Proposals)), "room: sent at once");
        assert!(runtime.0.lock().unwrap().is_empty());
    }

    /// Closing drops what is queued (its proposers' answers end, its slots come back) and
    /// refuses what comes later.
    #[test]
    fn closing_drops_the_queued_and_refuses_the_later() {
        let slots = Arc::new(Slots::new(2));
        let (inbox, _receiver) = inbox(1);
        let (p, answer) = proposal(&slots);
        assert!(inbox.push(p).is_ok());
        assert_eq!(slots.available(), 1);
        inbox.close();
        assert_eq!(slots.available(), 2, "the queued proposal's slot is back");
        assert!(futures::executor::block_on(answer).is_none(), "its proposer sees the end");
        let (p, _answer) = proposal(&slots);
        assert!(inbox.push(p).is_err(), "refused after close");
    }
}
