//! [`QuietLog`]: logging that a flood cannot turn into a flood of log lines: at most one line
//! per interval per source (a remote IP, a peer's node id), with the count of those not logged.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// The most sources tracked one by one; beyond, newcomers are not logged one by one.
pub(crate) const MAX_TRACKED_SOURCES: usize = 1024;

/// Which events of each source to log (see the module docs).
#[derive(Debug)]
pub(crate) struct QuietLog<K> {
    /// Source -> when its last event was logged, events since.
    sources: HashMap<K, (Instant, u64)>,
}

impl<K> Default for QuietLog<K> {
    fn default() -> Self {
        Self { sources: HashMap::new() }
    }
}

impl<K: Hash + Eq + Copy> QuietLog<K> {
    /// Records an event of `source` at `now`; returns `Some(suppressed)` if it is to be logged,
    /// with the number of events of `source` not logged since its last logged one.
    pub(crate) fn record(&mut self, source: K, now: Instant, interval: Duration) -> Option<u64> {
        if !self.sources.contains_key(&source) && self.sources.len() >= MAX_TRACKED_SOURCES {
            self.sources.retain(|_, (at, _)| now.duration_since(*at) < interval);
            if self.sources.len() >= MAX_TRACKED_SOURCES {
                // Too many distinct sources to track: log none of the newcomers one by one.
                return None;
            }
        }
        match self.sources.get_mut(&source) {
            Some((at, suppressed)) if now.duration_since(*at) < interval => {
                *suppressed += 1;
                None
            }
            Some(entry) => {
                let suppressed = entry.1;
                *entry = (now, 0);
                Some(suppressed)
            }
            None => {
                self.sources.insert(source, (now, 0));
                Some(0)
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.sources.len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    #[test]
    fn events_are_logged_once_per_interval_per_source_with_a_count() {
        let mut log = QuietLog::default();
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        let t = Instant::now();
        let interval = Duration::from_secs(10);
        assert_eq!(log.record(a, t, interval), Some(0));
        for i in 1..=5 {
            assert_eq!(log.record(a, t + Duration::from_secs(i), interval), None);
        }
        assert_eq!(log.record(b, t, interval), Some(0), "another source is logged on its own");
        assert_eq!(log.record(a, t + interval, interval), Some(5));
        assert_eq!(log.record(a, t + interval, interval), None);
    }

    #[test]
    fn the_sources_tracked_are_bounded() {
        let mut log = QuietLog::default();
        let t = Instant::now();
        let interval = Duration::from_secs(10);
        for i in 0..(MAX_TRACKED_SOURCES as u64 + 100) {
            log.record(i, t, interval);
        }
        assert_eq!(log.tracked(), MAX_TRACKED_SOURCES);
        // Once their interval passed, old entries make room.
        let later = t + interval;
        assert_eq!(log.record(u64::MAX, later, interval), Some(0));
        assert_eq!(log.tracked(), 1);
    }
}
