//! The cases of the `LogStore` conformance suite.

use std::fmt::Debug;
use std::ops::Range;

use bytes::Bytes;

use super::StoreFactory;
use crate::storage::{DurableState, LogStore, StorageError, WriteBatch};
use crate::types::{Entry, EntryPayload, HardState, LogId, LogIndex, Term};

/// One case of the `LogStore` conformance suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LogStoreCase {
    /// A new store is empty, before and after a reopen; empty batches and ranges are fine.
    NewStoreIsEmpty,
    /// Appended entries read back identically, whole or in sub-ranges, after a reopen too.
    AppendAndRead,
    /// A truncation removes the suffix and new entries replace it, durably.
    OverwriteAfterTruncation,
    /// The hard state survives a reopen and is kept by batches that do not set it.
    HardStateRoundTrip,
    /// `purged` and `last` are recovered exactly after a reopen, including an empty log.
    BoundsAfterReopen,
    /// Reads stop at the byte budget but always return at least one entry.
    RangeReadsBoundedInBytes,
    /// Purging a prefix removes it, remembers its last id and keeps the rest readable.
    PurgeOfPrefix,
    /// Gaps and truncations below the purged prefix are rejected, without partial effects.
    RejectsInvalidWrites,
    /// `reset` (after installing a snapshot) empties the log after any id, before or beyond its
    /// end, keeps the hard state, and appends continue after it, durably.
    ResetAfterSnapshot,
}

impl LogStoreCase {
    /// Every case, in the order [`super::run_log_store_conformance`] runs them.
    pub const ALL: [LogStoreCase; 9] = [
        LogStoreCase::NewStoreIsEmpty,
        LogStoreCase::AppendAndRead,
        LogStoreCase::OverwriteAfterTruncation,
        LogStoreCase::HardStateRoundTrip,
        LogStoreCase::BoundsAfterReopen,
        LogStoreCase::RangeReadsBoundedInBytes,
        LogStoreCase::PurgeOfPrefix,
        LogStoreCase::RejectsInvalidWrites,
        LogStoreCase::ResetAfterSnapshot,
    ];

    /// The case's name, for reports.
    pub fn name(self) -> &'static str {
        match self {
            LogStoreCase::NewStoreIsEmpty => "new_store_is_empty",
            LogStoreCase::AppendAndRead => "append_and_read",
            LogStoreCase::OverwriteAfterTruncation => "overwrite_after_truncation",
            LogStoreCase::HardStateRoundTrip => "hard_state_round_trip",
            LogStoreCase::BoundsAfterReopen => "bounds_after_reopen",
            LogStoreCase::RangeReadsBoundedInBytes => "range_reads_bounded_in_bytes",
            LogStoreCase::PurgeOfPrefix => "purge_of_prefix",
            LogStoreCase::RejectsInvalidWrites => "rejects_invalid_writes",
            LogStoreCase::ResetAfterSnapshot => "reset_after_snapshot",
        }
    }

    pub(super) async fn run<F: StoreFactory>(self, factory: &mut F) -> Result<(), String> {
        let store = factory.create().map_err(|e| format!("creating a store: {e}"))?;
        let mut h = Harness { factory, store: Some(store) };
        match self {
            LogStoreCase::NewStoreIsEmpty => new_store_is_empty(&mut h).await,
            LogStoreCase::AppendAndRead => append_and_read(&mut h).await,
            LogStoreCase::OverwriteAfterTruncation => overwrite_after_truncation(&mut h).await,
            LogStoreCase::HardStateRoundTrip => hard_state_round_trip(&mut h).await,
            LogStoreCase::BoundsAfterReopen => bounds_after_reopen(&mut h).await,
            LogStoreCase::RangeReadsBoundedInBytes => range_reads_bounded_in_bytes(&mut h).await,
            LogStoreCase::PurgeOfPrefix => purge_of_prefix(&mut h).await,
            LogStoreCase::RejectsInvalidWrites => rejects_invalid_writes(&mut h).await,
            LogStoreCase::ResetAfterSnapshot => reset_after_snapshot(&mut h).await,
        }
    }
}

/// A store under test and the factory to reopen it.
struct Harness<'f, F: StoreFactory> {
    factory: &'f mut F,
    store: Option<F::Store>,
}

impl<F: StoreFactory> Harness<'_, F> {
    fn store(&self) -> Result<&F::Store, String> {
        self.store.as_ref().ok_or_else(|| "the store was lost by a failed reopen".to_string())
    }

    async fn reopen(&mut self) -> Result<(), String> {
        let store = self.store.take().ok_or("the store was lost by a failed reopen")?;
        let store = self.factory.reopen(store).map_err(|e| format!("reopening: {e}"))?;
        self.store = Some(store);
        // `open` is called once, before any other method, like a node does after a restart.
        self.store()?.open().await.map_err(|e| format!("open after reopen: {e}"))?;
        Ok(())
    }

    async fn state(&self) -> Result<DurableState, String> {
        self.store()?.open().await.map_err(|e| format!("open: {e}"))
    }

    async fn write(&self, batch: WriteBatch) -> Result<(), String> {
        let what = format!("{batch:?}");
        self.store()?.write(batch).await.map_err(|e| format!("write of {what}: {e}"))
    }

    async fn append(&self, entries: Vec<Entry>) -> Result<(), String> {
        self.write(WriteBatch { entries, ..WriteBatch::default() }).await
    }

    async fn purge(&self, up_to: LogIndex) -> Result<(), String> {
        self.store()?.purge(up_to).await.map_err(|e| format!("purge up to {up_to}: {e}"))
    }

    async fn reset(&self, id: LogId) -> Result<(), String> {
        self.store()?.reset(id).await.map_err(|e| format!("reset to {id:?}: {e}"))
    }

    async fn read(&self, range: Range<LogIndex>, max_bytes: u64) -> Result<Vec<Entry>, String> {
        let what = format!("read of {range:?} (max {max_bytes} bytes)");
        self.store()?.read(range, max_bytes).await.map_err(|e| format!("{what}: {e}"))
    }

    /// Checks the bounds and that the whole stored log is `expected`.
    async fn check_log(&self, purged: LogId, expected: &[Entry]) -> Result<(), String> {
        let state = self.state().await?;
        let last = expected.last().map_or(purged, Entry::log_id);
        check_eq("purged", state.purged, purged)?;
        check_eq("last", state.last, last)?;
        if !expected.is_empty() {
            let all = self.read(purged.index + 1..last.index + 1, u64::MAX).await?;
            check_eq("stored entries", all.as_slice(), expected)?;
        }
        Ok(())
    }

    async fn expect_invalid_write(&self, batch: WriteBatch) -> Result<(), String> {
        let what = format!("{batch:?}");
        expect_invalid(&format!("write of {what}"), self.store()?.write(batch).await)
    }

    async fn expect_invalid_read(&self, range: Range<LogIndex>) -> Result<(), String> {
        let what = format!("read of {range:?}");
        expect_invalid(&what, self.store()?.read(range, u64::MAX).await)
    }
}

fn check_eq<T: PartialEq + Debug>(what: &str, got: T, want: T) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got:?}, expected {want:?}"))
    }
}

fn expect_invalid<T: Debug>(what: &str, result: Result<T, StorageError>) -> Result<(), String> {
    match result {
        Err(StorageError::InvalidRequest(_)) => Ok(()),
        other => Err(format!("{what}: expected InvalidRequest, got {other:?}")),
    }
}

/// A deterministic entry: every fifth one is blank, every seventh a membership (with metadata,
/// every other one joint), the others carry a command naming them.
fn entry(index: LogIndex, term: Term) -> Entry {
    let payload = if index % 5 == 0 {
        EntryPayload::Blank
    } else if index % 7 == 0 {
        EntryPayload::Membership(membership(index))
    } else {
        EntryPayload::Command(Bytes::from(format!("entry {index} of term {term}")))
    };
    Entry { index, term, payload }
}

/// The membership of [`entry`] `index`: voters `{1, 2, index}` and learners `{index + 1,
/// u64::MAX}` with metadata naming them, joint toward `{2, index + 2}` for odd indexes.
fn membership(index: LogIndex) -> crate::membership::Membership {
    use crate::membership::{Membership, NodeInfo};
    let info = |id: u64| (id, NodeInfo::new(format!("host-{id}:7000"), format!("data {id}")));
    let learners = [index + 1, u64::MAX].map(info);
    let stable = Membership::new([1, 2, index].map(info), learners);
    let stable = stable.unwrap_or_default();
    if index % 2 == 0 {
        return stable;
    }
    match stable.target([2, index + 2], [u64::MAX], [info(index + 2)]) {
        Ok(target) => stable.joint_to(&target),
        Err(_) => stable,
    }
}

fn entries(range: Range<LogIndex>, term: Term) -> Vec<Entry> {
    range.map(|index| entry(index, term)).collect()
}

fn sized_entry(index: LogIndex, term: Term, payload_len: usize) -> Entry {
    Entry {
        index,
        term,
        payload: EntryPayload::Command(Bytes::from(vec![index as u8; payload_len])),
    }
}

fn hard_state(current_term: Term, voted_for: Option<u64>) -> HardState {
    HardState { current_term, voted_for }
}

async fn new_store_is_empty<F: StoreFactory>(h: &mut Harness<'_, F>) -> Result<(), String> {
    check_eq("state of a new store", h.state().await?, DurableState::default())?;
    check_eq("first index", h.state().await?.first_index(), 1)?;
    check_eq("empty range", h.read(1..1, u64::MAX).await?, Vec::new())?;
    h.expect_invalid_read(1..2).await?;
    h.write(WriteBatch::default()).await?;
    h.reopen().await?;
    check_eq("state after reopen", h.state().await?, DurableState::default())
}

async fn append_and_read<F: StoreFactory>(h: &mut Harness<'_, F>) -> Result<(), String> {
    let mut log = entries(1..4, 1);
    h.append(log.clone()).await?;
    log.extend(entries(4..11, 2));
    h.append(log[3..].to_vec()).await?;
    h.check_log(LogId::default(), &log).await?;
    check_eq("sub-range", h.read(3..7, u64::MAX).await?.as_slice(), &log[2..6])?;
    check_eq("single entry", h.read(10..11, u64::MAX).await?.as_slice(), &log[9..])?;
    h.expect_invalid_read(0..3).await?;
    h.expect_invalid_read(5..12).await?;
    h.reopen().await?;
    h.check_log(LogId::default(), &log).await?;
    log.push(entry(11, 2));
    h.append(log[10..].to_vec()).await?;
    h.check_log(LogId::default(), &log).await
}

async fn overwrite_after_truncation<F: StoreFactory>(h: &mut Harness<'_, F>) -> Result<(), String> {
    let mut log = entries(1..11, 1);
    h.append(log.clone()).await?;
    // Truncate and append in one batch.
    log.truncate(5);
    log.extend(entries(6..9, 2));
    h.write(WriteBatch {
        truncate_from: Some(6),
        entries: log[5..].to_vec(),
        ..WriteBatch::default()
    })
    .await?;
    h.check_log(LogId::default(), &log).await?;
    h.expect_invalid_read(9..10).await?;
    h.reopen().await?;
    h.check_log(LogId::default(), &log).await?;
    // A truncation alone.
    log.truncate(3);
    h.write(WriteBatch { truncate_from: Some(4), ..WriteBatch::default() }).await?;
    h.check_log(LogId::default(), &log).await?;
    h.reopen().await?;
    h.check_log(LogId::default(), &log).await?;
    // A truncation past the end changes nothing.
    h.write(WriteBatch { truncate_from: Some(9), ..WriteBatch::default() }).await?;
    h.check_log(LogId::default(), &log).await?;
    // Overwrite from the very first entry.
    let log = entries(1..4, 3);
    h.write(WriteBatch { truncate_from: Some(1), entries: log.clone(), ..WriteBatch::default() })
        .await?;
    h.reopen().await?;
    h.check_log(LogId::default(), &log).await
}

async fn hard_state_round_trip<F: StoreFactory>(h: &mut Harness<'_, F>) -> Result<(), String> {
    let first = hard_state(1, Some(2));
    h.write(WriteBatch { hard_state: Some(first), ..WriteBatch::default() }).await?;
    check_eq("hard state", h.state().await?.hard_state, first)?;
    h.reopen().await?;
    check_eq("hard state after reopen", h.state().await?.hard_state, first)?;
    let second = hard_state(3, None);
    let batch =
        WriteBatch { hard_state: Some(second), entries: entries(1..3, 3), ..WriteBatch::default() };
    h.write(batch).await?;
    h.append(entries(3..4, 3)).await?;
    check_eq("hard state kept by a batch without one", h.state().await?.hard_state, second)?;
    h.reopen().await?;
    check_eq("hard state after reopen", h.state().await?.hard_state, second)?;
    let third = hard_state(3, Some(7));
    h.write(WriteBatch { hard_state: Some(third), ..WriteBatch::default() }).await?;
    h.reopen().await?;
    check_eq("vote after reopen", h.state().await?.hard_state, third)?;
    h.check_log(LogId::default(), &entries(1..4, 3)).await
}

async fn bounds_after_reopen<F: StoreFactory>(h: &mut Harness<'_, F>) -> Result<(), String> {
    let mut log: Vec<Entry> = (1..21).map(|i| entry(i, 1 + i / 4)).collect();
    h.append(log.clone()).await?;
    h.purge(5).await?;
    h.write(WriteBatch { truncate_from: Some(15), ..WriteBatch::default() }).await?;
    let purged = log[4].log_id();
    log.truncate(14);
    log.drain(..5);
    h.reopen().await?;
    h.check_log(purged, &log).await?;
    check_eq("first index", h.state().await?.first_index(), 6)?;
    // Purge everything: the log is empty and `last == purged`.
    let purged = log[log.len() - 1].log_id();
    h.purge(purged.index).await?;
    h.reopen().await?;
    h.check_log(purged, &[]).await?;
    check_eq("first index of an empty log", h.state().await?.first_index(), 15)?;
    // Appending continues after the purged prefix.
    let log = vec![entry(15, 9)];
    h.append(log.clone()).await?;
    h.reopen().await?;
    h.check_log(purged, &log).await
}

async fn range_reads_bounded_in_bytes<F: StoreFactory>(
    h: &mut Harness<'_, F>,
) -> Result<(), String> {
    let mut log: Vec<Entry> = (1..11).map(|i| sized_entry(i, 1, 100)).collect();
    let size = log[0].size_bytes();
    log.push(sized_entry(11, 1, 10_000));
    h.append(log.clone()).await?;
    check_eq("entries within 0 bytes (at least one)", h.read(1..12, 0).await?.len(), 1)?;
    check_eq("entries within one entry's size", h.read(1..12, size).await?.len(), 1)?;
    check_eq("entries within two entries' size", h.read(1..12, 2 * size).await?.len(), 2)?;
    check_eq(
        "entries within 2.5 entries' size",
        h.read(1..12, 2 * size + size / 2).await?.len(),
        2,
    )?;
    check_eq("entries within ten entries' size", h.read(1..12, 10 * size).await?.len(), 10)?;
    check_eq("entries within no limit", h.read(1..12, u64::MAX).await?.len(), 11)?;
    check_eq("a bounded read is a prefix", h.read(3..12, 3 * size).await?.as_slice(), &log[2..5])?;
    check_eq("a large entry alone", h.read(11..12, 10).await?.as_slice(), &log[10..])?;
    check_eq("stop before a large entry", h.read(10..12, 2 * size).await?.as_slice(), &log[9..10])
}

async fn purge_of_prefix<F: StoreFactory>(h: &mut Harness<'_, F>) -> Result<(), String> {
    let mut log: Vec<Entry> = (1..11).map(|i| entry(i, 1 + i / 3)).collect();
    h.append(log.clone()).await?;
    h.purge(4).await?;
    let purged = log[3].log_id();
    log.drain(..4);
    h.check_log(purged, &log).await?;
    h.expect_invalid_read(4..6).await?;
    check_eq("read after purge", h.read(5..11, u64::MAX).await?.as_slice(), log.as_slice())?;
    // Purging at or below the purged index is a no-op; beyond the end is invalid.
    h.purge(2).await?;
    h.purge(4).await?;
    h.check_log(purged, &log).await?;
    expect_invalid("purge beyond the last entry", h.store()?.purge(11).await)?;
    h.reopen().await?;
    h.check_log(purged, &log).await?;
    // Truncating at the first stored entry is allowed; below it is not.
    h.expect_invalid_write(WriteBatch { truncate_from: Some(4), ..WriteBatch::default() }).await?;
    let log = entries(5..7, 9);
    h.write(WriteBatch { truncate_from: Some(5), entries: log.clone(), ..WriteBatch::default() })
        .await?;
    h.reopen().await?;
    h.check_log(purged, &log).await
}

async fn rejects_invalid_writes<F: StoreFactory>(h: &mut Harness<'_, F>) -> Result<(), String> {
    let state = hard_state(4, Some(1));
    // A gap at the start of an empty log, with a hard state that must not be applied either.
    let batch =
        WriteBatch { hard_state: Some(state), entries: entries(2..4, 1), ..WriteBatch::default() };
    h.expect_invalid_write(batch).await?;
    check_eq("state after a rejected write", h.state().await?, DurableState::default())?;
    let log = entries(1..4, 1);
    h.append(log.clone()).await?;
    // A gap inside the batch.
    let mut gapped = entries(4..6, 1);
    gapped.push(entry(7, 1));
    h.expect_invalid_write(WriteBatch { entries: gapped, ..WriteBatch::default() }).await?;
    // A gap after the last entry.
    h.expect_invalid_write(WriteBatch { entries: entries(5..6, 1), ..WriteBatch::default() })
        .await?;
    // Entries that do not follow a truncation.
    let batch =
        WriteBatch { truncate_from: Some(2), entries: entries(3..4, 2), ..WriteBatch::default() };
    h.expect_invalid_write(batch).await?;
    h.check_log(LogId::default(), &log).await?;
    check_eq(
        "hard state after rejected writes",
        h.state().await?.hard_state,
        HardState::default(),
    )?;
    // The store still works, durably.
    h.write(WriteBatch {
        hard_state: Some(state),
        entries: entries(4..5, 1),
        ..WriteBatch::default()
    })
    .await?;
    h.reopen().await?;
    check_eq("hard state", h.state().await?.hard_state, state)?;
    h.check_log(LogId::default(), &entries(1..5, 1)).await
}

async fn reset_after_snapshot<F: StoreFactory>(h: &mut Harness<'_, F>) -> Result<(), String> {
    let hs = hard_state(3, Some(2));
    h.write(WriteBatch {
        hard_state: Some(hs),
        entries: entries(1..11, 2),
        ..WriteBatch::default()
    })
    .await?;
    h.purge(3).await?;
    // Beyond the end of the log (a follower far behind).
    let snap = LogId::new(3, 40);
    h.reset(snap).await?;
    h.check_log(snap, &[]).await?;
    check_eq("hard state kept", h.state().await?.hard_state, hs)?;
    h.expect_invalid_read(40..41).await?;
    let tail = entries(41..46, 3);
    h.append(tail.clone()).await?;
    h.reopen().await?;
    h.check_log(snap, &tail).await?;
    check_eq("hard state after reopen", h.state().await?.hard_state, hs)?;
    // Inside the log, with a different term at that index (a conflicting suffix).
    let snap = LogId::new(4, 43);
    h.reset(snap).await?;
    h.reopen().await?;
    h.check_log(snap, &[]).await?;
    let tail = entries(44..47, 4);
    h.append(tail.clone()).await?;
    h.check_log(snap, &tail).await?;
    expect_invalid("append with a gap after reset", {
        let batch = WriteBatch { entries: entries(48..49, 4), ..WriteBatch::default() };
        h.store()?.write(batch).await
    })?;
    Ok(())
}
