//! Coalescing per peer (issue 21 item 7): the small requests of every group to one peer issued
//! together travel in one batch frame on one stream; each is checked and answered as a lone
//! request would be, answers come back as their handlers finish, and a malformed batch closes
//! nothing but its own stream.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use common::*;
use futures::future::{join, join_all, select, Either};
use raft_core::{
    Envelope, GroupId, Network, NetworkError, RefusalReason, RpcError, RpcHandler, RpcResponse,
};
use raft_quic::bounded::Limits;
use raft_quic::frame::{self, BATCH_KIND, MAX_BATCH_REQUESTS};
use raft_quic::quinn::{self, Runtime, TokioRuntime};
use raft_quic::wire::code;
use raft_quic::{tls, ClusterCa, QuicNetwork, Refusal, WireResponse};

const LIMITS: Limits = Limits { max_items: 1 << 16, max_depth: frame::MAX_DEPTH };

fn rt() -> Arc<dyn Runtime> {
    Arc::new(TokioRuntime)
}

/// Routes each request to the handler of its envelope's group.
struct Router {
    groups: BTreeMap<GroupId, Arc<TestHandler>>,
}

#[async_trait]
impl RpcHandler for Router {
    async fn handle_rpc(&self, request: Envelope) -> Result<RpcResponse, RpcError> {
        match self.groups.get(&request.group_id) {
            Some(group) => group.handle_rpc(request).await,
            None => Err(RpcError::UnknownGroup { group: request.group_id }),
        }
    }
}

/// Serves one [`TestHandler`] per group of `groups` on `net`.
fn serve_groups(
    net: &QuicNetwork,
    groups: impl IntoIterator<Item = GroupId>,
) -> BTreeMap<GroupId, Arc<TestHandler>> {
    let handlers: BTreeMap<GroupId, Arc<TestHandler>> =
        groups.into_iter().map(|g| (g, TestHandler::new(net.node_id()))).collect();
    net.serve(Arc::new(Router { groups: handlers.clone() }));
    handlers
}

/// The handler of each group a node serves.
type Handlers = BTreeMap<GroupId, Arc<TestHandler>>;

/// Nodes 1 and 2 on loopback, node 2 serving `groups` (one handler each).
fn two_nodes(
    groups: impl IntoIterator<Item = GroupId>,
) -> (Arc<dyn Runtime>, Vec<QuicNetwork>, Handlers) {
    init_tracing();
    let rt = rt();
    let ca = ClusterCa::generate().unwrap();
    let nets = bind_cluster(&ca, &[1, 2], &rt);
    let handlers = serve_groups(&nets[1], groups);
    (rt, nets, handlers)
}

async fn close_all(nets: &[QuicNetwork]) {
    for net in nets {
        net.close().await;
    }
}

/// The heartbeats of 64 groups to one peer, issued together (as the groups of a process do
/// when their refreshes fall on the same instant), travel in fewer frames than requests: two
/// here, the first alone (nothing else awaited an answer from the peer: it goes at once) and
/// the 63 queued while it was sent in one batch. Each group's handler gets its own heartbeat
/// and each caller its answer. A heartbeat alone afterwards is an ordinary frame. (Before
/// coalescing: 64 streams, one per request.)
// One thread: requests "issued together" are all queued before any send task runs, so the
// frame counts are exact (on two workers a send task can take part of a queue still filling).
#[tokio::test(flavor = "current_thread")]
async fn the_heartbeats_of_many_groups_issued_together_share_a_frame() {
    const GROUPS: u64 = 64;
    let (rt, nets, handlers) = two_nodes(1..=GROUPS);
    let views: Vec<_> = (1..=GROUPS).map(|g| nets[0].for_group(g)).collect();
    let sends = views
        .iter()
        .map(|view| view.send(Envelope::new(2, heartbeat(1)).with_group_id(view.group_id())));
    let answers = bounded(&rt, "64 heartbeats", join_all(sends)).await;
    for (group, answer) in (1..=GROUPS).zip(answers) {
        assert!(matches!(answer, Ok(RpcResponse::AppendEntries(_))), "group {group}: {answer:?}");
        assert_eq!(handlers[&group].calls(), 1, "group {group}");
    }
    let stats = nets[0].peer_stats(2);
    assert_eq!(stats.requests_sent, GROUPS);
    assert_eq!((stats.frames_sent, stats.batches_sent), (2, 1), "{stats:?}");

    let alone = Envelope::new(2, heartbeat(1)).with_group_id(1);
    bounded(&rt, "a lone heartbeat", views[0].send(alone)).await.unwrap();
    let stats = nets[0].peer_stats(2);
    assert_eq!((stats.frames_sent, stats.batches_sent), (3, 1), "{stats:?}");
    close_all(&nets).await;
}

/// More small requests than a batch holds go in several batches, each within the bounds, each
/// as full as the bounds allow when all of them were queued together (behind the first, which
/// goes alone).
// One thread: requests "issued together" are all queued before any send task runs, so the
// frame counts are exact (on two workers a send task can take part of a queue still filling).
#[tokio::test(flavor = "current_thread")]
async fn batches_hold_at_most_their_count_and_a_small_frames_bytes() {
    let (rt, nets, handlers) = two_nodes([1]);
    // 600 heartbeats: the count binds (256 a batch).
    let beat = || Envelope::new(2, heartbeat(1)).with_group_id(1);
    let sends = (0..600).map(|_| nets[0].send(beat()));
    for answer in bounded(&rt, "600 heartbeats", join_all(sends)).await {
        answer.unwrap();
    }
    let stats = nets[0].peer_stats(2);
    assert_eq!(stats.requests_sent, 600);
    let frames = 1 + 599usize.div_ceil(MAX_BATCH_REQUESTS) as u64;
    assert_eq!(stats.frames_sent, frames, "{stats:?}");
    // 40 AppendEntries of ~2 KB: the bytes bind (a batch is at most a small frame, 16 KiB).
    let append = || Envelope::new(2, append(1, 1, 2_000, b"")).with_group_id(1);
    let len = frame::encode_request(&append(), 1 << 20).unwrap().len();
    let per_batch = (16 << 10) - (frame::HEADER_LEN + frame::BATCH_COUNT_LEN);
    let per_batch = per_batch / len;
    assert!((2..40).contains(&per_batch), "{per_batch}");
    let appends = (0..40).map(|_| nets[0].send(append()));
    for answer in bounded(&rt, "40 appends", join_all(appends)).await {
        answer.unwrap();
    }
    let frames = nets[0].peer_stats(2).frames_sent - stats.frames_sent;
    assert_eq!(frames, 1 + 39usize.div_ceil(per_batch) as u64, "{per_batch} a batch");
    assert_eq!(handlers[&1].calls(), 640);
    close_all(&nets).await;
}

/// Two groups' requests in one batch: group 1's handler is held; group 2's answer comes back
/// meanwhile (answers are written as their handlers finish, not in the batch's order), and
/// group 1's once its handler is let go.
// One thread: requests "issued together" are all queued before any send task runs, so the
// frame counts are exact (on two workers a send task can take part of a queue still filling).
#[tokio::test(flavor = "current_thread")]
async fn a_slow_handler_of_one_group_holds_up_no_other_answer_in_its_batch() {
    let (rt, nets, handlers) = two_nodes([1, 2]);
    let gate = handlers[&1].close_gate();
    let (view1, view2) = (nets[0].for_group(1), nets[0].for_group(2));
    let beat = |group| Envelope::new(2, heartbeat(1)).with_group_id(group);
    bounded(&rt, "a heartbeat that dials", view2.send(beat(2))).await.unwrap();
    let opener = view2.send(beat(2));
    let held = view1.send(Envelope::new(2, append(1, 1, 0, b"gated")).with_group_id(1));
    let quick = view2.send(beat(2));
    // `join` and `select` poll all three at once: the opener goes alone (nothing awaited an
    // answer), the two others are queued together behind it and share a frame.
    let (opened, first) = bounded(&rt, "group 2's answer", join(opener, select(held, quick))).await;
    opened.unwrap();
    let held = match first {
        Either::Right((answer, held)) => {
            assert!(matches!(answer, Ok(RpcResponse::AppendEntries(_))), "{answer:?}");
            held
        }
        Either::Left((answer, _)) => panic!("group 1 answered through its closed gate: {answer:?}"),
    };
    let stats = nets[0].peer_stats(2);
    assert_eq!((stats.frames_sent, stats.batches_sent), (3, 1), "one batch: {stats:?}");
    assert_eq!(handlers[&1].calls(), 1, "group 1's request is in its handler");
    drop(gate);
    let answer = bounded(&rt, "group 1's answer", held).await;
    assert!(matches!(answer, Ok(RpcResponse::AppendEntries(_))), "{answer:?}");
    close_all(&nets).await;
}

/// A raw connection of node 2 to node 1 (node 1 serving group 1), to send hostile batches.
async fn raw_peer(
    rt: &Arc<dyn Runtime>,
    ca: &ClusterCa,
) -> (QuicNetwork, Arc<TestHandler>, quinn::Endpoint, quinn::Connection) {
    let mut config = test_config(ca, 1, loopback());
    // Short, so that a stalled batch is given up quickly.
    config.rpc_timeout = std::time::Duration::from_millis(300);
    let net = QuicNetwork::bind(config, rt.clone()).unwrap();
    let handler = serve_groups(&net, [1]).remove(&1).unwrap();
    let endpoint = common::scenarios::raw_endpoint(rt);
    let client = tls::quic_client_config(&ca.node_tls(2).unwrap()).unwrap();
    let conn = bounded(rt, "raw connect", async {
        endpoint.connect_with(client, net.local_addr(), "node-1.raft").unwrap().await.unwrap()
    })
    .await;
    (net, handler, endpoint, conn)
}

/// Writes `bytes` on a new stream of `conn` and reads everything that comes back.
async fn exchange(
    rt: &Arc<dyn Runtime>,
    conn: &quinn::Connection,
    what: &str,
    bytes: &[u8],
) -> Result<Vec<u8>, quinn::ReadToEndError> {
    bounded(rt, what, async {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        // The server may stop the stream before all is written: write errors are expected.
        let _ = send.write_all(bytes).await;
        let _ = send.finish();
        recv.read_to_end(1 << 20).await
    })
    .await
}

/// The answers on a batch's stream, by position.
fn answers(mut bytes: &[u8]) -> BTreeMap<u16, WireResponse> {
    let mut answers = BTreeMap::new();
    while !bytes.is_empty() {
        let (position, answer, used) = frame::decode_answer(bytes, 1 << 20, LIMITS).unwrap();
        assert!(answers.insert(position, answer).is_none(), "position {position} answered twice");
        bytes = &bytes[used..];
    }
    answers
}

fn batch(requests: &[Envelope]) -> Vec<u8> {
    frame::encode_batch(requests.iter(), 1 << 20).unwrap().to_vec()
}

/// Sets a batch frame's length field to the bytes that follow it.
fn fix_length(mut bytes: Vec<u8>) -> Vec<u8> {
    let len = (bytes.len() - 4) as u32;
    bytes[..4].copy_from_slice(&len.to_be_bytes());
    bytes
}

/// A request inside a batch that claims another sender than the connection's certificate is
/// refused alone; the others are served. Malformed batches (truncated, a count of 0 or above
/// the maximum, fewer requests than announced, bytes after the last, a batch inside a batch, an
/// undecodable request) reset their own stream only, with the code a lone bad frame gets, are
/// counted, and reach no handler; the connection serves a valid batch afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_batches_close_nothing_but_themselves() {
    init_tracing();
    let rt = rt();
    let ca = ClusterCa::generate().unwrap();
    let (net, handler, endpoint, conn) = raw_peer(&rt, &ca).await;
    let from = |sender| Envelope::new(1, heartbeat(sender)).with_group_id(1);

    // Node 2 slips a request claiming node 3 between two of its own.
    let spoofed = batch(&[from(2), from(3), from(2)]);
    let bytes = exchange(&rt, &conn, "a batch with a spoofed sender", &spoofed).await.unwrap();
    let answered = answers(&bytes);
    assert_eq!(answered.len(), 3, "{answered:?}");
    for position in [0, 2] {
        assert!(matches!(answered[&position], WireResponse::Ok(RpcResponse::AppendEntries(_))));
    }
    let mismatch = Refusal::SenderMismatch { claimed: 3, authenticated: 2 };
    assert_eq!(answered[&1], WireResponse::Refused(mismatch));
    assert_eq!(handler.calls(), 2);
    assert_eq!(net.bad_batches_received(), 0, "a spoofed request is not a malformed batch");

    let valid = batch(&[from(2), from(2)]);
    let truncated = valid[..valid.len() - 3].to_vec();
    let count = |count: u16| {
        let mut bytes = valid.clone();
        bytes[5..7].copy_from_slice(&count.to_be_bytes());
        bytes
    };
    let mut trailing = valid.clone();
    trailing.push(0);
    let mut nested = vec![0, 0, 0, 0, BATCH_KIND, 0, 1];
    nested.extend(&valid);
    let lone = frame::encode_request(&from(2), 1 << 20).unwrap();
    let mut undecodable = vec![0, 0, 0, 0, BATCH_KIND, 0, 2];
    undecodable.extend(lone.iter());
    undecodable.extend([0, 0, 0, 13, raft_quic::PROTOCOL_VERSION]);
    undecodable.extend(2u64.to_be_bytes());
    undecodable.extend([0xff; 4]);
    let cases: Vec<(&str, Vec<u8>, quinn::VarInt)> = vec![
        ("truncated", truncated, code::TRUNCATED),
        ("a count of 0", count(0), code::DECODE_ERROR),
        ("a count above the maximum", count(MAX_BATCH_REQUESTS as u16 + 1), code::DECODE_ERROR),
        ("fewer requests than announced", count(3), code::TRUNCATED),
        ("bytes after the last request", fix_length(trailing), code::DECODE_ERROR),
        ("a batch inside a batch", fix_length(nested), code::UNSUPPORTED_VERSION),
        ("an undecodable request", fix_length(undecodable), code::DECODE_ERROR),
    ];
    let malformed = cases.len() as u64;
    for (name, bytes, expected) in cases {
        match exchange(&rt, &conn, name, &bytes).await {
            Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => {
                assert_eq!(code, expected, "case {name}: wrong reset code")
            }
            other => panic!("case {name}: expected a reset stream, got {other:?}"),
        }
    }
    assert_eq!(net.bad_batches_received(), malformed);
    assert_eq!(handler.calls(), 2, "no request of a malformed batch reached the handler");

    // The same connection still serves a valid batch.
    let bytes = exchange(&rt, &conn, "a valid batch", &valid).await.unwrap();
    assert_eq!(answers(&bytes).len(), 2);
    assert_eq!(handler.calls(), 4);
    conn.close(0u32.into(), b"");
    endpoint.close(0u32.into(), b"");
    net.close().await;
}

/// A batch whose requests the receiver refuses as a whole (its stream reset) fails each of its
/// callers with the reset, not with a timeout; a lone request to the same peer still works.
// One thread: requests "issued together" are all queued before any send task runs, so the
// frame counts are exact (on two workers a send task can take part of a queue still filling).
#[tokio::test(flavor = "current_thread")]
async fn every_caller_of_a_refused_batch_gets_the_refusal() {
    init_tracing();
    let rt = rt();
    let ca = ClusterCa::generate().unwrap();
    let mut receiver = test_config(&ca, 2, loopback());
    // Node 2 decodes at most 10 elements per request: a request of 11 entries is refused.
    receiver.max_decoded_items = 10;
    let net2 = QuicNetwork::bind(receiver, rt.clone()).unwrap();
    let net1 = QuicNetwork::bind(test_config(&ca, 1, loopback()), rt.clone()).unwrap();
    net1.set_peer(2, net2.local_addr());
    let handlers = serve_groups(&net2, [1, 2]);
    // The opener goes alone (nothing awaited an answer); the two others share a batch.
    let opener = net1.send(Envelope::new(2, heartbeat(1)).with_group_id(2));
    let crowded = net1.send(Envelope::new(2, append(1, 11, 1, b"")).with_group_id(1));
    let fine = net1.send(Envelope::new(2, heartbeat(1)).with_group_id(2));
    let (opened, crowded, fine) =
        bounded(&rt, "a refused batch", futures::future::join3(opener, crowded, fine)).await;
    opened.unwrap();
    for answer in [crowded, fine] {
        match answer {
            Err(NetworkError::Refused { reason: RefusalReason::Transport(error), .. }) => {
                let error = error.to_string();
                assert!(error.contains("reset") || error.contains("stopped"), "{error}")
            }
            other => panic!("expected the batch's reset, got {other:?}"),
        }
    }
    assert_eq!(net1.peer_stats(2).batches_sent, 1);
    assert_eq!(net2.bad_batches_received(), 1);
    assert_eq!(handlers.values().map(|h| h.calls()).sum::<usize>(), 1, "the opener only");
    let alone = Envelope::new(2, heartbeat(1)).with_group_id(2);
    bounded(&rt, "a lone heartbeat", net1.send(alone)).await.unwrap();
    net1.close().await;
    net2.close().await;
}

/// A runtime that shuts down while small requests are queued behind one still being sent (its
/// peer never answers: the dial hangs) drops every task's future, the turn's holder's among
/// them; passing the turn on then must not spawn the next send on the closed runtime over and
/// over (each such task is dropped at once, which passed the turn on again: the recursion
/// overflowed the stack and aborted the process). The queued callers are failed instead.
#[test]
fn a_runtime_shut_down_with_requests_queued_for_a_silent_peer_ends_cleanly() {
    const GROUPS: u64 = 32;
    init_tracing();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // A peer that swallows every datagram: dialing it hangs until the connect timeout.
    let silent = std::net::UdpSocket::bind(loopback()).unwrap();
    let ca = ClusterCa::generate().unwrap();
    let net = runtime.block_on(async {
        let net = QuicNetwork::bind(test_config(&ca, 1, loopback()), rt()).unwrap();
        net.set_peer(2, silent.local_addr().unwrap());
        net
    });
    for group in 1..=GROUPS {
        let view = net.for_group(group);
        runtime.spawn(async move {
            let _ = view.send(Envelope::new(2, heartbeat(1)).with_group_id(group)).await;
        });
    }
    // One request holds the turn (dialing), the others queue behind it.
    std::thread::sleep(std::time::Duration::from_millis(50));
    // Waits for the workers to drop every task.
    drop(runtime);
    drop(net);
}
