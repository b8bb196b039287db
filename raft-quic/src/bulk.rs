//! [`BulkWindow`]: the bulk requests (frames above `QuicConfig::priority_frame_threshold`:
//! batches of entries, snapshot chunks) one node has in flight to one peer, all its Raft groups
//! together, and the turns the groups take for room in it.
//!
//! Why: QUIC charges the bytes a stream writes against the connection's flow-control credit
//! and the sender's send window when they are *written*, not when they leave, and the receiver
//! returns credit only once it *reads* them. A receiver that waits for memory before reading a
//! large request (`memory.rs`) leaves its bytes unread; enough of them exhaust the credit of
//! the whole connection, and then a vote or heartbeat of any group sharing it cannot write a
//! byte, whatever its stream priority. With at most half the connection's window and half its
//! streams taken by bulk requests, the other half always takes the small ones at once: they
//! never wait for credit, send buffer or a stream slot behind bulk data, and their higher
//! priority sends them before any bulk byte not yet on the wire.
//!
//! Fairness: while requests wait for room, the groups take turns in the order of their ids
//! (round robin from the group served last), one request per turn, each group's own in the
//! order they came; a turn whose request does not fit yet waits for room rather than being
//! skipped, so large requests are not starved by small ones. A waiting request is thus
//! admitted after at most one request of each other group with requests waiting, once room
//! frees up.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound::{Excluded, Unbounded};
use std::sync::{Arc, Mutex};

use futures::channel::oneshot;
use raft_core::GroupId;

use crate::client::lock;

/// The room for bulk requests towards one peer (see the module docs).
#[derive(Debug)]
pub(crate) struct BulkWindow {
    /// The most bytes of bulk frames in flight at once.
    capacity_bytes: u64,
    /// The most bulk requests (streams) in flight at once.
    capacity_requests: usize,
    state: Mutex<WindowState>,
}

#[derive(Debug, Default)]
struct WindowState {
    /// Bytes of the requests in flight.
    bytes: u64,
    /// Requests in flight.
    requests: usize,
    /// The requests waiting for room, by group, oldest first.
    waiting: BTreeMap<GroupId, VecDeque<Waiter>>,
    /// The group whose request was admitted last: the next turn is the next group after it.
    last_served: Option<GroupId>,
    /// Numbers the waiters.
    next_waiter: u64,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    bytes: u64,
    admitted: oneshot::Sender<()>,
}

impl WindowState {
    fn fits(&self, capacity: &BulkWindow, bytes: u64) -> bool {
        self.requests < capacity.capacity_requests && self.bytes + bytes <= capacity.capacity_bytes
    }

    fn take(&mut self, bytes: u64) {
        self.bytes += bytes;
        self.requests += 1;
    }

    fn give_back(&mut self, bytes: u64) {
        self.bytes = self.bytes.saturating_sub(bytes);
        self.requests = self.requests.saturating_sub(1);
    }

    /// The group whose turn it is: the first after the one served last that has requests
    /// waiting, wrapping around.
    fn next_turn(&self) -> Option<GroupId> {
        let after = match self.last_served {
            Some(last) => self.waiting.range((Excluded(last), Unbounded)).next(),
            None => None,
        };
        after.or_else(|| self.waiting.iter().next()).map(|(&group, _)| group)
    }

    /// Admits waiting requests in turn while the one whose turn it is fits.
    fn admit_in_turn(&mut self, capacity: &BulkWindow) {
        while let Some(group) = self.next_turn() {
            let head = self.waiting.get(&group).and_then(VecDeque::front);
            let Some(bytes) = head.map(|waiter| waiter.bytes) else { return };
            if !self.fits(capacity, bytes) {
                return;
            }
            let Some(queue) = self.waiting.get_mut(&group) else { return };
            let Some(waiter) = queue.pop_front() else { return };
            if queue.is_empty() {
                self.waiting.remove(&group);
            }
            self.last_served = Some(group);
            self.take(waiter.bytes);
            // The waiter removes itself under this lock before it stops listening, so the
            // send reaches it; if not, its room is free again at once.
            if waiter.admitted.send(()).is_err() {
                self.give_back(waiter.bytes);
            }
        }
    }

    /// Removes waiter `id` of `group`; whether it was still waiting.
    fn withdraw(&mut self, group: GroupId, id: u64) -> bool {
        let Some(queue) = self.waiting.get_mut(&group) else { return false };
        let Some(at) = queue.iter().position(|w| w.id == id) else { return false };
        queue.remove(at);
        if queue.is_empty() {
            self.waiting.remove(&group);
        }
        true
    }
}

impl BulkWindow {
    /// A window of `capacity_bytes` and `capacity_requests` (each at least 1).
    pub(crate) fn new(capacity_bytes: u64, capacity_requests: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity_bytes: capacity_bytes.max(1),
            capacity_requests: capacity_requests.max(1),
            state: Mutex::new(WindowState::default()),
        })
    }

    /// Waits for room for a bulk request of `bytes` (at most the window: a larger one waits for
    /// the window to be empty) of `group`, in turn with the other groups, and takes it until
    /// the returned permit is dropped. Dropping the future before that gives up its place.
    pub(crate) async fn admit(self: &Arc<Self>, group: GroupId, bytes: u64) -> BulkPermit {
        let bytes = bytes.min(self.capacity_bytes);
        let mut waiting = {
            let mut state = lock(&self.state);
            if state.waiting.is_empty() && state.fits(self, bytes) {
                state.take(bytes);
                state.last_served = Some(group);
                return BulkPermit { window: Arc::clone(self), bytes };
            }
            let (admitted, receiver) = oneshot::channel();
            let id = state.next_waiter;
            state.next_waiter += 1;
            state.waiting.entry(group).or_default().push_back(Waiter { id, bytes, admitted });
            // Its group's turn may be now (it is the only one waiting, or comes first).
            state.admit_in_turn(self);
            Waiting { window: Arc::clone(self), group, id, bytes, receiver, admitted: false }
        };
        // Fails only if the sender was dropped unsent, which `admit_in_turn` never does.
        let _ = (&mut waiting.receiver).await;
        waiting.admitted = true;
        BulkPermit { window: Arc::clone(self), bytes }
    }

    fn release(&self, bytes: u64) {
        let mut state = lock(&self.state);
        state.give_back(bytes);
        state.admit_in_turn(self);
    }

    /// Bytes and requests in flight now.
    #[cfg(test)]
    fn in_flight(&self) -> (u64, usize) {
        let state = lock(&self.state);
        (state.bytes, state.requests)
    }
}

/// A request waiting for room; gives up its place (or its room, if admitted meanwhile) if
/// dropped before it saw the admission.
struct Waiting {
    window: Arc<BulkWindow>,
    group: GroupId,
    id: u64,
    bytes: u64,
    receiver: oneshot::Receiver<()>,
    admitted: bool,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.admitted {
            return;
        }
        let mut state = lock(&self.window.state);
        if !state.withdraw(self.group, self.id) && matches!(self.receiver.try_recv(), Ok(Some(())))
        {
            // Admitted after all, but no one will use the room.
            state.give_back(self.bytes);
            state.admit_in_turn(&self.window);
        }
    }
}

/// Room in a [`BulkWindow`], given back when dropped.
#[derive(Debug)]
pub(crate) struct BulkPermit {
    window: Arc<BulkWindow>,
    bytes: u64,
}

impl Drop for BulkPermit {
    fn drop(&mut self) {
        self.window.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;

    type Admission = Pin<Box<dyn Future<Output = BulkPermit>>>;

    fn poll(admission: &mut Admission) -> Option<BulkPermit> {
        let waker = futures::task::noop_waker();
        match admission.as_mut().poll(&mut Context::from_waker(&waker)) {
            Poll::Ready(permit) => Some(permit),
            Poll::Pending => None,
        }
    }

    fn request(window: &Arc<BulkWindow>, group: GroupId, bytes: u64) -> Admission {
        let window = Arc::clone(window);
        Box::pin(async move { window.admit(group, bytes).await })
    }

    #[test]
    fn bytes_and_requests_in_flight_stay_within_the_window() {
        let window = BulkWindow::new(100, 3);
        let first = poll(&mut request(&window, 1, 60)).unwrap();
        let mut second = request(&window, 1, 50);
        assert!(poll(&mut second).is_none(), "over the bytes");
        drop(first);
        let second = poll(&mut second).unwrap();
        assert_eq!(window.in_flight(), (50, 1));
        let small: Vec<_> = (0..2).map(|_| poll(&mut request(&window, 2, 1)).unwrap()).collect();
        let mut fourth = request(&window, 2, 1);
        assert!(poll(&mut fourth).is_none(), "over the requests");
        drop(second);
        assert!(poll(&mut fourth).is_some());
        drop(small);
        // Larger than the window: clamped, it waits for the window to be empty.
        let huge = poll(&mut request(&window, 3, 1_000)).unwrap();
        assert_eq!(window.in_flight(), (100, 1));
        drop(huge);
        assert_eq!(window.in_flight(), (0, 0));
    }

    /// Group 1 queues five requests, then group 2 one: as room frees up, group 2's goes after
    /// one more of group 1's, not after all of them.
    #[test]
    fn waiting_groups_take_turns() {
        let window = BulkWindow::new(10, 1);
        let mut held = poll(&mut request(&window, 1, 10));
        let mut group1: VecDeque<Admission> = (0..5).map(|_| request(&window, 1, 10)).collect();
        for admission in &mut group1 {
            assert!(poll(admission).is_none());
        }
        let mut group2 = request(&window, 2, 10);
        assert!(poll(&mut group2).is_none());
        let mut order = Vec::new();
        for _ in 0..6 {
            drop(held.take());
            if let Some(permit) = poll(&mut group2) {
                order.push(2);
                held = Some(permit);
                group2 = Box::pin(std::future::pending());
                continue;
            }
            // A group's own requests go in the order they came.
            let next = group1.front_mut().and_then(poll);
            assert!(next.is_some(), "group 1's oldest request not admitted");
            group1.pop_front();
            for later in &mut group1 {
                assert!(poll(later).is_none(), "over the window");
            }
            order.push(1);
            held = next;
        }
        assert_eq!(order, [2, 1, 1, 1, 1, 1], "group 2 admitted in its turn");
    }

    /// The turn wraps around after the largest group id.
    #[test]
    fn turns_wrap_around_after_the_last_group() {
        let window = BulkWindow::new(10, 1);
        let held = poll(&mut request(&window, u64::MAX, 10)).unwrap();
        let mut last_again = request(&window, u64::MAX, 10);
        let mut first = request(&window, 0, 10);
        assert!(poll(&mut last_again).is_none() && poll(&mut first).is_none());
        drop(held);
        assert!(poll(&mut last_again).is_none(), "the last group served twice in a row");
        assert!(poll(&mut first).is_some());
    }

    /// A turn whose request does not fit yet is not skipped: smaller requests of other groups
    /// wait behind it.
    #[test]
    fn a_large_request_is_not_starved_by_small_ones() {
        let window = BulkWindow::new(10, 10);
        let small = poll(&mut request(&window, 1, 5)).unwrap();
        let mut large = request(&window, 2, 10);
        assert!(poll(&mut large).is_none());
        let mut later = request(&window, 3, 5);
        assert!(poll(&mut later).is_none(), "a small request overtook the large one");
        drop(small);
        let large = poll(&mut large).unwrap();
        assert!(poll(&mut later).is_none());
        drop(large);
        assert!(poll(&mut later).is_some());
    }

    /// A request given up while waiting leaves no trace; one given up after it was admitted
    /// gives its room back.
    #[test]
    fn abandoned_requests_give_their_place_back() {
        let window = BulkWindow::new(10, 1);
        let held = poll(&mut request(&window, 1, 10)).unwrap();
        let mut abandoned = request(&window, 2, 10);
        assert!(poll(&mut abandoned).is_none());
        drop(abandoned);
        let mut admitted_unseen = request(&window, 3, 10);
        assert!(poll(&mut admitted_unseen).is_none());
        let mut last = request(&window, 4, 10);
        assert!(poll(&mut last).is_none());
        drop(held);
        // Group 3's request got the room but was dropped before it saw it.
        assert_eq!(window.in_flight(), (10, 1));
        drop(admitted_unseen);
        assert!(poll(&mut last).is_some(), "the room went to the next in turn");
    }
}
