//! The one-command demo: a 3-node key-value cluster of real `kv-node` processes on loopback
//! (QUIC with mutual TLS, LMDB on disk, certificates generated into a temporary directory).
//! It writes keys, kills the leader with SIGKILL, shows the re-election, restarts the killed
//! node and shows it catch up, reads every key back, and prints a summary.
//!
//! `cargo run --release -p examples --bin demo [-- --keys N]`
//!
//! The node processes are this same executable run as `demo __kv-node <flags>`, so nothing
//! else has to be built.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use examples::kv::client::status_table;
use examples::kv::cluster::{
    finish_demo, read_log, start_demo, wait_for_leader, ClusterSpec, DemoCluster, ProcessCluster,
};
use examples::kv::{ClientOptions, Connections, KvClient};
use raft_core::NodeId;

type Error = Box<dyn std::error::Error + Send + Sync>;

const NODE_SUBCOMMAND: &str = "__kv-node";
const CLIENTS: usize = 16;

fn key(i: usize) -> Bytes {
    Bytes::from(format!("key-{i:05}"))
}

fn value(i: usize) -> Bytes {
    Bytes::from(format!("value-{i}"))
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

fn progress(label: &str, done: usize, total: usize) {
    let width = 40;
    let filled = done * width / total.max(1);
    print!("\r  {label:<34} [{}{}] {done}/{total}", "#".repeat(filled), " ".repeat(width - filled));
    if done >= total {
        println!();
    }
    let _ = std::io::Write::flush(&mut std::io::stdout());
}

/// Writes keys `range` with `CLIENTS` concurrent sessions, drawing a progress bar.
async fn write_keys(
    connections: &Connections,
    range: std::ops::Range<usize>,
    label: &str,
) -> Result<Duration, Error> {
    let started = Instant::now();
    let total = range.len();
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let client = KvClient::new(connections.clone());
        let keys: Vec<usize> = range.clone().filter(|i| i % CLIENTS == c).collect();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            for i in keys {
                client.put(key(i), value(i)).await.map_err(|e| format!("put key-{i}: {e}"))?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), String>(())
        }));
    }
    let all = futures::future::try_join_all(tasks);
    tokio::pin!(all);
    loop {
        tokio::select! {
            results = &mut all => {
                for result in results? {
                    result?;
                }
                progress(label, total, total);
                return Ok(started.elapsed());
            }
            () = tokio::time::sleep(Duration::from_millis(50)) => {
                progress(label, done.load(Ordering::Relaxed), total);
            }
        }
    }
}

/// Polls node `id` until it has applied `index`.
async fn wait_applied(connections: &Connections, id: NodeId, index: u64) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(s) = connections.status(id).await {
            if s.status.applied_index >= index {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Err(format!("node {id} did not reach index {index}").into())
}

/// The last log index a node loaded from disk at its latest start, from its log's
/// `node started ... last=LogId { term: T, index: N }` line.
fn loaded_index(log: &str) -> Option<u64> {
    let line = log.lines().rev().find(|l| l.contains("node started"))?;
    let rest = &line[line.find("index: ")? + "index: ".len()..];
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

struct Summary {
    keys: usize,
    write_rate: f64,
    election: Duration,
    failover_leader: Duration,
    failover_write: Duration,
    catch_up: Duration,
    catch_up_entries: u64,
    verified: usize,
}

async fn demo(cluster: &mut ProcessCluster, keys: usize) -> Result<Summary, Error> {
    let options = ClientOptions {
        status_timeout: Duration::from_millis(200),
        suspect_for: Duration::from_secs(2),
        ..ClientOptions::default()
    };
    let connections = cluster.connections(options)?;
    let size = cluster.ids().len();

    print!("Waiting for a leader...");
    let started = Instant::now();
    let ids = cluster.ids();
    let leader = wait_for_leader(&connections, &ids, size, Duration::from_secs(20))
        .await
        .ok_or("no leader elected")?;
    let election = started.elapsed();
    println!(" node {} leads term {} ({} after start)", leader.id, leader.term, ms(election));

    let half = keys / 2;
    let elapsed = write_keys(&connections, 0..half, &format!("writing {half} keys")).await?;
    let write_rate = half as f64 / elapsed.as_secs_f64();
    println!(
        "  {half} acknowledged writes in {} ({write_rate:.0}/s, {CLIENTS} clients)",
        ms(elapsed)
    );

    println!("Killing the leader, node {}, with SIGKILL...", leader.id);
    let probe = KvClient::new(connections.clone());
    cluster.kill(leader.id)?;
    let killed = Instant::now();
    // A client writes from the moment of the crash; another watches the survivors.
    let write = tokio::spawn(async move {
        probe.put("probe", "after-failover").await.map(|()| killed.elapsed())
    });
    let survivors: Vec<NodeId> = ids.iter().copied().filter(|&id| id != leader.id).collect();
    let new_leader = wait_for_leader(&connections, &survivors, size, Duration::from_secs(20))
        .await
        .ok_or("no new leader after the crash")?;
    let failover_leader = killed.elapsed();
    let failover_write = write.await??;
    println!(
        "  node {} elected in term {} {} after the kill; first write acknowledged after {}",
        new_leader.id,
        new_leader.term,
        ms(failover_leader),
        ms(failover_write)
    );

    let label = format!("writing {} keys, node {} down", keys - half, leader.id);
    write_keys(&connections, half..keys, &label).await?;

    println!("Restarting node {} from its LMDB log (and snapshot, if any)...", leader.id);
    let target = connections.status(new_leader.id).await?.status.commit_index;
    let restarted = Instant::now();
    cluster.spawn(leader.id)?;
    wait_applied(&connections, leader.id, target).await?;
    let catch_up = restarted.elapsed();
    let before = loaded_index(&read_log(&cluster.log_path(leader.id))).unwrap_or(0);
    println!(
        "  node {} caught up to index {target} in {} (it restarted with entries up to {before} \
         on disk; the leader sent the rest)",
        leader.id,
        ms(catch_up)
    );

    print!("Reading every key back through the leader...");
    let reader = Arc::new(KvClient::new(connections.clone()));
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let reader = reader.clone();
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for i in (0..keys).filter(|i| i % CLIENTS == c) {
                match reader.get(key(i)).await {
                    Ok(Some(v)) if v == value(i) => ok += 1,
                    Ok(other) => return Err(format!("key-{i:05}: read {other:?}")),
                    Err(e) => return Err(format!("key-{i:05}: {e}")),
                }
            }
            Ok::<usize, String>(ok)
        }));
    }
    let mut verified = 0;
    for result in futures::future::try_join_all(tasks).await? {
        verified += result?;
    }
    println!(" {verified}/{keys} keys hold the value written");
    let last = connections.status(new_leader.id).await?.status.commit_index;
    for id in cluster.ids() {
        wait_applied(&connections, id, last).await?;
    }
    println!("\nCluster status:\n{}", status_table(&connections.statuses().await));
    connections.close().await;
    Ok(Summary {
        keys,
        write_rate,
        election,
        failover_leader,
        failover_write,
        catch_up,
        catch_up_entries: target.saturating_sub(before),
        verified,
    })
}

fn print_summary(s: &Summary, total: Duration) {
    let rows = [
        ("cluster", "3 kv-node processes, QUIC + mTLS, LMDB".to_owned()),
        ("keys written / verified", format!("{} / {}", s.keys, s.verified)),
        ("write throughput (16 clients)", format!("{:.0} writes/s", s.write_rate)),
        ("initial election", ms(s.election)),
        ("failover: kill -9 to new leader", ms(s.failover_leader)),
        ("failover: kill -9 to next write", ms(s.failover_write)),
        (
            "restarted node catch-up",
            format!("{} ({} entries sent)", ms(s.catch_up), s.catch_up_entries),
        ),
        ("total", format!("{:.1} s", total.as_secs_f64())),
    ];
    println!("\nSummary");
    for (label, value) in rows {
        println!("  {label:<34} {value}");
    }
}

fn parse_keys(args: &[String]) -> Result<usize, String> {
    match args {
        [] => Ok(10_000),
        [flag, n] if flag == "--keys" => n.parse().map_err(|_| format!("--keys: bad number {n}")),
        _ => Err("usage: demo [--keys N]".into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(NODE_SUBCOMMAND) {
        return examples::kv::node::main_with_args(args.into_iter().skip(1));
    }
    let keys = match parse_keys(&args) {
        Ok(keys) => keys.max(2),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let DemoCluster { runtime, mut cluster, started } =
        match start_demo("demo", NODE_SUBCOMMAND, ClusterSpec::default()) {
            Ok(demo) => demo,
            Err(code) => return code,
        };
    for (id, addr) in cluster.client_endpoints() {
        println!("  node {id}: client port {addr}");
    }
    let result = runtime.block_on(demo(&mut cluster, keys));
    match finish_demo("demo", &mut cluster, result) {
        Some(summary) => {
            print_summary(&summary, started.elapsed());
            ExitCode::SUCCESS
        }
        None => ExitCode::FAILURE,
    }
}
