//! Binding node ids to certificates.
//!
//! A node's certificate names it with one DNS subject alternative name, `node-<id>.raft`
//! ([`node_dns_name`]). Clients dial a peer with that name as the TLS server name, so rustls
//! verifies that the server's certificate names the id being dialed. Servers find the id of an
//! inbound peer by matching its verified certificate against the ids they know, and require
//! exactly one match.

use raft_core::NodeId;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use webpki::EndEntityCert;

/// The DNS name suffix of node certificates.
pub const NODE_NAME_SUFFIX: &str = ".raft";

/// The DNS name that binds node `id` to a certificate: `node-<id>.raft`.
pub fn node_dns_name(id: NodeId) -> String {
    format!("node-{id}{NODE_NAME_SUFFIX}")
}

/// Why a certificate does not prove a node identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The peer presented no certificate (cannot happen once mutual TLS succeeded).
    #[error("the peer presented no certificate")]
    NoCertificate,
    /// The certificate could not be parsed.
    #[error("the certificate does not parse: {0}")]
    BadCertificate(String),
    /// The certificate names none of the known node ids.
    #[error("the certificate names no known node id")]
    Unknown,
    /// The certificate names several known node ids, so it cannot identify one node.
    #[error("the certificate names several node ids: {0:?}")]
    Ambiguous(Vec<NodeId>),
    /// The certificate does not chain to the cluster CA, or is not valid for the purpose.
    #[error("the certificate is not valid for the cluster: {0}")]
    Untrusted(String),
}

/// Whether `cert` names node `id`.
fn names(cert: &EndEntityCert<'_>, id: NodeId) -> bool {
    match ServerName::try_from(node_dns_name(id)) {
        Ok(name) => cert.verify_is_valid_for_subject_name(&name).is_ok(),
        Err(_) => false,
    }
}

/// The one id among `candidates` that the (already verified) certificate `cert` names.
pub(crate) fn identify(
    cert: &CertificateDer<'_>,
    candidates: impl IntoIterator<Item = NodeId>,
) -> Result<NodeId, IdentityError> {
    let parsed =
        EndEntityCert::try_from(cert).map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    let matches: Vec<NodeId> = candidates.into_iter().filter(|&id| names(&parsed, id)).collect();
    match matches.as_slice() {
        [] => Err(IdentityError::Unknown),
        [id] => Ok(*id),
        _ => Err(IdentityError::Ambiguous(matches)),
    }
}

/// The node id proved by an established connection: its peer's verified leaf certificate must
/// name exactly one of `candidates`.
pub(crate) fn peer_node_id(
    connection: &quinn::Connection,
    candidates: impl IntoIterator<Item = NodeId>,
) -> Result<NodeId, IdentityError> {
    let identity = connection.peer_identity().ok_or(IdentityError::NoCertificate)?;
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| IdentityError::NoCertificate)?;
    let leaf = chain.first().ok_or(IdentityError::NoCertificate)?;
    identify(leaf, candidates)
}

/// Checks that `cert` (with `intermediates`) chains to `ca`, is valid now for both TLS client
/// and server authentication, and names node `id`: the checks peers will apply, run locally so
/// that a misconfigured node fails at startup with a clear error.
pub(crate) fn check_node_cert(
    ca: &CertificateDer<'_>,
    cert: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    id: NodeId,
) -> Result<(), IdentityError> {
    let anchor = webpki::anchor_from_trusted_cert(ca)
        .map_err(|e| IdentityError::Untrusted(format!("bad CA certificate: {e}")))?;
    let parsed =
        EndEntityCert::try_from(cert).map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms.all;
    let now = UnixTime::now();
    for usage in [webpki::KeyUsage::server_auth(), webpki::KeyUsage::client_auth()] {
        parsed
            .verify_for_usage(
                algs,
                std::slice::from_ref(&anchor),
                intermediates,
                now,
                usage,
                None,
                None,
            )
            .map_err(|e| IdentityError::Untrusted(e.to_string()))?;
    }
    if !names(&parsed, id) {
        return Err(IdentityError::Untrusted(format!("it does not name {}", node_dns_name(id))));
    }
    Ok(())
}
