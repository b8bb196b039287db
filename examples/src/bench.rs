//! Shared pieces of the benchmark programs: argument parsing, latency recording, tables.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Common benchmark arguments: `--seconds N` per level, `--clients a,b,c`, `--workers N`
/// (runtime worker threads, default: the number of CPUs) and `--writes-only`.
#[derive(Debug, Clone)]
pub struct Args {
    /// Measured seconds per level.
    pub seconds: u64,
    /// Concurrency levels.
    pub clients: Vec<usize>,
    /// Worker threads of the runtime.
    pub workers: usize,
    /// Skip what the program measures besides writes (reads).
    pub writes_only: bool,
}

impl Args {
    /// Parses the arguments, with defaults.
    pub fn parse(
        args: impl Iterator<Item = String>,
        seconds: u64,
        clients: &[usize],
    ) -> Result<Self, String> {
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut parsed = Self { seconds, clients: clients.to_vec(), workers, writes_only: false };
        let mut args = args.peekable();
        while let Some(arg) = args.next() {
            let mut value = || args.next().ok_or(format!("{arg} needs a value"));
            match arg.as_str() {
                "--seconds" => {
                    parsed.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?
                }
                "--clients" => {
                    parsed.clients = value()?
                        .split(',')
                        .map(|c| c.trim().parse::<usize>().map_err(|e| format!("--clients: {e}")))
                        .collect::<Result<_, _>>()?
                }
                "--workers" => {
                    parsed.workers = value()?.parse().map_err(|e| format!("--workers: {e}"))?;
                    if parsed.workers == 0 {
                        return Err("--workers must be at least 1".into());
                    }
                }
                "--writes-only" => parsed.writes_only = true,
                other => {
                    return Err(format!(
                        "unknown argument {other} (expected --seconds N, --clients a,b,c, \
                         --workers N, --writes-only)"
                    ))
                }
            }
        }
        Ok(parsed)
    }
}

/// CPU time used so far by this process (every thread, user and system), from
/// `/proc/self/stat`; `None` where that is not available. Resolution: 10 ms (`USER_HZ`).
pub fn process_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may contain spaces):
    // state is field 3, utime field 14 and stime field 15, in clock ticks of 1/100 s.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// Raw latency samples of one client (cheap to create per task); merge them into a
/// [`LatencyRecorder`] at the end.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    micros: Vec<u32>,
}

impl Samples {
    /// Records one latency.
    pub fn record(&mut self, latency: Duration) {
        self.micros.push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
    }
}

/// Collects latencies in microseconds.
#[derive(Debug, Clone)]
pub struct LatencyRecorder {
    histogram: Histogram<u64>,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyRecorder {
    /// An empty recorder (1 µs to 100 s, 3 significant digits).
    pub fn new() -> Self {
        #[allow(clippy::expect_used)] // constant bounds that hdrhistogram accepts: cannot fail
        let histogram =
            Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid histogram bounds");
        Self { histogram }
    }

    /// Records one latency.
    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).clamp(1, 100_000_000);
        let _ = self.histogram.record(micros);
    }

    /// Adds raw samples.
    pub fn add_samples(&mut self, samples: &Samples) {
        for &us in &samples.micros {
            let _ = self.histogram.record(u64::from(us).clamp(1, 100_000_000));
        }
    }

    /// Adds another recorder's samples.
    pub fn merge(&mut self, other: &LatencyRecorder) {
        let _ = self.histogram.add(&other.histogram);
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// A table row for samples collected over `elapsed`.
    pub fn row(&self, label: String, elapsed: Duration) -> Row {
        Row {
            label,
            ops: self.count(),
            per_second: self.count() as f64 / elapsed.as_secs_f64(),
            p50_us: self.histogram.value_at_quantile(0.50),
            p99_us: self.histogram.value_at_quantile(0.99),
            reference: None,
        }
    }
}

/// One line of a benchmark table.
#[derive(Debug, Clone)]
pub struct Row {
    /// What varies (clients, writers...).
    pub label: String,
    /// Operations completed in the measured window.
    pub ops: u64,
    /// Operations per second.
    pub per_second: f64,
    /// Median latency, µs.
    pub p50_us: u64,
    /// 99th percentile latency, µs.
    pub p99_us: u64,
    /// A reference throughput to compare with, if any.
    pub reference: Option<f64>,
}

/// Prints rows as a table; when any row has a reference, with a column for it (a figure measured
/// in the same run, named `reference_name`) and the ratio against it.
pub fn print_table(title: &str, label: &str, rows: &[Row], reference_name: &str) {
    let with_reference = rows.iter().any(|row| row.reference.is_some());
    println!("\n{title}");
    let header = format!("{:>10} | {:>12} | {:>10} | {:>10}", label, "ops/s", "p50", "p99");
    if with_reference {
        println!("{header} | {reference_name:>14} | {:>8}", "ratio");
        println!("{}", "-".repeat(80));
    } else {
        println!("{header}");
        println!("{}", "-".repeat(header.len()));
    }
    for row in rows {
        let line = format!(
            "{:>10} | {:>12.0} | {:>10} | {:>10}",
            row.label,
            row.per_second,
            format_us(row.p50_us),
            format_us(row.p99_us)
        );
        if !with_reference {
            println!("{line}");
            continue;
        }
        let (reference, ratio) = match row.reference {
            Some(r) => (format!("{r:.0}"), format!("{:.2}x", row.per_second / r)),
            None => ("-".into(), "-".into()),
        };
        println!("{line} | {reference:>14} | {ratio:>8}");
    }
}

/// Formats microseconds as µs or ms.
pub fn format_us(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else {
        format!("{us} µs")
    }
}
