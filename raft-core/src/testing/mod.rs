//! Test support for implementers of the `raft-core` traits (feature `testing`): the `LogStore`
//! conformance suite below, and the fixtures of a transport measured alone ([`MatchingFollower`],
//! [`append_entries`]).
//!
//! # The `LogStore` conformance suite
//!
//! Every [`LogStore`] should pass [`run_log_store_conformance`]: it checks the contract written
//! on the trait (appends, overwrite after truncation, hard state round trip, bounds after a
//! reopen, range reads bounded in bytes, purge of a prefix, rejection of invalid writes without
//! partial effects). A store crate calls it from its own tests with a [`StoreFactory`] that
//! creates empty stores and "restarts" a store (drops it and opens the same data again):
//!
//! ```ignore
//! #[test]
//! fn conformance() {
//!     let mut factory = raft_core::testing::factory(
//!         || Ok(MyStore::new_in(fresh_dir())),
//!         |store: MyStore| { let dir = store.dir(); drop(store); Ok(MyStore::open(dir)) },
//!     );
//!     futures::executor::block_on(raft_core::testing::run_log_store_conformance(&mut factory)).unwrap();
//! }
//! ```
//!
//! The suite uses no async runtime (only `futures`): drive it with any executor.

mod follower;
mod log_store_cases;

use std::fmt;

use crate::storage::{LogStore, StorageError};

pub use follower::{append_entries, MatchingFollower};
pub use log_store_cases::LogStoreCase;

/// Makes stores for the conformance suite.
pub trait StoreFactory {
    /// The store under test.
    type Store: LogStore;

    /// A new, empty store, independent of every store created before.
    fn create(&mut self) -> Result<Self::Store, StorageError>;

    /// Closes `store` and opens the same underlying data again, as a node does after a restart.
    /// Everything written through `store` that returned `Ok` must be found again.
    fn reopen(&mut self, store: Self::Store) -> Result<Self::Store, StorageError>;
}

/// A [`StoreFactory`] made of two closures (see [`factory`]).
#[derive(Debug)]
pub struct FnFactory<C, R> {
    create: C,
    reopen: R,
}

/// Builds a [`StoreFactory`] from a `create` and a `reopen` closure.
pub fn factory<S, C, R>(create: C, reopen: R) -> FnFactory<C, R>
where
    S: LogStore,
    C: FnMut() -> Result<S, StorageError>,
    R: FnMut(S) -> Result<S, StorageError>,
{
    FnFactory { create, reopen }
}

impl<S, C, R> StoreFactory for FnFactory<C, R>
where
    S: LogStore,
    C: FnMut() -> Result<S, StorageError>,
    R: FnMut(S) -> Result<S, StorageError>,
{
    type Store = S;

    fn create(&mut self) -> Result<S, StorageError> {
        (self.create)()
    }

    fn reopen(&mut self, store: S) -> Result<S, StorageError> {
        (self.reopen)(store)
    }
}

/// A conformance case that failed: which one and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConformanceFailure {
    /// The case that failed.
    pub case: LogStoreCase,
    /// What was expected and what happened.
    pub message: String,
}

impl fmt::Display for ConformanceFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LogStore conformance case `{}` failed: {}", self.case.name(), self.message)
    }
}

impl std::error::Error for ConformanceFailure {}

/// Runs every case of the `LogStore` conformance suite, in order, each on a fresh store from
/// `factory`. Returns the first failure.
pub async fn run_log_store_conformance<F: StoreFactory>(
    factory: &mut F,
) -> Result<(), ConformanceFailure> {
    for case in LogStoreCase::ALL {
        run_log_store_case(factory, case).await?;
    }
    Ok(())
}

/// Runs one case of the `LogStore` conformance suite on a fresh store from `factory`.
pub async fn run_log_store_case<F: StoreFactory>(
    factory: &mut F,
    case: LogStoreCase,
) -> Result<(), ConformanceFailure> {
    case.run(factory).await.map_err(|message| ConformanceFailure { case, message })
}
