//! Behaviour of `LmdbLogStore` beyond the conformance suite: map growth, bad and foreign
//! directories, exclusive opening within this process, write-side validation, file headroom,
//! pipelined writes and reads running alongside writes. Exclusive opening across processes is
//! in `exclusive.rs` (no test here spawns a process: see there why that matters).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use futures::executor::block_on;
use raft_core::{Entry, EntryPayload, LogId, LogStore, WriteBatch};
use raft_lmdb::{LmdbLogStore, LmdbOptions, OpenError};

fn entry(index: u64, term: u64, len: usize) -> Entry {
    let payload = EntryPayload::Command(Bytes::from(vec![(index % 251) as u8; len]));
    Entry { index, term, payload }
}

fn append(entries: Vec<Entry>) -> WriteBatch {
    WriteBatch { entries, ..WriteBatch::default() }
}

#[test]
fn a_full_map_grows_instead_of_failing_the_write() {
    let root = tempfile::tempdir().unwrap();
    let options = LmdbOptions::default().with_initial_map_size(1 << 20);
    let store = LmdbLogStore::open_dir_with(root.path().join("s"), options).unwrap();
    let initial = store.map_size().unwrap();
    assert_eq!(initial, 1 << 20);
    // 6 MiB in 64 KiB entries, then one 5 MiB entry: several times the initial map.
    let mut expected = Vec::new();
    for chunk in 0..12u64 {
        let batch: Vec<Entry> = (1..=8).map(|i| entry(chunk * 8 + i, 1, 64 << 10)).collect();
        expected.extend(batch.clone());
        block_on(store.write(append(batch))).unwrap();
    }
    let big = entry(97, 1, 5 << 20);
    expected.push(big.clone());
    block_on(store.write(append(vec![big]))).unwrap();
    assert!(store.map_size().unwrap() >= 8 << 20, "map stayed at {:?}", store.map_size());
    assert!(!store.has_failed());
    assert_eq!(block_on(store.read(1..98, u64::MAX)).unwrap(), expected);
    let dir = store.path().to_path_buf();
    drop(store);
    let store = LmdbLogStore::open_dir_with(&dir, options).unwrap();
    assert_eq!(block_on(store.open()).unwrap().last, LogId::new(1, 97));
    assert_eq!(block_on(store.read(1..98, u64::MAX)).unwrap(), expected);
}

#[test]
fn a_directory_with_other_files_is_refused() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("notes.txt"), b"mine").unwrap();
    match LmdbLogStore::open_dir(root.path()) {
        Err(OpenError::ForeignDirectory { entry, .. }) => assert_eq!(entry, "notes.txt"),
        other => panic!("unexpected {other:?}"),
    }
    // Nothing was created next to the foreign file.
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
}

#[test]
fn a_file_is_not_a_directory() {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(LmdbLogStore::open_dir(&file), Err(OpenError::NotADirectory { .. })));
}

#[test]
fn a_data_file_that_is_not_lmdb_is_refused() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("data.mdb"), vec![0x5a; 16 << 10]).unwrap();
    let err = LmdbLogStore::open_dir(root.path()).unwrap_err();
    assert!(matches!(err, OpenError::NotOurStore { .. }), "{err}");
    assert!(err.to_string().contains("not a raft-lmdb store"), "{err}");
    // The file was not touched.
    assert_eq!(std::fs::read(root.path().join("data.mdb")).unwrap(), vec![0x5a; 16 << 10]);
}

#[test]
fn one_directory_opens_once_per_process() {
    let root = tempfile::tempdir().unwrap();
    let store = LmdbLogStore::open_dir(root.path()).unwrap();
    let err = LmdbLogStore::open_dir(root.path()).unwrap_err();
    assert!(matches!(err, OpenError::AlreadyOpenInProcess { .. }), "{err}");
    drop(store);
    LmdbLogStore::open_dir(root.path()).unwrap();
}

#[test]
fn an_older_build_holding_its_lock_file_is_reported_and_the_file_goes_away() {
    let root = tempfile::tempdir().unwrap();
    drop(LmdbLogStore::open_dir(root.path()).unwrap());
    // An older build locks `raft-lmdb.lock` (a `flock` of its own open file, as here).
    let legacy = std::fs::File::create(root.path().join("raft-lmdb.lock")).unwrap();
    legacy.lock().unwrap();
    let err = LmdbLogStore::open_dir(root.path()).unwrap_err();
    assert!(matches!(err, OpenError::LockedByOtherProcess { .. }), "{err}");
    drop(legacy);
    let store = LmdbLogStore::open_dir(root.path()).unwrap();
    assert!(!root.path().join("raft-lmdb.lock").exists());
    drop(store);
    LmdbLogStore::open_dir(root.path()).unwrap();
}

#[test]
fn submitted_writes_apply_in_submission_order() {
    let root = tempfile::tempdir().unwrap();
    let store = LmdbLogStore::open_dir(root.path()).unwrap();
    let pending: Vec<_> =
        (1..=200).map(|i| block_on(store.submit(append(vec![entry(i, 1, 10)]))).unwrap()).collect();
    block_on(futures::future::try_join_all(pending)).unwrap();
    let stats = store.stats();
    assert_eq!(stats.requests, 200);
    assert!(stats.commits >= 1 && stats.commits <= 200);
    // The writer's timings: LMDB's commit (a sync of at least a microsecond) is part of the
    // transaction.
    assert!(stats.sync_us > 0 && stats.sync_us <= stats.transaction_us, "{stats:?}");
    let entries = block_on(store.read(1..201, u64::MAX)).unwrap();
    assert_eq!(entries, (1..=200).map(|i| entry(i, 1, 10)).collect::<Vec<_>>());
}

#[test]
fn a_stats_snapshot_never_shows_more_sync_than_transaction_time() {
    let root = tempfile::tempdir().unwrap();
    let store = LmdbLogStore::open_dir(root.path()).unwrap();
    let writing = std::sync::atomic::AtomicBool::new(true);
    let snapshots = std::thread::scope(|scope| {
        let poller = scope.spawn(|| {
            let mut snapshots = 0u64;
            while writing.load(std::sync::atomic::Ordering::Acquire) {
                let stats = store.stats();
                assert!(stats.sync_us <= stats.transaction_us, "{stats:?}");
                snapshots += 1;
            }
            snapshots
        });
        // 64 writes in flight at a time, 50 times: commits of many sizes.
        for round in 0..50u64 {
            let pending: Vec<_> = (1..=64)
                .map(|i| block_on(store.submit(append(vec![entry(round * 64 + i, 1, 10)]))))
                .collect::<Result<_, _>>()
                .unwrap();
            block_on(futures::future::try_join_all(pending)).unwrap();
        }
        writing.store(false, std::sync::atomic::Ordering::Release);
        poller.join()
    });
    assert!(snapshots.is_ok_and(|n| n > 0));
    let stats = store.stats();
    assert_eq!(stats.requests, 50 * 64);
    assert!(stats.sync_us > 0 && stats.sync_us <= stats.transaction_us, "{stats:?}");
}

#[test]
fn reads_run_alongside_writes_and_see_every_acknowledged_write() {
    let root = tempfile::tempdir().unwrap();
    let store = LmdbLogStore::open_dir(root.path()).unwrap();
    let acked = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for i in 1..=300 {
                block_on(store.write(append(vec![entry(i, 1, 100)]))).unwrap();
                acked.store(i, std::sync::atomic::Ordering::SeqCst);
            }
        });
        for _ in 0..2 {
            scope.spawn(|| loop {
                let seen = acked.load(std::sync::atomic::Ordering::SeqCst);
                if seen > 0 {
                    // Every acknowledged entry is readable.
                    let entries = block_on(store.read(1..seen + 1, u64::MAX)).unwrap();
                    assert_eq!(entries.len() as u64, seen);
                    assert!(block_on(store.open()).unwrap().last.index >= seen);
                }
                if seen == 300 {
                    break;
                }
                std::thread::yield_now();
            });
        }
    });
}

/// Writes `batch`, expects it refused as invalid, and checks that the store still opens with
/// `last` as its last entry.
fn expect_refused(dir: &std::path::Path, store: LmdbLogStore, batch: WriteBatch, last: LogId) {
    let err = block_on(store.write(batch.clone())).unwrap_err();
    assert!(matches!(err, raft_core::StorageError::InvalidRequest(_)), "{batch:?}: {err:?}");
    assert!(!store.has_failed());
    assert_eq!(block_on(store.open()).unwrap().last, last);
    drop(store);
    let store = LmdbLogStore::open_dir(dir).unwrap_or_else(|e| panic!("{batch:?} broke it: {e}"));
    assert_eq!(block_on(store.open()).unwrap().last, last);
}

#[test]
fn a_batch_that_would_leave_an_unopenable_store_is_refused_before_commit() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("s");
    let store = LmdbLogStore::open_dir(&dir).unwrap();
    block_on(store.write(append((1..=5).map(|i| entry(i, 3, 10)).collect()))).unwrap();
    block_on(store.purge(5)).unwrap();
    // The log is empty after purged (3, 5): an entry of term 2 would sit below the purged term.
    let below_purged = append(vec![entry(6, 2, 10)]);
    expect_refused(&dir, store, below_purged, LogId::new(3, 5));

    let store = LmdbLogStore::open_dir(&dir).unwrap();
    block_on(store.write(append((6..=8).map(|i| entry(i, 4, 10)).collect()))).unwrap();
    // Terms that decrease inside a batch, after the last entry, or after a truncation point.
    let decreasing = append(vec![entry(9, 5, 10), entry(10, 4, 10)]);
    expect_refused(&dir, store, decreasing, LogId::new(4, 8));
    let store = LmdbLogStore::open_dir(&dir).unwrap();
    expect_refused(&dir, store, append(vec![entry(9, 3, 10)]), LogId::new(4, 8));
    let store = LmdbLogStore::open_dir(&dir).unwrap();
    let overwrite_lower = WriteBatch {
        truncate_from: Some(8),
        entries: vec![entry(8, 3, 10)],
        hard_state: None,
        seq: 0,
    };
    expect_refused(&dir, store, overwrite_lower, LogId::new(4, 8));
    // Indexes that do not follow.
    let store = LmdbLogStore::open_dir(&dir).unwrap();
    expect_refused(&dir, store, append(vec![entry(8, 4, 10)]), LogId::new(4, 8));
    let store = LmdbLogStore::open_dir(&dir).unwrap();
    expect_refused(&dir, store, append(vec![entry(9, 4, 10), entry(9, 4, 10)]), LogId::new(4, 8));

    // Valid writes still go through: an overwrite with a higher term, and equal terms.
    let store = LmdbLogStore::open_dir(&dir).unwrap();
    let overwrite = WriteBatch {
        truncate_from: Some(7),
        entries: vec![entry(7, 6, 10)],
        hard_state: None,
        seq: 0,
    };
    block_on(store.write(overwrite)).unwrap();
    block_on(store.write(append(vec![entry(8, 6, 10), entry(9, 6, 10)]))).unwrap();
    drop(store);
    let store = LmdbLogStore::open_dir(&dir).unwrap();
    assert_eq!(block_on(store.open()).unwrap().last, LogId::new(6, 9));
}

#[test]
fn the_last_possible_index_is_refused_not_wrapped() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("s");
    let store = LmdbLogStore::open_dir(&dir).unwrap();
    let end = LogId::new(1, u64::MAX);
    block_on(store.reset(end)).unwrap();
    expect_refused(&dir, store, append(vec![entry(0, 1, 10)]), end);
}

/// How many of `commits` commits of 64 entries each changed the data file's length.
fn commits_that_grew_the_file(headroom: u64, commits: u64) -> u64 {
    let root = tempfile::tempdir().unwrap();
    // Without the write-ahead file, so that every commit is an LMDB transaction.
    let options = LmdbOptions::default().with_file_headroom(headroom).with_wal_bytes(0);
    let store = LmdbLogStore::open_dir_with(root.path().join("s"), options).unwrap();
    let data = store.path().join("data.mdb");
    let mut len = std::fs::metadata(&data).unwrap().len();
    let mut grew = 0;
    for commit in 0..commits {
        let first = commit * 64 + 1;
        block_on(store.write(append((first..first + 64).map(|i| entry(i, 1, 100)).collect())))
            .unwrap();
        let now = std::fs::metadata(&data).unwrap().len();
        grew += u64::from(now != len);
        len = now;
    }
    drop(store);
    // The zeros past LMDB's last page are invisible: the store reopens with every entry.
    let store = LmdbLogStore::open_dir_with(root.path().join("s"), options).unwrap();
    assert_eq!(block_on(store.open()).unwrap().last, LogId::new(1, commits * 64));
    assert_eq!(
        block_on(store.read(1..commits * 64 + 1, u64::MAX)).unwrap().len() as u64,
        commits * 64
    );
    grew
}

#[test]
fn commits_overwrite_blocks_written_ahead_instead_of_growing_the_file() {
    // 300 commits add about 2.3 MB of pages. Growing the file makes the commit's sync also
    // commit the file system's journal; with 8 MiB of headroom the file grows when the store
    // is opened instead of at nearly every commit.
    let with_headroom = commits_that_grew_the_file(8 << 20, 300);
    assert_eq!(with_headroom, 0, "{with_headroom} commits grew the file");
    let without = commits_that_grew_the_file(0, 300);
    assert!(without >= 250, "only {without} commits grew the file without headroom");
}

#[test]
fn a_store_that_purges_reuses_its_pages() {
    // Without headroom, to see LMDB's own growth: rounds of 100 commits of 64 entries, each
    // followed by a purge that keeps the last 1000 entries. LMDB reuses the pages the purges
    // freed, so the file stops growing although six times as much is written.
    let root = tempfile::tempdir().unwrap();
    // Without the write-ahead file either: every commit is an LMDB transaction.
    let options = LmdbOptions::default().with_file_headroom(0).with_wal_bytes(0);
    let store = LmdbLogStore::open_dir_with(root.path().join("s"), options).unwrap();
    let data = store.path().join("data.mdb");
    let mut next = 1;
    let mut sizes = Vec::new();
    for _round in 0..6 {
        for _commit in 0..100 {
            block_on(store.write(append((next..next + 64).map(|i| entry(i, 1, 100)).collect())))
                .unwrap();
            next += 64;
        }
        sizes.push(std::fs::metadata(&data).unwrap().len());
        block_on(store.purge(next - 1000)).unwrap();
    }
    assert!(sizes[5] < sizes[0] * 3 / 2, "the file kept growing: {sizes:?}");
}

#[test]
fn disk_stats_count_what_the_writer_writes() {
    let root = tempfile::tempdir().unwrap();
    // Without the write-ahead file: every commit writes LMDB's pages.
    let options = LmdbOptions::default().with_file_headroom(1 << 20).with_wal_bytes(0);
    let store = LmdbLogStore::open_dir_with(root.path().join("s"), options).unwrap();
    let (stats0, disk0) = (store.stats(), store.disk_stats().unwrap());
    // The headroom written at open: the file reaches past LMDB's pages by at least half of it.
    assert!(stats0.headroom_bytes >= 1 << 19, "{stats0:?}");
    assert_eq!(disk0.file_bytes % disk0.page_size, 0);
    assert!(disk0.file_bytes >= disk0.used_pages * disk0.page_size + (1 << 19), "{disk0:?}");
    // 200 commits of 64 entries of 100 bytes: about 1.7 MB of pages, so the headroom is
    // extended at least once between commits.
    let commits = 200;
    for commit in 0..commits {
        let first = commit * 64 + 1;
        block_on(store.write(append((first..first + 64).map(|i| entry(i, 1, 100)).collect())))
            .unwrap();
    }
    let (stats1, disk1) = (store.stats(), store.disk_stats().unwrap());
    assert_eq!(stats1.commits - stats0.commits, commits);
    let zeros = stats1.headroom_bytes - stats0.headroom_bytes;
    assert!(zeros > 0, "{stats0:?} -> {stats1:?}");
    let grown = (disk1.used_pages - disk0.used_pages) * disk1.page_size;
    assert!(grown >= commits * 64 * 100, "{disk0:?} -> {disk1:?}");
    assert!(disk1.tree_pages * disk1.page_size >= commits * 64 * 100, "{disk1:?}");
    assert!(disk1.free_pages() < disk1.tree_pages, "{disk1:?}");
    assert!(disk1.file_bytes >= disk1.used_pages * disk1.page_size, "{disk1:?}");
    if cfg!(target_os = "linux") {
        // The writer wrote the zeros, and every page LMDB added, and at least a page a commit.
        let written = disk1.written_bytes.unwrap() - disk0.written_bytes.unwrap();
        assert!(written >= zeros + grown, "{written} < {zeros} + {grown}");
        assert!(written >= zeros + commits * disk1.page_size, "{written}");
        // And not much more than a copy-on-write B-tree needs: at most 16 pages a commit
        // besides the zeros (about 8 in practice).
        assert!(written <= zeros + commits * 16 * disk1.page_size, "{written}");
    }
}
