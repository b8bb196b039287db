//! The ticker: turns the runtime's timer into engine ticks. While the engine needs every tick
//! it sends one per `tick_interval`; while the engine is quiesced
//! ([`Engine::ticks_until_needed`](crate::engine::Engine::ticks_until_needed) > 1) it sleeps
//! until the engine's next deadline, or until the main loop tells it the engine woke, and then
//! sends the ticks that passed in one input. So an idle group's node costs a wake-up per
//! deadline (seconds), not one per tick.
//!
//! A quiesced engine's wake-ups fall on a grid of the runtime's clock ([`quiesced_wake_grid`]),
//! which all the groups of a process with the same `quiesce_check_interval` share: the groups whose deadlines fall in one slot wake at
//! the same instant, so their quiesce refreshes to a peer leave together and the transport can
//! carry them in one frame (raft-quic coalesces the requests issued together). The rounding
//! delays a quiesced deadline by less than one slot, and only a quiesced one.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_channel::{Receiver, Sender};
use futures::future::{select, Either};

use super::Input;
use crate::runtime::Runtime;

/// The longest slot of the grid a quiesced engine's wake-ups are rounded up to (see
/// [`quiesced_wake_grid`]).
pub const QUIESCED_WAKE_GRID_MAX: Duration = Duration::from_millis(250);

/// The grid a quiesced engine's wake-ups are rounded up to (instants that are multiples of it
/// on the runtime's clock), for a `Config::quiesce_check_interval` of `interval`: the groups of
/// a process due within one slot wake together. Each wake-up is delayed by less than one slot:
/// at most [`QUIESCED_WAKE_GRID_MAX`] and at most a quarter of `interval`, so a quiesced
/// leader's refresh (due within one interval) still reaches its followers well before their
/// shortest fallback (two intervals), whatever the interval. A bound on the time an idle group
/// takes to notice a failure adds one slot per quiesced deadline.
pub fn quiesced_wake_grid(interval: Duration) -> Duration {
    QUIESCED_WAKE_GRID_MAX.min(interval / 4)
}

/// How long to sleep from `now` to wake at least `sleep` later, on the next multiple of `grid`.
fn until_grid(now: Duration, sleep: Duration, grid: Duration) -> Duration {
    let grid = grid.as_nanos().max(1);
    let wake = now.saturating_add(sleep).as_nanos().div_ceil(grid) * grid;
    Duration::from_nanos(u64::try_from(wake - now.as_nanos()).unwrap_or(u64::MAX))
}

/// A node's tick settings: what its ticker task runs on ([`run`]), and what a host's ticker
/// needs per group instead.
#[derive(Clone)]
pub(crate) struct Ticking {
    /// What the main loop tells the ticker (shared with the main loop).
    pub(crate) pacer: Pacer,
    /// `Config::tick_interval`.
    pub(crate) tick: Duration,
    /// The grid a quiesced engine's wake-ups are rounded up to ([`quiesced_wake_grid`] of
    /// `Config::quiesce_check_interval`).
    pub(crate) grid: Duration,
    /// Where the ticks go: the main loop's inputs ([`Input::Tick`]).
    pub(crate) inputs: Sender<Input>,
}

/// What the main loop tells the ticker: how many ticks the engine may go without.
#[derive(Clone)]
pub(crate) struct Pacer {
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

    /// Ends the ticker at once (the main loop stopped): without it, a node whose engine was
    /// quiesced would wait for the ticker's long sleep (seconds) to end before it stops.
    pub(super) fn stop(&self) {
        self.inner.stopped.store(true, Ordering::Release);
        let _ = self.inner.kick.try_send(());
    }

    /// Whether the main loop stopped ([`Pacer::stop`]): its ticker ends (a host's ticker drops
    /// the group).
    pub(crate) fn stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::Acquire)
    }

    /// The ticks the engine may go without now (at least 1).
    fn ticks(&self) -> u64 {
        self.inner.ticks.load(Ordering::Acquire).max(1)
    }

    /// Starts a wait for the next ticks: drops the kicks that came before this reading of
    /// `ticks` (a later one still interrupts the wait), then decides from it. `now` (the
    /// runtime's clock) is read only for a quiesced engine. The one decision of both the
    /// ticker task ([`run`]) and a host's ticker ([`Plan::due`]).
    pub(crate) fn plan(
        &self,
        now: impl FnOnce() -> Duration,
        tick: Duration,
        grid: Duration,
    ) -> Plan {
        while self.inner.kicked.try_recv().is_ok() {}
        let wanted = self.ticks();
        if wanted == 1 {
            return Plan::EveryTick;
        }
        let start = now();
        let long = tick.saturating_mul(u32::try_from(wanted).unwrap_or(u32::MAX));
        Plan::Quiesced(QuiescedWait { wanted, start, sleep: until_grid(start, long, grid) })
    }

    /// Whether the engine woke since the last [`Pacer::plan`] (the main loop lowered `ticks`),
    /// taking that kick: for a ticker that does not wait on the kick itself (a host's).
    // Used by the host loop (plan S1).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn woke(&self) -> bool {
        self.inner.kicked.try_recv().is_ok()
    }
}

/// What a group's ticker waits for next, decided by [`Pacer::plan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// The engine needs every tick: one tick after one `tick` interval.
    EveryTick,
    /// The engine is quiesced: its ticks come at its deadline, or earlier if it wakes.
    Quiesced(QuiescedWait),
}

/// The wait of a quiesced engine's ticker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QuiescedWait {
    /// The ticks the engine asked to skip, delivered at its deadline.
    pub(crate) wanted: u64,
    /// When the wait started (the runtime's clock).
    pub(crate) start: Duration,
    /// How long the wait lasts: `wanted` ticks from `start`, rounded up to the grid (less than
    /// one slot more).
    pub(crate) sleep: Duration,
}

impl QuiescedWait {
    /// The ticks to deliver when the engine woke at `now`, before its deadline: the whole
    /// ticks that passed since the wait started (possibly none).
    pub(crate) fn woken_at(&self, now: Duration, tick: Duration) -> u64 {
        let elapsed = now.saturating_sub(self.start).as_nanos() / tick.as_nanos().max(1);
        u64::try_from(elapsed).unwrap_or(u64::MAX)
    }
}

impl Plan {
    /// For a ticker that looks at the group at `now`, once per `tick` interval (a host's):
    /// the ticks due under this plan, given whether the engine woke since it was made
    /// ([`Pacer::woke`]). `None`: nothing is due, keep the plan; `Some(n)`: deliver `n` ticks
    /// if `n > 0`, then plan again. As in [`run`]: every tick while the engine needs them;
    /// while it is quiesced, `wanted` ticks once its deadline passed (a passed deadline wins
    /// over a wake), or the whole ticks that passed if it woke first.
    // Used by the host loop (plan S1).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn due(&self, now: Duration, tick: Duration, woke: bool) -> Option<u64> {
        match self {
            Plan::EveryTick => Some(1),
            Plan::Quiesced(wait) if now >= wait.start.saturating_add(wait.sleep) => {
                Some(wait.wanted)
            }
            Plan::Quiesced(wait) if woke => Some(wait.woken_at(now, tick)),
            Plan::Quiesced(_) => None,
        }
    }
}

/// Runs the ticker until the main loop is gone.
pub(super) async fn run(
    pacer: Pacer,
    runtime: Arc<dyn Runtime>,
    tick: Duration,
    grid: Duration,
    inputs: Sender<Input>,
) {
    loop {
        let ticks = match pacer.plan(|| runtime.now(), tick, grid) {
            Plan::EveryTick => {
                runtime.sleep(tick).await;
                1
            }
            Plan::Quiesced(wait) => {
                let kicked = pacer.inner.kicked.recv();
                match select(runtime.sleep(wait.sleep), Box::pin(kicked)).await {
                    // The engine's deadline passed (up to one slot ago, on the grid): the ticks
                    // it asked to skip, not the slot's extra time, so that its quiesced timers
                    // only ever run late, never early, and each by less than one slot.
                    Either::Left(_) => wait.wanted,
                    // The engine woke: the whole ticks that passed, then every tick again.
                    Either::Right(_) => wait.woken_at(runtime.now(), tick),
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
        let ticker = run(pacer.clone(), runtime.clone(), tick, QUIESCED_WAKE_GRID_MAX, inputs);
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
        // A long sleep: 700 ticks, rounded up to the wake-up grid (less than one slot more).
        let deadline = tick * 700;
        let is_long = |d: Duration| d >= deadline && d < deadline + QUIESCED_WAKE_GRID_MAX;
        let long = sleeps.iter().filter(|&&d| is_long(d)).count();
        let short = sleeps.iter().filter(|&&d| d == tick).count();
        assert_eq!(long + short, sleeps.len(), "{sleeps:?}");
        assert!((5..=7).contains(&long), "one sleep per 700 ticks: {sleeps:?}");
        assert!(short <= 8, "no tick-by-tick wake-ups while quiesced: {sleeps:?}");
    }

    /// The groups of a process whose quiesced deadlines fall in one slot of the grid wake at
    /// the same instant (so their refreshes leave together), never before their deadline and
    /// less than one slot after it; an awake engine's ticks are not rounded.
    #[test]
    fn quiesced_wake_ups_fall_on_the_grid_shared_by_every_group() {
        let tick = Duration::from_millis(10);
        let mut wakes = Vec::new();
        // Eight groups whose deadlines fall within one slot (at different offsets).
        for group in 0..8u64 {
            let runtime = Arc::new(VirtualTime::default());
            *runtime.now.lock().unwrap() = Duration::from_millis(1_010 + 20 * group);
            let pacer = Pacer::new();
            pacer.set(300 + group);
            let (inputs, received) = async_channel::bounded(1);
            let ticker = run(pacer.clone(), runtime.clone(), tick, QUIESCED_WAKE_GRID_MAX, inputs);
            let start = runtime.now();
            let test = async {
                assert_eq!(ticks(received.recv().await.unwrap()), 300 + group);
                drop(received);
            };
            futures::executor::block_on(async {
                let (_, ()) = futures::join!(ticker, test);
            });
            let first = runtime.sleeps.lock().unwrap()[0];
            let deadline = tick * (300 + group as u32);
            assert!(first >= deadline && first < deadline + QUIESCED_WAKE_GRID_MAX, "{first:?}");
            wakes.push(start + first);
        }
        let grid = QUIESCED_WAKE_GRID_MAX.as_nanos();
        assert!(wakes.iter().all(|wake| wake.as_nanos() % grid == 0), "{wakes:?}");
        assert!(wakes.windows(2).all(|w| w[0] == w[1]), "one instant for all: {wakes:?}");

        // Awake: one tick per interval, whatever the grid.
        let runtime = Arc::new(VirtualTime::default());
        *runtime.now.lock().unwrap() = Duration::from_millis(1_003);
        let (inputs, received) = async_channel::bounded(1);
        let ticker = run(Pacer::new(), runtime.clone(), tick, QUIESCED_WAKE_GRID_MAX, inputs);
        let test = async {
            assert_eq!(ticks(received.recv().await.unwrap()), 1);
            drop(received);
        };
        futures::executor::block_on(async {
            let (_, ()) = futures::join!(ticker, test);
        });
        assert!(runtime.sleeps.lock().unwrap().iter().all(|&d| d == tick));
    }

    /// With a short `quiesce_check_interval` the grid shrinks to a quarter of it: a quiesced
    /// leader's refresh (due within one interval, rounded up by less than a slot) still comes
    /// before its followers' shortest fallback (two intervals). With 200 ms: a 50 ms grid.
    #[test]
    fn a_short_quiesce_check_interval_gets_a_finer_grid() {
        let interval = Duration::from_millis(200);
        let grid = quiesced_wake_grid(interval);
        assert!(grid <= interval / 4, "{grid:?}");
        assert_eq!(quiesced_wake_grid(Duration::from_secs(5)), QUIESCED_WAKE_GRID_MAX);
        let tick = Duration::from_millis(10);
        let runtime = Arc::new(VirtualTime::default());
        *runtime.now.lock().unwrap() = Duration::from_millis(1_010);
        let pacer = Pacer::new();
        pacer.set(30);
        let (inputs, received) = async_channel::bounded(1);
        let ticker = run(pacer.clone(), runtime.clone(), tick, grid, inputs);
        let test = async {
            assert_eq!(ticks(received.recv().await.unwrap()), 30);
            drop(received);
        };
        futures::executor::block_on(async {
            let (_, ()) = futures::join!(ticker, test);
        });
        let first = runtime.sleeps.lock().unwrap()[0];
        let deadline = tick * 30;
        let slot = Duration::from_millis(50);
        assert!(first >= deadline && first < deadline + slot, "{first:?}");
        let wake = Duration::from_millis(1_010) + first;
        assert_eq!(wake.as_nanos() % slot.as_nanos(), 0, "{wake:?}");
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
        let mut ticker = Box::pin(run(
            pacer.clone(),
            Arc::new(NeverWakes),
            tick,
            QUIESCED_WAKE_GRID_MAX,
            inputs,
        ));
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(ticker.as_mut().poll(&mut cx).is_pending(), "asleep until its deadline");
        pacer.stop();
        assert!(ticker.as_mut().poll(&mut cx).is_ready(), "a stopped node's ticker ends at once");
    }

    /// The decision a host's ticker makes per group, once per tick interval: every tick while
    /// the engine needs them; while it is quiesced, nothing until its deadline (on the grid,
    /// as the ticker task sleeps), then the ticks it skipped; if it wakes first, the whole
    /// ticks that passed; the kicks that came before the plan do not count as a wake.
    #[test]
    fn a_hosts_ticker_gets_the_ticker_tasks_decision() {
        let tick = Duration::from_millis(10);
        let grid = QUIESCED_WAKE_GRID_MAX;
        let start = Duration::from_millis(1_010);
        let pacer = Pacer::new();
        let mut clock_read = false;
        let plan = pacer.plan(
            || {
                clock_read = true;
                start
            },
            tick,
            grid,
        );
        assert_eq!(plan, Plan::EveryTick);
        assert!(!clock_read, "an awake engine's plan does not read the clock");
        assert_eq!(plan.due(start, tick, false), Some(1));

        pacer.set(700);
        pacer.set(600); // a kick before the plan: not a wake
        let plan = pacer.plan(|| start, tick, grid);
        let Plan::Quiesced(wait) = plan else { panic!("{plan:?}") };
        assert_eq!((wait.wanted, wait.start), (600, start));
        let deadline = start + wait.sleep;
        assert!(wait.sleep >= tick * 600 && wait.sleep < tick * 600 + grid, "{wait:?}");
        assert_eq!(deadline.as_nanos() % grid.as_nanos(), 0, "on the grid: {deadline:?}");
        assert!(!pacer.woke(), "the kick before the plan was dropped");
        assert_eq!(plan.due(start + tick * 599, tick, false), None, "asleep");
        assert_eq!(plan.due(deadline - Duration::from_nanos(1), tick, false), None);
        assert_eq!(plan.due(deadline, tick, false), Some(600), "the ticks it skipped");
        assert_eq!(plan.due(deadline, tick, true), Some(600), "a passed deadline wins");

        pacer.set(1);
        assert!(pacer.woke(), "the main loop woke the engine");
        assert!(!pacer.woke(), "one kick, taken once");
        assert_eq!(plan.due(start + Duration::from_millis(55), tick, true), Some(5));
        assert_eq!(plan.due(start + Duration::from_millis(5), tick, true), Some(0));
        assert_eq!(pacer.plan(|| start, tick, grid), Plan::EveryTick);

        assert!(!pacer.stopped());
        pacer.stop();
        assert!(pacer.stopped(), "a stopped main loop's group is dropped");
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
