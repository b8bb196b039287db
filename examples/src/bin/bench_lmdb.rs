//! `bench-lmdb`: how fast `LmdbLogStore` makes entries durable, against the physical limit of
//! the disk measured in the same run on the same directory.
//!
//! ```text
//! cargo run --release -p examples --bin bench-lmdb -- [--dir DIR] [--seconds S]
//! ```
//!
//! Prints one table: the raw rate of `write + fsync` of 4 KiB blocks, single-entry durable
//! commits per second, durable commits of 64-entry batches (one writer), and durable 100-byte
//! entries per second with 1, 16, 64 and 256 concurrent writers (group commit), with latency
//! percentiles, mean group sizes and the ratios against the targets (single commits >= 40% of
//! the raw fsync rate; a 64-entry commit <= 1.5x a single-entry one; >= 100,000 entries/s with
//! 64 writers). The raw fsyncs, the single-entry and the 64-entry commits are taken in turn,
//! one operation of each per round, so that their ratios compare operations made under the same
//! conditions on a disk whose speed drifts (the 64-writer runs alternate in short slices). The
//! single-entry, 64-entry and 64-writer measurements also run on a second store without the
//! write-ahead file (`LmdbOptions::with_wal_bytes(0)`: every commit an LMDB transaction, two
//! syncs), to show what the file buys in the same run. The concurrent-writer rows also give the writer thread's
//! time per commit (`StoreStats`): the transaction (LMDB's commit within it), answering the
//! callers, waiting for a first request of the next transaction, and lingering for the rest.
//! `--dir` must be on the disk you care about (not a tmpfs); the benchmark works in a fresh
//! sub-directory that it removes at the end.
//!
//! `--groups 1,4,16,64` measures instead the shared environment of many Raft groups
//! (`LmdbEnvironment`): for each group count, `--writers` writers (default 64) spread over the
//! groups (writer `i` appends to group `i % groups`), each waiting for its write before the
//! next; one table of durable entries/s, syncs (commits) per second, entries per sync and KiB
//! the writer thread wrote per sync (`DiskStats::written_bytes`: LMDB's pages and the headroom
//! zeros), the writer thread's transaction time per sync and LMDB's commit within it
//! (`StoreStats`: on a tmpfs, where the commit does not wait for a disk, the transaction time is
//! part of the writer's CPU per commit, which also answers the callers, takes requests from
//! the queue and lingers for more), with a store of its own (`LmdbLogStore::open_dir`) as the
//! first row for comparison.
//!
//! `--io [--commits N]` shows instead where the bytes of a commit go (see `io.rs`): per commit,
//! the bytes written, the headroom zeros among them, LMDB's pages written and its file growth,
//! for one store and for environments of 1 and 64 groups.

#[path = "bench_lmdb/io.rs"]
mod io;

use std::error::Error;
use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use raft_core::{Entry, EntryPayload, LogIndex, LogStore, WriteBatch};
use raft_lmdb::{LmdbEnvironment, LmdbLogStore, LmdbOptions, StoreStats};

type BoxError = Box<dyn Error + Send + Sync>;

const ENTRY_PAYLOAD_BYTES: usize = 100;
const BLOCK: [u8; 4096] = [0xa5; 4096];
/// Slices of the interleaved 64-writer measurements.
const SLICES: u32 = 10;
/// Kinds of operations measured in turn (raw overwrite, raw append, single-entry commit,
/// 64-entry commit, and both commits without the write-ahead file): they share
/// `INTERLEAVED_KINDS` periods.
const INTERLEAVED_KINDS: u32 = 6;
/// Single-entry commits to each store before measuring.
const WARM_UP_COMMITS: usize = 500;
const WRITER_COUNTS: [usize; 4] = [1, 16, 64, 256];
const SINGLE_COMMIT_TARGET: f64 = 0.40;
/// Entries per batch of the one-writer batch measurement.
const BATCH_ENTRIES: u64 = 64;
/// The longest a 64-entry commit may take, in single-entry commits (median against median).
const BATCH_COMMIT_TARGET: f64 = 1.5;
const GROUP_COMMIT_TARGETS: [f64; 2] = [100_000.0, 150_000.0];
const GROUP_COMMIT_TARGET_WRITERS: usize = 64;

struct Args {
    dir: PathBuf,
    seconds: f64,
    /// Group counts of the multi-group table (empty: the default tables).
    groups: Vec<usize>,
    /// Writers of the multi-group table.
    writers: usize,
    /// Measured rounds of the `--io` table (`None`: not that table).
    io_rounds: Option<u64>,
}

/// Measured rounds of the `--io` table by default, and at most.
const DEFAULT_IO_ROUNDS: u64 = 1_000;
const MAX_IO_ROUNDS: u64 = 1_000_000;

/// The most groups or writers the multi-group table takes.
const MAX_GROUPS_OR_WRITERS: usize = 100_000;

fn parse_args() -> Result<Args, BoxError> {
    let mut args = Args {
        dir: PathBuf::from("."),
        seconds: 3.0,
        groups: Vec::new(),
        writers: 64,
        io_rounds: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--dir" => args.dir = it.next().ok_or("--dir needs a path")?.into(),
            "--seconds" => args.seconds = it.next().ok_or("--seconds needs a number")?.parse()?,
            "--groups" => {
                let list = it.next().ok_or("--groups needs a list such as 1,4,16")?;
                args.groups = list.split(',').map(str::parse).collect::<Result<_, _>>()?;
            }
            "--writers" => args.writers = it.next().ok_or("--writers needs a number")?.parse()?,
            "--io" => args.io_rounds = Some(args.io_rounds.unwrap_or(DEFAULT_IO_ROUNDS)),
            "--commits" => {
                args.io_rounds = Some(it.next().ok_or("--commits needs a number")?.parse()?);
            }
            "--help" | "-h" => {
                println!(
                    "usage: bench-lmdb [--dir DIR (default .)] [--seconds S (default 3)] \
                     [--groups N,N,... [--writers W (default 64)]] [--io [--commits N (default \
                     {DEFAULT_IO_ROUNDS})]]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)").into()),
        }
    }
    if args.io_rounds.is_some_and(|n| !(1..=MAX_IO_ROUNDS).contains(&n)) {
        return Err(format!("--commits must be between 1 and {MAX_IO_ROUNDS}").into());
    }
    if !(args.seconds > 0.0 && args.seconds < 600.0) {
        return Err("--seconds must be between 0 and 600".into());
    }
    let in_range = |n: &usize| (1..=MAX_GROUPS_OR_WRITERS).contains(n);
    if !args.groups.iter().all(in_range) || !in_range(&args.writers) {
        return Err(
            format!("groups and writers must be between 1 and {MAX_GROUPS_OR_WRITERS}").into()
        );
    }
    Ok(args)
}

/// One row of the result table.
struct Row {
    what: String,
    rate: f64,
    unit: &'static str,
    latency: Option<Histogram<u64>>,
    note: String,
}

fn main() -> Result<(), BoxError> {
    let args = parse_args()?;
    fs::create_dir_all(&args.dir)?;
    let work = fs::canonicalize(&args.dir)?.join(format!("bench-lmdb-{}", std::process::id()));
    fs::create_dir(&work)?;
    let result = match args.io_rounds {
        Some(rounds) => run_io(&work, rounds),
        None if args.groups.is_empty() => run(&args, &work),
        None => run_groups(&args, &work),
    };
    fs::remove_dir_all(&work)?;
    result
}

fn run(args: &Args, work: &Path) -> Result<(), BoxError> {
    let period = Duration::from_secs_f64(args.seconds);
    println!(
        "bench-lmdb in {} ({}), {:.1} s per measurement",
        work.display(),
        describe_fs(work),
        args.seconds
    );
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let store = Arc::new(LmdbLogStore::open_dir(work.join("store"))?);
    // The same store without the write-ahead file: every commit is an LMDB transaction (data
    // pages, then meta page: two syncs), as before the file existed, for comparison.
    let no_wal = LmdbOptions::default().with_wal_bytes(0);
    let growing = Arc::new(LmdbLogStore::open_dir_with(work.join("no-wal"), no_wal)?);
    let mut overwrite = RawFsync::new(work, "raw-overwrite.bin", false)?;
    let mut append = RawFsync::new(work, "raw-append.bin", true)?;
    let mut rows = Vec::new();
    runtime.block_on(async {
        let mut committer = Committer::new(&store).await?;
        let mut growing_committer = Committer::new(&growing).await?;
        // Warm up: let the data files grow to their working size before measuring.
        for _ in 0..WARM_UP_COMMITS {
            committer.commit(1, &mut Meter::new()?).await?;
            growing_committer.commit(1, &mut Meter::new()?).await?;
        }
        // The disk's speed drifts (other processes write too): take the raw fsyncs and the
        // commits in turn, one operation of each kind per round, so that every ratio compares
        // operations made under the same conditions.
        let (mut single, mut batched, mut batched_growing, mut single_growing) =
            (Meter::new()?, Meter::new()?, Meter::new()?, Meter::new()?);
        let start = Instant::now();
        while start.elapsed() < period * INTERLEAVED_KINDS {
            overwrite.once()?;
            append.once()?;
            committer.commit(1, &mut single).await?;
            committer.commit(BATCH_ENTRIES, &mut batched).await?;
            growing_committer.commit(BATCH_ENTRIES, &mut batched_growing).await?;
            growing_committer.commit(1, &mut single_growing).await?;
        }
        let raw = overwrite.meter.rate().max(append.meter.rate());
        rows.push(overwrite.meter.row("raw 4 KiB overwrite + fsync", "syncs/s", String::new()));
        rows.push(append.meter.row("raw 4 KiB append + fsync", "syncs/s", String::new()));
        let ratio = single.rate() / raw;
        let note = format!(
            "{:.0}% of raw fsync (target >= {:.0}%: {})",
            ratio * 100.0,
            SINGLE_COMMIT_TARGET * 100.0,
            verdict(ratio >= SINGLE_COMMIT_TARGET)
        );
        rows.push(single.row("single-entry durable commits", "commits/s", note));
        let ratio = single_growing.rate() / raw;
        let note = format!("{:.0}% of raw fsync", ratio * 100.0);
        rows.push(single_growing.row("single-entry, no write-ahead file", "commits/s", note));
        let single_p50 = single.latency.value_at_quantile(0.5).max(1) as f64;
        let batch_note = |meter: &Meter| {
            let ratio = meter.latency.value_at_quantile(0.5) as f64 / single_p50;
            format!(
                "{} entries/s; p50 {ratio:.2}x a single-entry commit (target <= {:.1}x: {})",
                thousands(meter.rate() * BATCH_ENTRIES as f64),
                BATCH_COMMIT_TARGET,
                verdict(ratio <= BATCH_COMMIT_TARGET)
            )
        };
        let what = format!("{BATCH_ENTRIES}-entry durable commits");
        rows.push(batched.row(&what, "commits/s", batch_note(&batched)));
        let what = format!("{BATCH_ENTRIES}-entry commits, no write-ahead file");
        rows.push(batched_growing.row(&what, "commits/s", batch_note(&batched_growing)));
        for writers in WRITER_COUNTS {
            // The disk's speed just before, for context.
            let mut probe = RawFsync::new(work, "raw-probe.bin", false)?;
            probe.run(Duration::from_millis(300))?;
            let what = format!("{ENTRY_PAYLOAD_BYTES} B entries, {writers} writers");
            if writers != GROUP_COMMIT_TARGET_WRITERS {
                let mut group = GroupMeter::new()?;
                concurrent_writers(&store, writers, period, &mut group).await?;
                let mut row = group.row(what);
                row.note.push_str(&format!("; raw fsync just before: {:.0}/s", probe.meter.rate()));
                rows.push(row);
                continue;
            }
            // The target: in slices interleaved with the store without the file, and with raw
            // fsyncs, so that all three compare like with like.
            let (mut group, mut group_growing) = (GroupMeter::new()?, GroupMeter::new()?);
            let slice = period / SLICES;
            for _ in 0..SLICES {
                probe.run(slice)?;
                concurrent_writers(&store, writers, slice, &mut group).await?;
                concurrent_writers(&growing, writers, slice, &mut group_growing).await?;
            }
            let mut row = group.row(what.clone());
            row.note.push_str(&format!("; raw fsync in between: {:.0}/s", probe.meter.rate()));
            for target in GROUP_COMMIT_TARGETS {
                row.note.push_str(&format!(
                    "; {:.2}x target {}/s: {}",
                    row.rate / target,
                    thousands(target),
                    verdict(row.rate >= target)
                ));
            }
            rows.push(row);
            rows.push(group_growing.row(format!("{what}, no write-ahead file")));
        }
        Ok::<(), BoxError>(())
    })?;
    drop((store, growing));
    print_table(&rows);
    Ok(())
}

/// The `--io` table (see `io.rs`).
fn run_io(work: &Path, rounds: u64) -> Result<(), BoxError> {
    println!(
        "bench-lmdb --io in {} ({}), {rounds} measured rounds per shape",
        work.display(),
        describe_fs(work)
    );
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(io::run_io(work, rounds))
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}

/// The filesystem holding `path`, from /proc/mounts (Linux); "unknown filesystem" elsewhere.
fn describe_fs(path: &Path) -> String {
    let Ok(mounts) = fs::read_to_string("/proc/mounts") else {
        return "unknown filesystem".into();
    };
    let best = mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            Some((fields.next()?, fields.next()?, fields.next()?))
        })
        .filter(|(_, mount_point, _)| path.starts_with(mount_point))
        .max_by_key(|(_, mount_point, _)| mount_point.len());
    match best {
        Some((device, mount_point, fs_type)) => {
            let warning = if fs_type == "tmpfs" { " -- NOT A DISK, use --dir" } else { "" };
            format!("{fs_type} on {device} mounted at {mount_point}{warning}")
        }
        None => "unknown filesystem".into(),
    }
}

/// Counts operations and their latencies over one or more slices of time.
struct Meter {
    count: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
}

impl Meter {
    fn new() -> Result<Self, BoxError> {
        Ok(Self { count: 0, elapsed: Duration::ZERO, latency: Histogram::new(3)? })
    }

    /// Records one operation that started at `started` and has just ended; its time counts
    /// toward the rate.
    fn record(&mut self, started: Instant) -> Result<(), BoxError> {
        let took = started.elapsed();
        self.latency.record(took.as_micros() as u64)?;
        self.count += 1;
        self.elapsed += took;
        Ok(())
    }

    fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    fn row(&self, what: &str, unit: &'static str, note: String) -> Row {
        Row {
            what: what.into(),
            rate: self.rate(),
            unit,
            latency: Some(self.latency.clone()),
            note,
        }
    }
}

/// Writes 4 KiB blocks and fsyncs after each: in place (the same block rewritten) or appended.
struct RawFsync {
    path: PathBuf,
    file: fs::File,
    append: bool,
    meter: Meter,
}

impl RawFsync {
    fn new(dir: &Path, name: &str, append: bool) -> Result<Self, BoxError> {
        let path = dir.join(name);
        let mut file = OpenOptions::new().create(true).write(true).truncate(true).open(&path)?;
        file.write_all(&BLOCK)?;
        file.sync_all()?;
        Ok(Self { path, file, append, meter: Meter::new()? })
    }

    fn once(&mut self) -> Result<(), BoxError> {
        let t0 = Instant::now();
        if !self.append {
            self.file.seek(SeekFrom::Start(0))?;
        }
        self.file.write_all(&BLOCK)?;
        self.file.sync_all()?;
        self.meter.record(t0)
    }

    fn run(&mut self, period: Duration) -> Result<(), BoxError> {
        let start = Instant::now();
        while start.elapsed() < period {
            self.once()?;
        }
        Ok(())
    }
}

impl Drop for RawFsync {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn entry(index: LogIndex) -> Entry {
    let payload = Bytes::from(vec![(index % 251) as u8; ENTRY_PAYLOAD_BYTES]);
    Entry { index, term: 1, payload: EntryPayload::Command(payload) }
}

fn batch(index: LogIndex) -> WriteBatch {
    batch_of(index, 1)
}

/// `len` entries from `first` on.
fn batch_of(first: LogIndex, len: u64) -> WriteBatch {
    WriteBatch { entries: (first..first + len).map(entry).collect(), ..WriteBatch::default() }
}

/// One writer appending to a store, each write awaited before the next.
struct Committer<'a> {
    store: &'a LmdbLogStore,
    next: LogIndex,
}

impl<'a> Committer<'a> {
    async fn new(store: &'a LmdbLogStore) -> Result<Self, BoxError> {
        Ok(Self { store, next: store.open().await?.last.index + 1 })
    }

    /// Appends `len` entries in one durable write.
    async fn commit(&mut self, len: u64, meter: &mut Meter) -> Result<(), BoxError> {
        let batch = batch_of(self.next, len);
        let t0 = Instant::now();
        self.store.write(batch).await?;
        meter.record(t0)?;
        self.next += len;
        Ok(())
    }
}

/// Durable entries of concurrent writers over one or more slices of time, with the writer
/// thread's commit counters.
struct GroupMeter {
    meter: Meter,
    commits: u64,
    /// Of `commits`, frames of the write-ahead file (one sync each).
    wal_commits: u64,
    /// LMDB transactions that checkpointed the write-ahead file's entries.
    checkpoints: u64,
    requests: u64,
    /// Bytes the writer thread wrote (LMDB's pages and meta pages, headroom zeros).
    written_bytes: u64,
    /// The writer thread's time over the measurement (`StoreStats`'s timings).
    writer: WriterTime,
}

/// Microseconds of the writer thread, summed over commits, and its lingers (see `StoreStats`).
#[derive(Default)]
struct WriterTime {
    transaction_us: u64,
    sync_us: u64,
    answer_us: u64,
    linger_us: u64,
    lingers: u64,
    linger_timeouts: u64,
}

impl WriterTime {
    /// Adds the writer's work between two snapshots. The answering time of the last commit
    /// before `after` may be added after `after` was taken (its callers are woken before it
    /// is added), and then counts in the next measurement: at most one commit's answering.
    fn add_difference(&mut self, before: &StoreStats, after: &StoreStats) {
        self.transaction_us += after.transaction_us - before.transaction_us;
        self.sync_us += after.sync_us - before.sync_us;
        self.answer_us += after.answer_us - before.answer_us;
        self.linger_us += after.linger_us - before.linger_us;
        self.lingers += after.lingers - before.lingers;
        self.linger_timeouts += after.linger_timeouts - before.linger_timeouts;
    }
}

impl GroupMeter {
    fn new() -> Result<Self, BoxError> {
        Ok(Self {
            meter: Meter::new()?,
            commits: 0,
            wal_commits: 0,
            checkpoints: 0,
            requests: 0,
            written_bytes: 0,
            writer: WriterTime::default(),
        })
    }

    fn row(&self, what: String) -> Row {
        let seconds = self.meter.elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
        let commits = self.commits.max(1) as f64;
        let group = self.requests as f64 / commits;
        let w = &self.writer;
        // The writer's cycle per commit: the transaction (its sync included), answering, then
        // waiting for the first request of the next one, then lingering for the rest.
        let per_commit = |us: u64| us as f64 / commits;
        let cycle = seconds * 1e6 / commits;
        let first = cycle - per_commit(w.transaction_us + w.answer_us + w.linger_us);
        let note = format!(
            concat!(
                "{:.0} commits/s ({} write-ahead frames, {} checkpoints), mean group {:.1}; ",
                "writer per commit (us): transaction ",
                "{:.0} (LMDB commit {:.0}), answer {:.1}, wait for a first request {:.0}, ",
                "linger {:.0} ({:.0}% of commits lingered, {:.0}% of lingers timed out)"
            ),
            self.commits as f64 / seconds,
            self.wal_commits,
            self.checkpoints,
            group,
            per_commit(w.transaction_us),
            per_commit(w.sync_us),
            per_commit(w.answer_us),
            first,
            per_commit(w.linger_us),
            w.lingers as f64 * 100.0 / commits,
            w.linger_timeouts as f64 * 100.0 / w.lingers.max(1) as f64,
        );
        let mut row = self.meter.row("", "entries/s", note);
        row.what = what;
        row
    }
}

/// `writers` tasks each appending one entry at a time and waiting until it is durable, for
/// `period`. Indexes are handed out in submission order (under a lock held only while
/// queueing), so the log stays contiguous while many writes are in flight.
async fn concurrent_writers(
    store: &Arc<LmdbLogStore>,
    writers: usize,
    period: Duration,
    meter: &mut GroupMeter,
) -> Result<(), BoxError> {
    spread_writers(std::slice::from_ref(store), writers, period, meter).await
}

/// [`concurrent_writers`] over several stores of one environment: writer `i` appends to store
/// `i % stores.len()`. The commit counters are the environment's.
async fn spread_writers(
    stores: &[Arc<LmdbLogStore>],
    writers: usize,
    period: Duration,
    meter: &mut GroupMeter,
) -> Result<(), BoxError> {
    let mut next = Vec::with_capacity(stores.len());
    for store in stores {
        next.push(Arc::new(tokio::sync::Mutex::new(store.open().await?.last.index + 1)));
    }
    let before = stores[0].stats();
    let written_before = stores[0].disk_stats()?.written_bytes;
    let start = Instant::now();
    let deadline = start + period;
    let tasks: Vec<_> = (0..writers)
        .map(|writer| {
            let i = writer % stores.len();
            let (store, next) = (Arc::clone(&stores[i]), Arc::clone(&next[i]));
            tokio::spawn(async move {
                let mut latency = Histogram::<u64>::new(3)?;
                let mut count = 0u64;
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    let pending = {
                        let mut index = next.lock().await;
                        let pending = store.submit(batch(*index)).await?;
                        *index += 1;
                        pending
                    };
                    pending.await?;
                    latency.record(t0.elapsed().as_micros() as u64)?;
                    count += 1;
                }
                Ok::<_, BoxError>((count, latency))
            })
        })
        .collect();
    for task in tasks {
        let (count, histogram) = task.await??;
        meter.meter.count += count;
        meter.meter.latency.add(histogram)?;
    }
    meter.meter.elapsed += start.elapsed();
    let after = stores[0].stats();
    if let (Some(before), Some(after)) = (written_before, stores[0].disk_stats()?.written_bytes) {
        meter.written_bytes += after - before;
    }
    meter.commits += after.commits - before.commits;
    meter.wal_commits += after.wal_commits - before.wal_commits;
    meter.checkpoints += after.checkpoints - before.checkpoints;
    meter.requests += after.requests - before.requests;
    meter.writer.add_difference(&before, &after);
    Ok(())
}

/// The multi-group table: `args.writers` writers spread over each group count of
/// `args.groups`, one environment per count, after a store of its own as the baseline.
fn run_groups(args: &Args, work: &Path) -> Result<(), BoxError> {
    let period = Duration::from_secs_f64(args.seconds);
    println!(
        "bench-lmdb --groups in {} ({}), {} writers, {:.1} s per measurement",
        work.display(),
        describe_fs(work),
        args.writers,
        args.seconds
    );
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut rows = Vec::new();
    runtime.block_on(async {
        let single = Arc::new(LmdbLogStore::open_dir(work.join("single"))?);
        let mut meter = GroupMeter::new()?;
        spread_writers(&[Arc::clone(&single)], args.writers, period / 4, &mut GroupMeter::new()?)
            .await?;
        spread_writers(&[single], args.writers, period, &mut meter).await?;
        rows.push(("store of its own".to_string(), meter));
        for &groups in &args.groups {
            let env = LmdbEnvironment::open(work.join(format!("groups-{groups}")))?;
            let stores = (0..groups as u64)
                .map(|group| env.log_store(group).map(Arc::new))
                .collect::<Result<Vec<_>, _>>()?;
            let mut meter = GroupMeter::new()?;
            // Warm up (data file, map, headroom), then measure.
            spread_writers(&stores, args.writers, period / 4, &mut GroupMeter::new()?).await?;
            spread_writers(&stores, args.writers, period, &mut meter).await?;
            rows.push((format!("{groups} groups, one environment"), meter));
        }
        Ok::<(), BoxError>(())
    })?;
    println!();
    // The writer thread's time per commit (`StoreStats`): the whole transaction, and LMDB's
    // commit within it (its page writes and syncs); the rest is building the transaction.
    println!(
        "| {:<28} | {:>14} | {:>10} | {:>15} | {:>14} | {:>9} | {:>9} | {:>12} | {:>12} |",
        "stores",
        "entries/s",
        "syncs/s",
        "entries / sync",
        "KiB / sync",
        "p50",
        "p99",
        "txn us/sync",
        "LMDB commit"
    );
    println!(
        "|{:-<30}|{:->16}|{:->12}|{:->17}|{:->16}|{:->11}|{:->11}|{:->14}|{:->14}|",
        "", "", "", "", "", "", "", "", ""
    );
    for (what, meter) in rows {
        let seconds = meter.meter.elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
        let latency = &meter.meter.latency;
        let commits = meter.commits.max(1) as f64;
        println!(
            "| {:<28} | {:>14} | {:>10} | {:>15.1} | {:>14.1} | {:>9} | {:>9} | {:>12.0} | {:>12.0} |",
            what,
            thousands(meter.meter.rate()),
            thousands(meter.commits as f64 / seconds),
            meter.requests as f64 / commits,
            meter.written_bytes as f64 / 1024.0 / commits,
            millis(latency.value_at_quantile(0.50)),
            millis(latency.value_at_quantile(0.99)),
            meter.writer.transaction_us as f64 / commits,
            meter.writer.sync_us as f64 / commits,
        );
    }
    Ok(())
}

fn print_table(rows: &[Row]) {
    println!();
    println!("| {:<40} | {:>20} | {:>9} | {:>9} | notes", "measurement", "rate", "p50", "p99");
    println!("|{:-<42}|{:->22}|{:->11}|{:->11}|------", "", "", "", "");
    for row in rows {
        let (p50, p99) = match &row.latency {
            Some(h) => (millis(h.value_at_quantile(0.50)), millis(h.value_at_quantile(0.99))),
            None => (String::new(), String::new()),
        };
        let rate = format!("{} {}", thousands(row.rate), row.unit);
        println!("| {:<40} | {:>20} | {:>9} | {:>9} | {}", row.what, rate, p50, p99, row.note);
    }
}

fn millis(micros: u64) -> String {
    format!("{:.2} ms", micros as f64 / 1000.0)
}

fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
