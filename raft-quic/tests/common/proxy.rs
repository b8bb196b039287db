//! A UDP forwarder on loopback that can black-hole traffic, to break a link (or hide a crash)
//! between two endpoints. Runs on a plain thread, so it works under any async runtime.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Forwards datagrams from one client to `target` and back, unless blocked.
pub struct UdpProxy {
    addr: SocketAddr,
    blocked: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
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
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (blocked, stop) = (blocked.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut client: Option<SocketAddr> = None;
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Acquire) {
                    let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
                    if blocked.load(Ordering::Acquire) {
                        continue;
                    }
                    if from == target {
                        if !back(&buf[..n]) {
                            continue;
                        }
                        if let Some(client) = client {
                            let _ = socket.send_to(&buf[..n], client);
                        }
                    } else {
                        client = Some(from);
                        let _ = socket.send_to(&buf[..n], target);
                    }
                }
            })
        };
        Self { addr, blocked, stop, thread: Some(thread) }
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
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
