//! Node identity: which certificates may speak Raft, and which node id one proves.
//!
//! A node certificate carries two marks, both required:
//!
//! - the **node role**: the extended key usage [`NODE_ROLE_OID`] (next to TLS server and client
//!   authentication). Only certificates issued as node certificates carry it, so a client
//!   certificate never passes for a node, even when one CA signs both kinds (a deployment that
//!   uses one CA for everything stays safe);
//! - the **node id**: exactly one DNS subject alternative name of the form `node-<id>.raft`
//!   ([`node_dns_name`]).
//!
//! Clients dial a peer with `node-<id>.raft` as the TLS server name, so rustls checks that the
//! server's certificate names the id being dialed; the verifiers of [`crate::tls`] also demand
//! the node role on both sides of the handshake. A server binds an inbound connection to the id
//! its peer's certificate names. Any node id is accepted (a node added to the cluster since this
//! node's address book was written must be able to reach it), except the ids the network was
//! told to refuse ([`QuicNetwork::refuse`](crate::QuicNetwork::refuse)): nodes removed from the
//! cluster, whose certificates may still be valid.

use raft_core::NodeId;
use rustls::pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use webpki::{EndEntityCert, KeyUsage};

/// The DNS name suffix of node certificates.
pub const NODE_NAME_SUFFIX: &str = ".raft";

/// The extended key usage that marks a certificate as a Raft node's: the object identifier
/// `2.25.263019436043855524101045136422824933350` (an OID derived from the UUID
/// `c5dfb366-884c-4c65-b2fb-773dc9dd77e6`, as ITU-T X.667 allows without registration), as the
/// content bytes of its DER encoding.
///
/// raft-quic refuses any peer certificate without it, on both sides of every handshake.
pub const NODE_ROLE_OID: &[u8] = &[
    0x69, 0x83, 0x8b, 0xdf, 0xd9, 0xd9, 0xd1, 0x84, 0xe2, 0xb1, 0xcb, 0xb2, 0xfd, 0xdd, 0xe7, 0xdc,
    0xce, 0xf5, 0xef, 0x66,
];

/// The content bytes of the TLS server authentication OID (1.3.6.1.5.5.7.3.1).
pub(crate) const SERVER_AUTH_OID: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
/// The content bytes of the TLS client authentication OID (1.3.6.1.5.5.7.3.2).
pub(crate) const CLIENT_AUTH_OID: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];

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
    /// The certificate names several node ids, so it cannot identify one node.
    #[error("the certificate names several node ids: {0:?}")]
    Ambiguous(Vec<NodeId>),
    /// The certificate does not chain to a trusted CA, is not valid now, or lacks a required
    /// extended key usage (the node role, or TLS server and client authentication).
    #[error("the certificate is not valid for the cluster: {0}")]
    Untrusted(String),
    /// The certificate names a node id this network refuses (a node removed from the cluster).
    #[error("node {0} was removed from the cluster: its certificate is refused")]
    Refused(NodeId),
}

/// The node id in a DNS name of the form `node-<id>.raft`, if it is one.
fn id_in_name(name: &str) -> Option<NodeId> {
    let digits = name.strip_prefix("node-")?.strip_suffix(NODE_NAME_SUFFIX)?;
    let id: NodeId = digits.parse().ok()?;
    // Only the canonical spelling (no sign, no leading zeros) names a node.
    (node_dns_name(id) == name).then_some(id)
}

fn parse<'a>(cert: &'a CertificateDer<'_>) -> Result<EndEntityCert<'a>, IdentityError> {
    EndEntityCert::try_from(cert).map_err(|e| IdentityError::BadCertificate(e.to_string()))
}

/// The DNS subject alternative names of `cert`. Says nothing about whether the certificate is
/// trusted: call it on verified certificates (an application's own roles live in these names).
pub fn dns_names(cert: &CertificateDer<'_>) -> Result<Vec<String>, IdentityError> {
    Ok(parse(cert)?.valid_dns_names().map(str::to_owned).collect())
}

/// The certificate chain an established connection's peer presented (verified at the
/// handshake), leaf first.
pub(crate) fn peer_chain(
    connection: &quinn::Connection,
) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let identity = connection.peer_identity().ok_or(IdentityError::NoCertificate)?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>();
    chain.map(|chain| *chain).map_err(|_| IdentityError::NoCertificate)
}

/// The verified leaf certificate of an established connection's peer.
pub fn peer_certificate(
    connection: &quinn::Connection,
) -> Result<CertificateDer<'static>, IdentityError> {
    peer_chain(connection)?.first().cloned().ok_or(IdentityError::NoCertificate)
}

/// Checks again, now, the certificate chain an established connection's peer presented: it
/// must chain to one of `cas` (say, a trust bundle that dropped a CA since the handshake), be
/// valid now, and carry the extended key usage of `role` (the node role for
/// [`PeerRole::Node`](crate::PeerRole::Node), TLS client authentication for
/// [`PeerRole::Any`](crate::PeerRole::Any): what the handshake demanded). TLS checks a
/// certificate once, at the handshake; this is how a server applies a CA roll-over to the
/// connections it already holds (with [`Gate::revalidate`](crate::Gate::revalidate), which
/// also applies it to the handshakes under way).
pub fn recheck_peer(
    connection: &quinn::Connection,
    cas: &[CertificateDer<'_>],
    role: crate::PeerRole,
) -> Result<(), IdentityError> {
    let chain = peer_chain(connection)?;
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err(IdentityError::NoCertificate);
    };
    let usage = match role {
        crate::PeerRole::Node => NODE_ROLE_OID,
        crate::PeerRole::Any => CLIENT_AUTH_OID,
    };
    verify_usage(&trust_anchors(cas)?, leaf, intermediates, UnixTime::now(), usage)
}

/// The one node id that `cert` names (its `node-<id>.raft` DNS names, in canonical spelling).
/// Says nothing about whether the certificate is trusted: call it on verified certificates.
pub fn node_id_of(cert: &CertificateDer<'_>) -> Result<NodeId, IdentityError> {
    let parsed = parse(cert)?;
    let mut ids: Vec<NodeId> = parsed.valid_dns_names().filter_map(id_in_name).collect();
    ids.sort_unstable();
    ids.dedup();
    match ids.as_slice() {
        [] => Err(IdentityError::Unknown),
        [id] => Ok(*id),
        _ => Err(IdentityError::Ambiguous(ids)),
    }
}

/// The node id proved by an established connection: the one id its peer's (verified) leaf
/// certificate names. The handshake already checked the chain and the node role.
pub(crate) fn peer_node_id(connection: &quinn::Connection) -> Result<NodeId, IdentityError> {
    node_id_of(&peer_certificate(connection)?)
}

/// Checks that `cert` (with `intermediates`) chains to one of `anchors` at `now` and carries
/// the extended key usage `required`.
pub(crate) fn verify_usage(
    anchors: &[TrustAnchor<'_>],
    cert: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    required: &'static [u8],
) -> Result<(), IdentityError> {
    let parsed = parse(cert)?;
    let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms.all;
    parsed
        .verify_for_usage(
            algs,
            anchors,
            intermediates,
            now,
            KeyUsage::required(required),
            None,
            None,
        )
        .map(|_| ())
        .map_err(|e| IdentityError::Untrusted(e.to_string()))
}

/// Parses CA certificates into trust anchors.
pub(crate) fn trust_anchors<'a>(
    cas: &'a [CertificateDer<'a>],
) -> Result<Vec<TrustAnchor<'a>>, IdentityError> {
    cas.iter()
        .map(|ca| {
            webpki::anchor_from_trusted_cert(ca)
                .map_err(|e| IdentityError::Untrusted(format!("bad CA certificate: {e}")))
        })
        .collect()
}

/// Checks that `cert` (with `intermediates`) chains to one of the CA certificates `cas`, is
/// valid now for TLS server and client authentication, carries the node role and names node
/// `id` and no other: every check peers will apply, run locally so that a misconfigured node
/// fails at startup with a clear error.
pub(crate) fn check_node_cert(
    cas: &[CertificateDer<'_>],
    cert: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    id: NodeId,
) -> Result<(), IdentityError> {
    if cas.is_empty() {
        return Err(IdentityError::Untrusted("no trusted CA certificate".into()));
    }
    let anchors = trust_anchors(cas)?;
    let now = UnixTime::now();
    verify_usage(&anchors, cert, intermediates, now, NODE_ROLE_OID).map_err(|e| {
        IdentityError::Untrusted(format!("{e} (is it a node certificate with the raft node role?)"))
    })?;
    for usage in [SERVER_AUTH_OID, CLIENT_AUTH_OID] {
        verify_usage(&anchors, cert, intermediates, now, usage)?;
    }
    match node_id_of(cert) {
        Ok(named) if named == id => {}
        Ok(_) | Err(IdentityError::Unknown) | Err(IdentityError::Ambiguous(_)) => {
            return Err(IdentityError::Untrusted(format!(
                "it does not name {} (and only it)",
                node_dns_name(id)
            )))
        }
        Err(e) => return Err(e),
    }
    // The same check a dialing peer makes with `node-<id>.raft` as the server name.
    let name = ServerName::try_from(node_dns_name(id))
        .map_err(|e| IdentityError::Untrusted(e.to_string()))?;
    parse(cert)?
        .verify_is_valid_for_subject_name(&name)
        .map_err(|e| IdentityError::Untrusted(e.to_string()))
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

    /// The DER content bytes of an OID whose first two arcs are `first` and `second`, followed
    /// by `rest` (base-128, most significant group first).
    fn encode_oid(first: u128, second: u128, rest: &[u128]) -> Vec<u8> {
        let mut out = Vec::new();
        for arc in std::iter::once(first * 40 + second).chain(rest.iter().copied()) {
            let mut groups = vec![(arc & 0x7f) as u8];
            let mut value = arc >> 7;
            while value > 0 {
                groups.push(0x80 | (value & 0x7f) as u8);
                value >>= 7;
            }
            out.extend(groups.iter().rev());
        }
        out
    }

    #[test]
    fn the_node_role_oid_is_the_documented_uuid_arc() {
        let uuid = 0xc5dfb366_884c_4c65_b2fb_773dc9dd77e6_u128;
        assert_eq!(uuid, 263019436043855524101045136422824933350);
        assert_eq!(encode_oid(2, 25, &[uuid]), NODE_ROLE_OID);
        assert_eq!(encode_oid(1, 3, &[6, 1, 5, 5, 7, 3, 1]), SERVER_AUTH_OID);
        assert_eq!(encode_oid(1, 3, &[6, 1, 5, 5, 7, 3, 2]), CLIENT_AUTH_OID);
    }
}
