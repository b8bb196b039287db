//! The small runtime interface the node needs (spawning tasks and sleeping), and adapters for
//! tokio, smol and async-std behind the cargo features of the same names.

use std::time::Duration;

use futures::future::BoxFuture;

#[cfg(feature = "async-std")]
mod async_std_rt;
#[cfg(feature = "smol")]
mod smol_rt;
#[cfg(feature = "tokio")]
mod tokio_rt;

#[cfg(feature = "async-std")]
pub use async_std_rt::AsyncStdRuntime;
#[cfg(feature = "smol")]
pub use smol_rt::SmolRuntime;
#[cfg(feature = "tokio")]
pub use tokio_rt::TokioRuntime;

/// Spawning and timers, supplied by the application so that `raft-core` depends on no runtime.
///
/// The node spawns a handful of long-lived tasks (its main loop, the log writer, the applier,
/// one sender per peer, the ticker) and tracks their completion itself: `spawn` may detach.
pub trait Runtime: Send + Sync + 'static {
    /// Runs `future` to completion in the background.
    fn spawn(&self, future: BoxFuture<'static, ()>);

    /// A future that completes after `duration`.
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;
}

impl<R: Runtime + ?Sized> Runtime for std::sync::Arc<R> {
    fn spawn(&self, future: BoxFuture<'static, ()>) {
        (**self).spawn(future)
    }
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        (**self).sleep(duration)
    }
}
