//! Configuration of a `kv-node`: flags, a config file of the same keys, or both (flags win).
//!
//! ```text
//! # node1.conf: one `key = value` per line; the keys are the flags without `--`
//! id = 1
//! data-dir = /var/lib/kv/1
//! certs = /etc/kv/certs   # node-ca.pem, client-ca.pem, node-<id>.pem, node-<id>.key
//! node = 1=10.0.0.1:7001,10.0.0.1:7101   # id=raft address,client address; one line per member
//! node = 2=10.0.0.2:7001,10.0.0.2:7101
//! node = 3=10.0.0.3:7001,10.0.0.3:7101
//! ```
//!
//! `kv-node --config node1.conf`, or the same with flags: `kv-node --id 1 --data-dir ...
//! --node 1=...,... --node 2=...`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use raft_core::{NodeId, NodeInfo};

/// Where a member listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemberAddrs {
    /// Its Raft (peer) QUIC address.
    pub raft: SocketAddr,
    /// Its client QUIC address.
    pub client: SocketAddr,
}

impl MemberAddrs {
    /// The member's metadata in the Raft membership: the Raft address as the `address` (what
    /// raft-quic dials), the client address as the application `data`, both as `ip:port` text.
    pub fn to_node_info(&self) -> NodeInfo {
        NodeInfo::new(self.raft.to_string(), self.client.to_string())
    }

    /// The addresses in a member's metadata, if it holds both (a founding member's holds none
    /// until a membership change gives it some).
    pub fn from_node_info(info: &NodeInfo) -> Option<Self> {
        let parse = |bytes: &[u8]| std::str::from_utf8(bytes).ok()?.parse().ok();
        Some(Self { raft: parse(&info.address)?, client: parse(&info.data)? })
    }
}

/// The TLS files of a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertPaths {
    /// The node CA bundle (trusted for peers on the Raft port).
    pub ca: PathBuf,
    /// The client CA bundle (trusted for clients on the client port).
    pub client_ca: PathBuf,
    /// This node's certificate.
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
}

/// Everything a `kv-node` needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// This node's id.
    pub id: NodeId,
    /// Every member (this node included) with its addresses.
    pub members: BTreeMap<NodeId, MemberAddrs>,
    /// The Raft address to bind (default: this node's `raft` member address).
    pub listen: SocketAddr,
    /// The client address to bind (default: this node's `client` member address).
    pub client_listen: SocketAddr,
    /// The directory of the node's durable state.
    pub data_dir: PathBuf,
    /// TLS files.
    pub certs: CertPaths,
    /// Lower bound of the election timeout in ms (the upper bound is twice it).
    pub election_timeout_ms: u64,
    /// Heartbeat interval in ms.
    pub heartbeat_ms: u64,
    /// Take a snapshot (and compact the log) every this many applied entries.
    pub snapshot_entries: u64,
    /// Most client connections served at once.
    pub max_client_connections: usize,
    /// Most requests in flight per client connection.
    pub max_client_streams: u32,
    /// Whether clients may inject faults (test clusters only).
    pub fault_injection: bool,
    /// Test only (needs `fault_injection`): the state machine panics when it applies a put of
    /// this key.
    pub panic_on_key: Option<String>,
    /// Shut down cleanly when standard input reaches end of file (for supervised children:
    /// they stop when their parent dies).
    pub stop_on_stdin_eof: bool,
    /// Worker threads of the node's runtime.
    pub worker_threads: usize,
    /// Whether the leader answers reads from its lease (`--lease-reads`, Raft thesis §6.4.1)
    /// instead of confirming its leadership with a quorum round per batch of reads. Faster,
    /// but correct only while clocks advance at about the same rate everywhere.
    pub lease_reads: bool,
    /// Whether this node joins an existing cluster (`--join`): it starts with no voters and
    /// waits for the leader to add it (`kv member add`). The `--node` entries then name the
    /// existing members (so that it accepts their connections) and this node.
    pub join: bool,
    /// Where to serve the metrics (Prometheus text) and health over HTTP
    /// (`--metrics-listen`); `None`: nowhere, and no recorder is installed.
    pub metrics_listen: Option<SocketAddr>,
    /// Readiness bound: a node whose state machine is more entries than this behind its
    /// commit index is not ready (`--health-max-lag`).
    pub health_max_lag: u64,
    /// The cluster id (`--cluster-id`); `None`: the one stored in the data directory, else
    /// derived from the node CA (see [`super::cluster_id`]).
    pub cluster_id: Option<raft_core::ClusterId>,
    /// How many Raft groups the service shards its keys over (`--groups`, default 1; see
    /// [`super::shard`]). Fixed when the cluster is created.
    pub groups: u32,
}

/// A configuration error, with the offending key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NodeConfigError(pub String);

fn err<T>(message: impl Into<String>) -> Result<T, NodeConfigError> {
    Err(NodeConfigError(message.into()))
}

/// The flags `kv-node` accepts.
pub const USAGE: &str = "\
usage: kv-node [--config FILE] [flags]
  --id N                     this node's id (required)
  --node ID=RAFT,CLIENT      a member and its Raft and client addresses (repeat for each member,
                             this node included), e.g. --node 1=127.0.0.1:7001,127.0.0.1:7101
                             Founding nodes (without --join) bootstrap the cluster with the
                             --node ids as voters when their data directory holds no Raft state
                             yet (first start); later starts find the membership there. Members
                             added later are learned from the Raft membership, which carries
                             every member's addresses (`kv member add`, `kv member set`).
  --join                     join an existing cluster: start with no voters and wait to be added
                             with `kv member add ID RAFT CLIENT`; give --node entries for the
                             current members and this node (keep the flag on restarts)
  --data-dir DIR             durable state (required)
  --cluster-id N             the cluster's id, written on every Raft request; nodes refuse
                             requests of another id (default: the id stored in DATA_DIR/cluster-id
                             at the first start, else derived from the node CA, so clusters with
                             their own CAs tell each other apart). Give it to a node that joins
                             after a node-CA roll-over: every node logs its id at start
  --certs DIR                node-ca.pem, client-ca.pem, node-<id>.pem, node-<id>.key (or
                             --ca, --client-ca, --cert, --key); renewed files are picked up
                             within seconds (or on SIGHUP) without a restart
  --listen ADDR              Raft address to bind (default: this node's --node Raft address)
  --client-listen ADDR       client address to bind (default: this node's --node client address)
  --election-timeout-ms N    election timeout lower bound (default 300; upper bound 2N)
  --heartbeat-ms N           heartbeat interval (default 50)
  --snapshot-entries N       snapshot the state and compact the log every N entries (default
                             10000; snapshots live in DATA_DIR/snapshots)
  --max-client-connections N (default 256)
  --worker-threads N         (default 2)
  --lease-reads              the leader answers reads from its lease instead of a quorum round
                             (faster; correct only if clocks advance at about the same rate)
  --fault-injection          let clients partition this node (tests only)
  --panic-on-key KEY         with --fault-injection: panic when applying a put of KEY (tests only)
  --stop-on-stdin-eof        shut down when stdin closes (supervised child processes)
  --metrics-listen ADDR      serve GET /metrics (Prometheus text), /health (200 when ready,
                             else 503) and /health/live (200 unless the node stopped on a
                             fault) over HTTP on ADDR; bind a loopback or management address
  --health-max-lag N         not ready while the state machine is more than N entries behind
                             the commit index (default 1000)
  --groups N                 shard the keys over N Raft groups (default 1), each with the
                             --node members, their leaders spread over the nodes; a key's group
                             is FNV-1a-64(key) mod N. Fixed at the cluster's creation (stored in
                             DATA_DIR/groups; a node refuses to start with another N). A
                             node that joins (--join) gives the cluster's N: it is added to
                             every group (`kv member add` changes each group's membership)
  --config FILE              read `key = value` lines with the same keys (flags win)
";

/// Reads `key = value` lines (`#` starts a comment).
fn parse_file(path: &Path) -> Result<Vec<(String, String)>, NodeConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| NodeConfigError(format!("{}: {e}", path.display())))?;
    let mut pairs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return err(format!("{}:{}: expected `key = value`", path.display(), n + 1));
        };
        pairs.push((key.trim().to_owned(), value.trim().to_owned()));
    }
    Ok(pairs)
}

const BOOLEAN_FLAGS: [&str; 4] = ["fault-injection", "stop-on-stdin-eof", "join", "lease-reads"];

/// Splits `--key value` / `--flag` arguments into pairs; `--config FILE` is expanded in place
/// (so later flags win over the file).
pub fn parse_args(
    args: impl IntoIterator<Item = String>,
) -> Result<Vec<(String, String)>, NodeConfigError> {
    let mut pairs = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let Some(key) = arg.strip_prefix("--") else {
            return err(format!("unexpected argument `{arg}`"));
        };
        if BOOLEAN_FLAGS.contains(&key) {
            pairs.push((key.to_owned(), "true".to_owned()));
            continue;
        }
        let Some(value) = args.next() else {
            return err(format!("--{key} needs a value"));
        };
        if key == "config" {
            pairs.extend(parse_file(Path::new(&value))?);
        } else {
            pairs.push((key.to_owned(), value));
        }
    }
    Ok(pairs)
}

/// Parses `ID=RAFT,CLIENT`.
pub fn parse_member(value: &str) -> Result<(NodeId, MemberAddrs), NodeConfigError> {
    let bad = || NodeConfigError(format!("node `{value}`: expected ID=RAFT_ADDR,CLIENT_ADDR"));
    let (id, addrs) = value.split_once('=').ok_or_else(bad)?;
    let (raft, client) = addrs.split_once(',').ok_or_else(bad)?;
    let id: NodeId = id.trim().parse().map_err(|_| bad())?;
    let raft = raft.trim().parse().map_err(|_| bad())?;
    let client = client.trim().parse().map_err(|_| bad())?;
    Ok((id, MemberAddrs { raft, client }))
}

fn number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, NodeConfigError> {
    value.parse().map_err(|_| NodeConfigError(format!("--{key}: `{value}` is not a valid number")))
}

fn boolean(key: &str, value: &str) -> Result<bool, NodeConfigError> {
    match value {
        "true" | "yes" | "1" => Ok(true),
        "false" | "no" | "0" => Ok(false),
        _ => err(format!("--{key}: expected true or false")),
    }
}

impl NodeConfig {
    /// Builds a configuration from command-line arguments (see [`USAGE`]).
    pub fn from_args(args: impl IntoIterator<Item = String>) -> Result<Self, NodeConfigError> {
        Self::from_pairs(parse_args(args)?)
    }

    /// Builds a configuration from `key, value` pairs; later pairs win.
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Result<Self, NodeConfigError> {
        let mut id = None;
        let mut members = BTreeMap::new();
        let (mut listen, mut client_listen, mut data_dir) = (None, None, None);
        let (mut certs_dir, mut ca, mut cert, mut key) = (None, None, None, None);
        let mut client_ca = None;
        let mut config = NodeConfig {
            id: 0,
            members: BTreeMap::new(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            client_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: PathBuf::new(),
            certs: CertPaths {
                ca: PathBuf::new(),
                client_ca: PathBuf::new(),
                cert: PathBuf::new(),
                key: PathBuf::new(),
            },
            election_timeout_ms: 300,
            heartbeat_ms: 50,
            snapshot_entries: 10_000,
            max_client_connections: 256,
            max_client_streams: 1024,
            fault_injection: false,
            panic_on_key: None,
            stop_on_stdin_eof: false,
            worker_threads: 2,
            lease_reads: false,
            join: false,
            metrics_listen: None,
            health_max_lag: super::health::DEFAULT_MAX_LAG,
            cluster_id: None,
            groups: 1,
        };
        for (k, v) in pairs {
            let addr = |v: &str| -> Result<SocketAddr, NodeConfigError> {
                v.parse().map_err(|_| NodeConfigError(format!("--{k}: `{v}` is not an address")))
            };
            match k.as_str() {
                "id" => id = Some(number::<NodeId>(&k, &v)?),
                "node" => {
                    let (member, addrs) = parse_member(&v)?;
                    members.insert(member, addrs);
                }
                "listen" => listen = Some(addr(&v)?),
                "client-listen" => client_listen = Some(addr(&v)?),
                "data-dir" => data_dir = Some(PathBuf::from(v)),
                "certs" => certs_dir = Some(PathBuf::from(v)),
                "ca" => ca = Some(PathBuf::from(v)),
                "client-ca" => client_ca = Some(PathBuf::from(v)),
                "cert" => cert = Some(PathBuf::from(v)),
                "key" => key = Some(PathBuf::from(v)),
                "election-timeout-ms" => config.election_timeout_ms = number(&k, &v)?,
                "heartbeat-ms" => config.heartbeat_ms = number(&k, &v)?,
                "snapshot-entries" => config.snapshot_entries = number(&k, &v)?,
                "max-client-connections" => config.max_client_connections = number(&k, &v)?,
                "worker-threads" => config.worker_threads = number(&k, &v)?,
                "fault-injection" => config.fault_injection = boolean(&k, &v)?,
                "panic-on-key" => config.panic_on_key = Some(v),
                "stop-on-stdin-eof" => config.stop_on_stdin_eof = boolean(&k, &v)?,
                "join" => config.join = boolean(&k, &v)?,
                "lease-reads" => config.lease_reads = boolean(&k, &v)?,
                "metrics-listen" => config.metrics_listen = Some(addr(&v)?),
                "health-max-lag" => config.health_max_lag = number(&k, &v)?,
                "cluster-id" => config.cluster_id = Some(number(&k, &v)?),
                "groups" => config.groups = number(&k, &v)?,
                _ => return err(format!("unknown option `{k}`\n{USAGE}")),
            }
        }
        let Some(id) = id else { return err(format!("--id is required\n{USAGE}")) };
        if config.panic_on_key.is_some() && !config.fault_injection {
            return err("--panic-on-key needs --fault-injection (tests only)");
        }
        let Some(own) = members.get(&id).copied() else {
            return err(format!("no --node entry for this node's id {id}"));
        };
        let Some(data_dir) = data_dir else { return err("--data-dir is required") };
        let pick = |explicit: Option<PathBuf>, file: String| {
            explicit.or_else(|| certs_dir.as_ref().map(|d| d.join(file)))
        };
        let (Some(ca), Some(client_ca), Some(cert), Some(key)) = (
            pick(ca, "node-ca.pem".into()),
            pick(client_ca, "client-ca.pem".into()),
            pick(cert, format!("node-{id}.pem")),
            pick(key, format!("node-{id}.key")),
        ) else {
            return err(
                "certificates are required: --certs DIR, or --ca, --client-ca, --cert and --key",
            );
        };
        if config.heartbeat_ms == 0 || config.election_timeout_ms <= config.heartbeat_ms {
            return err("--election-timeout-ms must exceed --heartbeat-ms (> 0)");
        }
        if config.snapshot_entries == 0 {
            return err("--snapshot-entries must be positive");
        }
        if config.max_client_connections == 0 || config.worker_threads == 0 {
            return err("--max-client-connections and --worker-threads must be positive");
        }
        if !(1..=super::shard::MAX_GROUPS).contains(&config.groups) {
            return err(format!("--groups must be between 1 and {}", super::shard::MAX_GROUPS));
        }
        config.id = id;
        config.listen = listen.unwrap_or(own.raft);
        config.client_listen = client_listen.unwrap_or(own.client);
        config.members = members;
        config.data_dir = data_dir;
        config.certs = CertPaths { ca, client_ca, cert, key };
        Ok(config)
    }

    /// The membership a founding node bootstraps the cluster with when its stores are empty:
    /// the `--node` members as voters, with their addresses. `None` for a joining node
    /// (`--join`): it waits to be added.
    pub fn bootstrap_membership(
        &self,
    ) -> Result<Option<raft_core::Membership>, raft_core::InvalidChange> {
        if self.join {
            return Ok(None);
        }
        let voters = self.members.iter().map(|(&id, addrs)| (id, addrs.to_node_info()));
        raft_core::Membership::new(voters, []).map(Some)
    }

    /// The Raft configuration of this node, in cluster `cluster_id` (settled by
    /// [`super::cluster_id::settle`] from `--cluster-id`, the data directory and the node CA).
    pub fn raft_config(&self, cluster_id: raft_core::ClusterId) -> raft_core::Config {
        let mut config = raft_core::Config::new(self.id);
        config.cluster_id = cluster_id;
        let tick = (self.heartbeat_ms / 5).clamp(1, 10);
        config.tick_interval = std::time::Duration::from_millis(tick);
        config.heartbeat_interval = std::time::Duration::from_millis(self.heartbeat_ms);
        config.election_timeout_min = std::time::Duration::from_millis(self.election_timeout_ms);
        config.election_timeout_max =
            std::time::Duration::from_millis(2 * self.election_timeout_ms);
        config.snapshot_interval_entries = self.snapshot_entries;
        config.snapshot_keep_entries = (self.snapshot_entries / 10).max(1);
        config.lease_reads = self.lease_reads;
        // A sharded node's idle groups quiesce (issue 21.4): they cost no heartbeats until
        // a request or a suspicion wakes them. A single group keeps its steady heartbeats.
        config.quiesce_idle = self.groups > 1;
        // Its fallback deadline must exceed the election timeout (Config::validate).
        config.quiesce_check_interval =
            config.quiesce_check_interval.max(4 * config.election_timeout_max);
        config
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn flags_build_a_config() {
        let config = NodeConfig::from_args(args(
            "--id 2 --data-dir /d --certs /c --node 1=127.0.0.1:1,127.0.0.1:2 \
             --node 2=127.0.0.1:3,127.0.0.1:4 --fault-injection --lease-reads \
             --metrics-listen 127.0.0.1:9100 --health-max-lag 50 --cluster-id 77",
        ))
        .unwrap();
        assert_eq!(config.metrics_listen, Some("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(config.health_max_lag, 50);
        assert!(config.lease_reads && config.raft_config(77).lease_reads);
        assert_eq!((config.cluster_id, config.raft_config(77).cluster_id), (Some(77), 77));
        assert_eq!(config.id, 2);
        assert_eq!(config.listen, "127.0.0.1:3".parse().unwrap());
        assert_eq!(config.client_listen, "127.0.0.1:4".parse().unwrap());
        assert_eq!(config.certs.cert, PathBuf::from("/c/node-2.pem"));
        assert!(config.fault_injection);
        assert!(config.raft_config(77).validate().is_ok());
        let founders = config.bootstrap_membership().unwrap().unwrap();
        assert!(founders.is_voter(1) && founders.is_voter(2));
        let addrs = MemberAddrs::from_node_info(founders.node(2).unwrap()).unwrap();
        assert_eq!(addrs.raft, "127.0.0.1:3".parse().unwrap());
    }

    #[test]
    fn a_file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("n.conf");
        std::fs::write(
            &file,
            "# comment\nid = 1\ndata-dir = /d # trailing\ncerts = /c\n\
             node = 1=127.0.0.1:1,127.0.0.1:2\nelection-timeout-ms = 100\n",
        )
        .unwrap();
        let mut a = args("--config");
        a.push(file.display().to_string());
        a.extend(args("--election-timeout-ms 200"));
        let config = NodeConfig::from_args(a).unwrap();
        assert_eq!((config.id, config.election_timeout_ms), (1, 200));
    }

    #[test]
    fn a_joining_node_has_no_voters() {
        let config = NodeConfig::from_args(args(
            "--id 4 --data-dir /d --certs /c --node 1=127.0.0.1:1,127.0.0.1:2 \
             --node 4=127.0.0.1:3,127.0.0.1:4 --join",
        ))
        .unwrap();
        assert!(config.join);
        assert_eq!(config.bootstrap_membership(), Ok(None));
        assert_eq!(config.cluster_id, None);
        assert!(config.raft_config(1).validate().is_ok());
    }

    #[test]
    fn errors_name_the_problem() {
        let e = |s: &str| NodeConfig::from_args(args(s)).unwrap_err().0;
        assert!(e("--id x").contains("--id"));
        assert!(e("--id 1 --data-dir /d --certs /c").contains("no --node"));
        assert!(e("--node 1=bad").contains("expected ID=RAFT_ADDR"));
        assert!(e("--bogus 1").contains("unknown option"));
        assert!(e("--id").contains("needs a value"));
        let base = "--id 1 --data-dir /d --certs /c --node 1=127.0.0.1:1,127.0.0.1:2";
        assert!(e(&format!("{base} --groups 0")).contains("--groups"));
        let joining = NodeConfig::from_args(args(&format!("{base} --groups 2 --join"))).unwrap();
        assert!(joining.join && joining.groups == 2);
        assert_eq!(joining.bootstrap_membership(), Ok(None));
        assert_eq!(NodeConfig::from_args(args(&format!("{base} --groups 4"))).unwrap().groups, 4);
    }
}
