//! Tests of the journal of a multi-group environment (`journal.rs`): reads across moves,
//! truncation, purge, reset and removal of entries in the journal or already moved, reopening
//! with a non-empty journal, the upgrade from format 3, and a reader holding its snapshot
//! across a move.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use futures::executor::block_on;
use heed::types::Bytes as RawBytes;
use heed::CommitOrAbort;
use raft_core::{Entry, EntryPayload, HardState, LogId, LogStore, WriteBatch};

use crate::codec::{self, MetaRecord, FORMAT_KEY};
use crate::env;
use crate::journal;
use crate::layout::{Layout, GROUPS_LOG_DB, GROUPS_META_DB};
use crate::registry::DirGuard;
use crate::{LmdbEnvironment, LmdbLogStore, LmdbOptions, OpenError, FORMAT_VERSION};

fn entry(index: u64, term: u64) -> Entry {
    Entry { index, term, payload: EntryPayload::Command(Bytes::from(format!("e{index}t{term}"))) }
}

fn entries(range: std::ops::Range<u64>, term: u64) -> Vec<Entry> {
    range.map(|i| entry(i, term)).collect()
}

fn append(range: std::ops::Range<u64>, term: u64) -> WriteBatch {
    WriteBatch { entries: entries(range, term), ..WriteBatch::default() }
}

/// Options whose journal is moved once it holds `records` entries.
fn bound(records: usize) -> LmdbOptions {
    // Without the write-ahead file, whose frames take pure appends past the journal.
    LmdbOptions::default().with_journal_bound(records, u64::MAX).with_wal_bytes(0)
}

/// An environment whose journal is moved once it holds `records` entries, and takes every
/// transaction's entries (not only those of transactions appending to several groups).
fn journaled(dir: impl AsRef<Path>, records: usize) -> LmdbEnvironment {
    let env = LmdbEnvironment::open_with(dir, bound(records)).unwrap();
    env.running_shared().always_journal.store(true, Ordering::SeqCst);
    env
}

/// The number of records in the journal database.
fn journal_len(store: &LmdbLogStore) -> u64 {
    let slot = store.shared.handles();
    let handles = slot.as_ref().unwrap();
    let txn = handles.read_txn().unwrap();
    handles.journal.as_ref().unwrap().len(&txn).unwrap()
}

fn read(store: &LmdbLogStore, range: std::ops::Range<u64>) -> Vec<Entry> {
    block_on(store.read(range, u64::MAX)).unwrap()
}

#[test]
fn entries_are_read_from_the_journal_and_after_a_move_from_the_log() {
    let root = tempfile::tempdir().unwrap();
    let env = journaled(root.path().join("env"), 6);
    let (a, b) = (env.log_store(1).unwrap(), env.log_store(2).unwrap());
    block_on(a.write(append(1..4, 1))).unwrap();
    block_on(b.write(append(1..3, 1))).unwrap();
    assert_eq!(journal_len(&a), 5);
    assert_eq!(read(&a, 1..4), entries(1..4, 1));
    assert_eq!(read(&b, 1..3), entries(1..3, 1));
    // Due: this commit moves the 6 records first, then journals its own.
    block_on(b.write(append(3..4, 1))).unwrap();
    assert_eq!(journal_len(&a), 6);
    block_on(a.write(append(4..6, 1))).unwrap();
    assert_eq!(journal_len(&a), 2);
    // Group 1 spans the log (1..=3) and the journal (4..=5).
    assert_eq!(read(&a, 1..6), entries(1..6, 1));
    assert_eq!(read(&a, 2..5), entries(2..5, 1));
    assert_eq!(read(&b, 1..4), entries(1..4, 1));
    // The byte limit holds across the two places.
    let one = entry(3, 1).size_bytes();
    assert_eq!(block_on(a.read(3..6, one + 1)).unwrap(), entries(3..4, 1));
    assert_eq!(block_on(a.read(3..6, 2 * one)).unwrap(), entries(3..5, 1));
}

#[test]
fn truncation_purge_and_reset_apply_to_the_journal_and_the_log() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("env");
    {
        let env = journaled(&dir, 4);
        let (a, b) = (env.log_store(1).unwrap(), env.log_store(2).unwrap());
        block_on(a.write(append(1..5, 1))).unwrap(); // 4 records: due
        block_on(a.write(append(5..8, 1))).unwrap(); // moves 1..=4, journals 5..=7
        assert_eq!(journal_len(&a), 3);
        // A truncation inside the journal.
        let batch =
            WriteBatch { truncate_from: Some(6), entries: entries(6..7, 2), ..append(0..0, 0) };
        block_on(a.write(batch)).unwrap();
        assert_eq!(read(&a, 1..7), [entries(1..6, 1), entries(6..7, 2)].concat());
        // A truncation of moved entries (the log) and of the whole journal.
        let batch =
            WriteBatch { truncate_from: Some(3), entries: entries(3..5, 3), ..append(0..0, 0) };
        block_on(a.write(batch)).unwrap();
        assert_eq!(read(&a, 1..5), [entries(1..3, 1), entries(3..5, 3)].concat());
        // A purge of the log and part of the journal.
        block_on(a.purge(3)).unwrap();
        assert_eq!(read(&a, 4..5), entries(4..5, 3));
        let state = block_on(a.open()).unwrap();
        assert_eq!((state.purged, state.last), (LogId::new(3, 3), LogId::new(3, 4)));
        // A reset of a group whose entries are in both places.
        block_on(b.write(append(1..4, 1))).unwrap();
        block_on(b.write(append(4..6, 1))).unwrap();
        block_on(b.reset(LogId::new(4, 10))).unwrap();
        block_on(b.write(append(11..13, 4))).unwrap();
        assert_eq!(read(&b, 11..13), entries(11..13, 4));
    }
    // The journal left by all that opens (each entry stored once) and reads the same.
    let env = journaled(&dir, 4);
    let (a, b) = (env.log_store(1).unwrap(), env.log_store(2).unwrap());
    assert_eq!(read(&a, 4..5), entries(4..5, 3));
    assert_eq!(read(&b, 11..13), entries(11..13, 4));
    assert_eq!(block_on(b.open()).unwrap().purged, LogId::new(4, 10));
}

#[test]
fn a_reopened_environment_reads_its_journal_and_moves_it_later() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("env");
    {
        let env = journaled(&dir, 100);
        for group in 1..=3 {
            let store = env.log_store(group).unwrap();
            let mut batch = append(1..4, group);
            batch.hard_state = Some(HardState { current_term: group, voted_for: Some(group) });
            block_on(store.write(batch)).unwrap();
        }
    }
    let env = journaled(&dir, 10);
    let stores: Vec<_> = (1..=3).map(|g| env.log_store(g).unwrap()).collect();
    assert_eq!(journal_len(&stores[0]), 9);
    for (store, group) in stores.iter().zip(1..) {
        assert_eq!(read(store, 1..4), entries(1..4, group));
        let state = block_on(store.open()).unwrap();
        assert_eq!(state.hard_state, HardState { current_term: group, voted_for: Some(group) });
    }
    block_on(stores[0].write(append(4..5, 1))).unwrap(); // 10 records: due
    block_on(stores[1].write(append(4..5, 2))).unwrap(); // moves
    assert_eq!(journal_len(&stores[0]), 1);
    assert_eq!(read(&stores[0], 1..5), entries(1..5, 1));
    assert_eq!(read(&stores[1], 1..5), entries(1..5, 2));
    drop((stores, env));
    // Sequence numbers go on after a move emptied the journal and a restart.
    let env = journaled(&dir, 10);
    let store = env.log_store(3).unwrap();
    block_on(store.write(append(4..6, 3))).unwrap();
    assert_eq!(read(&store, 1..6), entries(1..6, 3));
}

#[test]
fn a_removed_group_leaves_nothing_in_the_journal() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("env");
    {
        let env = journaled(&dir, 5);
        let (a, b) = (env.log_store(1).unwrap(), env.log_store(2).unwrap());
        block_on(a.write(append(1..6, 1))).unwrap();
        block_on(a.write(append(6..9, 1))).unwrap(); // 1..=5 moved, 6..=8 journaled
        block_on(b.write(append(1..2, 1))).unwrap(); // 4 records: not due
        drop(a);
        env.remove_group(1).unwrap();
        assert_eq!(journal_len(&b), 1);
        // Created again with fewer entries: nothing of the old group shows.
        let a = env.log_store(1).unwrap();
        block_on(a.write(append(1..3, 7))).unwrap();
        assert_eq!(read(&a, 1..3), entries(1..3, 7));
    }
    let env = journaled(&dir, 5);
    let a = env.log_store(1).unwrap();
    assert_eq!(block_on(a.open()).unwrap().last, LogId::new(7, 2));
    assert_eq!(read(&a, 1..3), entries(1..3, 7));
    assert_eq!(read(&env.log_store(2).unwrap(), 1..2), entries(1..2, 1));
}

/// A reader's snapshot taken before a move: the move deletes the journal records it needs,
/// and the reader must not fail or read another snapshot's entries; it reads again instead.
#[test]
fn a_read_snapshot_held_across_a_move_or_a_truncation_is_read_again() {
    let root = tempfile::tempdir().unwrap();
    let env = journaled(root.path().join("env"), 3);
    let store = env.log_store(1).unwrap();
    block_on(store.write(append(1..4, 1))).unwrap(); // due
    let slot = store.shared.handles();
    let handles = slot.as_ref().unwrap();
    let before_move = handles.read_txn().unwrap();
    // Another thread commits (the handles' read lock is shared).
    std::thread::scope(|s| {
        s.spawn(|| block_on(store.write(append(4..5, 1))).unwrap()).join().unwrap();
    });
    assert_eq!(
        store.try_read(handles, &before_move, Default::default(), &(1..4), u64::MAX).unwrap(),
        None
    );
    assert_eq!(
        store
            .try_read(handles, &handles.read_txn().unwrap(), Default::default(), &(1..5), u64::MAX)
            .unwrap(),
        Some(entries(1..5, 1))
    );
    drop(before_move);
    // A truncation rewrites entry 4 in the journal: the old snapshot never sees the new one.
    let before_truncation = handles.read_txn().unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            let batch =
                WriteBatch { truncate_from: Some(4), entries: entries(4..5, 2), ..append(0..0, 0) };
            block_on(store.write(batch)).unwrap()
        })
        .join()
        .unwrap();
    });
    // The old record of entry 4 is withdrawn from the read index once deleted, and the new one
    // is not in the old snapshot.
    let old =
        store.try_read(handles, &before_truncation, Default::default(), &(1..5), u64::MAX).unwrap();
    assert_eq!(old, None);
    drop(before_truncation);
    drop(slot);
    assert_eq!(read(&store, 1..5), [entries(1..4, 1), entries(4..5, 2)].concat());
    assert_eq!(store.shared.read_index.len(), 1);
}

/// Writes the databases of a multi-group environment as format 3 wrote them (no journal): group
/// 5 with entries 1..=3 and hard state (3, 2).
fn write_format_3_environment(dir: &Path) {
    let guard = DirGuard::acquire(dir).unwrap();
    let env = env::open_env(&guard, 1 << 20).unwrap();
    let wtxn = env.write_txn().unwrap();
    let keys = Layout::Groups.keys(5);
    let created = env
        .create_databases_and_commit(wtxn, |opener, wtxn| -> heed::Result<_> {
            let meta = opener.create_database::<RawBytes, RawBytes>(wtxn, Some(GROUPS_META_DB))?;
            let log = opener.create_database::<RawBytes, RawBytes>(wtxn, Some(GROUPS_LOG_DB))?;
            meta.put(wtxn, FORMAT_KEY.as_bytes(), &codec::encode_format(3))?;
            let mut record = MetaRecord::default();
            record.set_hard_state(HardState { current_term: 3, voted_for: Some(2) });
            record.set_last(LogId::new(3, 3));
            meta.put(wtxn, keys.meta().as_slice(), &codec::encode_meta(&record).unwrap())?;
            for e in entries(1..4, 3) {
                let bytes = codec::encode_entry(&e, Vec::new()).unwrap();
                log.put(wtxn, keys.log(e.index).as_slice(), &bytes)?;
            }
            Ok(CommitOrAbort::<_, ()>::Commit(()))
        })
        .unwrap();
    assert!(!created.is_abort());
    env.prepare_for_closing().wait();
}

/// The format record and whether the journal exists, read through a raw environment.
fn format_and_journal(dir: &Path) -> (Vec<u8>, bool) {
    let guard = DirGuard::acquire(dir).unwrap();
    let env = env::open_env(&guard, 1 << 20).unwrap();
    let (_, Some(meta), journal) = env::open_databases(&env, Layout::Groups).unwrap() else {
        panic!("not an environment");
    };
    let txn = env.read_txn().unwrap();
    let format = meta.get(&txn, FORMAT_KEY.as_bytes()).unwrap().unwrap().to_vec();
    drop(txn);
    env.prepare_for_closing().wait();
    (format, journal.is_some())
}

#[test]
fn a_format_3_environment_is_read_and_upgraded_and_a_newer_one_refused() {
    let root = tempfile::tempdir().unwrap();
    let dir = std::fs::canonicalize(root.path()).unwrap();
    write_format_3_environment(&dir);
    assert_eq!(format_and_journal(&dir), (codec::encode_format(3).to_vec(), false));
    {
        let env = journaled(&dir, 4);
        assert_eq!(env.groups().unwrap(), vec![5]);
        let store = env.log_store(5).unwrap();
        assert_eq!(read(&store, 1..4), entries(1..4, 3));
        block_on(store.write(append(4..9, 3))).unwrap();
        block_on(store.write(append(9..10, 3))).unwrap(); // moves
        assert_eq!(read(&store, 1..10), entries(1..10, 3));
    }
    // Upgraded: a build of format 3 refuses it (its newest version is below this one).
    assert_eq!(FORMAT_VERSION, 4);
    assert_eq!(format_and_journal(&dir), (codec::encode_format(4).to_vec(), true));
    {
        let guard = DirGuard::acquire(&dir).unwrap();
        let env = env::open_env(&guard, 1 << 20).unwrap();
        let (_, Some(meta), _) = env::open_databases(&env, Layout::Groups).unwrap() else {
            panic!("not an environment");
        };
        let mut txn = env.write_txn().unwrap();
        let newer = codec::encode_format(crate::MARKED_FORMAT_VERSION + 1);
        meta.put(&mut txn, FORMAT_KEY.as_bytes(), &newer).unwrap();
        txn.commit().unwrap();
        env.prepare_for_closing().wait();
    }
    match LmdbEnvironment::open(&dir) {
        Err(OpenError::UnsupportedVersion { found: 6, supported: 5, .. }) => {}
        other => panic!("unexpected {other:?}"),
    }
}

/// A current environment without its journal database is corrupt.
#[test]
fn a_current_environment_without_a_journal_is_corrupt() {
    let root = tempfile::tempdir().unwrap();
    let dir = std::fs::canonicalize(root.path()).unwrap();
    write_format_3_environment(&dir);
    {
        let guard = DirGuard::acquire(&dir).unwrap();
        let env = env::open_env(&guard, 1 << 20).unwrap();
        let (_, Some(meta), _) = env::open_databases(&env, Layout::Groups).unwrap() else {
            panic!("not an environment");
        };
        let mut txn = env.write_txn().unwrap();
        meta.put(&mut txn, FORMAT_KEY.as_bytes(), &codec::encode_format(FORMAT_VERSION)).unwrap();
        txn.commit().unwrap();
        env.prepare_for_closing().wait();
    }
    assert!(matches!(LmdbEnvironment::open(&dir), Err(OpenError::Corrupt { .. })));
}

/// A journal record of a group that does not exist is corrupt (no group to blame); one
/// outside its group's log (the group's metadata record says which entries it holds) fails
/// that group alone: the environment opens, the group is `Corrupt`, naming it and why, and it
/// can be removed (review F2).
#[test]
fn a_journal_record_outside_its_groups_log_is_corrupt() {
    for (group, index) in [(9, 1), (1, 5)] {
        let root = tempfile::tempdir().unwrap();
        let dir = std::fs::canonicalize(root.path()).unwrap();
        {
            let env = LmdbEnvironment::open(&dir).unwrap();
            block_on(env.log_store(1).unwrap().write(append(1..3, 1))).unwrap();
        }
        tamper_journal(&dir, |journal, _, txn| {
            journal.put(txn, &1000u64.to_be_bytes(), &journal_record(group, index, 1)).unwrap();
        });
        if group == 9 {
            let reason = open_is_corrupt(&dir);
            assert!(reason.contains("outside"), "{reason}");
            continue;
        }
        let env = LmdbEnvironment::open(&dir).unwrap();
        assert_group_failed(&env, 1, "outside its log");
        env.remove_group(1).unwrap();
        assert_eq!(read(&env.log_store(1).unwrap(), 1..1), vec![]);
    }
}

/// Opening `group` of `env` fails, `Corrupt`, naming the group and saying `why`.
fn assert_group_failed(env: &LmdbEnvironment, group: u64, why: &str) {
    match env.log_store(group) {
        Err(OpenError::Corrupt { reason, .. }) => {
            assert!(reason.contains(&format!("group {group}")), "not named: {reason}");
            assert!(reason.contains(why), "does not say {why:?}: {reason}");
        }
        other => panic!("the failed group opened: {other:?}"),
    }
}

/// A transaction appending to one group writes its entries straight to the group's log, unless
/// the group has entries in the journal (its log must hold only its older entries).
#[test]
fn a_transaction_of_one_group_appends_to_its_log_unless_the_group_is_in_the_journal() {
    let root = tempfile::tempdir().unwrap();
    let env = LmdbEnvironment::open_with(root.path().join("env"), bound(100)).unwrap();
    let (a, b) = (env.log_store(1).unwrap(), env.log_store(2).unwrap());
    block_on(a.write(append(1..4, 1))).unwrap();
    assert_eq!(journal_len(&a), 0);
    // Two groups in one transaction: journaled.
    let pause = env.running_shared().pause.lock().unwrap();
    let first = block_on(a.submit(append(4..5, 1))).unwrap();
    let second = block_on(b.submit(append(1..3, 1))).unwrap();
    drop(pause);
    block_on(first).unwrap();
    block_on(second).unwrap();
    let journaled_now = journal_len(&a);
    assert!(journaled_now >= 2, "{journaled_now}");
    // Group 2 alone, but with entries in the journal: still journaled.
    block_on(b.write(append(3..4, 1))).unwrap();
    assert_eq!(journal_len(&a), journaled_now + 1);
    assert_eq!(read(&a, 1..5), entries(1..5, 1));
    assert_eq!(read(&b, 1..4), entries(1..4, 1));
}

/// Opening a group reads only that group's journal records, not the whole journal (startup
/// would otherwise take groups x journal records).
#[test]
fn opening_a_group_reads_only_its_own_journal_records() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("env");
    {
        let env = journaled(&dir, 1000);
        block_on(env.log_store(1).unwrap().write(append(1..201, 1))).unwrap();
        block_on(env.log_store(2).unwrap().write(append(1..4, 1))).unwrap();
    }
    let env = journaled(&dir, 1000);
    env::JOURNAL_RECORDS_CHECKED.with(|n| n.set(0));
    let b = env.log_store(2).unwrap();
    let checked = env::JOURNAL_RECORDS_CHECKED.with(|n| n.get());
    assert_eq!(checked, 3, "journal records read to open a group of 3 of them");
    assert_eq!(journal_len(&b), 203);
    assert_eq!(read(&b, 1..4), entries(1..4, 1));
}

/// Changes the journal and metadata databases of the environment in `dir` (closed) in one
/// transaction.
fn tamper_journal(dir: &Path, change: impl FnOnce(&env::Db, &env::Db, &mut heed::RwTxn<'_>)) {
    let guard = DirGuard::acquire(dir).unwrap();
    let env = env::open_env(&guard, 1 << 20).unwrap();
    let (_, Some(meta), Some(journal)) = env::open_databases(&env, Layout::Groups).unwrap() else {
        panic!("not an environment with a journal");
    };
    let mut txn = env.write_txn().unwrap();
    change(&journal, &meta, &mut txn);
    txn.commit().unwrap();
    env.prepare_for_closing().wait();
}

/// A journal record: group, index, then the entry record.
fn journal_record(group: u64, index: u64, term: u64) -> Vec<u8> {
    let mut record = [group, index].map(u64::to_be_bytes).concat();
    record.extend(codec::encode_entry(&entry(index, term), Vec::new()).unwrap());
    record
}

fn open_is_corrupt(dir: &Path) -> String {
    match LmdbEnvironment::open(dir) {
        Err(OpenError::Corrupt { reason, .. }) => reason,
        Err(other) => panic!("unexpected {other:?}"),
        Ok(_) => panic!("a hostile journal opened"),
    }
}

/// A journal sequence number that cannot grow (the last one) is corrupt: appending after it
/// would overflow.
#[test]
fn a_journal_sequence_at_its_end_is_corrupt() {
    let root = tempfile::tempdir().unwrap();
    let dir = std::fs::canonicalize(root.path()).unwrap();
    drop(LmdbEnvironment::open(&dir).unwrap());
    tamper_journal(&dir, |_, meta, txn| {
        meta.put(txn, journal::JOURNAL_SEQ_KEY, &u64::MAX.to_be_bytes()).unwrap();
    });
    open_is_corrupt(&dir);
}

/// A journal record of an entry the group's log also holds (inside the group's bounds) fails
/// that group at open, even if the group is never opened (a move would overwrite the log's
/// entry): its records are set aside, never moved, the other groups open and move their
/// records, and the group is `Corrupt` until it is removed (review F2).
#[test]
fn a_journal_record_of_an_entry_also_in_the_log_is_corrupt() {
    let root = tempfile::tempdir().unwrap();
    let dir = std::fs::canonicalize(root.path()).unwrap();
    {
        // One group per transaction: straight to the log (without the write-ahead file, which
        // would hold the entries instead).
        let env =
            LmdbEnvironment::open_with(&dir, LmdbOptions::default().with_wal_bytes(0)).unwrap();
        block_on(env.log_store(1).unwrap().write(append(1..4, 1))).unwrap();
        block_on(env.log_store(2).unwrap().write(append(1..2, 1))).unwrap();
    }
    tamper_journal(&dir, |journal, _, txn| {
        journal.put(txn, &7u64.to_be_bytes(), &journal_record(1, 3, 9)).unwrap();
    });
    let env = LmdbEnvironment::open_with(&dir, bound(2).with_wal_bytes(0)).unwrap();
    assert_group_failed(&env, 1, "also in its log");
    let b = env.log_store(2).unwrap();
    env.running_shared().always_journal.store(true, std::sync::atomic::Ordering::SeqCst);
    for i in 2..6 {
        block_on(b.write(append(i..i + 1, 1))).unwrap();
    }
    assert_eq!(read(&b, 1..6), entries(1..6, 1));
    assert!(!env.has_failed());
    drop((b, env));
    let env = LmdbEnvironment::open(&dir).unwrap();
    assert_group_failed(&env, 1, "also in its log");
    env.remove_group(1).unwrap();
    assert_eq!(read(&env.log_store(1).unwrap(), 1..1), vec![]);
}

/// `read` itself, its snapshot taken just before a move deletes the journal records it needs:
/// its first attempt finds them gone and it reads again with a new snapshot.
#[test]
fn a_read_racing_a_move_reads_again() {
    let root = tempfile::tempdir().unwrap();
    let env = journaled(root.path().join("env"), 3);
    let store = env.log_store(1).unwrap();
    block_on(store.write(append(1..4, 1))).unwrap(); // due
    let shared = &store.shared;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    *shared.read_barrier.lock().unwrap() = Some(std::sync::Arc::clone(&barrier));
    shared.read_attempts.store(0, Ordering::SeqCst);
    let read_entries = std::thread::scope(|s| {
        let reader = s.spawn(|| block_on(store.read(1..4, u64::MAX)));
        barrier.wait(); // the reader has its snapshot
        block_on(store.write(append(4..5, 1))).unwrap(); // moves 1..=3
        assert_eq!(journal_len(&store), 1);
        barrier.wait();
        reader.join().unwrap()
    });
    assert_eq!(read_entries.unwrap(), entries(1..4, 1));
    assert_eq!(shared.read_attempts.load(Ordering::SeqCst), 2);
}

/// Journals no build of this crate writes fail open with `Corrupt`: a record shorter than its
/// header, a key that is not a sequence number, a `journal-seq` that is not one, and an entry
/// in the journal twice.
#[test]
fn hostile_journal_shapes_are_corrupt() {
    type Change = fn(&env::Db, &env::Db, &mut heed::RwTxn<'_>);
    let shapes: [(&str, Change); 4] = [
        ("a journal record of 15 bytes", |journal, _, txn| {
            journal.put(txn, &100u64.to_be_bytes(), &[0u8; 15]).unwrap();
        }),
        ("a journal key of 3 bytes", |journal, _, txn| {
            journal.put(txn, &[0u8, 0, 1], &journal_record(1, 4, 1)).unwrap();
        }),
        ("the journal sequence record is not 8 bytes", |_, meta, txn| {
            meta.put(txn, journal::JOURNAL_SEQ_KEY, &[0u8, 0, 1]).unwrap();
        }),
        ("entry 2 of group 1 is in the journal twice", |journal, _, txn| {
            journal.put(txn, &100u64.to_be_bytes(), &journal_record(1, 2, 1)).unwrap();
        }),
    ];
    for (expected, change) in shapes {
        let root = tempfile::tempdir().unwrap();
        let dir = std::fs::canonicalize(root.path()).unwrap();
        {
            let env = journaled(&dir, 100);
            block_on(env.log_store(1).unwrap().write(append(1..4, 1))).unwrap();
            assert_eq!(journal_len(&env.log_store(2).unwrap()), 3);
        }
        tamper_journal(&dir, change);
        let reason = open_is_corrupt(&dir);
        assert_eq!(reason, expected);
    }
}

/// The data file is extended ahead of a commit that moves the journal by the bytes it moves,
/// not only by the commit's own entries: LMDB never grows the file itself in that commit.
#[test]
fn the_headroom_counts_the_journal_a_commit_moves() {
    let root = tempfile::tempdir().unwrap();
    let options = LmdbOptions::default()
        .with_journal_bound(1000, u64::MAX)
        .with_file_headroom(256 << 10)
        .with_wal_bytes(0);
    let env = LmdbEnvironment::open_with(root.path().join("env"), options).unwrap();
    env.running_shared().always_journal.store(true, Ordering::SeqCst);
    let store = env.log_store(1).unwrap();
    let big = |index: u64| Entry {
        index,
        term: 1,
        payload: EntryPayload::Command(Bytes::from(vec![index as u8; 1024])),
    };
    let mut next = 1;
    while journal_len(&store) < 1000 {
        let batch = (next..next + 100).map(big).collect();
        block_on(store.write(WriteBatch { entries: batch, ..WriteBatch::default() })).unwrap();
        next += 100;
    }
    // Due (1000 records, 1 MiB): this small commit moves them all.
    block_on(store.write(WriteBatch { entries: vec![big(next)], ..WriteBatch::default() }))
        .unwrap();
    assert_eq!(journal_len(&store), 1);
    let stats = env.disk_stats().unwrap();
    let used = stats.used_pages * stats.page_size;
    assert!(stats.file_bytes > used, "LMDB grew the file itself: {stats:?}");
}

/// A journal holding the groups' entries interleaved (written group 3, 1, 2 in turn): the move
/// puts every entry under its own key of its group's log, once, and each group reads back
/// exactly its entries. (It checks each record's contents, not the order of the writes: a
/// B-tree lists keys sorted whatever order they were put in.)
#[test]
fn a_move_of_interleaved_groups_puts_each_entry_under_its_own_key() {
    let root = tempfile::tempdir().unwrap();
    let env = journaled(root.path().join("env"), 12);
    let stores: Vec<_> = (1..=3).map(|group| env.log_store(group).unwrap()).collect();
    // Journal order: group 3, 1, 2, one entry each, four times (12 records, then due).
    for index in 1..5 {
        for (i, store) in [(2, &stores[2]), (0, &stores[0]), (1, &stores[1])] {
            block_on(store.write(append(index..index + 1, i + 1))).unwrap();
        }
    }
    assert_eq!(journal_len(&stores[0]), 12);
    block_on(stores[1].write(append(5..6, 2))).unwrap(); // moves the 12, journals its own
    assert_eq!(journal_len(&stores[0]), 1);
    {
        let slot = stores[0].shared.handles();
        let handles = slot.as_ref().unwrap();
        let txn = handles.read_txn().unwrap();
        let mut keys = Vec::new();
        for item in handles.log.iter(&txn).unwrap() {
            let (key, value) = item.unwrap();
            let keys_of = |group| handles.layout.keys(group);
            let group = u64::from_be_bytes(key[..8].try_into().unwrap());
            let index = keys_of(group).index_of(key).unwrap();
            assert_eq!(value, codec::encode_entry(&entry(index, group), Vec::new()).unwrap());
            keys.push((group, index));
        }
        let expected: Vec<_> = (1..=3).flat_map(|g| (1..5).map(move |i| (g, i))).collect();
        assert_eq!(keys, expected);
    }
    for (i, store) in stores.iter().enumerate() {
        let term = i as u64 + 1;
        let last = if i == 1 { 6 } else { 5 };
        assert_eq!(read(store, 1..last), entries(1..last, term));
    }
}

/// The move checks the journal against the writer's index: a record the index does not know
/// (written behind the writer's back), or a record the index knows that is gone, fails the
/// move as corruption and stops the environment, instead of moving a wrong set of entries.
#[test]
fn a_journal_that_disagrees_with_the_writers_index_fails_the_move() {
    for extra in [true, false] {
        let root = tempfile::tempdir().unwrap();
        let env = journaled(root.path().join("env"), 3);
        let store = env.log_store(1).unwrap();
        block_on(store.write(append(1..4, 1))).unwrap(); // due: 3 records
        {
            let slot = store.shared.handles();
            let handles = slot.as_ref().unwrap();
            let journal = handles.journal.as_ref().unwrap();
            let mut txn = handles.env.write_txn().unwrap();
            if extra {
                journal.put(&mut txn, &1_000u64.to_be_bytes(), &journal_record(1, 9, 1)).unwrap();
            } else {
                assert!(journal.delete(&mut txn, &1u64.to_be_bytes()).unwrap());
            }
            txn.commit().unwrap();
        }
        let moved = block_on(store.write(append(4..5, 1)));
        assert!(matches!(moved, Err(raft_core::StorageError::Corrupt(_))), "{moved:?}");
        assert!(env.has_failed());
    }
}

/// All the records of group 1's log database, in key order.
fn log_records(store: &LmdbLogStore) -> Vec<(Vec<u8>, Vec<u8>)> {
    let slot = store.shared.handles();
    let handles = slot.as_ref().unwrap();
    let txn = handles.read_txn().unwrap();
    let records = handles.log.iter(&txn).unwrap();
    records.map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap()).collect()
}

/// Two journal records swapped (seq 0 holds entry 2 of group 1, seq 1 holds entry 1): the
/// count of records is right, but the move finds a record holding another entry than the one
/// the writer's index has for it, fails as corruption and writes nothing to the log (it must
/// not put entry 2's record under entry 1's key).
#[test]
fn a_move_of_swapped_records_fails_and_leaves_the_log_unchanged() {
    let root = tempfile::tempdir().unwrap();
    let env = journaled(root.path().join("env"), 3);
    let store = env.log_store(1).unwrap();
    block_on(store.write(append(1..4, 1))).unwrap(); // seq 0, 1, 2; due: 3 records
    let before = log_records(&store);
    {
        let slot = store.shared.handles();
        let handles = slot.as_ref().unwrap();
        let journal = handles.journal.as_ref().unwrap();
        let mut txn = handles.env.write_txn().unwrap();
        let first = journal.get(&txn, &journal::seq_key(0)).unwrap().unwrap().to_vec();
        let second = journal.get(&txn, &journal::seq_key(1)).unwrap().unwrap().to_vec();
        assert_eq!(journal::split_record(&first).unwrap().1, 1);
        journal.put(&mut txn, &journal::seq_key(0), &second).unwrap();
        journal.put(&mut txn, &journal::seq_key(1), &first).unwrap();
        txn.commit().unwrap();
    }
    let moved = block_on(store.write(append(4..5, 1)));
    assert!(matches!(moved, Err(raft_core::StorageError::Corrupt(_))), "{moved:?}");
    assert!(env.has_failed());
    assert_eq!(log_records(&store), before);
    assert_eq!(journal_len(&store), 3);
}

/// A move of a journal of 1 MiB records reads and writes one record at a time: afterwards the
/// writer's buffer holds at most one record's worth (with the slack of `Vec`'s growth), not
/// the whole journal, which it would otherwise keep for the environment's life.
#[test]
fn a_move_keeps_at_most_one_records_worth_of_buffer() {
    const RECORD: usize = 1 << 20;
    const RECORDS: u64 = 8;
    let root = tempfile::tempdir().unwrap();
    let env = journaled(root.path().join("env"), 1_000);
    let store = env.log_store(1).unwrap();
    let slot = store.shared.handles();
    let handles = slot.as_ref().unwrap();
    let journal = handles.journal.as_ref().unwrap();
    let dbs = (journal, &handles.log, &handles.meta);
    let txn = handles.read_txn().unwrap();
    let mut index = journal::JournalIndex::load(dbs, &txn, (1_000, u64::MAX)).unwrap();
    drop(txn);
    let mut txn = handles.env.write_txn().unwrap();
    index.begin();
    let entry = vec![7u8; RECORD];
    for i in 1..=RECORDS {
        index.append(journal, &mut txn, 1, i, &entry).unwrap();
    }
    let keys = |group, index| handles.layout.keys(group).log(index);
    assert!(matches!(index.move_all(dbs, &mut txn, keys), Ok(8)));
    assert_eq!(handles.log.len(&txn).unwrap(), RECORDS);
    assert!(index.buf_capacity() <= 2 * RECORD, "buffer of {} bytes", index.buf_capacity());
    txn.abort();
}

/// A group opened while a journal move deletes its records (between the check's snapshot and
/// its journal candidates, held there by a test hook): the candidates miss records the
/// snapshot holds, so the check is taken again with a new snapshot and the group opens.
#[test]
fn a_group_opens_while_a_move_takes_its_records() {
    let root = tempfile::tempdir().unwrap();
    let env = journaled(root.path().join("env"), 6);
    let (a, b) = (env.log_store(1).unwrap(), env.log_store(2).unwrap());
    block_on(a.write(append(1..4, 1))).unwrap();
    block_on(b.write(append(1..4, 1))).unwrap();
    assert_eq!(journal_len(&b), 6);
    drop(a);
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let opener = {
        let (env, barrier) = (env.clone(), Arc::clone(&barrier));
        std::thread::spawn(move || {
            env::CHECK_GROUP_BARRIER.with(|b| *b.borrow_mut() = Some(barrier));
            env::JOURNAL_RECORDS_CHECKED.with(|n| n.set(0));
            env::CHECK_GROUP_ATTEMPTS.with(|n| n.set(0));
            let opened = env.log_store(1);
            let attempts = env::CHECK_GROUP_ATTEMPTS.with(|n| n.get());
            (opened, env::JOURNAL_RECORDS_CHECKED.with(|n| n.get()), attempts)
        })
    };
    barrier.wait();
    // Due: this commit moves the 6 records (group 1's 1..=3 among them) to the log.
    let moved = block_on(b.write(append(4..5, 1)));
    barrier.wait();
    let (a, checked, attempts) = opener.join().unwrap();
    moved.unwrap();
    assert_eq!(journal_len(&b), 1);
    assert_eq!(checked, 0, "the move withdrew group 1's records before the candidates");
    assert_eq!(attempts, 2, "the first check failed (its records withdrawn) and was retried");
    let a = a.unwrap();
    assert_eq!(read(&a, 1..4), entries(1..4, 1));
    assert_eq!(read(&b, 1..5), entries(1..5, 1));
}

/// Review (F4): the count of set-aside records (of failed groups), kept so that `is_due` does
/// not count them on every commit, stays exact through appends, deletions, a move, a removal
/// (the group no longer failed) and rollbacks of each.
#[test]
fn the_count_of_set_aside_records_stays_exact() {
    let root = tempfile::tempdir().unwrap();
    let env = journaled(root.path().join("env"), 1_000);
    let store = env.log_store(1).unwrap();
    let slot = store.shared.handles();
    let handles = slot.as_ref().unwrap();
    let journal = handles.journal.as_ref().unwrap();
    let dbs = (journal, &handles.log, &handles.meta);
    let txn = handles.read_txn().unwrap();
    let mut index = journal::JournalIndex::load(dbs, &txn, (4, u64::MAX)).unwrap();
    drop(txn);
    index.set_failed(7, "group 7: test".into());
    let mut txn = handles.env.write_txn().unwrap();
    let keys = |group, index| handles.layout.keys(group).log(index);
    let exact = |index: &journal::JournalIndex, n: usize| {
        assert_eq!(index.aside_counts(), (n, n));
    };
    index.begin();
    for i in 1..=6 {
        index.append(journal, &mut txn, 7, i, b"entry").unwrap();
    }
    index.append(journal, &mut txn, 1, 1, b"entry").unwrap();
    exact(&index, 6);
    // Six records set aside, one of group 1: not due (the bound is 4).
    assert!(!index.is_due());
    index.delete(journal, &mut txn, 7, 5, 6).unwrap();
    exact(&index, 4);
    // A rollback goes with the transaction's abort.
    txn.abort();
    index.rollback();
    exact(&index, 0);
    let mut txn = handles.env.write_txn().unwrap();
    index.begin();
    for i in 1..=3 {
        index.append(journal, &mut txn, 7, i, b"entry").unwrap();
    }
    // The same entry again (replaced): still three.
    index.delete(journal, &mut txn, 7, 3, 3).unwrap();
    index.append(journal, &mut txn, 7, 3, b"entry").unwrap();
    exact(&index, 3);
    for i in 1..=4 {
        index.append(journal, &mut txn, 1, i, b"entry").unwrap();
    }
    assert!(index.is_due());
    assert!(matches!(index.move_all(dbs, &mut txn, keys), Ok(4)));
    exact(&index, 3);
    assert!(!index.is_due());
    index.begin();
    index.delete(journal, &mut txn, 7, 0, u64::MAX).unwrap();
    index.recover(7);
    exact(&index, 0);
    txn.abort();
    index.rollback();
    exact(&index, 3);
    assert!(index.is_failed(7));
    // (The index's records were never committed: LMDB's deletions below find nothing, the
    // index is what is checked.)
    let mut txn = handles.env.write_txn().unwrap();
    index.begin();
    index.delete(journal, &mut txn, 7, 0, u64::MAX).unwrap();
    index.recover(7);
    index.append(journal, &mut txn, 7, 1, b"entry").unwrap();
    exact(&index, 0);
    assert!(!index.is_failed(7));
    txn.abort();
}
