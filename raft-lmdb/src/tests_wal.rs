//! Tests of the write-ahead file (`wal.rs`) through stores: pure appends committed with one
//! sync, recovery of frames never checkpointed, checkpoints before truncation, purge, reset
//! and hard state, reads racing checkpoints, several groups, a torn frame, a file left
//! behind with the file turned off, a frame that does not follow the log, files of another
//! environment, and the checkpoint at close. `crash` drops a store without that checkpoint.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::executor::block_on;
use raft_core::{Entry, EntryPayload, HardState, LogId, LogStore, StorageError, WriteBatch};

use crate::wal::WAL_FILE;
use crate::{LmdbEnvironment, LmdbLogStore, LmdbOptions, OpenError};

pub(crate) fn entry(index: u64, term: u64) -> Entry {
    Entry { index, term, payload: EntryPayload::Command(Bytes::from(format!("command {index}"))) }
}

pub(crate) fn append(range: std::ops::Range<u64>, term: u64) -> WriteBatch {
    WriteBatch { entries: range.map(|i| entry(i, term)).collect(), ..WriteBatch::default() }
}

pub(crate) fn vote(term: u64) -> WriteBatch {
    WriteBatch {
        hard_state: Some(HardState { current_term: term, voted_for: Some(1) }),
        ..WriteBatch::default()
    }
}

/// Drops `store` without the close checkpoint (a test hook): its pending entries stay only in
/// the write-ahead file, as after a crash.
pub(crate) fn crash(store: LmdbLogStore) {
    store.shared.skip_close_checkpoint.store(true, Ordering::SeqCst);
    drop(store);
}

/// Checks that `store` holds exactly `first..=last` with the terms `term_of` gives.
pub(crate) fn check(store: &LmdbLogStore, first: u64, last: u64, term_of: impl Fn(u64) -> u64) {
    let state = block_on(store.open()).unwrap();
    assert_eq!(state.last.index, last);
    assert_eq!(state.purged.index + 1, first);
    let read = block_on(store.read(first..last + 1, u64::MAX)).unwrap();
    let expected: Vec<_> = (first..=last).map(|i| entry(i, term_of(i))).collect();
    assert_eq!(read, expected);
}

#[test]
fn appends_take_one_frame_each_and_are_recovered_without_a_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    let store = LmdbLogStore::open_dir(&dir).unwrap();
    block_on(store.write(vote(1))).unwrap();
    let before = store.stats();
    for i in 1..=50 {
        block_on(store.write(append(i..i + 1, 1))).unwrap();
    }
    let stats = store.stats();
    assert_eq!(stats.wal_commits - before.wal_commits, 50);
    assert_eq!(stats.commits - before.commits, 50);
    assert_eq!(stats.checkpoints, 0);
    check(&store, 1, 50, |_| 1);
    // A crash: the entries are only in the write-ahead file.
    crash(store);
    let store = LmdbLogStore::open_dir(&dir).unwrap();
    assert_eq!(store.stats().checkpoints, 1, "open applies the recovered frames");
    check(&store, 1, 50, |_| 1);
    assert_eq!(block_on(store.open()).unwrap().hard_state.current_term, 1);
    // Appends go on after the recovered ones.
    block_on(store.write(append(51..53, 1))).unwrap();
    drop(store);
    let store = LmdbLogStore::open_dir(&dir).unwrap();
    check(&store, 1, 52, |_| 1);
}

#[test]
fn truncation_purge_reset_and_hard_state_follow_pending_appends() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    let store = LmdbLogStore::open_dir(&dir).unwrap();
    block_on(store.write(vote(1))).unwrap();
    block_on(store.write(append(1..11, 1))).unwrap();
    block_on(store.write(append(11..21, 1))).unwrap();
    assert_eq!(store.stats().wal_commits, 2);
    // A new leader's truncation of pending entries: checkpoint, then truncate.
    let mut batch = append(15..18, 2);
    batch.truncate_from = Some(15);
    batch.hard_state = Some(HardState { current_term: 2, voted_for: Some(2) });
    block_on(store.write(batch)).unwrap();
    assert_eq!(store.stats().checkpoints, 1);
    let term = |i| if i < 15 { 1 } else { 2 };
    check(&store, 1, 17, term);
    block_on(store.write(append(18..26, 2))).unwrap();
    check(&store, 1, 25, term);
    // Purge into the pending entries.
    block_on(store.purge(20)).unwrap();
    assert_eq!(store.stats().checkpoints, 2);
    check(&store, 21, 25, term);
    block_on(store.write(append(26..30, 2))).unwrap();
    // Hard state alone checkpoints too.
    block_on(store.write(vote(3))).unwrap();
    check(&store, 21, 29, term);
    block_on(store.write(append(30..31, 3))).unwrap();
    // Reset over pending entries.
    block_on(store.reset(LogId::new(3, 40))).unwrap();
    let state = block_on(store.open()).unwrap();
    assert_eq!((state.purged, state.last), (LogId::new(3, 40), LogId::new(3, 40)));
    block_on(store.write(append(41..46, 3))).unwrap();
    drop(store);
    let store = LmdbLogStore::open_dir(&dir).unwrap();
    check(&store, 41, 45, |_| 3);
    assert_eq!(block_on(store.open()).unwrap().hard_state.current_term, 3);
}

#[test]
fn a_torn_last_frame_is_dropped_and_the_rest_recovered() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    let store = LmdbLogStore::open_dir(&dir).unwrap();
    for i in 1..=3 {
        block_on(store.write(append(i..i + 1, 1))).unwrap();
    }
    crash(store);
    // The third frame is the last non-zero bytes: flip its last byte (as a write torn by a
    // power loss would leave it; such a frame was never acknowledged).
    let path = dir.join(WAL_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap();
    bytes[end] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let store = LmdbLogStore::open_dir(&dir).unwrap();
    check(&store, 1, 2, |_| 1);
    // The torn bytes are never read again: the next frames are of the next generation.
    block_on(store.write(append(3..5, 1))).unwrap();
    drop(store);
    let store = LmdbLogStore::open_dir(&dir).unwrap();
    check(&store, 1, 4, |_| 1);
}

#[test]
fn a_file_left_behind_is_recovered_and_removed_when_the_file_is_off() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    let store = LmdbLogStore::open_dir(&dir).unwrap();
    block_on(store.write(append(1..8, 1))).unwrap();
    crash(store);
    let off = LmdbOptions::default().with_wal_bytes(0);
    let store = LmdbLogStore::open_dir_with(&dir, off).unwrap();
    assert!(!dir.join(WAL_FILE).exists());
    check(&store, 1, 7, |_| 1);
    block_on(store.write(append(8..9, 1))).unwrap();
    assert_eq!(store.stats().wal_commits, 0);
    drop(store);
    let store = LmdbLogStore::open_dir(&dir).unwrap();
    check(&store, 1, 8, |_| 1);
}

#[test]
fn a_frame_that_does_not_follow_the_log_is_corrupt() {
    let root = tempfile::tempdir().unwrap();
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    let store = LmdbLogStore::open_dir(&a).unwrap();
    block_on(store.write(append(1..6, 1))).unwrap();
    let id = {
        let handles = store.shared.handles();
        let handles = handles.as_ref().unwrap();
        let txn = handles.read_txn().unwrap();
        handles.wal_id(&txn).unwrap()
    }
    .unwrap();
    crash(store);
    // B holds entries 1..=10 in LMDB (the hard state makes it an LMDB transaction), and A's
    // id (else A's frames would be foreign to it, and ignored).
    let store = LmdbLogStore::open_dir(&b).unwrap();
    {
        let handles = store.shared.handles();
        let handles = handles.as_ref().unwrap();
        let mut txn = handles.env.write_txn().unwrap();
        handles.meta.put(&mut txn, crate::wal::WAL_ID_KEY, &id.to_be_bytes()).unwrap();
        txn.commit().unwrap();
    }
    let mut batch = append(1..11, 1);
    batch.hard_state = Some(HardState { current_term: 1, voted_for: None });
    block_on(store.write(batch)).unwrap();
    drop(store);
    std::fs::copy(a.join(WAL_FILE), b.join(WAL_FILE)).unwrap();
    match LmdbLogStore::open_dir(&b) {
        Err(OpenError::Corrupt { reason, .. }) => assert!(reason.contains("does not follow")),
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn a_full_file_checkpoints_and_appends_go_on() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    let options = LmdbOptions::default().with_wal_bytes(4096);
    let store = LmdbLogStore::open_dir_with(&dir, options).unwrap();
    for i in 1..=200 {
        block_on(store.write(append(i..i + 1, 1))).unwrap();
    }
    let stats = store.stats();
    assert!(stats.checkpoints >= 2, "{stats:?}");
    assert!(stats.wal_commits >= 150, "{stats:?}");
    check(&store, 1, 200, |_| 1);
    drop(store);
    let store = LmdbLogStore::open_dir_with(&dir, options).unwrap();
    check(&store, 1, 200, |_| 1);
}

#[test]
fn groups_of_one_environment_share_frames_and_recover() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("env");
    let env = LmdbEnvironment::open(&dir).unwrap();
    let stores: Vec<_> = (0..4).map(|g| Arc::new(env.log_store(g).unwrap())).collect();
    let threads: Vec<_> = stores
        .iter()
        .map(|store| {
            let store = Arc::clone(store);
            std::thread::spawn(move || {
                for i in 1..=30 {
                    block_on(store.write(append(i..i + 1, 1))).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert!(env.stats().wal_commits > 0);
    for store in &stores {
        check(store, 1, 30, |_| 1);
    }
    stores[0].shared.skip_close_checkpoint.store(true, Ordering::SeqCst);
    drop(stores);
    drop(env);
    let env = LmdbEnvironment::open(&dir).unwrap();
    assert_eq!(env.groups().unwrap(), vec![0, 1, 2, 3]);
    for g in 0..4 {
        let store = env.log_store(g).unwrap();
        check(&store, 1, 30, |_| 1);
        // A purge of one group (an LMDB transaction) checkpoints every group's entries.
        block_on(store.write(append(31..33, 1))).unwrap();
        block_on(store.purge(10)).unwrap();
        check(&store, 11, 32, |_| 1);
    }
}

/// A reader running while one task appends (through frames) and purges (checkpoints) sees
/// contiguous, correct entries every time: never a gap, a duplicate or a stale entry.
#[test]
fn reads_racing_checkpoints_see_contiguous_entries() {
    let root = tempfile::tempdir().unwrap();
    let dir: &Path = &root.path().join("store");
    let store = Arc::new(LmdbLogStore::open_dir(dir).unwrap());
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (store, done) = (Arc::clone(&store), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !done.load(Ordering::SeqCst) {
                let state = block_on(store.open()).unwrap();
                if state.last.index <= state.purged.index {
                    continue;
                }
                let range = state.purged.index + 1..state.last.index + 1;
                match block_on(store.read(range.clone(), u64::MAX)) {
                    Ok(read) => {
                        let expected: Vec<_> = range.map(|i| entry(i, 1)).collect();
                        assert_eq!(read, expected);
                        reads += 1;
                    }
                    // A purge between `open` and `read` moved the first index.
                    Err(StorageError::InvalidRequest(_)) => {}
                    Err(other) => panic!("read failed: {other}"),
                }
            }
            reads
        })
    };
    for i in 1..=600u64 {
        block_on(store.write(append(i..i + 1, 1))).unwrap();
        if i % 7 == 0 {
            block_on(store.purge(i - 5)).unwrap();
        }
    }
    done.store(true, Ordering::SeqCst);
    let reads = reader.join().unwrap();
    assert!(reads > 0);
    let stats = store.stats();
    assert!(stats.wal_commits > 0 && stats.checkpoints > 0, "{stats:?}");
}

/// A read between a checkpoint's commit and the emptying of the pending entries (held there by
/// a test hook) sees the checkpoint's truncation, not the pending entries it replaced: the
/// snapshot's generation is newer than theirs, so they are ignored.
#[test]
fn a_read_between_a_checkpoint_and_its_bookkeeping_sees_the_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    let store = LmdbLogStore::open_dir(root.path().join("store")).unwrap();
    block_on(store.write(append(1..11, 1))).unwrap();
    assert_eq!(store.stats().wal_commits, 1);
    let barrier = Arc::new(std::sync::Barrier::new(2));
    *store.shared.checkpoint_barrier.lock().unwrap() = Some(Arc::clone(&barrier));
    let mut batch = append(5..7, 2);
    batch.truncate_from = Some(5);
    batch.hard_state = Some(HardState { current_term: 2, voted_for: None });
    let pending = block_on(store.submit(batch)).unwrap();
    barrier.wait();
    // Committed in LMDB; the writer has not emptied its pending entries 1..=10 of term 1.
    let state = block_on(store.open());
    let read = block_on(store.read(1..7, u64::MAX));
    // The replaced pending entries 7..=10 are not read either.
    let beyond = block_on(store.read(1..11, u64::MAX));
    // Released before asserting, so that a failure does not leave the writer waiting.
    barrier.wait();
    block_on(pending).unwrap();
    let term = |i| if i < 5 { 1 } else { 2 };
    assert_eq!(state.unwrap().last, LogId::new(2, 6));
    assert_eq!(read.unwrap(), (1..7).map(|i| entry(i, term(i))).collect::<Vec<_>>());
    assert!(matches!(beyond, Err(StorageError::InvalidRequest(_))), "{beyond:?}");
    check(&store, 1, 6, term);
}

/// Removes LMDB's files of `dir`, keeping the write-ahead file (a wiped or replaced store).
fn wipe_lmdb(dir: &Path) {
    for file in ["data.mdb", "lock.mdb"] {
        std::fs::remove_file(dir.join(file)).unwrap();
    }
}

/// A write-ahead file left by another environment (here: the same directory before its LMDB
/// files were removed) is not replayed into a new store: its frames carry another id.
#[test]
fn a_new_store_does_not_replay_a_file_left_by_another() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    let store = LmdbLogStore::open_dir(&dir).unwrap();
    block_on(store.write(vote(7))).unwrap();
    block_on(store.write(append(1..4, 7))).unwrap();
    assert_eq!(store.stats().wal_commits, 1);
    crash(store);
    wipe_lmdb(&dir);
    opens_without_the_file(&dir, 0);
}

/// Opens the store in `dir`, whose write-ahead file holds entries 1..=3 of another
/// environment, and checks they are not replayed (LMDB's hard state has `term`), then that its
/// own appends are recovered, and only those.
fn opens_without_the_file(dir: &Path, term: u64) {
    let store = LmdbLogStore::open_dir(dir).unwrap();
    let state = block_on(store.open()).unwrap();
    assert_eq!((state.last.index, state.hard_state.current_term), (0, term));
    assert!(block_on(store.read(1..4, u64::MAX)).is_err());
    assert_eq!(store.stats().recovered_entries, 0);
    block_on(store.write(append(1..3, term.max(1)))).unwrap();
    crash(store);
    let store = LmdbLogStore::open_dir(dir).unwrap();
    check(&store, 1, 2, |_| term.max(1));
    assert_eq!(store.stats().recovered_entries, 2);
}

/// Stale frames of generation 1 left by another environment, lined up after a new store's
/// own frames of generation 1 (same sizes, following indexes), are not read.
#[test]
fn stale_frames_of_another_store_do_not_line_up_with_new_ones() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    let store = LmdbLogStore::open_dir(&dir).unwrap();
    block_on(store.write(append(1..3, 1))).unwrap();
    // Checkpoints: the next frames are of generation 1, from offset 0.
    block_on(store.write(vote(1))).unwrap();
    for i in 3..=8 {
        block_on(store.write(append(i..i + 1, 1))).unwrap();
    }
    crash(store);
    wipe_lmdb(&dir);
    // The new store checkpoints at open (the file holds bytes): generation 1 too.
    let store = LmdbLogStore::open_dir(&dir).unwrap();
    block_on(store.reset(LogId::new(1, 2))).unwrap();
    for i in 3..=5 {
        block_on(store.write(append(i..i + 1, 1))).unwrap();
    }
    crash(store);
    let store = LmdbLogStore::open_dir(&dir).unwrap();
    check(&store, 3, 5, |_| 1);
}

/// A multi-group environment whose LMDB files were removed opens as a new, empty one.
#[test]
fn a_wiped_environment_opens_without_the_old_frames() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("env");
    let env = LmdbEnvironment::open(&dir).unwrap();
    let store = env.log_store(3).unwrap();
    block_on(store.write(append(1..4, 1))).unwrap();
    store.shared.skip_close_checkpoint.store(true, Ordering::SeqCst);
    drop(store);
    drop(env);
    wipe_lmdb(&dir);
    let env = LmdbEnvironment::open(&dir).unwrap();
    assert!(env.groups().unwrap().is_empty());
    drop(env);
    let env = LmdbEnvironment::open(&dir).unwrap();
    assert!(env.groups().unwrap().is_empty());
}

/// An environment without an id (none can exist with frames: no release wrote the file without
/// one) gets one at open, before any frame; what its file held is foreign: not replayed, and
/// the store opens and goes on (the next open too).
#[test]
fn an_environment_without_an_id_gets_one_and_ignores_the_file() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    let store = LmdbLogStore::open_dir(&dir).unwrap();
    block_on(store.write(vote(2))).unwrap();
    block_on(store.write(append(1..4, 2))).unwrap();
    {
        let handles = store.shared.handles();
        let handles = handles.as_ref().unwrap();
        let mut txn = handles.env.write_txn().unwrap();
        assert!(handles.meta.delete(&mut txn, crate::wal::WAL_ID_KEY).unwrap());
        txn.commit().unwrap();
    }
    crash(store);
    opens_without_the_file(&dir, 2);
}

/// Frames written with a larger file are recovered by an open with a smaller one (the scan
/// reads the file, frame by frame, whatever the option says); the option is clamped.
#[test]
fn frames_of_a_larger_file_are_recovered_with_a_smaller_one() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    let large = LmdbOptions::default().with_wal_bytes(1 << 20);
    let store = LmdbLogStore::open_dir_with(&dir, large).unwrap();
    let big = |i: u64| Entry {
        index: i,
        term: 1,
        payload: EntryPayload::Command(Bytes::from(vec![i as u8; 100_000])),
    };
    let batch = WriteBatch { entries: (1..=3).map(big).collect(), ..WriteBatch::default() };
    block_on(store.write(batch)).unwrap();
    assert_eq!(store.stats().wal_commits, 1);
    crash(store);
    let wal_len = || std::fs::metadata(dir.join(WAL_FILE)).unwrap().len();
    assert_eq!(wal_len(), 1 << 20);
    let small = LmdbOptions::default().with_wal_bytes(4096);
    let store = LmdbLogStore::open_dir_with(&dir, small).unwrap();
    assert_eq!(store.stats().recovered_entries, 3);
    let read = block_on(store.read(1..4, u64::MAX)).unwrap();
    assert_eq!(read, (1..=3).map(big).collect::<Vec<_>>());
    // Shrunk once the open's checkpoint committed them; frames go on in the smaller file.
    assert_eq!(wal_len(), 4096);
    block_on(store.write(append(4..6, 1))).unwrap();
    assert_eq!(store.stats().wal_commits, 1);
    crash(store);
    let store = LmdbLogStore::open_dir_with(&dir, small).unwrap();
    assert_eq!(store.stats().recovered_entries, 2);
    assert_eq!(block_on(store.read(4..6, u64::MAX)).unwrap(), vec![entry(4, 1), entry(5, 1)]);
    assert_eq!(wal_len(), 4096);
    let huge = LmdbOptions::default().with_wal_bytes(u64::MAX);
    assert_eq!(huge.wal_bytes, crate::MAX_WAL_BYTES);
}

/// A clean close applies the pending entries to LMDB: the next open recovers nothing from the
/// file, and `data.mdb` alone (the write-ahead file removed) holds every acknowledged entry.
#[test]
fn a_clean_close_checkpoints() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    let store = LmdbLogStore::open_dir(&dir).unwrap();
    block_on(store.write(vote(1))).unwrap();
    for i in 1..=5 {
        block_on(store.write(append(i..i + 1, 1))).unwrap();
    }
    assert_eq!((store.stats().wal_commits, store.stats().checkpoints), (5, 0));
    drop(store);
    let store = LmdbLogStore::open_dir(&dir).unwrap();
    assert_eq!(store.stats().recovered_entries, 0);
    check(&store, 1, 5, |_| 1);
    drop(store);
    std::fs::remove_file(dir.join(WAL_FILE)).unwrap();
    let store = LmdbLogStore::open_dir(&dir).unwrap();
    check(&store, 1, 5, |_| 1);
}

/// Opening a group whose entries were left pending in the write-ahead file by a dropped store
/// while another group's write checkpoints them into the journal (between the two reads of the
/// group's check, held there by a test hook): the group opens with every entry, never
/// `Corrupt` (its check reads the journal records its snapshot holds).
#[test]
fn a_group_opens_while_another_group_checkpoints_its_pending_entries() {
    let root = tempfile::tempdir().unwrap();
    let env = LmdbEnvironment::open(root.path().join("env")).unwrap();
    let (one, two) = (env.log_store(1).unwrap(), env.log_store(2).unwrap());
    block_on(one.write(append(1..6, 1))).unwrap();
    block_on(two.write(append(1..3, 1))).unwrap();
    assert_eq!(env.stats().checkpoints, 0, "the entries are pending in the file only");
    // A drop does not checkpoint: 1..=5 of group 1 stay pending.
    drop(one);
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let opener = {
        let (env, barrier) = (env.clone(), Arc::clone(&barrier));
        std::thread::spawn(move || {
            crate::env::CHECK_GROUP_BARRIER.with(|b| *b.borrow_mut() = Some(barrier));
            crate::env::CHECK_GROUP_ATTEMPTS.with(|n| n.set(0));
            let opened = env.log_store(1);
            (opened, crate::env::CHECK_GROUP_ATTEMPTS.with(|n| n.get()))
        })
    };
    barrier.wait();
    // Group 2's hard state checkpoints every group's pending entries (into the journal).
    let voted = block_on(two.write(vote(1)));
    barrier.wait();
    let (one, attempts) = opener.join().unwrap();
    voted.unwrap();
    assert_eq!(env.stats().checkpoints, 1);
    assert_eq!(attempts, 1, "the records the checkpoint added are not in the check's snapshot");
    let one = one.unwrap();
    check(&one, 1, 5, |_| 1);
    check(&two, 1, 2, |_| 1);
}
