use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;

use super::Runtime;

/// Runs the node on smol's global executor (or any executor driving `smol::spawn` tasks) with
/// `async-io` timers.
#[derive(Clone, Copy, Debug, Default)]
pub struct SmolRuntime;

impl Runtime for SmolRuntime {
    fn spawn(&self, future: BoxFuture<'static, ()>) {
        smol::spawn(future).detach();
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
