//! Binding node ids to certificates.
//!
//! A node's certificate names it with one DNS subject alternative name, `node-<id>.raft`
//! ([`node_dns_name`]). Clients dial a peer with that name as the TLS server name, so rustls
//! verifies that the server's certificate names the id being dialed. Servers find the id of an
//! inbound peer by matching its verified certificate against the ids they know and the node ids
//! the certificate itself lists, and require exactly one match: any certificate of the cluster CA
//! naming one node is accepted, so a node added to the cluster can reach members that do not know
//! its address yet (a restarted follower that missed the change, for instance). The CA is the
//! transport's membership authority; Raft's own membership decides what the node may do.

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
    /// The certificate names no node id.
    #[error("the certificate names no node id")]
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

/// The node id in a DNS name of the form `node-<id>.raft`, if it is one.
fn id_in_name(name: &str) -> Option<NodeId> {
    let digits = name.strip_prefix("node-")?.strip_suffix(NODE_NAME_SUFFIX)?;
    let id: NodeId = digits.parse().ok()?;
    // Only the canonical spelling (no sign, no leading zeros) names a node.
    (node_dns_name(id) == name).then_some(id)
}

/// The one node id that the (already verified) certificate `cert` names, among `candidates`
/// (the ids the caller knows) and the ids its own DNS names spell.
pub(crate) fn identify(
    cert: &CertificateDer<'_>,
    candidates: impl IntoIterator<Item = NodeId>,
) -> Result<NodeId, IdentityError> {
    let parsed =
        EndEntityCert::try_from(cert).map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    let mut candidates: Vec<NodeId> = candidates.into_iter().collect();
    // The listed names only propose candidates; each is then checked like a known id.
    candidates.extend(parsed.valid_dns_names().filter_map(id_in_name));
    candidates.sort_unstable();
    candidates.dedup();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_canonical_node_names_propose_an_id() {
        assert_eq!(id_in_name("node-7.raft"), Some(7));
        assert_eq!(id_in_name(&node_dns_name(u64::MAX)), Some(u64::MAX));
        for other in
            ["node-07.raft", "node-+7.raft", "node-.raft", "node-7.raftx", "x.raft", "*.raft"]
        {
            assert_eq!(id_in_name(other), None, "{other}");
        }
    }
}
