//! One test harness for clusters of real nodes on a real runtime, shared by every crate's tests
//! and benchmarks.
//!
//! * [`RecordingStateMachine`]: a state machine that records every entry it applies and every
//!   snapshot it restores, answering each command with its own bytes; its clones share the
//!   record, so a test keeps one to read what a node applied.
//! * [`Cluster`] (built by [`ClusterBuilder`]): real [`Node`](raft_core::Node)s on any
//!   [`Runtime`](raft_core::Runtime) (tokio, smol, ...), each start of a node getting its
//!   log store, state machine and snapshot store from factories per node id and its endpoint
//!   from a [`Transport`] (implemented for [`MemNetwork`](crate::MemNetwork)). It starts,
//!   stops and restarts nodes, waits for a leader, proposes and waits for every node to
//!   apply, and reads what each node applied; every wait is bounded and fails rather than
//!   hanging.
//!
//! For deterministic runs in virtual time use [`sim`](crate::sim) instead.
//!
//! ```
//! use raft_core::{runtime::TokioRuntime, Bytes};
//! use raft_mem::harness::{Cluster, RecordingStateMachine};
//! use raft_mem::{MemLogStore, MemNetwork};
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let runtime = TokioRuntime::current().ok_or("no tokio runtime")?;
//! let stores: std::collections::BTreeMap<u64, MemLogStore> =
//!     (1..=3).map(|id| (id, MemLogStore::new())).collect();
//! let mut cluster = Cluster::builder(
//!     runtime,
//!     MemNetwork::new(),
//!     [1, 2, 3],
//!     move |id| Ok(stores[&id].clone()), // the same store at every start: it survives restarts
//!     |_id| RecordingStateMachine::new(),
//! )
//! .build();
//! cluster.start_all().await?;
//! let index = cluster.propose_everywhere(Bytes::from_static(b"hello")).await?;
//! let leader = cluster.leader().await?;
//! let follower = cluster.voters().iter().copied().find(|&id| id != leader).ok_or("no follower")?;
//! cluster.restart(follower).await?;
//! cluster.wait_applied_on(follower, index).await?;
//! assert_eq!(cluster.commands(follower), vec![Bytes::from_static(b"hello")]);
//! cluster.stop_all().await?;
//! # Ok(())
//! # }
//! ```

mod cluster;
mod recording;

pub use cluster::{
    test_config, BoxError, Cluster, ClusterBuilder, HarnessError, Transport, DEFAULT_PATIENCE,
};
pub use recording::RecordingStateMachine;
