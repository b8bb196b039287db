//! [`ProcessCluster`]: `kv-node` processes on loopback with generated certificates, for the
//! demo, the benchmark and the tests. Nodes are real processes, so a crash is a real `kill -9`.
//!
//! Every child runs with `--stop-on-stdin-eof` and a pipe as its standard input: if the parent
//! dies, however it dies, the pipe closes and the children shut down. Dropping the cluster kills
//! every child still running.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use raft_core::{GroupId, NodeId, Role, Term};
use raft_quic::NodeTls;

use super::config::MemberAddrs;
use super::connections::{ClientOptions, Connections};
use super::tls::{gen_certs, load_client_tls, CertRole, KvTlsError, DEFAULT_ADMIN, DEFAULT_CLIENT};

/// How to start a `kv-node` process: a program and the arguments that precede the node's flags
/// (for a program that runs the node as a subcommand of itself).
#[derive(Clone, Debug)]
pub struct Launcher {
    /// The executable.
    pub program: PathBuf,
    /// Arguments before the node flags.
    pub prefix: Vec<String>,
}

impl Launcher {
    /// Runs the node as `<this executable> <subcommand> <flags>` (the demo and benchmark
    /// binaries embed the node program, so they need nothing else built).
    pub fn current_exe(subcommand: &str) -> std::io::Result<Self> {
        Ok(Self { program: std::env::current_exe()?, prefix: vec![subcommand.to_owned()] })
    }

    /// Runs `program <flags>` (for example the `kv-node` binary).
    pub fn program(program: impl Into<PathBuf>) -> Self {
        Self { program: program.into(), prefix: Vec::new() }
    }
}

/// The shape of a test cluster.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// Number of nodes (ids 1..=n).
    pub nodes: u64,
    /// Election timeout lower bound, ms.
    pub election_timeout_ms: u64,
    /// Heartbeat interval, ms.
    pub heartbeat_ms: u64,
    /// Snapshot interval in entries.
    pub snapshot_entries: u64,
    /// Whether nodes accept partition requests.
    pub fault_injection: bool,
    /// Whether leaders answer reads from their lease (`--lease-reads`).
    pub lease_reads: bool,
    /// The directory in which the cluster's temporary directory (certificates, data, logs;
    /// removed on drop) is created (`None`: the system's temporary directory).
    pub parent_dir: Option<PathBuf>,
    /// Where the nodes keep their data (`node-<id>/` in it; `None`: in the cluster's
    /// temporary directory). For a data directory on a file system of its own (disk faults);
    /// the caller removes it.
    pub data_root: Option<PathBuf>,
    /// Worker threads per node.
    pub worker_threads: usize,
    /// Value of `RUST_LOG` for the nodes, unless the environment sets it.
    pub log_filter: String,
    /// More arguments for some nodes (test-only faults such as `--panic-on-key`).
    pub node_args: BTreeMap<NodeId, Vec<String>>,
    /// Raft groups the service shards its keys over (`--groups`; 1: a single group).
    pub groups: u32,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        Self {
            nodes: 3,
            election_timeout_ms: 300,
            heartbeat_ms: 50,
            snapshot_entries: 10_000,
            fault_injection: false,
            lease_reads: false,
            parent_dir: None,
            data_root: None,
            worker_threads: 2,
            log_filter: "info".into(),
            node_args: BTreeMap::new(),
            groups: 1,
        }
    }
}

/// Why the cluster could not be set up or a node started.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Certificates could not be generated.
    #[error(transparent)]
    Tls(#[from] KvTlsError),
    /// Certificates could not be generated.
    #[error(transparent)]
    Cert(#[from] raft_quic::CertError),
    /// Node `id` is not running: it was never started, or it was killed or stopped already
    /// (so there is nothing to kill).
    #[error("node {id} is not running")]
    NotRunning {
        /// The node.
        id: NodeId,
    },
    /// Node `id`'s process exited on its own (neither killed nor stopped by the cluster): it
    /// is not restarted behind the caller's back, nor reported as killed.
    #[error("node {id} exited on its own ({status})")]
    Exited {
        /// The node.
        id: NodeId,
        /// How its process ended.
        status: ExitStatus,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}

/// Picks `n` distinct free UDP ports on loopback (bound together, then released).
pub fn free_udp_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let sockets: Vec<UdpSocket> =
        (0..n).map(|_| UdpSocket::bind("127.0.0.1:0")).collect::<Result<_, _>>()?;
    sockets.iter().map(|s| s.local_addr().map(|a| a.port())).collect()
}

/// A running cluster of `kv-node` processes.
#[derive(Debug)]
pub struct ProcessCluster {
    launcher: Launcher,
    spec: ClusterSpec,
    dir: PathBuf,
    _temp: tempfile::TempDir,
    members: BTreeMap<NodeId, MemberAddrs>,
    /// The nodes the cluster started with.
    founding: BTreeSet<NodeId>,
    /// Nodes started with `--join` (added to the cluster at run time).
    joining: BTreeSet<NodeId>,
    children: BTreeMap<NodeId, Child>,
    client_tls: NodeTls,
}

/// The CA directory of a cluster directory (what `kv ca` creates; no node reads it).
const CA_DIR: &str = "ca";
/// The certificate directory of a cluster directory (what the nodes and clients load).
const CERTS_DIR: &str = "certs";

impl ProcessCluster {
    /// Generates certificates, picks ports and starts every node.
    pub fn start(launcher: Launcher, spec: ClusterSpec) -> Result<Self, ClusterError> {
        let mut builder = tempfile::Builder::new();
        builder.prefix("raft-kv-");
        let temp = match &spec.parent_dir {
            Some(parent) => {
                std::fs::create_dir_all(parent)
                    .map_err(io(format!("creating {}", parent.display())))?;
                builder.tempdir_in(parent)
            }
            None => builder.tempdir(),
        }
        .map_err(io("creating a temporary directory"))?;
        let dir = temp.path().to_owned();
        let ids: Vec<NodeId> = (1..=spec.nodes).collect();
        let certs = dir.join(CERTS_DIR);
        gen_certs(&dir.join(CA_DIR), &certs, ids.iter().copied())?;
        let client_tls = load_client_tls(&certs, &CertRole::Admin.file_stem(DEFAULT_ADMIN))?;
        let ports = free_udp_ports(2 * ids.len()).map_err(io("picking free ports"))?;
        let members = ids
            .iter()
            .zip(ports.chunks(2))
            .map(|(&id, pair)| {
                let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
                (id, MemberAddrs { raft: addr(pair[0]), client: addr(pair[1]) })
            })
            .collect();
        let mut cluster = Self {
            launcher,
            spec,
            dir,
            _temp: temp,
            members,
            founding: ids.iter().copied().collect(),
            joining: BTreeSet::new(),
            children: BTreeMap::new(),
            client_tls,
        };
        for id in ids {
            cluster.spawn(id)?;
        }
        Ok(cluster)
    }

    /// The cluster's directory (the CAs in `ca/`, certificates in `certs/`, node `id`'s data in
    /// `node-<id>/`, its log in `node-<id>.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA directory (node CA and client CA, with their keys; no node reads it).
    pub fn ca_dir(&self) -> PathBuf {
        self.dir.join(CA_DIR)
    }

    /// The certificate directory every node and client of the cluster loads: the CA bundles,
    /// every node's certificate and key, `admin-default` and `client-default`.
    pub fn certs_dir(&self) -> PathBuf {
        self.dir.join(CERTS_DIR)
    }

    /// Starts a new node `id` that joins the running cluster (`kv-node --join`): issues its
    /// certificate from the node CA, picks its ports and starts it with the current members'
    /// addresses. It waits to be added (`member add` with the returned addresses). Nodes
    /// restarted later also get its address on their command line.
    pub fn start_joining(&mut self, id: NodeId) -> Result<MemberAddrs, ClusterError> {
        gen_certs(&self.ca_dir(), &self.certs_dir(), [id])?;
        let ports = free_udp_ports(2).map_err(io("picking free ports"))?;
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let addrs = MemberAddrs { raft: addr(ports[0]), client: addr(ports[1]) };
        self.members.insert(id, addrs);
        self.joining.insert(id);
        self.spawn(id)?;
        Ok(addrs)
    }

    /// The addresses of node `id`.
    pub fn addrs(&self, id: NodeId) -> Option<MemberAddrs> {
        self.members.get(&id).copied()
    }

    /// Stops node `id` (see [`ProcessCluster::stop`]) and drops it from the cluster's list
    /// (after `member remove`): nodes started later no longer name it.
    pub fn retire(&mut self, id: NodeId, grace: Duration) -> Result<bool, ClusterError> {
        let clean = self.stop(id, grace)?;
        self.members.remove(&id);
        self.joining.remove(&id);
        Ok(clean)
    }

    /// The node ids.
    pub fn ids(&self) -> Vec<NodeId> {
        self.members.keys().copied().collect()
    }

    /// The data directory of node `id`.
    pub fn data_dir(&self, id: NodeId) -> PathBuf {
        self.spec.data_root.as_deref().unwrap_or(&self.dir).join(format!("node-{id}"))
    }

    /// The log file of node `id`.
    pub fn log_path(&self, id: NodeId) -> PathBuf {
        self.dir.join(format!("node-{id}.log"))
    }

    /// The client address of every node.
    pub fn client_endpoints(&self) -> BTreeMap<NodeId, SocketAddr> {
        self.members.iter().map(|(&id, m)| (id, m.client)).collect()
    }

    /// The TLS material of the cluster's administrator (`admin-default`: every operation).
    pub fn client_tls(&self) -> &NodeTls {
        &self.client_tls
    }

    /// The TLS material of a plain client (`client-default`: key reads and writes only).
    pub fn plain_client_tls(&self) -> Result<NodeTls, KvTlsError> {
        load_client_tls(&self.certs_dir(), &CertRole::Client.file_stem(DEFAULT_CLIENT))
    }

    /// New client connections to the cluster (call inside a tokio runtime).
    pub fn connections(&self, options: ClientOptions) -> Result<Connections, KvTlsError> {
        Connections::new(self.client_endpoints(), &self.client_tls, options)
    }

    /// The flags that start node `id`. A founding node is given the founding members that are
    /// still members (as an operator would leave its configuration alone): it learns the nodes
    /// added later from its own state. A joining node is given every current member.
    pub fn node_args(&self, id: NodeId) -> Vec<String> {
        let mut args = vec![
            "--id".into(),
            id.to_string(),
            "--data-dir".into(),
            self.data_dir(id).display().to_string(),
            "--certs".into(),
            self.certs_dir().display().to_string(),
            "--election-timeout-ms".into(),
            self.spec.election_timeout_ms.to_string(),
            "--heartbeat-ms".into(),
            self.spec.heartbeat_ms.to_string(),
            "--snapshot-entries".into(),
            self.spec.snapshot_entries.to_string(),
            "--worker-threads".into(),
            self.spec.worker_threads.to_string(),
            "--stop-on-stdin-eof".into(),
        ];
        let joining = self.joining.contains(&id);
        for (member, addrs) in &self.members {
            if !joining && !self.founding.contains(member) {
                continue;
            }
            args.push("--node".into());
            args.push(format!("{member}={},{}", addrs.raft, addrs.client));
        }
        if self.spec.fault_injection {
            args.push("--fault-injection".into());
        }
        if self.spec.lease_reads {
            args.push("--lease-reads".into());
        }
        if joining {
            args.push("--join".into());
        }
        if self.spec.groups != 1 {
            args.push("--groups".into());
            args.push(self.spec.groups.to_string());
        }
        args.extend(self.spec.node_args.get(&id).into_iter().flatten().cloned());
        args
    }

    /// Starts node `id` (again), appending its output to its log file. Nothing to do if it
    /// runs. A process that exited on its own is an error ([`ClusterError::Exited`]), not
    /// restarted: to start such a node again, [`stop`](ProcessCluster::stop) it first.
    pub fn spawn(&mut self, id: NodeId) -> Result<(), ClusterError> {
        if self.is_running(id) {
            return Ok(());
        }
        if let Some(status) = self.exit_status(id) {
            return Err(ClusterError::Exited { id, status });
        }
        let log_path = self.log_path(id);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io(format!("opening {}", log_path.display())))?;
        let log_err = log.try_clone().map_err(io("cloning a log handle"))?;
        let mut command = Command::new(&self.launcher.program);
        command
            .args(&self.launcher.prefix)
            .args(self.node_args(id))
            .stdin(Stdio::piped())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", &self.spec.log_filter);
        }
        let child = command.spawn().map_err(io(format!("starting node {id}")))?;
        self.children.insert(id, child);
        Ok(())
    }

    /// The process id of node `id`, while it runs (to send it signals).
    pub fn pid(&self, id: NodeId) -> Option<u32> {
        self.children.get(&id).map(Child::id)
    }

    /// Whether node `id`'s process is running.
    pub fn is_running(&mut self, id: NodeId) -> bool {
        match self.children.get_mut(&id) {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// How node `id`'s process ended, if it exited on its own: neither killed nor stopped by
    /// the cluster (a crash, a panic, a fatal error). `None` while it runs, and for a node
    /// killed, stopped or never started.
    pub fn exit_status(&mut self, id: NodeId) -> Option<ExitStatus> {
        self.children.get_mut(&id).and_then(|child| child.try_wait().ok().flatten())
    }

    /// The ids of the running nodes.
    pub fn running(&mut self) -> Vec<NodeId> {
        self.ids().into_iter().filter(|&id| self.is_running(id)).collect()
    }

    /// Kills node `id` with SIGKILL (no chance to clean up) and reaps it. An error if there
    /// was nothing to kill: [`ClusterError::NotRunning`] if it was not started (or was killed
    /// or stopped already), [`ClusterError::Exited`] if its process had exited on its own
    /// (reaped: [`spawn`](ProcessCluster::spawn) starts it again).
    pub fn kill(&mut self, id: NodeId) -> Result<(), ClusterError> {
        let Some(mut child) = self.children.remove(&id) else {
            return Err(ClusterError::NotRunning { id });
        };
        if let Some(status) = child.try_wait().map_err(io(format!("waiting for node {id}")))? {
            return Err(ClusterError::Exited { id, status });
        }
        child.kill().map_err(io(format!("killing node {id}")))?;
        child.wait().map_err(io(format!("reaping node {id}")))?;
        Ok(())
    }

    /// Stops node `id` cleanly (its stdin closes), killing it if it has not exited within
    /// `grace`. Returns whether it exited on its own.
    pub fn stop(&mut self, id: NodeId, grace: Duration) -> Result<bool, ClusterError> {
        let Some(mut child) = self.children.remove(&id) else { return Ok(true) };
        drop(child.stdin.take());
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if child.try_wait().map_err(io(format!("waiting for node {id}")))?.is_some() {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        child.wait().map_err(io(format!("reaping node {id}")))?;
        Ok(false)
    }

    /// Stops every node cleanly (see [`ProcessCluster::stop`]); returns the ids that had to be
    /// killed.
    pub fn stop_all(&mut self, grace: Duration) -> Result<Vec<NodeId>, ClusterError> {
        for child in self.children.values_mut() {
            drop(child.stdin.take());
        }
        let mut killed = Vec::new();
        for id in self.ids() {
            if !self.stop(id, grace)? {
                killed.push(id);
            }
        }
        Ok(killed)
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A leader that a majority of the answering nodes agree on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderInfo {
    /// The leader.
    pub id: NodeId,
    /// Its term.
    pub term: Term,
}

/// Asks `nodes` for their status and returns the leader if one of them leads and a majority of
/// the cluster (`cluster_size`) reports it in the same term.
pub async fn current_leader(
    connections: &Connections,
    nodes: &[NodeId],
    cluster_size: usize,
) -> Option<LeaderInfo> {
    let statuses = connections.statuses_of(nodes).await;
    let answered: Vec<_> = statuses.iter().filter_map(|(_, s)| s.as_ref().ok()).collect();
    let leader = answered.iter().find(|s| s.status.role == Role::Leader)?;
    let (id, term) = (leader.status.id, leader.status.current_term);
    let agree = answered
        .iter()
        .filter(|s| s.status.current_term == term && s.status.leader_id == Some(id))
        .count();
    (agree > cluster_size / 2).then_some(LeaderInfo { id, term })
}

/// Polls [`current_leader`] among `nodes` every 5 ms until a leader is found, or `timeout`
/// passes.
pub async fn wait_for_leader(
    connections: &Connections,
    nodes: &[NodeId],
    cluster_size: usize,
    timeout: Duration,
) -> Option<LeaderInfo> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(leader) = current_leader(connections, nodes, cluster_size).await {
            return Some(leader);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// The leader of each Raft group of a sharded service, as `nodes` report it: for each group,
/// the node that says it leads it in the highest term. Groups no answering node leads are
/// missing.
pub async fn group_leaders(
    connections: &Connections,
    nodes: &[NodeId],
) -> BTreeMap<GroupId, NodeId> {
    let mut leaders: BTreeMap<GroupId, (Term, NodeId)> = BTreeMap::new();
    for (id, answer) in connections.statuses_of(nodes).await {
        let Ok(status) = answer else { continue };
        for group in status.groups.iter().filter(|g| g.status.role == Role::Leader) {
            let term = group.status.current_term;
            let entry = leaders.entry(group.group).or_insert((term, id));
            if term > entry.0 {
                *entry = (term, id);
            }
        }
    }
    leaders.into_iter().map(|(group, (_, id))| (group, id)).collect()
}

/// Polls [`group_leaders`] every 50 ms until `done` accepts the leaders it reports; returns
/// the last report, and whether `done` accepted it before `timeout`.
pub async fn wait_for_group_leaders(
    connections: &Connections,
    nodes: &[NodeId],
    timeout: Duration,
    done: impl Fn(&BTreeMap<GroupId, NodeId>) -> bool,
) -> (BTreeMap<GroupId, NodeId>, bool) {
    let deadline = Instant::now() + timeout;
    loop {
        let leaders = group_leaders(connections, nodes).await;
        if done(&leaders) {
            return (leaders, true);
        }
        if Instant::now() >= deadline {
            return (leaders, false);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls node `id`'s status until its state machine applied `index`; false if that did not
/// happen within `timeout`.
pub async fn wait_applied(
    connections: &Connections,
    id: NodeId,
    index: u64,
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(s) = connections.status(id).await {
            if s.status.applied_index >= index {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Reads the whole log file of a node (for failure reports).
pub fn read_log(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        let _ = std::io::Read::read_to_string(&mut file, &mut text);
    }
    text
}

/// A demo program's cluster, started by [`start_demo`]: the runtime to drive it, the cluster, and
/// when the program started.
pub struct DemoCluster {
    /// A 2-worker tokio runtime for the demo's client side.
    pub runtime: tokio::runtime::Runtime,
    /// The 3 kv-node processes.
    pub cluster: ProcessCluster,
    /// When `start_demo` was called (for the total time).
    pub started: Instant,
}

/// The common start of the demo programs: builds the runtime and starts 3 kv-node processes from
/// this executable run as `node_subcommand`, with `spec`, and prints where they keep their files.
/// On failure prints why (prefixed by `name`) and returns the exit code to end with.
pub fn start_demo(
    name: &str,
    node_subcommand: &str,
    spec: ClusterSpec,
) -> Result<DemoCluster, std::process::ExitCode> {
    let fail = |what: String| {
        eprintln!("{name}: {what}");
        std::process::ExitCode::FAILURE
    };
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let launcher = Launcher::current_exe(node_subcommand)
        .map_err(|e| fail(format!("cannot find its own executable: {e}")))?;
    let cluster = ProcessCluster::start(launcher, spec)
        .map_err(|e| fail(format!("cannot start the cluster: {e}")))?;
    println!("Started 3 kv-node processes on loopback (QUIC + mutual TLS, LMDB on disk)");
    println!("  certificates, data and logs in {}", cluster.dir().display());
    Ok(DemoCluster { runtime, cluster, started })
}

/// The common end of the demo programs: stops every node, and if the demo failed prints the
/// error and the last lines of every node's log. Returns the demo's value on success.
pub fn finish_demo<T, E: std::fmt::Display>(
    name: &str,
    cluster: &mut ProcessCluster,
    result: Result<T, E>,
) -> Option<T> {
    let _ = cluster.stop_all(Duration::from_secs(5));
    match result {
        Ok(value) => Some(value),
        Err(e) => {
            eprintln!("\n{name} failed: {e}");
            for id in cluster.ids() {
                let log = read_log(&cluster.log_path(id));
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                eprintln!("--- last lines of node {id}'s log ---");
                tail.iter().rev().for_each(|line| eprintln!("{line}"));
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A cluster of one "node" that runs `script` under `sh` (the node flags are its ignored
    /// arguments): certificates and ports as for a real node, but no kv-node.
    fn cluster_running(script: &str) -> ProcessCluster {
        let launcher = Launcher {
            program: "/bin/sh".into(),
            prefix: vec!["-c".into(), script.into(), "sh".into()],
        };
        let spec = ClusterSpec { nodes: 1, ..ClusterSpec::default() };
        ProcessCluster::start(launcher, spec).unwrap()
    }

    #[test]
    fn killing_a_node_that_is_not_running_is_an_error() {
        let mut cluster = cluster_running("sleep 60");
        assert!(cluster.is_running(1));
        cluster.kill(1).unwrap();
        assert!(matches!(cluster.kill(1), Err(ClusterError::NotRunning { id: 1 })));
        assert!(matches!(cluster.kill(2), Err(ClusterError::NotRunning { id: 2 })));
        assert_eq!(cluster.exit_status(1), None, "a killed node did not exit on its own");
        cluster.spawn(1).unwrap();
        assert!(cluster.is_running(1));
    }

    #[test]
    fn a_node_that_exited_on_its_own_is_reported_not_restarted() {
        let mut cluster = cluster_running("exit 3");
        let deadline = Instant::now() + Duration::from_secs(30);
        while cluster.exit_status(1).is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(cluster.exit_status(1).and_then(|s| s.code()), Some(3));
        let exited = |e: Result<(), ClusterError>| match e {
            Err(ClusterError::Exited { id: 1, status }) => status.code() == Some(3),
            _ => false,
        };
        assert!(exited(cluster.spawn(1)), "a node that exited is not restarted silently");
        assert!(exited(cluster.kill(1)), "a node that exited is not reported killed");
        // Reaped by the failed kill: it can be started again.
        cluster.spawn(1).unwrap();
    }
}
