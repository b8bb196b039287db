//! [`QuietLog`]: warnings that a steady fault cannot turn into a flood of log lines: at most
//! one line per [`WARN_INTERVAL`] per source (a peer and the kind of event), with the count of
//! the events not logged since. Refused requests are logged through it, on both sides.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

/// The least time between two warnings of one source.
pub(crate) const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// The most sources tracked one by one; beyond, newcomers are not logged one by one.
const MAX_TRACKED_SOURCES: usize = 256;

/// Which events of each source to log (see the module docs). Times are the runtime's clock.
#[derive(Debug)]
pub(crate) struct QuietLog<K> {
    /// Source -> when its last event was logged, events since.
    sources: HashMap<K, (Duration, u64)>,
}

impl<K> Default for QuietLog<K> {
    fn default() -> Self {
        Self { sources: HashMap::new() }
    }
}

impl<K: Hash + Eq> QuietLog<K> {
    /// Records an event of `source` at `now`; returns `Some(suppressed)` if it is to be logged,
    /// with the number of events of `source` not logged since its last logged one.
    pub(crate) fn record(&mut self, source: K, now: Duration) -> Option<u64> {
        let due = |at: Duration| now.saturating_sub(at) >= WARN_INTERVAL;
        if !self.sources.contains_key(&source) && self.sources.len() >= MAX_TRACKED_SOURCES {
            self.sources.retain(|_, (at, _)| !due(*at));
            if self.sources.len() >= MAX_TRACKED_SOURCES {
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
    use super::*;

    #[test]
    fn one_warning_per_interval_per_source_with_a_count() {
        let mut log = QuietLog::default();
        let t = Duration::from_secs(100);
        assert_eq!(log.record((2, "WrongCluster"), t), Some(0));
        for i in 1..=5 {
            assert_eq!(log.record((2, "WrongCluster"), t + Duration::from_secs(i)), None);
        }
        assert_eq!(log.record((3, "WrongCluster"), t), Some(0), "another peer is its own source");
        assert_eq!(log.record((2, "WrongNode"), t), Some(0), "another kind is its own source");
        assert_eq!(log.record((2, "WrongCluster"), t + WARN_INTERVAL), Some(5));
        assert_eq!(log.record((2, "WrongCluster"), t + WARN_INTERVAL), None);
    }

    #[test]
    fn the_sources_tracked_are_bounded() {
        let mut log = QuietLog::default();
        let t = Duration::ZERO;
        for i in 0..(MAX_TRACKED_SOURCES as u64 + 10) {
            log.record(i, t);
        }
        assert_eq!(log.sources.len(), MAX_TRACKED_SOURCES);
        assert_eq!(log.record(u64::MAX, t + WARN_INTERVAL), Some(0));
        assert_eq!(log.sources.len(), 1);
    }
}
