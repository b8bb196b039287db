//! `LmdbLogStore` passes the `LogStore` conformance suite of `raft-core`, with the default map
//! and with a tiny map that has to grow during the suite: a store of its own, and the group
//! stores of one `LmdbEnvironment`, several suites running at once on different groups; with
//! the write-ahead file (the default), without it and with one so small that it fills often.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use raft_core::testing::{factory, run_log_store_conformance};
use raft_core::StorageError;
use raft_lmdb::{LmdbEnvironment, LmdbLogStore, LmdbOptions};

fn run_suite(options: LmdbOptions) {
    let root = tempfile::tempdir().unwrap();
    let mut next = 0u32;
    let mut stores = factory(
        || {
            next += 1;
            let dir: PathBuf = root.path().join(format!("store-{next}"));
            LmdbLogStore::open_dir_with(dir, options).map_err(StorageError::from)
        },
        |store: LmdbLogStore| {
            let dir = store.path().to_path_buf();
            drop(store);
            LmdbLogStore::open_dir_with(dir, options).map_err(StorageError::from)
        },
    );
    if let Err(failure) = futures::executor::block_on(run_log_store_conformance(&mut stores)) {
        panic!("{failure}");
    }
}

#[test]
fn lmdb_log_store_conformance() {
    run_suite(LmdbOptions::default());
}

#[test]
fn lmdb_log_store_conformance_without_the_write_ahead_file() {
    run_suite(LmdbOptions::default().with_wal_bytes(0));
}

#[test]
fn lmdb_log_store_conformance_with_a_small_write_ahead_file() {
    // Frames often do not fit: many checkpoints.
    run_suite(LmdbOptions::default().with_wal_bytes(2048));
}

#[test]
fn lmdb_log_store_conformance_with_growing_map() {
    run_suite(LmdbOptions::default().with_initial_map_size(1));
}

/// Runs `suites` conformance suites at once, each on its own thread and groups, all on one
/// environment: their requests share the writer's transactions.
fn run_group_suites(options: LmdbOptions, suites: u64) {
    let root = tempfile::tempdir().unwrap();
    let env = LmdbEnvironment::open_with(root.path().join("env"), options).unwrap();
    let threads: Vec<_> = (0..suites)
        .map(|suite| {
            let env = env.clone();
            std::thread::spawn(move || {
                let mut next = 0u64;
                let mut stores = factory(
                    || {
                        next += 1;
                        env.log_store(suite << 32 | next).map_err(StorageError::from)
                    },
                    |store: LmdbLogStore| {
                        let group = store.group();
                        drop(store);
                        env.log_store(group).map_err(StorageError::from)
                    },
                );
                futures::executor::block_on(run_log_store_conformance(&mut stores))
            })
        })
        .collect();
    for thread in threads {
        if let Err(failure) = thread.join().unwrap() {
            panic!("{failure}");
        }
    }
    let stats = env.stats();
    assert!(!env.has_failed());
    println!("{} requests in {} commits", stats.requests, stats.commits);
}

#[test]
fn group_stores_of_one_environment_pass_conformance_side_by_side() {
    run_group_suites(LmdbOptions::default(), 4);
}

#[test]
fn group_stores_pass_conformance_side_by_side_without_the_write_ahead_file() {
    run_group_suites(LmdbOptions::default().with_wal_bytes(0), 4);
}

#[test]
fn group_stores_pass_conformance_side_by_side_with_a_growing_map() {
    run_group_suites(LmdbOptions::default().with_initial_map_size(1), 4);
}
