//! The ticker: turns the runtime's timer into engine ticks. While the engine needs every tick
//! it sends one per `tick_interval`; while the engine is quiesced
//! ([`Engine::ticks_until_needed`](crate::engine::Engine::ticks_until_needed) > 1) it sleeps
//! until the engine's next deadline, or until the main loop tells it the engine woke, and then
//! sends the ticks that passed in one input. So an idle group's node costs a wake-up per
//! deadline (seconds), not one per tick.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_channel::{Receiver, Sender};
use futures::future::{select, Either};

use super::Input;
use crate::runtime::Runtime;

/// What the main loop tells the ticker: how many ticks the engine may go without.
#[derive(Clone)]
pub(super) struct Pacer {
    inner: Arc<Shared>,
}

struct Shared {
    /// Ticks the engine may go without (1: every tick).
    ticks: AtomicU64,
    /// Wakes a sleeping ticker when `ticks` shrinks (capacity 1: one pending kick is enough).
    kick: Sender<()>,
    kicked: Receiver<()>,
    /// Set once the main loop stopped: the ticker ends, even in the middle of a long sleep.
    stopped: AtomicBool,
}

impl Pacer {
    pub(super) fn new() -> Self {
        let (kick, kicked) = async_channel::bounded(1);
        let stopped = AtomicBool::new(false);
        Self { inner: Arc::new(Shared { ticks: AtomicU64::new(1), kick, kicked, stopped }) }
    }

    /// The main loop, after each step: the engine's
    /// [`ticks_until_needed`](crate::engine::Engine::ticks_until_needed).
    pub(super) fn set(&self, ticks: u64) {
        let before = self.inner.ticks.swap(ticks, Ordering::AcqRel);
        if ticks < before {
            let _ = self.inner.kick.try_send(());
        }
    }

    /// The ticks the engine may go without now (at least 1).
    /// Ends the ticker at once (the main loop stopped): without it, a node whose engine was
    /// quiesced would wait for the ticker's long sleep (seconds) to end before it stops.
    pub(super) fn stop(&self) {
        self.inner.stopped.store(true, Ordering::Release);
        let _ = self.inner.kick.try_send(());
    }

    fn stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::Acquire)
    }

    fn ticks(&self) -> u64 {
        self.inner.ticks.load(Ordering::Acquire).max(1)
    }
}

/// Runs the ticker until the main loop is gone.
pub(super) async fn run(
    pacer: Pacer,
    runtime: Arc<dyn Runtime>,
    tick: Duration,
    inputs: Sender<Input>,
) {
    let tick_nanos = tick.as_nanos().max(1);
    loop {
        // Drop kicks that came before this reading of `ticks`: a later one still interrupts.
        while pacer.inner.kicked.try_recv().is_ok() {}
        let wanted = pacer.ticks();
        let ticks = if wanted == 1 {
            runtime.sleep(tick).await;
            1
        } else {
            let start = runtime.now();
            let long = tick.saturating_mul(u32::try_from(wanted).unwrap_or(u32::MAX));
            let kicked = pacer.inner.kicked.recv();
            match select(runtime.sleep(long), Box::pin(kicked)).await {
                Either::Left(_) => wanted,
                // The engine woke: the whole ticks that passed, then every tick again.
                Either::Right(_) => {
                    let elapsed = runtime.now().saturating_sub(start).as_nanos() / tick_nanos;
                    u64::try_from(elapsed).unwrap_or(u64::MAX)
                }
            }
        };
        if pacer.stopped() {
            return;
        }
        if ticks > 0 && inputs.send(Input::Tick(ticks)).await.is_err() {
            return;
        }
    }
}

/// Feeds a batch of `ticks` that passed to the engine (`tick` once per tick), but only while
/// it stays quiesced: the first tick always, the others only to a quiesced engine, which
/// merely counts them toward its deadline. An engine awake (or woken by one of these ticks)
/// gets no more of the batch: those ticks passed while it slept, and counting them toward
/// an election timeout or a heartbeat that was not due would start an election (a follower)
/// or judge CheckQuorum (a leader) on time it spent asleep. Dropped ticks only delay.
pub(super) fn deliver_ticks(
    ticks: u64,
    mut tick: impl FnMut(),
    mut quiesced: impl FnMut() -> bool,
) {
    for delivered in 0..ticks {
        if delivered > 0 && !quiesced() {
            return;
        }
        tick();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use std::sync::Mutex;

    use futures::future::BoxFuture;
    use futures::FutureExt;

    use super::*;

    /// A runtime in virtual time: each sleep completes at once and moves the clock by its
    /// duration; records the sleeps.
    #[derive(Default)]
    struct VirtualTime {
        now: Mutex<Duration>,
        sleeps: Mutex<Vec<Duration>>,
    }

    impl Runtime for VirtualTime {
        fn spawn(&self, _future: BoxFuture<'static, ()>) {
            unreachable!("the ticker spawns nothing")
        }
        fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
            *self.now.lock().unwrap() += duration;
            self.sleeps.lock().unwrap().push(duration);
            futures::future::ready(()).boxed()
        }
        fn now(&self) -> Duration {
            *self.now.lock().unwrap()
        }
    }

    fn ticks(input: Input) -> u64 {
        match input {
            Input::Tick(n) => n,
            _ => unreachable!("the ticker sends ticks only"),
        }
    }

    #[test]
    fn a_quiesced_engine_gets_one_wake_up_per_deadline_instead_of_one_per_tick() {
        let tick = Duration::from_millis(10);
        let runtime = Arc::new(VirtualTime::default());
        let pacer = Pacer::new();
        let (inputs, received) = async_channel::bounded(1);
        let ticker = run(pacer.clone(), runtime.clone(), tick, inputs);
        let test = async {
            // Awake: one tick per tick interval.
            for _ in 0..3 {
                assert_eq!(ticks(received.recv().await.unwrap()), 1);
            }
            // Quiesced, with its deadline 700 ticks away: one sleep per 700 ticks, which come
            // in one input.
            pacer.set(700);
            let _ = received.recv().await.unwrap(); // the tick the ticker was sending
            for _ in 0..5 {
                assert_eq!(ticks(received.recv().await.unwrap()), 700);
            }
            // Woken (the main loop says so): every tick again.
            pacer.set(1);
            let _ = received.recv().await.unwrap(); // the batch the ticker was sending
            assert_eq!(ticks(received.recv().await.unwrap()), 1);
            drop(received);
        };
        futures::executor::block_on(async {
            let (_, ()) = futures::join!(ticker, test);
        });
        let sleeps = runtime.sleeps.lock().unwrap().clone();
        let long = sleeps.iter().filter(|&&d| d == tick * 700).count();
        let short = sleeps.iter().filter(|&&d| d == tick).count();
        assert_eq!(long + short, sleeps.len(), "{sleeps:?}");
        assert!((5..=7).contains(&long), "one sleep per 700 ticks: {sleeps:?}");
        assert!(short <= 8, "no tick-by-tick wake-ups while quiesced: {sleeps:?}");
    }

    /// A runtime whose sleeps never end.
    struct NeverWakes;

    impl Runtime for NeverWakes {
        fn spawn(&self, _future: BoxFuture<'static, ()>) {
            unreachable!("the ticker spawns nothing")
        }
        fn sleep(&self, _duration: Duration) -> BoxFuture<'static, ()> {
            futures::future::pending().boxed()
        }
        fn now(&self) -> Duration {
            Duration::ZERO
        }
    }

    #[test]
    fn stopping_ends_a_quiesced_tickers_long_sleep() {
        use std::future::Future;
        let pacer = Pacer::new();
        pacer.set(700);
        let (inputs, _received) = async_channel::bounded(1);
        let tick = Duration::from_millis(10);
        let mut ticker = Box::pin(run(pacer.clone(), Arc::new(NeverWakes), tick, inputs));
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(ticker.as_mut().poll(&mut cx).is_pending(), "asleep until its deadline");
        pacer.stop();
        assert!(ticker.as_mut().poll(&mut cx).is_ready(), "a stopped node's ticker ends at once");
    }

    /// Delivers `ticks` to a fake engine that is quiesced for its first `asleep` ticks (none:
    /// awake); returns the ticks it got.
    fn delivered(ticks: u64, asleep: Option<u64>) -> u64 {
        let got = std::cell::Cell::new(0);
        let quiesced = || asleep.is_some_and(|asleep| got.get() < asleep);
        deliver_ticks(ticks, || got.set(got.get() + 1), quiesced);
        got.get()
    }

    #[test]
    fn a_batch_of_ticks_only_counts_while_the_engine_sleeps() {
        assert_eq!(delivered(1, None), 1, "an awake engine ticks");
        assert_eq!(delivered(700, None), 1, "woken by a message: the sleep's ticks do not count");
        assert_eq!(delivered(700, Some(1_000)), 700, "quiesced: every tick counts");
        assert_eq!(delivered(700, Some(3)), 3, "woken by its deadline: the rest is dropped");
    }
}
