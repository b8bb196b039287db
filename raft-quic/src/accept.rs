//! [`Gate`]: who gets to complete a handshake with a server endpoint, and who gets a connection
//! slot. Used by the Raft port of [`QuicNetwork`](crate::QuicNetwork) and reusable by any other
//! quinn server (an application's client port).
//!
//! - **Address validation.** While more than [`GateConfig::validate_addresses_above`]
//!   handshakes are in progress (by default always), an attempt from an address that has not
//!   proved it can receive packets gets a QUIC Retry: a spoofed source never costs more than
//!   that stateless answer, and never holds any state.
//! - **Handshake limits.** At most [`GateConfig::max_handshakes`] handshakes at once, and
//!   [`GateConfig::max_handshakes_per_ip`] from one IP address; each must finish within
//!   [`GateConfig::handshake_timeout`]. Attempts beyond are refused at once.
//! - **Connection slots are counted after the handshake**, so half-open handshakes never take
//!   one: at most [`GateConfig::max_connections`] established connections, later ones are closed
//!   with [`code::TOO_MANY_CONNECTIONS`].
//! - **Quiet logs.** A failed or refused attempt is logged at most once per
//!   [`GateConfig::log_interval`] per remote IP, with the number of failures not logged since.
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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quinn::{Connecting, ConnectionError, Incoming};
use tracing::{debug, warn};

use crate::client::lock;
use crate::timer::timeout;
use crate::wire::{code, NO_APPLICATION_PROTOCOL};

/// The most remote IPs whose failures are tracked one by one for rate-limited logging; beyond,
/// failures are counted together.
const MAX_TRACKED_REMOTES: usize = 1024;

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
            handshake_timeout: Duration::from_secs(3),
            validate_addresses_above: 0,
            log_interval: Duration::from_secs(10),
        }
    }

    /// Checks that the values make sense: every limit at least 1, a positive timeout.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.max_connections == 0 || self.max_handshakes == 0 || self.max_handshakes_per_ip == 0
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
pub struct GateStats {
    /// Established connections holding a slot now.
    pub connections: usize,
    /// Handshakes in progress now.
    pub handshakes: usize,
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
    /// Connections admitted.
    pub admitted: u64,
    /// Admitted connections the server then closed for who they are ([`Gate::reject`]).
    pub rejected: u64,
}

/// Rate-limited logging of failures, per remote IP.
#[derive(Debug, Default)]
struct FailureLog {
    /// IP -> when its last failure was logged, failures since.
    remotes: HashMap<IpAddr, (Instant, u64)>,
}

impl FailureLog {
    /// Records a failure from `ip` at `now`; returns `Some(suppressed)` if it is to be logged,
    /// with the number of failures of `ip` not logged since its last logged one.
    fn record(&mut self, ip: IpAddr, now: Instant, interval: Duration) -> Option<u64> {
        if !self.remotes.contains_key(&ip) && self.remotes.len() >= MAX_TRACKED_REMOTES {
            self.remotes.retain(|_, (at, _)| now.duration_since(*at) < interval);
            if self.remotes.len() >= MAX_TRACKED_REMOTES {
                // Too many distinct sources to track: log none of the newcomers one by one.
                return None;
            }
        }
        match self.remotes.get_mut(&ip) {
            Some((at, suppressed)) if now.duration_since(*at) < interval => {
                *suppressed += 1;
                None
            }
            Some(entry) => {
                let suppressed = entry.1;
                *entry = (now, 0);
                Some(suppressed)
            }
            None => {
                self.remotes.insert(ip, (now, 0));
                Some(0)
            }
        }
    }
}

#[derive(Debug, Default)]
struct GateState {
    per_ip: HashMap<IpAddr, usize>,
    stats: GateStats,
    failures: FailureLog,
}

#[derive(Debug)]
struct GateInner {
    name: &'static str,
    config: GateConfig,
    runtime: Arc<dyn quinn::Runtime>,
    state: Mutex<GateState>,
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

impl Gate {
    /// A gate named `name` (in logs) with `config`'s limits, timing handshakes on `runtime`.
    pub fn new(name: &'static str, config: GateConfig, runtime: Arc<dyn quinn::Runtime>) -> Self {
        Self {
            inner: Arc::new(GateInner {
                name,
                config,
                runtime,
                state: Mutex::new(GateState::default()),
            }),
        }
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
    /// when validation is required, refuses the attempt if a handshake limit is reached, and
    /// otherwise starts the handshake, to be completed with [`Handshake::complete`] (in a task
    /// of its own, so that the accept loop never waits for a handshake).
    pub fn admit(&self, incoming: Incoming) -> Option<Handshake> {
        let config = &self.inner.config;
        let remote = incoming.remote_address();
        let ip = remote.ip();
        let mut state = lock(&self.inner.state);
        if !incoming.remote_address_validated()
            && state.stats.handshakes >= config.validate_addresses_above
            && incoming.may_retry()
        {
            state.stats.retries += 1;
            drop(state);
            if let Err(e) = incoming.retry() {
                e.into_incoming().ignore();
            }
            return None;
        }
        let from_ip = state.per_ip.get(&ip).copied().unwrap_or(0);
        if state.stats.handshakes >= config.max_handshakes
            || from_ip >= config.max_handshakes_per_ip
        {
            state.stats.refused += 1;
            self.log_failure(state, remote, "refusing connection attempt: too many handshakes");
            incoming.refuse();
            return None;
        }
        match incoming.accept() {
            Ok(connecting) => {
                state.stats.handshakes += 1;
                *state.per_ip.entry(ip).or_insert(0) += 1;
                drop(state);
                let slot = HandshakeSlot { gate: self.clone(), ip };
                Some(Handshake { connecting, remote, slot })
            }
            Err(e) => {
                drop(state);
                self.failed(remote, &e, false);
                None
            }
        }
    }

    /// Closes an admitted `connection` whose peer the server refuses after all (a certificate
    /// that names no acceptable identity, a removed node), with `code` and `reason`; logged
    /// like failed handshakes, at most once per interval and remote IP.
    pub fn reject(&self, connection: &quinn::Connection, code: quinn::VarInt, reason: &str) {
        let remote = connection.remote_address();
        let mut state = lock(&self.inner.state);
        state.stats.rejected += 1;
        self.log_failure(state, remote, format_args!("closing inbound connection: {reason}"));
        connection.close(code, reason.as_bytes());
    }

    fn failed(&self, remote: SocketAddr, error: &ConnectionError, timed_out: bool) {
        let mut state = lock(&self.inner.state);
        if timed_out {
            state.stats.timed_out += 1;
        } else {
            state.stats.failed += 1;
        }
        let what = format!("inbound handshake failed: {}", describe_connection_error(error));
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
        let interval = self.inner.config.log_interval;
        let log = state.failures.record(remote.ip(), Instant::now(), interval);
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
    ip: IpAddr,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut state = lock(&self.gate.inner.state);
        state.stats.handshakes = state.stats.handshakes.saturating_sub(1);
        if let Some(count) = state.per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                state.per_ip.remove(&self.ip);
            }
        }
    }
}

/// A handshake admitted by a [`Gate`], holding one of its handshake slots.
#[derive(Debug)]
pub struct Handshake {
    connecting: Connecting,
    remote: SocketAddr,
    slot: HandshakeSlot,
}

impl Handshake {
    /// The address the attempt came from.
    pub fn remote_address(&self) -> SocketAddr {
        self.remote
    }

    /// Completes the handshake within the gate's timeout and takes a connection slot. `None`
    /// (logged, at most once per interval and remote) if the handshake fails or times out, or
    /// if every slot is taken (the connection is then closed with
    /// [`code::TOO_MANY_CONNECTIONS`]).
    pub async fn complete(self) -> Option<(quinn::Connection, ConnectionSlot)> {
        let Handshake { connecting, remote, slot } = self;
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
        let mut state = lock(&inner.state);
        if state.stats.connections >= inner.config.max_connections {
            state.stats.over_capacity += 1;
            gate.log_failure(state, remote, "closing connection: no connection slot left");
            connection.close(code::TOO_MANY_CONNECTIONS, b"too many connections");
            return None;
        }
        state.stats.connections += 1;
        state.stats.admitted += 1;
        drop(state);
        debug!(gate = inner.name, %remote, "connection admitted");
        Some((connection, ConnectionSlot { gate: gate.clone() }))
    }
}

/// A connection slot of a [`Gate`], released when dropped: hold it as long as the connection
/// is served.
#[derive(Debug)]
pub struct ConnectionSlot {
    gate: Gate,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut state = lock(&self.gate.inner.state);
        state.stats.connections = state.stats.connections.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_logged_once_per_interval_per_remote_with_a_count() {
        let mut log = FailureLog::default();
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        let t = Instant::now();
        let interval = Duration::from_secs(10);
        assert_eq!(log.record(a, t, interval), Some(0));
        for i in 1..=5 {
            assert_eq!(log.record(a, t + Duration::from_secs(i), interval), None);
        }
        assert_eq!(log.record(b, t, interval), Some(0), "another remote is logged on its own");
        assert_eq!(log.record(a, t + interval, interval), Some(5));
        assert_eq!(log.record(a, t + interval, interval), None);
    }

    #[test]
    fn the_remotes_tracked_are_bounded() {
        let mut log = FailureLog::default();
        let t = Instant::now();
        let interval = Duration::from_secs(10);
        for i in 0..(MAX_TRACKED_REMOTES as u32 + 100) {
            log.record(IpAddr::from(i.to_be_bytes()), t, interval);
        }
        assert_eq!(log.remotes.len(), MAX_TRACKED_REMOTES);
        // Once their interval passed, old entries make room.
        let later = t + interval;
        assert_eq!(log.record(IpAddr::from([1, 2, 3, 4]), later, interval), Some(0));
        assert_eq!(log.remotes.len(), 1);
    }
}
