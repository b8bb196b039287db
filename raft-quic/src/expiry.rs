//! When a certificate expires: its `notAfter`, read from the DER, the warning a node logs when
//! its own certificate is about to expire, and the closing of connections whose peer's
//! certificate has expired (TLS checks validity only at the handshake; a connection kept alive
//! by keep-alives would otherwise outlive its certificate for good).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::{select, Either};
use rustls::pki_types::CertificateDer;

use crate::identity::peer_chain;
use crate::wire::code;

/// The longest a connection's expiry watch sleeps at once (it then reads the clock again, so a
/// clock that was set forward is noticed within this).
const EXPIRY_RECHECK: Duration = Duration::from_secs(600);

/// One DER element: its tag and content, and what follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count].iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[count..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

fn digits(text: &[u8]) -> Option<u32> {
    text.iter().try_fold(0u32, |acc, &c| c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0')))
}

/// An X.509 `Time` (UTCTime or GeneralizedTime, in the DER profile: UTC, seconds, `Z`).
fn time(tag: u8, content: &[u8]) -> Option<SystemTime> {
    let (year, rest) = match tag {
        0x17 => {
            let yy = digits(content.get(..2)?)?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, content.get(2..)?)
        }
        0x18 => (digits(content.get(..4)?)?, content.get(4..)?),
        _ => return None,
    };
    if rest.len() != 11 || rest[10] != b'Z' {
        return None;
    }
    let field = |i: usize| digits(&rest[i..i + 2]);
    let month = time::Month::try_from(u8::try_from(field(0)?).ok()?).ok()?;
    let date =
        time::Date::from_calendar_date(i32::try_from(year).ok()?, month, field(2)? as u8).ok()?;
    let clock = time::Time::from_hms(field(4)? as u8, field(6)? as u8, field(8)? as u8).ok()?;
    let seconds = time::PrimitiveDateTime::new(date, clock).assume_utc().unix_timestamp();
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).ok()?))
}

/// The end of `cert`'s validity (`notAfter`), or `None` if it does not parse.
pub fn not_after(cert: &CertificateDer<'_>) -> Option<SystemTime> {
    let (0x30, certificate, _) = element(cert.as_ref())? else { return None };
    let (0x30, tbs, _) = element(certificate)? else { return None };
    let mut rest = tbs;
    // version [0] EXPLICIT (optional), serialNumber, signature, issuer, then validity.
    if rest.first() == Some(&0xa0) {
        rest = element(rest)?.2;
    }
    for _ in 0..3 {
        rest = element(rest)?.2;
    }
    let (0x30, validity, _) = element(rest)? else { return None };
    let (_, _, after_not_before) = element(validity)?;
    let (tag, content, _) = element(after_not_before)?;
    time(tag, content)
}

/// A warning if the leaf certificate of `chain` expires within `within` from now (or already
/// has, or cannot be read), to be logged by the node that uses it.
pub fn expiry_warning(chain: &[CertificateDer<'_>], within: Duration) -> Option<String> {
    let leaf = chain.first()?;
    let Some(expires) = not_after(leaf) else {
        return Some("cannot read the expiry date of this node's certificate".into());
    };
    match expires.duration_since(SystemTime::now()) {
        Err(_) => Some("this node's certificate has expired: peers refuse it; renew it".into()),
        Ok(left) if left <= within => Some(format!(
            "this node's certificate expires in {} h ({} days): renew it (new connections use a \
             renewed certificate once it is reloaded)",
            left.as_secs() / 3600,
            left.as_secs() / 86_400
        )),
        Ok(_) => None,
    }
}

/// When the first certificate of `chain` expires (`None` if none can be read).
fn chain_expiry(chain: &[CertificateDer<'_>]) -> Option<SystemTime> {
    chain.iter().filter_map(not_after).min()
}

/// Closes `connection` with [`code::CERT_EXPIRED`] once a certificate of its peer's chain has
/// expired, unless the connection ends first or `until` completes (its owner stopped serving
/// it). Runs on `runtime`'s timers; spawn it beside the connection.
pub(crate) async fn close_at_expiry(
    runtime: Arc<dyn quinn::Runtime>,
    connection: quinn::Connection,
    until: impl Future<Output = ()>,
) {
    let Some(expires) = peer_chain(&connection).ok().and_then(|chain| chain_expiry(&chain)) else {
        return;
    };
    let closed = std::pin::pin!(connection.closed());
    let until = std::pin::pin!(until);
    let mut stopped = select(closed, until);
    while let Ok(left) = expires.duration_since(SystemTime::now()) {
        if left.is_zero() {
            break;
        }
        let mut timer = runtime.new_timer(Instant::now() + left.min(EXPIRY_RECHECK));
        let sleep = std::future::poll_fn(|cx| timer.as_mut().poll(cx));
        if let Either::Left(_) = select(&mut stopped, std::pin::pin!(sleep)).await {
            return;
        }
    }
    connection.close(code::CERT_EXPIRED, b"the peer's certificate has expired");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::ClusterCa;

    #[test]
    fn reads_the_expiry_of_issued_certificates() {
        let ca = ClusterCa::generate().unwrap();
        let lifetime = Duration::from_secs(3 * 86_400);
        let cert = ca.issue_node(1, lifetime).unwrap();
        let der =
            rustls::pki_types::pem::PemObject::from_pem_slice(cert.cert_pem.as_bytes()).unwrap();
        let expires = not_after(&der).unwrap();
        let expected = SystemTime::now() + lifetime;
        let diff = expected.duration_since(expires).unwrap_or_else(|e| e.duration());
        assert!(diff < Duration::from_secs(120), "{diff:?}");
        assert!(expiry_warning(std::slice::from_ref(&der), Duration::from_secs(86_400)).is_none());
        let warning = expiry_warning(&[der], Duration::from_secs(4 * 86_400)).unwrap();
        assert!(warning.contains("expires in"), "{warning}");
    }

    #[test]
    fn reads_both_time_encodings_and_refuses_garbage() {
        assert_eq!(time(0x17, b"700101000000Z"), Some(UNIX_EPOCH), "UTCTime 1970-01-01T00:00:00Z");
        assert_eq!(
            time(0x18, b"20500101000000Z"),
            Some(UNIX_EPOCH + Duration::from_secs(2_524_608_000))
        );
        assert_eq!(time(0x18, b"20501301000000Z"), None);
        assert_eq!(time(0x17, b"7001010000Z"), None);
        assert_eq!(not_after(&CertificateDer::from(vec![0x30, 0x82, 0xff])), None);
        assert_eq!(not_after(&CertificateDer::from(Vec::new())), None);
    }
}
