//! A state machine that persists its own state says what it has applied
//! (`StateMachine::applied_index`): a restarted node applies only the entries after it, never one
//! again, and restores no older snapshot over it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::StreamExt;
use raft_core::runtime::TokioRuntime;
use raft_core::{
    Bytes, Entry, LogId, LogIndex, Membership, Node, Role, SnapshotMeta, SnapshotStream,
    StartError, StateMachine, StateMachineError,
};
use raft_mem::{MemLogStore, MemNetwork, MemSnapshotStore};

use common::{config, PATIENCE};

/// What the state machine keeps on disk: the commands applied and the last entry applied.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct Saved {
    commands: Vec<Vec<u8>>,
    applied: Option<(u64, u64)>,
}

/// A state machine kept in a file, rewritten (atomically: a temporary file renamed over it)
/// after every `apply` and `restore`.
struct FileMachine {
    path: PathBuf,
    state: Saved,
    /// The indexes handed to `apply` in this incarnation, and the restores it did.
    seen: Arc<Mutex<(Vec<LogIndex>, usize)>>,
}

impl FileMachine {
    fn open(path: &Path) -> Self {
        let state = match std::fs::read(path) {
            Ok(bytes) => postcard::from_bytes(&bytes).unwrap(),
            Err(_) => Saved::default(),
        };
        Self { path: path.to_owned(), state, seen: Arc::default() }
    }

    fn save(&self) -> Result<(), StateMachineError> {
        let bytes = postcard::to_allocvec(&self.state).unwrap();
        let temporary = self.path.with_extension("tmp");
        let error = |e: std::io::Error| StateMachineError::new(e.to_string());
        std::fs::write(&temporary, bytes).map_err(error)?;
        std::fs::rename(&temporary, &self.path).map_err(error)
    }
}

#[async_trait]
impl StateMachine for FileMachine {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError> {
        for entry in entries {
            self.seen.lock().unwrap().0.push(entry.index);
            if let Some(command) = entry.command() {
                self.state.commands.push(command.to_vec());
            }
            self.state.applied = Some((entry.term, entry.index));
        }
        self.save()?;
        Ok(vec![Bytes::new(); entries.len()])
    }

    fn applied_index(&self) -> Option<LogId> {
        self.state.applied.map(|(term, index)| LogId::new(term, index))
    }

    async fn snapshot(&mut self) -> Result<Option<SnapshotStream>, StateMachineError> {
        let bytes = Bytes::from(postcard::to_allocvec(&self.state.commands).unwrap());
        Ok(Some(futures::stream::iter([Ok(bytes)]).boxed()))
    }

    async fn restore(
        &mut self,
        meta: &SnapshotMeta,
        mut data: SnapshotStream,
    ) -> Result<(), StateMachineError> {
        let mut bytes = Vec::new();
        while let Some(chunk) = data.next().await {
            bytes.extend_from_slice(&chunk?);
        }
        self.state.commands = postcard::from_bytes(&bytes).unwrap();
        self.state.applied = Some((meta.last_included.term, meta.last_included.index));
        self.seen.lock().unwrap().1 += 1;
        self.save()
    }
}

struct Single {
    network: MemNetwork,
    store: MemLogStore,
    snapshots: Option<MemSnapshotStore>,
    file: PathBuf,
}

impl Single {
    /// Starts the node from the stores and the state machine's file, and waits for it to lead.
    /// Also returns the applied index the node reported as it started, before its election
    /// (once it leads, it applies its term's blank entry too).
    async fn start(
        &self,
        bootstrap: bool,
    ) -> Result<(Node, Arc<Mutex<(Vec<LogIndex>, usize)>>, LogIndex), StartError> {
        let machine = FileMachine::open(&self.file);
        let seen = machine.seen.clone();
        let mut config = config(1);
        config.snapshot_interval_entries = 3;
        config.snapshot_keep_entries = 0;
        let runtime = TokioRuntime::current().unwrap();
        let endpoint = self.network.endpoint(1);
        let mut builder = Node::builder(config, self.store.clone(), endpoint, machine, runtime);
        if let Some(snapshots) = &self.snapshots {
            builder = builder.snapshot_store(snapshots.clone());
        }
        if bootstrap {
            builder = builder.bootstrap(Membership::with_voters([1]));
        }
        let node = builder.start().await?;
        let applied_at_start = node.status().applied_index;
        self.network.serve(1, Arc::new(node.clone()));
        let mut watch = node.watch();
        tokio::time::timeout(PATIENCE, watch.wait_for(|s| s.role == Role::Leader)).await.unwrap();
        Ok((node, seen, applied_at_start))
    }

    async fn write(node: &Node, command: &str) -> LogIndex {
        let proposal = node.propose(Bytes::copy_from_slice(command.as_bytes())).await.unwrap();
        let index = proposal.index;
        tokio::time::timeout(PATIENCE, proposal.response()).await.unwrap().unwrap();
        index
    }

    fn saved(&self) -> Saved {
        FileMachine::open(&self.file).state
    }
}

async fn restart_applies_only_what_the_state_machine_lacks(with_snapshots: bool) {
    let dir = tempfile::tempdir().unwrap();
    let single = Single {
        network: MemNetwork::new(),
        store: MemLogStore::new(),
        snapshots: with_snapshots.then(MemSnapshotStore::new),
        file: dir.path().join("machine"),
    };
    let (node, _, _) = single.start(true).await.unwrap();
    for i in 0..5 {
        Single::write(&node, &format!("c{i}")).await;
    }
    node.shutdown().await;
    single.network.stop_serving(1);
    let before = single.saved();
    let (applied_term, applied) = before.applied.unwrap();
    assert_eq!(before.commands.len(), 5);

    let (node, seen, applied_at_start) = single.start(false).await.unwrap();
    assert_eq!(applied_at_start, applied, "resumed where the state machine was");
    let last = Single::write(&node, "after").await;
    node.shutdown().await;
    let (indexes, restores) = seen.lock().unwrap().clone();
    assert!(indexes.iter().all(|&i| i > applied), "re-applied {indexes:?} (had {applied})");
    assert_eq!(indexes.last(), Some(&last));
    assert_eq!(restores, 0, "no snapshot restored over a newer state");
    let after = single.saved();
    let expected: Vec<Vec<u8>> =
        ["c0", "c1", "c2", "c3", "c4", "after"].iter().map(|c| c.as_bytes().to_vec()).collect();
    assert_eq!(after.commands, expected, "every command exactly once");
    assert!(after.applied.unwrap() > (applied_term, applied));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_applies_only_what_the_state_machine_lacks_without_snapshots() {
    restart_applies_only_what_the_state_machine_lacks(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_applies_only_what_the_state_machine_lacks_with_snapshots() {
    restart_applies_only_what_the_state_machine_lacks(true).await;
}

/// A state machine older than the latest snapshot (its file is from before the snapshot) is
/// restored from the snapshot, then given the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_state_machine_is_restored_from_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let single = Single {
        network: MemNetwork::new(),
        store: MemLogStore::new(),
        snapshots: Some(MemSnapshotStore::new()),
        file: dir.path().join("machine"),
    };
    let (node, _, _) = single.start(true).await.unwrap();
    Single::write(&node, "c0").await;
    let old = std::fs::read(&single.file).unwrap();
    for i in 1..8 {
        Single::write(&node, &format!("c{i}")).await;
    }
    node.shutdown().await;
    single.network.stop_serving(1);
    std::fs::write(&single.file, old).unwrap();

    let (node, seen, _) = single.start(false).await.unwrap();
    Single::write(&node, "after").await;
    node.shutdown().await;
    assert_eq!(seen.lock().unwrap().1, 1, "restored from the snapshot");
    let commands = single.saved().commands;
    assert_eq!(commands.len(), 9, "{commands:?}");
    assert_eq!(commands.last().unwrap(), b"after");
}

/// A state machine that claims an entry the stores do not hold is refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_machine_beside_the_stores_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let single = Single {
        network: MemNetwork::new(),
        store: MemLogStore::new(),
        snapshots: None,
        file: dir.path().join("machine"),
    };
    let (node, _, _) = single.start(true).await.unwrap();
    Single::write(&node, "c0").await;
    node.shutdown().await;
    single.network.stop_serving(1);
    let mut saved = single.saved();
    let (term, index) = saved.applied.unwrap();
    saved.applied = Some((term + 5, index));
    std::fs::write(&single.file, postcard::to_allocvec(&saved).unwrap()).unwrap();
    let refused = single.start(false).await.map(|_| ());
    assert!(matches!(refused, Err(StartError::AppliedNotStored { .. })), "{refused:?}");
}
