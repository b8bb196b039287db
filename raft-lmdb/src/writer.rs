//! The writer thread of an environment: the only place write transactions exist.
//!
//! It takes requests from the bounded queue (`queue.rs`: fair between Raft groups), merges every
//! request queued while the previous commit was running, whatever its group, into one
//! transaction (group commit: one sync for many writes of many groups), commits it and then
//! answers every request of the transaction. When the callers just answered are expected back at
//! once (several callers each waiting for their write before the next), it waits for them a
//! fraction of a commit's duration (at most [`MAX_LINGER`]) so that they share the next sync
//! instead of splitting into cohorts that alternate between commits; a lone caller never waits.
//! A group's requests are applied in its queue order, each validated against the group's log as left by
//! the requests before it; an invalid request is answered with its error and has no effect,
//! without disturbing the others, of its group or of another group.
//!
//! When LMDB reports that the map is full, the transaction is abandoned, the environment is
//! reopened with a larger map and the whole transaction is applied again. Any other failure
//! poisons the environment: every request of the transaction is answered with the error and
//! every later request, of any group, with [`StorageError::Closed`]; nothing is acknowledged
//! after an error.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::HashMap;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use raft_core::{Entry, GroupId, LogId, LogIndex, StorageError, WriteBatch};

use crate::apply::{self, Applier, Failure, GroupLog, Rejection};
use crate::codec::{self, MetaRecord};
use crate::env::{self, Handles};
use crate::environment::Recovered;
use crate::headroom::Headroom;
use crate::journal::{JournalIndex, MoveError};
use crate::queue::Waited;
use crate::shared::Shared;
use crate::thread_io;
use crate::wal::{Shrink, Wal, WAL_GENERATION_KEY};

/// What a request asks the writer to do.
#[derive(Debug)]
pub(crate) enum Op {
    /// [`raft_core::LogStore::write`].
    Write(WriteBatch),
    /// [`raft_core::LogStore::purge`].
    Purge(LogIndex),
    /// [`raft_core::LogStore::reset`].
    Reset(LogId),
    /// Load the group's metadata, creating the group (an empty log) if it does not exist.
    Open,
    /// Delete the group's entries and metadata.
    Remove,
}

impl Op {
    /// Whether this request appends entries.
    pub(crate) fn appends(&self) -> bool {
        matches!(self, Op::Write(batch) if !batch.entries.is_empty())
    }

    /// The bytes this request adds to a transaction (for the byte bound).
    pub(crate) fn size_bytes(&self) -> u64 {
        match self {
            Op::Write(batch) => batch.entries.iter().map(|e| e.size_bytes()).sum::<u64>() + 32,
            Op::Purge(_) | Op::Reset(_) | Op::Open | Op::Remove => 32,
        }
    }
}

/// One queued request and where to send its outcome.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) group: GroupId,
    pub(crate) op: Op,
    pub(crate) reply: oneshot::Sender<Result<(), StorageError>>,
}

/// A request's group, answer channel and outcome.
type Reply = (GroupId, oneshot::Sender<Result<(), StorageError>>, Result<(), StorageError>);

/// The state of the groups a transaction touches: `None` once removed.
type Touched = HashMap<GroupId, Option<MetaRecord>>;

/// What a committed transaction leaves to [`Writer::commit_group`].
struct Committed {
    /// The new metadata of the groups the transaction touched.
    touched: Touched,
    /// Each request's outcome, in order.
    outcomes: Vec<Result<(), StorageError>>,
    /// How long LMDB's commit took.
    sync: Duration,
    /// The write-ahead generation the transaction committed, if it moved to a new one (a
    /// checkpoint).
    checkpointed: Option<u64>,
}

/// The longest a transaction waits for expected requests before committing.
const MAX_LINGER: Duration = Duration::from_micros(500);

/// The most entries pending in the write-ahead file: a cycle that would go beyond checkpoints
/// first, so that a checkpoint's transaction stays about the size of a journal move.
const MAX_PENDING_ENTRIES: usize = 4096;

/// Bounds on one transaction.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GroupLimits {
    pub(crate) max_requests: usize,
    pub(crate) max_bytes: u64,
}

/// Starts the writer thread, knowing the metadata of the groups in `committed` (others are
/// loaded by [`Op::Open`]). It runs until the queue is closed and drained. When `recovered`
/// holds entries of the write-ahead file (or torn bytes), it first checkpoints them, on the
/// calling thread: an error then fails the open with that checkpoint's error.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    committed: HashMap<GroupId, MetaRecord>,
    journal: Option<JournalIndex>,
    limits: GroupLimits,
    headroom: Headroom,
    recovered: Recovered,
) -> Result<JoinHandle<()>, StorageError> {
    let Recovered { wal, generation, lasts, dirty, bytes, .. } = recovered;
    let recovered = shared.recovered_entries.load(Ordering::Relaxed);
    let recovered_entries = usize::try_from(recovered).unwrap_or(usize::MAX);
    let mut writer = Writer {
        shared,
        committed,
        journal,
        limits,
        applier: Applier::default(),
        headroom,
        wal,
        wal_generation: generation,
        wal_dirty: dirty,
        pending_lasts: lasts,
        // The open-time checkpoint's estimate for the headroom counts them.
        pending_bytes: bytes,
        pending_entries: recovered_entries,
        failure: None,
    };
    #[cfg(test)]
    if let Some(wal) = &mut writer.wal {
        wal.faults = Arc::clone(&writer.shared.faults);
    }
    // Also when a group failed at this open (its mark is stored then, see `journal.rs`).
    let marks = writer.journal.as_ref().is_some_and(JournalIndex::has_unstored_marks);
    if writer.wal_dirty || !writer.pending_lasts.is_empty() || marks {
        drop(writer.commit_group(Vec::new(), Instant::now()));
        if writer.shared.is_poisoned() {
            return Err(writer.failure.take().unwrap_or(StorageError::Closed));
        }
    }
    // Only now that the file holds no frame of LMDB's generation (checkpointed above, or none).
    if let Some(wal) = &writer.wal {
        // Either failure is tolerated (the file stays on). The bytes past the size hold no frame
        // of LMDB's generation (the checkpoint above committed the next one, or the file held
        // none): stale frames at most, which no scan accepts and no frame overwrites, whether
        // the file keeps them, loses them, or comes back larger after a crash (the next open
        // shrinks it again). The truncation frees only blocks past the size: those of
        // `[0, size)` stay allocated, so frames' `fdatasync`s still flush data only. And a
        // failed sync can only lose the size change: the file holds no unsynced data (frames
        // were synced when written, zeros at open, and this open wrote neither: a file larger
        // than its size needs no zeros).
        match wal.shrink() {
            Ok(Shrink::Unneeded) => {}
            Ok(Shrink::Shrank { from }) => {
                tracing::info!(from, to = wal.size(), "raft-lmdb shrank its write-ahead file");
            }
            Ok(Shrink::Unsynced { from, error }) => {
                tracing::warn!(
                    %error,
                    from,
                    to = wal.size(),
                    "raft-lmdb shrank its write-ahead file but could not sync it"
                );
            }
            Err(error) => {
                tracing::warn!(%error, "raft-lmdb could not shrink its write-ahead file");
            }
        }
    }
    // The writer's `/proc` counters are known before the environment is handed out, so that
    // `DiskStats::written_bytes` counts from the first request on.
    let (ready, started) = std::sync::mpsc::sync_channel(1);
    let thread = std::thread::Builder::new().name("raft-lmdb-writer".into()).spawn(move || {
        if let Some(path) = thread_io::current_thread_io() {
            let _ = writer.shared.writer_io.set(path);
        }
        let _ = ready.send(());
        writer.run();
    });
    let thread = thread.map_err(StorageError::Io)?;
    // An error means the thread ended before telling: the counters stay unknown.
    let _ = started.recv();
    Ok(thread)
}

struct Writer {
    shared: Arc<Shared>,
    /// Each loaded group's metadata as of the last commit (only this thread changes it).
    committed: HashMap<GroupId, MetaRecord>,
    /// The writer's index of the journal (multi-group layout only), as of the transaction
    /// being built.
    journal: Option<JournalIndex>,
    limits: GroupLimits,
    /// Applies requests to a transaction.
    applier: Applier,
    /// Keeps the data file written ahead of the commits.
    headroom: Headroom,
    /// The write-ahead file (`wal.rs`), `None` when off.
    wal: Option<Wal>,
    /// The generation of LMDB's committed state (`wal-generation`): of the frames written now.
    wal_generation: u64,
    /// Whether the file may hold frames or torn bytes of `wal_generation`: the next LMDB
    /// transaction then moves to the next generation (a checkpoint).
    wal_dirty: bool,
    /// The id of each group's last pending entry (in the file, not yet in LMDB).
    pending_lasts: HashMap<GroupId, LogId>,
    /// Bytes of the pending entries (for the headroom's estimate of a checkpoint).
    pending_bytes: u64,
    /// The number of pending entries (bounded by [`MAX_PENDING_ENTRIES`]).
    pending_entries: usize,
    /// The error that poisoned the environment (for the open-time checkpoint's caller).
    failure: Option<StorageError>,
}

/// Closes the queue when the writer stops, however it stops (a panic included), so that
/// nobody waits for it.
struct Stopped<'a>(&'a Shared);

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        self.0.queue.abandon();
    }
}

impl Writer {
    fn run(mut self) {
        let shared = Arc::clone(&self.shared);
        let _stopped = Stopped(&shared);
        // Requests that arrived while the previous transaction was being committed.
        let mut carry: Vec<Request> = Vec::new();
        // Size of the previous transaction, and how long its commit took.
        let (mut answered, mut last_commit) = (0, Duration::ZERO);
        loop {
            let mut group = std::mem::take(&mut carry);
            let mut bytes = group.iter().map(|r| r.op.size_bytes()).sum();
            // The writers just answered are likely to come back at once (a closed loop of
            // callers, each waiting for its write before the next): expect them as well as
            // the requests that queued up during the commit.
            let expected = (answered + group.len()).min(self.limits.max_requests);
            if group.is_empty() {
                if shared.queue.wait(None) != Waited::Queued {
                    break;
                }
                shared.queue.take(&mut group, &mut bytes, 1, u64::MAX);
            }
            #[cfg(test)]
            drop(shared.pause.lock());
            self.gather(&mut group, &mut bytes);
            self.linger(&mut group, &mut bytes, expected, last_commit);
            answered = group.len();
            let started = Instant::now();
            let replies = if self.frame(&group) {
                self.commit_frame(group, started)
            } else {
                self.commit_group(group, started)
            };
            let committed = Instant::now();
            last_commit = committed - started;
            // Take what queued up during the commit before answering, so that it is not
            // mistaken for the answered callers coming back.
            let mut carried_bytes = 0;
            self.gather(&mut carry, &mut carried_bytes);
            let mut groups = Vec::with_capacity(replies.len());
            for (group, reply, outcome) in replies {
                // The caller may have stopped waiting; the write is durable all the same.
                let _ = reply.send(outcome);
                groups.push(group);
            }
            shared.queue.answered(groups);
            shared.timings.answer.add(committed.elapsed());
        }
        // A clean close applies the pending entries to LMDB: a closed store's `data.mdb` then
        // holds every acknowledged entry (the write-ahead file holds only stale frames).
        #[cfg(test)]
        let skip = shared.skip_close_checkpoint.load(Ordering::SeqCst);
        #[cfg(not(test))]
        let skip = false;
        if !self.pending_lasts.is_empty() && !shared.is_poisoned() && !skip {
            drop(self.commit_group(Vec::new(), Instant::now()));
        }
        tracing::debug!("raft-lmdb writer thread stops: the environment was dropped");
    }

    /// Adds queued requests to `group` without waiting, within the transaction limits.
    fn gather(&mut self, group: &mut Vec<Request>, bytes: &mut u64) {
        let GroupLimits { max_requests, max_bytes } = self.limits;
        self.shared.queue.take(group, bytes, max_requests, max_bytes);
    }

    /// Waits a little for the transaction to reach `expected` requests: a fraction of the last
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
        let max_bytes = self.limits.max_bytes;
        if group.len() >= expected || *bytes >= max_bytes {
            return;
        }
        let shared = Arc::clone(&self.shared);
        let timings = &shared.timings;
        timings.lingers.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let deadline = started + (last_commit / 4).min(MAX_LINGER);
        while group.len() < expected && *bytes < max_bytes {
            let waited = match deadline.checked_duration_since(Instant::now()) {
                Some(left) => shared.queue.wait(Some(left)),
                None => Waited::TimedOut,
            };
            match waited {
                Waited::Queued => self.gather(group, bytes),
                // The store is closing: commit what is in hand.
                Waited::Closed => break,
                Waited::TimedOut => {
                    timings.linger_timeouts.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
        timings.linger.add(started.elapsed());
    }

    /// Commits `group` and returns the answer for each request (not sent yet). If it commits,
    /// adds the time since `started` to the transaction total, then LMDB's commit to the sync
    /// total (in that order: see `WriterTimings`).
    fn commit_group(&mut self, group: Vec<Request>, started: Instant) -> Vec<Reply> {
        if self.shared.is_poisoned() {
            return group
                .into_iter()
                .map(|r| (r.group, r.reply, Err(StorageError::Closed)))
                .collect();
        }
        loop {
            if let Some(journal) = &mut self.journal {
                // Whatever fails from here on, only this transaction's changes are undone.
                journal.begin();
            }
            let result = self.try_commit(&group);
            if let Some(journal) = &mut self.journal {
                match &result {
                    // Readers no longer need the records the commit deleted.
                    Ok(_) => journal.withdraw_removed(&self.shared.read_index),
                    Err(_) => {
                        journal.withdraw_added(&self.shared.read_index);
                        journal.rollback();
                    }
                }
            }
            match result {
                Ok(Committed { touched, outcomes, sync, checkpointed }) => {
                    if let Some(generation) = checkpointed {
                        #[cfg(test)]
                        {
                            let slot = &self.shared.checkpoint_barrier;
                            let barrier = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
                            if let Some(barrier) = barrier {
                                barrier.wait();
                                barrier.wait();
                            }
                        }
                        // Only now, after the commit: readers stop using the pending entries.
                        self.shared.pending.checkpointed(generation);
                        self.wal_generation = generation;
                        self.wal_dirty = false;
                        self.pending_lasts.clear();
                        self.pending_bytes = 0;
                        self.pending_entries = 0;
                        if let Some(wal) = &mut self.wal {
                            wal.checkpointed();
                        }
                        self.shared.checkpoints.fetch_add(1, Ordering::Relaxed);
                    }
                    let timings = &self.shared.timings;
                    timings.transaction.add(started.elapsed());
                    timings.sync.add(sync);
                    for (id, meta) in touched {
                        match meta {
                            Some(meta) => self.committed.insert(id, meta),
                            None => self.committed.remove(&id),
                        };
                    }
                    self.shared.commits.fetch_add(1, Ordering::Relaxed);
                    self.shared.committed_requests.fetch_add(group.len() as u64, Ordering::Relaxed);
                    return group
                        .into_iter()
                        .zip(outcomes)
                        .map(|(r, outcome)| (r.group, r.reply, outcome))
                        .collect();
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

    /// Whether the cycle `group` is committed through the write-ahead file: every request is a
    /// pure append (entries only) of a loaded group, contiguous after the group's last entry
    /// (pending or committed) with terms that never decrease, and the frame, encoded here into
    /// the file's builder, fits in the file. Anything else (invalid requests included) goes to
    /// an LMDB transaction, which checkpoints first and validates as always.
    fn frame(&mut self, group: &[Request]) -> bool {
        let Some(wal) = &mut self.wal else { return false };
        if group.is_empty() || self.shared.is_poisoned() {
            return false;
        }
        #[cfg(test)]
        if self.shared.fail_next_commit.load(Ordering::SeqCst) {
            return false;
        }
        // Only pure appends go in a frame: decided before any entry is encoded.
        let mut entries = 0usize;
        for request in group {
            match &request.op {
                Op::Write(batch)
                    if batch.hard_state.is_none()
                        && batch.truncate_from.is_none()
                        && !batch.entries.is_empty() =>
                {
                    entries = entries.saturating_add(batch.entries.len());
                }
                _ => return false,
            }
        }
        if self.pending_entries.saturating_add(entries) > MAX_PENDING_ENTRIES {
            return false;
        }
        let id = wal.id;
        wal.builder.begin(id, self.wal_generation);
        let mut lasts: HashMap<GroupId, LogId> = HashMap::new();
        for request in group {
            let Op::Write(batch) = &request.op else { return false };
            let known =
                lasts.get(&request.group).or_else(|| self.pending_lasts.get(&request.group));
            let last = match known {
                Some(last) => *last,
                None => match self.committed.get(&request.group) {
                    Some(meta) => meta.last(),
                    None => return false,
                },
            };
            let mut previous = last;
            for entry in &batch.entries {
                if previous.index.checked_add(1) != Some(entry.index) || entry.term < previous.term
                {
                    return false;
                }
                if wal.builder.push(request.group, entry).is_err() {
                    return false;
                }
                previous = entry.log_id();
            }
            lasts.insert(request.group, previous);
        }
        wal.fits(wal.builder.frame_len())
    }

    /// Commits the cycle `group` whose frame [`Writer::frame`] built: writes it at the file's
    /// write offset, syncs it, then publishes its entries as pending and returns the answers.
    /// A failure poisons the environment like a failed LMDB commit.
    fn commit_frame(&mut self, group: Vec<Request>, started: Instant) -> Vec<Reply> {
        let Some(wal) = &mut self.wal else {
            return self.fail(group, StorageError::Other("no write-ahead file".into()));
        };
        self.wal_dirty = true;
        let syncing = Instant::now();
        if let Err(err) = wal.append() {
            return self.fail(group, err);
        }
        let sync = syncing.elapsed();
        let requests = group.len() as u64;
        let mut added: Vec<(GroupId, Vec<Entry>)> = Vec::new();
        let mut replies = Vec::with_capacity(group.len());
        for request in group {
            if let Op::Write(batch) = request.op {
                if let Some(last) = batch.entries.last() {
                    self.pending_lasts.insert(request.group, last.log_id());
                }
                self.pending_bytes += batch.entries.iter().map(Entry::size_bytes).sum::<u64>();
                self.pending_entries += batch.entries.len();
                match added.last_mut() {
                    Some((g, entries)) if *g == request.group => entries.extend(batch.entries),
                    _ => added.push((request.group, batch.entries)),
                }
            }
            replies.push((request.group, request.reply, Ok(())));
        }
        // Before answering: a caller reads its own writes as soon as it has its answer.
        self.shared.pending.add(added);
        let timings = &self.shared.timings;
        timings.transaction.add(started.elapsed());
        timings.sync.add(sync);
        self.shared.commits.fetch_add(1, Ordering::Relaxed);
        self.shared.wal_commits.fetch_add(1, Ordering::Relaxed);
        self.shared.committed_requests.fetch_add(requests, Ordering::Relaxed);
        replies
    }

    /// Poisons the environment and answers the whole transaction with `err`.
    fn fail(&mut self, group: Vec<Request>, err: StorageError) -> Vec<Reply> {
        tracing::error!(error = %err, "raft-lmdb write failed; the environment accepts no more writes");
        self.shared.poison();
        let replies = group.into_iter().map(|r| (r.group, r.reply, Err(copy_error(&err))));
        let replies = replies.collect();
        self.failure.get_or_insert(err);
        replies
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

    /// Applies the whole transaction and commits it.
    fn try_commit(&mut self, group: &[Request]) -> Result<Committed, Failure> {
        let shared = Arc::clone(&self.shared);
        #[cfg(test)]
        {
            let fails = *shared.writer_meta_read_fails.lock().unwrap_or_else(|p| p.into_inner());
            crate::env::META_READ_FAILS.with(|g| g.set(fails));
        }
        let slot = shared.handles();
        let Some(handles) = slot.as_ref() else {
            return Err(Failure::Fatal(StorageError::Closed));
        };
        let (page_size, used) = handles.pages();
        // A commit that moves the journal writes its records again, to the groups' logs.
        let moved_bytes = self.journal.as_ref().map_or(0, JournalIndex::due_bytes);
        let entry_bytes =
            group.iter().map(|r| r.op.size_bytes()).sum::<u64>() + moved_bytes + self.pending_bytes;
        // The pending entries of the write-ahead file go into this transaction first.
        let checkpoint = self.wal_dirty || !self.pending_lasts.is_empty();
        let pending = if checkpoint { self.shared.pending.all() } else { Vec::new() };
        let zeros = self.headroom.ensure(used, entry_bytes, page_size);
        self.shared.headroom_bytes.fetch_add(zeros, Ordering::Relaxed);
        let mut txn = handles.env.write_txn()?;
        if let Some(journal) = &mut self.journal {
            // First: the open-time checkpoint that sets a group's entries aside stores its mark.
            journal.store_marks(&handles.meta, &mut txn)?;
        }
        if let (Some(journal), Some(db)) = (&mut self.journal, &handles.journal) {
            let requests = group.iter().filter(|r| r.op.appends()).map(|r| r.group);
            let mut appending = pending.iter().map(|(g, _)| *g).chain(requests);
            let first = appending.next();
            let one_group = first.is_some_and(|g| appending.all(|other| other == g));
            #[cfg(test)]
            let one_group = one_group && !self.shared.always_journal.load(Ordering::SeqCst);
            journal.set_direct(one_group);
            if journal.is_due() {
                let dbs = (db, &handles.log, &handles.meta);
                let keys = |group, index| handles.layout.keys(group).log(index);
                let moved = journal.move_all(dbs, &mut txn, keys).map_err(|e| match e {
                    MoveError::Lmdb(e) => Failure::from(e),
                    MoveError::Corrupt(e) => Failure::Fatal(e),
                })?;
                tracing::debug!(moved, "moved the journal to the groups' logs");
            }
        }
        let mut touched = Touched::new();
        for (id, entries) in pending {
            if self.journal.as_ref().is_some_and(|journal| journal.is_failed(id)) {
                let log = GroupLog::new(handles, handles.layout.keys(id), self.journal.as_mut());
                apply::set_aside(log, &mut txn, &entries)?;
                continue;
            }
            let op = Op::Write(WriteBatch { entries, ..WriteBatch::default() });
            match self.apply(handles, &mut txn, &mut touched, id, &op) {
                Ok(()) => {}
                Err(Rejection::Invalid(err)) => {
                    return Err(Failure::Fatal(StorageError::Corrupt(format!(
                        "the write-ahead entries of group {id} do not follow its log: {err}"
                    ))))
                }
                Err(Rejection::Failed(failure)) => return Err(failure),
            }
        }
        let checkpointed = match checkpoint {
            true => {
                let next = self.wal_generation.checked_add(1).ok_or_else(|| {
                    StorageError::Corrupt("the write-ahead generations are used up".into())
                })?;
                handles.meta.put(&mut txn, WAL_GENERATION_KEY, &next.to_be_bytes())?;
                Some(next)
            }
            false => None,
        };
        let mut outcomes = Vec::with_capacity(group.len());
        for request in group {
            match self.apply(handles, &mut txn, &mut touched, request.group, &request.op) {
                Ok(()) => outcomes.push(Ok(())),
                Err(Rejection::Invalid(err)) => outcomes.push(Err(err)),
                Err(Rejection::Failed(failure)) => return Err(failure),
            }
        }
        for (id, meta) in &touched {
            if let Some(meta) = meta {
                if self.committed.get(id) != Some(meta) {
                    let key = handles.layout.keys(*id).meta();
                    handles.meta.put(&mut txn, key.as_slice(), &codec::encode_meta(meta)?)?;
                }
            }
        }
        #[cfg(test)]
        if self.shared.fail_next_commit.swap(false, Ordering::SeqCst) {
            return Err(Failure::Fatal(StorageError::Io(io::Error::from_raw_os_error(28))));
        }
        #[cfg(test)]
        if self.shared.map_full_next_commit.swap(false, Ordering::SeqCst) {
            return Err(Failure::MapFull);
        }
        if let Some(journal) = &self.journal {
            // Before the commit: a reader whose snapshot has the new records finds them.
            journal.publish_added(&self.shared.read_index);
        }
        let syncing = Instant::now();
        #[cfg(not(test))]
        let committed = txn.commit().map_err(Failure::from);
        // Test hook (`faults.rs`): a checkpoint's commit fails, nothing of it committed.
        #[cfg(test)]
        let committed = match checkpointed.is_some() && self.shared.faults.checkpoint.strikes() {
            true => Err(Failure::Fatal(StorageError::Io(io::Error::from_raw_os_error(
                crate::faults::EIO,
            )))),
            false => txn.commit().map_err(Failure::from),
        };
        committed?;
        Ok(Committed { touched, outcomes, sync: syncing.elapsed(), checkpointed })
    }

    /// Applies one request to the transaction, against its group's metadata in `touched`.
    fn apply(
        &mut self,
        handles: &Handles,
        txn: &mut heed::RwTxn<'_>,
        touched: &mut Touched,
        id: GroupId,
        op: &Op,
    ) -> Result<(), Rejection> {
        let keys = handles.layout.keys(id);
        let mut log = GroupLog::new(handles, keys, self.journal.as_mut());
        // One lookup for a group the transaction has met already (the common case of a busy
        // group), two for its first request in the transaction.
        let meta = match touched.entry(id) {
            MapEntry::Occupied(entry) => entry.into_mut(),
            MapEntry::Vacant(entry) => {
                let committed = match self.committed.get(&id) {
                    Some(meta) => Some(*meta),
                    // Not loaded yet (a group found on disk): what is on disk is what is
                    // committed.
                    None => {
                        // An LMDB read error is no record's corruption: the transaction
                        // fails (`?`), as for any other failed read.
                        let found = match handles.lookup_meta(txn, keys)? {
                            Some(Ok(meta)) => Some(meta),
                            None => None,
                            // A removal needs no record: it deletes the group's key range
                            // and record whatever they hold, so a record that does not
                            // decode is no obstacle to deleting a broken replica.
                            Some(Err(_)) if matches!(op, Op::Remove) => None,
                            Some(Err(err)) => return Err(Rejection::Invalid(err)),
                        };
                        if let Some(meta) = found {
                            self.committed.insert(id, meta);
                        }
                        found
                    }
                };
                entry.insert(committed)
            }
        };
        match (op, meta) {
            (Op::Open, Some(_)) => Ok(()),
            (Op::Open, meta @ None) => {
                *meta = Some(MetaRecord::default());
                Ok(())
            }
            (Op::Remove, meta) => {
                log.remove(txn)?;
                handles.meta.delete(txn, keys.meta().as_slice())?;
                if handles.layout == crate::layout::Layout::Groups {
                    // Its failed mark, if any (see `journal.rs`): created again, it is healthy.
                    let marked = handles.meta.delete(txn, keys.failed_mark().as_slice())?;
                    // The last mark gone (no failed group, no set-aside record left): the
                    // environment is one a build of format 4 reads again (see `codec`).
                    if marked && !self.journal.as_ref().is_some_and(JournalIndex::holds_failed) {
                        let format = codec::encode_format(codec::FORMAT_VERSION);
                        handles.meta.put(txn, codec::FORMAT_KEY.as_bytes(), &format)?;
                    }
                }
                *meta = None;
                // No longer what the disk holds: a group created again in this transaction
                // must have its record written even if it equals the old one. (A transaction
                // retried after the map grew loads it again from the disk.)
                self.committed.remove(&id);
                Ok(())
            }
            (_, None) => Err(Rejection::Invalid(StorageError::InvalidRequest(format!(
                "group {id} does not exist"
            )))),
            (Op::Write(batch), Some(meta)) => self.applier.write(log, txn, meta, batch),
            (Op::Purge(up_to), Some(meta)) => apply::purge(log, txn, meta, *up_to),
            (Op::Reset(last_included), Some(meta)) => apply::reset(log, txn, meta, *last_included),
        }
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
