//! Crash test with real processes: a child process writes to a store (appends, truncations,
//! hard state changes and purges, several writes in flight) and reports every acknowledged
//! request on stdout; the parent kills it with SIGKILL at a random moment, reopens the store and
//! checks that it holds exactly the state after some prefix of the requests that includes every
//! acknowledged one: nothing acknowledged is lost, no request is half applied, the log is a
//! clean prefix.
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
use raft_core::{Entry, EntryPayload, HardState, LogId, LogStore, WriteBatch};
use raft_lmdb::LmdbLogStore;

const CHILD_DIR_ENV: &str = "RAFT_LMDB_CRASH_CHILD_DIR";
const CHILD_SEED_ENV: &str = "RAFT_LMDB_CRASH_CHILD_SEED";
/// Requests a child makes if it is not killed first.
const OPS_PER_ROUND: usize = 250;
const DEFAULT_SEED: u64 = 0x5eed_1a7e_2026;
const DEFAULT_ROUNDS: u64 = 60;

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
            Op::Write(WriteBatch { hard_state, truncate_from: None, entries })
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

/// Not a test on its own: the child process of the crash test.
#[test]
fn crash_child() {
    let (Ok(dir), Ok(seed)) = (std::env::var(CHILD_DIR_ENV), std::env::var(CHILD_SEED_ENV)) else {
        return;
    };
    let seed: u64 = seed.parse().unwrap();
    let depth = pipeline_depth(seed);
    let store = LmdbLogStore::open_dir(dir).unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out).unwrap();
    let mut in_flight = VecDeque::new();
    let mut acked = 0usize;
    for op in generate(seed) {
        let pending = match op {
            Op::Write(batch) => block_on(store.submit(batch)).unwrap(),
            Op::Purge(up_to) => block_on(store.submit_purge(up_to)).unwrap(),
        };
        in_flight.push_back(pending);
        while in_flight.len() >= depth {
            block_on(in_flight.pop_front().unwrap()).unwrap();
            writeln!(out, "ACK {acked}").unwrap();
            out.flush().unwrap();
            acked += 1;
        }
    }
    for pending in in_flight {
        block_on(pending).unwrap();
        writeln!(out, "ACK {acked}").unwrap();
        acked += 1;
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

/// Runs one child, kills it, and returns how many requests it acknowledged.
fn crash_round(dir: &std::path::Path, seed: u64, rng: &mut Rng) -> (usize, bool) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR_ENV, dir)
        .env(CHILD_SEED_ENV, seed.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let message = if let Some(ack) = line.split("ACK ").nth(1) {
                Some(ack.trim().parse::<usize>().unwrap() + 1)
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
    let mut acked = 0;
    let mut finished = false;
    loop {
        let wait = if by_time {
            deadline.saturating_duration_since(Instant::now())
        } else {
            Duration::from_secs(30)
        };
        match rx.recv_timeout(wait) {
            Ok(Some(count)) => acked = count,
            Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                finished = true;
                break;
            }
            Err(mpsc::RecvTimeoutError::Timeout) if by_time => break,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("seed {seed}: the child stalled"),
        }
        if !by_time && acked >= kill_after_acks {
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
    while let Ok(Some(count)) = rx.try_recv() {
        acked = acked.max(count);
    }
    reader.join().unwrap();
    (acked, finished)
}

/// Checks that the store in `dir` holds the state after `j` requests for some `j >= acked`.
fn verify(dir: &std::path::Path, seed: u64, acked: usize) -> usize {
    let store = LmdbLogStore::open_dir(dir)
        .unwrap_or_else(|e| panic!("seed {seed}: reopening after the crash failed: {e}"));
    let on_disk = stored(&store);
    let ops = generate(seed);
    let mut model = Model::default();
    let mut matched = None;
    for (j, op) in std::iter::once(None).chain(ops.iter().map(Some)).enumerate() {
        if let Some(op) = op {
            model.apply(op);
        }
        if j >= acked && model == on_disk {
            matched = Some(j);
            break;
        }
    }
    let Some(j) = matched else {
        panic!(
            "seed {seed}: after {acked} acknowledged requests the store holds a state that is \
             no prefix of the requests: hard state {:?}, purged {:?}, last {:?}",
            on_disk.hard_state,
            on_disk.purged,
            on_disk.last()
        );
    };
    // The recovered store accepts writes again.
    let next = on_disk.last().index + 1;
    let entry =
        Entry { index: next, term: on_disk.last().term.max(1), payload: EntryPayload::Blank };
    block_on(store.write(WriteBatch { entries: vec![entry], ..WriteBatch::default() })).unwrap();
    j
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let seed = std::env::var("RAFT_LMDB_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    let rounds = std::env::var("RAFT_LMDB_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_ROUNDS);
    println!("crash test: seed {seed} (RAFT_LMDB_CRASH_SEED), {rounds} rounds");
    let mut rng = Rng(seed);
    let root = tempfile::tempdir().unwrap();
    let (mut total_acked, mut finished_rounds, mut in_flight_applied) = (0, 0, 0);
    for round in 0..rounds {
        let round_seed = rng.next();
        let dir = root.path().join(format!("round-{round}"));
        let (acked, finished) = crash_round(&dir, round_seed, &mut rng);
        let recovered = verify(&dir, round_seed, acked);
        total_acked += acked;
        finished_rounds += usize::from(finished);
        in_flight_applied += recovered - acked;
        std::fs::remove_dir_all(&dir).unwrap();
    }
    println!(
        "crash test: {rounds} rounds, {total_acked} acknowledged requests all recovered, \
         {in_flight_applied} unacknowledged requests found applied, {finished_rounds} rounds \
         finished before the kill"
    );
}
