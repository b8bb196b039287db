//! The writer thread: the only place write transactions exist.
//!
//! It takes requests from a bounded queue, merges every request queued while the previous commit
//! was running into one transaction (group commit: one sync for many writes), commits it and then
//! answers every request of the group. When the callers just answered are expected back at once
//! (several callers each waiting for their write before the next), it waits for them a fraction
//! of a commit's duration (at most [`MAX_LINGER`]) so that they share the next sync instead of
//! splitting into cohorts that alternate between commits; a lone caller never waits. Requests are applied in queue order, each validated
//! against the log as left by the requests before it; an invalid request is answered with its
//! error and has no effect, without disturbing the others.
//!
//! When LMDB reports that the map is full, the transaction is abandoned, the environment is
//! reopened with a larger map and the whole group is applied again. Any other failure poisons the
//! store: the group is answered with the error and every later request with
//! [`StorageError::Closed`]; nothing is acknowledged after an error.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use raft_core::{LogId, LogIndex, StorageError, WriteBatch};

use crate::apply::{self, Applier, Failure, Rejection};
use crate::codec::{self, MetaRecord, STATE_KEY};
use crate::env;
use crate::headroom::Headroom;
use crate::shared::Shared;

/// What a request asks the writer to do.
#[derive(Debug)]
pub(crate) enum Op {
    /// [`raft_core::LogStore::write`].
    Write(WriteBatch),
    /// [`raft_core::LogStore::purge`].
    Purge(LogIndex),
    /// [`raft_core::LogStore::reset`].
    Reset(LogId),
}

impl Op {
    /// The bytes this request adds to a group (for the group's byte bound).
    fn size_bytes(&self) -> u64 {
        match self {
            Op::Write(batch) => batch.entries.iter().map(|e| e.size_bytes()).sum::<u64>() + 32,
            Op::Purge(_) | Op::Reset(_) => 32,
        }
    }
}

/// One queued request and where to send its outcome.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) op: Op,
    pub(crate) reply: oneshot::Sender<Result<(), StorageError>>,
}

/// A request's answer channel and its outcome.
type Reply = (oneshot::Sender<Result<(), StorageError>>, Result<(), StorageError>);

/// The longest a group waits for expected requests before committing.
const MAX_LINGER: Duration = Duration::from_micros(500);

/// Bounds on one group commit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GroupLimits {
    pub(crate) max_requests: usize,
    pub(crate) max_bytes: u64,
}

/// Starts the writer thread. It runs until every sender of `rx` is dropped and the queue is
/// drained.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    rx: Receiver<Request>,
    committed: MetaRecord,
    limits: GroupLimits,
    headroom: Headroom,
) -> io::Result<JoinHandle<()>> {
    let writer = Writer { shared, rx, committed, limits, applier: Applier::default(), headroom };
    std::thread::Builder::new().name("raft-lmdb-writer".into()).spawn(move || writer.run())
}

struct Writer {
    shared: Arc<Shared>,
    rx: Receiver<Request>,
    /// The metadata as of the last commit (only this thread changes it).
    committed: MetaRecord,
    limits: GroupLimits,
    /// Applies requests to a transaction.
    applier: Applier,
    /// Keeps the data file written ahead of the commits.
    headroom: Headroom,
}

impl Writer {
    fn run(mut self) {
        // Requests that arrived while the previous group was being committed.
        let mut carry: Vec<Request> = Vec::new();
        // Size of the previous group, and how long its commit took.
        let (mut answered, mut last_commit) = (0, Duration::ZERO);
        loop {
            let mut group = std::mem::take(&mut carry);
            // The writers just answered are likely to come back at once (a closed loop of
            // callers, each waiting for its write before the next): expect them as well as
            // the requests that queued up during the commit.
            let expected = (answered + group.len()).min(self.limits.max_requests);
            if group.is_empty() {
                match self.rx.recv() {
                    Ok(request) => group.push(request),
                    Err(_) => break,
                }
            }
            #[cfg(test)]
            drop(self.shared.pause.lock());
            let mut bytes = group.iter().map(|r| r.op.size_bytes()).sum();
            self.gather(&mut group, &mut bytes);
            self.linger(&mut group, &mut bytes, expected, last_commit);
            self.shared.space.notify(usize::MAX);
            answered = group.len();
            let started = Instant::now();
            let replies = self.commit_group(group);
            last_commit = started.elapsed();
            // Take what queued up during the commit before answering, so that it is not
            // mistaken for the answered callers coming back.
            let mut carried_bytes = 0;
            self.gather(&mut carry, &mut carried_bytes);
            for (reply, outcome) in replies {
                // The caller may have stopped waiting; the write is durable all the same.
                let _ = reply.send(outcome);
            }
        }
        tracing::debug!("raft-lmdb writer thread stops: the store was dropped");
    }

    /// Adds queued requests to `group` without waiting, within the group limits.
    fn gather(&mut self, group: &mut Vec<Request>, bytes: &mut u64) {
        while group.len() < self.limits.max_requests && *bytes < self.limits.max_bytes {
            match self.rx.try_recv() {
                Ok(request) => {
                    *bytes += request.op.size_bytes();
                    group.push(request);
                }
                Err(_) => break,
            }
        }
    }

    /// Waits a little for the group to reach `expected` requests: a fraction of the last
    /// commit's duration, at most [`MAX_LINGER`]. One sync then serves them all instead of the
    /// callers splitting into cohorts that alternate between commits. A lone caller never
    /// waits here (`expected` is 1).
    fn linger(
        &mut self,
        group: &mut Vec<Request>,
        bytes: &mut u64,
        expected: usize,
        last_commit: Duration,
    ) {
        if group.len() >= expected {
            return;
        }
        let deadline = Instant::now() + (last_commit / 4).min(MAX_LINGER);
        while group.len() < expected && *bytes < self.limits.max_bytes {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { break };
            match self.rx.recv_timeout(left) {
                Ok(request) => {
                    *bytes += request.op.size_bytes();
                    group.push(request);
                    self.gather(group, bytes);
                }
                Err(_) => break,
            }
        }
    }

    /// Commits `group` and returns the answer for each request (not sent yet).
    fn commit_group(&mut self, group: Vec<Request>) -> Vec<Reply> {
        if self.shared.is_poisoned() {
            return group.into_iter().map(|r| (r.reply, Err(StorageError::Closed))).collect();
        }
        loop {
            match self.try_commit(&group) {
                Ok((meta, outcomes)) => {
                    self.committed = meta;
                    self.shared.commits.fetch_add(1, Ordering::Relaxed);
                    self.shared.committed_requests.fetch_add(group.len() as u64, Ordering::Relaxed);
                    return group.into_iter().map(|r| r.reply).zip(outcomes).collect();
                }
                Err(Failure::MapFull) => {
                    if let Err(err) = self.grow_map() {
                        return self.fail(group, err);
                    }
                }
                Err(Failure::Fatal(err)) => return self.fail(group, err),
            }
        }
    }

    /// Poisons the store and answers the whole group with `err`.
    fn fail(&mut self, group: Vec<Request>, err: StorageError) -> Vec<Reply> {
        tracing::error!(error = %err, "raft-lmdb write failed; the store accepts no more writes");
        self.shared.poison();
        group.into_iter().map(|r| (r.reply, Err(copy_error(&err)))).collect()
    }

    /// Closes the environment and reopens it with a larger map.
    fn grow_map(&mut self) -> Result<(), StorageError> {
        let mut slot = self.shared.handles_mut();
        let Some(handles) = slot.take() else {
            return Err(StorageError::Closed);
        };
        let old = handles.map_size();
        let Some(new) = env::grown_map_size(old) else {
            *slot = Some(handles);
            return Err(StorageError::Other(format!(
                "the LMDB map cannot grow beyond {old} bytes"
            )));
        };
        let reopened = env::reopen(&self.shared.guard, handles, new)?;
        tracing::info!(
            old_map_size = old,
            new_map_size = reopened.map_size(),
            "raft-lmdb map was full and has grown"
        );
        *slot = Some(reopened);
        Ok(())
    }

    /// Applies the whole group in one transaction and commits it. Returns the new metadata and
    /// each request's outcome.
    fn try_commit(
        &mut self,
        group: &[Request],
    ) -> Result<(MetaRecord, Vec<Result<(), StorageError>>), Failure> {
        let shared = Arc::clone(&self.shared);
        let slot = shared.handles();
        let Some(handles) = slot.as_ref() else {
            return Err(Failure::Fatal(StorageError::Closed));
        };
        let (page_size, used) = handles.pages();
        let entry_bytes = group.iter().map(|r| r.op.size_bytes()).sum();
        self.headroom.ensure(used, entry_bytes, page_size);
        let mut txn = handles.env.write_txn()?;
        let mut meta = self.committed;
        let mut outcomes = Vec::with_capacity(group.len());
        for request in group {
            let applied = match &request.op {
                Op::Write(batch) => self.applier.write(handles, &mut txn, &mut meta, batch),
                Op::Purge(up_to) => apply::purge(handles, &mut txn, &mut meta, *up_to),
                Op::Reset(last_included) => {
                    apply::reset(handles, &mut txn, &mut meta, *last_included)
                }
            };
            match applied {
                Ok(()) => outcomes.push(Ok(())),
                Err(Rejection::Invalid(err)) => outcomes.push(Err(err)),
                Err(Rejection::Failed(failure)) => return Err(failure),
            }
        }
        if meta != self.committed {
            handles.meta.put(&mut txn, STATE_KEY, &codec::encode_meta(&meta)?)?;
        }
        #[cfg(test)]
        if self.shared.fail_next_commit.swap(false, Ordering::SeqCst) {
            return Err(Failure::Fatal(StorageError::Io(io::Error::from_raw_os_error(28))));
        }
        txn.commit()?;
        Ok((meta, outcomes))
    }
}

/// A copy of `err` for each request of a failed group (`StorageError` is not `Clone`).
fn copy_error(err: &StorageError) -> StorageError {
    match err {
        StorageError::Io(e) => StorageError::Io(match e.raw_os_error() {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::new(e.kind(), e.to_string()),
        }),
        StorageError::Corrupt(msg) => StorageError::Corrupt(msg.clone()),
        StorageError::UnsupportedVersion { found, supported } => {
            StorageError::UnsupportedVersion { found: *found, supported: *supported }
        }
        StorageError::InvalidRequest(msg) => StorageError::InvalidRequest(msg.clone()),
        StorageError::Closed => StorageError::Closed,
        other => StorageError::Other(other.to_string()),
    }
}
