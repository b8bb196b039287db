//! Timeouts on the caller's runtime, through quinn's runtime trait (`Runtime::new_timer`), so
//! they work identically on tokio, smol and async-std.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{select, Either};
use quinn::{AsyncTimer, Runtime};

/// A future that completes once the runtime's clock reaches a deadline.
#[derive(Debug)]
pub(crate) struct Sleep(Pin<Box<dyn AsyncTimer>>);

impl Sleep {
    /// Completes `duration` from now.
    pub(crate) fn new(runtime: &dyn Runtime, duration: Duration) -> Self {
        let deadline = runtime.now() + duration;
        Sleep(runtime.new_timer(deadline))
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        AsyncTimer::poll(self.0.as_mut(), cx)
    }
}

/// The deadline passed before the future completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Elapsed;

/// Runs `future` for at most `duration`; on expiry the future is dropped.
pub(crate) async fn timeout<F: Future>(
    runtime: &dyn Runtime,
    duration: Duration,
    future: F,
) -> Result<F::Output, Elapsed> {
    let future = std::pin::pin!(future);
    match select(future, Sleep::new(runtime, duration)).await {
        Either::Left((output, _)) => Ok(output),
        Either::Right(((), _)) => Err(Elapsed),
    }
}
