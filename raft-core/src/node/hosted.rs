//! A prepared node's main loop, as a value: what runs it gets the main loop itself (the only
//! owner of the engine), the end of its input queue, its share of the "all tasks done" guard
//! and its tick settings. Today the main loop's own task runs it ([`Hosted::spawn`], the one
//! path of `NodeBuilder::start`); a host loop (plan S1) is to step many of them in one task.
//! Either way the same methods run it, and nothing outside `node` sees the main loop's type.
//!
//! A main loop prepared for a host loop (`NodeBuilder::start_hosted`, plan S2) writes its log
//! inline: no log writer task; the host loop polls the write in flight in the group's turn
//! ([`Hosted::poll_log_write`]) and steps the group over its report. A group that stops with
//! a write in flight hands it to a task of its own, which holds a guard of the "all tasks
//! done" channel until the store's call returned: `Node::shutdown` waits for it, as for the
//! log writer task in tasks mode. Its peer senders, too, are futures the host loop polls
//! ([`Hosted::poll_peers`]), not tasks.

use std::sync::Arc;

use futures::channel::mpsc;
use futures::FutureExt;

use super::core_loop::{CoreLoop, MAX_INPUTS_PER_STEP};
use super::supervisor::{self, Spawner, Task};
use super::ticker::Ticking;
use super::Input;
use crate::runtime::Runtime;

use super::core_loop::Step;
pub(crate) use super::core_loop::Stepped;

/// A prepared node's main loop, not running yet (see the module documentation).
///
/// Dropped without [`Hosted::finish`] (its runner gone: a runtime shut down, a simulated
/// crash), it closes the node's proposal inbox when the last holder of its inputs goes, as the
/// main loop's task does when it is dropped.
pub(crate) struct Hosted {
    /// The main loop.
    pub(super) core: CoreLoop,
    /// The end of the node's input queue (the main loop holds it too).
    pub(super) ends: Arc<supervisor::Inputs>,
    /// A guard of the node's "all tasks done" channel (`Node::shutdown` waits until every
    /// guard is dropped): dropped only after the main loop finished and was dropped.
    pub(super) done: mpsc::Sender<()>,
    /// The node's tick settings (its ticker task is spawned apart, by `Node::prepare`).
    pub(super) ticking: Ticking,
}

impl Hosted {
    /// Runs the main loop as its own task on `runtime`, supervised as every task of the node
    /// ([`Spawner::spawn`]): a panic stops the node ([`supervisor::main_loop_panicked`]), and
    /// the task counts as running for `Node::shutdown` until it ended and was dropped.
    pub(super) fn spawn(self, runtime: Arc<dyn Runtime>) {
        let spawner =
            Spawner { runtime, done: self.done.clone(), inputs: self.ticking.inputs.clone() };
        let ends = self.ends.clone();
        spawner.spawn(Task::MainLoop(ends), self.run().boxed());
    }

    /// The main loop's task: waits for an input, then runs a [`Hosted::step`] over it and the
    /// inputs already queued behind it, until the node must stop or its input queue is closed;
    /// then [`Hosted::finish`].
    pub(crate) async fn run(mut self) {
        let ends = self.ends.clone();
        while let Ok(input) = ends.receiver.recv().await {
            if ends.receiver.len() < MAX_INPUTS_PER_STEP {
                // Woken by its first input, the step lets the tasks that are ready to run go
                // first (the proposers woken by the last answers, on this or another worker
                // thread) so that their inputs join this step: without it, on a multi-threaded
                // runtime the loop ran a whole step (a write, an AppendEntries per follower, a
                // hand-off to the applier) for every one or two proposals.
                crate::yield_now().await;
            }
            let mut more = || ends.receiver.try_recv().ok();
            if self.step(input, &mut more, MAX_INPUTS_PER_STEP).then == Stepped::Stop {
                break;
            }
        }
        self.finish();
    }

    /// One step of the main loop, without waiting: handles `first`, then the inputs `more`
    /// gives (until it gives none, `room` inputs were taken, or the node must stop), then takes
    /// the engine's actions (keeping the persistence rules) and publishes what the step
    /// changed. Returns how many inputs the step took as it counts them against `room` (each
    /// proposal taken from the inbox one, not each message of the queue). After
    /// [`Stepped::Stop`] the caller steps no more and calls [`Hosted::finish`]; so it does
    /// when the input queue is closed.
    pub(crate) fn step(
        &mut self,
        first: Input,
        more: &mut dyn FnMut() -> Option<Input>,
        room: usize,
    ) -> Step {
        self.core.step(first, more, room)
    }

    /// Stops the node after its last step: stops its other tasks and its ticker, fails what
    /// is pending (inputs still queued too: every caller gets `Shutdown` at once) and publishes
    /// the end. Then drops the main loop (and the guards it holds), and only then this main
    /// loop's guard of the "all tasks done" channel: `Node::shutdown` returns after all that.
    pub(crate) fn finish(self) {
        let Hosted { mut core, ends, done, ticking } = self;
        Self::drain_log_write(&mut core, &done, &ticking);
        core.finish();
        drop(core);
        drop(ticking);
        drop(ends);
        drop(done);
    }

    /// [`Hosted::finish`] under `catch_unwind`, for a runner that supervises steps one by one
    /// (a host loop): if the stop panics, reports it as a panic of the main loop
    /// ([`supervisor::main_loop_panicked`]) before the "all tasks done" guard is dropped, as
    /// the main loop's task does when its `finish` panics. No panic unwinds out of it: not
    /// the report's, nor a payload's drop ([`Hosted::drop_payload`]).
    pub(crate) fn finish_supervised(self) {
        let ends = self.ends.clone();
        let done = self.done.clone();
        let finished = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.finish()));
        if let Err(payload) = finished {
            Self::report_panic(&ends, payload);
        }
        drop(ends);
        drop(done);
    }

    /// Drops a panic payload (user code's: any type) without letting a panic of its own drop
    /// unwind into the caller: that drop runs under `catch_unwind`, and the payload of a panic
    /// there is forgotten (leaked) rather than dropped, which could panic again.
    pub(crate) fn drop_payload(payload: Box<dyn std::any::Any + Send>) {
        let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(payload)));
        if let Err(again) = dropped {
            tracing::error!("dropping a panic payload panicked: its payload is leaked");
            std::mem::forget(again);
        }
    }

    /// Hosted node (plan S3b-lite): polls the senders of its peers, futures its runner polls
    /// with the group's waker instead of tasks (`peer::InlineSenders`), each under
    /// `catch_unwind`. Call it in the group's turn after its step (and when the group was woken
    /// without an input: a sender's RPC ended, or it took a request), before polling the input
    /// queue, which then finds the answers the senders queued. A sender that panicked stops the
    /// group as a task's panic does (`FatalError::Panicked` with task "sender to peer N"), at
    /// its next step.
    pub(crate) fn poll_peers(&mut self, cx: &mut std::task::Context<'_>) {
        self.core.poll_peers(cx)
    }

    /// A handle on the node's input queue (a clone of the main loop's receiver): a runner that
    /// does not run [`Hosted::run`] polls it for the first input of a step, with its own
    /// waker, and takes the rest with `try_recv`. Closed (and empty) when the main loop must
    /// not wait any longer: the runner then calls [`Hosted::finish`].
    pub(crate) fn receiver(&self) -> async_channel::Receiver<Input> {
        self.ends.receiver.clone()
    }

    /// Stops the node after a step (or [`Hosted::finish`]) panicked with `payload`, as the
    /// main loop's task does ([`supervisor::main_loop_panicked`]: `FatalError::Panicked` with
    /// task "main loop"), without finishing the failed main loop; then drops it, and only
    /// then this main loop's guard of the "all tasks done" channel. Never unwinds
    /// ([`Hosted::report_panic`]).
    pub(crate) fn panicked(self, payload: Box<dyn std::any::Any + Send>) {
        Self::report_panic(&self.ends, payload);
        let Hosted { mut core, ends, done, ticking } = self;
        // Never unwinds: a panic there (a runtime's spawn) is reported and its payload dropped.
        let drained = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Self::drain_log_write(&mut core, &done, &ticking)
        }));
        if let Err(again) = drained {
            tracing::error!("handing a stopped group's log write to a task panicked");
            Self::drop_payload(again);
        }
        drop(core);
        drop(ticking);
        drop(ends);
        drop(done);
    }

    /// Reports `payload` as a panic of the main loop ([`supervisor::main_loop_panicked`]), then
    /// drops it; nothing unwinds out of it: a panicking report is logged and its own payload
    /// dropped, and a payload whose drop panics is leaked ([`Hosted::drop_payload`]).
    fn report_panic(ends: &supervisor::Inputs, payload: Box<dyn std::any::Any + Send>) {
        let reported = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            supervisor::main_loop_panicked(ends, payload.as_ref())
        }));
        if let Err(again) = reported {
            let message = supervisor::panic_message(again.as_ref());
            tracing::error!(%message, "reporting a main loop's panic panicked");
            Self::drop_payload(again);
        }
        Self::drop_payload(payload);
    }

    /// Polls the main loop's log write in flight (inline writes, a host loop's group) with
    /// `cx`, the group's waker: once it ended, returns its report (`Input::Persisted`, or
    /// `Input::Fatal` if the store panicked: task "log writer"), which the caller makes the
    /// first input of the group's next step (a step handles it as the log writer task's
    /// report), and starts the batches queued behind it. `None` while it is pending (the
    /// waker is then registered), with nothing in flight, and in tasks mode.
    pub(crate) fn poll_log_write(&mut self, cx: &mut std::task::Context<'_>) -> Option<Input> {
        self.core.poll_log_write(cx)
    }

    /// Hands the log write in flight (inline writes), if any, to a task of the node that
    /// awaits it, holding a guard of the "all tasks done" channel: `Node::shutdown` returns
    /// only after the store's call returned (its result is ignored: the node stops).
    fn drain_log_write(core: &mut CoreLoop, done: &mpsc::Sender<()>, ticking: &Ticking) {
        if let Some(write) = core.take_log_write() {
            let spawner = Spawner {
                runtime: core.runtime(),
                done: done.clone(),
                inputs: ticking.inputs.clone(),
            };
            spawner.spawn(Task::Other("log writer".to_owned()), write);
        }
    }

    /// The node's tick settings: a host's ticker sends the group `Input::Tick` when its pacer
    /// wants it (`Pacer::plan`, `Plan::due`), and drops the group once the pacer is stopped.
    // Used by the host loop (plan S1): in tasks mode the node's own ticker task has them.
    #[allow(dead_code)]
    pub(crate) fn ticking(&self) -> &Ticking {
        &self.ticking
    }
}
