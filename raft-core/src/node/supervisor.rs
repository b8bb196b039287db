//! Supervision of the node's tasks: each runs inside `catch_unwind`, holds a guard of the "all
//! tasks done" channel, and a panic stops the node with [`FatalError::Panicked`] naming the task
//! and the panic message. Also the one way the node's inputs end: closed, and every input still
//! queued dropped, so that no caller waits for an answer that will never come.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use async_channel::{Receiver, Sender};
use futures::channel::mpsc;
use futures::future::BoxFuture;
use futures::FutureExt;

use super::snapshot::SnapshotInput;
use super::watch::StatusCell;
use super::Input;
use crate::error::FatalError;
use crate::runtime::Runtime;
use crate::types::Role;

/// How the node's inputs end, shared by the main loop and the supervisor of its task.
pub(crate) struct Inputs {
    pub(crate) receiver: Receiver<Input>,
    /// The proposals on their way to the main loop, which end with the queue.
    pub(crate) inbox: Arc<super::inbox::Inbox>,
    pub(crate) status: Arc<StatusCell>,
    pub(crate) fatal: Arc<Mutex<Option<FatalError>>>,
}

impl Inputs {
    /// Closes the input queue and the proposal inbox and drops every input and proposal still
    /// in them: their reply channels and proposal permits go with them, so their callers get
    /// `Shutdown` at once. Returns the first failure report found among them (a task that
    /// failed just before the stop).
    pub(crate) fn close(&self) -> Option<FatalError> {
        self.receiver.close();
        self.inbox.close();
        let mut cause = None;
        while let Ok(input) = self.receiver.try_recv() {
            if cause.is_none() {
                cause = input.failure();
            }
        }
        cause
    }

    /// Publishes that the node stopped (after `fatal`, if set and no earlier error was
    /// recorded): no role, no leader, and watchers see the end.
    pub(crate) fn finish(&self, fatal: Option<FatalError>, mut status: crate::types::Status) {
        if let Some(error) = fatal {
            let mut slot = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                tracing::error!(id = status.id, %error, "node stopping after a fatal error");
                *slot = Some(error);
            }
        }
        status.role = Role::Follower;
        status.leader_id = None;
        self.status.publish(status);
        self.status.close();
    }
}

/// The main loop's task can also be dropped without [`Inputs::close`] (its runtime shut down,
/// a simulated crash): the input queue then closes with its receiver, and the proposal inbox,
/// shared with the node's handles, is closed here, so that later proposals are refused and
/// queued ones dropped (their proposers see `Shutdown`) instead of waiting for a main loop
/// that is gone.
impl Drop for Inputs {
    fn drop(&mut self) {
        self.inbox.close();
    }
}

impl Input {
    /// The failure this input reports, if it reports one.
    fn failure(&self) -> Option<FatalError> {
        match self {
            Input::Fatal(error) => Some(error.clone()),
            Input::ApplyFailed(message) => Some(FatalError::StateMachine(message.clone())),
            Input::Persisted { result: Err(error), .. } => Some(FatalError::Storage(error.clone())),
            Input::Snapshot(SnapshotInput::OpDone { result: Err(error), .. }) => {
                Some(FatalError::Snapshot(error.clone()))
            }
            Input::Snapshot(SnapshotInput::Failed(error)) => Some(error.clone()),
            _ => None,
        }
    }
}

/// Which task a future is, for supervision.
pub(crate) enum Task {
    /// The main loop: if it panics, the supervisor stops the node itself.
    MainLoop(Arc<Inputs>),
    /// Any other task (named): a panic is reported to the main loop, which stops the node.
    Other(String),
}

/// Spawns the node's tasks on its runtime, supervised.
#[derive(Clone)]
pub(crate) struct Spawner {
    pub(crate) runtime: Arc<dyn Runtime>,
    pub(crate) done: mpsc::Sender<()>,
    /// Where a task's panic is reported (the main loop's inputs).
    pub(crate) inputs: Sender<Input>,
}

impl Spawner {
    /// Runs `future` as the task `task`. The task counts as running (for `Node::shutdown`) until
    /// the future has ended and been dropped.
    pub(crate) fn spawn(&self, task: Task, future: BoxFuture<'static, ()>) {
        let guard = self.done.clone();
        let inputs = self.inputs.clone();
        self.runtime.spawn(
            async move {
                let mut future = AssertUnwindSafe(future).catch_unwind();
                if let Err(payload) = (&mut future).await {
                    // The failed future (and the queues it holds) is dropped only after the
                    // report is queued: whoever sees those queues closed finds the report.
                    match task {
                        Task::MainLoop(ends) => main_loop_panicked(&ends, payload.as_ref()),
                        Task::Other(name) => {
                            let error = FatalError::Panicked {
                                task: name,
                                message: panic_message(payload.as_ref()),
                            };
                            tracing::error!(%error, "a task of the node panicked");
                            let _ = inputs.send(Input::Fatal(error)).await;
                        }
                    }
                }
                drop(future);
                drop(guard);
            }
            .boxed(),
        );
    }
}

/// Stops the node whose main loop panicked with `payload`, in place of the main loop's own
/// stop: closes its inputs and proposal inbox (every input and proposal still queued is
/// dropped, so its caller gets `Shutdown` at once), records
/// [`FatalError::Panicked`] `{ task: "main loop", .. }` with the panic's message (unless an
/// earlier error was recorded) and publishes the end to watchers.
///
/// For whoever runs a main loop under `catch_unwind` (the main loop's task, a host loop). The
/// caller drops the failed main loop (and the queues it holds) only after this returns, so
/// that whoever sees those queues closed finds the report; it never calls the main loop's
/// `finish`.
pub(crate) fn main_loop_panicked(ends: &Inputs, payload: &(dyn std::any::Any + Send)) {
    let error =
        FatalError::Panicked { task: "main loop".to_owned(), message: panic_message(payload) };
    ends.close();
    let status = ends.status.get();
    ends.finish(Some(error), status);
}

/// The message of a panic payload (`panic!` with a literal or a formatted message).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "(a panic without a message)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;
    use crate::types::Status;
    use futures::StreamExt;

    /// A runtime that runs spawned tasks on a local pool driven by the test.
    struct Local(Mutex<Vec<BoxFuture<'static, ()>>>);

    impl Runtime for Arc<Local> {
        fn spawn(&self, future: BoxFuture<'static, ()>) {
            self.0.lock().unwrap().push(future);
        }
        fn sleep(&self, _: std::time::Duration) -> BoxFuture<'static, ()> {
            futures::future::pending().boxed()
        }
        fn now(&self) -> std::time::Duration {
            std::time::Duration::ZERO
        }
    }

    fn status() -> Status {
        Status {
            id: 1,
            role: Role::Leader,
            current_term: 3,
            leader_id: Some(1),
            commit_index: 0,
            applied_index: 0,
            last_log_index: 0,
            quiesced: false,
        }
    }

    /// A panicking main loop stops the node: the error names the panic, queued callers are
    /// answered (their reply channels dropped), watchers see the end, and the task is done.
    #[test]
    fn a_panic_in_the_main_loop_stops_the_node() {
        let local = Arc::new(Local(Mutex::new(Vec::new())));
        let (inputs_tx, inputs_rx) = async_channel::bounded(8);
        let (done_tx, mut done_rx) = mpsc::channel(0);
        let ends = Arc::new(Inputs {
            receiver: inputs_rx,
            inbox: Arc::new(super::super::inbox::Inbox::new(inputs_tx.clone())),
            status: StatusCell::new(status()),
            fatal: Arc::new(Mutex::new(None)),
        });
        let spawner =
            Spawner { runtime: Arc::new(local.clone()), done: done_tx, inputs: inputs_tx.clone() };
        spawner.spawn(Task::MainLoop(ends.clone()), async { panic!("engine bug {}", 7) }.boxed());
        drop(spawner);
        let (reply, answer) = futures::channel::oneshot::channel();
        inputs_tx.try_send(Input::Replication { reply }).unwrap();

        let mut pool: futures::stream::FuturesUnordered<_> =
            local.0.lock().unwrap().drain(..).collect();
        futures::executor::block_on(async { while pool.next().await.is_some() {} });

        let fatal = ends.fatal.lock().unwrap().clone();
        assert!(
            matches!(
                &fatal,
                Some(FatalError::Panicked { task, message })
                    if task == "main loop" && message == "engine bug 7"
            ),
            "{fatal:?}"
        );
        assert!(
            futures::executor::block_on(answer).is_err(),
            "the queued input was dropped: its caller sees Shutdown"
        );
        assert!(inputs_tx.is_closed());
        assert_eq!(ends.status.get().role, Role::Follower);
        let mut watch = super::super::StatusWatch::new(ends.status.clone());
        assert_eq!(futures::executor::block_on(watch.changed()), None, "watchers see the end");
        assert_eq!(futures::executor::block_on(done_rx.next()), None, "the task is done");
    }

    /// The main loop's task dropped without a stop (its runtime gone): the proposal inbox
    /// closes with `Inputs`, so a proposal queued there is dropped and later ones are refused.
    #[test]
    fn dropping_the_inputs_closes_the_inbox() {
        let (inputs_tx, inputs_rx) = async_channel::bounded(8);
        let inbox = Arc::new(super::super::inbox::Inbox::new(inputs_tx));
        let ends = Inputs {
            receiver: inputs_rx,
            inbox: inbox.clone(),
            status: StatusCell::new(status()),
            fatal: Arc::new(Mutex::new(None)),
        };
        let slots = Arc::new(super::super::slots::Slots::new(2));
        let proposal = |slots: &Arc<super::super::slots::Slots>| {
            let (reply, answer) = super::super::reply::channel();
            let proposed = super::super::inbox::Proposed {
                command: bytes::Bytes::from_static(b"x"),
                permit: slots.try_acquire().unwrap(),
                reply: super::super::ProposeReply::Applied(reply),
            };
            (proposed, answer)
        };
        let (queued, answer) = proposal(&slots);
        assert!(inbox.push(queued).is_ok());
        drop(ends);
        let answered = futures::FutureExt::now_or_never(answer);
        assert!(matches!(answered, Some(None)), "the queued proposal is dropped");
        assert_eq!(slots.available(), 2, "its slot is back");
        let (later, _answer) = proposal(&slots);
        assert!(inbox.push(later).is_err(), "later proposals are refused");
    }

    /// A panicking task other than the main loop reports the panic to the main loop.
    #[test]
    fn a_panic_in_another_task_is_reported() {
        let local = Arc::new(Local(Mutex::new(Vec::new())));
        let (inputs_tx, inputs_rx) = async_channel::bounded(8);
        let (done_tx, _done_rx) = mpsc::channel(0);
        let spawner =
            Spawner { runtime: Arc::new(local.clone()), done: done_tx, inputs: inputs_tx };
        let message = String::from("disk on fire");
        spawner.spawn(
            Task::Other("log writer".into()),
            async move { std::panic::panic_any(message) }.boxed(),
        );
        let mut pool: futures::stream::FuturesUnordered<_> =
            local.0.lock().unwrap().drain(..).collect();
        futures::executor::block_on(async { while pool.next().await.is_some() {} });
        match inputs_rx.try_recv() {
            Ok(Input::Fatal(FatalError::Panicked { task, message })) => {
                assert_eq!((task.as_str(), message.as_str()), ("log writer", "disk on fire"));
            }
            _ => panic!("no panic report"),
        }
    }
}
