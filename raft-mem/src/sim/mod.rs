//! Deterministic simulation of whole clusters in virtual time.
//!
//! [`SimRuntime`] is a single-threaded executor with a virtual clock: real [`raft_core::Node`]s
//! (engine and driver) run on it, talking over a fault-injecting [`MemNetwork`](crate::MemNetwork)
//! whose delays are virtual too, so a long scenario takes little real time and a run is a pure
//! function of its seed. [`Simulation`] wraps a whole cluster and checks the Raft invariants with
//! an [`InvariantChecker`] after every step.

mod checker;
mod executor;
mod simulation;

pub use checker::{Incarnation, InvariantChecker, LogChange, Violation};
pub use executor::{SimRuntime, Sleep};
pub use simulation::{ClientLog, ConfigHook, ReaderLog, SimFailure, Simulation, SimulationConfig};
