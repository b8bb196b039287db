//! A node whose tasks vanish without a clean stop (its tokio runtime shut down, as a dropped
//! runtime or a simulated crash does): callers holding its handle elsewhere are still answered.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{start, wait_for_leader};
use raft_core::runtime::TokioRuntime;
use raft_core::{Bytes, ProposeError, WriteError};

/// Only a guard against a hang: the answer is expected at once.
const HANG_GUARD: Duration = Duration::from_secs(60);

/// The node's runtime goes away (its tasks dropped, not stopped): a later write on a handle
/// kept elsewhere is refused with `Shutdown`, not left waiting forever for a main loop that is
/// gone (found by review: the proposal inbox stayed open when the main loop's task was dropped).
#[test]
fn write_after_the_nodes_tasks_vanished_is_refused() {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let node = rt.block_on(async {
        let (cluster, _) = start(1, TokioRuntime::current().unwrap()).await;
        let leader = wait_for_leader(&cluster).await;
        let node = cluster.node(leader).unwrap().clone();
        node.write(Bytes::from_static(b"a")).await.unwrap();
        // No clean stop: the cluster's tasks die with the runtime.
        std::mem::forget(cluster);
        node
    });
    rt.shutdown_timeout(Duration::from_secs(5));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let outcome = futures::executor::block_on(node.write(Bytes::from_static(b"b")));
        let _ = tx.send(outcome);
    });
    let outcome = rx.recv_timeout(HANG_GUARD).expect("the write was never answered");
    assert!(matches!(outcome, Err(WriteError::Refused(ProposeError::Shutdown))), "{outcome:?}");
}
