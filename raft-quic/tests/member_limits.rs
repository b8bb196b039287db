//! What a holder of a node certificate (a member, or a thief of a member's key) can make another
//! node spend: no stream on a connection the node dialed, a few connections per identity, one
//! memory budget per identity.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod common;

use std::sync::Arc;

use common::*;
use futures::FutureExt;
use raft_core::Network;
use raft_quic::quinn::{self, Runtime, TokioRuntime};
use raft_quic::{tls, ClusterCa, QuicNetwork};

/// A node that dials a peer lets that peer open no stream on the connection: a dialed peer only
/// answers, and a stream it opened would never be read, yet could pin the dialer's
/// flow-control credit (the dialer used to grant the inbound connections' 256 streams).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialed_peer_can_open_no_stream() {
    init_tracing();
    let rt: Arc<dyn Runtime> = Arc::new(TokioRuntime);
    let ca = ClusterCa::generate().unwrap();
    let net1 = QuicNetwork::bind(test_config(&ca, 1, loopback()), rt.clone()).unwrap();
    // A peer with node 2's certificate, answering nothing, opening streams instead.
    let crypto = tls::quic_server_crypto(&ca.node_tls(2).unwrap()).unwrap();
    let rogue =
        quinn::Endpoint::server(quinn::ServerConfig::with_crypto(crypto), loopback()).unwrap();
    net1.set_peer(2, rogue.local_addr().unwrap());
    let rpc = tokio::spawn({
        let net1 = net1.clone();
        async move { net1.send(2, heartbeat(1)).await }
    });
    let incoming = bounded(&rt, "the dial", rogue.accept()).await.unwrap();
    let conn = bounded(&rt, "the handshake", incoming.accept().unwrap()).await.unwrap();
    // The dialer's transport parameters arrived with its first flight: no stream credit.
    assert!(conn.open_bi().now_or_never().is_none(), "the dialed peer opened a stream");
    assert!(conn.open_uni().now_or_never().is_none(), "the dialed peer opened a uni stream");
    assert!(bounded(&rt, "the RPC", rpc).await.unwrap().is_err());
    conn.close(0u32.into(), b"");
    rogue.close(0u32.into(), b"");
    net1.close().await;
}
