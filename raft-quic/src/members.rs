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
//! When two sources name different addresses for one id (a node moved and one group's log does not
//! say so yet), the address set most recently wins; when its source stops naming it, the next most
//! recent one comes back. A source's addresses go when its view is dropped (the group removed).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Mutex;

use raft_core::{GroupId, NodeId, NodeInfo};
use tracing::warn;

use crate::client::lock;
use crate::network::QuicNetwork;

/// Who hands membership addresses over: the network used directly ([`NETWORK_SOURCE`]) or one
/// group's view of it (a number from [`MembershipAddresses::new_source`]).
pub(crate) type SourceId = u64;

/// The source of `members_changed` called on the [`QuicNetwork`] itself.
pub(crate) const NETWORK_SOURCE: SourceId = 0;

/// Where this network's peer addresses come from: the application's configuration, and the
/// memberships of its groups (which take precedence while one names an address).
#[derive(Debug, Default)]
pub(crate) struct MembershipAddresses {
    /// One lock, so that the application's `set_peer`/`remove_peer` and the nodes'
    /// `members_changed` are applied one after the other (lock order: this, then the peers).
    state: Mutex<Sources>,
}

#[derive(Debug, Default)]
struct Sources {
    /// The addresses the application configured (bind, `set_peer`), put back when no
    /// membership names one for that id.
    configured: BTreeMap<NodeId, SocketAddr>,
    /// The addresses each source's membership last applied named, by source, then by node id.
    learned: BTreeMap<SourceId, BTreeMap<NodeId, Learned>>,
    /// Stamps each learned address with when it was set, to pick the latest of several.
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
    /// The address of `id` that the memberships name, the most recently set one if several do.
    fn learned_address(&self, id: NodeId) -> Option<SocketAddr> {
        let named = self.learned.values().filter_map(|addresses| addresses.get(&id));
        named.max_by_key(|learned| learned.stamp).map(|learned| learned.addr)
    }

    /// Points peer `id` at what the sources say now: the memberships' address, else the
    /// configured one, else none.
    fn settle(&self, network: &QuicNetwork, id: NodeId) {
        match self.learned_address(id).or_else(|| self.configured.get(&id).copied()) {
            Some(addr) => {
                network.place_peer(id, addr);
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
                if network.place_peer(id, addr) {
                    state.configured.insert(id, addr);
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
                        _ => {
                            state.next_stamp += 1;
                            state.next_stamp
                        }
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
