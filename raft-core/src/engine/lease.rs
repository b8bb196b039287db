//! Lease reads (`Config::lease_reads`): a leader answers reads without a quorum round while a
//! majority of voters is known to refuse votes to anyone else.
//!
//! Time comes from the driver's monotonic clock ([`Engine::set_now`]), never from ticks: ticks
//! stop while a leader is paused (SIGSTOP, a VM freeze, a stalled or overloaded process, a full
//! input queue) although real time, and the other nodes' election timers, go on. The leader
//! stamps each round with the clock reading taken before the round's AppendEntries were issued
//! (at every tick, and when it takes office). A voter that acknowledges an AppendEntries of a
//! round refuses votes until `election_timeout_ms_min` after it received it, counted in its own
//! ticks, whose first one may come right after it (so at least `election_timeout_ms_min -
//! tick_interval_ms` after the round started). So once a majority acknowledged a round started
//! at `t`, no other leader can be elected before `t + election_timeout_ms_min -
//! tick_interval_ms`, as long as clocks run at rates within `max_clock_drift_ms` of each other
//! over that span; the lease ends that much earlier. A read is answered from the lease only if
//! the clock, read after the read arrived, is still before the end.

use std::collections::VecDeque;
use std::time::Duration;

use super::{Engine, RoleState};

/// A leader's lease.
#[derive(Debug, Default)]
pub(super) struct Lease {
    /// When recent rounds started by the driver's clock, (round, start), oldest first.
    round_started: VecDeque<(u64, Duration)>,
    /// The clock reading at which the majority's promise runs out (`None`: no lease).
    until: Option<Duration>,
    /// A TimeoutNow was sent this term: voters grant its election despite their promise, so
    /// this leader serves no more lease reads (even if the transfer is abandoned: the message
    /// could still arrive).
    void: bool,
}

impl Lease {
    /// A TimeoutNow is about to be sent: no more lease reads this term.
    pub(super) fn void(&mut self) {
        self.void = true;
        self.until = None;
    }
}

/// The length of a lease: from the start of a round a majority acknowledged, how long no other
/// leader can be elected, minus the clock-drift margin (see the module docs).
pub(super) fn lease_span(config: &crate::Config) -> Duration {
    let promised = config.election_timeout_ms_min.saturating_sub(config.tick_interval_ms);
    Duration::from_millis(promised.saturating_sub(config.max_clock_drift_ms))
}

impl Engine {
    /// The driver's monotonic clock reads `now` (the time since an arbitrary origin fixed for
    /// the node's life, such as [`Runtime::now`](crate::Runtime::now)). Only lease reads use
    /// it; the engine never reads a clock itself. Call it with a fresh reading, taken after the
    /// input arrived, before every [`Engine::tick`], [`Engine::read_index`] and
    /// [`Engine::on_request`] (or before every input): a read is answered from the lease only if
    /// the lease holds at the latest reading. Any other input happens at the latest reading,
    /// which can only start a lease round earlier than it really starts, so make the lease
    /// shorter. A reading earlier than the previous one is ignored.
    pub fn set_now(&mut self, now: Duration) {
        self.now = self.now.max(now);
    }

    /// Lease reads: starts a new round (at every leader tick and when the leader takes office),
    /// stamped with the current clock reading, which is earlier than the sending of any
    /// AppendEntries of the round.
    pub(super) fn start_lease_round(&mut self) {
        if !self.config.lease_reads {
            return;
        }
        let (now, span) = (self.now, self.timing.lease_span);
        let RoleState::Leader(leader) = &mut self.role else { return };
        leader.reads.next_round();
        let lease = &mut leader.lease;
        lease.round_started.push_back((leader.reads.round(), now));
        // A round that could only give a lease ending before now is of no use any more.
        while lease.round_started.front().is_some_and(|&(_, at)| at.saturating_add(span) <= now) {
            lease.round_started.pop_front();
        }
    }

    /// Lease reads: a majority acknowledged round `confirmed`; the lease runs until the start of
    /// the latest round at or before it plus the lease span.
    pub(super) fn extend_lease(&mut self, confirmed: u64) {
        if !self.config.lease_reads {
            return;
        }
        let span = self.timing.lease_span;
        let RoleState::Leader(leader) = &mut self.role else { return };
        let lease = &mut leader.lease;
        let started =
            lease.round_started.iter().rev().find(|&&(round, _)| round <= confirmed).map(|r| r.1);
        if let (Some(started), false) = (started, lease.void) {
            let until = started.saturating_add(span);
            lease.until = Some(lease.until.map_or(until, |u| u.max(until)));
        }
    }

    /// Whether this leader may answer a read now from its lease.
    pub(super) fn lease_holds(&self) -> bool {
        let RoleState::Leader(leader) = &self.role else { return false };
        self.config.lease_reads
            && !leader.lease.void
            && leader.transfer.is_none()
            && leader.lease.until.is_some_and(|until| self.now < until)
    }
}
