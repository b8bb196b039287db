//! The Raft safety properties, checked from observations of a running cluster.
//!
//! The checker is pure: the simulation feeds it what it sees after every step (each node's
//! status, newly applied entries, changes to each node's durable log) and it reports the first
//! [`Violation`]. Its own tests feed it histories that break each property.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use raft_core::{
    Entry, EntryPayload, HardState, LogId, LogIndex, Membership, NodeId, Role, RpcRequest,
    RpcResponse, Status, Term,
};

/// A broken invariant, with what was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which property (Raft paper, Figure 3 names, plus the monotonicity checks).
    pub invariant: &'static str,
    /// What was observed.
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} violated: {}", self.invariant, self.detail)
    }
}

fn violation<T>(invariant: &'static str, detail: String) -> Result<T, Violation> {
    Err(Violation { invariant, detail })
}

/// One run of a node: a restart begins a new incarnation (volatile state starts over).
pub type Incarnation = (NodeId, u64);

#[derive(Debug, Default)]
struct IncarnationState {
    commit_index: LogIndex,
    applied_index: LogIndex,
    last_applied: Option<LogIndex>,
}

/// A change to a node's durable log since the previous observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChange {
    /// Lowest index written or removed.
    pub first_changed: LogIndex,
    /// Whether entries were removed (a truncation), not only appended.
    pub truncated: bool,
    /// The term of the entry before `first_changed` (0 if none).
    pub prev_term: Term,
    /// The log's entries from `first_changed` on, as they are now.
    pub entries: Vec<Entry>,
}

/// Checks Election Safety (per incarnation: a leadership that vanished in a crash before it
/// acted does not count), Leader Append-Only, Log Matching, Leader Completeness, State Machine
/// Safety, that commit indexes never decrease, that applies happen in order without gaps, that
/// consecutive committed memberships keep quorums intersecting (joint consensus), that each
/// node's durable term and vote never go back, and that a node votes for one candidate per
/// term.
#[derive(Debug, Default)]
pub struct InvariantChecker {
    /// Per term, the incarnations seen leading it and whether each acted as leader (sent a
    /// message of the term, or made the term durable).
    leader_incarnations: BTreeMap<Term, BTreeMap<Incarnation, bool>>,
    /// The incarnations that went down (crashed or shut down): their memory is gone.
    down: BTreeSet<Incarnation>,
    /// Per node, the durable hard state last observed.
    durable_hard_state: BTreeMap<NodeId, HardState>,
    /// Who each node voted for in each term (granted votes and its own candidacy).
    votes: BTreeMap<(NodeId, Term), NodeId>,
    incarnations: BTreeMap<Incarnation, IncarnationState>,
    /// The role and term last observed per node.
    last_status: BTreeMap<NodeId, (Role, Term)>,
    /// Every entry applied anywhere (hence committed), with the highest term seen when it was
    /// first observed committed.
    committed: BTreeMap<LogIndex, (Entry, Term)>,
    /// Log Matching facts: (index, term) -> (term of the previous entry, the entry).
    facts: HashMap<(LogIndex, Term), (Term, Entry)>,
    /// Terms whose leader's log has been checked for completeness.
    completeness_checked: BTreeMap<Term, NodeId>,
    /// Per node: the last entry purged from its durable log (covered by a snapshot).
    purged: BTreeMap<NodeId, LogId>,
    /// Per node: the last entry of its latest durable snapshot.
    durable_snapshot: BTreeMap<NodeId, LogId>,
    max_term: Term,
    steps: u64,
}

impl InvariantChecker {
    /// A checker with no observations.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many observations were checked.
    pub fn observations(&self) -> u64 {
        self.steps
    }

    /// Every entry known committed (applied by some node), by index.
    pub fn committed_entries(&self) -> impl DoubleEndedIterator<Item = &Entry> {
        self.committed.values().map(|(entry, _)| entry)
    }

    /// Observes a node's status. Checks Election Safety and that commit and applied indexes of
    /// one incarnation never decrease.
    pub fn observe_status(
        &mut self,
        incarnation: Incarnation,
        status: &Status,
    ) -> Result<(), Violation> {
        self.steps += 1;
        let node = incarnation.0;
        self.max_term = self.max_term.max(status.current_term);
        if status.role == Role::Leader {
            let claims = self.leader_incarnations.entry(status.current_term).or_default();
            if let std::collections::btree_map::Entry::Vacant(claim) = claims.entry(incarnation) {
                claim.insert(false);
                self.check_leaders(status.current_term, incarnation)?;
            }
        }
        self.last_status.insert(node, (status.role, status.current_term));
        if !self.incarnations.contains_key(&incarnation) {
            // A (re)started node resumes from its latest durable snapshot, never before it.
            let floor = self.durable_snapshot.get(&node).map_or(0, |id| id.index);
            if status.applied_index < floor {
                return violation(
                    "restarts never go back before the durable snapshot",
                    format!(
                        "node {node} started with applied index {} below its snapshot at {floor}",
                        status.applied_index
                    ),
                );
            }
        }
        let state = self.incarnations.entry(incarnation).or_default();
        if status.commit_index < state.commit_index {
            return violation(
                "commit index never decreases",
                format!(
                    "node {node}: commit index {} after {}",
                    status.commit_index, state.commit_index
                ),
            );
        }
        if status.applied_index < state.applied_index {
            return violation(
                "applied index never decreases",
                format!(
                    "node {node}: applied index {} after {}",
                    status.applied_index, state.applied_index
                ),
            );
        }
        state.commit_index = status.commit_index;
        state.applied_index = status.applied_index;
        Ok(())
    }

    /// `incarnation` acted as the leader of `term`: a message of that term left it, or it made
    /// the term durable. Another incarnation leading that term too, of the same node or not, is
    /// a violation of Election Safety (the first one could have been followed; the second one
    /// may build a different log in the same term).
    pub fn observe_leader_acted(
        &mut self,
        incarnation: Incarnation,
        term: Term,
    ) -> Result<(), Violation> {
        let claims = self.leader_incarnations.entry(term).or_default();
        if claims.insert(incarnation, true) != Some(true) {
            self.check_leaders(term, incarnation)?;
        }
        Ok(())
    }

    /// Election Safety, per incarnation: `newest` and any other incarnation that led `term` are
    /// two leaders of it, unless the other one went down without ever acting as its leader. A
    /// node can win alone (a lone voter) before its new term is durable, and a crash then
    /// erases that leadership and the vote behind it: no one could have seen or followed it.
    fn check_leaders(&self, term: Term, newest: Incarnation) -> Result<(), Violation> {
        let Some(claims) = self.leader_incarnations.get(&term) else { return Ok(()) };
        // A node runs one incarnation at a time: a later one means the earlier ones are down.
        let down = |inc: &Incarnation| {
            self.down.contains(inc)
                || (inc.0 == newest.0 && inc.1 < newest.1)
                || self.incarnations.keys().any(|k| k.0 == inc.0 && k.1 > inc.1)
        };
        let other = claims.iter().find(|&(&inc, &acted)| inc != newest && (acted || !down(&inc)));
        let Some((&other, &acted)) = other else { return Ok(()) };
        let (first, second) = if other < newest { (other, newest) } else { (newest, other) };
        let detail = if first.0 == second.0 {
            format!(
                "node {} led term {term} in incarnation {} (and acted as its leader), then again in incarnation {}",
                first.0, first.1, second.1
            )
        } else {
            let how = if acted { "acted as its leader" } else { "is still up" };
            format!(
                "nodes {} and {} both leader in term {term} (node {} {how})",
                other.0, newest.0, other.0
            )
        };
        violation("Election Safety", detail)
    }

    /// Observes node `node`'s durable hard state. Checks that the durable term never decreases
    /// and that, within one term, a durable vote is never changed or withdrawn, across
    /// incarnations (a restart with an older disk breaks it).
    pub fn observe_durable_hard_state(
        &mut self,
        node: NodeId,
        hard_state: HardState,
    ) -> Result<(), Violation> {
        let before = self.durable_hard_state.insert(node, hard_state);
        let Some(before) = before.filter(|b| *b != hard_state) else { return Ok(()) };
        self.steps += 1;
        let back = hard_state.current_term < before.current_term
            || (hard_state.current_term == before.current_term
                && before.voted_for.is_some()
                && hard_state.voted_for != before.voted_for);
        if back {
            return violation(
                "durable term and vote never go back",
                format!("node {node}: durable {hard_state:?} after {before:?}"),
            );
        }
        if let Some(candidate) = hard_state.voted_for {
            self.observe_vote(node, hard_state.current_term, candidate)?;
        }
        Ok(())
    }

    /// Node `node` stopped (crashed or shut down): whatever it does to its disk from now on
    /// (a restart that resets its log to its snapshot) is not done as a leader.
    pub fn observe_down(&mut self, node: NodeId) {
        self.last_status.remove(&node);
        let latest = self.incarnations.keys().filter(|inc| inc.0 == node).max().copied();
        self.down.extend(latest);
    }

    /// Node `node` comes back on an empty disk as a new member (its id was removed from the
    /// cluster): its earlier durable state and votes no longer bind it.
    pub fn forget_disk(&mut self, node: NodeId) {
        self.last_status.remove(&node);
        self.durable_hard_state.remove(&node);
        self.votes.retain(|&(voter, _), _| voter != node);
        self.purged.remove(&node);
        self.durable_snapshot.remove(&node);
    }

    /// `node` voted for `candidate` in `term` (granted a vote, asked for votes as a candidate, or
    /// made the vote durable). Checks one vote per node and term, across incarnations.
    pub fn observe_vote(
        &mut self,
        node: NodeId,
        term: Term,
        candidate: NodeId,
    ) -> Result<(), Violation> {
        let earlier = *self.votes.entry((node, term)).or_insert(candidate);
        if earlier != candidate {
            return violation(
                "one vote per term",
                format!("node {node} voted for {earlier} and for {candidate} in term {term}"),
            );
        }
        Ok(())
    }

    /// Observes entries a node's state machine just applied. Checks that applies are in order
    /// without gaps and State Machine Safety (no two nodes apply different entries at an index).
    pub fn observe_applied(
        &mut self,
        incarnation: Incarnation,
        entries: &[Entry],
    ) -> Result<(), Violation> {
        self.steps += 1;
        let node = incarnation.0;
        let max_term = self.max_term;
        let state = self.incarnations.entry(incarnation).or_default();
        for entry in entries {
            let expected = state.last_applied.map_or(1, |last| last + 1);
            if entry.index != expected {
                return violation(
                    "applies in order without gaps",
                    format!("node {node} applied index {} where {expected} was next", entry.index),
                );
            }
            state.last_applied = Some(entry.index);
            record_committed(&mut self.committed, node, entry, max_term)?;
            check_membership_step(&self.committed, entry)?;
        }
        Ok(())
    }

    /// Observes that a node's state machine was restored from a snapshot whose last entry is
    /// `last_included` and whose state reflects `contents` (the entries it holds, when the state
    /// machine can tell; may be empty). Checks that `last_included` is the committed entry at
    /// its index, State Machine Safety for `contents`, and that the incarnation's applies never
    /// go back; the next apply expected is `last_included.index + 1`.
    pub fn observe_snapshot(
        &mut self,
        incarnation: Incarnation,
        last_included: LogId,
        contents: &[Entry],
    ) -> Result<(), Violation> {
        self.steps += 1;
        let node = incarnation.0;
        self.check_committed_id(node, last_included)?;
        for entry in contents {
            record_committed(&mut self.committed, node, entry, self.max_term)?;
            check_membership_step(&self.committed, entry)?;
        }
        let state = self.incarnations.entry(incarnation).or_default();
        if let Some(last) = state.last_applied.filter(|&last| last > last_included.index) {
            return violation(
                "applied index never decreases",
                format!(
                    "node {node} restored a snapshot at {:?} after applying {last}",
                    last_included
                ),
            );
        }
        state.last_applied = Some(last_included.index);
        Ok(())
    }

    /// Observes node `node`'s latest durable snapshot. Checks that it never goes backwards and
    /// that its last entry is committed (when that index is known committed). Restarts are then
    /// checked to resume at or after it.
    pub fn observe_durable_snapshot(
        &mut self,
        node: NodeId,
        last_included: LogId,
    ) -> Result<(), Violation> {
        if self.durable_snapshot.get(&node) == Some(&last_included) {
            return Ok(());
        }
        self.steps += 1;
        if let Some(before) = self.durable_snapshot.get(&node) {
            if before.index > last_included.index {
                return violation(
                    "durable snapshots never go backwards",
                    format!("node {node}: snapshot at {last_included:?} after one at {before:?}"),
                );
            }
        }
        self.check_committed_id(node, last_included)?;
        self.durable_snapshot.insert(node, last_included);
        Ok(())
    }

    /// Observes the last entry purged from node `node`'s durable log (log compaction). Entries
    /// at or below it are covered by a snapshot: Leader Completeness looks only above it, and
    /// the purged entry itself must be the committed one.
    pub fn observe_purged(&mut self, node: NodeId, purged: LogId) -> Result<(), Violation> {
        if self.purged.get(&node) == Some(&purged) {
            return Ok(());
        }
        self.steps += 1;
        self.check_committed_id(node, purged)?;
        self.purged.insert(node, purged);
        Ok(())
    }

    /// Checks that `id` (covered by a snapshot or a compaction) is the committed entry at its
    /// index, if that index is known committed.
    fn check_committed_id(&self, node: NodeId, id: LogId) -> Result<(), Violation> {
        match self.committed.get(&id.index) {
            Some((known, _)) if id.index > 0 && known.log_id() != id => violation(
                "State Machine Safety",
                format!(
                    "node {node} holds a snapshot up to {id:?} where {:?} was committed",
                    known.log_id()
                ),
            ),
            _ => Ok(()),
        }
    }

    /// Observes a change to node `node`'s durable log. Checks Log Matching (inductively: every
    /// `(index, term)` has one predecessor term and one payload cluster-wide), Leader Append-Only
    /// (a node that stays leader never truncates), and Leader Completeness (once a leader's
    /// first entry of its term is durable, its log holds every entry committed before its term).
    /// `full_log` gives the node's whole log, called only when completeness must be checked.
    pub fn observe_log(
        &mut self,
        node: NodeId,
        change: &LogChange,
        full_log: impl FnOnce() -> Vec<Entry>,
    ) -> Result<(), Violation> {
        self.steps += 1;
        let leading = match self.last_status.get(&node) {
            Some((Role::Leader, term)) => Some(*term),
            _ => None,
        };
        if let (true, Some(term)) = (change.truncated, leading) {
            return violation(
                "Leader Append-Only",
                format!(
                    "leader {node} of term {term} removed entries from index {}",
                    change.first_changed
                ),
            );
        }
        let mut prev_term = change.prev_term;
        for entry in &change.entries {
            let fact = self
                .facts
                .entry((entry.index, entry.term))
                .or_insert_with(|| (prev_term, entry.clone()));
            if fact.0 != prev_term || fact.1 != *entry {
                return violation(
                    "Log Matching",
                    format!(
                        "node {node} holds {:?} after term {prev_term}; another log holds it after term {} with {}",
                        entry.log_id(),
                        fact.0,
                        if fact.1 == *entry { "the same payload" } else { "another payload" }
                    ),
                );
            }
            prev_term = entry.term;
        }
        let Some(term) = leading else { return Ok(()) };
        if !change.entries.iter().any(|e| e.term == term) {
            return Ok(());
        }
        if self.completeness_checked.insert(term, node).is_some() {
            return Ok(());
        }
        let log: BTreeMap<LogIndex, LogId> =
            full_log().iter().map(|e| (e.index, e.log_id())).collect();
        // Every entry committed before this term began must be in the log (at an index below
        // the leader's first entry of its term, since that one follows its whole log), or be
        // covered by the leader's snapshot (at or below its purged entry, checked on purge).
        let purged = self.purged.get(&node).map_or(0, |id| id.index);
        for (index, (entry, seen_in_term)) in self.committed.range(purged + 1..) {
            if *seen_in_term < term && log.get(index) != Some(&entry.log_id()) {
                return violation(
                    "Leader Completeness",
                    format!(
                        "leader {node} of term {term} lacks committed entry {:?} (holds {:?})",
                        entry.log_id(),
                        log.get(index)
                    ),
                );
            }
        }
        Ok(())
    }
}

/// If `entry` (just recorded committed) is a membership, checks it against the previous
/// committed membership: every quorum of one must intersect every quorum of the other, or two
/// leaders could be elected (and two entries committed) with disjoint quorums. Joint consensus
/// gets there through `C -> (C, N) -> N`, each step sharing a voter set; a direct change of one
/// voter (the single-server rule) passes too, anything else fails. Every committed entry before
/// it is known by then: the first node to apply an entry applied (or restored) everything
/// before it.
fn check_membership_step(
    committed: &BTreeMap<LogIndex, (Entry, Term)>,
    entry: &Entry,
) -> Result<(), Violation> {
    let EntryPayload::Membership(next) = &entry.payload else { return Ok(()) };
    let previous = committed.range(..entry.index).rev().find_map(|(_, (e, _))| match &e.payload {
        EntryPayload::Membership(m) => Some((e.index, m)),
        _ => None,
    });
    let Some((at, previous)) = previous else { return Ok(()) };
    if !quorums_intersect(previous, next) {
        return violation(
            "membership changes keep quorums intersecting",
            format!(
                "voters {:?} (outgoing {:?}) at {at} then {:?} (outgoing {:?}) at {}: two quorums of these can be disjoint",
                previous.voters(),
                previous.outgoing_voters(),
                next.voters(),
                next.outgoing_voters(),
                entry.index
            ),
        );
    }
    Ok(())
}

/// Whether every quorum of `a` intersects every quorum of `b` (a quorum is a majority of each
/// voter set). Sufficient: some voter set of `a` and some of `b` whose majorities cannot be
/// disjoint, that is whose majority sizes add up to more than the two sets hold together.
fn quorums_intersect(a: &Membership, b: &Membership) -> bool {
    let majority = |set: &BTreeSet<NodeId>| set.len() / 2 + 1;
    let (a, b) = (voter_sets(a), voter_sets(b));
    a.iter().any(|x| b.iter().any(|y| majority(x) + majority(y) > x.union(y).count()))
}

/// The voter sets of `membership`: one, or two during a joint change. The oracles count
/// quorums with this, not with the engine's own quorum rule, which they check.
pub(super) fn voter_sets(membership: &Membership) -> Vec<BTreeSet<NodeId>> {
    let mut sets = vec![membership.voters().clone()];
    if membership.is_joint() {
        sets.push(membership.outgoing_voters().clone());
    }
    sets
}

/// Whether the voters for which `yes` holds are a majority of every voter set of `membership`.
pub(super) fn is_quorum(membership: &Membership, yes: impl Fn(NodeId) -> bool) -> bool {
    voter_sets(membership)
        .iter()
        .all(|set| set.iter().filter(|&&id| yes(id)).count() * 2 > set.len())
}

/// Records `entry` as committed (applied or in a snapshot by `node`), checking State Machine
/// Safety against what was committed at its index before.
fn record_committed(
    committed: &mut BTreeMap<LogIndex, (Entry, Term)>,
    node: NodeId,
    entry: &Entry,
    max_term: Term,
) -> Result<(), Violation> {
    match committed.get(&entry.index) {
        Some((known, _)) if known != entry => violation(
            "State Machine Safety",
            format!(
                "node {node} applied {:?} at index {} where {:?} was applied elsewhere",
                entry.log_id(),
                entry.index,
                known.log_id()
            ),
        ),
        Some(_) => Ok(()),
        None => {
            committed.insert(entry.index, (entry.clone(), max_term.max(entry.term)));
            Ok(())
        }
    }
}

/// A node's durable state as the message-boundary checks see it.
pub trait DurableView {
    /// The durable term and vote.
    fn hard_state(&self) -> HardState;
    /// Whether entry `id` is durable (in the log, or covered by a snapshot or the compacted
    /// prefix), or was at some moment since step `since`.
    fn covers(&self, id: LogId, since: u64) -> bool;
    /// The term of the durable log entry at `index`, if the log holds one.
    fn term_at(&self, index: LogIndex) -> Option<Term>;
    /// The highest durable term under which a write that truncated the log at or below
    /// `index` landed at or after step `since`, if any (a newer leader overwriting entries).
    fn overwritten_since(&self, index: LogIndex, since: u64) -> Option<Term>;
    /// If the durable log holds another entry than `id` at `id.index`, and a write that landed
    /// at or after step `since` wrote that index: the highest durable term under which such a
    /// write landed (a newer leader's entry, written with no truncation landing because group
    /// commit merged it with the write of the entries it replaced).
    fn replaced_since(&self, id: LogId, since: u64) -> Option<Term>;
}

fn not_durable<T>(node: NodeId, what: String, durable: HardState) -> Result<T, Violation> {
    violation(
        "durability at the message boundary",
        format!(
            "node {node} sent {what} while its durable term was {} (vote {:?})",
            durable.current_term, durable.voted_for
        ),
    )
}

/// Whether the durable state has moved past `term`, or is in `term` with a vote for `candidate`.
fn vote_durable(durable: HardState, term: Term, candidate: NodeId) -> bool {
    durable.current_term > term
        || (durable.current_term == term && durable.voted_for == Some(candidate))
}

/// Checks that a request leaving `from` is covered by `from`'s durable state: a RequestVote's
/// term and the candidate's own vote, the term of an AppendEntries, InstallSnapshot or
/// TimeoutNow. PreVote and ReadIndex are exempt (they promise nothing). Returns the vote the
/// request casts, if any (a candidate votes for itself).
pub fn check_request(
    from: NodeId,
    request: &RpcRequest,
    durable: &impl DurableView,
) -> Result<Option<(Term, NodeId)>, Violation> {
    let hard_state = durable.hard_state();
    match request {
        RpcRequest::RequestVote(r) if r.pre_vote => Ok(None),
        RpcRequest::ReadIndex(_) => Ok(None),
        RpcRequest::RequestVote(r) => {
            if !vote_durable(hard_state, r.term, from) {
                return not_durable(from, format!("RequestVote of term {}", r.term), hard_state);
            }
            Ok(Some((r.term, from)))
        }
        other => {
            if hard_state.current_term < other.term() {
                let what = format!("{} of term {}", other.kind(), other.term());
                return not_durable(from, what, hard_state);
            }
            Ok(None)
        }
    }
}

/// Checks that a response leaving `responder` (to `request`, delivered at step `delivered`) is
/// covered by its durable state: its term; a granted vote; for a successful AppendEntries, every
/// entry it acknowledges (durable at some moment since the request arrived, or overwritten on
/// its disk by a newer leader's write that group commit merged with it: an entry of a newer
/// term in its place, a truncation that landed under a newer term since the request arrived,
/// or another entry at an acknowledged index at or below it that a write under a newer term
/// put there since the request arrived; no majority of the older term can then commit it);
/// for a completed InstallSnapshot, the snapshot's last entry. PreVote and ReadIndex answers are exempt.
/// Returns the vote the response grants, if any.
pub fn check_response(
    responder: NodeId,
    request: &RpcRequest,
    response: &RpcResponse,
    delivered: u64,
    durable: &impl DurableView,
) -> Result<Option<(Term, NodeId)>, Violation> {
    let hard_state = durable.hard_state();
    let exempt = matches!(response, RpcResponse::ReadIndex(_))
        || matches!(response, RpcResponse::RequestVote(r) if r.pre_vote);
    if exempt {
        return Ok(None);
    }
    let kind = request.kind();
    if hard_state.current_term < response.term() {
        return not_durable(
            responder,
            format!("an answer of term {} to {kind}", response.term()),
            hard_state,
        );
    }
    match (request, response) {
        (RpcRequest::RequestVote(req), RpcResponse::RequestVote(resp)) if resp.vote_granted => {
            if !vote_durable(hard_state, req.term, req.candidate_id) {
                let what = format!("a vote for {} in term {}", req.candidate_id, req.term);
                return not_durable(responder, what, hard_state);
            }
            Ok(Some((req.term, req.candidate_id)))
        }
        (RpcRequest::AppendEntries(req), RpcResponse::AppendEntries(resp)) => {
            let Some(matched) = resp.match_index else { return Ok(None) };
            let prev = std::iter::once(req.prev_log_id).filter(|p| p.index > 0);
            let acknowledged: Vec<LogId> = prev
                .chain(req.entries.iter().map(Entry::log_id))
                .filter(|id| id.index <= matched)
                .collect();
            let newer = |term: Option<Term>| term.is_some_and(|t| t > resp.term);
            // The first acknowledged index at which a write under a newer term put another
            // entry since the request arrived: by Log Matching, every acknowledged entry from
            // there on was replaced, even if no truncation of them ever landed (group commit
            // merged the newer leader's write with theirs: seed 11000998).
            let replaced_from = acknowledged
                .iter()
                .find(|&&id| newer(durable.replaced_since(id, delivered)))
                .map_or(LogIndex::MAX, |id| id.index);
            for &id in &acknowledged {
                // The newer leader's entry in its place may carry an older term (it was
                // appended before the acknowledged one): the truncation's term tells.
                let superseded = newer(durable.term_at(id.index))
                    || newer(durable.overwritten_since(id.index, delivered))
                    || id.index >= replaced_from;
                if !durable.covers(id, delivered) && !superseded {
                    return violation(
                        "durability at the message boundary",
                        format!(
                            "node {responder} acknowledged entries up to {matched} (term {}) but does not hold {id:?} durably",
                            req.term
                        ),
                    );
                }
            }
            Ok(None)
        }
        (RpcRequest::InstallSnapshot(req), RpcResponse::InstallSnapshot(resp)) if resp.complete => {
            let last = req.meta.last_included;
            if !durable.covers(last, delivered) {
                return violation(
                    "durability at the message boundary",
                    format!(
                        "node {responder} answered that it holds snapshot {last:?} without holding it durably"
                    ),
                );
            }
            Ok(None)
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use raft_core::{Bytes, EntryPayload};

    fn status(id: NodeId, role: Role, term: Term, commit: LogIndex, applied: LogIndex) -> Status {
        Status {
            id,
            role,
            current_term: term,
            leader_id: None,
            commit_index: commit,
            applied_index: applied,
            last_log_index: commit,
            quiesced: false,
        }
    }

    fn entry(index: LogIndex, term: Term, data: &'static str) -> Entry {
        Entry { index, term, payload: EntryPayload::Command(Bytes::from_static(data.as_bytes())) }
    }

    fn change(first: LogIndex, prev_term: Term, truncated: bool, entries: Vec<Entry>) -> LogChange {
        LogChange { first_changed: first, truncated, prev_term, entries }
    }

    #[test]
    fn accepts_a_healthy_history() {
        let mut c = InvariantChecker::new();
        c.observe_status((1, 1), &status(1, Role::Leader, 1, 0, 0)).unwrap();
        c.observe_log(1, &change(1, 0, false, vec![entry(1, 1, "a"), entry(2, 1, "b")]), Vec::new)
            .unwrap();
        c.observe_log(2, &change(1, 0, false, vec![entry(1, 1, "a")]), Vec::new).unwrap();
        c.observe_applied((1, 1), &[entry(1, 1, "a"), entry(2, 1, "b")]).unwrap();
        c.observe_applied((2, 1), &[entry(1, 1, "a")]).unwrap();
        c.observe_status((1, 1), &status(1, Role::Leader, 1, 2, 2)).unwrap();
        c.observe_status((2, 1), &status(2, Role::Leader, 2, 2, 1)).unwrap();
        c.observe_log(2, &change(2, 1, false, vec![entry(2, 1, "b"), entry(3, 2, "c")]), || {
            vec![entry(1, 1, "a"), entry(2, 1, "b"), entry(3, 2, "c")]
        })
        .unwrap();
    }

    #[test]
    fn detects_two_leaders_in_one_term() {
        let mut c = InvariantChecker::new();
        c.observe_status((1, 1), &status(1, Role::Leader, 3, 0, 0)).unwrap();
        let v = c.observe_status((2, 1), &status(2, Role::Leader, 3, 0, 0)).unwrap_err();
        assert_eq!(v.invariant, "Election Safety");
    }

    #[test]
    fn detects_a_decreasing_commit_index() {
        let mut c = InvariantChecker::new();
        c.observe_status((1, 1), &status(1, Role::Follower, 1, 5, 0)).unwrap();
        let v = c.observe_status((1, 1), &status(1, Role::Follower, 1, 4, 0)).unwrap_err();
        assert_eq!(v.invariant, "commit index never decreases");
        // A new incarnation starts over: not a violation.
        c.observe_status((1, 2), &status(1, Role::Follower, 1, 0, 0)).unwrap();
    }

    #[test]
    fn detects_gaps_and_reorders_in_applies() {
        let mut c = InvariantChecker::new();
        c.observe_applied((1, 1), &[entry(1, 1, "a")]).unwrap();
        let v = c.observe_applied((1, 1), &[entry(3, 1, "c")]).unwrap_err();
        assert_eq!(v.invariant, "applies in order without gaps");
    }

    #[test]
    fn detects_different_entries_applied_at_one_index() {
        let mut c = InvariantChecker::new();
        c.observe_applied((1, 1), &[entry(1, 1, "a")]).unwrap();
        let v = c.observe_applied((2, 1), &[entry(1, 2, "x")]).unwrap_err();
        assert_eq!(v.invariant, "State Machine Safety");
    }

    #[test]
    fn detects_log_matching_violations() {
        let mut c = InvariantChecker::new();
        c.observe_log(1, &change(1, 0, false, vec![entry(1, 1, "a"), entry(2, 2, "b")]), Vec::new)
            .unwrap();
        // Same (index, term) at 2 but a different predecessor term.
        let v = c
            .observe_log(
                2,
                &change(1, 0, false, vec![entry(1, 2, "z"), entry(2, 2, "b")]),
                Vec::new,
            )
            .unwrap_err();
        assert_eq!(v.invariant, "Log Matching");
        // Same (index, term) but a different payload.
        let v = c
            .observe_log(3, &change(1, 0, false, vec![entry(1, 1, "other")]), Vec::new)
            .unwrap_err();
        assert_eq!(v.invariant, "Log Matching");
    }

    #[test]
    fn detects_a_leader_truncating_its_log() {
        let mut c = InvariantChecker::new();
        c.observe_status((1, 1), &status(1, Role::Leader, 2, 0, 0)).unwrap();
        let v = c.observe_log(1, &change(3, 1, true, vec![]), Vec::new).unwrap_err();
        assert_eq!(v.invariant, "Leader Append-Only");
        // Once it is down, a reset of its log (at a restart) is not a leader's doing.
        c.observe_down(1);
        c.observe_log(1, &change(1, 0, true, vec![]), Vec::new).unwrap();
    }

    #[test]
    fn detects_a_membership_change_of_two_voters_at_once() {
        let membership = |index: LogIndex, voters: &[NodeId]| Entry {
            index,
            term: 1,
            payload: EntryPayload::Membership(Membership::with_voters(voters.iter().copied())),
        };
        let mut c = InvariantChecker::new();
        let ok =
            [membership(1, &[1, 2, 3]), membership(2, &[1, 2, 3, 4]), membership(3, &[2, 3, 4])];
        c.observe_applied((1, 1), &ok).unwrap();
        let err = c.observe_applied((1, 1), &[membership(4, &[2, 5])]).unwrap_err();
        assert_eq!(err.invariant, "membership changes keep quorums intersecting");
    }

    #[test]
    fn joint_changes_pass_through_a_joint_membership_only() {
        let single = |voters: &[NodeId]| Membership::with_voters(voters.iter().copied());
        let joint = |old: &[NodeId], new: &[NodeId]| {
            let set = |ids: &[NodeId]| ids.iter().copied().collect::<BTreeSet<NodeId>>();
            let nodes = set(old).union(&set(new)).map(|&id| (id, Default::default())).collect();
            Membership::from_parts(set(new), set(old), BTreeSet::new(), nodes).unwrap()
        };
        let entry = |index: LogIndex, m: Membership| Entry {
            index,
            term: 1,
            payload: EntryPayload::Membership(m),
        };
        // The whole set swapped, grown by two, shrunk by two: each through a joint membership.
        let mut c = InvariantChecker::new();
        let steps = [
            entry(1, single(&[1, 2, 3])),
            entry(2, joint(&[1, 2, 3], &[4, 5, 6])),
            entry(3, single(&[4, 5, 6])),
            entry(4, joint(&[4, 5, 6], &[4, 5, 6, 7, 8])),
            entry(5, single(&[4, 5, 6, 7, 8])),
            entry(6, joint(&[4, 5, 6, 7, 8], &[6, 7, 8])),
            entry(7, single(&[6, 7, 8])),
        ];
        c.observe_applied((1, 1), &steps).unwrap();
        // Straight from three voters to three others, or from a joint membership to another one.
        let err = c.observe_applied((1, 1), &[entry(8, single(&[1, 2, 9]))]).unwrap_err();
        assert_eq!(err.invariant, "membership changes keep quorums intersecting");
        let mut c = InvariantChecker::new();
        c.observe_applied((1, 1), &[entry(1, joint(&[1, 2, 3], &[4, 5, 6]))]).unwrap();
        let err =
            c.observe_applied((1, 1), &[entry(2, joint(&[7, 8, 9], &[4, 5, 10]))]).unwrap_err();
        assert_eq!(err.invariant, "membership changes keep quorums intersecting");
    }

    #[test]
    fn detects_a_leader_missing_a_committed_entry() {
        let mut c = InvariantChecker::new();
        c.observe_status((1, 1), &status(1, Role::Leader, 1, 1, 1)).unwrap();
        c.observe_applied((1, 1), &[entry(1, 1, "a")]).unwrap();
        c.observe_status((2, 1), &status(2, Role::Leader, 2, 0, 0)).unwrap();
        // Node 2 leads term 2 with a log that lacks entry 1 of term 1.
        let v = c
            .observe_log(2, &change(1, 0, false, vec![entry(1, 2, "blank")]), || {
                vec![entry(1, 2, "blank")]
            })
            .unwrap_err();
        assert_eq!(v.invariant, "Leader Completeness");
    }

    #[test]
    fn snapshots_move_the_next_apply_and_are_checked() {
        let mut c = InvariantChecker::new();
        c.observe_applied((1, 1), &[entry(1, 1, "a"), entry(2, 1, "b"), entry(3, 1, "c")]).unwrap();
        // Node 2 installs a snapshot up to 2: its next apply is 3.
        c.observe_snapshot((2, 1), LogId::new(1, 2), &[entry(1, 1, "a"), entry(2, 1, "b")])
            .unwrap();
        let v = c.observe_applied((2, 1), &[entry(2, 1, "b")]).unwrap_err();
        assert_eq!(v.invariant, "applies in order without gaps", "never applied twice");
        c.observe_snapshot((3, 1), LogId::new(1, 2), &[]).unwrap();
        c.observe_applied((3, 1), &[entry(3, 1, "c")]).unwrap();
        // A snapshot whose last entry is not the committed one.
        let v = c.observe_snapshot((4, 1), LogId::new(2, 3), &[]).unwrap_err();
        assert_eq!(v.invariant, "State Machine Safety");
        // Contents that disagree with what was applied elsewhere.
        let v = c.observe_snapshot((5, 1), LogId::new(1, 1), &[entry(1, 1, "x")]).unwrap_err();
        assert_eq!(v.invariant, "State Machine Safety");
        // A restore behind what the incarnation already applied.
        let v = c.observe_snapshot((1, 1), LogId::new(1, 2), &[]).unwrap_err();
        assert_eq!(v.invariant, "applied index never decreases");
    }

    #[test]
    fn restarts_resume_at_the_durable_snapshot() {
        let mut c = InvariantChecker::new();
        c.observe_applied((1, 1), &[entry(1, 1, "a"), entry(2, 1, "b")]).unwrap();
        c.observe_durable_snapshot(1, LogId::new(1, 2)).unwrap();
        c.observe_status((1, 2), &status(1, Role::Follower, 1, 2, 2)).unwrap();
        let v = c.observe_status((1, 3), &status(1, Role::Follower, 1, 0, 0)).unwrap_err();
        assert_eq!(v.invariant, "restarts never go back before the durable snapshot");
        let v = c.observe_durable_snapshot(1, LogId::new(1, 1)).unwrap_err();
        assert_eq!(v.invariant, "durable snapshots never go backwards");
        let v = c.observe_durable_snapshot(2, LogId::new(3, 2)).unwrap_err();
        assert_eq!(v.invariant, "State Machine Safety");
    }

    #[test]
    fn purges_are_not_truncations_and_limit_completeness() {
        let mut c = InvariantChecker::new();
        c.observe_status((1, 1), &status(1, Role::Leader, 1, 0, 0)).unwrap();
        c.observe_log(1, &change(1, 0, false, vec![entry(1, 1, "a"), entry(2, 1, "b")]), Vec::new)
            .unwrap();
        c.observe_applied((1, 1), &[entry(1, 1, "a"), entry(2, 1, "b")]).unwrap();
        // The leader compacts up to 2 and keeps appending: no Leader Append-Only violation.
        c.observe_purged(1, LogId::new(1, 2)).unwrap();
        c.observe_log(1, &change(3, 1, false, vec![entry(3, 1, "c")]), Vec::new).unwrap();
        // A new leader whose log was compacted up to 1 (covered by its snapshot) is complete if
        // it holds entry 2.
        c.observe_purged(2, LogId::new(1, 1)).unwrap();
        c.observe_status((2, 1), &status(2, Role::Leader, 2, 0, 0)).unwrap();
        c.observe_log(2, &change(3, 1, false, vec![entry(3, 2, "blank")]), || {
            vec![entry(2, 1, "b"), entry(3, 2, "blank")]
        })
        .unwrap();
        // A purge point that is not the committed entry.
        let v = c.observe_purged(3, LogId::new(2, 2)).unwrap_err();
        assert_eq!(v.invariant, "State Machine Safety");
    }
    #[test]
    fn detects_one_node_leading_a_term_twice_across_a_restart() {
        let mut c = InvariantChecker::new();
        // Incarnation 1 leads term 6 without acting (nothing sent, term not durable): a
        // restart may lead term 6 again.
        c.observe_status((1, 1), &status(1, Role::Leader, 6, 0, 0)).unwrap();
        c.observe_status((1, 2), &status(1, Role::Leader, 6, 0, 0)).unwrap();
        // Incarnation 2 acts as the leader of term 6; incarnation 3 leading it is a violation.
        c.observe_leader_acted((1, 2), 6).unwrap();
        let v = c.observe_status((1, 3), &status(1, Role::Leader, 6, 0, 0)).unwrap_err();
        assert_eq!(v.invariant, "Election Safety");
        // The same when the acting is reported after the second claim.
        let mut c = InvariantChecker::new();
        c.observe_status((2, 1), &status(2, Role::Leader, 3, 0, 0)).unwrap();
        c.observe_status((2, 2), &status(2, Role::Leader, 3, 0, 0)).unwrap();
        let v = c.observe_leader_acted((2, 1), 3).unwrap_err();
        assert_eq!(v.invariant, "Election Safety");
    }

    #[test]
    fn two_nodes_leading_one_term_unless_the_first_vanished_unseen() {
        // Node 5, a lone voter, wins term 2 and crashes before anything of it is durable or
        // sent; its vote is lost with it and node 1 may win term 2 with it.
        let mut c = InvariantChecker::new();
        c.observe_status((5, 1), &status(5, Role::Leader, 2, 0, 0)).unwrap();
        c.observe_down(5);
        c.observe_status((1, 1), &status(1, Role::Leader, 2, 0, 0)).unwrap();
        // Not if it acted as the leader of term 2 first...
        let mut c = InvariantChecker::new();
        c.observe_status((5, 1), &status(5, Role::Leader, 2, 0, 0)).unwrap();
        c.observe_leader_acted((5, 1), 2).unwrap();
        c.observe_down(5);
        let v = c.observe_status((1, 1), &status(1, Role::Leader, 2, 0, 0)).unwrap_err();
        assert_eq!(v.invariant, "Election Safety");
        // ... nor while it is up.
        let mut c = InvariantChecker::new();
        c.observe_status((5, 1), &status(5, Role::Leader, 2, 0, 0)).unwrap();
        let v = c.observe_status((1, 1), &status(1, Role::Leader, 2, 0, 0)).unwrap_err();
        assert_eq!(v.invariant, "Election Safety");
    }

    #[test]
    fn detects_durable_term_or_vote_going_back_and_double_votes() {
        let hs = |term, vote| HardState { current_term: term, voted_for: vote };
        let mut c = InvariantChecker::new();
        c.observe_durable_hard_state(1, hs(2, None)).unwrap();
        c.observe_durable_hard_state(1, hs(2, Some(3))).unwrap();
        let v = c.observe_durable_hard_state(1, hs(2, Some(2))).unwrap_err();
        assert_eq!(v.invariant, "durable term and vote never go back");
        let mut c = InvariantChecker::new();
        c.observe_durable_hard_state(1, hs(5, None)).unwrap();
        let v = c.observe_durable_hard_state(1, hs(4, None)).unwrap_err();
        assert_eq!(v.invariant, "durable term and vote never go back");
        let mut c = InvariantChecker::new();
        c.observe_vote(1, 7, 2).unwrap();
        c.observe_vote(1, 7, 2).unwrap();
        let v = c.observe_vote(1, 7, 3).unwrap_err();
        assert_eq!(v.invariant, "one vote per term");
    }

    struct Durable {
        hard_state: HardState,
        held: Vec<LogId>,
        /// A truncation that landed: (first index cut, durable term then).
        truncated: Option<(LogIndex, Term)>,
        /// A write of entries that landed: (indexes written, durable term then).
        written: Option<(std::ops::Range<LogIndex>, Term)>,
    }

    impl DurableView for Durable {
        fn hard_state(&self) -> HardState {
            self.hard_state
        }
        fn covers(&self, id: LogId, _since: u64) -> bool {
            self.held.contains(&id)
        }
        fn term_at(&self, index: LogIndex) -> Option<Term> {
            self.held.iter().find(|id| id.index == index).map(|id| id.term)
        }
        fn overwritten_since(&self, index: LogIndex, _since: u64) -> Option<Term> {
            self.truncated.filter(|&(cut, _)| cut <= index).map(|(_, term)| term)
        }
        fn replaced_since(&self, id: LogId, _since: u64) -> Option<Term> {
            let other = self.term_at(id.index).is_some_and(|term| term != id.term);
            let written = self.written.as_ref().filter(|(indexes, _)| indexes.contains(&id.index));
            written.filter(|_| other).map(|&(_, term)| term)
        }
    }

    #[test]
    fn messages_must_be_covered_by_their_senders_durable_state() {
        use raft_core::{
            AppendEntriesRequest, AppendEntriesResponse, RequestVoteRequest, RequestVoteResponse,
        };
        let durable = |term, vote, held: &[LogId]| Durable {
            hard_state: HardState { current_term: term, voted_for: vote },
            held: held.to_vec(),
            truncated: None,
            written: None,
        };
        let vote = |term, pre_vote| {
            RpcRequest::RequestVote(RequestVoteRequest {
                term,
                candidate_id: 1,
                last_log_id: LogId::default(),
                pre_vote,
                leadership_transfer: false,
            })
        };
        // A candidate's vote for itself must be durable before it asks; a pre-vote promises nothing.
        assert_eq!(check_request(1, &vote(3, false), &durable(3, Some(1), &[])), Ok(Some((3, 1))));
        let v = check_request(1, &vote(3, false), &durable(2, None, &[])).unwrap_err();
        assert_eq!(v.invariant, "durability at the message boundary");
        assert_eq!(check_request(1, &vote(3, true), &durable(2, None, &[])), Ok(None));
        // A leader's AppendEntries needs its term durable (the lone-voter bug), not its entries.
        let append = RpcRequest::AppendEntries(AppendEntriesRequest {
            term: 6,
            leader_id: 1,
            prev_log_id: LogId::new(5, 10),
            entries: vec![entry(11, 6, "blank"), entry(12, 6, "a")],
            leader_commit: 10,
            read_round: 0,
            quiesce: false,
        });
        assert!(check_request(1, &append, &durable(5, Some(1), &[])).is_err());
        assert!(check_request(1, &append, &durable(6, Some(1), &[])).is_ok());
        // A follower acknowledges only what it holds durably (persist before reply).
        let ack = |matched| {
            RpcResponse::AppendEntries(AppendEntriesResponse {
                term: 6,
                match_index: Some(matched),
                conflict: None,
                lease_promise_ms: 0,
                quiesced: false,
            })
        };
        let held = [LogId::new(5, 10), LogId::new(6, 11)];
        assert!(check_response(2, &append, &ack(11), 0, &durable(6, None, &held)).is_ok());
        let v = check_response(2, &append, &ack(12), 0, &durable(6, None, &held)).unwrap_err();
        assert_eq!(v.invariant, "durability at the message boundary");
        let v = check_response(2, &append, &ack(11), 0, &durable(5, None, &held)).unwrap_err();
        assert_eq!(v.invariant, "durability at the message boundary", "the answer's term");
        // An entry a newer term's leader overwrote before the write landed (group commit
        // merged the two writes): the old term's answer is harmless. An older entry in its
        // place means it was never written.
        let overwritten = [LogId::new(5, 10), LogId::new(6, 11), LogId::new(7, 12)];
        assert!(check_response(2, &append, &ack(12), 0, &durable(7, None, &overwritten)).is_ok());
        let older = [LogId::new(5, 10), LogId::new(6, 11), LogId::new(5, 12)];
        let v = check_response(2, &append, &ack(12), 0, &durable(7, None, &older));
        assert!(v.is_err(), "an entry of an older term at 12");
        // ... unless a newer leader's write truncated the log there since the request arrived
        // (its entry, appended in an earlier term, may be older than the acknowledged one).
        let merged = Durable { truncated: Some((12, 7)), ..durable(7, None, &older) };
        assert!(check_response(2, &append, &ack(12), 0, &merged).is_ok());
        let by_same_term = Durable { truncated: Some((12, 6)), ..durable(6, None, &older) };
        assert!(check_response(2, &append, &ack(12), 0, &by_same_term).is_err());
        // A granted vote must be durable; a granted pre-vote need not.
        let granted = |pre_vote| {
            RpcResponse::RequestVote(RequestVoteResponse { term: 3, vote_granted: true, pre_vote })
        };
        assert!(
            check_response(2, &vote(3, false), &granted(false), 0, &durable(3, None, &[])).is_err()
        );
        assert_eq!(
            check_response(2, &vote(3, false), &granted(false), 0, &durable(3, Some(1), &[])),
            Ok(Some((3, 1)))
        );
        assert_eq!(
            check_response(2, &vote(3, true), &granted(true), 0, &durable(2, None, &[])),
            Ok(None)
        );
    }

    /// Seed 11000998: a follower of term 3 acknowledged entries 4..=7 of that term while its
    /// write was stalled; it then adopted term 6 and took the new leader's entry 4, and group
    /// commit merged both writes into one that appended only (6, 4) after (2, 3): no truncation
    /// of 4..=7 ever landed. The term-3 answer acknowledges entries that a newer term replaced.
    #[test]
    fn entries_a_merged_newer_write_replaced_below_them_are_superseded() {
        use raft_core::{AppendEntriesRequest, AppendEntriesResponse};
        let append = RpcRequest::AppendEntries(AppendEntriesRequest {
            term: 3,
            leader_id: 6,
            prev_log_id: LogId::new(2, 3),
            entries: (4..=7).map(|index| entry(index, 3, "x")).collect(),
            leader_commit: 2,
            read_round: 0,
            quiesce: false,
        });
        let ack = RpcResponse::AppendEntries(AppendEntriesResponse {
            term: 3,
            match_index: Some(7),
            conflict: None,
            lease_promise_ms: 0,
            quiesced: false,
        });
        let durable = |term, held: &[LogId], written| Durable {
            hard_state: HardState { current_term: term, voted_for: None },
            held: held.to_vec(),
            truncated: None,
            written,
        };
        let merged = [LogId::new(2, 3), LogId::new(6, 4)];
        let disk = durable(6, &merged, Some((3..5, 6)));
        assert!(check_response(1, &append, &ack, 0, &disk).is_ok());
        // Nothing replaced: entries 5..=7 were acknowledged and never written.
        let v = check_response(1, &append, &ack, 0, &durable(6, &merged[..1], Some((3..4, 6))));
        assert_eq!(v.unwrap_err().invariant, "durability at the message boundary");
        // Entry 4 written under the answer's own term, or no write of it since the request
        // arrived, or the acknowledged entry itself written at 4: no newer leader replaced them.
        let v = check_response(1, &append, &ack, 0, &durable(3, &merged, Some((3..5, 3))));
        assert!(v.is_err(), "replaced under the same term");
        assert!(check_response(1, &append, &ack, 0, &durable(6, &merged, None)).is_err());
        let same = [LogId::new(2, 3), LogId::new(3, 4)];
        let v = check_response(1, &append, &ack, 0, &durable(6, &same, Some((3..5, 6))));
        assert!(v.is_err(), "entry 4 is the acknowledged one: 5..=7 are simply missing");
    }
}
