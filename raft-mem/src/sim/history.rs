//! The history of what simulated clients asked and were told, for a linearizability checker.
//!
//! A [`History`] is a shared, append-only record of operations, each with the virtual time it
//! was called and returned, the client that ran it, the user's operation value and its
//! [`OpOutcome`]. Clients record into it as they go ([`History::call`] then
//! [`PendingOp::finish`]); a test reads it at the end with [`History::records`] and hands it to
//! a checker. It is generic over the user's operation and response types and knows nothing of
//! Raft: a crate that depends only on `raft-core` and `raft-mem` can record its own.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::recorder::lock;

/// What a client learned about one operation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OpOutcome<Res> {
    /// The operation took effect (a write was applied, a read was answered) with this response.
    Ok(Res),
    /// The client does not know whether the operation took effect: it timed out, or the node
    /// lost its leadership or crashed after accepting it. A checker must allow it to take
    /// effect at any moment after its call, even after the client stopped waiting, or never.
    Unknown,
    /// The operation certainly did not take effect (refused before it entered any log, or
    /// overwritten before it committed; a read that returned nothing).
    Failed,
}

impl<Res> OpOutcome<Res> {
    /// The response, if the operation took effect.
    pub fn ok(&self) -> Option<&Res> {
        match self {
            Self::Ok(response) => Some(response),
            Self::Unknown | Self::Failed => None,
        }
    }
}

/// One operation of a [`History`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OpRecord<Op, Res> {
    /// The client that ran it (operations of one client never overlap).
    pub client: u64,
    /// The user's operation value.
    pub op: Op,
    /// Virtual time at which the client called it.
    pub call: Duration,
    /// Virtual time at which the client got its outcome; `None` while the operation is still
    /// pending (its client is waiting, or the run ended first; its outcome is then
    /// [`OpOutcome::Unknown`]).
    pub ret: Option<Duration>,
    /// What the client learned.
    pub outcome: OpOutcome<Res>,
}

/// A shared record of client operations in call order. Cloning it gives another handle to the
/// same record (clients running as tasks each keep one). Memory grows with the number of
/// operations recorded: a test bounds it by bounding its clients' operations.
#[derive(Debug)]
pub struct History<Op, Res> {
    records: Arc<Mutex<Vec<OpRecord<Op, Res>>>>,
}

impl<Op, Res> Clone for History<Op, Res> {
    fn clone(&self) -> Self {
        Self { records: self.records.clone() }
    }
}

impl<Op, Res> Default for History<Op, Res> {
    fn default() -> Self {
        Self { records: Arc::default() }
    }
}

/// An operation called but not yet finished: finish it with its outcome. Dropped unfinished,
/// it stays pending (outcome [`OpOutcome::Unknown`], no return time).
#[derive(Debug)]
#[must_use = "finish the operation with its outcome"]
pub struct PendingOp<Op, Res> {
    history: History<Op, Res>,
    position: usize,
}

impl<Op: Clone, Res: Clone> History<Op, Res> {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `client` called `op` at virtual time `at`; its outcome is
    /// [`OpOutcome::Unknown`] until [`PendingOp::finish`] sets it.
    pub fn call(&self, client: u64, op: Op, at: Duration) -> PendingOp<Op, Res> {
        let mut records = lock(&self.records);
        records.push(OpRecord { client, op, call: at, ret: None, outcome: OpOutcome::Unknown });
        PendingOp { history: self.clone(), position: records.len() - 1 }
    }

    /// Every operation recorded so far, in call order (pending ones included).
    pub fn records(&self) -> Vec<OpRecord<Op, Res>> {
        lock(&self.records).clone()
    }

    /// How many operations were recorded.
    pub fn len(&self) -> usize {
        lock(&self.records).len()
    }

    /// Whether no operation was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<Op, Res> PendingOp<Op, Res> {
    /// Records the operation's outcome, learned at virtual time `at`.
    pub fn finish(self, outcome: OpOutcome<Res>, at: Duration) {
        let mut records = lock(&self.history.records);
        if let Some(record) = records.get_mut(self.position) {
            record.ret = Some(at);
            record.outcome = outcome;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn records_calls_outcomes_and_pending_operations() {
        let history: History<&str, u64> = History::new();
        let a = history.call(1, "write", Duration::from_millis(1));
        let b = history.call(2, "read", Duration::from_millis(2));
        let _pending = history.call(3, "write", Duration::from_millis(3));
        b.finish(OpOutcome::Ok(7), Duration::from_millis(4));
        a.finish(OpOutcome::Unknown, Duration::from_millis(5));
        let records = history.records();
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].outcome, OpOutcome::Unknown);
        assert_eq!(records[0].ret, Some(Duration::from_millis(5)));
        assert_eq!(records[1].outcome.ok(), Some(&7));
        assert_eq!((records[1].client, records[1].call), (2, Duration::from_millis(2)));
        assert_eq!(records[2].ret, None);
        assert_eq!(records[2].outcome, OpOutcome::Unknown);
    }
}
