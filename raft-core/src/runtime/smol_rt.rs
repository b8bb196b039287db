use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;

use super::Runtime;

/// Runs the node on smol: on smol's global executor ([`SmolRuntime::global`], also the value
/// `SmolRuntime`), or on an executor of the application's ([`SmolRuntime::with_executor`]),
/// with `async-io` timers (which work from any thread).
#[derive(Clone, Debug, Default)]
pub struct SmolRuntime {
    /// `None`: smol's global executor.
    executor: Option<Arc<smol::Executor<'static>>>,
}

/// smol's global executor: the same as [`SmolRuntime::global()`], kept as a value so that
/// `SmolRuntime` reads as it did when the adapter was a unit struct.
#[allow(non_upper_case_globals)]
pub const SmolRuntime: SmolRuntime = SmolRuntime { executor: None };

impl SmolRuntime {
    /// Spawns on smol's global executor (`smol::spawn`).
    pub fn global() -> Self {
        Self { executor: None }
    }

    /// Spawns on `executor`. The application must keep running it (`Executor::run` on some
    /// thread) for as long as the node runs.
    pub fn with_executor(executor: Arc<smol::Executor<'static>>) -> Self {
        Self { executor: Some(executor) }
    }
}

impl Runtime for SmolRuntime {
    fn spawn(&self, future: BoxFuture<'static, ()>) {
        match &self.executor {
            Some(executor) => executor.spawn(future).detach(),
            None => smol::spawn(future).detach(),
        }
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        async move {
            smol::Timer::after(duration).await;
        }
        .boxed()
    }

    fn now(&self) -> Duration {
        super::monotonic_now()
    }
}
