//! The Raft engine alone: CPU per put of G groups of 3 replicas each, P proposals per group per
//! replication round, everything in one thread. What it leaves out is what a node adds to the
//! protocol: tasks, channels, storage and the transport. Each message is round-tripped through
//! postcard (encode and decode, as the wire does once per message); every write is durable as
//! soon as it is emitted; apply is a no-op.
//!
//! `cargo run --release -p examples --bin bench-engine [-- --puts 200000 --rounds 3]`
//!
//! It answers one question of issue 21's item 7 (ARCHITECTURE, "What the loss is"): how much of
//! a put's cost at one put in flight per group is the protocol itself. Compare the rows of one
//! run only.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use examples::bench::process_cpu_time;

use raft_core::engine::{Action, Engine, PersistedWrite, ReplyId, SentRequest};
use raft_core::{
    Bytes, Config, DurableState, Entry, EntryPayload, HardState, LogId, Membership, NodeId, Role,
    RpcRequest, RpcResponse,
};

/// Replicas per group.
const REPLICAS: u64 = 3;
/// The bytes of a put's command (as bench-multi's values).
const COMMAND_BYTES: usize = 100;
/// Most ticks one election may take before the run gives up.
const MAX_ELECTION_TICKS: usize = 10_000;
/// The (groups, proposals per group per round) measured.
const SHAPES: [(usize, usize); 9] =
    [(1, 1), (1, 4), (1, 16), (1, 64), (4, 16), (16, 4), (64, 1), (64, 4), (64, 64)];

type Error = Box<dyn std::error::Error>;

enum Message {
    Request { from: NodeId, to: NodeId, request: RpcRequest },
    Response { from: NodeId, to: NodeId, sent: SentRequest, response: RpcResponse },
}

/// One group: its replicas' engines (node id `i + 1` at index `i`) and the messages between them.
struct Group {
    engines: Vec<Engine>,
    queue: VecDeque<Message>,
    replies: HashMap<u64, (NodeId, SentRequest)>,
    next_reply: u64,
    /// Commands applied, over the replicas.
    applied: u64,
}

/// The message as the receiver gets it: encoded and decoded with postcard.
fn over_the_wire<T: serde::Serialize + serde::de::DeserializeOwned>(
    message: &T,
) -> Result<T, Error> {
    let bytes = postcard::to_allocvec(message)?;
    Ok(postcard::from_bytes(&bytes)?)
}

impl Group {
    /// Three replicas bootstrapped with the same membership (the first entry of each log).
    fn new(seed: u64) -> Self {
        let membership = Membership::with_voters(1..=REPLICAS);
        let first = Entry { index: 1, term: 1, payload: EntryPayload::Membership(membership) };
        let durable = DurableState {
            hard_state: HardState { current_term: 1, voted_for: None },
            purged: LogId::new(0, 0),
            last: LogId::new(1, 1),
        };
        let engines = (1..=REPLICAS)
            .map(|id| {
                let mut config = Config::new(id);
                config.random_seed = seed * 31 + id;
                Engine::new(config, &durable, vec![first.clone()])
            })
            .collect();
        Self { engines, queue: VecDeque::new(), replies: HashMap::new(), next_reply: 0, applied: 0 }
    }

    fn engine(&mut self, id: NodeId) -> &mut Engine {
        &mut self.engines[(id - 1) as usize]
    }

    /// Carries out replica `id`'s actions until it has none.
    fn drain(&mut self, id: NodeId) -> Result<(), Error> {
        loop {
            let actions = self.engine(id).take_actions();
            if actions.is_empty() {
                return Ok(());
            }
            for action in actions {
                match action {
                    Action::Persist(batch) => {
                        let written = PersistedWrite::of(&batch);
                        self.engine(id).on_persisted(written);
                    }
                    Action::Send { to, request, .. } => {
                        let request = over_the_wire(&request)?;
                        self.queue.push_back(Message::Request { from: id, to, request });
                    }
                    Action::Respond { reply_to, response, .. } => {
                        let (to, sent) =
                            self.replies.remove(&reply_to.0).ok_or("an answer to no request")?;
                        let response = over_the_wire(&response)?;
                        self.queue.push_back(Message::Response { from: id, to, sent, response });
                    }
                    Action::Apply(entries) => {
                        let Some(last) = entries.last().map(|e| e.index) else { continue };
                        self.applied +=
                            entries.iter().filter(|e| e.command().is_some()).count() as u64;
                        self.engine(id).on_applied(last);
                    }
                    _ => {}
                }
            }
        }
    }

    /// Delivers messages (in order) until none is left.
    fn deliver_all(&mut self) -> Result<(), Error> {
        for id in 1..=REPLICAS {
            self.drain(id)?;
        }
        while let Some(message) = self.queue.pop_front() {
            let to = match message {
                Message::Request { from, to, request } => {
                    self.next_reply += 1;
                    let reply = self.next_reply;
                    self.replies.insert(reply, (from, SentRequest::of(&request)));
                    self.engine(to).on_request(request, ReplyId(reply));
                    to
                }
                Message::Response { from, to, sent, response } => {
                    self.engine(to).on_response(from, sent, response);
                    to
                }
            };
            self.drain(to)?;
        }
        Ok(())
    }

    /// Ticks replica 1 until it leads.
    fn elect(&mut self) -> Result<(), Error> {
        for _ in 0..MAX_ELECTION_TICKS {
            if self.engine(1).role() == Role::Leader {
                return Ok(());
            }
            self.engine(1).tick();
            self.deliver_all()?;
        }
        Err("no leader elected".into())
    }
}

/// µs per put of wall time and of CPU time (this process's only thread; `/proc` counts in
/// 10 ms ticks) for `groups` groups, `per_round` proposals per group per round, about `puts`
/// puts.
fn measure(groups: usize, per_round: usize, puts: usize) -> Result<(f64, f64), Error> {
    let mut all: Vec<Group> = (0..groups as u64).map(Group::new).collect();
    for group in &mut all {
        group.elect()?;
    }
    let command = Bytes::from(vec![7u8; COMMAND_BYTES]);
    let rounds = (puts / (groups * per_round)).max(1);
    let (start, cpu_start) = (Instant::now(), process_cpu_time());
    for _ in 0..rounds {
        for group in &mut all {
            for _ in 0..per_round {
                group.engine(1).propose(command.clone()).map_err(|e| format!("{e:?}"))?;
            }
            group.deliver_all()?;
        }
    }
    let elapsed = start.elapsed();
    let cpu = match (cpu_start, process_cpu_time()) {
        (Some(before), Some(after)) => after.saturating_sub(before),
        _ => return Err("no CPU time in /proc/self/stat".into()),
    };
    let proposed = (rounds * groups * per_round) as u64;
    // The leaders applied every put (their followers learn the last commit with the next round).
    let applied: u64 = all.iter().map(|g| g.applied).sum();
    if applied < proposed {
        return Err(format!("{applied} commands applied of {proposed}").into());
    }
    let per_put = |d: std::time::Duration| d.as_secs_f64() * 1e6 / proposed as f64;
    Ok((per_put(elapsed), per_put(cpu)))
}

fn main() -> Result<(), Error> {
    let mut puts = 200_000usize;
    let mut rounds = 3usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().ok_or(format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--puts" => puts = value.parse()?,
            "--rounds" => rounds = value.parse()?,
            _ => {
                return Err(format!(
                    "usage: bench-engine [--puts N (200000)] [--rounds R (3)]; got {arg}"
                )
                .into())
            }
        }
    }
    if puts == 0 || rounds == 0 || puts > 100_000_000 || rounds > 100 {
        return Err("--puts 1..=100000000, --rounds 1..=100".into());
    }
    // Rounds interleave the shapes, so that a slower moment of a shared machine hits all.
    let mut samples = vec![Vec::new(); SHAPES.len()];
    for _ in 0..rounds {
        for (i, &(groups, per_round)) in SHAPES.iter().enumerate() {
            samples[i].push(measure(groups, per_round, puts)?);
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let medians: Vec<(f64, f64)> = samples
        .into_iter()
        .map(|s| {
            let (wall, cpu): (Vec<f64>, Vec<f64>) = s.into_iter().unzip();
            (median(wall), median(cpu))
        })
        .collect();
    let base = SHAPES.iter().position(|&s| s == (1, 64)).map(|i| medians[i].0);
    println!(
        "engine only, {REPLICAS} replicas per group, postcard per message, median of {rounds}:"
    );
    println!(
        "| groups | proposals per group per round | µs per put (wall) | vs 1 group x 64 (wall) | \
         CPU µs per put (10 ms ticks) |"
    );
    println!("|---|---|---|---|---|");
    for (&(groups, per_round), (wall, cpu)) in SHAPES.iter().zip(&medians) {
        let ratio = base.map_or("-".into(), |b| format!("{:.1}x", wall / b));
        println!("| {groups} | {per_round} | {wall:.2} | {ratio} | {cpu:.2} |");
    }
    Ok(())
}
