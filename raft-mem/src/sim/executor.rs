//! A deterministic single-threaded executor with a virtual clock.
//!
//! When no task is ready, the clock jumps to the next timer. Nothing reads the wall clock or the
//! OS, so a run is a pure function of its inputs: the same seed replays the same interleaving.
//!
//! [`SimRuntime::new`] runs ready tasks in FIFO wake order and equal timers in creation order.
//! [`SimRuntime::seeded`] draws every scheduling choice from a seeded PRNG instead: which ready
//! task runs next, the order of timers that fall due at the same instant, and a microsecond
//! jitter added to every sleep; so one seed explores one interleaving among the many that a real
//! machine could produce, and another seed another.
//!
//! Tasks carry a tag (a node id): a tag can be **paused** (its tasks are not polled and its
//! timers wake nobody until it resumes, as a stopped process; its clock keeps running), given a
//! **clock rate** (its sleeps are measured by its own clock, which runs faster or slower than
//! virtual time) and **late timers** (some of its sleeps end late, as on an overloaded machine),
//! and **killed** (a crash).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures::future::{BoxFuture, OptionFuture};
use futures::FutureExt;
use raft_core::Runtime;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

type TaskId = u64;

struct Task {
    tag: u64,
    future: Mutex<Option<BoxFuture<'static, ()>>>,
}

/// The clock of one tag (node): its rate relative to virtual time and how late its timers fire.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NodeClock {
    /// Local seconds per virtual second (1.0: exact; 1.05: runs 5% fast).
    pub rate: f64,
    /// Probability that a sleep of this node ends late (an overloaded machine).
    pub late_chance: f64,
    /// How late such a sleep ends at most, in microseconds of virtual time.
    pub late_max_us: u64,
}

impl NodeClock {
    /// An exact clock whose timers are never late.
    pub const EXACT: NodeClock = NodeClock { rate: 1.0, late_chance: 0.0, late_max_us: 0 };
}

impl Default for NodeClock {
    fn default() -> Self {
        Self::EXACT
    }
}

/// A tag's clock with the point from which its current rate applies.
#[derive(Debug, Clone, Copy)]
struct ClockState {
    clock: NodeClock,
    /// Virtual and local time (µs) when the current rate was set.
    anchor_virtual_us: u64,
    anchor_local_us: u64,
}

impl ClockState {
    fn local_us(&self, now_us: u64) -> u64 {
        let elapsed = now_us.saturating_sub(self.anchor_virtual_us) as f64;
        self.anchor_local_us + (elapsed * self.clock.rate) as u64
    }
}

#[derive(Default)]
struct State {
    /// Virtual time, in microseconds since the start.
    now_us: u64,
    /// Ready tasks in wake order (FIFO scheduling, without a PRNG).
    ready: VecDeque<TaskId>,
    /// The ready tasks (picked from at random with a PRNG).
    queued: BTreeSet<TaskId>,
    tasks: BTreeMap<TaskId, Arc<Task>>,
    next_task: TaskId,
    /// Timers by (deadline, tie-break, sequence): the tie-break is random with a PRNG, else 0,
    /// so that equal deadlines fire in random or creation order.
    timers: BTreeMap<(u64, u64, u64), Waker>,
    next_timer: u64,
    polls: u64,
    /// Polls per tag.
    tag_polls: BTreeMap<u64, u64>,
    /// Seeded scheduling; `None`: FIFO.
    rng: Option<ChaCha8Rng>,
    /// Every sleep is extended by a uniform jitter up to this many microseconds (with a PRNG).
    jitter_us: u64,
    paused: BTreeSet<u64>,
    /// Woken tasks of paused tags, released when the tag resumes.
    parked: Vec<TaskId>,
    clocks: BTreeMap<u64, ClockState>,
}

impl State {
    fn below(&mut self, n: u64) -> u64 {
        match (&mut self.rng, n) {
            (_, 0 | 1) => 0,
            (Some(rng), n) => rng.next_u64() % n,
            (None, _) => 0,
        }
    }

    fn chance(&mut self, probability: f64) -> bool {
        match &mut self.rng {
            Some(rng) if probability > 0.0 => {
                (rng.next_u64() as f64 / u64::MAX as f64) < probability
            }
            _ => false,
        }
    }

    fn make_ready(&mut self, id: TaskId) {
        if self.tasks.contains_key(&id) && self.queued.insert(id) && self.rng.is_none() {
            self.ready.push_back(id);
        }
    }

    /// Picks the next ready task of a tag that is not paused (parking the others). With a PRNG
    /// the pick is among the ready task ids in order, so it does not depend on the order in
    /// which they were woken (which may come from a hash map's iteration).
    fn pick(&mut self) -> Option<TaskId> {
        loop {
            let id = if self.rng.is_some() {
                let at = self.below(self.queued.len() as u64) as usize;
                self.queued.iter().nth(at).copied()?
            } else {
                self.ready.pop_front()?
            };
            self.queued.remove(&id);
            let Some(task) = self.tasks.get(&id) else { continue };
            if self.paused.contains(&task.tag) {
                self.parked.push(id);
                continue;
            }
            return Some(id);
        }
    }

    fn clock(&self, tag: u64) -> ClockState {
        self.clocks.get(&tag).copied().unwrap_or(ClockState {
            clock: NodeClock::EXACT,
            anchor_virtual_us: 0,
            anchor_local_us: 0,
        })
    }

    /// The virtual deadline of a sleep of `duration` by `tag`'s clock, starting now.
    fn deadline(&mut self, tag: u64, duration: Duration) -> u64 {
        let clock = self.clock(tag).clock;
        let local_us = duration.as_micros().min(u128::from(u64::MAX / 4)) as u64;
        let mut virtual_us = if clock.rate == 1.0 {
            local_us
        } else {
            (local_us as f64 / clock.rate.max(1e-3)).ceil() as u64
        };
        if self.jitter_us > 0 {
            virtual_us += self.below(self.jitter_us + 1);
        }
        if clock.late_max_us > 0 && self.chance(clock.late_chance) {
            virtual_us += self.below(clock.late_max_us + 1);
        }
        self.now_us.saturating_add(virtual_us)
    }
}

/// The executor's shared state; cheap to clone. Implements [`Runtime`].
///
/// Every task carries a tag (the tag of the `SimRuntime` handle that spawned it, 0 by default):
/// [`SimRuntime::tagged`] gives a node its own handle, and [`SimRuntime::kill`] drops all of that
/// node's tasks at once, which is how the simulation crashes a node.
#[derive(Clone, Default)]
pub struct SimRuntime {
    state: Arc<Mutex<State>>,
    tag: u64,
}

impl std::fmt::Debug for SimRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("SimRuntime")
            .field("now_us", &state.now_us)
            .field("tasks", &state.tasks.len())
            .field("seeded", &state.rng.is_some())
            .finish()
    }
}

struct TaskWaker {
    id: TaskId,
    state: std::sync::Weak<Mutex<State>>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(state) = self.state.upgrade() {
            state.lock().unwrap_or_else(|p| p.into_inner()).make_ready(self.id);
        }
    }
}

impl SimRuntime {
    /// A new executor at virtual time zero, with no tasks, that runs ready tasks in FIFO order.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new executor whose scheduling choices come from `seed`: a random ready task at each
    /// step, random order among timers due at the same instant, and every sleep extended by a
    /// random jitter of 0 to `jitter_us` microseconds.
    pub fn seeded(seed: u64, jitter_us: u64) -> Self {
        let state =
            State { rng: Some(ChaCha8Rng::seed_from_u64(seed)), jitter_us, ..State::default() };
        Self { state: Arc::new(Mutex::new(state)), tag: 0 }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The virtual time elapsed since the start.
    pub fn now(&self) -> Duration {
        Duration::from_micros(self.lock().now_us)
    }

    /// The time of this handle's tag by its own clock (see [`SimRuntime::set_clock`]): a
    /// monotonic clock that keeps running while the tag is paused, as a real one does while a
    /// process is stopped.
    pub fn local_now(&self) -> Duration {
        let state = self.lock();
        Duration::from_micros(state.clock(self.tag).local_us(state.now_us))
    }

    /// How many task polls have run (a measure of simulated work, and the simulation's step
    /// counter).
    pub fn polls(&self) -> u64 {
        self.lock().polls
    }

    /// How many task polls have run per tag (whose tasks the executor spent its steps on).
    pub fn polls_by_tag(&self) -> BTreeMap<u64, u64> {
        self.lock().tag_polls.clone()
    }

    /// How many tasks are alive.
    pub fn task_count(&self) -> usize {
        self.lock().tasks.len()
    }

    /// This handle's tag.
    pub fn tag(&self) -> u64 {
        self.tag
    }

    /// A handle to the same executor whose spawned tasks carry `tag`.
    pub fn tagged(&self, tag: u64) -> Self {
        Self { state: self.state.clone(), tag }
    }

    /// Sets the clock of `tag` from now on: its rate and how late its timers fire. Its local
    /// time continues from where it is (a rate change never makes it jump).
    pub fn set_clock(&self, tag: u64, clock: NodeClock) {
        let mut state = self.lock();
        let now = state.now_us;
        let local = state.clock(tag).local_us(now);
        state
            .clocks
            .insert(tag, ClockState { clock, anchor_virtual_us: now, anchor_local_us: local });
    }

    /// The clock of `tag`.
    pub fn clock(&self, tag: u64) -> NodeClock {
        self.lock().clock(tag).clock
    }

    /// Pauses every task of `tag`: none is polled (its timers still fall due, but the tasks
    /// they wake wait) until [`SimRuntime::resume`].
    pub fn pause(&self, tag: u64) {
        self.lock().paused.insert(tag);
    }

    /// Resumes the tasks of `tag` that were woken while it was paused.
    pub fn resume(&self, tag: u64) {
        let mut state = self.lock();
        if !state.paused.remove(&tag) {
            return;
        }
        let parked = std::mem::take(&mut state.parked);
        for id in parked {
            let resumes = state.tasks.get(&id).is_some_and(|task| task.tag == tag);
            if resumes {
                state.make_ready(id);
            } else {
                state.parked.push(id);
            }
        }
    }

    /// Whether `tag` is paused.
    pub fn is_paused(&self, tag: u64) -> bool {
        self.lock().paused.contains(&tag)
    }

    /// A number from the scheduling PRNG below `n` (0 without one): for seeded choices of the
    /// simulated components that share the executor's stream.
    pub fn below(&self, n: u64) -> u64 {
        self.lock().below(n)
    }

    /// Drops every task tagged `tag` without running it further (a crash: whatever those tasks
    /// were about to do never happens). A paused tag is resumed (its restart runs).
    pub fn kill(&self, tag: u64) {
        let killed: Vec<Arc<Task>> = {
            let mut state = self.lock();
            state.paused.remove(&tag);
            let ids: Vec<TaskId> =
                state.tasks.iter().filter(|(_, t)| t.tag == tag).map(|(id, _)| *id).collect();
            let killed = ids
                .iter()
                .filter_map(|id| {
                    state.queued.remove(id);
                    state.tasks.remove(id)
                })
                .collect();
            let State { ready, tasks, parked, queued, .. } = &mut *state;
            ready.retain(|id| tasks.contains_key(id));
            queued.retain(|id| tasks.contains_key(id));
            parked.retain(|id| tasks.contains_key(id));
            killed
        };
        // Drop the futures outside the lock: their destructors may touch the executor.
        for task in killed {
            let future = task.future.lock().unwrap_or_else(|p| p.into_inner()).take();
            drop(future);
        }
    }

    /// Drops every task and timer (outside the executor's lock, since a future's destructor may
    /// touch the executor). Tasks hold handles to the executor, which holds the tasks: without
    /// this, a finished simulation would never be freed.
    pub fn clear(&self) {
        let (tasks, timers) = {
            let mut state = self.lock();
            state.ready.clear();
            state.queued.clear();
            state.parked.clear();
            (std::mem::take(&mut state.tasks), std::mem::take(&mut state.timers))
        };
        for task in tasks.into_values() {
            let future = task.future.lock().unwrap_or_else(|p| p.into_inner()).take();
            drop(future);
        }
        drop(timers);
    }

    /// Spawns a task.
    pub fn spawn_task(&self, future: impl Future<Output = ()> + Send + 'static) {
        let mut state = self.lock();
        let id = state.next_task;
        state.next_task += 1;
        state
            .tasks
            .insert(id, Arc::new(Task { tag: self.tag, future: Mutex::new(Some(future.boxed())) }));
        state.make_ready(id);
    }

    /// Runs one ready task, or, if none is ready, advances the clock to the next timer (not past
    /// `limit_us`). Returns false when nothing can happen before `limit_us`.
    fn step(&self, limit_us: u64) -> bool {
        let next = {
            let mut state = self.lock();
            match state.pick() {
                Some(id) => {
                    state.polls += 1;
                    let task = state.tasks.get(&id).cloned();
                    if let Some(task) = &task {
                        *state.tag_polls.entry(task.tag).or_default() += 1;
                    }
                    task.map(|task| (id, task))
                }
                None => {
                    let Some((&key, _)) = state.timers.iter().next() else {
                        state.now_us = state.now_us.max(limit_us);
                        return false;
                    };
                    if key.0 > limit_us {
                        state.now_us = state.now_us.max(limit_us);
                        return false;
                    }
                    state.now_us = state.now_us.max(key.0);
                    if let Some(waker) = state.timers.remove(&key) {
                        drop(state);
                        waker.wake();
                    }
                    return true;
                }
            }
        };
        let Some((id, task)) = next else { return true };
        let waker = Waker::from(Arc::new(TaskWaker { id, state: Arc::downgrade(&self.state) }));
        let mut cx = Context::from_waker(&waker);
        let mut slot = task.future.lock().unwrap_or_else(|p| p.into_inner());
        let done = match slot.as_mut() {
            Some(future) => future.as_mut().poll(&mut cx).is_ready(),
            None => true,
        };
        if done {
            let finished = slot.take();
            drop(slot);
            let mut state = self.lock();
            state.tasks.remove(&id);
            state.queued.remove(&id);
            drop(state);
            drop(finished);
        }
        true
    }

    /// Runs tasks and timers until virtual time reaches `now() + duration`, calling `after_step`
    /// after every task poll and clock jump (the invariant checker's hook).
    pub fn run_for(&self, duration: Duration, mut after_step: impl FnMut()) {
        let limit = self.lock().now_us + duration.as_micros() as u64;
        while self.step(limit) {
            after_step();
        }
    }

    /// Runs until `done` returns true (checked after every step) or `max` of virtual time passes.
    /// Returns whether `done` became true.
    pub fn run_until(
        &self,
        max: Duration,
        mut after_step: impl FnMut(),
        mut done: impl FnMut() -> bool,
    ) -> bool {
        let limit = self.lock().now_us + max.as_micros() as u64;
        if done() {
            return true;
        }
        while self.step(limit) {
            after_step();
            if done() {
                return true;
            }
        }
        false
    }

    /// Runs `future` to completion on this executor (with everything else that is spawned),
    /// for at most `max` of virtual time. Returns `None` if it did not complete in time.
    pub fn block_on<T: Send + 'static>(
        &self,
        max: Duration,
        future: impl Future<Output = T> + Send + 'static,
        after_step: impl FnMut(),
    ) -> Option<T> {
        let result = Arc::new(Mutex::new(None));
        let slot = result.clone();
        self.spawn_task(async move {
            let value = future.await;
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(value);
        });
        self.run_until(max, after_step, || {
            result.lock().unwrap_or_else(|p| p.into_inner()).is_some()
        });
        let value = result.lock().unwrap_or_else(|p| p.into_inner()).take();
        value
    }

    /// A future that completes once `duration` has passed by this handle's tag's clock (with the
    /// executor's jitter and the tag's late timers).
    pub fn sleep_for(&self, duration: Duration) -> Sleep {
        let deadline = self.lock().deadline(self.tag, duration);
        Sleep { runtime: self.clone(), deadline, timer: None }
    }

    /// A future that completes once exactly `duration` of virtual time has passed (no clock
    /// rate, jitter or lateness: for delays of the simulated world, not of a node).
    pub fn sleep_virtual(&self, duration: Duration) -> Sleep {
        let deadline = self.lock().now_us.saturating_add(duration.as_micros() as u64);
        Sleep { runtime: self.clone(), deadline, timer: None }
    }

    /// A future that completes at virtual time `at` (at once if it has passed).
    pub fn sleep_until(&self, at: Duration) -> Sleep {
        Sleep { runtime: self.clone(), deadline: at.as_micros() as u64, timer: None }
    }

    /// A future that lets every other ready task run first with probability `chance` (seeded
    /// executors only): a random interleaving point. The draw is made here, when the future is
    /// created, as the seed's sequence of draws requires; a yield is [`raft_core::yield_now`]
    /// (pending once after waking its task, which this executor then schedules like any other
    /// ready task: no timer, no draw of its own).
    pub fn maybe_yield(&self, chance: f64) -> OptionFuture<raft_core::YieldNow> {
        self.lock().chance(chance).then(raft_core::yield_now).into()
    }
}

/// A virtual-time sleep.
pub struct Sleep {
    runtime: SimRuntime,
    deadline: u64,
    timer: Option<(u64, u64, u64)>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let runtime = self.runtime.clone();
        let mut state = runtime.lock();
        if state.now_us >= self.deadline {
            if let Some(key) = self.timer.take() {
                state.timers.remove(&key);
            }
            return Poll::Ready(());
        }
        let key = match self.timer {
            Some(key) => key,
            None => {
                let tie = if state.rng.is_some() { state.below(u64::MAX) } else { 0 };
                let key = (self.deadline, tie, state.next_timer);
                state.next_timer += 1;
                key
            }
        };
        state.timers.insert(key, cx.waker().clone());
        drop(state);
        self.timer = Some(key);
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(key) = self.timer.take() {
            self.runtime.lock().timers.remove(&key);
        }
    }
}

impl Runtime for SimRuntime {
    fn spawn(&self, future: BoxFuture<'static, ()>) {
        self.spawn_task(future);
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.sleep_for(duration).boxed()
    }

    /// This handle's tag's own clock ([`SimRuntime::local_now`]): the clock its `sleep`
    /// follows, which keeps running while the tag is paused.
    fn now(&self) -> Duration {
        self.local_now()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn virtual_time_jumps_to_timers_in_order() {
        let rt = SimRuntime::new();
        let log = Arc::new(Mutex::new(Vec::new()));
        for (name, ms) in [("b", 20u64), ("a", 10), ("c", 20)] {
            let rt2 = rt.clone();
            let log = log.clone();
            rt.spawn_task(async move {
                rt2.sleep_for(Duration::from_millis(ms)).await;
                log.lock().unwrap().push((name, rt2.now().as_millis()));
            });
        }
        rt.run_for(Duration::from_secs(1), || {});
        assert_eq!(*log.lock().unwrap(), vec![("a", 10), ("b", 20), ("c", 20)]);
        assert_eq!(Arc::strong_count(&log), 1, "finished tasks released what they held");
        assert_eq!(rt.now(), Duration::from_secs(1));
        assert_eq!(rt.task_count(), 0);
    }

    #[test]
    fn the_runtime_clock_is_virtual_time() {
        let rt = SimRuntime::new();
        let clock: Arc<dyn Runtime> = Arc::new(rt.clone());
        let seen = Arc::new(Mutex::new(None));
        let (task_clock, task_seen) = (clock.clone(), seen.clone());
        rt.spawn_task(async move {
            task_clock.sleep(Duration::from_millis(250)).await;
            *task_seen.lock().unwrap() = Some(task_clock.now());
        });
        rt.run_for(Duration::from_secs(1), || {});
        assert_eq!(*seen.lock().unwrap(), Some(Duration::from_millis(250)));
        assert_eq!(Runtime::now(&Arc::new(rt.clone())), Duration::from_secs(1));
    }

    #[test]
    fn clear_breaks_the_cycle_between_tasks_and_executor() {
        let rt = SimRuntime::new();
        let held = Arc::new(());
        let (rt2, held2) = (rt.clone(), held.clone());
        rt.spawn_task(async move {
            let _keep = held2;
            rt2.sleep_for(Duration::from_secs(3600)).await;
        });
        rt.run_for(Duration::from_millis(1), || {});
        assert_eq!(Arc::strong_count(&held), 2);
        rt.clear();
        assert_eq!(Arc::strong_count(&held), 1, "the pending task was dropped");
        assert_eq!(rt.task_count(), 0);
    }

    #[test]
    fn block_on_returns_value_or_none_on_timeout() {
        let rt = SimRuntime::new();
        let rt2 = rt.clone();
        let v = rt.block_on(
            Duration::from_secs(1),
            async move {
                rt2.sleep_for(Duration::from_millis(5)).await;
                7
            },
            || {},
        );
        assert_eq!(v, Some(7));
        let rt3 = rt.clone();
        let never = rt.block_on(
            Duration::from_millis(10),
            async move { rt3.sleep_for(Duration::from_secs(5)).await },
            || {},
        );
        assert_eq!(never, None);
    }

    /// The order in which ten ready tasks and ten equal timers run under `rt`.
    fn interleaving(rt: &SimRuntime) -> Vec<u64> {
        let log = Arc::new(Mutex::new(Vec::new()));
        for i in 0..10u64 {
            let (rt2, log) = (rt.clone(), log.clone());
            rt.spawn_task(async move {
                log.lock().unwrap().push(i);
                rt2.sleep_virtual(Duration::from_millis(5)).await;
                log.lock().unwrap().push(100 + i);
            });
        }
        rt.run_for(Duration::from_secs(1), || {});
        let order = log.lock().unwrap().clone();
        order
    }

    #[test]
    fn seeded_scheduling_varies_with_the_seed_and_replays() {
        let fifo = interleaving(&SimRuntime::new());
        assert_eq!(fifo[..10], (0..10).collect::<Vec<_>>()[..], "FIFO without a seed");
        let a = interleaving(&SimRuntime::seeded(7, 0));
        assert_eq!(a, interleaving(&SimRuntime::seeded(7, 0)), "one seed, one interleaving");
        let differs = (8..20).any(|seed| interleaving(&SimRuntime::seeded(seed, 0)) != a);
        assert!(differs, "other seeds explore other interleavings");
        // Both ready tasks and equal timers are shuffled.
        let shuffled_ready = (1..20).any(|s| interleaving(&SimRuntime::seeded(s, 0))[0] != 0);
        let shuffled_timers = (1..20).any(|s| interleaving(&SimRuntime::seeded(s, 0))[10] != 100);
        assert!(shuffled_ready && shuffled_timers);
    }

    #[test]
    fn seeded_picks_do_not_depend_on_wake_order() {
        // Ten tasks wait on one gate each; a driver wakes them all in a given order. With the
        // same seed, the order in which they then run must not depend on the wake order (it
        // may come from a hash map's iteration, which varies between processes).
        let run_order = |wake_order: Vec<usize>| {
            let rt = SimRuntime::seeded(5, 0);
            let log = Arc::new(Mutex::new(Vec::new()));
            let mut gates = Vec::new();
            for i in 0..10 {
                let (open, gate) = futures::channel::oneshot::channel::<()>();
                gates.push(open);
                let log = log.clone();
                rt.spawn_task(async move {
                    let _ = gate.await;
                    log.lock().unwrap().push(i);
                });
            }
            rt.run_for(Duration::from_millis(1), || {});
            let mut gates: Vec<_> = gates.into_iter().map(Some).collect();
            rt.spawn_task(async move {
                for i in wake_order {
                    if let Some(open) = gates[i].take() {
                        let _ = open.send(());
                    }
                }
            });
            rt.run_for(Duration::from_millis(1), || {});
            let order = log.lock().unwrap().clone();
            order
        };
        let forward = run_order((0..10).collect());
        assert_eq!(forward, run_order((0..10).rev().collect()));
        assert_eq!(forward, run_order(vec![3, 1, 4, 0, 5, 9, 2, 6, 8, 7]));
    }

    #[test]
    fn a_paused_tag_stops_and_resumes_with_its_clock_running() {
        let rt = SimRuntime::seeded(1, 0);
        let node = rt.tagged(5);
        let ticks = Arc::new(Mutex::new(Vec::new()));
        let (node2, ticks2) = (node.clone(), ticks.clone());
        node.spawn_task(async move {
            loop {
                node2.sleep_for(Duration::from_millis(10)).await;
                ticks2.lock().unwrap().push(node2.local_now().as_millis());
            }
        });
        rt.run_for(Duration::from_millis(35), || {});
        assert_eq!(*ticks.lock().unwrap(), vec![10, 20, 30]);
        rt.pause(5);
        rt.run_for(Duration::from_millis(100), || {});
        assert_eq!(ticks.lock().unwrap().len(), 3, "nothing runs while paused");
        rt.resume(5);
        rt.run_for(Duration::from_millis(1), || {});
        // One late tick on resume (the timer fell due during the pause), read on a clock that
        // kept running.
        assert_eq!(ticks.lock().unwrap().last(), Some(&135));
        rt.clear();
    }

    #[test]
    fn clock_rates_scale_a_nodes_sleeps() {
        let rt = SimRuntime::new();
        rt.set_clock(2, NodeClock { rate: 2.0, ..NodeClock::EXACT });
        let fast = rt.tagged(2);
        let done = Arc::new(Mutex::new(None));
        let (fast2, done2) = (fast.clone(), done.clone());
        fast.spawn_task(async move {
            fast2.sleep_for(Duration::from_millis(100)).await;
            let runtime_clock = Runtime::now(&fast2);
            *done2.lock().unwrap() = Some((fast2.now(), fast2.local_now(), runtime_clock));
        });
        rt.run_for(Duration::from_secs(1), || {});
        let (virtual_time, local, runtime_clock) = done.lock().unwrap().unwrap();
        assert_eq!(virtual_time, Duration::from_millis(50), "a fast clock's 100 ms pass in 50");
        assert_eq!(local, Duration::from_millis(100));
        assert_eq!(runtime_clock, local, "the node's Runtime clock is its own clock");
    }
}
