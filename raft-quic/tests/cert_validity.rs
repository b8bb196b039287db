//! A certificate is trusted for as long as a connection lasts, not only at its handshake: the
//! connections of a CA dropped from the trust bundle are closed at the roll-over (those whose
//! handshake was under way then, once it completes), and a
//! connection is closed once its peer's certificate expires (keep-alives used to keep both up
//! for good).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::proxy::UdpProxy;
use common::scenarios::{client_material, dialed_by, raw_endpoint, raw_rpc, raw_rpc_attempt};
use common::*;
use raft_quic::quinn::{self, Runtime, TokioRuntime};
use raft_quic::wire::code;
use raft_quic::{
    tls, ClusterCa, Gate, GateConfig, NodeTls, PeerRole, QuicConfig, QuicNetwork, WireResponse,
    NODE_ROLE_OID,
};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

fn material(trust: &[&ClusterCa], leaf: &ClusterCa, id: u64) -> NodeTls {
    let bundle: String = trust.iter().map(|c| c.cert_pem().to_owned()).collect();
    let cert = leaf.issue(id).unwrap();
    NodeTls::from_pem(bundle.as_bytes(), cert.cert_pem.as_bytes(), cert.key_pem.as_bytes()).unwrap()
}

/// Waits until `conn` is closed and returns the application code it was closed with.
async fn closed_with(rt: &Arc<dyn Runtime>, conn: &quinn::Connection) -> quinn::VarInt {
    match bounded(rt, "the connection's close", conn.closed()).await {
        quinn::ConnectionError::ApplicationClosed(close) => close.error_code,
        other => panic!("the connection ended with {other}"),
    }
}

/// A CA is rolled over because it was compromised: node 1 drops it from its trust bundle. The
/// connections authenticated under it (inbound from a rogue node 7, outbound to a rogue node 8)
/// are closed at once, and the rogues cannot connect again; a peer of the new CA keeps its
/// connection. The rogue's connection used to be served indefinitely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_of_a_dropped_ca_are_closed_at_the_roll_over() {
    init_tracing();
    let rt: Arc<dyn Runtime> = Arc::new(TokioRuntime);
    let (old, new) = (ClusterCa::generate().unwrap(), ClusterCa::generate().unwrap());
    let net1 = QuicNetwork::bind(
        QuicConfig::new(1, loopback(), material(&[&old, &new], &new, 1)),
        rt.clone(),
    )
    .unwrap();
    net1.serve(TestHandler::new(1));
    // Rogue node 7 (old CA) dials node 1; node 1 dials rogue node 8 (old CA).
    let endpoint = raw_endpoint(&rt);
    let config7 = tls::quic_client_config(&material(&[&old, &new], &old, 7)).unwrap();
    let connecting = endpoint.connect_with(config7.clone(), net1.local_addr(), "node-1.raft");
    let rogue7 = bounded(&rt, "rogue 7 connects", connecting.unwrap()).await.unwrap();
    assert!(matches!(raw_rpc(&rt, &rogue7, 7).await, Ok(WireResponse::Ok(_))));
    let rogue8_tls = material(&[&old, &new], &old, 8);
    let (rogue8, from_node1, dial) = dialed_by(&rt, &net1, 8, &rogue8_tls).await;
    // A legitimate peer of the new CA.
    let config2 = QuicConfig::new(2, loopback(), material(&[&old, &new], &new, 2))
        .with_peer(1, net1.local_addr());
    let net2 = QuicNetwork::bind(config2, rt.clone()).unwrap();
    bounded(&rt, "peer 2's RPC", net2.send_to(1, heartbeat(2))).await.unwrap();
    let admitted = net1.accept_stats().admitted;

    // The roll-over: node 1 trusts only the new CA.
    net1.update_tls(&material(&[&new], &new, 1)).unwrap();
    assert_eq!(closed_with(&rt, &rogue7).await, code::UNTRUSTED);
    assert_eq!(closed_with(&rt, &from_node1).await, code::UNTRUSTED);
    assert!(bounded(&rt, "the dial", dial).await.is_err());
    // Neither rogue gets back in.
    let again = raw_rpc_attempt(&rt, config7, &net1, 7).await;
    assert!(again.is_err(), "rogue 7 was served again: {again:?}");
    assert!(bounded(&rt, "node 1 to rogue 8 again", net1.send_to(8, heartbeat(1))).await.is_err());
    // Peer 2 still uses the connection it had.
    bounded(&rt, "peer 2's RPC", net2.send_to(1, heartbeat(2))).await.unwrap();
    assert_eq!(net1.accept_stats().admitted, admitted, "peer 2 had to reconnect");
    endpoint.close(0u32.into(), b"");
    rogue8.close(0u32.into(), b"");
    net2.close().await;
    net1.close().await;
}

/// Review rev39 (high): a handshake under way when the roll-over drops its peer's CA. quinn
/// verifies it against the server configuration of its start (the old bundle), and the
/// roll-over's re-check saw only admitted connections, so rogue node 7 (old CA), whose
/// handshake node 1 had begun, was admitted after the roll-over and served for good. Node 1's
/// flight is held by a relay across the roll-over; the handshake then completes, and node 1
/// must close the connection at admission instead of serving it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_under_way_at_the_roll_over_is_checked_against_the_new_bundle() {
    init_tracing();
    let rt: Arc<dyn Runtime> = Arc::new(TokioRuntime);
    let (old, new) = (ClusterCa::generate().unwrap(), ClusterCa::generate().unwrap());
    let net1 = QuicNetwork::bind(
        QuicConfig::new(1, loopback(), material(&[&old, &new], &new, 1)),
        rt.clone(),
    )
    .unwrap();
    let handler1 = TestHandler::new(1);
    net1.serve(handler1.clone());
    let relay = UdpProxy::start(net1.local_addr());
    relay.hold();
    let mut config7 =
        QuicConfig::new(7, loopback(), material(&[&old, &new], &old, 7)).with_peer(1, relay.addr());
    config7.connect_timeout = Duration::from_millis(1500);
    config7.rpc_timeout = Duration::from_secs(3);
    let net7 = QuicNetwork::bind(config7, rt.clone()).unwrap();
    let first = tokio::spawn({
        let net7 = net7.clone();
        async move { net7.send_to(1, heartbeat(7)).await }
    });
    // Node 1 began the handshake (after its Retry, which the relay lets through) and answered;
    // its answer is held.
    eventually(&rt, "node 1's handshake under way", Duration::from_millis(5), || {
        let started = net1.accept_stats().handshakes == 1;
        async move { started.then_some(()) }
    })
    .await;
    net1.update_tls(&material(&[&new], &new, 1)).unwrap();
    relay.release();
    let first = bounded(&rt, "the first RPC", first).await.unwrap();
    let later = bounded(&rt, "a later RPC", net7.send_to(1, heartbeat(7))).await;
    assert!(first.is_err() && later.is_err(), "the dropped CA was served: {first:?}, {later:?}");
    assert_eq!(handler1.calls(), 0, "node 1 served a certificate of the dropped CA");
    let stats = net1.accept_stats();
    assert_eq!((stats.connections, stats.rejected), (0, 1), "{stats:?}");
    net7.close().await;
    net1.close().await;
}

/// The same on the dialing side: node 1 dials rogue node 8 (old CA) and drops the old CA while
/// the dial is under way. The dial verifies node 8 against the client configuration of its
/// start (the old bundle), and the roll-over's re-check saw only cached connections, so node 1
/// used the connection after the roll-over (node 8 served its RPCs). It must refuse it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_under_way_at_the_roll_over_is_checked_against_the_new_bundle() {
    init_tracing();
    let rt: Arc<dyn Runtime> = Arc::new(TokioRuntime);
    let (old, new) = (ClusterCa::generate().unwrap(), ClusterCa::generate().unwrap());
    let net8 = QuicNetwork::bind(
        QuicConfig::new(8, loopback(), material(&[&old, &new], &old, 8)),
        rt.clone(),
    )
    .unwrap();
    let handler8 = TestHandler::new(8);
    net8.serve(handler8.clone());
    let relay = UdpProxy::start(net8.local_addr());
    relay.hold();
    let mut config1 =
        QuicConfig::new(1, loopback(), material(&[&old, &new], &new, 1)).with_peer(8, relay.addr());
    config1.connect_timeout = Duration::from_millis(1500);
    config1.rpc_timeout = Duration::from_secs(3);
    let net1 = QuicNetwork::bind(config1, rt.clone()).unwrap();
    let first = tokio::spawn({
        let net1 = net1.clone();
        async move { net1.send_to(8, heartbeat(1)).await }
    });
    // Node 8 answered node 1's Initial; its certificate is in the held flight.
    eventually(&rt, "node 8's handshake under way", Duration::from_millis(5), || {
        let started = net8.accept_stats().handshakes == 1;
        async move { started.then_some(()) }
    })
    .await;
    net1.update_tls(&material(&[&new], &new, 1)).unwrap();
    relay.release();
    let first = bounded(&rt, "the first RPC", first).await.unwrap();
    let later = bounded(&rt, "a later RPC", net1.send_to(8, heartbeat(1))).await;
    assert!(first.is_err() && later.is_err(), "node 1 used the dropped CA: {first:?}, {later:?}");
    assert_eq!(handler8.calls(), 0, "node 1 sent RPCs to a certificate of the dropped CA");
    net1.close().await;
    net8.close().await;
}

/// The same for any server admitting through a [`Gate`] (the kv client port): a client of the
/// dropped CA whose handshake was under way when `Gate::revalidate` ran is closed when its
/// handshake completes, not admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gated_handshake_under_way_at_a_revalidation_must_pass_its_check() {
    init_tracing();
    let rt: Arc<dyn Runtime> = Arc::new(TokioRuntime);
    let (old, new) = (ClusterCa::generate().unwrap(), ClusterCa::generate().unwrap());
    let server_tls = old.node_tls(1).unwrap();
    let server_config = |cas: &[raft_quic::rustls::pki_types::CertificateDer<'static>]| {
        let rustls = tls::rustls_server_config_with(&server_tls, cas, PeerRole::Any).unwrap();
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(rustls).unwrap();
        quinn::ServerConfig::with_crypto(Arc::new(crypto))
    };
    let both = [old.cert_der().clone(), new.cert_der().clone()];
    let server = quinn::Endpoint::server(server_config(&both), loopback()).unwrap();
    let gate = Gate::new("clients", GateConfig::new(8), rt.clone());
    let accepting = tokio::spawn({
        let (server, gate) = (server.clone(), gate.clone());
        async move {
            let mut admitted = Vec::new();
            while let Some(incoming) = server.accept().await {
                if let Some(handshake) = gate.admit(incoming) {
                    admitted
                        .push(tokio::spawn(async move { handshake.complete().await.is_some() }));
                }
            }
            admitted
        }
    });
    let relay = UdpProxy::start(server.local_addr().unwrap());
    relay.hold();
    let endpoint = raw_endpoint(&rt);
    let cert = old.issue_client("client-a.kv", Duration::from_secs(3600)).unwrap();
    let client_tls = NodeTls::from_pem(
        old.cert_pem().as_bytes(),
        cert.cert_pem.as_bytes(),
        cert.key_pem.as_bytes(),
    )
    .unwrap();
    let config = tls::quic_client_config(&client_tls).unwrap();
    let connecting = endpoint.connect_with(config, relay.addr(), "node-1.raft").unwrap();
    let connecting = tokio::spawn(connecting);
    eventually(&rt, "the handshake under way", Duration::from_millis(5), || {
        let started = gate.stats().handshakes == 1;
        async move { started.then_some(()) }
    })
    .await;
    // The roll-over: the new server configuration first, then the gate's check.
    server.set_server_config(Some(server_config(std::slice::from_ref(new.cert_der()))));
    let new_ca = new.cert_der().clone();
    let closed = gate.revalidate(code::UNTRUSTED, move |conn| {
        raft_quic::recheck_peer(conn, std::slice::from_ref(&new_ca), PeerRole::Any)
            .map_err(|e| e.to_string())
    });
    assert_eq!(closed, 0, "no connection was admitted yet");
    relay.release();
    // The client may see its handshake complete (it verified the server) or fail; either way
    // the server must close the connection with the revalidation's code.
    if let Ok(Ok(conn)) = bounded(&rt, "the handshake", connecting).await {
        assert_eq!(closed_with(&rt, &conn).await, code::UNTRUSTED);
    }
    let stats = eventually(&rt, "the handshake's outcome", Duration::from_millis(10), || {
        let stats = gate.stats();
        async move { (stats.admitted + stats.rejected + stats.failed > 0).then_some(stats) }
    })
    .await;
    assert_eq!((stats.connections, stats.admitted, stats.rejected), (0, 0, 1), "{stats:?}");
    endpoint.close(0u32.into(), b"");
    server.close(0u32.into(), b"");
    for task in bounded(&rt, "the accept loop", accepting).await.unwrap() {
        assert!(!task.await.unwrap(), "the client of the dropped CA was admitted");
    }
}

/// A CA made here with rcgen, to issue node certificates of any lifetime (`ClusterCa` issues
/// none shorter than a minute).
struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl TestCa {
    fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let pem = params.self_signed(&key).unwrap().pem();
        Self { issuer: Issuer::new(params, key), pem }
    }

    /// Node `id`'s material, its certificate valid from an hour ago until `lifetime` from now.
    fn node(&self, id: u64, lifetime: Duration) -> NodeTls {
        const SERVER_AUTH: &[u8] = &[0x2b, 6, 1, 5, 5, 7, 3, 1];
        const CLIENT_AUTH: &[u8] = &[0x2b, 6, 1, 5, 5, 7, 3, 2];
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![raft_quic::node_dns_name(id)]).unwrap();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::try_from(lifetime).unwrap();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let mut usages = Vec::new();
        for oid in [SERVER_AUTH, CLIENT_AUTH, NODE_ROLE_OID] {
            usages.extend([0x06, oid.len() as u8]);
            usages.extend_from_slice(oid);
        }
        let mut eku = vec![0x30, usages.len() as u8];
        eku.extend(usages);
        params.custom_extensions.push(CustomExtension::from_oid_content(&[2, 5, 29, 37], eku));
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert, key) = (cert.pem(), key.serialize_pem());
        NodeTls::from_pem(self.pem.as_bytes(), cert.as_bytes(), key.as_bytes()).unwrap()
    }
}

/// A connection is closed once its peer's certificate expires, in both directions: node 1
/// serves node 7 and dials node 8, whose certificates expire a few seconds after the
/// handshakes. Both connections used to stay up for as long as keep-alives flowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_closed_when_the_peer_certificate_expires() {
    init_tracing();
    let rt: Arc<dyn Runtime> = Arc::new(TokioRuntime);
    let ca = TestCa::new();
    let (lasting, expiring) = (Duration::from_secs(3600), Duration::from_secs(5));
    let net1 =
        QuicNetwork::bind(QuicConfig::new(1, loopback(), ca.node(1, lasting)), rt.clone()).unwrap();
    net1.serve(TestHandler::new(1));
    let endpoint = raw_endpoint(&rt);
    let config7 = tls::quic_client_config(&ca.node(7, expiring)).unwrap();
    let connecting = endpoint.connect_with(config7, net1.local_addr(), "node-1.raft");
    let node7 = bounded(&rt, "node 7 connects", connecting.unwrap()).await.unwrap();
    assert!(matches!(raw_rpc(&rt, &node7, 7).await, Ok(WireResponse::Ok(_))));
    let (node8, from_node1, dial) = dialed_by(&rt, &net1, 8, &ca.node(8, expiring)).await;
    assert_eq!(closed_with(&rt, &node7).await, code::CERT_EXPIRED);
    assert_eq!(closed_with(&rt, &from_node1).await, code::CERT_EXPIRED);
    assert!(bounded(&rt, "the dial", dial).await.is_err());
    endpoint.close(0u32.into(), b"");
    node8.close(0u32.into(), b"");
    net1.close().await;
}

/// Any server admitting through a [`Gate`] (an application's client port) can apply a CA
/// roll-over to the connections it holds: `Gate::revalidate` with `recheck_peer` closes the
/// clients of the dropped CA and keeps the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gated_client_port_drops_the_clients_of_a_dropped_ca() {
    init_tracing();
    let rt: Arc<dyn Runtime> = Arc::new(TokioRuntime);
    let (old, new) = (ClusterCa::generate().unwrap(), ClusterCa::generate().unwrap());
    let both = [old.cert_der().clone(), new.cert_der().clone()];
    let server_tls = old.node_tls(1).unwrap();
    let rustls = tls::rustls_server_config_with(&server_tls, &both, PeerRole::Any).unwrap();
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(rustls).unwrap();
    let server =
        quinn::Endpoint::server(quinn::ServerConfig::with_crypto(Arc::new(crypto)), loopback())
            .unwrap();
    let gate = Gate::new("clients", GateConfig::new(8), rt.clone());
    let accepting = tokio::spawn({
        let (server, gate) = (server.clone(), gate.clone());
        async move {
            let mut held = Vec::new();
            while let Some(incoming) = server.accept().await {
                if let Some(handshake) = gate.admit(incoming) {
                    held.extend(handshake.complete().await);
                }
            }
            held.len()
        }
    });
    let endpoint = raw_endpoint(&rt);
    let mut clients = Vec::new();
    for ca in [&old, &new] {
        let cert = ca.issue_client("client-a.kv", Duration::from_secs(3600)).unwrap();
        let trust = old.cert_pem().to_owned();
        let tls =
            NodeTls::from_pem(trust.as_bytes(), cert.cert_pem.as_bytes(), cert.key_pem.as_bytes())
                .unwrap();
        let config = tls::quic_client_config(&tls).unwrap();
        let connecting = endpoint.connect_with(config, server.local_addr().unwrap(), "node-1.raft");
        clients.push(bounded(&rt, "a client connects", connecting.unwrap()).await.unwrap());
    }
    eventually(&rt, "both clients admitted", Duration::from_millis(10), || {
        let admitted = gate.stats().connections;
        async move { (admitted == 2).then_some(()) }
    })
    .await;
    let new_ca = new.cert_der().clone();
    let closed = gate.revalidate(code::UNTRUSTED, move |conn| {
        raft_quic::recheck_peer(conn, std::slice::from_ref(&new_ca), PeerRole::Any)
            .map_err(|e| e.to_string())
    });
    assert_eq!(closed, 1);
    assert_eq!(closed_with(&rt, &clients[0]).await, code::UNTRUSTED);
    assert!(clients[1].close_reason().is_none(), "the new CA's client was closed");
    endpoint.close(0u32.into(), b"");
    server.close(0u32.into(), b"");
    let _ = bounded(&rt, "the accept loop", accepting).await;
}

/// A server that names its peers (`Gate::set_identify`) caps each identity's connections and
/// keeps a reserve for privileged ones: one client certificate cannot take every slot, and an
/// administrator still connects when ordinary clients hold all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_caps_connections_per_identity_and_keeps_a_privileged_reserve() {
    init_tracing();
    let rt: Arc<dyn Runtime> = Arc::new(TokioRuntime);
    let ca = ClusterCa::generate().unwrap();
    let server_tls = ca.node_tls(1).unwrap();
    let trust = [ca.cert_der().clone()];
    let rustls = tls::rustls_server_config_with(&server_tls, &trust, PeerRole::Any).unwrap();
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(rustls).unwrap();
    let server =
        quinn::Endpoint::server(quinn::ServerConfig::with_crypto(Arc::new(crypto)), loopback())
            .unwrap();
    let config = GateConfig {
        max_connections_per_identity: 1,
        reserved_connections: 1,
        ..GateConfig::new(2)
    };
    let gate = Gate::new("clients", config, rt.clone());
    // The name in the leaf certificate (test names only: `client-<x>.kv`, `admin-<x>.kv`).
    gate.set_identify(|connection| {
        let certs = connection.peer_identity()?;
        let certs = certs.downcast_ref::<Vec<quinn::rustls::pki_types::CertificateDer<'_>>>()?;
        let leaf = certs.first()?.as_ref();
        let named = |name: &str| leaf.windows(name.len()).any(|w| w == name.as_bytes());
        let name = ["client-a.kv", "client-b.kv", "client-c.kv", "admin-x.kv"]
            .into_iter()
            .find(|n| named(n))?;
        Some(raft_quic::PeerIdentity {
            name: name.to_owned(),
            privileged: name.starts_with("admin"),
        })
    });
    let accepting = tokio::spawn({
        let (server, gate) = (server.clone(), gate.clone());
        async move {
            while let Some(incoming) = server.accept().await {
                if let Some(handshake) = gate.admit(incoming) {
                    // Served (slot held) until the client closes it.
                    tokio::spawn(async move {
                        if let Some((connection, slot)) = handshake.complete().await {
                            connection.closed().await;
                            drop(slot);
                        }
                    });
                }
            }
        }
    });
    let endpoint = raw_endpoint(&rt);
    let connect = |name: &'static str| {
        let tls = client_material(&ca, name, Duration::from_secs(3600));
        let config = tls::quic_client_config(&tls).unwrap();
        let connecting = endpoint.connect_with(config, server.local_addr().unwrap(), "node-1.raft");
        let rt = rt.clone();
        async move { bounded(&rt, "a client connects", connecting.unwrap()).await.unwrap() }
    };
    let admitted = |n: usize| {
        let gate = gate.clone();
        let rt = rt.clone();
        async move {
            eventually(&rt, "the admissions", Duration::from_millis(10), || {
                let connections = gate.stats().connections;
                async move { (connections == n).then_some(()) }
            })
            .await
        }
    };
    let a1 = connect("client-a.kv").await;
    admitted(1).await;
    let a2 = connect("client-a.kv").await;
    assert_eq!(closed_with(&rt, &a2).await, code::TOO_MANY_CONNECTIONS, "a's second");
    assert_eq!(gate.stats().over_identity_cap, 1);
    let b = connect("client-b.kv").await;
    admitted(2).await;
    let c = connect("client-c.kv").await;
    assert_eq!(closed_with(&rt, &c).await, code::TOO_MANY_CONNECTIONS, "no ordinary slot left");
    let admin = connect("admin-x.kv").await;
    admitted(3).await;
    assert!(admin.close_reason().is_none(), "the administrator was refused");
    // A closed connection gives its identity's slot back.
    a1.close(0u32.into(), b"");
    admin.close(0u32.into(), b"");
    admitted(1).await;
    let a3 = connect("client-a.kv").await;
    admitted(2).await;
    assert!(a3.close_reason().is_none() && b.close_reason().is_none());
    endpoint.close(0u32.into(), b"");
    server.close(0u32.into(), b"");
    let _ = bounded(&rt, "the accept loop", accepting).await;
}
