//! Capped exponential backoff between failed connection attempts to one peer.

use std::time::{Duration, Instant};

/// Tracks consecutive failed dials to one peer and when the next attempt is allowed.
///
/// The n-th consecutive failure (n = 1, 2, ...) forbids dialing for `min * 2^(n-1)`, capped at
/// `max`. A success resets it. Sends during the waiting period fail at once instead of queueing,
/// since Raft retries on its own schedule.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
    retry_at: Option<Instant>,
}

impl Backoff {
    /// A backoff with no failure recorded.
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self { min, max: max.max(min), failures: 0, retry_at: None }
    }

    /// `Ok` if a dial may be attempted at `now`, else how long until it may.
    pub(crate) fn check(&self, now: Instant) -> Result<(), Duration> {
        match self.retry_at {
            Some(at) if at > now => Err(at - now),
            _ => Ok(()),
        }
    }

    /// Records a failed dial at `now` and returns the delay before the next one.
    pub(crate) fn failed(&mut self, now: Instant) -> Duration {
        let shift = self.failures.min(31);
        let delay = self.min.checked_mul(1u32 << shift).unwrap_or(self.max).min(self.max);
        self.failures = self.failures.saturating_add(1);
        self.retry_at = Some(now + delay);
        delay
    }

    /// Records a successful dial: the next failure starts again from `min`.
    pub(crate) fn succeeded(&mut self) {
        self.failures = 0;
        self.retry_at = None;
    }

    /// Forbids the next attempt for `delay` from `now` without counting a failure (the next
    /// failure starts again from `min`): pacing after a success.
    pub(crate) fn pause(&mut self, now: Instant, delay: Duration) {
        self.failures = 0;
        self.retry_at = Some(now + delay);
    }

    /// Consecutive failures since the last success.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(10), ms(100));
        let t = Instant::now();
        assert_eq!(b.check(t), Ok(()));
        let delays: Vec<_> = (0..6).map(|_| b.failed(t)).collect();
        assert_eq!(delays, [ms(10), ms(20), ms(40), ms(80), ms(100), ms(100)]);
        assert_eq!(b.check(t), Err(ms(100)));
        assert_eq!(b.check(t + ms(100)), Ok(()));
        for _ in 0..100 {
            b.failed(t);
        }
        assert_eq!(b.check(t), Err(ms(100)));
        b.succeeded();
        assert_eq!(b.failures(), 0);
        assert_eq!(b.check(t), Ok(()));
        assert_eq!(b.failed(t), ms(10));
    }
}
