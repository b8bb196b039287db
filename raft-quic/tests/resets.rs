//! Stateless resets after a restart cannot be starved with harvested connection ids: the ids a
//! node sends in clear (in Retry and handshake packets, to anyone who sends an Initial) never
//! earn a reset, so replaying them after a restart costs the node nothing, and a peer's stale
//! connection is still torn down at its next packet.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::proxy::{is_retry, UdpProxy};
use common::scenarios::{impatient, raw_endpoint, raw_rpc};
use common::*;
use raft_core::NetworkError;
use raft_quic::quinn::{Runtime, TokioRuntime};
use raft_quic::{tls, ClusterCa, QuicNetwork};

/// The longest the stale connection may take to be replaced: far below its 120 s idle timeout.
const RESET_BOUND: Duration = Duration::from_secs(5);

/// Sends short-header packets to each of `ids` at `target`, one every 500 µs, from a socket of
/// its own, until `stop`; returns how many datagrams came back (stateless resets).
fn replay(ids: Vec<Vec<u8>>, target: SocketAddr, stop: Arc<AtomicBool>) -> usize {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_nonblocking(true).unwrap();
    let mut answers = 0;
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Acquire) {
        for id in &ids {
            let mut packet = vec![0x41];
            packet.extend_from_slice(id);
            packet.extend_from_slice(&[0x5a; 48]);
            let _ = socket.send_to(&packet, target);
            while socket.recv_from(&mut buf).is_ok() {
                answers += 1;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_harvested_in_clear_earn_no_reset_after_a_restart() {
    init_tracing();
    let rt: Arc<dyn Runtime> = Arc::new(TokioRuntime);
    let ca = ClusterCa::generate().unwrap();
    let idle = Duration::from_secs(120);
    let net1 = QuicNetwork::bind(impatient(&ca, 1, idle), rt.clone()).unwrap();
    let mut config2 = impatient(&ca, 2, idle);
    let net2 = QuicNetwork::bind(config2.clone(), rt.clone()).unwrap();
    let addr2 = net2.local_addr();
    let link = UdpProxy::start(addr2);
    net1.set_peer(2, link.addr());
    net2.serve(TestHandler::new(2));
    bounded(&rt, "RPC to node 2", net1.send_to(2, heartbeat(1))).await.unwrap();
    eventually(&rt, "the connection off its handshake id", Duration::from_millis(20), || {
        let moved = link.client_uses_a_private_id();
        async move { moved.then_some(()) }
    })
    .await;

    // An attacker without a certificate of the cluster sends Initials to node 2 and reads the
    // ids node 2 answers with in clear: a Retry's, then its handshake packets'.
    let spy = UdpProxy::start(addr2);
    let attacker = raw_endpoint(&rt);
    let foreign = tls::quic_client_config(&ClusterCa::generate().unwrap().node_tls(9).unwrap());
    let foreign = foreign.unwrap();
    for _ in 0..8 {
        let attempt = attacker.connect_with(foreign.clone(), spy.addr(), "node-2.raft").unwrap();
        let _ = bounded(&rt, "an attacker's attempt", attempt).await;
    }
    let harvested = spy.target_public_ids();
    assert!(harvested.len() >= 8, "harvested only {} ids", harvested.len());

    // Node 2 crashes (its close lost) and restarts; the attacker replays the ids at once,
    // 2,000 packets a second (quinn sends at most one reset per 20 ms).
    link.block();
    net2.close().await;
    drop(net2);
    config2.listen_addr = addr2;
    let restarted = eventually(&rt, "rebind node 2", Duration::from_millis(20), || {
        let (config, rt) = (config2.clone(), rt.clone());
        async move { QuicNetwork::bind(config, rt).ok() }
    })
    .await;
    restarted.serve(TestHandler::new(2));
    let stop = Arc::new(AtomicBool::new(false));
    let replayer = std::thread::spawn({
        let stop = stop.clone();
        move || replay(harvested, addr2, stop)
    });
    std::thread::sleep(Duration::from_millis(100));
    link.unblock();

    // Node 1's stale connection is reset at its next packet, and it reconnects. The reset, not
    // the silence check (which would replace the connection one RPC timeout later and so hide
    // a starved reset), must end it: the first RPC must not time out.
    let started = Instant::now();
    let first = bounded(&rt, "first RPC after the restart", net1.send_to(2, heartbeat(1))).await;
    assert!(!matches!(first, Err(NetworkError::Timeout(_))), "no stateless reset: {first:?}");
    eventually(&rt, "RPC to the restarted node", Duration::from_millis(20), || {
        let net1 = net1.clone();
        async move { net1.send_to(2, heartbeat(1)).await.ok() }
    })
    .await;
    let took = started.elapsed();
    stop.store(true, Ordering::Release);
    let answers = replayer.join().unwrap();
    assert_eq!(answers, 0, "the harvested ids earned {answers} stateless resets");
    assert!(took < RESET_BOUND, "the stale connection lasted {took:?}");
    attacker.close(0u32.into(), b"");
    net1.close().await;
    restarted.close().await;
}

/// A peer crashes while the connection to it is still on its handshake id (younger than the id
/// lifetime, so the restarted endpoint sends no stateless reset for it) and restarts at once at
/// the same address. The RPCs on the stale connection time out; the dialer must then drop it
/// (it heard nothing at all from the peer during an RPC timeout, keep-alives included) and dial
/// anew, not keep it until its idle timeout. (The kv fault test saw elections wait ~10 s for
/// that: the one node that could win sent its PreVotes to a restarted voter on such a
/// connection.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_replaced_after_an_rpc_timeout() {
    init_tracing();
    let rt: Arc<dyn Runtime> = Arc::new(TokioRuntime);
    let ca = ClusterCa::generate().unwrap();
    let idle = Duration::from_secs(120);
    // Node 2 must crash while node 1 still uses its public handshake id, which it leaves a
    // connection-id lifetime (10 s) after the handshake: on a loaded machine the handshake and
    // the first RPC can take that long, so such a round is retried on fresh endpoints.
    let mut attempts = 0;
    let (net1, mut config2, link, addr2) = loop {
        attempts += 1;
        let net1 = QuicNetwork::bind(impatient(&ca, 1, idle), rt.clone()).unwrap();
        let config2 = impatient(&ca, 2, idle);
        let net2 = QuicNetwork::bind(config2.clone(), rt.clone()).unwrap();
        let addr2 = net2.local_addr();
        let link = UdpProxy::start(addr2);
        net1.set_peer(2, link.addr());
        net2.serve(TestHandler::new(2));
        bounded(&rt, "RPC to node 2", net1.send_to(2, heartbeat(1))).await.unwrap();

        // Node 2 crashes (its close lost) while node 1 still uses its public handshake id,
        // and restarts at the same address.
        link.block();
        let moved = link.client_uses_a_private_id();
        net2.close().await;
        drop(net2);
        if !moved {
            break (net1, config2, link, addr2);
        }
        assert!(attempts < 5, "the connection left its handshake id in each of {attempts} tries");
        net1.close().await;
    };
    config2.listen_addr = addr2;
    let restarted = eventually(&rt, "rebind node 2", Duration::from_millis(20), || {
        let (config, rt) = (config2.clone(), rt.clone());
        async move { QuicNetwork::bind(config, rt).ok() }
    })
    .await;
    restarted.serve(TestHandler::new(2));
    link.unblock();

    // Node 1 reaches the restarted node within a few RPC timeouts (300 ms each).
    let started = Instant::now();
    eventually(&rt, "RPC to the restarted node", Duration::from_millis(20), || {
        let net1 = net1.clone();
        async move { net1.send_to(2, heartbeat(1)).await.ok() }
    })
    .await;
    let took = started.elapsed();
    assert!(took < RESET_BOUND, "the stale connection lasted {took:?}");
    net1.close().await;
    restarted.close().await;
}

/// Holds back node 1's datagrams (other than its Retry) in
/// `a_lost_first_flight_of_the_server_does_not_kill_the_connection`.
static HOLD_SERVER: AtomicBool = AtomicBool::new(true);

/// Review rev39: the server's first flight is lost (its handshake packets and the 0.5-RTT packet
/// with its first NEW_CONNECTION_ID frames), so the handshake waits for probe timeouts (about a
/// second at quinn's initial RTT estimate) and the lost frames are resent only after it. quinn
/// resends them with the Retire Prior To value of the moment; with connection ids living 1 s,
/// the ids they carried had been retired by then, the value exceeded their sequence numbers,
/// and the client closed the connection (FRAME_ENCODING_ERROR). The connection must work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_first_flight_of_the_server_does_not_kill_the_connection() {
    init_tracing();
    let rt: Arc<dyn Runtime> = Arc::new(TokioRuntime);
    let ca = ClusterCa::generate().unwrap();
    let net1 = QuicNetwork::bind(test_config(&ca, 1, loopback()), rt.clone()).unwrap();
    net1.serve(TestHandler::new(1));
    let back = |datagram: &[u8]| is_retry(datagram) || !HOLD_SERVER.load(Ordering::Acquire);
    let link = UdpProxy::start_filtered(loopback(), net1.local_addr(), back);
    let client = tls::quic_client_config(&ca.node_tls(7).unwrap()).unwrap();
    let endpoint = raw_endpoint(&rt);
    let connecting = endpoint.connect_with(client, link.addr(), "node-1.raft").unwrap();
    let connecting = tokio::spawn(connecting);
    // Node 1's datagrams are dropped for 150 ms: its whole first flight.
    sleep(&rt, Duration::from_millis(150)).await;
    HOLD_SERVER.store(false, Ordering::Release);
    let conn = bounded(&rt, "the handshake", connecting).await.unwrap().unwrap();
    // Time for the lost frames to be resent (the handshake's own round trips did not need them).
    sleep(&rt, Duration::from_millis(300)).await;
    let served = raw_rpc(&rt, &conn, 7).await;
    assert!(served.is_ok(), "{served:?}; the connection's end: {:?}", conn.close_reason());
    endpoint.close(0u32.into(), b"");
    net1.close().await;
}

/// Review L5 (rev_slowel): a slow but alive peer keeps its connection. Its handler holds the
/// RPCs past several RPC timeouts, but its endpoint keeps acknowledging packets (keep-alives
/// included), so the dialer hears it and the silence check never drops the connection: one
/// connection, no second handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_alive_peer_keeps_its_connection() {
    init_tracing();
    let rt: Arc<dyn Runtime> = Arc::new(TokioRuntime);
    let ca = ClusterCa::generate().unwrap();
    let idle = Duration::from_secs(120);
    let net1 = QuicNetwork::bind(impatient(&ca, 1, idle), rt.clone()).unwrap();
    let net2 = QuicNetwork::bind(impatient(&ca, 2, idle), rt.clone()).unwrap();
    net1.set_peer(2, net2.local_addr());
    let handler = TestHandler::new(2);
    net2.serve(handler.clone());
    bounded(&rt, "RPC to node 2", net1.send_to(2, heartbeat(1))).await.unwrap();
    let gate = handler.close_gate();
    for round in 0..4 {
        let held = bounded(&rt, "held RPC", net1.send_to(2, append(1, 1, 10, b"gated"))).await;
        assert!(matches!(held, Err(NetworkError::Timeout(2))), "round {round}: {held:?}");
    }
    drop(gate);
    bounded(&rt, "RPC after the timeouts", net1.send_to(2, heartbeat(1))).await.unwrap();
    let stats = net2.accept_stats();
    assert_eq!((stats.connections, stats.admitted), (1, 1), "{stats:?}");
    net1.close().await;
    net2.close().await;
}

/// Guards the streams of a connection against handlers nobody waits for (review 39, M): a
/// lone request whose sender gave up (its RPC timed out, and the dropped stream stops the
/// answer) has its handler dropped at once, so that the stream, which counts against the
/// connection's `max_concurrent_streams` shared by every group, ends instead of waiting for a
/// handler held by a stalled store. (Before, the handler ran until the gate opened.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_whose_sender_gave_up_is_dropped() {
    init_tracing();
    let rt: Arc<dyn Runtime> = Arc::new(TokioRuntime);
    let ca = ClusterCa::generate().unwrap();
    let idle = Duration::from_secs(120);
    let net1 = QuicNetwork::bind(impatient(&ca, 1, idle), rt.clone()).unwrap();
    let net2 = QuicNetwork::bind(impatient(&ca, 2, idle), rt.clone()).unwrap();
    net1.set_peer(2, net2.local_addr());
    let handler = TestHandler::new(2);
    net2.serve(handler.clone());
    bounded(&rt, "RPC to node 2", net1.send_to(2, heartbeat(1))).await.unwrap();
    let gate = handler.close_gate();
    let held = bounded(&rt, "held RPC", net1.send_to(2, append(1, 1, 10, b"gated"))).await;
    assert!(matches!(held, Err(NetworkError::Timeout(2))), "{held:?}");
    eventually(&rt, "the abandoned handler dropped", Duration::from_millis(10), || {
        let abandoned = handler.abandoned();
        async move { (abandoned == 1).then_some(()) }
    })
    .await;
    drop(gate);
    bounded(&rt, "RPC after the timeout", net1.send_to(2, heartbeat(1))).await.unwrap();
    net1.close().await;
    net2.close().await;
}
