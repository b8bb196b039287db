//! [`ClusterCa`]: a certificate authority that issues node certificates (with the node role) and,
//! for applications, client certificates (without it), each with a limited lifetime.

use std::fmt;
use std::time::Duration;

use raft_core::NodeId;
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::certs::CertError;
use crate::identity::{
    check_node_cert, node_dns_name, CLIENT_AUTH_OID, NODE_ROLE_OID, SERVER_AUTH_OID,
};
use crate::node_tls::NodeTls;

/// How long a CA certificate made by [`ClusterCa::generate`] is valid: 10 years.
pub const DEFAULT_CA_LIFETIME: Duration = Duration::from_secs(3650 * 24 * 3600);
/// How long a certificate issued by [`ClusterCa::issue`] is valid: 1 year.
pub const DEFAULT_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// How far back a new certificate's validity starts, so that a peer whose clock is somewhat
/// behind accepts it at once.
const BACKDATE: Duration = Duration::from_secs(3600);

/// Which certificate authority: where its files live and the name in its certificate. The name
/// must be known to rebuild a CA from its files ([`ClusterCa::from_pem_with`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaKind {
    /// The file names in a CA directory: `<stem>.pem` (certificate) and `<stem>.key` (key).
    /// The same `<stem>.pem` name is used for the trust bundle in a certificate directory.
    pub file_stem: &'static str,
    /// The common name of the CA certificate.
    pub common_name: &'static str,
}

impl CaKind {
    /// `<stem>.pem`: the CA certificate (in a CA directory) or the bundle of trusted CA
    /// certificates of this kind (in a certificate directory).
    pub fn cert_file(&self) -> String {
        format!("{}.pem", self.file_stem)
    }

    /// `<stem>.key`: the CA's private key. Lives only in the CA directory.
    pub fn key_file(&self) -> String {
        format!("{}.key", self.file_stem)
    }
}

/// The CA of node certificates: `node-ca.pem` / `node-ca.key`, "raft-quic node CA".
pub const NODE_CA: CaKind = CaKind { file_stem: "node-ca", common_name: "raft-quic node CA" };

fn validity(params: &mut CertificateParams, lifetime: Duration) -> Result<(), CertError> {
    let now = time::OffsetDateTime::now_utc();
    let span = |d: Duration| {
        time::Duration::try_from(d).map_err(|_| CertError::Lifetime("too long".into()))
    };
    if lifetime < Duration::from_secs(60) {
        return Err(CertError::Lifetime("shorter than a minute".into()));
    }
    params.not_before = now - span(BACKDATE)?;
    params.not_after =
        now.checked_add(span(lifetime)?).ok_or(CertError::Lifetime("too long".into()))?;
    params.serial_number = Some(random_serial()?);
    Ok(())
}

/// A random positive 20-byte serial number (RFC 5280's maximum).
fn random_serial() -> Result<SerialNumber, CertError> {
    let mut bytes = [0u8; 20];
    SystemRandom::new().fill(&mut bytes).map_err(|_| CertError::Random)?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // Nonzero leading byte: exactly 20 bytes, never a zero serial.
    Ok(SerialNumber::from_slice(&bytes))
}

/// The parameters that identify a CA as an issuer (its name, constraints and key usages); its
/// validity does not matter to the certificates it signs.
fn ca_params(kind: CaKind) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, kind.common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// DER of `SEQUENCE OF OBJECT IDENTIFIER` holding `oids` (content bytes, each under 128 bytes).
fn eku_extension(oids: &[&[u8]]) -> CustomExtension {
    let mut body = Vec::new();
    for oid in oids {
        body.push(0x06);
        body.push(oid.len() as u8);
        body.extend_from_slice(oid);
    }
    let mut content = vec![0x30, body.len() as u8];
    content.extend(body);
    // id-ce-extKeyUsage (2.5.29.37).
    CustomExtension::from_oid_content(&[2, 5, 29, 37], content)
}

/// A certificate authority of one cluster. A node CA signs the certificate of every node (with
/// the node role); an application may run a second one for its clients. Peers trust the CA
/// certificates of their trust bundle only, so a certificate from any other CA is refused.
pub struct ClusterCa {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// A new node CA ([`NODE_CA`]) with a fresh ECDSA P-256 key and a self-signed certificate
    /// valid for [`DEFAULT_CA_LIFETIME`].
    pub fn generate() -> Result<Self, CertError> {
        Self::generate_with(NODE_CA, DEFAULT_CA_LIFETIME)
    }

    /// A new CA of `kind` whose certificate is valid for `lifetime` from now.
    pub fn generate_with(kind: CaKind, lifetime: Duration) -> Result<Self, CertError> {
        let key = KeyPair::generate()?;
        let mut params = ca_params(kind);
        validity(&mut params, lifetime)?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(ca_params(kind), key),
        })
    }

    /// Rebuilds a node CA made by [`ClusterCa::generate`] from its PEM certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        Self::from_pem_with(NODE_CA, cert_pem, key_pem)
    }

    /// Rebuilds a CA of `kind` from its PEM certificate and key, to issue more certificates.
    /// Fails unless a certificate it issues verifies against `cert_pem`.
    pub fn from_pem_with(kind: CaKind, cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| CertError::Pem { what: "CA certificate".into(), reason: e.to_string() })?;
        let key = KeyPair::from_pem(key_pem)?;
        let ca =
            Self { issuer: Issuer::new(ca_params(kind), key), cert_der, cert_pem: cert_pem.into() };
        let probe = ca.issue_node(0, Duration::from_secs(3600))?;
        let probe_der = CertificateDer::from_pem_slice(probe.cert_pem.as_bytes())
            .map_err(|e| CertError::CaMismatch(e.to_string()))?;
        check_node_cert(std::slice::from_ref(&ca.cert_der), &probe_der, &[], 0)
            .map_err(|e| CertError::CaMismatch(e.to_string()))?;
        Ok(ca)
    }

    /// The CA certificate in PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate in DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA private key in PEM (PKCS#8). A secret: keep it off the nodes.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issues a node certificate and a fresh key for node `id`, valid for
    /// [`DEFAULT_CERT_LIFETIME`] (see [`ClusterCa::issue_node`]).
    pub fn issue(&self, id: NodeId) -> Result<NodeCert, CertError> {
        self.issue_node(id, DEFAULT_CERT_LIFETIME)
    }

    /// Issues a node certificate and a fresh key for node `id`, valid from now for `lifetime`.
    /// The certificate names exactly [`node_dns_name(id)`](node_dns_name), carries the node
    /// role ([`NODE_ROLE_OID`](crate::NODE_ROLE_OID)) and is valid for TLS client and server
    /// authentication, so the node can both serve and dial.
    pub fn issue_node(&self, id: NodeId, lifetime: Duration) -> Result<NodeCert, CertError> {
        let extension = eku_extension(&[SERVER_AUTH_OID, CLIENT_AUTH_OID, NODE_ROLE_OID]);
        let (cert_pem, key_pem) = self.sign(&node_dns_name(id), lifetime, |params| {
            params.custom_extensions.push(extension);
        })?;
        Ok(NodeCert { id, cert_pem, key_pem })
    }

    /// Issues a client certificate and a fresh key naming `dns_name` (one DNS subject
    /// alternative name, also the common name), valid from now for `lifetime`, for TLS client
    /// authentication only: it can never serve, and never passes for a node (no node role).
    pub fn issue_client(
        &self,
        dns_name: &str,
        lifetime: Duration,
    ) -> Result<ClientCert, CertError> {
        let (cert_pem, key_pem) = self.sign(dns_name, lifetime, |params| {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        })?;
        Ok(ClientCert { dns_name: dns_name.to_owned(), cert_pem, key_pem })
    }

    fn sign(
        &self,
        dns_name: &str,
        lifetime: Duration,
        usages: impl FnOnce(&mut CertificateParams),
    ) -> Result<(String, String), CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![dns_name.to_owned()])?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, dns_name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, lifetime)?;
        usages(&mut params);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Issues a certificate for node `id` and returns it as loaded [`NodeTls`] material trusting
    /// this CA only, without touching the disk (for tests and embedded clusters).
    pub fn node_tls(&self, id: NodeId) -> Result<NodeTls, CertError> {
        let cert = self.issue(id)?;
        NodeTls::from_pem(
            self.cert_pem.as_bytes(),
            cert.cert_pem.as_bytes(),
            cert.key_pem.as_bytes(),
        )
    }
}

/// A node certificate and its private key, in PEM.
#[derive(Clone)]
pub struct NodeCert {
    /// The node the certificate names.
    pub id: NodeId,
    /// The certificate, signed by the node CA.
    pub cert_pem: String,
    /// The private key (PKCS#8). A secret.
    pub key_pem: String,
}

impl fmt::Debug for NodeCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeCert").field("id", &self.id).finish_non_exhaustive()
    }
}

/// A client certificate and its private key, in PEM.
#[derive(Clone)]
pub struct ClientCert {
    /// The DNS name the certificate names.
    pub dns_name: String,
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8). A secret.
    pub key_pem: String,
}

impl fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCert").field("dns_name", &self.dns_name).finish_non_exhaustive()
    }
}
