//! Who is speaking on the client port, and what they may do: the one place where a client
//! connection's certificate becomes a [`Principal`] and a request is authorized.
//!
//! The TLS layer has already verified the peer's certificate chain against the client CA(s);
//! its subject alternative DNS names give the role and name ([`client_identity`]):
//!
//! | name | role | may |
//! |---|---|---|
//! | `client-<name>.kv` | [`CertRole::Client`] | get, put, delete, compare-and-swap (keys only), in its own sessions |
//! | `admin-<name>.kv` | [`CertRole::Admin`] | everything: the above, status, membership, leadership transfer, fault injection |
//!
//! The spelling of the names is [`CertRole::parse`]'s (the same that issues them). A
//! certificate naming no role (a node certificate, `node-<id>.raft`, for instance) or more than
//! one principal is refused: the connection is closed before any request is read.

use std::fmt;

use raft_quic::quinn::rustls::pki_types::CertificateDer;
use raft_quic::quinn::Connection;

use super::protocol::ClientRequest;
pub use super::tls::CertRole;
use super::tls::{client_identity, identity_of, KvTlsError};

/// An authenticated client: the role and name its verified certificate carries.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Principal {
    /// What it may do.
    pub role: CertRole,
    /// Its name (the `<name>` of `client-<name>.kv`).
    pub name: String,
}

impl Principal {
    /// The principal a DNS name spells (`client-<name>.kv` or `admin-<name>.kv`), if any.
    pub fn from_dns_name(dns: &str) -> Option<Self> {
        CertRole::parse(dns).map(|(role, name)| Self { role, name: name.to_owned() })
    }

    /// The certificate name of this principal (`client-<name>.kv`): the owner of its sessions.
    pub fn dns_name(&self) -> String {
        self.role.dns_name(&self.name)
    }

    /// Whether this principal may make `request`.
    pub fn may(&self, request: &ClientRequest) -> bool {
        match request {
            ClientRequest::Command(_)
            | ClientRequest::Batch(_)
            | ClientRequest::InGroup { .. }
            | ClientRequest::GroupBatch { .. }
            | ClientRequest::Health => true,
            ClientRequest::Status
            | ClientRequest::Groups
            | ClientRequest::Admin(_)
            | ClientRequest::Member(_)
            | ClientRequest::MemberInGroup { .. } => self.role == CertRole::Admin,
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.dns_name())
    }
}

/// The principal a verified leaf certificate names (see [`identity_of`]).
pub fn principal_of_certificate(leaf: &CertificateDer<'_>) -> Result<Principal, KvTlsError> {
    identity_of(leaf).map(|(role, name)| Principal { role, name })
}

/// The principal of an established client connection, from its verified peer certificate
/// (see [`client_identity`]).
pub fn principal_of(connection: &Connection) -> Result<Principal, KvTlsError> {
    client_identity(connection).map(|(role, name)| Principal { role, name })
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
        assert_eq!((alice.role, alice.name.as_str()), (CertRole::Client, "alice"));
        assert_eq!(alice.dns_name(), "client-alice.kv");
        let root = Principal::from_dns_name("admin-ops-1.kv").unwrap();
        assert_eq!((root.role, root.name.as_str()), (CertRole::Admin, "ops-1"));
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
        assert_eq!(client, Principal { role: CertRole::Client, name: "alice".into() });
        let node = principal_of_certificate(&cert_naming(&["node-1.raft"]));
        assert!(node.is_err(), "a node certificate is not a client");
        let both = principal_of_certificate(&cert_naming(&["client-a.kv", "admin-a.kv"]));
        assert!(both.is_err(), "a certificate names one principal");
    }

    #[test]
    fn clients_touch_keys_only() {
        let client = Principal { role: CertRole::Client, name: "a".into() };
        let admin = Principal { role: CertRole::Admin, name: "a".into() };
        let get = ClientRequest::Command(crate::kv::command::Command {
            session: None,
            op: crate::kv::command::Op::Get { key: bytes::Bytes::new() },
        });
        let administration = [
            ClientRequest::Status,
            ClientRequest::Member(MemberRequest::List),
            ClientRequest::Member(MemberRequest::Remove { id: 1 }),
            ClientRequest::Member(MemberRequest::TransferLeader { id: 1 }),
            ClientRequest::Admin(AdminRequest::Partition {
                blocked: crate::kv::bounded::Bounded::new(vec![]).unwrap(),
            }),
        ];
        assert!(client.may(&get) && admin.may(&get));
        for request in &administration {
            assert!(!client.may(request) && admin.may(request), "{request:?}");
        }
    }
}
