//! Where one proposal's time goes on the leader: a probe follows one proposal at a time
//! through the main loop and reports its stages as a `tracing` event (target
//! [`LATENCY_TARGET`], level DEBUG) once it is applied. Off (one branch per hook) unless that
//! target is enabled.
//!
//! Stages, from the moment the main loop hands the proposal to the engine (`accepted`):
//! `sent_us` until the first AppendEntries carrying it is handed to a peer's sender task,
//! `written_us` until the store's future covering it resolved (seen by whichever task polled
//! it: the main loop or the log writer task), `persisted_us` until the main loop learned it
//! (the engine's `on_persisted`), `acked_us` until the first follower acknowledges it (its own
//! durable write plus a network round trip), `committed_us` until the commit index covers it,
//! `applied_us` until the applier reports it applied (the proposer was answered just before).
//! All are times since `accepted`. A stage the proposal never reached (a leader that
//! committed on its followers' acknowledgements before its own write resolved, a single voter
//! with no one to send to) is left out of the event, never reported as 0 µs.
//!
//! A follower follows one AppendEntries carrying entries at a time, from the moment its main
//! loop takes the request (`received`): `written_us` until its write of them resolved,
//! `persisted_us` until the main loop learned it, `answered_us` until the acknowledgement was
//! handed to the transport (event "follower stages"); likewise without the stages not reached.

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
    written: Option<Duration>,
    persisted: Option<Duration>,
    acked: Option<Duration>,
    committed: Option<Duration>,
}

/// The stages of the AppendEntries a follower follows.
struct Received {
    /// The main loop's id of its reply: only the answer to it finishes it.
    reply: u64,
    /// The last entry it carries.
    index: LogIndex,
    received: Duration,
    written: Option<Duration>,
    persisted: Option<Duration>,
}

/// Follows at most one proposal at a time (the next one starts once it is applied), and on a
/// follower at most one AppendEntries at a time (the next one once it is answered).
#[derive(Default)]
pub(super) struct LatencyProbe {
    followed: Option<Followed>,
    received: Option<Received>,
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
            written: None,
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

    /// The store's future of a write up to `last` resolved at `at` (before the main loop
    /// learned it).
    pub(super) fn written(&mut self, last: LogIndex, at: Duration) {
        self.mark(last, || at, |f| &mut f.written);
        if let Some(r) = self.received.as_mut().filter(|r| last >= r.index) {
            r.written.get_or_insert(at);
        }
    }

    /// The writes up to `last` are durable (the main loop learned it).
    pub(super) fn persisted(&mut self, last: LogIndex, now: impl FnOnce() -> Duration) {
        if self.followed.is_none() && self.received.is_none() {
            return;
        }
        let now = now();
        self.mark(last, || now, |f| &mut f.persisted);
        if let Some(r) = self.received.as_mut().filter(|r| last >= r.index) {
            r.persisted.get_or_insert(now);
        }
    }

    /// A follower took an AppendEntries carrying entries up to `last` (none: `last` is 0),
    /// to be answered under the main loop's reply id `reply`: followed if none is, and the
    /// probe's target is enabled.
    pub(super) fn received(&mut self, reply: u64, last: LogIndex, now: impl FnOnce() -> Duration) {
        if last > 0
            && self.received.is_none()
            && tracing::enabled!(target: LATENCY_TARGET, Level::DEBUG)
        {
            self.receive(reply, last, now);
        }
    }

    fn receive(&mut self, reply: u64, last: LogIndex, now: impl FnOnce() -> Duration) {
        if self.received.is_none() {
            let received = now();
            self.received =
                Some(Received { reply, index: last, received, written: None, persisted: None });
        }
    }

    /// A follower handed the answer under reply id `reply` to an AppendEntries to the
    /// transport. The answer to the followed AppendEntries reports it if it acknowledges its
    /// entries (`match_index` covers them), else (a rejection) lets it go unreported. A later
    /// AppendEntries' acknowledgement covering its entries lets it go unreported too (they
    /// were acknowledged by another request, e.g. another leader's after a truncation: its
    /// times would be that write's). Other answers leave it followed.
    pub(super) fn answered(
        &mut self,
        reply: u64,
        match_index: Option<LogIndex>,
        now: impl FnOnce() -> Duration,
    ) {
        if let Some(stages) = self.finish_received(reply, match_index, now) {
            tracing::debug!(
                target: LATENCY_TARGET,
                index = stages.index,
                written_us = stages.written_us,
                persisted_us = stages.persisted_us,
                answered_us = stages.answered_us,
                "follower stages"
            );
        }
    }

    /// The stages of the followed AppendEntries if `reply` answers it with an acknowledgement
    /// of its entries; it is let go on its own answer or a later acknowledgement covering it.
    fn finish_received(
        &mut self,
        reply: u64,
        match_index: Option<LogIndex>,
        now: impl FnOnce() -> Duration,
    ) -> Option<FollowerStages> {
        let covers = |r: &Received| match_index.is_some_and(|m| m >= r.index);
        let r = self.received.take_if(|r| reply == r.reply || (reply > r.reply && covers(r)))?;
        if reply != r.reply || !covers(&r) {
            return None;
        }
        let since = |t: Duration| micros(t.saturating_sub(r.received));
        Some(FollowerStages {
            index: r.index,
            written_us: r.written.map(since),
            persisted_us: r.persisted.map(since),
            answered_us: since(now()),
        })
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
                written_us = stages.written_us,
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
        let since = |t: Duration| micros(t.saturating_sub(f.accepted));
        Some(Stages {
            index: f.index,
            sent_us: f.sent.map(since),
            written_us: f.written.map(since),
            persisted_us: f.persisted.map(since),
            acked_us: f.acked.map(since),
            committed_us: f.committed.map(since),
            applied_us: since(now()),
        })
    }
}

/// Microseconds from acceptance to each stage (`None`: not reached, e.g. the leader committed
/// on its followers' acknowledgements before its own write resolved; the event then leaves
/// the field out rather than report 0 µs).
#[derive(Debug, PartialEq, Eq)]
struct Stages {
    index: LogIndex,
    sent_us: Option<u64>,
    written_us: Option<u64>,
    persisted_us: Option<u64>,
    acked_us: Option<u64>,
    committed_us: Option<u64>,
    applied_us: u64,
}

/// Microseconds from a follower's taking an AppendEntries to each stage (`None`: not reached;
/// left out of the event).
#[derive(Debug, PartialEq, Eq)]
struct FollowerStages {
    index: LogIndex,
    written_us: Option<u64>,
    persisted_us: Option<u64>,
    answered_us: u64,
}

type Pick = fn(&mut Followed) -> &mut Option<Duration>;

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

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
        probe.written(4, Duration::from_micros(250)); // an earlier write
        probe.written(6, Duration::from_micros(280));
        probe.persisted(6, at(300));
        probe.committed(4, at(350));
        probe.committed(5, at(420));
        assert_eq!(probe.finish(4, at(500)), None, "not applied yet");
        let expected = Stages {
            index: 5,
            sent_us: Some(10),
            written_us: Some(180),
            persisted_us: Some(200),
            acked_us: Some(300),
            committed_us: Some(320),
            applied_us: 350,
        };
        assert_eq!(probe.finish(5, at(450)), Some(expected));
        // The next proposal is followed from scratch.
        probe.follow(6, at(600));
        let next = probe.finish(6, at(601)).map(|s| (s.index, s.sent_us, s.applied_us));
        assert_eq!(next, Some((6, None, 1)));
    }

    /// A stage the followed proposal never reached (a leader that committed on two
    /// followers' acknowledgements before its own write resolved) is reported missing, not as
    /// 0 µs (which would bias the stage's percentiles down).
    #[test]
    fn a_stage_never_reached_is_reported_missing_not_as_zero() {
        let mut probe = LatencyProbe::default();
        probe.follow(5, at(100));
        probe.acked(5, at(400));
        probe.committed(5, at(420));
        let stages = probe.finish(5, at(450)).unwrap();
        assert_eq!(stages.written_us, None, "the leader's write never resolved");
        assert_eq!(stages.persisted_us, None, "nor did its main loop learn it");
        assert_eq!(stages.sent_us, None, "nothing was sent");
        assert_eq!((stages.acked_us, stages.committed_us), (Some(300), Some(320)));
    }

    /// The rejection of another AppendEntries does not let go the followed one (review L4).
    #[test]
    fn only_the_followed_append_entries_own_answer_lets_it_go() {
        let mut probe = LatencyProbe::default();
        probe.receive(3, 8, at(1_000));
        probe.answered(2, None, at(1_010)); // an earlier AppendEntries, rejected
        probe.answered(4, None, at(1_011)); // a later one, rejected
        probe.written(8, Duration::from_micros(1_500));
        probe.persisted(8, at(1_520));
        let stages = probe.finish_received(3, Some(8), at(1_540)).map(|s| s.answered_us);
        assert_eq!(stages, Some(540));
        // An acknowledgement to a later AppendEntries (another leader's entries after a
        // truncation) does not report the followed one with that write's times: it lets it go.
        probe.receive(5, 12, at(2_000));
        probe.written(13, Duration::from_micros(2_300));
        assert_eq!(probe.finish_received(6, Some(13), at(2_400)), None);
        assert!(probe.received.is_none(), "let go");
        // Its own rejection lets it go unreported as well.
        probe.receive(7, 20, at(3_000));
        assert_eq!(probe.finish_received(7, None, at(3_010)), None);
        assert!(probe.received.is_none(), "let go");
    }

    #[test]
    fn a_follower_reports_its_write_and_answer_since_it_took_the_request() {
        let mut probe = LatencyProbe::default();
        probe.receive(1, 8, at(1_000));
        probe.receive(2, 9, at(1_001)); // one at a time: ignored
        probe.written(7, Duration::from_micros(1_100)); // an earlier write
        probe.written(8, Duration::from_micros(1_500));
        probe.persisted(9, at(1_520));
        assert_eq!(probe.finish_received(0, Some(7), at(1_530)), None, "an earlier answer");
        let expected = FollowerStages {
            index: 8,
            written_us: Some(500),
            persisted_us: Some(520),
            answered_us: 540,
        };
        assert_eq!(probe.finish_received(1, Some(8), at(1_540)), Some(expected));
        assert_eq!(probe.finish_received(1, Some(8), at(1_541)), None, "reported once");
        // A rejected AppendEntries is let go: the next one is followed.
        probe.receive(3, 12, at(2_000));
        probe.answered(3, None, at(2_001));
        probe.receive(4, 13, at(2_100));
        let next = probe.finish_received(4, Some(13), at(2_150)).map(|s| (s.index, s.answered_us));
        assert_eq!(next, Some((13, 50)));
    }
}
