//! The kv service's PKI and the TLS of its client port.
//!
//! **Two CAs** (kept in a CA directory that never sits on a node; `kv ca` creates it):
//!
//! - the **node CA** (`node-ca.pem` / `.key`) signs node certificates: `node-<id>.raft` with the
//!   raft node role (see `raft_quic::NODE_ROLE_OID`). Only they speak Raft;
//! - the **client CA** (`client-ca.pem` / `.key`) signs client certificates, for TLS client
//!   authentication only and never with the node role: `client-<name>.kv` (role *client*: read
//!   and write keys) and `admin-<name>.kv` (role *admin*: keys and the administration of the
//!   cluster). [`CertRole`] names the roles.
//!
//! **Who trusts what.** The Raft port trusts only the node CA bundle (and requires the node
//! role). The client port presents the node's certificate and trusts only the client CA bundle
//! for its peers; clients verify a node against the node CA bundle, with the node role and the
//! name `node-<id>.raft` of the node they dial. A trust *bundle* is a PEM file that may hold
//! several CA certificates, so a CA can be rolled over: add the new CA to every bundle
//! (`kv trust`), reissue certificates from it, then drop the old one.
//!
//! **A certificate directory** holds what one host needs: the bundles `node-ca.pem` and (on
//! nodes) `client-ca.pem`, and its own certificates and keys (`node-<id>.pem`/`.key`,
//! `client-<name>.pem`/`.key`, `admin-<name>.pem`/`.key`). Keys are written `0600` (each
//! followed by its certificate, so that an interrupted renewal never leaves a key beside a
//! certificate of another: see `raft_quic::certs`) and refused when readable by others. It is
//! never the CA directory, nor inside or around it, and a node refuses one that holds a CA
//! key. Certificates expire ([`DEFAULT_CERT_LIFETIME`] unless told
//! otherwise); a node warns a month before, and re-reads its files when they change (and on
//! SIGHUP), so renewed certificates are used by new connections without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use raft_quic::certs::{
    check_apart, check_certificate_dir, create_ca, issue_node_files, load_ca, read_ca_cert,
    trust_ca, write_identity, CaKind, CertError, DEFAULT_CA_LIFETIME, NODE_CA,
};
use raft_quic::quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use raft_quic::quinn::{self, IdleTimeout, TransportConfig, VarInt};
use raft_quic::rustls::pki_types::CertificateDer;
use raft_quic::tls::{rustls_client_config, rustls_server_config_with, PeerRole};
use raft_quic::{Gate, NodeTls, QuicNetwork};
use tracing::{info, warn};

pub use raft_quic::certs::DEFAULT_CERT_LIFETIME;

use super::config::CertPaths;
use super::protocol::ALPN;

/// The CA of client and admin certificates: `client-ca.pem` / `client-ca.key`.
pub const CLIENT_CA: CaKind = CaKind { file_stem: "client-ca", common_name: "kv client CA" };

/// The DNS name suffix of client and admin certificates.
pub const CLIENT_NAME_SUFFIX: &str = ".kv";

/// What a client certificate allows on the client port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CertRole {
    /// `client-<name>.kv`: read and write keys.
    Client,
    /// `admin-<name>.kv`: everything a client may, plus the administration of the cluster
    /// (membership, leadership transfer).
    Admin,
}

impl CertRole {
    /// The prefix of the role's names: `client` or `admin`.
    pub fn prefix(self) -> &'static str {
        match self {
            CertRole::Client => "client",
            CertRole::Admin => "admin",
        }
    }

    /// The DNS name of identity `name` with this role: `<prefix>-<name>.kv`.
    pub fn dns_name(self, name: &str) -> String {
        format!("{}-{name}{CLIENT_NAME_SUFFIX}", self.prefix())
    }

    /// The file stem of identity `name` with this role in a certificate directory:
    /// `<prefix>-<name>` (`.pem` and `.key`).
    pub fn file_stem(self, name: &str) -> String {
        format!("{}-{name}", self.prefix())
    }

    /// The role and name a (verified) certificate's DNS name gives, if it is a client or admin
    /// name of a valid spelling.
    pub fn parse(dns_name: &str) -> Option<(CertRole, &str)> {
        let stem = dns_name.strip_suffix(CLIENT_NAME_SUFFIX)?;
        [CertRole::Client, CertRole::Admin].into_iter().find_map(|role| {
            let name = stem.strip_prefix(role.prefix())?.strip_prefix('-')?;
            valid_name(name).then_some((role, name))
        })
    }
}

/// The role and name of a client-port peer, from its verified certificate: exactly one of its
/// DNS names must be a client or admin name (`client-<name>.kv`, `admin-<name>.kv`). A node
/// certificate, or any other, is not a client.
pub fn client_identity(connection: &quinn::Connection) -> Result<(CertRole, String), KvTlsError> {
    let cert = raft_quic::peer_certificate(connection).map_err(identity_error)?;
    identity_of(&cert)
}

fn identity_error(e: impl std::fmt::Display) -> KvTlsError {
    KvTlsError::NotAClient(e.to_string())
}

/// The role and name a (verified) client certificate gives (see [`client_identity`]).
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<(CertRole, String), KvTlsError> {
    let names = raft_quic::dns_names(cert).map_err(identity_error)?;
    let mut found = names.iter().filter_map(|n| CertRole::parse(n));
    match (found.next(), found.next()) {
        (Some((role, name)), None) => Ok((role, name.to_owned())),
        (None, _) => Err(identity_error(format!("no client or admin name in {names:?}"))),
        (Some(_), Some(_)) => Err(identity_error(format!("several client names in {names:?}"))),
    }
}

/// Whether `name` may name a client: 1 to 63 lowercase letters, digits or `-`, not starting or
/// ending with `-` (a DNS label).
pub fn valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// The identity `gen-certs` issues for the operator (`admin-default.pem`).
pub const DEFAULT_ADMIN: &str = "default";
/// The identity `gen-certs` issues for applications (`client-default.pem`).
pub const DEFAULT_CLIENT: &str = "default";

/// Why TLS material could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum KvTlsError {
    /// Certificates could not be generated, read or parsed.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// rustls or quinn refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// A client name is not a valid DNS label.
    #[error("`{0}` is not a valid name: use 1-63 lowercase letters, digits and `-`")]
    BadName(String),
    /// A certificate directory holds no identity to use, or several.
    #[error("{}: {reason}", dir.display())]
    Identity {
        /// The directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A client-port peer's certificate names no client role (or several).
    #[error("not a client certificate: {0}")]
    NotAClient(String),
    /// The node's certificate was refused by its own transport.
    #[error("the node refused the new certificate: {0}")]
    Update(#[from] raft_quic::BindError),
}

fn config_error(e: impl std::fmt::Display) -> KvTlsError {
    KvTlsError::Config(e.to_string())
}

/// Creates the node CA and the client CA in `ca_dir`, each valid for `lifetime`. Refuses to
/// replace existing CA keys. Run it on a machine that is not a node; keep the directory safe.
pub fn create_cas(ca_dir: &Path, lifetime: Duration) -> Result<(), KvTlsError> {
    for kind in [NODE_CA, CLIENT_CA] {
        if ca_dir.join(kind.key_file()).exists() {
            return Err(CertError::CaExists { path: ca_dir.join(kind.key_file()) }.into());
        }
    }
    for kind in [NODE_CA, CLIENT_CA] {
        create_ca(ca_dir, kind, lifetime)?;
    }
    Ok(())
}

fn ensure_cas(ca_dir: &Path) -> Result<(), KvTlsError> {
    for kind in [NODE_CA, CLIENT_CA] {
        if !ca_dir.join(kind.key_file()).exists() {
            create_ca(ca_dir, kind, DEFAULT_CA_LIFETIME)?;
        }
    }
    Ok(())
}

/// Adds the CA certificates of `ca_dir` to the trust bundles of `certs_dir` (the node CA to
/// `node-ca.pem`, the client CA to `client-ca.pem`, each if not there yet). The first step of a
/// CA roll-over, on every host; nodes pick the new bundles up without a restart.
pub fn trust(ca_dir: &Path, certs_dir: &Path) -> Result<(), KvTlsError> {
    check_apart(ca_dir, certs_dir)?;
    for kind in [NODE_CA, CLIENT_CA] {
        trust_ca(&certs_dir.join(kind.cert_file()), &read_ca_cert(ca_dir, kind)?)?;
    }
    Ok(())
}

/// Issues node `id`'s certificate and key from the node CA of `ca_dir` into `certs_dir`, valid
/// for `lifetime`, and adds both CAs to the directory's bundles (a node trusts the node CA for
/// its peers and the client CA for its clients).
pub fn issue_node(
    ca_dir: &Path,
    certs_dir: &Path,
    id: raft_core::NodeId,
    lifetime: Duration,
) -> Result<(), KvTlsError> {
    check_apart(ca_dir, certs_dir)?;
    let ca = load_ca(ca_dir, NODE_CA)?;
    issue_node_files(&ca, certs_dir, id, lifetime)?;
    trust_ca(&certs_dir.join(CLIENT_CA.cert_file()), &read_ca_cert(ca_dir, CLIENT_CA)?)?;
    Ok(())
}

/// Issues a `role` certificate and key for `name` from the client CA of `ca_dir` into
/// `certs_dir` (`<role>-<name>.pem` / `.key`), valid for `lifetime`, and adds the node CA to
/// the directory's `node-ca.pem` (a client verifies the nodes it dials against it).
pub fn issue_user(
    ca_dir: &Path,
    certs_dir: &Path,
    role: CertRole,
    name: &str,
    lifetime: Duration,
) -> Result<(), KvTlsError> {
    if !valid_name(name) {
        return Err(KvTlsError::BadName(name.to_owned()));
    }
    check_apart(ca_dir, certs_dir)?;
    let ca = load_ca(ca_dir, CLIENT_CA)?;
    let issued = ca.issue_client(&role.dns_name(name), lifetime)?;
    let stem = role.file_stem(name);
    let (cert, key) =
        (certs_dir.join(format!("{stem}.pem")), certs_dir.join(format!("{stem}.key")));
    write_identity(&cert, &key, &issued.cert_pem, &issued.key_pem)?;
    trust_ca(&certs_dir.join(NODE_CA.cert_file()), &read_ca_cert(ca_dir, NODE_CA)?)?;
    Ok(())
}

/// `kv gen-certs`: everything a new cluster needs. Creates the CAs in `ca_dir` if it holds none,
/// then issues into `certs_dir` what is missing: node certificates for `ids` and the identities
/// [`DEFAULT_ADMIN`] (admin) and [`DEFAULT_CLIENT`] (client). Existing files are kept.
pub fn gen_certs(
    ca_dir: &Path,
    certs_dir: &Path,
    ids: impl IntoIterator<Item = raft_core::NodeId>,
) -> Result<(), KvTlsError> {
    check_apart(ca_dir, certs_dir)?;
    ensure_cas(ca_dir)?;
    let missing = |stem: &str| {
        !(certs_dir.join(format!("{stem}.pem")).exists()
            && certs_dir.join(format!("{stem}.key")).exists())
    };
    for id in ids {
        if missing(&format!("node-{id}")) {
            issue_node(ca_dir, certs_dir, id, DEFAULT_CERT_LIFETIME)?;
        }
    }
    for (role, name) in [(CertRole::Admin, DEFAULT_ADMIN), (CertRole::Client, DEFAULT_CLIENT)] {
        if missing(&role.file_stem(name)) {
            issue_user(ca_dir, certs_dir, role, name, DEFAULT_CERT_LIFETIME)?;
        }
    }
    trust(ca_dir, certs_dir)
}

/// The identity a client uses from `certs_dir`: `user` (a file stem such as `admin-ops`), or if
/// none is given `admin-default` when present, else the only client or admin certificate there.
pub fn pick_identity(certs_dir: &Path, user: Option<&str>) -> Result<String, KvTlsError> {
    if let Some(user) = user {
        return Ok(user.to_owned());
    }
    let default = CertRole::Admin.file_stem(DEFAULT_ADMIN);
    if certs_dir.join(format!("{default}.pem")).exists() {
        return Ok(default);
    }
    let error = |reason: String| KvTlsError::Identity { dir: certs_dir.to_owned(), reason };
    let entries = std::fs::read_dir(certs_dir).map_err(|e| error(e.to_string()))?;
    let mut found: Vec<String> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str().map(str::to_owned))
        .filter_map(|file| file.strip_suffix(".pem").map(str::to_owned))
        .filter(|stem| CertRole::parse(&format!("{stem}{CLIENT_NAME_SUFFIX}")).is_some())
        .collect();
    found.sort();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(error("no client or admin certificate (kv issue client|admin NAME)".into())),
        several => Err(error(format!(
            "several identities ({}): choose one with --user",
            several.join(", ")
        ))),
    }
}

/// Loads a client's material from `certs_dir`: the node CA bundle (to verify nodes) and the
/// certificate and key of identity `stem` (`<stem>.pem`, `<stem>.key`).
pub fn load_client_tls(certs_dir: &Path, stem: &str) -> Result<NodeTls, KvTlsError> {
    Ok(NodeTls::from_pem_files(
        certs_dir.join(NODE_CA.cert_file()),
        certs_dir.join(format!("{stem}.pem")),
        certs_dir.join(format!("{stem}.key")),
    )?)
}

/// A node's TLS material, read from its files: the Raft port's (node CA bundle, node
/// certificate and key) and the client CA bundle of the client port.
#[derive(Clone, Debug)]
pub struct NodeMaterial {
    /// Node CA bundle, node certificate and key.
    pub node: NodeTls,
    /// The client CA certificates the client port trusts.
    pub client_cas: Vec<CertificateDer<'static>>,
}

impl NodeMaterial {
    /// Reads the files of `paths` (the key must be private to its owner). Refuses them if a
    /// directory they are in holds a CA key (by name, or one that matches a trusted CA), and
    /// removes the temporary files crashed writes left there.
    pub fn load(paths: &CertPaths) -> Result<Self, KvTlsError> {
        let node = NodeTls::from_pem_files(&paths.ca, &paths.cert, &paths.key)?;
        let bundle = std::fs::read(&paths.client_ca)
            .map_err(|source| CertError::Io { path: paths.client_ca.clone(), source })?;
        let client_cas =
            raft_quic::certs::parse_certificates(&bundle, &paths.client_ca.display().to_string())?;
        let cas: Vec<CertificateDer<'static>> =
            node.trust_anchors.iter().chain(&client_cas).cloned().collect();
        let mut dirs: Vec<&Path> = [&paths.ca, &paths.client_ca, &paths.cert, &paths.key]
            .into_iter()
            .map(|file| {
                file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
            })
            .collect();
        dirs.sort();
        dirs.dedup();
        for dir in dirs {
            check_certificate_dir(dir, &[NODE_CA, CLIENT_CA], &cas)?;
        }
        Ok(Self { node, client_cas })
    }
}

/// The transport of a client-port connection: the peer may open `peer_streams` requests at
/// once (none towards a client).
fn transport(
    peer_streams: u32,
    keep_alive: Option<Duration>,
) -> Result<TransportConfig, KvTlsError> {
    let mut transport = TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(peer_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .max_idle_timeout(Some(
            IdleTimeout::try_from(Duration::from_secs(30)).map_err(config_error)?,
        ))
        .keep_alive_interval(keep_alive)
        .datagram_receive_buffer_size(None);
    Ok(transport)
}

/// The limits of a client port's server configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientPortLimits {
    /// Requests in flight per connection.
    pub max_streams: u32,
    /// Connection attempts queued; also the client port's connection slots, which size each
    /// connection's receive window.
    pub max_connections: usize,
}

/// The QUIC server configuration of a node's client port: presents the node's certificate,
/// requires a client certificate from one of the client CAs (any role: the service authorizes
/// by role), at most `max_streams` requests in flight per connection, `max_connections`
/// connection attempts queued, and each connection's receive window the port's share for
/// `max_connections` slots ([`connection_receive_window`](super::port::connection_receive_window)).
pub fn server_config(
    material: &NodeMaterial,
    limits: ClientPortLimits,
) -> Result<quinn::ServerConfig, KvTlsError> {
    let mut rustls = rustls_server_config_with(&material.node, &material.client_cas, PeerRole::Any)
        .map_err(config_error)?;
    rustls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(rustls).map_err(config_error)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = transport(limits.max_streams, None)?;
    // What a client may send that the node has not read yet, across all its streams (the
    // client port reserves what it reads from its own budget: `kv::port`).
    let window = super::port::connection_receive_window(limits.max_connections);
    transport.receive_window(VarInt::from_u32(window));
    config
        .transport_config(Arc::new(transport))
        .max_incoming(limits.max_connections)
        .migration(false);
    Ok(config)
}

/// The QUIC client configuration of a client: its client certificate, the node CA bundle as the
/// only trust anchors, and servers must be nodes (node role). Connections are kept alive while
/// idle.
pub fn client_config(tls: &NodeTls) -> Result<quinn::ClientConfig, KvTlsError> {
    let mut rustls = rustls_client_config(tls).map_err(config_error)?;
    rustls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(rustls).map_err(config_error)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    // A node only answers a client's streams: it may open none (one it opened would never be
    // read, yet could pin the client's flow-control credit).
    config.transport_config(Arc::new(transport(0, Some(Duration::from_secs(2)))?));
    Ok(config)
}

/// How often a [`Reloader`] looks at the files.
pub const RELOAD_POLL: Duration = Duration::from_secs(5);
/// How often a [`Reloader`] repeats an expiry warning.
const WARN_EVERY: Duration = Duration::from_secs(24 * 3600);
/// How long before its expiry a node warns about its certificate.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// What identifies the files' current content cheaply: each one's size, modification time and
/// inode.
type Fingerprint = Vec<Option<(u64, Option<SystemTime>, u64)>>;

fn fingerprint(paths: &CertPaths) -> Fingerprint {
    [&paths.ca, &paths.client_ca, &paths.cert, &paths.key]
        .into_iter()
        .map(|path| {
            let meta = std::fs::metadata(path).ok()?;
            #[cfg(unix)]
            let inode = std::os::unix::fs::MetadataExt::ino(&meta);
            #[cfg(not(unix))]
            let inode = 0;
            Some((meta.len(), meta.modified().ok(), inode))
        })
        .collect()
}

/// What a node's TLS material is applied to: the Raft transport and the client port.
#[derive(Clone, Debug)]
pub struct ReloadTargets {
    /// The Raft transport ([`QuicNetwork::update_tls`]: new connections use the new material,
    /// and connections whose peer the new node CA bundle no longer trusts are closed).
    pub network: QuicNetwork,
    /// The client port's endpoint: gets a new server configuration.
    pub client_endpoint: quinn::Endpoint,
    /// The client port's gate, if it admits through one: its connections are checked again
    /// against the new client CA bundle, and those of a dropped CA closed (TLS checks a
    /// certificate only at the handshake).
    pub client_gate: Option<Gate>,
    /// The client port's limits (its server configuration is rebuilt with them).
    pub limits: ClientPortLimits,
}

/// Applies freshly read material to both ports (see [`ReloadTargets`]).
pub fn apply(material: &NodeMaterial, targets: &ReloadTargets) -> Result<(), KvTlsError> {
    let server = server_config(material, targets.limits)?;
    targets.network.update_tls(&material.node)?;
    targets.client_endpoint.set_server_config(Some(server));
    if let Some(gate) = &targets.client_gate {
        // After the new server configuration: the gate also re-checks the handshakes that
        // began before it (with the old bundle) when they complete.
        let cas = material.client_cas.clone();
        let closed = gate.revalidate(raft_quic::wire::code::UNTRUSTED, move |connection| {
            raft_quic::recheck_peer(connection, &cas, PeerRole::Any)
                .map_err(|e| format!("the client's certificate is no longer trusted: {e}"))
        });
        if closed > 0 {
            info!(closed, "closed client connections whose certificate is no longer trusted");
        }
    }
    Ok(())
}

/// Re-reads a node's TLS files when they change (checked every [`RELOAD_POLL`]) or on SIGHUP,
/// and applies them ([`apply`]): new connections on both ports use renewed certificates and
/// trust bundles, without a restart. A file that does not load, or a certificate the node
/// refuses, is logged and the current material kept. Warns once a day while the certificate
/// expires within [`EXPIRY_WARNING`].
///
/// Start it first thing ([`Reloader::start`]), before the files are read and before anything
/// slow: from then on a SIGHUP asks for a reload instead of killing the process (its default
/// action), and a change of the files after they were read is noticed.
#[derive(Debug)]
pub struct Reloader {
    paths: CertPaths,
    seen: Fingerprint,
    #[cfg(unix)]
    hangup: Option<tokio::signal::unix::Signal>,
}

impl Reloader {
    /// Installs the SIGHUP handler and notes the files' state (call it within the tokio
    /// runtime, before [`Reloader::load`]). A SIGHUP received from now until [`Reloader::run`]
    /// starts makes its first round reload.
    pub fn start(paths: CertPaths) -> Self {
        #[cfg(unix)]
        let hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(signal) => Some(signal),
            Err(e) => {
                warn!("cannot handle SIGHUP (TLS files are still polled): {e}");
                None
            }
        };
        let seen = fingerprint(&paths);
        Self {
            paths,
            seen,
            #[cfg(unix)]
            hangup,
        }
    }

    /// Reads the node's files ([`NodeMaterial::load`]).
    pub fn load(&self) -> Result<NodeMaterial, KvTlsError> {
        NodeMaterial::load(&self.paths)
    }

    /// Waits for the next poll or SIGHUP; returns whether a SIGHUP came.
    async fn next_round(&mut self) -> bool {
        #[cfg(unix)]
        if let Some(signal) = self.hangup.as_mut() {
            return tokio::select! {
                _ = signal.recv() => true,
                () = tokio::time::sleep(RELOAD_POLL) => false,
            };
        }
        tokio::time::sleep(RELOAD_POLL).await;
        false
    }

    /// Reloads into `targets` until the task is dropped (see [`Reloader`]).
    pub async fn run(mut self, targets: ReloadTargets) {
        let mut warned: Option<Instant> = None;
        loop {
            let forced = self.next_round().await;
            let now = fingerprint(&self.paths);
            if forced || now != self.seen {
                self.seen = now;
                match self.load().and_then(|material| apply(&material, &targets)) {
                    Ok(()) => info!("TLS files reloaded: new connections use them"),
                    Err(e) => warn!("TLS files not reloaded, keeping the current ones: {e}"),
                }
                warned = None;
            }
            if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                if let Ok(material) = self.load() {
                    if let Some(warning) =
                        raft_quic::expiry::expiry_warning(&material.node.cert_chain, EXPIRY_WARNING)
                    {
                        warn!("{warning}");
                    }
                }
                warned = Some(Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use raft_quic::rustls::pki_types::pem::PemObject;
    use raft_quic::ClusterCa;

    use super::*;

    #[test]
    fn roles_come_from_the_certificate_names() {
        assert_eq!(CertRole::parse("client-app.kv"), Some((CertRole::Client, "app")));
        assert_eq!(CertRole::parse("admin-ops-2.kv"), Some((CertRole::Admin, "ops-2")));
        for other in ["node-1.raft", "client-.kv", "client-App.kv", "admin.kv", "root-x.kv", "x"] {
            assert_eq!(CertRole::parse(other), None, "{other}");
        }
        let ca = ClusterCa::generate_with(CLIENT_CA, Duration::from_secs(3600)).unwrap();
        let issued = |name: &str| {
            let cert = ca.issue_client(name, Duration::from_secs(3600)).unwrap();
            CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).unwrap()
        };
        let admin = identity_of(&issued(&CertRole::Admin.dns_name("alice"))).unwrap();
        assert_eq!(admin, (CertRole::Admin, "alice".to_owned()));
        assert!(identity_of(&issued("node-1.raft")).is_err());
        let node = ClusterCa::generate().unwrap().node_tls(1).unwrap();
        assert!(identity_of(&node.cert_chain[0]).is_err(), "a node certificate is no client");
    }
}
