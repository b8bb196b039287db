//! [`Offload`]: one helper thread per network that decodes large frames, so that a 16 MiB
//! request (about 10 ms of decoding; 20 ms for the most elements a frame may hold) never stalls
//! the runtime's worker threads, which the Raft core shares.
//!
//! The thread outlives every job: a job that panics fails alone (its caller gets `None`), and a
//! job whose caller stopped waiting (its stream was reset, its RPC timed out) is skipped rather
//! than decoded for nobody.

use std::panic::{catch_unwind, AssertUnwindSafe};

use futures::channel::oneshot;
use tracing::error;

/// Bodies larger than this are decoded on the helper thread; smaller ones in place (moving
/// them would cost more than decoding them).
pub(crate) const OFFLOAD_ABOVE: usize = 256 << 10;

/// How many jobs may wait for the helper thread; senders wait beyond.
const QUEUE: usize = 64;

/// A job: runs its work unless its caller is gone.
type Job = Box<dyn FnOnce() + Send>;

/// A helper thread running jobs in order. It ends when the last handle is dropped.
#[derive(Debug, Clone)]
pub(crate) struct Offload {
    jobs: async_channel::Sender<Job>,
}

impl Offload {
    /// Starts the helper thread, named `name`.
    pub(crate) fn start(name: String) -> std::io::Result<Self> {
        let (jobs, queue) = async_channel::bounded::<Job>(QUEUE);
        let thread = name.clone();
        std::thread::Builder::new().name(name).spawn(move || {
            while let Ok(job) = queue.recv_blocking() {
                // A panicking job drops its result sender: its caller sees `None`.
                if catch_unwind(AssertUnwindSafe(job)).is_err() {
                    error!(thread, "a decoding job panicked; the thread carries on");
                }
            }
        })?;
        Ok(Self { jobs })
    }

    /// Runs `work` on the helper thread and returns its result: `None` if the thread is gone or
    /// `work` panicked. If this future is dropped before the job starts, `work` never runs.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            if !done.is_canceled() {
                let _ = done.send(work());
            }
        });
        self.jobs.send(job).await.ok()?;
        result.await.ok()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, clippy::panic)]

    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use futures::FutureExt;

    use super::*;

    #[test]
    fn runs_work_off_the_calling_thread() {
        let offload = Offload::start("test-offload".into()).expect("a thread");
        let caller = std::thread::current().id();
        let ran_on = futures::executor::block_on(offload.run(|| std::thread::current().id()));
        assert!(ran_on.is_some_and(|id| id != caller));
        assert_eq!(futures::executor::block_on(offload.run(|| 6 * 7)), Some(42));
    }

    #[test]
    fn a_panicking_job_fails_alone() {
        let offload = Offload::start("test-offload-panic".into()).expect("a thread");
        let failed = futures::executor::block_on(offload.run(|| -> u32 { panic!("bad job") }));
        assert_eq!(failed, None);
        // The thread survived: later jobs still run (they used to get `None` forever).
        assert_eq!(futures::executor::block_on(offload.run(|| 7)), Some(7));
    }

    #[test]
    fn a_job_whose_caller_is_gone_is_skipped() {
        let offload = Offload::start("test-offload-cancel".into()).expect("a thread");
        // Hold the thread with a first job until the second is queued and abandoned.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let first = offload.run(move || held.recv().is_ok());
        let mut first = Box::pin(first);
        assert!(first.as_mut().now_or_never().is_none());
        let ran = Arc::new(AtomicBool::new(false));
        let mut second = Box::pin(offload.run({
            let ran = ran.clone();
            move || ran.store(true, Ordering::SeqCst)
        }));
        assert!(second.as_mut().now_or_never().is_none(), "queued behind the first job");
        drop(second);
        release.send(()).expect("the first job waits");
        assert_eq!(futures::executor::block_on(first), Some(true));
        // Jobs run in order: once a third one ran, the second was skipped, not delayed.
        assert_eq!(futures::executor::block_on(offload.run(|| 3)), Some(3));
        assert!(!ran.load(Ordering::SeqCst), "the abandoned job was run");
    }
}
