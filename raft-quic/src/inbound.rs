//! [`Inbound`]: the established inbound connections of a node, by the node id each proved, with
//! what one identity may hold: at most `max_connections_per_node` connections (the newest
//! replaces the oldest), one memory budget for the requests of all of them (kept while any of
//! its requests holds memory, after its connections are gone, so that one reconnecting is
//! charged on the same budget), and log lines about its misbehaviour at most once per
//! interval. All per node id, that is per peer process, whatever the number of Raft groups its
//! requests belong to.

use std::collections::HashMap;
use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use raft_core::{NodeId, QuietLog};
use tracing::warn;

use crate::accept::MAX_LOGGED_SOURCES;
use crate::client::lock;
use crate::memory::MemoryBudget;
use crate::wire::code;

/// The most node ids whose last authenticated address is remembered (for the gate's reserve).
const MAX_REMEMBERED_ADDRESSES: usize = 1024;

/// `addr` with an IPv4-mapped IPv6 address written as IPv4, to compare addresses.
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// The inbound connections of one node id, oldest first, and the budget they share.
struct Identity {
    connections: Vec<(usize, quinn::Connection)>,
    budget: Arc<MemoryBudget>,
}

/// The limits of one identity.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IdentityLimits {
    /// Connections per node id; a newer one closes the oldest.
    pub(crate) max_connections: usize,
    /// Bytes the unanswered requests of one node id may hold, all its connections together.
    pub(crate) memory: u64,
    /// Misbehaviour of one node id is logged at most once per this interval.
    pub(crate) log_interval: Duration,
}

/// The inbound connections of a node (see the module docs).
pub(crate) struct Inbound {
    node: NodeId,
    limits: IdentityLimits,
    identities: Mutex<HashMap<NodeId, Identity>>,
    /// The memory budget of every node id that has one alive: while its connections are up, or
    /// after, while a request read on one of them is held (it holds its budget); at most one
    /// entry per budget alive (dead ones are pruned as budgets are made).
    budgets: Mutex<HashMap<NodeId, Weak<MemoryBudget>>>,
    /// The address each node id last authenticated from (a peer dials from where it listens),
    /// with when; at most [`MAX_REMEMBERED_ADDRESSES`].
    remembered: Mutex<HashMap<NodeId, (SocketAddr, Instant)>>,
    log: Mutex<QuietLog<NodeId>>,
    /// The origin of the times `log` records.
    epoch: Instant,
}

/// An inbound connection's registration: the budget its requests share with the other
/// connections of its node id. Unregisters the connection when dropped.
pub(crate) struct Registration {
    inbound: Arc<Inbound>,
    peer: NodeId,
    key: usize,
    /// The memory budget of the peer's node id.
    pub(crate) budget: Arc<MemoryBudget>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut identities = lock(&self.inbound.identities);
        if let Some(identity) = identities.get_mut(&self.peer) {
            identity.connections.retain(|(key, _)| *key != self.key);
            if identity.connections.is_empty() {
                identities.remove(&self.peer);
            }
        }
    }
}

impl Inbound {
    pub(crate) fn new(node: NodeId, limits: IdentityLimits) -> Arc<Self> {
        Arc::new(Self {
            node,
            limits,
            identities: Mutex::new(HashMap::new()),
            budgets: Mutex::new(HashMap::new()),
            remembered: Mutex::new(HashMap::new()),
            log: Mutex::new(QuietLog::new(limits.log_interval, MAX_LOGGED_SOURCES)),
            epoch: Instant::now(),
        })
    }

    /// Registers an authenticated connection of `peer` from `remote`, until the returned
    /// registration is dropped. If `peer` already holds the most connections allowed, its
    /// oldest is closed ([`code::REPLACED`]): a restarted node's new connection always gets in,
    /// and one certificate never holds more. Its requests are charged on the node id's budget
    /// while it is alive (its connections, or requests read on them and not yet answered, hold
    /// it), whatever connection they came on: a node id that reconnects gets no fresh budget
    /// while its earlier requests still hold memory.
    pub(crate) fn register(
        self: &Arc<Self>,
        peer: NodeId,
        connection: &quinn::Connection,
    ) -> Registration {
        let key = connection.stable_id();
        self.remember_address(peer, connection.remote_address());
        let mut identities = lock(&self.identities);
        let identity = identities
            .entry(peer)
            .or_insert_with(|| Identity { connections: Vec::new(), budget: self.budget_of(peer) });
        identity.connections.push((key, connection.clone()));
        let excess = identity.connections.len().saturating_sub(self.limits.max_connections);
        let replaced: Vec<_> = identity.connections.drain(..excess).map(|(_, c)| c).collect();
        let budget = Arc::clone(&identity.budget);
        drop(identities);
        for old in replaced {
            self.warn(peer, "closing its oldest connection: it opened one more than allowed");
            old.close(code::REPLACED, b"replaced by a newer connection of the same node");
        }
        Registration { inbound: Arc::clone(self), peer, key, budget }
    }

    /// The memory budget of `peer`: the one still alive if any, else a new one.
    fn budget_of(&self, peer: NodeId) -> Arc<MemoryBudget> {
        let mut budgets = lock(&self.budgets);
        if let Some(budget) = budgets.get(&peer).and_then(Weak::upgrade) {
            return budget;
        }
        budgets.retain(|_, budget| budget.strong_count() > 0);
        let budget = MemoryBudget::new(self.limits.memory);
        budgets.insert(peer, Arc::downgrade(&budget));
        budget
    }

    /// Every inbound connection of `peer` now.
    pub(crate) fn connections_of(&self, peer: NodeId) -> Vec<quinn::Connection> {
        let identities = lock(&self.identities);
        let connections = identities.get(&peer).map(|i| i.connections.as_slice()).unwrap_or(&[]);
        connections.iter().map(|(_, c)| c.clone()).collect()
    }

    fn remember_address(&self, peer: NodeId, addr: SocketAddr) {
        let mut remembered = lock(&self.remembered);
        if !remembered.contains_key(&peer) && remembered.len() >= MAX_REMEMBERED_ADDRESSES {
            let oldest = remembered.iter().min_by_key(|(_, (_, at))| *at).map(|(id, _)| *id);
            if let Some(oldest) = oldest {
                remembered.remove(&oldest);
            }
        }
        remembered.insert(peer, (canonical(addr), Instant::now()));
    }

    /// Whether a node last authenticated from `addr` (canonical).
    pub(crate) fn is_remembered(&self, addr: SocketAddr) -> bool {
        lock(&self.remembered).values().any(|(known, _)| *known == addr)
    }

    /// Logs `what` about `peer` at WARN, unless a line about it was logged within the
    /// interval: then it is only counted, and the count goes with the next line logged. A
    /// member sending bad frames in a loop costs one line per interval. (The dialer logs the
    /// stray answers of a peer here too: one log of each node id's misbehaviour.)
    pub(crate) fn warn(&self, peer: NodeId, what: impl Display) {
        let now = Instant::now().saturating_duration_since(self.epoch);
        let logged = lock(&self.log).record(peer, now);
        if let Some(suppressed) = logged {
            warn!(node = self.node, peer, suppressed, "{what}");
        }
    }
}
