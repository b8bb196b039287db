//! Logs that nobody can flood, on real `kv-node` processes: ordinary `kv` commands make no
//! node warn at all, and a flood of bad handshakes (to the client port and the Raft port) and
//! junk datagrams costs a node at most one warning per remote IP and port per interval (with
//! the count of those left out), while it keeps serving. Time limits here only turn a hang
//! into a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use examples::kv::cluster::{wait_for_leader, ClusterSpec, Launcher, ProcessCluster};
use examples::kv::tls::{client_config, gen_certs, load_client_tls};
use examples::kv::{ClientOptions, KvClient};
use raft_quic::quinn::{ClientConfig, Endpoint};
use raft_quic::{node_dns_name, NodeTls};

mod common;

const PATIENCE: Duration = Duration::from_secs(60);
/// The interval at which a node logs a remote's failed handshakes (raft-quic's `GateConfig`
/// default, which `kv-node` keeps).
const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Bad handshakes of each kind in the flood.
const HANDSHAKES: usize = 150;
/// Junk datagrams sent to each port.
const DATAGRAMS: usize = 5_000;

/// The lines of a node's log from line `from` on.
fn lines_since(path: &Path, from: usize) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().skip(from).map(str::to_owned).collect()
}

fn warnings(lines: &[String]) -> Vec<&String> {
    lines.iter().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect()
}

/// `count` handshakes with `config` to `addr` (as node `name_id`), 25 at a time, each from a
/// new endpoint (a new UDP port, the same IP). Returns how many failed.
async fn handshakes(config: ClientConfig, addr: SocketAddr, name_id: u64, count: usize) -> usize {
    let mut failed = 0;
    for _ in 0..count.div_ceil(25) {
        let tasks: Vec<_> = (0..25)
            .map(|_| {
                let config = config.clone();
                tokio::spawn(async move {
                    let endpoint = Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
                    let connecting =
                        endpoint.connect_with(config, addr, &node_dns_name(name_id)).unwrap();
                    let outcome = tokio::time::timeout(Duration::from_secs(5), async {
                        let connection = connecting.await.map_err(|e| e.to_string())?;
                        // TLS 1.3: the refusal may come right after the client's handshake.
                        let _ = connection.open_bi().await;
                        Err::<(), String>(connection.closed().await.to_string())
                    })
                    .await;
                    endpoint.close(0u32.into(), b"");
                    outcome.is_ok()
                })
            })
            .collect();
        for task in tasks {
            failed += usize::from(task.await.unwrap());
        }
    }
    failed
}

/// Sends `count` datagrams of pseudo-random bytes (some shaped like QUIC long headers) to
/// `addr`.
fn junk(addr: SocketAddr, count: usize) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut datagram = [0u8; 1200];
    for i in 0..count {
        for byte in &mut datagram {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *byte = state as u8;
        }
        if i % 2 == 0 {
            datagram[0] = 0xc0; // long header, Initial
            datagram[1..5].copy_from_slice(&1u32.to_be_bytes()); // QUIC v1
        }
        let len = 20 + (state as usize % (datagram.len() - 20));
        let _ = socket.send_to(&datagram[..len], addr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_and_junk_flood_costs_a_few_log_lines_and_no_service() {
    let launcher = Launcher::program(env!("CARGO_BIN_EXE_kv-node"));
    let mut cluster = ProcessCluster::start(launcher, ClusterSpec::default()).unwrap();
    let admin = cluster.connections(ClientOptions::default()).unwrap();
    let ids = cluster.ids();
    wait_for_leader(&admin, &ids, ids.len(), PATIENCE).await.expect("a leader");
    let client = KvClient::new(admin.clone());
    client.put("warm", "up").await.unwrap();
    let marks: Vec<usize> =
        ids.iter().map(|&id| lines_since(&cluster.log_path(id), 0).len()).collect();

    // Ordinary use: `kv` commands that talk to every node, then go away.
    let endpoints: Vec<String> =
        ids.iter().map(|&id| format!("{id}={}", cluster.addrs(id).unwrap().client)).collect();
    let certs = cluster.certs_dir().display().to_string();
    for i in 0..10 {
        for command in [
            vec!["put".to_owned(), format!("k{i}"), "v".into()],
            vec!["status".into()],
            vec!["get".into(), format!("k{i}")],
        ] {
            let mut args = vec![
                "--certs".to_owned(),
                certs.clone(),
                "--endpoints".into(),
                endpoints.join(","),
            ];
            args.extend(command);
            let output = tokio::task::spawn_blocking(move || {
                Command::new(env!("CARGO_BIN_EXE_kv")).args(&args).output().unwrap()
            })
            .await
            .unwrap();
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        }
    }
    // Clients that give up on nodes mid-handshake (another answered first, or they are done):
    // through a relay that keeps the nodes' answers from them, their handshakes cannot finish
    // before they close.
    let config = client_config(cluster.client_tls()).unwrap();
    for &id in &ids {
        let trap = common::relay(cluster.addrs(id).unwrap().client, common::is_retry).await;
        for _ in 0..5 {
            let endpoint = Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
            let connecting = endpoint.connect_with(config.clone(), trap, &node_dns_name(id));
            let finished = tokio::time::timeout(Duration::from_millis(300), connecting.unwrap());
            assert!(finished.await.is_err(), "a handshake finished through the trap");
            endpoint.close(0u32.into(), b"done");
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (&id, &mark) in ids.iter().zip(&marks) {
        let lines = lines_since(&cluster.log_path(id), mark);
        let warned = warnings(&lines);
        assert!(warned.is_empty(), "node {id} warned during ordinary use: {warned:#?}");
    }

    // The flood, at node 1, while a client keeps writing.
    let marks: Vec<usize> =
        ids.iter().map(|&id| lines_since(&cluster.log_path(id), 0).len()).collect();
    let node1 = cluster.addrs(1).unwrap();
    let other = tempfile::tempdir().unwrap();
    gen_certs(&other.path().join("ca"), &other.path().join("certs"), [1]).unwrap();
    let foreign = load_client_tls(&other.path().join("certs"), "admin-default").unwrap();
    // Trusts our nodes, but its certificate comes from another client CA.
    let stranger = NodeTls { trust_anchors: cluster.client_tls().trust_anchors.clone(), ..foreign };
    let raft_client = raft_quic::tls::quic_client_config(cluster.client_tls()).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (client, stop) = (KvClient::new(admin.clone()), stop.clone());
        tokio::spawn(async move {
            let mut written = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                client
                    .put(format!("w{written}"), "x")
                    .await
                    .map_err(|e| format!("write {written} failed during the flood: {e}"))?;
                written += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok::<u64, String>(written)
        })
    };
    let started = Instant::now();
    let junk_task = tokio::task::spawn_blocking(move || {
        junk(node1.client, DATAGRAMS);
        junk(node1.raft, DATAGRAMS);
    });
    let refused = [
        handshakes(client_config(&stranger).unwrap(), node1.client, 1, HANDSHAKES).await,
        handshakes(raft_client, node1.raft, 1, HANDSHAKES).await,
    ];
    junk_task.await.unwrap();
    let elapsed = started.elapsed();
    assert!(refused.iter().all(|&r| r == HANDSHAKES), "every bad handshake fails: {refused:?}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.await.unwrap().unwrap();
    assert!(written > 0, "no write went through during the flood");

    // Node 1 still serves, and it logged a few lines at most.
    client.put("after", "flood").await.unwrap();
    assert_eq!(client.get("after").await.unwrap(), Some(Bytes::from_static(b"flood")));
    assert!(admin.status(1).await.is_ok(), "node 1 answers its status");
    let intervals = elapsed.as_secs_f64() / LOG_INTERVAL.as_secs_f64();
    // One line per port (gate) and remote IP per interval begun.
    let bound = 2 * (intervals.ceil() as usize + 1);
    for (&id, &mark) in ids.iter().zip(&marks) {
        let lines = lines_since(&cluster.log_path(id), mark);
        let warned = warnings(&lines);
        println!(
            "node {id}: {} lines, {} warnings during a {elapsed:?} flood of {} handshakes and {} datagrams",
            lines.len(),
            warned.len(),
            2 * HANDSHAKES,
            2 * DATAGRAMS
        );
        let allowed = if id == 1 { bound } else { 0 };
        assert!(warned.len() <= allowed, "node {id}: more than {allowed} warnings: {warned:#?}");
        assert!(lines.len() <= allowed + 20, "node {id} logged {} lines: {lines:#?}", lines.len());
    }
    let node1_warnings = warnings(&lines_since(&cluster.log_path(1), marks[0]))
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    assert!(
        !node1_warnings.is_empty() && node1_warnings.iter().all(|l| l.contains("suppressed=")),
        "the failures are logged, with the count of those left out: {node1_warnings:#?}"
    );
    let _ = cluster.stop_all(Duration::from_secs(10));
}
