//! `kv`: the command-line client of the key-value service.
//!
//! ```text
//! kv --certs DIR --endpoints 1=127.0.0.1:7101,2=127.0.0.1:7102 put greeting hello
//! kv --config node1.conf get greeting
//! kv --config node1.conf status
//! kv --config node1.conf health 1                       # exit status 0 if node 1 is ready
//! kv --config node1.conf member add 4 10.0.0.4:7001 10.0.0.4:7101
//! kv --config node1.conf member remove 1
//! kv --config node1.conf member set 1 4=10.0.0.4:7001,10.0.0.4:7101 5=10.0.0.5:7001,10.0.0.5:7101
//!
//! kv ca /secure/kv-ca                                   # once, on a machine that is no node
//! kv issue node 4 --ca /secure/kv-ca --out /tmp/node4   # certificates for a new node
//! kv issue admin alice --ca /secure/kv-ca --out ~/.kv   # an administrator (or `client NAME`)
//! kv gen-certs /tmp/kv-ca /tmp/kv-certs 1,2,3           # a whole test cluster at once
//! ```
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use examples::kv::client::{exit, member_table, status_table, ClientError};
use examples::kv::config::{parse_args, parse_member};
use examples::kv::connections::TlsFailure;
use examples::kv::health::HealthReport;
use examples::kv::protocol::{MemberList, NewMember};
use examples::kv::tls::{self, load_client_tls, pick_identity, CertRole};
use examples::kv::{ClientOptions, Connections, KvClient};
use raft_core::NodeId;

const USAGE: &str = "\
usage: kv [options] COMMAND
commands:
  put KEY VALUE              set a key
  get KEY                    print a key's value ((nil) if absent)
  del KEY                    remove a key
  cas KEY EXPECTED NEW       compare-and-swap (`-` stands for absent)
  status                     role, term, leader, commit and applied index of every node (and
                             of every group of a sharded service: kv-node --groups)
  member list                voters, learners, the leader and their addresses (from the leader;
                             of a sharded service: group 0's table, then each group's members)
  member add ID RAFT CLIENT  add node ID (started with `kv-node --join`) listening at RAFT (peer
                             address) and CLIENT: learner, catch-up, then voter
  member remove ID           remove node ID (the leader too: it steps down); its id is refused
  member set SPEC...         make exactly these the voters, in one change (joint consensus). SPEC
                             is ID (a member) or ID=RAFT,CLIENT (a node started with `kv-node
                             --join`): new nodes catch up as learners first; voters not named
                             are removed
                             A sharded service (kv-node --groups N) makes each change in every
                             group, at each group's leader; if some groups fail, the output says
                             which were changed and why the others were not: run the same
                             command again to finish (every change is idempotent)
  transfer-leader ID [GROUP] hand leadership (of GROUP, for a sharded service) to voter ID
  health [ID...]             whether each node (default: every --endpoints node) is ready: in
                             a cluster with a known leader, and at most --health-max-lag
                             entries behind (exit status 0 only if every node asked is ready)
certificates (the CA directory holds the CA keys: keep it off the nodes):
  ca CA_DIR [--days N]       create the node CA and the client CA in CA_DIR (default 3650 days)
  issue node ID --ca CA_DIR --out DIR [--days N]
                             node ID's certificate and key (node-ID.pem/.key) and the CA bundles
  issue client|admin NAME --ca CA_DIR --out DIR [--days N]
                             a client (keys only) or admin (everything) identity:
                             client-NAME.pem/.key or admin-NAME.pem/.key, and node-ca.pem
  trust --ca CA_DIR --out DIR
                             add CA_DIR's CAs to DIR's bundles (first step of a CA roll-over)
  gen-certs CA_DIR DIR IDS   a new cluster: CAs in CA_DIR (if none), node certificates for IDS
                             (e.g. 1,2,3), admin-default and client-default into DIR (existing
                             files are kept). Certificates last 365 days unless --days is given.
options:
  --endpoints ID=ADDR,...    client addresses of some nodes (the others are discovered)
  --certs DIR                node-ca.pem and the identity's certificate and key
  --user STEM                the identity in DIR: STEM.pem and STEM.key, e.g. admin-alice
                             (default: admin-default, or the only identity in DIR)
  --config FILE              a kv-node config file: its `node` and `certs` entries are used
  --timeout SECS             give up after this long (default 15; for `member add` and
                             `member set`, includes the new nodes' catch-up)
exit status:
  0  done (`status`: at least one node answered; `health`: every node asked is ready)
  1  the cluster refused the operation (rejected, forbidden, membership error)
  2  bad usage or configuration (arguments, unreadable certificate or key files)
  3  unavailable: no node answered, or no leader in time; nothing was applied (retry later)
  4  a write's outcome is unknown: it may have been applied; read before retrying it
  5  TLS failed: a certificate must change (the message names the file to check)
  6  `health`: a node answered but is not ready (or stopped on a fault)
";

struct Cli {
    endpoints: BTreeMap<NodeId, SocketAddr>,
    certs: PathBuf,
    user: Option<String>,
    timeout: Duration,
    command: Vec<String>,
}

fn parse(args: Vec<String>) -> Result<Cli, String> {
    // Options come first, each with a value; the command starts at the first other word.
    let mut split = 0;
    while split < args.len() && args[split].starts_with("--") {
        split += 2;
    }
    let (options, command) = args.split_at(split.min(args.len()));
    let mut endpoints = BTreeMap::new();
    let mut certs = None;
    let mut user = None;
    let mut timeout = Duration::from_secs(15);
    for (key, value) in parse_args(options.to_vec()).map_err(|e| e.to_string())? {
        match key.as_str() {
            "endpoints" => {
                for item in value.split(',') {
                    let (id, addr) =
                        item.split_once('=').ok_or(format!("bad endpoint `{item}`"))?;
                    let id = id.parse().map_err(|_| format!("bad node id in `{item}`"))?;
                    let addr = addr.parse().map_err(|_| format!("bad address in `{item}`"))?;
                    endpoints.insert(id, addr);
                }
            }
            "node" => {
                let (id, addrs) = parse_member(&value).map_err(|e| e.to_string())?;
                endpoints.insert(id, addrs.client);
            }
            "certs" => certs = Some(PathBuf::from(value)),
            "user" => user = Some(value),
            "timeout" => {
                let secs: f64 = value.parse().map_err(|_| "--timeout: not a number")?;
                timeout = Duration::from_secs_f64(secs.max(0.1));
            }
            // Other keys of a kv-node config file are not the client's business.
            "id"
            | "data-dir"
            | "listen"
            | "client-listen"
            | "ca"
            | "client-ca"
            | "cert"
            | "key"
            | "election-timeout-ms"
            | "heartbeat-ms"
            | "snapshot-entries"
            | "max-client-connections"
            | "worker-threads"
            | "fault-injection"
            | "stop-on-stdin-eof"
            | "join"
            | "lease-reads"
            | "metrics-listen"
            | "health-max-lag" => {}
            other => return Err(format!("unknown option --{other}")),
        }
    }
    if endpoints.is_empty() {
        return Err("no nodes given: use --endpoints or --config".into());
    }
    let certs = certs.ok_or("no certificates given: use --certs or --config")?;
    Ok(Cli { endpoints, certs, user, timeout, command: command.to_vec() })
}

fn value(arg: &str) -> Option<Bytes> {
    (arg != "-").then(|| Bytes::copy_from_slice(arg.as_bytes()))
}

/// Why `kv` failed: the message for standard error and the exit status.
#[derive(Debug)]
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn usage(message: impl std::fmt::Display) -> Self {
        Self { code: exit::USAGE, message: message.to_string() }
    }

    /// The failure of an operation, with what to check for a TLS failure.
    fn of(error: &ClientError, cli: &Cli, identity: &str) -> Self {
        let code = error.exit_status();
        let message = match error {
            ClientError::Tls { failure, .. } => {
                format!("{error}\n{}", tls_hint(failure, &cli.certs, identity))
            }
            _ => error.to_string(),
        };
        Self { code, message }
    }
}

/// What to check after `failure`: the file (or the address) that must change.
fn tls_hint(failure: &TlsFailure, certs: &Path, identity: &str) -> String {
    let node_ca = certs.join("node-ca.pem");
    let ours = certs.join(format!("{identity}.pem"));
    match failure {
        TlsFailure::NodeCertificate { reason } => {
            let reason = reason.to_ascii_lowercase();
            if reason.contains("name") {
                "check the node addresses (--endpoints, --node): the address of node N must be \
                 node N's client port (its certificate names another node)"
                    .to_owned()
            } else if reason.contains("expired") || reason.contains("notvalidyet") {
                "the node's certificate is expired (or not valid yet): renew it on the node \
                 (kv issue node ID), or check this machine's clock"
                    .to_owned()
            } else {
                format!(
                    "check {}: it must hold the CA that signed the nodes' certificates (the \
                     cluster's node CA)",
                    node_ca.display()
                )
            }
        }
        TlsFailure::ClientCertificate { alert } => {
            let why = match alert.as_str() {
                "CertificateExpired" => "it has expired: issue a new one (kv issue)",
                "CertificateRequired" => "the node got no client certificate",
                "UnknownCA" | "BadCertificate" | "DecryptError" => {
                    "it is not signed by a client CA the nodes trust (their client-ca.pem)"
                }
                _ => "the nodes do not accept it",
            };
            format!("check {}: {why}", ours.display())
        }
        TlsFailure::NoRole { .. } => format!(
            "check {}: it must name a client role (client-NAME.kv or admin-NAME.kv; kv issue \
             client|admin NAME)",
            ours.display()
        ),
        TlsFailure::Protocol { .. } => {
            "the node runs another version of kv-node: use a kv of the same version".to_owned()
        }
    }
}

async fn run(cli: Cli) -> Result<String, Failure> {
    let identity = pick_identity(&cli.certs, cli.user.as_deref()).map_err(Failure::usage)?;
    let tls = load_client_tls(&cli.certs, &identity).map_err(Failure::usage)?;
    let options = ClientOptions { op_timeout: cli.timeout, ..ClientOptions::default() };
    let connections =
        Connections::new(cli.endpoints.clone(), &tls, options).map_err(Failure::usage)?;
    let client = KvClient::new(connections.clone());
    let words: Vec<&str> = cli.command.iter().map(String::as_str).collect();
    let key = |k: &str| Bytes::copy_from_slice(k.as_bytes());
    let fail = |e: ClientError| Failure::of(&e, &cli, &identity);
    let result = match words.as_slice() {
        ["put", k, v] => client.put(key(k), key(v)).await.map(|()| "OK".to_owned()),
        ["get", k] => client.get(key(k)).await.map(|v| match v {
            Some(v) => String::from_utf8_lossy(&v).into_owned(),
            None => "(nil)".to_owned(),
        }),
        ["del", k] => client
            .delete(key(k))
            .await
            .map(|existed| if existed { "deleted" } else { "(not found)" }.to_owned()),
        ["cas", k, expected, new] => client
            .cas(key(k), value(expected), value(new))
            .await
            .map(|swapped| if swapped { "swapped" } else { "not swapped" }.to_owned()),
        ["status"] => {
            let statuses = connections.statuses().await;
            let table = status_table(&statuses);
            // Success if any node answered: the table shows the others as unreachable.
            match statuses.iter().find_map(|(_, a)| a.as_ref().err()) {
                Some(first) if statuses.iter().all(|(_, a)| a.is_err()) => {
                    println!("{table}");
                    Err(first.clone())
                }
                _ => Ok(table),
            }
        }
        ["health", ids @ ..] => {
            let ids = if ids.is_empty() {
                cli.endpoints.keys().copied().collect()
            } else {
                ids.iter().map(|id| node_id(id)).collect::<Result<Vec<_>, _>>()?
            };
            let answers = connections.healths_of(&ids).await;
            connections.close().await;
            return health(&answers, &cli, &identity);
        }
        ["member", "list"] => member_lists(&connections).await,
        ["member", "add", id, raft, client] => {
            let id = node_id(id)?;
            let raft = address("RAFT", raft)?;
            let client_addr = address("CLIENT", client)?;
            let added = connections.member_add(id, raft, client_addr).await;
            let groups = in_groups(&connections);
            added.map(|list| format!("node {id} is a voter{groups}\n{}", member_table(&list)))
        }
        ["member", "set", specs @ ..] if !specs.is_empty() => {
            let (voters, new_members) = member_specs(specs)?;
            let set = connections.member_set(voters, new_members).await;
            let groups = in_groups(&connections);
            set.map(|list| {
                format!("the voters are {}{groups}\n{}", voter_ids(&list), member_table(&list))
            })
        }
        ["member", "remove", id] => {
            let id = node_id(id)?;
            let removed = connections.member_remove(id).await;
            let groups = in_groups(&connections);
            removed.map(|list| format!("node {id} removed{groups}\n{}", member_table(&list)))
        }
        ["transfer-leader", id, group @ ..] if group.len() <= 1 => {
            let id = node_id(id)?;
            let group = match group {
                [g] => Some(g.parse().map_err(|_| Failure::usage(format!("`{g}` is no group")))?),
                _ => None,
            };
            let moved = connections.transfer_leader_in(group, id).await;
            let of = group.map_or(String::new(), |g| format!(" of group {g}"));
            match moved {
                Err(ClientError::WrongGroup { groups }) if group.is_none() => {
                    return Err(Failure::usage(format!(
                        "the service has {groups} groups, each with its own leader: name the \
                         group (transfer-leader ID GROUP)"
                    )));
                }
                moved => moved.map(|_| format!("node {id} is the leader{of}")),
            }
        }
        _ => return Err(Failure::usage(format!("unknown command\n{USAGE}"))),
    };
    connections.close().await;
    result.map_err(fail)
}

/// `kv health`: a table of the answers; fails unless every node answered ready.
fn health(
    answers: &[(NodeId, Result<HealthReport, ClientError>)],
    cli: &Cli,
    identity: &str,
) -> Result<String, Failure> {
    let mut out = format!(
        "{:>4}  {:<5} {:<5} {:<13} {:>7} {:>9}  {}\n",
        "node", "ready", "live", "role", "leader", "apply lag", "state"
    );
    for (id, answer) in answers {
        match answer {
            Ok(h) => {
                let leader = h.status.leader_id.map_or("-".to_owned(), |l| l.to_string());
                out += &format!(
                    "{id:>4}  {:<5} {:<5} {:<13} {leader:>7} {:>9}  {}\n",
                    h.ready,
                    h.live,
                    h.status.role.to_string(),
                    h.apply_lag,
                    h.summary()
                );
                for f in &h.followers {
                    out += &format!(
                        "        follower {} match index {} lag {}\n",
                        f.id, f.match_index, f.lag
                    );
                }
            }
            Err(e) => out += &format!("{id:>4}  unreachable ({e})\n"),
        }
    }
    let table = out.trim_end().to_owned();
    if let Some(error) = answers.iter().find_map(|(_, a)| a.as_ref().err()) {
        println!("{table}");
        return Err(Failure::of(error, cli, identity));
    }
    if let Some((id, _)) = answers.iter().find(|(_, a)| a.as_ref().is_ok_and(|h| !h.ready)) {
        println!("{table}");
        return Err(Failure { code: exit::NOT_READY, message: format!("node {id} is not ready") });
    }
    Ok(table)
}

/// ` in all N groups` after a change of a sharded service (nothing for a single group).
fn in_groups(connections: &Connections) -> String {
    match connections.routing().groups() {
        groups if groups > 1 => format!(" in all {groups} groups"),
        _ => String::new(),
    }
}

/// `kv member list`: the member table (group 0's for a sharded service), then, for a sharded
/// service, each group's voters, learners and leader (or why its leader did not answer).
async fn member_lists(connections: &Connections) -> Result<String, ClientError> {
    let mut lists = connections.member_lists().await;
    if lists.len() == 1 && lists[0].0.is_none() {
        return lists.swap_remove(0).1.map(|list| member_table(&list));
    }
    let table = match lists.iter().find_map(|(_, list)| list.as_ref().ok()) {
        Some(list) => member_table(list),
        None => return lists.swap_remove(0).1.map(|list| member_table(&list)),
    };
    let mut out =
        format!("{table}\n\n{:>5}  {:<7} {:<16} {}", "group", "leader", "voters", "learners");
    let ids = |voter: bool, list: &MemberList| {
        let named: Vec<String> =
            list.members.iter().filter(|m| m.voter == voter).map(|m| m.id.to_string()).collect();
        if named.is_empty() {
            "-".to_owned()
        } else {
            named.join(",")
        }
    };
    for (group, list) in &lists {
        let group = group.unwrap_or(0);
        out += &match list {
            Ok(list) => format!(
                "\n{group:>5}  {:<7} {:<16} {}",
                list.leader.map_or("-".to_owned(), |l| l.to_string()),
                ids(true, list),
                ids(false, list)
            ),
            Err(e) => format!("\n{group:>5}  FAILED: {e}"),
        };
    }
    Ok(out)
}

/// Parses the SPECs of `member set`: `ID` (a member) or `ID=RAFT,CLIENT` (a new node).
fn member_specs(specs: &[&str]) -> Result<(Vec<NodeId>, Vec<NewMember>), Failure> {
    let mut voters = Vec::new();
    let mut new_members = Vec::new();
    for spec in specs {
        if spec.contains('=') {
            let (id, addrs) = parse_member(spec).map_err(Failure::usage)?;
            new_members.push(NewMember { id, raft_addr: addrs.raft, client_addr: addrs.client });
            voters.push(id);
        } else {
            voters.push(node_id(spec)?);
        }
    }
    Ok((voters, new_members))
}

/// The voters of a member list, as `1, 4, 5`.
fn voter_ids(list: &MemberList) -> String {
    let voters: Vec<String> =
        list.members.iter().filter(|m| m.voter).map(|m| m.id.to_string()).collect();
    voters.join(", ")
}

fn node_id(word: &str) -> Result<NodeId, Failure> {
    word.parse().map_err(|_| Failure::usage(format!("`{word}` is not a node id")))
}

fn address(what: &str, word: &str) -> Result<SocketAddr, Failure> {
    word.parse()
        .map_err(|_| Failure::usage(format!("{what}: `{word}` is not an address (IP:PORT)")))
}

/// The value of `--NAME VALUE` in `args`, if given.
fn option<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str)
}

fn lifetime(args: &[String], default_days: u64) -> Result<Duration, String> {
    let days: u64 = match option(args, "--days") {
        Some(days) => days.parse().map_err(|_| format!("--days: `{days}` is not a number"))?,
        None => default_days,
    };
    if days == 0 {
        return Err("--days must be at least 1".into());
    }
    days.checked_mul(86_400)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("--days: {days} days is too long"))
}

fn required<'a>(args: &'a [String], name: &str) -> Result<&'a Path, String> {
    option(args, name).map(Path::new).ok_or(format!("{name} DIR is required"))
}

/// The words of `args` that are neither options nor their values.
fn words(args: &[String]) -> Vec<&str> {
    let mut words = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg.starts_with("--") {
            iter.next();
        } else {
            words.push(arg.as_str());
        }
    }
    words
}

/// The certificate subcommands (`ca`, `issue`, `trust`, `gen-certs`); `None` for other commands.
fn certificates(args: &[String]) -> Option<Result<String, String>> {
    let words = words(args);
    let cert_days = tls::DEFAULT_CERT_LIFETIME.as_secs() / 86_400;
    let run = || -> Result<String, String> {
        let fail = |e: tls::KvTlsError| e.to_string();
        match words.as_slice() {
            ["ca", dir] => {
                tls::create_cas(Path::new(dir), lifetime(args, 3650)?).map_err(fail)?;
                Ok(format!("node and client CAs in {dir}: keep this directory off the nodes"))
            }
            ["issue", "node", id] => {
                let (ca, out) = (required(args, "--ca")?, required(args, "--out")?);
                let id = node_id(id).map_err(|f| f.message)?;
                tls::issue_node(ca, out, id, lifetime(args, cert_days)?).map_err(fail)?;
                Ok(format!("node-{id}.pem and node-{id}.key in {}", out.display()))
            }
            ["issue", role @ ("client" | "admin"), name] => {
                let (ca, out) = (required(args, "--ca")?, required(args, "--out")?);
                let role = if *role == "admin" { CertRole::Admin } else { CertRole::Client };
                tls::issue_user(ca, out, role, name, lifetime(args, cert_days)?).map_err(fail)?;
                let stem = role.file_stem(name);
                Ok(format!("{stem}.pem and {stem}.key in {}", out.display()))
            }
            ["trust"] => {
                let (ca, out) = (required(args, "--ca")?, required(args, "--out")?);
                tls::trust(ca, out).map_err(fail)?;
                Ok(format!("{} trusts the CAs of {}", out.display(), ca.display()))
            }
            ["gen-certs", ca, dir, ids] => {
                let ids: Vec<NodeId> = ids
                    .split(',')
                    .map(|id| id.trim().parse().map_err(|_| format!("bad node id `{id}`")))
                    .collect::<Result<_, _>>()?;
                tls::gen_certs(Path::new(ca), Path::new(dir), ids).map_err(fail)?;
                Ok(format!("certificates in {dir}; CAs in {ca}"))
            }
            _ => Err(format!("bad certificate command\n{USAGE}")),
        }
    };
    matches!(words.first(), Some(&("ca" | "issue" | "trust" | "gen-certs"))).then(run)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if let Some(result) = certificates(&args) {
        return match result {
            Ok(done) => {
                println!("{done}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("kv: {e}");
                ExitCode::from(exit::USAGE)
            }
        };
    }
    let cli = match parse(args) {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("kv: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("kv: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(output) => {
            println!("{output}");
            ExitCode::SUCCESS
        }
        Err(Failure { code, message }) => {
            eprintln!("kv: {message}");
            ExitCode::from(code)
        }
    }
}
