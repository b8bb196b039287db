//! Peer addresses from the cluster membership (`Network::members_changed`): the node tells the
//! network every member's [`NodeInfo`] at start and whenever it changes, and a member's
//! `address` (`ip:port`, UTF-8) becomes that peer's address here, so that adding a node needs no
//! address plumbing in the application and a restarted node knows every address its log holds.
//!
//! The membership a node hands over may be uncommitted and rolled back, so it only ever adds,
//! moves and forgets *addresses*; it never refuses a node (a learner removed and added again
//! keeps its id, and a removal can be overwritten). Refusing a removed node stays the
//! application's decision, once the removal is committed ([`QuicNetwork::refuse`]).
//!
//! The addresses the application configured (`QuicConfig::peers` at bind, `set_peer`,
//! `remove_peer`) are kept apart from the ones the membership gave: when a membership stops
//! naming an id's address (the member left, or an uncommitted entry that named it was rolled
//! back), the address the application configured for that id comes back, and only an id the
//! application never configured is forgotten.
//!
//! **Several groups, one network.** Each Raft group of a process hands over its own membership
//! (through its [`QuicGroupNetwork`](crate::QuicGroupNetwork) view; the network used directly is
//! one more source). Every source's addresses are kept apart and the peers are dialed from their
//! union, so one group's membership change never forgets an address another group still names.
//! A source's addresses go when its view is dropped (the group removed).
//!
//! **A node several sources name different addresses for** (it moved, and some group's log does not
//! say so yet). The memberships of different groups are not comparable (their log indexes are
//! unrelated), so which address is current cannot be known here. Every address named is a candidate
//! ([`Candidates`]), ranked by when it was set (the application's configured address too: those
//! given at bind are the oldest, a `set_peer` is the newest then): the one set most recently is
//! dialed first, then, each time a dial fails (nothing answers there, or another node does and
//! fails the identity check: the peer's certificate must name the id dialed), the next dial tries
//! the next one, round robin. The dials are paced by the peer's one backoff, so a node whose every
//! address is dead costs what one dead address does. Make before break: a source naming another
//! address first while the peer's connection works does not drop that connection; the new first
//! address is probed in the background (started by the next RPC, paced by the probes' own backoff),
//! and the connection moves there once the probe connects (the peer proved its id there; at most
//! one such move per `backoff_max`); a failed probe keeps the working connection and is retried
//! while the address is the newly preferred one, and the address is dialed once that connection or
//! a dial fails (see [`crate::candidates`]). `set_peer` moves the peer at once. So after a restart
//! in which a lagging group's stale address is set last, every group reaches the moved node after
//! the failed dials of the addresses ranked before its live one: with the live address k places
//! after the first, at most the sum over i = 1..k of (`connect_timeout` + min(`backoff_min` *
//! 2^(i-1), `backoff_max`)), plus Raft's next send, provided no source names a new first address
//! meanwhile while no connection works (which restarts the count); `rpc_timeout > connect_timeout`
//! (enforced by `QuicConfig::validate`) lets every dial run to its end. Not handled: two *live*
//! endpoints proving the same node id (two processes with one id, an operator error): the most
//! recently set address that answers is used (a probe of it connects), as the other one answers
//! too.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Mutex;

use raft_core::{GroupId, NodeId, NodeInfo};
use tracing::warn;

use crate::candidates::Candidates;
use crate::client::lock;
use crate::network::QuicNetwork;

/// Who hands membership addresses over: the network used directly ([`NETWORK_SOURCE`]) or one
/// group's view of it (a number from [`MembershipAddresses::new_source`]).
pub(crate) type SourceId = u64;

/// The source of `members_changed` called on the [`QuicNetwork`] itself.
pub(crate) const NETWORK_SOURCE: SourceId = 0;

/// Where this network's peer addresses come from: the application's configuration, and the
/// memberships of its groups, ranked as candidates by when each address was set.
#[derive(Debug, Default)]
pub(crate) struct MembershipAddresses {
    /// One lock, so that the application's `set_peer`/`remove_peer` and the nodes'
    /// `members_changed` are applied one after the other (lock order: this, then the peers).
    state: Mutex<Sources>,
}

#[derive(Debug, Default)]
struct Sources {
    /// The addresses the application configured (bind, `set_peer`), put back when no
    /// membership names one for that id; stamped like the learned ones (those given at bind
    /// with 0, the oldest), so that an address is ranked among the candidates by when it was
    /// set, whoever set it.
    configured: BTreeMap<NodeId, Learned>,
    /// The addresses each source's membership last applied named, by source, then by node id.
    learned: BTreeMap<SourceId, BTreeMap<NodeId, Learned>>,
    /// Stamps each learned or configured address with when it was set, to rank several.
    next_stamp: u64,
    /// The last source number handed out ([`NETWORK_SOURCE`] is 0).
    last_source: SourceId,
}

/// An address a membership named, and when that source started naming it.
#[derive(Debug, Clone, Copy)]
struct Learned {
    addr: SocketAddr,
    stamp: u64,
}

impl Sources {
    /// The addresses of `id` that the memberships name and the application configured, the
    /// most recently set first (the same order whoever set them); `None` if there is none.
    fn candidates(&self, id: NodeId) -> Option<Candidates> {
        let learned = self.learned.values().filter_map(|addresses| addresses.get(&id));
        let mut named: Vec<Learned> = learned.chain(self.configured.get(&id)).copied().collect();
        named.sort_by_key(|learned| std::cmp::Reverse(learned.stamp));
        Candidates::new(named.into_iter().map(|learned| learned.addr))
    }

    /// A stamp newer than every one given before.
    fn stamp(&mut self) -> u64 {
        self.next_stamp += 1;
        self.next_stamp
    }

    /// Points peer `id` at what the sources say now (see [`candidates`](Self::candidates));
    /// none if no source names one. A working connection stays while its address is still a
    /// candidate (see [`Candidates::replace`]).
    fn settle(&self, network: &QuicNetwork, id: NodeId) {
        match self.candidates(id) {
            Some(addrs) => {
                network.place_peer(id, addrs, false);
            }
            None => network.drop_peer(id),
        }
    }
}

/// Why a member's address was not used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AddressError {
    #[error("the address is not UTF-8")]
    NotUtf8,
    #[error("{0:?} is not an ip:port address (names are not resolved here: use set_peer)")]
    NotSocketAddr(String),
}

/// Parses a member's address: an IP address and a port, such as `10.0.0.4:7000` or
/// `[::1]:7000`. Names are not resolved: the node calls `members_changed` from its main loop,
/// which must not block on DNS.
pub(crate) fn parse_address(address: &[u8]) -> Result<SocketAddr, AddressError> {
    let text = std::str::from_utf8(address).map_err(|_| AddressError::NotUtf8)?;
    text.parse().map_err(|_| AddressError::NotSocketAddr(text.to_owned()))
}

impl MembershipAddresses {
    /// Starts from the addresses configured at bind.
    pub(crate) fn new(configured: BTreeMap<NodeId, SocketAddr>) -> Self {
        let configured =
            configured.into_iter().map(|(id, addr)| (id, Learned { addr, stamp: 0 })).collect();
        Self { state: Mutex::new(Sources { configured, ..Sources::default() }) }
    }

    /// A new source of memberships (a group's view), never handed out before.
    pub(crate) fn new_source(&self) -> SourceId {
        let mut state = lock(&self.state);
        state.last_source += 1;
        state.last_source
    }

    /// The application sets (`Some`) or forgets (`None`) peer `id`'s address: it takes effect
    /// now, and is what the peer falls back to when no membership names an address for `id`.
    pub(crate) fn configure(&self, network: &QuicNetwork, id: NodeId, addr: Option<SocketAddr>) {
        let mut state = lock(&self.state);
        match addr {
            Some(addr) => {
                // Set last, so the first candidate, and used at once (the application's word),
                // the memberships' addresses as the next candidates.
                let stamp = state.stamp();
                let before = state.configured.insert(id, Learned { addr, stamp });
                let placed =
                    state.candidates(id).is_some_and(|addrs| network.place_peer(id, addrs, true));
                if !placed {
                    match before {
                        Some(before) => state.configured.insert(id, before),
                        None => state.configured.remove(&id),
                    };
                }
            }
            None => {
                state.configured.remove(&id);
                network.drop_peer(id);
            }
        }
    }

    /// Applies the membership `source` hands over (of `group`, for the logs) to `network`:
    /// sets (or moves) the address of every member that gives a valid one, and forgets the
    /// addresses this source took from its earlier membership for ids that are no longer
    /// members or no longer give one, unless another source still names one (then that one is
    /// used) or the application configured one (then it comes back). Addresses set with
    /// `set_peer` for ids no membership gives one for are left alone; an invalid address is
    /// logged and skipped.
    pub(crate) fn apply(
        &self,
        network: &QuicNetwork,
        source: SourceId,
        group: Option<GroupId>,
        members: &BTreeMap<NodeId, NodeInfo>,
    ) {
        let own = network.node_id();
        let mut state = lock(&self.state);
        let refused = network.refused();
        for &id in members.keys().filter(|id| refused.contains(id)) {
            // The application refused it as removed for good, and its id is a member again: it
            // is never reached nor heard, which a voter's quorum may need.
            warn!(
                node = own,
                peer = id,
                group,
                "a member of the membership is refused here (QuicNetwork::refuse): the ids of \
                 removed nodes must not be used again"
            );
        }
        let before = state.learned.remove(&source).unwrap_or_default();
        let mut now = BTreeMap::new();
        for (&id, info) in members
            .iter()
            .filter(|(&id, info)| id != own && !info.address.is_empty() && !refused.contains(&id))
        {
            match parse_address(&info.address) {
                Ok(addr) => {
                    // An address this source already named keeps its stamp: re-announcing an
                    // old address does not make it the latest.
                    let stamp = match before.get(&id) {
                        Some(known) if known.addr == addr => known.stamp,
                        _ => state.stamp(),
                    };
                    now.insert(id, Learned { addr, stamp });
                }
                Err(error) => {
                    warn!(node = own, peer = id, group, %error, "ignoring a member's address");
                }
            }
        }
        let touched: BTreeSet<NodeId> = before.keys().chain(now.keys()).copied().collect();
        if !now.is_empty() {
            state.learned.insert(source, now);
        }
        for id in touched {
            state.settle(network, id);
        }
    }

    /// Forgets what `source` named (its group was removed): each of its ids goes back to what
    /// the other sources say, as in [`apply`](Self::apply) with an empty membership.
    pub(crate) fn remove_source(&self, network: &QuicNetwork, source: SourceId) {
        let mut state = lock(&self.state);
        let Some(before) = state.learned.remove(&source) else { return };
        for &id in before.keys() {
            state.settle(network, id);
        }
    }
}
