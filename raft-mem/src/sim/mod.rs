//! Deterministic simulation of whole clusters in virtual time, for your own state machine.
//!
//! [`SimRuntime`] is a single-threaded executor with a virtual clock: real [`raft_core::Node`]s
//! (engine and driver) run on it, talking over a fault-injecting [`MemNetwork`](crate::MemNetwork)
//! whose delays are virtual too, each on its own simulated disk ([`SimDisk`]), so a long scenario
//! takes little real time and a run is a pure function of its seed. [`Simulation`] wraps a whole
//! cluster and checks the Raft invariants with an [`InvariantChecker`] after every step, every
//! message against its sender's durable state, and (when enabled) bounded liveness.
//!
//! # Your state machine
//!
//! [`Simulation::builder`] takes a factory of your [`StateMachine`](raft_core::StateMachine),
//! called with the node's id at every start (boot, and each restart after a crash: the state
//! machine keeps only what it persisted itself, as in production). The simulation wraps it:
//! every call is forwarded, and the wrapper records what the checker needs (the entries applied,
//! the entry each snapshot was captured at and a hash of its data, the snapshot each restore
//! installed) and injects [`StateMachineFaults`]. [`SimulationBuilder::digest`] adds divergence
//! detection. Without a factory the nodes run a [`RecordingStateMachine`].
//!
//! Clients ([`Simulation::client`], run as tasks with [`Simulation::spawn`]) write and read
//! through the cluster and record each operation in a [`History`] with its call and return
//! times and its outcome ([`OpOutcome::Ok`], [`OpOutcome::Unknown`] or [`OpOutcome::Failed`]),
//! for a linearizability checker. [`Simulation::run_fault_schedule`] runs the seeded
//! [`FaultSchedule`] the swarm runs; [`Simulation::converge`] heals the cluster afterwards.
//!
//! ```
//! use std::time::Duration;
//!
//! use async_trait::async_trait;
//! use raft_core::{Bytes, Entry, StateMachine, StateMachineError};
//! use raft_mem::sim::{FaultSchedule, History, OpOutcome, Simulation, SimulationConfig};
//!
//! /// Sums the numbers it is given; answers the new sum.
//! #[derive(Default)]
//! struct Sum(u64);
//!
//! #[async_trait]
//! impl StateMachine for Sum {
//!     async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError> {
//!         let mut answers = Vec::new();
//!         for entry in entries {
//!             if let Some(command) = entry.command() {
//!                 let text = std::str::from_utf8(command).unwrap_or("0");
//!                 self.0 += text.parse::<u64>().unwrap_or(0);
//!             }
//!             answers.push(Bytes::from(self.0.to_string()));
//!         }
//!         Ok(answers)
//!     }
//! }
//!
//! let seed = SimulationConfig::seed_from_env(42);
//! let mut sim = Simulation::builder(SimulationConfig::new(3, seed))
//!     .state_machine(|_id| Sum::default())
//!     .digest(|sum: &Sum| sum.0)
//!     .build()?;
//! let history: History<u64, u64> = History::new();
//! let mut client = sim.client(1, &history);
//! sim.spawn(async move {
//!     for n in 1..=20 {
//!         let decode = |b: &Bytes| std::str::from_utf8(b).unwrap_or("").parse().unwrap_or(0);
//!         client.write(n, Bytes::from(n.to_string()), decode).await;
//!         client.read(0, |sum: &Sum| sum.0).await;
//!     }
//! });
//! let schedule = FaultSchedule { rounds: Some(4), ..FaultSchedule::default() };
//! sim.run_fault_schedule(&schedule)?;
//! let leader = sim.converge(Duration::from_secs(30))?;
//! sim.run_for(Duration::from_secs(60))?;
//! let records = history.records();
//! assert!(records.iter().any(|r| matches!(r.outcome, OpOutcome::Ok(_))));
//! assert!(sim.inspect(leader, |sum| sum.0).is_some());
//! # Ok::<(), raft_mem::sim::SimFailure>(())
//! ```
//!
//! # The virtual clock
//!
//! Time is virtual: a sleep, a disk operation or a message delay moves the clock only when no
//! task can run, straight to the next timer due. A node's ticks derive from its own
//! [`NodeClock`] (its rate may drift, its timers fire late), and a paused node stops while the
//! clock runs on. Nothing reads the wall clock: a run of minutes of virtual time takes seconds,
//! and real-time bounds in a scenario ([`Simulation::run_until`]) are hang guards in virtual time.
//!
//! # Seeds and replay
//!
//! Every random choice (election timeouts, network and disk faults, task scheduling and its
//! jitter, the fault schedule, the wrapper's injected faults) derives from
//! [`SimulationConfig::seed`]. Two runs of one seed are the same run, step for step: a
//! [`SimFailure`] prints its seed and `RAFT_SIM_SEED=<seed>` replays it when a test reads its
//! seed with [`SimulationConfig::seed_from_env`]. (A state machine that draws its own
//! randomness, or iterates a `HashMap`, breaks the replay: that is what the digest catches.)
//!
//! # The invariants
//!
//! Checked after every executor step; the first violation stops the run:
//!
//! * **Election Safety**: at most one leader per term, per incarnation (a node that led a term,
//!   crashed and led it again is two leaders).
//! * **Leader Append-Only**: a leader never truncates its log while it leads.
//! * **Log Matching**: two logs that hold an entry with the same index and term hold the same
//!   entries up to it.
//! * **Leader Completeness**: a leader's log holds every entry committed before its term.
//! * **State Machine Safety**: no two state machines apply different entries at one index, and
//!   every snapshot (and every compaction point) is the committed entry at its index.
//! * **Monotonicity**: commit and applied indexes never decrease within an incarnation; applies
//!   come in order without gaps; durable snapshots never go back, and a restart resumes at or
//!   after the latest one; a node's durable term and vote never go back, one vote per term.
//! * **Durability**: every message leaves only when its sender's durable term, vote and log
//!   cover it; a leader's commit is durable on a majority of each voter set; a node applies
//!   only what its own disk holds.
//! * **Membership**: consecutive committed memberships keep their quorums intersecting.
//! * **Restores**: a restored snapshot's data is data some state machine captured at exactly
//!   that entry.
//! * **Clients**: a write's answer is what the state machine answered at that index (a write
//!   reported overwritten was not applied); a linearizable read's index covers every write
//!   acknowledged and every commit reported before the read began, and the state holds it.
//! * **Determinism** (with a digest): every state machine reports the same digest at the same
//!   applied index.
//! * **No fatal error without an injected fault**, messages survive their wire encoding, no
//!   livelock; with [`Simulation::enable_liveness`], bounded liveness ([`LivenessBounds`]).

mod checker;
mod client;
mod clients;
mod disk;
mod executor;
mod history;
mod liveness;
mod multi;
mod multi_clients;
mod multi_quiet;
mod multi_rounds;
mod multi_starve;
mod observe;
mod queries;
mod recorder;
mod schedule;
mod simulation;
mod wire_oracle;

pub use crate::harness::RecordingStateMachine;
pub use checker::{
    check_request, check_response, DurableView, Incarnation, InvariantChecker, LogChange, Violation,
};
pub use client::{RunningNodes, SimClient};
pub use clients::{ClientLog, ClientOptions, ReaderLog};
pub use disk::{
    CrashOutcome, CrashTrigger, DiskFaults, DiskImage, DiskStats, InFlight, SimDisk, SimLogStore,
    SimSnapshotStore,
};
pub use executor::{NodeClock, SimRuntime, Sleep};
pub use history::{History, OpOutcome, OpRecord, PendingOp};
pub use liveness::LivenessBounds;
pub use multi::{MultiSimConfig, MultiSimStats, MultiSimulation};
pub use multi_clients::GroupReads;
pub use multi_quiet::QuiescenceStats;
pub use multi_starve::StarvationStats;
pub use recorder::{DigestFn, StateMachineFaults, StateMachineHandle};
pub use schedule::{random_link_faults, Dice, FaultSchedule, ScheduleStats};
pub use simulation::{
    ConfigHook, ElectionHook, PinnedReadsHook, SimFailure, SimStats, Simulation, SimulationBuilder,
    SimulationConfig, StateMachineFactory,
};
