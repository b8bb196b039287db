//! Log writes: the main loop starts each write itself when nothing is being written, and
//! finishes it in the same step if the store's future is ready at its first poll (an in-memory
//! store); a write still pending then, and every write issued while one is in progress, goes to
//! the log writer task, which writes them in order, merging the batches that queue up while a
//! write is in progress into one store call (group commit at the node level).
//!
//! A node whose main loop a host loop runs (`Host::with_loop`, plan S2) has no log writer
//! task: its [`InlineWriter`] keeps the pending write and the batches queued behind it, and
//! the host loop polls the write in the group's turn with the group's waker; the batches are
//! merged by the same rule ([`merge_queued`]) and the write's report is handled by the main
//! loop as the task's.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_channel::{Receiver, Sender};
use futures::future::BoxFuture;
use futures::FutureExt;

use super::supervisor::panic_message;
use super::Input;
use crate::engine::PersistedWrite;
use crate::error::FatalError;
use crate::metrics::NodeMetrics;
use crate::storage::{LogStore, StorageError, WriteBatch};

/// A batch and its sequence number (batches are numbered 1, 2, ... in emission order).
pub(super) struct WriteRequest {
    pub(super) seq: u64,
    pub(super) batch: WriteBatch,
}

/// What the main loop hands to the log writer task.
pub(super) enum WriterMsg {
    /// A batch to write (merged with the batches queued behind it).
    Batch(WriteRequest),
    /// A write the main loop started (nothing else was being written) and found pending: the
    /// task finishes it before anything queued behind it.
    Started(Write),
}

/// Starts `LogStore::write` calls on the node's store (shared by the main loop and the task).
pub(super) type StartWrite = Arc<dyn Fn(WriteBatch) -> WriteFuture + Send + Sync>;

type WriteFuture = BoxFuture<'static, Result<(), StorageError>>;

/// The `StartWrite` of `store`.
pub(super) fn start_write<S: LogStore>(store: Arc<S>) -> StartWrite {
    Arc::new(move |batch| {
        let store = store.clone();
        async move { store.write(batch).await }.boxed()
    })
}

/// One `LogStore::write` call in progress, with what to report when it is done.
pub(super) struct Write {
    seq: u64,
    written: PersistedWrite,
    entries: usize,
    started: Duration,
    future: WriteFuture,
}

/// How a write ended.
pub(super) struct Written {
    /// The sequence number of the last batch it holds.
    pub(super) seq: u64,
    pub(super) written: PersistedWrite,
    pub(super) result: Result<(), Arc<StorageError>>,
    /// When the store's future resolved (the runtime's clock).
    pub(super) ended: Duration,
}

impl Write {
    /// Starts writing `batch`, the batch of sequence number `seq` (and those before it).
    pub(super) fn start(
        start: &StartWrite,
        metrics: &NodeMetrics,
        seq: u64,
        batch: WriteBatch,
    ) -> Self {
        let written = PersistedWrite::of(&batch);
        let entries = batch.entries.len();
        let started = metrics.now();
        Self { seq, written, entries, started, future: start(batch) }
    }

    /// Polls the write once, in the caller's task, without registering for a wake-up (whoever
    /// finishes a pending write polls it again). A panic in the store is caught and reported
    /// as the log writer's, as if the task had run it.
    pub(super) fn poll_once(
        &mut self,
        metrics: &NodeMetrics,
    ) -> Result<Option<Written>, FatalError> {
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        self.poll(&mut cx, metrics)
    }

    /// Polls the write once with `cx` (a panic in the store is caught, as in
    /// [`Write::poll_once`]).
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        metrics: &NodeMetrics,
    ) -> Result<Option<Written>, FatalError> {
        let future = &mut self.future;
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx)));
        match polled {
            Ok(Poll::Ready(result)) => Ok(Some(self.finish(metrics, result))),
            Ok(Poll::Pending) => Ok(None),
            Err(payload) => {
                let message = panic_message(payload.as_ref());
                // User code's payload: its drop must not unwind into the caller either.
                super::Hosted::drop_payload(payload);
                Err(FatalError::Panicked { task: "log writer".to_owned(), message })
            }
        }
    }

    /// Waits for the write to end.
    async fn wait(mut self, metrics: &NodeMetrics) -> Written {
        let result = (&mut self.future).await;
        self.finish(metrics, result)
    }

    fn finish(&self, metrics: &NodeMetrics, result: Result<(), StorageError>) -> Written {
        let ended = metrics.now();
        metrics.log_write_done(self.entries, self.started, ended, result.is_ok());
        let result = result.map_err(Arc::new);
        Written { seq: self.seq, written: self.written, result, ended }
    }
}

/// At most this many entries go into one merged write.
const MAX_MERGED_ENTRIES: usize = 65_536;

/// Merges into `first` the batches `more` gives, in order, until it gives none or the merged
/// batch holds [`MAX_MERGED_ENTRIES`] entries: one store call for the batches that queued up
/// while a write was in progress (the log writer task's rule, and the inline writer's).
fn merge_queued(
    first: WriteRequest,
    mut more: impl FnMut() -> Option<WriteRequest>,
) -> WriteRequest {
    let WriteRequest { mut seq, mut batch } = first;
    while batch.entries.len() < MAX_MERGED_ENTRIES {
        match more() {
            Some(next) => {
                seq = next.seq;
                batch.merge(next.batch);
            }
            None => break,
        }
    }
    WriteRequest { seq, batch }
}

/// The log writer task (tasks mode): writes the batches the main loop hands it, in order,
/// merging those queued behind each other, and reports each write as `Input::Persisted`.
/// Ends when its queue is closed, the node's input queue is closed, or a write failed.
pub(super) async fn run(
    start: StartWrite,
    requests: Receiver<WriterMsg>,
    inputs: Sender<Input>,
    metrics: Arc<NodeMetrics>,
) {
    let mut next = None;
    loop {
        let message = match next.take() {
            Some(message) => message,
            None => match requests.recv().await {
                Ok(message) => message,
                Err(_) => return,
            },
        };
        let write = match message {
            WriterMsg::Started(write) => write,
            WriterMsg::Batch(first) => {
                let more = || match requests.try_recv() {
                    Ok(WriterMsg::Batch(more)) => Some(more),
                    Ok(started @ WriterMsg::Started(_)) => {
                        // Unreachable: the main loop starts a write itself only when no
                        // write is outstanding, so a started one never follows a queued
                        // batch (its store call began first and must finish first).
                        debug_assert!(false, "a started write queued behind a batch");
                        next = Some(started);
                        None
                    }
                    Err(_) => None,
                };
                let WriteRequest { seq, batch } = merge_queued(first, more);
                Write::start(&start, &metrics, seq, batch)
            }
        };
        let Written { seq, written, result, ended } = write.wait(&metrics).await;
        let failed = result.is_err();
        let done = Input::Persisted { seq, written, result, ended };
        if inputs.send(done).await.is_err() || failed {
            // The node stopped, or the store failed: nothing more may be acknowledged.
            return;
        }
    }
}

/// The log writes of a node whose main loop a host loop runs (plan S2): no log writer task.
/// At most one write is in flight, kept here; the batches issued meanwhile queue here and go
/// to the store merged into one call (the task's rule, [`merge_queued`]) once it ended. The
/// host loop polls the write in the group's turn ([`InlineWriter::poll`]), with the group's
/// waker, and the main loop handles the report as the task's. After a failed (or panicked)
/// write nothing more reaches the store, as the task ends after one.
pub(super) struct InlineWriter {
    start: StartWrite,
    metrics: Arc<NodeMetrics>,
    /// The write handed to the store and not ended yet.
    in_flight: Option<Write>,
    /// Batches issued while a write is in flight, in order.
    queued: VecDeque<WriteRequest>,
    /// A write failed (or the node stops): no more store calls.
    closed: bool,
}

impl InlineWriter {
    /// A writer with nothing in flight.
    pub(super) fn new(start: StartWrite, metrics: Arc<NodeMetrics>) -> Self {
        Self { start, metrics, in_flight: None, queued: VecDeque::new(), closed: false }
    }

    /// Whether a write is in flight (a new batch must then queue behind it).
    pub(super) fn busy(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Keeps `write`, started by the main loop and found pending at its first poll, in flight.
    pub(super) fn started(&mut self, write: Write) {
        debug_assert!(self.in_flight.is_none() && self.queued.is_empty());
        if self.closed {
            return; // unreachable: the main loop starts no write once the writer is closed
        }
        self.in_flight = Some(write);
    }

    /// Queues `request` behind the write in flight. Dropped once the writer is closed.
    pub(super) fn queue(&mut self, request: WriteRequest) {
        if !self.closed {
            self.queued.push_back(request);
        }
    }

    /// Lets nothing more reach the store (a write failed, or the node stops): the queued
    /// batches are dropped; a write in flight stays (see [`InlineWriter::take_in_flight`]).
    pub(super) fn close(&mut self) {
        self.closed = true;
        self.queued.clear();
    }

    /// Whether the writer is closed.
    pub(super) fn is_closed(&self) -> bool {
        self.closed
    }

    /// Polls the write in flight with `cx` (a panic in the store is caught, as in
    /// [`Write::poll_once`]). When it ended, returns its report, `Input::Persisted` (or
    /// `Input::Fatal` for a panic: task "log writer", as the task reports one), and starts
    /// the batches queued behind it, merged, without polling them yet; after a failure,
    /// nothing more.
    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> Option<Input> {
        // Taken out first: should anything below unwind (a metrics recorder), no ended or
        // panicked write is left in flight to be polled again (`take_in_flight`).
        let mut write = self.in_flight.take()?;
        let polled = write.poll(cx, &self.metrics);
        let report = match polled {
            Ok(None) => {
                self.in_flight = Some(write);
                return None;
            }
            Ok(Some(Written { seq, written, result, ended })) => {
                if result.is_err() {
                    self.close();
                }
                Input::Persisted { seq, written, result, ended }
            }
            Err(panicked) => {
                self.close();
                Input::Fatal(panicked)
            }
        };
        drop(write);
        if !self.closed {
            if let Some(first) = self.queued.pop_front() {
                let queued = &mut self.queued;
                let WriteRequest { seq, batch } = merge_queued(first, || queued.pop_front());
                self.in_flight = Some(Write::start(&self.start, &self.metrics, seq, batch));
            }
        }
        Some(report)
    }

    /// Takes the write in flight out, as a future that ends when the store's call returned
    /// (its result ignored: the node stops). `Node::shutdown` must not return before it did.
    pub(super) fn take_in_flight(&mut self) -> Option<BoxFuture<'static, ()>> {
        let write = self.in_flight.take()?;
        Some(write.future.map(drop).boxed())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use std::sync::Mutex;

    use super::*;
    use crate::runtime::Runtime;
    use crate::types::HardState;

    struct NoClock;

    impl Runtime for NoClock {
        fn spawn(&self, _: BoxFuture<'static, ()>) {}
        fn sleep(&self, _: Duration) -> BoxFuture<'static, ()> {
            futures::future::pending().boxed()
        }
        fn now(&self) -> Duration {
            Duration::ZERO
        }
    }

    fn metrics() -> Arc<NodeMetrics> {
        Arc::new(NodeMetrics::new(1, &[], Arc::new(NoClock)))
    }

    /// A batch recognizable by its term.
    fn batch(term: u64) -> WriteBatch {
        let hard_state = Some(HardState { current_term: term, voted_for: None });
        WriteBatch { hard_state, ..WriteBatch::default() }
    }

    fn term_of(written: &PersistedWrite) -> u64 {
        written.hard_state.map_or(0, |h| h.current_term)
    }

    /// A store done at once is done within the caller's poll: no task, no wake-up.
    #[test]
    fn a_write_the_store_finishes_at_once_ends_in_the_first_poll() {
        let start: StartWrite = Arc::new(|_| futures::future::ready(Ok(())).boxed());
        let metrics = metrics();
        let mut write = Write::start(&start, &metrics, 3, batch(7));
        let done = write.poll_once(&metrics).unwrap().unwrap();
        assert_eq!((done.seq, term_of(&done.written)), (3, 7));
        assert!(done.result.is_ok());
    }

    /// A write still pending at the first poll is finished by the writer task, before the
    /// batches issued after it (merged into one store call), and reported in order.
    #[test]
    fn a_pending_write_is_finished_by_the_task_before_later_batches() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (open_tx, open_rx) = futures::channel::oneshot::channel::<()>();
        let gate = Arc::new(Mutex::new(Some(open_rx)));
        let start: StartWrite = {
            let calls = calls.clone();
            Arc::new(move |batch: WriteBatch| {
                calls.lock().unwrap().push(batch.hard_state.map(|h| h.current_term));
                let gate = gate.lock().unwrap().take();
                async move {
                    if let Some(gate) = gate {
                        let _ = gate.await;
                    }
                    Ok(())
                }
                .boxed()
            })
        };
        let metrics = metrics();
        let mut first = Write::start(&start, &metrics, 1, batch(1));
        assert!(first.poll_once(&metrics).unwrap().is_none());
        let (requests_tx, requests) = async_channel::unbounded();
        let (inputs, reports) = async_channel::unbounded();
        requests_tx.try_send(WriterMsg::Started(first)).unwrap();
        requests_tx.try_send(WriterMsg::Batch(WriteRequest { seq: 2, batch: batch(2) })).unwrap();
        requests_tx.try_send(WriterMsg::Batch(WriteRequest { seq: 3, batch: batch(3) })).unwrap();
        requests_tx.close();
        open_tx.send(()).unwrap();
        futures::executor::block_on(run(start, requests, inputs, metrics));
        let reported: Vec<(u64, u64)> = std::iter::from_fn(|| reports.try_recv().ok())
            .map(|input| match input {
                Input::Persisted { seq, written, result, .. } => {
                    assert!(result.is_ok());
                    (seq, term_of(&written))
                }
                _ => panic!("only write reports expected"),
            })
            .collect();
        assert_eq!(reported, [(1, 1), (3, 3)]);
        assert_eq!(*calls.lock().unwrap(), [Some(1), Some(3)]);
    }

    /// A panic in the store during the main loop's poll is the log writer's, as in the task.
    #[test]
    fn a_store_panic_in_the_first_poll_is_reported_as_the_writers() {
        fn burn() -> Result<(), StorageError> {
            panic!("disk on fire")
        }
        let start: StartWrite = Arc::new(|_| async { burn() }.boxed());
        let metrics = metrics();
        let mut write = Write::start(&start, &metrics, 1, batch(1));
        match write.poll_once(&metrics) {
            Err(FatalError::Panicked { task, message }) => {
                assert_eq!((task.as_str(), message.as_str()), ("log writer", "disk on fire"));
            }
            _ => panic!("expected the writer's panic"),
        }
    }

    /// A store whose writes record their batch's term when started and wait for `gate` (the
    /// first one taken from it), failing if the term is in `fail`.
    fn gated_store(
        calls: &Arc<Mutex<Vec<Option<u64>>>>,
        gate: futures::channel::oneshot::Receiver<()>,
        fail: &'static [u64],
    ) -> StartWrite {
        let calls = calls.clone();
        let gate = Arc::new(Mutex::new(Some(gate)));
        Arc::new(move |batch: WriteBatch| {
            let term = batch.hard_state.map(|h| h.current_term);
            calls.lock().unwrap().push(term);
            let gate = gate.lock().unwrap().take();
            async move {
                if let Some(gate) = gate {
                    let _ = gate.await;
                }
                match term {
                    Some(t) if fail.contains(&t) => Err(StorageError::Corrupt(format!("{t}"))),
                    _ => Ok(()),
                }
            }
            .boxed()
        })
    }

    /// A waker that counts its wakes.
    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// An inline writer whose first write (batch 1, seq 1) is in flight: started by the main
    /// loop and found pending at its first poll, as `write_log` hands it over.
    fn inline_with_first_pending(start: &StartWrite) -> InlineWriter {
        let metrics = metrics();
        let mut inline = InlineWriter::new(start.clone(), metrics.clone());
        let mut first = Write::start(start, &metrics, 1, batch(1));
        assert!(first.poll_once(&metrics).unwrap().is_none());
        inline.started(first);
        inline
    }

    fn report(input: Option<Input>) -> (u64, u64, bool) {
        match input {
            Some(Input::Persisted { seq, written, result, .. }) => {
                (seq, term_of(&written), result.is_ok())
            }
            _ => panic!("a write report expected"),
        }
    }

    /// Inline (a host loop's group): a write pending at its first poll stays in flight, the
    /// batches issued meanwhile wait (nothing reaches the store before it returned), then go
    /// to the store merged into one call; the poller's waker is woken when the write ends, and
    /// the reports come in order.
    #[test]
    fn inline_a_pending_write_finishes_before_later_batches_merged() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (open, gate) = futures::channel::oneshot::channel::<()>();
        let start = gated_store(&calls, gate, &[]);
        let mut inline = inline_with_first_pending(&start);
        assert!(inline.busy());
        inline.queue(WriteRequest { seq: 2, batch: batch(2) });
        inline.queue(WriteRequest { seq: 3, batch: batch(3) });
        let count = Arc::new(Count(Default::default()));
        let waker = std::task::Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(inline.poll(&mut cx).is_none());
        assert_eq!(*calls.lock().unwrap(), [Some(1)], "a later batch reached the store first");
        open.send(()).unwrap();
        assert_eq!(count.0.load(std::sync::atomic::Ordering::SeqCst), 1, "the poller's waker");
        assert_eq!(report(inline.poll(&mut cx)), (1, 1, true));
        assert!(inline.busy(), "the queued batches start at once");
        assert_eq!(report(inline.poll(&mut cx)), (3, 3, true));
        assert_eq!(*calls.lock().unwrap(), [Some(1), Some(3)]);
        assert!(!inline.busy());
        assert!(inline.poll(&mut cx).is_none());
    }

    /// Inline: after a failed write nothing more reaches the store (as the task ends).
    #[test]
    fn inline_after_a_failed_write_nothing_more_reaches_the_store() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (open, gate) = futures::channel::oneshot::channel::<()>();
        let start = gated_store(&calls, gate, &[1]);
        let mut inline = inline_with_first_pending(&start);
        inline.queue(WriteRequest { seq: 2, batch: batch(2) });
        open.send(()).unwrap();
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        assert_eq!(report(inline.poll(&mut cx)), (1, 1, false));
        assert!(inline.is_closed() && !inline.busy());
        inline.queue(WriteRequest { seq: 3, batch: batch(3) });
        assert!(inline.poll(&mut cx).is_none());
        assert!(inline.take_in_flight().is_none());
        assert_eq!(*calls.lock().unwrap(), [Some(1)]);
    }

    /// Inline: a store panic while the host loop polls is the log writer's; nothing more.
    #[test]
    fn inline_a_store_panic_is_reported_as_the_writers() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (open, gate) = futures::channel::oneshot::channel::<()>();
        let gated = gated_store(&calls, gate, &[]);
        let start: StartWrite = Arc::new(move |batch: WriteBatch| {
            let write = gated(batch);
            async move {
                let _ = write.await;
                panic!("disk on fire")
            }
            .boxed()
        });
        let mut inline = inline_with_first_pending(&start);
        inline.queue(WriteRequest { seq: 2, batch: batch(2) });
        open.send(()).unwrap();
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        match inline.poll(&mut cx) {
            Some(Input::Fatal(FatalError::Panicked { task, message })) => {
                assert_eq!((task.as_str(), message.as_str()), ("log writer", "disk on fire"));
            }
            _ => panic!("expected the writer's panic"),
        }
        assert!(inline.poll(&mut cx).is_none());
        assert_eq!(*calls.lock().unwrap(), [Some(1)]);
    }

    /// Review finding LOW 1 of integ34: a store whose write panics with a payload whose drop
    /// panics too. The inline writer reports the log writer's panic, and no write is left in
    /// flight: before the fix the payload's drop unwound out of `poll` with the ended write
    /// still in flight, which `take_in_flight` then handed to a task that polled it again.
    #[test]
    fn inline_a_store_panic_whose_payload_drop_panics_leaves_nothing_in_flight() {
        struct Bomb;
        impl Drop for Bomb {
            fn drop(&mut self) {
                if !std::thread::panicking() {
                    panic!("payload drop");
                }
            }
        }
        fn burn() -> Result<(), StorageError> {
            std::panic::panic_any(Bomb)
        }
        let start: StartWrite = Arc::new(|_| async { burn() }.boxed());
        let metrics = metrics();
        let mut inline = InlineWriter::new(start.clone(), metrics.clone());
        inline.started(Write::start(&start, &metrics, 1, batch(1)));
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| inline.poll(&mut cx)));
        match polled {
            Ok(Some(Input::Fatal(FatalError::Panicked { task, .. }))) => {
                assert_eq!(task, "log writer")
            }
            Ok(_) => panic!("expected the writer's panic"),
            Err(_) => panic!("the payload's drop unwound out of InlineWriter::poll"),
        }
        assert!(inline.take_in_flight().is_none(), "an ended write was left in flight");
    }
}
