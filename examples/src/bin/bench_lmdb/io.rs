//! `bench-lmdb --io`: where the bytes of a synced commit go.
//!
//! Shapes of commit: one store (`open_dir`) with 1 or 64 entries per commit, an environment
//! of 1 group (1 or 64 entries in one write, or 64 writes of one entry) or of 64 groups with
//! one entry each, one store with log compaction, and a raw
//! 4 KiB overwrite + `fdatasync` for scale. Each shape has its own directory; after warm-up
//! rounds, the measured rounds take the shapes in turn (one round of each per turn, so that
//! they share the disk's moods), a round being one write per store, submitted together and
//! awaited (one transaction). Per commit it prints:
//!
//! * the bytes the writer thread handed to the OS (`DiskStats::written_bytes`: LMDB's pages
//!   and meta page, and the headroom zeros), the zeros alone, and LMDB's pages written (the
//!   rest, in pages): what the commit really writes;
//! * `write_bytes` of `/proc/self/io` over the same rounds, for comparison: on kernels whose
//!   page cache uses large folios (ext4 since Linux 6.16) it counts the whole folio a write
//!   dirties (up to 2 MiB) and says little about the disk;
//! * how far LMDB's last page moved, the free and tree pages at the end, and the p50 of a round.
//!
//! Linux only (`/proc`).

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::Histogram;
use raft_core::{LogIndex, LogStore};
use raft_lmdb::{DiskStats, LmdbEnvironment, LmdbLogStore, StoreStats};

use super::{batch_of, millis, BoxError, BLOCK};

/// Rounds of each shape before measuring: the files, maps and headroom reach working size.
const WARM_UP_ROUNDS: u64 = 300;
/// Compaction as a Raft node does it by default: every this many entries, purge all but the
/// last [`KEEP_ENTRIES`].
const COMPACT_EVERY: u64 = 10_000;
const KEEP_ENTRIES: u64 = 1_000;
/// The raw file's size: overwrites go all over it.
const RAW_FILE_BYTES: u64 = 64 << 20;
/// Blocks per write when filling the raw file (1 MiB).
const RAW_SLICE_BLOCKS: usize = 256;

/// One shape of commit.
#[derive(Clone, Copy)]
enum Shape {
    /// 4 KiB `pwrite` + `fdatasync` at spread offsets of a file written beforehand.
    Raw,
    /// `requests` writes of `entries` entries each to a store of its own (`groups: None`) or
    /// to each of `groups` groups of one environment per round; `compact`: purge as a
    /// compacting node does.
    Log { groups: Option<u64>, requests: u64, entries: u64, compact: bool },
}

/// A shape of log writes.
const fn log(groups: Option<u64>, requests: u64, entries: u64, compact: bool) -> Shape {
    Shape::Log { groups, requests, entries, compact }
}

const SHAPES: [(&str, Shape); 8] = [
    ("raw 4 KiB pwrite + fdatasync", Shape::Raw),
    ("store, 1 entry", log(None, 1, 1, false)),
    ("store, 64 entries", log(None, 1, 64, false)),
    ("store, 64 entries, compacting", log(None, 1, 64, true)),
    ("1 group, 1 entry", log(Some(1), 1, 1, false)),
    ("1 group, 64 entries", log(Some(1), 1, 64, false)),
    ("1 group, 64 writes x 1 entry", log(Some(1), 64, 1, false)),
    ("64 groups x 1 entry", log(Some(64), 1, 1, false)),
];

/// `write_bytes` of `/proc/self/io`: page-cache bytes this process dirtied.
fn process_write_bytes() -> Result<u64, BoxError> {
    let text = fs::read_to_string("/proc/self/io")?;
    let value = text
        .lines()
        .find_map(|line| line.strip_prefix("write_bytes:"))
        .ok_or("/proc/self/io has no write_bytes")?;
    Ok(value.trim().parse()?)
}

/// What one shape writes to.
enum Target {
    Raw { file: File, next: u64, written: u64 },
    Log(Stores),
}

impl Target {
    async fn open(dir: &Path, shape: Shape) -> Result<Target, BoxError> {
        Ok(match shape {
            Shape::Raw => {
                fs::create_dir_all(dir)?;
                let file = OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .read(true)
                    .write(true)
                    .open(dir.join("raw.bin"))?;
                // In 1 MiB slices, as the headroom writes its zeros: the page cache may then
                // hold the file in large folios, which `write_bytes` counts whole.
                let slice = BLOCK.repeat(RAW_SLICE_BLOCKS);
                for at in (0..RAW_FILE_BYTES).step_by(slice.len()) {
                    file.write_all_at(&slice, at)?;
                }
                file.sync_all()?;
                Target::Raw { file, next: 0, written: 0 }
            }
            Shape::Log { groups, .. } => Target::Log(Stores::open(dir, groups).await?),
        })
    }

    async fn round(&mut self, shape: Shape) -> Result<(), BoxError> {
        match (self, shape) {
            (Target::Raw { file, next, written }, _) => {
                // Steps of 7,919 blocks: every write lands in another large folio.
                *next = (*next + 7_919 * BLOCK.len() as u64) % RAW_FILE_BYTES;
                file.write_all_at(&BLOCK, *next)?;
                file.sync_data()?;
                *written += BLOCK.len() as u64;
                Ok(())
            }
            (Target::Log(stores), Shape::Log { requests, entries, compact, .. }) => {
                stores.round(requests, entries, compact).await
            }
            (Target::Log(_), Shape::Raw) => Err("a log target given a raw shape".into()),
        }
    }

    /// Commits so far, bytes written so far, headroom zeros so far, and the data file's use.
    fn counters(&self) -> Result<(u64, u64, u64, Option<DiskStats>), BoxError> {
        match self {
            Target::Raw { written, .. } => Ok((written / BLOCK.len() as u64, *written, 0, None)),
            Target::Log(stores) => {
                let (stats, disk) = (stores.stats(), stores.disk_stats()?);
                let written =
                    disk.written_bytes.ok_or("the writer's /proc counters are unknown")?;
                Ok((stats.commits, written, stats.headroom_bytes, Some(disk)))
            }
        }
    }
}

/// The stores of one shape and the next index of each.
struct Stores {
    stores: Vec<Arc<LmdbLogStore>>,
    next: Vec<LogIndex>,
    /// Keeps the environment open (for its counters), if any.
    env: Option<LmdbEnvironment>,
}

impl Stores {
    async fn open(dir: &Path, groups: Option<u64>) -> Result<Stores, BoxError> {
        let (stores, env) = match groups {
            None => (vec![Arc::new(LmdbLogStore::open_dir(dir)?)], None),
            Some(groups) => {
                let env = LmdbEnvironment::open(dir)?;
                let stores = (1..=groups)
                    .map(|group| env.log_store(group).map(Arc::new))
                    .collect::<Result<Vec<_>, _>>()?;
                (stores, Some(env))
            }
        };
        let mut next = Vec::with_capacity(stores.len());
        for store in &stores {
            next.push(store.open().await?.last.index + 1);
        }
        Ok(Stores { stores, next, env })
    }

    /// One round: `requests` writes of `entries` entries to every store, all submitted before
    /// any is awaited.
    async fn round(&mut self, requests: u64, entries: u64, compact: bool) -> Result<(), BoxError> {
        let mut pending = Vec::with_capacity(self.stores.len());
        for _ in 0..requests {
            for (store, next) in self.stores.iter().zip(&mut self.next) {
                pending.push(store.submit(batch_of(*next, entries)).await?);
                *next += entries;
            }
        }
        for write in pending {
            write.await?;
        }
        if compact {
            for (store, &next) in self.stores.iter().zip(&self.next) {
                let last = next - 1;
                if last % COMPACT_EVERY < requests * entries && last > KEEP_ENTRIES {
                    store.purge(last - KEEP_ENTRIES).await?;
                }
            }
        }
        Ok(())
    }

    fn stats(&self) -> StoreStats {
        match &self.env {
            Some(env) => env.stats(),
            None => self.stores[0].stats(),
        }
    }

    fn disk_stats(&self) -> Result<DiskStats, BoxError> {
        Ok(match &self.env {
            Some(env) => env.disk_stats()?,
            None => self.stores[0].disk_stats()?,
        })
    }
}

/// One shape's target and what its measured rounds accumulated.
struct Measured {
    what: &'static str,
    shape: Shape,
    target: Target,
    start: (u64, u64, u64, Option<DiskStats>),
    write_bytes: u64,
    latency: Histogram<u64>,
}

/// Runs every shape in its own directory under `work`, `rounds` measured rounds each taken in
/// turn, and prints the table.
pub(crate) async fn run_io(work: &Path, rounds: u64) -> Result<(), BoxError> {
    process_write_bytes()?;
    let mut measured = Vec::with_capacity(SHAPES.len());
    for (i, &(what, shape)) in SHAPES.iter().enumerate() {
        let mut target = Target::open(&work.join(format!("io-{i}")), shape).await?;
        for _ in 0..WARM_UP_ROUNDS {
            target.round(shape).await?;
        }
        let start = target.counters()?;
        measured.push(Measured {
            what,
            shape,
            target,
            start,
            write_bytes: 0,
            latency: Histogram::new(3)?,
        });
    }
    for _ in 0..rounds {
        for m in &mut measured {
            let (before, t0) = (process_write_bytes()?, Instant::now());
            m.target.round(m.shape).await?;
            m.latency.record(t0.elapsed().as_micros() as u64)?;
            m.write_bytes += process_write_bytes()? - before;
        }
    }
    print_io_table(&measured, rounds)
}

fn print_io_table(measured: &[Measured], rounds: u64) -> Result<(), BoxError> {
    println!();
    println!(
        "| {:<30} | {:>7} | {:>7} | {:>11} | {:>9} | {:>10} | {:>11} | {:>9} | {:>7} | {:>7} | {:>8} | {:>8} |",
        "per commit",
        "commits",
        "entries",
        "written KiB",
        "zeros KiB",
        "LMDB pages",
        "write_bytes",
        "growth pg",
        "free pg",
        "tree pg",
        "p50",
        "p99"
    );
    println!(
        "|{:-<32}|{:->9}|{:->9}|{:->13}|{:->11}|{:->12}|{:->13}|{:->11}|{:->9}|{:->9}|{:->10}|{:->10}|",
        "", "", "", "", "", "", "", "", "", "", "", ""
    );
    for m in measured {
        let (commits0, written0, zeros0, disk0) = m.start;
        let (commits1, written1, zeros1, disk1) = m.target.counters()?;
        let commits = (commits1 - commits0).max(1);
        let per_commit = |bytes: u64| bytes as f64 / commits as f64;
        let (written, zeros) = (written1 - written0, zeros1 - zeros0);
        let entries = match m.shape {
            Shape::Raw => 0,
            Shape::Log { groups, requests, entries, .. } => {
                rounds * requests * entries * groups.unwrap_or(1)
            }
        };
        let (pages, growth, free, tree) = match (disk0, disk1) {
            (Some(d0), Some(d1)) => (
                format!("{:.1}", per_commit(written.saturating_sub(zeros)) / d1.page_size as f64),
                format!("{:.2}", (d1.used_pages as f64 - d0.used_pages as f64) / commits as f64),
                d1.free_pages().to_string(),
                d1.tree_pages.to_string(),
            ),
            _ => Default::default(),
        };
        println!(
            "| {:<30} | {:>7} | {:>7.1} | {:>11.1} | {:>9.1} | {:>10} | {:>11.1} | {:>9} | {:>7} | {:>7} | {:>8} | {:>8} |",
            m.what,
            commits,
            entries as f64 / commits as f64,
            per_commit(written) / 1024.0,
            per_commit(zeros) / 1024.0,
            pages,
            per_commit(m.write_bytes) / 1024.0,
            growth,
            free,
            tree,
            millis(m.latency.value_at_quantile(0.5)),
            millis(m.latency.value_at_quantile(0.99)),
        );
    }
    println!(
        "\nwritten: bytes the writer thread passed to write calls (LMDB's pages and meta page, \
         headroom zeros); zeros: the headroom's part; LMDB pages: the rest, in pages; \
         write_bytes: /proc/self/io's page-cache bytes dirtied (whole large folios, not what \
         reaches the disk); growth: LMDB's last page, pages per commit; free/tree: pages at \
         the end; p50, p99: one round (all of a shape's writes; in an environment, a round \
         that moves the journal is among the slow ones)."
    );
    Ok(())
}
