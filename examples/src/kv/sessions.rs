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
//! * A session is known by its id *and* its incarnation (the operation id of the registration
//!   that created it). A late duplicate of a registration can re-create an evicted session,
//!   but with another incarnation: the late duplicates of the old session's writes, which
//!   name the old incarnation, are refused as [`KvError::UnknownSession`] instead of being
//!   applied a second time.
//! * The answers kept for retries are bounded per session ([`MAX_PENDING_PER_SESSION`]) and
//!   per owner ([`MAX_PENDING_PER_CLIENT`]): one certificate pins at most that many answers on
//!   every replica (about 70 bytes each), whatever number of sessions it opens.
//! * Every operation is `O(log n)`: an LRU index per owner (ordered by last use), an index of
//!   owners by session count and each owner's number of kept answers, kept beside the table
//!   and rebuilt when a snapshot is decoded (only the table itself is serialized, so the format
//!   stays the table).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::command::{KvError, OpResult, Response, SessionId, SessionRef};

/// The most sessions kept in all.
pub const MAX_SESSIONS: usize = 16_384;
/// The most sessions one client (one certificate name) keeps.
pub const MAX_SESSIONS_PER_CLIENT: usize = 1024;
/// The most unacknowledged responses one session keeps; further new requests are refused with
/// [`KvError::TooManyPending`] until the client acknowledges some.
pub const MAX_PENDING_PER_SESSION: usize = 1024;
/// The most unacknowledged responses all sessions of one client keep together; further new
/// requests of that client are refused with [`KvError::TooManyPending`].
pub const MAX_PENDING_PER_CLIENT: usize = 64 * 1024;

/// One client session: what the state machine remembers to apply each request at most once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The client that opened it (certificate name).
    pub owner: String,
    /// The operation id of the registration that created it: every request names it, so that
    /// a session re-created under the same id is a different session.
    pub incarnation: u64,
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
    /// Per owner: how many responses its sessions keep (only owners keeping some).
    pending: BTreeMap<String, usize>,
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

    /// How many responses the sessions of `owner` keep.
    pub fn pending_of(&self, owner: &str) -> usize {
        self.pending.get(owner).copied().unwrap_or(0)
    }

    /// Opens session `id` for `owner` at operation `now`, evicting as the module doc says, and
    /// returns its incarnation (`now` for a new session). Registering an id the owner already
    /// holds only marks it used and returns its incarnation (a retried registration); an id
    /// another owner holds is refused.
    pub fn register(&mut self, owner: &str, id: SessionId, now: u64) -> Result<u64, KvError> {
        if let Some(session) = self.table.get(&id) {
            if session.owner != owner {
                return Err(KvError::SessionTaken);
            }
            let incarnation = session.incarnation;
            self.touch(id, now);
            return Ok(incarnation);
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
            incarnation: now,
            last_active: now,
            ack_below: 0,
            responses: BTreeMap::new(),
        };
        self.insert(id, session);
        Ok(now)
    }

    /// Applies a request of `owner` in the session `session` names, at operation `now`, at
    /// most once: forgets the responses it acknowledges, refuses an acknowledged (stale)
    /// sequence number, answers a retried one from the kept response, and otherwise runs
    /// `execute` and keeps its response (if the session and the owner keep fewer than their
    /// caps). [`KvError::UnknownSession`] if the session does not exist, belongs to another
    /// client or is another incarnation.
    pub fn apply(
        &mut self,
        owner: &str,
        session: SessionRef,
        now: u64,
        execute: impl FnOnce() -> OpResult,
    ) -> Response {
        if session.ack_below > session.seq {
            return Err(KvError::BadAck);
        }
        match self.table.get(&session.id) {
            Some(s) if s.owner == owner && s.incarnation == session.incarnation => {}
            _ => return Err(KvError::UnknownSession),
        }
        self.touch(session.id, now);
        let state = self.table.get_mut(&session.id).ok_or(KvError::UnknownSession)?;
        let mut forgotten = 0;
        if session.ack_below > state.ack_below {
            state.ack_below = session.ack_below;
            while state.responses.first_key_value().is_some_and(|(&s, _)| s < session.ack_below) {
                state.responses.pop_first();
                forgotten += 1;
            }
        }
        let kept = self.pending.get(owner).copied().unwrap_or(0).saturating_sub(forgotten);
        let answer = if session.seq < state.ack_below {
            Err(KvError::Stale)
        } else if let Some(response) = state.responses.get(&session.seq) {
            response.clone()
        } else if state.responses.len() >= MAX_PENDING_PER_SESSION || kept >= MAX_PENDING_PER_CLIENT
        {
            Err(KvError::TooManyPending)
        } else {
            let response = Ok(execute());
            state.responses.insert(session.seq, response.clone());
            self.set_pending(owner, kept + 1);
            return response;
        };
        self.set_pending(owner, kept);
        answer
    }

    fn set_pending(&mut self, owner: &str, kept: usize) {
        if kept == 0 {
            self.pending.remove(owner);
        } else if let Some(count) = self.pending.get_mut(owner) {
            *count = kept;
        } else {
            self.pending.insert(owner.to_owned(), kept);
        }
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
        let kept = self.pending_of(&owner) + session.responses.len();
        self.set_pending(&owner, kept);
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
        if let Some(session) = self.table.remove(&id) {
            let kept = self.pending_of(owner).saturating_sub(session.responses.len());
            self.set_pending(owner, kept);
        }
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
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    /// A write of `owner` in session `id` (its current incarnation) with sequence number `now`.
    fn write(s: &mut Sessions, owner: &str, id: SessionId, now: u64) -> Response {
        let incarnation = s.get(id).map_or(0, |session| session.incarnation);
        let session = SessionRef { id, incarnation, seq: now, ack_below: 0 };
        s.apply(owner, session, now, || OpResult::Written)
    }

    #[test]
    fn a_session_answers_only_to_its_owner() {
        let mut s = Sessions::default();
        s.register("client-a.kv", 1, 1).unwrap();
        assert_eq!(s.register("client-b.kv", 1, 2), Err(KvError::SessionTaken));
        assert_eq!(write(&mut s, "client-b.kv", 1, 3), Err(KvError::UnknownSession));
        assert!(write(&mut s, "client-a.kv", 1, 4).is_ok());
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
        write(&mut s, "client-flood.kv", 1, 5000).unwrap();
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
        assert_eq!(restored.pending, s.pending);
    }

    #[test]
    fn a_re_created_session_is_another_incarnation() {
        let mut s = Sessions::default();
        assert_eq!(s.register("client-a.kv", 7, 10), Ok(10));
        assert_eq!(s.register("client-a.kv", 7, 11), Ok(10), "a retry names the same session");
        let old = SessionRef { id: 7, incarnation: 10, seq: 0, ack_below: 0 };
        assert_eq!(s.apply("client-a.kv", old, 12, || OpResult::Written), Ok(OpResult::Written));
        for id in 100..100 + MAX_SESSIONS_PER_CLIENT as u128 {
            s.register("client-a.kv", id, 13 + id as u64).unwrap();
        }
        assert!(s.get(7).is_none(), "evicted");
        // A late duplicate registration re-creates the id, as a new incarnation...
        assert_eq!(s.register("client-a.kv", 7, 5000), Ok(5000));
        // ...in which the old incarnation's late duplicate is not applied again.
        let applied = std::cell::Cell::new(false);
        let late = s.apply("client-a.kv", old, 5001, || {
            applied.set(true);
            OpResult::Written
        });
        assert_eq!(late, Err(KvError::UnknownSession));
        assert!(!applied.get());
    }

    #[test]
    fn kept_answers_are_capped_per_client() {
        let mut s = Sessions::default();
        let sessions = MAX_PENDING_PER_CLIENT / MAX_PENDING_PER_SESSION + 2;
        let mut now = 0;
        let mut refused = 0;
        for id in 0..sessions as u128 {
            let incarnation = s.register("client-m.kv", id, now).unwrap();
            for seq in 0..MAX_PENDING_PER_SESSION as u64 {
                now += 1;
                let request = SessionRef { id, incarnation, seq, ack_below: 0 };
                match s.apply("client-m.kv", request, now, || OpResult::Written) {
                    Ok(_) => {}
                    Err(KvError::TooManyPending) => refused += 1,
                    Err(e) => panic!("{e}"),
                }
            }
        }
        assert_eq!(s.pending_of("client-m.kv"), MAX_PENDING_PER_CLIENT);
        assert_eq!(refused, 2 * MAX_PENDING_PER_SESSION);
        // Acknowledging frees room again; another client was never limited by this one.
        let ack = SessionRef { id: 0, incarnation: 0, seq: 2000, ack_below: 2000 };
        assert_eq!(
            s.apply("client-m.kv", ack, now + 1, || OpResult::Written),
            Ok(OpResult::Written)
        );
        assert_eq!(s.pending_of("client-m.kv"), MAX_PENDING_PER_CLIENT - 1023);
        let other = s.register("client-o.kv", u128::MAX, now + 2).unwrap();
        let request = SessionRef { id: u128::MAX, incarnation: other, seq: 0, ack_below: 0 };
        assert!(s.apply("client-o.kv", request, now + 3, || OpResult::Written).is_ok());
    }
}
