//! rustls and quinn configurations for mutual TLS inside one cluster.
//!
//! The crypto provider is chosen explicitly (`ring`, through `builder_with_provider`), TLS 1.3
//! only, with the trust bundle of the endpoint's [`NodeTls`] as the only trust anchors. Servers
//! require a client certificate (no anonymous peers). Session resumption and 0-RTT are
//! disabled: every connection runs a full handshake, so every connection is authenticated by
//! its certificate.
//!
//! Both verifiers of a Raft connection demand the node role ([`NODE_ROLE_OID`]) on top of the
//! usual chain, validity and key-usage checks, so a certificate issued for anything but a node
//! fails the handshake, whichever CA signed it.

use std::sync::Arc;

use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};

use crate::certs::NodeTls;
use crate::identity::{verify_usage, NODE_ROLE_OID};
use crate::wire::ALPN;

/// Why a TLS configuration could not be built from an endpoint's material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// rustls refused the certificates or the key.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// A certificate verifier could not be built (for example, a CA is unusable).
    #[error("certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The provider offers no cipher suite QUIC can use for its initial packets.
    #[error("QUIC crypto: {0}")]
    Quic(#[from] NoInitialCipherSuite),
}

/// What a server demands of the certificates of the peers that connect to it, beyond a chain to
/// its trust anchors and the TLS client-authentication key usage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerRole {
    /// The node role ([`NODE_ROLE_OID`]): the Raft port.
    Node,
    /// Nothing more: the application authorizes the peer itself (a client port).
    Any,
}

/// The crypto provider used everywhere in this crate: rustls' `ring` provider.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(cas: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(ca.clone())?;
    }
    Ok(Arc::new(roots))
}

/// Checks the node role of a certificate whose chain the inner verifier accepted.
fn require_node_role(
    roots: &RootCertStore,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
) -> Result<(), rustls::Error> {
    verify_usage(&roots.roots, end_entity, intermediates, now, NODE_ROLE_OID).map_err(|e| {
        let reason = format!("not a raft node certificate (no node role): {e}");
        rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
            std::io::Error::other(reason),
        ))))
    })
}

/// The handshake-signature methods of a verifier, delegated to its webpki verifier `inner`
/// (only the certificate checks differ).
macro_rules! delegate_signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    };
}

/// Verifies servers: webpki's checks (chain, validity, server name) plus the node role.
#[derive(Debug)]
struct NodeServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    roots: Arc<RootCertStore>,
}

impl ServerCertVerifier for NodeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        require_node_role(&self.roots, end_entity, intermediates, now)?;
        Ok(verified)
    }

    delegate_signature_checks!();
}

/// Verifies clients: webpki's checks (chain, validity, client authentication) plus, for
/// [`PeerRole::Node`], the node role.
#[derive(Debug)]
struct PeerClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    roots: Arc<RootCertStore>,
    role: PeerRole,
}

impl ClientCertVerifier for PeerClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        if self.role == PeerRole::Node {
            require_node_role(&self.roots, end_entity, intermediates, now)?;
        }
        Ok(verified)
    }

    delegate_signature_checks!();
}

/// The rustls server configuration of a node's Raft port: presents its certificate, requires a
/// client certificate with the node role signed by one of its trusted CAs, negotiates [`ALPN`].
pub fn rustls_server_config(tls: &NodeTls) -> Result<rustls::ServerConfig, TlsError> {
    rustls_server_config_with(tls, &tls.trust_anchors, PeerRole::Node)
}

/// A rustls server configuration that presents `tls`'s certificate and requires a client
/// certificate signed by one of `peer_cas` (TLS client authentication) with `role`; negotiates
/// [`ALPN`] (replace `alpn_protocols` for another protocol). For example, an application's
/// client port trusts its client CA with [`PeerRole::Any`] and authorizes clients itself.
pub fn rustls_server_config_with(
    tls: &NodeTls,
    peer_cas: &[CertificateDer<'static>],
    role: PeerRole,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = crypto_provider();
    let roots = roots(peer_cas)?;
    let inner =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
    let verifier = Arc::new(PeerClientVerifier { inner, roots, role });
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

/// The rustls client configuration of an endpoint that dials nodes: presents its certificate,
/// trusts only its trusted CAs, requires the server's certificate to carry the node role, and
/// negotiates [`ALPN`]. The server name it is used with decides which node the server must
/// prove to be (see [`node_dns_name`](crate::node_dns_name)).
pub fn rustls_client_config(tls: &NodeTls) -> Result<rustls::ClientConfig, TlsError> {
    let provider = crypto_provider();
    let roots = roots(&tls.trust_anchors)?;
    let inner = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(TlsError::Verifier)?;
    let verifier = Arc::new(NodeServerVerifier { inner, roots });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(tls.cert_chain.clone(), tls.key.clone_key())?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.resumption = Resumption::disabled();
    config.enable_early_data = false;
    Ok(config)
}

/// The quinn server crypto of a Raft port (see [`rustls_server_config`]).
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
