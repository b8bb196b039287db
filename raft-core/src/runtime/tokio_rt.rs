use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;

use super::Runtime;

/// Runs the node on a tokio runtime.
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
        tokio::time::sleep(duration).boxed()
    }

    fn now(&self) -> Duration {
        super::monotonic_now()
    }
}
