//! The fault test of the kv service, shared by `kv_fault.rs` (one group) and `kv_groups.rs`
//! (a sharded service): `kv-node` processes on loopback, concurrent clients doing gets, puts,
//! deletes and compare-and-swaps on a few keys, while a nemesis kills nodes with SIGKILL,
//! restarts them, and partitions the network (each node's test-only firewall, set through its
//! client port), choosing its victims among the leaders of every group: the node leading the
//! most groups, the leader of a random group, the leaders of two groups cut off together. The whole history is then checked for linearizability (per key, Wing-Gong-Lowe
//! search), and every acknowledged write to a key of its own is read back (nothing acknowledged
//! is lost). A failing history is saved, with the node logs, under the cargo target directory.
//!
//! The test also checks that it tested something: every kill and every partition request must
//! succeed (a node the nemesis kills must be running; a partition must be set on every node, and
//! the majority side must elect a new leader for each group the minority led); the first two
//! rounds are a kill and a partition of a leader, so every run has both. No node may exit on its
//! own, log a panic or an error, or fail to stop cleanly at the end. Enough operations must
//! succeed in every group and while faults are in effect; errors that say "not applied" are
//! counted by kind, and the kinds this test cannot cause fail it.
//!
//! The nemesis draws from a seed printed at the start; `KV_FAULT_SEED=<n>` replays its choices
//! (timing still varies). Time limits are hang guards only; nothing asserts speed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use examples::kv::cluster::{read_log, wait_for_leader, ClusterSpec, Launcher, ProcessCluster};
use examples::kv::command::{Op, OpResult};
use examples::kv::shard::group_of;
use examples::kv::{ClientError, ClientOptions, Connections, KvClient};
use examples::linearizability::kv::{
    check_kv_history, format_explanation, save_history, KvOperation,
};
use examples::linearizability::{Budget, OpOutcome, Verdict};
use raft_core::{GroupId, NodeId, Role, Term};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

const CLIENTS: u64 = 5;
/// Hang guard for waits.
const PATIENCE: Duration = Duration::from_secs(60);
/// Budget of the linearizability search (steps; bounded, so the check ends).
const CHECK_BUDGET: Budget = Budget { steps: 20_000_000, states: 2_000_000 };

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, items: &[T]) -> T {
    items[(rng.next_u64() % items.len() as u64) as usize]
}

/// The cluster and the run of one fault test.
pub(crate) struct FaultSpec {
    /// Nodes of the cluster.
    pub nodes: u64,
    /// Raft groups of the service (`--groups`).
    pub groups: u32,
    /// The contended keys (checked for linearizability).
    pub keys: &'static [&'static str],
    /// How long the nemesis runs.
    pub chaos: Duration,
}

/// The shared record of what every client did.
#[derive(Default)]
struct Recorder {
    history: Mutex<Vec<KvOperation>>,
    /// Unique keys whose put was acknowledged: they must all be readable at the end.
    acknowledged: Mutex<Vec<(Bytes, Bytes)>>,
    ok: AtomicU64,
    unknown: AtomicU64,
    /// Operations certainly not applied (not in the history), by kind of error.
    not_applied: Mutex<BTreeMap<&'static str, u64>>,
    /// The first few errors of kinds this test must not cause.
    unexpected: Mutex<Vec<String>>,
}

impl Recorder {
    fn record(&self, op: KvOperation) {
        if op.outcome.ok().is_some() {
            self.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.unknown.fetch_add(1, Ordering::Relaxed);
        }
        self.history.lock().unwrap().push(op);
    }

    /// Counts an error that says the operation was certainly not applied.
    fn not_applied(&self, op: &Op, error: &ClientError) {
        let (kind, expected) = not_applied_kind(error);
        *self.not_applied.lock().unwrap().entry(kind).or_default() += 1;
        let mut unexpected = self.unexpected.lock().unwrap();
        if !expected && unexpected.len() < 20 {
            unexpected.push(format!("{op:?}: {error:?}"));
        }
    }
}

/// The kind of an error that says "certainly not applied", and whether this test can cause it.
fn not_applied_kind(error: &ClientError) -> (&'static str, bool) {
    match error {
        // The operation's deadline passed before any node could have applied it (a read, or a
        // write that reached no node): expected while nodes are killed or cut off, and for
        // client 0, which gives up quickly.
        ClientError::Timeout { .. } => ("Timeout (not applied)", true),
        // None of these can be caused by crashes or partitions in this test, so each is a bug:
        // the client sends valid commands, so a refusal or a state machine rejection (sessions
        // included: the client manages them) is wrong; a node answering something unexpected
        // is a protocol bug; routing is correct and the number of groups never changes, so
        // WrongGroup must not reach the caller; every key operation reports an unreachable
        // cluster as a Timeout (Unreachable is for status requests); the certificates are
        // valid and admin; membership errors belong to membership requests.
        ClientError::Refused(_) => ("Refused", false),
        ClientError::Rejected(_) => ("Rejected", false),
        ClientError::Protocol(_) => ("Protocol", false),
        ClientError::WrongGroup { .. } => ("WrongGroup", false),
        ClientError::Unreachable(_) => ("Unreachable", false),
        ClientError::Tls { .. } => ("Tls", false),
        ClientError::Forbidden(_) => ("Forbidden", false),
        ClientError::NoRandomness => ("NoRandomness", false),
        ClientError::NoLeader(_) => ("NoLeader", false),
        ClientError::Member(_) => ("Member", false),
        ClientError::Groups { .. } => ("Groups", false),
        // An unknown outcome, never counted here (`outcome_unknown`); listed for completeness.
        ClientError::SessionExpired => ("SessionExpired", false),
    }
}

/// Records `op`, called at `call` and ended now with `result` (an error certainly not applied
/// is counted, not recorded); the operation if it was recorded.
fn record<T>(
    recorder: &Recorder,
    (client, op, call): (u64, Op, Duration),
    result: &Result<T, ClientError>,
    start: Instant,
    output: impl FnOnce(&T) -> OpResult,
) {
    let (ret, outcome) = match result {
        Ok(value) => (Some(start.elapsed()), OpOutcome::Ok(output(value))),
        Err(e) if e.outcome_unknown() => (None, OpOutcome::Unknown),
        Err(e) => return recorder.not_applied(&op, e),
    };
    recorder.record(KvOperation { client, op, call, ret, outcome });
}

async fn client_loop(
    keys: &'static [&'static str],
    id: u64,
    client: KvClient,
    recorder: Arc<Recorder>,
    start: Instant,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (id << 32));
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let key = b(pick(&mut rng, keys));
        let unique = b(&format!("c{id}-{n}"));
        let call = start.elapsed();
        let roll = rng.next_u64() % 100;
        let recorder = &*recorder;
        if roll < 35 {
            let r = client.get(key.clone()).await;
            record(recorder, (id, Op::Get { key }, call), &r, start, |v| {
                OpResult::Value(v.clone())
            });
        } else if roll < 60 {
            let r = client.put(key.clone(), unique.clone()).await;
            let op = Op::Put { key, value: unique };
            record(recorder, (id, op, call), &r, start, |()| OpResult::Written);
        } else if roll < 70 {
            let r = client.delete(key.clone()).await;
            let op = Op::Delete { key };
            record(recorder, (id, op, call), &r, start, |&existed| OpResult::Deleted { existed });
        } else if roll < 90 {
            // Compare-and-swap from a value this client may have seen, or from absent.
            let expected = if rng.next_u64() % 4 == 0 {
                None
            } else {
                Some(b(&format!(
                    "c{}-{}",
                    rng.next_u64() % CLIENTS,
                    n.saturating_sub(rng.next_u64() % 4)
                )))
            };
            let r = client.cas(key.clone(), expected.clone(), Some(unique.clone())).await;
            let op = Op::Cas { key, expected, new: Some(unique) };
            record(recorder, (id, op, call), &r, start, |&swapped| OpResult::Cas { swapped });
        } else {
            // A write to a key of its own: must survive everything once acknowledged.
            let own = b(&format!("own-{id}-{n}"));
            let r = client.put(own.clone(), unique.clone()).await;
            if r.is_ok() {
                recorder.acknowledged.lock().unwrap().push((own.clone(), unique.clone()));
            }
            let op = Op::Put { key: own, value: unique };
            record(recorder, (id, op, call), &r, start, |()| OpResult::Written);
            continue;
        }
        tokio::time::sleep(Duration::from_millis(rng.next_u64() % 10)).await;
    }
}

/// The node leading the most groups of `leaders` (ties broken at random), if any leads.
fn busiest(leaders: &BTreeMap<GroupId, NodeId>, rng: &mut ChaCha8Rng) -> Option<NodeId> {
    let mut led: BTreeMap<NodeId, usize> = BTreeMap::new();
    for &leader in leaders.values() {
        *led.entry(leader).or_default() += 1;
    }
    let most = led.values().copied().max()?;
    let busiest: Vec<NodeId> =
        led.into_iter().filter(|&(_, n)| n == most).map(|(id, _)| id).collect();
    Some(pick(rng, &busiest))
}

/// What the nemesis did: its log (each fault as it took effect), how many faults took effect
/// of each kind, and when faults were in effect (since the start of the clients).
#[derive(Default)]
struct Nemesis {
    log: Vec<String>,
    /// Processes killed (each was running).
    kills: usize,
    /// Partitions set on every node.
    partitions: usize,
    /// Partitions after which the majority side elected a new leader for every group that
    /// the minority led (at least one group).
    leader_cut_off: usize,
    /// When a fault was in effect: from the moment it took effect (every victim killed, the
    /// partition set on every node) until its repair began.
    windows: Vec<(Duration, Duration)>,
}

/// The last lines of node `id`'s log.
fn log_tail(cluster: &ProcessCluster, id: NodeId) -> String {
    let log = read_log(&cluster.log_path(id));
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Panics if a node's process exited on its own (not killed by the test): with its exit
/// status and the end of its log.
fn check_none_exited(cluster: &mut ProcessCluster) {
    for id in cluster.ids() {
        if let Some(status) = cluster.exit_status(id) {
            panic!(
                "node {id} exited on its own ({status}); the end of its log:\n{}",
                log_tail(cluster, id)
            );
        }
    }
}

/// The leader of each group with its term, as `nodes` report it (the node claiming it in the
/// highest term).
async fn leaders_with_terms(
    connections: &Connections,
    nodes: &[NodeId],
) -> BTreeMap<GroupId, (NodeId, Term)> {
    let mut leaders: BTreeMap<GroupId, (NodeId, Term)> = BTreeMap::new();
    for (id, answer) in connections.statuses_of(nodes).await {
        let Ok(status) = answer else { continue };
        for group in status.groups.iter().filter(|g| g.status.role == Role::Leader) {
            let term = group.status.current_term;
            let entry = leaders.entry(group.group).or_insert((id, term));
            if term > entry.1 {
                *entry = (id, term);
            }
        }
    }
    leaders
}

/// Sets the partition of `minority` from the rest on every node; panics if a node does not
/// take it.
async fn partition(connections: &Connections, ids: &[NodeId], minority: &[NodeId]) {
    let majority: Vec<NodeId> = ids.iter().copied().filter(|id| !minority.contains(id)).collect();
    for &id in ids {
        let blocked = if minority.contains(&id) { majority.clone() } else { minority.to_vec() };
        if let Err(e) = connections.partition(id, blocked.clone()).await {
            panic!("node {id} did not take the partition (blocking {blocked:?}): {e}");
        }
    }
}

/// Heals every partition; panics if a node does not take it.
async fn heal(connections: &Connections, ids: &[NodeId]) {
    for &id in ids {
        if let Err(e) = connections.partition(id, Vec::new()).await {
            panic!("node {id} did not take the heal: {e}");
        }
    }
}

/// The faults, one at a time, aimed at the leaders of every group (one group: its leader):
/// crash the node leading the most groups (or a random one; sometimes a second node too),
/// isolate the leader of a random group, or cut the leaders of two groups off from the
/// majority (each group then loses its leader's majority at once); hold the fault for a
/// while, then heal it. The first round is a crash and the second isolates a leader (so that
/// every run has both); the others are drawn at random. Panics if a fault cannot be made.
async fn nemesis(
    cluster: &mut ProcessCluster,
    connections: &Connections,
    rng: &mut ChaCha8Rng,
    (start, chaos): (Instant, Duration),
    groups: u32,
) -> Nemesis {
    let ids = cluster.ids();
    let mut done = Nemesis::default();
    let until = Instant::now() + chaos;
    let mut round = 0u64;
    while round < 2 || Instant::now() < until {
        round += 1;
        check_none_exited(cluster);
        let kind = match round {
            1 => 0,
            2 => 2,
            _ => rng.next_u64() % 4,
        };
        // Before a partition every node answers (a restarted one included), so that every node
        // can take it. A crash needs no such wait: it may strike a node still starting up.
        let deadline = Instant::now() + PATIENCE;
        if kind >= 2 {
            loop {
                let silent: Vec<NodeId> = connections
                    .statuses_of(&ids)
                    .await
                    .into_iter()
                    .filter_map(|(id, answer)| answer.is_err().then_some(id))
                    .collect();
                if silent.is_empty() {
                    break;
                }
                assert!(Instant::now() < deadline, "round {round}: nodes {silent:?} do not answer");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // The first two rounds need every group's leader (the second isolates one); later
        // rounds may strike while a group is still electing.
        let patience = if round <= 2 { PATIENCE } else { Duration::from_secs(5) };
        let deadline = Instant::now() + patience;
        let before = loop {
            let before = leaders_with_terms(connections, &ids).await;
            if before.len() == groups as usize || Instant::now() >= deadline {
                break before;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let leaders: BTreeMap<GroupId, NodeId> =
            before.iter().map(|(&group, &(leader, _))| (group, leader)).collect();
        let led = leaders.len() == groups as usize;
        assert!(led || round > 2, "round {round}: not every group has a leader: {leaders:?}");
        let random_leader = |rng: &mut ChaCha8Rng| {
            let group = rng.next_u64() % u64::from(groups);
            leaders.get(&group).copied().unwrap_or_else(|| pick(rng, &ids))
        };
        let other_than = |rng: &mut ChaCha8Rng, victims: &[NodeId]| {
            let other = pick(rng, &ids);
            (!victims.contains(&other)).then_some(other)
        };
        let hold = Duration::from_millis(1000 + rng.next_u64() % 2000);
        let minority = match kind {
            0 | 1 => {
                // Crash the busiest leader or a random node, sometimes one more (a majority of
                // 3 of 5 remains).
                let busiest = busiest(&leaders, rng).filter(|_| rng.next_u64().is_multiple_of(2));
                let mut victims = vec![busiest.unwrap_or_else(|| pick(rng, &ids))];
                if rng.next_u64().is_multiple_of(3) {
                    victims.extend(other_than(rng, &victims));
                }
                for &v in &victims {
                    if let Err(e) = cluster.kill(v) {
                        panic!(
                            "round {round}: cannot kill node {v}: {e}; the end of its log:\n{}",
                            log_tail(cluster, v)
                        );
                    }
                    done.kills += 1;
                }
                let from = start.elapsed();
                done.log.push(format!(
                    "{from:?}: killed (-9) {victims:?} (leaders {leaders:?}) for {hold:?}"
                ));
                tokio::time::sleep(hold).await;
                done.windows.push((from, start.elapsed()));
                check_none_exited(cluster);
                for &v in &victims {
                    cluster.spawn(v).unwrap();
                }
                done.log.push(format!("{:?}: restarted {victims:?}", start.elapsed()));
                None
            }
            2 => {
                // Isolate the leader of a random group, sometimes with one more node.
                let mut minority = vec![random_leader(rng)];
                if rng.next_u64().is_multiple_of(2) {
                    minority.extend(other_than(rng, &minority));
                }
                Some(minority)
            }
            _ => {
                // The leaders of two groups (two nodes, if two lead) cut off together.
                let mut minority = vec![random_leader(rng)];
                let others: BTreeSet<NodeId> =
                    leaders.values().copied().filter(|l| !minority.contains(l)).collect();
                let others: Vec<NodeId> = others.into_iter().collect();
                if others.is_empty() {
                    minority.extend(other_than(rng, &minority));
                } else {
                    minority.push(pick(rng, &others));
                }
                Some(minority)
            }
        };
        if let Some(minority) = minority {
            let majority: Vec<NodeId> =
                ids.iter().copied().filter(|id| !minority.contains(id)).collect();
            // Each group the minority leads must elect a new leader (in a later term) on the
            // majority side: that proves the cut took effect.
            partition(connections, &ids, &minority).await;
            let from = start.elapsed();
            done.partitions += 1;
            done.log.push(format!(
                "{from:?}: partitioned {minority:?} | {majority:?} (leaders {before:?}) for {hold:?}"
            ));
            let cut_off: BTreeMap<GroupId, Term> = before
                .iter()
                .filter(|(_, (leader, _))| minority.contains(leader))
                .map(|(&group, &(_, term))| (group, term))
                .collect();
            let deadline = Instant::now() + PATIENCE;
            let moved = loop {
                let now = leaders_with_terms(connections, &majority).await;
                let moved = cut_off.iter().all(|(group, term)| {
                    now.get(group)
                        .is_some_and(|&(leader, t)| t > *term && majority.contains(&leader))
                });
                if moved || Instant::now() >= deadline {
                    break moved.then_some(now);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let Some(now) = moved else {
                panic!(
                    "round {round}: the partition {minority:?} | {majority:?} did not take effect: \
                     the majority did not elect new leaders for groups {cut_off:?} within {PATIENCE:?}"
                );
            };
            if !cut_off.is_empty() {
                done.leader_cut_off += 1;
                let new: BTreeMap<GroupId, (NodeId, Term)> =
                    now.into_iter().filter(|(g, _)| cut_off.contains_key(g)).collect();
                done.log.push(format!(
                    "{:?}: the majority elected new leaders of the groups cut off: {new:?}",
                    start.elapsed()
                ));
            }
            let held = start.elapsed() - from;
            tokio::time::sleep(hold.saturating_sub(held)).await;
            done.windows.push((from, start.elapsed()));
            check_none_exited(cluster);
            heal(connections, &ids).await;
            done.log.push(format!("{:?}: healed", start.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(300 + rng.next_u64() % 700)).await;
    }
    done
}

/// Saves the history and the node logs; returns the directory.
fn save_failure(
    cluster: &ProcessCluster,
    history: &[KvOperation],
    nemesis_log: &[String],
) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "kv-fault-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    save_history(&dir.join("history.txt"), history).unwrap();
    std::fs::write(dir.join("nemesis.txt"), nemesis_log.join("\n")).unwrap();
    for id in cluster.ids() {
        std::fs::write(dir.join(format!("node-{id}.log")), read_log(&cluster.log_path(id)))
            .unwrap();
    }
    dir
}

/// Runs the fault test on a cluster of `spec` (see the module documentation); panics with the
/// seed, the history and the logs saved if a write was lost or the history is not
/// linearizable.
pub(crate) async fn run(spec: FaultSpec) {
    let seed =
        std::env::var("KV_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    println!("kv fault test seed: {seed} (replay the nemesis with KV_FAULT_SEED={seed})");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let launcher = Launcher::program(env!("CARGO_BIN_EXE_kv-node"));
    // Snapshots every few hundred entries: restarts restore them, lagging nodes are sent them.
    let FaultSpec { nodes, groups, keys, chaos } = spec;
    let spec = ClusterSpec {
        nodes,
        groups,
        fault_injection: true,
        snapshot_entries: 300,
        ..ClusterSpec::default()
    };
    let mut cluster = ProcessCluster::start(launcher, spec).unwrap();
    let options = ClientOptions {
        op_timeout: Duration::from_secs(8),
        status_timeout: Duration::from_millis(300),
        ..ClientOptions::default()
    };
    let connections = cluster.connections(options.clone()).unwrap();
    let ids = cluster.ids();
    wait_for_leader(&connections, &ids, ids.len(), PATIENCE).await.expect("a first leader");

    let recorder = Arc::new(Recorder::default());
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            // Each client has its own connections, like a separate process. Client 0 gives up
            // quickly, so that some operations end with an unknown outcome.
            let mut options = options.clone();
            if id == 0 {
                options.op_timeout = Duration::from_millis(600);
            }
            let conns = cluster.connections(options).unwrap();
            let client = KvClient::new(conns);
            tokio::spawn(client_loop(keys, id, client, recorder.clone(), start, stop.clone(), seed))
        })
        .collect();

    let nemesis = nemesis(&mut cluster, &connections, &mut rng, (start, chaos), groups).await;
    for line in &nemesis.log {
        println!("nemesis: {line}");
    }
    // Every fault is repaired: let the clients run a little on the healed cluster, then stop
    // them.
    check_none_exited(&mut cluster);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        tokio::time::timeout(PATIENCE, client).await.expect("a client stopped").unwrap();
    }

    // Final reads: every contended key (part of the history), every acknowledged own key.
    wait_for_leader(&connections, &ids, ids.len(), PATIENCE).await.expect("a leader after healing");
    let reader = KvClient::new(connections.clone());
    for &key in keys {
        let call = start.elapsed();
        let value = reader.get(key).await.expect("final read");
        recorder.record(KvOperation {
            client: CLIENTS,
            op: Op::Get { key: b(key) },
            call,
            ret: Some(start.elapsed()),
            outcome: OpOutcome::Ok(OpResult::Value(value)),
        });
    }
    let acknowledged = recorder.acknowledged.lock().unwrap().clone();
    let mut lost = Vec::new();
    for (key, value) in &acknowledged {
        if reader.get(key.clone()).await.expect("read back") != Some(value.clone()) {
            lost.push(key.clone());
        }
    }

    let history = recorder.history.lock().unwrap().clone();
    let (ok, unknown) =
        (recorder.ok.load(Ordering::Relaxed), recorder.unknown.load(Ordering::Relaxed));
    let not_applied = recorder.not_applied.lock().unwrap().clone();
    let report = check_kv_history(&history, CHECK_BUDGET);
    println!(
        "history: {} operations ({ok} completed, {unknown} with unknown outcome), {} acknowledged own-key writes; \
         checked {} ({} keys) in {} search steps: {:?}",
        history.len(),
        acknowledged.len(),
        report.searched,
        report.parts,
        report.steps,
        report.verdict
    );
    println!("certainly not applied (not in the history), by kind: {not_applied:?}");
    let restores: usize = cluster
        .ids()
        .iter()
        .map(|&id| read_log(&cluster.log_path(id)).matches("restored from").count())
        .sum();
    println!("snapshot restores during the run (restarts and installs): {restores}");
    if !lost.is_empty() || report.verdict != Verdict::Linearizable {
        let dir = save_failure(&cluster, &history, &nemesis.log);
        let verdict = match &report.verdict {
            Verdict::NotLinearizable(explanation) => format!(
                "not linearizable; these operations contradict each other:\n{}",
                format_explanation(&history, explanation)
            ),
            other => format!("{other:?} (search budget exhausted)"),
        };
        panic!(
            "lost acknowledged writes: {lost:?}; the check: {verdict}; \
             history, nemesis log and node logs saved in {}",
            dir.display()
        );
    }

    // The run tested something: faults of both kinds took effect, and operations succeeded in
    // every group, on every contended key, and while faults were in effect.
    println!(
        "faults that took effect: {} processes killed, {} partitions ({} cutting off a group's \
         leader, which the majority replaced)",
        nemesis.kills, nemesis.partitions, nemesis.leader_cut_off
    );
    assert!(nemesis.kills >= 1, "no node was killed");
    assert!(nemesis.leader_cut_off >= 1, "no partition cut a leader off");
    // The clients' completed operations (not the final reads).
    let completed: Vec<&KvOperation> =
        history.iter().filter(|op| op.client < CLIENTS && op.outcome.ok().is_some()).collect();
    let mut per_group: BTreeMap<GroupId, usize> =
        (0..GroupId::from(groups)).map(|g| (g, 0)).collect();
    let mut per_key: BTreeMap<&str, usize> = keys.iter().map(|&k| (k, 0)).collect();
    let mut during_faults = 0;
    for op in &completed {
        let Some(key) = op.op.key() else { continue };
        *per_group.entry(group_of(key, groups)).or_default() += 1;
        if let Some(count) = std::str::from_utf8(key).ok().and_then(|k| per_key.get_mut(k)) {
            *count += 1;
        }
        let ret = op.ret.unwrap_or(Duration::MAX);
        if nemesis.windows.iter().any(|&(from, to)| from <= op.call && ret <= to) {
            during_faults += 1;
        }
    }
    println!(
        "completed operations: {} by the clients; per group {per_group:?}; per contended key \
         {per_key:?}; {during_faults} called and completed while a fault was in effect",
        completed.len()
    );
    assert!(ok > 100, "too few operations completed ({ok}) for the test to mean anything");
    for (group, &count) in &per_group {
        assert!(count >= 5, "only {count} operations completed in group {group}");
    }
    for (key, &count) in &per_key {
        assert!(count >= 3, "only {count} operations completed on key {key}");
    }
    assert!(during_faults >= 5, "only {during_faults} operations completed during faults");
    assert!(unknown > 0, "no operation ended with an unknown outcome (client 0 gives up early)");
    let unexpected = recorder.unexpected.lock().unwrap().clone();
    assert!(
        unexpected.is_empty(),
        "errors this test must not cause (nothing applied, but a bug): {unexpected:#?}"
    );

    // Every node is still up, stops cleanly, and logged no panic and no error.
    check_none_exited(&mut cluster);
    connections.close().await;
    let killed = cluster.stop_all(Duration::from_secs(10)).unwrap();
    assert!(killed.is_empty(), "nodes {killed:?} did not shut down cleanly");
    for id in cluster.ids() {
        let log = read_log(&cluster.log_path(id));
        let bad: Vec<&str> =
            log.lines().filter(|l| l.contains("panicked") || l.contains("ERROR")).collect();
        assert!(bad.is_empty(), "node {id} logged panics or errors:\n{}", bad.join("\n"));
    }
}
