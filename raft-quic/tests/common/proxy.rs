//! A UDP forwarder on loopback that can black-hole traffic, to break a link (or hide a crash)
//! between two endpoints, and that reads the connection ids the two use. Runs on a plain
//! thread, so it works under any async runtime.

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The length of raft-quic's connection ids (what a short header's id is read as).
pub const CID_LEN: usize = 20;

/// The source connection id of a QUIC long-header packet (Initial, Handshake, Retry), if the
/// datagram starts with one.
pub fn long_header_scid(datagram: &[u8]) -> Option<Vec<u8>> {
    if datagram.first()? & 0x80 == 0 {
        return None;
    }
    let dcid_len = usize::from(*datagram.get(5)?);
    let scid_len = usize::from(*datagram.get(6 + dcid_len)?);
    let start = 7 + dcid_len;
    datagram.get(start..start + scid_len).map(<[u8]>::to_vec)
}

/// The destination connection id of a QUIC short-header packet, if the datagram is one.
pub fn short_header_dcid(datagram: &[u8]) -> Option<Vec<u8>> {
    if datagram.first()? & 0x80 != 0 {
        return None;
    }
    datagram.get(1..1 + CID_LEN).map(<[u8]>::to_vec)
}

/// The connection ids seen by a proxy.
#[derive(Debug, Default)]
pub struct SeenIds {
    /// Every id the target sent in a long header (its public ids).
    pub target_public: HashSet<Vec<u8>>,
    /// The id of the client's latest short-header packet (the target's id it uses now).
    pub client_uses: Option<Vec<u8>>,
}

/// Whether a datagram is a QUIC Retry packet.
pub fn is_retry(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|b| b & 0xf0 == 0xf0)
}

/// Forwards datagrams from one client to `target` and back, unless blocked.
pub struct UdpProxy {
    addr: SocketAddr,
    blocked: Arc<AtomicBool>,
    held: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<SeenIds>>,
    thread: Option<JoinHandle<()>>,
}

impl UdpProxy {
    pub fn start(target: SocketAddr) -> Self {
        Self::start_filtered(super::loopback(), target, |_| true)
    }

    /// A proxy bound at `bind` that passes back to the client only the datagrams from `target`
    /// that `back` accepts (to play a client that never hears the server, or only some of it).
    pub fn start_filtered(bind: SocketAddr, target: SocketAddr, back: fn(&[u8]) -> bool) -> Self {
        let socket = UdpSocket::bind(bind).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let addr = socket.local_addr().unwrap();
        let blocked = Arc::new(AtomicBool::new(false));
        let held = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(SeenIds::default()));
        let thread = {
            let (blocked, held, stop, seen) =
                (blocked.clone(), held.clone(), stop.clone(), seen.clone());
            std::thread::spawn(move || {
                let mut client: Option<SocketAddr> = None;
                let mut queue: Vec<Vec<u8>> = Vec::new();
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Acquire) {
                    if !held.load(Ordering::Acquire) {
                        if let Some(client) = client {
                            for datagram in queue.drain(..) {
                                let _ = socket.send_to(&datagram, client);
                            }
                        }
                    }
                    let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
                    if blocked.load(Ordering::Acquire) {
                        continue;
                    }
                    if from == target {
                        if let Some(scid) = long_header_scid(&buf[..n]) {
                            seen.lock().unwrap().target_public.insert(scid);
                        }
                        if !back(&buf[..n]) {
                            continue;
                        }
                        if held.load(Ordering::Acquire) && !is_retry(&buf[..n]) {
                            queue.push(buf[..n].to_vec());
                            continue;
                        }
                        if let Some(client) = client {
                            let _ = socket.send_to(&buf[..n], client);
                        }
                    } else {
                        if let Some(dcid) = short_header_dcid(&buf[..n]) {
                            seen.lock().unwrap().client_uses = Some(dcid);
                        }
                        client = Some(from);
                        let _ = socket.send_to(&buf[..n], target);
                    }
                }
            })
        };
        Self { addr, blocked, held, stop, seen, thread: Some(thread) }
    }

    /// The ids the target sent in clear (long headers) through this proxy so far.
    pub fn target_public_ids(&self) -> Vec<Vec<u8>> {
        self.seen.lock().unwrap().target_public.iter().cloned().collect()
    }

    /// Whether the client now sends to an id of the target's that never appeared in clear (the
    /// connection moved off its handshake id), so that a restarted target will reset it.
    pub fn client_uses_a_private_id(&self) -> bool {
        let seen = self.seen.lock().unwrap();
        seen.client_uses.as_ref().is_some_and(|id| !seen.target_public.contains(id))
    }

    /// Where clients should send to reach the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every datagram, both ways, until [`unblock`](Self::unblock).
    pub fn block(&self) {
        self.blocked.store(true, Ordering::Release);
    }

    pub fn unblock(&self) {
        self.blocked.store(false, Ordering::Release);
    }

    /// Delays (queues, never drops) the target's datagrams to the client, other than its
    /// Retry packets, until [`release`](Self::release): a handshake through the proxy stays
    /// under way, the target's flight held.
    pub fn hold(&self) {
        self.held.store(true, Ordering::Release);
    }

    /// Delivers the held datagrams, in order, and forwards the target's datagrams again.
    pub fn release(&self) {
        self.held.store(false, Ordering::Release);
    }
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
