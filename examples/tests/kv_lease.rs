//! Lease reads on real `kv-node` processes (`--lease-reads`): the leader is paused with SIGSTOP
//! (as a VM freeze or a long stall would), a new leader commits writes, the old leader is
//! resumed with reads already waiting for it, and the history of one key must stay
//! linearizable: a leader paused longer than its lease must answer no read from it.
//!
//! Linux only (SIGSTOP through `kill`). Time limits here only turn a hang into a failure.
//!
//! Before the engine measured the lease with a monotonic clock (a lease counted in ticks), the
//! resumed leader answered the waiting reads with the value it had before the pause.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use examples::kv::cluster::{wait_for_leader, ClusterSpec, Launcher, ProcessCluster};
use examples::kv::command::{Op, OpResult};
use examples::kv::{ClientOptions, Connections, KvClient};
use examples::linearizability::kv::{check_kv_history, format_history, KvOperation};
use examples::linearizability::{Budget, OpOutcome, Verdict};
use raft_core::NodeId;

const PATIENCE: Duration = Duration::from_secs(30);
/// Pause/resume rounds, each with a new leader.
const ROUNDS: usize = 3;
/// Reads waiting for the paused leader when it resumes.
const WAITING_READS: u64 = 32;

fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
    assert!(status.unwrap().success(), "kill -{signal} {pid}");
}

/// Connections that know only `nodes` (they learn others from redirects).
fn connections_to(
    cluster: &ProcessCluster,
    nodes: &[NodeId],
    options: ClientOptions,
) -> Connections {
    let endpoints = cluster.client_endpoints().into_iter().filter(|(id, _)| nodes.contains(id));
    Connections::new(endpoints.collect(), cluster.client_tls(), options).unwrap()
}

/// The one key of the test.
fn key() -> Bytes {
    Bytes::from_static(b"x")
}

/// The shared history of the test.
struct History {
    start: Instant,
    ops: Mutex<Vec<KvOperation>>,
}

impl History {
    async fn get(&self, client: u64, kv: &KvClient) {
        let call = self.start.elapsed();
        let result = kv.get("x").await;
        let ret = self.start.elapsed();
        if let Ok(value) = result {
            let outcome = OpOutcome::Ok(OpResult::Value(value));
            self.push(client, Op::Get { key: key() }, call, Some(ret), outcome);
        }
    }

    async fn put(&self, client: u64, kv: &KvClient, value: String) {
        let call = self.start.elapsed();
        let result = kv.put("x", value.clone()).await;
        let ret = self.start.elapsed();
        let input = Op::Put { key: key(), value: Bytes::from(value) };
        match result {
            Ok(()) => {
                self.push(client, input, call, Some(ret), OpOutcome::Ok(OpResult::Written));
            }
            Err(e) if e.outcome_unknown() => {
                self.push(client, input, call, None, OpOutcome::Unknown)
            }
            Err(_) => {}
        }
    }

    fn push(
        &self,
        client: u64,
        op: Op,
        call: Duration,
        ret: Option<Duration>,
        outcome: OpOutcome<OpResult>,
    ) {
        self.ops.lock().unwrap().push(KvOperation { client, op, call, ret, outcome });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_serves_no_stale_lease_read() {
    let launcher = Launcher::program(env!("CARGO_BIN_EXE_kv-node"));
    let spec = ClusterSpec { nodes: 3, lease_reads: true, ..ClusterSpec::default() };
    let cluster = ProcessCluster::start(launcher, spec).unwrap();
    let admin = cluster.connections(ClientOptions::default()).unwrap();
    let history = Arc::new(History { start: Instant::now(), ops: Mutex::new(Vec::new()) });
    let mut written = 0u64;

    for round in 0..ROUNDS {
        let ids = cluster.ids();
        let leader = wait_for_leader(&admin, &ids, 3, PATIENCE).await.expect("a leader").id;
        let others: Vec<NodeId> = ids.iter().copied().filter(|&id| id != leader).collect();
        // Readers that know only the leader, with attempts long enough to outlast the pause.
        let patient = ClientOptions {
            attempt_timeout: Duration::from_secs(10),
            hedge_after: Duration::from_secs(10),
            ..ClientOptions::default()
        };
        let readers = connections_to(&cluster, &[leader], patient);
        let writer = KvClient::new(connections_to(&cluster, &others, ClientOptions::default()));
        let reader = KvClient::new(readers.clone());
        written += 1;
        history.put(100, &writer, format!("v{written}")).await;
        history.get(200, &reader).await; // the readers' connection is up

        let pid = cluster.pid(leader).unwrap();
        signal(pid, "STOP");
        // A new leader commits writes while the old one sleeps.
        for _ in 0..3 {
            written += 1;
            history.put(100, &writer, format!("v{written}")).await;
        }
        // Reads queue up for the paused leader; it resumes with them waiting.
        let waiting: Vec<_> = (0..WAITING_READS)
            .map(|i| {
                let (history, reader) = (history.clone(), KvClient::new(readers.clone()));
                tokio::spawn(async move { history.get(300 + i, &reader).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        signal(pid, "CONT");
        for read in waiting {
            tokio::time::timeout(PATIENCE, read).await.expect("reads end").unwrap();
        }
        println!("round {round}: paused leader {leader}, {written} values written");
        readers.close().await;
    }

    let ops = history.ops.lock().unwrap().clone();
    let outcome = check_kv_history(&ops, Budget { steps: 20_000_000, ..Budget::default() }).verdict;
    assert!(
        !matches!(outcome, Verdict::NotLinearizable { .. }),
        "a stale read was served: {outcome:?}\n{}",
        format_history(&ops)
    );
    assert_eq!(outcome, Verdict::Linearizable, "the check did not finish");
}
