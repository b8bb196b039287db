//! [`Clock`]: the time the client's attempt loop and the server's request bounds follow, so
//! that the same code runs on tokio with the operating system's clock ([`TokioClock`]) and in
//! a deterministic simulation with virtual time (any [`raft_core::Runtime`], such as
//! `raft_mem::sim::SimRuntime`).

use std::future::Future;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;

/// A monotonic clock and its timers.
pub trait Clock: std::fmt::Debug + Send + Sync + 'static {
    /// The time since an arbitrary origin that stays fixed for the clock's life; never goes
    /// backwards.
    fn now(&self) -> Duration;

    /// A future that completes once `duration` has passed on this clock (at once for zero).
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;
}

/// Every runtime is a clock: its `now` and its `sleep` (virtual time in a simulation).
impl<R: raft_core::Runtime + std::fmt::Debug> Clock for R {
    fn now(&self) -> Duration {
        raft_core::Runtime::now(self)
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        raft_core::Runtime::sleep(self, duration)
    }
}

/// The operating system's monotonic clock with tokio's timers: its sleeps must be polled
/// inside a tokio runtime (as the QUIC client and the node's client port are).
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    fn now(&self) -> Duration {
        raft_core::runtime::monotonic_now()
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        tokio::time::sleep(duration).boxed()
    }
}

/// Runs `work` for at most `limit` on `clock`: its output, or `None` if the time ran out first
/// (`work` is then dropped).
pub async fn within<T>(
    clock: &dyn Clock,
    limit: Duration,
    work: impl Future<Output = T>,
) -> Option<T> {
    let expired = clock.sleep(limit).fuse();
    let work = work.fuse();
    futures::pin_mut!(work, expired);
    futures::select_biased! {
        output = work => Some(output),
        () = expired => None,
    }
}
