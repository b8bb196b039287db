//! Half-open handshake floods against the Raft port: a peer that restarts meanwhile still
//! connects, within a bound far below the handshake timeout (so no attacker's handshake has to
//! time out first).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::proxy::UdpProxy;
use common::*;
use raft_quic::quinn::{self, Runtime, TokioRuntime};
use raft_quic::{tls, ClusterCa, QuicNetwork};

/// How long the restarted peer may take to connect while the flood goes on. The handshake
/// timeout of the flooded node is 10 s: connecting within 5 s proves no attacker's handshake
/// had to time out to make room.
const CONNECT_BOUND: Duration = Duration::from_secs(5);

/// Whether a QUIC datagram is a Retry packet (long header, type 3 in version 1).
fn is_retry(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|b| b & 0xf0 == 0xf0)
}

/// Opens connection attempts to `target` from a client endpoint behind `proxy`, `burst` every
/// 20 ms until `stop`, keeping every attempt alive (never completed, never abandoned).
fn flood(
    ca: &ClusterCa,
    proxy: &UdpProxy,
    burst: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let config = tls::quic_client_config(&ca.node_tls(99).unwrap()).unwrap();
    let target: SocketAddr = proxy.addr();
    tokio::spawn(async move {
        let mut pending = Vec::new();
        while !stop.load(Ordering::Acquire) {
            for _ in 0..burst {
                if let Ok(connecting) = endpoint.connect_with(config.clone(), target, "node-1.raft")
                {
                    pending.push(connecting);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let attempts = pending.len();
        drop(pending);
        endpoint.close(0u32.into(), b"");
        attempts
    })
}

/// One flooding source: a proxy bound at `bind` whose filter `back` passes back the datagrams
/// the attacker hears, and the attempts it opens per 20 ms.
struct Source {
    bind: String,
    back: fn(&[u8]) -> bool,
    burst: usize,
}

/// Sources that answer Retries (validated) but never complete a handshake, one per address.
fn validated(addrs: impl Iterator<Item = String>, burst: usize) -> Vec<Source> {
    addrs.map(|bind| Source { bind, back: is_retry, burst }).collect()
}

/// What a flood did, and how long the restarted peer took to connect through it.
struct FloodOutcome {
    took: Duration,
    stats: raft_quic::GateStats,
    attempts: usize,
    calls: usize,
}

/// Node 1 serves; node 2 talks to it, then restarts (same address, same certificate) while
/// floods run from `sources`, and sends again. The flooded
/// node's handshake timeout is 10 s, so a restarted peer that connects within
/// [`CONNECT_BOUND`] got in without any attacker's handshake timing out first.
async fn restart_during_flood(sources: &[Source]) -> FloodOutcome {
    init_tracing();
    let rt: Arc<dyn Runtime> = Arc::new(TokioRuntime);
    let ca = ClusterCa::generate().unwrap();
    let mut config1 = test_config(&ca, 1, loopback());
    config1.accept.handshake_timeout = Duration::from_secs(10);
    let net1 = QuicNetwork::bind(config1, rt.clone()).unwrap();
    let handler1 = TestHandler::new(1);
    net1.serve(handler1.clone());
    let config2 = test_config(&ca, 2, loopback()).with_peer(1, net1.local_addr());
    let net2 = QuicNetwork::bind(config2.clone(), rt.clone()).unwrap();
    bounded(&rt, "first RPC", net2.send_to(1, heartbeat(2))).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let proxies: Vec<(UdpProxy, usize)> = sources
        .iter()
        .map(|source| {
            let proxy = UdpProxy::start_filtered(
                source.bind.parse().unwrap(),
                net1.local_addr(),
                source.back,
            );
            (proxy, source.burst)
        })
        .collect();
    let floods: Vec<_> =
        proxies.iter().map(|(proxy, burst)| flood(&ca, proxy, *burst, stop.clone())).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Node 2 restarts while the floods go on.
    let addr2 = net2.local_addr();
    net2.close().await;
    drop(net2);
    let mut config2 = config2;
    config2.listen_addr = addr2;
    let restarted_at = Instant::now();
    let restarted = eventually(&rt, "rebind node 2", Duration::from_millis(10), || {
        let (config, rt) = (config2.clone(), rt.clone());
        async move { QuicNetwork::bind(config, rt).ok() }
    })
    .await;
    eventually(&rt, "RPC from the restarted node", Duration::from_millis(10), || {
        let net = restarted.clone();
        async move { net.send_to(1, heartbeat(2)).await.ok() }
    })
    .await;
    let took = restarted_at.elapsed();
    let stats = net1.accept_stats();
    stop.store(true, Ordering::Release);
    let mut attempts = 0;
    for flood in floods {
        attempts += flood.await.unwrap();
    }
    restarted.close().await;
    net1.close().await;
    FloodOutcome { took, stats, attempts, calls: handler1.calls() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_connects_through_a_half_open_handshake_flood() {
    // Two floods: one from an address that never hears back (a spoofed source), one from
    // another IP that answers Retries (a validated source) but never completes a handshake.
    let blind = Source { bind: "127.0.0.1:0".into(), back: |_| false, burst: 10 };
    let mut sources = validated(std::iter::once("127.0.0.2:0".to_owned()), 5);
    sources.push(blind);
    let outcome = restart_during_flood(&sources).await;
    let FloodOutcome { took, stats, attempts, calls } = outcome;
    assert!(took < CONNECT_BOUND, "the restarted peer needed {took:?} (stats {stats:?})");
    // The floods did reach the node: retries for the blind ones, the validated ones limited.
    assert!(attempts > 100, "{attempts} attempts");
    assert!(stats.retries > 100, "{stats:?}");
    assert!(stats.handshakes <= 8 + 2, "validated attackers held {} handshakes", stats.handshakes);
    assert!(stats.refused > 0, "{stats:?}");
    assert_eq!(calls, 2);
}

/// Validated attackers from ten IPs of one `/24` (each within the per-IP cap) used to fill the
/// global cap (64) together; a restarted peer then could not connect for seconds (once never
/// within 15 s). One prefix now holds at most 16 handshakes, and the restarted peer, whose
/// address the node remembers, has handshakes of its own in reserve (its own `/24` is the
/// attackers').
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validated_sources_of_one_prefix_hold_at_most_the_prefix_cap() {
    let sources = validated((2..12).map(|i| format!("127.0.0.{i}:0")), 4);
    let FloodOutcome { took, stats, attempts, calls } = restart_during_flood(&sources).await;
    assert!(took < CONNECT_BOUND, "the restarted peer needed {took:?} (stats {stats:?})");
    assert!(attempts > 100, "{attempts} attempts");
    assert!(stats.handshakes <= 16 + 2, "one /24 held {} handshakes", stats.handshakes);
    assert!(stats.reserved >= 1, "the restarted peer got in without the reserve: {stats:?}");
    assert_eq!(calls, 2);
}

/// Validated attackers from ten `/24`s, each within the per-IP and per-prefix caps, fill the
/// global cap (64): the restarted peer, whose address the node remembers, still connects on a
/// reserved handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_peer_connects_when_many_prefixes_fill_every_handshake() {
    let sources = validated((2..12).map(|i| format!("127.0.{i}.1:0")), 8);
    let FloodOutcome { took, stats, attempts, calls } = restart_during_flood(&sources).await;
    assert!(took < CONNECT_BOUND, "the restarted peer needed {took:?} (stats {stats:?})");
    assert!(attempts > 100, "{attempts} attempts");
    assert!(stats.handshakes >= 64, "the general pool never filled: {stats:?}");
    assert!(stats.reserved >= 1, "the restarted peer got in without the reserve: {stats:?}");
    assert_eq!(calls, 2);
}
