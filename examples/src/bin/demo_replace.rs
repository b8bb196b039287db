//! Replacing a node of a live key-value cluster: 3 `kv-node` processes on loopback while
//! clients keep writing; node 4 is started with `--join` (a certificate issued by the cluster
//! CA), added (`member add`: learner, catch-up, voter), the leader is removed (`member remove`:
//! it steps down once the removal commits) and its process stopped; then every acknowledged
//! write is read back through node 4 alone (ReadIndex gets). Prints what happened, with timings.
//!
//! With `--two`, nodes 4 and 5 replace two of the three nodes, the leader among them, in one
//! change (`member set`: learners, catch-up, joint consensus), and both old processes stop.
//!
//! `cargo run --release -p examples --bin demo-replace [-- --writers N] [--two]`
//!
//! The node processes are this same executable run as `demo-replace __kv-node <flags>`.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use examples::kv::client::{member_table, status_table};
use examples::kv::cluster::{
    finish_demo, read_log, start_demo, wait_for_leader, ClusterSpec, DemoCluster, LeaderInfo,
    ProcessCluster,
};
use examples::kv::config::MemberAddrs;
use examples::kv::protocol::{Member, NewMember};
use examples::kv::{ClientOptions, Connections, KvClient};
use raft_core::NodeId;

type Error = Box<dyn std::error::Error + Send + Sync>;

const NODE_SUBCOMMAND: &str = "__kv-node";
const NEW_NODE: NodeId = 4;

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

fn key(writer: usize, n: u64) -> Bytes {
    Bytes::from(format!("w{writer}-{n:06}"))
}

fn value(writer: usize, n: u64) -> Bytes {
    Bytes::from(format!("value-{writer}-{n}"))
}

/// Clients writing unique keys until stopped. Records every acknowledged write with when it
/// started and how long it took.
struct Load {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<Mutex<Vec<Write>>>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Clone, Copy)]
struct Write {
    writer: usize,
    n: u64,
    started: Instant,
    latency: Duration,
}

impl Load {
    fn start(connections: &Connections, writers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(AtomicU64::new(0));
        let tasks = (0..writers)
            .map(|w| {
                let client = KvClient::new(connections.clone());
                let (stop, acknowledged, failed) =
                    (stop.clone(), acknowledged.clone(), failed.clone());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        match client.put(key(w, n), value(w, n)).await {
                            Ok(()) => {
                                let latency = started.elapsed();
                                lock(&acknowledged).push(Write { writer: w, n, started, latency });
                            }
                            Err(_) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        n += 1;
                    }
                })
            })
            .collect();
        Self { stop, acknowledged, failed, tasks }
    }

    fn count(&self) -> usize {
        lock(&self.acknowledged).len()
    }

    /// The slowest acknowledged write among those started in `from..to`.
    fn slowest_started_between(&self, from: Instant, to: Instant) -> Duration {
        lock(&self.acknowledged)
            .iter()
            .filter(|w| w.started >= from && w.started < to)
            .map(|w| w.latency)
            .max()
            .unwrap_or_default()
    }

    fn slowest_started_since(&self, from: Instant) -> Duration {
        self.slowest_started_between(from, Instant::now())
    }

    async fn finish(self) -> Result<(Vec<(usize, u64)>, u64), Error> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await?;
        }
        let acknowledged = lock(&self.acknowledged).iter().map(|w| (w.writer, w.n)).collect();
        Ok((acknowledged, self.failed.load(Ordering::Relaxed)))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Polls until `check` holds for the status of node `id`.
async fn wait_status(
    connections: &Connections,
    id: NodeId,
    what: &str,
    check: impl Fn(&raft_core::Status) -> bool,
) -> Result<Duration, Error> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(s) = connections.status(id).await {
            if check(&s.status) {
                return Ok(started.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Err(format!("node {id}: {what} not seen within 30 s").into())
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect::<String>().trim_end().to_owned()
}

struct Summary {
    rows: Vec<(String, String)>,
}

impl Summary {
    fn add(&mut self, label: impl Into<String>, value: impl Into<String>) {
        self.rows.push((label.into(), value.into()));
    }
}

async fn demo(cluster: &mut ProcessCluster, writers: usize, two: bool) -> Result<Summary, Error> {
    let mut summary = Summary { rows: Vec::new() };
    let options = ClientOptions {
        status_timeout: Duration::from_millis(200),
        suspect_for: Duration::from_secs(2),
        op_timeout: Duration::from_secs(30),
        ..ClientOptions::default()
    };
    let connections = cluster.connections(options.clone())?;

    print!("Waiting for a leader...");
    let ids = cluster.ids();
    let leader = wait_for_leader(&connections, &ids, ids.len(), Duration::from_secs(20))
        .await
        .ok_or("no leader elected")?;
    println!(" node {} leads term {}", leader.id, leader.term);
    println!("  kv member list:\n{}", indent(&member_table(&connections.member_list().await?)));

    println!("{writers} clients start writing unique keys (and keep writing until the end)...");
    let load = Load::start(&connections, writers);
    let run_started = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("  {} writes acknowledged in the first 500 ms", load.count());

    let (new_leader, addrs) = if two {
        replace_two(cluster, &connections, &load, &mut summary).await?
    } else {
        replace_one(cluster, &connections, &load, &leader, &mut summary).await?
    };

    // Step 5: stop writing; read everything back through the new node alone.
    let run_time = run_started.elapsed();
    let (acknowledged, failed) = load.finish().await?;
    summary.add(
        "writes acknowledged during the replacement",
        format!(
            "{} in {:.1} s ({failed} failed or of unknown outcome)",
            acknowledged.len(),
            run_time.as_secs_f64()
        ),
    );
    print!(
        "Reading all {} acknowledged writes back through node {NEW_NODE} only (ReadIndex)...",
        acknowledged.len()
    );
    let only_new: BTreeMap<NodeId, _> = [(NEW_NODE, addrs.client)].into();
    let reader_connections = Connections::new(only_new, cluster.client_tls(), options)?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    let acknowledged = Arc::new(acknowledged);
    let readers = 8;
    for r in 0..readers {
        let reader = KvClient::new(reader_connections.clone());
        let acknowledged = acknowledged.clone();
        tasks.push(tokio::spawn(async move {
            let mut verified = 0usize;
            for &(w, n) in acknowledged.iter().skip(r).step_by(readers) {
                match reader.get(key(w, n)).await {
                    Ok(Some(v)) if v == value(w, n) => verified += 1,
                    Ok(other) => return Err(format!("w{w}-{n}: read {other:?}")),
                    Err(e) => return Err(format!("w{w}-{n}: {e}")),
                }
            }
            Ok::<usize, String>(verified)
        }));
    }
    let mut verified = 0;
    for task in tasks {
        verified += task.await??;
    }
    let read_time = started.elapsed();
    println!(" {verified}/{} hold their value ({})", acknowledged.len(), ms(read_time));
    summary.add(
        format!("acknowledged writes read from node {NEW_NODE}"),
        format!("{verified} / {} in {}", acknowledged.len(), ms(read_time)),
    );
    if verified != acknowledged.len() {
        return Err("an acknowledged write was lost".into());
    }
    reader_connections.close().await;

    println!("\nkv member list:\n{}", indent(&member_table(&connections.member_list().await?)));
    let last = connections.status(new_leader).await?.status.commit_index;
    for id in cluster.ids() {
        wait_status(&connections, id, "catch-up", |s| s.applied_index >= last).await?;
    }
    let statuses: Vec<_> = connections
        .statuses()
        .await
        .into_iter()
        .filter(|(id, _)| cluster.ids().contains(id))
        .collect();
    println!("kv status:\n{}", indent(&status_table(&statuses)));
    connections.close().await;
    Ok(summary)
}

/// Steps 1 to 4 of the one-node replacement: node 4 joins and is added, the leader is removed
/// and its process stopped. Returns the new leader and node 4's addresses.
async fn replace_one(
    cluster: &mut ProcessCluster,
    connections: &Connections,
    load: &Load,
    leader: &LeaderInfo,
    summary: &mut Summary,
) -> Result<(NodeId, MemberAddrs), Error> {
    // Step 1: the new node.
    println!("Starting node {NEW_NODE} with --join (certificate issued by the cluster CA)...");
    let started = Instant::now();
    let addrs = cluster.start_joining(NEW_NODE)?;
    connections.learn(&Member { id: NEW_NODE, client_addr: addrs.client });
    let ready = wait_status(connections, NEW_NODE, "client port", |_| true).await?;
    println!(
        "  node {NEW_NODE} answers on {} after {} (raft {}); it knows no voters yet",
        addrs.client,
        ms(started.elapsed()),
        addrs.raft
    );
    summary.add(format!("node {NEW_NODE} process up (--join)"), ms(ready));

    // Step 2: member add.
    println!("kv member add {NEW_NODE} {} {} ...", addrs.raft, addrs.client);
    let commit_before = connections.status(leader.id).await?.status.commit_index;
    let started = Instant::now();
    let list = connections.member_add(NEW_NODE, addrs.raft, addrs.client).await?;
    let add_time = started.elapsed();
    let slowest = load.slowest_started_since(started);
    let snapshot = read_log(&cluster.log_path(NEW_NODE)).contains("installing snapshot");
    println!(
        "  node {NEW_NODE} caught up ({commit_before}+ entries, {}) and is a voter after {}; \
         slowest write started meanwhile {}",
        if snapshot { "a snapshot then the log" } else { "all from the log" },
        ms(add_time),
        ms(slowest)
    );
    println!("{}", indent(&member_table(&list)));
    summary.add(
        "member add (learner, catch-up, voter)",
        format!("{} ({commit_before}+ entries to send)", ms(add_time)),
    );
    summary.add("  slowest write started during the add", ms(slowest));

    // Step 3: remove the leader.
    let old = connections.member_list().await?.leader.ok_or("no leader known")?;
    println!("kv member remove {old}   (node {old} is the leader)...");
    let started = Instant::now();
    let list = connections.member_remove(old).await?;
    let remove_time = started.elapsed();
    // The removed leader answered: it may not know its successor (nothing is sent to it now).
    let remaining: Vec<NodeId> = list.members.iter().map(|m| m.id).collect();
    let new_leader = leader_among(connections, &remaining).await?;
    // Writes that started during the removal may finish just after it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let slowest = load.slowest_started_between(started, started + remove_time);
    println!(
        "  done after {}: node {old} stepped down once its removal committed, node {new_leader} \
         leads now; slowest write started meanwhile {}",
        ms(remove_time),
        ms(slowest)
    );
    println!("{}", indent(&member_table(&list)));
    summary.add(format!("member remove {old} (the leader), new leader in"), ms(remove_time));
    summary.add("  slowest write started during the removal", ms(slowest));

    // Step 4: stop the old process.
    let started = Instant::now();
    let clean = cluster.retire(old, Duration::from_secs(5))?;
    println!(
        "Stopped node {old}'s process ({} after {}, its grace period for open client \
         connections included)",
        if clean { "clean exit" } else { "killed" },
        ms(started.elapsed())
    );
    let members: Vec<NodeId> = list.members.iter().map(|m| m.id).collect();
    writes_after_the_stop(load, &format!(" by nodes {members:?}"), summary).await;
    Ok((new_leader, addrs))
}

/// The leader that a majority of `nodes` follows (the answer of a removed leader may not know it).
async fn leader_among(connections: &Connections, nodes: &[NodeId]) -> Result<NodeId, Error> {
    let leader = wait_for_leader(connections, nodes, nodes.len(), Duration::from_secs(10)).await;
    Ok(leader.ok_or("no leader after the change")?.id)
}

/// Watches the writes of the 500 ms after an old process stopped (`by`: who serves them).
async fn writes_after_the_stop(load: &Load, by: &str, summary: &mut Summary) {
    let count = load.count();
    let after_stop = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let slowest = load.slowest_started_since(after_stop);
    println!(
        "  {} more writes acknowledged in the next 500 ms{by}; slowest {}",
        load.count() - count,
        ms(slowest)
    );
    summary.add("  slowest write in the 500 ms after the stop", ms(slowest));
}

/// Two of the three nodes, the leader among them, replaced by nodes 4 and 5 in one change
/// (`member set`), then the old processes stopped. Returns the new leader and node 4's
/// addresses.
async fn replace_two(
    cluster: &mut ProcessCluster,
    connections: &Connections,
    load: &Load,
    summary: &mut Summary,
) -> Result<(NodeId, MemberAddrs), Error> {
    let leader = connections.member_list().await?.leader.ok_or("no leader known")?;
    let keep = cluster.ids().into_iter().find(|&id| id != leader).ok_or("no follower")?;
    let gone: Vec<NodeId> = cluster.ids().into_iter().filter(|&id| id != keep).collect();
    let mut new_members = Vec::new();
    let started = Instant::now();
    for id in [NEW_NODE, NEW_NODE + 1] {
        let addrs = cluster.start_joining(id)?;
        connections.learn(&Member { id, client_addr: addrs.client });
        new_members.push(NewMember { id, raft_addr: addrs.raft, client_addr: addrs.client });
    }
    for member in &new_members {
        wait_status(connections, member.id, "client port", |_| true).await?;
    }
    let ready = started.elapsed();
    println!("Nodes 4 and 5 answer on their client ports after {} (--join)", ms(ready));
    summary.add("nodes 4 and 5 processes up (--join)", ms(ready));

    println!("kv member set {keep} 4=... 5=...   (nodes {gone:?} go; node {leader} leads)...");
    let commit_before = connections.status(keep).await?.status.commit_index;
    let started = Instant::now();
    let voters = vec![keep, NEW_NODE, NEW_NODE + 1];
    let list = connections.member_set(voters, new_members).await?;
    let set_time = started.elapsed();
    let slowest = load.slowest_started_since(started);
    let new_leader = leader_among(connections, &[keep, NEW_NODE, NEW_NODE + 1]).await?;
    println!(
        "  done after {}: 4 and 5 caught up ({commit_before}+ entries) and the voters moved to \
         {{{keep}, 4, 5}} through a joint configuration; node {new_leader} leads; slowest write \
         started meanwhile {}",
        ms(set_time),
        ms(slowest)
    );
    println!("{}", indent(&member_table(&list)));
    summary.add(
        "member set (2 of 3 replaced, the leader too)",
        format!("{} ({commit_before}+ entries to send)", ms(set_time)),
    );
    summary.add("  slowest write started during the change", ms(slowest));

    let started = Instant::now();
    for &id in &gone {
        cluster.retire(id, Duration::from_secs(5))?;
    }
    println!("Stopped nodes {gone:?} ({})", ms(started.elapsed()));
    writes_after_the_stop(load, "", summary).await;
    let addrs = cluster.addrs(NEW_NODE).ok_or("node 4 is gone")?;
    Ok((new_leader, addrs))
}

/// Parses `[--writers N] [--two]`: the number of writers and whether two nodes are replaced.
fn parse_args(args: &[String]) -> Result<(usize, bool), String> {
    let usage = || "usage: demo-replace [--writers N] [--two]".to_owned();
    let (mut writers, mut two) = (8, false);
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--two" => two = true,
            "--writers" => {
                let n = args.next().ok_or_else(usage)?;
                writers = n.parse().map_err(|_| format!("--writers: bad number {n}"))?;
            }
            _ => return Err(usage()),
        }
    }
    Ok((writers, two))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(NODE_SUBCOMMAND) {
        return examples::kv::node::main_with_args(args.into_iter().skip(1));
    }
    let (writers, two) = match parse_args(&args) {
        Ok((writers, two)) => (writers.max(1), two),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    // Snapshots every 500 entries: the new node is sent a snapshot, then the log.
    let spec = ClusterSpec { snapshot_entries: 500, ..ClusterSpec::default() };
    let DemoCluster { runtime, mut cluster, started } =
        match start_demo("demo-replace", NODE_SUBCOMMAND, spec) {
            Ok(demo) => demo,
            Err(code) => return code,
        };
    let result = runtime.block_on(demo(&mut cluster, writers, two));
    match finish_demo("demo-replace", &mut cluster, result) {
        Some(summary) => {
            println!("\nSummary");
            for (label, value) in summary.rows {
                println!("  {label:<46} {value}");
            }
            println!("  {:<46} {:.1} s", "total", started.elapsed().as_secs_f64());
            ExitCode::SUCCESS
        }
        None => ExitCode::FAILURE,
    }
}
