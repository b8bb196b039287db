//! The parent of `bench-multi`: starts the three node processes for each group count, runs the
//! client levels in interleaved rounds, and prints the tables.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use examples::bench::{format_us, LatencyRecorder};
use raft_core::NodeId;
use raft_quic::ClusterCa;

use super::node::Mode;
use super::protocol::{Command, Report};
use super::{Error, NODES, NODE_SUBCOMMAND, VALUE_BYTES};

/// Unmeasured time before each measured window.
const WARMUP: Duration = Duration::from_secs(1);
/// Hang guards (never a measured bound): a node's start with every group elected and its
/// leaders spread (the node's own deadline is 300 s), a `run`'s answer beyond its window, a
/// node's exit after `quit`.
const START_DEADLINE: Duration = Duration::from_secs(360);
const RESULT_GRACE: Duration = Duration::from_secs(60);
const EXIT_DEADLINE: Duration = Duration::from_secs(30);
/// Bounds of the arguments.
const MAX_SECONDS: u64 = 600;
const MAX_ROUNDS: usize = 20;
const MAX_GROUPS: u64 = 10_000;
const MAX_CLIENTS: usize = 4_096;
const MAX_THREADS: usize = 64;

/// Set by Ctrl-C: the parent stops waiting, kills its children and removes its data.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The parent's arguments.
#[derive(Debug, Clone)]
pub(crate) struct Args {
    seconds: u64,
    rounds: usize,
    groups: Vec<u64>,
    clients: Vec<usize>,
    /// Host modes to compare: `false` a task per group's main loop, `true` one host loop.
    host_loop: Vec<bool>,
    idle_groups: Option<u64>,
    threads: usize,
    dir: PathBuf,
}

impl Args {
    /// Parses the command line (after the program name), with defaults and bounds.
    pub(crate) fn parse(mut it: impl Iterator<Item = String>) -> Result<Self, Error> {
        let mut args = Args {
            seconds: 3,
            rounds: 1,
            groups: vec![1, 4, 16, 64],
            clients: vec![64, 256],
            host_loop: vec![false],
            idle_groups: None,
            threads: 2,
            dir: PathBuf::from("target"),
        };
        fn list<T: std::str::FromStr>(value: &str, what: &str) -> Result<Vec<T>, Error> {
            let parsed = value.split(',').map(|v| v.trim().parse::<T>().ok());
            parsed.collect::<Option<Vec<T>>>().ok_or_else(|| format!("{what}: {value:?}").into())
        }
        while let Some(arg) = it.next() {
            if arg == "--help" || arg == "-h" {
                println!(
                    "usage: bench-multi [--seconds S (3)] [--rounds R (1)] [--groups 1,4,16,64] \
                     [--clients 64,256] [--host-loop 0,1 (0)] [--threads T per node (2)] \
                     [--dir DIR (target)] | [--idle-groups N --seconds S [--host-loop 0,1]]"
                );
                std::process::exit(0);
            }
            let value = it.next().ok_or(format!("{arg} needs a value"))?;
            match arg.as_str() {
                "--seconds" => args.seconds = value.parse()?,
                "--rounds" => args.rounds = value.parse()?,
                "--groups" => args.groups = list(&value, "--groups")?,
                "--clients" => args.clients = list(&value, "--clients")?,
                "--host-loop" => {
                    let modes: Vec<u8> = list(&value, "--host-loop")?;
                    if modes.iter().any(|&m| m > 1) {
                        return Err(format!("--host-loop takes 0 and 1: {value:?}").into());
                    }
                    args.host_loop = modes.into_iter().map(|m| m == 1).collect();
                }
                "--idle-groups" => args.idle_groups = Some(value.parse()?),
                "--threads" => args.threads = value.parse()?,
                "--dir" => args.dir = value.into(),
                other => return Err(format!("unknown argument {other:?} (try --help)").into()),
            }
        }
        let groups_ok = |g: &u64| (1..=MAX_GROUPS).contains(g);
        if !(1..=MAX_SECONDS).contains(&args.seconds)
            || !(1..=MAX_ROUNDS).contains(&args.rounds)
            || !(1..=MAX_THREADS).contains(&args.threads)
            || args.groups.is_empty()
            || !args.groups.iter().all(groups_ok)
            || args.clients.is_empty()
            || !args.clients.iter().all(|c| (1..=MAX_CLIENTS).contains(c))
            || !args.idle_groups.iter().all(groups_ok)
            || args.host_loop.is_empty()
        {
            return Err(format!(
                "bounds: --seconds 1..={MAX_SECONDS}, --rounds 1..={MAX_ROUNDS}, groups \
                 1..={MAX_GROUPS}, clients 1..={MAX_CLIENTS}, --threads 1..={MAX_THREADS}"
            )
            .into());
        }
        Ok(args)
    }
}

/// Runs the benchmark the arguments ask for.
pub(crate) fn main(args: Args) -> Result<(), Error> {
    watch_ctrl_c();
    std::fs::create_dir_all(&args.dir)?;
    let work = WorkDir(
        std::fs::canonicalize(&args.dir)?.join(format!("bench-multi-{}", std::process::id())),
    );
    std::fs::create_dir(&work.0)?;
    let ca = ClusterCa::generate()?;
    let (ca_cert, ca_key) = (work.0.join("ca.pem"), work.0.join("ca.key"));
    std::fs::write(&ca_cert, ca.cert_pem())?;
    std::fs::write(&ca_key, ca.key_pem())?;
    let launch = Launch { exe: std::env::current_exe()?, ca_cert, ca_key, threads: args.threads };
    println!(
        "bench-multi: {NODES} node processes on loopback ({} runtime threads each), QUIC with \
         mutual TLS, one LMDB environment per process (every commit synced) under {}",
        args.threads,
        work.0.display()
    );
    println!(
        "machine: {} CPUs, load average {} (at start)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    match args.idle_groups {
        Some(groups) => {
            for &host_loop in &args.host_loop {
                idle(&launch, &work.0, groups, args.seconds, host_loop)?;
            }
            Ok(())
        }
        None => throughput(&launch, &work.0, &args),
    }
}

/// Puts at saturation: every group count, every client level, interleaved rounds.
fn throughput(launch: &Launch, work: &Path, args: &Args) -> Result<(), Error> {
    println!(
        "{VALUE_BYTES}-byte durable puts; group g led by node (g-1) % {NODES} + 1; client c \
         writes to group c % G + 1 from inside its leader's process (no client network hop); one \
         put in flight per client; {} s warm-up then {} s measured; {} round(s), medians",
        WARMUP.as_secs(),
        args.seconds,
        args.rounds
    );
    let mut samples: BTreeMap<(u64, bool, usize), Vec<Sample>> = BTreeMap::new();
    for round in 0..args.rounds {
        for &groups in &args.groups {
            for &host_loop in &args.host_loop {
                let host = host_label(host_loop);
                let dir = work.join(format!("round{round}-groups{groups}-{host}"));
                let started = Instant::now();
                let mut cluster =
                    Cluster::start(launch, &dir, groups, Mode::Throughput, host_loop)?;
                eprintln!(
                    "round {}: {groups} groups ({host}) elected and spread in {:.1} s",
                    round + 1,
                    started.elapsed().as_secs_f64()
                );
                for &clients in &args.clients {
                    let measure = Duration::from_secs(args.seconds);
                    let reports = cluster.run(clients, WARMUP, measure)?;
                    let sample = Sample::new(reports, measure);
                    eprintln!(
                        "round {}: {groups} groups ({host}), {clients} clients: {:.0} puts/s",
                        round + 1,
                        sample.puts_per_second()
                    );
                    samples.entry((groups, host_loop, clients)).or_default().push(sample);
                }
                cluster.stop()?;
                std::fs::remove_dir_all(&dir)?;
            }
        }
    }
    print_throughput(&samples);
    println!("load average {} (at end)", load_average());
    Ok(())
}

/// How a row names a host mode.
fn host_label(host_loop: bool) -> &'static str {
    if host_loop {
        "loop"
    } else {
        "tasks"
    }
}

/// The cost of idle groups: no clients, once every group has its leader.
fn idle(
    launch: &Launch,
    work: &Path,
    groups: u64,
    seconds: u64,
    host_loop: bool,
) -> Result<(), Error> {
    let host = host_label(host_loop);
    println!(
        "{groups} idle groups ({host}), no clients; measured {seconds} s after every group had a \
         leader (new terms: elections held in the window, summed over the groups)"
    );
    let dir = work.join(format!("idle-groups{groups}-{host}"));
    let started = Instant::now();
    let mut cluster = Cluster::start(launch, &dir, groups, Mode::Idle, host_loop)?;
    eprintln!("{groups} groups all elected in {:.1} s", started.elapsed().as_secs_f64());
    let window = Duration::from_secs(seconds);
    let reports = cluster.run(0, WARMUP, window)?;
    cluster.stop()?;
    std::fs::remove_dir_all(&dir)?;
    let per_second = |n: u64| n as f64 / window.as_secs_f64();
    println!();
    println!("| node | CPU % of one core | RPCs/s sent to each peer | syncs/s | new terms |");
    println!("|------|-------------------|--------------------------|---------|-----------|");
    for (i, report) in reports.iter().enumerate() {
        let peers = report.rpcs.iter().filter(|(&to, _)| to != i as NodeId + 1);
        let sent: Vec<String> =
            peers.map(|(to, n)| format!("->{to}: {:.0}", per_second(*n))).collect();
        println!(
            "| {} | {:.1} % | {} | {:.0} | {} |",
            i + 1,
            report.cpu_us as f64 / 1e6 / window.as_secs_f64() * 100.0,
            sent.join(", "),
            per_second(report.syncs),
            report.new_terms
        );
    }
    println!();
    println!("| node pair | RPCs/s (both ways) | request frames/s (both ways) |");
    println!("|-----------|--------------------|------------------------------|");
    for a in 1..=NODES {
        for b in a + 1..=NODES {
            let sent = |counts: fn(&Report) -> &BTreeMap<NodeId, u64>, from: NodeId, to: NodeId| {
                let report = reports.get(from as usize - 1);
                report.and_then(|r| counts(r).get(&to)).copied().unwrap_or(0)
            };
            let rpcs: fn(&Report) -> &BTreeMap<NodeId, u64> = |r| &r.rpcs;
            let frames: fn(&Report) -> &BTreeMap<NodeId, u64> = |r| &r.frames;
            println!(
                "| {a}-{b} | {:.0} | {:.0} |",
                per_second(sent(rpcs, a, b) + sent(rpcs, b, a)),
                per_second(sent(frames, a, b) + sent(frames, b, a))
            );
        }
    }
    println!("load average {} (at end)", load_average());
    Ok(())
}

/// One measured window of the three processes.
struct Sample {
    reports: Vec<Report>,
    window: Duration,
}

impl Sample {
    fn new(reports: Vec<Report>, window: Duration) -> Self {
        Self { reports, window }
    }

    fn puts(&self) -> u64 {
        self.reports.iter().map(|r| r.puts).sum()
    }

    fn puts_per_second(&self) -> f64 {
        self.puts() as f64 / self.window.as_secs_f64()
    }

    /// p50 and p99 of every put of the window, µs.
    fn percentiles(&self) -> (u64, u64) {
        let mut recorder = LatencyRecorder::new();
        for us in self.reports.iter().flat_map(|r| &r.latencies_us) {
            recorder.record(Duration::from_micros(u64::from(*us)));
        }
        let row = recorder.row(String::new(), self.window);
        (row.p50_us, row.p99_us)
    }

    /// A per-process figure, each node's.
    fn per_node(&self, f: impl Fn(&Report) -> f64) -> Vec<f64> {
        self.reports.iter().map(f).collect()
    }

    /// RPCs sent by the three processes per put (how well each group's AppendEntries batch).
    fn rpcs_per_put(&self) -> f64 {
        let rpcs: u64 = self.reports.iter().flat_map(|r| r.rpcs.values()).sum();
        rpcs as f64 / self.puts().max(1) as f64
    }

    /// Request frames (streams) sent by the three processes per put (how well the transport
    /// coalesced the RPCs).
    fn frames_per_put(&self) -> f64 {
        let frames: u64 = self.reports.iter().flat_map(|r| r.frames.values()).sum();
        frames as f64 / self.puts().max(1) as f64
    }

    /// Each process's host-loop group steps per pass (k; 0 without a host loop).
    fn steps_per_pass(&self) -> Vec<f64> {
        self.per_node(|r| r.group_steps as f64 / r.passes.max(1) as f64)
    }

    fn cpu_us_per_put(&self) -> f64 {
        let cpu: u64 = self.reports.iter().map(|r| r.cpu_us).sum();
        cpu as f64 / self.puts().max(1) as f64
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Each node's median over the rounds of a per-node figure.
fn node_medians(samples: &[Sample], f: impl Fn(&Sample) -> Vec<f64>) -> Vec<f64> {
    let per_round: Vec<Vec<f64>> = samples.iter().map(f).collect();
    (0..NODES as usize)
        .map(|i| median(per_round.iter().filter_map(|v| v.get(i).copied()).collect()))
        .collect()
}

fn joined(values: &[f64], decimals: usize) -> String {
    let parts: Vec<String> = values.iter().map(|v| format!("{v:.decimals$}")).collect();
    parts.join(" / ")
}

fn print_throughput(samples: &BTreeMap<(u64, bool, usize), Vec<Sample>>) {
    println!();
    println!(
        "| groups | host | clients | puts/s | vs 1 group | vs 1 group, same clients per group | p50 | p99 | syncs/s (n1 / n2 / n3) | \
         entries/sync (n1 / n2 / n3) | KiB written/sync (n1 / n2 / n3) | CPU s (n1 / n2 / n3) | CPU µs/put | RPCs/put | frames/put | failed puts | k steps/pass (n1 / n2 / n3) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let median_of = |s: &[Sample], f: &dyn Fn(&Sample) -> f64| median(s.iter().map(f).collect());
    for (&(groups, host_loop, clients), rounds) in samples {
        let puts = median_of(rounds, &|s| s.puts_per_second());
        let one_group =
            samples.get(&(1, host_loop, clients)).map(|s| median_of(s, &|s| s.puts_per_second()));
        let ratio = one_group.map_or("-".into(), |base| format!("{:.2}x", puts / base.max(1.0)));
        // The same load per group: 1 group with C / G clients, if that row was measured.
        let per_group = (clients % groups as usize == 0)
            .then(|| samples.get(&(1, host_loop, clients / groups as usize)))
            .flatten()
            .map(|s| median_of(s, &|s| s.puts_per_second()));
        let per_group_ratio =
            per_group.map_or("-".into(), |base| format!("{:.2}x", puts / base.max(1.0)));
        let p50 = median_of(rounds, &|s| s.percentiles().0 as f64) as u64;
        let p99 = median_of(rounds, &|s| s.percentiles().1 as f64) as u64;
        let syncs =
            node_medians(rounds, |s| s.per_node(|r| r.syncs as f64 / s.window.as_secs_f64()));
        let batch =
            node_medians(rounds, |s| s.per_node(|r| r.entries as f64 / r.syncs.max(1) as f64));
        let kib = node_medians(rounds, |s| {
            s.per_node(|r| r.written_bytes as f64 / 1024.0 / r.syncs.max(1) as f64)
        });
        let cpu = node_medians(rounds, |s| s.per_node(|r| r.cpu_us as f64 / 1e6));
        let cpu_per_put = median_of(rounds, &|s| s.cpu_us_per_put());
        let rpcs_per_put = median_of(rounds, &|s| s.rpcs_per_put());
        let frames_per_put = median_of(rounds, &|s| s.frames_per_put());
        let errors = median_of(rounds, &|s| s.reports.iter().map(|r| r.errors).sum::<u64>() as f64);
        let k = if host_loop {
            joined(&node_medians(rounds, Sample::steps_per_pass), 1)
        } else {
            "-".to_owned()
        };
        let host = host_label(host_loop);
        println!(
            "| {groups} | {host} | {clients} | {puts:.0} | {ratio} | {per_group_ratio} | {} | {} | {} | {} | {} | {} | {cpu_per_put:.0} | {rpcs_per_put:.2} | {frames_per_put:.2} | {errors:.0} | {k} |",
            format_us(p50),
            format_us(p99),
            joined(&syncs, 0),
            joined(&batch, 1),
            joined(&kib, 0),
            joined(&cpu, 2),
        );
    }
}

/// The 1, 5 and 15 minute load averages (Linux), or "unknown".
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Sets [`INTERRUPTED`] on Ctrl-C (the children, in the same process group, get it too).
fn watch_ctrl_c() {
    std::thread::spawn(|| {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        runtime.block_on(async {
            if tokio::signal::ctrl_c().await.is_ok() {
                INTERRUPTED.store(true, Ordering::SeqCst);
            }
        });
    });
}

/// The benchmark's data directory: removed when dropped (the end, an error, Ctrl-C).
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How to start a node process.
struct Launch {
    exe: PathBuf,
    ca_cert: PathBuf,
    ca_key: PathBuf,
    threads: usize,
}

/// One node process: its stdin, and its stdout's lines (read by a thread).
struct NodeProcess {
    id: NodeId,
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl NodeProcess {
    fn spawn(
        launch: &Launch,
        dir: &Path,
        id: NodeId,
        groups: u64,
        mode: Mode,
        host_loop: bool,
    ) -> Result<Self, Error> {
        let mode = match mode {
            Mode::Throughput => "throughput",
            Mode::Idle => "idle",
        };
        let mut child = std::process::Command::new(&launch.exe)
            .arg(NODE_SUBCOMMAND)
            .args(["--id", &id.to_string(), "--groups", &groups.to_string(), "--mode", mode])
            .args(["--threads", &launch.threads.to_string()])
            .args(["--host-loop", if host_loop { "1" } else { "0" }])
            .arg("--dir")
            .arg(dir.join(format!("node{id}")))
            .arg("--ca-cert")
            .arg(&launch.ca_cert)
            .arg("--ca-key")
            .arg(&launch.ca_key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err("no pipes to the node process".into());
        };
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Self { id, child, stdin, lines })
    }

    fn send(&mut self, command: &Command) -> Result<(), Error> {
        writeln!(self.stdin, "{}", command.to_line())?;
        self.stdin.flush()?;
        Ok(())
    }

    /// The next line that starts with `prefix` (the rest of it), before `deadline`; a node's
    /// `error` line, its exit, the deadline or Ctrl-C fail.
    fn expect(&self, prefix: &str, deadline: Instant) -> Result<String, Error> {
        loop {
            if INTERRUPTED.load(Ordering::SeqCst) {
                return Err("interrupted".into());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("node {}: no {prefix:?} in time", self.id).into());
            }
            match self.lines.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) => {
                    if let Some(error) = line.strip_prefix("error ") {
                        return Err(format!("node {}: {error}", self.id).into());
                    }
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return Ok(rest.trim().to_owned());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!("node {} exited", self.id).into());
                }
            }
        }
    }
}

/// The three node processes of one group count. Dropped, it kills those still running.
struct Cluster {
    nodes: Vec<NodeProcess>,
}

impl Cluster {
    /// Starts the nodes, tells them each other's addresses, and waits until every group is
    /// elected with its leader where it belongs.
    fn start(
        launch: &Launch,
        dir: &Path,
        groups: u64,
        mode: Mode,
        host_loop: bool,
    ) -> Result<Self, Error> {
        let mut cluster = Cluster { nodes: Vec::new() };
        for id in 1..=NODES {
            cluster.nodes.push(NodeProcess::spawn(launch, dir, id, groups, mode, host_loop)?);
        }
        let deadline = Instant::now() + START_DEADLINE;
        let mut peers = BTreeMap::new();
        for node in &cluster.nodes {
            peers.insert(node.id, node.expect("addr ", deadline)?.parse()?);
        }
        let command = Command::Peers(peers);
        for node in &mut cluster.nodes {
            node.send(&command)?;
        }
        for node in &cluster.nodes {
            node.expect("ready", deadline)?;
        }
        Ok(cluster)
    }

    /// One measured window with `clients` clients in all; each node's report.
    fn run(
        &mut self,
        clients: usize,
        warmup: Duration,
        measure: Duration,
    ) -> Result<Vec<Report>, Error> {
        let command = Command::Run {
            clients,
            warmup_ms: warmup.as_millis() as u64,
            measure_ms: measure.as_millis() as u64,
        };
        for node in &mut self.nodes {
            node.send(&command)?;
        }
        let deadline = Instant::now() + warmup + measure + RESULT_GRACE;
        let mut reports = Vec::new();
        for node in &self.nodes {
            let line = node.expect("result ", deadline)?;
            reports.push(Report::parse(&format!("result {line}"))?);
        }
        Ok(reports)
    }

    /// Asks the nodes to stop and waits for them (killing any that does not exit in time).
    fn stop(mut self) -> Result<(), Error> {
        for node in &mut self.nodes {
            node.send(&Command::Quit)?;
        }
        let deadline = Instant::now() + EXIT_DEADLINE;
        let mut failed = Vec::new();
        for node in &mut self.nodes {
            loop {
                if let Some(status) = node.child.try_wait()? {
                    if !status.success() {
                        failed.push(format!("node {} exited with {status}", node.id));
                    }
                    break;
                }
                if Instant::now() > deadline {
                    failed.push(format!("node {} did not exit after quit: killed", node.id));
                    break; // Drop kills it.
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("; ").into())
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if matches!(node.child.try_wait(), Ok(None)) {
                let _ = node.child.kill();
            }
            let _ = node.child.wait();
        }
    }
}
