//! The host loop (plan S1): one task of a [`Host::with_loop`](super::Host::with_loop) host
//! that runs the main-loop steps of all its groups, instead of one main-loop task per group.
//!
//! Each group's main loop comes as a [`Hosted`] value (`NodeBuilder::start_hosted`). The loop
//! polls each group's input queue with the group's own waker ([`GroupWake`]); an input wakes
//! the group, which queues it once on the loop's [`ReadyQueue`] and wakes the loop's task. A
//! **pass**, after the task was woken: [`crate::yield_now`] twice (a group's own main loop
//! yields once before a step; the loop yields twice, so that the proposers woken through
//! their appliers by the last pass's answers queue their inputs first),
//! then every group queued so far in turn: one step over its first input and the inputs
//! queued behind it. A group with inputs left is queued again at the tail (one step per group
//! per pass). A pass takes at most [`PASS_INPUTS`] inputs in all, counted as a step counts
//! them against its room (each proposal taken from a group's inbox one; a step at least one),
//! not as messages of the input queues; each group at most
//! `min(1024, max(64, PASS_INPUTS / groups queued))`; groups left over go first in the next
//! pass, after the task yielded to the runtime.
//!
//! Each step (and a group's stop) runs under `catch_unwind`: a group whose step panics stops
//! alone (`FatalError::Panicked` with task "main loop", as in its own task) and is dropped
//! from the loop; the others go on. A panic payload is user code's value: it is dropped under
//! `catch_unwind` too, and leaked if its drop panics ([`Hosted::drop_payload`]), so that no
//! panic of a group reaches the loop's own `catch_unwind` (which would drop every group). A group whose main loop must stop, or whose input queue is
//! closed, is finished and dropped from the loop; its `Node::shutdown` returns after that.
//!
//! A group's log writes are the loop's too (plan S2, inline writes): its node has no log
//! writer task. A step starts a write itself when none is in flight (finished in the step if
//! the store is done at the first poll) and queues the batches issued while one is; in the
//! group's turn the loop polls the write in flight with the group's waker, first (its report,
//! `Input::Persisted`, is the step's first input, counted as one against the budget, and the
//! batches queued behind it start at once, merged) and again after every step (a write
//! started in the step was polled only with a noop waker: this poll registers the group's
//! waker; a write found ended queues the group again). A group that stops with a write in
//! flight hands it to a task that awaits it, so that `Node::shutdown` returns only after the
//! store's call returned.
//!
//! A group's peer senders (plan S3b-lite) are futures, not tasks: in the group's turn, after
//! its step (and when they woke the group with no input queued), the loop polls them with the
//! group's waker ([`Hosted::poll_peers`], each under `catch_unwind`), then polls the input
//! queue, which finds the answers they queued. A request a step queues for a sender wakes the
//! group again, so the sender's network future is polled again in the next pass (a transport
//! that yields once before forming a batch batches the requests of every group of the pass).
//! A sender that panics stops its group alone. InstallSnapshot requests go to a sender task
//! per (group, peer) as in tasks mode (their chunks are read from the snapshot store).
//!
//! A step runs in the loop's task: a group's blocking network or store callback stalls the
//! whole loop (every group of the host), where in tasks mode it stalls one worker; so does a
//! `Network::send` that blocks before its future's first `Pending`.
//!
//! The loop's task owns the groups' main loops: dropped (its runtime shut down, a simulated
//! crash), it drops them, which closes each node's proposal inbox as a dropped main-loop task
//! does. It ends once no clone of its host is left and every group has stopped.

use std::future::poll_fn;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use async_channel::Receiver;
use futures::{FutureExt, Stream};

use super::ready::{GroupWake, ReadyQueue};
use crate::node::{panic_message, Hosted, Input, Stepped};
use crate::runtime::Runtime;

/// How many inputs one pass takes at most, over all groups.
pub(crate) const PASS_INPUTS: usize = 4_096;

/// The most inputs one group's step takes in a pass (as a group's own main loop).
const MAX_ROOM: usize = 1_024;

/// The fewest inputs one group's step may take in a pass, however many groups are ready.
const MIN_ROOM: usize = 64;

/// How much room each of `ready` groups gets in a pass.
fn room_per_group(ready: usize) -> usize {
    (PASS_INPUTS / ready.max(1)).clamp(MIN_ROOM, MAX_ROOM)
}

/// Counts of a host loop's work since it started: diagnostics (for benchmarks), not a stable
/// interface. Read with [`Host::loop_stats`](super::Host::loop_stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HostLoopStats {
    /// Passes that stepped at least one group (a pass whose groups all had nothing to do,
    /// their wake-up spurious or stale, is not counted: `steps >= passes`).
    pub passes: u64,
    /// Main-loop steps run, over all groups (`steps / passes` is the mean number of groups
    /// stepped per pass).
    pub steps: u64,
    /// Inputs those steps took, counted as a step counts them against its room (each proposal
    /// taken from a group's inbox one; a step at least one): what the pass cap bounds.
    pub inputs: u64,
}

/// What a host and its loop's task share.
struct Shared {
    ready: Arc<ReadyQueue>,
    /// Groups handed to the loop and not adopted yet; `None` once the loop's task is gone
    /// (a group handed over then is dropped at once: the same fate as the groups it had).
    incoming: Mutex<Option<Vec<Hosted>>>,
    /// No clone of the host is left: no group will be added.
    closed: AtomicBool,
    passes: AtomicU64,
    steps: AtomicU64,
    inputs: AtomicU64,
}

impl Shared {
    fn incoming(&self) -> MutexGuard<'_, Option<Vec<Hosted>>> {
        self.incoming.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A host's handle on its loop (one per host, shared by the host's clones): hands groups to
/// the loop; dropped with the host's last clone, it tells the loop that no group will come.
pub(crate) struct LoopHandle {
    shared: Arc<Shared>,
}

impl LoopHandle {
    /// Spawns the loop's task on `runtime` and returns its handle.
    pub(crate) fn spawn<R: Runtime>(runtime: R) -> Self {
        let shared = Arc::new(Shared {
            ready: Arc::new(ReadyQueue::default()),
            incoming: Mutex::new(Some(Vec::new())),
            closed: AtomicBool::new(false),
            passes: AtomicU64::new(0),
            steps: AtomicU64::new(0),
            inputs: AtomicU64::new(0),
        });
        let task = shared.clone();
        // Built before the future and moved into it: dropped with it, polled or not (a task
        // dropped before its first poll must still drop the groups handed to it).
        let gone = Gone(shared.clone());
        runtime.spawn(
            async move {
                // The steps are supervised one by one; this only catches a bug of the loop
                // itself, which then drops every group (as if its runtime had shut down).
                if let Err(payload) = AssertUnwindSafe(run(task)).catch_unwind().await {
                    let message = panic_message(payload.as_ref());
                    tracing::error!(%message, "a host loop panicked: its groups are dropped");
                    Hosted::drop_payload(payload);
                }
                drop(gone);
            }
            .boxed(),
        );
        Self { shared }
    }

    /// Hands a group's main loop to the loop, which runs it from its next pass on.
    pub(crate) fn add(&self, hosted: Hosted) {
        let mut incoming = self.shared.incoming();
        match incoming.as_mut() {
            Some(list) => {
                list.push(hosted);
                drop(incoming);
                self.shared.ready.wake_task();
            }
            None => {
                drop(incoming);
                tracing::warn!("a group was added to a host whose loop is gone: dropped");
                drop(hosted);
            }
        }
    }

    /// The loop's counts so far.
    pub(crate) fn stats(&self) -> HostLoopStats {
        HostLoopStats {
            passes: self.shared.passes.load(Ordering::Relaxed),
            steps: self.shared.steps.load(Ordering::Relaxed),
            inputs: self.shared.inputs.load(Ordering::Relaxed),
        }
    }
}

impl Drop for LoopHandle {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.ready.wake_task();
    }
}

/// Marks the loop's task gone when its future ends or is dropped, and drops the groups handed
/// to it that it never adopted.
struct Gone(Arc<Shared>);

impl Drop for Gone {
    fn drop(&mut self) {
        let pending = self.0.incoming().take();
        drop(pending);
    }
}

/// One group of the loop.
struct Group {
    hosted: Hosted,
    /// The group's input queue (a clone of its main loop's receiver), polled with `waker`.
    receiver: Pin<Box<Receiver<Input>>>,
    wake: Arc<GroupWake>,
    waker: Waker,
    /// An input taken from the queue after a step (when polling to register the waker found
    /// one): the first input of the group's next step (after `written`).
    next: Option<Input>,
    /// The report of the group's log write, found ended when polling it after a step: the
    /// first input of the group's next step.
    written: Option<Input>,
}

/// How a group's turn in a pass went.
enum Turn {
    /// Nothing to do (its waker is registered).
    Idle,
    /// One step over this many inputs; the group goes on.
    Stepped(usize),
}

impl Group {
    /// The group's turn in a pass: one step, at most `room` inputs. Its first input is the
    /// report of its log write if that ended, else the next of its input queue.
    fn turn(&mut self, room: usize) -> Result<Turn, End> {
        self.wake.clear();
        let waker = self.waker.clone();
        let mut cx = Context::from_waker(&waker);
        let written = match self.written.take() {
            Some(report) => Some(report),
            None => poll_log_write(&mut self.hosted, &mut cx)?,
        };
        let first = match written.or_else(|| self.next.take()) {
            Some(input) => input,
            None => match self.poll_input(&mut cx)? {
                Some(input) => input,
                None => {
                    // Woken by its peer senders (an RPC ended, a request was taken), or
                    // spuriously: they run, and an answer they queued is stepped over now.
                    self.poll_peers(&mut cx, 0)?;
                    match self.poll_input(&mut cx)? {
                        Some(input) => input,
                        None => return Ok(Turn::Idle),
                    }
                }
            },
        };
        let receiver = &self.receiver;
        let next = &mut self.next;
        // Messages taken from the queue: the count of a step that panicked (which reports none).
        let mut messages = 1;
        let mut more = || {
            let input = next.take().or_else(|| receiver.try_recv().ok());
            messages += usize::from(input.is_some());
            input
        };
        let hosted = &mut self.hosted;
        let stepped =
            std::panic::catch_unwind(AssertUnwindSafe(|| hosted.step(first, &mut more, room)));
        // The budget is charged the inputs as the step counts them (each proposal one), at
        // least one: its first input (`room` is at least one, so this stays within `room`).
        let taken = match stepped {
            Ok(step) if step.then == Stepped::Stop => return Err(End::Finish(step.inputs.max(1))),
            Ok(step) => step.inputs.max(1),
            Err(payload) => return Err(End::Panicked(messages, payload)),
        };
        // Polls the log write with the group's waker: a write the step started was polled only
        // with a noop waker, and nothing else would wake the group when it ends.
        if let Some(report) =
            poll_log_write(&mut self.hosted, &mut cx).map_err(|end| end.after(taken))?
        {
            self.written = Some(report);
            self.wake.queue();
        }
        // The senders take the step's requests (and report what ended) before the waker is
        // registered: an answer they queue is found just below.
        self.poll_peers(&mut cx, taken)?;
        if self.next.is_some() {
            // The step had no room for the input taken last turn: the group goes on.
            self.wake.queue();
            return Ok(Turn::Stepped(taken));
        }
        // Registers the waker for the next input, or finds it already there.
        match self.receiver.as_mut().poll_next(&mut cx) {
            Poll::Pending => {}
            Poll::Ready(None) => return Err(End::Finish(taken)),
            Poll::Ready(Some(input)) => {
                self.next = Some(input);
                self.wake.queue();
            }
        }
        Ok(Turn::Stepped(taken))
    }

    /// Polls the group's input queue with the group's waker: its next input, if one is there
    /// (the waker registered if none is); the group ends if the queue is closed.
    fn poll_input(&mut self, cx: &mut Context<'_>) -> Result<Option<Input>, End> {
        match self.receiver.as_mut().poll_next(cx) {
            Poll::Pending => Ok(None),
            Poll::Ready(None) => Err(End::Finish(0)),
            Poll::Ready(Some(input)) => Ok(Some(input)),
        }
    }

    /// Polls the group's peer senders with the group's waker ([`Hosted::poll_peers`]: each
    /// under `catch_unwind`, a panicking sender stops the group at its next step). Should the
    /// poll itself panic, the group stops as if its step (over `taken` inputs) had.
    fn poll_peers(&mut self, cx: &mut Context<'_>, taken: usize) -> Result<(), End> {
        let hosted = &mut self.hosted;
        std::panic::catch_unwind(AssertUnwindSafe(|| hosted.poll_peers(cx)))
            .map_err(|payload| End::Panicked(taken, payload))
    }

    /// Ends the group: finishes its main loop (or reports its panic), each under
    /// `catch_unwind`, then drops it. Returns how many inputs its last step took.
    fn end(self, end: End) -> usize {
        let Group { hosted, receiver, wake, waker, next, written } = self;
        drop((receiver, waker, wake, next, written));
        match end {
            End::Finish(taken) => {
                hosted.finish_supervised();
                taken
            }
            End::Panicked(taken, payload) => {
                // Never unwinds: neither the report nor the drop of user code's payload.
                hosted.panicked(payload);
                taken
            }
        }
    }
}

/// Polls a group's log write in flight with `cx` ([`Hosted::poll_log_write`]: a panic in the
/// store is its report), under `catch_unwind` as a step (a metrics recorder's panic).
fn poll_log_write(hosted: &mut Hosted, cx: &mut Context<'_>) -> Result<Option<Input>, End> {
    std::panic::catch_unwind(AssertUnwindSafe(|| hosted.poll_log_write(cx)))
        .map_err(|payload| End::Panicked(0, payload))
}

/// Why a group leaves the loop.
enum End {
    /// Its main loop must stop (after a step over this many inputs) or its queue is closed.
    Finish(usize),
    /// Its step over this many inputs panicked (or polling its log write did, after it).
    Panicked(usize, Box<dyn std::any::Any + Send>),
}

impl End {
    /// The end, when it came after a step over `taken` inputs.
    fn after(self, taken: usize) -> End {
        match self {
            End::Finish(n) => End::Finish(n.max(taken)),
            End::Panicked(n, payload) => End::Panicked(n.max(taken), payload),
        }
    }
}

/// A slot of the loop's table: boxed, so that growing the table moves pointers and a free
/// slot keeps no memory of the group that was there.
type Slot = Option<Box<Group>>;

/// The loop's groups, by index (indexes are reused once a group is gone).
#[derive(Default)]
struct Table {
    groups: Vec<Slot>,
    free: Vec<usize>,
    live: usize,
}

impl Table {
    /// Takes `hosted` in and queues it for a first poll.
    fn adopt(&mut self, hosted: Hosted, ready: &Arc<ReadyQueue>) {
        let idx = match self.free.pop() {
            Some(idx) => idx,
            None => {
                self.groups.push(None);
                self.groups.len() - 1
            }
        };
        let wake = GroupWake::new(idx, ready.clone());
        let waker = Waker::from(wake.clone());
        let receiver = Box::pin(hosted.receiver());
        let group =
            Group { hosted, receiver, wake: wake.clone(), waker, next: None, written: None };
        self.groups[idx] = Some(Box::new(group));
        self.live += 1;
        wake.queue();
    }

    /// Takes the group at `idx` out.
    fn remove(&mut self, idx: usize) -> Option<Box<Group>> {
        let group = self.groups.get_mut(idx)?.take()?;
        self.free.push(idx);
        self.live -= 1;
        Some(group)
    }
}

/// The loop's task (see the module documentation).
async fn run(shared: Arc<Shared>) {
    let mut table = Table::default();
    loop {
        poll_fn(|cx| {
            shared.ready.register(cx);
            let adding = shared.incoming().as_ref().is_some_and(|list| !list.is_empty());
            let closed = shared.closed.load(Ordering::Acquire);
            if adding || !shared.ready.is_empty() || (closed && table.live == 0) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        // `closed` first: every group handed over before the host went is then in `incoming`.
        let closed = shared.closed.load(Ordering::Acquire);
        let adopted = shared.incoming().as_mut().map(std::mem::take).unwrap_or_default();
        for hosted in adopted {
            table.adopt(hosted, &shared.ready);
        }
        if closed && table.live == 0 {
            return;
        }
        // Twice: the answers of the last pass reach the proposers in two hops (the group's
        // applier, then the proposer's task), and a group's proposers must have queued their
        // next writes before its step for the step to carry them all. With one yield, at 64
        // groups x 4 clients each the rounds carried half as many writes as with a task per
        // group (1.27 against 0.51 RPCs per write: 0.53x the throughput); with two, 0.54 RPCs
        // per write and 1.09x (ARCHITECTURE, "Built: step S1").
        crate::yield_now().await;
        crate::yield_now().await;
        pass(&shared, &mut table);
    }
}

/// One pass over the groups queued so far (see the module documentation).
fn pass(shared: &Shared, table: &mut Table) {
    let ids = shared.ready.drain();
    if ids.is_empty() {
        return;
    }
    let room = room_per_group(ids.len());
    let mut budget = PASS_INPUTS;
    let (mut steps, mut inputs) = (0u64, 0u64);
    for (pos, &idx) in ids.iter().enumerate() {
        if budget == 0 {
            // The rest go first in the next pass (still marked queued), after a yield.
            shared.ready.push_front(ids[pos..].iter().copied());
            break;
        }
        let Some(Some(group)) = table.groups.get_mut(idx) else {
            continue; // a stale wake-up of a group that is gone
        };
        let taken = match group.turn(room.min(budget)) {
            Ok(Turn::Idle) => 0,
            Ok(Turn::Stepped(taken)) => {
                steps += 1;
                taken
            }
            Err(end) => {
                steps += u64::from(!matches!(end, End::Finish(0) | End::Panicked(0, _)));
                table.remove(idx).map_or(0, |group| (*group).end(end))
            }
        };
        inputs += taken as u64;
        budget = budget.saturating_sub(taken);
    }
    shared.passes.fetch_add(u64::from(steps > 0), Ordering::Relaxed);
    shared.steps.fetch_add(steps, Ordering::Relaxed);
    shared.inputs.fetch_add(inputs, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::multi::Host;
    use futures::future::BoxFuture;
    use std::time::Duration;

    /// A runtime whose spawned futures the test polls itself.
    #[derive(Clone, Default)]
    struct Local(Arc<Mutex<Vec<BoxFuture<'static, ()>>>>);

    impl Runtime for Local {
        fn spawn(&self, future: BoxFuture<'static, ()>) {
            self.0.lock().unwrap().push(future);
        }
        fn sleep(&self, _: Duration) -> BoxFuture<'static, ()> {
            futures::future::pending().boxed()
        }
        fn now(&self) -> Duration {
            Duration::ZERO
        }
    }

    /// The host task waits while a clone of its host is left, and ends once none is (with no
    /// group left); until then it sleeps without passes.
    #[test]
    fn the_host_task_ends_with_its_last_host() {
        let local = Local::default();
        let host = Host::<()>::with_loop(1, local.clone());
        let mut task = local.0.lock().unwrap().pop().unwrap();
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(task.as_mut().poll(&mut cx).is_pending());
        let clone = host.clone();
        drop(host);
        assert!(task.as_mut().poll(&mut cx).is_pending(), "a clone is left");
        assert_eq!(clone.loop_stats(), Some(HostLoopStats::default()));
        drop(clone);
        assert!(task.as_mut().poll(&mut cx).is_ready(), "no host left, no group");
        assert_eq!(Host::<()>::new(1).loop_stats(), None);
    }

    /// Review finding (LOW 2): the table holds pointers, not groups.
    #[test]
    fn a_table_slot_is_a_pointer() {
        assert!(std::mem::size_of::<Slot>() <= 16, "{}", std::mem::size_of::<Slot>());
    }

    /// Review finding (LOW 3): a host's Debug output names the loop only for a looped host.
    #[test]
    fn debug_shows_the_loop_only_when_looped() {
        let local = Local::default();
        let plain = format!("{:?}", Host::<()>::new(1));
        assert!(!plain.contains("host_loop"), "{plain}");
        let looped = format!("{:?}", Host::<()>::with_loop(1, local));
        assert!(looped.contains("host_loop: true"), "{looped}");
    }

    #[test]
    fn room_per_group_follows_the_plan() {
        assert_eq!(room_per_group(1), 1_024);
        assert_eq!(room_per_group(4), 1_024);
        assert_eq!(room_per_group(8), 512);
        assert_eq!(room_per_group(64), 64);
        assert_eq!(room_per_group(1_000), 64);
        assert_eq!(room_per_group(0), 1_024);
    }
}
