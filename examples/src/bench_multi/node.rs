//! One node process of `bench-multi` (`bench-multi node ...`): one `raft_core::multi::Host`,
//! one `LmdbEnvironment` (durable: every commit synced) and one QUIC endpoint for all its
//! groups, driven by the parent over stdin (see `protocol`).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use raft_core::{
    Config, Entry, EntryPayload, Envelope, GroupId, Host, Membership, Network, NetworkError, Node,
    NodeId, NodeInfo, Role, RpcResponse, StateMachine, StateMachineError,
};
use raft_lmdb::LmdbEnvironment;
use raft_quic::{ClusterCa, QuicConfig, QuicGroupNetwork, QuicNetwork};
use std::io::{BufRead, Write};

use super::protocol::{Command, Report};
use super::{leader_of, Error, NODES, VALUE_BYTES};

/// The longest the groups may take to elect and move their leaders where they belong.
const SPREAD_DEADLINE: Duration = Duration::from_secs(300);
/// Leadership transfers in flight at once while spreading the leaders.
const TRANSFERS_IN_FLIGHT: usize = 16;
/// How long a client waits after a failed put before the next (bounds a retry storm).
const RETRY_PAUSE: Duration = Duration::from_millis(10);
/// The longest the clients may take to stop after the window (their last put in flight).
const CLIENT_STOP_DEADLINE: Duration = Duration::from_secs(30);

/// The arguments of `bench-multi node`.
#[derive(Debug, Clone)]
pub(crate) struct NodeArgs {
    /// This process's node id (1..=3) in every group.
    pub(crate) id: NodeId,
    /// Its groups: ids 1..=groups.
    pub(crate) groups: u64,
    /// Its LMDB environment's directory.
    pub(crate) dir: PathBuf,
    /// The cluster CA's certificate and key (PEM files written by the parent).
    pub(crate) ca_cert: PathBuf,
    /// See `ca_cert`.
    pub(crate) ca_key: PathBuf,
    /// Worker threads of its runtime.
    pub(crate) threads: usize,
    /// Which configuration its groups run with.
    pub(crate) mode: Mode,
    /// Whether its host runs the groups' main loops in one host loop (`Host::with_loop`)
    /// rather than a task per group (`Host::new`).
    pub(crate) host_loop: bool,
}

/// What the groups are measured for: their configuration comes from [`group_config`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Durable puts at saturation.
    Throughput,
    /// Many groups and no clients: the cost of idle groups.
    Idle,
}

/// The configuration of group `group` on node `id`: the one place where the benchmark's
/// groups are configured. Idle groups quiesce here once raft-core offers it
/// (`Config::quiesce_idle`, issue 21 item 4): set it for `Mode::Idle`.
pub(crate) fn group_config(id: NodeId, group: GroupId, mode: Mode) -> Config {
    let mut config = Config::new(id);
    // Distinct timers per group (the default seed depends on the node id alone).
    config.random_seed ^= group.wrapping_mul(0xA24B_AED4_963E_E407);
    // Issue 21 item 4: the idle mode measures quiesced groups (a group with clients quiesces
    // only when they stop, which they do not during a round).
    config.quiesce_idle = mode == Mode::Idle;
    config
}

/// The put state machine: `key (8 bytes) || value`, kept in a map (one key per client, so
/// its size is bounded by the client count). Answers every entry with an empty response.
#[derive(Debug, Default)]
struct PutStateMachine {
    values: HashMap<Bytes, Bytes>,
}

#[async_trait]
impl StateMachine for PutStateMachine {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError> {
        for entry in entries {
            if let EntryPayload::Command(command) = &entry.payload {
                if command.len() >= 8 {
                    self.values.insert(command.slice(..8), command.slice(8..));
                }
            }
        }
        Ok(vec![Bytes::new(); entries.len()])
    }
}

/// RPCs sent by this process, by receiver.
#[derive(Debug, Default)]
struct RpcCounts {
    sent: [AtomicU64; NODES as usize + 1],
}

impl RpcCounts {
    fn snapshot(&self) -> BTreeMap<NodeId, u64> {
        (1..=NODES).map(|id| (id, self.sent[id as usize].load(Ordering::Relaxed))).collect()
    }
}

/// A group's view of the shared QUIC network that counts the RPCs it sends.
struct CountingNetwork {
    inner: QuicGroupNetwork,
    counts: Arc<RpcCounts>,
}

#[async_trait]
impl Network for CountingNetwork {
    async fn send(&self, request: Envelope) -> Result<RpcResponse, NetworkError> {
        if let Some(count) = self.counts.sent.get(request.receiver as usize) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.send(request).await
    }

    fn members_changed(&self, members: &BTreeMap<NodeId, NodeInfo>) {
        self.inner.members_changed(members)
    }

    fn max_request_bytes(&self) -> Option<u64> {
        self.inner.max_request_bytes()
    }
}

/// The running node process.
struct Process {
    id: NodeId,
    host: Host,
    env: LmdbEnvironment,
    nodes: Vec<(GroupId, Node)>,
    counts: Arc<RpcCounts>,
    /// The shared network, for the frames (streams) that carried the RPCs.
    net: QuicNetwork,
}

/// Runs the node process until `quit` or the end of stdin; reports a failure as `error ...`.
pub(crate) fn main(args: NodeArgs) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()?;
    let result = runtime.block_on(serve(&args, stdin_lines()));
    if let Err(error) = &result {
        let _ = say(&format!("error {}", error.to_string().replace('\n', " ")));
    }
    result
}

/// The lines of stdin, read by a thread. At the end of stdin the process exits at once, whatever
/// it is doing: the parent holds the pipe until this process has exited after `quit`, so an
/// early end means the parent is gone (killed) and nobody is left to report to.
fn stdin_lines() -> tokio::sync::mpsc::Receiver<String> {
    let (sender, lines) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if sender.blocking_send(line).is_err() {
                return; // the node is finishing on its own
            }
        }
        std::process::exit(0);
    });
    lines
}

/// Writes one line to the parent.
fn say(line: &str) -> Result<(), Error> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()?;
    Ok(())
}

async fn serve(
    args: &NodeArgs,
    mut lines: tokio::sync::mpsc::Receiver<String>,
) -> Result<(), Error> {
    let ca = ClusterCa::from_pem(
        &std::fs::read_to_string(&args.ca_cert)?,
        &std::fs::read_to_string(&args.ca_key)?,
    )?;
    let listen = "127.0.0.1:0".parse()?;
    let config = QuicConfig::new(args.id, listen, ca.node_tls(args.id)?);
    let net = QuicNetwork::bind(config, Arc::new(raft_quic::quinn::TokioRuntime))?;
    say(&format!("addr {}", net.local_addr()))?;
    let Some(line) = lines.recv().await else { return Ok(()) };
    let Command::Peers(peers) = Command::parse(&line)? else {
        return Err(format!("expected peers, got {line:?}").into());
    };
    for (&id, &addr) in &peers {
        if id != args.id {
            net.set_peer(id, addr);
        }
    }
    let process = start(args, &net).await?;
    spread_leaders(&process, args.mode).await?;
    say("ready")?;
    while let Some(line) = lines.recv().await {
        match Command::parse(&line)? {
            Command::Run { clients, warmup_ms, measure_ms } => {
                let warmup = Duration::from_millis(warmup_ms);
                let report = run(&process, clients, warmup, Duration::from_millis(measure_ms));
                say(&report.await?.to_line())?;
            }
            Command::Quit => break,
            Command::Peers(_) => return Err("peers sent twice".into()),
        }
    }
    process.host.shutdown().await;
    net.close().await;
    Ok(())
}

/// Opens the environment and starts every group, bootstrapped with the three nodes.
async fn start(args: &NodeArgs, net: &QuicNetwork) -> Result<Process, Error> {
    let env = LmdbEnvironment::open(&args.dir)?;
    let runtime = raft_core::runtime::TokioRuntime::current().ok_or("no tokio runtime")?;
    let host =
        if args.host_loop { Host::with_loop(args.id, runtime.clone()) } else { Host::new(args.id) };
    net.serve(Arc::new(host.clone()));
    let counts = Arc::new(RpcCounts::default());
    let mut nodes = Vec::new();
    for group in 1..=args.groups {
        let network = CountingNetwork { inner: net.for_group(group), counts: counts.clone() };
        let builder = Node::builder(
            group_config(args.id, group, args.mode),
            env.log_store(group)?,
            network,
            PutStateMachine::default(),
            runtime.clone(),
        )
        .bootstrap(Membership::with_voters(1..=NODES));
        nodes.push((group, host.add_group(group, builder).await?));
    }
    Ok(Process { id: args.id, host, env, nodes, counts, net: net.clone() })
}

/// Throughput mode: waits until every group has a leader and each group this process should
/// lead it leads, handing over the groups it leads but should not. Idle mode: waits until every
/// group has elected a leader once, and keeps the leaders where they were elected (without
/// quiescence, 1,000 groups on this machine's 2 shared cores re-elect too often for all of them
/// to have a leader at one instant, let alone to stay where they were moved).
async fn spread_leaders(process: &Process, mode: Mode) -> Result<(), Error> {
    let deadline = Instant::now() + SPREAD_DEADLINE;
    let mut elected = vec![false; process.nodes.len()];
    loop {
        if let Some(group) = process.host.failed_groups().first() {
            return Err(format!("group {} failed: {}", group.0, group.1).into());
        }
        let mut settled = true;
        let mut transfers = Vec::new();
        for ((group, node), elected) in process.nodes.iter().zip(&mut elected) {
            let status = node.status();
            let target = leader_of(*group);
            let leads = status.role == Role::Leader;
            if mode == Mode::Idle {
                *elected |= status.leader_id.is_some();
                settled &= *elected;
                continue;
            }
            if leads && target != process.id {
                transfers.push((node.clone(), target));
            }
            settled &= status.leader_id.is_some() && leads == (target == process.id);
        }
        if settled {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("leaders not in place after {SPREAD_DEADLINE:?}").into());
        }
        // A transfer that fails (timed out, lost leadership meanwhile) is retried next pass.
        futures::stream::iter(transfers)
            .for_each_concurrent(TRANSFERS_IN_FLIGHT, |(node, target)| async move {
                let _ = node.transfer_leadership(target).await;
            })
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The counters a window is measured between.
struct Counters {
    cpu: Duration,
    syncs: u64,
    requests: u64,
    entries: u64,
    written_bytes: u64,
    terms: u64,
    rpcs: BTreeMap<NodeId, u64>,
    frames: BTreeMap<NodeId, u64>,
    /// The host loop's counts (zeros without one).
    host_loop: raft_core::multi::HostLoopStats,
}

impl Process {
    fn counters(&self) -> Counters {
        let stats = self.env.stats();
        Counters {
            cpu: examples::bench::process_cpu_time().unwrap_or_default(),
            syncs: stats.commits,
            requests: stats.requests,
            entries: self.nodes.iter().map(|(_, node)| node.status().last_log_index).sum(),
            // What the environment's writer thread handed to the OS (LMDB's pages and the
            // headroom zeros): `write_bytes` of `/proc/self/io` counts whole page-cache folios
            // (up to 2 MiB per 4 KiB write) on recent kernels. 0 where unknown.
            written_bytes: self
                .env
                .disk_stats()
                .ok()
                .and_then(|disk| disk.written_bytes)
                .unwrap_or(0),
            terms: self.nodes.iter().map(|(_, node)| node.status().current_term).sum(),
            rpcs: self.counts.snapshot(),
            frames: (1..=NODES).map(|id| (id, self.net.peer_stats(id).frames_sent)).collect(),
            host_loop: self.host.loop_stats().unwrap_or_default(),
        }
    }
}

/// One closed-loop client's outcome inside the window.
#[derive(Default)]
struct ClientOutcome {
    puts: u64,
    errors: u64,
    latencies_us: Vec<u32>,
}

/// Runs this process's share of `clients` (client `c` writes to group `c % G + 1`, on this
/// process if it leads that group) for `warmup` then `measure`, one put in flight each, and
/// reports the measured window.
async fn run(
    process: &Process,
    clients: usize,
    warmup: Duration,
    measure: Duration,
) -> Result<Report, Error> {
    let start = Instant::now();
    let (window_start, window_end) = (start + warmup, start + warmup + measure);
    let groups = process.nodes.len();
    let mine = (0..clients).filter(|c| leader_of((c % groups) as u64 + 1) == process.id);
    let tasks: Vec<_> = mine
        .map(|c| {
            let node = process.nodes[c % groups].1.clone();
            tokio::spawn(client(node, c as u64, window_start, window_end))
        })
        .collect();
    tokio::time::sleep_until(window_start.into()).await;
    let before = process.counters();
    tokio::time::sleep_until(window_end.into()).await;
    let after = process.counters();
    let mut report = Report {
        cpu_us: (after.cpu.saturating_sub(before.cpu)).as_micros() as u64,
        syncs: after.syncs - before.syncs,
        requests: after.requests - before.requests,
        entries: after.entries.saturating_sub(before.entries),
        written_bytes: after.written_bytes.saturating_sub(before.written_bytes),
        new_terms: after.terms.saturating_sub(before.terms),
        rpcs: after.rpcs.iter().map(|(id, n)| (*id, n - before.rpcs[id])).collect(),
        frames: after.frames.iter().map(|(id, n)| (*id, n - before.frames[id])).collect(),
        passes: after.host_loop.passes.saturating_sub(before.host_loop.passes),
        group_steps: after.host_loop.steps.saturating_sub(before.host_loop.steps),
        loop_inputs: after.host_loop.inputs.saturating_sub(before.host_loop.inputs),
        ..Report::default()
    };
    let stop_deadline = tokio::time::Instant::now() + CLIENT_STOP_DEADLINE;
    for task in tasks {
        let outcome = tokio::time::timeout_at(stop_deadline, task)
            .await
            .map_err(|_| "a client did not stop")??;
        report.puts += outcome.puts;
        report.errors += outcome.errors;
        report.latencies_us.extend(outcome.latencies_us);
    }
    Ok(report)
}

/// One closed-loop client: durable puts of `VALUE_BYTES`-byte values under its own key, one at
/// a time, until `window_end`; counts those that end inside the window.
async fn client(node: Node, key: u64, window_start: Instant, window_end: Instant) -> ClientOutcome {
    let mut outcome = ClientOutcome::default();
    let mut command = Vec::with_capacity(8 + VALUE_BYTES);
    command.extend_from_slice(&key.to_be_bytes());
    command.resize(8 + VALUE_BYTES, 0x5a);
    let command = Bytes::from(command);
    loop {
        let sent = Instant::now();
        if sent >= window_end {
            return outcome;
        }
        let result = node.write(command.clone()).await;
        let done = Instant::now();
        let inside = done >= window_start && done < window_end;
        match result {
            Ok(_) if inside => {
                outcome.puts += 1;
                let us = done.duration_since(sent).as_micros();
                outcome.latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
            }
            Ok(_) => {}
            Err(_) => {
                outcome.errors += u64::from(inside);
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}
