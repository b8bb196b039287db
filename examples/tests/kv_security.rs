//! Attacks on the client port of real `kv-node` processes: the nested request that overflowed a
//! node's stack, requests beyond a certificate's role, and answers that a client never reads.
//! Time limits here only turn a hang into a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use examples::kv::client::ClientError;
use examples::kv::cluster::{wait_for_leader, ClusterSpec, Launcher, ProcessCluster};
use examples::kv::tls::{
    client_config, issue_user, load_client_tls, CertRole, DEFAULT_CERT_LIFETIME,
};
use examples::kv::{ClientOptions, Connections, KvClient};
use raft_core::NodeId;
use raft_quic::quinn::{Connection, Endpoint, TransportConfig, VarInt};
use raft_quic::{node_dns_name, NodeTls};

mod common;

const PATIENCE: Duration = Duration::from_secs(30);

fn start(nodes: u64) -> ProcessCluster {
    let launcher = Launcher::program(env!("CARGO_BIN_EXE_kv-node"));
    let spec = ClusterSpec { nodes, ..ClusterSpec::default() };
    ProcessCluster::start(launcher, spec).unwrap()
}

/// A new plain client certificate, `client-<name>.kv`, issued by the cluster's client CA.
fn client_tls(cluster: &ProcessCluster, name: &str) -> NodeTls {
    let (ca, certs) = (cluster.ca_dir(), cluster.certs_dir());
    issue_user(&ca, &certs, CertRole::Client, name, DEFAULT_CERT_LIFETIME).unwrap();
    load_client_tls(&certs, &CertRole::Client.file_stem(name)).unwrap()
}

/// A raw QUIC connection to node `id`'s client port with `tls`, and quinn's `transport`.
async fn raw_connection(
    cluster: &ProcessCluster,
    id: NodeId,
    tls: &NodeTls,
    transport: Option<TransportConfig>,
) -> Result<(Endpoint, Connection), String> {
    let mut config = client_config(tls).unwrap();
    if let Some(transport) = transport {
        config.transport_config(Arc::new(transport));
    }
    let endpoint = Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let addr = cluster.addrs(id).unwrap().client;
    let connecting = endpoint.connect_with(config, addr, &node_dns_name(id)).unwrap();
    let connection = connecting.await.map_err(|e| e.to_string())?;
    Ok((endpoint, connection))
}

/// Sends `body` as one request frame and returns what comes back (bytes, or why nothing).
async fn send_raw(connection: &Connection, body: &[u8]) -> Result<Vec<u8>, String> {
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    send.write_all(&frame).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    recv.read_to_end(4 << 20).await.map_err(|e| e.to_string())
}

/// Every node answers a status request, and the cluster takes a write and reads it back.
async fn every_node_serves(cluster: &ProcessCluster, connections: &Connections, key: &str) {
    for id in cluster.ids() {
        let status = tokio::time::timeout(PATIENCE, async {
            loop {
                if let Ok(status) = connections.status(id).await {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        status.await.unwrap_or_else(|_| panic!("node {id} stopped serving"));
    }
    let client = KvClient::new(connections.clone());
    client.put(key.to_owned(), "v").await.unwrap();
    assert_eq!(client.get(key.to_owned()).await.unwrap(), Some(Bytes::from_static(b"v")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deeply_nested_request_crashes_no_node() {
    let mut cluster = start(3);
    let connections = cluster.connections(ClientOptions::default()).unwrap();
    wait_for_leader(&connections, &cluster.ids(), 3, PATIENCE).await.expect("a leader");
    // The ~400 KB request of the issue: `Batch(Batch(...(Status)))`, 200,000 levels deep in
    // the encoding of `raft-kv/2` (variant 3 = Batch, one item), sent to every node.
    let mut nested = [3u8, 1].repeat(200_000);
    nested.push(1);
    for id in cluster.ids() {
        let (endpoint, connection) =
            raw_connection(&cluster, id, cluster.client_tls(), None).await.unwrap();
        let answer = tokio::time::timeout(PATIENCE, send_raw(&connection, &nested)).await;
        // Whatever the answer (a refusal), the node must live on.
        let _ = answer.expect("an answer or a failure, not a hang");
        endpoint.close(0u32.into(), b"done");
    }
    every_node_serves(&cluster, &connections, "after-nesting").await;
    for id in cluster.ids() {
        assert!(cluster.is_running(id), "node {id} died");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn administration_needs_an_admin_certificate() {
    let cluster = start(3);
    let admin = cluster.connections(ClientOptions::default()).unwrap();
    let leader = wait_for_leader(&admin, &cluster.ids(), 3, PATIENCE).await.expect("a leader");

    // A plain client reads and writes keys...
    let alice_tls = client_tls(&cluster, "alice");
    let options = ClientOptions { op_timeout: Duration::from_secs(5), ..ClientOptions::default() };
    let alice = Connections::new(cluster.client_endpoints(), &alice_tls, options.clone()).unwrap();
    let client = KvClient::new(alice.clone());
    client.put("k", "1").await.unwrap();
    assert!(client.cas("k", Some(Bytes::from_static(b"1")), None).await.unwrap());
    assert_eq!(client.get("k").await.unwrap(), None);
    // ...and nothing else.
    let forbidden = |r: Result<_, ClientError>| matches!(r, Err(ClientError::Forbidden(_)));
    let follower = *cluster.ids().iter().find(|&&id| id != leader.id).unwrap();
    assert!(forbidden(alice.status(leader.id).await.map(|_| ())));
    assert!(forbidden(alice.member_list().await.map(|_| ())));
    assert!(forbidden(alice.member_remove(follower).await.map(|_| ())));
    assert!(forbidden(alice.transfer_leader(follower).await.map(|_| ())));
    let outsider: SocketAddr = "127.0.0.1:9".parse().unwrap();
    assert!(forbidden(alice.member_add(9, outsider, outsider).await.map(|_| ())));
    assert!(forbidden(alice.partition(leader.id, vec![follower]).await));
    // The membership did not change (the leader may have, on its own: the answers above say
    // that no transfer was made).
    let list = admin.member_list().await.unwrap();
    let voters: Vec<NodeId> = list.members.iter().filter(|m| m.voter).map(|m| m.id).collect();
    assert_eq!(voters, cluster.ids());

    // A node's certificate is not a client: the connection is closed before any request.
    let node_tls = NodeTls::load(cluster.certs_dir(), follower).unwrap();
    let (_endpoint, connection) =
        raw_connection(&cluster, leader.id, &node_tls, None).await.unwrap();
    let status =
        examples::kv::protocol::encode(&examples::kv::protocol::ClientRequest::Status).unwrap();
    let answer = tokio::time::timeout(PATIENCE, send_raw(&connection, &status[4..])).await;
    assert!(answer.unwrap().is_err(), "a node certificate got an answer");

    // The administrator may.
    admin.transfer_leader(follower).await.unwrap();
    alice.close().await;
    admin.close().await;
}

/// Resident memory of process `pid`, in bytes (Linux).
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// Another plain client, `client-bob.kv`.
fn bob(cluster: &ProcessCluster) -> KvClient {
    let tls = client_tls(cluster, "bob");
    KvClient::new(
        Connections::new(cluster.client_endpoints(), &tls, ClientOptions::default()).unwrap(),
    )
}

/// The peak resident memory of process `pid` while `bob` writes 20 times (and reads the key
/// `big`, which holds `big` bytes, if given), each within the test's patience.
async fn peak_rss_while_served(pid: u32, bob: &KvClient, big: Option<usize>) -> u64 {
    let mut peak = 0;
    for round in 0..20 {
        if let Some(len) = big {
            let value = tokio::time::timeout(PATIENCE, bob.get("big")).await.unwrap().unwrap();
            assert_eq!(value.map(|v| v.len()), Some(len), "round {round}");
        }
        let put = bob.put(format!("bob-{round}"), "x");
        tokio::time::timeout(PATIENCE, put).await.unwrap().unwrap();
        peak = peak.max(rss_bytes(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    peak
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_answers_do_not_exhaust_a_node() {
    const VALUE: usize = 500 << 10;
    const CONNECTIONS: usize = 4;
    const STREAMS: usize = 250;
    let cluster = start(3);
    let admin = cluster.connections(ClientOptions::default()).unwrap();
    let leader = wait_for_leader(&admin, &cluster.ids(), 3, PATIENCE).await.expect("a leader");
    let client = KvClient::new(admin.clone());
    client.put("big", Bytes::from(vec![7u8; VALUE])).await.unwrap();
    let pid = cluster.pid(leader.id).unwrap();
    let before = rss_bytes(pid);

    // Clients that open many streams of gets of the large value and never read the answers,
    // granting little flow-control credit: 4 connections x 250 streams x 500 KiB = 500 MB of
    // answers if the node held them all.
    let mallory_tls = client_tls(&cluster, "mallory");
    let get = examples::kv::protocol::encode(&examples::kv::protocol::ClientRequest::Command(
        examples::kv::command::Command {
            session: None,
            op: examples::kv::command::Op::Get { key: Bytes::from_static(b"big") },
        },
    ))
    .unwrap();
    let (mut held, mut endpoints) = (Vec::new(), Vec::new());
    for _ in 0..CONNECTIONS {
        let mut transport = TransportConfig::default();
        transport
            .stream_receive_window(VarInt::from_u32(1024))
            .receive_window(VarInt::from_u32(64 << 10));
        let (endpoint, connection) =
            raw_connection(&cluster, leader.id, &mallory_tls, Some(transport)).await.unwrap();
        for _ in 0..STREAMS {
            let (mut send, recv) = connection.open_bi().await.unwrap();
            send.write_all(&get).await.unwrap();
            send.finish().unwrap();
            held.push((send, recv));
        }
        endpoints.push((endpoint, connection));
    }
    // While the answers are withheld, the node's memory stays bounded and others are served.
    let bob = bob(&cluster);
    let peak = peak_rss_while_served(pid, &bob, Some(VALUE)).await;
    let grown = peak.saturating_sub(before);
    println!("leader RSS before {before} B, peak {peak} B, grown {grown} B");
    assert!(grown < 200 << 20, "the node held {grown} bytes for unread answers");
    drop(held);
    drop(endpoints);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_answers_only_to_the_certificate_that_opened_it() {
    use examples::kv::command::{Command, KvError, Op, OpResult, SessionRef};
    use examples::kv::protocol::{ClientRequest, ClientResponse};

    let cluster = start(3);
    let admin = cluster.connections(ClientOptions::default()).unwrap();
    let leader = wait_for_leader(&admin, &cluster.ids(), 3, PATIENCE).await.expect("a leader").id;
    let connect = |name: &str| {
        let tls = client_tls(&cluster, name);
        Connections::new(cluster.client_endpoints(), &tls, ClientOptions::default()).unwrap()
    };
    let (alice, mallory) = (connect("alice"), connect("mallory"));
    let call = |connections: &Connections, command: Command| {
        let connections = connections.clone();
        async move {
            let request = ClientRequest::Command(command);
            match connections.call_within(leader, &request, PATIENCE).await.unwrap() {
                ClientResponse::Applied(answer) => answer,
                other => panic!("unexpected {other:?}"),
            }
        }
    };
    let put = |id, incarnation, seq, ack_below, value: &'static str| Command {
        session: Some(SessionRef { id, incarnation, seq, ack_below }),
        op: Op::Put { key: Bytes::from_static(b"k"), value: Bytes::from_static(value.as_bytes()) },
    };
    // Alice opens a session; Mallory learns its id (here: is told it).
    let id = 0x5eed;
    let register = Command { session: None, op: Op::Register { id } };
    let Ok(OpResult::Registered { id: registered, incarnation }) =
        call(&alice, register.clone()).await
    else {
        panic!("alice could not register");
    };
    assert_eq!(registered, id);
    // Mallory can neither take the id over, nor consume Alice's next sequence number, nor
    // acknowledge her answers away.
    assert_eq!(call(&mallory, register).await, Err(KvError::SessionTaken));
    assert_eq!(
        call(&mallory, put(id, incarnation, 0, 0, "mallory")).await,
        Err(KvError::UnknownSession)
    );
    assert_eq!(
        call(&mallory, put(id, incarnation, 9, 9, "mallory")).await,
        Err(KvError::UnknownSession)
    );
    // Alice's write with sequence number 0 is applied (not answered from a cached answer of
    // Mallory's), and her answers are still there for her retries.
    assert_eq!(call(&alice, put(id, incarnation, 0, 0, "alice")).await, Ok(OpResult::Written));
    assert_eq!(call(&alice, put(id, incarnation, 1, 0, "alice-1")).await, Ok(OpResult::Written));
    assert_eq!(call(&alice, put(id, incarnation, 0, 0, "alice")).await, Ok(OpResult::Written));
    let reader = KvClient::new(admin.clone());
    assert_eq!(reader.get("k").await.unwrap(), Some(Bytes::from_static(b"alice-1")));
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_requests_do_not_exhaust_a_node() {
    const CONNECTIONS: usize = 4;
    const STREAMS: usize = 64;
    const BODY: usize = 1 << 20;
    let cluster = start(3);
    let admin = cluster.connections(ClientOptions::default()).unwrap();
    let leader = wait_for_leader(&admin, &cluster.ids(), 3, PATIENCE).await.expect("a leader");
    let pid = cluster.pid(leader.id).unwrap();
    let before = rss_bytes(pid);
    // Streams that announce and send a 1 MiB request but never finish it: 4 x 64 x 1 MiB =
    // 256 MiB if the node buffered them all.
    let mallory_tls = client_tls(&cluster, "mallory");
    let mut frame = (BODY as u32).to_be_bytes().to_vec();
    frame.resize(4 + BODY, 0);
    let frame = Bytes::from(frame);
    let (mut held, mut endpoints) = (Vec::new(), Vec::new());
    for _ in 0..CONNECTIONS {
        let (endpoint, connection) =
            raw_connection(&cluster, leader.id, &mallory_tls, None).await.unwrap();
        for _ in 0..STREAMS {
            let (mut send, recv) = connection.open_bi().await.unwrap();
            let frame = frame.clone();
            // Writes block once the node grants no more credit: do not wait for them.
            let writer = tokio::spawn(async move {
                let _ = send.write_all(&frame).await;
                send
            });
            held.push((writer, recv));
        }
        endpoints.push((endpoint, connection));
    }
    let peak = peak_rss_while_served(pid, &bob(&cluster), None).await;
    let grown = peak.saturating_sub(before);
    println!("leader RSS before {before} B, peak {peak} B, grown {grown} B");
    assert!(grown < 150 << 20, "the node held {grown} bytes of unfinished requests");
    drop((held, endpoints));
}

/// How long a new client may take to connect after a half-open handshake flood.
const CONNECT_AFTER_FLOOD: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_handshake_flood_does_not_lock_clients_out() {
    let cluster = start(1);
    let admin = cluster.connections(ClientOptions::default()).unwrap();
    wait_for_leader(&admin, &[1], 1, PATIENCE).await.expect("a leader");
    let relay = common::relay(cluster.addrs(1).unwrap().client, |_| false).await;
    // More half-open handshakes than the node has client slots (256 by default).
    let config = client_config(cluster.client_tls()).unwrap();
    let mut flood = Vec::new();
    for _ in 0..400 {
        let endpoint = Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let connecting = endpoint.connect_with(config.clone(), relay, &node_dns_name(1)).unwrap();
        flood.push((endpoint, tokio::spawn(connecting)));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A new client still gets in, within the stated bound.
    let started = std::time::Instant::now();
    let connected = tokio::time::timeout(CONNECT_AFTER_FLOOD, async {
        loop {
            match raw_connection(&cluster, 1, cluster.client_tls(), None).await {
                Ok(connection) => return connection,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await;
    assert!(
        connected.is_ok(),
        "no client could connect within {CONNECT_AFTER_FLOOD:?} of the flood"
    );
    println!("a new client connected {:?} after the flood", started.elapsed());
    let (_endpoint, connection) = connected.unwrap();
    let status =
        examples::kv::protocol::encode(&examples::kv::protocol::ClientRequest::Status).unwrap();
    assert!(send_raw(&connection, &status[4..]).await.is_ok());
    drop(flood);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_is_refused_for_good_even_after_a_restart() {
    use examples::kv::cluster::{read_log, wait_applied};
    const REFUSED: &str = "refusing removed node from now on";

    let launcher = Launcher::program(env!("CARGO_BIN_EXE_kv-node"));
    // Frequent snapshots: the restarted node restores the tombstone from one.
    let spec = ClusterSpec { nodes: 3, snapshot_entries: 20, ..ClusterSpec::default() };
    let mut cluster = ProcessCluster::start(launcher, spec).unwrap();
    let admin = cluster.connections(ClientOptions::default()).unwrap();
    let leader = wait_for_leader(&admin, &cluster.ids(), 3, PATIENCE).await.expect("a leader").id;
    let removed = *cluster.ids().iter().find(|&&id| id != leader).unwrap();
    let kept: Vec<NodeId> = cluster.ids().into_iter().filter(|&id| id != removed).collect();
    admin.member_remove(removed).await.unwrap();
    // The removed node keeps running with its still-valid certificate.
    assert!(cluster.is_running(removed));
    let client = KvClient::new(admin.clone());
    for i in 0..60 {
        client.put(format!("k{i}"), "v").await.unwrap();
    }
    let refusals = |cluster: &ProcessCluster, id: NodeId| {
        read_log(&cluster.log_path(id)).lines().filter(|l| l.contains(REFUSED)).count()
    };
    for &id in &kept {
        assert_eq!(refusals(&cluster, id), 1, "node {id} refuses node {removed}");
    }
    // A member restarts: it refuses the removed node again, from its restored state, before
    // it serves Raft traffic.
    let restarted = *kept.iter().find(|&&id| id != leader).unwrap();
    cluster.kill(restarted).unwrap();
    cluster.spawn(restarted).unwrap();
    let commit = admin.status(leader).await.unwrap().status.commit_index;
    assert!(
        wait_applied(&admin, restarted, commit, PATIENCE).await,
        "the restarted node caught up"
    );
    assert_eq!(refusals(&cluster, restarted), 2, "the restarted node refuses node {removed} again");
    let log = read_log(&cluster.log_path(restarted));
    assert!(log.contains("restored from the latest snapshot"), "no snapshot restored: {log}");
    // And the removed id cannot come back.
    let back =
        admin.member_add(removed, "127.0.0.1:9".parse().unwrap(), "127.0.0.1:9".parse().unwrap());
    assert!(matches!(back.await, Err(ClientError::Member(_))));
}

/// Calls `status(id)` until it succeeds; `None` if it never did within the test's patience.
async fn status_within_patience(connections: &Connections, id: NodeId) -> Option<()> {
    let status = async {
        while connections.status(id).await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(PATIENCE, status).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_certificate_cannot_take_every_connection_slot() {
    use examples::kv::port::connections_per_principal;
    const SLOTS: usize = 256; // `--max-client-connections`' default
    let cluster = start(1);
    let admin = cluster.connections(ClientOptions::default()).unwrap();
    wait_for_leader(&admin, &cluster.ids(), 1, PATIENCE).await.expect("a leader");
    admin.close().await;
    // Mallory, a plain client, opens as many connections as the node has slots and keeps
    // them (quinn's keep-alives), sending nothing.
    let mallory_tls = client_tls(&cluster, "mallory");
    let mut held = Vec::new();
    for _ in 0..SLOTS {
        held.push(raw_connection(&cluster, 1, &mallory_tls, None).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let kept = held.iter().filter(|(_, c)| c.close_reason().is_none()).count();
    assert!(kept <= connections_per_principal(SLOTS), "mallory holds {kept} connections");
    // A new administrator and another client still connect and are served.
    let admin = cluster.connections(ClientOptions::default()).unwrap();
    assert!(status_within_patience(&admin, 1).await.is_some(), "the admin was locked out");
    let bob = bob(&cluster);
    tokio::time::timeout(PATIENCE, bob.put("bob", "1")).await.unwrap().unwrap();
    drop(held);
    admin.close().await;
}

/// The peak resident memory of process `pid` over `samples` samples 100 ms apart.
async fn peak_rss_over(pid: u32, samples: usize) -> u64 {
    let mut peak = 0;
    for _ in 0..samples {
        peak = peak.max(rss_bytes(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    peak
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_batches_with_large_answers_in_memory_do_not_exhaust_a_node() {
    use examples::kv::command::{Command, Op};
    use examples::kv::protocol::{ClientRequest, CommandBatch, MAX_BATCH_LEN};
    const CONNECTIONS: usize = 8;
    const STREAMS: usize = 1024;
    let cluster = start(3);
    let admin = cluster.connections(ClientOptions::default()).unwrap();
    let leader = wait_for_leader(&admin, &cluster.ids(), 3, PATIENCE).await.expect("a leader");
    let pid = cluster.pid(leader.id).unwrap();
    let before = rss_bytes(pid);
    // 8 x 1,024 streams, each a 3 KB batch of 1,024 reads of the empty key (160 KB of
    // commands once decoded, 48 KB of answers once built), whose answers are never read.
    let get = Command { session: None, op: Op::Get { key: Bytes::new() } };
    let batch = CommandBatch::new(vec![get; MAX_BATCH_LEN]).unwrap();
    let request = examples::kv::protocol::encode(&ClientRequest::Batch(batch)).unwrap();
    let request = Bytes::from(request);
    let mallory_tls = client_tls(&cluster, "mallory");
    let (mut held, mut endpoints) = (Vec::new(), Vec::new());
    for _ in 0..CONNECTIONS {
        let mut transport = TransportConfig::default();
        transport.stream_receive_window(VarInt::from_u32(1024));
        let (endpoint, connection) =
            raw_connection(&cluster, leader.id, &mallory_tls, Some(transport)).await.unwrap();
        for _ in 0..STREAMS {
            let Ok((mut send, recv)) = connection.open_bi().await else { break };
            let request = request.clone();
            held.push(tokio::spawn(async move {
                let _ = send.write_all(&request).await;
                let _ = send.finish();
                (send, recv)
            }));
        }
        endpoints.push((endpoint, connection));
    }
    let peak = peak_rss_over(pid, 50).await;
    let grown = peak.saturating_sub(before);
    println!("leader RSS before {before} B, peak {peak} B, grown {grown} B");
    // Others are still served.
    let bob = bob(&cluster);
    tokio::time::timeout(PATIENCE, bob.put("bob", "1")).await.unwrap().unwrap();
    assert!(grown < 200 << 20, "the node held {grown} bytes for 3 KB batches");
    drop((held, endpoints));
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_requests_are_bounded_per_node_not_only_per_connection() {
    const CERTIFICATES: usize = 4;
    const CONNECTIONS_EACH: usize = 16;
    const STREAMS: usize = 8;
    const BODY: usize = 2 << 20;
    let cluster = start(3);
    let admin = cluster.connections(ClientOptions::default()).unwrap();
    let leader = wait_for_leader(&admin, &cluster.ids(), 3, PATIENCE).await.expect("a leader");
    let pid = cluster.pid(leader.id).unwrap();
    let before = rss_bytes(pid);
    // 64 connections, each with streams that send a whole 2 MiB request but never finish it:
    // the node reads some (within its request budgets) and leaves the others unread, which
    // the clients may send only as far as the receive windows allow.
    let mut frame = (BODY as u32).to_be_bytes().to_vec();
    frame.resize(4 + BODY, 0);
    let frame = Bytes::from(frame);
    let (mut held, mut endpoints) = (Vec::new(), Vec::new());
    for c in 0..CERTIFICATES {
        let tls = client_tls(&cluster, &format!("mallory-{c}"));
        for _ in 0..CONNECTIONS_EACH {
            let (endpoint, connection) =
                raw_connection(&cluster, leader.id, &tls, None).await.unwrap();
            for _ in 0..STREAMS {
                let (mut send, recv) = connection.open_bi().await.unwrap();
                let frame = frame.clone();
                held.push(tokio::spawn(async move {
                    let _ = send.write_all(&frame).await;
                    (send, recv)
                }));
            }
            endpoints.push((endpoint, connection));
        }
    }
    let peak = peak_rss_over(pid, 50).await;
    let grown = peak.saturating_sub(before);
    println!("leader RSS before {before} B, peak {peak} B, grown {grown} B");
    assert!(grown < 200 << 20, "the node held {grown} bytes of unread requests");
    drop((held, endpoints));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_whose_values_exceed_a_frame_together_are_answered() {
    use examples::kv::command::{Command, Op, OpResult};
    use examples::kv::protocol::{ClientRequest, ClientResponse, CommandBatch};
    const VALUE: usize = 500 << 10;
    let cluster = start(1);
    let connections = cluster.connections(ClientOptions::default()).unwrap();
    wait_for_leader(&connections, &cluster.ids(), 1, PATIENCE).await.expect("a leader");
    let client = KvClient::new(connections.clone());
    client.put("big", Bytes::from(vec![7u8; VALUE])).await.unwrap();
    // One batch of five reads of a 500 KiB value: 2.5 MiB of answers, more than a frame.
    let get = Command { session: None, op: Op::Get { key: Bytes::from_static(b"big") } };
    let batch = ClientRequest::Batch(CommandBatch::new(vec![get; 5]).unwrap());
    let answer = connections.call_within(1, &batch, PATIENCE).await;
    let Ok(ClientResponse::Batch(answers)) = answer else {
        panic!("the batch was not answered: {answer:?}")
    };
    assert_eq!(answers.len(), 5);
    let values = answers
        .iter()
        .filter(|a| {
            matches!(a, examples::kv::protocol::CommandAnswer::Applied(Ok(OpResult::Value(Some(v))))
                if v.len() == VALUE)
        })
        .count();
    assert!(values >= 1, "{answers:?}");
    // Concurrent reads that the client batches together all get the value.
    let clients: Vec<KvClient> = (0..8).map(|_| KvClient::new(connections.clone())).collect();
    let reads = futures::future::join_all(clients.iter().map(|c| c.get("big")));
    for value in tokio::time::timeout(PATIENCE, reads).await.unwrap() {
        assert_eq!(value.unwrap().map(|v| v.len()), Some(VALUE));
    }
    connections.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_cannot_rewrite_a_known_address() {
    use examples::kv::protocol::Member;
    let cluster = start(1);
    let connections = cluster.connections(ClientOptions::default()).unwrap();
    wait_for_leader(&connections, &cluster.ids(), 1, PATIENCE).await.expect("a leader");
    // What a node with a leaked key could answer: "node 1 is at <somewhere else>".
    let elsewhere: SocketAddr = "127.0.0.1:9".parse().unwrap();
    connections.learn(&Member { id: 1, client_addr: elsewhere });
    connections.learn(&Member { id: 7, client_addr: elsewhere });
    assert!(connections.status(1).await.is_ok(), "the client was steered away from node 1");
    assert_eq!(connections.nodes(), vec![1, 7], "a new member is still learned");
    connections.close().await;
}
