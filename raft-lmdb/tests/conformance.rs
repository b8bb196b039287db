//! `LmdbLogStore` passes the `LogStore` conformance suite of `raft-core`, with the default map
//! and with a tiny map that has to grow during the suite.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use raft_core::testing::{factory, run_log_store_conformance};
use raft_core::StorageError;
use raft_lmdb::{LmdbLogStore, LmdbOptions};

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
fn lmdb_log_store_conformance_with_growing_map() {
    run_suite(LmdbOptions::default().with_initial_map_size(1));
}
