//! [`Sessions`]: the client sessions of the replicated state, each owned by the authenticated
//! client that opened it, with per-client quotas and eviction that never scans.
//!
//! * A session answers only to its owner (the certificate name of the connection whose entry
//!   registered it): another client cannot consume its sequence numbers, move its
//!   `ack_below` or fill its pending answers, even if it learned the id.
//! * Each owner keeps at most [`MAX_SESSIONS_PER_CLIENT`]; registering one more evicts that
//!   owner's least recently used session. When the whole table holds [`MAX_SESSIONS`], a
//!   registration evicts the least recently used session of the owner holding the most
//!   sessions, so a client flooding registrations evicts its own sessions (or those of another
//!   flooder), never those of a client with fewer.
//! * Every operation is `O(log n)`: an LRU index per owner (ordered by last use) and an index
//!   of owners by session count, kept beside the table and rebuilt when a snapshot is decoded
//!   (only the table itself is serialized, so the format stays the table).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::command::{KvError, Response, SessionId};

/// The most sessions kept in all.
pub const MAX_SESSIONS: usize = 16_384;
/// The most sessions one client (one certificate name) keeps.
pub const MAX_SESSIONS_PER_CLIENT: usize = 1024;
/// The most unacknowledged responses one session keeps; further new requests are refused with
/// [`KvError::TooManyPending`] until the client acknowledges some.
pub const MAX_PENDING_PER_SESSION: usize = 1024;

/// One client session: what the state machine remembers to apply each request at most once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The client that opened it (certificate name).
    pub owner: String,
    /// Operation id of the session's latest use (its place in the owner's LRU order).
    pub last_active: u64,
    /// Requests below this sequence number were answered to the client; their responses are
    /// forgotten and a late duplicate of one is refused as [`KvError::Stale`].
    pub ack_below: u64,
    /// The responses of applied requests at or above `ack_below`, by sequence number.
    pub responses: BTreeMap<u64, Response>,
}

/// The session table with its indexes. Serializes as the table alone.
#[derive(Clone, Debug, Default)]
pub struct Sessions {
    table: BTreeMap<SessionId, Session>,
    /// Per owner: its sessions ordered by last use.
    lru: BTreeMap<String, BTreeSet<(u64, SessionId)>>,
    /// Owners ordered by how many sessions they hold.
    by_count: BTreeSet<(usize, String)>,
}

impl PartialEq for Sessions {
    fn eq(&self, other: &Self) -> bool {
        self.table == other.table
    }
}

impl Eq for Sessions {}

impl Sessions {
    /// The number of sessions.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Session `id`, if it exists.
    pub fn get(&self, id: SessionId) -> Option<&Session> {
        self.table.get(&id)
    }

    /// How many sessions `owner` holds.
    pub fn count_of(&self, owner: &str) -> usize {
        self.lru.get(owner).map_or(0, BTreeSet::len)
    }

    /// Opens session `id` for `owner` at operation `now`, evicting as the module doc says.
    /// Registering an id the owner already holds only marks it used (a retried registration);
    /// an id another owner holds is refused.
    pub fn register(&mut self, owner: &str, id: SessionId, now: u64) -> Result<(), KvError> {
        if let Some(session) = self.table.get(&id) {
            if session.owner != owner {
                return Err(KvError::SessionTaken);
            }
            self.touch(id, now);
            return Ok(());
        }
        if self.count_of(owner) >= MAX_SESSIONS_PER_CLIENT {
            self.evict_lru_of(owner);
        } else if self.table.len() >= MAX_SESSIONS {
            if let Some((_, largest)) = self.by_count.last().cloned() {
                self.evict_lru_of(&largest);
            }
        }
        let session = Session {
            owner: owner.to_owned(),
            last_active: now,
            ack_below: 0,
            responses: BTreeMap::new(),
        };
        self.insert(id, session);
        Ok(())
    }

    /// Session `id` for a request of `owner` at operation `now` (marked used), or
    /// [`KvError::UnknownSession`] if it does not exist or belongs to another client.
    pub fn use_session(
        &mut self,
        owner: &str,
        id: SessionId,
        now: u64,
    ) -> Result<&mut Session, KvError> {
        match self.table.get(&id) {
            Some(session) if session.owner == owner => {}
            _ => return Err(KvError::UnknownSession),
        }
        self.touch(id, now);
        self.table.get_mut(&id).ok_or(KvError::UnknownSession)
    }

    fn touch(&mut self, id: SessionId, now: u64) {
        let Some(session) = self.table.get_mut(&id) else { return };
        if let Some(order) = self.lru.get_mut(&session.owner) {
            order.remove(&(session.last_active, id));
            order.insert((now, id));
        }
        session.last_active = now;
    }

    fn insert(&mut self, id: SessionId, session: Session) {
        let owner = session.owner.clone();
        let before = self.count_of(&owner);
        self.lru.entry(owner.clone()).or_default().insert((session.last_active, id));
        self.table.insert(id, session);
        self.recount(owner, before);
    }

    fn evict_lru_of(&mut self, owner: &str) {
        let before = self.count_of(owner);
        let Some(order) = self.lru.get_mut(owner) else { return };
        let Some((_, id)) = order.pop_first() else { return };
        if order.is_empty() {
            self.lru.remove(owner);
        }
        self.table.remove(&id);
        self.recount(owner.to_owned(), before);
    }

    /// Moves `owner` in the count index from `before` to its current count.
    fn recount(&mut self, owner: String, before: usize) {
        let after = self.count_of(&owner);
        if before > 0 {
            self.by_count.remove(&(before, owner.clone()));
        }
        if after > 0 {
            self.by_count.insert((after, owner));
        }
    }

    /// A table rebuilt with its indexes (after decoding).
    fn from_table(table: BTreeMap<SessionId, Session>) -> Self {
        let mut sessions = Self::default();
        for (id, session) in table {
            sessions.insert(id, session);
        }
        sessions
    }
}

impl Serialize for Sessions {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.table.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Sessions {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        BTreeMap::deserialize(deserializer).map(Self::from_table)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_session_answers_only_to_its_owner() {
        let mut s = Sessions::default();
        s.register("client-a.kv", 1, 1).unwrap();
        assert_eq!(s.register("client-b.kv", 1, 2), Err(KvError::SessionTaken));
        assert_eq!(s.use_session("client-b.kv", 1, 3).unwrap_err(), KvError::UnknownSession);
        assert!(s.use_session("client-a.kv", 1, 4).is_ok());
        // A retried registration by the owner is harmless.
        s.register("client-a.kv", 1, 5).unwrap();
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn a_client_over_its_quota_evicts_its_own_least_recently_used_session() {
        let mut s = Sessions::default();
        s.register("client-victim.kv", 0, 0).unwrap();
        for id in 1..=MAX_SESSIONS_PER_CLIENT as u128 {
            s.register("client-flood.kv", id, id as u64).unwrap();
        }
        // Using session 1 makes session 2 the flooder's least recently used.
        s.use_session("client-flood.kv", 1, 5000).unwrap();
        s.register("client-flood.kv", 9999, 5001).unwrap();
        assert_eq!(s.count_of("client-flood.kv"), MAX_SESSIONS_PER_CLIENT);
        assert!(s.get(1).is_some() && s.get(2).is_none());
        assert!(s.get(0).is_some(), "another client's session is never evicted by a flood");
    }

    #[test]
    fn a_full_table_evicts_from_the_largest_owner() {
        let mut s = Sessions::default();
        s.register("client-victim.kv", u128::MAX, 0).unwrap();
        let mut now = 1;
        let flooders = MAX_SESSIONS / MAX_SESSIONS_PER_CLIENT;
        for f in 0..flooders {
            for _ in 0..MAX_SESSIONS_PER_CLIENT {
                s.register(&format!("client-f{f:02}.kv"), u128::from(now), now).unwrap();
                now += 1;
            }
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        assert!(s.get(u128::MAX).is_some(), "the victim (one session) was not evicted");
        s.register("client-new.kv", 0, now).unwrap();
        assert_eq!(s.len(), MAX_SESSIONS);
        assert!(s.get(u128::MAX).is_some());
        assert_eq!(s.count_of("client-new.kv"), 1);
    }

    #[test]
    fn the_indexes_are_rebuilt_from_the_serialized_table() {
        let mut s = Sessions::default();
        for id in 0..5u128 {
            s.register(if id % 2 == 0 { "client-a.kv" } else { "client-b.kv" }, id, id as u64)
                .unwrap();
        }
        let bytes = postcard::to_allocvec(&s).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&s.table).unwrap());
        let restored: Sessions = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(restored, s);
        assert_eq!(restored.lru, s.lru);
        assert_eq!(restored.by_count, s.by_count);
    }
}
