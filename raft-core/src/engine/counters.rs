//! Counters of protocol events that only the engine sees (an election can start and be won
//! inside one input), for the driver's metrics. Plain numbers: the engine records nothing
//! itself.

use super::Engine;

/// Protocol events counted since the engine was created (see [`Engine::counters`]). They only
/// grow; a restarted node starts again from zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EngineCounters {
    /// PreVote rounds started (each may lead to an election).
    pub pre_votes_started: u64,
    /// Elections started: terms this node campaigned in (after a PreVote round it won, a
    /// TimeoutNow, or without PreVote).
    pub elections_started: u64,
    /// Elections won: terms in which this node became the leader.
    pub elections_won: u64,
}

impl Engine {
    /// The protocol events counted so far (elections started and won, PreVote rounds).
    pub fn counters(&self) -> EngineCounters {
        self.counters
    }
}
