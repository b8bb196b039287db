//! [`NodeTls`]: the TLS material one node loads (cluster CA, its certificate chain, its key).

use std::fmt;
use std::path::Path;

use raft_core::NodeId;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::certs::{node_cert_file, node_key_file, CertError, CA_CERT_FILE};

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io { path: path.to_owned(), source }
}

/// The TLS material one node needs: the cluster CA certificate (the only trust anchor), the
/// node's certificate chain (leaf first) and its private key.
pub struct NodeTls {
    /// The cluster CA certificate. Peers must present a certificate it signed.
    pub ca_cert: CertificateDer<'static>,
    /// This node's certificate, leaf first, optionally followed by intermediates.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// This node's private key. A secret: never logged.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for NodeTls {
    fn clone(&self) -> Self {
        Self {
            ca_cert: self.ca_cert.clone(),
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeTls")
            .field("cert_chain_len", &self.cert_chain.len())
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl NodeTls {
    /// Parses PEM inputs: `ca_pem` holds the CA certificate, `cert_pem` the node's chain (leaf
    /// first) and `key_pem` its private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, CertError> {
        Self::parse(ca_pem, "CA certificate", cert_pem, "node certificate", key_pem, "node key")
    }

    /// Reads and parses the three PEM files.
    pub fn from_pem_files(
        ca_cert: impl AsRef<Path>,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, CertError> {
        let (ca_cert, cert, key) = (ca_cert.as_ref(), cert.as_ref(), key.as_ref());
        let read = |p: &Path| std::fs::read(p).map_err(io_error(p));
        Self::parse(
            &read(ca_cert)?,
            &ca_cert.display().to_string(),
            &read(cert)?,
            &cert.display().to_string(),
            &read(key)?,
            &key.display().to_string(),
        )
    }

    /// Loads node `id`'s material from a certificate directory laid out as by
    /// [`generate_cluster_certs`](crate::generate_cluster_certs) (`ca.pem`, `node-<id>.pem`, `node-<id>.key`).
    pub fn load(dir: impl AsRef<Path>, id: NodeId) -> Result<Self, CertError> {
        let dir = dir.as_ref();
        Self::from_pem_files(
            dir.join(CA_CERT_FILE),
            dir.join(node_cert_file(id)),
            dir.join(node_key_file(id)),
        )
    }

    fn parse(
        ca: &[u8],
        ca_what: &str,
        cert: &[u8],
        cert_what: &str,
        key: &[u8],
        key_what: &str,
    ) -> Result<Self, CertError> {
        let pem_error = |what: &str, reason: String| CertError::Pem { what: what.into(), reason };
        let ca_cert =
            CertificateDer::from_pem_slice(ca).map_err(|e| pem_error(ca_what, e.to_string()))?;
        let cert_chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_error(cert_what, e.to_string()))?;
        if cert_chain.is_empty() {
            return Err(pem_error(cert_what, "no certificate found".into()));
        }
        let key =
            PrivateKeyDer::from_pem_slice(key).map_err(|e| pem_error(key_what, e.to_string()))?;
        Ok(Self { ca_cert, cert_chain, key })
    }
}
