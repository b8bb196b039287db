//! [`QuietLog`]: logging that a steady fault or a flood cannot turn into a flood of log lines:
//! at most one line per interval per source (a peer and the kind of event, a remote IP, a
//! peer's node id), with the count of the events not logged since. The one rate limit of the
//! driver's refusal warnings and of raft-quic's logs of bad peers and failed handshakes.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

/// The interval of [`QuietLog::default`]: the least time between two lines of one source.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// The sources [`QuietLog::default`] tracks one by one.
pub const DEFAULT_MAX_SOURCES: usize = 256;

/// Which events of each source to log (see the module docs). Times are whatever monotonic
/// clock the caller reads, as the time since a fixed instant of its choice (the driver's
/// runtime clock; raft-quic's time since the log was made); they must not go backwards.
///
/// Guarantees: a source gets at most one line per interval; the first event of a source, and
/// the first one an interval or more after its last logged one, is logged with the number of
/// its events left out since; at most `max_sources` sources are tracked (beyond, the sources
/// whose interval passed make room, and while none has, newcomers are not logged one by one),
/// so memory stays bounded whatever the number of sources.
#[derive(Debug)]
pub struct QuietLog<K> {
    /// Source -> when its last event was logged, events since.
    sources: HashMap<K, (Duration, u64)>,
    interval: Duration,
    max_sources: usize,
}

impl<K> Default for QuietLog<K> {
    /// A line per [`DEFAULT_INTERVAL`] per source, [`DEFAULT_MAX_SOURCES`] sources.
    fn default() -> Self {
        Self::new(DEFAULT_INTERVAL, DEFAULT_MAX_SOURCES)
    }
}

impl<K> QuietLog<K> {
    /// At most one line per `interval` for each of at most `max_sources` sources.
    pub fn new(interval: Duration, max_sources: usize) -> Self {
        Self { sources: HashMap::new(), interval, max_sources }
    }

    /// How many sources are tracked now (at most the `max_sources` it was made with).
    pub fn tracked(&self) -> usize {
        self.sources.len()
    }
}

impl<K: Hash + Eq> QuietLog<K> {
    /// Records an event of `source` at `now`; returns `Some(suppressed)` if it is to be logged,
    /// with the number of events of `source` not logged since its last logged one.
    pub fn record(&mut self, source: K, now: Duration) -> Option<u64> {
        let due = |at: Duration| now.saturating_sub(at) >= self.interval;
        if !self.sources.contains_key(&source) && self.sources.len() >= self.max_sources {
            self.sources.retain(|_, (at, _)| !due(*at));
            if self.sources.len() >= self.max_sources {
                // Too many distinct sources to track: log none of the newcomers one by one.
                return None;
            }
        }
        match self.sources.get_mut(&source) {
            Some((at, suppressed)) if !due(*at) => {
                *suppressed += 1;
                None
            }
            Some(entry) => Some(std::mem::replace(entry, (now, 0)).1),
            None => {
                self.sources.insert(source, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    #[test]
    fn one_line_per_interval_per_source_with_a_count() {
        let mut log = QuietLog::default();
        let t = Duration::from_secs(100);
        assert_eq!(log.record((2, "WrongCluster"), t), Some(0));
        for i in 1..=5 {
            assert_eq!(log.record((2, "WrongCluster"), t + Duration::from_secs(i)), None);
        }
        assert_eq!(log.record((3, "WrongCluster"), t), Some(0), "another peer is its own source");
        assert_eq!(log.record((2, "WrongNode"), t), Some(0), "another kind is its own source");
        assert_eq!(log.record((2, "WrongCluster"), t + DEFAULT_INTERVAL), Some(5));
        assert_eq!(log.record((2, "WrongCluster"), t + DEFAULT_INTERVAL), None);
    }

    #[test]
    fn the_interval_is_the_one_given() {
        let interval = Duration::from_secs(3);
        let mut log = QuietLog::new(interval, 8);
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        let t = Duration::ZERO;
        assert_eq!(log.record(a, t), Some(0));
        for i in 1..=2 {
            assert_eq!(log.record(a, t + Duration::from_secs(i)), None);
        }
        assert_eq!(log.record(b, t), Some(0), "another source is logged on its own");
        assert_eq!(log.record(a, t + interval), Some(2));
        assert_eq!(log.record(a, t + interval), None);
    }

    #[test]
    fn the_sources_tracked_are_bounded() {
        for max_sources in [DEFAULT_MAX_SOURCES, 1024] {
            let mut log = QuietLog::new(DEFAULT_INTERVAL, max_sources);
            let t = Duration::ZERO;
            for i in 0..(max_sources as u64 + 100) {
                log.record(i, t);
            }
            assert_eq!(log.tracked(), max_sources);
            assert_eq!(log.record(u64::MAX - 1, t), None, "full: a newcomer is not logged");
            // Once their interval passed, old entries make room.
            assert_eq!(log.record(u64::MAX, t + DEFAULT_INTERVAL), Some(0));
            assert_eq!(log.tracked(), 1);
        }
    }
}
