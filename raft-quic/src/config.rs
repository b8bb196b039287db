//! The configuration of a [`QuicNetwork`](crate::QuicNetwork).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use raft_core::NodeId;

use crate::accept::GateConfig;
use crate::certs::NodeTls;
use crate::frame::MIN_MAX_FRAME_SIZE;

/// Everything a node's QUIC endpoint needs. Build it with [`QuicConfig::new`], which fills in
/// defaults suited to a LAN cluster, then adjust fields; [`QuicNetwork::bind`] validates it.
///
/// Every resource a peer can make this node spend is bounded by a field here: frame size and
/// decoded elements per frame, streams per connection, handshakes and inbound connections,
/// flow-control windows and memory per peer node id, and time (RPC, connect, handshake and idle
/// timeouts). No bound is per Raft group: the groups of a process that share one network
/// ([`QuicNetwork::for_group`]) share its budgets, so any number of groups gets the budgets of
/// one. The bounds assume every node of a cluster uses the same values.
///
/// [`QuicNetwork::for_group`]: crate::QuicNetwork::for_group
///
/// [`QuicNetwork::bind`]: crate::QuicNetwork::bind
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct QuicConfig {
    /// This node's id. Its certificate must name it (`node-<id>.raft`).
    pub node_id: NodeId,
    /// The UDP address the endpoint binds; it both serves peers and dials them from there.
    pub listen_addr: SocketAddr,
    /// Where each peer listens: outbound RPCs may target only these ids. Must not contain
    /// `node_id`. Inbound connections are not limited to them: any peer whose certificate
    /// carries the node role and names one node id is served (a member added since this list
    /// was written must reach this node), unless that id is in `refused`.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// Node ids refused from the start (nodes removed from the cluster): no connection from or
    /// to them. More are added at run time with [`QuicNetwork::refuse`].
    ///
    /// [`QuicNetwork::refuse`]: crate::QuicNetwork::refuse
    pub refused: BTreeSet<NodeId>,
    /// The trusted node CA certificate(s), this node's certificate chain and its key.
    pub tls: NodeTls,
    /// The longest an outbound RPC may take, connection setup included. On the serving side,
    /// the longest an inbound request (or batch) may take to arrive, and, per stream, the
    /// longest its answers may wait in all for the peer to take them (one timeout summed over
    /// a batch's answers, not one per answer). The handlers' own time is not bounded by it.
    /// Must exceed `connect_timeout`: a dial happens within an RPC, and only a dial that ends
    /// (fails) turns the next one to a peer's next candidate address.
    ///
    /// **It also bounds how long an outbound connection may stay silent:** one on which an RPC
    /// timed out after packets were sent and none received during it (not even the ACKs of
    /// keep-alives) is closed, and the next RPC dials anew. A crashed and restarted peer is so
    /// found within one RPC timeout even when it sends no stateless reset (it does not for a
    /// connection younger than its connection-id lifetime, 10 s by default, still on its
    /// handshake id: see `idle_timeout`). The
    /// cost: a link outage longer than one RPC timeout (but shorter than `idle_timeout`) now
    /// closes a healthy connection too, and recovery after the outage takes a new handshake
    /// (plus any dial backoff) instead of the old connection resuming at once. A slow peer that
    /// is alive keeps its connection (its endpoint acknowledges packets however slow its
    /// handlers are). Default 2 s.
    pub rpc_timeout: Duration,
    /// The longest a connection attempt (QUIC and TLS handshake) may take; less than
    /// `rpc_timeout`. Default 1 s.
    pub connect_timeout: Duration,
    /// The largest frame (version byte, headers and body) this node sends or accepts. Larger
    /// inbound frames close their stream; larger outbound messages fail with
    /// `NetworkError::Codec`. All nodes of a cluster should use the same value. Default 16 MiB.
    pub max_frame_size: u32,
    /// The most elements of variable-length collections (log entries, member ids) one inbound
    /// frame may decode into; a frame with more is refused before they are allocated. Must be
    /// at least the senders' `Config::max_append_entries` plus the members of any membership
    /// entries among them. Default 262,144 (an `Entry` is 72 bytes: under 20 MB per frame).
    pub max_decoded_items: u64,
    /// The wait after the first failed connection attempt to a peer; it doubles with every
    /// consecutive failure. Default 50 ms.
    pub backoff_min: Duration,
    /// The cap of that wait. Default 2 s.
    pub backoff_max: Duration,
    /// The most RPCs a peer may have in flight towards this node on one connection (QUIC
    /// bidirectional stream limit), all its groups together; further ones wait for a slot.
    /// Default 256. Applies to the connections peers dial; on the connections this node dials,
    /// the peer may open no stream at all (it only answers). This node sends at most half as
    /// many bulk requests (frames above `priority_frame_threshold`) to one peer at once, so
    /// votes and heartbeats always find a slot.
    pub max_concurrent_streams: u32,
    /// The most inbound connections one node id may hold; a newer one closes its oldest (a
    /// restarted node's new connection always gets in, beside its stale one). Default 4.
    pub max_connections_per_node: usize,
    /// Who may complete a handshake and hold an inbound connection: slots counted after the
    /// handshake, address validation, handshake limits and timeout, quiet logs (see
    /// [`GateConfig`]). Default [`GateConfig::new(64)`](GateConfig::new).
    pub accept: GateConfig,
    /// How much unread data a peer may send on one stream (per-stream flow-control window).
    /// Default 4 MiB.
    pub stream_receive_window: u32,
    /// The memory one peer may pin: QUIC flow control lets a connection send at most this much
    /// that this node has not read yet, and the requests this node has read but not yet
    /// answered hold at most this much for each peer node id, all its connections together
    /// (their bytes, for frames above `priority_frame_threshold`, plus 1 KiB per decoded
    /// request, lone or in a batch, for the memory it pins until it is answered, plus 80 bytes
    /// per decoded element; the bytes of smaller frames are bounded by `max_concurrent_streams`
    /// instead). So one node id pins at most `max_connections_per_node + 1` times this. A large
    /// request waits for room (within the RPC timeout); one whose fixed cost and elements do not
    /// fit is refused as busy. Must be at least `max_frame_size`. Default 32 MiB: room for
    /// 32,768 requests without elements (votes, heartbeats) held at once.
    ///
    /// This node keeps at most half of it in bulk requests (frames above
    /// `priority_frame_threshold`) in flight to one peer, all groups together, taking turns
    /// (the bulk window): the other half of the peer's window is left for small requests, so
    /// one group's batches or snapshot chunks never hold up another's votes and heartbeats. A
    /// single peer thus gets at most half this window of bulk bytes per round trip.
    pub connection_receive_window: u32,
    /// How often an idle connection is pinged to keep it open and detect a dead peer.
    /// Keep it well below `rpc_timeout`: the silence check there counts on hearing the peer's
    /// acknowledgements (one keep-alive interval plus a round trip plus the peer's ACK delay)
    /// within one RPC timeout. Default 1 s.
    pub keep_alive_interval: Duration,
    /// A connection that hears nothing from its peer for this long is closed. An outbound
    /// connection is closed sooner, after one `rpc_timeout`, if an RPC on it times out while
    /// nothing is heard (see `rpc_timeout`), so this bounds mainly inbound connections and
    /// outbound ones no RPC uses. Default 10 s.
    pub idle_timeout: Duration,
    /// Outbound frames up to this size (votes, heartbeats, small appends) are sent with a
    /// higher stream priority than larger ones and never wait for the bulk window (see
    /// `connection_receive_window`), so they never queue behind a bulk transfer of any group;
    /// inbound requests up to this size never wait for memory. Default 16 KiB.
    pub priority_frame_threshold: usize,
    /// This node warns (at bind, and when its certificate is replaced) if its certificate
    /// expires within this long. Default 30 days.
    pub cert_expiry_warning: Duration,
}

impl QuicConfig {
    /// A configuration with the defaults documented on each field and no peers.
    pub fn new(node_id: NodeId, listen_addr: SocketAddr, tls: NodeTls) -> Self {
        Self {
            node_id,
            listen_addr,
            peers: BTreeMap::new(),
            refused: BTreeSet::new(),
            tls,
            rpc_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            max_frame_size: 16 << 20,
            max_decoded_items: 1 << 18,
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            max_concurrent_streams: 256,
            max_connections_per_node: 4,
            accept: GateConfig::new(64),
            stream_receive_window: 4 << 20,
            connection_receive_window: 32 << 20,
            keep_alive_interval: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(10),
            priority_frame_threshold: 16 << 10,
            cert_expiry_warning: Duration::from_secs(30 * 24 * 3600),
        }
    }

    /// Adds (or moves) peer `id` at `addr`.
    pub fn with_peer(mut self, id: NodeId, addr: SocketAddr) -> Self {
        self.peers.insert(id, addr);
        self
    }

    /// Checks that the values make sense together. `QuicNetwork::bind` calls it.
    pub fn validate(&self) -> Result<(), QuicConfigError> {
        let positive = [
            ("rpc_timeout", self.rpc_timeout),
            ("connect_timeout", self.connect_timeout),
            ("backoff_min", self.backoff_min),
            ("keep_alive_interval", self.keep_alive_interval),
        ];
        for (field, value) in positive {
            if value.is_zero() {
                return Err(QuicConfigError::new(field, "must be greater than zero"));
            }
        }
        if self.rpc_timeout <= self.connect_timeout {
            // A dial runs inside its RPC's timeout; one cut short records no failure, so the
            // peer's next candidate address would never be tried (see `crate::candidates`).
            let values = format!(
                "rpc_timeout = {:?}, connect_timeout = {:?}",
                self.rpc_timeout, self.connect_timeout
            );
            return Err(QuicConfigError::new("rpc_timeout", "must exceed connect_timeout")
                .with_values(values));
        }
        if self.peers.contains_key(&self.node_id) {
            return Err(QuicConfigError::new("peers", "must not contain the node's own id"));
        }
        if self.max_frame_size < MIN_MAX_FRAME_SIZE {
            return Err(QuicConfigError::new("max_frame_size", "must be at least 1024 bytes"));
        }
        if self.backoff_max < self.backoff_min {
            return Err(QuicConfigError::new("backoff_max", "must be at least backoff_min"));
        }
        if self.max_concurrent_streams == 0
            || self.max_decoded_items == 0
            || self.max_connections_per_node == 0
        {
            return Err(QuicConfigError::new(
                "max_concurrent_streams/max_decoded_items/max_connections_per_node",
                "must be at least 1",
            ));
        }
        if let Err(reason) = self.accept.validate() {
            return Err(QuicConfigError::new("accept", reason));
        }
        if self.stream_receive_window == 0
            || self.connection_receive_window < self.stream_receive_window
            || self.connection_receive_window < self.max_frame_size
        {
            return Err(QuicConfigError::new(
                "connection_receive_window",
                "windows must be positive, the connection's at least the stream's and \
                 max_frame_size",
            ));
        }
        if self.refused.contains(&self.node_id) {
            return Err(QuicConfigError::new("refused", "must not contain the node's own id"));
        }
        if self.idle_timeout <= self.keep_alive_interval {
            return Err(QuicConfigError::new("idle_timeout", "must exceed keep_alive_interval"));
        }
        if quinn::IdleTimeout::try_from(self.idle_timeout).is_err() {
            return Err(QuicConfigError::new("idle_timeout", "is too large"));
        }
        Ok(())
    }
}

/// A configuration value is out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid raft-quic configuration: {field} {reason}{}",
    values.as_deref().map(|v| format!(" ({v})")).unwrap_or_default()
)]
#[non_exhaustive]
pub struct QuicConfigError {
    /// The offending field.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: &'static str,
    /// The values found, when the check compares several (for example `rpc_timeout = 1s,
    /// connect_timeout = 1s`).
    pub values: Option<String>,
}

impl QuicConfigError {
    pub(crate) fn new(field: &'static str, reason: &'static str) -> Self {
        Self { field, reason, values: None }
    }

    /// The same error, showing the `values` found.
    fn with_values(mut self, values: String) -> Self {
        self.values = Some(values);
        self
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::QuicConfig;
    use crate::ClusterCa;

    /// Review finding M2 (rev_qaddr): a dial runs inside the RPC's timeout, and a failed dial
    /// is what turns the next one to the peer's next candidate address; a connect timeout the
    /// RPC timeout cuts short cancels every dial of a silent address, and the peer is never
    /// reached at its other one. So the RPC timeout must exceed the connect timeout.
    #[test]
    fn the_rpc_timeout_must_exceed_the_connect_timeout() {
        let ca = ClusterCa::generate().unwrap();
        let mut config =
            QuicConfig::new(1, "127.0.0.1:0".parse().unwrap(), ca.node_tls(1).unwrap());
        assert_eq!(config.validate(), Ok(()), "the defaults");
        for (rpc, connect) in [(300, 500), (500, 500)] {
            config.rpc_timeout = Duration::from_millis(rpc);
            config.connect_timeout = Duration::from_millis(connect);
            let error = config.validate().unwrap_err();
            assert_eq!(
                (error.field, error.reason),
                ("rpc_timeout", "must exceed connect_timeout"),
                "rpc {rpc} ms, connect {connect} ms"
            );
            // Review finding (second review of qaddr): the message shows both values.
            let message = error.to_string();
            let both = [format!("rpc_timeout = {rpc}ms"), format!("connect_timeout = {connect}ms")];
            assert!(both.iter().all(|value| message.contains(value.as_str())), "{message}");
        }
        config.rpc_timeout = Duration::from_millis(501);
        assert_eq!(config.validate(), Ok(()));
    }
}
