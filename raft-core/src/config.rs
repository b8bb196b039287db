//! Node configuration, with defaults tuned for a LAN and a validation step.

use std::time::Duration;

use crate::types::{ClusterId, GroupId, NodeId, DEFAULT_CLUSTER_ID, DEFAULT_GROUP_ID};

/// The configuration of one node. Build it with [`Config::new`] and adjust fields; the node
/// checks it with [`Config::validate`] when it starts.
///
/// Times are [`Duration`]s; the engine counts them in ticks of `tick_interval` (rounded up, at
/// least one tick).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// This node's id. The configuration holds no membership: the members are in the log,
    /// written there once by `NodeBuilder::bootstrap` on the founding node(s) of a cluster and
    /// changed through the log afterwards. A node whose store holds no membership waits for a
    /// leader to send it the log.
    pub id: NodeId,
    /// The cluster this node belongs to: it is written on every request the node sends
    /// ([`Envelope::cluster_id`](crate::message::Envelope)), and the node refuses requests of
    /// any other cluster (`RpcError::WrongCluster`). Every node of a cluster must use the same
    /// value.
    ///
    /// **The default, [`DEFAULT_CLUSTER_ID`] (0), turns this check off between clusters that
    /// keep it:** two clusters that both use the default accept each other's requests, so a
    /// stale address that reaches a node of another cluster with the same node id is not
    /// caught, and a leader can count that node's votes and acknowledgements (and overwrite
    /// its log). The default suits only a network that carries a single cluster. Give clusters
    /// that may reach each other (a shared network, reused addresses, test and production side
    /// by side) distinct ids: for example a random `u64` chosen when the cluster is founded, or
    /// one derived from something each cluster owns alone (the kv example hashes its node CA
    /// certificate).
    ///
    /// Known limit: the id is configuration only. It is not persisted with the log nor checked
    /// against the store at start, so a data directory of one cluster started under another
    /// cluster's configuration (same node id) is not detected by raft-core; an application
    /// that reuses data directories should record the id next to them and check it (the kv
    /// example does). A node started with the wrong id only fails to talk to its cluster: it
    /// refuses every request, and a leader's `add_voter` of it fails with
    /// `MembershipError::LearnerRefuses` naming `WrongCluster`.
    ///
    /// The cluster id is no security boundary: it guards against misrouting and
    /// misconfiguration only. Any node the transport authenticates may write any id; one
    /// certificate authority per cluster is what keeps other clusters' nodes out.
    pub cluster_id: ClusterId,
    /// The Raft group this node serves within its cluster ([`DEFAULT_GROUP_ID`] for a
    /// single-group node; reserved for multi-raft, where one process runs several groups over
    /// one transport). Checked like `cluster_id` (`RpcError::WrongGroup`).
    pub group_id: GroupId,
    /// The period of the node's logical clock. Every other time is a whole number of ticks.
    pub tick_interval: Duration,
    /// How often a leader sends heartbeats to an idle follower.
    pub heartbeat_interval: Duration,
    /// Lower bound of the randomized election timeout. Also the window of CheckQuorum and of
    /// the leader lease that makes followers refuse disruptive votes.
    pub election_timeout_min: Duration,
    /// Upper bound (exclusive) of the randomized election timeout.
    pub election_timeout_max: Duration,
    /// Seed of the PRNG that draws election timeouts. Nodes of one cluster must use different
    /// seeds; the default is derived from `id`. Simulations set it to replay a run exactly.
    pub random_seed: u64,
    /// Whether a node runs a PreVote round before incrementing its term (Raft thesis §9.6).
    pub pre_vote: bool,
    /// Whether a leader that has not heard from a quorum within an election timeout steps down,
    /// and followers that recently heard from a leader ignore vote requests (thesis §6.2).
    pub check_quorum: bool,
    /// The most entries one AppendEntries carries.
    pub max_append_entries: usize,
    /// The most payload bytes (see `Entry::size_bytes`) one AppendEntries carries; a single
    /// larger entry is still sent alone.
    pub max_append_entries_bytes: u64,
    /// The most AppendEntries with entries in flight to one follower at once (pipelining).
    pub max_inflight_append_entries: usize,
    /// The most entry bytes in flight to one follower at once.
    pub max_inflight_bytes: u64,
    /// The largest command a client may propose, in bytes.
    pub max_payload_bytes: u64,
    /// The most proposals accepted by the node but not yet answered. Further `propose` calls wait
    /// for room (back-pressure) instead of growing memory.
    pub max_pending_proposals: usize,
    /// The most log entries a leader holds that are not yet applied by its state machine; once
    /// reached, proposals wait. Bounds the memory a slow state machine can pin.
    pub max_unapplied_entries: u64,
    /// The most committed entries handed to the state machine in one `apply` call.
    pub max_apply_batch: usize,
    /// Take a snapshot once this many entries were applied since the last one (0: never by
    /// count). Only with a snapshot store (`Node::builder(..).snapshot_store(..)`) and a state
    /// machine that implements `StateMachine::snapshot`.
    pub snapshot_interval_entries: u64,
    /// Take a snapshot once this many log bytes (`Entry::size_bytes`) were applied since the last
    /// one (0: never by size).
    pub snapshot_interval_bytes: u64,
    /// Entries kept in the log below a new snapshot when the log is compacted, so that followers
    /// only a little behind still get AppendEntries instead of the whole snapshot.
    pub snapshot_keep_entries: u64,
    /// The most snapshot bytes one InstallSnapshot carries. Memory per transfer is about
    /// `snapshot_chunk_bytes * snapshot_max_inflight_chunks` on the leader and one chunk on
    /// the follower, whatever the snapshot's size.
    pub snapshot_chunk_bytes: u64,
    /// The most InstallSnapshot chunks in flight to one follower at once.
    pub snapshot_max_inflight_chunks: usize,
    /// A snapshot transfer that gets no answer for this long is abandoned: the follower goes
    /// back to probing (a later transfer resumes where the follower's data ends).
    pub snapshot_transfer_timeout: Duration,
    /// The most linearizable reads (`Node::read_index`) a node holds at once: further calls
    /// wait for room, and a leader refuses (`Backlogged`) reads beyond it from its followers.
    pub max_pending_reads: usize,
    /// A learner is promoted to voter only when it is at most this many entries behind the
    /// leader's commit index, so that a new voter does not stall commitment while it catches
    /// up.
    pub max_promotion_lag_entries: u64,
    /// A leadership transfer that has not made the target leader within this time is abandoned
    /// and the leader takes proposals again.
    pub leadership_transfer_timeout: Duration,
    /// Lease reads (off by default): the leader answers `read_index` at once, without a quorum
    /// round, while a majority of voters promised not to vote for anyone else: each voter's
    /// answer to an AppendEntries says for how long after receiving it (its own
    /// `election_timeout_min`, in its ticks, less one tick), and the leader counts that
    /// from when it started the round, capped by its own promise, minus `max_clock_drift`.
    /// Voters may run other timeouts and tick intervals than the leader. Elapsed time is
    /// measured with the runtime's monotonic clock (`Runtime::now`), so a leader that was paused
    /// or starved of ticks longer than that serves no read from its lease. Correct only if no
    /// node's clock runs slower than another's by more than `max_clock_drift` per election
    /// timeout, and only with `check_quorum`. A voter promises only with lease reads on (it then
    /// also refuses votes during its first election timeout after starting, when it cannot know
    /// whether it promised a leader its lease before a restart): a leader has a lease only from
    /// a majority of voters that enable it. A leader that started a leadership transfer serves
    /// no lease reads for the rest of its term. A driver of the bare engine must give it the
    /// clock (`Engine::set_now`, as the node's main loop does): without one, no read is answered
    /// from a lease.
    pub lease_reads: bool,
    /// The clock-drift margin of lease reads, subtracted from the lease.
    pub max_clock_drift: Duration,
    /// Quiescence of idle groups (off by default): a leader with nothing to replicate, commit,
    /// read, transfer or change sends one last heartbeat marked `quiesce` and stops
    /// heartbeating and counting CheckQuorum time; its followers stop their election timers.
    /// Any proposal, read, membership change, transfer, failure or message of another kind
    /// wakes them. A quiesced leader sends its marks again every `quiesce_check_interval / 2`
    /// to `quiesce_check_interval`; a quiesced follower that got none for 2 to 3
    /// `quiesce_check_interval`s wakes by itself, so an idle group notices a dead leader (or
    /// its leader's group stopped on a live node) and elects a new one within
    /// `3 * quiesce_check_interval + 2 * election_timeout_max` plus one slot of the quiesced
    /// ticker's wake-up grid ([`quiesced_wake_grid`](crate::quiesced_wake_grid): at most
    /// 250 ms, and a quarter of the interval) and a few round trips. A host
    /// may call `Engine::wake` for a faster detection. Needs `check_quorum` and `pre_vote`
    /// (they keep a woken follower from deposing a live leader). Set it the same on every node
    /// of a group: a follower without it ignores the mark and keeps ticking, and its election
    /// timeouts then wake the leader again and again. Never changes what is voted, appended,
    /// committed or read (see ARCHITECTURE.md, "Quiescence").
    pub quiesce_idle: bool,
    /// With `quiesce_idle`: how often a quiesced leader shows its followers it is alive (every
    /// half to one interval), and, times 3, the longest a quiesced follower waits without
    /// hearing it before it wakes by itself. Longer is cheaper (one heartbeat per member per
    /// refresh) and slower to notice a dead leader without the host's help. Must exceed
    /// `election_timeout_max`.
    pub quiesce_check_interval: Duration,
    /// The most inbound requests of this group the node holds at once (received, not yet
    /// answered: an AppendEntries is answered once its entries are durable, so a stalled log
    /// store holds them all, and a leader whose RPCs time out sends more). Requests beyond it
    /// are refused at once with [`RpcError::Overloaded`](crate::RpcError::Overloaded), which
    /// the sender treats as a failed RPC and retries later. It keeps one group's stalled store
    /// from taking what a transport shares between groups: raft-quic gives a connection from
    /// one peer 256 concurrent streams (`QuicConfig::max_concurrent_streams`) for every group of
    /// that peer, and the default, [`DEFAULT_MAX_INBOUND_REQUESTS`] (64), leaves three quarters
    /// of them to the other groups. Must be at least the in-flight window
    /// (`max(max_inflight_append_entries, snapshot_max_inflight_chunks)`) plus
    /// [`INBOUND_REQUEST_ROOM`] (heartbeats, votes, a second leader's requests), so that a busy
    /// group never meets it in normal operation; set the same on every node of a group.
    pub max_inbound_requests: usize,
}

impl Config {
    /// A configuration with defaults for node `id`.
    pub fn new(id: NodeId) -> Self {
        Self {
            id,
            cluster_id: DEFAULT_CLUSTER_ID,
            group_id: DEFAULT_GROUP_ID,
            tick_interval: Duration::from_millis(10),
            heartbeat_interval: Duration::from_millis(50),
            election_timeout_min: Duration::from_millis(300),
            election_timeout_max: Duration::from_millis(600),
            random_seed: id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5DEE_CE66_D1CE_5EED,
            pre_vote: true,
            check_quorum: true,
            max_append_entries: 4096,
            max_append_entries_bytes: 1 << 20,
            max_inflight_append_entries: 32,
            max_inflight_bytes: 16 << 20,
            max_payload_bytes: 1 << 20,
            max_pending_proposals: 65_536,
            max_unapplied_entries: 65_536,
            max_apply_batch: 4096,
            snapshot_interval_entries: 10_000,
            snapshot_interval_bytes: 64 << 20,
            snapshot_keep_entries: 1_000,
            snapshot_chunk_bytes: 1 << 20,
            snapshot_max_inflight_chunks: 2,
            snapshot_transfer_timeout: Duration::from_millis(5_000),
            max_pending_reads: 65_536,
            max_promotion_lag_entries: 1_000,
            leadership_transfer_timeout: Duration::from_millis(1_000),
            lease_reads: false,
            max_clock_drift: Duration::from_millis(100),
            quiesce_idle: false,
            quiesce_check_interval: Duration::from_secs(5),
            max_inbound_requests: DEFAULT_MAX_INBOUND_REQUESTS,
        }
    }

    /// Checks that the values make sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |msg: &str| Err(ConfigError(msg.to_owned()));
        if self.tick_interval.is_zero() {
            return fail("tick_interval must be positive");
        }
        if self.heartbeat_interval < self.tick_interval {
            return fail("heartbeat_interval must be at least one tick");
        }
        if self.election_timeout_min <= self.heartbeat_interval {
            return fail("election_timeout_min must exceed heartbeat_interval");
        }
        let min_plus_tick = self.election_timeout_min.saturating_add(self.tick_interval);
        if self.election_timeout_max <= min_plus_tick {
            return fail(
                "election_timeout_max must exceed election_timeout_min by more than a tick",
            );
        }
        if self.max_append_entries == 0 || self.max_inflight_append_entries == 0 {
            return fail("max_append_entries and max_inflight_append_entries must be positive");
        }
        if self.max_append_entries_bytes == 0
            || self.max_inflight_bytes < self.max_append_entries_bytes
        {
            return fail("max_inflight_bytes must be at least max_append_entries_bytes (> 0)");
        }
        if self.max_payload_bytes == 0 || self.max_payload_bytes > self.max_append_entries_bytes {
            return fail("max_payload_bytes must be positive and fit in one AppendEntries");
        }
        if self.max_pending_proposals == 0
            || self.max_unapplied_entries == 0
            || self.max_apply_batch == 0
        {
            return fail(
                "max_pending_proposals, max_unapplied_entries and max_apply_batch must be positive",
            );
        }
        if self.snapshot_chunk_bytes == 0 || self.snapshot_chunk_bytes > MAX_SNAPSHOT_CHUNK_BYTES {
            return fail("snapshot_chunk_bytes must be between 1 and 64 MiB");
        }
        if self.snapshot_max_inflight_chunks == 0 || self.snapshot_max_inflight_chunks > 64 {
            return fail("snapshot_max_inflight_chunks must be between 1 and 64");
        }
        let lease_margin = self.max_clock_drift.saturating_add(self.tick_interval);
        if self.lease_reads && (!self.check_quorum || lease_margin >= self.election_timeout_min) {
            return fail(
                "lease_reads needs check_quorum and max_clock_drift + tick_interval < \
                 election_timeout_min",
            );
        }
        if self.quiesce_idle && !(self.check_quorum && self.pre_vote) {
            return fail("quiesce_idle needs check_quorum and pre_vote");
        }
        if self.quiesce_idle && self.quiesce_check_interval <= self.election_timeout_max {
            return fail("quiesce_check_interval must exceed election_timeout_max");
        }
        if self.max_pending_reads == 0 {
            return fail("max_pending_reads must be positive");
        }
        if self.leadership_transfer_timeout < self.heartbeat_interval {
            return fail("leadership_transfer_timeout must be at least heartbeat_interval");
        }
        if self.snapshot_transfer_timeout < self.heartbeat_interval {
            return fail("snapshot_transfer_timeout must be at least heartbeat_interval");
        }
        self.validate_driver_limits()
    }

    /// The checks across settings that the driver's queues depend on. The per-peer queue is sized
    /// from both in-flight windows (AppendEntries and InstallSnapshot chunks) plus room for
    /// heartbeats and votes, so that a full window of either never overflows it (an overflowing
    /// snapshot window would rewind the transfer forever); that queue is allocated whole, so the
    /// windows are bounded. The memory of one snapshot transfer (a window of chunks) is bounded
    /// too.
    fn validate_driver_limits(&self) -> Result<(), ConfigError> {
        let fail = |msg: &str| Err(ConfigError(msg.to_owned()));
        let window = self.max_inflight_append_entries.max(self.snapshot_max_inflight_chunks);
        if window > MAX_INFLIGHT_WINDOW {
            return fail("max_inflight_append_entries and snapshot_max_inflight_chunks must be at most 4096 (the per-peer queue holds either window)");
        }
        if self.max_inbound_requests < window.saturating_add(INBOUND_REQUEST_ROOM) {
            return fail("max_inbound_requests must be at least max(max_inflight_append_entries, snapshot_max_inflight_chunks) + 16 (a busy group must not meet it)");
        }
        let transfer_bytes =
            self.snapshot_chunk_bytes.saturating_mul(self.snapshot_max_inflight_chunks as u64);
        if transfer_bytes > MAX_SNAPSHOT_WINDOW_BYTES {
            return fail("snapshot_chunk_bytes * snapshot_max_inflight_chunks must be at most 1 GiB (the memory of one snapshot transfer)");
        }
        if self.max_pending_reads > MAX_PENDING || self.max_pending_proposals > MAX_PENDING {
            return fail("max_pending_reads and max_pending_proposals must be at most 2^20");
        }
        Ok(())
    }

    /// Checks that the largest requests this configuration makes fit a transport that carries
    /// requests of at most `limit` encoded bytes (`Network::max_request_bytes`): an
    /// InstallSnapshot of `snapshot_chunk_bytes` and an AppendEntries of
    /// `max_append_entries_bytes` (or of one membership entry, which may be larger), each with
    /// [`REQUEST_OVERHEAD_BYTES`]. Returns the first setting that does not fit, with the bytes
    /// its requests may need.
    pub fn check_request_limit(&self, limit: u64) -> Result<(), (&'static str, u64)> {
        let membership = crate::membership::MAX_MEMBERSHIP_BYTES;
        let entries = self.max_append_entries_bytes.max(membership);
        let needs = [
            (
                "snapshot_chunk_bytes",
                self.snapshot_chunk_bytes.saturating_add(REQUEST_OVERHEAD_BYTES),
            ),
            ("max_append_entries_bytes", entries.saturating_add(REQUEST_OVERHEAD_BYTES)),
        ];
        match needs.into_iter().find(|&(_, bytes)| bytes > limit) {
            Some(too_large) => Err(too_large),
            None => Ok(()),
        }
    }

    /// `time` in ticks of `tick_interval`, rounded up, at least one.
    pub(crate) fn ticks(&self, time: Duration) -> u64 {
        let ticks = time.as_nanos().div_ceil(self.tick_interval.as_nanos().max(1)).max(1);
        u64::try_from(ticks).unwrap_or(u64::MAX)
    }

    /// The time `ticks` ticks of `tick_interval` take (saturating).
    pub(crate) fn ticks_time(&self, ticks: u64) -> Duration {
        let nanos = self.tick_interval.as_nanos().saturating_mul(u128::from(ticks));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// The default [`Config::max_inbound_requests`]: a quarter of raft-quic's default 256
/// concurrent streams per connection, and twice the default AppendEntries window (32).
pub const DEFAULT_MAX_INBOUND_REQUESTS: usize = 64;

/// The room [`Config::max_inbound_requests`] must leave above the in-flight window: heartbeats,
/// votes, a read's confirmation round and a previous leader's requests still held.
pub const INBOUND_REQUEST_ROOM: usize = 16;

/// The largest `snapshot_chunk_bytes` accepted: one chunk must fit a transport frame with room to
/// spare (raft-quic's default frame limit is 16 MiB; raise it with the chunk size).
pub const MAX_SNAPSHOT_CHUNK_BYTES: u64 = 64 << 20;

/// Bytes a request may take beyond its chunk of snapshot data or its entries' budget: the
/// snapshot's metadata (its membership, up to `MAX_MEMBERSHIP_BYTES`) and the request's own
/// fields, with room to spare. See [`Config::check_request_limit`].
pub const REQUEST_OVERHEAD_BYTES: u64 = crate::membership::MAX_MEMBERSHIP_BYTES + 4096;

/// The largest in-flight window to one peer (`max_inflight_append_entries`,
/// `snapshot_max_inflight_chunks`): the per-peer queue holding it is allocated whole.
pub const MAX_INFLIGHT_WINDOW: usize = 4096;

/// The most snapshot bytes in flight to one follower (`snapshot_chunk_bytes *
/// snapshot_max_inflight_chunks`).
pub const MAX_SNAPSHOT_WINDOW_BYTES: u64 = 1 << 30;

/// The largest `max_pending_reads` / `max_pending_proposals`.
const MAX_PENDING: usize = 1 << 20;

/// A configuration that cannot work, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid raft config: {0}")]
#[non_exhaustive]
pub struct ConfigError(pub String);
