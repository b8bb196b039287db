//! The addresses a peer may be dialed at, and which one the next dial uses.
//!
//! Several sources may name an address for one node id (the memberships of several groups, and
//! the application's configuration: see [`crate::members`]). They are not comparable: the logs
//! of different groups have unrelated indexes, so the transport cannot know which of a moved
//! node's addresses is current. The most recently set address is tried first; when a dial of
//! the address in use fails (nothing answers, the handshake fails, or another node answers and
//! fails the identity check), the next dial tries the next candidate, round robin. The dials
//! stay paced by the peer's one backoff (a failure is a failure, whichever address it was at),
//! so a peer whose every address is dead costs what a peer with one dead address does.
//!
//! **Make before break.** A source naming another address first while the peer's connection
//! works does not drop that connection (the new address may be a stale one: a lagging group
//! started later, an uncommitted membership rolled back), nor keep it for good (the new address
//! may be the peer's move, and the old one retired silently later). The newly preferred address
//! is *probed*: dialed in the background, started lazily by an RPC that finds the connection
//! working (never from a synchronous call), one probe at a time, paced by the probe's own
//! backoff (separate from the peer's dial backoff: a failed probe never delays a redial), never
//! holding up an RPC ([`Candidates::take_probe`]). If the probe connects (and the peer proves its
//! identity, as on any dial), the peer moves there ([`Candidates::probe_connected`]) and the old
//! connection is retired; no other move by probe follows for `backoff_max`. If it fails, the
//! working connection stays and the probe is retried (by a later RPC, under the probe's backoff)
//! as long as that address is the newly preferred one; it is dialed first once that
//! connection or a dial fails. The application's own word (`set_peer`) moves the peer at once,
//! and so does a change that leaves the address in use out of the candidates.

use std::net::SocketAddr;

/// How a change of the candidates treats the address in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Move {
    /// The application's word (`set_peer`): the first candidate is used at once.
    AtOnce,
    /// What the memberships say: while the peer's connection works (`connected`), the address
    /// in use stays as long as it is a candidate, and a newly preferred one is probed (see the
    /// module's doc); without a working connection it is used at once.
    Sticky {
        /// Whether the peer has a working (open) connection at the address in use.
        connected: bool,
    },
}

/// A peer's candidate addresses, most recently set first, and the one in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidates {
    /// Never empty, no duplicates.
    list: Vec<SocketAddr>,
    /// Index in `list` of the address dialed next (or connected to).
    current: usize,
    /// A newly preferred (first) address was named while a working connection kept the
    /// address in use: it is probed, and dialed next once the connection or a dial fails.
    /// Never set while `current` is 0.
    first_next: bool,
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
        (!unique.is_empty()).then_some(Self { list: unique, current: 0, first_next: false })
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
    /// `Move::AtOnce` (the application's word) uses the first candidate at once. Otherwise the
    /// address in use is kept while it is still a candidate and either the first candidate is
    /// the same as before or (`Move::Sticky`) the peer's connection works: a working
    /// connection is not dropped because a source names another address later (it may be a
    /// stale one); the newly preferred address is probed (see [`take_probe`](Self::take_probe)).
    /// Without a working connection a newly preferred address is used at once, and so is the
    /// first candidate when the address in use is no longer one.
    pub(crate) fn replace(&mut self, new: Candidates, how: Move) -> bool {
        let before = self.current();
        let kept = new.list.iter().position(|&addr| addr == before);
        let same_first = new.list[0] == self.list[0];
        let (current, first_next) = match (kept, how) {
            (_, Move::AtOnce) => (0, false),
            (Some(at), _) if same_first => (at, self.first_next),
            (Some(at), Move::Sticky { connected: true }) => (at, true),
            _ => (0, false),
        };
        *self = Self { list: new.list, current, first_next: first_next && current != 0 };
        self.current() != before
    }

    /// The address to probe, if any: the newly preferred (first) address, while a working
    /// connection keeps the peer at another one. It stays the one to probe (a failed probe is
    /// retried, paced by the caller) until the peer moves or the candidates change.
    pub(crate) fn take_probe(&self) -> Option<SocketAddr> {
        self.first_next.then(|| self.list[0])
    }

    /// Whether `addr` is the newly preferred address waiting for a probe or its outcome.
    pub(crate) fn is_probe_target(&self, addr: SocketAddr) -> bool {
        self.first_next && self.list[0] == addr
    }

    /// A probe of `addr` connected: if `addr` is still the newly preferred address waiting
    /// for one, the peer moves there (returns true); otherwise (the peer moved meanwhile, or
    /// the candidates changed) the probe's connection is of no use (false).
    pub(crate) fn probe_connected(&mut self, addr: SocketAddr) -> bool {
        if !self.is_probe_target(addr) {
            return false;
        }
        self.current = 0;
        self.first_next = false;
        true
    }

    /// The peer's connection at the address in use failed: if a newly preferred address was
    /// named meanwhile, the next dial uses it.
    pub(crate) fn connection_lost(&mut self) {
        if std::mem::take(&mut self.first_next) {
            self.current = 0;
        }
    }

    /// A dial of the address in use failed: the next dial uses the newly preferred address if
    /// one was named while a connection kept the peer elsewhere, else the next candidate
    /// (round robin). Returns the address the next dial uses.
    pub(crate) fn failed(&mut self) -> SocketAddr {
        if std::mem::take(&mut self.first_next) {
            self.current = 0;
        } else {
            self.current = (self.current + 1) % self.list.len();
        }
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
    fn a_working_address_sticks() {
        let mut c = candidates(&[1, 2]);
        c.failed();
        assert_eq!(c.current(), addr(2));
        // The same candidates handed over again, or another one added behind: kept.
        assert!(!c.replace(candidates(&[1, 2]), Move::Sticky { connected: false }));
        assert!(!c.replace(candidates(&[1, 3, 2]), Move::Sticky { connected: false }));
        assert_eq!(c.current(), addr(2));
        // The address in use is no longer a candidate: the first one.
        assert!(c.replace(candidates(&[1, 3]), Move::Sticky { connected: true }));
        assert_eq!(c.current(), addr(1));
        c.failed();
        // A newly preferred address with no working connection: used at once.
        assert!(c.replace(candidates(&[4, 1, 3]), Move::Sticky { connected: false }));
        assert_eq!(c.current(), addr(4));
        // Already in use as the new first: unchanged.
        let mut d = candidates(&[1, 2]);
        d.failed();
        assert!(!d.replace(candidates(&[2, 1]), Move::Sticky { connected: true }));
        assert_eq!(d.current(), addr(2));
    }

    /// Review finding M1 (rev_qaddr): another source naming an address (perhaps a stale one)
    /// later does not move a peer off the address its working connection is at; the newly
    /// preferred address is the next one tried once that connection or a dial fails. The
    /// application's own word (`set_peer`) still moves it at once.
    #[test]
    fn a_working_connection_is_not_dropped_for_a_newly_named_address() {
        let mut c = candidates(&[2]);
        assert!(!c.replace(candidates(&[1, 2]), Move::Sticky { connected: true }));
        assert_eq!(c.current(), addr(2));
        // Still kept when the sources change again around it.
        assert!(!c.replace(candidates(&[3, 1, 2]), Move::Sticky { connected: true }));
        assert_eq!(c.current(), addr(2));
        // The connection fails: the newly preferred address is dialed next.
        c.connection_lost();
        assert_eq!(c.current(), addr(3));
        // A dial failure instead: the same.
        let mut d = candidates(&[2]);
        assert!(!d.replace(candidates(&[1, 2]), Move::Sticky { connected: true }));
        assert_eq!(d.failed(), addr(1));
        // Once at the first, connection losses change nothing.
        d.connection_lost();
        assert_eq!(d.current(), addr(1));
        // The application's word moves it at once, connected or not.
        let mut e = candidates(&[2]);
        assert!(e.replace(candidates(&[1, 2]), Move::AtOnce));
        assert_eq!(e.current(), addr(1));
    }
    /// Review findings M-A (second review of qaddr) and M-2 (third): the newly preferred address
    /// is the one to probe while the connection works; a probe that connects moves the peer
    /// there, one that fails keeps it where it is, and the address stays the one to probe (a
    /// failed probe is retried, paced by the caller) until the peer moves or it is no longer
    /// the newly preferred one.
    #[test]
    fn a_newly_preferred_address_is_probed_while_connected() {
        let mut c = candidates(&[2]);
        assert_eq!(c.take_probe(), None, "nothing newly preferred");
        assert!(!c.replace(candidates(&[1, 2]), Move::Sticky { connected: true }));
        assert_eq!(c.take_probe(), Some(addr(1)));
        assert_eq!(c.take_probe(), Some(addr(1)), "retried until it connects");
        // The same list again: still the one to probe.
        assert!(!c.replace(candidates(&[1, 2]), Move::Sticky { connected: true }));
        assert_eq!(c.take_probe(), Some(addr(1)));
        // The probe connected: the peer moves to the first candidate.
        assert!(c.probe_connected(addr(1)));
        assert_eq!(c.current(), addr(1));
        assert_eq!(c.take_probe(), None);
        assert!(!c.probe_connected(addr(1)), "already there");

        // A failed probe keeps the peer where it is.
        let mut d = candidates(&[2]);
        d.replace(candidates(&[1, 2]), Move::Sticky { connected: true });
        assert_eq!(d.take_probe(), Some(addr(1)));
        assert_eq!(d.current(), addr(2));
        assert!(!d.replace(candidates(&[1, 3, 2]), Move::Sticky { connected: true }));
        assert_eq!(d.take_probe(), Some(addr(1)));
        assert!(!d.replace(candidates(&[4, 1, 3, 2]), Move::Sticky { connected: true }));
        // A probe of an address no longer the newly preferred one does not move the peer.
        assert!(!d.probe_connected(addr(1)));
        assert_eq!(d.current(), addr(2));
        assert_eq!(d.take_probe(), Some(addr(4)));
        // The connection fails: the newly preferred address is dialed next, and not probed.
        d.connection_lost();
        assert_eq!(d.current(), addr(4));
        assert_eq!(d.take_probe(), None);
        assert!(!d.probe_connected(addr(4)));
    }

    /// Review finding L-a (second review of qaddr): the application's word moves the peer to
    /// its first candidate at once even when that address was already the first one (named
    /// while a connection kept the peer at another). (Before, an unchanged first candidate kept
    /// the address in use.)
    #[test]
    fn set_peer_moves_at_once_to_an_address_already_first() {
        let mut c = candidates(&[2]);
        assert!(!c.replace(candidates(&[1, 2]), Move::Sticky { connected: true }));
        assert!(c.replace(candidates(&[1, 2]), Move::AtOnce));
        assert_eq!(c.current(), addr(1));
        assert_eq!(c.take_probe(), None);
    }
}
