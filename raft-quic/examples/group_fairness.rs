//! Fairness between Raft groups that share one QUIC connection: two endpoints on loopback
//! (mutual TLS, tokio with 2 workers); group 1 sends bulk AppendEntries (1 MiB batches, the
//! default `max_append_entries_bytes`) back to back from many concurrent senders, as many groups
//! (or one group streaming a snapshot) would, while group 2 sends one heartbeat at a time. The
//! receiver answers group 2 at once and group 1 after a delay (its follower syncing to disk).
//!
//! Prints, per scenario, group 2's heartbeat latency (p50, p99, max), how many of its heartbeats
//! failed (timed out), and group 1's bulk throughput.
//!
//! `cargo run --release -p raft-quic --example group_fairness [-- --seconds 3]`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use raft_core::testing::{append_entries as append, MatchingFollower};
use raft_core::{Envelope, GroupId, Network, RpcError, RpcHandler, RpcResponse};
use raft_quic::quinn::TokioRuntime;
use raft_quic::{ClusterCa, QuicConfig, QuicNetwork};

const BULK_GROUP: GroupId = 1;
const CONTROL_GROUP: GroupId = 2;

/// Answers AppendEntries as a follower whose log always matches; group 1's after `bulk_delay`.
struct Responder {
    bulk_delay: Duration,
}

#[async_trait]
impl RpcHandler for Responder {
    async fn handle_rpc(&self, request: Envelope) -> Result<RpcResponse, RpcError> {
        if request.group_id == BULK_GROUP && !self.bulk_delay.is_zero() {
            tokio::time::sleep(self.bulk_delay).await;
        }
        MatchingFollower.handle_rpc(request).await
    }
}

struct Scenario {
    name: &'static str,
    bulk_senders: usize,
    bulk_delay: Duration,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn run(scenario: &Scenario, seconds: u64) {
    let ca = ClusterCa::generate().unwrap();
    let runtime: Arc<dyn raft_quic::quinn::Runtime> = Arc::new(TokioRuntime);
    let addr = "127.0.0.1:0".parse().unwrap();
    let receiver =
        QuicNetwork::bind(QuicConfig::new(2, addr, ca.node_tls(2).unwrap()), runtime.clone())
            .unwrap();
    let sender =
        QuicNetwork::bind(QuicConfig::new(1, addr, ca.node_tls(1).unwrap()), runtime).unwrap();
    sender.set_peer(2, receiver.local_addr());
    receiver.serve(Arc::new(Responder { bulk_delay: scenario.bulk_delay }));

    let stop = Arc::new(AtomicBool::new(false));
    let bulk_done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..scenario.bulk_senders {
        let (sender, stop, bulk_done) =
            (sender.for_group(BULK_GROUP), stop.clone(), bulk_done.clone());
        tasks.push(tokio::spawn(async move {
            let batch = Envelope::new(2, append(8, 128 << 10)).with_group_id(BULK_GROUP);
            while !stop.load(Ordering::Relaxed) {
                if sender.send(batch.clone()).await.is_ok() {
                    bulk_done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // Let the bulk load build up before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let heartbeat = Envelope::new(2, append(0, 0)).with_group_id(CONTROL_GROUP);
    let control = sender.for_group(CONTROL_GROUP);
    let mut latencies = Vec::new();
    let mut failed = 0;
    let bulk_before = bulk_done.load(Ordering::Relaxed);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(seconds) {
        let sent = Instant::now();
        match control.send(heartbeat.clone()).await {
            Ok(_) => latencies.push(sent.elapsed()),
            Err(_) => failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = start.elapsed();
    let bulk = bulk_done.load(Ordering::Relaxed) - bulk_before;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    latencies.sort();
    println!(
        "{:<34} {:>7} {:>9} {:>9} {:>9} {:>7} {:>10.0}",
        scenario.name,
        latencies.len(),
        format!("{:.2?}", percentile(&latencies, 0.5)),
        format!("{:.2?}", percentile(&latencies, 0.99)),
        format!("{:.2?}", latencies.last().copied().unwrap_or_default()),
        failed,
        bulk as f64 / elapsed.as_secs_f64(),
    );
    sender.close().await;
    receiver.close().await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mut seconds = 3;
    while let Some(arg) = args.next() {
        if arg == "--seconds" {
            seconds = args.next().and_then(|s| s.parse().ok()).unwrap_or(seconds);
        }
    }
    println!(
        "{:<34} {:>7} {:>9} {:>9} {:>9} {:>7} {:>10}",
        "group 1 bulk load", "hb", "hb p50", "hb p99", "hb max", "failed", "bulk MiB/s"
    );
    let scenarios = [
        Scenario { name: "none", bulk_senders: 0, bulk_delay: Duration::ZERO },
        Scenario { name: "4 senders, fast follower", bulk_senders: 4, bulk_delay: Duration::ZERO },
        Scenario {
            name: "64 senders, fast follower",
            bulk_senders: 64,
            bulk_delay: Duration::ZERO,
        },
        Scenario {
            name: "64 senders, follower 20 ms/batch",
            bulk_senders: 64,
            bulk_delay: Duration::from_millis(20),
        },
        Scenario {
            name: "64 senders, follower 200 ms/batch",
            bulk_senders: 64,
            bulk_delay: Duration::from_millis(200),
        },
    ];
    for scenario in &scenarios {
        run(scenario, seconds).await;
    }
}
