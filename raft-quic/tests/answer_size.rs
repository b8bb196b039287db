//! A hostile peer answers with a frame header announcing a response of `max_frame_size`
//! (16 MiB) and then streams filler (review M1 of branch quicbound): the sending node gives the
//! stream up at the header, as no real response comes near [`frame::MAX_RESPONSE_FRAME_SIZE`],
//! instead of holding up to 16 MiB per RPC in flight until the frame is read whole. Before, it
//! read the whole 16 MiB (and only then found that the body does not decode).
//!
//! What is measured is how many bytes the hostile peer got QUIC to take on each stream: flow
//! control lets it send at most node 1's stream window (64 KiB here) beyond what node 1 read,
//! and node 1 reads at most the cap, so at most the window and the cap before the stream is
//! stopped (before: the whole 16 MiB, which node 1 read). Nothing
//! here depends on the machine's speed: the RPC timeout (30 s) is far above the time of either
//! outcome, and the counts are bounds of flow control, not of timing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures::future::join_all;
use raft_core::{Envelope, Network, NetworkError};
use raft_quic::frame::{BATCH_KIND, MAX_RESPONSE_FRAME_SIZE};
use raft_quic::quinn::{Runtime, TokioRuntime};
use raft_quic::{ClusterCa, QuicNetwork, PROTOCOL_VERSION};

/// The length the hostile peer's answers announce: node 1's `max_frame_size`.
const ANNOUNCED: u32 = 16 << 20;

/// Node 1's per-stream flow-control window.
const STREAM_WINDOW: u32 = 64 << 10;

/// The most the hostile peer can write on one stream that node 1 gives up at the header.
const PER_STREAM: u64 = STREAM_WINDOW as u64 + MAX_RESPONSE_FRAME_SIZE as u64;

/// A lone heartbeat's answer announces 16 MiB: node 1 gives it up at the header.
#[tokio::test(flavor = "current_thread")]
async fn a_lone_answer_announcing_the_frame_maximum_is_given_up_at_its_header() {
    let (written, streams) = oversized_answers(1).await;
    assert_eq!(streams, 1);
    assert!(written <= PER_STREAM, "the hostile peer wrote {written} bytes of one answer");
}

/// A batch's answer announces 16 MiB: node 1 gives the batch's stream up at the header.
#[tokio::test(flavor = "current_thread")]
async fn a_batch_answer_announcing_the_frame_maximum_is_given_up_at_its_header() {
    let (written, streams) = oversized_answers(16).await;
    // A lone request first (the queue was empty), then batches of the rest.
    assert!(streams >= 2, "{streams} streams");
    let most = streams * PER_STREAM;
    assert!(written <= most, "the hostile peer wrote {written} bytes on {streams} streams");
}

/// Node 1 sends `groups` heartbeats issued together to a peer that answers every stream (a lone
/// request's or a batch's) with a header announcing [`ANNOUNCED`] bytes and then filler, for as
/// long as QUIC takes it. Checks that every caller fails with a codec error, and returns the
/// bytes the peer got written on all streams (header and filler) once each writer ended, and
/// the number of streams.
async fn oversized_answers(groups: u64) -> (u64, u64) {
    init_tracing();
    let rt: Arc<dyn Runtime> = Arc::new(TokioRuntime);
    let ca = ClusterCa::generate().unwrap();
    let mut config = test_config(&ca, 1, loopback());
    config.rpc_timeout = Duration::from_secs(30);
    config.max_frame_size = ANNOUNCED;
    config.stream_receive_window = STREAM_WINDOW;
    let net = QuicNetwork::bind(config, rt.clone()).unwrap();
    let (peer_rt, endpoint) = hostile_peer(&ca, 2);
    net.set_peer(2, endpoint.local_addr().unwrap());
    let written = Arc::new(AtomicU64::new(0));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let accepting = endpoint.clone();
    let counted = Arc::clone(&written);
    peer_rt.spawn(async move {
        let conn = accepting.accept().await.unwrap().await.unwrap();
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let (counted, done) = (Arc::clone(&counted), done_tx.clone());
            tokio::spawn(async move {
                let bytes = recv.read_to_end(1 << 20).await.unwrap();
                let mut answer = ANNOUNCED.to_be_bytes().to_vec();
                if bytes[4] == BATCH_KIND {
                    answer.extend([BATCH_KIND, 0, 0]);
                } else {
                    answer.push(PROTOCOL_VERSION);
                }
                let total = 4 + u64::from(ANNOUNCED);
                answer.resize(8 << 10, 0xff);
                let mut sent = 0;
                while sent < total {
                    let len = answer.len().min((total - sent) as usize);
                    if send.write_all(&answer[..len]).await.is_err() {
                        break;
                    }
                    sent += len as u64;
                    counted.fetch_add(len as u64, Ordering::SeqCst);
                    answer.fill(0xff);
                }
                let _ = send.finish();
                let _ = done.send(());
            });
        }
    });
    let beats = (1..=groups).map(|g| net.send(Envelope::new(2, heartbeat(1)).with_group_id(g)));
    let results = bounded(&rt, "heartbeats to a hostile peer", join_all(beats)).await;
    for (group, result) in (1..=groups).zip(&results) {
        assert!(matches!(result, Err(NetworkError::Codec(_))), "group {group}: {result:?}");
    }
    let frames = net.peer_stats(2).frames_sent;
    for _ in 0..frames {
        bounded(&rt, "the hostile peer's writers", done_rx.recv()).await;
    }
    net.close().await;
    endpoint.close(0u32.into(), b"");
    peer_rt.shutdown_background();
    eprintln!("{} bytes written on {frames} streams", written.load(Ordering::SeqCst));
    (written.load(Ordering::SeqCst), frames)
}
