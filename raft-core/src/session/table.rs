//! [`SessionTable`]: the client sessions a state machine keeps, each owned by the client that
//! opened it, with quotas and eviction that never scans.
//!
//! * A session answers only to its owner: another client cannot consume its sequence numbers,
//!   move its `ack_below` or fill its kept answers, even if it learned the id.
//! * Each owner keeps at most `max_sessions_per_owner`; registering one more evicts that
//!   owner's least recently used session. When the whole table holds `max_sessions`, a
//!   registration evicts the least recently used session of the owner holding the most, so a
//!   client flooding registrations evicts its own sessions (or another flooder's), never those
//!   of a client with fewer.
//! * A session is known by its id *and* its incarnation (the `now` of the registration that
//!   created it). A late duplicate of a registration can re-create an evicted session, but as
//!   another incarnation: the old session's late duplicates are refused
//!   ([`SessionError::Unknown`]) instead of being applied a second time.
//! * Kept answers are bounded per session and per owner.
//! * Every operation is `O(log n)`: an LRU index per owner, an index of owners by session
//!   count and each owner's number of kept answers, beside the table and rebuilt when it is
//!   decoded (only the table is serialized).

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{SessionError, SessionId, SessionRef};

/// The bounds of a [`SessionTable`]. They decide which requests are refused, so every replica
/// must use the same (they are part of the state machine's code, not of its state).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionLimits {
    /// The most sessions kept in all.
    pub max_sessions: usize,
    /// The most sessions one owner keeps.
    pub max_sessions_per_owner: usize,
    /// The most unacknowledged answers one session keeps.
    pub max_pending_per_session: usize,
    /// The most unacknowledged answers all sessions of one owner keep together.
    pub max_pending_per_owner: usize,
}

impl SessionLimits {
    /// Limits with these values (see the fields).
    pub const fn new(
        max_sessions: usize,
        max_sessions_per_owner: usize,
        max_pending_per_session: usize,
        max_pending_per_owner: usize,
    ) -> Self {
        Self {
            max_sessions,
            max_sessions_per_owner,
            max_pending_per_session,
            max_pending_per_owner,
        }
    }

    /// 16,384 sessions, 1,024 per owner, 1,024 kept answers per session and 65,536 per owner.
    pub const DEFAULT: SessionLimits = SessionLimits {
        max_sessions: 16_384,
        max_sessions_per_owner: 1024,
        max_pending_per_session: 1024,
        max_pending_per_owner: 64 * 1024,
    };
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// One client session: what the table remembers to apply each request at most once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session<O, R> {
    /// The client that opened it.
    pub owner: O,
    /// The `now` of the registration that created it: every request names it.
    pub incarnation: u64,
    /// The `now` of the session's latest use (its place in the owner's LRU order).
    pub last_active: u64,
    /// Requests below this sequence number were answered to the client: their answers are
    /// forgotten and a late duplicate of one is refused ([`SessionError::Stale`]).
    pub ack_below: u64,
    /// The answers of applied requests at or above `ack_below`, by sequence number.
    pub responses: BTreeMap<u64, R>,
}

/// The session table of a state machine, generic over the owner `O` (the authenticated
/// client's name or id) and the answer `R` kept for retries. Serializes as the table alone
/// (`BTreeMap<SessionId, Session<O, R>>`); a decoded table has [`SessionLimits::DEFAULT`] until
/// [`SessionTable::set_limits`].
///
/// `now` arguments are a deterministic, increasing number supplied by the state machine (the
/// index of the log entry being applied is the natural choice), never a clock.
#[derive(Clone, Debug)]
pub struct SessionTable<O, R> {
    limits: SessionLimits,
    table: BTreeMap<SessionId, Session<O, R>>,
    /// Per owner: its sessions ordered by last use.
    lru: BTreeMap<O, BTreeSet<(u64, SessionId)>>,
    /// Owners ordered by how many sessions they hold.
    by_count: BTreeSet<(usize, O)>,
    /// Per owner: how many answers its sessions keep (only owners keeping some).
    pending: BTreeMap<O, usize>,
}

impl<O: Ord + Clone, R: Clone> Default for SessionTable<O, R> {
    fn default() -> Self {
        Self::new(SessionLimits::DEFAULT)
    }
}

impl<O: PartialEq, R: PartialEq> PartialEq for SessionTable<O, R> {
    fn eq(&self, other: &Self) -> bool {
        self.table == other.table
    }
}

impl<O: Eq, R: Eq> Eq for SessionTable<O, R> {}

impl<O: Ord + Clone, R: Clone> SessionTable<O, R> {
    /// An empty table with `limits`.
    pub fn new(limits: SessionLimits) -> Self {
        Self {
            limits,
            table: BTreeMap::new(),
            lru: BTreeMap::new(),
            by_count: BTreeSet::new(),
            pending: BTreeMap::new(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> SessionLimits {
        self.limits
    }

    /// Replaces the limits (after decoding a table, if they are not the default). Sessions
    /// already beyond new, lower limits stay until they are evicted or acknowledged.
    pub fn set_limits(&mut self, limits: SessionLimits) {
        self.limits = limits;
    }

    /// The number of sessions.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Session `id`, if it exists.
    pub fn get(&self, id: SessionId) -> Option<&Session<O, R>> {
        self.table.get(&id)
    }

    /// How many sessions `owner` holds.
    pub fn count_of<Q>(&self, owner: &Q) -> usize
    where
        O: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.lru.get(owner).map_or(0, BTreeSet::len)
    }

    /// How many answers the sessions of `owner` keep.
    pub fn pending_of<Q>(&self, owner: &Q) -> usize
    where
        O: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.pending.get(owner).copied().unwrap_or(0)
    }

    /// Opens session `id` for `owner` at `now`, evicting as the module doc says, and returns
    /// its incarnation (`now` for a new session). Registering an id the owner already holds
    /// only marks it used and returns its incarnation (a retried registration); an id another
    /// owner holds is refused ([`SessionError::Taken`]).
    pub fn register<Q>(&mut self, owner: &Q, id: SessionId, now: u64) -> Result<u64, SessionError>
    where
        O: Borrow<Q>,
        Q: Ord + ToOwned<Owned = O> + ?Sized,
    {
        if let Some(session) = self.table.get(&id) {
            if session.owner.borrow() != owner {
                return Err(SessionError::Taken);
            }
            let incarnation = session.incarnation;
            self.touch(id, now);
            return Ok(incarnation);
        }
        let owner = owner.to_owned();
        if self.count_of::<O>(&owner) >= self.limits.max_sessions_per_owner {
            self.evict_lru_of(&owner);
        } else if self.table.len() >= self.limits.max_sessions {
            if let Some((_, largest)) = self.by_count.last().cloned() {
                self.evict_lru_of(&largest);
            }
        }
        let session = Session {
            owner,
            incarnation: now,
            last_active: now,
            ack_below: 0,
            responses: BTreeMap::new(),
        };
        self.insert(id, session);
        Ok(now)
    }

    /// Applies a request of `owner` in the session `session` names, at `now`, at most once:
    /// forgets the answers it acknowledges, refuses an acknowledged (stale) sequence number,
    /// answers a retried one from the kept answer, and otherwise runs `execute` and keeps its
    /// answer (if the session and the owner keep fewer than their caps).
    pub fn apply<Q>(
        &mut self,
        owner: &Q,
        session: SessionRef,
        now: u64,
        execute: impl FnOnce() -> R,
    ) -> Result<R, SessionError>
    where
        O: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        if session.ack_below > session.seq {
            return Err(SessionError::BadAck);
        }
        let owner = match self.table.get(&session.id) {
            Some(s) if s.owner.borrow() == owner && s.incarnation == session.incarnation => {
                s.owner.clone()
            }
            _ => return Err(SessionError::Unknown),
        };
        self.touch(session.id, now);
        let limits = self.limits;
        let state = self.table.get_mut(&session.id).ok_or(SessionError::Unknown)?;
        let mut forgotten = 0;
        if session.ack_below > state.ack_below {
            state.ack_below = session.ack_below;
            while state.responses.first_key_value().is_some_and(|(&s, _)| s < session.ack_below) {
                state.responses.pop_first();
                forgotten += 1;
            }
        }
        let kept = self.pending.get::<O>(&owner).copied().unwrap_or(0).saturating_sub(forgotten);
        let answer = if session.seq < state.ack_below {
            Err(SessionError::Stale)
        } else if let Some(response) = state.responses.get(&session.seq) {
            Ok(response.clone())
        } else if state.responses.len() >= limits.max_pending_per_session
            || kept >= limits.max_pending_per_owner
        {
            Err(SessionError::TooManyPending)
        } else {
            let response = execute();
            state.responses.insert(session.seq, response.clone());
            self.set_pending(owner, kept + 1);
            return Ok(response);
        };
        self.set_pending(owner, kept);
        answer
    }

    fn set_pending(&mut self, owner: O, kept: usize) {
        if kept == 0 {
            self.pending.remove(&owner);
        } else {
            self.pending.insert(owner, kept);
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

    fn insert(&mut self, id: SessionId, session: Session<O, R>) {
        let owner = session.owner.clone();
        let before = self.count_of(&owner);
        self.lru.entry(owner.clone()).or_default().insert((session.last_active, id));
        let kept = self.pending_of(&owner) + session.responses.len();
        self.set_pending(owner.clone(), kept);
        self.table.insert(id, session);
        self.recount(owner, before);
    }

    fn evict_lru_of(&mut self, owner: &O) {
        let before = self.count_of(owner);
        let Some(order) = self.lru.get_mut(owner) else { return };
        let Some((_, id)) = order.pop_first() else { return };
        if order.is_empty() {
            self.lru.remove(owner);
        }
        if let Some(session) = self.table.remove(&id) {
            let kept = self.pending_of(owner).saturating_sub(session.responses.len());
            self.set_pending(owner.clone(), kept);
        }
        self.recount(owner.clone(), before);
    }

    /// Moves `owner` in the count index from `before` to its current count.
    fn recount(&mut self, owner: O, before: usize) {
        let after = self.count_of(&owner);
        if before > 0 {
            self.by_count.remove(&(before, owner.clone()));
        }
        if after > 0 {
            self.by_count.insert((after, owner));
        }
    }

    /// A table rebuilt with its indexes (after decoding).
    fn from_table(table: BTreeMap<SessionId, Session<O, R>>) -> Self {
        let mut sessions = Self::default();
        for (id, session) in table {
            sessions.insert(id, session);
        }
        sessions
    }
}

impl<O: Serialize, R: Serialize> Serialize for SessionTable<O, R> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.table.serialize(serializer)
    }
}

impl<'de, O, R> Deserialize<'de> for SessionTable<O, R>
where
    O: Ord + Clone + Deserialize<'de>,
    R: Clone + Deserialize<'de>,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        BTreeMap::deserialize(deserializer).map(Self::from_table)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    type Table = SessionTable<String, u64>;
    const L: SessionLimits = SessionLimits::DEFAULT;

    /// A write of `owner` in session `id` (its current incarnation) with sequence number `now`.
    fn write(s: &mut Table, owner: &str, id: SessionId, now: u64) -> Result<u64, SessionError> {
        let incarnation = s.get(id).map_or(0, |session| session.incarnation);
        let session = SessionRef { id, incarnation, seq: now, ack_below: 0 };
        s.apply(owner, session, now, || now)
    }

    #[test]
    fn a_session_answers_only_to_its_owner() {
        let mut s = Table::default();
        s.register("client-a", 1, 1).unwrap();
        assert_eq!(s.register("client-b", 1, 2), Err(SessionError::Taken));
        assert_eq!(write(&mut s, "client-b", 1, 3), Err(SessionError::Unknown));
        assert!(write(&mut s, "client-a", 1, 4).is_ok());
        // A retried registration by the owner is harmless.
        s.register("client-a", 1, 5).unwrap();
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn a_retry_is_answered_from_the_kept_answer_and_applied_once() {
        let mut s = Table::default();
        let incarnation = s.register("c", 9, 1).unwrap();
        let request = SessionRef { id: 9, incarnation, seq: 0, ack_below: 0 };
        let runs = std::cell::Cell::new(0);
        let run = || {
            runs.set(runs.get() + 1);
            42
        };
        assert_eq!(s.apply("c", request, 2, run), Ok(42));
        assert_eq!(s.apply("c", request, 3, || 43), Ok(42), "the retry gets the first answer");
        assert_eq!(runs.get(), 1);
        // Acknowledged: forgotten, and a late duplicate is refused, not applied.
        let next = SessionRef { seq: 1, ack_below: 1, ..request };
        assert_eq!(s.apply("c", next, 4, || 7), Ok(7));
        assert_eq!(s.apply("c", request, 5, || 44), Err(SessionError::Stale));
        assert_eq!(s.get(9).unwrap().responses.len(), 1);
        let bad = SessionRef { seq: 1, ack_below: 2, ..request };
        assert_eq!(s.apply("c", bad, 6, || 45), Err(SessionError::BadAck));
    }

    #[test]
    fn an_owner_over_its_quota_evicts_its_own_least_recently_used_session() {
        let mut s = Table::default();
        s.register("victim", 0, 0).unwrap();
        for id in 1..=L.max_sessions_per_owner as u128 {
            s.register("flood", id, id as u64).unwrap();
        }
        // Using session 1 makes session 2 the flooder's least recently used.
        write(&mut s, "flood", 1, 5000).unwrap();
        s.register("flood", 9999, 5001).unwrap();
        assert_eq!(s.count_of("flood"), L.max_sessions_per_owner);
        assert!(s.get(1).is_some() && s.get(2).is_none());
        assert!(s.get(0).is_some(), "another owner's session is never evicted by a flood");
    }

    #[test]
    fn a_full_table_evicts_from_the_largest_owner() {
        let mut s = Table::default();
        s.register("victim", u128::MAX, 0).unwrap();
        let mut now = 1;
        for f in 0..L.max_sessions / L.max_sessions_per_owner {
            for _ in 0..L.max_sessions_per_owner {
                s.register(&format!("f{f:02}"), u128::from(now), now).unwrap();
                now += 1;
            }
        }
        assert_eq!(s.len(), L.max_sessions);
        assert!(s.get(u128::MAX).is_some(), "the victim (one session) was not evicted");
        s.register("new", 0, now).unwrap();
        assert_eq!(s.len(), L.max_sessions);
        assert!(s.get(u128::MAX).is_some());
        assert_eq!(s.count_of("new"), 1);
    }

    #[test]
    fn the_indexes_are_rebuilt_from_the_serialized_table() {
        let mut s = Table::default();
        for id in 0..5u128 {
            s.register(if id % 2 == 0 { "a" } else { "b" }, id, id as u64).unwrap();
            write(&mut s, if id % 2 == 0 { "a" } else { "b" }, id, 10 + id as u64).unwrap();
        }
        let bytes = postcard::to_allocvec(&s).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&s.table).unwrap());
        let restored: Table = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(restored, s);
        assert_eq!(restored.lru, s.lru);
        assert_eq!(restored.by_count, s.by_count);
        assert_eq!(restored.pending, s.pending);
    }

    #[test]
    fn a_re_created_session_is_another_incarnation() {
        let mut s = Table::default();
        assert_eq!(s.register("a", 7, 10), Ok(10));
        assert_eq!(s.register("a", 7, 11), Ok(10), "a retry names the same session");
        let old = SessionRef { id: 7, incarnation: 10, seq: 0, ack_below: 0 };
        assert_eq!(s.apply("a", old, 12, || 1), Ok(1));
        for id in 100..100 + L.max_sessions_per_owner as u128 {
            s.register("a", id, 13 + id as u64).unwrap();
        }
        assert!(s.get(7).is_none(), "evicted");
        // A late duplicate registration re-creates the id, as a new incarnation...
        assert_eq!(s.register("a", 7, 5000), Ok(5000));
        // ...in which the old incarnation's late duplicate is not applied again.
        let applied = std::cell::Cell::new(false);
        let late = s.apply("a", old, 5001, || {
            applied.set(true);
            2
        });
        assert_eq!(late, Err(SessionError::Unknown));
        assert!(!applied.get());
    }

    #[test]
    fn kept_answers_are_capped_per_owner() {
        let mut s = Table::default();
        let sessions = L.max_pending_per_owner / L.max_pending_per_session + 2;
        let mut now = 0;
        let mut refused = 0;
        for id in 0..sessions as u128 {
            let incarnation = s.register("m", id, now).unwrap();
            for seq in 0..L.max_pending_per_session as u64 {
                now += 1;
                let request = SessionRef { id, incarnation, seq, ack_below: 0 };
                match s.apply("m", request, now, || 0) {
                    Ok(_) => {}
                    Err(SessionError::TooManyPending) => refused += 1,
                    Err(e) => panic!("{e}"),
                }
            }
        }
        assert_eq!(s.pending_of("m"), L.max_pending_per_owner);
        assert_eq!(refused, 2 * L.max_pending_per_session);
        // Acknowledging frees room again; another owner was never limited by this one.
        let ack = SessionRef { id: 0, incarnation: 0, seq: 2000, ack_below: 2000 };
        assert_eq!(s.apply("m", ack, now + 1, || 0), Ok(0));
        assert_eq!(s.pending_of("m"), L.max_pending_per_owner - 1023);
        let other = s.register("o", u128::MAX, now + 2).unwrap();
        let request = SessionRef { id: u128::MAX, incarnation: other, seq: 0, ack_below: 0 };
        assert!(s.apply("o", request, now + 3, || 0).is_ok());
    }

    #[test]
    fn custom_limits_apply() {
        let limits = SessionLimits { max_sessions_per_owner: 2, ..SessionLimits::DEFAULT };
        let mut s: Table = SessionTable::new(limits);
        for id in 0..3 {
            s.register("a", id, id as u64).unwrap();
        }
        assert_eq!(s.count_of("a"), 2);
        assert!(s.get(0).is_none());
    }
}
