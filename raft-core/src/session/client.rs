//! The client side of sessions: numbering requests ([`ClientSession`]) and finding the leader
//! ([`LeaderTracker`], [`call`]).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use crate::error::{CommitError, ProposeError, WriteError};
use crate::membership::NodeInfo;
use crate::runtime::Runtime;
use crate::types::NodeId;

use super::{SessionId, SessionRef};

/// A client's session: its id, its incarnation once registered, the next sequence number and
/// the requests still waiting for an answer (the lowest of them is what every request
/// acknowledges below). Not thread-safe by itself: share it behind a mutex.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientSession {
    id: SessionId,
    incarnation: Option<u64>,
    next_seq: u64,
    outstanding: BTreeSet<u64>,
}

impl ClientSession {
    /// A session to register under `id`, which must be unguessable: 128 bits from the operating
    /// system's random source (for example `getrandom` or `ring::rand::SystemRandom`).
    pub fn new(id: SessionId) -> Self {
        Self { id, incarnation: None, next_seq: 0, outstanding: BTreeSet::new() }
    }

    /// The session id (what the registration command carries).
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// The incarnation the registration returned, once it did.
    pub fn incarnation(&self) -> Option<u64> {
        self.incarnation
    }

    /// Records the incarnation `SessionTable::register` returned for this session.
    pub fn opened(&mut self, incarnation: u64) {
        self.incarnation = Some(incarnation);
    }

    /// The reference for a new request: the next sequence number, acknowledging every answer
    /// received below the oldest request still outstanding. `None` until [`opened`]. Retry the
    /// request with the *same* reference until it is answered, then call [`finish`].
    ///
    /// [`opened`]: ClientSession::opened
    /// [`finish`]: ClientSession::finish
    pub fn begin(&mut self) -> Option<SessionRef> {
        let incarnation = self.incarnation?;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.outstanding.insert(seq);
        let ack_below = self.outstanding.first().copied().unwrap_or(seq);
        Some(SessionRef { id: self.id, incarnation, seq, ack_below })
    }

    /// The request `seq` got its answer (or the client gave up on it): later requests
    /// acknowledge it, so the table may forget its answer.
    pub fn finish(&mut self, seq: u64) {
        self.outstanding.remove(&seq);
    }
}

/// Where a client believes the leader is: the cluster's members with their [`NodeInfo`] (the
/// address a client dials), the leader if one is known, and a rotation through the members for
/// when none is.
#[derive(Clone, Debug, Default)]
pub struct LeaderTracker {
    members: BTreeMap<NodeId, NodeInfo>,
    leader: Option<NodeId>,
    /// The member to try next when no leader is known.
    cursor: usize,
}

impl LeaderTracker {
    /// A tracker over `members` (at least one: any member redirects to the leader).
    pub fn new(members: impl IntoIterator<Item = (NodeId, NodeInfo)>) -> Self {
        Self { members: members.into_iter().collect(), leader: None, cursor: 0 }
    }

    /// The known members.
    pub fn members(&self) -> &BTreeMap<NodeId, NodeInfo> {
        &self.members
    }

    /// The leader, if one is believed known.
    pub fn leader_id(&self) -> Option<NodeId> {
        self.leader
    }

    /// The node to send the next attempt to: the leader if known, else the next member in turn.
    pub fn target(&mut self) -> Option<(NodeId, NodeInfo)> {
        if let Some(leader) = self.leader {
            if let Some(info) = self.members.get(&leader) {
                return Some((leader, info.clone()));
            }
        }
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        let (&id, info) = self.members.iter().nth(self.cursor % n)?;
        self.cursor = (self.cursor + 1) % n;
        Some((id, info.clone()))
    }

    /// A node answered `NotLeader { leader_id, leader_info }`: remember the leader (and its
    /// metadata, learning a member the client did not know), or forget it if none is known.
    pub fn redirected(&mut self, leader_id: Option<NodeId>, leader_info: Option<NodeInfo>) {
        if let (Some(id), Some(info)) = (leader_id, leader_info) {
            if !info.address.is_empty() || !self.members.contains_key(&id) {
                self.members.insert(id, info);
            }
        }
        self.leader = leader_id.filter(|id| self.members.contains_key(id));
    }

    /// `node` answered a request only the leader answers: it leads.
    pub fn answered(&mut self, node: NodeId) {
        if self.members.contains_key(&node) {
            self.leader = Some(node);
        }
    }

    /// `node` could not be reached or could not serve: stop believing it leads.
    pub fn failed(&mut self, node: NodeId) {
        if self.leader == Some(node) {
            self.leader = None;
        }
    }
}

/// How [`call`] retries: at most `max_attempts` attempts, pausing `backoff_initial` (doubling
/// up to `backoff_max`) before an attempt that follows a failure; a redirect to a newly named
/// leader is followed at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// The most attempts in all (at least 1).
    pub max_attempts: u32,
    /// The first pause after a failed attempt.
    pub backoff_initial: Duration,
    /// The longest pause.
    pub backoff_max: Duration,
}

impl RetryPolicy {
    /// A policy with these values.
    pub const fn new(max_attempts: u32, backoff_initial: Duration, backoff_max: Duration) -> Self {
        Self { max_attempts, backoff_initial, backoff_max }
    }
}

impl Default for RetryPolicy {
    /// 50 attempts, pauses of 10 ms doubling to 500 ms: about 15 s before giving up, long enough
    /// for a few elections.
    fn default() -> Self {
        Self::new(50, Duration::from_millis(10), Duration::from_millis(500))
    }
}

/// What one attempt of [`call`] came to.
#[derive(Debug)]
pub enum Attempt<T, E> {
    /// The answer.
    Done(T),
    /// The node is not the leader; it named the one it knows of, if any.
    NotLeader {
        /// The leader the node knows of.
        leader_id: Option<NodeId>,
        /// That leader's metadata (its address), if the node knows it.
        leader_info: Option<NodeInfo>,
    },
    /// No answer (unreachable, shutting down, leadership lost, outcome unknown): try again,
    /// elsewhere if need be. Safe only for reads and for writes in a session.
    Retry {
        /// Why, for the error if every attempt fails.
        reason: String,
        /// Whether the request may have been applied (for the final error).
        maybe_applied: bool,
    },
    /// A final answer that retrying cannot change.
    Fail(E),
}

impl Attempt<bytes::Bytes, WriteError> {
    /// Classifies the result of an in-process `Node::write`: `NotLeader` redirects, every
    /// outcome that another attempt may fix is `Retry` (`LeadershipLost`, `Dropped`, a node
    /// shutting down), and the rest (`TooLarge`, `InsideStateMachine`) fails.
    pub fn from_write(result: Result<bytes::Bytes, WriteError>) -> Self {
        match result {
            Ok(answer) => Attempt::Done(answer),
            Err(WriteError::Refused(ProposeError::NotLeader { leader_id, leader_info })) => {
                Attempt::NotLeader { leader_id, leader_info }
            }
            Err(WriteError::Refused(ProposeError::Shutdown)) => {
                Attempt::Retry { reason: "node shut down".into(), maybe_applied: false }
            }
            Err(WriteError::Failed(e @ CommitError::Dropped { .. })) => {
                Attempt::Retry { reason: e.to_string(), maybe_applied: false }
            }
            Err(WriteError::Failed(e @ (CommitError::LeadershipLost | CommitError::Shutdown))) => {
                Attempt::Retry { reason: e.to_string(), maybe_applied: true }
            }
            Err(other) => Attempt::Fail(other),
        }
    }
}

/// Why [`call`] produced no answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError<E> {
    /// An attempt failed for good.
    #[error("{0}")]
    Failed(E),
    /// Every attempt failed; the last reason is given. If `maybe_applied`, some attempt may
    /// have been applied (retry in the same session to find out).
    #[error("gave up after {attempts} attempts (last: {reason})")]
    GaveUp {
        /// The attempts made.
        attempts: u32,
        /// Why the last one failed.
        reason: String,
        /// Whether any attempt may have been applied.
        maybe_applied: bool,
    },
    /// The tracker knows no member to send to.
    #[error("no cluster member is known")]
    NoMembers,
}

/// Runs `attempt` against the leader until it is answered: sends to `tracker`'s target (and
/// remembers the node that answers as the leader),
/// follows redirects at once, rotates to another member after a failure (with back-off), and
/// gives up after `policy.max_attempts`. `attempt(node, info)` performs one try on that node
/// (over the client's own transport, or `Node::write` in-process); for a write it must send the
/// same [`SessionRef`] every time, which makes the retries exactly-once.
pub async fn call<T, E, F, Fut>(
    tracker: &std::sync::Mutex<LeaderTracker>,
    runtime: &dyn Runtime,
    policy: RetryPolicy,
    mut attempt: F,
) -> Result<T, CallError<E>>
where
    F: FnMut(NodeId, NodeInfo) -> Fut,
    Fut: Future<Output = Attempt<T, E>>,
{
    let lock = || tracker.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut backoff = policy.backoff_initial;
    let mut reason = String::from("no attempt made");
    let mut maybe_applied = false;
    let mut pause = false;
    for attempts in 1..=policy.max_attempts.max(1) {
        if pause {
            runtime.sleep(backoff).await;
            backoff = (backoff * 2).min(policy.backoff_max);
        }
        let (node, info) = lock().target().ok_or(CallError::NoMembers)?;
        match attempt(node, info).await {
            Attempt::Done(answer) => {
                lock().answered(node);
                return Ok(answer);
            }
            Attempt::Fail(error) => return Err(CallError::Failed(error)),
            Attempt::NotLeader { leader_id, leader_info } => {
                let mut tracker = lock();
                tracker.redirected(leader_id, leader_info);
                // Straight to a newly named leader; pause if no leader is known (an election).
                pause = tracker.leader_id().is_none_or(|leader| leader == node);
                reason = format!("node {node} is not the leader");
            }
            Attempt::Retry { reason: why, maybe_applied: applied } => {
                lock().failed(node);
                maybe_applied |= applied;
                reason = format!("node {node}: {why}");
                pause = true;
            }
        }
        if attempts == policy.max_attempts.max(1) {
            return Err(CallError::GaveUp { attempts, reason, maybe_applied });
        }
    }
    Err(CallError::GaveUp { attempts: policy.max_attempts, reason, maybe_applied })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use std::sync::Mutex;

    use futures::future::BoxFuture;
    use futures::FutureExt;

    use super::*;

    /// Sleeps are instant; counts them.
    #[derive(Default)]
    struct Instant(std::sync::atomic::AtomicU32);

    impl Runtime for Instant {
        fn spawn(&self, future: BoxFuture<'static, ()>) {
            drop(future);
        }
        fn sleep(&self, _: Duration) -> BoxFuture<'static, ()> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async {}.boxed()
        }
        fn now(&self) -> Duration {
            Duration::ZERO
        }
    }

    fn node_info(address: &str) -> NodeInfo {
        NodeInfo::new(address.to_owned(), String::new())
    }

    #[test]
    fn requests_are_numbered_and_acknowledge_what_was_answered() {
        let mut session = ClientSession::new(5);
        assert_eq!(session.begin(), None, "not registered yet");
        session.opened(3);
        let a = session.begin().unwrap();
        let b = session.begin().unwrap();
        assert_eq!((a.id, a.incarnation, a.seq, a.ack_below), (5, 3, 0, 0));
        assert_eq!((b.seq, b.ack_below), (1, 0), "a is still outstanding");
        session.finish(a.seq);
        let c = session.begin().unwrap();
        assert_eq!((c.seq, c.ack_below), (2, 1));
        session.finish(b.seq);
        session.finish(c.seq);
        assert_eq!(session.begin().unwrap().ack_below, 3);
    }

    #[test]
    fn a_call_follows_redirects_and_retries_until_answered() {
        let tracker = Mutex::new(LeaderTracker::new([
            (1, node_info("a:1")),
            (2, node_info("b:2")),
            (3, node_info("c:3")),
        ]));
        let runtime = Instant::default();
        let mut tried = Vec::new();
        let result = futures::executor::block_on(call(
            &tracker,
            &runtime,
            RetryPolicy::default(),
            |node, info| {
                tried.push((node, info.address.clone()));
                let outcome: Attempt<&str, ()> = match (tried.len(), node) {
                    // The first node knows the leader is 3 (and a new address for it).
                    (1, _) => Attempt::NotLeader {
                        leader_id: Some(3),
                        leader_info: Some(node_info("c:33")),
                    },
                    // The leader loses leadership before answering: outcome unknown.
                    (2, 3) => Attempt::Retry { reason: "lost".into(), maybe_applied: true },
                    (_, 2) => Attempt::Done("ok"),
                    _ => Attempt::NotLeader { leader_id: Some(2), leader_info: None },
                };
                async move { outcome }
            },
        ));
        assert_eq!(result.unwrap(), "ok");
        assert_eq!(tried[0].0, 1);
        assert_eq!(
            tried[1],
            (3, bytes::Bytes::from("c:33")),
            "redirected at once, to the new address"
        );
        assert_eq!(tried.last().unwrap().0, 2);
        assert_eq!(tracker.lock().unwrap().leader_id(), Some(2));
        assert!(runtime.0.load(std::sync::atomic::Ordering::SeqCst) >= 1, "backed off once");
    }

    #[test]
    fn a_call_gives_up_after_its_attempts_and_says_whether_it_may_have_applied() {
        let tracker = Mutex::new(LeaderTracker::new([(1, node_info("a"))]));
        let runtime = Instant::default();
        let policy = RetryPolicy::new(4, Duration::from_millis(1), Duration::from_millis(2));
        let result: Result<(), CallError<()>> =
            futures::executor::block_on(call(&tracker, &runtime, policy, |_, _| async {
                Attempt::Retry { reason: "down".into(), maybe_applied: true }
            }));
        match result {
            Err(CallError::GaveUp { attempts: 4, maybe_applied: true, .. }) => {}
            other => panic!("{other:?}"),
        }
        let none = Mutex::new(LeaderTracker::default());
        let result: Result<(), CallError<()>> =
            futures::executor::block_on(call(&none, &runtime, policy, |_, _| async {
                Attempt::Done(())
            }));
        assert!(matches!(result, Err(CallError::NoMembers)));
    }

    #[test]
    fn write_errors_are_classified() {
        let not_leader =
            WriteError::Refused(ProposeError::NotLeader { leader_id: Some(2), leader_info: None });
        assert!(matches!(
            Attempt::from_write(Err(not_leader)),
            Attempt::NotLeader { leader_id: Some(2), .. }
        ));
        let lost = WriteError::Failed(CommitError::LeadershipLost);
        assert!(matches!(
            Attempt::from_write(Err(lost)),
            Attempt::Retry { maybe_applied: true, .. }
        ));
        let large = WriteError::Refused(ProposeError::TooLarge { size: 2, limit: 1 });
        assert!(matches!(Attempt::from_write(Err(large)), Attempt::Fail(_)));
    }
}
