//! The hygiene of certificate directories: a CA directory is never a certificate directory (nor
//! inside one, nor around one), a certificate directory holds no CA key, and what a crashed
//! write left behind is cleaned up.

use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ParsedCertificate;

use crate::ca::CaKind;
use crate::certs::CertError;
use crate::tls::crypto_provider;

/// A temporary file of [`write_pem_file`](crate::certs::write_pem_file) older than this is
/// left over from a crashed write (a write takes milliseconds), and removed.
pub const STALE_TEMP_AGE: Duration = Duration::from_secs(60);

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io { path: path.to_owned(), source }
}

/// `path` made absolute, with symbolic links resolved as far as it exists (the rest is taken
/// as written, `.` and `..` resolved by name).
fn resolved(path: &Path) -> Result<PathBuf, CertError> {
    let absolute = std::path::absolute(path).map_err(io_error(path))?;
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        match existing.canonicalize() {
            Ok(mut resolved) => {
                for part in rest.iter().rev() {
                    match part {
                        Component::CurDir => {}
                        Component::ParentDir => {
                            resolved.pop();
                        }
                        other => resolved.push(other),
                    }
                }
                return Ok(resolved);
            }
            Err(e) => match (existing.parent(), existing.components().next_back()) {
                (Some(parent), Some(last)) => {
                    rest.push(last);
                    existing = parent;
                }
                _ => return Err(io_error(path)(e)),
            },
        }
    }
}

/// Checks that a CA directory and a certificate directory are apart, then creates them if
/// needed: the same directory, or either one inside the other, is refused
/// ([`CertError::CaBesideCertificates`]) before anything is created, so that no CA key ever
/// lands where node or client keys are copied from.
pub fn check_apart(ca_dir: &Path, certs_dir: &Path) -> Result<(), CertError> {
    let (ca, certs) = (resolved(ca_dir)?, resolved(certs_dir)?);
    if ca.starts_with(&certs) || certs.starts_with(&ca) {
        return Err(CertError::CaBesideCertificates { dir: certs_dir.to_owned() });
    }
    for dir in [ca_dir, certs_dir] {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    }
    Ok(())
}

/// Whether `key` is the private key of `cert` (`None` if that cannot be told: a key type the
/// provider does not load, a certificate that does not parse).
pub fn key_matches(cert: &CertificateDer<'_>, key: &PrivateKeyDer<'_>) -> Option<bool> {
    let signing = crypto_provider().key_provider.load_private_key(key.clone_key()).ok()?;
    let public = signing.public_key()?;
    let parsed = ParsedCertificate::try_from(cert).ok()?;
    Some(public == parsed.subject_public_key_info())
}

/// Checks that `dir` (a certificate directory) holds no CA key: no key file of one of `kinds`
/// (`node-ca.key`, ...), and no `*.key` file holding the private key of one of `cas` (a renamed
/// copy). A node refuses to start beside a CA key: whoever reads the node's files could mint
/// certificates ([`CertError::CaKeyInCertificates`]).
pub fn refuse_ca_keys(
    dir: &Path,
    kinds: &[CaKind],
    cas: &[CertificateDer<'_>],
) -> Result<(), CertError> {
    let entries = std::fs::read_dir(dir).map_err(io_error(dir))?;
    for entry in entries {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.ends_with(".key") {
            continue;
        }
        let path = entry.path();
        let refused = || CertError::CaKeyInCertificates { path: path.clone() };
        if kinds.iter().any(|kind| kind.key_file() == name) {
            return Err(refused());
        }
        // Unreadable or unparsable files are not CA keys we could tell; the node reads only
        // its own key, with its own checks.
        let Ok(bytes) = std::fs::read(&path) else { continue };
        let Ok(key) = PrivateKeyDer::from_pem_slice(&bytes) else { continue };
        if cas.iter().any(|ca| key_matches(ca, &key) == Some(true)) {
            return Err(refused());
        }
    }
    Ok(())
}

/// Whether `name` is a temporary file name of `write_pem_file`: `.<file>.<pid>.<16 hex>.tmp`.
pub(crate) fn is_temp_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) else {
        return false;
    };
    let mut parts = rest.rsplitn(3, '.');
    let (Some(tag), Some(pid), Some(file)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    tag.len() == 16
        && tag.bytes().all(|b| b.is_ascii_hexdigit())
        && !pid.is_empty()
        && pid.bytes().all(|b| b.is_ascii_digit())
        && !file.is_empty()
}

/// Removes the temporary files that crashed writes left in `dir` (older than
/// [`STALE_TEMP_AGE`]): they may hold a private key. Best effort (a read-only directory is
/// left as it is); returns the files removed.
pub fn remove_stale_temps(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let now = SystemTime::now();
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_str().is_some_and(is_temp_name) {
            continue;
        }
        let age = entry
            .metadata()
            .and_then(|meta| meta.modified())
            .map(|modified| now.duration_since(modified).unwrap_or_default());
        if age.is_ok_and(|age| age >= STALE_TEMP_AGE) && std::fs::remove_file(entry.path()).is_ok()
        {
            removed.push(entry.path());
        }
    }
    removed
}

/// What a node checks of the directory its files are in when it loads them: stale temporary
/// files are removed (logged), and a CA key there is refused (see [`refuse_ca_keys`]).
pub fn check_certificate_dir(
    dir: &Path,
    kinds: &[CaKind],
    cas: &[CertificateDer<'_>],
) -> Result<(), CertError> {
    for path in remove_stale_temps(dir) {
        tracing::info!(file = %path.display(), "removed a temporary file of a crashed write");
    }
    refuse_ca_keys(dir, kinds, cas)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn paths_resolve_beyond_what_exists() {
        let dir = std::env::temp_dir().canonicalize().unwrap_or_else(|_| std::env::temp_dir());
        let missing = dir.join("raft-quic-no-such-dir/a/./b/../c");
        assert_eq!(resolved(&missing).ok(), Some(dir.join("raft-quic-no-such-dir/a/c")));
        assert_eq!(resolved(&dir).ok(), Some(dir.clone()));
    }

    #[test]
    fn temp_names_are_recognized_exactly() {
        assert!(is_temp_name(".node-1.key.4242.0123456789abcdef.tmp"));
        assert!(is_temp_name(".node-ca.pem.1.ffffffffffffffff.tmp"));
        for other in [
            "node-1.key",
            ".node-1.key.tmp",
            ".node-1.key.42.0123.tmp",
            "..42.0123456789abcdef.tmp",
            ".x.pid.0123456789abcdef.tmp",
            ".x.42.0123456789abcdeg.tmp",
        ] {
            assert!(!is_temp_name(other), "{other}");
        }
    }
}
