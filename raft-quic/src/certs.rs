//! Certificates on disk: a CA directory (kept off the nodes), certificate directories (what a node
//! loads), and safe reading and writing of PEM files.
//!
//! | directory | file | content | secret |
//! |---|---|---|---|
//! | CA | `node-ca.pem` | the node CA certificate | no |
//! | CA | `node-ca.key` | the node CA private key: it can mint any node; **never on a node** | **yes** |
//! | certs | `node-ca.pem` | the trust bundle: every node CA certificate trusted (two during a roll-over) | no |
//! | certs | `node-<id>.pem` | node `id`'s certificate (node role, names `node-<id>.raft`) | no |
//! | certs | `node-<id>.key` | node `id`'s private key (PKCS#8), followed by its certificate | **yes** |
//!
//! Secret files are created with mode `0600` on Unix, and a key file that the group or other
//! users may access is refused when loaded ([`CertError::KeyPermissions`]). A CA directory is
//! never a certificate directory, nor inside one, nor around one
//! ([`CertError::CaBesideCertificates`]), and a node refuses to load its files from a
//! directory that holds a CA key ([`CertError::CaKeyInCertificates`]).
//!
//! **Crash safety.** Every file is replaced atomically ([`write_pem_file`]). A key and its
//! certificate are two files, so a crash (or a full disk) between the two replacements would
//! leave a new key beside the old certificate; hence a key file also holds the certificate
//! chain it was issued with, and is written first ([`write_identity`]). A loader takes the
//! certificate file when it belongs to the key, and otherwise the chain stored with the key:
//! the pair it loads always belongs together. Temporary files of a crashed write (which may
//! hold a key) are removed when a node loads its directory ([`remove_stale_temps`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use raft_core::NodeId;
use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::CertificateDer;

pub use crate::ca::{
    CaKind, ClientCert, ClusterCa, NodeCert, DEFAULT_CA_LIFETIME, DEFAULT_CERT_LIFETIME, NODE_CA,
};
pub use crate::cert_dirs::{
    check_apart, check_certificate_dir, key_matches, refuse_ca_keys, remove_stale_temps,
    STALE_TEMP_AGE,
};
pub use crate::node_tls::{parse_certificates, NodeTls};

/// File name of node `id`'s certificate: `node-<id>.pem`.
pub fn node_cert_file(id: NodeId) -> String {
    format!("node-{id}.pem")
}

/// File name of node `id`'s private key: `node-<id>.key`.
pub fn node_key_file(id: NodeId) -> String {
    format!("node-{id}.key")
}

/// Why certificates could not be generated, written or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// rcgen failed to generate a key or sign a certificate.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A PEM input held no usable certificate or key.
    #[error("{what}: {reason}")]
    Pem {
        /// Which input (a file path or a description).
        what: String,
        /// What was wrong.
        reason: String,
    },
    /// The CA key and certificate do not belong together, or the CA is not of the expected
    /// kind.
    #[error("the CA key does not match the CA certificate: {0}")]
    CaMismatch(String),
    /// A private key file may be accessed by its group or by other users.
    #[error(
        "{}: private key file is accessible by other users (mode {mode:o}); run `chmod 600` on it",
        path.display()
    )]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A CA key would be written into (or read from) a directory that holds node or client
    /// keys: the CA directory is the certificate directory, or inside it, or contains it.
    #[error(
        "{}: the CA directory must be apart from certificate directories (not the same, not \
         inside one, not containing one)",
        dir.display()
    )]
    CaBesideCertificates {
        /// The certificate directory.
        dir: PathBuf,
    },
    /// A certificate directory holds a CA's private key (by its name, or a key that matches a
    /// trusted CA certificate): a node refuses to load its files from there.
    #[error(
        "{}: a CA private key sits in the certificate directory; move it to the CA directory, \
         off the nodes",
        path.display()
    )]
    CaKeyInCertificates {
        /// The CA key file.
        path: PathBuf,
    },
    /// A certificate does not belong to the private key beside it (and the key file holds no
    /// certificate that does).
    #[error("{}: the certificate does not belong to the key {}", cert.display(), key.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// A CA already exists where a new one was to be created.
    #[error("{}: a CA key already exists; refusing to replace it", path.display())]
    CaExists {
        /// The existing key.
        path: PathBuf,
    },
    /// A requested certificate lifetime is unusable.
    #[error("certificate lifetime {0}")]
    Lifetime(String),
    /// The system's random number generator failed.
    #[error("the system random number generator failed")]
    Random,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io { path: path.to_owned(), source }
}

/// Reads a whole file.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(io_error(path))
}

/// Reads a private key file, refusing it if its group or other users may access it.
pub fn read_key_file(path: &Path) -> Result<Vec<u8>, CertError> {
    let file = std::fs::File::open(path).map_err(io_error(path))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file.metadata().map_err(io_error(path))?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(CertError::KeyPermissions { path: path.to_owned(), mode: mode & 0o7777 });
        }
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut &file, &mut bytes).map_err(io_error(path))?;
    Ok(bytes)
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Writes `contents` (a PEM file) to `path` atomically: into a new temporary file of a unique
/// name in the same directory (created exclusively, so never a pre-existing file or link, with
/// mode `0600` for `secret` files and `0644` otherwise on Unix), synced, renamed over `path`,
/// and the directory synced. A crash never leaves a half-written file, and two writers never
/// share a temporary file.
pub fn write_pem_file(path: &Path, contents: &str, secret: bool) -> Result<(), CertError> {
    let dir = parent_dir(path);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let random = SystemRandom::new();
    let (tmp, mut file) = loop {
        let mut tag = [0u8; 8];
        random.fill(&mut tag).map_err(|_| CertError::Random)?;
        let tmp = dir.join(format!(
            ".{name}.{}.{:016x}.tmp",
            std::process::id(),
            u64::from_le_bytes(tag)
        ));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(if secret { 0o600 } else { 0o644 });
        }
        #[cfg(not(unix))]
        let _ = secret;
        match options.open(&tmp) {
            Ok(file) => break (tmp, file),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_error(&tmp)(e)),
        }
    };
    let written = file
        .write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error(&tmp))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(io_error(path)));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), CertError> {
    #[cfg(unix)]
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Writes an identity: `key_path` gets the private key followed by the certificate chain, then
/// `cert_path` the chain alone, each atomically ([`write_pem_file`]). The key file is the unit a
/// crash cannot split: whatever happens between the two writes, the key file's chain belongs to
/// its key, and loaders fall back on it when the certificate file does not (see the module
/// docs).
pub fn write_identity(
    cert_path: &Path,
    key_path: &Path,
    cert_pem: &str,
    key_pem: &str,
) -> Result<(), CertError> {
    let mut both = String::with_capacity(key_pem.len() + cert_pem.len() + 1);
    both.push_str(key_pem);
    if !both.ends_with('\n') {
        both.push('\n');
    }
    both.push_str(cert_pem);
    write_pem_file(key_path, &both, true)?;
    write_pem_file(cert_path, cert_pem, false)
}

/// The PEM blocks of certificates in `text`, in order.
fn certificate_blocks(text: &str) -> Vec<&str> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else { break };
        let end = start + len + END.len();
        blocks.push(&rest[start..end]);
        rest = &rest[end..];
    }
    blocks
}

fn create_dir(dir: &Path) -> Result<(), CertError> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))
}

/// Creates a CA of `kind` in `ca_dir` (created if needed) whose certificate is valid for
/// `lifetime`: `<stem>.pem` and `<stem>.key`. Refuses to replace an existing key.
pub fn create_ca(ca_dir: &Path, kind: CaKind, lifetime: Duration) -> Result<ClusterCa, CertError> {
    create_dir(ca_dir)?;
    let key = ca_dir.join(kind.key_file());
    if key.exists() {
        return Err(CertError::CaExists { path: key });
    }
    let ca = ClusterCa::generate_with(kind, lifetime)?;
    write_identity(&ca_dir.join(kind.cert_file()), &key, ca.cert_pem(), &ca.key_pem())?;
    Ok(ca)
}

/// Loads the CA of `kind` from `ca_dir` (its key must be private to its owner). The
/// certificate is `<stem>.pem`, or the one stored in the key file if `<stem>.pem` is missing or
/// does not belong to the key (a creation interrupted between the two files).
pub fn load_ca(ca_dir: &Path, kind: CaKind) -> Result<ClusterCa, CertError> {
    let cert_path = ca_dir.join(kind.cert_file());
    let key = String::from_utf8_lossy(&read_key_file(&ca_dir.join(kind.key_file()))?).into_owned();
    let file_error = match read_file(&cert_path) {
        Ok(bytes) => match ClusterCa::from_pem_with(kind, &String::from_utf8_lossy(&bytes), &key) {
            Ok(ca) => return Ok(ca),
            Err(e) => e,
        },
        Err(e) => e,
    };
    // The certificate file is missing or does not belong to the key: the one stored with it.
    for cert in certificate_blocks(&key) {
        if let Ok(ca) = ClusterCa::from_pem_with(kind, &format!("{cert}\n"), &key) {
            return Ok(ca);
        }
    }
    Err(file_error)
}

/// The certificate of the CA of `kind` in `ca_dir`, in PEM: `<stem>.pem`, or if it is missing
/// the one stored with the CA key (see [`load_ca`]).
pub fn read_ca_cert(ca_dir: &Path, kind: CaKind) -> Result<String, CertError> {
    let path = ca_dir.join(kind.cert_file());
    match std::fs::read(&path) {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            load_ca(ca_dir, kind).map(|ca| ca.cert_pem().to_owned())
        }
        Err(e) => Err(io_error(&path)(e)),
    }
}

/// Loads the CA of `kind` from `ca_dir`, or creates it there if it holds no key yet.
pub fn ensure_ca(ca_dir: &Path, kind: CaKind, lifetime: Duration) -> Result<ClusterCa, CertError> {
    if ca_dir.join(kind.key_file()).exists() {
        load_ca(ca_dir, kind)
    } else {
        create_ca(ca_dir, kind, lifetime)
    }
}

/// Adds the CA certificate `ca_pem` to the trust bundle `bundle` (a PEM file of CA
/// certificates, created if missing) unless it is already there. Returns whether it was added.
/// This is how a CA roll-over starts: every node trusts the new CA next to the old one before
/// any certificate of the new CA is used.
pub fn trust_ca(bundle: &Path, ca_pem: &str) -> Result<bool, CertError> {
    let new = parse_certificates(ca_pem.as_bytes(), "CA certificate")?;
    let existing: Vec<CertificateDer<'static>> = if bundle.exists() {
        parse_certificates(&read_file(bundle)?, &bundle.display().to_string())?
    } else {
        Vec::new()
    };
    if new.iter().all(|cert| existing.contains(cert)) {
        return Ok(false);
    }
    let mut text = if bundle.exists() {
        String::from_utf8_lossy(&read_file(bundle)?).into_owned()
    } else {
        String::new()
    };
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(ca_pem);
    write_pem_file(bundle, &text, false)?;
    Ok(true)
}

/// The files of one node in a certificate directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeCertFiles {
    /// `node-<id>.pem`.
    pub cert: PathBuf,
    /// `node-<id>.key`.
    pub key: PathBuf,
}

/// Writes a new certificate and key for node `id`, issued by `ca` for `lifetime`, into
/// `certs_dir`, replacing any there, and adds `ca` to the directory's trust bundle.
pub fn issue_node_files(
    ca: &ClusterCa,
    certs_dir: &Path,
    id: NodeId,
    lifetime: Duration,
) -> Result<NodeCertFiles, CertError> {
    create_dir(certs_dir)?;
    let files = NodeCertFiles {
        cert: certs_dir.join(node_cert_file(id)),
        key: certs_dir.join(node_key_file(id)),
    };
    let cert = ca.issue_node(id, lifetime)?;
    trust_ca(&certs_dir.join(NODE_CA.cert_file()), ca.cert_pem())?;
    write_identity(&files.cert, &files.key, &cert.cert_pem, &cert.key_pem)?;
    Ok(files)
}

/// The files written by [`generate_cluster_certs`] or found by [`ensure_cluster_certs`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterCertFiles {
    /// The certificate directory (what nodes load).
    pub dir: PathBuf,
    /// The CA directory (keep it off the nodes).
    pub ca_dir: PathBuf,
    /// The trust bundle in `dir`: `node-ca.pem`.
    pub trust: PathBuf,
    /// Each node's certificate and key.
    pub nodes: BTreeMap<NodeId, NodeCertFiles>,
}

impl ClusterCertFiles {
    /// Loads node `id`'s TLS material from these files.
    pub fn node_tls(&self, id: NodeId) -> Result<NodeTls, CertError> {
        NodeTls::load(&self.dir, id)
    }
}

/// Creates a fresh node CA in `ca_dir` (replacing one there) and, in `certs_dir`, a trust bundle
/// holding only it and one certificate and key per node id (see the module docs for the
/// layout), replacing files of the same names. The two directories must differ.
pub fn generate_cluster_certs(
    ca_dir: impl AsRef<Path>,
    certs_dir: impl AsRef<Path>,
    node_ids: impl IntoIterator<Item = NodeId>,
) -> Result<ClusterCertFiles, CertError> {
    let (ca_dir, certs_dir) = (ca_dir.as_ref(), certs_dir.as_ref());
    prepare_dirs(ca_dir, certs_dir)?;
    let _ = std::fs::remove_file(ca_dir.join(NODE_CA.key_file()));
    let _ = std::fs::remove_file(certs_dir.join(NODE_CA.cert_file()));
    let ca = create_ca(ca_dir, NODE_CA, DEFAULT_CA_LIFETIME)?;
    issue_missing(&ca, ca_dir, certs_dir, node_ids, true)
}

/// Like [`generate_cluster_certs`], but reuses what the directories already hold: an existing
/// CA is loaded instead of replaced (and added to the trust bundle if missing), and only nodes
/// without both files get a new certificate. Lets a demo cluster be restarted, or grown, with no
/// manual step.
pub fn ensure_cluster_certs(
    ca_dir: impl AsRef<Path>,
    certs_dir: impl AsRef<Path>,
    node_ids: impl IntoIterator<Item = NodeId>,
) -> Result<ClusterCertFiles, CertError> {
    let (ca_dir, certs_dir) = (ca_dir.as_ref(), certs_dir.as_ref());
    prepare_dirs(ca_dir, certs_dir)?;
    let ca = ensure_ca(ca_dir, NODE_CA, DEFAULT_CA_LIFETIME)?;
    trust_ca(&certs_dir.join(NODE_CA.cert_file()), ca.cert_pem())?;
    issue_missing(&ca, ca_dir, certs_dir, node_ids, false)
}

fn prepare_dirs(ca_dir: &Path, certs_dir: &Path) -> Result<(), CertError> {
    check_apart(ca_dir, certs_dir)
}

fn issue_missing(
    ca: &ClusterCa,
    ca_dir: &Path,
    certs_dir: &Path,
    node_ids: impl IntoIterator<Item = NodeId>,
    replace: bool,
) -> Result<ClusterCertFiles, CertError> {
    let mut files = ClusterCertFiles {
        dir: certs_dir.to_owned(),
        ca_dir: ca_dir.to_owned(),
        trust: certs_dir.join(NODE_CA.cert_file()),
        nodes: BTreeMap::new(),
    };
    for id in node_ids {
        let cert = certs_dir.join(node_cert_file(id));
        let key = certs_dir.join(node_key_file(id));
        let node = if replace || !(cert.exists() && key.exists()) {
            issue_node_files(ca, certs_dir, id, DEFAULT_CERT_LIFETIME)?
        } else {
            NodeCertFiles { cert, key }
        };
        files.nodes.insert(id, node);
    }
    Ok(files)
}
