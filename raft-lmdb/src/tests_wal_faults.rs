//! Failures of the write-ahead file (`wal.rs`) and of checkpoints, injected by the test hooks
//! of `faults.rs`: a frame's write cut short, a frame's sync failing, several groups in the
//! failed cycle, a checkpoint's commit failing (of a hard state, of a full file, at close, at
//! open, at an open that would shrink the file), and the zeros at open failing after a crash. In each case nothing of the failed
//! cycle is acknowledged or readable, the environment accepts no more writes, the acknowledged
//! entries stay readable, and a reopening without the fault recovers exactly them (plus, only
//! where a whole frame was written before its sync failed, that frame's entries, which follow
//! them).

use std::sync::Arc;

use futures::executor::block_on;
use raft_core::{LogId, LogStore, StorageError, WriteBatch};

use crate::faults::{self, Fault, Faults, EIO, ENOSPC};
use crate::tests_wal::{append, check, crash, entry, vote};
use crate::{LmdbEnvironment, LmdbLogStore, LmdbOptions, OpenError};

/// Whether `result` is the I/O error `code`.
fn is_io<T>(result: &Result<T, StorageError>, code: i32) -> bool {
    matches!(result, Err(StorageError::Io(e)) if e.raw_os_error() == Some(code))
}

/// LMDB's write-ahead generation in `store`'s environment.
fn generation(store: &LmdbLogStore) -> Result<u64, StorageError> {
    let handles = store.shared.handles();
    let handles = handles.as_ref().ok_or(StorageError::Closed)?;
    let txn = handles.read_txn()?;
    let generation = handles.wal_generation(&txn)?;
    Ok(generation)
}

/// A store in `dir` with a hard state (in LMDB) and entries 1..=3 of term 1, each acknowledged
/// through a frame of its own and pending (only in the write-ahead file).
fn store_with_pending_frames(dir: &std::path::Path) -> Result<LmdbLogStore, StorageError> {
    let store = LmdbLogStore::open_dir(dir)?;
    block_on(store.write(vote(1)))?;
    for i in 1..=3 {
        block_on(store.write(append(i..i + 1, 1)))?;
    }
    let stats = store.stats();
    assert_eq!((stats.wal_commits, stats.checkpoints), (3, 0), "{stats:?}");
    Ok(store)
}

/// A store of [`store_with_pending_frames`] whose write of `batch` failed with the I/O error
/// `code`, made by the fault `fault` chooses; checked with [`only_the_acknowledged_are_readable`].
fn a_failed_write(
    dir: &std::path::Path,
    fault: fn(&Faults) -> &Fault,
    code: i32,
    batch: WriteBatch,
) -> Result<LmdbLogStore, StorageError> {
    let store = store_with_pending_frames(dir)?;
    fault(&store.shared.faults).fail_nth(1);
    let failed = block_on(store.write(batch));
    assert!(is_io(&failed, code), "{failed:?}");
    only_the_acknowledged_are_readable(&store)?;
    Ok(store)
}

/// After a failed cycle (that tried to append 4..=5, or a hard state): the store is poisoned,
/// later writes fail with `Closed`, and only the acknowledged entries 1..=3 are readable.
fn only_the_acknowledged_are_readable(store: &LmdbLogStore) -> Result<(), StorageError> {
    assert!(store.has_failed());
    assert!(matches!(block_on(store.write(append(4..5, 1))), Err(StorageError::Closed)));
    assert!(matches!(block_on(store.write(vote(2))), Err(StorageError::Closed)));
    assert!(matches!(block_on(store.purge(1)), Err(StorageError::Closed)));
    // The acknowledged entries, pending in the file, are still read (from memory).
    let state = block_on(store.open())?;
    assert_eq!(state.last, LogId::new(1, 3));
    assert_eq!(state.hard_state.current_term, 1);
    assert_eq!(
        block_on(store.read(1..4, u64::MAX))?,
        (1..=3).map(|i| entry(i, 1)).collect::<Vec<_>>()
    );
    let beyond = block_on(store.read(1..6, u64::MAX));
    assert!(matches!(beyond, Err(StorageError::InvalidRequest(_))), "{beyond:?}");
    let stats = store.stats();
    assert_eq!((stats.wal_commits, stats.checkpoints), (3, 0), "{stats:?}");
    Ok(())
}

/// A frame's write cut short (half of it reaches the file, then `ENOSPC`): the write fails with
/// that error and nothing of it is acknowledged; the reopening finds the torn frame, drops it,
/// and recovers exactly the acknowledged entries.
#[test]
fn a_frame_write_cut_short_acknowledges_nothing_and_the_reopening_drops_it(
) -> Result<(), StorageError> {
    let root = tempfile::tempdir().map_err(StorageError::Io)?;
    let dir = root.path().join("store");
    let store = a_failed_write(&dir, |f| &f.frame_write, ENOSPC, append(4..6, 1))?;
    // Poisoned: no close checkpoint. The file holds the three frames and half of the fourth.
    drop(store);
    let store = LmdbLogStore::open_dir(&dir)?;
    assert_eq!(store.stats().recovered_entries, 3);
    check(&store, 1, 3, |_| 1);
    // The torn bytes are behind the next generation's frames: never read again.
    block_on(store.write(append(4..6, 2)))?;
    crash(store);
    let store = LmdbLogStore::open_dir(&dir)?;
    assert_eq!(store.stats().recovered_entries, 2);
    check(&store, 1, 5, |i| if i < 4 { 1 } else { 2 });
    Ok(())
}

/// A frame written whole whose `fdatasync` fails: the write fails with `EIO` and nothing of it
/// is readable. The frame itself is in the file (here, in the page cache: the process did not
/// crash), so the reopening finds it valid and recovers its entries too: they were never
/// acknowledged, and they follow the acknowledged ones exactly (the frame was built only if
/// contiguous after them). After a power loss instead, a frame not synced may be torn: it is
/// then dropped like the one of the previous test. Either way the log is a prefix of the
/// requests holding every acknowledged one.
#[test]
fn a_failed_frame_sync_acknowledges_nothing_and_the_reopening_finds_a_valid_log(
) -> Result<(), StorageError> {
    let root = tempfile::tempdir().map_err(StorageError::Io)?;
    let dir = root.path().join("store");
    let store = a_failed_write(&dir, |f| &f.frame_sync, EIO, append(4..6, 1))?;
    drop(store);
    let store = LmdbLogStore::open_dir(&dir)?;
    assert_eq!(store.stats().recovered_entries, 5);
    check(&store, 1, 5, |_| 1);
    block_on(store.write(append(6..7, 1)))?;
    drop(store);
    let store = LmdbLogStore::open_dir(&dir)?;
    check(&store, 1, 6, |_| 1);
    Ok(())
}

/// A failed frame holding requests of three groups of one environment (one cycle: the writer
/// is held while they queue): each of them fails with the error, nothing of any is readable,
/// every group refuses later writes, and the reopening holds each group's acknowledged entries
/// (in LMDB for one part, pending in the file for the other) and nothing of the failed frame.
#[test]
fn a_failed_frame_fails_every_group_of_its_cycle_and_the_others_entries_survive(
) -> Result<(), StorageError> {
    let root = tempfile::tempdir().map_err(StorageError::Io)?;
    let dir = root.path().join("env");
    let env = LmdbEnvironment::open(&dir)?;
    let stores = (1..=3).map(|g| env.log_store(g)).collect::<Result<Vec<_>, _>>()?;
    block_on(stores[0].write(append(1..3, 1)))?;
    // An LMDB transaction: checkpoints group 1's 1..=2.
    block_on(stores[1].write(vote(1)))?;
    block_on(stores[0].write(append(3..5, 1)))?;
    block_on(stores[1].write(append(1..4, 1)))?;
    let before = env.stats();
    assert_eq!((before.wal_commits, before.checkpoints), (3, 1), "{before:?}");
    env.running_shared().faults.frame_write.fail_nth(1);
    let outcomes: Vec<_> = {
        let _pause = env.running_shared().pause.lock().map_err(|_| StorageError::Closed)?;
        let batches = [append(5..7, 1), append(4..6, 1), append(1..3, 1)];
        let queued = stores.iter().zip(batches).map(|(s, b)| block_on(s.submit(b)));
        queued.collect::<Result<_, _>>()?
    };
    for outcome in outcomes {
        let outcome = block_on(outcome);
        assert!(is_io(&outcome, ENOSPC), "{outcome:?}");
    }
    assert!(env.has_failed());
    let after = env.stats();
    assert_eq!((after.wal_commits, after.checkpoints), (3, 1), "{after:?}");
    let lasts = [LogId::new(1, 4), LogId::new(1, 3), LogId::new(0, 0)];
    for (store, last) in stores.iter().zip(lasts) {
        assert!(matches!(block_on(store.write(vote(2))), Err(StorageError::Closed)));
        assert_eq!(block_on(store.open())?.last, last);
        if last.index > 0 {
            let read = block_on(store.read(1..last.index + 1, u64::MAX))?;
            assert_eq!(read, (1..=last.index).map(|i| entry(i, 1)).collect::<Vec<_>>());
        }
    }
    drop((stores, env));
    let env = LmdbEnvironment::open(&dir)?;
    assert_eq!(env.stats().recovered_entries, 5);
    assert_eq!(env.groups()?, vec![1, 2, 3]);
    for (g, last) in (1..=3).zip(lasts) {
        let store = env.log_store(g)?;
        check(&store, 1, last.index, |_| 1);
        assert_eq!(block_on(store.open())?.hard_state.current_term, u64::from(g == 2));
        block_on(store.write(append(last.index + 1..last.index + 2, 1)))?;
    }
    Ok(())
}

/// Requests queued behind a failed frame (cycles of at most two requests: the third waits
/// for the next cycle) are answered `Closed`, never written: no frame follows a failed one.
#[test]
fn requests_queued_behind_a_failed_frame_are_refused() -> Result<(), StorageError> {
    let root = tempfile::tempdir().map_err(StorageError::Io)?;
    let options = LmdbOptions::default().with_max_group_requests(2);
    let env = LmdbEnvironment::open_with(root.path().join("env"), options)?;
    let stores = (1..=3).map(|g| env.log_store(g)).collect::<Result<Vec<_>, _>>()?;
    env.running_shared().faults.frame_sync.fail_nth(1);
    let outcomes: Vec<_> = {
        let _pause = env.running_shared().pause.lock().map_err(|_| StorageError::Closed)?;
        let queued = stores.iter().map(|s| block_on(s.submit(append(1..3, 1))));
        queued.collect::<Result<_, _>>()?
    };
    let outcomes: Vec<_> = outcomes.into_iter().map(block_on).collect();
    assert!(is_io(&outcomes[0], EIO) && is_io(&outcomes[1], EIO), "{outcomes:?}");
    assert!(matches!(outcomes[2], Err(StorageError::Closed)), "{outcomes:?}");
    assert_eq!(env.stats().wal_commits, 0);
    for store in &stores {
        assert_eq!(block_on(store.open())?.last, LogId::new(0, 0));
    }
    Ok(())
}

/// A checkpoint (here of a hard state after three pending frames) whose commit fails: the
/// write fails, the pending entries stay readable, LMDB's generation is not moved on, so the
/// reopening recovers the pending entries from the file (the hard state was never
/// acknowledged and is absent).
#[test]
fn a_failed_checkpoint_keeps_the_pending_entries_recoverable() -> Result<(), StorageError> {
    let root = tempfile::tempdir().map_err(StorageError::Io)?;
    let dir = root.path().join("store");
    let store = a_failed_write(&dir, |f| &f.checkpoint, EIO, vote(2))?;
    // The generation of the three frames (a new store's: no checkpoint yet).
    let generation_before = 0;
    assert_eq!(generation(&store)?, generation_before);
    drop(store);
    let store = LmdbLogStore::open_dir(&dir)?;
    assert_eq!(store.stats().recovered_entries, 3);
    check(&store, 1, 3, |_| 1);
    assert_eq!(block_on(store.open())?.hard_state.current_term, 1);
    assert_eq!(generation(&store)?, generation_before + 1, "the open checkpoints once");
    Ok(())
}

/// Several groups of one environment with pending entries: the checkpoint of a purge, holding
/// the pending entries of both groups, fails. Both groups' pending entries are still read, and
/// the reopening recovers them from the file; the purge never happened.
#[test]
fn a_failed_checkpoint_of_several_groups_keeps_every_groups_entries() -> Result<(), StorageError> {
    let root = tempfile::tempdir().map_err(StorageError::Io)?;
    let dir = root.path().join("env");
    let env = LmdbEnvironment::open(&dir)?;
    let (a, b) = (env.log_store(1)?, env.log_store(2)?);
    block_on(a.write(append(1..4, 1)))?;
    block_on(b.write(append(1..3, 1)))?;
    assert_eq!((env.stats().wal_commits, env.stats().checkpoints), (2, 0));
    env.running_shared().faults.checkpoint.fail_nth(1);
    let failed = block_on(a.purge(2));
    assert!(is_io(&failed, EIO), "{failed:?}");
    assert!(env.has_failed());
    assert!(matches!(block_on(b.write(append(3..4, 1))), Err(StorageError::Closed)));
    check(&a, 1, 3, |_| 1);
    check(&b, 1, 2, |_| 1);
    drop((a, b, env));
    let env = LmdbEnvironment::open(&dir)?;
    assert_eq!(env.stats().recovered_entries, 5);
    let (a, b) = (env.log_store(1)?, env.log_store(2)?);
    check(&a, 1, 3, |_| 1);
    check(&b, 1, 2, |_| 1);
    block_on(a.purge(2))?;
    check(&a, 3, 3, |_| 1);
    Ok(())
}

/// A small file filled by appends: the append that does not fit is an LMDB transaction that
/// checkpoints the file's frames; that commit fails. Every entry acknowledged before it
/// (checkpointed by earlier checkpoints, or pending in the file) is there after reopening; the
/// failed append is not.
#[test]
fn a_failed_checkpoint_of_a_full_file_loses_no_acknowledged_entry() -> Result<(), StorageError> {
    let root = tempfile::tempdir().map_err(StorageError::Io)?;
    let dir = root.path().join("store");
    let options = LmdbOptions::default().with_wal_bytes(4096);
    let store = LmdbLogStore::open_dir_with(&dir, options)?;
    // The second checkpoint fails: the first proves the file's earlier frames are stale.
    store.shared.faults.checkpoint.fail_nth(2);
    let mut acknowledged = 0;
    let failed = loop {
        let next = acknowledged + 1;
        match block_on(store.write(append(next..next + 1, 1))) {
            Ok(()) => acknowledged = next,
            Err(err) => break err,
        }
        assert!(acknowledged < 1000, "no checkpoint failed");
    };
    assert!(matches!(&failed, StorageError::Io(e) if e.raw_os_error() == Some(EIO)), "{failed:?}");
    assert!(store.has_failed());
    let stats = store.stats();
    assert_eq!(stats.checkpoints, 1, "{stats:?}");
    // Every acknowledged write but the one that did not fit (the first checkpoint) was a frame.
    assert_eq!(stats.wal_commits + 1, acknowledged, "{stats:?}");
    check(&store, 1, acknowledged, |_| 1);
    drop(store);
    let store = LmdbLogStore::open_dir_with(&dir, options)?;
    // The frames since the first checkpoint, all of them still valid.
    assert!(store.stats().recovered_entries > 0);
    check(&store, 1, acknowledged, |_| 1);
    Ok(())
}

/// The checkpoint of a clean close fails (nobody is waiting to hear it): the pending entries
/// are recovered from the file by the next open.
#[test]
fn a_failed_checkpoint_at_close_leaves_the_entries_in_the_file() -> Result<(), StorageError> {
    let root = tempfile::tempdir().map_err(StorageError::Io)?;
    let dir = root.path().join("store");
    let store = store_with_pending_frames(&dir)?;
    store.shared.faults.checkpoint.fail_nth(1);
    drop(store);
    let store = LmdbLogStore::open_dir(&dir)?;
    assert_eq!(store.stats().recovered_entries, 3);
    check(&store, 1, 3, |_| 1);
    Ok(())
}

/// After a crash, the open's checkpoint of the recovered entries fails: the open fails with a
/// typed error (the checkpoint's), and the next open (without the fault) recovers them all.
#[test]
fn a_failed_checkpoint_at_open_fails_the_open_and_loses_nothing() -> Result<(), StorageError> {
    let root = tempfile::tempdir().map_err(StorageError::Io)?;
    let dir = root.path().join("store");
    crash(store_with_pending_frames(&dir)?);
    let armed = Arc::new(Faults::default());
    armed.checkpoint.fail_nth(1);
    faults::arm_next_open(Arc::clone(&armed));
    let failed = LmdbLogStore::open_dir(&dir);
    // The checkpoint's own error, not a generic one.
    let cause =
        matches!(&failed, Err(OpenError::Io { source, .. }) if source.raw_os_error() == Some(EIO));
    assert!(cause, "{failed:?}");
    let store = LmdbLogStore::open_dir(&dir)?;
    assert_eq!(store.stats().recovered_entries, 3);
    check(&store, 1, 3, |_| 1);
    Ok(())
}

/// After a crash, an open with a smaller file whose checkpoint of the recovered entries fails
/// does not shrink the file (its frames past the new size hold acknowledged entries); the next
/// open recovers them all and only then shrinks it.
#[test]
fn a_failed_checkpoint_at_open_does_not_shrink_the_file() -> Result<(), StorageError> {
    let root = tempfile::tempdir().map_err(StorageError::Io)?;
    let dir = root.path().join("store");
    let wal_len = || std::fs::metadata(dir.join(crate::wal::WAL_FILE)).map(|m| m.len());
    let large = LmdbOptions::default().with_wal_bytes(1 << 20);
    let store = LmdbLogStore::open_dir_with(&dir, large)?;
    // Frames of about 3 KiB each: most of them lie past 4 KiB.
    let big = |i: u64| raft_core::Entry {
        payload: raft_core::EntryPayload::Command(bytes::Bytes::from(vec![i as u8; 3000])),
        ..entry(i, 1)
    };
    for i in 1..=20u64 {
        block_on(store.write(WriteBatch { entries: vec![big(i)], ..WriteBatch::default() }))?;
    }
    assert_eq!(store.stats().wal_commits, 20);
    crash(store);
    let armed = Arc::new(Faults::default());
    armed.checkpoint.fail_nth(1);
    faults::arm_next_open(Arc::clone(&armed));
    let small = LmdbOptions::default().with_wal_bytes(4096);
    let failed = LmdbLogStore::open_dir_with(&dir, small);
    assert!(matches!(&failed, Err(OpenError::Io { .. })), "{failed:?}");
    assert_eq!(wal_len().map_err(StorageError::Io)?, 1 << 20);
    let store = LmdbLogStore::open_dir_with(&dir, small)?;
    assert_eq!(store.stats().recovered_entries, 20);
    assert_eq!(block_on(store.read(1..21, u64::MAX))?, (1..=20).map(big).collect::<Vec<_>>());
    assert_eq!(wal_len().map_err(StorageError::Io)?, 4096);
    Ok(())
}

/// After a crash, the open with a larger file cannot write the zeros to extend it (`EFBIG`
/// after one slice): the file is off for that run (`wal::open`), its frames are still
/// checkpointed into LMDB by the open, later writes go to LMDB alone, and the next open (the
/// file back on) finds every entry once, the old frames stale.
#[test]
fn failed_zeros_at_open_turn_the_file_off_after_checkpointing_its_frames(
) -> Result<(), StorageError> {
    let root = tempfile::tempdir().map_err(StorageError::Io)?;
    let dir = root.path().join("store");
    let small = LmdbOptions::default().with_wal_bytes(64 << 10);
    let store = LmdbLogStore::open_dir_with(&dir, small)?;
    for i in 1..=3 {
        block_on(store.write(append(i..i + 1, 1)))?;
    }
    assert_eq!(store.stats().wal_commits, 3);
    crash(store);
    let armed = Arc::new(Faults::default());
    armed.zeros.fail_nth(1);
    faults::arm_next_open(Arc::clone(&armed));
    let large = LmdbOptions::default().with_wal_bytes(8 << 20);
    let store = LmdbLogStore::open_dir_with(&dir, large)?;
    // One slice of zeros was written after the 64 KiB, then the fault struck.
    let len = std::fs::metadata(dir.join(crate::wal::WAL_FILE)).map_err(StorageError::Io)?.len();
    assert_eq!(len, (64 << 10) + (1 << 20));
    let stats = store.stats();
    assert_eq!((stats.recovered_entries, stats.checkpoints), (3, 1), "{stats:?}");
    check(&store, 1, 3, |_| 1);
    block_on(store.write(append(4..6, 1)))?;
    assert_eq!(store.stats().wal_commits, 0, "the file is off for this run");
    crash(store);
    let store = LmdbLogStore::open_dir_with(&dir, large)?;
    assert_eq!(store.stats().recovered_entries, 0);
    check(&store, 1, 5, |_| 1);
    block_on(store.write(append(6..7, 1)))?;
    assert_eq!(store.stats().wal_commits, 1, "the file is on again");
    crash(store);
    let store = LmdbLogStore::open_dir_with(&dir, large)?;
    check(&store, 1, 6, |_| 1);
    Ok(())
}
