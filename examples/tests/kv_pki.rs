//! The kv service's PKI end to end: a client certificate never speaks Raft (a rogue endpoint
//! with it cannot disturb a running cluster), the `kv ca` / `kv issue` / `kv trust` tooling,
//! and renewed certificates taken up by running nodes without a restart. Time limits here only
//! turn a hang into a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use examples::kv::cluster::{wait_for_leader, ClusterSpec, Launcher, ProcessCluster};
use examples::kv::tls::{self, CertRole};
use examples::kv::{ClientOptions, Connections, KvClient};
use raft_core::{AppendEntriesRequest, Entry, EntryPayload, LogId, NodeId, RpcRequest, Status};
use raft_quic::quinn;
use raft_quic::rustls::pki_types::pem::PemObject;
use raft_quic::rustls::pki_types::CertificateDer;
use raft_quic::{frame, NodeTls};

const PATIENCE: Duration = Duration::from_secs(30);

fn start(nodes: u64) -> ProcessCluster {
    let launcher = Launcher::program(env!("CARGO_BIN_EXE_kv-node"));
    // A long election timeout: no election happens by itself while the test watches the terms.
    let spec = ClusterSpec { nodes, election_timeout_ms: 1_000, ..ClusterSpec::default() };
    ProcessCluster::start(launcher, spec).unwrap()
}

async fn statuses(connections: &Connections, ids: &[NodeId]) -> Vec<Status> {
    let mut all = Vec::new();
    for &id in ids {
        all.push(connections.status(id).await.unwrap().status);
    }
    all
}

/// Connects to `addr` as a client with `config`, expecting node `id` to answer, and sends one
/// Raft request frame. Returns the response bytes, or the error at whichever step failed.
async fn raw_request(
    config: quinn::ClientConfig,
    addr: std::net::SocketAddr,
    id: NodeId,
    request: &RpcRequest,
) -> Result<Vec<u8>, String> {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let result = tokio::time::timeout(PATIENCE, async {
        let conn = endpoint
            .connect_with(config, addr, &raft_quic::node_dns_name(id))
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let envelope = raft_core::Envelope::new(id, request.clone());
        let frame = frame::encode_request(&envelope, 1 << 20).unwrap();
        send.write_all(&frame).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        recv.read_to_end(1 << 20).await.map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|_| Err("hung".into()));
    endpoint.close(0u32.into(), b"");
    result
}

/// The attack of issue 12: whoever holds a client certificate sends AppendEntries with a huge
/// term (and an entry of that term) to a member of a running cluster. It must be refused, and
/// no member's term or log may change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_cannot_speak_raft_to_a_running_cluster() {
    let mut cluster = start(3);
    let ids = cluster.ids();
    let connections = cluster.connections(ClientOptions::default()).unwrap();
    let leader = wait_for_leader(&connections, &ids, 3, PATIENCE).await.expect("a leader");
    KvClient::new(connections.clone()).put("k", "acknowledged").await.unwrap();
    let follower = *ids.iter().find(|&&id| id != leader.id).unwrap();
    let target = cluster.addrs(follower).unwrap().raft;
    let before = statuses(&connections, &ids).await;

    let huge_term = 1 << 40;
    for material in [cluster.plain_client_tls().unwrap(), cluster.client_tls().clone()] {
        // The sender it claims: the node id its certificate spells, if any, or an outsider.
        let claimed = raft_quic::node_id_of(&material.cert_chain[0]).unwrap_or(u64::MAX);
        let last = before.iter().find(|s| s.id == follower).unwrap().last_log_index;
        let attack = RpcRequest::AppendEntries(AppendEntriesRequest {
            term: huge_term,
            leader_id: claimed,
            prev_log_id: LogId::new(0, 0),
            entries: vec![Entry {
                index: 1,
                term: huge_term,
                payload: EntryPayload::Command(Bytes::from_static(b"injected")),
            }],
            leader_commit: last + 1,
            read_round: 0,
            quiesce: false,
        });
        let config = raft_quic::tls::quic_client_config(&material).unwrap();
        let answer = raw_request(config, target, follower, &attack).await;
        assert!(answer.is_err(), "the Raft port answered a client certificate: {answer:?}");
    }

    // Give a successful injection time to show, then compare.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = statuses(&connections, &ids).await;
    for (b, a) in before.iter().zip(&after) {
        assert!(a.current_term < huge_term, "node {} adopted the attacker's term", a.id);
        assert_eq!(a.current_term, b.current_term, "node {}'s term changed", a.id);
        assert_eq!(a.last_log_index, b.last_log_index, "node {}'s log changed", a.id);
    }
    let value = KvClient::new(connections.clone()).get("k").await.unwrap();
    assert_eq!(value, Some(Bytes::from_static(b"acknowledged")));
    connections.close().await;
    cluster.stop_all(Duration::from_secs(5)).unwrap();
}

fn kv(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_kv")).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text.trim().to_owned())
}

fn leaf(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).unwrap()
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Starts `kv-node` as node 1 with the certificates of `certs`, expecting it to refuse to
/// start; returns what it printed.
fn node_start_fails(certs: &str, data: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_kv-node"))
        .args(["--id", "1", "--data-dir", data, "--certs", certs])
        .args(["--node", "1=127.0.0.1:0,127.0.0.1:0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "kv-node started: {text}");
    text
}

/// `kv ca` / `kv issue` / `kv trust`: the CA keys stay in their own directory, keys are
/// private, certificates expire when asked, names are checked, bundles grow for a roll-over,
/// and a node refuses a key file others can read.
#[test]
fn the_certificate_tooling_keeps_the_ca_apart_and_keys_private() {
    let dir = tempfile::tempdir().unwrap();
    let path = |p: &str| dir.path().join(p).display().to_string();
    let (ca, node1, user) = (path("ca"), path("node1"), path("user"));
    assert!(kv(&["ca", &ca]).0);
    let (ok, text) = kv(&["ca", &ca]);
    assert!(!ok && text.contains("already exists"), "{text}");
    let (ok, text) = kv(&["issue", "node", "1", "--ca", &ca, "--out", &node1, "--days", "2"]);
    assert!(ok, "{text}");
    assert!(kv(&["issue", "admin", "alice", "--ca", &ca, "--out", &user]).0);
    let (ok, text) = kv(&["issue", "client", "Bad_Name", "--ca", &ca, "--out", &user]);
    assert!(!ok && text.contains("not a valid name"), "{text}");
    let (ok, text) = kv(&["issue", "node", "2", "--ca", &node1, "--out", &node1]);
    assert!(!ok, "issued from a certificate directory: {text}");
    // A CA directory inside a certificate directory, or around one, is refused too.
    for (ca_dir, certs_dir) in [(path("certs/ca"), path("certs")), (path("ca"), path("ca/certs"))] {
        let (ok, text) = kv(&["gen-certs", &ca_dir, &certs_dir, "1,2,3"]);
        assert!(!ok && text.contains("apart"), "gen-certs {ca_dir} {certs_dir}: {text}");
    }
    assert!(!Path::new(&path("certs/ca/node-ca.key")).exists(), "a CA key in the certificates");
    // An absurd lifetime is refused, not an overflow.
    let (ok, text) = kv(&["ca", &path("ca3"), "--days", &u64::MAX.to_string()]);
    assert!(!ok && text.contains("too long") && !text.contains("panicked"), "{text}");

    let files = |d: &str| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(files(&ca), ["client-ca.key", "client-ca.pem", "node-ca.key", "node-ca.pem"]);
    assert!(!Path::new(&path("certs")).exists(), "a refused gen-certs created directories");
    assert_eq!(files(&node1), ["client-ca.pem", "node-1.key", "node-1.pem", "node-ca.pem"]);
    assert_eq!(files(&user), ["admin-alice.key", "admin-alice.pem", "node-ca.pem"]);
    #[cfg(unix)]
    for key in [
        dir.path().join("ca/node-ca.key"),
        dir.path().join("ca/client-ca.key"),
        dir.path().join("node1/node-1.key"),
        dir.path().join("user/admin-alice.key"),
    ] {
        assert_eq!(mode(&key), 0o600, "{}", key.display());
    }

    // The node certificate lasts the 2 days asked for; the admin one the default year.
    let expiry = |p: &str| {
        raft_quic::expiry::not_after(&leaf(&dir.path().join(p)))
            .unwrap()
            .duration_since(SystemTime::now())
            .unwrap()
    };
    assert!(expiry("node1/node-1.pem") <= Duration::from_secs(2 * 86_400));
    assert!(expiry("node1/node-1.pem") > Duration::from_secs(2 * 86_400 - 600));
    assert!(expiry("user/admin-alice.pem") > Duration::from_secs(360 * 86_400));
    // The roles are in the names the client CA signed.
    let admin = leaf(&dir.path().join("user/admin-alice.pem"));
    assert!(raft_quic::node_id_of(&admin).is_err(), "an admin certificate names a node");
    assert_eq!(CertRole::parse("admin-alice.kv"), Some((CertRole::Admin, "alice")));

    // A roll-over starts by trusting a second CA next to the first.
    let ca2 = path("ca2");
    assert!(kv(&["ca", &ca2]).0);
    assert!(kv(&["trust", "--ca", &ca2, "--out", &node1]).0);
    let bundle = std::fs::read(dir.path().join("node1/node-ca.pem")).unwrap();
    assert_eq!(raft_quic::certs::parse_certificates(&bundle, "bundle").unwrap().len(), 2);

    // A node refuses a key file that others may read.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let key = dir.path().join("node1/node-1.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let text = node_start_fails(&node1, &path("data"));
        assert!(text.contains("chmod 600"), "{text}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    // A node refuses to start beside a CA key (whoever reads its files could mint
    // certificates), under the CA's file name or another.
    for name in ["client-ca.key", "old-backup.key"] {
        let copy = dir.path().join("node1").join(name);
        std::fs::copy(dir.path().join("ca/client-ca.key"), &copy).unwrap();
        let text = node_start_fails(&node1, &path("data"));
        assert!(text.contains("CA private key"), "beside {name}: {text}");
        std::fs::remove_file(copy).unwrap();
    }
}

/// The leaf certificate served at `addr` to a client with `config`, dialing node `id`.
async fn served(config: quinn::ClientConfig, addr: std::net::SocketAddr, id: NodeId) -> Vec<u8> {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = tokio::time::timeout(PATIENCE, async {
        endpoint.connect_with(config, addr, &raft_quic::node_dns_name(id)).unwrap().await.unwrap()
    })
    .await
    .unwrap();
    let chain = conn.peer_identity().unwrap().downcast::<Vec<CertificateDer<'static>>>().unwrap();
    conn.close(0u32.into(), b"");
    endpoint.close(0u32.into(), b"");
    chain[0].to_vec()
}

/// Polls both ports of node `id` until they serve the certificate in `file`.
async fn until_served(cluster: &ProcessCluster, id: NodeId, file: &Path, within: Duration) {
    let expected = leaf(file).to_vec();
    let addrs = cluster.addrs(id).unwrap();
    let admin = tls::client_config(cluster.client_tls()).unwrap();
    let peer = NodeTls::load(cluster.certs_dir(), 2).unwrap();
    let raft = raft_quic::tls::quic_client_config(&peer).unwrap();
    let deadline = Instant::now() + within;
    loop {
        let client_port = served(admin.clone(), addrs.client, id).await;
        let raft_port = served(raft.clone(), addrs.raft, id).await;
        if client_port == expected && raft_port == expected {
            return;
        }
        assert!(Instant::now() < deadline, "node {id} still serves its old certificate");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A node's renewed certificate is used by new connections on both its ports without a
/// restart: at once on SIGHUP, and within the poll interval without it. The cluster keeps
/// serving throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_certificates_are_taken_up_without_a_restart() {
    let mut cluster = start(3);
    let ids = cluster.ids();
    let connections = cluster.connections(ClientOptions::default()).unwrap();
    wait_for_leader(&connections, &ids, 3, PATIENCE).await.expect("a leader");
    let client = KvClient::new(connections.clone());
    client.put("before", "1").await.unwrap();
    let cert1 = cluster.certs_dir().join("node-1.pem");
    let original = leaf(&cert1).to_vec();

    tls::issue_node(&cluster.ca_dir(), &cluster.certs_dir(), 1, Duration::from_secs(86_400))
        .unwrap();
    assert_ne!(leaf(&cert1).to_vec(), original);
    let pid = cluster.pid(1).unwrap().to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    // Well within the poll interval: the signal did it.
    until_served(&cluster, 1, &cert1, tls::RELOAD_POLL / 2).await;
    client.put("after-sighup", "2").await.unwrap();

    // Without a signal: the node notices the changed files by itself.
    tls::issue_node(&cluster.ca_dir(), &cluster.certs_dir(), 1, Duration::from_secs(86_400))
        .unwrap();
    until_served(&cluster, 1, &cert1, PATIENCE).await;
    client.put("after-poll", "3").await.unwrap();
    assert_eq!(client.get("before").await.unwrap(), Some(Bytes::from_static(b"1")));
    assert!(cluster.is_running(1), "node 1 restarted or died");
    connections.close().await;
    cluster.stop_all(Duration::from_secs(5)).unwrap();
}

/// A node may open no stream towards a kv client: the client only sends requests, and a stream
/// a (rogue) node opened would never be read, yet could pin the client's flow-control credit
/// (clients used to grant 1024 streams).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_can_open_no_stream_towards_a_client() {
    use futures::FutureExt;
    let dir = tempfile::tempdir().unwrap();
    let (ca, certs) = (dir.path().join("ca"), dir.path().join("certs"));
    tls::gen_certs(&ca, &certs, [1]).unwrap();
    let node = NodeTls::load(&certs, 1).unwrap();
    let mut server = raft_quic::tls::rustls_server_config_with(
        &node,
        &raft_quic::certs::parse_certificates(
            &std::fs::read(certs.join("client-ca.pem")).unwrap(),
            "client CA",
        )
        .unwrap(),
        raft_quic::PeerRole::Any,
    )
    .unwrap();
    server.alpn_protocols = vec![examples::kv::protocol::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server).unwrap();
    let rogue = quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(std::sync::Arc::new(crypto)),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let client_tls =
        tls::load_client_tls(&certs, &CertRole::Client.file_stem(tls::DEFAULT_CLIENT)).unwrap();
    let client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let dial = client
        .connect_with(
            tls::client_config(&client_tls).unwrap(),
            rogue.local_addr().unwrap(),
            "node-1.raft",
        )
        .unwrap();
    let (accepted, dialed) = tokio::time::timeout(PATIENCE, async {
        let incoming = rogue.accept().await.unwrap();
        tokio::join!(incoming.accept().unwrap(), dial)
    })
    .await
    .unwrap();
    let (conn, _dialed) = (accepted.unwrap(), dialed.unwrap());
    assert!(conn.open_bi().now_or_never().is_none(), "the node opened a stream to a client");
    assert!(conn.open_uni().now_or_never().is_none(), "the node opened a uni stream");
    conn.close(0u32.into(), b"");
    rogue.close(0u32.into(), b"");
    client.close(0u32.into(), b"");
}

/// A SIGHUP while `kv-node` starts (an operator's reload racing a restart) asks for a reload:
/// the node installs its handler before anything else, so it survives signals from its first
/// log line on (it used to install it once fully started, and died of the signal's default
/// action before that).
#[cfg(unix)]
#[test]
fn a_sighup_during_startup_does_not_kill_the_node() {
    use std::io::BufRead;
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let (ca, certs) = (dir.path().join("ca"), dir.path().join("certs"));
    tls::gen_certs(&ca, &certs, [1]).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kv-node"))
        .args(["--id", "1", "--certs", certs.to_str().unwrap()])
        .args(["--data-dir", dir.path().join("data").to_str().unwrap()])
        .args(["--node", "1=127.0.0.1:0,127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let (lines, log) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let hangup = || assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    // From the first line on, signal without pause until the node is ready, and a few more.
    let first = log.recv_timeout(PATIENCE).expect("kv-node logs nothing");
    let deadline = Instant::now() + PATIENCE;
    let (mut ready, mut after_ready, mut sent) = (first.contains("kv-node ready"), 0, 0);
    while after_ready < 5 {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("kv-node died after {sent} SIGHUPs during its startup: {status}");
        }
        hangup();
        sent += 1;
        ready = ready || log.try_iter().any(|line| line.contains("kv-node ready"));
        after_ready += usize::from(ready);
        assert!(Instant::now() < deadline, "kv-node never got ready");
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(child.try_wait().unwrap().is_none(), "kv-node died after {sent} SIGHUPs");
    // The signals asked for reloads.
    let mut lines = std::iter::from_fn(|| {
        log.recv_timeout(deadline.saturating_duration_since(Instant::now())).ok()
    });
    assert!(lines.any(|line| line.contains("TLS files reloaded")), "no reload after SIGHUP");
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert!(child.wait().unwrap().success());
}
