//! [`Gate`]: who gets to complete a handshake with a server endpoint, and who gets a connection
//! slot. Used by the Raft port of [`QuicNetwork`](crate::QuicNetwork) and reusable by any other
//! quinn server (an application's client port).
//!
//! - **Address validation.** While more than [`GateConfig::validate_addresses_above`]
//!   handshakes are in progress (by default always), an attempt from an address that has not
//!   proved it can receive packets gets a QUIC Retry: a spoofed source never costs more than
//!   that stateless answer, and never holds any state.
//! - **Handshake limits.** At most [`GateConfig::max_handshakes`] handshakes at once,
//!   [`GateConfig::max_handshakes_per_ip`] from one IP address and
//!   [`GateConfig::max_handshakes_per_prefix`] from one network prefix (`/24`, `/64`); each must
//!   finish within [`GateConfig::handshake_timeout`]. Attempts beyond are refused at once,
//!   except validated attempts from *expected* addresses ([`Gate::set_expected`]: a server's
//!   known peers), which may use [`GateConfig::reserved_handshakes`] more: a flood from any
//!   number of sources never locks a known peer out.
//! - **Connection slots are counted after the handshake**, so half-open handshakes never take
//!   one: at most [`GateConfig::max_connections`] established connections, later ones are closed
//!   with [`code::TOO_MANY_CONNECTIONS`].
//! - **Per-identity caps and a privileged reserve.** A server that names the peer of each
//!   connection ([`Gate::set_identify`]: a certificate's principal) limits every identity to
//!   [`GateConfig::max_connections_per_identity`] slots, so one certificate cannot take them
//!   all, and lets privileged identities (administrators) use
//!   [`GateConfig::reserved_connections`] slots beyond `max_connections`, so that they still
//!   connect when others hold every ordinary slot.
//! - **Certificates are checked for as long as a connection lasts**, not only at its
//!   handshake: an admitted connection is closed once its peer's certificate expires
//!   ([`code::CERT_EXPIRED`]), and [`Gate::revalidate`] closes those whose peer no longer
//!   passes a check (a CA dropped from the trust bundle), and refuses, when it completes, a
//!   handshake that was under way (verified against the trust bundle of its start) unless its
//!   peer passes that check too.
//! - **Quiet logs.** A failed or refused attempt is logged at most once per
//!   [`GateConfig::log_interval`] per remote IP, with the number of failures not logged since.
//!   A peer that merely went away during its handshake (it closed its endpoint, or gave up on
//!   this server because another answered first) is no warning at all: it is logged at debug
//!   level and counted. Every outcome is counted (`quic_handshakes_total`, see
//!   [`crate::metrics`]).
//!
//! ```no_run
//! # async fn serve(endpoint: raft_quic::quinn::Endpoint) {
//! use std::sync::Arc;
//! use raft_quic::{Gate, GateConfig};
//!
//! let runtime = Arc::new(raft_quic::quinn::TokioRuntime);
//! let gate = Gate::new("client", GateConfig::new(256), runtime);
//! while let Some(incoming) = endpoint.accept().await {
//!     // Never waits: a Retry, a refusal, or a handshake to finish in its own task.
//!     if let Some(handshake) = gate.admit(incoming) {
//!         tokio::spawn(async move {
//!             let Some((connection, _slot)) = handshake.complete().await else { return };
//!             // Serve `connection`; the slot is released when `_slot` is dropped.
//!             # drop(connection);
//!         });
//!     }
//! }
//! # }
//! ```

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use quinn::{Connecting, ConnectionError, Incoming};
use raft_core::QuietLog;
use tracing::{debug, warn};

use crate::cid::cleartext;
use crate::client::lock;
use crate::expiry::close_at_expiry;
use crate::handshakes::{Handshakes, Place};
use crate::metrics::{GateCounters, Outcome};
use crate::timer::timeout;
use crate::wire::{code, NO_APPLICATION_PROTOCOL};

/// The limits of a [`Gate`]. [`GateConfig::new`] gives defaults for a server with a few dozen
/// legitimate peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GateConfig {
    /// The most established connections; counted once the handshake succeeded. Default 64.
    pub max_connections: usize,
    /// The most handshakes in progress at once. Default 64.
    pub max_handshakes: usize,
    /// The most handshakes in progress from one IP address. Default 8.
    pub max_handshakes_per_ip: usize,
    /// The most handshakes in progress from one network prefix: a `/24` in IPv4, a `/64` in
    /// IPv6 (one host may own a whole `/64`). Default 16.
    pub max_handshakes_per_prefix: usize,
    /// Handshakes beyond `max_handshakes` and the per-IP and per-prefix caps for validated
    /// attempts from expected addresses ([`Gate::set_expected`]), at most 2 per address.
    /// Default 16; 0 disables the reserve.
    pub reserved_handshakes: usize,
    /// The most established connections of one identity ([`Gate::set_identify`]); default
    /// `max_connections` (no cap beyond the total). Connections without an identity are not
    /// capped by it.
    pub max_connections_per_identity: usize,
    /// Slots beyond `max_connections` that only privileged identities
    /// ([`PeerIdentity::privileged`]) may take. Default 0.
    pub reserved_connections: usize,
    /// The longest a handshake may take before it is abandoned. Default 3 s.
    pub handshake_timeout: Duration,
    /// Attempts from unvalidated addresses get a Retry while at least this many handshakes
    /// are in progress. Default 0: always (one more round trip per new connection, which a
    /// Raft connection, reused for every RPC, pays once).
    pub validate_addresses_above: usize,
    /// Failed attempts from one IP are logged at most once per this interval. Default 10 s.
    pub log_interval: Duration,
}

impl GateConfig {
    /// Defaults (see each field) with `max_connections` connection slots.
    pub fn new(max_connections: usize) -> Self {
        Self {
            max_connections,
            max_handshakes: 64,
            max_handshakes_per_ip: 8,
            max_handshakes_per_prefix: 16,
            reserved_handshakes: 16,
            max_connections_per_identity: max_connections,
            reserved_connections: 0,
            handshake_timeout: Duration::from_secs(3),
            validate_addresses_above: 0,
            log_interval: Duration::from_secs(10),
        }
    }

    /// Checks that the values make sense: every limit at least 1, a positive timeout.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.max_connections == 0
            || self.max_connections_per_identity == 0
            || self.max_handshakes == 0
            || self.max_handshakes_per_ip == 0
            || self.max_handshakes_per_prefix == 0
        {
            return Err("connection and handshake limits must be at least 1");
        }
        if self.handshake_timeout.is_zero() || self.log_interval.is_zero() {
            return Err("handshake_timeout and log_interval must be positive");
        }
        Ok(())
    }
}

/// Counters of a [`Gate`] since it was created, and its current occupancy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GateStats {
    /// Established connections holding a slot now.
    pub connections: usize,
    /// Handshakes in progress now (reserved ones included).
    pub handshakes: usize,
    /// Handshakes admitted from the reserve of expected addresses.
    pub reserved: u64,
    /// Retries sent to unvalidated addresses.
    pub retries: u64,
    /// Attempts refused because a handshake limit was reached.
    pub refused: u64,
    /// Handshakes that failed (bad or missing certificate, wrong protocol, lost peer).
    pub failed: u64,
    /// Handshakes abandoned at the timeout.
    pub timed_out: u64,
    /// Connections closed after the handshake because every connection slot was taken.
    pub over_capacity: u64,
    /// Connections closed after the handshake because their identity held its
    /// [`GateConfig::max_connections_per_identity`] slots.
    pub over_identity_cap: u64,
    /// Connections admitted.
    pub admitted: u64,
    /// Admitted connections the server then closed for who they are ([`Gate::reject`],
    /// [`Gate::revalidate`]), and completed handshakes refused because their peer failed the
    /// check of a [`Gate::revalidate`] made while they were under way.
    pub rejected: u64,
}

/// The most sources (remote IPs here, node ids in `inbound.rs`) whose log lines are limited
/// one by one; beyond, newcomers are not logged one by one.
pub(crate) const MAX_LOGGED_SOURCES: usize = 1024;

#[derive(Debug)]
struct GateState {
    handshakes: Handshakes,
    stats: GateStats,
    failures: QuietLog<IpAddr>,
    /// The admitted connections holding a slot, by `stable_id`.
    connections: HashMap<usize, quinn::Connection>,
    /// How many slots each identity holds (only identities holding one).
    per_identity: HashMap<Arc<str>, usize>,
    /// The check of the latest [`Gate::revalidate`], if any: a handshake that began before it
    /// must pass it when it completes.
    standing: Option<Standing>,
    /// How many times [`Gate::revalidate`] was called: a handshake that began at an older
    /// generation is checked with `standing` before it is admitted.
    generation: u64,
}

/// A check of connections' peers (see [`Gate::revalidate`]).
type Check = Arc<dyn Fn(&quinn::Connection) -> Result<(), String> + Send + Sync>;

/// The check of the latest [`Gate::revalidate`] and the code it closes connections with.
#[derive(Clone)]
struct Standing {
    code: quinn::VarInt,
    check: Check,
}

impl std::fmt::Debug for Standing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Standing").field("code", &self.code).finish_non_exhaustive()
    }
}

/// Which addresses a server expects (see [`Gate::set_expected`]).
type Expected = Arc<dyn Fn(SocketAddr) -> bool + Send + Sync>;

/// Who the peer of a connection is, as the server names it ([`Gate::set_identify`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The identity's name: connections with the same name share
    /// [`GateConfig::max_connections_per_identity`].
    pub name: String,
    /// Whether it may use [`GateConfig::reserved_connections`].
    pub privileged: bool,
}

/// How a server names a connection's peer (see [`Gate::set_identify`]).
type Identify = Arc<dyn Fn(&quinn::Connection) -> Option<PeerIdentity> + Send + Sync>;

struct GateInner {
    name: &'static str,
    config: GateConfig,
    runtime: Arc<dyn quinn::Runtime>,
    state: Mutex<GateState>,
    /// The origin of the times its log of failures records.
    epoch: Instant,
    expected: RwLock<Option<Expected>>,
    identify: RwLock<Option<Identify>>,
    counters: GateCounters,
}

impl std::fmt::Debug for GateInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GateInner")
            .field("name", &self.name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Admits connection attempts to one server endpoint (see the module docs). Clones share the
/// same counters.
#[derive(Clone, Debug)]
pub struct Gate {
    inner: Arc<GateInner>,
}

/// What went wrong with a connection attempt, for logs: names a wire-version mismatch plainly.
pub fn describe_connection_error(error: &ConnectionError) -> String {
    let alpn = |code: u64| code == NO_APPLICATION_PROTOCOL;
    match error {
        ConnectionError::TransportError(e) if alpn(u64::from(e.code)) => {
            format!("no common application protocol: the peer speaks another protocol or wire version ({e})")
        }
        ConnectionError::ConnectionClosed(close) if alpn(u64::from(close.error_code)) => format!(
            "the peer refused our application protocol: it speaks another protocol or wire \
             version ({close})"
        ),
        other => other.to_string(),
    }
}

/// Whether a failed handshake only means that the peer went away: it closed the connection
/// without an error of its own (an application close, which a client sends when it closes its
/// endpoint or abandons an attempt because another server answered first; during a handshake
/// it arrives as a transport close with `APPLICATION_ERROR`), or with `NO_ERROR`, or reset it.
/// A TLS alert (the peer refused our certificate) or a protocol error is not such a case.
fn peer_went_away(error: &ConnectionError) -> bool {
    use quinn::TransportErrorCode;
    match error {
        ConnectionError::ApplicationClosed(_) | ConnectionError::Reset => true,
        ConnectionError::ConnectionClosed(close) => {
            close.error_code == TransportErrorCode::NO_ERROR
                || close.error_code == TransportErrorCode::APPLICATION_ERROR
        }
        _ => false,
    }
}

impl Gate {
    /// A gate named `name` (in logs) with `config`'s limits, timing handshakes on `runtime`.
    pub fn new(name: &'static str, config: GateConfig, runtime: Arc<dyn quinn::Runtime>) -> Self {
        let failures = QuietLog::new(config.log_interval, MAX_LOGGED_SOURCES);
        Self {
            inner: Arc::new(GateInner {
                name,
                config,
                state: Mutex::new(GateState {
                    handshakes: Handshakes::default(),
                    stats: GateStats::default(),
                    failures,
                    connections: HashMap::new(),
                    per_identity: HashMap::new(),
                    standing: None,
                    generation: 0,
                }),
                epoch: Instant::now(),
                runtime,
                expected: RwLock::new(None),
                identify: RwLock::new(None),
                counters: GateCounters::new(name),
            }),
        }
    }

    /// Tells the gate which remote addresses it expects (a server's known peers): their
    /// validated attempts may use the reserved handshakes when the general limits refuse them.
    /// Called with the remote address of an attempt only when the general limits are reached,
    /// never with the gate's lock held.
    pub fn set_expected(&self, expected: impl Fn(SocketAddr) -> bool + Send + Sync + 'static) {
        *self.inner.expected.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(expected));
    }

    fn is_expected(&self, remote: SocketAddr) -> bool {
        let expected = self.inner.expected.read().unwrap_or_else(|p| p.into_inner()).clone();
        expected.is_some_and(|expected| expected(remote))
    }

    /// Tells the gate who the peer of an established connection is (from its verified
    /// certificate), for [`GateConfig::max_connections_per_identity`] and
    /// [`GateConfig::reserved_connections`]. Called once per connection, after its handshake
    /// and before it takes a slot, never with the gate's lock held. `None`: no identity (the
    /// connection takes an ordinary slot, uncapped per identity; the server may still
    /// [`reject`](Gate::reject) it).
    pub fn set_identify(
        &self,
        identify: impl Fn(&quinn::Connection) -> Option<PeerIdentity> + Send + Sync + 'static,
    ) {
        *self.inner.identify.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(identify));
    }

    fn identify(&self, connection: &quinn::Connection) -> Option<PeerIdentity> {
        let identify = self.inner.identify.read().unwrap_or_else(|p| p.into_inner()).clone();
        identify.and_then(|identify| identify(connection))
    }

    /// The gate's limits.
    pub fn config(&self) -> &GateConfig {
        &self.inner.config
    }

    /// The gate's counters and occupancy.
    pub fn stats(&self) -> GateStats {
        lock(&self.inner.state).stats
    }

    /// Screens a connection attempt without waiting: sends a Retry to an unvalidated address
    /// when validation is required (or when only the reserve could take it), refuses the
    /// attempt if the handshake limits are reached, and otherwise starts the handshake, to be
    /// completed with [`Handshake::complete`] (in a task of its own, so that the accept loop
    /// never waits for a handshake).
    pub fn admit(&self, incoming: Incoming) -> Option<Handshake> {
        let config = &self.inner.config;
        let remote = incoming.remote_address();
        let validated = incoming.remote_address_validated();
        let mut state = lock(&self.inner.state);
        let must_validate = state.handshakes.in_progress() >= config.validate_addresses_above;
        let mut place = state.handshakes.try_general(config, remote);
        if !validated && incoming.may_retry() && (must_validate || place.is_none()) {
            // Validation first: a spoofed source holds no place, and an expected address comes
            // back validated, for the reserve if need be.
            if let Some(place) = place {
                state.handshakes.release(place);
            }
            state.stats.retries += 1;
            drop(state);
            // The Retry's connection id is sent in clear: public (see `cid`).
            if let Err(e) = cleartext(|| incoming.retry()) {
                e.into_incoming().ignore();
            }
            return None;
        }
        if place.is_none() && validated {
            drop(state);
            let expected = self.is_expected(remote);
            state = lock(&self.inner.state);
            place = if expected { state.handshakes.try_reserve(config, remote) } else { None };
            if place.is_some() {
                state.stats.reserved += 1;
            }
        }
        let Some(place) = place else {
            state.stats.refused += 1;
            self.inner.counters.count(Outcome::Refused);
            self.log_failure(state, remote, "refusing connection attempt: too many handshakes");
            cleartext(|| incoming.refuse());
            return None;
        };
        state.stats.handshakes = state.handshakes.in_progress();
        // Read before the handshake starts with the server configuration in force (see
        // `revalidate`).
        let generation = state.generation;
        drop(state);
        // From here the slot gives the place back, whatever happens.
        let slot = HandshakeSlot { gate: self.clone(), place };
        match cleartext(|| incoming.accept()) {
            Ok(connecting) => Some(Handshake { connecting, remote, slot, generation }),
            Err(e) => {
                self.failed(remote, &e, false);
                None
            }
        }
    }

    /// Checks every admitted connection (one whose slot is held) with `check`, and closes those
    /// it refuses with `code` and the reason it gives (logged like failed handshakes). Returns
    /// how many were closed. For example, after a CA was dropped from the trust bundle:
    /// `gate.revalidate(code, move |c| recheck_peer(c, &bundle, role).map_err(|e| e.to_string()))`
    /// (see [`recheck_peer`](crate::recheck_peer)), since TLS checks a certificate only at the
    /// handshake.
    ///
    /// The check also stands for the handshakes under way: each one that began before this
    /// call (so was, or may have been, verified against the previous trust bundle) must pass
    /// `check` when it completes, or its connection is closed with `code` instead of admitted
    /// (until a later `revalidate` replaces the check). So set the endpoint's new server
    /// configuration *before* calling this: a handshake that began after this call is not
    /// checked again. `check` must not call into the gate.
    pub fn revalidate(
        &self,
        code: quinn::VarInt,
        check: impl Fn(&quinn::Connection) -> Result<(), String> + Send + Sync + 'static,
    ) -> usize {
        let check: Check = Arc::new(check);
        let connections: Vec<quinn::Connection> = {
            let mut state = lock(&self.inner.state);
            state.generation = state.generation.wrapping_add(1);
            state.standing = Some(Standing { code, check: Arc::clone(&check) });
            state.connections.values().cloned().collect()
        };
        let mut closed = 0;
        for connection in connections {
            if let Err(reason) = check(&connection) {
                self.reject(&connection, code, &reason);
                closed += 1;
            }
        }
        closed
    }

    /// Closes an admitted `connection` whose peer the server refuses after all (a certificate
    /// that names no acceptable identity, a removed node), with `code` and `reason`; logged
    /// like failed handshakes, at most once per interval and remote IP.
    pub fn reject(&self, connection: &quinn::Connection, code: quinn::VarInt, reason: &str) {
        let remote = connection.remote_address();
        let mut state = lock(&self.inner.state);
        state.stats.rejected += 1;
        self.inner.counters.count(Outcome::Rejected);
        self.log_failure(state, remote, format_args!("closing inbound connection: {reason}"));
        connection.close(code, reason.as_bytes());
    }

    fn failed(&self, remote: SocketAddr, error: &ConnectionError, timed_out: bool) {
        let mut state = lock(&self.inner.state);
        if timed_out {
            state.stats.timed_out += 1;
            self.inner.counters.count(Outcome::TimedOut);
        } else {
            state.stats.failed += 1;
            self.inner.counters.count(Outcome::Failed);
        }
        let what = format!("inbound handshake failed: {}", describe_connection_error(error));
        if peer_went_away(error) {
            drop(state);
            debug!(gate = self.inner.name, %remote, "{what}");
            return;
        }
        self.log_failure(state, remote, what);
    }

    /// Logs `what` about `remote` unless a failure of the same IP was logged within the
    /// interval; then it is only counted, and the count goes with the next line logged.
    fn log_failure(
        &self,
        mut state: std::sync::MutexGuard<'_, GateState>,
        remote: SocketAddr,
        what: impl std::fmt::Display,
    ) {
        let now = Instant::now().saturating_duration_since(self.inner.epoch);
        let log = state.failures.record(remote.ip(), now);
        drop(state);
        if let Some(suppressed) = log {
            warn!(gate = self.inner.name, %remote, suppressed, "{what}");
        }
    }
}

/// A handshake slot, released when dropped.
#[derive(Debug)]
struct HandshakeSlot {
    gate: Gate,
    place: Place,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut state = lock(&self.gate.inner.state);
        state.handshakes.release(self.place);
        state.stats.handshakes = state.handshakes.in_progress();
    }
}

/// A handshake admitted by a [`Gate`], holding one of its handshake slots.
#[derive(Debug)]
pub struct Handshake {
    connecting: Connecting,
    remote: SocketAddr,
    slot: HandshakeSlot,
    /// The gate's generation when the handshake began (see [`Gate::revalidate`]).
    generation: u64,
}

impl Handshake {
    /// The address the attempt came from.
    pub fn remote_address(&self) -> SocketAddr {
        self.remote
    }

    /// Completes the handshake within the gate's timeout and takes a connection slot. `None`
    /// (logged, at most once per interval and remote) if the handshake fails or times out, if
    /// its peer fails the check of a [`Gate::revalidate`] called since the handshake began
    /// (the connection is then closed with that call's code), or if every slot is taken (the
    /// connection is then closed with [`code::TOO_MANY_CONNECTIONS`]).
    pub async fn complete(self) -> Option<(quinn::Connection, ConnectionSlot)> {
        let Handshake { connecting, remote, slot, generation } = self;
        let gate = slot.gate.clone();
        let inner = &gate.inner;
        let result = timeout(&*inner.runtime, inner.config.handshake_timeout, connecting).await;
        drop(slot);
        let connection = match result {
            Ok(Ok(connection)) => connection,
            Ok(Err(e)) => {
                gate.failed(remote, &e, false);
                return None;
            }
            Err(_) => {
                // Dropping `Connecting` abandons the connection.
                gate.failed(remote, &ConnectionError::TimedOut, true);
                return None;
            }
        };
        let identity = gate.identify(&connection);
        let config = &inner.config;
        let privileged = identity.as_ref().is_some_and(|i| i.privileged);
        let reserve = if privileged { config.reserved_connections } else { 0 };
        let slots = config.max_connections.saturating_add(reserve);
        let name: Option<Arc<str>> = identity.map(|i| Arc::from(i.name));
        // A `revalidate` since the handshake began (a CA dropped from the trust bundle, say):
        // the handshake may have verified the peer against the old bundle, and that call did
        // not see this connection, so its check is applied here. Admitted (below) with the
        // lock taken when the generation checked is the current one, so a later `revalidate`
        // sees the connection among the admitted ones.
        let mut checked = generation;
        let mut state = loop {
            let state = lock(&inner.state);
            let standing = match &state.standing {
                Some(standing) if state.generation != checked => standing.clone(),
                _ => break state,
            };
            let current = state.generation;
            drop(state);
            if let Err(reason) = (standing.check)(&connection) {
                gate.reject(&connection, standing.code, &reason);
                return None;
            }
            checked = current;
        };
        if state.stats.connections >= slots {
            state.stats.over_capacity += 1;
            inner.counters.count(Outcome::OverCapacity);
            gate.log_failure(state, remote, "closing connection: no connection slot left");
            connection.close(code::TOO_MANY_CONNECTIONS, b"too many connections");
            return None;
        }
        if let Some(name) = &name {
            let held = state.per_identity.get(name).copied().unwrap_or(0);
            if held >= config.max_connections_per_identity {
                state.stats.over_identity_cap += 1;
                // Metrics count it with the other capacity refusals.
                inner.counters.count(Outcome::OverCapacity);
                let what = format!("closing connection: {name} holds {held} connections");
                gate.log_failure(state, remote, what);
                connection.close(code::TOO_MANY_CONNECTIONS, b"too many connections");
                return None;
            }
            *state.per_identity.entry(Arc::clone(name)).or_default() += 1;
        }
        state.stats.connections += 1;
        state.stats.admitted += 1;
        inner.counters.count(Outcome::Admitted);
        let key = connection.stable_id();
        state.connections.insert(key, connection.clone());
        drop(state);
        debug!(gate = inner.name, %remote, "connection admitted");
        // Closed when its peer's certificate expires, for as long as the slot is held.
        let (released, served) = oneshot::channel::<()>();
        let served = async move {
            let _ = served.await;
        };
        let watch = close_at_expiry(Arc::clone(&inner.runtime), connection.clone(), served);
        inner.runtime.spawn(Box::pin(watch));
        let slot = ConnectionSlot { gate: gate.clone(), key, identity: name, _released: released };
        Some((connection, slot))
    }
}

/// A connection slot of a [`Gate`], released when dropped: hold it as long as the connection
/// is served (the gate keeps a handle of the connection, to close it at its peer's
/// certificate's expiry or on [`Gate::revalidate`], until then).
#[derive(Debug)]
pub struct ConnectionSlot {
    gate: Gate,
    key: usize,
    /// The identity the slot counts against, if any.
    identity: Option<Arc<str>>,
    /// Dropped with the slot: ends the expiry watch.
    _released: oneshot::Sender<()>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut state = lock(&self.gate.inner.state);
        state.stats.connections = state.stats.connections.saturating_sub(1);
        state.connections.remove(&self.key);
        if let Some(name) = &self.identity {
            if let Some(held) = state.per_identity.get_mut(name) {
                *held = held.saturating_sub(1);
                if *held == 0 {
                    state.per_identity.remove(name);
                }
            }
        }
    }
}
