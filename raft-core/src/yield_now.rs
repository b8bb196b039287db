//! A runtime-agnostic yield: the one way the driver and the transports let the other ready
//! tasks run before they go on.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Returns a future that is `Pending` once, after waking its task, then `Ready`: every task
/// already waiting to run gets its turn before the caller goes on (tokio queues a task that
/// woke itself behind the others; a first-in first-out executor such as smol's does so anyway).
/// Costs one trip through the runtime's run queue, never a timer. The driver uses it to let
/// proposers ready to run join the next step; raft-quic to let requests issued together join
/// one frame.
pub fn yield_now() -> YieldNow {
    YieldNow { yielded: false }
}

/// The future of [`yield_now`].
#[derive(Debug)]
#[must_use = "a yield does nothing unless awaited"]
pub struct YieldNow {
    yielded: bool,
}

impl Future for YieldNow {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::task::noop_waker_ref;

    #[test]
    fn pending_once_then_ready() {
        let mut cx = Context::from_waker(noop_waker_ref());
        let mut yielding = yield_now();
        assert!(Pin::new(&mut yielding).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut yielding).poll(&mut cx).is_ready());
    }
}
