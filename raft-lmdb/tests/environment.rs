//! `LmdbEnvironment`: many groups in one environment, found again after a restart, removed
//! durably, sharing the writer's commits; and its directory kept apart from a single store's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use bytes::Bytes;
use futures::executor::block_on;
use raft_core::{
    Entry, EntryPayload, HardState, LogId, LogStore, Membership, SnapshotMeta, SnapshotStore,
    WriteBatch,
};
use raft_lmdb::{LmdbEnvironment, LmdbLogStore, OpenError};

fn entry(index: u64, term: u64) -> Entry {
    Entry { index, term, payload: EntryPayload::Command(Bytes::from(format!("entry {index}"))) }
}

fn append(range: std::ops::Range<u64>, term: u64) -> WriteBatch {
    WriteBatch { entries: range.map(|i| entry(i, term)).collect(), ..WriteBatch::default() }
}

/// Commits a snapshot of `data` at `index` into `store`.
fn take_snapshot(store: &impl SnapshotStore, index: u64, data: &'static [u8]) -> SnapshotMeta {
    let meta = SnapshotMeta {
        last_included: LogId::new(1, index),
        membership: Membership::from_ids([1], []).unwrap(),
        size: data.len() as u64,
        checksum: 7,
    };
    block_on(async {
        let mut writer = store.begin().await.unwrap();
        writer.write(Bytes::from_static(data)).await.unwrap();
        writer.commit(meta.clone()).await.unwrap();
    });
    meta
}

#[test]
fn groups_are_found_after_a_restart_each_with_its_own_log_and_hard_state() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("env");
    {
        let env = LmdbEnvironment::open(&dir).unwrap();
        assert_eq!(env.groups().unwrap(), Vec::<u64>::new());
        for group in [3, 1, u64::MAX] {
            let store = env.log_store(group).unwrap();
            assert_eq!(store.group(), group);
            let term = group % 100 + 1;
            let mut batch = append(1..(group % 5 + 2), term);
            batch.hard_state = Some(HardState { current_term: term, voted_for: Some(group) });
            block_on(store.write(batch)).unwrap();
        }
        // A group opened and never written exists too (its log is empty).
        drop(env.log_store(0).unwrap());
        assert_eq!(env.groups().unwrap(), vec![0, 1, 3, u64::MAX]);
    }
    let env = LmdbEnvironment::open(&dir).unwrap();
    assert_eq!(env.groups().unwrap(), vec![0, 1, 3, u64::MAX]);
    for group in [1, 3, u64::MAX] {
        let store = env.log_store(group).unwrap();
        let state = block_on(store.open()).unwrap();
        let term = group % 100 + 1;
        let last = group % 5 + 1;
        assert_eq!(state.hard_state, HardState { current_term: term, voted_for: Some(group) });
        assert_eq!(state.last, LogId::new(term, last));
        let entries = block_on(store.read(1..last + 1, u64::MAX)).unwrap();
        assert_eq!(entries, (1..=last).map(|i| entry(i, term)).collect::<Vec<_>>());
    }
    let empty = block_on(env.log_store(0).unwrap().open()).unwrap();
    assert_eq!((empty.last, empty.hard_state), (LogId::default(), HardState::default()));
}

#[test]
fn purge_and_reset_change_only_their_own_group() {
    let root = tempfile::tempdir().unwrap();
    let env = LmdbEnvironment::open(root.path().join("env")).unwrap();
    let stores: Vec<_> = (1..=3).map(|g| env.log_store(g).unwrap()).collect();
    for store in &stores {
        block_on(store.write(append(1..11, 1))).unwrap();
    }
    block_on(stores[0].purge(4)).unwrap();
    block_on(stores[1].reset(LogId::new(5, 50))).unwrap();
    block_on(stores[2].write(WriteBatch { truncate_from: Some(6), ..append(6..8, 2) })).unwrap();
    let bounds = |store: &LmdbLogStore| {
        let state = block_on(store.open()).unwrap();
        (state.purged, state.last)
    };
    assert_eq!(bounds(&stores[0]), (LogId::new(1, 4), LogId::new(1, 10)));
    assert_eq!(bounds(&stores[1]), (LogId::new(5, 50), LogId::new(5, 50)));
    assert_eq!(bounds(&stores[2]), (LogId::default(), LogId::new(2, 7)));
    assert_eq!(block_on(stores[0].read(5..11, u64::MAX)).unwrap().len(), 6);
    assert_eq!(block_on(stores[2].read(1..8, u64::MAX)).unwrap()[6], entry(7, 2));
    // After a restart the bounds are checked group by group, and hold.
    drop(stores);
    drop(env);
    let env = LmdbEnvironment::open(root.path().join("env")).unwrap();
    let reopened: Vec<_> = (1..=3).map(|g| env.log_store(g).unwrap()).collect();
    assert_eq!(bounds(&reopened[0]), (LogId::new(1, 4), LogId::new(1, 10)));
    assert_eq!(bounds(&reopened[1]), (LogId::new(5, 50), LogId::new(5, 50)));
    assert_eq!(bounds(&reopened[2]), (LogId::default(), LogId::new(2, 7)));
}

#[test]
fn a_group_opens_once_and_is_removed_only_when_closed() {
    let root = tempfile::tempdir().unwrap();
    let env = LmdbEnvironment::open(root.path().join("env")).unwrap();
    let store = env.log_store(5).unwrap();
    assert!(matches!(env.log_store(5), Err(OpenError::GroupInUse { group: 5, .. })));
    assert!(matches!(env.remove_group(5), Err(OpenError::GroupInUse { group: 5, .. })));
    block_on(store.write(append(1..4, 1))).unwrap();
    drop(store);
    let snapshots = env.snapshot_store(5).unwrap();
    take_snapshot(&snapshots, 3, b"state of group 5");
    assert!(matches!(env.remove_group(5), Err(OpenError::GroupInUse { group: 5, .. })));
    assert!(matches!(
        raft_lmdb::FileSnapshotStore::open_dir(env.snapshot_dir(5)),
        Err(OpenError::AlreadyOpenInProcess { .. })
    ));
    drop(snapshots);
    // Reopened: the same log, the same snapshot.
    assert_eq!(block_on(env.log_store(5).unwrap().open()).unwrap().last, LogId::new(1, 3));
    let snapshots = env.snapshot_store(5).unwrap();
    assert_eq!(block_on(snapshots.latest()).unwrap().unwrap().last_included.index, 3);
    drop(snapshots);
}

#[test]
fn a_removed_group_is_gone_after_a_restart_and_its_neighbours_are_not() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("env");
    {
        let env = LmdbEnvironment::open(&dir).unwrap();
        for group in 1..=3 {
            let store = env.log_store(group).unwrap();
            block_on(store.write(append(1..6, group))).unwrap();
            take_snapshot(&env.snapshot_store(group).unwrap(), 2, b"snap");
        }
        env.remove_group(2).unwrap();
        assert!(!env.snapshot_dir(2).exists());
        assert_eq!(env.groups().unwrap(), vec![1, 3]);
        // Removing a group that does not exist does nothing.
        env.remove_group(2).unwrap();
        env.remove_group(77).unwrap();
    }
    let env = LmdbEnvironment::open(&dir).unwrap();
    assert_eq!(env.groups().unwrap(), vec![1, 3]);
    for group in [1, 3] {
        let store = env.log_store(group).unwrap();
        assert_eq!(block_on(store.open()).unwrap().last, LogId::new(group, 5));
        // The group, found on disk, takes writes again.
        block_on(store.write(append(6..7, group))).unwrap();
        assert_eq!(block_on(store.open()).unwrap().last, LogId::new(group, 6));
        let snapshots = env.snapshot_store(group).unwrap();
        assert!(block_on(snapshots.latest()).unwrap().is_some());
    }
    // Opened again, the removed group starts empty.
    let store = env.log_store(2).unwrap();
    assert_eq!(block_on(store.open()).unwrap().last, LogId::default());
    assert!(block_on(env.snapshot_store(2).unwrap().latest()).unwrap().is_none());
}

/// A snapshot directory of a group that does not exist is what a removal interrupted by a
/// crash leaves (the group's records are gone, its snapshots not yet): the next open deletes it.
#[test]
fn the_snapshots_of_a_group_that_does_not_exist_are_deleted_at_open() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("env");
    drop(LmdbEnvironment::open(&dir).unwrap());
    let orphan = dir.join(raft_lmdb::SNAPSHOTS_DIR).join("9");
    take_snapshot(&raft_lmdb::FileSnapshotStore::open_dir(&orphan).unwrap(), 1, b"left over");
    let env = LmdbEnvironment::open(&dir).unwrap();
    assert!(!orphan.exists());
    assert!(env.groups().unwrap().is_empty());
    drop(env);
    // Something that is no group's directory is foreign: refused, not deleted.
    std::fs::create_dir(dir.join(raft_lmdb::SNAPSHOTS_DIR).join("notes")).unwrap();
    assert!(matches!(LmdbEnvironment::open(&dir), Err(OpenError::ForeignDirectory { .. })));
}

#[test]
fn an_environment_and_a_single_store_refuse_each_others_directories() {
    let root = tempfile::tempdir().unwrap();
    let (single, multi) = (root.path().join("single"), root.path().join("multi"));
    drop(LmdbLogStore::open_dir(&single).unwrap());
    drop(LmdbEnvironment::open(&multi).unwrap().log_store(1).unwrap());
    let err = LmdbEnvironment::open(&single).unwrap_err();
    assert!(matches!(&err, OpenError::NotOurStore { reason, .. } if reason.contains("single")));
    let err = LmdbLogStore::open_dir(&multi).unwrap_err();
    assert!(matches!(&err, OpenError::NotOurStore { reason, .. } if reason.contains("multi")));
    // Both still open the way they were made.
    drop(LmdbLogStore::open_dir(&single).unwrap());
    assert_eq!(LmdbEnvironment::open(&multi).unwrap().groups().unwrap(), vec![1]);
    // One environment per directory in a process.
    let env = LmdbEnvironment::open(&multi).unwrap();
    assert!(matches!(LmdbEnvironment::open(&multi), Err(OpenError::AlreadyOpenInProcess { .. })));
    drop(env);
}

/// Stores outlive the environment handle: the environment closes with the last of them.
#[test]
fn the_environment_stays_open_while_a_store_of_it_exists() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("env");
    let env = LmdbEnvironment::open(&dir).unwrap();
    let store = env.log_store(1).unwrap();
    drop(env);
    block_on(store.write(append(1..3, 1))).unwrap();
    assert!(matches!(LmdbEnvironment::open(&dir), Err(OpenError::AlreadyOpenInProcess { .. })));
    drop(store);
    let env = LmdbEnvironment::open(&dir).unwrap();
    assert_eq!(block_on(env.log_store(1).unwrap().open()).unwrap().last, LogId::new(1, 2));
}

/// Groups writing concurrently, each waiting for its own writes, share the writer's commits:
/// fewer transactions than requests.
#[test]
fn groups_writing_concurrently_share_commits() {
    const GROUPS: u64 = 8;
    const WRITES: u64 = 40;
    let root = tempfile::tempdir().unwrap();
    let env = LmdbEnvironment::open(root.path().join("env")).unwrap();
    let stores: Vec<_> = (1..=GROUPS).map(|g| Arc::new(env.log_store(g).unwrap())).collect();
    let before = env.stats();
    let threads: Vec<_> = stores
        .iter()
        .map(|store| {
            let store = Arc::clone(store);
            std::thread::spawn(move || {
                for i in 1..=WRITES {
                    block_on(store.write(append(i..i + 1, 1))).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let after = env.stats();
    let (commits, requests) = (after.commits - before.commits, after.requests - before.requests);
    println!("{requests} requests of {GROUPS} groups in {commits} commits");
    assert_eq!(requests, GROUPS * WRITES);
    assert!(commits < requests, "{commits} commits for {requests} requests");
    for store in &stores {
        assert_eq!(block_on(store.open()).unwrap().last, LogId::new(1, WRITES));
    }
}

/// The environment's `DiskStats` count the pages of every group and what the one writer wrote
/// for them; a store of the environment reports the same environment.
#[test]
fn disk_stats_cover_every_group_of_the_environment() {
    let root = tempfile::tempdir().unwrap();
    // Without the write-ahead file: the entries go to LMDB's pages at once.
    let options = raft_lmdb::LmdbOptions::default().with_wal_bytes(0);
    let env = LmdbEnvironment::open_with(root.path().join("env"), options).unwrap();
    let stores: Vec<_> = (1..=4).map(|g| env.log_store(g).unwrap()).collect();
    let before = env.disk_stats().unwrap();
    for store in &stores {
        block_on(store.write(append(1..401, 1))).unwrap();
    }
    let after = env.disk_stats().unwrap();
    // 1,600 entries of ~10 bytes, in pages of their own groups: at least 4 leaf pages more.
    assert!(after.tree_pages >= before.tree_pages + 4, "{before:?} -> {after:?}");
    assert!(after.used_pages >= after.tree_pages, "{after:?}");
    let per_store = stores[0].disk_stats().unwrap();
    assert_eq!((per_store.tree_pages, per_store.used_pages), (after.tree_pages, after.used_pages));
    if cfg!(target_os = "linux") {
        let written = after.written_bytes.unwrap() - before.written_bytes.unwrap();
        // Four commits, each writing at least its new pages.
        assert!(written >= 4 * after.page_size, "{written}");
    }
}
