//! What the `kv` client says when it fails, against real `kv-node` processes: TLS failures fail
//! at once, naming the cause and the file to check (no retrying until `--timeout`); "may have
//! been applied" only for a write whose outcome is unknown; `kv status` shows an unreachable
//! node in its row; each kind of failure has its documented exit status. Time limits here only
//! turn a hang into a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use examples::kv::client::{exit, ClientError};
use examples::kv::cluster::{
    free_udp_ports, wait_for_leader, ClusterSpec, Launcher, ProcessCluster,
};
use examples::kv::connections::{tls_failure, TlsFailure};
use examples::kv::protocol::ALPN;
use examples::kv::tls::CLIENT_CA;
use examples::kv::{ClientOptions, Connections, KvClient};
use raft_quic::quinn::{self, crypto::rustls::QuicClientConfig, Endpoint};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

const PATIENCE: Duration = Duration::from_secs(60);
/// Longer than any test here may take: a command that retried until it would never finish.
const LONG_TIMEOUT: &str = "600";

/// What a `kv` command did.
struct Outcome {
    status: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {:?}\nstdout:\n{}\nstderr:\n{}", self.status, self.stdout, self.stderr)
    }
}

/// Runs `kv ARGS` to completion.
async fn kv(args: Vec<String>) -> Outcome {
    let run = move || Command::new(env!("CARGO_BIN_EXE_kv")).args(&args).output().unwrap();
    let output = tokio::task::spawn_blocking(run).await.unwrap();
    Outcome {
        status: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The arguments that make `kv` use `certs` (and `user`, if given) with `endpoints`, then
/// `command`.
fn args(
    certs: &Path,
    user: Option<&str>,
    endpoints: &[(u64, SocketAddr)],
    command: &str,
) -> Vec<String> {
    let list: Vec<String> = endpoints.iter().map(|(id, addr)| format!("{id}={addr}")).collect();
    let mut args = vec![
        "--certs".to_owned(),
        certs.display().to_string(),
        "--endpoints".to_owned(),
        list.join(","),
        "--timeout".to_owned(),
        LONG_TIMEOUT.to_owned(),
    ];
    if let Some(user) = user {
        args.extend(["--user".to_owned(), user.to_owned()]);
    }
    args.extend(command.split_whitespace().map(str::to_owned));
    args
}

/// Writes `<stem>.pem` and `<stem>.key` into `dir`: a certificate naming `dns_name`, signed by
/// the cluster's client CA (read from `ca_dir`), valid from January 1st of `from` to January
/// 1st of `until`.
fn client_certificate(
    ca_dir: &Path,
    dir: &Path,
    stem: &str,
    dns_name: &str,
    (from, until): (i32, i32),
) {
    let ca_key = std::fs::read_to_string(ca_dir.join(CLIENT_CA.key_file())).unwrap();
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(DnType::CommonName, CLIENT_CA.common_name);
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let issuer = Issuer::new(ca, KeyPair::from_pem(&ca_key).unwrap());
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![dns_name.to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, dns_name);
    params.not_before = rcgen::date_time_ymd(from, 1, 1);
    params.not_after = rcgen::date_time_ymd(until, 1, 1);
    params.use_authority_key_identifier_extension = true;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join(format!("{stem}.pem")), cert.pem()).unwrap();
    let key_file = dir.join(format!("{stem}.key"));
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let private = std::os::unix::fs::PermissionsExt::from_mode(0o600);
    std::fs::set_permissions(&key_file, private).unwrap();
}

/// Asserts that `outcome` is a TLS failure (exit status 5) whose message holds every one of
/// `words`.
fn assert_tls_failure(what: &str, outcome: &Outcome, words: &[&str]) {
    assert_eq!(outcome.status, Some(i32::from(exit::TLS)), "{what}: {outcome:?}");
    for word in words {
        assert!(outcome.stderr.contains(word), "{what}: no `{word}` in the message: {outcome:?}");
    }
    assert!(!outcome.stderr.contains("timed out"), "{what}: {outcome:?}");
}

/// Every TLS failure of a client fails at once (a 600 s `--timeout` would outlast the test),
/// with the cause and the file to check: certificates from another cluster, a client
/// certificate from another client CA, an address that belongs to another node, an expired
/// client certificate, a certificate without a client role, and no client certificate at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_failures_fail_at_once_and_say_what_to_check() {
    let launcher = Launcher::program(env!("CARGO_BIN_EXE_kv-node"));
    let cluster =
        ProcessCluster::start(launcher, ClusterSpec { nodes: 1, ..ClusterSpec::default() })
            .unwrap();
    let admin = cluster.connections(ClientOptions::default()).unwrap();
    wait_for_leader(&admin, &[1], 1, PATIENCE).await.expect("a leader");
    let node1 = (1, cluster.addrs(1).unwrap().client);
    let certs = cluster.certs_dir();
    let ok = kv(args(&certs, None, &[node1], "put k v")).await;
    assert_eq!(ok.status, Some(0), "{ok:?}");

    // Certificates of another cluster: its node CA did not sign our node.
    let other = tempfile::tempdir().unwrap();
    let (other_ca, other_certs) = (other.path().join("ca"), other.path().join("certs"));
    let made = kv(vec![
        "gen-certs".into(),
        other_ca.display().to_string(),
        other_certs.display().to_string(),
        "1".into(),
    ])
    .await;
    assert_eq!(made.status, Some(0), "{made:?}");
    let foreign = kv(args(&other_certs, None, &[node1], "get k")).await;
    assert_tls_failure("another cluster's certificates", &foreign, &["node-ca.pem", "refused"]);

    // Our node CA, but a client certificate from another client CA.
    std::fs::copy(certs.join("node-ca.pem"), other_certs.join("node-ca.pem")).unwrap();
    let stranger = kv(args(&other_certs, None, &[node1], "get k")).await;
    assert_tls_failure(
        "another client CA",
        &stranger,
        &["admin-default.pem", "not signed by a client CA"],
    );

    // Node 1's address under the name of node 2.
    let misnamed = kv(args(&certs, None, &[(2, node1.1)], "status")).await;
    assert_tls_failure("a wrong address", &misnamed, &["--endpoints", "another node"]);

    // An expired client certificate, and one that names no client role.
    let ca = cluster.ca_dir();
    client_certificate(&ca, &certs, "client-old", "client-old.kv", (2020, 2021));
    let expired = kv(args(&certs, Some("client-old"), &[node1], "get k")).await;
    assert_tls_failure("an expired certificate", &expired, &["client-old.pem", "expired"]);
    client_certificate(&ca, &certs, "nobody", "nobody.example", (2020, 2100));
    let roleless = kv(args(&certs, Some("nobody"), &[node1], "get k")).await;
    assert_tls_failure("no role", &roleless, &["nobody.pem", "client role"]);

    // No client certificate at all (the `kv` program always sends one: a raw client).
    let mut roots = quinn::rustls::RootCertStore::empty();
    for ca in &cluster.client_tls().trust_anchors {
        roots.add(ca.clone()).unwrap();
    }
    let mut rustls = quinn::rustls::ClientConfig::builder_with_provider(Arc::new(
        quinn::rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&quinn::rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    rustls.alpn_protocols = vec![ALPN.to_vec()];
    let config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(rustls).unwrap()));
    let endpoint = Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let connection = endpoint.connect_with(config, node1.1, "node-1.raft").unwrap().await;
    // TLS 1.3: the client may finish its handshake before the node refuses it.
    let error = match connection {
        Err(e) => e,
        Ok(connection) => {
            let _ = connection.open_bi().await;
            connection.closed().await
        }
    };
    assert_eq!(
        tls_failure(&error),
        Some(TlsFailure::ClientCertificate { alert: "CertificateRequired".into() }),
        "{error}"
    );
}

/// Reads and status requests never "may have been applied"; a write that reached a node that
/// stopped before answering does; `kv status` and `kv health` show what they could not reach
/// or what stopped, and exit with the documented statuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_write_whose_outcome_is_unknown_may_have_been_applied() {
    let launcher = Launcher::program(env!("CARGO_BIN_EXE_kv-node"));
    let spec = ClusterSpec {
        nodes: 1,
        fault_injection: true,
        node_args: BTreeMap::from([(1, vec!["--panic-on-key".into(), "poison".into()])]),
        ..ClusterSpec::default()
    };
    let mut cluster = ProcessCluster::start(launcher, spec).unwrap();
    let admin = cluster.connections(ClientOptions::default()).unwrap();
    wait_for_leader(&admin, &[1], 1, PATIENCE).await.expect("a leader");
    let certs = cluster.certs_dir();
    let node1 = (1, cluster.addrs(1).unwrap().client);
    // Nothing listens there.
    let nowhere = (2, SocketAddr::from(([127, 0, 0, 1], free_udp_ports(1).unwrap()[0])));
    let short = |command: &str, endpoints: &[(u64, SocketAddr)]| {
        let mut args = args(&certs, None, endpoints, command);
        let at = args.iter().position(|a| a == "--timeout").unwrap();
        args[at + 1] = "3".into();
        args
    };

    let status = kv(short("status", &[node1, nowhere])).await;
    assert_eq!(status.status, Some(0), "one node answered: {status:?}");
    assert!(status.stdout.contains("   2  unreachable"), "{status:?}");
    assert!(status.stdout.contains("ready"), "{status:?}");
    let health = kv(short("health", &[node1])).await;
    assert_eq!(health.status, Some(0), "{health:?}");

    // The node applies the write, then its state machine panics: the client cannot know.
    let poison = kv(short("put poison x", &[node1])).await;
    assert_eq!(poison.status, Some(i32::from(exit::OUTCOME_UNKNOWN)), "{poison:?}");
    assert!(poison.stderr.contains("may have been applied"), "{poison:?}");

    // The node stopped on that fault: reads fail, nothing "may have been applied".
    let read = kv(short("get k", &[node1])).await;
    assert_eq!(read.status, Some(i32::from(exit::UNAVAILABLE)), "{read:?}");
    assert!(!read.stderr.contains("may have been applied"), "{read:?}");
    let status = kv(short("status", &[node1])).await;
    assert_eq!(status.status, Some(0), "{status:?}");
    assert!(status.stdout.contains("stopped: "), "the fault is in the node's row: {status:?}");
    let health = kv(short("health", &[node1])).await;
    assert_eq!(health.status, Some(i32::from(exit::NOT_READY)), "{health:?}");
    assert!(health.stdout.contains("panicked"), "{health:?}");

    // No node at all: nothing was sent, nothing applied.
    cluster.kill(1).unwrap();
    let status = kv(short("status", &[node1, nowhere])).await;
    assert_eq!(status.status, Some(i32::from(exit::UNAVAILABLE)), "{status:?}");
    assert!(status.stdout.contains("   1  unreachable"), "{status:?}");
    for command in ["get k", "put k v"] {
        let failed = kv(short(command, &[node1])).await;
        assert_eq!(failed.status, Some(i32::from(exit::UNAVAILABLE)), "{command}: {failed:?}");
        assert!(!failed.stderr.contains("may have been applied"), "{command}: {failed:?}");
    }

    // The library's view of the same: a read of a dead cluster is no unknown outcome.
    let options = ClientOptions { op_timeout: Duration::from_secs(1), ..ClientOptions::default() };
    let connections =
        Connections::new(BTreeMap::from([node1]), cluster.client_tls(), options).unwrap();
    let error = KvClient::new(connections).get("k").await.unwrap_err();
    assert!(matches!(error, ClientError::Timeout { maybe_applied: false, .. }), "{error:?}");
}
