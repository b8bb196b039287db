//! The log writer task: hands `Persist` batches to the store in order, merging those that queue
//! up meanwhile into one store call (group commit at the node level), and reports each one
//! durable to the main loop in the same order.
//!
//! With a store that keeps one write at a time ([`LogStore::max_writes_in_flight`] is 1, the
//! default) a batch is submitted only once the previous one is durable. A store that pipelines
//! gets up to that many batches before the first is durable: the next batch is queued in the
//! store while the previous one syncs. Completions are still awaited and reported strictly in
//! submission order, and the store completes a batch only once it and every batch before it is
//! durable (the trait's promises), so every `Persisted` the main loop sees covers a durable
//! prefix of the log.

use std::collections::VecDeque;
use std::sync::Arc;

use async_channel::{Receiver, Sender};
use futures::future::{self, Either};

use super::Input;
use crate::engine::PersistedWrite;
use crate::metrics::NodeMetrics;
use crate::storage::{LogStore, PendingWrite, StorageError, WriteBatch};

/// A batch and its sequence number (batches are numbered 1, 2, ... in emission order).
pub(super) struct WriteRequest {
    pub(super) seq: u64,
    pub(super) batch: WriteBatch,
}

/// At most this many entries go into one merged write.
const MAX_MERGED_ENTRIES: usize = 65_536;

/// What the writer does next.
enum Step {
    /// Merge this batch with those queued behind it and submit them.
    Submit(WriteRequest),
    /// The oldest write in flight finished.
    Done(Result<(), StorageError>),
    /// The node stopped.
    Stop,
}

/// A batch handed to the store and not yet reported durable.
struct InFlight {
    seq: u64,
    written: PersistedWrite,
    entries: usize,
    started: std::time::Duration,
    pending: PendingWrite,
}

pub(super) async fn run<S: LogStore>(
    store: S,
    requests: Receiver<WriteRequest>,
    inputs: Sender<Input>,
    metrics: Arc<NodeMetrics>,
) {
    let depth = store.max_writes_in_flight().max(1);
    let mut in_flight: VecDeque<InFlight> = VecDeque::with_capacity(depth);
    loop {
        // Take a new batch when there is room in the pipeline, else (or when none comes first)
        // wait for the oldest write to be durable.
        let room = in_flight.len() < depth;
        let step = match in_flight.front_mut() {
            None => match requests.recv().await {
                Ok(first) => Step::Submit(first),
                Err(_) => Step::Stop,
            },
            Some(oldest) if room => {
                let next = std::pin::pin!(requests.recv());
                match future::select(next, &mut oldest.pending).await {
                    Either::Left((Ok(first), _)) => Step::Submit(first),
                    Either::Left((Err(_), _)) => Step::Stop,
                    Either::Right((result, _)) => Step::Done(result),
                }
            }
            Some(oldest) => Step::Done((&mut oldest.pending).await),
        };
        let first = match step {
            Step::Submit(first) => first,
            // The node stopped: nothing more will be reported.
            Step::Stop => return,
            Step::Done(result) => {
                if !report(&mut in_flight, result, &inputs, &metrics).await {
                    return;
                }
                continue;
            }
        };
        let (seq, batch) = merge_queued(first, &requests);
        let written = PersistedWrite::of(&batch);
        let entries = batch.entries.len();
        let started = metrics.now();
        match store.submit_write(batch).await {
            Ok(pending) => {
                in_flight.push_back(InFlight { seq, written, entries, started, pending })
            }
            Err(error) => {
                // Nothing after a failed submission may be acknowledged; what is in flight
                // before it is reported first (it may be durable), then the failure.
                while let Some(oldest) = in_flight.front_mut() {
                    let result = (&mut oldest.pending).await;
                    if !report(&mut in_flight, result, &inputs, &metrics).await {
                        return;
                    }
                }
                metrics.log_write_done(entries, started, false);
                let _ = inputs.send(Input::Persisted { seq, written, result: Err(error) }).await;
                return;
            }
        }
    }
}

/// Merges the batches queued behind `first` into it (up to [`MAX_MERGED_ENTRIES`]); returns the
/// sequence number of the last one merged and the merged batch.
fn merge_queued(first: WriteRequest, requests: &Receiver<WriteRequest>) -> (u64, WriteBatch) {
    let mut seq = first.seq;
    let mut batch = first.batch;
    while batch.entries.len() < MAX_MERGED_ENTRIES {
        match requests.try_recv() {
            Ok(next) => {
                seq = next.seq;
                batch.merge(next.batch);
            }
            Err(_) => break,
        }
    }
    (seq, batch)
}

/// Reports the oldest write in flight, which finished with `result`, to the main loop. Returns
/// false when the writer must stop: the node stopped, or the store failed (nothing more may be
/// acknowledged).
async fn report(
    in_flight: &mut VecDeque<InFlight>,
    result: Result<(), StorageError>,
    inputs: &Sender<Input>,
    metrics: &NodeMetrics,
) -> bool {
    let Some(done) = in_flight.pop_front() else { return false };
    let failed = result.is_err();
    metrics.log_write_done(done.entries, done.started, !failed);
    let persisted = Input::Persisted { seq: done.seq, written: done.written, result };
    inputs.send(persisted).await.is_ok() && !failed
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use std::ops::Range;
    use std::sync::Mutex;

    use async_trait::async_trait;
    use futures::channel::oneshot;
    use futures::executor::LocalPool;
    use futures::future::BoxFuture;
    use futures::task::LocalSpawnExt;
    use futures::FutureExt;

    use super::*;
    use crate::runtime::Runtime;
    use crate::storage::DurableState;
    use crate::types::{Entry, EntryPayload, LogId, LogIndex};

    /// A clock for the metrics; the writer spawns nothing and never sleeps.
    struct NoRuntime;

    impl Runtime for NoRuntime {
        fn spawn(&self, _: BoxFuture<'static, ()>) {}
        fn sleep(&self, _: std::time::Duration) -> BoxFuture<'static, ()> {
            futures::future::pending().boxed()
        }
        fn now(&self) -> std::time::Duration {
            std::time::Duration::ZERO
        }
    }

    /// A store whose writes finish when the test says so. `depth` is its
    /// `max_writes_in_flight`; with `None` it keeps the trait's default (one write at a time,
    /// through `write`).
    #[derive(Default)]
    struct Gated {
        depth: Option<usize>,
        /// The first index of each batch handed to the store, in order.
        started: Mutex<Vec<LogIndex>>,
        /// Finishes each started batch, in the same order.
        finish: Mutex<Vec<Option<oneshot::Sender<()>>>>,
    }

    impl Gated {
        fn start(&self, batch: &WriteBatch) -> oneshot::Receiver<()> {
            let (tx, rx) = oneshot::channel();
            self.started.lock().unwrap().push(batch.entries[0].index);
            self.finish.lock().unwrap().push(Some(tx));
            rx
        }
        fn complete(&self, nth: usize) {
            let tx = self.finish.lock().unwrap()[nth].take().unwrap();
            tx.send(()).unwrap();
        }
        fn started(&self) -> Vec<LogIndex> {
            self.started.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl LogStore for Arc<Gated> {
        async fn open(&self) -> Result<DurableState, StorageError> {
            Ok(DurableState::default())
        }
        async fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
            self.start(&batch).await.map_err(|_| StorageError::Closed)
        }
        fn max_writes_in_flight(&self) -> usize {
            self.depth.unwrap_or(1)
        }
        async fn submit_write(&self, batch: WriteBatch) -> Result<PendingWrite, StorageError> {
            if self.depth.is_none() {
                let result = self.write(batch).await;
                return Ok(Box::pin(async move { result }));
            }
            let done = self.start(&batch);
            Ok(Box::pin(async move { done.await.map_err(|_| StorageError::Closed) }))
        }
        async fn read(&self, _: Range<LogIndex>, _: u64) -> Result<Vec<Entry>, StorageError> {
            Ok(Vec::new())
        }
        async fn purge(&self, _: LogIndex) -> Result<(), StorageError> {
            Ok(())
        }
    }

    fn request(seq: u64) -> WriteRequest {
        let entry = Entry { index: seq, term: 1, payload: EntryPayload::Blank };
        WriteRequest { seq, batch: WriteBatch { entries: vec![entry], ..WriteBatch::default() } }
    }

    /// The `seq` and last entry of each `Persisted` reported so far.
    fn reported(inputs: &async_channel::Receiver<Input>) -> Vec<(u64, Option<LogId>)> {
        let mut out = Vec::new();
        while let Ok(input) = inputs.try_recv() {
            match input {
                Input::Persisted { seq, written, result } => {
                    result.unwrap();
                    out.push((seq, written.last_entry));
                }
                _ => panic!("the writer reports only writes"),
            }
        }
        out
    }

    struct Harness {
        pool: LocalPool,
        store: Arc<Gated>,
        requests: async_channel::Sender<WriteRequest>,
        inputs: async_channel::Receiver<Input>,
    }

    fn harness(depth: Option<usize>) -> Harness {
        let store = Arc::new(Gated { depth, ..Gated::default() });
        let (requests, requests_rx) = async_channel::unbounded();
        let (inputs_tx, inputs) = async_channel::unbounded();
        let metrics = Arc::new(NodeMetrics::new(1, &[], Arc::new(NoRuntime)));
        let pool = LocalPool::new();
        pool.spawner().spawn_local(run(store.clone(), requests_rx, inputs_tx, metrics)).unwrap();
        Harness { pool, store, requests, inputs }
    }

    impl Harness {
        fn send(&mut self, seq: u64) {
            self.requests.try_send(request(seq)).unwrap();
            self.pool.run_until_stalled();
        }
        fn complete(&mut self, nth: usize) {
            self.store.complete(nth);
            self.pool.run_until_stalled();
        }
    }

    /// A pipelining store gets the next batch while the previous one is in flight, and the
    /// main loop hears of each batch only once it and every batch before it are done, in
    /// order, even when the store finishes a later one first.
    #[test]
    fn a_pipelining_store_gets_batches_in_flight_and_they_are_reported_in_order() {
        let mut h = harness(Some(2));
        h.send(1);
        h.send(2);
        assert_eq!(h.store.started(), vec![1, 2], "the second batch starts before the first ends");
        h.send(3);
        assert_eq!(h.store.started(), vec![1, 2], "at most two in flight");
        h.complete(1);
        assert_eq!(reported(&h.inputs), vec![], "batch 2 is not reported before batch 1");
        h.complete(0);
        let one = LogId::new(1, 1);
        let two = LogId::new(1, 2);
        assert_eq!(reported(&h.inputs), vec![(1, Some(one)), (2, Some(two))]);
        assert_eq!(h.store.started(), vec![1, 2, 3], "room again: batch 3 starts");
        h.complete(2);
        assert_eq!(reported(&h.inputs), vec![(3, Some(LogId::new(1, 3)))]);
    }

    /// A store that does not opt in keeps one write at a time: batches queued meanwhile are
    /// merged into the next write, which starts only once the previous one is durable.
    #[test]
    fn a_store_without_pipelining_gets_one_write_at_a_time() {
        let mut h = harness(None);
        h.send(1);
        h.send(2);
        h.send(3);
        assert_eq!(h.store.started(), vec![1]);
        h.complete(0);
        assert_eq!(reported(&h.inputs), vec![(1, Some(LogId::new(1, 1)))]);
        assert_eq!(h.store.started(), vec![1, 2], "batches 2 and 3 merged into one write");
        h.complete(1);
        assert_eq!(reported(&h.inputs), vec![(3, Some(LogId::new(1, 3)))]);
    }
}
