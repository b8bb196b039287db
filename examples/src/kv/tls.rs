//! TLS of the client port: mutual TLS against the cluster CA, like the Raft port, with a
//! distinct ALPN.
//!
//! A node presents its own node certificate (`node-<id>.raft`). A client presents a certificate
//! signed by the same CA; [`ensure_client_cert`] issues one naming the reserved id
//! [`CLIENT_CERT_ID`], which is never a cluster member, so it is refused on the Raft port (that
//! port accepts only certificates naming a configured peer) and no node is ever dialed under
//! that name. A client dials node `id` with the server name `node-<id>.raft`, so rustls checks
//! that it reached the node it meant.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use raft_core::NodeId;
use raft_quic::quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use raft_quic::quinn::{self, IdleTimeout, TransportConfig, VarInt};
use raft_quic::{ClusterCa, NodeTls};

use super::protocol::ALPN;

/// The node id named by client certificates (`node-18446744073709551615.raft`). Cluster
/// members must use other ids.
pub const CLIENT_CERT_ID: NodeId = u64::MAX;
/// File name of the client certificate in a certificate directory.
pub const CLIENT_CERT_FILE: &str = "client.pem";
/// File name of the client key in a certificate directory.
pub const CLIENT_KEY_FILE: &str = "client.key";

/// Why TLS material could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum KvTlsError {
    /// Certificates could not be generated, read or parsed.
    #[error(transparent)]
    Cert(#[from] raft_quic::CertError),
    /// rustls or quinn refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// A file could not be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn config_error(e: impl std::fmt::Display) -> KvTlsError {
    KvTlsError::Config(e.to_string())
}

/// Issues `client.pem` / `client.key` (an administrator, `admin-operator.kv`) in `dir` from the
/// CA there (`ca.pem`, `ca.key`) unless both exist. Returns the client's TLS material.
pub fn ensure_client_cert(dir: &Path) -> Result<NodeTls, KvTlsError> {
    let (cert, key) = (dir.join(CLIENT_CERT_FILE), dir.join(CLIENT_KEY_FILE));
    if !(cert.exists() && key.exists()) {
        let read = |p: PathBuf| {
            std::fs::read_to_string(&p).map_err(|source| KvTlsError::Io { path: p, source })
        };
        let ca = ClusterCa::from_pem(&read(dir.join("ca.pem"))?, &read(dir.join("ca.key"))?)?;
        let (cert_pem, key_pem) =
            super::role_certs::issue_role_cert(&ca.key_pem(), &super::auth::Principal::operator())?;
        raft_quic::certs::write_pem_file(&key, &key_pem, true)?;
        raft_quic::certs::write_pem_file(&cert, &cert_pem, false)?;
    }
    load_client_tls(dir)
}

/// Loads the client material (`ca.pem`, `client.pem`, `client.key`) from a certificate
/// directory.
pub fn load_client_tls(dir: &Path) -> Result<NodeTls, KvTlsError> {
    Ok(NodeTls::from_pem_files(
        dir.join("ca.pem"),
        dir.join(CLIENT_CERT_FILE),
        dir.join(CLIENT_KEY_FILE),
    )?)
}

fn transport(
    max_streams: u32,
    keep_alive: Option<Duration>,
) -> Result<TransportConfig, KvTlsError> {
    let mut transport = TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(max_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .max_idle_timeout(Some(
            IdleTimeout::try_from(Duration::from_secs(30)).map_err(config_error)?,
        ))
        .keep_alive_interval(keep_alive)
        .datagram_receive_buffer_size(None);
    Ok(transport)
}

/// The QUIC server configuration of a node's client port: its node certificate, client
/// certificates required (signed by the cluster CA), at most `max_streams` requests in flight
/// per connection and `max_connections` connection attempts queued.
pub fn server_config(
    tls: &NodeTls,
    max_streams: u32,
    max_connections: usize,
) -> Result<quinn::ServerConfig, KvTlsError> {
    let mut rustls = raft_quic::tls::rustls_server_config(tls).map_err(config_error)?;
    rustls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(rustls).map_err(config_error)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = transport(max_streams, None)?;
    // What a client may send that the node has not read yet, across all its streams (the
    // client port reserves what it reads from its own budget: `kv::port`).
    transport.receive_window(VarInt::from_u32(super::port::CONNECTION_RECEIVE_WINDOW));
    config.transport_config(Arc::new(transport)).max_incoming(max_connections).migration(false);
    Ok(config)
}

/// The QUIC client configuration of a client: its client certificate, the cluster CA as the
/// only trust anchor. Connections are kept alive while idle.
pub fn client_config(tls: &NodeTls) -> Result<quinn::ClientConfig, KvTlsError> {
    let mut rustls = raft_quic::tls::rustls_client_config(tls).map_err(config_error)?;
    rustls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(rustls).map_err(config_error)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport(1024, Some(Duration::from_secs(2)))?));
    Ok(config)
}
