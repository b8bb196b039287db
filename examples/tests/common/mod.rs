//! Helpers shared by the process tests of the kv service (each test crate uses some of them).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub(crate) mod fault;

use std::collections::hash_map::{Entry, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use examples::kv::cluster::ProcessCluster;
use raft_core::NodeId;
use tokio::net::UdpSocket;

/// Runs the `kv` command-line client against `cluster` (admin certificate, every node's client
/// address) with `args`; whether it succeeded, and its standard output and error, trimmed.
pub(crate) fn kv_cli(cluster: &ProcessCluster, args: &[&str]) -> (bool, String) {
    kv_cli_to(cluster, &cluster.ids(), args)
}

/// [`kv_cli`] knowing only the client addresses of `endpoints`.
pub(crate) fn kv_cli_to(
    cluster: &ProcessCluster,
    endpoints: &[NodeId],
    args: &[&str],
) -> (bool, String) {
    let endpoints: Vec<String> = cluster
        .client_endpoints()
        .iter()
        .filter(|(id, _)| endpoints.contains(id))
        .map(|(id, addr)| format!("{id}={addr}"))
        .collect();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kv"))
        .arg("--certs")
        .arg(cluster.dir().join("certs"))
        .arg("--endpoints")
        .arg(endpoints.join(","))
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text.trim().to_owned())
}

/// A UDP relay in front of `server`: it forwards every datagram sent to it on to `server`, each
/// sender through its own upstream socket (so the server sees distinct addresses), and of the
/// server's answers only those `answer` lets through. With `|_| false` every handshake relayed
/// is left half-open, as with spoofed source addresses.
pub(crate) async fn relay(server: SocketAddr, answer: fn(&[u8]) -> bool) -> SocketAddr {
    let relay = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = relay.local_addr().unwrap();
    tokio::spawn(async move {
        let mut upstream = HashMap::new();
        let mut buf = vec![0u8; 65536];
        while let Ok((len, from)) = relay.recv_from(&mut buf).await {
            let socket = match upstream.entry(from) {
                Entry::Occupied(socket) => socket.into_mut(),
                Entry::Vacant(slot) => {
                    let Ok(socket) = UdpSocket::bind("127.0.0.1:0").await else { continue };
                    let socket = Arc::new(socket);
                    tokio::spawn(answers(socket.clone(), relay.clone(), from, answer));
                    slot.insert(socket)
                }
            };
            let _ = socket.send_to(&buf[..len], server).await;
        }
    });
    addr
}

/// Passes the server's answers that `answer` lets through from `upstream` back to `client`.
async fn answers(
    upstream: Arc<UdpSocket>,
    relay: Arc<UdpSocket>,
    client: SocketAddr,
    answer: fn(&[u8]) -> bool,
) {
    let mut buf = vec![0u8; 65536];
    while let Ok(len) = upstream.recv(&mut buf).await {
        if answer(&buf[..len]) {
            let _ = relay.send_to(&buf[..len], client).await;
        }
    }
}

/// Whether `datagram` starts with a QUIC version 1 Retry packet (long header, type 3).
pub(crate) fn is_retry(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|b| b & 0xf0 == 0xf0)
}
