//! Certificate helpers: files on disk, reloading, reuse of an existing CA, and the startup check
//! of a node's own certificate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use raft_quic::{
    ensure_cluster_certs, generate_cluster_certs, BindError, ClusterCa, NodeTls, QuicConfig,
    QuicNetwork,
};

#[test]
fn generates_loadable_files() {
    let dir = tempfile::tempdir().unwrap();
    let files = generate_cluster_certs(dir.path().join("certs"), [1, 2, 3]).unwrap();
    for name in ["ca.pem", "ca.key", "node-1.pem", "node-1.key", "node-3.pem", "node-3.key"] {
        assert!(files.dir.join(name).is_file(), "{name} missing");
    }
    assert_eq!(files.nodes.keys().copied().collect::<Vec<_>>(), [1, 2, 3]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&files.nodes[&2].key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "private key readable by others: {mode:o}");
        let mode = std::fs::metadata(&files.ca_key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "CA key readable by others: {mode:o}");
    }
    let tls = files.node_tls(2).unwrap();
    assert_eq!(tls.cert_chain.len(), 1);
    let same = NodeTls::from_pem_files(&files.ca_cert, &files.nodes[&2].cert, &files.nodes[&2].key)
        .unwrap();
    assert_eq!(same.cert_chain, tls.cert_chain);
    assert!(format!("{tls:?}").contains("redacted"));
}

#[test]
fn ensure_reuses_the_ca_and_existing_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let first = generate_cluster_certs(dir.path(), [1, 2]).unwrap();
    let ca_before = std::fs::read(&first.ca_cert).unwrap();
    let node1_before = std::fs::read(&first.nodes[&1].cert).unwrap();
    let second = ensure_cluster_certs(dir.path(), [1, 2, 3]).unwrap();
    assert_eq!(std::fs::read(&second.ca_cert).unwrap(), ca_before);
    assert_eq!(std::fs::read(&second.nodes[&1].cert).unwrap(), node1_before);
    assert!(second.nodes[&3].cert.is_file());
    // Node 3, issued by the reloaded CA, is valid for the cluster: binding checks it.
    let tls = NodeTls::load(dir.path(), 3).unwrap();
    let ca = ClusterCa::from_pem(
        &std::fs::read_to_string(&second.ca_cert).unwrap(),
        &std::fs::read_to_string(&second.ca_key).unwrap(),
    )
    .unwrap();
    assert_eq!(ca.cert_der(), &tls.ca_cert);
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

#[tokio::test]
async fn bind_refuses_a_certificate_that_does_not_name_the_node() {
    let ca = ClusterCa::generate().unwrap();
    let foreign = ClusterCa::generate().unwrap();
    let rt = std::sync::Arc::new(raft_quic::quinn::TokioRuntime);
    let addr = "127.0.0.1:0".parse().unwrap();
    // Node 1's certificate used as node 2.
    let wrong_id = QuicConfig::new(2, addr, ca.node_tls(1).unwrap());
    assert!(matches!(QuicNetwork::bind(wrong_id, rt.clone()), Err(BindError::Certificate(_))));
    // A certificate from another CA than the configured one.
    let mut wrong_ca = ca.node_tls(1).unwrap();
    wrong_ca.ca_cert = foreign.cert_der().clone();
    let config = QuicConfig::new(1, addr, wrong_ca);
    assert!(matches!(QuicNetwork::bind(config, rt.clone()), Err(BindError::Certificate(_))));
    // An invalid configuration.
    let mut config = QuicConfig::new(1, addr, ca.node_tls(1).unwrap());
    config.max_frame_size = 10;
    assert!(matches!(QuicNetwork::bind(config, rt.clone()), Err(BindError::Config(_))));
    let good = QuicNetwork::bind(QuicConfig::new(1, addr, ca.node_tls(1).unwrap()), rt).unwrap();
    good.close().await;
}
