//! Certificate helpers: the CA and certificate directories, reloading, reuse of an existing CA,
//! safe writing and loading of key files, trust bundles, lifetimes, and the startup check of a
//! node's own certificate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::{Duration, SystemTime};

use raft_quic::certs::{
    create_ca, issue_node_files, load_ca, trust_ca, write_pem_file, CertError,
    DEFAULT_CERT_LIFETIME, NODE_CA,
};
use raft_quic::expiry::not_after;
use raft_quic::{
    ensure_cluster_certs, generate_cluster_certs, BindError, ClusterCa, NodeTls, QuicConfig,
    QuicNetwork,
};

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn generates_loadable_files_and_keeps_the_ca_key_apart() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_dir, certs) = (dir.path().join("ca"), dir.path().join("certs"));
    let files = generate_cluster_certs(&ca_dir, &certs, [1, 2, 3]).unwrap();
    for name in ["node-ca.pem", "node-1.pem", "node-1.key", "node-3.pem", "node-3.key"] {
        assert!(certs.join(name).is_file(), "{name} missing");
    }
    for name in ["node-ca.pem", "node-ca.key"] {
        assert!(ca_dir.join(name).is_file(), "{name} missing from the CA directory");
    }
    assert!(!certs.join("node-ca.key").exists(), "the CA key sits beside the node keys");
    assert_eq!(files.nodes.keys().copied().collect::<Vec<_>>(), [1, 2, 3]);
    #[cfg(unix)]
    {
        assert_eq!(mode(&files.nodes[&2].key) & 0o077, 0, "node key readable by others");
        assert_eq!(mode(&ca_dir.join("node-ca.key")) & 0o077, 0, "CA key readable by others");
    }
    let tls = files.node_tls(2).unwrap();
    assert_eq!(tls.cert_chain.len(), 1);
    assert_eq!(tls.trust_anchors.len(), 1);
    let same =
        NodeTls::from_pem_files(&files.trust, &files.nodes[&2].cert, &files.nodes[&2].key).unwrap();
    assert_eq!(same.cert_chain, tls.cert_chain);
    assert!(format!("{tls:?}").contains("redacted"));
    // The CA directory must not be the certificate directory.
    let same_dir = generate_cluster_certs(&certs, &certs, [1]);
    assert!(matches!(same_dir, Err(CertError::CaBesideCertificates { .. })), "{same_dir:?}");
}

#[test]
fn ensure_reuses_the_ca_and_existing_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_dir, certs) = (dir.path().join("ca"), dir.path().join("certs"));
    let first = generate_cluster_certs(&ca_dir, &certs, [1, 2]).unwrap();
    let ca_before = std::fs::read(ca_dir.join("node-ca.pem")).unwrap();
    let bundle_before = std::fs::read(&first.trust).unwrap();
    let node1_before = std::fs::read(&first.nodes[&1].cert).unwrap();
    let second = ensure_cluster_certs(&ca_dir, &certs, [1, 2, 3]).unwrap();
    assert_eq!(std::fs::read(ca_dir.join("node-ca.pem")).unwrap(), ca_before);
    assert_eq!(std::fs::read(&second.trust).unwrap(), bundle_before, "the bundle grew");
    assert_eq!(std::fs::read(&second.nodes[&1].cert).unwrap(), node1_before);
    assert!(second.nodes[&3].cert.is_file());
    // Node 3, issued by the reloaded CA, is valid for the cluster.
    let tls = NodeTls::load(&certs, 3).unwrap();
    let ca = load_ca(&ca_dir, NODE_CA).unwrap();
    assert_eq!(&tls.trust_anchors, &[ca.cert_der().clone()]);
}

#[test]
fn from_pem_refuses_a_mismatched_key() {
    let a = ClusterCa::generate().unwrap();
    let b = ClusterCa::generate().unwrap();
    assert!(ClusterCa::from_pem(a.cert_pem(), &b.key_pem()).is_err());
    assert!(ClusterCa::from_pem(a.cert_pem(), &a.key_pem()).is_ok());
}

#[test]
fn bad_pem_is_an_error_not_a_panic() {
    let ca = ClusterCa::generate().unwrap();
    let node = ca.issue(1).unwrap();
    assert!(
        NodeTls::from_pem(b"garbage", node.cert_pem.as_bytes(), node.key_pem.as_bytes()).is_err()
    );
    assert!(NodeTls::from_pem(ca.cert_pem().as_bytes(), b"", node.key_pem.as_bytes()).is_err());
    assert!(NodeTls::from_pem(ca.cert_pem().as_bytes(), node.cert_pem.as_bytes(), b"-----BEGIN")
        .is_err());
    let missing = NodeTls::load("/nonexistent-raft-quic-dir", 1);
    assert!(missing.is_err());
}

#[cfg(unix)]
#[test]
fn keys_readable_by_others_are_refused_on_load() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (ca_dir, certs) = (dir.path().join("ca"), dir.path().join("certs"));
    let files = generate_cluster_certs(&ca_dir, &certs, [1]).unwrap();
    NodeTls::load(&certs, 1).unwrap();
    for loose in [0o640, 0o604, 0o660] {
        std::fs::set_permissions(&files.nodes[&1].key, std::fs::Permissions::from_mode(loose))
            .unwrap();
        match NodeTls::load(&certs, 1) {
            Err(CertError::KeyPermissions { mode, .. }) => assert_eq!(mode, loose),
            other => panic!("a {loose:o} key was loaded: {other:?}"),
        }
    }
    std::fs::set_permissions(ca_dir.join("node-ca.key"), std::fs::Permissions::from_mode(0o644))
        .unwrap();
    assert!(matches!(load_ca(&ca_dir, NODE_CA), Err(CertError::KeyPermissions { .. })));
}

#[cfg(unix)]
#[test]
fn secret_files_are_private_whatever_temporary_file_was_there_before() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("node-1.key");
    // Files an attacker (or an earlier crash) left at the temporary names a writer could pick:
    // readable by everyone.
    for name in ["node-1.tmp", "node-1.key.tmp", ".node-1.key.tmp"] {
        let path = dir.path().join(name);
        std::fs::write(&path, "planted").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    write_pem_file(&key, "secret", true).unwrap();
    assert_eq!(mode(&key), 0o600);
    assert_eq!(std::fs::read_to_string(&key).unwrap(), "secret");
    // A key file that existed with loose permissions is replaced by a private one.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    write_pem_file(&key, "renewed", true).unwrap();
    assert_eq!(mode(&key), 0o600);
    // No temporary file of ours is left behind.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
}

#[test]
fn a_certificate_and_its_key_written_at_once_never_mix() {
    // The certificate and key of one node used to share one temporary file name.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("node-1.pem"), dir.path().join("node-1.key"));
    std::thread::scope(|scope| {
        let a = scope.spawn(|| {
            for i in 0..300 {
                write_pem_file(&cert, &format!("cert {i}"), false).unwrap();
            }
        });
        let b = scope.spawn(|| {
            for i in 0..300 {
                write_pem_file(&key, &format!("key {i}"), true).unwrap();
            }
        });
        a.join().unwrap();
        b.join().unwrap();
    });
    assert_eq!(std::fs::read_to_string(&cert).unwrap(), "cert 299");
    assert_eq!(std::fs::read_to_string(&key).unwrap(), "key 299");
}

#[test]
fn certificates_expire_and_the_defaults_are_documented() {
    let ca = ClusterCa::generate().unwrap();
    let cert = ca.issue(1).unwrap();
    let tls = NodeTls::from_pem(ca.cert_pem().as_bytes(), cert.cert_pem.as_bytes(), b"").err();
    assert!(tls.is_some(), "an empty key is refused");
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(cert.cert_pem.as_bytes()).unwrap();
    let expires = not_after(&der).unwrap();
    let left = expires.duration_since(SystemTime::now()).unwrap();
    let slack = Duration::from_secs(120);
    assert!(left <= DEFAULT_CERT_LIFETIME && left + slack >= DEFAULT_CERT_LIFETIME, "{left:?}");
    let short = ca.issue_node(1, Duration::from_secs(3600)).unwrap();
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(short.cert_pem.as_bytes()).unwrap();
    let left = not_after(&der).unwrap().duration_since(SystemTime::now()).unwrap();
    assert!(left <= Duration::from_secs(3600), "{left:?}");
    assert!(ca.issue_node(1, Duration::from_secs(1)).is_err(), "a lifetime under a minute");
}

#[test]
fn trust_bundles_grow_without_duplicates_and_a_ca_is_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("certs").join("node-ca.pem");
    std::fs::create_dir_all(bundle.parent().unwrap()).unwrap();
    let old = create_ca(&dir.path().join("old"), NODE_CA, Duration::from_secs(86_400)).unwrap();
    let new = create_ca(&dir.path().join("new"), NODE_CA, Duration::from_secs(86_400)).unwrap();
    assert!(trust_ca(&bundle, old.cert_pem()).unwrap());
    assert!(!trust_ca(&bundle, old.cert_pem()).unwrap());
    assert!(trust_ca(&bundle, new.cert_pem()).unwrap());
    let cert = new.issue(1).unwrap();
    let tls = NodeTls::from_pem(
        &std::fs::read(&bundle).unwrap(),
        cert.cert_pem.as_bytes(),
        cert.key_pem.as_bytes(),
    )
    .unwrap();
    assert_eq!(tls.trust_anchors, [old.cert_der().clone(), new.cert_der().clone()]);
    let again = create_ca(&dir.path().join("old"), NODE_CA, Duration::from_secs(86_400));
    assert!(matches!(again, Err(CertError::CaExists { .. })), "{again:?}");
}

#[tokio::test]
async fn bind_refuses_a_certificate_that_does_not_fit_the_node() {
    let ca = ClusterCa::generate().unwrap();
    let foreign = ClusterCa::generate().unwrap();
    let rt = std::sync::Arc::new(raft_quic::quinn::TokioRuntime);
    let addr = "127.0.0.1:0".parse().unwrap();
    // Node 1's certificate used as node 2.
    let wrong_id = QuicConfig::new(2, addr, ca.node_tls(1).unwrap());
    assert!(matches!(QuicNetwork::bind(wrong_id, rt.clone()), Err(BindError::Certificate(_))));
    // A certificate from another CA than the trusted one.
    let mut wrong_ca = ca.node_tls(1).unwrap();
    wrong_ca.trust_anchors = vec![foreign.cert_der().clone()];
    let config = QuicConfig::new(1, addr, wrong_ca);
    assert!(matches!(QuicNetwork::bind(config, rt.clone()), Err(BindError::Certificate(_))));
    // A certificate without the node role (a client certificate naming the node).
    let client = ca.issue_client("node-1.raft", Duration::from_secs(3600)).unwrap();
    let tls = NodeTls::from_pem(
        ca.cert_pem().as_bytes(),
        client.cert_pem.as_bytes(),
        client.key_pem.as_bytes(),
    )
    .unwrap();
    match QuicNetwork::bind(QuicConfig::new(1, addr, tls), rt.clone()) {
        Err(BindError::Certificate(e)) => assert!(e.to_string().contains("node role"), "{e}"),
        other => panic!("a certificate without the node role was accepted: {other:?}"),
    }
    // An invalid configuration.
    let mut config = QuicConfig::new(1, addr, ca.node_tls(1).unwrap());
    config.max_frame_size = 10;
    assert!(matches!(QuicNetwork::bind(config, rt.clone()), Err(BindError::Config(_))));
    let good = QuicNetwork::bind(QuicConfig::new(1, addr, ca.node_tls(1).unwrap()), rt).unwrap();
    good.close().await;
}

#[test]
fn the_ca_directory_is_never_inside_or_around_a_certificate_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = |p: &str| dir.path().join(p);
    // `kv gen-certs certs/ca certs 1,2,3` used to put the CA key inside the certificate tree.
    for (ca, certs) in [("certs/ca", "certs"), ("ca", "ca/certs"), ("same", "same/./")] {
        let result = generate_cluster_certs(path(ca), path(certs), [1]);
        assert!(
            matches!(result, Err(CertError::CaBesideCertificates { .. })),
            "CA {ca}, certificates {certs}: {result:?}"
        );
        assert!(!path(ca).join("node-ca.key").exists(), "a CA key was written into {ca}");
    }
    let result = ensure_cluster_certs(path("certs/ca"), path("certs"), [1]);
    assert!(matches!(result, Err(CertError::CaBesideCertificates { .. })), "{result:?}");
    // Siblings, even with a common prefix in their names, are apart.
    generate_cluster_certs(path("x/ca"), path("x/ca-certs"), [1]).unwrap();
}

#[cfg(unix)]
#[test]
fn a_node_refuses_a_certificate_directory_holding_a_ca_key() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_dir, certs) = (dir.path().join("ca"), dir.path().join("certs"));
    generate_cluster_certs(&ca_dir, &certs, [1]).unwrap();
    NodeTls::load(&certs, 1).unwrap();
    let ca_key = std::fs::read(ca_dir.join("node-ca.key")).unwrap();
    // Under its own name, and renamed: the key matches the trusted CA.
    for name in ["node-ca.key", "backup.key"] {
        write_pem_file(&certs.join(name), &String::from_utf8(ca_key.clone()).unwrap(), true)
            .unwrap();
        match NodeTls::load(&certs, 1) {
            Err(CertError::CaKeyInCertificates { path }) => assert!(path.ends_with(name)),
            other => panic!("loaded beside the CA key {name}: {other:?}"),
        }
        std::fs::remove_file(certs.join(name)).unwrap();
    }
    NodeTls::load(&certs, 1).unwrap();
}

/// A CA directory and a certificate directory for node 1, in a fresh temporary directory.
fn node_1() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (ca_dir, certs) = (dir.path().join("ca"), dir.path().join("certs"));
    generate_cluster_certs(&ca_dir, &certs, [1]).unwrap();
    (dir, ca_dir, certs)
}

/// Node 1's certificate file as it is now.
fn cert_1(certs: &Path) -> Vec<u8> {
    std::fs::read(certs.join("node-1.pem")).unwrap()
}

async fn binds(tls: NodeTls) {
    let rt = std::sync::Arc::new(raft_quic::quinn::TokioRuntime);
    let config = QuicConfig::new(1, "127.0.0.1:0".parse().unwrap(), tls);
    let network = QuicNetwork::bind(config, rt).unwrap();
    network.close().await;
}

/// A renewal writes the key and then the certificate; a crash between the two replacements
/// leaves the new key beside the old certificate. The node still loads a pair that belongs
/// together (the certificate stored with the key) and binds; it used to fail to start
/// (rustls: inconsistent keys).
#[tokio::test]
async fn a_renewal_interrupted_between_key_and_certificate_still_loads_and_binds() {
    let (_dir, ca_dir, certs) = node_1();
    let old_cert = cert_1(&certs);
    let ca = load_ca(&ca_dir, NODE_CA).unwrap();
    issue_node_files(&ca, &certs, 1, DEFAULT_CERT_LIFETIME).unwrap();
    let new_cert = cert_1(&certs);
    assert_ne!(old_cert, new_cert);
    // The crash: the certificate's replacement never happened.
    std::fs::write(certs.join("node-1.pem"), &old_cert).unwrap();
    let tls = NodeTls::load(&certs, 1).unwrap();
    assert_eq!(
        tls.cert_chain,
        raft_quic::certs::parse_certificates(&new_cert, "renewed").unwrap(),
        "the key's own certificate is used"
    );
    binds(tls).await;
}

/// The second write of a renewal fails (here the certificate's name is taken by a directory;
/// a full disk does the same): the renewal reports it, and the directory still loads a pair
/// that belongs together and binds.
#[tokio::test]
async fn a_renewal_whose_second_write_fails_leaves_a_directory_that_loads_and_binds() {
    let (_dir, ca_dir, certs) = node_1();
    let old_cert = cert_1(&certs);
    std::fs::remove_file(certs.join("node-1.pem")).unwrap();
    std::fs::create_dir(certs.join("node-1.pem")).unwrap();
    std::fs::write(certs.join("node-1.pem").join("occupied"), "").unwrap();
    let ca = load_ca(&ca_dir, NODE_CA).unwrap();
    assert!(issue_node_files(&ca, &certs, 1, DEFAULT_CERT_LIFETIME).is_err());
    let tls = NodeTls::load(&certs, 1).unwrap();
    assert_ne!(tls.cert_chain, raft_quic::certs::parse_certificates(&old_cert, "old").unwrap());
    binds(tls).await;
}

/// A CA whose creation stopped after its key (the certificate file missing, or another one
/// in its place) still loads, from the certificate stored with its key: `kv ca` refuses to
/// replace the key, so the CA used to be unusable for good.
#[test]
fn a_ca_created_up_to_its_key_still_loads() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let created = create_ca(&ca_dir, NODE_CA, Duration::from_secs(86_400)).unwrap();
    std::fs::remove_file(ca_dir.join("node-ca.pem")).unwrap();
    assert_eq!(load_ca(&ca_dir, NODE_CA).unwrap().cert_pem(), created.cert_pem());
    let other = ClusterCa::generate().unwrap();
    std::fs::write(ca_dir.join("node-ca.pem"), other.cert_pem()).unwrap();
    assert_eq!(load_ca(&ca_dir, NODE_CA).unwrap().cert_pem(), created.cert_pem());
    let files = ensure_cluster_certs(&ca_dir, dir.path().join("certs"), [1]).unwrap();
    files.node_tls(1).unwrap();
}

/// Temporary files of crashed writes (they may hold a key) are removed when a node loads its
/// directory; a write in progress (a fresh temporary file) is left alone.
#[test]
fn temporary_files_of_crashed_writes_are_removed_on_load() {
    let (_dir, _, certs) = node_1();
    let stale = certs.join(".node-1.key.4242.0123456789abcdef.tmp");
    let fresh = certs.join(".node-1.key.4243.fedcba9876543210.tmp");
    for file in [&stale, &fresh] {
        std::fs::write(file, "-----BEGIN PRIVATE KEY-----").unwrap();
    }
    let long_ago = SystemTime::now() - raft_quic::certs::STALE_TEMP_AGE * 2;
    std::fs::File::options().write(true).open(&stale).unwrap().set_modified(long_ago).unwrap();
    NodeTls::load(&certs, 1).unwrap();
    assert!(!stale.exists(), "the crashed write's key is still there");
    assert!(fresh.exists(), "a write in progress lost its file");
}
