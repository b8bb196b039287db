//! rustls and quinn configurations for mutual TLS inside one cluster.
//!
//! The crypto provider is chosen explicitly (`ring`, through `builder_with_provider`), TLS 1.3
//! only, with the cluster CA as the only trust anchor on both sides. Servers require a client
//! certificate (no anonymous peers). Session resumption and 0-RTT are disabled: every
//! connection runs a full handshake, so every connection is authenticated by its certificate.

use std::sync::Arc;

use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig, QuicServerConfig};
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::RootCertStore;

use crate::certs::NodeTls;
use crate::wire::ALPN;

/// Why a TLS configuration could not be built from a node's material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// rustls refused the certificates or the key.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built (for example, the CA is unusable).
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The provider offers no cipher suite QUIC can use for its initial packets.
    #[error("QUIC crypto: {0}")]
    Quic(#[from] NoInitialCipherSuite),
}

/// The crypto provider used everywhere in this crate: rustls' `ring` provider.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(tls: &NodeTls) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add(tls.ca_cert.clone())?;
    Ok(Arc::new(roots))
}

/// The rustls server configuration of a node: presents its certificate, requires a client
/// certificate signed by the cluster CA, negotiates [`ALPN`].
pub fn rustls_server_config(tls: &NodeTls) -> Result<rustls::ServerConfig, TlsError> {
    let provider = crypto_provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(roots(tls)?, provider.clone()).build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(tls.cert_chain.clone(), tls.key.clone_key())?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.max_early_data_size = 0;
    Ok(config)
}

/// The rustls client configuration of a node: presents its certificate, trusts only the
/// cluster CA, negotiates [`ALPN`]. The server name it is used with decides which node the
/// server must prove to be (see [`node_dns_name`](crate::node_dns_name)).
pub fn rustls_client_config(tls: &NodeTls) -> Result<rustls::ClientConfig, TlsError> {
    let mut config = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(tls)?)
        .with_client_auth_cert(tls.cert_chain.clone(), tls.key.clone_key())?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.resumption = Resumption::disabled();
    config.enable_early_data = false;
    Ok(config)
}

/// The quinn server crypto for `tls` (see [`rustls_server_config`]).
pub fn quic_server_crypto(tls: &NodeTls) -> Result<Arc<QuicServerConfig>, TlsError> {
    Ok(Arc::new(QuicServerConfig::try_from(rustls_server_config(tls)?)?))
}

/// A quinn client configuration for `tls` (see [`rustls_client_config`]) with quinn's default
/// transport parameters. [`QuicNetwork`](crate::QuicNetwork) builds its own with the limits of
/// its configuration; this one is for tools and tests that speak to a node directly.
pub fn quic_client_config(tls: &NodeTls) -> Result<quinn::ClientConfig, TlsError> {
    let crypto = QuicClientConfig::try_from(rustls_client_config(tls)?)?;
    Ok(quinn::ClientConfig::new(Arc::new(crypto)))
}

/// Derives a 32-byte secret for `purpose` from the node's private key: stable across restarts
/// of the node, unknown to anyone without the key.
fn derived_secret(tls: &NodeTls, purpose: &[u8]) -> ring::digest::Digest {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"raft-quic v1 derived secret: ");
    ctx.update(purpose);
    ctx.update(tls.key.secret_der());
    ctx.finish()
}

/// The endpoint configuration of a node: stateless-reset key and connection-id generator
/// derived from the node's private key, so that they are the same after a restart.
///
/// When a node restarts, peers still hold connections to its previous incarnation. The new
/// endpoint recognizes their connection ids as its own (same generator key) and answers them
/// with a stateless reset, which peers accept because it is keyed like the one the previous
/// incarnation announced (same reset key). Peers thus learn of the restart at their next
/// packet instead of after an idle timeout.
pub(crate) fn endpoint_config(tls: &NodeTls) -> quinn::EndpointConfig {
    let reset = derived_secret(tls, b"stateless reset key");
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset.as_ref());
    let cid = derived_secret(tls, b"connection id key");
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&cid.as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    let mut config = quinn::EndpointConfig::new(Arc::new(reset_key));
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    config
}
