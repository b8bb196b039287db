use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;

use super::Runtime;

/// Runs the node on async-std. async-std is deprecated upstream in favour of smol; this adapter
/// exists for applications that still use it.
#[derive(Clone, Copy, Debug, Default)]
pub struct AsyncStdRuntime;

impl Runtime for AsyncStdRuntime {
    fn spawn(&self, future: BoxFuture<'static, ()>) {
        drop(async_std::task::spawn(future));
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        async_std::task::sleep(duration).boxed()
    }

    fn now(&self) -> Duration {
        super::monotonic_now()
    }
}
