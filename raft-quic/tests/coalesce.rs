//! Coalescing per peer (issue 21 item 7): the small requests of every group to one peer issued
//! together travel in one batch frame on one stream; each is checked and answered as a lone
//! request would be, answers come back as their handlers finish, and a malformed batch closes
//! nothing but its own stream.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

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

/// Elements node 1 decodes per request in [`raw_peer`].
const RAW_PEER_MAX_ITEMS: u64 = 16;

/// A raw connection of node 2 to node 1 (node 1 serving `groups`, decoding at most
/// [`RAW_PEER_MAX_ITEMS`] elements per request), to send hostile batches.
async fn raw_peer(
    rt: &Arc<dyn Runtime>,
    ca: &ClusterCa,
    groups: &[GroupId],
) -> (QuicNetwork, Handlers, quinn::Endpoint, quinn::Connection) {
    raw_peer_with(rt, ca, groups, |_| {}).await
}

/// [`raw_peer`], with node 1's configuration changed by `configure` first.
async fn raw_peer_with(
    rt: &Arc<dyn Runtime>,
    ca: &ClusterCa,
    groups: &[GroupId],
    configure: impl FnOnce(&mut raft_quic::QuicConfig),
) -> (QuicNetwork, Handlers, quinn::Endpoint, quinn::Connection) {
    raw_peer_with_transport(rt, ca, groups, configure, quinn::TransportConfig::default()).await
}

/// [`raw_peer_with`], the raw connection of node 2 with the transport settings `transport`.
async fn raw_peer_with_transport(
    rt: &Arc<dyn Runtime>,
    ca: &ClusterCa,
    groups: &[GroupId],
    configure: impl FnOnce(&mut raft_quic::QuicConfig),
    transport: quinn::TransportConfig,
) -> (QuicNetwork, Handlers, quinn::Endpoint, quinn::Connection) {
    let mut config = test_config(ca, 1, loopback());
    // Short, so that a stalled batch is given up quickly.
    config.rpc_timeout = std::time::Duration::from_millis(300);
    // Below the RPC timeout, as `validate` requires (a dial had to fit in 300 ms already).
    config.connect_timeout = std::time::Duration::from_millis(250);
    config.max_decoded_items = RAW_PEER_MAX_ITEMS;
    configure(&mut config);
    let net = QuicNetwork::bind(config, rt.clone()).unwrap();
    let handler = serve_groups(&net, groups.iter().copied());
    let endpoint = common::scenarios::raw_endpoint(rt);
    let mut client = tls::quic_client_config(&ca.node_tls(2).unwrap()).unwrap();
    client.transport_config(Arc::new(transport));
    let conn = bounded(rt, "raw connect", async {
        endpoint.connect_with(client, net.local_addr(), "node-1.raft").unwrap().await.unwrap()
    })
    .await;
    (net, handler, endpoint, conn)
}

/// A configuration change for [`raw_peer_with`]: a memory budget of `bytes` for node 2's
/// requests, and the same maximum frame size and flow-control windows.
fn budget_of(bytes: u32) -> impl FnOnce(&mut raft_quic::QuicConfig) {
    move |config| {
        config.max_frame_size = bytes;
        config.stream_receive_window = bytes;
        config.connection_receive_window = bytes;
    }
}

/// Closes what [`raw_peer`] made.
async fn close_raw(net: &QuicNetwork, endpoint: &quinn::Endpoint, conn: &quinn::Connection) {
    conn.close(0u32.into(), b"");
    endpoint.close(0u32.into(), b"");
    net.close().await;
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

/// Checks that what came back on a stream (case `what`) is its reset with `expected`.
fn assert_reset(read: Result<Vec<u8>, quinn::ReadToEndError>, expected: quinn::VarInt, what: &str) {
    match read {
        Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => {
            assert_eq!(code, expected, "case {what}: wrong reset code")
        }
        other => panic!("case {what}: expected a reset stream, got {other:?}"),
    }
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

/// A batch frame of the request frames `requests`, whatever they hold.
fn raw_batch(requests: &[&[u8]]) -> Vec<u8> {
    let mut bytes = vec![0, 0, 0, 0, BATCH_KIND];
    bytes.extend((requests.len() as u16).to_be_bytes());
    requests.iter().for_each(|request| bytes.extend(*request));
    fix_length(bytes)
}

/// A request frame whose header says node `sender` and whose body is `body`, whatever it is.
fn raw_request(sender: u64, body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0, 0, 0, 0, raft_quic::PROTOCOL_VERSION];
    bytes.extend(sender.to_be_bytes());
    bytes.extend(body);
    fix_length(bytes)
}

/// A request inside a batch that claims another sender than the connection's certificate is
/// refused alone; the others are served. Malformed batches (truncated, a count of 0 or above
/// the maximum, fewer requests than announced, bytes after the last, a batch inside a batch)
/// reset their own stream only, with the code a lone bad frame gets, are counted, and reach no
/// handler; the connection serves a valid batch afterwards. (A bad request inside a well-formed
/// batch: `a_bad_request_in_a_well_formed_batch_is_refused_alone`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_batches_close_nothing_but_themselves() {
    init_tracing();
    let rt = rt();
    let ca = ClusterCa::generate().unwrap();
    let (net, handlers, endpoint, conn) = raw_peer(&rt, &ca, &[1]).await;
    let handler = &handlers[&1];
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
    let cases: Vec<(&str, Vec<u8>, quinn::VarInt)> = vec![
        ("truncated", truncated, code::TRUNCATED),
        ("a count of 0", count(0), code::DECODE_ERROR),
        ("a count above the maximum", count(MAX_BATCH_REQUESTS as u16 + 1), code::DECODE_ERROR),
        ("fewer requests than announced", count(3), code::TRUNCATED),
        ("bytes after the last request", fix_length(trailing), code::DECODE_ERROR),
        ("a batch inside a batch", fix_length(nested), code::UNSUPPORTED_VERSION),
    ];
    let malformed = cases.len() as u64;
    for (name, bytes, expected) in cases {
        assert_reset(exchange(&rt, &conn, name, &bytes).await, expected, name);
    }
    assert_eq!(net.bad_batches_received(), malformed);
    assert_eq!(handler.calls(), 2, "no request of a malformed batch reached the handler");

    // The same connection still serves a valid batch.
    let bytes = exchange(&rt, &conn, "a valid batch", &valid).await.unwrap();
    assert_eq!(answers(&bytes).len(), 2);
    assert_eq!(handler.calls(), 4);
    close_raw(&net, &endpoint, &conn).await;
}

/// A batch frame refused at its header (a length of 0, a length above the maximum frame size:
/// refused before its body is read) or not received whole within the RPC timeout is a bad
/// batch like one refused later, and counted once: one bad batch and one bad request each.
/// (Before, only a batch refused after its header was read whole was counted.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_refused_at_its_header_or_stalled_is_counted_once() {
    init_tracing();
    let rt = rt();
    let ca = ClusterCa::generate().unwrap();
    let (net, handlers, endpoint, conn) = raw_peer(&rt, &ca, &[1]).await;
    let max_frame_size = test_config(&ca, 1, loopback()).max_frame_size;
    let mut oversized = vec![0, 0, 0, 0, BATCH_KIND, 0, 1];
    oversized[..4].copy_from_slice(&(max_frame_size + 1).to_be_bytes());
    let cases: Vec<(&str, Vec<u8>, quinn::VarInt)> = vec![
        ("a batch header of length 0", vec![0, 0, 0, 0, BATCH_KIND], code::DECODE_ERROR),
        ("a batch header above the maximum frame size", oversized, code::FRAME_TOO_LARGE),
    ];
    let mut refused = 0;
    for (name, bytes, expected) in cases {
        assert_reset(exchange(&rt, &conn, name, &bytes).await, expected, name);
        refused += 1;
        assert_eq!(net.bad_batches_received(), refused, "case {name}");
        assert_eq!(net.bad_requests_received(), refused, "case {name}: one bad request");
    }
    // A batch whose last bytes never come (the stream stays open): refused once the RPC timeout
    // (300 ms here) passes.
    let valid = batch(&[Envelope::new(1, heartbeat(2)).with_group_id(1)]);
    let stalled = bounded(&rt, "a stalled batch", async {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&valid[..valid.len() - 1]).await.unwrap();
        let read = recv.read_to_end(1 << 20).await;
        drop(send);
        read
    })
    .await;
    assert_reset(stalled, code::TIMEOUT, "a stalled batch");
    assert_eq!(net.bad_batches_received(), refused + 1, "a stalled batch");
    assert_eq!(net.bad_requests_received(), refused + 1, "a stalled batch: one bad request");
    assert_eq!(handlers[&1].calls(), 0);
    close_raw(&net, &endpoint, &conn).await;
}

/// The bad requests of a well-formed batch are counted when they are found, before any answer
/// is written: here the peer stops reading the batch's stream before its last byte is sent, so
/// writing the first answer (a good request's, handled at once) fails, and the two undecodable
/// requests behind it are still counted. (Before, a request refused alone was counted only
/// when its answer's turn came, and these two never were.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bad_requests_of_a_batch_are_counted_even_if_its_answers_cannot_be_written() {
    init_tracing();
    let rt = rt();
    let ca = ClusterCa::generate().unwrap();
    // Long: the stalled batch must stay unrefused while the lone round trip below happens,
    // however slow the machine.
    let patient = |config: &mut raft_quic::QuicConfig| config.rpc_timeout = Duration::from_secs(10);
    let (net, handlers, endpoint, conn) = raw_peer_with(&rt, &ca, &[1], patient).await;
    let beat = Envelope::new(1, heartbeat(2)).with_group_id(1);
    let good = frame::encode_request(&beat, 1 << 20).unwrap();
    let undecodable = raw_request(2, &[0xff; 4]);
    let bytes = raw_batch(&[&good, &undecodable, &undecodable]);
    bounded(&rt, "a batch whose answers are not read", async {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&bytes[..bytes.len() - 1]).await.unwrap();
        recv.stop(0u32.into()).unwrap();
        // A lone request's round trip on another stream: node 1 has had the stop by then.
        let lone = frame::encode_request(&beat, 1 << 20).unwrap();
        exchange(&rt, &conn, "a lone request", &lone).await.unwrap();
        send.write_all(&bytes[bytes.len() - 1..]).await.unwrap();
        send.finish().unwrap();
    })
    .await;
    let handler = &handlers[&1];
    eventually(&rt, "the batch's good request handled", Duration::from_millis(10), || {
        let calls = handler.calls();
        async move { (calls == 2).then_some(()) }
    })
    .await;
    assert_eq!(net.bad_requests_received(), 2, "the two undecodable requests");
    assert_eq!(net.bad_batches_received(), 0, "the batch itself was well-formed");
    close_raw(&net, &endpoint, &conn).await;
}

/// The flow-control window of the raw connection's streams in the tests of slow readers: a
/// couple of heartbeat answers.
const SLOW_READER_WINDOW: u32 = 64;

/// Node 1 (RPC timeout 300 ms) serving group 1, and a raw connection of node 2 whose streams
/// take at most [`SLOW_READER_WINDOW`] bytes it has not read yet.
async fn slow_reader(
    rt: &Arc<dyn Runtime>,
    ca: &ClusterCa,
) -> (QuicNetwork, Handlers, quinn::Endpoint, quinn::Connection) {
    slow_reader_with(rt, ca, |_| {}).await
}

/// [`slow_reader`], with node 1's configuration changed by `configure` first.
async fn slow_reader_with(
    rt: &Arc<dyn Runtime>,
    ca: &ClusterCa,
    configure: impl FnOnce(&mut raft_quic::QuicConfig),
) -> (QuicNetwork, Handlers, quinn::Endpoint, quinn::Connection) {
    let mut transport = quinn::TransportConfig::default();
    transport.stream_receive_window(SLOW_READER_WINDOW.into());
    raw_peer_with_transport(rt, ca, &[1], configure, transport).await
}

/// Writes `bytes` on a new stream of `conn` and reads what comes back slowly, 32 bytes every
/// 100 ms, until the stream ends: returns how it ended (`None`: cleanly) and what was read.
async fn read_slowly(
    rt: &Arc<dyn Runtime>,
    conn: &quinn::Connection,
    bytes: &[u8],
) -> (Option<quinn::ReadError>, Vec<u8>) {
    bounded(rt, "a batch read slowly", async {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(bytes).await.unwrap();
        send.finish().unwrap();
        let mut taken = Vec::new();
        let mut buffer = [0; 32];
        let end = loop {
            sleep(rt, Duration::from_millis(100)).await;
            match recv.read(&mut buffer).await {
                Ok(Some(read)) => taken.extend_from_slice(&buffer[..read]),
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        (end, taken)
    })
    .await
}

/// The answer frames whole at the start of `bytes` (a frame cut short at the end is not one).
fn whole_frames(mut bytes: &[u8]) -> usize {
    let mut frames = 0;
    while let Some(len) = bytes.get(..4) {
        let len = 4 + u32::from_be_bytes(len.try_into().unwrap()) as usize;
        if bytes.len() < len {
            break;
        }
        bytes = &bytes[len..];
        frames += 1;
    }
    frames
}

/// A batch of `requests` heartbeats of node 2 for group 1.
fn heartbeats_of_node_2(requests: usize) -> Vec<u8> {
    batch(&vec![Envelope::new(1, heartbeat(2)).with_group_id(1); requests])
}

/// A peer that takes the answers of its batch slowly (its stream's window holds a couple of
/// answers, and it reads 32 bytes every 100 ms, each read well within the 300 ms RPC timeout
/// of the last) holds the batch's stream, its handlers and its memory for at most one RPC
/// timeout of waiting for the peer in all, not one per answer: node 1 resets the stream
/// (`TIMEOUT`) long before the 64 answers are taken, counts it once, and serves the
/// connection's next batch. (Before, each answer had an RPC timeout of its own, and each was
/// taken within it: all 64 answers were written, over ~5 s; a batch of 256 answers could hold
/// the stream 256 RPC timeouts.) Not a speed assertion: the peer cannot take the answers
/// faster than its own pace, so it cannot take them all within one timeout of waiting,
/// however fast or slow the machine; and so the test cannot tell one timeout of waiting from
/// ~20 (the ~5 s the peer needs for all the answers), only from one per answer. That the
/// handlers still running are dropped and the memory released then is checked by the next
/// test; here, that no handler of the given-up batch runs after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_answers_are_taken_slowly_gets_one_rpc_timeout_in_all() {
    const REQUESTS: usize = 64;
    init_tracing();
    let rt = rt();
    let ca = ClusterCa::generate().unwrap();
    let (net, handlers, endpoint, conn) = slow_reader(&rt, &ca).await;
    let bytes = heartbeats_of_node_2(REQUESTS);
    let (end, taken) = read_slowly(&rt, &conn, &bytes).await;
    let answered = whole_frames(&taken);
    assert!(answered < REQUESTS, "all {answered} answers were written to a slow reader");
    let calls = handlers[&1].calls();
    assert!(
        matches!(end, Some(quinn::ReadError::Reset(code)) if code == code::TIMEOUT),
        "{end:?} after {answered} answers"
    );
    assert_eq!(net.answer_timeouts(), 1, "counted once");
    assert_eq!(net.bad_requests_received(), 0, "the requests were good");
    // The connection serves the next batch, read at once.
    let bytes = exchange(&rt, &conn, "a batch read at once", &heartbeats_of_node_2(2)).await;
    assert_eq!(answers(&bytes.unwrap()).len(), 2);
    // Only the next batch's two handlers ran since: none of the given-up batch's.
    assert_eq!(handlers[&1].calls(), calls + 2);
    assert_eq!(net.answer_timeouts(), 1);
    close_raw(&net, &endpoint, &conn).await;
}

/// What a batch holds is released when it is given up for a slow reader (its answers not all
/// taken within one RPC timeout of waiting): its handler still running (held at the closed
/// gate) is dropped, and the batch's memory (its frame is above `priority_frame_threshold`,
/// so its size was taken from the peer's 64 KiB budget) is released, so a request needing
/// almost the whole budget is then served, not refused as busy. (Before the answers shared
/// one timeout, the slow reader took every heartbeat's answer within its own timeout and the
/// stream then waited for the held handler without end: the reader never saw the stream end.)
/// Machine-speed independent: like the test above, it cannot tell one RPC timeout of waiting
/// from ~20 (the slow reader needs ~3 s to take all the answers), only one from one per answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_given_up_for_a_slow_reader_drops_its_handlers_and_releases_its_memory() {
    const HEARTBEATS: usize = 63;
    const BUDGET: u32 = 64 << 10;
    init_tracing();
    let rt = rt();
    let ca = ClusterCa::generate().unwrap();
    let (net, handlers, endpoint, conn) = slow_reader_with(&rt, &ca, budget_of(BUDGET)).await;
    let handler = &handlers[&1];
    let gate = handler.close_gate();
    // 20 KB held in the gated handler, and heartbeats whose answers fill the window.
    let mut requests = vec![Envelope::new(1, append(2, 2, 20_000, b"gated")).with_group_id(1)];
    requests.extend(vec![Envelope::new(1, heartbeat(2)).with_group_id(1); HEARTBEATS]);
    let bytes = batch(&requests);
    assert!(bytes.len() > 16 << 10, "{} bytes: under the priority threshold", bytes.len());
    let (end, taken) = read_slowly(&rt, &conn, &bytes).await;
    let answered = whole_frames(&taken);
    assert!(
        matches!(end, Some(quinn::ReadError::Reset(code)) if code == code::TIMEOUT),
        "{end:?} after {answered} answers"
    );
    assert_eq!(net.answer_timeouts(), 1, "counted once");
    eventually(&rt, "the held handler dropped", Duration::from_millis(10), || {
        let abandoned = handler.abandoned();
        async move { (abandoned == 1).then_some(()) }
    })
    .await;
    // ~60 KB: fits the 64 KiB budget only if the batch's ~25 KB were released.
    let large = Envelope::new(1, append(2, 1, 60_000, b"")).with_group_id(1);
    let large = frame::encode_request(&large, 1 << 20).unwrap();
    assert!(large.len() + bytes.len() > BUDGET as usize, "{} bytes", large.len());
    let answer = exchange(&rt, &conn, "a request needing the whole budget", &large).await;
    let (answer, _) = frame::decode::<WireResponse>(&answer.unwrap(), 1 << 20, LIMITS).unwrap();
    assert!(matches!(answer, WireResponse::Ok(RpcResponse::AppendEntries(_))), "{answer:?}");
    assert_eq!(net.bad_requests_received(), 0, "the requests were good");
    drop(gate);
    close_raw(&net, &endpoint, &conn).await;
}

/// A peer that never reads the answers of its batch holds its stream for at most one RPC
/// timeout of waiting: node 1 resets it (`TIMEOUT`) and counts it, once. (Before, the stream
/// was reset too, when its first blocked answer timed out, but not counted.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_never_taken_are_given_up_and_counted() {
    init_tracing();
    let rt = rt();
    let ca = ClusterCa::generate().unwrap();
    let (net, _handlers, endpoint, conn) = slow_reader(&rt, &ca).await;
    // The answers of 64 heartbeats fill the stream's window many times over.
    let bytes = heartbeats_of_node_2(64);
    let (mut send, mut recv) = bounded(&rt, "a stream", conn.open_bi()).await.unwrap();
    bounded(&rt, "a batch never read", send.write_all(&bytes)).await.unwrap();
    send.finish().unwrap();
    eventually(&rt, "the batch given up", Duration::from_millis(20), || {
        let given_up = net.answer_timeouts();
        async move { (given_up == 1).then_some(()) }
    })
    .await;
    let end = bounded(&rt, "the reset", recv.read_to_end(1 << 20)).await;
    assert_reset(end, code::TIMEOUT, "a batch never read");
    assert_eq!(net.bad_requests_received(), 0, "the requests were good");
    close_raw(&net, &endpoint, &conn).await;
}

/// Counts `quic_received_bytes_total` of node 1 from node 2 (every other metric is dropped).
#[derive(Default)]
struct ReceivedBytes(Arc<std::sync::atomic::AtomicU64>);

impl ReceivedBytes {
    fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

struct Adder(Arc<std::sync::atomic::AtomicU64>);

impl metrics::CounterFn for Adder {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, std::sync::atomic::Ordering::SeqCst);
    }
    fn absolute(&self, value: u64) {
        self.0.fetch_max(value, std::sync::atomic::Ordering::SeqCst);
    }
}

impl metrics::Recorder for ReceivedBytes {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        let label =
            |name: &str| key.labels().find(|l| l.key() == name).map(|l| l.value().to_owned());
        let ours = key.name() == "quic_received_bytes_total"
            && label("node_id").as_deref() == Some("1")
            && label("peer").as_deref() == Some("2");
        if ours {
            metrics::Counter::from_arc(Arc::new(Adder(Arc::clone(&self.0))))
        } else {
            metrics::Counter::noop()
        }
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

/// `quic_received_bytes_total` counts every frame read whole, whatever becomes of it: a lone
/// request whose body does not decode and a batch whose structure is broken are refused after
/// their last byte was read, and counted (before, neither was); a batch refused at its header
/// is not read, nor counted. The recorder is this test's thread's only (one thread runs the
/// whole node), so no other test's counts mix in.
#[test]
fn frames_read_whole_and_then_refused_count_as_received_bytes() {
    init_tracing();
    let recorder = ReceivedBytes::default();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let rt = rt();
            let ca = ClusterCa::generate().unwrap();
            let (net, handlers, endpoint, conn) = raw_peer(&rt, &ca, &[1]).await;
            // 100 bytes after the length field: version, sender, 91 bytes that do not decode.
            let undecodable = raw_request(2, &[0xff; 91]);
            assert_eq!(undecodable.len(), 104);
            let read = exchange(&rt, &conn, "an undecodable lone request", &undecodable).await;
            assert_reset(read, code::DECODE_ERROR, "an undecodable lone request");
            assert_eq!(recorder.get(), 104, "the undecodable request, read whole");
            let beat = frame::encode_request(&Envelope::new(1, heartbeat(2)), 1 << 20).unwrap();
            let mut no_requests = raw_batch(&[&beat]);
            no_requests[5..7].copy_from_slice(&0u16.to_be_bytes());
            let read = exchange(&rt, &conn, "a batch of 0 requests", &no_requests).await;
            assert_reset(read, code::DECODE_ERROR, "a batch of 0 requests");
            let total = 104 + no_requests.len() as u64;
            assert_eq!(recorder.get(), total, "and the batch of 0 requests, read whole");
            let read =
                exchange(&rt, &conn, "an empty batch header", &[0, 0, 0, 0, BATCH_KIND]).await;
            assert_reset(read, code::DECODE_ERROR, "an empty batch header");
            assert_eq!(recorder.get(), total, "a frame refused at its header is not counted");
            assert_eq!(handlers[&1].calls(), 0);
            close_raw(&net, &endpoint, &conn).await;
        })
    });
}

/// A request kept waiting by the receiver itself (for room in its memory budget for the
/// sender, here held by a large request in a held handler) until the RPC timeout passes is
/// refused as busy, like one refused for want of memory at once: not a bad request, and a
/// batch not a bad batch. (Before, both were counted as bad and logged as stalled by the peer:
/// "no request within" the timeout.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_kept_waiting_by_the_receivers_own_budget_is_not_a_bad_one() {
    init_tracing();
    let rt = rt();
    let ca = ClusterCa::generate().unwrap();
    // A budget of 64 KiB for node 2; frames above 16 KiB take their size from it up front.
    let (net, handlers, endpoint, conn) = raw_peer_with(&rt, &ca, &[1], budget_of(64 << 10)).await;
    let handler = &handlers[&1];
    let gate = handler.close_gate();
    // 40 KB held in the gated handler: 24 KiB left.
    let held = Envelope::new(1, append(2, 2, 40_000, b"gated")).with_group_id(1);
    let held = frame::encode_request(&held, 1 << 20).unwrap();
    let (mut held_send, mut held_recv) = conn.open_bi().await.unwrap();
    held_send.write_all(&held).await.unwrap();
    held_send.finish().unwrap();
    eventually(&rt, "the large request in its handler", Duration::from_millis(10), || {
        let calls = handler.calls();
        async move { (calls == 1).then_some(()) }
    })
    .await;
    // Each 30 KB: more than is left, so each waits for room until the RPC timeout passes.
    let large = |count| Envelope::new(1, append(2, count, 15_000, b"")).with_group_id(1);
    let lone = frame::encode_request(&large(2), 1 << 20).unwrap().to_vec();
    let batched = batch(&[large(1), large(1)]);
    for (name, bytes) in [("a lone request", lone), ("a batch", batched)] {
        assert!(bytes.len() > 24 << 10, "{name}: {} bytes", bytes.len());
        assert_reset(exchange(&rt, &conn, name, &bytes).await, code::BUSY, name);
        assert_eq!(net.bad_requests_received(), 0, "{name}: no bad request");
        assert_eq!(net.bad_batches_received(), 0, "{name}: no bad batch");
    }
    assert_eq!(handler.calls(), 1);
    drop(gate);
    let answer = bounded(&rt, "the held request's answer", held_recv.read_to_end(1 << 20)).await;
    let (answer, _) = frame::decode::<WireResponse>(&answer.unwrap(), 1 << 20, LIMITS).unwrap();
    assert!(matches!(answer, WireResponse::Ok(RpcResponse::AppendEntries(_))), "{answer:?}");
    close_raw(&net, &endpoint, &conn).await;
}

/// A request inside a batch whose structure holds (its count and every request frame's header
/// and length fill it exactly) stands alone: one whose body does not decode, one over the
/// receiver's decoding budget and one whose body names another sender than its header are each
/// refused alone (answered at their position), and the batch's other requests, of two groups,
/// are served. Nothing of it is a malformed batch. (Before, any of them reset the whole batch:
/// the good requests, of any group, got the refusal.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_request_in_a_well_formed_batch_is_refused_alone() {
    init_tracing();
    let rt = rt();
    let ca = ClusterCa::generate().unwrap();
    let (net, handlers, endpoint, conn) = raw_peer(&rt, &ca, &[1, 2]).await;
    let good = |group| {
        frame::encode_request(&Envelope::new(1, heartbeat(2)).with_group_id(group), 1 << 20)
            .unwrap()
    };
    let undecodable = raw_request(2, &[0xff; 4]);
    let crowded =
        Envelope::new(1, append(2, RAW_PEER_MAX_ITEMS as usize + 1, 1, b"")).with_group_id(2);
    let crowded = frame::encode_request(&crowded, 1 << 20).unwrap();
    // The header says node 2 (the certificate's), the body node 3.
    let lying = frame::encode_request(&Envelope::new(1, heartbeat(3)).with_group_id(1), 1 << 20);
    let mut lying = lying.unwrap().to_vec();
    lying[frame::HEADER_LEN..frame::HEADER_LEN + frame::SENDER_LEN]
        .copy_from_slice(&2u64.to_be_bytes());
    let bytes = raw_batch(&[&good(1), &undecodable, &good(2), &crowded, &lying]);
    let bytes = exchange(&rt, &conn, "a batch with bad requests", &bytes).await.unwrap();
    let answered = answers(&bytes);
    assert_eq!(answered.len(), 5, "{answered:?}");
    for position in [0, 2] {
        let answer = &answered[&position];
        assert!(matches!(answer, WireResponse::Ok(RpcResponse::AppendEntries(_))), "{answer:?}");
    }
    let malformed = |position: u16, says: &str| match &answered[&position] {
        WireResponse::Refused(Refusal::Malformed(reason)) => {
            assert!(reason.contains(says), "position {position}: {reason}")
        }
        other => panic!("position {position}: expected a malformed request, got {other:?}"),
    };
    malformed(1, "");
    malformed(3, &format!("more than {RAW_PEER_MAX_ITEMS} sequence elements"));
    malformed(4, "names sender 3");
    assert_eq!((handlers[&1].calls(), handlers[&2].calls()), (1, 1));
    assert_eq!(net.bad_batches_received(), 0, "the batch itself was well-formed");
    close_raw(&net, &endpoint, &conn).await;
}

/// A request of a well-formed batch whose elements do not fit the receiver's memory budget for
/// its sender now is refused alone (`Refusal::Busy`); the batch's other request is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_of_a_batch_over_the_memory_budget_is_refused_alone_as_busy() {
    init_tracing();
    let rt = rt();
    let ca = ClusterCa::generate().unwrap();
    // A 1 KiB budget for node 2's unanswered requests: the first request's fixed cost (1 KiB)
    // fills it, and the second's (with its 14 elements, 80 bytes each) overflows it.
    let small = budget_of(frame::MIN_MAX_FRAME_SIZE);
    let (net, handlers, endpoint, conn) = raw_peer_with(&rt, &ca, &[1, 2], small).await;
    let good = Envelope::new(1, heartbeat(2)).with_group_id(1);
    let heavy = Envelope::new(1, append(2, 14, 1, b"")).with_group_id(2);
    let bytes = batch(&[good, heavy]);
    assert!(bytes.len() <= frame::MIN_MAX_FRAME_SIZE as usize, "{} bytes", bytes.len());
    let bytes = exchange(&rt, &conn, "a batch with a request over budget", &bytes).await.unwrap();
    let answered = answers(&bytes);
    assert!(
        matches!(answered[&0], WireResponse::Ok(RpcResponse::AppendEntries(_))),
        "{answered:?}"
    );
    assert_eq!(answered[&1], WireResponse::Refused(Refusal::Busy));
    assert_eq!((handlers[&1].calls(), handlers[&2].calls()), (1, 0));
    assert_eq!(net.bad_batches_received(), 0);
    close_raw(&net, &endpoint, &conn).await;
}

/// Every request, lone or of a batch, is charged a fixed cost (1 KiB) on its sender's memory
/// budget whatever it holds (review 39: a request without elements, a vote or a heartbeat, was
/// charged nothing, and one certificate held 262,144 of them, 263 MiB, under a 32 MiB budget).
/// Under a 64 KiB budget, of a batch of 256 requests held in the handler, those beyond the
/// budget are refused as busy: each one admitted was charged at least 512 bytes. Under the
/// default budget (32 MiB), four such batches held at once (the heartbeats of 1,024 groups)
/// are all admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_charged_on_the_memory_budget_even_without_elements() {
    init_tracing();
    let rt = rt();
    let ca = ClusterCa::generate().unwrap();
    let held: Vec<Envelope> = (0..MAX_BATCH_REQUESTS)
        .map(|_| Envelope::new(1, append(2, 1, 0, b"gated")).with_group_id(1))
        .collect();
    let held = batch(&held);
    const BUDGET: u32 = 64 << 10;
    let (net, handlers, endpoint, conn) = raw_peer_with(&rt, &ca, &[1], budget_of(BUDGET)).await;
    let gate = handlers[&1].close_gate();
    let exchanged = exchange(&rt, &conn, "a batch over the budget", &held);
    let mut exchanged = std::pin::pin!(exchanged);
    // The batch is decoded (and charged) whole before its first request reaches the handler.
    let in_handler = eventually(&rt, "the batch in the handler", Duration::from_millis(10), || {
        let calls = handlers[&1].calls();
        async move { (calls > 0).then_some(()) }
    });
    match select(exchanged.as_mut(), std::pin::pin!(in_handler)).await {
        Either::Right(((), _)) => {}
        Either::Left((answered, _)) => panic!("answered with the gate closed: {answered:?}"),
    }
    drop(gate);
    let answered = answers(&exchanged.as_mut().await.unwrap());
    assert_eq!(answered.len(), MAX_BATCH_REQUESTS);
    let busy = answered.values().filter(|a| **a == WireResponse::Refused(Refusal::Busy)).count();
    let served = handlers[&1].calls();
    assert_eq!(served + busy, MAX_BATCH_REQUESTS, "{answered:?}");
    assert!(served > 0 && served * 512 <= BUDGET as usize, "{served} requests held in 64 KiB");
    close_raw(&net, &endpoint, &conn).await;

    let (net, handlers, endpoint, conn) = raw_peer(&rt, &ca, &[1]).await;
    let gate = handlers[&1].close_gate();
    let exchanges = join_all((0..4).map(|_| exchange(&rt, &conn, "a batch of 256", &held)));
    let mut exchanges = std::pin::pin!(exchanges);
    let all_held =
        eventually(&rt, "1,024 requests in the handler", Duration::from_millis(10), || {
            let calls = handlers[&1].calls();
            async move { (calls >= 4 * MAX_BATCH_REQUESTS).then_some(()) }
        });
    match select(exchanges.as_mut(), std::pin::pin!(all_held)).await {
        Either::Right(((), _)) => {}
        Either::Left((answered, _)) => panic!("answered with the gate closed: {answered:?}"),
    }
    drop(gate);
    for answered in exchanges.await {
        let answered = answers(&answered.unwrap());
        assert_eq!(answered.len(), MAX_BATCH_REQUESTS);
        assert!(answered.values().all(|a| matches!(a, WireResponse::Ok(_))), "{answered:?}");
    }
    assert_eq!(handlers[&1].calls(), 4 * MAX_BATCH_REQUESTS);
    close_raw(&net, &endpoint, &conn).await;
}

/// Node 1 sending to node 2, which serves groups 1 and 2 with its configuration changed by
/// `configure`.
fn sender_and_receiver(
    configure: impl FnOnce(&mut raft_quic::QuicConfig),
) -> (Arc<dyn Runtime>, QuicNetwork, QuicNetwork, Handlers) {
    init_tracing();
    let rt = rt();
    let ca = ClusterCa::generate().unwrap();
    let mut receiver = test_config(&ca, 2, loopback());
    configure(&mut receiver);
    let net2 = QuicNetwork::bind(receiver, rt.clone()).unwrap();
    let net1 = QuicNetwork::bind(test_config(&ca, 1, loopback()), rt.clone()).unwrap();
    net1.set_peer(2, net2.local_addr());
    let handlers = serve_groups(&net2, [1, 2]);
    (rt, net1, net2, handlers)
}

/// A batch the receiver refuses as a whole (here: larger than its maximum frame size, though
/// each request fits it) fails each of its callers with the reset, not with a timeout; a lone
/// request to the same peer still works.
// One thread: requests "issued together" are all queued before any send task runs, so the
// frame counts are exact (on two workers a send task can take part of a queue still filling).
#[tokio::test(flavor = "current_thread")]
async fn every_caller_of_a_refused_batch_gets_the_refusal() {
    // Node 2 takes frames of at most 1 KiB: two appends of 600 bytes fit one each, not together.
    let (rt, net1, net2, handlers) =
        sender_and_receiver(|receiver| receiver.max_frame_size = frame::MIN_MAX_FRAME_SIZE);
    let append = |group| Envelope::new(2, append(1, 1, 600, b"")).with_group_id(group);
    assert!(frame::encode_request(&append(1), frame::MIN_MAX_FRAME_SIZE).is_ok());
    // The opener goes alone (nothing awaited an answer); the two others share a batch.
    let opener = net1.send(Envelope::new(2, heartbeat(1)).with_group_id(2));
    let (first, second) = (net1.send(append(1)), net1.send(append(2)));
    let (opened, first, second) =
        bounded(&rt, "a refused batch", futures::future::join3(opener, first, second)).await;
    opened.unwrap();
    for answer in [first, second] {
        match answer {
            Err(NetworkError::Refused { reason: RefusalReason::Transport(error), .. }) => {
                let error = error.to_string();
                assert!(error.contains("reset") || error.contains("stopped"), "{error}");
                // Refused at its header, before its body is read.
                let too_large = format!("(code {})", code::FRAME_TOO_LARGE);
                assert!(error.contains(&too_large), "{error}")
            }
            other => panic!("expected the batch's reset, got {other:?}"),
        }
    }
    assert_eq!(net1.peer_stats(2).batches_sent, 1);
    assert_eq!(net2.bad_batches_received(), 1, "refused at its header, counted once");
    assert_eq!(handlers.values().map(|h| h.calls()).sum::<usize>(), 1, "the opener only");
    bounded(&rt, "a lone append", net1.send(append(1))).await.unwrap();
    net1.close().await;
    net2.close().await;
}

/// A request frame the receiver stops before the stream took it whole (larger than the
/// receiver's maximum frame size and than its stream window: the write waits for credit that
/// never comes, and the receiver refuses the frame from its header) counts as stopped in the
/// sender's `PeerStats`, not as sent; a frame taken whole afterwards counts as sent. (Before,
/// the stopped frame counted as a frame and a request sent.)
// One thread, as the other tests of `peer_stats`.
#[tokio::test(flavor = "current_thread")]
async fn a_request_frame_the_peer_stopped_is_not_counted_as_sent() {
    let (rt, net1, net2, handlers) = sender_and_receiver(|receiver| {
        receiver.max_frame_size = frame::MIN_MAX_FRAME_SIZE;
        receiver.stream_receive_window = frame::MIN_MAX_FRAME_SIZE;
    });
    // ~8 KB: a small frame to the sender (no bulk window), 8 times the receiver's window.
    let large = Envelope::new(2, append(1, 1, 8_000, b"")).with_group_id(1);
    match bounded(&rt, "a frame the receiver stops", net1.send(large)).await {
        Err(NetworkError::Refused { reason: RefusalReason::Transport(error), .. }) => {
            let error = error.to_string();
            assert!(error.contains("stopped"), "{error}");
            assert!(error.contains(&format!("(code {})", code::FRAME_TOO_LARGE)), "{error}");
        }
        other => panic!("expected the stop, got {other:?}"),
    }
    let stats = net1.peer_stats(2);
    let sent = (stats.requests_sent, stats.frames_sent, stats.batches_sent);
    assert_eq!(sent, (0, 0, 0), "a stopped frame is not sent: {stats:?}");
    assert_eq!(stats.frames_stopped, 1, "{stats:?}");
    let beat = Envelope::new(2, heartbeat(1)).with_group_id(1);
    bounded(&rt, "a heartbeat", net1.send(beat)).await.unwrap();
    let stats = net1.peer_stats(2);
    assert_eq!((stats.requests_sent, stats.frames_sent), (1, 1), "{stats:?}");
    assert_eq!(stats.frames_stopped, 1, "{stats:?}");
    assert_eq!(handlers[&1].calls(), 1);
    assert_eq!(net2.bad_requests_received(), 1, "the frame too large");
    net1.close().await;
    net2.close().await;
}

/// A request of a real batch over the receiver's decoding budget fails its own caller only,
/// with the receiver's reason; the other request of the batch, of another group, is answered.
/// (Before, the receiver reset the whole batch and both callers got the refusal.)
// One thread: requests "issued together" are all queued before any send task runs, so the
// frame counts are exact (on two workers a send task can take part of a queue still filling).
#[tokio::test(flavor = "current_thread")]
async fn a_request_of_a_batch_over_the_receivers_budget_fails_its_caller_alone() {
    // Node 2 decodes at most 10 elements per request: a request of 11 entries is refused.
    let (rt, net1, net2, handlers) =
        sender_and_receiver(|receiver| receiver.max_decoded_items = 10);
    // The opener goes alone (nothing awaited an answer); the two others share a batch.
    let opener = net1.send(Envelope::new(2, heartbeat(1)).with_group_id(2));
    let crowded = net1.send(Envelope::new(2, append(1, 11, 1, b"")).with_group_id(1));
    let fine = net1.send(Envelope::new(2, heartbeat(1)).with_group_id(2));
    let (opened, crowded, fine) =
        bounded(&rt, "a batch", futures::future::join3(opener, crowded, fine)).await;
    opened.unwrap();
    assert!(matches!(fine, Ok(RpcResponse::AppendEntries(_))), "{fine:?}");
    match crowded {
        Err(NetworkError::Refused { reason: RefusalReason::Transport(error), .. }) => {
            let refusal = error.downcast_ref::<Refusal>();
            assert!(matches!(refusal, Some(Refusal::Malformed(_))), "{error}");
            assert!(error.to_string().contains("more than 10 sequence elements"), "{error}");
        }
        other => panic!("expected the request's own refusal, got {other:?}"),
    }
    assert_eq!(net1.peer_stats(2).batches_sent, 1);
    assert_eq!(net2.bad_batches_received(), 0);
    assert_eq!((handlers[&1].calls(), handlers[&2].calls()), (0, 2));
    net1.close().await;
    net2.close().await;
}

/// What a [`scripted_peer`] writes on a batch's stream, in order.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// The answer to the request at `request` of the batch, labelled with `position`.
    Answer { position: u16, request: usize },
    /// An answer frame for `position` whose framing is intact but whose body is garbage.
    Garbage(u16),
    /// A frame header announcing more bytes than follow (the stream ends inside it).
    Truncated,
}

/// A hostile node 2 for `net` (node 1 dials it): answers a lone request, and on a batch's
/// stream writes what `script` makes of the batch's requests, then ends the stream.
async fn scripted_peer(
    rt: &Arc<dyn Runtime>,
    ca: &ClusterCa,
    net: &QuicNetwork,
    script: impl Fn(&[Envelope]) -> Vec<Step> + Send + 'static,
) -> quinn::Endpoint {
    let crypto = tls::quic_server_crypto(&ca.node_tls(2).unwrap()).unwrap();
    let socket = std::net::UdpSocket::bind(loopback()).unwrap();
    let server = quinn::ServerConfig::with_crypto(crypto);
    let endpoint =
        quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(server), socket, rt.clone())
            .unwrap();
    net.set_peer(2, endpoint.local_addr().unwrap());
    let accepting = endpoint.clone();
    tokio::spawn(async move {
        let conn = accepting.accept().await.unwrap().await.unwrap();
        let handler = TestHandler::new(2);
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let bytes = recv.read_to_end(1 << 20).await.unwrap();
            if bytes[4] != BATCH_KIND {
                let (_, request, _) = frame::decode_request(&bytes, 1 << 20, LIMITS).unwrap();
                let response = WireResponse::Ok(handler.handle_rpc(request).await.unwrap());
                send.write_all(&frame::encode(&response, 1 << 20).unwrap()).await.unwrap();
            } else {
                let (requests, _) = frame::decode_batch(&bytes, 1 << 20, LIMITS).unwrap();
                let requests: Vec<Envelope> = requests.into_iter().map(|(_, r)| r).collect();
                for step in script(&requests) {
                    let answer = match step {
                        Step::Answer { position, request } => {
                            let request = requests[request].clone();
                            let response =
                                WireResponse::Ok(handler.handle_rpc(request).await.unwrap());
                            frame::encode_answer(position, &response, 1 << 20).unwrap().to_vec()
                        }
                        Step::Garbage(position) => {
                            let mut garbage = vec![0, 0, 0, 0, BATCH_KIND];
                            garbage.extend(position.to_be_bytes());
                            garbage.extend([0xff; 6]);
                            fix_length(garbage)
                        }
                        Step::Truncated => vec![0, 0, 0, 100, BATCH_KIND, 0],
                    };
                    send.write_all(&answer).await.unwrap();
                }
            }
            let _ = send.finish();
        }
    });
    endpoint
}

/// A [`scripted_peer`]'s script: every request of group 2 answered with garbage, every other
/// well.
fn garbling(requests: &[Envelope]) -> Vec<Step> {
    let step = |(request, envelope): (usize, &Envelope)| match envelope.group_id {
        2 => Step::Garbage(request as u16),
        _ => Step::Answer { position: request as u16, request },
    };
    requests.iter().enumerate().map(step).collect()
}

/// Node 1 sends four heartbeats issued together (groups 1, 1, 2, 3) to a [`scripted_peer`]
/// running `script`: the first goes alone (nothing awaited an answer), the three others share
/// one batch (positions 0, 1 and 2: groups 1, 2 and 3). Returns each caller's result, in order,
/// and the answers node 1 ignored as stray. Run on one thread: requests "issued together" are
/// then all queued before any send task runs, so the batch holds them all.
async fn four_heartbeats_to(
    script: impl Fn(&[Envelope]) -> Vec<Step> + Send + 'static,
) -> (Vec<Result<RpcResponse, NetworkError>>, u64) {
    init_tracing();
    let rt = rt();
    let ca = ClusterCa::generate().unwrap();
    let net = QuicNetwork::bind(test_config(&ca, 1, loopback()), rt.clone()).unwrap();
    let endpoint = scripted_peer(&rt, &ca, &net, script).await;
    let beat = |group| net.send(Envelope::new(2, heartbeat(1)).with_group_id(group));
    let sends = [beat(1), beat(1), beat(2), beat(3)];
    let answers = bounded(&rt, "four heartbeats", join_all(sends)).await;
    assert_eq!(net.peer_stats(2).batches_sent, 1);
    let stray = net.stray_answers_received();
    net.close().await;
    endpoint.close(0u32.into(), b"");
    (answers, stray)
}

/// An answer on a batch's stream whose body does not decode, but whose frame (its length and
/// position) is intact, fails its own caller only: the answers after it are still read and
/// handed to their callers. (Before, it failed every caller still waiting in the batch.)
// One thread: see `four_heartbeats_to`.
#[tokio::test(flavor = "current_thread")]
async fn a_malformed_answer_in_a_batch_fails_its_own_caller_only() {
    // Group 2's answer (second of the batch's three) is garbage.
    let (answers, _) = four_heartbeats_to(garbling).await;
    for (i, answer) in answers.into_iter().enumerate() {
        if i == 2 {
            assert!(matches!(answer, Err(NetworkError::Codec(_))), "group 2: {answer:?}");
        } else {
            assert!(matches!(answer, Ok(RpcResponse::AppendEntries(_))), "request {i}: {answer:?}");
        }
    }
}

/// Answers on a batch's stream whose framing is intact but whose position nobody awaits (one
/// never in the batch, one already answered) are ignored and counted: every caller of the
/// batch still gets its own answer. (Before, the first such answer failed every caller still
/// waiting.)
// One thread: see `four_heartbeats_to`.
#[tokio::test(flavor = "current_thread")]
async fn answers_for_positions_nobody_awaits_are_ignored_and_counted() {
    let (answers, stray) = four_heartbeats_to(|_| {
        vec![
            Step::Answer { position: 9, request: 0 },
            Step::Answer { position: 0, request: 0 },
            Step::Answer { position: 0, request: 0 },
            Step::Answer { position: 2, request: 2 },
            Step::Answer { position: 1, request: 1 },
        ]
    })
    .await;
    for (i, answer) in answers.into_iter().enumerate() {
        assert!(matches!(answer, Ok(RpcResponse::AppendEntries(_))), "request {i}: {answer:?}");
    }
    assert_eq!(stray, 2, "position 9, and position 0 again");
}

/// Once the framing of a batch's stream breaks (a frame that announces more bytes than
/// follow), nothing after it can be attributed: every caller still waiting fails, those
/// answered before keep their answer.
// One thread: see `four_heartbeats_to`.
#[tokio::test(flavor = "current_thread")]
async fn a_broken_answer_framing_fails_every_caller_still_waiting() {
    let (answers, stray) =
        four_heartbeats_to(|_| vec![Step::Answer { position: 1, request: 1 }, Step::Truncated])
            .await;
    for (i, answer) in answers.into_iter().enumerate() {
        if i == 0 || i == 2 {
            assert!(matches!(answer, Ok(RpcResponse::AppendEntries(_))), "request {i}: {answer:?}");
        } else {
            assert!(matches!(answer, Err(NetworkError::Codec(_))), "request {i}: {answer:?}");
        }
    }
    assert_eq!(stray, 0);
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
