//! `bench-multi`: multiplexing many Raft groups over one host, one LMDB environment and one
//! QUIC endpoint per process, measured at the library level (no kv service, no client network
//! hop: each process's clients are tasks writing to the groups that process leads).
//!
//! ```text
//! cargo run --release -p examples --bin bench-multi -- [--seconds 3] [--rounds 2]
//!     [--groups 1,4,16,64] [--clients 64,256] [--host-loop 0,1] [--threads 2] [--dir target]
//! cargo run --release -p examples --bin bench-multi -- --idle-groups 1000 --seconds 10
//! ```
//!
//! Three node processes (this executable run as `bench-multi node ...`) on loopback, with
//! mutual TLS from a CA generated for the run, each with one `raft_core::multi::Host`, one
//! `raft_lmdb::LmdbEnvironment` (every commit synced) and one `raft_quic::QuicNetwork` shared by
//! its G groups of a small put state machine. Group `g` (ids 1..=G) is led by node
//! `(g - 1) % 3 + 1` (leadership transferred there after the election). C closed-loop clients in
//! all (one put in flight each), client `c` writing 100-byte values to group `c % G + 1` from
//! inside that group's leader process.
//!
//! `--host-loop` lists how the hosts run their groups' main loops: `0` a task per group
//! (`Host::new`, the default), `1` one host loop per process (`Host::with_loop`, plan S1).
//!
//! Throughput mode prints, per G x host mode x C (medians over `--rounds`, which interleave
//! every G and every host mode so that they are compared side by side under the same load):
//! aggregate puts/s and its ratio to G = 1 (same host mode and C), p50/p99 latency, per process
//! syncs/s (LMDB commits) and entries per sync, CPU seconds, CPU µs per put (the three
//! processes' CPU over the puts), and for host-loop rows per process k, the group steps per
//! host-loop pass.
//!
//! Idle mode (`--idle-groups N`): N groups, no clients; once every group has its leader, per
//! process CPU % of one core, RPCs/s sent to each peer and per node pair, and syncs/s.
//!
//! The data lives under `--dir` (default `target/`, not `/tmp`, often a RAM disk), in a
//! directory removed at the end. The children exit when their stdin closes, so they never
//! outlive the parent; Ctrl-C stops the run and kills them.
#![forbid(unsafe_code)]

#[path = "../bench_multi/node.rs"]
mod node;
#[path = "../bench_multi/parent.rs"]
mod parent;
#[path = "../bench_multi/protocol.rs"]
mod protocol;

use std::path::PathBuf;
use std::process::ExitCode;

use raft_core::{GroupId, NodeId};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Node processes (node ids 1..=NODES).
const NODES: NodeId = 3;
/// Bytes of each put's value.
const VALUE_BYTES: usize = 100;
/// The hidden subcommand that runs a node process.
const NODE_SUBCOMMAND: &str = "node";

/// The node that leads group `group` once the leaders are spread.
fn leader_of(group: GroupId) -> NodeId {
    (group.saturating_sub(1)) % NODES + 1
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1).peekable();
    let result = if args.peek().map(String::as_str) == Some(NODE_SUBCOMMAND) {
        args.next();
        parse_node_args(args).and_then(node::main)
    } else {
        parent::Args::parse(args).and_then(parent::main)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench-multi: {error}");
            ExitCode::FAILURE
        }
    }
}

fn parse_node_args(mut it: impl Iterator<Item = String>) -> Result<node::NodeArgs, Error> {
    let mut args = node::NodeArgs {
        id: 0,
        groups: 1,
        dir: PathBuf::new(),
        ca_cert: PathBuf::new(),
        ca_key: PathBuf::new(),
        threads: 2,
        mode: node::Mode::Throughput,
        host_loop: false,
    };
    while let Some(arg) = it.next() {
        let value = it.next().ok_or(format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--id" => args.id = value.parse()?,
            "--groups" => args.groups = value.parse()?,
            "--dir" => args.dir = value.into(),
            "--ca-cert" => args.ca_cert = value.into(),
            "--ca-key" => args.ca_key = value.into(),
            "--threads" => args.threads = value.parse()?,
            "--host-loop" => {
                args.host_loop = match value.as_str() {
                    "0" => false,
                    "1" => true,
                    other => return Err(format!("--host-loop {other:?}").into()),
                }
            }
            "--mode" => {
                args.mode = match value.as_str() {
                    "throughput" => node::Mode::Throughput,
                    "idle" => node::Mode::Idle,
                    other => return Err(format!("--mode {other:?}").into()),
                }
            }
            other => return Err(format!("unknown node argument {other:?}").into()),
        }
    }
    if !(1..=NODES).contains(&args.id) || args.groups == 0 || args.threads == 0 {
        return Err("node: --id 1..=3, --groups and --threads at least 1".into());
    }
    Ok(args)
}
