//! The control protocol between `bench-multi` and its node processes: one line of text per
//! message, parent to child on the child's stdin, child to parent on its stdout.
//!
//! Parent to child: `peers ID=ADDR,ID=ADDR,...` (once, after the child said `addr`), then any
//! number of `run CLIENTS WARMUP_MS MEASURE_MS` (each answered by one `result`), then `quit`.
//! The end of stdin before `quit` means the parent is gone: the child exits at once.
//!
//! Child to parent: `addr ADDR` (its QUIC endpoint), `ready` (every group elected, leaders
//! where they belong), `result ...` (a [`Report`]), `error MESSAGE` (then it exits).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;

use raft_core::NodeId;

/// The most latency samples one report carries (a bound on the line's length: beyond, the
/// samples are every k-th one, which keeps the percentiles).
pub(crate) const MAX_SAMPLES: usize = 200_000;

/// A command of the parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    /// The QUIC addresses of every node (the child's own included).
    Peers(BTreeMap<NodeId, SocketAddr>),
    /// Run `clients` closed-loop clients in all (the child runs those of the groups it leads)
    /// for `warmup_ms` then `measure_ms`, and report what the measured window saw. With no
    /// clients: measure the idle cost.
    Run {
        /// Clients over all processes.
        clients: usize,
        /// Unmeasured milliseconds first.
        warmup_ms: u64,
        /// Measured milliseconds.
        measure_ms: u64,
    },
    /// Stop the groups and exit.
    Quit,
}

impl Command {
    /// The command as one line (without the newline).
    pub(crate) fn to_line(&self) -> String {
        match self {
            Command::Peers(peers) => {
                let list: Vec<String> = peers.iter().map(|(id, a)| format!("{id}={a}")).collect();
                format!("peers {}", list.join(","))
            }
            Command::Run { clients, warmup_ms, measure_ms } => {
                format!("run {clients} {warmup_ms} {measure_ms}")
            }
            Command::Quit => "quit".into(),
        }
    }

    /// Parses a line written by [`Command::to_line`].
    pub(crate) fn parse(line: &str) -> Result<Self, String> {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("peers") => {
                let list = words.next().ok_or("peers: no list")?;
                let mut peers = BTreeMap::new();
                for item in list.split(',') {
                    let (id, addr) = item.split_once('=').ok_or(format!("peers: {item:?}"))?;
                    let id = id.parse().map_err(|e| format!("peers: {id:?}: {e}"))?;
                    let addr = addr.parse().map_err(|e| format!("peers: {addr:?}: {e}"))?;
                    peers.insert(id, addr);
                }
                Ok(Command::Peers(peers))
            }
            Some("run") => {
                let mut number = |what: &str| -> Result<u64, String> {
                    let word = words.next().ok_or(format!("run: no {what}"))?;
                    word.parse().map_err(|e| format!("run: {what} {word:?}: {e}"))
                };
                let clients = number("clients")? as usize;
                Ok(Command::Run {
                    clients,
                    warmup_ms: number("warmup")?,
                    measure_ms: number("measure")?,
                })
            }
            Some("quit") => Ok(Command::Quit),
            _ => Err(format!("unknown command {line:?}")),
        }
    }
}

/// What one node process measured over a `run`'s measured window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Report {
    /// Puts acknowledged (applied on the leader) inside the window, by this process's clients.
    pub(crate) puts: u64,
    /// Puts that failed (not the leader any more, ...), inside the window.
    pub(crate) errors: u64,
    /// CPU time of the process (every thread, user and system), µs (10 ms resolution).
    pub(crate) cpu_us: u64,
    /// LMDB transactions committed, each one sync (`LmdbEnvironment::stats().commits`).
    pub(crate) syncs: u64,
    /// Write and purge requests those transactions answered (one per group's write batch).
    pub(crate) requests: u64,
    /// Entries appended to the process's logs (every group, led or followed).
    pub(crate) entries: u64,
    /// Bytes the environment's writer thread wrote (`DiskStats::written_bytes`: LMDB's pages
    /// and the headroom zeros; 0 where unknown).
    pub(crate) written_bytes: u64,
    /// Terms its groups went through (the sum over its groups of each one's term increase):
    /// elections, which steady groups do not hold.
    pub(crate) new_terms: u64,
    /// RPCs this process sent, by receiver.
    pub(crate) rpcs: BTreeMap<NodeId, u64>,
    /// Request frames (streams) this process sent, by receiver: lone RPCs and coalesced
    /// batches of them.
    pub(crate) frames: BTreeMap<NodeId, u64>,
    /// Host-loop passes inside the window (`Host::loop_stats`; 0 without a host loop).
    pub(crate) passes: u64,
    /// Group steps those passes ran (steps / passes: groups stepped per pass, k).
    pub(crate) group_steps: u64,
    /// Inputs those steps took.
    pub(crate) loop_inputs: u64,
    /// Latencies of the acknowledged puts, µs (at most [`MAX_SAMPLES`], evenly thinned).
    pub(crate) latencies_us: Vec<u32>,
}

impl Report {
    /// The report as one line (without the newline).
    pub(crate) fn to_line(&self) -> String {
        let mut line = format!(
            "result puts={} errors={} cpu_us={} syncs={} requests={} entries={} written={} terms={} passes={} steps={} loop_inputs={} rpcs=",
            self.puts,
            self.errors,
            self.cpu_us,
            self.syncs,
            self.requests,
            self.entries,
            self.written_bytes,
            self.new_terms,
            self.passes,
            self.group_steps,
            self.loop_inputs
        );
        let by_peer = |counts: &BTreeMap<NodeId, u64>| {
            counts.iter().map(|(id, n)| format!("{id}:{n}")).collect::<Vec<_>>().join(",")
        };
        line.push_str(&by_peer(&self.rpcs));
        line.push_str(" frames=");
        line.push_str(&by_peer(&self.frames));
        line.push_str(" lat=");
        let step = self.latencies_us.len().div_ceil(MAX_SAMPLES).max(1);
        for (i, us) in self.latencies_us.iter().step_by(step).enumerate() {
            let _ = write!(line, "{}{us}", if i == 0 { "" } else { "," });
        }
        line
    }

    /// Parses a line written by [`Report::to_line`].
    pub(crate) fn parse(line: &str) -> Result<Self, String> {
        let rest = line.strip_prefix("result ").ok_or(format!("not a result: {line:.80}"))?;
        let mut report = Report::default();
        for field in rest.split_whitespace() {
            let (key, value) = field.split_once('=').ok_or(format!("result field {field:.40}"))?;
            let number = |v: &str| v.parse::<u64>().map_err(|e| format!("{key}={v:.40}: {e}"));
            match key {
                "puts" => report.puts = number(value)?,
                "errors" => report.errors = number(value)?,
                "cpu_us" => report.cpu_us = number(value)?,
                "syncs" => report.syncs = number(value)?,
                "requests" => report.requests = number(value)?,
                "entries" => report.entries = number(value)?,
                "written" => report.written_bytes = number(value)?,
                "terms" => report.new_terms = number(value)?,
                "passes" => report.passes = number(value)?,
                "steps" => report.group_steps = number(value)?,
                "loop_inputs" => report.loop_inputs = number(value)?,
                "rpcs" | "frames" => {
                    let counts = if key == "rpcs" { &mut report.rpcs } else { &mut report.frames };
                    for pair in value.split(',').filter(|p| !p.is_empty()) {
                        let (id, n) = pair.split_once(':').ok_or(format!("{key}: {pair:?}"))?;
                        counts.insert(number(id)?, number(n)?);
                    }
                }
                "lat" => {
                    report.latencies_us = value
                        .split(',')
                        .filter(|v| !v.is_empty())
                        .map(|v| v.parse::<u32>().map_err(|e| format!("lat {v:?}: {e}")))
                        .collect::<Result<_, _>>()?;
                }
                _ => return Err(format!("unknown result field {key:?}")),
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn commands_and_reports_survive_their_lines() {
        let peers = BTreeMap::from([(1, "127.0.0.1:4000".parse().unwrap())]);
        for command in [
            Command::Peers(peers),
            Command::Run { clients: 64, warmup_ms: 1000, measure_ms: 3000 },
            Command::Quit,
        ] {
            assert_eq!(Command::parse(&command.to_line()).unwrap(), command);
        }
        let report = Report {
            puts: 5,
            errors: 1,
            cpu_us: 20_000,
            syncs: 3,
            requests: 9,
            entries: 15,
            written_bytes: 4096,
            new_terms: 2,
            passes: 10,
            group_steps: 40,
            loop_inputs: 90,
            rpcs: BTreeMap::from([(2, 7), (3, 8)]),
            frames: BTreeMap::from([(2, 2), (3, 1)]),
            latencies_us: vec![100, 2000, 3],
        };
        assert_eq!(Report::parse(&report.to_line()).unwrap(), report);
        let empty = Report::default();
        assert_eq!(Report::parse(&empty.to_line()).unwrap(), empty);
    }
}
