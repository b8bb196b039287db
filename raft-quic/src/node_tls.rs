//! [`NodeTls`]: the TLS material one endpoint loads (trusted CAs, its certificate chain, its key).

use std::fmt;
use std::path::Path;

use raft_core::NodeId;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::ca::NODE_CA;
use crate::cert_dirs::{check_certificate_dir, key_matches};
use crate::certs::{node_cert_file, node_key_file, read_file, read_key_file, CertError};

/// The TLS material of one endpoint: the CA certificates it trusts for its peers (a bundle:
/// several during a CA roll-over), its certificate chain (leaf first) and its private key.
///
/// A node's material trusts the node CA(s) and holds a node certificate. An application client
/// (for example the kv example's) uses the same type: its own certificate, and the CA(s) it
/// trusts to sign the servers it dials.
pub struct NodeTls {
    /// The trusted CA certificates. Peers must present a certificate one of them signed.
    pub trust_anchors: Vec<CertificateDer<'static>>,
    /// This endpoint's certificate, leaf first, optionally followed by intermediates.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// This endpoint's private key. A secret: never logged.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for NodeTls {
    fn clone(&self) -> Self {
        Self {
            trust_anchors: self.trust_anchors.clone(),
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeTls")
            .field("trust_anchors", &self.trust_anchors.len())
            .field("cert_chain_len", &self.cert_chain.len())
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Parses every certificate of a PEM input; at least one is required.
pub fn parse_certificates(
    pem: &[u8],
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let pem_error = |reason: String| CertError::Pem { what: what.into(), reason };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_error("no certificate found".into()));
    }
    Ok(certs)
}

impl NodeTls {
    /// Parses PEM inputs: `trust_pem` holds one or more trusted CA certificates, `cert_pem` the
    /// chain (leaf first) and `key_pem` the private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem(trust_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, CertError> {
        Self::parse(trust_pem, "trusted CA certificates", cert_pem, "certificate", key_pem, "key")
    }

    /// Reads and parses the three PEM files. Refuses a key file that its group or other users
    /// may access ([`CertError::KeyPermissions`]), as ssh does. The chain is the certificate
    /// file's if it belongs to the key; otherwise the chain stored in the key file after the
    /// key (see [`write_identity`](crate::certs::write_identity): a renewal interrupted between
    /// its two files), if that one does; otherwise [`CertError::KeyMismatch`].
    pub fn from_pem_files(
        trust: impl AsRef<Path>,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, CertError> {
        let (trust, cert, key_path) = (trust.as_ref(), cert.as_ref(), key.as_ref());
        let key_pem = read_key_file(key_path)?;
        let key = parse_key(&key_pem, &key_path.display().to_string())?;
        let cert_chain = chain_of_key(cert, key_path, &key_pem, &key)?;
        let trust_anchors = parse_certificates(&read_file(trust)?, &trust.display().to_string())?;
        Ok(Self { trust_anchors, cert_chain, key })
    }

    /// Loads node `id`'s material from a certificate directory laid out as by
    /// [`generate_cluster_certs`](crate::generate_cluster_certs): the node CA bundle
    /// (`node-ca.pem`), `node-<id>.pem` and `node-<id>.key`. Refuses a directory that holds
    /// the node CA's key ([`CertError::CaKeyInCertificates`]), and removes the temporary files
    /// crashed writes left there.
    pub fn load(dir: impl AsRef<Path>, id: NodeId) -> Result<Self, CertError> {
        let dir = dir.as_ref();
        let tls = Self::from_pem_files(
            dir.join(NODE_CA.cert_file()),
            dir.join(node_cert_file(id)),
            dir.join(node_key_file(id)),
        )?;
        check_certificate_dir(dir, &[NODE_CA], &tls.trust_anchors)?;
        Ok(tls)
    }

    fn parse(
        trust: &[u8],
        trust_what: &str,
        cert: &[u8],
        cert_what: &str,
        key: &[u8],
        key_what: &str,
    ) -> Result<Self, CertError> {
        let trust_anchors = parse_certificates(trust, trust_what)?;
        let cert_chain = parse_certificates(cert, cert_what)?;
        let key = parse_key(key, key_what)?;
        Ok(Self { trust_anchors, cert_chain, key })
    }
}

fn parse_key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, CertError> {
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| CertError::Pem { what: what.into(), reason: e.to_string() })
}

/// The certificate chain that belongs to `key`: the certificate file's, or the one stored in
/// the key file (see [`NodeTls::from_pem_files`]).
fn chain_of_key(
    cert_path: &Path,
    key_path: &Path,
    key_pem: &[u8],
    key: &PrivateKeyDer<'_>,
) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let belongs =
        |chain: &[CertificateDer<'_>]| chain.first().and_then(|leaf| key_matches(leaf, key));
    let from_file = read_file(cert_path)
        .and_then(|pem| parse_certificates(&pem, &cert_path.display().to_string()));
    if let Ok(chain) = &from_file {
        if belongs(chain) != Some(false) {
            return Ok(chain.clone());
        }
    }
    let stored: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(key_pem).filter_map(Result::ok).collect();
    if belongs(&stored) == Some(true) {
        tracing::warn!(
            cert = %cert_path.display(),
            key = %key_path.display(),
            "the certificate file does not belong to the key (a renewal was interrupted?): \
             using the certificate stored with the key"
        );
        return Ok(stored);
    }
    match from_file {
        Ok(_) => {
            Err(CertError::KeyMismatch { cert: cert_path.to_owned(), key: key_path.to_owned() })
        }
        Err(e) => Err(e),
    }
}
