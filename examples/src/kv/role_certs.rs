//! Interim issuance of client and admin certificates (`client-<name>.kv`, `admin-<name>.kv`,
//! see [`auth`](super::auth)) from the cluster CA of a certificate directory (`ca.pem`,
//! `ca.key`), for the `kv` tool, the test clusters and the tests, until the PKI tooling issues
//! them from a separate client CA.
//!
//! The issuer is rebuilt from the CA key with the distinguished name that
//! `raft_quic::ClusterCa` gives its certificates, so what is issued here chains to `ca.pem`.

use std::path::Path;

use raft_quic::NodeTls;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::auth::Principal;
use super::tls::KvTlsError;

/// The common name `raft_quic::ClusterCa` gives its CA certificates.
const CLUSTER_CA_COMMON_NAME: &str = "raft-quic cluster CA";

fn generate_error(e: rcgen::Error) -> KvTlsError {
    KvTlsError::Cert(raft_quic::CertError::Generate(e))
}

/// A certificate and key (PEM) naming `principal`, signed by the cluster CA whose key is
/// `ca_key_pem`, valid for TLS client authentication.
pub fn issue_role_cert(
    ca_key_pem: &str,
    principal: &Principal,
) -> Result<(String, String), KvTlsError> {
    let mut ca = CertificateParams::default();
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name.push(DnType::CommonName, CLUSTER_CA_COMMON_NAME);
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let issuer = Issuer::new(ca, KeyPair::from_pem(ca_key_pem).map_err(generate_error)?);
    let key = KeyPair::generate().map_err(generate_error)?;
    let mut params = CertificateParams::new(vec![principal.dns_name()]).map_err(generate_error)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, principal.dns_name());
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer).map_err(generate_error)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Issues a certificate for `principal` from the CA in certificate directory `dir` and returns
/// it as client TLS material (trusting `ca.pem`), without writing it.
pub fn role_tls(dir: &Path, principal: &Principal) -> Result<NodeTls, KvTlsError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|source| KvTlsError::Io { path, source })
    };
    let ca_cert = read(raft_quic::certs::CA_CERT_FILE)?;
    let (cert, key) = issue_role_cert(&read(raft_quic::certs::CA_KEY_FILE)?, principal)?;
    Ok(NodeTls::from_pem(ca_cert.as_bytes(), cert.as_bytes(), key.as_bytes())?)
}
