//! Where one proposal's time goes on the leader: a probe follows one proposal at a time
//! through the main loop and reports its stages as a `tracing` event (target
//! [`LATENCY_TARGET`], level DEBUG) once it is applied. Off (one branch per hook) unless that
//! target is enabled.
//!
//! Stages, from the moment the main loop hands the proposal to the engine (`accepted`):
//! `sent_us` until the first AppendEntries carrying it is handed to a peer's sender task,
//! `persisted_us` until the leader's own write covering it is durable, `acked_us` until the
//! first follower acknowledges it (its own durable write plus a network round trip),
//! `committed_us` until the commit index covers it, `applied_us` until the applier reports it
//! applied (the proposer was answered just before). All are times since `accepted`.

use std::time::Duration;

use tracing::Level;

use crate::types::LogIndex;

/// The `tracing` target of the probe's events.
pub const LATENCY_TARGET: &str = "raft_core::latency";

/// The stages of the proposal being followed.
struct Followed {
    index: LogIndex,
    accepted: Duration,
    sent: Option<Duration>,
    persisted: Option<Duration>,
    acked: Option<Duration>,
    committed: Option<Duration>,
}

/// Follows at most one proposal at a time (the next one starts once it is applied).
#[derive(Default)]
pub(super) struct LatencyProbe {
    followed: Option<Followed>,
}

impl LatencyProbe {
    /// A proposal got `index`: followed if none is, and the probe's target is enabled.
    pub(super) fn accepted(&mut self, index: LogIndex, now: impl FnOnce() -> Duration) {
        if self.followed.is_none() && tracing::enabled!(target: LATENCY_TARGET, Level::DEBUG) {
            self.follow(index, now);
        }
    }

    /// Follows the proposal at `index` if none is followed.
    fn follow(&mut self, index: LogIndex, now: impl FnOnce() -> Duration) {
        if self.followed.is_some() {
            return;
        }
        self.followed = Some(Followed {
            index,
            accepted: now(),
            sent: None,
            persisted: None,
            acked: None,
            committed: None,
        });
    }

    /// Marks the stage `pick` of the followed proposal if entries up to `last` include it and
    /// the stage was not reached before.
    fn mark(&mut self, last: LogIndex, now: impl FnOnce() -> Duration, pick: Pick) {
        if let Some(f) = &mut self.followed {
            if last >= f.index {
                pick(f).get_or_insert_with(now);
            }
        }
    }

    /// An AppendEntries carrying entries up to `last` went to a peer's sender task.
    pub(super) fn sent(&mut self, last: LogIndex, now: impl FnOnce() -> Duration) {
        self.mark(last, now, |f| &mut f.sent);
    }

    /// The leader's writes up to `last` are durable.
    pub(super) fn persisted(&mut self, last: LogIndex, now: impl FnOnce() -> Duration) {
        self.mark(last, now, |f| &mut f.persisted);
    }

    /// A follower acknowledged entries up to `last`.
    pub(super) fn acked(&mut self, last: LogIndex, now: impl FnOnce() -> Duration) {
        self.mark(last, now, |f| &mut f.acked);
    }

    /// The commit index reached `commit_index`.
    pub(super) fn committed(&mut self, commit_index: LogIndex, now: impl FnOnce() -> Duration) {
        self.mark(commit_index, now, |f| &mut f.committed);
    }

    /// The state machine applied entries up to `applied`: reports the followed proposal.
    pub(super) fn applied(&mut self, applied: LogIndex, now: impl FnOnce() -> Duration) {
        if let Some(stages) = self.finish(applied, now) {
            tracing::debug!(
                target: LATENCY_TARGET,
                index = stages.index,
                sent_us = stages.sent_us,
                persisted_us = stages.persisted_us,
                acked_us = stages.acked_us,
                committed_us = stages.committed_us,
                applied_us = stages.applied_us,
                "proposal stages"
            );
        }
    }

    /// The stages of the followed proposal if `applied` covers it (it is then let go).
    fn finish(&mut self, applied: LogIndex, now: impl FnOnce() -> Duration) -> Option<Stages> {
        let f = self.followed.take_if(|f| applied >= f.index)?;
        let since = |t: Option<Duration>| t.map_or(0, |t| micros(t.saturating_sub(f.accepted)));
        Some(Stages {
            index: f.index,
            sent_us: since(f.sent),
            persisted_us: since(f.persisted),
            acked_us: since(f.acked),
            committed_us: since(f.committed),
            applied_us: since(Some(now())),
        })
    }
}

/// Microseconds from acceptance to each stage (0: not seen).
#[derive(Debug, PartialEq, Eq)]
struct Stages {
    index: LogIndex,
    sent_us: u64,
    persisted_us: u64,
    acked_us: u64,
    committed_us: u64,
    applied_us: u64,
}

type Pick = fn(&mut Followed) -> &mut Option<Duration>;

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(us: u64) -> impl FnOnce() -> Duration {
        move || Duration::from_micros(us)
    }

    #[test]
    fn stages_are_times_since_acceptance_of_the_first_event_covering_the_entry() {
        let mut probe = LatencyProbe::default();
        probe.follow(5, at(100));
        probe.follow(6, at(101)); // one at a time: ignored
        probe.sent(4, at(102)); // an earlier entry: not this one's stage
        probe.sent(7, at(110));
        probe.sent(9, at(111)); // the first time counts
        probe.acked(5, at(400));
        probe.persisted(6, at(300));
        probe.committed(4, at(350));
        probe.committed(5, at(420));
        assert_eq!(probe.finish(4, at(500)), None, "not applied yet");
        let expected = Stages {
            index: 5,
            sent_us: 10,
            persisted_us: 200,
            acked_us: 300,
            committed_us: 320,
            applied_us: 350,
        };
        assert_eq!(probe.finish(5, at(450)), Some(expected));
        // The next proposal is followed from scratch.
        probe.follow(6, at(600));
        let next = probe.finish(6, at(601)).map(|s| (s.index, s.sent_us, s.applied_us));
        assert_eq!(next, Some((6, 0, 1)));
    }
}
