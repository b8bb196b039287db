//! Throughput and latency of a 3-node cluster in one process: in-memory store, in-process
//! network, a no-op state machine. Prints proposals/s and p50/p99 latency (proposal to applied
//! response) per number of concurrent clients; then linearizable reads (`Node::read_index` on the leader, on a follower, and on a
//! leader with lease reads) per number of concurrent readers, next to the write throughput at
//! the same concurrency.
//!
//! `cargo run --release -p examples --bin bench-mem [-- --seconds 3 --clients 1,64,256,1024,4096
//! --workers 2 --writes-only]`
//!
//! Writes use `Node::write` (propose and wait for the response in one call). Next to each write
//! level it prints the CPU time the whole process used in the measured window per write: on a
//! machine shared with other work, throughput follows the CPU share the process gets, CPU time
//! per write much less.
//!
//! Like any long-running deployment (and like openraft's `benchmarks/minimal`), the nodes keep
//! their logs short: the state machine takes (empty) snapshots, so each node compacts its log by
//! the default snapshot policy. `--no-compaction` runs them without a snapshot store, their logs
//! growing for the whole run (as this benchmark did up to issue 19's fifth round).
//!
//! It prints only what it measured. To compare with openraft, run both side by side in one run
//! (`../shared/bench/mem_vs_openraft.sh`): figures from another run or machine are not comparable.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use examples::bench::{print_table, process_cpu_time, LatencyRecorder, Row, Samples};
use examples::NoopStateMachine;
use futures::StreamExt;
use raft_core::runtime::TokioRuntime;
use raft_core::{
    Bytes, Config, Entry, Membership, Node, Role, SnapshotMeta, SnapshotStream, StateMachine,
    StateMachineError,
};
use raft_mem::{MemLogStore, MemNetwork, MemSnapshotStore};

/// [`NoopStateMachine`] that also takes snapshots (of nothing), so that a node with a snapshot
/// store compacts its log (without one, it is a `NoopStateMachine`).
struct CompactingNoop;

#[async_trait]
impl StateMachine for CompactingNoop {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError> {
        NoopStateMachine.apply(entries).await
    }

    async fn snapshot(&mut self) -> Result<Option<SnapshotStream>, StateMachineError> {
        Ok(Some(futures::stream::empty().boxed()))
    }

    async fn restore(
        &mut self,
        _meta: &SnapshotMeta,
        mut data: SnapshotStream,
    ) -> Result<(), StateMachineError> {
        while let Some(chunk) = data.next().await {
            chunk?;
        }
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut compaction = true;
    let rest = std::env::args().skip(1).filter(|arg| {
        let no_compaction = arg == "--no-compaction";
        compaction &= !no_compaction;
        !no_compaction
    });
    let args = examples::bench::Args::parse(rest, 3, &[1, 64, 256, 1024, 4096])?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let seconds = Duration::from_secs(args.seconds);
        let mut rows = Vec::new();
        let mut cpu = Vec::new();
        for &clients in &args.clients {
            let (nodes, leader) = start_cluster(false, compaction).await?;
            let (row, cpu_time) = run_level(&leader, clients, seconds, Op::Write).await;
            for node in &nodes {
                node.shutdown().await;
            }
            cpu.push((clients, cpu_time, row.ops));
            rows.push(Row { label: format!("{clients}"), ..row });
        }
        print_table(
            &format!(
                "bench-mem: 3 nodes, MemLogStore + MemNetwork, no-op state machine, {}, {} workers",
                if compaction { "logs compacted by snapshots" } else { "no log compaction" },
                args.workers
            ),
            "clients",
            &rows,
            "openraft",
        );
        print_cpu(&cpu);
        if args.writes_only {
            return Ok(());
        }
        let writes: Vec<(String, f64)> = rows.iter().map(|r| (r.label.clone(), r.per_second)).collect();
        let mut reads = Vec::new();
        for &clients in &args.clients {
            let write_rate = writes.iter().find(|(l, _)| *l == format!("{clients}")).map(|w| w.1);
            for (on_follower, lease) in [(false, false), (true, false), (false, true)] {
                let (nodes, leader) = start_cluster(lease, compaction).await?;
                let target = if on_follower {
                    nodes.iter().find(|n| n.id() != leader.id()).cloned().unwrap_or(leader)
                } else {
                    leader
                };
                let (row, _) = run_level(&target, clients, seconds, Op::ReadIndex).await;
                for node in &nodes {
                    node.shutdown().await;
                }
                let place = match (on_follower, lease) {
                    (true, _) => "follower",
                    (false, false) => "leader",
                    (false, true) => "lease",
                };
                reads.push(Row { label: format!("{clients} {place}"), reference: write_rate, ..row });
            }
        }
        print_table(
            "linearizable reads (read_index, no log write) by concurrent readers, vs writes at the same concurrency",
            "readers on",
            &reads,
            "writes/s",
        );
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}

/// Starts a 3-node cluster (with lease reads if `lease_reads`, compacting their logs if
/// `compaction`) and returns its nodes and leader.
async fn start_cluster(
    lease_reads: bool,
    compaction: bool,
) -> Result<(Vec<Node>, Node), Box<dyn std::error::Error>> {
    let network = MemNetwork::new();
    // Measure the node, not the simulator's check that every message survives its encoding.
    network.set_wire_check(false);
    let ids = [1, 2, 3];
    let rt = TokioRuntime::current().ok_or("no tokio runtime")?;
    let mut nodes = Vec::new();
    for id in ids {
        let mut config = Config::new(id);
        config.lease_reads = lease_reads;
        let (store, endpoint) = (MemLogStore::new(), network.endpoint(id));
        let mut builder = Node::builder(config, store, endpoint, CompactingNoop, rt.clone());
        if compaction {
            builder = builder.snapshot_store(MemSnapshotStore::new());
        }
        let node = builder.bootstrap(Membership::with_voters(ids)).start().await?;
        network.serve(id, Arc::new(node.clone()));
        nodes.push(node);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(leader) = nodes.iter().find(|n| n.status().role == Role::Leader) {
            return Ok((nodes.clone(), leader.clone()));
        }
        if Instant::now() > deadline {
            return Err("no leader elected within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Prints the CPU time of the process per write, by number of clients.
fn print_cpu(levels: &[(usize, Option<Duration>, u64)]) {
    println!("\nCPU time of the process (all threads) in the measured window, per write");
    println!("{:>10} | {:>10} | {:>10} | {:>14}", "clients", "cpu s", "µs/write", "writes/cpu-s");
    println!("{}", "-".repeat(53));
    for &(clients, cpu, ops) in levels {
        match cpu {
            Some(cpu) if ops > 0 && !cpu.is_zero() => println!(
                "{clients:>10} | {:>10.2} | {:>10.2} | {:>14.0}",
                cpu.as_secs_f64(),
                cpu.as_secs_f64() * 1e6 / ops as f64,
                ops as f64 / cpu.as_secs_f64()
            ),
            _ => println!("{clients:>10} | {:>10} | {:>10} | {:>14}", "-", "-", "-"),
        }
    }
}

/// What each client does in a loop.
#[derive(Clone, Copy)]
enum Op {
    /// Write a 16-byte command and wait for its response (`Node::write`).
    Write,
    /// Ask for a linearizable read point and wait until it is applied locally.
    ReadIndex,
}

/// Runs `clients` loops of `op` for a warm-up and then `duration`; returns what was measured
/// and the CPU time the process used during `duration`.
async fn run_level(
    leader: &Node,
    clients: usize,
    duration: Duration,
    op: Op,
) -> (Row, Option<Duration>) {
    let payload = Bytes::from_static(&[7u8; 16]);
    let warmup = Duration::from_millis(300);
    let start = Instant::now();
    let measure_from = start + warmup;
    let stop_at = measure_from + duration;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let leader = leader.clone();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut recorder = Samples::default();
            // One clock read per operation: its end is the next one's start.
            let mut now = Instant::now();
            while now < stop_at {
                let result = match op {
                    Op::Write => leader.write(payload.clone()).await.is_ok(),
                    Op::ReadIndex => leader.read_index().await.is_ok(),
                };
                let end = Instant::now();
                if result && now >= measure_from {
                    recorder.record(end - now);
                }
                now = end;
            }
            recorder
        }));
    }
    let cpu = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from.into()).await;
        let from = process_cpu_time();
        tokio::time::sleep_until(stop_at.into()).await;
        Some(process_cpu_time()?.saturating_sub(from?))
    });
    let mut total = LatencyRecorder::new();
    for task in tasks {
        if let Ok(samples) = task.await {
            total.add_samples(&samples);
        }
    }
    (total.row(String::new(), duration), cpu.await.ok().flatten())
}
