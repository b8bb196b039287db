//! Transport scenarios, written once and run under several runtimes.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use futures::{FutureExt, StreamExt};
use raft_core::{Network, NetworkError, RefusalReason, RpcResponse};
use raft_quic::bounded::Limits;
use raft_quic::quinn::{self, Runtime};
use raft_quic::wire::code;
use raft_quic::{
    frame, tls, ClusterCa, NodeTls, QuicNetwork, Refusal, WireResponse, PROTOCOL_VERSION,
};

use super::*;

/// The transport's own refusal inside `reason`, if raft-quic refused (not the node).
fn transport_refusal(reason: &RefusalReason) -> Option<&Refusal> {
    match reason {
        RefusalReason::Transport(error) => error.downcast_ref::<Refusal>(),
        _ => None,
    }
}

const LIMITS: Limits = Limits { max_items: 1 << 16, max_depth: frame::MAX_DEPTH };

fn match_index(response: RpcResponse) -> Option<u64> {
    match response {
        RpcResponse::AppendEntries(r) => r.match_index,
        other => panic!("unexpected response {other:?}"),
    }
}

/// Every node of a 3-node cluster calls every other with each kind of request.
pub async fn round_trip(rt: Arc<dyn Runtime>) {
    init_tracing();
    let ca = ClusterCa::generate().unwrap();
    let nets = bind_cluster(&ca, &[1, 2, 3], &rt);
    let handlers: Vec<_> = nets.iter().map(|n| TestHandler::new(n.node_id())).collect();
    for (net, handler) in nets.iter().zip(&handlers) {
        net.serve(handler.clone());
    }
    for from in &nets {
        for to in &nets {
            let (a, b) = (from.node_id(), to.node_id());
            if a == b {
                continue;
            }
            let r = bounded(&rt, "heartbeat", from.send_to(b, heartbeat(a))).await.unwrap();
            assert_eq!(match_index(r), Some(7));
            let r = bounded(&rt, "append", from.send_to(b, append(a, 3, 100, b""))).await.unwrap();
            assert_eq!(match_index(r), Some(10));
            match bounded(&rt, "vote", from.send_to(b, vote(a))).await.unwrap() {
                RpcResponse::RequestVote(v) => assert!(v.vote_granted),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    for handler in &handlers {
        assert_eq!(handler.calls(), 6, "node {} calls", handler.id);
    }
    for net in &nets {
        net.close().await;
    }
}

/// Many RPCs in flight at once to one peer all complete.
pub async fn concurrent_rpcs(rt: Arc<dyn Runtime>) {
    init_tracing();
    let ca = ClusterCa::generate().unwrap();
    let nets = bind_cluster(&ca, &[1, 2], &rt);
    let handler = TestHandler::new(2);
    nets[1].serve(handler.clone());
    let calls = (0..300).map(|i| {
        let request = if i % 2 == 0 { heartbeat(1) } else { append(1, 2, 1000, b"") };
        nets[0].send_to(2, request)
    });
    let results = bounded(&rt, "300 concurrent RPCs", join_all(calls)).await;
    assert!(results.iter().all(Result::is_ok), "{:?}", results.iter().find(|r| r.is_err()));
    assert_eq!(handler.calls(), 300);
    for net in &nets {
        net.close().await;
    }
}

/// A peer whose request claims another node's id is refused; the handler never sees it.
pub async fn sender_must_match_certificate(rt: Arc<dyn Runtime>) {
    init_tracing();
    let ca = ClusterCa::generate().unwrap();
    let nets = bind_cluster(&ca, &[1, 2, 3], &rt);
    let handler = TestHandler::new(1);
    nets[0].serve(handler.clone());
    // Node 2 (authenticated as 2 by its certificate) claims to be node 3.
    for request in [heartbeat(3), vote(3)] {
        match bounded(&rt, "spoofed RPC", nets[1].send_to(1, request)).await {
            Err(NetworkError::Refused { peer: 1, reason }) => {
                let refusal = transport_refusal(&reason);
                let mismatch = Refusal::SenderMismatch { claimed: 3, authenticated: 2 };
                assert_eq!(refusal, Some(&mismatch), "{reason}");
                assert!(reason.to_string().contains("claims sender 3"), "{reason}");
            }
            other => panic!("spoofed request not refused: {other:?}"),
        }
    }
    // The claim is checked from the header, before the body is read: an 8 MiB request is
    // refused with the same answer (the server stops the stream instead of reading it).
    match bounded(&rt, "spoofed bulk RPC", nets[1].send_to(1, append(3, 8, 1 << 20, b""))).await {
        Err(NetworkError::Refused { reason, .. }) => {
            assert!(reason.to_string().contains("claims sender 3"), "{reason}")
        }
        other => panic!("spoofed request not refused: {other:?}"),
    }
    assert_eq!(handler.calls(), 0);
    // The honest request on the same connection is served.
    bounded(&rt, "honest RPC", nets[1].send_to(1, heartbeat(2))).await.unwrap();
    assert_eq!(handler.calls(), 1);
    for net in &nets {
        net.close().await;
    }
}

/// Requests that arrive before a handler is installed are refused, then served once it is.
pub async fn refuses_until_serving(rt: Arc<dyn Runtime>) {
    init_tracing();
    let ca = ClusterCa::generate().unwrap();
    let nets = bind_cluster(&ca, &[1, 2], &rt);
    match bounded(&rt, "early RPC", nets[0].send_to(2, heartbeat(1))).await {
        Err(NetworkError::Refused { reason, .. }) => {
            assert_eq!(transport_refusal(&reason), Some(&Refusal::NotServing), "{reason}")
        }
        other => panic!("request served without a handler: {other:?}"),
    }
    let handler = TestHandler::new(2);
    nets[1].serve(handler.clone());
    bounded(&rt, "RPC", nets[0].send_to(2, heartbeat(1))).await.unwrap();
    assert_eq!(handler.calls(), 1);
    // The handler's own refusal comes back typed (review of 17.3, LOW 4): a caller can tell a
    // node that shuts down from one of another cluster without parsing a message.
    let read =
        RpcRequest::ReadIndex(raft_core::ReadIndexRequest { term: 1, sender: 1, read_id: 7 });
    match bounded(&rt, "refused RPC", nets[0].send_to(2, read)).await {
        Err(NetworkError::Refused { peer: 2, reason }) => {
            assert_eq!(reason.rpc_error(), Some(&RpcError::Shutdown), "{reason}")
        }
        other => panic!("the handler's refusal got lost: {other:?}"),
    }
    assert!(matches!(nets[0].send_to(9, heartbeat(1)).await, Err(NetworkError::UnknownPeer(9))));
    for net in &nets {
        net.close().await;
    }
}

/// A node the server does not know (a member added since the server's address book was
/// written) is accepted on the strength of its node certificate (node CA, node role), and its
/// requests are still checked against the id that certificate names.
pub async fn unknown_node_with_a_cluster_certificate_is_served(rt: Arc<dyn Runtime>) {
    init_tracing();
    let ca = ClusterCa::generate().unwrap();
    let nets = bind_cluster(&ca, &[1], &rt);
    let handler = TestHandler::new(1);
    nets[0].serve(handler.clone());
    let newcomer = QuicNetwork::bind(test_config(&ca, 9, loopback()), rt.clone()).unwrap();
    newcomer.set_peer(1, nets[0].local_addr());
    bounded(&rt, "RPC from an unknown node", newcomer.send_to(1, heartbeat(9))).await.unwrap();
    assert_eq!(handler.calls(), 1);
    match bounded(&rt, "spoofed sender", newcomer.send_to(1, heartbeat(2))).await {
        Err(NetworkError::Refused { .. }) => {}
        other => panic!("a request claiming another sender was served: {other:?}"),
    }
    assert_eq!(handler.calls(), 1);
    newcomer.close().await;
    for net in &nets {
        net.close().await;
    }
}

/// Dialing id 3 at an address where node 2 answers fails: the server must prove the dialed id.
pub async fn server_must_prove_dialed_id(rt: Arc<dyn Runtime>) {
    init_tracing();
    let ca = ClusterCa::generate().unwrap();
    let nets = bind_cluster(&ca, &[1, 2], &rt);
    let handler = TestHandler::new(2);
    nets[1].serve(handler.clone());
    nets[0].set_peer(3, nets[1].local_addr());
    match bounded(&rt, "misdirected RPC", nets[0].send_to(3, heartbeat(1))).await {
        Err(NetworkError::Unreachable { peer: 3, reason }) => {
            assert!(reason.to_lowercase().contains("certificate"), "{reason}")
        }
        other => panic!("impostor server accepted: {other:?}"),
    }
    assert_eq!(handler.calls(), 0);
    for net in &nets {
        net.close().await;
    }
}

/// A node of another cluster (certificate from a foreign CA) is refused, even under a known id.
pub async fn foreign_ca_is_refused(rt: Arc<dyn Runtime>) {
    init_tracing();
    let ca = ClusterCa::generate().unwrap();
    let foreign = ClusterCa::generate().unwrap();
    let nets = bind_cluster(&ca, &[1, 2], &rt);
    let handler = TestHandler::new(1);
    nets[0].serve(handler.clone());
    let intruder = QuicNetwork::bind(test_config(&foreign, 2, loopback()), rt.clone()).unwrap();
    intruder.set_peer(1, nets[0].local_addr());
    let result = bounded(&rt, "intruder RPC", intruder.send_to(1, heartbeat(2))).await;
    assert!(matches!(result, Err(NetworkError::Unreachable { .. })), "{result:?}");

    // A client that trusts the cluster CA but presents a foreign certificate: the handshake
    // may complete on its side, but the server closes the connection and serves nothing.
    let foreign_cert = foreign.issue(2).unwrap();
    let mixed = NodeTls::from_pem(
        ca.cert_pem().as_bytes(),
        foreign_cert.cert_pem.as_bytes(),
        foreign_cert.key_pem.as_bytes(),
    )
    .unwrap();
    let refused = raw_rpc_attempt(&rt, tls::quic_client_config(&mixed).unwrap(), &nets[0], 2).await;
    assert!(refused.is_err(), "foreign client certificate accepted");

    // A client with no certificate at all.
    let anonymous = rustls::ClientConfig::builder_with_provider(tls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates({
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.cert_der().clone()).unwrap();
            roots
        })
        .with_no_client_auth();
    let mut anonymous = anonymous;
    anonymous.alpn_protocols = vec![raft_quic::ALPN.to_vec()];
    let anonymous = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(anonymous).unwrap(),
    ));
    let refused = raw_rpc_attempt(&rt, anonymous, &nets[0], 2).await;
    assert!(refused.is_err(), "anonymous client accepted");

    assert_eq!(handler.calls(), 0);
    bounded(&rt, "honest RPC", nets[1].send_to(1, heartbeat(2))).await.unwrap();
    intruder.close().await;
    for net in &nets {
        net.close().await;
    }
}

/// A raw quinn endpoint on loopback port 0.
/// A certificate `ca` issues for `name` (any SAN, no node role), trusting only `ca`.
pub fn client_material(ca: &ClusterCa, name: &str, lifetime: Duration) -> NodeTls {
    let cert = ca.issue_client(name, lifetime).unwrap();
    NodeTls::from_pem(ca.cert_pem().as_bytes(), cert.cert_pem.as_bytes(), cert.key_pem.as_bytes())
        .unwrap()
}

pub fn raw_endpoint(rt: &Arc<dyn Runtime>) -> quinn::Endpoint {
    let socket = std::net::UdpSocket::bind(loopback()).unwrap();
    quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, rt.clone()).unwrap()
}

/// Connects to `server` (by its node name) with `config` and sends one valid heartbeat from
/// node `sender`. Returns the response, or the error at whichever step failed.
pub async fn raw_rpc_attempt(
    rt: &Arc<dyn Runtime>,
    config: quinn::ClientConfig,
    server: &QuicNetwork,
    sender: NodeId,
) -> Result<WireResponse, String> {
    let endpoint = raw_endpoint(rt);
    let name = raft_quic::node_dns_name(server.node_id());
    let result = bounded(rt, "raw RPC attempt", async {
        let conn = endpoint
            .connect_with(config, server.local_addr(), &name)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        raw_rpc(rt, &conn, sender).await
    })
    .await;
    endpoint.close(0u32.into(), b"");
    result
}

/// A raw peer that `net` dials: a quinn server endpoint presenting `material` as node `id`, added
/// to `net`'s peers. `net` sends it a heartbeat; returns the peer's endpoint, the connection
/// `net` dialed (as the peer sees it) and the RPC's outcome (it never gets an answer).
pub async fn dialed_by(
    rt: &Arc<dyn Runtime>,
    net: &QuicNetwork,
    id: NodeId,
    material: &NodeTls,
) -> (
    quinn::Endpoint,
    quinn::Connection,
    futures::future::RemoteHandle<Result<RpcResponse, NetworkError>>,
) {
    let crypto = tls::quic_server_crypto(material).unwrap();
    let socket = std::net::UdpSocket::bind(loopback()).unwrap();
    let server = quinn::ServerConfig::with_crypto(crypto);
    let endpoint =
        quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(server), socket, rt.clone())
            .unwrap();
    net.set_peer(id, endpoint.local_addr().unwrap());
    let (rpc, outcome) = {
        let net = net.clone();
        async move { net.send_to(id, heartbeat(net.node_id())).await }.remote_handle()
    };
    rt.spawn(Box::pin(rpc));
    let incoming = bounded(rt, "the dial", endpoint.accept()).await.unwrap();
    let conn = bounded(rt, "the handshake", incoming.accept().unwrap()).await.unwrap();
    (endpoint, conn, outcome)
}

/// Sends one valid heartbeat from node `sender` on an established raw connection. Returns the
/// response, or the error at whichever step failed.
pub async fn raw_rpc(
    rt: &Arc<dyn Runtime>,
    conn: &quinn::Connection,
    sender: NodeId,
) -> Result<WireResponse, String> {
    bounded(rt, "raw RPC", async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let request = frame::encode_request(&envelope(1, heartbeat(sender)), 1 << 20).unwrap();
        send.write_all(&request).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        let bytes = recv.read_to_end(1 << 20).await.map_err(|e| e.to_string())?;
        frame::decode::<WireResponse>(&bytes, 1 << 20, LIMITS)
            .map(|(r, _)| r)
            .map_err(|e| e.to_string())
    })
    .await
}

/// A node restarts (same address, same certificate); its peer reconnects by itself.
pub async fn reconnects_after_restart(rt: Arc<dyn Runtime>) {
    init_tracing();
    let ca = ClusterCa::generate().unwrap();
    let tls2 = ca.node_tls(2).unwrap();
    let nets = bind_cluster(&ca, &[1, 2], &rt);
    let (net1, net2) = (nets[0].clone(), nets[1].clone());
    drop(nets);
    let handler = TestHandler::new(2);
    net2.serve(handler.clone());
    bounded(&rt, "first RPC", net1.send_to(2, heartbeat(1))).await.unwrap();
    let addr2 = net2.local_addr();

    // Stop node 2: RPCs fail (without hanging) while it is down.
    net2.close().await;
    drop(net2);
    let down = bounded(&rt, "RPC to a stopped node", net1.send_to(2, heartbeat(1))).await;
    assert!(down.is_err(), "{down:?}");

    // Restart it on the same address. The old socket may take a moment to be released.
    let mut config = test_config(&ca, 2, addr2);
    config.tls = tls2;
    config.peers.insert(1, net1.local_addr());
    let restarted = eventually(&rt, "rebind the restarted node", Duration::from_millis(20), || {
        let config = config.clone();
        let rt = rt.clone();
        async move { QuicNetwork::bind(config, rt).ok() }
    })
    .await;
    let handler2 = TestHandler::new(2);
    restarted.serve(handler2.clone());

    eventually(&rt, "reconnect to the restarted node", Duration::from_millis(20), || {
        let net1 = net1.clone();
        async move { net1.send_to(2, heartbeat(1)).await.ok() }
    })
    .await;
    assert!(handler2.calls() >= 1);
    // And the restarted node can dial back.
    let handler1 = TestHandler::new(1);
    net1.serve(handler1.clone());
    bounded(&rt, "RPC from the restarted node", restarted.send_to(1, heartbeat(2))).await.unwrap();
    assert_eq!(handler1.calls(), 1);
    restarted.close().await;
    net1.close().await;
}

/// Heartbeats and votes complete while several MiB-sized AppendEntries are in flight on the
/// same connection (held in the handler, so they stay in flight until the test releases them).
pub async fn large_batches_do_not_block_heartbeats(rt: Arc<dyn Runtime>) {
    init_tracing();
    let ca = ClusterCa::generate().unwrap();
    let nets = bind_cluster(&ca, &[1, 2], &rt);
    let handler = TestHandler::new(2);
    nets[1].serve(handler.clone());
    let gate = handler.close_gate();

    // Four 8 MiB batches (8 entries of 1 MiB), each gated in the handler.
    let mut bulk: futures::stream::FuturesUnordered<_> =
        (0..4).map(|_| nets[0].send_to(2, append(1, 8, 1 << 20, b"gated"))).collect();
    // While they are outstanding, small RPCs go through, many times over.
    let small = async {
        for _ in 0..20 {
            nets[0].send_to(2, heartbeat(1)).await.unwrap();
            nets[0].send_to(2, vote(1)).await.unwrap();
        }
    };
    let mut small = std::pin::pin!(small);
    let outcome = bounded(
        &rt,
        "small RPCs behind bulk",
        futures::future::select(bulk.next(), small.as_mut()),
    )
    .await;
    if let futures::future::Either::Left((done, _)) = outcome {
        panic!("a bulk RPC finished before the small ones: {done:?}");
    }
    drop(gate);
    let results: Vec<_> = bounded(&rt, "bulk RPCs", bulk.collect()).await;
    for result in results {
        assert_eq!(match_index(result.unwrap()), Some(15));
    }
    for net in &nets {
        net.close().await;
    }
}

/// Frames above the limits: an outbound message above the sender's limit fails locally; an
/// inbound frame above the receiver's limit closes that stream only.
pub async fn oversized_frames(rt: Arc<dyn Runtime>) {
    init_tracing();
    let ca = ClusterCa::generate().unwrap();
    let mut c1 = test_config(&ca, 1, loopback());
    c1.max_frame_size = 4 << 20;
    let mut c2 = test_config(&ca, 2, loopback());
    c2.max_frame_size = 1 << 20;
    let net1 = QuicNetwork::bind(c1, rt.clone()).unwrap();
    let net2 = QuicNetwork::bind(c2, rt.clone()).unwrap();
    net1.set_peer(2, net2.local_addr());
    net2.set_peer(1, net1.local_addr());
    let handler = TestHandler::new(2);
    net2.serve(handler.clone());

    let too_big_for_sender = append(1, 5, 1 << 20, b"");
    let result = net1.send_to(2, too_big_for_sender).await;
    assert!(matches!(result, Err(NetworkError::Codec(_))), "{result:?}");

    let too_big_for_receiver = append(1, 2, 1 << 20, b"");
    let result = bounded(&rt, "oversized RPC", net1.send_to(2, too_big_for_receiver)).await;
    match result {
        Err(NetworkError::Refused { reason, .. }) => {
            let frame_too_large = format!("code {}", code::FRAME_TOO_LARGE);
            assert!(reason.to_string().contains(&frame_too_large), "{reason}")
        }
        other => panic!("oversized frame accepted: {other:?}"),
    }
    assert_eq!(handler.calls(), 0);
    bounded(&rt, "RPC after the oversized one", net1.send_to(2, heartbeat(1))).await.unwrap();
    assert_eq!(handler.calls(), 1);
    net1.close().await;
    net2.close().await;
}

/// After `close`, sends fail with `Shutdown` and peers see the node as unreachable.
pub async fn close_is_final(rt: Arc<dyn Runtime>) {
    init_tracing();
    let ca = ClusterCa::generate().unwrap();
    let nets = bind_cluster(&ca, &[1, 2], &rt);
    nets[0].serve(TestHandler::new(1));
    nets[1].serve(TestHandler::new(2));
    bounded(&rt, "RPC", nets[0].send_to(2, heartbeat(1))).await.unwrap();
    nets[0].close().await;
    nets[0].close().await;
    assert!(matches!(nets[0].send_to(2, heartbeat(1)).await, Err(NetworkError::Shutdown)));
    let result = bounded(&rt, "RPC to a closed node", nets[1].send_to(1, heartbeat(2))).await;
    assert!(result.is_err(), "{result:?}");
    nets[1].close().await;
}

/// Malformed input on a mutually authenticated connection: each bad frame closes its own
/// stream with the matching error code; the connection, and every other peer, keep being
/// served. Garbage datagrams at the UDP level are ignored.
pub async fn malformed_frames_are_survived(rt: Arc<dyn Runtime>) {
    init_tracing();
    let ca = ClusterCa::generate().unwrap();
    let mut config1 = test_config(&ca, 1, loopback());
    // Short, so that the stalled-frame case below ends quickly.
    config1.rpc_timeout = Duration::from_millis(300);
    // Below the RPC timeout, as `validate` requires (a dial had to fit in 300 ms already).
    config1.connect_timeout = Duration::from_millis(250);
    config1.max_decoded_items = 1_000;
    let net1 = QuicNetwork::bind(config1, rt.clone()).unwrap();
    let net3 = QuicNetwork::bind(test_config(&ca, 3, loopback()), rt.clone()).unwrap();
    net1.set_peer(2, loopback());
    net1.set_peer(3, net3.local_addr());
    net3.set_peer(1, net1.local_addr());
    let handler = TestHandler::new(1);
    net1.serve(handler.clone());

    // UDP garbage first: quinn drops it.
    let udp = std::net::UdpSocket::bind(loopback()).unwrap();
    for i in 0..50u8 {
        let junk: Vec<u8> = (0..(i as usize * 25 + 1)).map(|j| (j as u8) ^ i).collect();
        udp.send_to(&junk, net1.local_addr()).unwrap();
    }

    let endpoint = raw_endpoint(&rt);
    let client = tls::quic_client_config(&ca.node_tls(2).unwrap()).unwrap();
    let conn = bounded(&rt, "raw connect", async {
        endpoint.connect_with(client, net1.local_addr(), "node-1.raft").unwrap().await.unwrap()
    })
    .await;

    let valid = frame::encode_request(&envelope(1, heartbeat(2)), 1 << 20).unwrap().to_vec();
    let mut trailing = valid.clone();
    trailing.push(0);
    let len = (trailing.len() - 4) as u32;
    trailing[..4].copy_from_slice(&len.to_be_bytes());
    let v = PROTOCOL_VERSION;
    let mut undecodable = vec![0, 0, 0, 13, v];
    undecodable.extend(2u64.to_be_bytes());
    undecodable.extend([0xff; 4]);
    // More log entries than node 1 decodes in one frame (`max_decoded_items` 1,000).
    let crowded =
        frame::encode_request(&envelope(1, append(2, 2_000, 0, b"")), 1 << 20).unwrap().to_vec();
    let cases: Vec<(&str, Vec<u8>, bool, quinn::VarInt)> = vec![
        ("garbage", b"\xde\xad\xbe\xef garbage".to_vec(), true, code::FRAME_TOO_LARGE),
        ("zero length", vec![0, 0, 0, 0, v], true, code::DECODE_ERROR),
        ("unknown version", vec![0, 0, 0, 5, 9, 1, 2, 3, 4], true, code::UNSUPPORTED_VERSION),
        ("empty stream", vec![], true, code::TRUNCATED),
        ("truncated header", vec![0, 0], true, code::TRUNCATED),
        ("no room for the sender", vec![0, 0, 0, 5, v, 0, 0, 0, 2], true, code::DECODE_ERROR),
        ("truncated sender", vec![0, 0, 0, 100, v, 1, 2, 3], true, code::TRUNCATED),
        ("undecodable body", undecodable, true, code::DECODE_ERROR),
        ("trailing bytes", trailing, true, code::DECODE_ERROR),
        ("too many entries", crowded, true, code::DECODE_ERROR),
        ("stalled frame", vec![0, 0, 0, 100, v, 1, 2], false, code::TIMEOUT),
    ];
    for (name, bytes, finish, expected) in cases {
        let outcome = bounded(&rt, name, async {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            // The server may stop the stream before all is written: write errors are expected.
            let _ = send.write_all(&bytes).await;
            if finish {
                let _ = send.finish();
            }
            recv.read_to_end(1 << 20).await
        })
        .await;
        match outcome {
            Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => {
                assert_eq!(code, expected, "case {name}: wrong reset code")
            }
            other => panic!("case {name}: expected a reset stream, got {other:?}"),
        }
    }
    assert_eq!(handler.calls(), 0);

    // The same connection still serves a valid request...
    let response = bounded(&rt, "valid raw RPC", async {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&valid).await.unwrap();
        send.finish().unwrap();
        recv.read_to_end(1 << 20).await.unwrap()
    })
    .await;
    let (response, _) = frame::decode::<WireResponse>(&response, 1 << 20, LIMITS).unwrap();
    assert!(matches!(response, WireResponse::Ok(RpcResponse::AppendEntries(_))), "{response:?}");
    // ...and so does the node to everyone else.
    bounded(&rt, "RPC from another peer", net3.send_to(1, heartbeat(3))).await.unwrap();
    assert_eq!(handler.calls(), 2);

    conn.close(0u32.into(), b"");
    endpoint.close(0u32.into(), b"");
    net1.close().await;
    net3.close().await;
}

/// Short keep-alive and idle timeouts, for the link-failure scenarios.
pub fn impatient(ca: &ClusterCa, id: NodeId, idle: Duration) -> raft_quic::QuicConfig {
    let mut config = test_config(ca, id, loopback());
    config.rpc_timeout = Duration::from_millis(300);
    // Below the RPC timeout, as `validate` requires (a dial had to fit in 300 ms already).
    config.connect_timeout = Duration::from_millis(250);
    config.keep_alive_interval = Duration::from_millis(100);
    config.idle_timeout = idle;
    config
}

/// The link breaks long enough for the connection to die; once it heals, RPCs flow again on a
/// new connection.
pub async fn reconnects_after_link_break(rt: Arc<dyn Runtime>) {
    init_tracing();
    let ca = ClusterCa::generate().unwrap();
    let idle = Duration::from_millis(600);
    let net1 = QuicNetwork::bind(impatient(&ca, 1, idle), rt.clone()).unwrap();
    let net2 = QuicNetwork::bind(impatient(&ca, 2, idle), rt.clone()).unwrap();
    let proxy = proxy::UdpProxy::start(net2.local_addr());
    net1.set_peer(2, proxy.addr());
    net2.set_peer(1, net1.local_addr());
    let handler = TestHandler::new(2);
    net2.serve(handler.clone());
    bounded(&rt, "RPC over the proxy", net1.send_to(2, heartbeat(1))).await.unwrap();

    proxy.block();
    let broken = bounded(&rt, "RPC over a broken link", net1.send_to(2, heartbeat(1))).await;
    assert!(broken.is_err(), "{broken:?}");
    // Long enough for both sides' idle timers to fire.
    sleep(&rt, idle * 3).await;
    proxy.unblock();
    eventually(&rt, "RPC after the link healed", Duration::from_millis(20), || {
        let net1 = net1.clone();
        async move { net1.send_to(2, heartbeat(1)).await.ok() }
    })
    .await;
    net1.close().await;
    net2.close().await;
}

/// A peer "crashes" without its close reaching us (the link drops it) and restarts on the same
/// address. Its new endpoint answers our stale connection with a stateless reset (keyed from
/// the node's key, so accepted), and we reconnect without waiting out the idle timeout, which
/// is set far beyond the test's patience. (Only ids never sent in clear earn a reset: the
/// connection first moves off its handshake id, which takes a connection-id lifetime.)
pub async fn stale_connection_is_reset_after_crash(rt: Arc<dyn Runtime>) {
    init_tracing();
    let ca = ClusterCa::generate().unwrap();
    let tls2 = ca.node_tls(2).unwrap();
    let idle = Duration::from_secs(120);
    let net1 = QuicNetwork::bind(impatient(&ca, 1, idle), rt.clone()).unwrap();
    let mut config2 = impatient(&ca, 2, idle);
    config2.tls = tls2.clone();
    let net2 = QuicNetwork::bind(config2.clone(), rt.clone()).unwrap();
    let proxy = proxy::UdpProxy::start(net2.local_addr());
    net1.set_peer(2, proxy.addr());
    net2.set_peer(1, net1.local_addr());
    net2.serve(TestHandler::new(2));
    bounded(&rt, "RPC over the proxy", net1.send_to(2, heartbeat(1))).await.unwrap();
    eventually(&rt, "the connection off its handshake id", Duration::from_millis(20), || {
        let moved = proxy.client_uses_a_private_id();
        async move { moved.then_some(()) }
    })
    .await;

    // Crash: node 2 goes away and its CONNECTION_CLOSE is lost.
    proxy.block();
    let addr2 = net2.local_addr();
    net2.close().await;
    drop(net2);
    config2.listen_addr = addr2;
    config2.peers.insert(1, net1.local_addr());
    let restarted = eventually(&rt, "rebind node 2", Duration::from_millis(20), || {
        let (config, rt) = (config2.clone(), rt.clone());
        async move { QuicNetwork::bind(config, rt).ok() }
    })
    .await;
    let handler = TestHandler::new(2);
    restarted.serve(handler.clone());
    proxy.unblock();

    // The stateless reset, not the dialer's silence check, must end the stale connection: the
    // silence check would replace it too, one RPC timeout later, and so hide broken resets. A
    // reset tears the connection down at its next packet (the RPC fails `Unreachable` or goes
    // out on a new connection); only a connection nobody resets lets the RPC time out.
    let first = bounded(&rt, "first RPC after the restart", net1.send_to(2, heartbeat(1))).await;
    assert!(!matches!(first, Err(NetworkError::Timeout(_))), "no stateless reset: {first:?}");
    eventually(&rt, "RPC to the restarted node", Duration::from_millis(20), || {
        let net1 = net1.clone();
        async move { net1.send_to(2, heartbeat(1)).await.ok() }
    })
    .await;
    assert!(handler.calls() >= 1);
    net1.close().await;
    restarted.close().await;
}

/// An RPC whose answer does not come within the RPC timeout fails with `Timeout`; the
/// connection keeps serving other RPCs.
pub async fn rpc_timeout_is_enforced(rt: Arc<dyn Runtime>) {
    init_tracing();
    let ca = ClusterCa::generate().unwrap();
    let mut config1 = test_config(&ca, 1, loopback());
    config1.rpc_timeout = Duration::from_millis(200);
    // Below the RPC timeout, as `validate` requires (a dial had to fit in 200 ms already).
    config1.connect_timeout = Duration::from_millis(150);
    let net1 = QuicNetwork::bind(config1, rt.clone()).unwrap();
    let net2 = QuicNetwork::bind(test_config(&ca, 2, loopback()), rt.clone()).unwrap();
    net1.set_peer(2, net2.local_addr());
    net2.set_peer(1, net1.local_addr());
    let handler = TestHandler::new(2);
    net2.serve(handler.clone());
    let gate = handler.close_gate();
    let held = bounded(&rt, "held RPC", net1.send_to(2, append(1, 1, 10, b"gated"))).await;
    assert!(matches!(held, Err(NetworkError::Timeout(2))), "{held:?}");
    bounded(&rt, "RPC after a timeout", net1.send_to(2, heartbeat(1))).await.unwrap();
    drop(gate);
    net1.close().await;
    net2.close().await;
}

/// A certificate from the cluster's own node CA but without the node role (what a client of
/// an application gets, even one naming `node-<id>.raft`) never speaks Raft: the handshake
/// fails, whatever it claims.
pub async fn certificate_without_the_node_role_is_refused(rt: Arc<dyn Runtime>) {
    init_tracing();
    let ca = ClusterCa::generate().unwrap();
    let nets = bind_cluster(&ca, &[1, 2], &rt);
    let handler = TestHandler::new(1);
    nets[0].serve(handler.clone());
    let lifetime = Duration::from_secs(3600);
    for name in ["client-app.kv", "node-2.raft", "node-18446744073709551615.raft"] {
        let tls = client_material(&ca, name, lifetime);
        let config = tls::quic_client_config(&tls).unwrap();
        let sender = raft_quic::node_id_of(&tls.cert_chain[0]).unwrap_or(2);
        let result = raw_rpc_attempt(&rt, config, &nets[0], sender).await;
        assert!(result.is_err(), "{name}: a certificate without the node role was served");
    }
    assert_eq!(handler.calls(), 0);
    bounded(&rt, "honest RPC", nets[1].send_to(1, heartbeat(2))).await.unwrap();
    assert_eq!(handler.calls(), 1);
    for net in &nets {
        net.close().await;
    }
}

/// Node 1 (connect timeout 3 s, RPC timeout 5 s) reaching node 2 through a proxy that holds
/// node 1's first dial back: the set-up of the tests of a dial that completes after node 2's
/// peer entry changed under it (review M3 and L-e of qaddr).
struct HeldDial {
    rt: Arc<dyn Runtime>,
    net1: QuicNetwork,
    net2: QuicNetwork,
    handler: Arc<TestHandler>,
    proxy: proxy::UdpProxy,
}

impl HeldDial {
    fn start(rt: Arc<dyn Runtime>) -> Self {
        init_tracing();
        let ca = ClusterCa::generate().unwrap();
        let mut config1 = test_config(&ca, 1, loopback());
        config1.connect_timeout = Duration::from_secs(3);
        config1.rpc_timeout = Duration::from_secs(5);
        let net1 = QuicNetwork::bind(config1, rt.clone()).unwrap();
        let net2 = QuicNetwork::bind(test_config(&ca, 2, loopback()), rt.clone()).unwrap();
        let handler = TestHandler::new(2);
        net2.serve(handler.clone());
        let proxy = proxy::UdpProxy::start(net2.local_addr());
        net1.set_peer(2, proxy.addr());
        proxy.block();
        Self { rt, net1, net2, handler, proxy }
    }

    /// A heartbeat from node 1 to node 2 whose dial waits at the proxy while `change` runs on
    /// node 1, 100 ms in; then the proxy lets the dial through. The heartbeat's result.
    async fn heartbeat_while(
        &self,
        change: impl FnOnce(&QuicNetwork),
    ) -> Result<RpcResponse, NetworkError> {
        let during_the_dial = async {
            sleep(&self.rt, Duration::from_millis(100)).await;
            change(&self.net1);
            self.proxy.unblock();
        };
        let rpc = self.net1.send_to(2, heartbeat(1));
        let (result, ()) =
            bounded(&self.rt, "the RPC dialing", futures::future::join(rpc, during_the_dial)).await;
        result
    }

    /// Waits until node 2 holds `count` connections of node 1, then closes both networks.
    async fn close_once_node2_holds(self, count: usize, what: &str) {
        eventually(&self.rt, what, Duration::from_millis(20), || {
            let connections = self.net2.accept_stats().connections;
            async move { (connections == count).then_some(()) }
        })
        .await;
        self.net1.close().await;
        self.net2.close().await;
    }
}

/// Review finding M3 (rev_qaddr): a dial to node 2 that completes after node 1 refused node 2
/// (its peer entry removed meanwhile) neither keeps the connection nor delivers the request:
/// node 2's handler never runs, and node 2 ends up holding no connection of node 1.
/// (Before, the connection was cached in the removed peer entry, the request written on it, and
/// the connection kept open by keep-alives until the certificate expired.)
pub async fn a_dial_completing_after_a_refusal_is_dropped(rt: Arc<dyn Runtime>) {
    let held = HeldDial::start(rt);
    let result = held.heartbeat_while(|net1| net1.refuse(2)).await;
    assert!(result.is_err(), "a refused node got the request: {result:?}");
    assert_eq!(held.handler.calls(), 0);
    held.close_once_node2_holds(0, "node 2 holds no connection of node 1").await;
}

/// Review finding L-e (second review of qaddr), the other half of M3: a dial to node 2 that
/// completes after node 1 replaced node 2's peer entry (`remove_peer` then `set_peer`: a new
/// entry, the dialing one orphaned) is not kept in the orphaned entry: the RPC that dialed
/// fails, the next heartbeat goes through the new entry's own connection, and node 2 ends up
/// holding one connection of node 1, not two.
pub async fn a_dial_completing_after_its_peer_entry_was_replaced_is_dropped(rt: Arc<dyn Runtime>) {
    let held = HeldDial::start(rt);
    let proxy_addr = held.proxy.addr();
    let result = held
        .heartbeat_while(|net1| {
            net1.remove_peer(2);
            net1.set_peer(2, proxy_addr);
        })
        .await;
    assert!(result.is_err(), "the orphaned entry's dial was used: {result:?}");
    assert_eq!(held.handler.calls(), 0);
    bounded(&held.rt, "the heartbeat through the new entry", held.net1.send_to(2, heartbeat(1)))
        .await
        .unwrap();
    assert_eq!(held.handler.calls(), 1);
    held.close_once_node2_holds(1, "node 2 holds one connection of node 1").await;
}

/// A refused (removed) node loses its connections at once and can never connect again, with
/// its still-valid certificate; refusals given at bind time hold from the start.
pub async fn refused_node_is_shut_out(rt: Arc<dyn Runtime>) {
    init_tracing();
    let ca = ClusterCa::generate().unwrap();
    let nets = bind_cluster(&ca, &[1, 2, 3], &rt);
    let handler = TestHandler::new(1);
    nets[0].serve(handler.clone());
    bounded(&rt, "RPC before the removal", nets[1].send_to(1, heartbeat(2))).await.unwrap();
    assert_eq!(handler.calls(), 1);

    nets[0].refuse(2);
    assert_eq!(nets[0].refused().into_iter().collect::<Vec<_>>(), [2]);
    // Node 1 no longer sends to it either.
    let to_removed = nets[0].send_to(2, heartbeat(1)).await;
    assert!(matches!(to_removed, Err(NetworkError::UnknownPeer(2))), "{to_removed:?}");
    nets[0].set_peer(2, nets[1].local_addr());
    assert!(matches!(nets[0].send_to(2, heartbeat(1)).await, Err(NetworkError::UnknownPeer(2))));
    // Its existing connection is closed, and redialing fails.
    for attempt in 0..5 {
        let result =
            bounded(&rt, "RPC from the removed node", nets[1].send_to(1, heartbeat(2))).await;
        assert!(result.is_err(), "attempt {attempt}: a removed node was served: {result:?}");
    }
    // A fresh endpoint with node 2's certificate fares no better.
    let again = QuicNetwork::bind(test_config(&ca, 2, loopback()), rt.clone()).unwrap();
    again.set_peer(1, nets[0].local_addr());
    let result = bounded(&rt, "RPC from a new endpoint of 2", again.send_to(1, heartbeat(2))).await;
    assert!(result.is_err(), "{result:?}");
    assert_eq!(handler.calls(), 1);
    assert!(nets[0].accept_stats().rejected >= 1, "{:?}", nets[0].accept_stats());
    // Others carry on.
    bounded(&rt, "RPC from node 3", nets[2].send_to(1, heartbeat(3))).await.unwrap();
    assert_eq!(handler.calls(), 2);

    // Refused from the start.
    let mut config = test_config(&ca, 4, loopback());
    config.refused.insert(3);
    let net4 = QuicNetwork::bind(config, rt.clone()).unwrap();
    let handler4 = TestHandler::new(4);
    net4.serve(handler4.clone());
    nets[2].set_peer(4, net4.local_addr());
    let result =
        bounded(&rt, "RPC from a node refused at bind", nets[2].send_to(4, heartbeat(3))).await;
    assert!(result.is_err(), "{result:?}");
    assert_eq!(handler4.calls(), 0);
    again.close().await;
    net4.close().await;
    for net in &nets {
        net.close().await;
    }
}

/// Material of node `id` with a certificate from `issuer`, trusting every CA of `trusted`.
fn material(issuer: &ClusterCa, id: NodeId, trusted: &[&ClusterCa]) -> NodeTls {
    let cert = issuer.issue(id).unwrap();
    let bundle: String = trusted.iter().map(|ca| ca.cert_pem()).collect();
    NodeTls::from_pem(bundle.as_bytes(), cert.cert_pem.as_bytes(), cert.key_pem.as_bytes()).unwrap()
}

/// During a CA roll-over, nodes whose certificates come from the old and from the new CA
/// serve each other once both CAs are in their trust bundles; a node that trusts only the old
/// CA refuses the new one's certificates.
pub async fn nodes_of_two_cas_interoperate_during_a_roll_over(rt: Arc<dyn Runtime>) {
    init_tracing();
    let (old, new) = (ClusterCa::generate().unwrap(), ClusterCa::generate().unwrap());
    let config = |id: NodeId, tls: NodeTls| {
        let mut config = test_config(&old, id, loopback());
        config.tls = tls;
        config
    };
    let net1 = QuicNetwork::bind(config(1, material(&old, 1, &[&old, &new])), rt.clone()).unwrap();
    let net2 = QuicNetwork::bind(config(2, material(&new, 2, &[&old, &new])), rt.clone()).unwrap();
    let net3 = QuicNetwork::bind(config(3, material(&old, 3, &[&old])), rt.clone()).unwrap();
    let nets = [&net1, &net2, &net3];
    for a in nets {
        for b in nets {
            if a.node_id() != b.node_id() {
                a.set_peer(b.node_id(), b.local_addr());
            }
        }
        a.serve(TestHandler::new(a.node_id()));
    }
    bounded(&rt, "old-CA node to new-CA node", net1.send_to(2, heartbeat(1))).await.unwrap();
    bounded(&rt, "new-CA node to old-CA node", net2.send_to(1, heartbeat(2))).await.unwrap();
    bounded(&rt, "old-only node to old-CA node", net3.send_to(1, heartbeat(3))).await.unwrap();
    let refused =
        bounded(&rt, "new-CA node to an old-only node", net2.send_to(3, heartbeat(2))).await;
    assert!(refused.is_err(), "{refused:?}");
    let refused = bounded(&rt, "old-only node to new-CA node", net3.send_to(2, heartbeat(3))).await;
    assert!(refused.is_err(), "{refused:?}");
    for net in nets {
        net.close().await;
    }
}

/// The leaf certificate a server presents to a new connection.
async fn served_certificate(
    rt: &Arc<dyn Runtime>,
    client: &NodeTls,
    server: &QuicNetwork,
) -> Vec<u8> {
    let endpoint = raw_endpoint(rt);
    let config = tls::quic_client_config(client).unwrap();
    let name = raft_quic::node_dns_name(server.node_id());
    let conn = bounded(rt, "connect", async {
        endpoint.connect_with(config, server.local_addr(), &name).unwrap().await.unwrap()
    })
    .await;
    let chain = conn
        .peer_identity()
        .unwrap()
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .unwrap();
    conn.close(0u32.into(), b"");
    endpoint.close(0u32.into(), b"");
    chain[0].to_vec()
}

/// A renewed certificate (here from a new CA, with the trust bundle extended) replaces the old
/// one without a restart: new connections, both ways, use it. A certificate that does not fit
/// the node is refused and the old one stays.
pub async fn renewed_certificate_is_used_by_new_connections(rt: Arc<dyn Runtime>) {
    init_tracing();
    let (old, new) = (ClusterCa::generate().unwrap(), ClusterCa::generate().unwrap());
    let nets = bind_cluster(&old, &[1, 2], &rt);
    nets[0].serve(TestHandler::new(1));
    let handler2 = TestHandler::new(2);
    nets[1].serve(handler2.clone());
    let before = served_certificate(&rt, &old.node_tls(9).unwrap(), &nets[0]).await;

    let renewed = material(&new, 1, &[&old, &new]);
    assert!(nets[0].update_tls(&material(&new, 3, &[&old, &new])).is_err(), "wrong node id");
    nets[0].update_tls(&renewed).unwrap();
    let after = served_certificate(&rt, &material(&old, 9, &[&old, &new]), &nets[0]).await;
    assert_ne!(before, after);
    assert_eq!(after, renewed.cert_chain[0].to_vec());
    // Dialing out uses the new certificate too: node 2 (trusting both CAs from now on) serves
    // node 1 on a new connection.
    nets[1].update_tls(&material(&old, 2, &[&old, &new])).unwrap();
    bounded(&rt, "RPC with the renewed certificate", nets[0].send_to(2, heartbeat(1)))
        .await
        .unwrap();
    assert_eq!(handler2.calls(), 1);
    for net in &nets {
        net.close().await;
    }
}

/// A peer of another wire version (another ALPN) fails at the handshake, with an error that
/// says so on the dialing side, and is never served.
pub async fn another_wire_version_is_refused_clearly(rt: Arc<dyn Runtime>) {
    init_tracing();
    let ca = ClusterCa::generate().unwrap();
    let nets = bind_cluster(&ca, &[1], &rt);
    let handler = TestHandler::new(1);
    nets[0].serve(handler.clone());
    // A node of the previous version (ALPN raft-quic/<PROTOCOL_VERSION - 1>) dials us.
    let old_alpn = format!("raft-quic/{}", raft_quic::PROTOCOL_VERSION - 1).into_bytes();
    let mut old_client = tls::rustls_client_config(&ca.node_tls(2).unwrap()).unwrap();
    old_client.alpn_protocols = vec![old_alpn.clone()];
    let old_client = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(old_client).unwrap(),
    ));
    let result = raw_rpc_attempt(&rt, old_client, &nets[0], 2).await;
    assert!(result.is_err(), "{result:?}");
    assert_eq!(handler.calls(), 0);

    // We dial an old node.
    let mut old_server = tls::rustls_server_config(&ca.node_tls(3).unwrap()).unwrap();
    old_server.alpn_protocols = vec![old_alpn];
    let old_server = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(old_server).unwrap(),
    ));
    let socket = std::net::UdpSocket::bind(loopback()).unwrap();
    let old_endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(old_server),
        socket,
        rt.clone(),
    )
    .unwrap();
    let accepting = {
        let endpoint = old_endpoint.clone();
        async move {
            while let Some(incoming) = endpoint.accept().await {
                let _ = incoming.await;
            }
        }
    };
    rt.spawn(Box::pin(accepting));
    nets[0].set_peer(3, old_endpoint.local_addr().unwrap());
    match bounded(&rt, "RPC to an old node", nets[0].send_to(3, heartbeat(1))).await {
        Err(NetworkError::Unreachable { peer: 3, reason }) => {
            assert!(reason.contains("another protocol or wire version"), "{reason}")
        }
        other => panic!("expected a version error, got {other:?}"),
    }
    old_endpoint.close(0u32.into(), b"");
    for net in &nets {
        net.close().await;
    }
}

/// The requests of one connection hold at most its memory budget (`connection_receive_window`):
/// a large request waits until earlier ones are answered, and one whose decoded elements would
/// not fit is refused as busy, before they are allocated.
pub async fn requests_stay_within_the_connection_memory_budget(rt: Arc<dyn Runtime>) {
    init_tracing();
    let ca = ClusterCa::generate().unwrap();
    let config2 = small_budget_config(&ca, 2);
    let net2 = QuicNetwork::bind(config2, rt.clone()).unwrap();
    let net1 = QuicNetwork::bind(test_config(&ca, 1, loopback()), rt.clone()).unwrap();
    net1.set_peer(2, net2.local_addr());
    let handler = TestHandler::new(2);
    net2.serve(handler.clone());

    // Three requests of ~100 KB, held in the handler: two fit the 256 KiB budget, the third
    // waits for one of them to be answered.
    let requests = (0..3).map(|_| net1.send_to(2, append(1, 2, 100_000, b"gated")));
    let results = only_some_reach_the_handler(&rt, &handler, requests, 2).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(handler.calls(), 3);

    // 5,000 entries of 80 bytes each in memory: more than the whole budget.
    match bounded(&rt, "crowded request", net1.send_to(2, append(1, 5_000, 0, b""))).await {
        Err(NetworkError::Refused { reason, .. }) => {
            assert!(reason.to_string().contains(&format!("code {}", code::BUSY)), "{reason}")
        }
        other => panic!("a request beyond the memory budget was served: {other:?}"),
    }
    assert_eq!(handler.calls(), 3);
    bounded(&rt, "RPC after the busy one", net1.send_to(2, heartbeat(1))).await.unwrap();
    net1.close().await;
    net2.close().await;
}

/// Whether `net` has an address for `id` (a heartbeat is answered), or not (`UnknownPeer`).
async fn reaches_peer(net: QuicNetwork, id: NodeId) -> bool {
    match net.send_to(id, heartbeat(1)).await {
        Ok(_) => true,
        Err(NetworkError::UnknownPeer(_)) => false,
        Err(other) => panic!("{other:?}"),
    }
}

/// A membership's metadata from a list.
fn members(
    list: &[(NodeId, raft_core::NodeInfo)],
) -> std::collections::BTreeMap<NodeId, raft_core::NodeInfo> {
    list.iter().cloned().collect()
}

/// `members_changed` (issue 17.1): members' `ip:port` addresses become peer addresses, move,
/// and are forgotten when the member leaves; addresses the membership does not give (empty or
/// invalid) leave what the application set alone; a refused node stays refused.
pub async fn member_addresses_come_from_the_membership(rt: Arc<dyn Runtime>) {
    use raft_core::NodeInfo;

    init_tracing();
    let ca = ClusterCa::generate().unwrap();
    let nets: Vec<QuicNetwork> = [1, 2, 3]
        .iter()
        .map(|&id| QuicNetwork::bind(test_config(&ca, id, loopback()), rt.clone()).unwrap())
        .collect();
    for net in &nets[1..] {
        net.serve(TestHandler::new(net.node_id()));
    }
    let address = |i: usize| NodeInfo::with_address(nets[i].local_addr().to_string());
    let reaches = |id| reaches_peer(nets[0].clone(), id);

    nets[0].members_changed(&members(&[
        (1, address(0)),
        (2, address(1)),
        (3, NodeInfo::default()),
    ]));
    assert!(bounded(&rt, "node 2 by its metadata", reaches(2)).await);
    assert!(!reaches(3).await, "an empty address gives no peer");
    nets[0].set_peer(3, nets[2].local_addr());
    let invalid = NodeInfo::with_address("node-3.example:7000");
    nets[0].members_changed(&members(&[(1, address(0)), (3, invalid)]));
    assert!(!reaches(2).await, "a member that left is forgotten");
    assert!(bounded(&rt, "node 3 as set", reaches(3)).await, "left alone");
    nets[0].members_changed(&members(&[(2, address(1)), (3, address(2))]));
    assert!(bounded(&rt, "node 2 again", reaches(2)).await, "a member that came back");
    nets[0].refuse(2);
    nets[0].members_changed(&members(&[(2, address(1)), (3, address(2))]));
    assert!(!reaches(2).await, "a refused node stays refused");
    for net in &nets {
        net.close().await;
    }
}

/// A membership entry that named addresses and was rolled back (review MEDIUM 1): the addresses
/// the application configured, at bind (`QuicConfig::peers`) and with `set_peer`, come back when
/// the membership stops naming them, instead of being forgotten; an id only the membership gave
/// an address is forgotten, and one the application removed stays removed.
pub async fn configured_addresses_survive_a_rolled_back_membership(rt: Arc<dyn Runtime>) {
    use raft_core::NodeInfo;

    init_tracing();
    let ca = ClusterCa::generate().unwrap();
    let others: Vec<QuicNetwork> = [2, 3, 4]
        .iter()
        .map(|&id| QuicNetwork::bind(test_config(&ca, id, loopback()), rt.clone()).unwrap())
        .collect();
    for net in &others {
        net.serve(TestHandler::new(net.node_id()));
    }
    let mut config = test_config(&ca, 1, loopback());
    config.peers.insert(2, others[0].local_addr());
    let net1 = QuicNetwork::bind(config, rt.clone()).unwrap();
    net1.set_peer(3, others[1].local_addr());
    let address = |net: &QuicNetwork| NodeInfo::with_address(net.local_addr().to_string());
    let reaches = |id| reaches_peer(net1.clone(), id);

    // The uncommitted entry names the founders' addresses (the same ones) and a newcomer's.
    net1.members_changed(&members(&[
        (1, address(&net1)),
        (2, address(&others[0])),
        (3, address(&others[1])),
        (4, address(&others[2])),
    ]));
    assert!(bounded(&rt, "node 4 by its metadata", reaches(4)).await);
    // It is rolled back to the bootstrap membership, whose founders give no address.
    let founders =
        members(&[(1, NodeInfo::default()), (2, NodeInfo::default()), (3, NodeInfo::default())]);
    net1.members_changed(&founders);
    assert!(bounded(&rt, "node 2 as bound", reaches(2)).await, "configured at bind");
    assert!(bounded(&rt, "node 3 as set", reaches(3)).await, "configured with set_peer");
    assert!(!reaches(4).await, "an address only the membership gave is forgotten");
    // What the application removes stays removed, even after the membership named it.
    net1.members_changed(&members(&[(1, address(&net1)), (3, address(&others[1]))]));
    net1.remove_peer(3);
    net1.members_changed(&founders);
    assert!(!reaches(3).await, "removed by the application");
    net1.close().await;
    for net in &others {
        net.close().await;
    }
}
