//! The pool's drivers, polled by hand with a waker that counts its wake-ups.

use std::sync::atomic::AtomicUsize;
use std::sync::Mutex;

use futures::channel::oneshot;
use futures::task::ArcWake;

use super::*;

/// An inner runtime that keeps what is spawned on it (the drivers) for the test to poll.
#[derive(Default)]
struct Held(Mutex<Vec<BoxFuture<'static, ()>>>);

impl Runtime for Arc<Held> {
    fn spawn(&self, future: BoxFuture<'static, ()>) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(future);
    }
    fn sleep(&self, _: Duration) -> BoxFuture<'static, ()> {
        futures::future::pending().boxed()
    }
    fn now(&self) -> Duration {
        Duration::from_secs(7)
    }
}

impl Held {
    fn take(&self) -> Vec<BoxFuture<'static, ()>> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Counts the wake-ups the inner runtime would get for the driver.
#[derive(Default)]
struct Wakes(AtomicUsize);

impl ArcWake for Wakes {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Wakes {
    fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// A pool of one driver on a `Held` runtime, the driver, and its waker.
fn one_driver() -> (TaskPool, BoxFuture<'static, ()>, Arc<Wakes>) {
    let held = Arc::new(Held::default());
    let pool = TaskPool::new(held.clone(), 1);
    let mut drivers = held.take();
    assert_eq!(drivers.len(), 1);
    let driver = drivers.remove(0);
    (pool, driver, Arc::new(Wakes::default()))
}

fn poll(driver: &mut BoxFuture<'static, ()>, wakes: &Arc<Wakes>) -> Poll<()> {
    let waker = futures::task::waker(wakes.clone());
    driver.as_mut().poll(&mut Context::from_waker(&waker))
}

/// Polls `driver` until it ends, at most `polls` times; whether it ended.
fn run_to_end(driver: &mut BoxFuture<'static, ()>, wakes: &Arc<Wakes>, polls: usize) -> bool {
    (0..polls).any(|_| poll(driver, wakes).is_ready())
}

#[test]
fn every_future_runs_and_the_driver_ends_when_the_handles_are_gone() {
    let (pool, mut driver, wakes) = one_driver();
    let done = Arc::new(AtomicUsize::new(0));
    for _ in 0..1_000 {
        let done = done.clone();
        pool.runtime(0).spawn(
            async move {
                done.fetch_add(1, Ordering::SeqCst);
            }
            .boxed(),
        );
    }
    // While a handle lives, the driver waits for more futures.
    assert!(!run_to_end(&mut driver, &wakes, 100));
    assert_eq!(done.load(Ordering::SeqCst), 1_000);
    drop(pool);
    assert!(run_to_end(&mut driver, &wakes, 1));
}

#[test]
fn the_driver_waits_for_its_futures_after_the_handles_are_gone() {
    let (pool, mut driver, wakes) = one_driver();
    let (finish, finished) = oneshot::channel::<()>();
    pool.runtime(0).spawn(finished.map(drop).boxed());
    drop(pool);
    assert!(poll(&mut driver, &wakes).is_pending());
    // (`FuturesUnordered` may ask for one more poll after polling every future it holds.)
    let before = wakes.count();
    assert!(finish.send(()).is_ok());
    assert_eq!(wakes.count() - before, 1);
    assert!(poll(&mut driver, &wakes).is_ready());
}

#[test]
fn many_futures_woken_together_wake_the_driver_once() {
    let (pool, mut driver, wakes) = one_driver();
    let done = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::new();
    for _ in 0..64 {
        let (sender, receiver) = oneshot::channel::<()>();
        senders.push(sender);
        let done = done.clone();
        let waiter = async move {
            let _ = receiver.await;
            done.fetch_add(1, Ordering::SeqCst);
        };
        pool.runtime(0).spawn(waiter.boxed());
    }
    assert!(poll(&mut driver, &wakes).is_pending());
    let before = wakes.count();
    for sender in senders {
        assert!(sender.send(()).is_ok());
    }
    // 64 futures woken, one wake-up of the driver (one task of the inner runtime).
    assert_eq!(wakes.count() - before, 1);
    assert!(poll(&mut driver, &wakes).is_pending());
    assert_eq!(done.load(Ordering::SeqCst), 64);
}

/// A future that panics (without the panic hook's message: the test's output stays clean).
async fn panics() {
    std::panic::resume_unwind(Box::new("boom"))
}

#[test]
fn a_panicking_future_does_not_stop_the_others() {
    let (pool, mut driver, wakes) = one_driver();
    let done = Arc::new(AtomicUsize::new(0));
    let (sender, receiver) = oneshot::channel::<()>();
    let waiting = done.clone();
    pool.runtime(0).spawn(
        async move {
            let _ = receiver.await;
            waiting.fetch_add(1, Ordering::SeqCst);
        }
        .boxed(),
    );
    pool.runtime(0).spawn(panics().boxed());
    let after = done.clone();
    pool.runtime(0).spawn(
        async move {
            after.fetch_add(1, Ordering::SeqCst);
        }
        .boxed(),
    );
    assert!(poll(&mut driver, &wakes).is_pending());
    assert_eq!(pool.panics(), 1);
    assert_eq!(done.load(Ordering::SeqCst), 1);
    // The driver still runs the future that waits, and accepts new ones.
    assert!(sender.send(()).is_ok());
    let later = done.clone();
    pool.runtime(0).spawn(
        async move {
            later.fetch_add(1, Ordering::SeqCst);
        }
        .boxed(),
    );
    drop(pool);
    assert!(run_to_end(&mut driver, &wakes, 2));
    assert_eq!(done.load(Ordering::SeqCst), 3);
}

#[test]
fn futures_spawn_futures_while_the_driver_runs() {
    let (pool, mut driver, wakes) = one_driver();
    let done = Arc::new(AtomicUsize::new(0));
    let runtime = pool.runtime(0);
    let counter = done.clone();
    // A chain of 10 futures, each spawning the next through the handle it holds.
    fn chain(
        runtime: PooledRuntime,
        left: usize,
        done: Arc<AtomicUsize>,
    ) -> BoxFuture<'static, ()> {
        async move {
            done.fetch_add(1, Ordering::SeqCst);
            if left > 0 {
                runtime.spawn(chain(runtime.clone(), left - 1, done));
            }
        }
        .boxed()
    }
    pool.runtime(0).spawn(chain(runtime, 9, counter));
    drop(pool);
    // The handles live in the futures until the last one ends; then the driver ends.
    assert!(run_to_end(&mut driver, &wakes, 20));
    assert_eq!(done.load(Ordering::SeqCst), 10);
}

#[test]
fn a_future_that_keeps_waking_itself_does_not_starve_the_others() {
    let (pool, mut driver, wakes) = one_driver();
    let stop = Arc::new(AtomicUsize::new(0));
    let busy_stop = stop.clone();
    let busy = futures::future::poll_fn(move |cx| {
        if busy_stop.load(Ordering::SeqCst) > 0 {
            return Poll::Ready(());
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    });
    pool.runtime(0).spawn(busy.boxed());
    assert!(poll(&mut driver, &wakes).is_pending());
    // The busy future woke itself: the driver yielded and asked to be polled again.
    assert!(wakes.count() >= 1);
    let stopper = stop.clone();
    pool.runtime(0).spawn(
        async move {
            stopper.fetch_add(1, Ordering::SeqCst);
        }
        .boxed(),
    );
    drop(pool);
    assert!(run_to_end(&mut driver, &wakes, 3));
}

#[test]
fn a_poll_takes_a_bounded_number_of_new_futures() {
    let (pool, mut driver, wakes) = one_driver();
    let done = Arc::new(AtomicUsize::new(0));
    for _ in 0..ACCEPT_PER_POLL_MAX * 2 + 1 {
        let done = done.clone();
        pool.runtime(0).spawn(
            async move {
                done.fetch_add(1, Ordering::SeqCst);
            }
            .boxed(),
        );
    }
    assert!(poll(&mut driver, &wakes).is_pending());
    assert_eq!(done.load(Ordering::SeqCst), ACCEPT_PER_POLL_MAX);
    assert_eq!(wakes.count(), 1, "the driver asks to be polled again for the rest");
    assert!(poll(&mut driver, &wakes).is_pending());
    assert!(poll(&mut driver, &wakes).is_pending());
    assert_eq!(done.load(Ordering::SeqCst), ACCEPT_PER_POLL_MAX * 2 + 1);
}

#[test]
fn groups_are_spread_over_the_drivers_and_time_is_the_inner_runtimes() {
    let held = Arc::new(Held::default());
    let pool = TaskPool::new(held.clone(), 3);
    assert_eq!(pool.drivers(), 3);
    let mut drivers = held.take();
    assert_eq!(drivers.len(), 3);
    let wakes = Arc::new(Wakes::default());
    let ran = Arc::new(Mutex::new(Vec::new()));
    for group in 1..=6u64 {
        let ran = ran.clone();
        let runtime = pool.runtime_for(group);
        assert_eq!(runtime.now(), Duration::from_secs(7));
        let note = async move { ran.lock().unwrap_or_else(|p| p.into_inner()).push(group) };
        runtime.spawn(note.boxed());
    }
    let mut order = Vec::new();
    for driver in &mut drivers {
        assert!(poll(driver, &wakes).is_pending());
        let mut seen = std::mem::take(&mut *ran.lock().unwrap_or_else(|p| p.into_inner()));
        seen.sort_unstable();
        order.push(seen);
    }
    assert_eq!(order, vec![vec![3, 6], vec![1, 4], vec![2, 5]]);
    drop(pool);
    for driver in &mut drivers {
        assert!(poll(driver, &wakes).is_ready());
    }
}

#[test]
fn a_future_spawned_after_the_driver_is_gone_is_dropped() {
    let (pool, driver, _wakes) = one_driver();
    drop(driver);
    let (sender, receiver) = oneshot::channel::<()>();
    pool.runtime(0).spawn(async move { drop(sender) }.boxed());
    // The future was dropped unrun: its sender with it.
    assert!(futures::executor::block_on(receiver).is_err());
}
