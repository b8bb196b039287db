//! [`TaskPool`]: many futures run inside a few tasks of another runtime (issue 21 item 7, step 1
//! of the host-level loop: one ready queue per host instead of one task per group's loop).
//!
//! Each driver is one task of the inner runtime that polls a
//! [`FuturesUnordered`](futures::stream::FuturesUnordered): a future woken inside it enqueues
//! itself on the set's ready queue and wakes the driver once, so that many groups woken by one
//! QUIC frame or one LMDB commit cost the inner runtime one task wake-up, not one per group's
//! task.

use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::channel::mpsc;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{Future, FutureExt, StreamExt};

use super::Runtime;

/// The most futures a driver takes from its queue in one poll before it polls the ones it has:
/// a task that spawns in a loop cannot keep the driver from running the others (the rest of the
/// queue waits for the next poll, which the driver asks for at once).
const ACCEPT_PER_POLL_MAX: usize = 64;

/// A set of `drivers` tasks on an inner [`Runtime`], each running every future spawned through
/// its [`PooledRuntime`] handles: a [`Runtime`] adapter that turns one task per future into one
/// task per driver.
///
/// Give each group of a [`Host`](crate::multi::Host) the handle [`TaskPool::runtime_for`] its
/// group id: a group's tasks (main loop, log writer, peer senders, applier, ticker) then all
/// run in one driver, and the groups of a driver share its wake-ups. Timers and the clock are
/// the inner runtime's.
///
/// Guarantees:
/// * every future spawned through a handle runs to completion, or until the driver is dropped
///   by the inner runtime (its shutdown, a simulated crash), which drops the future with it;
/// * a future that panics is dropped and counted ([`TaskPool::panics`]); the driver and the
///   other futures go on (the node's own tasks catch their panics themselves and stop their
///   node; this is for futures that do not);
/// * a driver ends once every handle to it (the pool's and the [`PooledRuntime`]s, including
///   the ones its futures hold) is dropped and all its futures have ended;
/// * the queue of futures handed to a driver is unbounded, as every runtime's `spawn` is
///   ([`Runtime::spawn`] cannot wait or fail): it holds at most the futures spawned and not yet
///   taken by the driver, which are the tasks the inner runtime would otherwise hold; a driver
///   takes at most 64 of them per poll.
///
/// What it costs: the futures of one driver run one at a time, on one thread at a time. A
/// state machine whose `apply` blocks (or a log store whose write does) delays every group of
/// its driver, not only its own; and one driver cannot use more than one core: use as many
/// drivers as the inner runtime has worker threads (or more) on a multi-core machine.
#[derive(Clone)]
pub struct TaskPool {
    drivers: Arc<[PooledRuntime]>,
}

impl std::fmt::Debug for TaskPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskPool").field("drivers", &self.drivers.len()).finish()
    }
}

impl TaskPool {
    /// Spawns `drivers` driver tasks (at least one) on `inner`.
    pub fn new(inner: impl Runtime, drivers: usize) -> Self {
        let inner: Arc<dyn Runtime> = Arc::new(inner);
        let handles: Vec<PooledRuntime> =
            (0..drivers.max(1)).map(|_| PooledRuntime::start(inner.clone())).collect();
        Self { drivers: handles.into() }
    }

    /// The number of drivers.
    pub fn drivers(&self) -> usize {
        self.drivers.len()
    }

    /// The handle of driver `index % drivers()`.
    pub fn runtime(&self, index: usize) -> PooledRuntime {
        self.drivers[index % self.drivers.len()].clone()
    }

    /// The handle for group `group` (driver `group % drivers()`): consecutive group ids go to
    /// different drivers.
    pub fn runtime_for(&self, group: crate::ids::GroupId) -> PooledRuntime {
        let drivers = self.drivers.len() as u64;
        // The remainder is below `drivers`, a usize.
        self.runtime(usize::try_from(group % drivers).unwrap_or(0))
    }

    /// The futures of all drivers that panicked (and were dropped) so far.
    pub fn panics(&self) -> u64 {
        self.drivers.iter().map(PooledRuntime::panics).sum()
    }
}

/// A handle to one driver of a [`TaskPool`], the [`Runtime`] to give a node: `spawn` hands the
/// future to the driver, `sleep` and `now` are the inner runtime's.
#[derive(Clone)]
pub struct PooledRuntime {
    inner: Arc<dyn Runtime>,
    queue: mpsc::UnboundedSender<BoxFuture<'static, ()>>,
    panics: Arc<AtomicU64>,
}

impl std::fmt::Debug for PooledRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledRuntime").field("panics", &self.panics()).finish_non_exhaustive()
    }
}

impl PooledRuntime {
    /// Spawns one driver on `inner`, and returns the first handle to it.
    fn start(inner: Arc<dyn Runtime>) -> Self {
        let (queue, incoming) = mpsc::unbounded();
        let panics = Arc::new(AtomicU64::new(0));
        inner.spawn(Box::pin(Driver {
            incoming: Some(incoming),
            running: FuturesUnordered::new(),
            panics: panics.clone(),
        }));
        Self { inner, queue, panics }
    }

    /// The futures of this driver that panicked (and were dropped) so far.
    pub fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }
}

impl Runtime for PooledRuntime {
    /// Queues `future` for the driver. If the driver is gone (the inner runtime dropped it),
    /// the future is dropped, as a runtime that shut down drops what is spawned on it.
    fn spawn(&self, future: BoxFuture<'static, ()>) {
        if let Err(refused) = self.queue.unbounded_send(future) {
            drop(refused.into_inner());
        }
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.inner.sleep(duration)
    }

    fn now(&self) -> Duration {
        self.inner.now()
    }
}

/// A future and what happens when it panics.
type Guarded = futures::future::CatchUnwind<AssertUnwindSafe<BoxFuture<'static, ()>>>;

/// The one task of the inner runtime that runs a driver's futures.
struct Driver {
    /// `None` once every handle is gone.
    incoming: Option<mpsc::UnboundedReceiver<BoxFuture<'static, ()>>>,
    running: FuturesUnordered<Guarded>,
    panics: Arc<AtomicU64>,
}

impl Future for Driver {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let mut more_waiting = false;
        if let Some(incoming) = &mut this.incoming {
            let mut accepted = 0;
            loop {
                if accepted == ACCEPT_PER_POLL_MAX {
                    more_waiting = true;
                    break;
                }
                match incoming.poll_next_unpin(cx) {
                    Poll::Ready(Some(future)) => {
                        this.running.push(AssertUnwindSafe(future).catch_unwind());
                        accepted += 1;
                    }
                    Poll::Ready(None) => {
                        this.incoming = None;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
        }
        // `FuturesUnordered` polls each ready future once per call and yields (waking us) when
        // it has polled as many as it holds or a budget of them: a future that wakes itself
        // cannot starve the others or the queue.
        loop {
            match this.running.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(()))) => {}
                Poll::Ready(Some(Err(payload))) => {
                    this.panics.fetch_add(1, Ordering::Relaxed);
                    let message = crate::node::panic_message(payload.as_ref());
                    tracing::error!(%message, "a future of a task pool panicked");
                }
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        if more_waiting {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if this.incoming.is_none() && this.running.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests;
