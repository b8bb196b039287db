//! Deterministic simulation of whole clusters in virtual time.
//!
//! [`SimRuntime`] is a single-threaded executor with a virtual clock: real [`raft_core::Node`]s
//! (engine and driver) run on it, talking over a fault-injecting [`MemNetwork`](crate::MemNetwork)
//! whose delays are virtual too, each on its own simulated disk ([`SimDisk`]), so a long scenario
//! takes little real time and a run is a pure function of its seed. [`Simulation`] wraps a whole
//! cluster and checks the Raft invariants with an [`InvariantChecker`] after every step, every
//! message against its sender's durable state, and (when enabled) bounded liveness.

mod checker;
mod clients;
mod disk;
mod executor;
mod history;
mod liveness;
mod observe;
mod queries;
mod recorder;
mod simulation;
mod wire_oracle;

pub use checker::{
    check_request, check_response, DurableView, Incarnation, InvariantChecker, LogChange, Violation,
};
pub use clients::{ClientLog, ClientOptions, ReaderLog};
pub use disk::{
    CrashOutcome, CrashTrigger, DiskFaults, DiskImage, DiskStats, InFlight, SimDisk, SimLogStore,
    SimSnapshotStore,
};
pub use executor::{NodeClock, SimRuntime, Sleep, YieldNow};
pub use history::{History, OpOutcome, OpRecord, PendingOp};
pub use liveness::LivenessBounds;
pub use recorder::StateMachineFaults;
pub use simulation::{
    ConfigHook, ElectionHook, SimFailure, SimStats, Simulation, SimulationConfig,
};
