//! Who is speaking on the client port, and what they may do: the one place where a client
//! connection's certificate becomes a [`Principal`] and a request is authorized.
//!
//! The TLS layer has already verified the peer's certificate chain against the client CA(s);
//! here its subject alternative DNS names are read:
//!
//! | name | role | may |
//! |---|---|---|
//! | `client-<name>.kv` | [`Role::Client`] | get, put, delete, compare-and-swap (keys only), in its own sessions |
//! | `admin-<name>.kv` | [`Role::Admin`] | everything: the above, status, membership, leadership transfer, fault injection |
//!
//! `<name>` is 1 to 63 characters of `a-z`, `0-9` and `-`. A certificate naming no role (a node
//! certificate, `node-<id>.raft`, for instance) or more than one principal is refused: the
//! connection is closed before any request is read.

use std::fmt;

use raft_quic::quinn::rustls::pki_types::CertificateDer;
use raft_quic::quinn::Connection;

use super::protocol::ClientRequest;

/// The DNS name suffix of client and admin certificates.
pub const ROLE_NAME_SUFFIX: &str = ".kv";
/// The longest `<name>` part.
const MAX_NAME_LEN: usize = 63;

/// What a client certificate allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Keys only: get, put, delete, compare-and-swap.
    Client,
    /// Everything, administration included.
    Admin,
}

impl Role {
    /// The name prefix of the role's certificates (`client` or `admin`).
    pub fn prefix(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Admin => "admin",
        }
    }
}

/// An authenticated client: the role and name its verified certificate carries.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Principal {
    /// What it may do.
    pub role: Role,
    /// Its name (the `<name>` of `client-<name>.kv`).
    pub name: String,
}

impl Principal {
    /// The principal a DNS name spells (`client-<name>.kv` or `admin-<name>.kv`), if any.
    pub fn from_dns_name(dns: &str) -> Option<Self> {
        let stem = dns.strip_suffix(ROLE_NAME_SUFFIX)?;
        let (prefix, name) = stem.split_once('-')?;
        let role = [Role::Client, Role::Admin].into_iter().find(|r| r.prefix() == prefix)?;
        let valid = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && name.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
        valid.then(|| Self { role, name: name.to_owned() })
    }

    /// The administrator `admin-operator.kv`, whose certificate `kv gen-certs` writes as the
    /// `kv` tool's (and the test clusters') `client.pem`.
    pub fn operator() -> Self {
        Self { role: Role::Admin, name: "operator".into() }
    }

    /// A plain client named `name` (which must be valid, see the module doc).
    pub fn client(name: &str) -> Option<Self> {
        Self::from_dns_name(&format!("client-{name}{ROLE_NAME_SUFFIX}"))
    }

    /// The certificate name of this principal (`client-<name>.kv`): the owner of its sessions.
    pub fn dns_name(&self) -> String {
        format!("{}-{}{ROLE_NAME_SUFFIX}", self.role.prefix(), self.name)
    }

    /// Whether this principal may make `request`.
    pub fn may(&self, request: &ClientRequest) -> bool {
        match request {
            ClientRequest::Command(_) | ClientRequest::Batch(_) => true,
            ClientRequest::Status | ClientRequest::Admin(_) | ClientRequest::Member(_) => {
                self.role == Role::Admin
            }
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.dns_name())
    }
}

/// Why a client connection has no principal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No verified certificate (cannot happen once mutual TLS succeeded).
    #[error("the client presented no certificate")]
    NoCertificate,
    /// The certificate does not parse.
    #[error("the client certificate does not parse: {0}")]
    BadCertificate(String),
    /// The certificate names no client or admin (a node certificate, for instance).
    #[error("the certificate names no client role (client-<name>.kv or admin-<name>.kv)")]
    NoRole,
    /// The certificate names several principals.
    #[error("the certificate names several principals: {0:?}")]
    Ambiguous(Vec<String>),
}

/// The principal a verified leaf certificate names: exactly one `client-<name>.kv` or
/// `admin-<name>.kv` DNS name.
pub fn principal_of_certificate(leaf: &CertificateDer<'_>) -> Result<Principal, AuthError> {
    let cert = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| AuthError::BadCertificate(e.to_string()))?;
    let mut found: Vec<Principal> =
        cert.valid_dns_names().filter_map(Principal::from_dns_name).collect();
    found.sort();
    found.dedup();
    match found.len() {
        0 => Err(AuthError::NoRole),
        1 => Ok(found.remove(0)),
        _ => Err(AuthError::Ambiguous(found.iter().map(Principal::dns_name).collect())),
    }
}

/// The principal of an established client connection (its verified peer certificate).
pub fn principal_of(connection: &Connection) -> Result<Principal, AuthError> {
    let identity = connection.peer_identity().ok_or(AuthError::NoCertificate)?;
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| AuthError::NoCertificate)?;
    principal_of_certificate(chain.first().ok_or(AuthError::NoCertificate)?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::kv::protocol::{AdminRequest, MemberRequest};

    fn cert_naming(names: &[&str]) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let params = rcgen::CertificateParams::new(names).unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn names_spell_roles() {
        let alice = Principal::from_dns_name("client-alice.kv").unwrap();
        assert_eq!((alice.role, alice.name.as_str()), (Role::Client, "alice"));
        assert_eq!(alice.dns_name(), "client-alice.kv");
        let root = Principal::from_dns_name("admin-ops-1.kv").unwrap();
        assert_eq!((root.role, root.name.as_str()), (Role::Admin, "ops-1"));
        for bad in [
            "node-1.raft",
            "client-.kv",
            "client-Alice.kv",
            "client-a.kvx",
            "root-a.kv",
            "clientalice.kv",
            "client-a.b.kv",
            &format!("client-{}.kv", "a".repeat(64)),
        ] {
            assert_eq!(Principal::from_dns_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn certificates_name_one_principal_or_none() {
        let client = principal_of_certificate(&cert_naming(&["client-alice.kv"])).unwrap();
        assert_eq!(client, Principal { role: Role::Client, name: "alice".into() });
        let node = principal_of_certificate(&cert_naming(&["node-1.raft"]));
        assert_eq!(node, Err(AuthError::NoRole), "a node certificate is not a client");
        let both = principal_of_certificate(&cert_naming(&["client-a.kv", "admin-a.kv"]));
        assert!(matches!(both, Err(AuthError::Ambiguous(_))));
    }

    #[test]
    fn clients_touch_keys_only() {
        let client = Principal { role: Role::Client, name: "a".into() };
        let admin = Principal { role: Role::Admin, name: "a".into() };
        let get = ClientRequest::Command(crate::kv::command::Command {
            session: None,
            op: crate::kv::command::Op::Get { key: bytes::Bytes::new() },
        });
        let administration = [
            ClientRequest::Status,
            ClientRequest::Member(MemberRequest::List),
            ClientRequest::Member(MemberRequest::Remove { id: 1 }),
            ClientRequest::Member(MemberRequest::TransferLeader { id: 1 }),
            ClientRequest::Admin(AdminRequest::Partition { blocked: vec![] }),
        ];
        assert!(client.may(&get) && admin.may(&get));
        for request in &administration {
            assert!(!client.may(request) && admin.may(request), "{request:?}");
        }
    }
}
