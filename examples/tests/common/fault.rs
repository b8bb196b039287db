//! The fault test of the kv service, shared by `kv_fault.rs` (one group) and `kv_groups.rs`
//! (a sharded service): `kv-node` processes on loopback, concurrent clients doing gets, puts,
//! deletes and compare-and-swaps on a few keys, while a nemesis kills nodes with SIGKILL,
//! restarts them, and partitions the network (each node's test-only firewall, set through its
//! client port), choosing its victims among the leaders of every group: the node leading the
//! most groups, the leader of a random group, the leaders of two groups cut off together. The whole history is then checked for linearizability (per key, Wing-Gong-Lowe
//! search), and every acknowledged write to a key of its own is read back (nothing acknowledged
//! is lost). A failing history is saved, with the node logs, under the cargo target directory.
//!
//! The nemesis draws from a seed printed at the start; `KV_FAULT_SEED=<n>` replays its choices
//! (timing still varies). Time limits are hang guards only; nothing asserts speed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use examples::kv::cluster::{
    read_log, wait_for_group_leaders, wait_for_leader, ClusterSpec, Launcher, ProcessCluster,
};
use examples::kv::command::{Op, OpResult};
use examples::kv::{ClientError, ClientOptions, Connections, KvClient};
use examples::linearizability::kv::{
    check_kv_history, format_explanation, save_history, KvOperation,
};
use examples::linearizability::{Budget, OpOutcome, Verdict};
use raft_core::{GroupId, NodeId};
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
}

/// The record of `op`, called at `call` and ended now with `result`; `None` if it certainly did
/// not happen (not recorded).
fn record<T>(
    (client, op, call): (u64, Op, Duration),
    result: &Result<T, ClientError>,
    start: Instant,
    output: impl FnOnce(&T) -> OpResult,
) -> Option<KvOperation> {
    let (ret, outcome) = match result {
        Ok(value) => (Some(start.elapsed()), OpOutcome::Ok(output(value))),
        Err(e) if e.outcome_unknown() => (None, OpOutcome::Unknown),
        Err(_) => return None,
    };
    Some(KvOperation { client, op, call, ret, outcome })
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
        let operation = if roll < 35 {
            let r = client.get(key.clone()).await;
            record((id, Op::Get { key }, call), &r, start, |v| OpResult::Value(v.clone()))
        } else if roll < 60 {
            let r = client.put(key.clone(), unique.clone()).await;
            record((id, Op::Put { key, value: unique }, call), &r, start, |()| OpResult::Written)
        } else if roll < 70 {
            let r = client.delete(key.clone()).await;
            let op = Op::Delete { key };
            record((id, op, call), &r, start, |&existed| OpResult::Deleted { existed })
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
            record((id, op, call), &r, start, |&swapped| OpResult::Cas { swapped })
        } else {
            // A write to a key of its own: must survive everything once acknowledged.
            let own = b(&format!("own-{id}-{n}"));
            let r = client.put(own.clone(), unique.clone()).await;
            if r.is_ok() {
                recorder.acknowledged.lock().unwrap().push((own.clone(), unique.clone()));
            }
            let op = Op::Put { key: own, value: unique };
            if let Some(operation) = record((id, op, call), &r, start, |()| OpResult::Written) {
                recorder.record(operation);
            }
            continue;
        };
        if let Some(operation) = operation {
            recorder.record(operation);
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

/// The faults, one at a time, aimed at the leaders of every group (one group: its leader):
/// crash the node leading the most groups (or a random one; sometimes a second node too),
/// isolate the leader of a random group, or cut the leaders of two groups off from the
/// majority (each group then loses its leader's majority at once); hold the fault for a
/// while, then heal it.
async fn nemesis(
    cluster: &mut ProcessCluster,
    connections: &Connections,
    rng: &mut ChaCha8Rng,
    chaos: Duration,
    groups: u32,
) -> Vec<String> {
    let ids = cluster.ids();
    let mut log = Vec::new();
    let until = Instant::now() + chaos;
    let all_led = |leaders: &BTreeMap<GroupId, NodeId>| leaders.len() == groups as usize;
    while Instant::now() < until {
        let (leaders, _) =
            wait_for_group_leaders(connections, &ids, Duration::from_secs(5), all_led).await;
        let random_leader = |rng: &mut ChaCha8Rng| {
            let group = rng.next_u64() % u64::from(groups);
            leaders.get(&group).copied().unwrap_or_else(|| pick(rng, &ids))
        };
        let other_than = |rng: &mut ChaCha8Rng, victims: &[NodeId]| {
            let other = pick(rng, &ids);
            (!victims.contains(&other)).then_some(other)
        };
        let hold = Duration::from_millis(1000 + rng.next_u64() % 2000);
        let minority = match rng.next_u64() % 4 {
            0 | 1 => {
                // Crash the busiest leader or a random node, sometimes one more (a majority of
                // 3 of 5 remains).
                let busiest = busiest(&leaders, rng).filter(|_| rng.next_u64().is_multiple_of(2));
                let mut victims = vec![busiest.unwrap_or_else(|| pick(rng, &ids))];
                if rng.next_u64().is_multiple_of(3) {
                    victims.extend(other_than(rng, &victims));
                }
                log.push(format!("kill -9 {victims:?} (leaders {leaders:?}) for {hold:?}"));
                for &v in &victims {
                    cluster.kill(v).unwrap();
                }
                tokio::time::sleep(hold).await;
                for &v in &victims {
                    cluster.spawn(v).unwrap();
                }
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
            log.push(format!(
                "partition {minority:?} | {majority:?} (leaders {leaders:?}) for {hold:?}"
            ));
            for &id in &ids {
                let blocked =
                    if minority.contains(&id) { majority.clone() } else { minority.clone() };
                let _ = connections.partition(id, blocked).await;
            }
            tokio::time::sleep(hold).await;
            heal(connections, &ids).await;
        }
        tokio::time::sleep(Duration::from_millis(300 + rng.next_u64() % 700)).await;
    }
    log
}

async fn heal(connections: &Connections, ids: &[NodeId]) {
    for &id in ids {
        // A node that does not answer now starts unpartitioned when it comes back anyway.
        let _ = connections.partition(id, Vec::new()).await;
    }
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

    let nemesis_log = nemesis(&mut cluster, &connections, &mut rng, chaos, groups).await;
    for line in &nemesis_log {
        println!("nemesis: {line}");
    }
    // Heal everything, let the clients run a little on the healed cluster, then stop them.
    for id in cluster.ids() {
        cluster.spawn(id).unwrap();
    }
    heal(&connections, &ids).await;
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
    let restores: usize = cluster
        .ids()
        .iter()
        .map(|&id| read_log(&cluster.log_path(id)).matches("restored from").count())
        .sum();
    println!("snapshot restores during the run (restarts and installs): {restores}");
    if !lost.is_empty() || report.verdict != Verdict::Linearizable {
        let dir = save_failure(&cluster, &history, &nemesis_log);
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
    assert!(ok > 100, "too few operations completed ({ok}) for the test to mean anything");
    connections.close().await;
    let _ = cluster.stop_all(Duration::from_secs(10));
}
