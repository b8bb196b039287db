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

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Mutex;

use raft_core::{NodeId, NodeInfo};
use tracing::warn;

use crate::client::lock;
use crate::network::QuicNetwork;

/// Where this network's peer addresses come from: the application's configuration, and the
/// membership (which takes precedence while it names an address).
#[derive(Debug, Default)]
pub(crate) struct MembershipAddresses {
    /// One lock, so that the application's `set_peer`/`remove_peer` and the node's
    /// `members_changed` are applied one after the other (lock order: this, then the peers).
    state: Mutex<Sources>,
}

#[derive(Debug, Default)]
struct Sources {
    /// The addresses the application configured (bind, `set_peer`), put back when the
    /// membership stops naming one for that id.
    configured: BTreeMap<NodeId, SocketAddr>,
    /// The ids whose address was taken from the membership last applied.
    learned: BTreeSet<NodeId>,
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
        Self { state: Mutex::new(Sources { configured, learned: BTreeSet::new() }) }
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

    /// Applies the membership's metadata to `network`: sets (or moves) the address of every
    /// member that gives a valid one, and forgets the addresses it took from an earlier
    /// membership for ids that are no longer members or no longer give one, putting back the
    /// address the application configured for them, if any. Addresses set with `set_peer` for
    /// ids the membership gives none for are left alone; an invalid address is logged and
    /// skipped.
    pub(crate) fn apply(&self, network: &QuicNetwork, members: &BTreeMap<NodeId, NodeInfo>) {
        let own = network.node_id();
        let mut state = lock(&self.state);
        let mut now = BTreeSet::new();
        let refused = network.refused();
        for &id in members.keys().filter(|id| refused.contains(id)) {
            // The application refused it as removed for good, and its id is a member again: it
            // is never reached nor heard, which a voter's quorum may need.
            warn!(
                node = own,
                peer = id,
                "a member of the membership is refused here (QuicNetwork::refuse): the ids of \
                 removed nodes must not be used again"
            );
        }
        for (&id, info) in members
            .iter()
            .filter(|(&id, info)| id != own && !info.address.is_empty() && !refused.contains(&id))
        {
            match parse_address(&info.address) {
                Ok(addr) => {
                    if network.place_peer(id, addr) {
                        now.insert(id);
                    }
                }
                Err(error) => {
                    warn!(node = own, peer = id, %error, "ignoring a member's address");
                }
            }
        }
        for &gone in state.learned.difference(&now) {
            match state.configured.get(&gone) {
                Some(&configured) => {
                    network.place_peer(gone, configured);
                }
                None => network.drop_peer(gone),
            }
        }
        state.learned = now;
    }
}
