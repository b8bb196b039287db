//! A hostile peer floods a batch's stream with answers for a position nobody awaits (review
//! M1): the batch's reader ignores at most as many as the batch has requests (a correct peer
//! sends none), then gives the stream up as broken and fails the callers still waiting. Before,
//! every stray answer was read, decoded and counted, and the reader went on for as long as the
//! peer kept writing (past the RPC timeout: the timeout's timer was not polled while data kept
//! coming, and the reader never yielded).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures::future::join_all;
use raft_core::{Envelope, Network, NetworkError, RpcHandler};
use raft_quic::bounded::Limits;
use raft_quic::frame::{self, BATCH_KIND};
use raft_quic::quinn::{Runtime, TokioRuntime};
use raft_quic::{ClusterCa, QuicNetwork, WireResponse};

const LIMITS: Limits = Limits { max_items: 1 << 16, max_depth: frame::MAX_DEPTH };

/// Requests issued together to the flooding peer.
const GROUPS: u64 = 64;

// One thread: the 63 requests queued behind the first share exactly one batch.
#[tokio::test(flavor = "current_thread")]
async fn a_stray_answer_flood_ends_its_batch_on_one_thread() {
    let (strays, batches) = flood().await;
    assert_eq!(batches, 1);
    let batch = GROUPS - 1;
    assert!(strays <= batch, "{strays} stray answers ignored for a batch of {batch}");
}

// Two workers: the reviewer's case (the reader held a worker past the RPC timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_answer_flood_ends_its_batches_on_two_threads() {
    let (strays, batches) = flood().await;
    assert!(batches >= 1);
    // Each batch ignores at most as many stray answers as it has requests.
    assert!(strays <= GROUPS, "{strays} stray answers ignored for {GROUPS} requests");
}

/// Node 1 sends [`GROUPS`] heartbeats issued together to a peer that answers a lone request
/// and writes endless stray answers (7 bytes each: position 65535, an empty body) on a
/// batch's stream. Checks that every caller gets an answer or a codec error (the broken
/// batch's) well within the RPC timeout (10 s: so nothing here depends on the machine's
/// speed), and that the stray count no longer moves once they have; returns it and the
/// batches sent.
async fn flood() -> (u64, u64) {
    init_tracing();
    let rt: Arc<dyn Runtime> = Arc::new(TokioRuntime);
    let ca = ClusterCa::generate().unwrap();
    let mut config = test_config(&ca, 1, loopback());
    config.rpc_timeout = Duration::from_secs(10);
    let net = QuicNetwork::bind(config, rt.clone()).unwrap();
    let (peer_rt, endpoint) = hostile_peer(&ca, 2);
    net.set_peer(2, endpoint.local_addr().unwrap());
    let accepting = endpoint.clone();
    peer_rt.spawn(async move {
        let conn = accepting.accept().await.unwrap().await.unwrap();
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            tokio::spawn(async move {
                let bytes = recv.read_to_end(1 << 20).await.unwrap();
                if bytes[4] != BATCH_KIND {
                    let (_, request, _) = frame::decode_request(&bytes, 1 << 20, LIMITS).unwrap();
                    let handler = TestHandler::new(2);
                    let response = WireResponse::Ok(handler.handle_rpc(request).await.unwrap());
                    let _ = send.write_all(&frame::encode(&response, 1 << 20).unwrap()).await;
                    let _ = send.finish();
                } else {
                    let stray = [0u8, 0, 0, 3, BATCH_KIND, 0xff, 0xff];
                    let flood: Vec<u8> = stray.iter().copied().cycle().take(7 * 100_000).collect();
                    while send.write_all(&flood).await.is_ok() {}
                }
            });
        }
    });
    let beats = (1..=GROUPS).map(|g| net.send(Envelope::new(2, heartbeat(1)).with_group_id(g)));
    let results = bounded(&rt, "heartbeats to a flooding peer", join_all(beats)).await;
    for (group, result) in (1..=GROUPS).zip(&results) {
        assert!(matches!(result, Ok(_) | Err(NetworkError::Codec(_))), "group {group}: {result:?}");
    }
    let batches = net.peer_stats(2).batches_sent;
    let failed = results.iter().filter(|result| result.is_err()).count() as u64;
    assert!(failed >= batches, "every caller of a flooded batch fails: {failed} failed");
    let strays = net.stray_answers_received();
    // Not a speed assertion: with the readers done, nothing may count stray answers any more.
    sleep(&rt, Duration::from_millis(200)).await;
    assert_eq!(net.stray_answers_received(), strays, "a batch's reader still reads stray answers");
    net.close().await;
    endpoint.close(0u32.into(), b"");
    peer_rt.shutdown_background();
    (strays, batches)
}
