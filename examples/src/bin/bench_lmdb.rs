//! `bench-lmdb`: how fast `LmdbLogStore` makes entries durable, against the physical limit of
//! the disk measured in the same run on the same directory.
//!
//! ```text
//! cargo run --release -p examples --bin bench-lmdb -- [--dir DIR] [--seconds S]
//! ```
//!
//! Prints one table: the raw rate of `write + fsync` of 4 KiB blocks, single-entry durable
//! commits per second, and durable 100-byte entries per second with 1, 16, 64 and 256
//! concurrent writers (group commit), with latency percentiles, mean group sizes and the ratios
//! against the targets (single commits >= 40% of the raw fsync rate; >= 150,000 entries/s with
//! 64 writers). `--dir` must be on the disk you care about (not a tmpfs); the benchmark works in
//! a fresh sub-directory that it removes at the end.

use std::error::Error;
use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use raft_core::{Entry, EntryPayload, LogIndex, LogStore, WriteBatch};
use raft_lmdb::LmdbLogStore;

type BoxError = Box<dyn Error + Send + Sync>;

const ENTRY_PAYLOAD_BYTES: usize = 100;
const BLOCK: [u8; 4096] = [0xa5; 4096];
/// Slices of the interleaved raw-fsync / single-commit measurement.
const SLICES: u32 = 10;
const WRITER_COUNTS: [usize; 4] = [1, 16, 64, 256];
const SINGLE_COMMIT_TARGET: f64 = 0.40;
const GROUP_COMMIT_TARGET: f64 = 150_000.0;
const GROUP_COMMIT_TARGET_WRITERS: usize = 64;

struct Args {
    dir: PathBuf,
    seconds: f64,
}

fn parse_args() -> Result<Args, BoxError> {
    let mut args = Args { dir: PathBuf::from("."), seconds: 3.0 };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--dir" => args.dir = it.next().ok_or("--dir needs a path")?.into(),
            "--seconds" => args.seconds = it.next().ok_or("--seconds needs a number")?.parse()?,
            "--help" | "-h" => {
                println!("usage: bench-lmdb [--dir DIR (default .)] [--seconds S (default 3)]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)").into()),
        }
    }
    if !(args.seconds > 0.0 && args.seconds < 600.0) {
        return Err("--seconds must be between 0 and 600".into());
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
    let result = run(&args, &work);
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
    let mut overwrite = RawFsync::new(work, "raw-overwrite.bin", false)?;
    let mut append = RawFsync::new(work, "raw-append.bin", true)?;
    let mut rows = Vec::new();
    runtime.block_on(async {
        // Warm up: let the data file grow to its working size before measuring.
        let mut warm_up = Meter::new()?;
        single_commits(&store, Duration::from_millis(500), &mut warm_up).await?;
        // The disk's speed drifts (other processes write too): interleave short slices of the
        // raw fsync loops and of the store so that their ratio compares like with like.
        let mut single = Meter::new()?;
        let slice = period / SLICES;
        for _ in 0..SLICES {
            overwrite.run(slice)?;
            append.run(slice)?;
            single_commits(&store, slice, &mut single).await?;
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
        for writers in WRITER_COUNTS {
            // The disk's speed just before, for context.
            let mut probe = RawFsync::new(work, "raw-probe.bin", false)?;
            probe.run(Duration::from_millis(300))?;
            let mut row = concurrent_writers(&store, writers, period).await?;
            row.note.push_str(&format!("; raw fsync just before: {:.0}/s", probe.meter.rate()));
            if writers == GROUP_COMMIT_TARGET_WRITERS {
                row.note.push_str(&format!(
                    "; {:.2}x target {:.0}/s: {}",
                    row.rate / GROUP_COMMIT_TARGET,
                    GROUP_COMMIT_TARGET,
                    verdict(row.rate >= GROUP_COMMIT_TARGET)
                ));
            }
            rows.push(row);
        }
        Ok::<(), BoxError>(())
    })?;
    drop(store);
    print_table(&rows);
    Ok(())
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

    fn record(&mut self, started: Instant) -> Result<(), BoxError> {
        self.latency.record(started.elapsed().as_micros() as u64)?;
        self.count += 1;
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

    fn run(&mut self, period: Duration) -> Result<(), BoxError> {
        let start = Instant::now();
        while start.elapsed() < period {
            let t0 = Instant::now();
            if !self.append {
                self.file.seek(SeekFrom::Start(0))?;
            }
            self.file.write_all(&BLOCK)?;
            self.file.sync_all()?;
            self.meter.record(t0)?;
        }
        self.meter.elapsed += start.elapsed();
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
    WriteBatch { entries: vec![entry(index)], ..WriteBatch::default() }
}

/// One writer, one entry per durable write, each awaited before the next.
async fn single_commits(
    store: &LmdbLogStore,
    period: Duration,
    meter: &mut Meter,
) -> Result<(), BoxError> {
    let mut next = store.open().await?.last.index + 1;
    let start = Instant::now();
    while start.elapsed() < period {
        let t0 = Instant::now();
        store.write(batch(next)).await?;
        meter.record(t0)?;
        next += 1;
    }
    meter.elapsed += start.elapsed();
    Ok(())
}

/// `writers` tasks each appending one entry at a time and waiting until it is durable. Indexes
/// are handed out in submission order (under a lock held only while queueing), so the log stays
/// contiguous while many writes are in flight.
async fn concurrent_writers(
    store: &Arc<LmdbLogStore>,
    writers: usize,
    period: Duration,
) -> Result<Row, BoxError> {
    let next = Arc::new(tokio::sync::Mutex::new(store.open().await?.last.index + 1));
    let before = store.stats();
    let start = Instant::now();
    let deadline = start + period;
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let (store, next) = (Arc::clone(store), Arc::clone(&next));
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
    let mut latency = Histogram::<u64>::new(3)?;
    let mut total = 0u64;
    for task in tasks {
        let (count, histogram) = task.await??;
        total += count;
        latency.add(histogram)?;
    }
    let rate = total as f64 / start.elapsed().as_secs_f64();
    let after = store.stats();
    let commits = after.commits - before.commits;
    let group = (after.requests - before.requests) as f64 / commits.max(1) as f64;
    let note = format!(
        "{:.0} commits/s, mean group {group:.1}",
        commits as f64 / start.elapsed().as_secs_f64()
    );
    let what = format!("{ENTRY_PAYLOAD_BYTES} B entries, {writers} concurrent writers");
    Ok(Row { what, rate, unit: "entries/s", latency: Some(latency), note })
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
