use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;

use super::Runtime;

/// Runs the node on a tokio runtime, from any thread: tasks are spawned on, and timers
/// registered with, the runtime behind the stored handle, so a node (and its
/// `change_membership`, `add_voter`, `transfer_leadership`, which sleep) can be driven from a
/// thread that is not in that runtime's context.
#[derive(Clone, Debug)]
pub struct TokioRuntime {
    handle: tokio::runtime::Handle,
}

impl TokioRuntime {
    /// Uses the runtime of the calling context. Returns `None` outside a tokio runtime.
    pub fn current() -> Option<Self> {
        tokio::runtime::Handle::try_current().ok().map(|handle| Self { handle })
    }

    /// Uses the runtime behind `handle`.
    pub fn from_handle(handle: tokio::runtime::Handle) -> Self {
        Self { handle }
    }
}

impl Runtime for TokioRuntime {
    fn spawn(&self, future: BoxFuture<'static, ()>) {
        drop(self.handle.spawn(future));
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        // A tokio timer binds to the runtime entered when it is created (and panics if none
        // is): enter ours, whatever thread this is.
        let _entered = self.handle.enter();
        tokio::time::sleep(duration).boxed()
    }

    fn now(&self) -> Duration {
        super::monotonic_now()
    }
}
