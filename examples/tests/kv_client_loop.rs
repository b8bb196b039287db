//! The kv client's attempt loop on a scripted transport in virtual time (no QUIC, no cluster):
//! what it does when no node can be reached.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use examples::kv::attempt::{ClientTransport, Routing};
use examples::kv::client::{ClientError, KvClient};
use examples::kv::connections::{CallError, ClientOptions};
use examples::kv::protocol::{ClientRequest, ClientResponse};
use futures::future::BoxFuture;
use futures::FutureExt;
use raft_core::NodeId;
use raft_mem::sim::SimRuntime;

/// Three nodes, all down: every attempt fails 1 ms after it starts, as a refused connection
/// (or a connection failure the QUIC client remembers) does.
struct AllDown {
    runtime: SimRuntime,
    routing: Routing,
    options: ClientOptions,
    sent: Arc<AtomicU64>,
}

impl ClientTransport for AllDown {
    fn send(
        &self,
        node: NodeId,
        _request: Arc<ClientRequest>,
    ) -> BoxFuture<'static, Result<ClientResponse, CallError>> {
        let (runtime, sent) = (self.runtime.clone(), self.sent.clone());
        async move {
            sent.fetch_add(1, Ordering::SeqCst);
            runtime.sleep_for(Duration::from_millis(1)).await;
            Err(CallError::Connect { node, reason: "connection refused".into() })
        }
        .boxed()
    }

    fn routing(&self) -> &Routing {
        &self.routing
    }

    fn options(&self) -> &ClientOptions {
        &self.options
    }
}

#[test]
fn a_client_backs_off_while_every_node_fails_at_once() {
    let runtime = SimRuntime::new();
    let options = ClientOptions { op_timeout: Duration::from_secs(1), ..ClientOptions::default() };
    let addrs: BTreeMap<NodeId, SocketAddr> =
        (1..=3).map(|id| (id, SocketAddr::from(([10, 0, 0, id as u8], 7000)))).collect();
    let sent = Arc::new(AtomicU64::new(0));
    let transport = AllDown {
        runtime: runtime.clone(),
        routing: Routing::new(addrs, options.suspect_for),
        options: options.clone(),
        sent: sent.clone(),
    };
    let client = KvClient::with_transport(transport, runtime.clone());
    let result = runtime
        .block_on(Duration::from_secs(10), async move { client.get("k").await }, || {})
        .expect("the read ends within its operation timeout");
    assert!(matches!(result, Err(ClientError::Timeout { maybe_applied: false, .. })), "{result:?}");
    // Without a pause, the loop tries a node every millisecond (a thousand attempts in the
    // operation's second); with the retry delay (20 ms) between rounds of suspect nodes, and
    // hedges every 25 ms, a few dozen.
    let attempts = sent.load(Ordering::SeqCst);
    assert!(attempts < 200, "{attempts} attempts in one second with every node down");
}
