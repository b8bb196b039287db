//! Connection ids and stateless resets.
//!
//! When a node restarts, peers still hold connections to its previous incarnation. QUIC lets the
//! new endpoint tear them down at once with a *stateless reset*: a packet ending in the reset
//! token that the previous incarnation announced for the connection id, `HMAC(reset key, id)`.
//! For that the new endpoint must (a) recognize the ids of the previous incarnation as its own,
//! and (b) compute the same tokens: both keys are derived from the node's private key.
//!
//! Connection ids are 20 bytes: a random *incarnation* tag (4 bytes, fresh for every endpoint),
//! a random nonce (8 bytes, from the operating system's CSPRNG) and an 8-byte tag,
//! HMAC-SHA256(id key, kind || incarnation || nonce). The *kind* says whether the id was ever
//! sent in clear to whoever asked: the ids of Retry packets, of a server's handshake packets and
//! of a client's first flight are *public* (anyone who sends an Initial gets one, before any
//! certificate is checked); the ids issued later, in encrypted NEW_CONNECTION_ID frames to an
//! authenticated peer, are *private*. Ids live [`cid_lifetime`] (10 s by default): quinn then
//! issues new ones and retires the old, so a connection moves off its public handshake id
//! within that time. (Not much shorter: see [`CID_LIFETIME`] for why.)
//!
//! An endpoint answers a packet for an unknown connection with a reset only if its id carries a
//! valid *private* tag (no one without the node's key can forge one, and no one off the path of
//! an authenticated connection ever saw one), comes from *another* incarnation (not a connection
//! of this endpoint that it already closed) and arrives within the reset window after the
//! endpoint started (the idle timeout: a stale connection idles out by then anyway). So ids
//! harvested by sending Initials (from Retries or handshake packets, before or after a restart)
//! earn nothing, and cannot be replayed to spend the endpoint's stateless-reset budget (quinn
//! sends at most one reset per 20 ms) or to fish for tokens. What remains: a connection younger
//! than the id lifetime when its peer crashed still uses its public id, so it gets no reset:
//! the dialer closes it at its first RPC timeout in which nothing came back (see
//! `Client::drop_if_silent`), an accepted one idles out; an on-path attacker (who sees the ids a connection uses) or a member
//! (who holds private ids of its own connections) can still spend the reset budget during the
//! reset window after a restart, delaying other peers' teardown to their idle timeout.
//!
//! Whether an id is public is known from where it is generated: [`cleartext`] marks the calls
//! into quinn that generate one synchronously on the calling thread (accepting, refusing or
//! retrying an incoming connection, dialing). Anything else quinn generates (on its endpoint
//! driver: the ids of NEW_CONNECTION_ID frames) is private.
//!
//! Both keys change when the node's key does (a renewed certificate with a new key): the first
//! restart after a renewal does not reset stale connections; a peer notices at its first RPC
//! timeout on such a connection (the dialer's silence check, see
//! `QuicConfig::rpc_timeout`), or within its idle timeout for a connection no RPC uses.

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn_proto::{ConnectionId, ConnectionIdGenerator, InvalidCid};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::certs::NodeTls;

/// Bytes of the random incarnation tag that starts every connection id.
const INCARNATION_LEN: usize = 4;
/// Bytes of the random nonce after it.
const NONCE_LEN: usize = 8;
/// Bytes of the authentication tag that ends it.
const TAG_LEN: usize = 8;
/// The length of every connection id (QUIC's maximum is 20).
const CID_LEN: usize = INCARNATION_LEN + NONCE_LEN + TAG_LEN;

/// The least time a connection id is used before quinn retires it and issues a new one (see
/// [`cid_lifetime`]): a connection leaves its public handshake id after this (see the module
/// docs), so a shorter one would let younger connections get a stateless reset.
///
/// It must not be short, though: quinn-proto (0.11.19, `Connection::populate_packet`) resends a
/// lost NEW_CONNECTION_ID frame with the *current* Retire Prior To value, and once the id that
/// frame carries has outlived its lifetime and been retired, that value exceeds the frame's
/// sequence number, which the peer must treat as a connection error (FRAME_ENCODING_ERROR, RFC
/// 9000 section 19.15): the connection dies. A server issues its first ids as the handshake
/// starts, in 0.5-RTT packets, and resends them if lost only once the handshake is complete
/// (RFC 9002 section 6.2.1: no probe timeout for application data before that), a handshake
/// that itself waits for probe timeouts of a second or more (quinn's initial RTT estimate is
/// 333 ms) when a flight is lost. With ids living 1 s, one lost first flight of the server
/// killed the connection (review rev39; `tests/resets.rs`). Later, a lost frame is resent
/// within a few probe timeouts of the measured round trip.
pub(crate) const CID_LIFETIME: Duration = Duration::from_secs(10);

/// What the id lifetime leaves, beyond the longest handshake this node accepts, for lost
/// NEW_CONNECTION_ID frames to be resent (see [`CID_LIFETIME`]): several probe timeouts with
/// their backoff (1 s, then 2 s, at quinn's initial RTT estimate).
const CID_REPAIR_MARGIN: Duration = Duration::from_secs(5);

/// The lifetime of the connection ids of an endpoint whose inbound handshakes may take up to
/// `handshake_timeout` (`GateConfig::handshake_timeout`; outbound ones issue their ids only
/// once complete): [`CID_LIFETIME`], or longer with a long handshake timeout, so that ids
/// issued at a handshake's start outlive it by [`CID_REPAIR_MARGIN`].
pub(crate) fn cid_lifetime(handshake_timeout: Duration) -> Duration {
    CID_LIFETIME.max(handshake_timeout.saturating_add(CID_REPAIR_MARGIN))
}

/// The kind byte of public ids in their tag's input.
const PUBLIC: u8 = 0;
/// The kind byte of private ids in their tag's input.
const PRIVATE: u8 = 1;

thread_local! {
    /// Set while [`cleartext`] runs on this thread: the ids generated meanwhile are public.
    static CLEARTEXT: Cell<bool> = const { Cell::new(false) };
}

/// Runs `call` (a call into quinn that generates a connection id sent in clear: accepting,
/// refusing or retrying an incoming connection, dialing), so that the ids it generates are
/// marked public and never earn a stateless reset.
pub(crate) fn cleartext<T>(call: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            CLEARTEXT.with(|flag| flag.set(self.0));
        }
    }
    let _restore = Restore(CLEARTEXT.with(|flag| flag.replace(true)));
    call()
}

/// A 32-byte key for `purpose`: HMAC-SHA256 of the purpose under the node's private key (a
/// PRF, so the keys of different purposes are independent), stable across restarts and unknown
/// to anyone without the private key.
fn derived_key(tls: &NodeTls, purpose: &'static [u8]) -> hmac::Key {
    let master = hmac::Key::new(hmac::HMAC_SHA256, tls.key.secret_der());
    let mut input = b"raft-quic endpoint key v2: ".to_vec();
    input.extend_from_slice(purpose);
    hmac::Key::new(hmac::HMAC_SHA256, hmac::sign(&master, &input).as_ref())
}

/// Generates and recognizes this endpoint's connection ids (see the module docs).
struct CidGenerator {
    key: hmac::Key,
    random: SystemRandom,
    incarnation: [u8; INCARNATION_LEN],
    started: Instant,
    reset_window: Duration,
    /// How long each id is used (see [`cid_lifetime`]).
    lifetime: Duration,
    fallback_counter: u64,
}

impl CidGenerator {
    fn new(key: hmac::Key, reset_window: Duration, lifetime: Duration) -> Self {
        let mut generator = CidGenerator {
            key,
            random: SystemRandom::new(),
            incarnation: [0; INCARNATION_LEN],
            started: Instant::now(),
            reset_window,
            lifetime,
            fallback_counter: 0,
        };
        let mut incarnation = [0u8; INCARNATION_LEN];
        generator.fill(&mut incarnation);
        generator.incarnation = incarnation;
        generator
    }

    fn tag(&self, kind: u8, body: &[u8]) -> [u8; TAG_LEN] {
        let mut context = hmac::Context::with_key(&self.key);
        context.update(&[kind]);
        context.update(body);
        let full = context.sign();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full.as_ref()[..TAG_LEN]);
        tag
    }

    /// Random bytes from the operating system. Should it ever fail, an HMAC of a counter under
    /// the node's key stands in: unpredictable to anyone without the key, never repeating.
    fn fill(&mut self, out: &mut [u8]) {
        if self.random.fill(out).is_err() {
            self.fallback_counter += 1;
            let mut input = self.incarnation.to_vec();
            input.extend_from_slice(&self.fallback_counter.to_be_bytes());
            let mac = hmac::sign(&self.key, &input);
            for (o, m) in out.iter_mut().zip(mac.as_ref()) {
                *o = *m;
            }
        }
    }
}

impl ConnectionIdGenerator for CidGenerator {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut bytes = [0u8; CID_LEN];
        bytes[..INCARNATION_LEN].copy_from_slice(&self.incarnation);
        self.fill(&mut bytes[INCARNATION_LEN..INCARNATION_LEN + NONCE_LEN]);
        let kind = if CLEARTEXT.with(Cell::get) { PUBLIC } else { PRIVATE };
        let tag = self.tag(kind, &bytes[..INCARNATION_LEN + NONCE_LEN]);
        bytes[INCARNATION_LEN + NONCE_LEN..].copy_from_slice(&tag);
        ConnectionId::new(&bytes)
    }

    /// quinn asks this only about ids of packets for unknown connections, to decide whether to
    /// answer with a stateless reset.
    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        if cid.len() != CID_LEN {
            return Err(InvalidCid);
        }
        let (body, tag) = cid.split_at(INCARNATION_LEN + NONCE_LEN);
        let expected = self.tag(PRIVATE, body);
        #[allow(deprecated)]
        let authentic = ring::constant_time::verify_slices_are_equal(&expected, tag).is_ok();
        let previous = body[..INCARNATION_LEN] != self.incarnation;
        let in_window = self.started.elapsed() <= self.reset_window;
        if authentic && previous && in_window {
            Ok(())
        } else {
            Err(InvalidCid)
        }
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        Some(self.lifetime)
    }
}

/// The endpoint configuration of a node: connection ids and stateless-reset key as described
/// in the module docs; resets for a previous incarnation's connections are sent during
/// `reset_window` after the endpoint starts; ids live [`cid_lifetime`] of `handshake_timeout`.
pub(crate) fn endpoint_config(
    tls: &NodeTls,
    reset_window: Duration,
    handshake_timeout: Duration,
) -> quinn::EndpointConfig {
    let reset_key = derived_key(tls, b"stateless reset key");
    let cid_key = derived_key(tls, b"connection id key");
    let lifetime = cid_lifetime(handshake_timeout);
    let mut config = quinn::EndpointConfig::new(Arc::new(reset_key));
    config.cid_generator(move || {
        Box::new(CidGenerator::new(cid_key.clone(), reset_window, lifetime))
    });
    config
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;
    use crate::ClusterCa;

    fn generator(tls: &NodeTls, window: Duration) -> CidGenerator {
        CidGenerator::new(derived_key(tls, b"connection id key"), window, CID_LIFETIME)
    }

    #[test]
    fn ids_outlive_the_longest_handshake_by_the_repair_margin() {
        assert_eq!(cid_lifetime(Duration::from_secs(3)), CID_LIFETIME);
        assert_eq!(cid_lifetime(Duration::from_secs(10)), Duration::from_secs(15));
        assert_eq!(cid_lifetime(Duration::MAX), Duration::MAX);
    }

    #[test]
    fn ids_sent_in_clear_never_earn_a_reset() {
        let ca = ClusterCa::generate().unwrap();
        let tls = ca.node_tls(1).unwrap();
        let window = Duration::from_secs(60);
        let mut before = generator(&tls, window);
        let now = generator(&tls, window);
        let public = cleartext(|| before.generate_cid());
        let private = before.generate_cid();
        assert!(now.validate(&public).is_err(), "a public id earned a reset");
        assert!(now.validate(&private).is_ok());
        // The mark lasts exactly as long as the call, even one that unwinds.
        assert!(!CLEARTEXT.with(Cell::get));
        let unwound = std::panic::catch_unwind(|| cleartext(|| panic!("inside")));
        assert!(unwound.is_err());
        assert!(!CLEARTEXT.with(Cell::get));
    }

    #[test]
    fn only_a_previous_incarnations_authentic_ids_within_the_window_earn_a_reset() {
        let ca = ClusterCa::generate().unwrap();
        let tls = ca.node_tls(1).unwrap();
        let window = Duration::from_secs(60);
        let mut before = generator(&tls, window);
        let mut now = generator(&tls, window);
        let old = before.generate_cid();
        assert_eq!(old.len(), 20);
        // The restarted endpoint (same key, new incarnation) recognizes the old id...
        assert!(now.validate(&old).is_ok());
        // ...but not its own ids (connections it closed itself), nor forged or foreign ones.
        let own = now.generate_cid();
        assert!(now.validate(&own).is_err());
        let mut forged = old.to_vec();
        forged[10] ^= 1;
        assert!(now.validate(&ConnectionId::new(&forged)).is_err());
        let mut other = generator(&ca.node_tls(2).unwrap(), window);
        assert!(now.validate(&other.generate_cid()).is_err());
        assert!(now.validate(&ConnectionId::new(&[0u8; 8])).is_err());
        // After the window, no id earns a reset any more.
        let late = generator(&tls, Duration::ZERO);
        std::thread::sleep(Duration::from_millis(2));
        assert!(late.validate(&old).is_err());
        // Ids are distinct.
        let ids: std::collections::BTreeSet<Vec<u8>> =
            (0..1000).map(|_| now.generate_cid().to_vec()).collect();
        assert_eq!(ids.len(), 1000);
    }
}
