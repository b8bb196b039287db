//! The addresses a peer may be dialed at, and which one the next dial uses.
//!
//! Several sources may name an address for one node id (the memberships of several groups, and
//! the application's configuration: see [`crate::members`]). They are not comparable: the logs
//! of different groups have unrelated indexes, so the transport cannot know which of a moved
//! node's addresses is current. The most recently set address is tried first; when a dial of
//! the address in use fails (nothing answers, the handshake fails, or another node answers and
//! fails the identity check), the next dial tries the next candidate, round robin. The dials
//! stay paced by the peer's one backoff (a failure is a failure, whichever address it was at),
//! so a peer whose every address is dead costs what a peer with one dead address does. An
//! address that works is kept until it fails or the sources change.

use std::net::SocketAddr;

/// A peer's candidate addresses, most recently set first, and the one in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidates {
    /// Never empty, no duplicates.
    list: Vec<SocketAddr>,
    /// Index in `list` of the address dialed next (or connected to).
    current: usize,
}

impl Candidates {
    /// Candidates `list` (most recently set first; duplicates are dropped), starting with its
    /// first; `None` if `list` is empty.
    pub(crate) fn new(list: impl IntoIterator<Item = SocketAddr>) -> Option<Self> {
        let mut unique: Vec<SocketAddr> = Vec::new();
        for addr in list {
            if !unique.contains(&addr) {
                unique.push(addr);
            }
        }
        (!unique.is_empty()).then_some(Self { list: unique, current: 0 })
    }

    /// The address the next dial uses (or the connection is at).
    pub(crate) fn current(&self) -> SocketAddr {
        self.list[self.current]
    }

    /// Every candidate, most recently set first.
    pub(crate) fn all(&self) -> &[SocketAddr] {
        &self.list
    }

    /// Replaces the candidates with `new`'s and returns whether the address in use changed.
    /// A newly preferred address (another first candidate) is used at once, as a newly set
    /// address always was; otherwise the address in use is kept while it is still a candidate
    /// (a working address sticks), else the first candidate is used.
    pub(crate) fn replace(&mut self, new: Candidates) -> bool {
        let before = self.current();
        let keep = if new.list[0] == self.list[0] {
            new.list.iter().position(|&addr| addr == before)
        } else {
            None
        };
        *self = Self { current: keep.unwrap_or(0), ..new };
        self.current() != before
    }

    /// A dial of the address in use failed: the next dial uses the next candidate (round robin).
    /// Returns the address the next dial uses.
    pub(crate) fn failed(&mut self) -> SocketAddr {
        self.current = (self.current + 1) % self.list.len();
        self.current()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn candidates(ports: &[u16]) -> Candidates {
        Candidates::new(ports.iter().map(|&p| addr(p))).unwrap()
    }

    #[test]
    fn none_without_addresses_and_duplicates_dropped() {
        assert_eq!(Candidates::new([]), None);
        let c = candidates(&[1, 2, 1, 3, 2]);
        assert_eq!(c.all(), [addr(1), addr(2), addr(3)]);
        assert_eq!(c.current(), addr(1));
    }

    #[test]
    fn failures_go_round_robin_most_recent_first() {
        let mut c = candidates(&[1, 2, 3]);
        let tried: Vec<SocketAddr> = (0..5).map(|_| c.failed()).collect();
        assert_eq!(tried, [addr(2), addr(3), addr(1), addr(2), addr(3)]);
        let mut one = candidates(&[7]);
        assert_eq!(one.failed(), addr(7));
    }

    #[test]
    fn a_working_address_sticks_unless_a_newer_one_is_set() {
        let mut c = candidates(&[1, 2]);
        c.failed();
        assert_eq!(c.current(), addr(2));
        // The same candidates handed over again, or another one added behind: kept.
        assert!(!c.replace(candidates(&[1, 2])));
        assert!(!c.replace(candidates(&[1, 3, 2])));
        assert_eq!(c.current(), addr(2));
        // The address in use is no longer a candidate: the first one.
        assert!(c.replace(candidates(&[1, 3])));
        assert_eq!(c.current(), addr(1));
        c.failed();
        // A newly preferred address is used at once.
        assert!(c.replace(candidates(&[4, 1, 3])));
        assert_eq!(c.current(), addr(4));
        // Already in use as the new first: unchanged.
        let mut d = candidates(&[1, 2]);
        d.failed();
        assert!(!d.replace(candidates(&[2, 1])));
        assert_eq!(d.current(), addr(2));
    }

    /// Review finding M1 (rev_qaddr): another source naming an address (perhaps a stale one)
    /// later must not move a peer off the address its working connection is at.
    #[test]
    fn a_working_connection_is_not_dropped_for_a_newly_named_address() {
        let mut c = candidates(&[2]);
        assert!(!c.replace(candidates(&[1, 2])), "moved off the working address");
        assert_eq!(c.current(), addr(2));
    }
}
