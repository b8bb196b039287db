//! Lease reads (`Config::lease_reads`): a leader answers reads without a quorum round while a
//! majority of voters is known to refuse votes to anyone else.
//!
//! Time comes from the driver's monotonic clock ([`Engine::set_now`]), never from ticks: ticks
//! stop while a leader is paused (SIGSTOP, a VM freeze, a stalled or overloaded process, a full
//! input queue) although real time, and the other nodes' election timers, go on. The leader
//! stamps each round with the clock reading taken before the round's AppendEntries were issued
//! (at every tick, and when it takes office).
//!
//! **What the voters promise.** A voter that acknowledges an AppendEntries refuses votes for
//! its own `election_timeout_min` after it received it, counted in its own ticks, whose first
//! one may come right after it (and, with lease reads, for as long after a restart). Each answer
//! says how long that is (`AppendEntriesResponse::lease_promise_ms`: `election_timeout_min`
//! rounded up to ticks, minus a tick; 0 from a voter without `check_quorum` or `lease_reads`,
//! which does not keep it across a restart, and in a refusal). Voters may have other timeouts
//! and tick intervals than the leader (a rolling change of settings): the leader does not assume
//! its own. From an answer to a round started at `t` with promise `p`, that voter is known not
//! to vote for anyone else before `t + min(p, own promise) - max_clock_drift` (the leader's
//! own promise caps it, so a lease never outlasts the leader's own election timeout, and the
//! drift margin covers clocks running at rates within `max_clock_drift` of each other over
//! that span). The lease ends when a quorum's promises have (a majority of each voter set of
//! the membership in force; the leader's own counts from its latest round), computed again
//! whenever that membership changes: the promises of the previous voters say nothing about
//! whom the new ones may elect. A read is answered from the lease only if the clock, read after the read
//! arrived, is still before the end.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use super::{Engine, RoleState};
use crate::membership::Membership;
use crate::types::NodeId;

/// A leader's lease.
#[derive(Debug, Default)]
pub(super) struct Lease {
    /// When recent rounds started by the driver's clock, (round, start), oldest first.
    round_started: VecDeque<(u64, Duration)>,
    /// Per voter, the clock reading until which it promised to vote for nobody else.
    promised_until: BTreeMap<NodeId, Duration>,
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

    /// The clock reading until which a quorum of `membership` (a majority of each voter set)
    /// is known to vote for nobody else; leader `own`'s promise is as good as its latest round,
    /// which is at most `span` long.
    fn quorum_until(&self, membership: &Membership, own: NodeId, span: Duration) -> Duration {
        let own_until =
            self.round_started.back().map_or(0, |&(_, at)| nanos(at.saturating_add(span)));
        let promised = |voter: NodeId| match self.promised_until.get(&voter) {
            _ if voter == own => own_until,
            Some(&until) => nanos(until),
            None => 0,
        };
        Duration::from_nanos(membership.agreed_value(promised))
    }
}

/// How long this node, as a voter, refuses votes after an AppendEntries of a leader it
/// acknowledges, at least (see the module docs): its minimum election timeout in ticks, less the
/// tick that may come right after the AppendEntries.
pub(super) fn promise(config: &crate::Config) -> Duration {
    let ticks = config.ticks(config.election_timeout_min).saturating_sub(1);
    config.ticks_time(ticks)
}

/// The longest lease one round can give: this node's own promise minus the drift margin.
pub(super) fn lease_span(config: &crate::Config) -> Duration {
    promise(config).saturating_sub(config.max_clock_drift)
}

/// A clock reading as a number, for the quorum arithmetic.
fn nanos(at: Duration) -> u64 {
    u64::try_from(at.as_nanos()).unwrap_or(u64::MAX)
}

impl Engine {
    /// The driver's monotonic clock reads `now` (the time since an arbitrary origin fixed for
    /// the node's life, such as [`Runtime::now`](crate::Runtime::now)). Lease reads use it,
    /// and a quiesced engine counts no more ticks toward its deadline than it says passed
    /// (ticks delivered late in a batch only delay); the engine never reads a clock itself.
    /// It is mandatory with lease reads ([`Config::lease_reads`](crate::Config::lease_reads)): an
    /// engine never given a clock answers every read with a quorum round, never from a lease.
    /// Once called, it must be called with a fresh reading, taken after the input arrived,
    /// before every [`Engine::tick`] (a frozen reading keeps a quiesced engine from its
    /// deadline), [`Engine::read_index`] and
    /// [`Engine::on_request`] (or before every input): a read is answered from the lease only if
    /// the lease holds at the latest reading. Any other input happens at the latest reading,
    /// which can only start a lease round earlier than it really starts, so make the lease
    /// shorter. A reading earlier than the previous one is ignored.
    pub fn set_now(&mut self, now: Duration) {
        self.now = self.now.max(now);
        self.quiet.clocked = true;
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

    /// What this node promises a leader whose AppendEntries it acknowledges, for
    /// `AppendEntriesResponse::lease_promise_ms`: nothing unless it keeps the promise across a
    /// restart too (lease reads on, and CheckQuorum, which makes it refuse votes at all).
    pub(super) fn lease_promise_ms(&self) -> u64 {
        if !(self.config.lease_reads && self.config.check_quorum) {
            return 0;
        }
        u64::try_from(promise(&self.config).as_millis()).unwrap_or(u64::MAX)
    }

    /// Lease reads: voter `from` acknowledged an AppendEntries of `round`, promising to vote for
    /// nobody else for `promise_ms` after it got it. Extends the lease to where a majority's
    /// promises run out.
    pub(super) fn lease_acknowledged(&mut self, from: NodeId, round: u64, promise_ms: u64) {
        if !self.config.lease_reads || promise_ms == 0 {
            return;
        }
        let own = promise(&self.config);
        let drift = self.config.max_clock_drift;
        let span = self.timing.lease_span;
        let RoleState::Leader(leader) = &mut self.role else { return };
        let lease = &mut leader.lease;
        // The latest round at or before `round` whose start is known (rounds start in order;
        // an earlier start only makes the promise end earlier).
        let known = lease.round_started.partition_point(|&(r, _)| r <= round);
        let Some(&(_, started)) = known.checked_sub(1).and_then(|i| lease.round_started.get(i))
        else {
            return;
        };
        let until = started.saturating_add(Duration::from_millis(promise_ms).min(own));
        let until = until.saturating_sub(drift);
        let promised = lease.promised_until.entry(from).or_default();
        if until <= *promised || lease.void {
            return;
        }
        *promised = until;
        let until = lease.quorum_until(self.log.membership().latest(), self.id, span);
        lease.until = Some(lease.until.map_or(until, |u| u.max(until)));
    }

    /// Lease reads: the membership in force changed. The lease is what a quorum of it promised,
    /// computed again: promises of a quorum of the previous one do not stop a quorum of this one
    /// from electing another leader (after a joint change, or several one-node changes, the two
    /// may not overlap).
    pub(super) fn lease_membership_changed(&mut self) {
        let span = self.timing.lease_span;
        let RoleState::Leader(leader) = &mut self.role else { return };
        let lease = &mut leader.lease;
        if lease.until.is_some() {
            lease.until = Some(lease.quorum_until(self.log.membership().latest(), self.id, span));
        }
    }

    /// Whether this leader may answer a read now from its lease. Never without a clock: a
    /// driver that never called [`Engine::set_now`] leaves `now` at zero, before every lease's
    /// end, and its leases would never run out.
    pub(super) fn lease_holds(&self) -> bool {
        let RoleState::Leader(leader) = &self.role else { return false };
        self.config.lease_reads
            && self.quiet.clocked
            && !leader.lease.void
            && leader.transfer.is_none()
            && leader.lease.until.is_some_and(|until| self.now < until)
    }
}
