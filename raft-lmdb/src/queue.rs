//! The writer's request queue: bounded per group and overall, drained fairly between groups.
//!
//! # Bounds
//!
//! A request of group `g` is admitted when `g` has fewer than `per_group` requests queued and
//! either fewer than `total` requests are queued overall or `g` has none queued. So at most
//! `per_group` requests of one group wait, and at most `total` requests overall plus one per
//! group that found the queue full. Submitters beyond that wait (asynchronously) for room.
//!
//! # Fairness
//!
//! The writer takes requests round-robin over the groups that have requests queued: one
//! request of each group in turn, each group's own in queue order. A group with requests queued
//! therefore has one of them in every transaction as long as fewer than `max_group_requests`
//! groups have requests queued (and otherwise within `ceil(groups / max_group_requests)`
//! transactions), whatever another group queued before it; and a group with nothing queued is
//! admitted at once, however full other groups keep the queue. One busy group can neither keep
//! another's request out of the queue nor delay it behind its own backlog.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use event_listener::{Event, EventListener};
use raft_core::GroupId;

use crate::writer::Request;

/// The queue's bounds (see the module documentation).
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueLimits {
    pub(crate) per_group: usize,
    pub(crate) total: usize,
}

/// Why a request was not queued.
pub(crate) enum Refused {
    /// No room now: wait for [`Queue::listen`] and try again.
    Full(Request),
    /// The writer has stopped.
    Closed,
}

/// How [`Queue::wait`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waited {
    /// A request is queued.
    Queued,
    /// The queue is closed and empty.
    Closed,
    /// The timeout passed with the queue open and empty.
    TimedOut,
}

/// One group's requests.
#[derive(Debug, Default)]
struct GroupQueue {
    queued: VecDeque<Request>,
    /// Requests taken by the writer and not answered yet.
    in_commit: usize,
}

#[derive(Debug, Default)]
struct State {
    groups: HashMap<GroupId, GroupQueue>,
    /// Groups with requests queued, in the order the writer serves them next.
    ready: VecDeque<GroupId>,
    queued: usize,
    /// No more requests: the environment is closing or the writer has stopped.
    closed: bool,
}

/// The queue between submitters and the writer thread.
#[derive(Debug)]
pub(crate) struct Queue {
    state: Mutex<State>,
    limits: QueueLimits,
    /// Signalled when a request is queued or the queue closes (the writer waits on it).
    arrived: Condvar,
    /// Signalled when requests have been answered or the queue closes (a closing store waits
    /// on it for its group's requests).
    answered: Condvar,
    /// Notified each time the writer takes requests out of the queue (room for more).
    space: Event,
}

impl Queue {
    pub(crate) fn new(limits: QueueLimits) -> Queue {
        let limits = QueueLimits { per_group: limits.per_group.max(1), total: limits.total.max(1) };
        Queue {
            state: Mutex::new(State::default()),
            limits,
            arrived: Condvar::new(),
            answered: Condvar::new(),
            space: Event::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state consistent before anything can panic.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `request` if the bounds allow.
    pub(crate) fn try_push(&self, request: Request) -> Result<(), Refused> {
        let mut state = self.lock();
        if state.closed {
            return Err(Refused::Closed);
        }
        let over_total = state.queued >= self.limits.total;
        let id = request.group;
        let len = state.groups.get(&id).map_or(0, |group| group.queued.len());
        if len >= self.limits.per_group || (over_total && len > 0) {
            return Err(Refused::Full(request));
        }
        state.groups.entry(id).or_default().queued.push_back(request);
        if len == 0 {
            state.ready.push_back(id);
        }
        state.queued += 1;
        drop(state);
        self.arrived.notify_one();
        Ok(())
    }

    /// A listener notified when the writer next takes requests out (register it before trying
    /// again, so that a wake-up in between is not lost).
    pub(crate) fn listen(&self) -> EventListener {
        self.space.listen()
    }

    /// Takes queued requests round-robin over the groups into `out`, without waiting, until
    /// `out` holds `max_requests` requests or `bytes` reaches `max_bytes`.
    pub(crate) fn take(
        &self,
        out: &mut Vec<Request>,
        bytes: &mut u64,
        max_requests: usize,
        max_bytes: u64,
    ) {
        let mut state = self.lock();
        let before = out.len();
        while out.len() < max_requests && *bytes < max_bytes {
            let Some(id) = state.ready.pop_front() else { break };
            let Some(group) = state.groups.get_mut(&id) else { continue };
            let Some(request) = group.queued.pop_front() else { continue };
            group.in_commit += 1;
            if !group.queued.is_empty() {
                state.ready.push_back(id);
            }
            state.queued -= 1;
            *bytes += request.op.size_bytes();
            out.push(request);
        }
        drop(state);
        if out.len() > before {
            self.space.notify(usize::MAX);
        }
    }

    /// Waits until a request is queued, the queue is closed and empty, or `timeout` passes.
    pub(crate) fn wait(&self, timeout: Option<Duration>) -> Waited {
        let mut state = self.lock();
        let ready = |state: &mut State| state.queued > 0 || state.closed;
        match timeout {
            None => {
                state = self
                    .arrived
                    .wait_while(state, |s| !ready(s))
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            Some(timeout) => {
                state = self
                    .arrived
                    .wait_timeout_while(state, timeout, |s| !ready(s))
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .0;
            }
        }
        if state.queued > 0 {
            Waited::Queued
        } else if state.closed {
            Waited::Closed
        } else {
            Waited::TimedOut
        }
    }

    /// Records that the requests of `groups` (one element per request) have been answered.
    pub(crate) fn answered(&self, groups: impl IntoIterator<Item = GroupId>) {
        let mut state = self.lock();
        for id in groups {
            if let Some(group) = state.groups.get_mut(&id) {
                group.in_commit = group.in_commit.saturating_sub(1);
                if group.in_commit == 0 && group.queued.is_empty() {
                    state.groups.remove(&id);
                }
            }
        }
        drop(state);
        self.answered.notify_all();
    }

    /// Waits until `group` has no request queued or being committed (or the queue is closed).
    pub(crate) fn wait_idle(&self, group: GroupId) {
        let state = self.lock();
        let _state = self
            .answered
            .wait_while(state, |s| {
                !s.closed
                    && s.groups.get(&group).is_some_and(|g| g.in_commit > 0 || !g.queued.is_empty())
            })
            .unwrap_or_else(|poisoned| poisoned.into_inner());
    }

    /// Refuses every later request and wakes everyone waiting. Requests already queued are
    /// still taken by the writer.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.arrived.notify_all();
        self.answered.notify_all();
        self.space.notify(usize::MAX);
    }

    /// Closes the queue and drops every queued request: their callers see the store closed.
    /// For a writer thread that stops.
    pub(crate) fn abandon(&self) {
        let dropped = {
            let mut state = self.lock();
            state.closed = true;
            state.queued = 0;
            state.ready.clear();
            std::mem::take(&mut state.groups)
        };
        drop(dropped);
        self.arrived.notify_all();
        self.answered.notify_all();
        self.space.notify(usize::MAX);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use raft_core::LogIndex;

    use super::*;
    use crate::writer::Op;

    fn request(group: GroupId, n: LogIndex) -> Request {
        let (reply, _) = futures::channel::oneshot::channel();
        Request { group, op: Op::Purge(n), reply }
    }

    fn pushed(queue: &Queue, group: GroupId, n: LogIndex) -> bool {
        match queue.try_push(request(group, n)) {
            Ok(()) => true,
            Err(Refused::Full(_)) => false,
            Err(Refused::Closed) => panic!("closed"),
        }
    }

    fn taken(queue: &Queue, max_requests: usize) -> Vec<(GroupId, LogIndex)> {
        let (mut out, mut bytes) = (Vec::new(), 0);
        queue.take(&mut out, &mut bytes, max_requests, u64::MAX);
        out.iter()
            .map(|r| match r.op {
                Op::Purge(n) => (r.group, n),
                _ => panic!("unexpected op"),
            })
            .collect()
    }

    /// A wait tells a queued request, a timeout and a closed queue apart (the writer counts
    /// only timeouts as lingers at their limit); requests still queued are taken after closing.
    #[test]
    fn a_wait_ends_queued_timed_out_or_closed() {
        let queue = Queue::new(QueueLimits { per_group: 3, total: 4 });
        assert_eq!(queue.wait(Some(Duration::ZERO)), Waited::TimedOut);
        assert!(pushed(&queue, 1, 1));
        assert_eq!(queue.wait(Some(Duration::ZERO)), Waited::Queued);
        queue.close();
        assert_eq!(queue.wait(Some(Duration::from_secs(60))), Waited::Queued);
        assert_eq!(taken(&queue, 3), vec![(1, 1)]);
        assert_eq!(queue.wait(Some(Duration::from_secs(60))), Waited::Closed);
        assert_eq!(queue.wait(None), Waited::Closed);
    }

    /// A busy group fills its own bound and the overall one; another group with nothing queued
    /// is admitted all the same (once), and the queue never holds more than the overall bound
    /// plus one request per such group.
    #[test]
    fn a_busy_group_cannot_keep_another_out_of_the_queue() {
        let queue = Queue::new(QueueLimits { per_group: 3, total: 4 });
        assert!((1..=3).all(|n| pushed(&queue, 1, n)));
        assert!(!pushed(&queue, 1, 4), "per-group bound");
        assert!(pushed(&queue, 2, 1));
        assert!(!pushed(&queue, 2, 2), "overall bound, group 2 has one queued");
        assert!(pushed(&queue, 3, 1), "a group with nothing queued is admitted over the bound");
        assert!(!pushed(&queue, 3, 2));
        assert_eq!(queue.lock().queued, 5);
        // Room again: group 1 is still bounded by its own limit, the others by the total.
        assert_eq!(taken(&queue, 3).len(), 3);
        assert!(pushed(&queue, 1, 4));
        assert!(pushed(&queue, 2, 2));
        assert!(!pushed(&queue, 2, 3));
    }

    /// The writer takes one request of each group in turn (each group's in order), so a
    /// group's request is in the next transaction however long another group's backlog is.
    #[test]
    fn requests_are_taken_round_robin_over_groups_in_each_groups_order() {
        let queue = Queue::new(QueueLimits { per_group: 100, total: 100 });
        for n in 1..=5 {
            assert!(pushed(&queue, 7, n));
        }
        assert!(pushed(&queue, 8, 1));
        assert!(pushed(&queue, 9, 1));
        assert!(pushed(&queue, 9, 2));
        assert_eq!(taken(&queue, 2), [(7, 1), (8, 1)]);
        assert_eq!(taken(&queue, 4), [(9, 1), (7, 2), (9, 2), (7, 3)]);
        assert_eq!(taken(&queue, 10), [(7, 4), (7, 5)]);
        assert!(taken(&queue, 10).is_empty());
    }

    /// A closing store waits for its group's requests to be answered, not for other groups'.
    #[test]
    fn a_group_is_idle_once_its_requests_are_answered() {
        let queue = Queue::new(QueueLimits { per_group: 10, total: 10 });
        assert!(pushed(&queue, 1, 1));
        assert!(pushed(&queue, 2, 1));
        let batch = taken(&queue, 10);
        queue.answered(batch.iter().filter(|(g, _)| *g == 1).map(|(g, _)| *g));
        queue.wait_idle(1); // returns: group 1 has nothing left
        assert!(queue.lock().groups.contains_key(&2));
        queue.answered([2]);
        assert!(queue.lock().groups.is_empty());
    }
}
