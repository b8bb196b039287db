//! [`QuicGroupNetwork`]: one Raft group's view of a [`QuicNetwork`] that all the groups of a
//! process share.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use raft_core::{Envelope, GroupId, Network, NetworkError, NodeId, NodeInfo, RpcResponse};

use crate::members::SourceId;
use crate::network::QuicNetwork;

/// One Raft group's [`Network`] on a [`QuicNetwork`] shared by all the groups of a process:
/// made by [`QuicNetwork::for_group`], handed to that group's node.
///
/// Guarantees:
/// - **One endpoint, one connection per peer process.** Requests travel over the shared
///   network's endpoint and its cached connection to the receiver, with every other group's;
///   the envelope's group id travels in the frame, and the one handler the network serves
///   (a host that routes by group id) receives them. The mutual TLS identity checks, the
///   refused ids and every limit of the shared network apply unchanged.
/// - **Its own membership.** `members_changed` records this group's member addresses apart
///   from every other group's; the network dials from their union, so this group's membership
///   change never forgets an address another group still names (see [`QuicNetwork::for_group`]).
///   They are forgotten when the last clone of this view is dropped.
/// - **Fair.** Its bulk requests (above `QuicConfig::priority_frame_threshold`) take turns with
///   other groups' for the peer's bulk window, and its small ones (votes, heartbeats) never wait
///   for that window (see [`QuicNetwork`]). Fairness follows the envelope's group id.
///
/// Clones share the view.
#[derive(Clone)]
pub struct QuicGroupNetwork {
    view: Arc<View>,
}

/// A group's membership source; forgets its addresses when the last clone goes.
struct View {
    network: QuicNetwork,
    group: GroupId,
    source: SourceId,
}

impl Drop for View {
    fn drop(&mut self) {
        self.network.member_addresses().remove_source(&self.network, self.source);
    }
}

impl std::fmt::Debug for QuicGroupNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicGroupNetwork")
            .field("group_id", &self.view.group)
            .field("network", &self.view.network)
            .finish()
    }
}

impl QuicGroupNetwork {
    pub(crate) fn new(network: QuicNetwork, group: GroupId) -> Self {
        let source = network.member_addresses().new_source();
        Self { view: Arc::new(View { network, group, source }) }
    }

    /// The group this view was made for.
    pub fn group_id(&self) -> GroupId {
        self.view.group
    }

    /// The shared network (to serve the process's handler, refuse a node, close the endpoint).
    pub fn network(&self) -> &QuicNetwork {
        &self.view.network
    }

    /// This node's id (the process's, shared by its groups).
    pub fn node_id(&self) -> NodeId {
        self.view.network.node_id()
    }
}

#[async_trait]
impl Network for QuicGroupNetwork {
    /// Sends over the shared network (see [`QuicNetwork`]'s `send`).
    async fn send(&self, request: Envelope) -> Result<RpcResponse, NetworkError> {
        self.view.network.send(request).await
    }

    /// The shared network's limit: the frame size is one for all groups.
    fn max_request_bytes(&self) -> Option<u64> {
        self.view.network.max_request_bytes()
    }

    /// Records this group's member addresses (as [`QuicNetwork`]'s `members_changed` does for
    /// one group), apart from every other group's: an address this group stops naming is
    /// forgotten only if no other group names one and the application configured none.
    fn members_changed(&self, members: &BTreeMap<NodeId, NodeInfo>) {
        let view = &self.view;
        view.network.member_addresses().apply(
            &view.network,
            view.source,
            Some(view.group),
            members,
        );
    }
}
