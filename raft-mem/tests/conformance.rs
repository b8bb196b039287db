//! `MemLogStore` passes the `LogStore` conformance suite of `raft-core`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use raft_core::testing::{factory, run_log_store_conformance};
use raft_mem::MemLogStore;

#[test]
fn mem_log_store_conformance() {
    // A clone shares the data, so it is the store "reopened" after a restart.
    let mut stores = factory(
        || Ok(MemLogStore::new()),
        |store: MemLogStore| {
            let reopened = store.clone();
            drop(store);
            Ok(reopened)
        },
    );
    if let Err(failure) = futures::executor::block_on(run_log_store_conformance(&mut stores)) {
        panic!("{failure}");
    }
}
