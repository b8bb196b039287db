//! Which cluster a `kv-node` belongs to (`raft_core::Config::cluster_id`, written on every
//! Raft request and checked by the receiver).
//!
//! Without `--cluster-id`, the id is derived from the node CA: the first 8 bytes of the SHA-256
//! of the first certificate of `node-ca.pem` (DER). Every cluster with its own PKI (`kv
//! gen-certs` makes one per cluster) thus gets its own id without configuration, and two
//! clusters that reach each other through a stale address refuse each other's requests.
//!
//! The id a node first runs with is kept in `DATA_DIR/cluster-id` and used at every later start,
//! so a node-CA roll-over (a new CA first in the bundle) does not change a running cluster's id,
//! and a data directory started under another cluster's `--cluster-id` is refused at start
//! (raft-core does not persist the id: see `Config::cluster_id`). A node that joins after a
//! roll-over must be given the cluster's id (`--cluster-id`, which every node logs at start).

use std::path::{Path, PathBuf};

use raft_core::ClusterId;
use raft_quic::rustls::pki_types::CertificateDer;

/// The file in the data directory that holds the cluster id (decimal text).
pub const CLUSTER_ID_FILE: &str = "cluster-id";

/// Why the cluster id could not be settled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterIdError {
    /// The data directory belongs to another cluster than the one `--cluster-id` names.
    #[error(
        "{path} holds cluster id {stored}, but --cluster-id is {configured}: this data \
         directory belongs to another cluster"
    )]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// The id in the file.
        stored: ClusterId,
        /// The id given with `--cluster-id`.
        configured: ClusterId,
    },
    /// The file exists but does not hold a number.
    #[error("{path}: not a cluster id: `{text}`")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What it holds.
        text: String,
    },
    /// The node CA bundle is empty.
    #[error("the node CA bundle holds no certificate to derive the cluster id from")]
    NoCa,
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The cluster id derived from a node CA bundle: the first 8 bytes (big-endian) of the
/// SHA-256 of its first certificate's DER. Stable across platforms and releases.
pub fn derive(node_cas: &[CertificateDer<'_>]) -> Result<ClusterId, ClusterIdError> {
    let first = node_cas.first().ok_or(ClusterIdError::NoCa)?;
    let digest = ring::digest::digest(&ring::digest::SHA256, first.as_ref());
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest.as_ref()[..8]);
    Ok(ClusterId::from_be_bytes(id))
}

/// The cluster id of the node whose data directory is `data_dir`: the one stored there if any
/// (which `configured` must then equal), else `configured` or, without it, the one derived from
/// `node_cas`, which is stored for later starts.
pub fn settle(
    data_dir: &Path,
    configured: Option<ClusterId>,
    node_cas: &[CertificateDer<'_>],
) -> Result<ClusterId, ClusterIdError> {
    let path = data_dir.join(CLUSTER_ID_FILE);
    let io = |source| ClusterIdError::Io { path: path.clone(), source };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let stored = text.trim().parse().map_err(|_| ClusterIdError::Malformed {
                path: path.clone(),
                text: text.trim().chars().take(64).collect(),
            })?;
            match configured {
                Some(configured) if configured != stored => {
                    Err(ClusterIdError::Mismatch { path, stored, configured })
                }
                _ => Ok(stored),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = match configured {
                Some(id) => id,
                None => derive(node_cas)?,
            };
            write_whole(data_dir, CLUSTER_ID_FILE, &format!("{id}\n")).map_err(io)?;
            Ok(id)
        }
        Err(e) => Err(io(e)),
    }
}

/// Writes `text` to the file `name` of `data_dir` (created if needed): whole, synced, then
/// renamed over, so that a crash leaves either no file or the whole text.
pub(crate) fn write_whole(data_dir: &Path, name: &str, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(data_dir)?;
    let temporary = data_dir.join(format!("{name}.tmp"));
    let mut out = std::fs::File::create(&temporary)?;
    out.write_all(text.as_bytes())?;
    out.sync_all()?;
    std::fs::rename(&temporary, data_dir.join(name))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ca(name: &str) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn each_node_ca_gives_its_own_stable_id() {
        let (a, b) = (ca("cluster a"), ca("cluster b"));
        let id_a = derive(std::slice::from_ref(&a)).unwrap();
        assert_eq!(derive(std::slice::from_ref(&a)).unwrap(), id_a, "not deterministic");
        assert_ne!(derive(std::slice::from_ref(&b)).unwrap(), id_a, "two CAs, one id");
        assert_ne!(id_a, raft_core::DEFAULT_CLUSTER_ID);
        // A roll-over bundle (the old CA first) keeps the id; the hash is of fixed bytes.
        assert_eq!(derive(&[a.clone(), b]).unwrap(), id_a);
        let fixed = CertificateDer::from(b"not a certificate, only bytes".to_vec());
        assert_eq!(derive(&[fixed]).unwrap(), 0x9b95_0af0_53a0_052d, "the derivation changed");
        assert!(matches!(derive(&[]), Err(ClusterIdError::NoCa)));
    }

    #[test]
    fn the_first_id_is_kept_and_another_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let (a, b) = (ca("cluster a"), ca("cluster b"));
        let id = settle(&data, None, std::slice::from_ref(&a)).unwrap();
        assert_eq!(id, derive(std::slice::from_ref(&a)).unwrap());
        // A later start with a rolled-over CA keeps the stored id.
        assert_eq!(settle(&data, None, std::slice::from_ref(&b)).unwrap(), id);
        assert_eq!(settle(&data, Some(id), &[]).unwrap(), id);
        let error = settle(&data, Some(id ^ 1), &[]).unwrap_err();
        assert!(matches!(error, ClusterIdError::Mismatch { stored, configured, .. }
            if stored == id && configured == id ^ 1));
        // An explicit id is stored as it is.
        let other = dir.path().join("other");
        assert_eq!(settle(&other, Some(42), std::slice::from_ref(&a)).unwrap(), 42);
        assert_eq!(std::fs::read_to_string(other.join(CLUSTER_ID_FILE)).unwrap(), "42\n");
        std::fs::write(other.join(CLUSTER_ID_FILE), "x").unwrap();
        assert!(matches!(settle(&other, None, &[a]), Err(ClusterIdError::Malformed { .. })));
    }
}
