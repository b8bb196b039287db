//! The one-shot reply of `Node::write`: one value from the node to the caller, or nothing if
//! the node drops it (it stopped).
//!
//! `futures`' oneshot channel, used before, costs each write about a dozen atomic operations
//! on its shared state (a flag and three small locks, set and taken again by the send, the
//! sender's drop and the receiver's drop): bench-mem at 4096 clients spent 9% of its CPU in
//! them. Here the state is one mutex-guarded slot: the send locks it once, the caller's poll
//! locks it once per poll, and dropping either side after the send touches nothing but the
//! shared count.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

struct Slot<T> {
    value: Option<T>,
    /// The caller's task, once it waited.
    waker: Option<Waker>,
    /// The sender sent or was dropped: nothing more will come.
    done: bool,
}

type Shared<T> = Arc<Mutex<Slot<T>>>;

fn lock<T>(shared: &Shared<T>) -> MutexGuard<'_, Slot<T>> {
    shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The node's end: [`ReplySender::send`] once, or drop it (the caller then gets `None`).
pub(crate) struct ReplySender<T>(Option<Shared<T>>);

/// The caller's end: a future of the value, `None` if the sender was dropped without one.
pub(crate) struct Reply<T>(Shared<T>);

/// A reply channel.
pub(crate) fn channel<T>() -> (ReplySender<T>, Reply<T>) {
    let shared = Arc::new(Mutex::new(Slot { value: None, waker: None, done: false }));
    (ReplySender(Some(shared.clone())), Reply(shared))
}

impl<T> ReplySender<T> {
    /// Hands `value` to the caller (dropped with the slot if the caller is gone).
    pub(crate) fn send(mut self, value: T) {
        self.finish(Some(value));
    }

    fn finish(&mut self, value: Option<T>) {
        let Some(shared) = self.0.take() else { return };
        let waker = {
            let mut slot = lock(&shared);
            slot.value = value;
            slot.done = true;
            slot.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T> Drop for ReplySender<T> {
    fn drop(&mut self) {
        self.finish(None);
    }
}

impl<T> Future for Reply<T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut slot = lock(&self.0);
        if slot.done {
            return Poll::Ready(slot.value.take());
        }
        match &slot.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    #[test]
    fn a_sent_value_arrives_and_a_dropped_sender_ends_the_wait() {
        let (sender, reply) = channel();
        sender.send(7);
        assert_eq!(reply.now_or_never(), Some(Some(7)));
        let (sender, reply) = channel::<u8>();
        drop(sender);
        assert_eq!(reply.now_or_never(), Some(None));
    }

    /// A caller that waits is woken by the send (from another thread).
    #[test]
    fn a_waiting_caller_is_woken() {
        let (sender, reply) = channel();
        let thread = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(5));
            sender.send("done");
        });
        assert_eq!(futures::executor::block_on(reply), Some("done"));
        assert!(thread.join().is_ok());
        let (sender, reply) = channel::<u8>();
        let thread = std::thread::spawn(move || drop(sender));
        assert_eq!(futures::executor::block_on(reply), None);
        assert!(thread.join().is_ok());
    }

    /// A caller that gave up leaves the value to be dropped with the slot.
    #[test]
    fn sending_to_a_caller_that_gave_up_drops_the_value() {
        let (sender, reply) = channel();
        drop(reply);
        let value = Arc::new(());
        sender.send(value.clone());
        assert_eq!(Arc::strong_count(&value), 1);
    }
}
