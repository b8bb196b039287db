//! Helpers shared by the integration tests: certificates, networks on loopback port 0, a test
//! handler that answers every request, and runtime-agnostic sleeping.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::{
    AppendEntriesRequest, AppendEntriesResponse, Entry, EntryPayload, Envelope, LogId, Network,
    NetworkError, NodeId, RequestVoteRequest, RequestVoteResponse, RpcError, RpcHandler,
    RpcRequest, RpcResponse, TimeoutNowResponse,
};
use raft_quic::quinn::{self, Runtime};
use raft_quic::{ClusterCa, QuicConfig, QuicNetwork};

/// Calls the macro `$on_runtime` with the name of every scenario of [`scenarios`], so that each
/// runtime's test file runs all of them (the tokio and smol files do).
#[allow(unused_macros)]
macro_rules! all_scenarios {
    ($on_runtime:ident) => {
        $on_runtime!(
            round_trip,
            concurrent_rpcs,
            sender_must_match_certificate,
            refuses_until_serving,
            server_must_prove_dialed_id,
            unknown_node_with_a_cluster_certificate_is_served,
            foreign_ca_is_refused,
            reconnects_after_restart,
            large_batches_do_not_block_heartbeats,
            oversized_frames,
            close_is_final,
            malformed_frames_are_survived,
            reconnects_after_link_break,
            stale_connection_is_reset_after_crash,
            rpc_timeout_is_enforced,
            certificate_without_the_node_role_is_refused,
            refused_node_is_shut_out,
            a_dial_completing_after_a_refusal_is_dropped,
            a_dial_completing_after_its_peer_entry_was_replaced_is_dropped,
            nodes_of_two_cas_interoperate_during_a_roll_over,
            renewed_certificate_is_used_by_new_connections,
            another_wire_version_is_refused_clearly,
            requests_stay_within_the_connection_memory_budget,
            member_addresses_come_from_the_membership,
            configured_addresses_survive_a_rolled_back_membership,
        );
    };
}

/// Loopback, port 0: the only address tests bind.
pub fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Installs a tracing subscriber once (honours RUST_LOG; quiet by default).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_test_writer()
        .try_init();
}

/// A configuration with short timeouts so failure paths finish quickly in tests.
pub fn test_config(ca: &ClusterCa, id: NodeId, addr: SocketAddr) -> QuicConfig {
    let mut config = QuicConfig::new(id, addr, ca.node_tls(id).unwrap());
    config.rpc_timeout = Duration::from_secs(2);
    config.connect_timeout = Duration::from_millis(500);
    config.backoff_min = Duration::from_millis(10);
    config.backoff_max = Duration::from_millis(100);
    config
}

/// [`test_config`] with a 256 KiB memory budget per peer (`connection_receive_window`), frames
/// and stream windows of 256 KiB: two ~100 KB requests fit it at once, not three.
pub fn small_budget_config(ca: &ClusterCa, id: NodeId) -> QuicConfig {
    let mut config = test_config(ca, id, loopback());
    config.max_frame_size = 256 << 10;
    config.stream_receive_window = 256 << 10;
    config.connection_receive_window = 256 << 10;
    config
}

/// Binds one network per id on loopback port 0, then tells each about the others.
pub fn bind_cluster(
    ca: &ClusterCa,
    ids: &[NodeId],
    runtime: &Arc<dyn Runtime>,
) -> Vec<QuicNetwork> {
    let nets: Vec<QuicNetwork> = ids
        .iter()
        .map(|&id| QuicNetwork::bind(test_config(ca, id, loopback()), runtime.clone()).unwrap())
        .collect();
    for a in &nets {
        for b in &nets {
            if a.node_id() != b.node_id() {
                a.set_peer(b.node_id(), b.local_addr());
            }
        }
    }
    nets
}

/// Sends a bare request to a node of the default cluster and group, as the tests' raw RPCs do.
#[async_trait]
pub trait SendTo {
    /// `Network::send` of `request` in an envelope for `target`.
    async fn send_to(
        &self,
        target: NodeId,
        request: RpcRequest,
    ) -> Result<RpcResponse, NetworkError>;
}

#[async_trait]
impl<N: Network> SendTo for N {
    async fn send_to(
        &self,
        target: NodeId,
        request: RpcRequest,
    ) -> Result<RpcResponse, NetworkError> {
        self.send(envelope(target, request)).await
    }
}

/// `request` for `target` in the default cluster and group.
pub fn envelope(target: NodeId, request: RpcRequest) -> Envelope {
    Envelope::new(target, request)
}

/// Answers every request positively and counts calls. AppendEntries whose first entry carries
/// the payload `b"gated"` wait until the gate is opened; those dropped while they wait are
/// counted too ([`TestHandler::abandoned`]).
pub struct TestHandler {
    pub id: NodeId,
    pub calls: AtomicUsize,
    gate: async_lock::RwLock<()>,
    abandoned: AtomicUsize,
}

/// Counts a gated call in [`TestHandler::abandoned`] when dropped while still armed: its
/// future was dropped before the gate opened.
struct Abandoned<'a> {
    count: &'a AtomicUsize,
    armed: bool,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.count.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl TestHandler {
    pub fn new(id: NodeId) -> Arc<Self> {
        Arc::new(Self {
            id,
            calls: AtomicUsize::new(0),
            gate: async_lock::RwLock::new(()),
            abandoned: AtomicUsize::new(0),
        })
    }

    /// The gated calls whose futures were dropped (by the transport) before the gate opened.
    pub fn abandoned(&self) -> usize {
        self.abandoned.load(Ordering::SeqCst)
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Closes the gate until the returned guard is dropped.
    pub fn close_gate(&self) -> async_lock::RwLockWriteGuard<'_, ()> {
        self.gate.try_write().unwrap()
    }
}

#[async_trait]
impl RpcHandler for TestHandler {
    async fn handle_rpc(&self, request: Envelope) -> Result<RpcResponse, RpcError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(match request.request {
            RpcRequest::RequestVote(r) => RpcResponse::RequestVote(RequestVoteResponse {
                term: r.term,
                vote_granted: true,
                pre_vote: r.pre_vote,
            }),
            RpcRequest::AppendEntries(r) => {
                if r.entries.first().and_then(Entry::command).is_some_and(|c| c == "gated") {
                    let mut abandoned = Abandoned { count: &self.abandoned, armed: true };
                    let _open = self.gate.read().await;
                    abandoned.armed = false;
                }
                RpcResponse::AppendEntries(AppendEntriesResponse {
                    term: r.term,
                    match_index: Some(r.prev_log_id.index + r.entries.len() as u64),
                    conflict: None,
                    lease_promise_ms: 0,
                    quiesced: false,
                })
            }
            RpcRequest::TimeoutNow(r) => {
                RpcResponse::TimeoutNow(TimeoutNowResponse { term: r.term })
            }
            _ => return Err(RpcError::Shutdown),
        })
    }
}

/// A heartbeat from `leader`.
pub fn heartbeat(leader: NodeId) -> RpcRequest {
    RpcRequest::AppendEntries(AppendEntriesRequest {
        term: 1,
        leader_id: leader,
        prev_log_id: LogId::new(1, 7),
        entries: Vec::new(),
        leader_commit: 7,
        read_round: 0,
        quiesce: false,
    })
}

/// An AppendEntries from `leader` with `count` entries of `size` bytes, the first carrying
/// `first` (use `b"gated"` to hold it in the handler).
pub fn append(leader: NodeId, count: usize, size: usize, first: &'static [u8]) -> RpcRequest {
    let entries = (0..count)
        .map(|i| Entry {
            index: 8 + i as u64,
            term: 1,
            payload: EntryPayload::Command(if i == 0 && !first.is_empty() {
                Bytes::from_static(first)
            } else {
                Bytes::from(vec![i as u8; size])
            }),
        })
        .collect();
    RpcRequest::AppendEntries(AppendEntriesRequest {
        term: 1,
        leader_id: leader,
        prev_log_id: LogId::new(1, 7),
        entries,
        leader_commit: 7,
        read_round: 0,
        quiesce: false,
    })
}

/// A vote request from `candidate`.
pub fn vote(candidate: NodeId) -> RpcRequest {
    RpcRequest::RequestVote(RequestVoteRequest {
        term: 2,
        candidate_id: candidate,
        last_log_id: LogId::new(1, 7),
        pre_vote: false,
        leadership_transfer: false,
    })
}

/// Sleeps on the given quinn runtime.
pub async fn sleep(runtime: &Arc<dyn Runtime>, duration: Duration) {
    let mut timer = runtime.new_timer(Instant::now() + duration);
    std::future::poll_fn(|cx| timer.as_mut().poll(cx)).await
}

/// Runs `future` with a generous upper bound so that a bug fails the test instead of hanging it.
pub async fn bounded<F: Future>(runtime: &Arc<dyn Runtime>, what: &str, future: F) -> F::Output {
    let limit = Duration::from_secs(30);
    let future = std::pin::pin!(future);
    match futures::future::select(future, std::pin::pin!(sleep(runtime, limit))).await {
        futures::future::Either::Left((output, _)) => output,
        futures::future::Either::Right(_) => panic!("{what} did not finish within {limit:?}"),
    }
}

/// Retries `attempt` until it returns `Some`, sleeping `pause` between tries, for at most
/// `limit` (a generous bound, not a speed assertion).
pub async fn eventually<T, F, Fut>(
    runtime: &Arc<dyn Runtime>,
    what: &str,
    pause: Duration,
    mut attempt: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: gave up after 20 s");
        sleep(runtime, pause).await;
    }
}

/// Sends `requests` while `handler`'s gate is closed and checks that exactly `admitted` of
/// them reach it (the others wait for memory: none more arrives within 300 ms of the last
/// admitted one), then opens the gate and returns every result.
pub async fn only_some_reach_the_handler<T>(
    runtime: &Arc<dyn Runtime>,
    handler: &TestHandler,
    requests: impl IntoIterator<Item = impl Future<Output = T>>,
    admitted: usize,
) -> Vec<T> {
    use futures::StreamExt;
    let gate = handler.close_gate();
    let held: futures::stream::FuturesUnordered<_> = requests.into_iter().collect();
    let collect = held.collect::<Vec<_>>();
    let mut collect = std::pin::pin!(collect);
    let waiting = async {
        eventually(runtime, "requests in the handler", Duration::from_millis(10), || {
            let calls = handler.calls();
            async move { (calls >= admitted).then_some(()) }
        })
        .await;
        sleep(runtime, Duration::from_millis(300)).await;
    };
    let waiting = std::pin::pin!(waiting);
    let outcome = futures::future::select(collect.as_mut(), waiting).await;
    assert!(matches!(outcome, futures::future::Either::Right(_)), "requests finished while held");
    assert_eq!(handler.calls(), admitted, "a request was read beyond the memory budget");
    drop(gate);
    bounded(runtime, "held requests", collect).await
}

pub mod proxy;
pub mod scenarios;

/// A raw QUIC server endpoint with node `id`'s certificate, for a hostile peer that writes
/// whatever a test wants, on a tokio runtime of its own (one worker), so that it keeps writing
/// whatever the runtime of the node under test does. Shut the runtime down at the end.
pub fn hostile_peer(ca: &ClusterCa, id: NodeId) -> (tokio::runtime::Runtime, quinn::Endpoint) {
    let peer_rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let crypto = raft_quic::tls::quic_server_crypto(&ca.node_tls(id).unwrap()).unwrap();
    let endpoint = {
        let _runtime = peer_rt.enter();
        let socket = std::net::UdpSocket::bind(loopback()).unwrap();
        let server = quinn::ServerConfig::with_crypto(crypto);
        let runtime: Arc<dyn Runtime> = Arc::new(raft_quic::quinn::TokioRuntime);
        quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(server), socket, runtime)
            .unwrap()
    };
    (peer_rt, endpoint)
}
