//! [`Offload`]: one helper thread per network that decodes large frames, so that a 16 MiB
//! request (about 10 ms of decoding; 20 ms for the most elements a frame may hold) never stalls
//! the runtime's worker threads, which the Raft core shares.

use futures::channel::oneshot;

/// Bodies larger than this are decoded on the helper thread; smaller ones in place (moving
/// them would cost more than decoding them).
pub(crate) const OFFLOAD_ABOVE: usize = 256 << 10;

/// How many jobs may wait for the helper thread; senders wait beyond.
const QUEUE: usize = 64;

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
        std::thread::Builder::new().name(name).spawn(move || {
            while let Ok(job) = queue.recv_blocking() {
                job();
            }
        })?;
        Ok(Self { jobs })
    }

    /// Runs `work` on the helper thread and returns its result (`None` if the thread is gone).
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(work());
        });
        self.jobs.send(job).await.ok()?;
        result.await.ok()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]

    use super::*;

    #[test]
    fn runs_work_off_the_calling_thread() {
        let offload = Offload::start("test-offload".into()).expect("a thread");
        let caller = std::thread::current().id();
        let ran_on = futures::executor::block_on(offload.run(|| std::thread::current().id()));
        assert!(ran_on.is_some_and(|id| id != caller));
        assert_eq!(futures::executor::block_on(offload.run(|| 6 * 7)), Some(42));
    }
}
