//! The ready queue of a host loop: which groups have something to do, in the order they got
//! it, each at most once, and the one waker of the host task that runs them.
//!
//! Each group of the loop has a [`GroupWake`], whose [`Waker`](std::task::Waker) the loop
//! polls the group's input queue with. Waking it marks the group `queued` and, only if it was
//! not queued yet, appends the group's index to the [`ReadyQueue`] and wakes the host task:
//! a group woken a thousand times before the loop gets to it is stepped once. The loop clears
//! the mark just before it polls the group, so a wake that comes while (or after) the group is
//! stepped queues it again, at the tail.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Wake};

use futures::task::AtomicWaker;

/// The groups ready to be stepped, by their index in the loop's table, and the host task's
/// waker.
#[derive(Default)]
pub(crate) struct ReadyQueue {
    queue: Mutex<VecDeque<usize>>,
    task: AtomicWaker,
}

impl ReadyQueue {
    fn lock(&self) -> MutexGuard<'_, VecDeque<usize>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `idx` and wakes the host task.
    pub(crate) fn push(&self, idx: usize) {
        self.lock().push_back(idx);
        self.task.wake();
    }

    /// Puts `ids` back at the head of the queue, in their order (the part of a pass its cap
    /// left undone: they were ready before anything queued since), and wakes the host task.
    pub(crate) fn push_front(&self, ids: impl DoubleEndedIterator<Item = usize>) {
        let mut queue = self.lock();
        for idx in ids.rev() {
            queue.push_front(idx);
        }
        drop(queue);
        self.task.wake();
    }

    /// Takes every queued index, in order.
    pub(crate) fn drain(&self) -> Vec<usize> {
        self.lock().drain(..).collect()
    }

    /// Whether nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Wakes the host task (for work that is not a group: a new group, the host gone).
    pub(crate) fn wake_task(&self) {
        self.task.wake();
    }

    /// Registers the host task's waker: call before checking for work, so that no wake-up
    /// between the check and the task's sleep is lost.
    pub(crate) fn register(&self, cx: &Context<'_>) {
        self.task.register(cx.waker());
    }
}

/// The waker of one group of a host loop (see the module documentation).
pub(crate) struct GroupWake {
    idx: usize,
    queued: AtomicBool,
    ready: Arc<ReadyQueue>,
}

impl GroupWake {
    /// The waker of the group at `idx` of the loop whose ready queue is `ready`; not queued.
    pub(crate) fn new(idx: usize, ready: Arc<ReadyQueue>) -> Arc<Self> {
        Arc::new(Self { idx, queued: AtomicBool::new(false), ready })
    }

    /// Marks the group queued and, unless it already was, appends it to the ready queue and
    /// wakes the host task. Returns whether it was appended.
    pub(crate) fn queue(&self) -> bool {
        if self.queued.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.ready.push(self.idx);
        true
    }

    /// Clears the mark, before the loop polls the group: a wake from then on queues it again.
    pub(crate) fn clear(&self) {
        self.queued.store(false, Ordering::Release);
    }
}

impl Wake for GroupWake {
    fn wake(self: Arc<Self>) {
        self.queue();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.queue();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::task::{Poll, Waker};

    /// Counts how often the host task is woken.
    #[derive(Default)]
    struct Count(std::sync::atomic::AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn registered(ready: &ReadyQueue) -> Arc<Count> {
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        ready.register(&Context::from_waker(&waker));
        count
    }

    /// A group woken many times before the loop gets to it is queued once, and the host task
    /// is woken for it.
    #[test]
    fn a_group_woken_many_times_is_queued_once() {
        let ready = Arc::new(ReadyQueue::default());
        let task = registered(&ready);
        let group = GroupWake::new(3, ready.clone());
        let waker = Waker::from(group.clone());
        for _ in 0..100 {
            waker.wake_by_ref();
        }
        Waker::from(group.clone()).wake();
        assert_eq!(ready.drain(), vec![3]);
        assert!(task.0.load(Ordering::SeqCst) >= 1, "the host task was woken");
        // Still marked: until the loop clears it, more wakes queue nothing.
        waker.wake_by_ref();
        assert!(ready.is_empty());
    }

    /// A group woken while it is being stepped (after the loop cleared its mark) is queued
    /// again, behind the groups queued before it.
    #[test]
    fn a_group_woken_while_stepped_is_queued_again_at_the_tail() {
        let ready = Arc::new(ReadyQueue::default());
        let _task = registered(&ready);
        let groups: Vec<_> = (0..3).map(|idx| GroupWake::new(idx, ready.clone())).collect();
        assert!(groups[0].queue());
        assert!(groups[1].queue());
        let pass = ready.drain();
        assert_eq!(pass, vec![0, 1]);
        // The loop steps group 0: clears it, then an input for it arrives meanwhile.
        groups[0].clear();
        assert!(groups[2].queue());
        Waker::from(groups[0].clone()).wake_by_ref();
        // Group 1 is not cleared yet: a wake before its turn queues nothing.
        assert!(!groups[1].queue());
        assert_eq!(ready.drain(), vec![2, 0]);
    }

    /// The queue keeps wake order; indexes a pass left undone go back at the head, in order.
    #[test]
    fn order_is_first_woken_first_and_leftovers_go_first() {
        let ready = Arc::new(ReadyQueue::default());
        let task = registered(&ready);
        let groups: Vec<_> = (0..6).map(|idx| GroupWake::new(idx, ready.clone())).collect();
        for idx in [4, 1, 5, 0] {
            assert!(groups[idx].queue());
        }
        let pass = ready.drain();
        assert_eq!(pass, vec![4, 1, 5, 0]);
        assert!(groups[2].queue());
        ready.push_front(pass[2..].iter().copied());
        assert_eq!(ready.drain(), vec![5, 0, 2]);
        let woken = task.0.load(Ordering::SeqCst);
        assert!(woken >= 1);
        // Registering again and finding work: the pattern the host task follows.
        let poll = {
            let _again = registered(&ready);
            if ready.is_empty() {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        };
        assert_eq!(poll, Poll::Pending);
    }
}
