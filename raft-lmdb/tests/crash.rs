//! Crash test with real processes: a child process writes to a store (appends, truncations,
//! hard state changes and purges, several writes in flight) and reports every acknowledged
//! request on stdout; the parent kills it with SIGKILL at a random moment, reopens the store and
//! checks that it holds exactly the state after some prefix of the requests that includes every
//! acknowledged one: nothing acknowledged is lost, no request is half applied, the log is a
//! clean prefix. The same with several groups of one `LmdbEnvironment` written at once (their
//! requests share transactions, their new entries go to the environment's journal, moved to
//! the groups' logs every few entries): every group's state is a prefix of its own requests
//! holding all its acknowledged ones, and its log opens (its records are consistent). The
//! children use the default options: cycles of pure appends are committed through the
//! write-ahead file (one sync), and the reopening recovers its frames (the test requires that
//! some round recovered entries from them, `StoreStats::recovered_entries`).
//!
//! SIGKILL ends the process, not the machine: what the child wrote stays in the page cache,
//! synced or not. This test therefore checks recovery's logic (frames acknowledged, then found
//! and applied in order; nothing acknowledged lost), not what a power loss leaves on the disk;
//! torn and stale frames are covered by the unit tests of `wal.rs` and `tests_wal.rs` only, and
//! failures (a frame's write or sync, a checkpoint's commit, the zeros at open) by
//! `tests_wal_faults.rs` (test hooks) and `io_error.rs` (a real file size limit).
//!
//! `RAFT_LMDB_CRASH_SEED` replays a run (the seed is printed); `RAFT_LMDB_CRASH_ROUNDS` changes
//! the number of rounds (default 60).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::executor::block_on;
use raft_core::GroupId;
use raft_core::{Entry, EntryPayload, HardState, LogId, LogStore, WriteBatch};
use raft_lmdb::{LmdbEnvironment, LmdbLogStore, LmdbOptions};

const CHILD_DIR_ENV: &str = "RAFT_LMDB_CRASH_CHILD_DIR";
const CHILD_SEED_ENV: &str = "RAFT_LMDB_CRASH_CHILD_SEED";
/// The number of groups of an environment the child writes to; 0: a store of its own.
const CHILD_GROUPS_ENV: &str = "RAFT_LMDB_CRASH_CHILD_GROUPS";
/// Requests a child makes if it is not killed first.
const OPS_PER_ROUND: usize = 250;
const DEFAULT_SEED: u64 = 0x5eed_1a7e_2026;
const DEFAULT_ROUNDS: u64 = 60;
/// Rounds of the multi-group test (a quarter more requests each on average).
const DEFAULT_GROUP_ROUNDS: u64 = 30;

/// SplitMix64: a tiny deterministic PRNG.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Debug, Clone)]
enum Op {
    Write(WriteBatch),
    Purge(u64),
}

/// What the store must hold after a prefix of the requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Model {
    hard_state: HardState,
    purged: LogId,
    entries: Vec<Entry>,
}

impl Model {
    fn last(&self) -> LogId {
        self.entries.last().map_or(self.purged, Entry::log_id)
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Write(batch) => {
                if let Some(hard_state) = batch.hard_state {
                    self.hard_state = hard_state;
                }
                if let Some(cut) = batch.truncate_from {
                    self.entries.retain(|e| e.index < cut);
                }
                self.entries.extend(batch.entries.iter().cloned());
            }
            Op::Purge(up_to) => {
                if let Some(pos) = self.entries.iter().position(|e| e.index == *up_to) {
                    self.purged = self.entries[pos].log_id();
                    self.entries.drain(..=pos);
                }
            }
        }
    }
}

fn make_entry(rng: &mut Rng, index: u64, term: u64) -> Entry {
    let len = if rng.chance(4) { 20_000 + rng.below(20_000) } else { rng.below(300) } as usize;
    let mut payload = format!("{index}:{term}:").into_bytes();
    let fill = (rng.next() % 251) as u8;
    payload.resize(payload.len().max(len), fill);
    Entry { index, term, payload: EntryPayload::Command(Bytes::from(payload)) }
}

/// The requests of one round: valid against the state left by the requests before them.
fn generate(seed: u64) -> Vec<Op> {
    let mut rng = Rng(seed);
    let mut model = Model::default();
    let mut ops = Vec::with_capacity(OPS_PER_ROUND);
    for _ in 0..OPS_PER_ROUND {
        let term = model.hard_state.current_term.max(1);
        let last = model.last();
        let first = model.purged.index + 1;
        let roll = rng.below(100);
        let op = if roll < 12 && last.index >= first {
            // A new leader overwrites a suffix: new term, truncation and new entries at once.
            let cut = first + rng.below(last.index - first + 1);
            let new_term = term + 1;
            let count = rng.below(4);
            let entries = (cut..cut + count).map(|i| make_entry(&mut rng, i, new_term)).collect();
            let hard_state = HardState { current_term: new_term, voted_for: Some(rng.below(5)) };
            Op::Write(WriteBatch {
                hard_state: Some(hard_state),
                truncate_from: Some(cut),
                entries,
                seq: 0,
            })
        } else if roll < 20 && last.index >= first {
            Op::Purge(first + rng.below((last.index - first + 1).min(20)))
        } else {
            let hard_state = rng.chance(10).then(|| HardState {
                current_term: term + rng.below(2),
                voted_for: Some(rng.below(5)),
            });
            let term = hard_state.map_or(term, |h| h.current_term);
            let count = 1 + rng.below(8);
            let entries = (last.index + 1..last.index + 1 + count)
                .map(|i| make_entry(&mut rng, i, term))
                .collect();
            Op::Write(WriteBatch { hard_state, truncate_from: None, entries, seq: 0 })
        };
        model.apply(&op);
        ops.push(op);
    }
    ops
}

/// How many requests a round's child keeps in flight.
fn pipeline_depth(seed: u64) -> usize {
    [1, 1, 4, 16][(Rng(seed ^ 0xd0d0).below(4)) as usize]
}

/// The requests of `group` in a round of seed `seed` (group 0's are the round's own).
fn group_seed(seed: u64, group: GroupId) -> u64 {
    seed ^ group.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// The stores a child writes to: a store of its own (`groups` 0) or groups `0..groups` of an
/// environment whose journal is moved to the groups' logs every few entries (4 to 64, from the
/// seed), so that kills land before, during and after moves.
fn open_stores(dir: &std::path::Path, seed: u64, groups: u64) -> Vec<LmdbLogStore> {
    if groups == 0 {
        return vec![LmdbLogStore::open_dir(dir).unwrap()];
    }
    let journal_bound = 4 + (seed % 61) as usize;
    let options = LmdbOptions::default().with_journal_bound(journal_bound, u64::MAX);
    let env = LmdbEnvironment::open_with(dir, options).unwrap();
    (0..groups).map(|group| env.log_store(group).unwrap()).collect()
}

/// Not a test on its own: the child process of the crash tests. Writes the requests of every
/// group in turn, several in flight, and prints `ACK <group> <n>` once request `n` of a group
/// is durable.
#[test]
fn crash_child() {
    let (Ok(dir), Ok(seed), Ok(groups)) = (
        std::env::var(CHILD_DIR_ENV),
        std::env::var(CHILD_SEED_ENV),
        std::env::var(CHILD_GROUPS_ENV),
    ) else {
        return;
    };
    let (seed, groups): (u64, u64) = (seed.parse().unwrap(), groups.parse().unwrap());
    let depth = pipeline_depth(seed);
    let stores = open_stores(dir.as_ref(), seed, groups);
    let mut ops: Vec<_> =
        (0..stores.len() as u64).map(|g| generate(group_seed(seed, g)).into_iter()).collect();
    let mut out = std::io::stdout().lock();
    writeln!(out).unwrap();
    let mut in_flight = VecDeque::new();
    let mut acked = vec![0usize; stores.len()];
    let mut ack = |out: &mut std::io::StdoutLock<'_>, group: usize| {
        writeln!(out, "ACK {group} {}", acked[group]).unwrap();
        out.flush().unwrap();
        acked[group] += 1;
    };
    for _ in 0..OPS_PER_ROUND {
        for (group, store) in stores.iter().enumerate() {
            let pending = match ops[group].next().unwrap() {
                Op::Write(batch) => block_on(store.submit(batch)).unwrap(),
                Op::Purge(up_to) => block_on(store.submit_purge(up_to)).unwrap(),
            };
            in_flight.push_back((group, pending));
        }
        while in_flight.len() >= depth * stores.len() {
            let (group, pending) = in_flight.pop_front().unwrap();
            block_on(pending).unwrap();
            ack(&mut out, group);
        }
    }
    for (group, pending) in in_flight {
        block_on(pending).unwrap();
        ack(&mut out, group);
    }
    writeln!(out, "DONE").unwrap();
    out.flush().unwrap();
}

/// Reads what the store holds.
fn stored(store: &LmdbLogStore) -> Model {
    let state = block_on(store.open()).unwrap();
    let entries = if state.last.index > state.purged.index {
        block_on(store.read(state.first_index()..state.last.index + 1, u64::MAX)).unwrap()
    } else {
        Vec::new()
    };
    Model { hard_state: state.hard_state, purged: state.purged, entries }
}

/// Runs one child writing to `groups` groups (0: a store of its own), kills it, and returns how
/// many requests of each group it acknowledged.
fn crash_round(dir: &std::path::Path, seed: u64, groups: u64, rng: &mut Rng) -> (Vec<usize>, bool) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR_ENV, dir)
        .env(CHILD_SEED_ENV, seed.to_string())
        .env(CHILD_GROUPS_ENV, groups.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let message = if let Some(ack) = line.split("ACK ").nth(1) {
                let (group, n) = ack.trim().split_once(' ').unwrap();
                Some((group.parse::<usize>().unwrap(), n.parse::<usize>().unwrap() + 1))
            } else if line.contains("DONE") {
                None
            } else {
                continue;
            };
            if tx.send(message).is_err() {
                break;
            }
        }
    });
    // Kill after a random number of acknowledgements, or after a random short time (possibly
    // while the store is still being created).
    let by_time = rng.chance(30);
    let kill_after_acks = 1 + rng.below(60) as usize;
    let deadline = Instant::now() + Duration::from_micros(rng.below(40_000));
    let mut acked = vec![0; groups.max(1) as usize];
    let mut finished = false;
    loop {
        let wait = if by_time {
            deadline.saturating_duration_since(Instant::now())
        } else {
            Duration::from_secs(30)
        };
        match rx.recv_timeout(wait) {
            Ok(Some((group, count))) => acked[group] = count,
            Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                finished = true;
                break;
            }
            Err(mpsc::RecvTimeoutError::Timeout) if by_time => break,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("seed {seed}: the child stalled"),
        }
        if !by_time && acked.iter().sum::<usize>() >= kill_after_acks {
            break;
        }
    }
    if finished {
        let status = child.wait().unwrap();
        assert!(status.success(), "seed {seed}: the child failed: {status}");
    } else {
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    // Acknowledgements read before the kill are all that count; later ones may be lost lines.
    while let Ok(Some((group, count))) = rx.try_recv() {
        acked[group] = acked[group].max(count);
    }
    reader.join().unwrap();
    (acked, finished)
}

/// Checks that each group in `dir` holds the state after `j` of its requests for some
/// `j >= acked[group]`, and returns the `j` of each group, and the number of entries the
/// reopening recovered from the write-ahead file's frames.
fn verify(dir: &std::path::Path, seed: u64, groups: u64, acked: &[usize]) -> (Vec<usize>, u64) {
    let stores = if groups == 0 {
        vec![LmdbLogStore::open_dir(dir)
            .unwrap_or_else(|e| panic!("seed {seed}: reopening after the crash failed: {e}"))]
    } else {
        let env = LmdbEnvironment::open(dir)
            .unwrap_or_else(|e| panic!("seed {seed}: reopening after the crash failed: {e}"));
        let on_disk = env.groups().unwrap();
        (0..groups)
            .map(|group| {
                let present = on_disk.contains(&group);
                assert!(present || acked[group as usize] == 0, "seed {seed}: group {group} lost");
                env.log_store(group).unwrap_or_else(|e| {
                    panic!("seed {seed}: group {group} does not open after the crash: {e}")
                })
            })
            .collect()
    };
    let recovered_wal = stores[0].stats().recovered_entries;
    let applied = stores
        .iter()
        .enumerate()
        .map(|(group, store)| verify_group(store, seed, group as u64, acked[group]))
        .collect();
    // The recovered stores accept writes again, together.
    let pending: Vec<_> = stores
        .iter()
        .map(|store| {
            let last = block_on(store.open()).unwrap().last;
            let entry = Entry {
                index: last.index + 1,
                term: last.term.max(1),
                payload: EntryPayload::Blank,
            };
            block_on(store.submit(WriteBatch { entries: vec![entry], ..WriteBatch::default() }))
                .unwrap()
        })
        .collect();
    for write in pending {
        block_on(write).unwrap();
    }
    (applied, recovered_wal)
}

/// Checks that `store` holds the state after `j` of `group`'s requests for some `j >= acked`.
fn verify_group(store: &LmdbLogStore, seed: u64, group: GroupId, acked: usize) -> usize {
    let on_disk = stored(store);
    let ops = generate(group_seed(seed, group));
    let mut model = Model::default();
    for (j, op) in std::iter::once(None).chain(ops.iter().map(Some)).enumerate() {
        if let Some(op) = op {
            model.apply(op);
        }
        if j >= acked && model == on_disk {
            return j;
        }
    }
    panic!(
        "seed {seed}, group {group}: after {acked} acknowledged requests the store holds a state \
         that is no prefix of the requests: hard state {:?}, purged {:?}, last {:?}",
        on_disk.hard_state,
        on_disk.purged,
        on_disk.last()
    );
}

/// Runs the crash test: each round a child writes to `groups(rng)` groups (0: a store of its
/// own) and is killed; the directory is then checked.
fn crash_test(name: &str, default_rounds: u64, groups: impl Fn(&mut Rng) -> u64) {
    let seed = std::env::var("RAFT_LMDB_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    let rounds = std::env::var("RAFT_LMDB_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_rounds);
    println!("{name}: seed {seed} (RAFT_LMDB_CRASH_SEED), {rounds} rounds");
    let mut rng = Rng(seed);
    let root = tempfile::tempdir().unwrap();
    let (mut total_acked, mut finished_rounds, mut in_flight_applied) = (0, 0, 0);
    let (mut wal_rounds, mut wal_entries) = (0, 0);
    for round in 0..rounds {
        let round_seed = rng.next();
        let groups = groups(&mut rng);
        let dir = root.path().join(format!("round-{round}"));
        let (acked, finished) = crash_round(&dir, round_seed, groups, &mut rng);
        let (recovered, recovered_wal) = verify(&dir, round_seed, groups, &acked);
        wal_rounds += usize::from(recovered_wal > 0);
        wal_entries += recovered_wal;
        total_acked += acked.iter().sum::<usize>();
        finished_rounds += usize::from(finished);
        in_flight_applied += recovered.iter().sum::<usize>() - acked.iter().sum::<usize>();
        std::fs::remove_dir_all(&dir).unwrap();
    }
    println!(
        "{name}: {rounds} rounds, {total_acked} acknowledged requests all recovered, \
         {in_flight_applied} unacknowledged requests found applied, {finished_rounds} rounds \
         finished before the kill, {wal_rounds} rounds recovered {wal_entries} entries from the \
         write-ahead file"
    );
    // The default options commit pure appends through the write-ahead file: the kills must
    // have left frames to recover (else this test would not test it).
    assert!(wal_entries > 0, "no round recovered entries from the write-ahead file");
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    crash_test("crash test", DEFAULT_ROUNDS, |_| 0);
}

/// Several groups of one environment, their requests sharing transactions.
#[test]
fn acknowledged_writes_of_every_group_survive_sigkill() {
    crash_test("multi-group crash test", DEFAULT_GROUP_ROUNDS, |rng| 2 + rng.below(4));
}
