//! A deterministic single-threaded executor with a virtual clock.
//!
//! Tasks run one at a time in FIFO wake order; when no task is ready, the clock jumps to the
//! next timer. Nothing reads the wall clock or the OS, so a run is a pure function of its
//! inputs: the same seed replays the same interleaving.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use raft_core::Runtime;

type TaskId = u64;

struct Task {
    tag: u64,
    future: Mutex<Option<BoxFuture<'static, ()>>>,
}

#[derive(Default)]
struct State {
    /// Virtual time, in microseconds since the start.
    now_us: u64,
    ready: VecDeque<TaskId>,
    queued: std::collections::BTreeSet<TaskId>,
    tasks: BTreeMap<TaskId, Arc<Task>>,
    next_task: TaskId,
    /// Timers by (deadline, sequence): the sequence keeps equal deadlines in creation order.
    timers: BTreeMap<(u64, u64), Waker>,
    next_timer: u64,
    polls: u64,
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
            let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
            if state.tasks.contains_key(&self.id) && state.queued.insert(self.id) {
                state.ready.push_back(self.id);
            }
        }
    }
}

impl SimRuntime {
    /// A new executor at virtual time zero, with no tasks.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The virtual time elapsed since the start.
    pub fn now(&self) -> Duration {
        Duration::from_micros(self.lock().now_us)
    }

    /// How many task polls have run (a measure of simulated work).
    pub fn polls(&self) -> u64 {
        self.lock().polls
    }

    /// How many tasks are alive.
    pub fn task_count(&self) -> usize {
        self.lock().tasks.len()
    }

    /// A handle to the same executor whose spawned tasks carry `tag`.
    pub fn tagged(&self, tag: u64) -> Self {
        Self { state: self.state.clone(), tag }
    }

    /// Drops every task tagged `tag` without running it further (a crash: whatever those tasks
    /// were about to do never happens).
    pub fn kill(&self, tag: u64) {
        let killed: Vec<Arc<Task>> = {
            let mut state = self.lock();
            let ids: Vec<TaskId> =
                state.tasks.iter().filter(|(_, t)| t.tag == tag).map(|(id, _)| *id).collect();
            ids.iter()
                .filter_map(|id| {
                    state.queued.remove(id);
                    state.tasks.remove(id)
                })
                .collect()
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
        state.queued.insert(id);
        state.ready.push_back(id);
    }

    /// Runs one ready task, or, if none is ready, advances the clock to the next timer (not past
    /// `limit_us`). Returns false when nothing can happen before `limit_us`.
    fn step(&self, limit_us: u64) -> bool {
        let next = {
            let mut state = self.lock();
            match state.ready.pop_front() {
                Some(id) => {
                    state.queued.remove(&id);
                    state.polls += 1;
                    state.tasks.get(&id).cloned().map(|task| (id, task))
                }
                None => {
                    let Some((&(deadline, seq), _)) = state.timers.iter().next() else {
                        state.now_us = state.now_us.max(limit_us);
                        return false;
                    };
                    if deadline > limit_us {
                        state.now_us = state.now_us.max(limit_us);
                        return false;
                    }
                    state.now_us = state.now_us.max(deadline);
                    if let Some(waker) = state.timers.remove(&(deadline, seq)) {
                        drop(state);
                        waker.wake();
                    }
                    return true;
                }
            }
        };
        let Some((id, task)) = next else { return true };
        // The ready queue may still name a task killed since it was woken.
        let waker = Waker::from(Arc::new(TaskWaker { id, state: Arc::downgrade(&self.state) }));
        let mut cx = Context::from_waker(&waker);
        let mut slot = task.future.lock().unwrap_or_else(|p| p.into_inner());
        let done = match slot.as_mut() {
            Some(future) => future.as_mut().poll(&mut cx).is_ready(),
            None => true,
        };
        if done {
            *slot = None;
            drop(slot);
            let mut state = self.lock();
            state.tasks.remove(&id);
            state.queued.remove(&id);
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

    /// A future that completes once virtual time has advanced by `duration`.
    pub fn sleep_for(&self, duration: Duration) -> Sleep {
        let deadline = self.lock().now_us + duration.as_micros() as u64;
        Sleep { runtime: self.clone(), deadline, timer: None }
    }
}

/// A virtual-time sleep.
pub struct Sleep {
    runtime: SimRuntime,
    deadline: u64,
    timer: Option<(u64, u64)>,
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
                let key = (self.deadline, state.next_timer);
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

    /// The virtual time (the clock `sleep` follows).
    fn now(&self) -> Duration {
        SimRuntime::now(self)
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
}
