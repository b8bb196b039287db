//! The sans-IO Raft engine.
//!
//! [`Engine`] is a deterministic state machine: the caller feeds it inputs (a tick of the logical
//! clock, an inbound request, a response, a proposal, "these writes are durable", "these entries
//! are applied") and drains [`Action`]s (persist, send, respond, apply) that it must carry out in
//! order. It never awaits, never reads a clock and draws randomness only from a PRNG seeded by
//! [`Config::random_seed`](crate::Config::random_seed), so the same inputs give the same outputs.
//!
//! ## Ordering contract for the caller
//!
//! * `Action::Persist` batches must be written in the order they are emitted.
//! * A `Send` or `Respond` with `after_persist: true` must not leave the node before every
//!   `Persist` emitted before it is durable. This is how the engine keeps the persistence rules of
//!   Raft (term and vote durable before voting or campaigning; entries durable before a follower
//!   acknowledges them) without waiting itself. Every message of a term not yet known durable is
//!   gated too, whatever produced it (a new term is durable before any message of it leaves the
//!   node). Once its term is durable, a leader's AppendEntries are not gated: a leader may
//!   replicate entries while its own write is in flight, and counts itself toward a quorum only
//!   once [`Engine::on_persisted`] reports its copy durable.
//! * Report every finished write with [`Engine::on_persisted`], in write order: that is how the
//!   engine learns that its term and its entries are durable.
//! * `Apply` batches are consecutive and committed; hand them to the state machine in order and
//!   report progress with [`Engine::on_applied`].
//!
//! ## Snapshots
//!
//! * **Storage actions** are `Persist`, `WriteSnapshotChunk`, `InstallSnapshot` and
//!   `CompactLog`: carry them out strictly in emission order (an `InstallSnapshot` resets the log
//!   that later `Persist` batches append to), and treat all of them as "earlier `Persist`s" for
//!   `after_persist` messages. Report `InstallSnapshot` with [`Engine::on_snapshot_installed`].
//!   No `InstallSnapshot` is emitted while the state machine restores a snapshot (from the
//!   `Restore` until [`Engine::on_applied`] reports its last index), so a store may make an
//!   install supersede (and stop serving) the snapshot read before.
//! * **Apply-path actions** are `Apply`, `TakeSnapshot` and `Restore`: hand them to the state
//!   machine in emission order. `TakeSnapshot` captures the state after every earlier `Apply`;
//!   report it with [`Engine::on_snapshot_taken`] once durable (or
//!   [`Engine::on_snapshot_skipped`]). `Restore` replaces the state; report it with
//!   [`Engine::on_applied`] of its last included index.
//! * The engine emits InstallSnapshot requests with empty `data`: fill in the
//!   [`chunk_len`](crate::snapshot_meta::chunk_len) bytes at `offset` of the snapshot from the store.

mod candidate;
mod counters;
mod follower;
mod leader;
mod lease;
mod log;
mod membership;
mod outbox;
mod progress;
mod quiesce;
mod quorum;
mod read_index;
mod snapshot;
mod snapshot_send;
mod transfer;
mod validate;

use std::collections::BTreeMap;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

pub use self::counters::EngineCounters;
pub(crate) use self::membership::FirstAfter;
pub use self::membership::{MembershipProgress, MembershipRefusal};
pub use self::outbox::PersistedWrite;
pub use self::read_index::{ReadId, ReadIndexRefusal};
pub use self::transfer::TransferRefusal;
use crate::batch::{DurableState, WriteBatch};
use crate::config::Config;
use crate::membership::Membership;
use crate::message::{RpcRequest, RpcResponse};
use crate::snapshot_meta::SnapshotMeta;
use crate::types::{Entry, HardState, LogId, LogIndex, NodeId, Role, Status, Term};

use self::log::RaftLog;
use self::progress::Progress;
use self::quorum::VoteTally;

/// Identifies an inbound request whose response the engine will produce later (chosen by the
/// caller, echoed in [`Action::Respond`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplyId(pub u64);

/// What the caller must do, in order.
///
/// New variants may be added (as snapshots added theirs); match with a wildcard arm.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Write this batch to the `LogStore` (after every earlier batch).
    Persist(WriteBatch),
    /// Send `request` to node `to`; report its outcome with [`Engine::on_response`] or
    /// [`Engine::on_unreachable`].
    Send {
        /// The target node.
        to: NodeId,
        /// The request.
        request: RpcRequest,
        /// Hold the request until every earlier `Persist` is durable.
        after_persist: bool,
    },
    /// Answer the inbound request `reply_to` with `response`.
    Respond {
        /// Which request this answers.
        reply_to: ReplyId,
        /// The response.
        response: RpcResponse,
        /// Hold the response until every earlier `Persist` is durable.
        after_persist: bool,
    },
    /// Apply these committed entries to the state machine, after every earlier `Apply`.
    Apply(Vec<Entry>),
    /// Storage: append `data` at `offset` to the snapshot `meta` being received from the leader
    /// (`offset == 0` starts it, discarding any unfinished one). Not durable by itself.
    WriteSnapshotChunk {
        /// The snapshot being received.
        meta: SnapshotMeta,
        /// Where `data` starts.
        offset: u64,
        /// The chunk.
        data: bytes::Bytes,
    },
    /// Storage: commit the received snapshot `meta` (every chunk was written) durably to the
    /// snapshot store, then reset the log store after `meta.last_included` (`LogStore::reset`).
    /// Report completion with [`Engine::on_snapshot_installed`].
    InstallSnapshot(SnapshotMeta),
    /// Storage: purge the log store up to `up_to` (a durable snapshot covers it).
    CompactLog {
        /// The last index to purge.
        up_to: LogIndex,
    },
    /// Apply path: capture the state machine's state after every earlier `Apply` (it is then
    /// as of `last_included`), write it to the snapshot store and report it with
    /// [`Engine::on_snapshot_taken`] or [`Engine::on_snapshot_skipped`].
    TakeSnapshot {
        /// The last entry applied before the snapshot.
        last_included: LogId,
        /// The membership as of `last_included`, to store in the snapshot's metadata.
        membership: Membership,
    },
    /// Apply path: replace the state machine's state by the (durable) snapshot `meta`; report it
    /// with [`Engine::on_applied`]`(meta.last_included.index)`.
    Restore(SnapshotMeta),
    /// The outcome of [`Engine::read_index`] for `id`: the read index (read once the state
    /// machine has applied it), or why there is none.
    ReadIndexReady {
        /// Which read this answers.
        id: ReadId,
        /// The read index, or why there is none.
        result: Result<LogIndex, ReadIndexRefusal>,
    },
}

/// Why the engine refused a proposal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProposeRefusal {
    /// Not the leader; the known leader, if any.
    NotLeader(Option<NodeId>),
    /// The leader holds `max_unapplied_entries` entries its state machine has not applied yet:
    /// try again once some are applied.
    Backlogged,
    /// A leadership transfer is in progress: try again once it ends (on the new leader if it
    /// succeeded).
    TransferInProgress,
}

/// Tick counts derived from the configuration.
#[derive(Debug, Clone)]
struct Timing {
    heartbeat_ticks: u64,
    election_ticks_min: u64,
    election_ticks_max: u64,
    /// How long a lease lasts from the start of a round a majority acknowledged.
    lease_span: std::time::Duration,
    /// `quiesce_check_interval` in ticks.
    quiesce_check_ticks: u64,
}

/// Role-specific state.
#[derive(Debug)]
enum RoleState {
    Follower,
    PreCandidate(VoteTally),
    Candidate(VoteTally),
    Leader(leader::LeaderState),
}

/// The Raft protocol for one node, without any I/O. See the [module docs](self).
#[derive(Debug)]
pub struct Engine {
    id: NodeId,
    config: Config,
    timing: Timing,
    rng: ChaCha8Rng,
    hard_state: HardState,
    /// The highest term the store reported durable (see `outbox.rs`): messages of a later term
    /// wait for the writes before them.
    durable_term: Term,
    role: RoleState,
    leader_id: Option<NodeId>,
    log: RaftLog,
    /// Ticks since the last election timeout reset (followers and candidates) or since the last
    /// CheckQuorum round (leaders).
    election_elapsed: u64,
    /// Ticks (counted like `election_elapsed`) since this node last heard from a leader of its
    /// term (an AppendEntries or InstallSnapshot) or woke from quiescence after one; `None`
    /// before it ever did and after it campaigned or granted a vote. With CheckQuorum it refuses
    /// votes while this is below the minimum election timeout (`in_leader_lease`): the promise
    /// behind lease reads (see `lease.rs`), kept whatever becomes of its term or `leader_id`
    /// meanwhile. Only a leadership transfer's vote request overrides it.
    heard_leader_elapsed: Option<u64>,
    /// Quiescence: timers suspended until an input or a deadline wakes the node (see
    /// `quiesce.rs`).
    quiet: quiesce::Quiet,
    randomized_election_ticks: u64,
    /// The write being accumulated for the next `Persist`.
    pending_write: WriteBatch,
    /// `Persist` batches emitted so far (the last one's `WriteBatch::seq`).
    writes_emitted: u64,
    /// Entries in the last write emitted as leader (0 if emitted otherwise): a leader's next
    /// write starts with room for as many when it appends its first entry.
    leader_write_entries: usize,
    actions: Vec<Action>,
    snapshots: snapshot::SnapshotState,
    /// The membership the leader's replication and quorums were last set up for.
    membership_seen: Membership,
    /// The membership log's generation when `membership_seen` was last checked.
    membership_generation_seen: u64,
    /// Reads this node forwarded (or will forward) to the leader.
    forwarded: read_index::ForwardedReads,
    /// Ticks since the engine was created (a node's first election timeout after a restart).
    now_tick: u64,
    /// The driver's clock at the latest input (`set_now`): the clock of lease reads.
    now: std::time::Duration,
    /// Inbound messages refused as malformed (see `validate.rs`).
    malformed: u64,
    /// Elections started and won (see `counters.rs`).
    counters: EngineCounters,
    /// Per peer: the tick of the last warning about it (see `validate.rs`), and how many were
    /// left out since.
    peer_warnings: BTreeMap<NodeId, (u64, u64)>,
}

impl Engine {
    /// Creates the engine of a node restarting from `durable` (what its store holds) with the
    /// stored `entries` (every entry after `durable.purged`, in order), without snapshots: it
    /// never emits snapshot actions and refuses InstallSnapshot.
    ///
    /// The membership is the latest one in `entries`; a node whose log holds none has no
    /// members (it waits for a leader to send it the log; see `NodeBuilder::bootstrap` for how
    /// a cluster gets its first membership).
    pub fn new(config: Config, durable: &DurableState, entries: Vec<Entry>) -> Self {
        Self::build(config, durable, entries, false, None, Membership::default())
    }

    /// Creates the engine of a node that keeps snapshots, restarting from `durable` and the
    /// stored `entries` (every entry after `durable.purged`) and from `snapshot`, the latest
    /// durable snapshot, which the caller restored into the state machine before any entry: the
    /// engine starts with commit and applied indexes at its last included entry and never emits
    /// an entry at or below it for applying. `durable.purged` must not be after `snapshot`.
    pub fn with_snapshots(
        config: Config,
        durable: &DurableState,
        entries: Vec<Entry>,
        snapshot: Option<SnapshotMeta>,
    ) -> Self {
        Self::build(config, durable, entries, true, snapshot, Membership::default())
    }

    /// `initial`: the membership in force before the first entry when neither `snapshot` nor
    /// `entries` hold one (the engine's tests start clusters that way; nodes bootstrap through a
    /// membership entry in the log).
    pub(crate) fn build(
        config: Config,
        durable: &DurableState,
        entries: Vec<Entry>,
        snapshots_enabled: bool,
        snapshot: Option<SnapshotMeta>,
        initial: Membership,
    ) -> Self {
        let timing = Timing {
            heartbeat_ticks: config.ticks(config.heartbeat_interval),
            election_ticks_min: config.ticks(config.election_timeout_min),
            election_ticks_max: config.ticks(config.election_timeout_max),
            lease_span: lease::lease_span(&config),
            quiesce_check_ticks: config.ticks(config.quiesce_check_interval),
        };
        let base = match &snapshot {
            Some(meta) => (meta.last_included.index, meta.membership.clone()),
            None => (0, initial),
        };
        let mut engine = Self {
            id: config.id,
            rng: ChaCha8Rng::seed_from_u64(config.random_seed),
            timing,
            config,
            hard_state: durable.hard_state,
            durable_term: durable.hard_state.current_term,
            role: RoleState::Follower,
            leader_id: None,
            log: RaftLog::restore(durable.purged, entries, base),
            election_elapsed: 0,
            heard_leader_elapsed: None,
            quiet: quiesce::Quiet::default(),
            randomized_election_ticks: 0,
            pending_write: WriteBatch::default(),
            writes_emitted: 0,
            leader_write_entries: 0,
            actions: Vec::new(),
            snapshots: snapshot::SnapshotState::default(),
            membership_seen: Membership::default(),
            membership_generation_seen: 0,
            forwarded: read_index::ForwardedReads::default(),
            now_tick: 0,
            now: std::time::Duration::ZERO,
            malformed: 0,
            counters: EngineCounters::default(),
            peer_warnings: BTreeMap::new(),
        };
        engine.membership_seen = engine.membership().clone();
        engine.membership_generation_seen = engine.log.membership().generation();
        let restored = snapshot.as_ref().map_or(0, |m| m.last_included.index);
        let log = &mut engine.log;
        if restored > log.applied_index {
            log.commit_index = restored;
            log.apply_sent_index = restored;
            log.applied_index = restored;
        }
        let base = log.applied_index;
        engine.snapshots = snapshot::SnapshotState::new(snapshots_enabled, snapshot, base);
        engine.reset_election_timer();
        engine
    }

    /// For a state machine that persists its own state (see `StateMachine::applied_index`): it
    /// already holds every entry up to `applied`, which is committed and in the stored log (or
    /// the snapshot's last entry), so the engine starts with commit and applied indexes there
    /// and never emits an entry at or below it for applying. Ignored unless `applied` is beyond
    /// the applied index the engine starts with (a restored snapshot's) and within the durable
    /// log. The caller checks that the stored log holds `applied` with its term.
    pub fn resume_applied(mut self, applied: LogIndex) -> Self {
        let log = &mut self.log;
        if applied > log.applied_index && applied <= log.durable_index {
            log.commit_index = applied;
            log.apply_sent_index = applied;
            log.applied_index = applied;
            let (enabled, latest) = (self.snapshots.enabled, self.snapshots.latest.take());
            self.snapshots = snapshot::SnapshotState::new(enabled, latest, applied);
        }
        self
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    fn is_leader(&self) -> bool {
        matches!(self.role, RoleState::Leader(_))
    }

    /// The current role.
    pub fn role(&self) -> Role {
        match self.role {
            RoleState::Follower => Role::Follower,
            RoleState::PreCandidate(_) => Role::PreCandidate,
            RoleState::Candidate(_) => Role::Candidate,
            RoleState::Leader(_) => Role::Leader,
        }
    }

    /// The current term and vote (possibly not yet durable).
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    /// The leader known for the current term.
    pub fn leader_id(&self) -> Option<NodeId> {
        self.leader_id
    }

    /// The commit index.
    pub fn commit_index(&self) -> LogIndex {
        self.log.commit_index
    }

    /// The id of the last entry in the log.
    pub fn last_log_id(&self) -> LogId {
        self.log.last_log_id()
    }

    /// The highest index known durable locally.
    pub fn durable_index(&self) -> LogIndex {
        self.log.durable_index
    }

    /// The node's status.
    pub fn status(&self) -> Status {
        Status {
            id: self.id,
            role: self.role(),
            current_term: self.hard_state.current_term,
            leader_id: self.leader_id,
            commit_index: self.log.commit_index,
            applied_index: self.log.applied_index,
            last_log_index: self.log.last_index(),
            quiesced: self.quiet.quiesced,
        }
    }

    /// The term of the entry at `index`, if the log holds it.
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        self.log.term_at(index)
    }

    /// Drains the actions produced so far, flushing the accumulated write and any replication
    /// the inputs made possible. Call it after feeding a batch of inputs.
    pub fn take_actions(&mut self) -> Vec<Action> {
        if matches!(self.role, RoleState::Leader(_)) {
            self.start_read_round();
            self.replicate_all();
            self.advance_transfer();
        }
        self.announce_wake();
        self.forward_reads();
        self.flush_write();
        self.emit_apply();
        std::mem::take(&mut self.actions)
    }

    /// Advances the logical clock by one tick. A quiesced engine only counts it towards its
    /// deadline (see [`Engine::ticks_until_needed`]).
    pub fn tick(&mut self) {
        self.now_tick += 1;
        if self.quiet.quiesced {
            return self.tick_quiesced();
        }
        self.election_elapsed += 1;
        if let Some(elapsed) = &mut self.heard_leader_elapsed {
            *elapsed = elapsed.saturating_add(1);
        }
        if matches!(self.role, RoleState::Leader(_)) {
            self.tick_leader();
        } else if self.election_elapsed >= self.randomized_election_ticks && self.may_campaign() {
            // A node that may not campaign lets the timer run on, as etcd does for learners:
            // restarting it would renew the lease of a leader it no longer hears from (see
            // `in_leader_lease`), and it would refuse the votes the next leader needs.
            self.election_elapsed = 0;
            self.campaign(self.config.pre_vote, false);
        }
    }

    /// An inbound request; its response is produced later as [`Action::Respond`] for `reply_to`.
    /// A malformed request (see [`Engine::malformed_count`]) changes nothing and is answered with
    /// a refusal that acknowledges nothing. Any other request wakes a quiesced node first (a
    /// follower quiesces again on the leader's quiesce-marked heartbeat), except a PreVote of a
    /// node that is no member: it changes no state, and a replica left on a node removed from
    /// this group (which a transport shared with other groups still serves) must not keep the
    /// group awake.
    pub fn on_request(&mut self, request: RpcRequest, reply_to: ReplyId) {
        if let Err(reason) = self.check_request(&request) {
            self.count_malformed(request.sender(), request.kind(), &reason);
            let response = self.refusal(&request);
            return self.respond(reply_to, response, false);
        }
        let (waker, quiesce_mark) = self.quiesce_mark(&request);
        if !self.is_strangers_pre_vote(&request) {
            self.unquiesce(waker);
        }
        self.note_term(request.sender(), request.term());
        let response = match request {
            RpcRequest::ReadIndex(req) => return self.handle_read_index(&req, reply_to),
            RpcRequest::RequestVote(req) => {
                RpcResponse::RequestVote(self.handle_request_vote(&req))
            }
            RpcRequest::AppendEntries(req) => {
                let marked = req.quiesce;
                let mut answer = self.handle_append_entries(req);
                self.after_append(marked, quiesce_mark, &answer);
                answer.quiesced = self.quiet.quiesced;
                RpcResponse::AppendEntries(answer)
            }
            RpcRequest::TimeoutNow(req) => RpcResponse::TimeoutNow(self.handle_timeout_now(&req)),
            RpcRequest::InstallSnapshot(req) => {
                RpcResponse::InstallSnapshot(self.handle_install_snapshot(req))
            }
        };
        self.respond(reply_to, response, true);
    }

    /// The response to a request this engine sent to `from` (`request` is what was sent, minus
    /// entries: see [`SentRequest::of`]). A malformed response is counted and treated as no
    /// answer ([`Engine::on_unreachable`]). Any response but the full success of an
    /// AppendEntries wakes a quiesced node.
    pub fn on_response(&mut self, from: NodeId, request: SentRequest, response: RpcResponse) {
        let checked =
            validate::response(&request, &response).and_then(|()| self.check_term(response.term()));
        if let Err(reason) = checked {
            self.count_malformed(from, "response", &reason);
            return self.on_unreachable(from, request);
        }
        if !self.keeps_quiet(&request, &response) {
            self.unquiesce(quiesce::Waker::Other);
        }
        self.note_term(from, response.term());
        if let SentRequest::ReadIndex { read_id, .. } = request {
            // Answer the read whatever else the response says.
            if let RpcResponse::ReadIndex(resp) = &response {
                self.handle_read_index_response(read_id, resp);
            }
        }
        if response.term() > self.hard_state.current_term {
            let granted_pre_vote =
                matches!(&response, RpcResponse::RequestVote(r) if r.pre_vote && r.vote_granted);
            if !granted_pre_vote {
                self.become_follower(response.term(), None);
                return;
            }
        }
        match (request, response) {
            (SentRequest::RequestVote { term, pre_vote }, RpcResponse::RequestVote(resp)) => {
                self.handle_vote_response(from, term, pre_vote, &resp)
            }
            (
                SentRequest::AppendEntries { term, prev_index, last_index, read_round },
                RpcResponse::AppendEntries(resp),
            ) if term == self.hard_state.current_term => {
                self.append_done(from, prev_index == last_index);
                if validate::acknowledges_leader(&resp) {
                    self.lease_acknowledged(from, read_round, resp.lease_promise_ms);
                    self.read_round_acked(from, read_round);
                }
                self.handle_append_response(from, prev_index, last_index, &resp);
            }
            (
                SentRequest::InstallSnapshot { term, last_included, offset, .. },
                RpcResponse::InstallSnapshot(resp),
            ) if term == self.hard_state.current_term => {
                self.handle_snapshot_response(from, last_included, offset, &resp);
            }
            _ => {}
        }
    }

    /// A request to `from` failed (lost, timed out, unreachable). Wakes a quiesced node.
    pub fn on_unreachable(&mut self, from: NodeId, request: SentRequest) {
        self.unquiesce(quiesce::Waker::Other);
        let current = self.hard_state.current_term;
        match request {
            SentRequest::ReadIndex { read_id, .. } => self.read_index_unreachable(read_id),
            SentRequest::InstallSnapshot { term, last_included, offset, .. } if term == current => {
                self.snapshot_unreachable(from, last_included, offset)
            }
            SentRequest::AppendEntries { term, prev_index, last_index, .. } if term == current => {
                self.append_done(from, prev_index == last_index);
                self.append_unreachable(from);
            }
            _ => {}
        }
    }

    /// The state machine applied every entry up to `index`.
    pub fn on_applied(&mut self, index: LogIndex) {
        if index > self.log.applied_index && index <= self.log.apply_sent_index {
            self.log.applied_index = index;
        }
        self.snapshot_applied(index);
    }

    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        let span = self.timing.election_ticks_max.saturating_sub(self.timing.election_ticks_min);
        self.randomized_election_ticks =
            self.timing.election_ticks_min + self.rng.next_u64() % span.max(1);
    }

    /// The members (voters and learners) other than this node: who the leader replicates to.
    fn peers(&self) -> Vec<NodeId> {
        self.membership().members().into_iter().filter(|&id| id != self.id).collect()
    }

    /// The voters (of both sets during a joint change) other than this node: who a candidate
    /// asks for votes.
    fn voter_peers(&self) -> Vec<NodeId> {
        self.membership().all_voters().into_iter().filter(|&id| id != self.id).collect()
    }

    /// Moves to a new term (clearing the vote) or just changes the vote; the change is written
    /// with the next `Persist`.
    fn set_hard_state(&mut self, hard_state: HardState) {
        if hard_state != self.hard_state {
            let (from, to) = (self.hard_state.current_term, hard_state.current_term);
            if from <= validate::TERM_RESERVE_START && to > validate::TERM_RESERVE_START {
                tracing::error!(
                    id = self.id,
                    term = to,
                    "the term entered the reserve: a peer inflated terms (look for large term \
                     jumps and refused messages in the logs; see ARCHITECTURE.md)"
                );
            }
            self.hard_state = hard_state;
            self.pending_write.hard_state = Some(hard_state);
        }
    }

    /// Becomes a follower in `term` (which is >= the current term).
    ///
    /// Only a leader stepping down starts an election timer here (it ran none). A follower's or
    /// candidate's timer keeps running: as in Raft's Figure 2, it restarts only when the node
    /// hears from the current leader or grants a vote. Were learning a higher term enough, a
    /// node that cannot win (a stale log) but times out first would, without PreVote, move
    /// everyone to its new term again and again and keep every other timer from expiring.
    fn become_follower(&mut self, term: Term, leader_id: Option<NodeId>) {
        if term > self.hard_state.current_term {
            self.set_hard_state(HardState { current_term: term, voted_for: None });
        }
        if !matches!(self.role, RoleState::Follower) {
            tracing::debug!(id = self.id, term, ?leader_id, "becoming follower");
        }
        if let RoleState::Leader(leader) = std::mem::replace(&mut self.role, RoleState::Follower) {
            self.abandon_reads(leader.reads);
            self.reset_election_timer();
        }
        self.leader_id = leader_id;
    }

    /// Whether this node heard from a live leader within the minimum election timeout (the
    /// CheckQuorum lease, during which it refuses to help depose that leader).
    ///
    /// It is counted from the leader's last message alone (`heard_leader_elapsed`), not from
    /// `leader_id`, which a higher term learned from a response (or any other term change)
    /// clears: the voter promised the leader's lease reads to refuse votes that long.
    ///
    /// With lease reads, a node that just started counts as in a lease for its first election
    /// timeout: before a restart it may have acknowledged a leader whose lease still runs.
    fn in_leader_lease(&self) -> bool {
        let min = self.timing.election_ticks_min;
        let heard = self.heard_leader_elapsed.is_some_and(|elapsed| elapsed < min);
        let boot_lease =
            self.config.lease_reads && self.now_tick < min && self.election_elapsed < min;
        self.config.check_quorum && (heard || boot_lease)
    }

    /// This node heard from the leader of its term: its election timer restarts, and so does
    /// its promise to refuse votes (`in_leader_lease`).
    fn heard_from_leader(&mut self, leader_id: NodeId) {
        self.leader_id = Some(leader_id);
        self.election_elapsed = 0;
        self.heard_leader_elapsed = Some(0);
    }

    fn emit_apply(&mut self) {
        if !self.emit_snapshot_apply() {
            return;
        }
        let window = self.config.max_apply_batch as u64 * 4;
        while self.log.apply_sent_index.saturating_sub(self.log.applied_index) < window {
            let batch = self.log.next_to_apply(self.config.max_apply_batch);
            if batch.is_empty() {
                break;
            }
            let bytes = batch.iter().map(Entry::size_bytes).sum();
            self.actions.push(Action::Apply(batch));
            self.maybe_take_snapshot(bytes);
        }
        self.maybe_take_snapshot(0);
    }

    /// Whether the leader currently accepts proposals (see [`Engine::propose`]).
    pub fn can_accept_proposal(&self) -> Result<(), ProposeRefusal> {
        let RoleState::Leader(leader) = &self.role else {
            return Err(ProposeRefusal::NotLeader(self.leader_id));
        };
        if leader.transfer.is_some() {
            return Err(ProposeRefusal::TransferInProgress);
        }
        if self.log.last_index().saturating_sub(self.log.applied_index)
            >= self.config.max_unapplied_entries
        {
            return Err(ProposeRefusal::Backlogged);
        }
        Ok(())
    }
}

/// What the caller remembers of a request it sent, to report its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SentRequest {
    /// A RequestVote or PreVote.
    RequestVote {
        /// The term in the request.
        term: Term,
        /// Whether it was a pre-vote.
        pre_vote: bool,
    },
    /// An AppendEntries.
    AppendEntries {
        /// The term in the request.
        term: Term,
        /// `prev_log_id.index` of the request.
        prev_index: LogIndex,
        /// The index of the last entry carried (`prev_index` for a heartbeat).
        last_index: LogIndex,
        /// The request's `read_round`.
        read_round: u64,
    },
    /// A TimeoutNow.
    TimeoutNow {
        /// The term in the request.
        term: Term,
    },
    /// An InstallSnapshot chunk.
    InstallSnapshot {
        /// The term in the request.
        term: Term,
        /// The snapshot's last included entry.
        last_included: LogId,
        /// Where the chunk starts.
        offset: u64,
        /// The snapshot's size.
        size: u64,
    },
    /// A ReadIndex request to the leader.
    ReadIndex {
        /// The term in the request.
        term: Term,
        /// The request's `read_id`.
        read_id: u64,
    },
}

impl SentRequest {
    /// Summarizes a request the engine emitted.
    pub fn of(request: &RpcRequest) -> Self {
        match request {
            RpcRequest::RequestVote(r) => {
                SentRequest::RequestVote { term: r.term, pre_vote: r.pre_vote }
            }
            RpcRequest::AppendEntries(r) => SentRequest::AppendEntries {
                term: r.term,
                prev_index: r.prev_log_id.index,
                last_index: r.prev_log_id.index.saturating_add(r.entries.len() as u64),
                read_round: r.read_round,
            },
            RpcRequest::TimeoutNow(r) => SentRequest::TimeoutNow { term: r.term },
            RpcRequest::InstallSnapshot(r) => SentRequest::InstallSnapshot {
                term: r.term,
                last_included: r.meta.last_included,
                offset: r.offset,
                size: r.meta.size,
            },
            RpcRequest::ReadIndex(r) => SentRequest::ReadIndex { term: r.term, read_id: r.read_id },
        }
    }
}

/// The per-follower progress map of a leader (ordered for deterministic iteration).
type ProgressMap = BTreeMap<NodeId, Progress>;

#[cfg(test)]
mod tests;
