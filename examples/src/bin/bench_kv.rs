//! `bench-kv`: a 3-node `kv-node` cluster on loopback (separate processes, QUIC with mutual
//! TLS, LMDB on the real disk, every write synced), driven by closed-loop clients over the
//! client protocol.
//!
//! Prints puts/s and p50/p99 latency of 100-byte puts with 1, 64 and 256 concurrent clients
//! (each its own session), then linearizable gets of those keys (ReadIndex) at the same levels,
//! then leader failover times: the leader is killed with SIGKILL while a
//! client writes, and the time until a write issued after the kill is acknowledged is measured
//! (median and max over the trials). The killed node is restarted between trials.
//!
//! `cargo run --release -p examples --bin bench-kv [-- --seconds 5 --clients 1,64,256
//! --trials 10 --dir PATH]`
//!
//! `--breakdown` instead measures where the time of one put goes, with one client: the
//! leader's driver follows one proposal at a time (the `raft_core::latency` tracing target,
//! turned on in the nodes' logs) and reports when its AppendEntries left, when the leader's own
//! LMDB commit resolved and when its main loop learned it, when the first follower
//! acknowledged it (network round trip plus the follower's commit), when it committed and when
//! it was applied; the rest of the client's latency is the client's request to the leader and
//! its answer back (QUIC both ways, the kv service). The followers' drivers report likewise,
//! from taking an AppendEntries, when their commit resolved, when their main loop learned it
//! and when the acknowledgement went to the transport. A stage a followed request never
//! reached (the leader committed before its own write resolved) adds no sample: each stage's
//! percentiles are over the requests that reached it, and the `missing` column counts the rest.
//!
//! `--node-threads N` and `--client-threads N` set the tokio worker threads of the nodes and of
//! the clients' process (2 each by default).
//!
//! The data directory is created under `--dir` (default `target/`), not in `/tmp`, which is
//! a RAM disk on many systems. The nodes are this executable run as `bench-kv __kv-node`.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use examples::bench::{format_us, print_table, LatencyRecorder, Row};
use examples::kv::cluster::{wait_for_leader, ClusterSpec, Launcher, ProcessCluster};
use examples::kv::{ClientOptions, Connections, KvClient};
use raft_core::NodeId;

type Error = Box<dyn std::error::Error + Send + Sync>;

const NODE_SUBCOMMAND: &str = "__kv-node";
const VALUE_BYTES: usize = 100;
const WARMUP: Duration = Duration::from_secs(1);

struct Args {
    seconds: u64,
    clients: Vec<usize>,
    trials: usize,
    dir: PathBuf,
    node_threads: usize,
    client_threads: usize,
    breakdown: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        seconds: 5,
        clients: vec![1, 64, 256],
        trials: 10,
        dir: PathBuf::from("target"),
        node_threads: 2,
        client_threads: 2,
        breakdown: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--seconds" => {
                args.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?
            }
            "--trials" => args.trials = value()?.parse().map_err(|e| format!("--trials: {e}"))?,
            "--dir" => args.dir = PathBuf::from(value()?),
            "--breakdown" => args.breakdown = true,
            "--node-threads" => {
                args.node_threads = value()?.parse().map_err(|e| format!("--node-threads: {e}"))?
            }
            "--client-threads" => {
                args.client_threads =
                    value()?.parse().map_err(|e| format!("--client-threads: {e}"))?
            }
            "--clients" => {
                args.clients = value()?
                    .split(',')
                    .map(|c| c.trim().parse().map_err(|e| format!("--clients: {e}")))
                    .collect::<Result<_, _>>()?
            }
            other => {
                return Err(format!(
                "unknown argument {other} (--seconds N, --clients a,b,c, --trials N, --dir PATH, \
                 --breakdown, --node-threads N, --client-threads N)"
            ))
            }
        }
    }
    Ok(args)
}

/// Runs `clients` closed-loop writers for the warm-up plus `seconds`; returns the latencies of
/// the measured window, its length and the number of failed puts.
/// What the clients of a level do.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    /// 100-byte puts (through the log, synced on a majority).
    Put,
    /// Gets of keys the puts wrote (ReadIndex: no log write).
    Get,
}

async fn measure(
    connections: &Connections,
    clients: usize,
    seconds: u64,
    op: Op,
) -> Result<(LatencyRecorder, Duration, u64), Error> {
    let sessions: Vec<Arc<KvClient>> =
        (0..clients).map(|_| Arc::new(KvClient::new(connections.clone()))).collect();
    // Open every session before the clock starts.
    let opened = sessions.iter().enumerate().map(|(c, s)| s.put(format!("open-{c}"), "x"));
    for result in futures::future::join_all(opened).await {
        result?;
    }
    let start = Instant::now();
    let measure_from = start + WARMUP;
    let end = measure_from + Duration::from_secs(seconds);
    let errors = Arc::new(AtomicU64::new(0));
    let tasks = sessions.into_iter().enumerate().map(|(c, session)| {
        let errors = errors.clone();
        tokio::spawn(async move {
            let mut latencies = LatencyRecorder::new();
            let value = Bytes::from(vec![b'v'; VALUE_BYTES]);
            let mut n = 0u64;
            loop {
                let began = Instant::now();
                if began >= end {
                    return latencies;
                }
                let key = format!("bench-{c}-{}", n % 1000);
                n += 1;
                let result = match op {
                    Op::Put => session.put(key, value.clone()).await,
                    Op::Get => session.get(key).await.map(|_| ()),
                };
                if began >= measure_from && Instant::now() <= end {
                    match result {
                        Ok(()) => latencies.record(began.elapsed()),
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        })
    });
    let mut all = LatencyRecorder::new();
    for latencies in futures::future::try_join_all(tasks).await? {
        all.merge(&latencies);
    }
    Ok((all, Duration::from_secs(seconds), errors.load(Ordering::Relaxed)))
}

/// One failover trial: kill the leader while a client writes; the time from the kill until a
/// write issued after it is acknowledged. Restarts the killed node and waits until it caught up.
async fn failover_trial(
    cluster: &mut ProcessCluster,
    connections: &Connections,
) -> Result<(Duration, NodeId, NodeId), Error> {
    let ids = cluster.ids();
    let leader = wait_for_leader(connections, &ids, ids.len(), Duration::from_secs(20))
        .await
        .ok_or("no leader")?;
    let writer = Arc::new(KvClient::new(connections.clone()));
    writer.put("failover", "warm").await?;
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let stop = Arc::new(AtomicBool::new(false));
    let task = {
        let (writer, killed_at, stop) = (writer.clone(), killed_at.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let kill = *killed_at.lock().unwrap_or_else(|p| p.into_inner());
                n += 1;
                let ok = writer.put("failover", n.to_string()).await.is_ok();
                if let (true, Some(kill)) = (ok, kill) {
                    return Ok(kill.elapsed());
                }
            }
            Err("stopped")
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let kill_time = Instant::now();
    *killed_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(kill_time);
    cluster.kill(leader.id)?;
    let outcome = tokio::time::timeout(Duration::from_secs(30), task).await;
    stop.store(true, Ordering::Relaxed);
    let failover = outcome.map_err(|_| "no write succeeded within 30 s of the kill")???;
    let survivors: Vec<NodeId> = ids.iter().copied().filter(|&id| id != leader.id).collect();
    let new_leader = wait_for_leader(connections, &survivors, ids.len(), Duration::from_secs(20))
        .await
        .ok_or("no new leader")?;
    cluster.spawn(leader.id)?;
    let target = connections.status(new_leader.id).await?.status.commit_index;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(s) = connections.status(leader.id).await {
            if s.status.applied_index >= target {
                break;
            }
        }
        if Instant::now() > deadline {
            return Err(format!("restarted node {} did not catch up", leader.id).into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((failover, leader.id, new_leader.id))
}

async fn bench(cluster: &mut ProcessCluster, args: &Args) -> Result<(), Error> {
    let options =
        ClientOptions { status_timeout: Duration::from_millis(200), ..Default::default() };
    let connections = cluster.connections(options)?;
    let ids = cluster.ids();
    wait_for_leader(&connections, &ids, ids.len(), Duration::from_secs(20))
        .await
        .ok_or("no leader elected")?;
    if args.breakdown {
        let (latencies, _, errors) = measure(&connections, 1, args.seconds, Op::Put).await?;
        connections.close().await;
        return print_breakdown(cluster, &latencies, errors);
    }
    let mut rows = Vec::new();
    for &clients in &args.clients {
        let (latencies, elapsed, errors) =
            measure(&connections, clients, args.seconds, Op::Put).await?;
        let row: Row = latencies.row(clients.to_string(), elapsed);
        println!(
            "  {clients:>3} clients: {:.0} puts/s, p50 {}, p99 {}, {errors} errors",
            row.per_second,
            format_us(row.p50_us),
            format_us(row.p99_us)
        );
        rows.push(row);
    }
    print_table(
        "100-byte puts, 3 kv-node processes (QUIC + mTLS, LMDB synced)",
        "clients",
        &rows,
        "",
    );
    let mut gets = Vec::new();
    for &clients in &args.clients {
        let (latencies, elapsed, errors) =
            measure(&connections, clients, args.seconds, Op::Get).await?;
        let mut row: Row = latencies.row(clients.to_string(), elapsed);
        row.reference = rows.iter().find(|r| r.label == row.label).map(|r| r.per_second);
        println!("  {clients:>3} clients: {:.0} gets/s, {errors} errors", row.per_second);
        gets.push(row);
    }
    print_table(
        "linearizable gets (ReadIndex, no log write) of the same keys, vs puts",
        "clients",
        &gets,
        "puts/s",
    );

    if args.trials > 0 {
        println!(
            "\nLeader failover (kill -9 of the leader until a write issued after it succeeds)"
        );
        let mut times = Vec::new();
        for trial in 1..=args.trials {
            let (time, old, new) = failover_trial(cluster, &connections).await?;
            println!("  trial {trial:>2}: {:>7.1} ms  (leader {old} -> {new})", ms(time));
            times.push(time);
        }
        times.sort();
        let median = times[times.len() / 2];
        let max = times[times.len() - 1];
        println!(
            "  median {:.1} ms, max {:.1} ms over {} trials",
            ms(median),
            ms(max),
            times.len()
        );
    }
    connections.close().await;
    Ok(())
}

/// The stages the leader's driver reports per followed proposal (fields of its "proposal
/// stages" events), in order, with what each covers.
const STAGES: [(&str, &str); 6] = [
    ("sent_us", "AppendEntries handed to the peers' senders"),
    ("written_us", "leader's own LMDB commit resolved"),
    ("persisted_us", "leader's main loop learned it (durable)"),
    ("acked_us", "first follower's ack (round trip + its commit)"),
    ("committed_us", "committed (quorum durable)"),
    ("applied_us", "applied, proposer answered"),
];

/// The stages a follower's driver reports per followed AppendEntries ("follower stages").
const FOLLOWER_STAGES: [(&str, &str); 3] = [
    ("written_us", "follower's LMDB commit resolved"),
    ("persisted_us", "follower's main loop learned it (durable)"),
    ("answered_us", "acknowledgement handed to the transport"),
];

/// The fields `stages` of the log lines holding `event` of every node, and how many such
/// lines there were. A line without a stage's field (a stage the followed request never
/// reached) adds no sample to that stage: its percentiles are over the lines that have it.
fn stage_latencies(
    cluster: &ProcessCluster,
    event: &str,
    stages: &[(&str, &str)],
) -> Result<(Vec<LatencyRecorder>, u64), Error> {
    let mut recorders: Vec<LatencyRecorder> =
        stages.iter().map(|_| LatencyRecorder::new()).collect();
    let mut events = 0;
    for id in cluster.ids() {
        let log = std::fs::read_to_string(cluster.log_path(id))?;
        let lines = log.lines().filter(|l| l.contains(raft_core::LATENCY_TARGET));
        for line in lines.filter(|l| l.contains(event)) {
            events += 1;
            for ((field, _), recorder) in stages.iter().zip(&mut recorders) {
                if let Some(us) = field_value(line, field) {
                    recorder.record(Duration::from_micros(us));
                }
            }
        }
    }
    Ok((recorders, events))
}

/// Prints one line per stage: what it covers, p50, p99 and how many of the `events` lacked it.
fn print_stages(stages: &[(&str, &str)], recorders: &[LatencyRecorder], events: u64) {
    for ((_, what), recorder) in stages.iter().zip(recorders) {
        let row = recorder.row(String::new(), Duration::from_secs(1));
        let missing = events.saturating_sub(recorder.count());
        println!(
            "{what:<52} | {:>9} | {:>9} | {missing:>7}",
            format_us(row.p50_us),
            format_us(row.p99_us)
        );
    }
}

/// Prints the client's put latency next to the stages the leader reported in its log.
fn print_breakdown(
    cluster: &ProcessCluster,
    client: &LatencyRecorder,
    errors: u64,
) -> Result<(), Error> {
    let (stages, followed) = stage_latencies(cluster, "proposal stages", &STAGES)?;
    let (follower, answered) = stage_latencies(cluster, "follower stages", &FOLLOWER_STAGES)?;
    let client_row = client.row(String::new(), Duration::from_secs(1));
    println!(
        "\nOne put, 1 client: {} puts ({errors} errors), {followed} followed by the leader",
        client.count()
    );
    println!(
        "{:<52} | {:>9} | {:>9} | {:>7}",
        "time since the leader took the proposal", "p50", "p99", "missing"
    );
    println!("{}", "-".repeat(86));
    print_stages(&STAGES, &stages, followed);
    let applied = stages.last().map(|r| r.row(String::new(), Duration::from_secs(1)));
    println!("{}", "-".repeat(86));
    println!(
        "{:<52} | {:>9} | {:>9}",
        "client: put sent -> answer received",
        format_us(client_row.p50_us),
        format_us(client_row.p99_us)
    );
    if let Some(applied) = applied {
        println!(
            "{:<52} | {:>9} |",
            "outside the driver (client <-> leader, kv service)",
            format_us(client_row.p50_us.saturating_sub(applied.p50_us))
        );
    }
    println!(
        "\n{:<52} | {:>9} | {:>9} | {:>7}",
        "time since a follower took the AppendEntries", "p50", "p99", "missing"
    );
    println!("{}", "-".repeat(86));
    print_stages(&FOLLOWER_STAGES, &follower, answered);
    println!("({answered} AppendEntries followed by the followers)");
    Ok(())
}

/// The value of `field=N` in a log line.
fn field_value(line: &str, field: &str) -> Option<u64> {
    let start = line.find(&format!(" {field}="))? + field.len() + 2;
    let digits: String = line[start..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.first().map(String::as_str) == Some(NODE_SUBCOMMAND) {
        return examples::kv::node::main_with_args(raw.into_iter().skip(1));
    }
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("bench-kv: {e}");
            return ExitCode::from(2);
        }
    };
    if args.node_threads == 0 || args.client_threads == 0 {
        eprintln!("bench-kv: --node-threads and --client-threads need at least 1");
        return ExitCode::from(2);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads)
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("bench-kv: {e}");
            return ExitCode::FAILURE;
        }
    };
    let launcher = match Launcher::current_exe(NODE_SUBCOMMAND) {
        Ok(launcher) => launcher,
        Err(e) => {
            eprintln!("bench-kv: {e}");
            return ExitCode::FAILURE;
        }
    };
    let spec = ClusterSpec {
        parent_dir: Some(args.dir.clone()),
        log_filter: if args.breakdown {
            format!("warn,{}=debug", raft_core::LATENCY_TARGET)
        } else {
            "warn".into()
        },
        worker_threads: args.node_threads,
        ..ClusterSpec::default()
    };
    let mut cluster = match ProcessCluster::start(launcher, spec) {
        Ok(cluster) => cluster,
        Err(e) => {
            eprintln!("bench-kv: cannot start the cluster: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "bench-kv: 3 kv-node processes, data in {}, {} s per level after {} s warm-up",
        cluster.dir().display(),
        args.seconds,
        WARMUP.as_secs()
    );
    let result = runtime.block_on(bench(&mut cluster, &args));
    let _ = cluster.stop_all(Duration::from_secs(5));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-kv failed: {e} (node logs were in {})", cluster.dir().display());
            ExitCode::FAILURE
        }
    }
}
