//! Round trips over `raft-quic` on loopback: two endpoints in one process (mutual TLS, ring
//! provider, tokio with 2 workers unless `--threads`), the receiver answering every AppendEntries at once.
//!
//! Prints RPCs/s, p50/p99 latency and MB/s for small AppendEntries (one 128-byte entry) at
//! concurrency 1 and 64, for 1 MiB batches (16 entries of 64 KiB) at concurrency 1 and 4, and
//! the latency of heartbeats sent while 1 MiB batches saturate the same connection (the
//! head-of-line blocking check).
//!
//! With `--pause-us N`, each loop of the small-request rows sleeps N µs between its RPCs (tokio's
//! timer: at least 1 ms in practice), so every RPC starts on an idle runtime whose threads are
//! parked: the cost of a cold hop, as one durable put's hops see it, against the hot loop's.
//!
//! `--threads N` sets the runtime's worker threads (2 by default).
//!
//! `cargo run --release -p examples --bin bench-quic [-- --seconds 3] [--pause-us N] [--threads N]`

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use examples::bench::{format_us, LatencyRecorder};
use raft_core::testing::{append_entries as append, MatchingFollower};
use raft_core::{Entry, Envelope, Network, RpcRequest};
use raft_quic::{ClusterCa, QuicConfig, QuicNetwork, QuinnTokioRuntime};

/// Payload bytes of a request (entry commands only).
fn payload_bytes(request: &RpcRequest) -> u64 {
    match request {
        RpcRequest::AppendEntries(r) => {
            r.entries.iter().filter_map(Entry::command).map(|c| c.len() as u64).sum()
        }
        _ => 0,
    }
}

struct Measured {
    latencies: LatencyRecorder,
    elapsed: Duration,
    errors: u64,
}

/// Runs `concurrency` loops sending `request` for `duration` (after a short warm-up).
async fn run(
    net: &QuicNetwork,
    request: &RpcRequest,
    concurrency: usize,
    duration: Duration,
    pause: Option<Duration>,
) -> Measured {
    let warmup_until = Instant::now() + Duration::from_millis(300);
    let stop = Instant::now() + Duration::from_millis(300) + duration;
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (net, request, errors) = (net.clone(), request.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = LatencyRecorder::new();
            loop {
                let start = Instant::now();
                if start >= stop {
                    return latencies;
                }
                let result = net.send(Envelope::new(2, request.clone())).await;
                if result.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                } else if start >= warmup_until {
                    latencies.record(start.elapsed());
                }
                if let Some(pause) = pause {
                    tokio::time::sleep(pause).await;
                }
            }
        }));
    }
    let mut latencies = LatencyRecorder::new();
    for task in tasks {
        if let Ok(recorded) = task.await {
            latencies.merge(&recorded);
        }
    }
    Measured { latencies, elapsed: duration, errors: errors.load(Ordering::Relaxed) }
}

/// The command line: seconds per row, and the pause between a loop's small RPCs if any.
struct Args {
    seconds: u64,
    pause: Option<Duration>,
    threads: usize,
}

fn print_header(seconds: u64, threads: usize) {
    println!(
        "\nbench-quic: 2 QuicNetwork endpoints on 127.0.0.1 (mutual TLS, rustls/ring), tokio \
         {threads} workers, {seconds} s per row"
    );
    println!(
        "{:<40} | {:>5} | {:>9} | {:>9} | {:>9} | {:>9} | {:>6}",
        "workload", "conc", "RPC/s", "p50", "p99", "MB/s", "errors"
    );
    println!("{}", "-".repeat(103));
}

fn print_row(name: &str, concurrency: usize, bytes_per_rpc: u64, m: &Measured) {
    let row = m.latencies.row(String::new(), m.elapsed);
    let mb_per_s = row.per_second * bytes_per_rpc as f64 / 1e6;
    println!(
        "{:<40} | {:>5} | {:>9.0} | {:>9} | {:>9} | {:>9.1} | {:>6}",
        name,
        concurrency,
        row.per_second,
        format_us(row.p50_us),
        format_us(row.p99_us),
        mb_per_s,
        m.errors
    );
}

fn parse_args() -> Result<Args, String> {
    let mut seconds = 3;
    let mut pause = None;
    let mut threads = 2;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                seconds = args
                    .next()
                    .ok_or("--seconds needs a value")?
                    .parse()
                    .map_err(|e| format!("--seconds: {e}"))?
            }
            "--pause-us" => {
                let us: u64 = args
                    .next()
                    .ok_or("--pause-us needs a value")?
                    .parse()
                    .map_err(|e| format!("--pause-us: {e}"))?;
                pause = Some(Duration::from_micros(us));
            }
            "--threads" => {
                threads = args
                    .next()
                    .ok_or("--threads needs a value")?
                    .parse()
                    .map_err(|e| format!("--threads: {e}"))?;
                if threads == 0 {
                    return Err("--threads needs at least 1".into());
                }
            }
            other => {
                return Err(format!(
                    "unknown argument {other} (expected --seconds N, --pause-us N, --threads N)"
                ))
            }
        }
    }
    Ok(Args { seconds, pause, threads })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Args { seconds, pause, threads } = parse_args()?;
    let duration = Duration::from_secs(seconds);
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?;
    runtime.block_on(async move {
        let ca = ClusterCa::generate()?;
        let loopback = "127.0.0.1:0".parse()?;
        let quic_runtime = Arc::new(QuinnTokioRuntime);
        let mut config1 = QuicConfig::new(1, loopback, ca.node_tls(1)?);
        config1.rpc_timeout = Duration::from_secs(10);
        let mut config2 = QuicConfig::new(2, loopback, ca.node_tls(2)?);
        config2.rpc_timeout = Duration::from_secs(10);
        let sender = QuicNetwork::bind(config1, quic_runtime.clone())?;
        let receiver = QuicNetwork::bind(config2, quic_runtime)?;
        sender.set_peer(2, receiver.local_addr());
        receiver.set_peer(1, sender.local_addr());
        receiver.serve(Arc::new(MatchingFollower));

        print_header(seconds, threads);
        let small = append(1, 128);
        for concurrency in [1, 64] {
            let m = run(&sender, &small, concurrency, duration, None).await;
            print_row("small AppendEntries (1 x 128 B)", concurrency, payload_bytes(&small), &m);
        }
        if let Some(pause) = pause {
            let m = run(&sender, &small, 1, duration, Some(pause)).await;
            let name = format!("small AE, {} µs pause between", pause.as_micros());
            print_row(&name, 1, payload_bytes(&small), &m);
        }
        let batch = append(16, 64 << 10);
        for concurrency in [1, 4] {
            let m = run(&sender, &batch, concurrency, duration, None).await;
            print_row("1 MiB AppendEntries (16 x 64 KiB)", concurrency, payload_bytes(&batch), &m);
        }

        // Heartbeats while 4 loops keep 1 MiB batches in flight on the same connection.
        let busy = Arc::new(AtomicBool::new(true));
        let mut bulk = Vec::new();
        for _ in 0..4 {
            let (net, batch, busy) = (sender.clone(), batch.clone(), busy.clone());
            bulk.push(tokio::spawn(async move {
                let mut sent = 0u64;
                while busy.load(Ordering::Relaxed) {
                    if net.send(Envelope::new(2, batch.clone())).await.is_ok() {
                        sent += 1;
                    }
                }
                sent
            }));
        }
        let heartbeat = append(0, 0);
        let m = run(&sender, &heartbeat, 1, duration, None).await;
        busy.store(false, Ordering::Relaxed);
        let mut batches = 0;
        for task in bulk {
            batches += task.await.unwrap_or(0);
        }
        print_row("heartbeat during 4 x 1 MiB bulk streams", 1, 0, &m);
        let bulk_mb = batches as f64 * payload_bytes(&batch) as f64 / 1e6;
        println!(
            "  (bulk meanwhile: {batches} batches, {:.1} MB/s)",
            bulk_mb / (duration.as_secs_f64() + 0.3)
        );

        sender.close().await;
        receiver.close().await;
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
