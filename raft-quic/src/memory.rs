//! [`MemoryBudget`]: the bytes the requests of one peer node id (all its inbound connections)
//! may hold while they are read, decoded and handled. A node id is a process: the budget is
//! shared by all the Raft groups of that peer, never multiplied by their number.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use event_listener::Event;

use crate::client::lock;

/// What one decoded sequence element (a log entry, a member id) is charged: an estimate at
/// least the size of an `Entry` in memory.
pub(crate) const ITEM_COST: u64 = 80;

/// What every decoded request (a lone one, or one of a batch) is charged, whatever it holds:
/// the memory it pins from its decoding until it is answered besides its elements and its
/// frame's bytes. An estimate from measurement: 262,144 one-entry requests held in a test
/// handler (4 connections of 256 streams, each a batch of 256) pinned 263 MiB of RSS, ~1 KiB
/// each, of which the decoded [`raft_core::Envelope`] (its `size_of`, twice: in the decoded
/// batch and moved into the handler's call), the per-request future answering it and the
/// handler's boxed future (the test handler's, waiting on a lock), and the stream and task
/// that carry it. Without it a request with no elements (a vote, a heartbeat) would be charged
/// nothing, and one node id could hold unbounded memory in small requests.
pub(crate) const REQUEST_COST: u64 = 1024;

/// A budget of bytes shared by the requests of one peer node id (all its groups).
#[derive(Debug)]
pub(crate) struct MemoryBudget {
    capacity: u64,
    available: Mutex<u64>,
    released: Event,
}

impl MemoryBudget {
    pub(crate) fn new(capacity: u64) -> Arc<Self> {
        Arc::new(Self { capacity, available: Mutex::new(capacity), released: Event::new() })
    }

    fn try_take(&self, amount: u64) -> bool {
        let mut available = lock(&self.available);
        if *available >= amount {
            *available -= amount;
            true
        } else {
            false
        }
    }

    fn give_back(&self, amount: u64) {
        if amount > 0 {
            let mut available = lock(&self.available);
            *available = (*available + amount).min(self.capacity);
            drop(available);
            self.released.notify(usize::MAX);
        }
    }

    /// Waits until `amount` bytes (at most the capacity) are available and takes them.
    pub(crate) async fn take(self: &Arc<Self>, amount: u64) -> Reservation {
        let amount = amount.min(self.capacity);
        loop {
            if self.try_take(amount) {
                break;
            }
            let listener = self.released.listen();
            if self.try_take(amount) {
                break;
            }
            listener.await;
        }
        Reservation { budget: Arc::clone(self), amount: AtomicU64::new(amount) }
    }
}

/// Bytes taken from a [`MemoryBudget`], given back when dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: Arc<MemoryBudget>,
    amount: AtomicU64,
}

impl Reservation {
    /// An empty reservation on `budget`, to grow with [`Reservation::try_grow`].
    pub(crate) fn empty(budget: &Arc<MemoryBudget>) -> Self {
        Self { budget: Arc::clone(budget), amount: AtomicU64::new(0) }
    }

    /// Takes `amount` more bytes if they are available now.
    pub(crate) fn try_grow(&self, amount: u64) -> bool {
        let taken = self.budget.try_take(amount);
        if taken {
            self.amount.fetch_add(amount, Ordering::Relaxed);
        }
        taken
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.give_back(*self.amount.get_mut());
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::*;

    #[test]
    fn reservations_wait_for_released_bytes() {
        let budget = MemoryBudget::new(100);
        let first = futures::executor::block_on(budget.take(70));
        assert!(!first.try_grow(31));
        assert!(first.try_grow(30));
        let second = budget.take(50);
        let mut second = std::pin::pin!(second);
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(second.as_mut().poll(&mut cx).is_pending());
        drop(first);
        assert!(second.as_mut().poll(&mut cx).is_ready());
        // More than the capacity is clamped to it rather than waiting forever.
        let budget = MemoryBudget::new(10);
        let all = futures::executor::block_on(budget.take(1_000));
        drop(all);
        assert!(Reservation::empty(&budget).try_grow(10));
    }

    /// The fixed charge of a request covers at least what its decoding alone allocates: the
    /// envelope in the decoded batch and the one moved into the handler.
    #[test]
    fn a_request_is_charged_at_least_its_envelope_twice() {
        let envelope = std::mem::size_of::<raft_core::Envelope>() as u64;
        let decoded = std::mem::size_of::<Result<raft_core::Envelope, crate::wire::Refusal>>();
        assert!(REQUEST_COST >= envelope + decoded as u64, "{envelope} + {decoded}");
    }
}
