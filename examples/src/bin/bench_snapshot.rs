//! Restart and catch-up times with snapshots, on durable stores: a 5-voter in-process cluster
//! (`LmdbLogStore` + `FileSnapshotStore` + in-process network) whose key-value state machine
//! holds `--keys` keys (`--keys-per-entry` puts per log entry). Four voters run from the start;
//! the fifth joins only at the end, with an empty log, as the "new follower" (a node that never
//! acknowledged anything: wiping a node that did would be unsafe in Raft). Measures:
//!
//! * a follower's restart with a full log replay (no snapshot store: every entry applied again),
//! * the same follower's restart from its snapshot plus the log tail after it,
//! * the new follower catching up by InstallSnapshot (the leader's log is compacted).
//!
//! Each time runs from the `Node` start call until the follower has applied the last entry.
//!
//! `cargo run --release -p examples --bin bench-snapshot [-- --keys 1000000 --keys-per-entry 64]`

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use raft_core::runtime::TokioRuntime;
use raft_core::{
    Bytes, Config, Entry, NodeId, SnapshotMeta, SnapshotStream, StateMachine, StateMachineError,
};
use raft_lmdb::{FileSnapshotStore, LmdbLogStore};
use raft_mem::harness::Cluster;
use raft_mem::MemNetwork;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const IDS: [NodeId; 5] = [1, 2, 3, 4, 5];
const NEW_FOLLOWER: NodeId = 5;
/// Snapshot data is produced in pieces of this many keys (16 bytes each: 1 MiB).
const KEYS_PER_PIECE: usize = 65_536;

/// A key-value map of `u64 -> u64`. A command is a run of (key, value) pairs, little endian.
/// (Cloned only empty, when the harness keeps a copy of each node's state machine at its start.)
#[derive(Default, Clone)]
struct Kv {
    map: HashMap<u64, u64>,
    /// Time spent capturing snapshots on the apply path.
    capture: Arc<std::sync::Mutex<Duration>>,
}

#[async_trait]
impl StateMachine for Kv {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError> {
        for entry in entries {
            if let Some(command) = entry.command() {
                for pair in command.chunks_exact(16) {
                    let (k, v) = pair.split_at(8);
                    let key = u64::from_le_bytes(k.try_into().unwrap_or_default());
                    let value = u64::from_le_bytes(v.try_into().unwrap_or_default());
                    self.map.insert(key, value);
                }
            }
        }
        Ok(vec![Bytes::new(); entries.len()])
    }

    async fn snapshot(&mut self) -> Result<Option<SnapshotStream>, StateMachineError> {
        // Capture: a copy of the pairs (the only work on the apply path); encode in the stream.
        let started = Instant::now();
        let pairs: Vec<(u64, u64)> = self.map.iter().map(|(&k, &v)| (k, v)).collect();
        *self.capture.lock().unwrap_or_else(|p| p.into_inner()) += started.elapsed();
        let pieces = futures::stream::iter(0..pairs.len().div_ceil(KEYS_PER_PIECE).max(1));
        let pairs = Arc::new(pairs);
        let stream = pieces.map(move |piece| {
            let start = piece * KEYS_PER_PIECE;
            let end = (start + KEYS_PER_PIECE).min(pairs.len());
            let mut out = Vec::with_capacity((end - start) * 16);
            for (k, v) in &pairs[start..end] {
                out.extend_from_slice(&k.to_le_bytes());
                out.extend_from_slice(&v.to_le_bytes());
            }
            Ok(Bytes::from(out))
        });
        Ok(Some(stream.boxed()))
    }

    async fn restore(
        &mut self,
        meta: &SnapshotMeta,
        mut data: SnapshotStream,
    ) -> Result<(), StateMachineError> {
        let mut map = HashMap::with_capacity((meta.size / 16) as usize);
        let mut carry: Vec<u8> = Vec::new();
        while let Some(chunk) = data.next().await {
            carry.extend_from_slice(&chunk?);
            let whole = carry.len() / 16 * 16;
            for pair in carry[..whole].chunks_exact(16) {
                let (k, v) = pair.split_at(8);
                map.insert(
                    u64::from_le_bytes(k.try_into().unwrap_or_default()),
                    u64::from_le_bytes(v.try_into().unwrap_or_default()),
                );
            }
            carry.drain(..whole);
        }
        if !carry.is_empty() {
            return Err(StateMachineError::new("snapshot ends inside a pair"));
        }
        self.map = map;
        Ok(())
    }
}

struct Args {
    keys: u64,
    keys_per_entry: u64,
}

fn parse_args() -> Result<Args, BoxError> {
    let mut args = Args { keys: 1_000_000, keys_per_entry: 64 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value: u64 = it.next().ok_or(format!("{flag} needs a value"))?.parse()?;
        match flag.as_str() {
            "--keys" => args.keys = value,
            "--keys-per-entry" => args.keys_per_entry = value.max(1),
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    Ok(args)
}

fn config(id: NodeId) -> Config {
    let mut config = Config::new(id);
    // Snapshots only when asked for (Node::snapshot), so that the full log exists to replay.
    config.snapshot_interval_entries = 0;
    config.snapshot_interval_bytes = 0;
    config.snapshot_keep_entries = 1_000;
    config.max_payload_bytes = 1 << 20;
    config
}

fn dirs(root: &Path, id: NodeId) -> (PathBuf, PathBuf) {
    (root.join(format!("node-{id}/raft")), root.join(format!("node-{id}/snapshots")))
}

/// The 5-voter cluster, and whether a node's next start gets its snapshot store.
struct Bench {
    cluster: Cluster<TokioRuntime, MemNetwork, LmdbLogStore, Kv>,
    snapshots: Arc<AtomicBool>,
}

impl Bench {
    fn new(root: &Path) -> Result<Bench, BoxError> {
        let runtime = TokioRuntime::current().ok_or("no tokio runtime")?;
        let snapshots = Arc::new(AtomicBool::new(true));
        let (logs, snaps, new) = (root.to_path_buf(), root.to_path_buf(), root.to_path_buf());
        let with_snapshots = snapshots.clone();
        let cluster = Cluster::builder(
            runtime,
            MemNetwork::new(),
            IDS,
            move |id| Ok(LmdbLogStore::open_dir(dirs(&logs, id).0)?),
            |_| Kv::default(),
        )
        .config(config)
        .snapshot_store(move |id| match with_snapshots.load(Ordering::Relaxed) {
            true => Ok(Some(FileSnapshotStore::open_dir(dirs(&snaps, id).1)?)),
            false => Ok(None),
        })
        .bootstrap_if(move |id| !dirs(&new, id).0.exists())
        // A bound on each wait, generous for a million keys on a slow disk.
        .patience(Duration::from_secs(600))
        .build();
        Ok(Bench { cluster, snapshots })
    }

    /// Starts node `id`, with its snapshot store or without; returns the time of the start call.
    async fn start_node(&mut self, id: NodeId, snapshots: bool) -> Result<Duration, BoxError> {
        self.snapshots.store(snapshots, Ordering::Relaxed);
        let started = Instant::now();
        self.cluster.start(id).await?;
        Ok(started.elapsed())
    }

    /// Writes keys `from..to`, `per_entry` per entry, with many proposals in flight.
    async fn fill(&self, from: u64, to: u64, per_entry: u64) -> Result<u64, BoxError> {
        let commands: Vec<Bytes> = (from..to)
            .step_by(per_entry as usize)
            .map(|first| {
                let mut out = Vec::with_capacity(per_entry as usize * 16);
                for key in first..(first + per_entry).min(to) {
                    out.extend_from_slice(&key.to_le_bytes());
                    out.extend_from_slice(&(key ^ 0xABCD).to_le_bytes());
                }
                Bytes::from(out)
            })
            .collect();
        let mut last = 0;
        for batch in commands.chunks(256) {
            let writes = batch.iter().map(|c| self.cluster.propose(c.clone()));
            for written in futures::future::join_all(writes).await {
                last = last.max(written?.0);
            }
        }
        Ok(last)
    }
}

fn main() -> Result<(), BoxError> {
    let args = parse_args()?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> Result<(), BoxError> {
    let root = std::env::temp_dir().join(format!("bench-snapshot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let mut bench = Bench::new(&root)?;
    // Measure the node, not the simulator's check that every message survives its encoding.
    bench.cluster.transport().set_wire_check(false);
    let running = [1, 2, 3, 4];
    for id in running {
        bench.start_node(id, true).await?;
    }
    let started = Instant::now();
    let last = bench.fill(0, args.keys, args.keys_per_entry).await?;
    for id in running {
        bench.cluster.wait_applied_on(id, last).await?;
    }
    let leader = bench.cluster.leader().await?;
    let follower = running.into_iter().find(|&id| id != leader).ok_or("no follower")?;

    let fill_time = started.elapsed();
    println!("filled {} keys in {last} entries in {fill_time:.2?}", args.keys);

    // 1. Restart with a full log replay (the node is started without its snapshot store).
    bench.cluster.stop(follower).await?;
    let started = Instant::now();
    let replay_start = bench.start_node(follower, false).await?;
    bench.cluster.wait_applied_on(follower, last).await?;
    let replay = started.elapsed();
    bench.cluster.stop(follower).await?;

    // 2. Snapshots everywhere, then a tail of 1% more keys, then restart from snapshot + tail.
    bench.start_node(follower, true).await?;
    bench.cluster.wait_applied_on(follower, last).await?;
    let mut snapshot_time = Duration::ZERO;
    let mut meta = None;
    for id in running {
        let started = Instant::now();
        meta = bench.cluster.running_node(id)?.snapshot().await?;
        snapshot_time = snapshot_time.max(started.elapsed());
    }
    let meta = meta.ok_or("no snapshot taken")?;
    let tail_keys = (args.keys / 100).max(args.keys_per_entry);
    let last = bench.fill(args.keys, args.keys + tail_keys, args.keys_per_entry).await?;
    bench.cluster.wait_applied_on(follower, last).await?;
    bench.cluster.stop(follower).await?;
    let started = Instant::now();
    let snap_start = bench.start_node(follower, true).await?;
    bench.cluster.wait_applied_on(follower, last).await?;
    let from_snapshot = started.elapsed();
    let tail_entries = last - meta.last_included.index;

    // 3. The new follower (never started before) catches up by InstallSnapshot.
    bench.cluster.transport().reset_stats();
    let started = Instant::now();
    bench.start_node(NEW_FOLLOWER, true).await?;
    bench.cluster.wait_applied_on(NEW_FOLLOWER, last).await?;
    let catch_up = started.elapsed();
    let sent = bench.cluster.transport().stats();

    bench.cluster.stop_all().await?;
    let _ = std::fs::remove_dir_all(&root);

    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    println!();
    println!(
        "bench-snapshot: 5 voters, LmdbLogStore + FileSnapshotStore, in-process network, \
         {} keys ({} per entry), snapshot {:.1} MiB at index {}",
        args.keys,
        args.keys_per_entry,
        mib(meta.size),
        meta.last_included.index
    );
    println!("| {:<52} | {:>10} | {:>12} |", "follower", "time", "Node::start");
    println!("|{:-<54}|{:->12}|{:->14}|", "", "", "");
    println!(
        "| {:<52} | {:>10.2?} | {:>12.2?} |",
        format!("restart, full log replay ({} entries)", last - tail_entries),
        replay,
        replay_start
    );
    println!(
        "| {:<52} | {:>10.2?} | {:>12.2?} |",
        format!("restart from snapshot + tail ({tail_entries} entries)"),
        from_snapshot,
        snap_start
    );
    println!(
        "| {:<52} | {:>10.2?} | {:>12} |",
        if meta.last_included.index > config(1).snapshot_keep_entries {
            format!("new follower by InstallSnapshot ({:.1} MiB sent)", mib(sent.bytes))
        } else {
            format!("new follower (log not compacted: {:.1} MiB sent)", mib(sent.bytes))
        },
        catch_up,
        "-"
    );
    println!();
    println!(
        "replay / snapshot restart: {:.1}x; taking the snapshot (slowest node): {snapshot_time:.2?}",
        replay.as_secs_f64() / from_snapshot.as_secs_f64().max(1e-9)
    );
    Ok(())
}
