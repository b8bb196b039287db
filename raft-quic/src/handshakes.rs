//! [`Handshakes`]: the handshakes a [`Gate`](crate::Gate) has in progress, and which new ones
//! fit.
//!
//! Two pools. The **general** pool takes any attempt within three caps: the gate's total, one
//! IP address's, and one network prefix's (a `/24` in IPv4, a `/64` in IPv6: what one host or
//! one customer commonly gets, so an attacker with a whole IPv6 `/64` counts as one source). The
//! **reserve** takes what the general pool refuses, but only validated attempts from *expected*
//! addresses (for the Raft port: the addresses of known peers and of recently authenticated
//! nodes), at most [`RESERVED_PER_ADDRESS`] each: a flood from many sources can fill the
//! general pool, never the reserve, so a known peer that restarts still gets in.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::accept::GateConfig;

/// The most reserved handshakes one address may hold (a peer needs one at a time; two cover
/// a retry while the first attempt is being abandoned).
pub(crate) const RESERVED_PER_ADDRESS: usize = 2;

/// The network prefix `ip` belongs to, for the per-prefix cap: its `/24` (IPv4) or `/64`
/// (IPv6), IPv4-mapped IPv6 addresses counted as IPv4.
pub(crate) fn prefix_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4) & 0xffff_ff00)),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !0u128 << 64)),
    }
}

/// Which pool a handshake holds a place in (to give it back).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// The general pool, counted against this IP and its prefix.
    General { ip: IpAddr, prefix: IpAddr },
    /// The reserve, counted against this address.
    Reserved { addr: SocketAddr },
}

/// The handshakes in progress (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Handshakes {
    general: usize,
    reserved: usize,
    per_ip: HashMap<IpAddr, usize>,
    per_prefix: HashMap<IpAddr, usize>,
    per_reserved_addr: HashMap<SocketAddr, usize>,
}

fn add<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: K) {
    *counts.entry(key).or_insert(0) += 1;
}

fn remove<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: &K) {
    if let Some(count) = counts.get_mut(key) {
        *count -= 1;
        if *count == 0 {
            counts.remove(key);
        }
    }
}

impl Handshakes {
    /// Handshakes in progress, both pools.
    pub(crate) fn in_progress(&self) -> usize {
        self.general + self.reserved
    }

    /// A place in the general pool for an attempt from `remote`, if one is free.
    pub(crate) fn try_general(&mut self, config: &GateConfig, remote: SocketAddr) -> Option<Place> {
        let ip = remote.ip().to_canonical();
        let prefix = prefix_of(ip);
        let count = |counts: &HashMap<IpAddr, usize>, key| counts.get(&key).copied().unwrap_or(0);
        let fits = self.general < config.max_handshakes
            && count(&self.per_ip, ip) < config.max_handshakes_per_ip
            && count(&self.per_prefix, prefix) < config.max_handshakes_per_prefix;
        fits.then(|| {
            self.general += 1;
            add(&mut self.per_ip, ip);
            add(&mut self.per_prefix, prefix);
            Place::General { ip, prefix }
        })
    }

    /// A place in the reserve for a validated attempt from the expected address `remote`, if
    /// one is free.
    pub(crate) fn try_reserve(&mut self, config: &GateConfig, remote: SocketAddr) -> Option<Place> {
        let from_addr = self.per_reserved_addr.get(&remote).copied().unwrap_or(0);
        let fits = self.reserved < config.reserved_handshakes && from_addr < RESERVED_PER_ADDRESS;
        fits.then(|| {
            self.reserved += 1;
            add(&mut self.per_reserved_addr, remote);
            Place::Reserved { addr: remote }
        })
    }

    /// Gives a place back.
    pub(crate) fn release(&mut self, place: Place) {
        match place {
            Place::General { ip, prefix } => {
                self.general = self.general.saturating_sub(1);
                remove(&mut self.per_ip, &ip);
                remove(&mut self.per_prefix, &prefix);
            }
            Place::Reserved { addr } => {
                self.reserved = self.reserved.saturating_sub(1);
                remove(&mut self.per_reserved_addr, &addr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn prefixes_are_slash_24_and_slash_64() {
        let prefix = |ip: &str| prefix_of(ip.parse().unwrap());
        assert_eq!(prefix("10.1.2.3"), prefix("10.1.2.250"));
        assert_ne!(prefix("10.1.2.3"), prefix("10.1.3.3"));
        assert_eq!(prefix("2001:db8::1"), prefix("2001:db8::ffff:1:2:3"));
        assert_ne!(prefix("2001:db8::1"), prefix("2001:db8:0:1::1"));
        assert_eq!(prefix("::ffff:10.1.2.3"), prefix("10.1.2.9"), "IPv4-mapped is IPv4");
    }

    #[test]
    fn the_general_pool_caps_ips_prefixes_and_the_total() {
        let mut config = GateConfig::new(64);
        config.max_handshakes = 10;
        config.max_handshakes_per_ip = 3;
        config.max_handshakes_per_prefix = 5;
        let mut handshakes = Handshakes::default();
        let taken: Vec<Place> =
            (0..3).filter_map(|_| handshakes.try_general(&config, addr("10.0.0.1:1"))).collect();
        assert_eq!(taken.len(), 3);
        assert!(handshakes.try_general(&config, addr("10.0.0.1:2")).is_none(), "per IP");
        assert!(handshakes.try_general(&config, addr("10.0.0.2:1")).is_some());
        assert!(handshakes.try_general(&config, addr("10.0.0.3:1")).is_some());
        assert!(handshakes.try_general(&config, addr("10.0.0.4:1")).is_none(), "per prefix");
        // Other prefixes, up to the total.
        for i in 1..=5 {
            assert!(handshakes.try_general(&config, addr(&format!("10.0.{i}.1:1"))).is_some());
        }
        assert!(handshakes.try_general(&config, addr("10.9.9.9:1")).is_none(), "total");
        assert_eq!(handshakes.in_progress(), 10);
        handshakes.release(taken[0]);
        assert!(handshakes.try_general(&config, addr("10.0.0.1:3")).is_some());
    }

    #[test]
    fn the_reserve_is_apart_and_capped_per_address() {
        let mut config = GateConfig::new(64);
        config.max_handshakes = 1;
        config.reserved_handshakes = 3;
        let mut handshakes = Handshakes::default();
        assert!(handshakes.try_general(&config, addr("10.0.0.1:1")).is_some());
        assert!(handshakes.try_general(&config, addr("10.0.0.2:1")).is_none());
        let peer = addr("10.0.0.2:7000");
        let first = handshakes.try_reserve(&config, peer).unwrap();
        assert!(handshakes.try_reserve(&config, peer).is_some());
        assert!(handshakes.try_reserve(&config, peer).is_none(), "per address");
        assert!(handshakes.try_reserve(&config, addr("10.0.0.3:7000")).is_some());
        assert!(handshakes.try_reserve(&config, addr("10.0.0.4:7000")).is_none(), "total");
        assert_eq!(handshakes.in_progress(), 4);
        handshakes.release(first);
        assert!(handshakes.try_reserve(&config, peer).is_some());
    }
}
