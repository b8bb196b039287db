//! The small runtime interface the node needs (spawning tasks, sleeping and a monotonic clock),
//! and adapters for tokio, smol and async-std behind the cargo features of the same names.

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

    /// A monotonic clock: the time since an arbitrary origin that stays fixed for as long as
    /// the node runs (clones of the runtime share it). It never goes backwards, and it must
    /// keep counting while the process is paused or the machine is suspended: lease reads
    /// (`Config::lease_reads`) rely on it to know that a lease ran out meanwhile. The adapters
    /// use [`monotonic_now`]; a runtime with virtual time (a simulation) returns its virtual
    /// time, the same time its `sleep` follows.
    fn now(&self) -> Duration;
}

impl<R: Runtime + ?Sized> Runtime for std::sync::Arc<R> {
    fn spawn(&self, future: BoxFuture<'static, ()>) {
        (**self).spawn(future)
    }
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        (**self).sleep(duration)
    }
    fn now(&self) -> Duration {
        (**self).now()
    }
}

/// The operating system's monotonic clock, as the adapters' [`Runtime::now`]: the time since
/// boot on Linux and Android (`CLOCK_BOOTTIME`, which unlike `CLOCK_MONOTONIC` and
/// [`std::time::Instant`] keeps counting while the machine is suspended, so a leader that was
/// suspended sees its lease expired), and [`std::time::Instant`] since the first call in this
/// process elsewhere. Both keep counting while the process is stopped (SIGSTOP) or descheduled.
/// On platforms where `Instant` stops during system suspend (macOS), a suspended leader could
/// serve lease reads after resuming: do not enable lease reads there on machines that sleep.
pub fn monotonic_now() -> Duration {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
        let secs = u64::try_from(t.tv_sec).unwrap_or(0);
        let nanos = u32::try_from(t.tv_nsec).unwrap_or(0);
        Duration::new(secs, nanos)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        ORIGIN.get_or_init(std::time::Instant::now).elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_os_clock_is_monotonic_and_counts_sleep() {
        let start = monotonic_now();
        std::thread::sleep(Duration::from_millis(5));
        let later = monotonic_now();
        assert!(later >= start + Duration::from_millis(5), "{start:?} -> {later:?}");
        assert!(monotonic_now() >= later);
    }
}
