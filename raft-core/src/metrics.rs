//! The metrics a [`Node`](crate::Node) records, through the [`metrics`] facade: raft-core
//! installs no recorder and knows no exporter; the application chooses one (the kv example
//! serves them in the Prometheus text format).
//!
//! Handles are registered once, when the node starts (and when it first talks to a peer), with
//! the labels `node_id` plus any given to
//! [`NodeBuilder::metric_labels`](crate::NodeBuilder::metric_labels)
//! (room for a group id when several groups share a process). Install the recorder before
//! starting the node: handles registered without one do nothing, and cost a branch each.
//!
//! | metric | kind | labels | what |
//! |---|---|---|---|
//! | `raft_role` | gauge | | 0 follower, 1 pre-candidate, 2 candidate, 3 leader |
//! | `raft_term` | gauge | | the current term |
//! | `raft_leader_id` | gauge | | the known leader (0: none) |
//! | `raft_commit_index`, `raft_applied_index`, `raft_last_log_index` | gauge | | as in `Status` |
//! | `raft_quiesced` | gauge | | 1 while the node is quiesced (`Config::quiesce_idle`), else 0 |
//! | `raft_follower_match_index`, `raft_follower_lag_entries` | gauge | `peer` | leader only: a follower's match index and how far it is behind the leader's last index (frozen while not leading) |
//! | `raft_elections_started_total`, `raft_elections_won_total`, `raft_pre_votes_started_total` | counter | | |
//! | `raft_proposals_total` | counter | | proposals the leader appended |
//! | `raft_proposals_failed_total` | counter | | proposals refused (not leader, too large) or whose outcome was lost |
//! | `raft_proposal_duration_seconds` | histogram | | appended to applied (the proposer's answer) |
//! | `raft_reads_total`, `raft_reads_failed_total` | counter | | `Node::read_index` calls answered, and failed |
//! | `raft_read_duration_seconds` | histogram | | a `Node::read_index` call |
//! | `raft_log_writes_total`, `raft_log_write_errors_total` | counter | | `LogStore::write` calls (each one sync) |
//! | `raft_log_write_duration_seconds` | histogram | | one `LogStore::write` (the sync) |
//! | `raft_log_write_entries` | histogram | | entries per write (group commit batch size) |
//! | `raft_applied_entries_total` | counter | | entries applied |
//! | `raft_apply_duration_seconds` | histogram | | one `StateMachine::apply` batch |
//! | `raft_snapshots_taken_total`, `raft_snapshot_taken_bytes_total` | counter | | durable snapshots of this node's state machine |
//! | `raft_snapshots_installed_total`, `raft_snapshot_installed_bytes_total` | counter | | snapshots received from a leader and installed |
//! | `raft_snapshots_sent_total` | counter | `peer` | snapshot transfers a follower completed |
//! | `raft_rpc_sent_total`, `raft_rpc_errors_total` | counter | `peer`, `rpc` | RPCs sent, and those that failed (unreachable, timed out, lost) |
//! | `raft_rpc_sent_bytes_total` | counter | `peer`, `rpc` | payload bytes sent (entries' sizes, snapshot chunks); the transport counts its own wire bytes |
//! | `raft_rpc_duration_seconds` | histogram | `peer`, `rpc` | round trip of an RPC that was answered |
//! | `raft_rpc_received_total` | counter | `peer`, `rpc` | inbound requests |
//! | `raft_malformed_messages_total` | counter | | inbound messages refused as malformed |
//! | `raft_node_failed` | gauge | `kind` | 1 once the node stopped on a fatal error of this kind (`storage`, `snapshot`, `state_machine`, `panicked`, `task_ended`) |
//!
//! `rpc` is one of `append_entries`, `request_vote`, `pre_vote`, `install_snapshot`,
//! `timeout_now`, `read_index`. Durations are measured on the runtime's monotonic clock
//! ([`Runtime::now`]), so a simulation records virtual time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ::metrics::{Counter, Gauge, Histogram, Label};

use crate::engine::{Engine, SentRequest};
use crate::error::FatalError;
use crate::message::RpcResponse;
use crate::network::NetworkError;
use crate::runtime::Runtime;
use crate::snapshot::chunk_len;
use crate::types::{NodeId, Role, Status};

/// The kinds of RPC, as the `rpc` label names them.
const RPC_KINDS: [&str; 6] =
    ["append_entries", "request_vote", "pre_vote", "install_snapshot", "timeout_now", "read_index"];

/// Most peers given their own `peer` label on inbound counters; requests from further senders
/// (which a transport should never let in) share the label `other`, so that the number of
/// series stays bounded.
const MAX_LABELLED_PEERS: usize = 256;

/// The name of the kind of `request`, as the `rpc` label names it (`"append_entries"`).
pub(crate) fn rpc_kind_name(request: &SentRequest) -> &'static str {
    RPC_KINDS[rpc_kind(request)]
}

fn rpc_kind(request: &SentRequest) -> usize {
    match request {
        SentRequest::AppendEntries { .. } => 0,
        SentRequest::RequestVote { pre_vote: false, .. } => 1,
        SentRequest::RequestVote { pre_vote: true, .. } => 2,
        SentRequest::InstallSnapshot { .. } => 3,
        SentRequest::TimeoutNow { .. } => 4,
        SentRequest::ReadIndex { .. } => 5,
    }
}

/// The handles of one node (shared by its tasks) and its clock.
pub(crate) struct NodeMetrics {
    labels: Vec<Label>,
    clock: Arc<dyn Runtime>,
    role: Gauge,
    term: Gauge,
    leader: Gauge,
    commit: Gauge,
    applied: Gauge,
    last_index: Gauge,
    quiesced: Gauge,
    elections_started: Counter,
    elections_won: Counter,
    pre_votes_started: Counter,
    malformed: Counter,
    pub(crate) proposals: Counter,
    pub(crate) proposals_failed: Counter,
    proposal_seconds: Histogram,
    reads: Counter,
    reads_failed: Counter,
    read_seconds: Histogram,
    log_writes: Counter,
    log_write_errors: Counter,
    log_write_seconds: Histogram,
    log_write_entries: Histogram,
    applied_entries: Counter,
    apply_seconds: Histogram,
    snapshots_taken: Counter,
    snapshot_taken_bytes: Counter,
    snapshots_installed: Counter,
    snapshot_installed_bytes: Counter,
}

impl std::fmt::Debug for NodeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeMetrics").field("labels", &self.labels).finish_non_exhaustive()
    }
}

impl NodeMetrics {
    /// Registers the node's handles with the installed recorder (if any): labels `node_id` and
    /// `extra`.
    pub(crate) fn new(id: NodeId, extra: &[(String, String)], clock: Arc<dyn Runtime>) -> Self {
        let mut labels = vec![Label::new("node_id", id.to_string())];
        labels.extend(extra.iter().map(|(k, v)| Label::new(k.clone(), v.clone())));
        let l = labels.clone();
        let gauge = |name: &'static str| ::metrics::gauge!(name, l.iter());
        let counter = |name: &'static str| ::metrics::counter!(name, l.iter());
        let histogram = |name: &'static str| ::metrics::histogram!(name, l.iter());
        Self {
            role: gauge("raft_role"),
            term: gauge("raft_term"),
            leader: gauge("raft_leader_id"),
            commit: gauge("raft_commit_index"),
            applied: gauge("raft_applied_index"),
            last_index: gauge("raft_last_log_index"),
            quiesced: gauge("raft_quiesced"),
            elections_started: counter("raft_elections_started_total"),
            elections_won: counter("raft_elections_won_total"),
            pre_votes_started: counter("raft_pre_votes_started_total"),
            malformed: counter("raft_malformed_messages_total"),
            proposals: counter("raft_proposals_total"),
            proposals_failed: counter("raft_proposals_failed_total"),
            proposal_seconds: histogram("raft_proposal_duration_seconds"),
            reads: counter("raft_reads_total"),
            reads_failed: counter("raft_reads_failed_total"),
            read_seconds: histogram("raft_read_duration_seconds"),
            log_writes: counter("raft_log_writes_total"),
            log_write_errors: counter("raft_log_write_errors_total"),
            log_write_seconds: histogram("raft_log_write_duration_seconds"),
            log_write_entries: histogram("raft_log_write_entries"),
            applied_entries: counter("raft_applied_entries_total"),
            apply_seconds: histogram("raft_apply_duration_seconds"),
            snapshots_taken: counter("raft_snapshots_taken_total"),
            snapshot_taken_bytes: counter("raft_snapshot_taken_bytes_total"),
            snapshots_installed: counter("raft_snapshots_installed_total"),
            snapshot_installed_bytes: counter("raft_snapshot_installed_bytes_total"),
            labels,
            clock,
        }
    }

    /// The runtime's monotonic clock.
    pub(crate) fn now(&self) -> Duration {
        self.clock.now()
    }

    fn labels_with(&self, more: &[(&'static str, String)]) -> Vec<Label> {
        let mut labels = self.labels.clone();
        labels.extend(more.iter().map(|(k, v)| Label::new(*k, v.clone())));
        labels
    }

    /// Records the node's status and the engine's counters (after every step of the main loop).
    pub(crate) fn step(&self, status: &Status, engine: &Engine) {
        let role = match status.role {
            Role::Follower => 0,
            Role::PreCandidate => 1,
            Role::Candidate => 2,
            Role::Leader => 3,
        };
        self.role.set(f64::from(role));
        self.term.set(status.current_term as f64);
        self.leader.set(status.leader_id.unwrap_or(0) as f64);
        self.commit.set(status.commit_index as f64);
        self.applied.set(status.applied_index as f64);
        self.last_index.set(status.last_log_index as f64);
        self.quiesced.set(f64::from(u8::from(status.quiesced)));
        let counters = engine.counters();
        self.elections_started.absolute(counters.elections_started);
        self.elections_won.absolute(counters.elections_won);
        self.pre_votes_started.absolute(counters.pre_votes_started);
        self.malformed.absolute(engine.malformed_count());
    }

    /// A `Node::read_index` call that started at `started` ended.
    pub(crate) fn read_done(&self, started: Duration, ok: bool) {
        if ok {
            self.reads.increment(1);
            self.read_seconds.record(self.now().saturating_sub(started));
        } else {
            self.reads_failed.increment(1);
        }
    }

    /// A `LogStore::write` of `entries` entries that started at `started` ended.
    pub(crate) fn log_write_done(
        &self,
        entries: usize,
        started: Duration,
        ended: Duration,
        ok: bool,
    ) {
        if ok {
            self.log_writes.increment(1);
            self.log_write_seconds.record(ended.saturating_sub(started));
            self.log_write_entries.record(entries as f64);
        } else {
            self.log_write_errors.increment(1);
        }
    }

    /// An apply batch of `entries` that started at `started` ended at `ended`.
    pub(crate) fn apply_done(&self, entries: usize, started: Duration, ended: Duration) {
        self.applied_entries.increment(entries as u64);
        self.apply_seconds.record(ended.saturating_sub(started));
    }

    /// A proposal appended at `proposed_at` was answered at `answered_at`.
    pub(crate) fn proposal_answered(&self, proposed_at: Duration, answered_at: Duration, ok: bool) {
        if ok {
            self.proposal_seconds.record(answered_at.saturating_sub(proposed_at));
        } else {
            self.proposals_failed.increment(1);
        }
    }

    /// A snapshot of `bytes` was taken (durable).
    pub(crate) fn snapshot_taken(&self, bytes: u64) {
        self.snapshots_taken.increment(1);
        self.snapshot_taken_bytes.increment(bytes);
    }

    /// A snapshot of `bytes` from the leader was installed (durable).
    pub(crate) fn snapshot_installed(&self, bytes: u64) {
        self.snapshots_installed.increment(1);
        self.snapshot_installed_bytes.increment(bytes);
    }

    /// The node stopped on `error`.
    pub(crate) fn failed(&self, error: &FatalError) {
        let kind = match error {
            FatalError::Storage(_) => "storage",
            FatalError::StateMachine(_) => "state_machine",
            FatalError::Snapshot(_) => "snapshot",
            FatalError::Panicked { .. } => "panicked",
            FatalError::TaskEnded(_) => "task_ended",
        };
        ::metrics::gauge!("raft_node_failed", self.labels_with(&[("kind", kind.into())]).iter())
            .set(1.0);
    }
}

/// The main loop's per-peer gauges and inbound counters, registered on first use.
pub(crate) struct LoopMetrics {
    pub(crate) node: Arc<NodeMetrics>,
    followers: BTreeMap<NodeId, (Gauge, Gauge)>,
    inbound: BTreeMap<Option<NodeId>, [Counter; RPC_KINDS.len()]>,
}

impl LoopMetrics {
    pub(crate) fn new(node: Arc<NodeMetrics>) -> Self {
        Self { node, followers: BTreeMap::new(), inbound: BTreeMap::new() }
    }

    /// Leader: records each follower's match index and lag (on ticks).
    pub(crate) fn replication(&mut self, engine: &Engine) {
        let last = engine.last_log_id().index;
        for peer in engine.replication() {
            let node = &self.node;
            let (matched, lag) = self.followers.entry(peer.id).or_insert_with(|| {
                let labels = node.labels_with(&[("peer", peer.id.to_string())]);
                (
                    ::metrics::gauge!("raft_follower_match_index", labels.iter()),
                    ::metrics::gauge!("raft_follower_lag_entries", labels.iter()),
                )
            });
            matched.set(peer.match_index as f64);
            lag.set(last.saturating_sub(peer.match_index) as f64);
        }
    }

    /// An inbound request of `kind` from `from`.
    pub(crate) fn received(&mut self, from: NodeId, request: &SentRequest) {
        let peer =
            if self.inbound.len() < MAX_LABELLED_PEERS || self.inbound.contains_key(&Some(from)) {
                Some(from)
            } else {
                None
            };
        let node = &self.node;
        let counters = self.inbound.entry(peer).or_insert_with(|| {
            let name = peer.map_or_else(|| "other".to_owned(), |p| p.to_string());
            RPC_KINDS.map(|kind| {
                let labels = node.labels_with(&[("peer", name.clone()), ("rpc", kind.into())]);
                ::metrics::counter!("raft_rpc_received_total", labels.iter())
            })
        });
        counters[rpc_kind(request)].increment(1);
    }
}

/// The handles of one peer's sender task.
pub(crate) struct PeerMetrics {
    node: Arc<NodeMetrics>,
    sent: [Counter; RPC_KINDS.len()],
    errors: [Counter; RPC_KINDS.len()],
    bytes: [Counter; RPC_KINDS.len()],
    seconds: [Histogram; RPC_KINDS.len()],
    snapshots_sent: Counter,
    chunk_bytes: u64,
}

impl PeerMetrics {
    /// The handles for RPCs to `peer`; `chunk_bytes` is the size of snapshot chunks.
    pub(crate) fn new(node: Arc<NodeMetrics>, peer: NodeId, chunk_bytes: u64) -> Self {
        let labels =
            |kind: &str| node.labels_with(&[("peer", peer.to_string()), ("rpc", kind.into())]);
        let sent = RPC_KINDS.map(|k| ::metrics::counter!("raft_rpc_sent_total", labels(k).iter()));
        let errors =
            RPC_KINDS.map(|k| ::metrics::counter!("raft_rpc_errors_total", labels(k).iter()));
        let bytes =
            RPC_KINDS.map(|k| ::metrics::counter!("raft_rpc_sent_bytes_total", labels(k).iter()));
        let seconds =
            RPC_KINDS.map(|k| ::metrics::histogram!("raft_rpc_duration_seconds", labels(k).iter()));
        let peer_labels = node.labels_with(&[("peer", peer.to_string())]);
        let snapshots_sent = ::metrics::counter!("raft_snapshots_sent_total", peer_labels.iter());
        Self { node, sent, errors, bytes, seconds, snapshots_sent, chunk_bytes }
    }

    /// The clock reading to pass to [`PeerMetrics::done`].
    pub(crate) fn now(&self) -> Duration {
        self.node.now()
    }

    /// An RPC is sent: `payload_bytes` of entries (AppendEntries; chunks are counted here).
    pub(crate) fn sending(&self, request: &SentRequest, payload_bytes: u64) {
        let kind = rpc_kind(request);
        self.sent[kind].increment(1);
        let bytes = match *request {
            SentRequest::InstallSnapshot { offset, size, .. } => {
                chunk_len(size, offset, self.chunk_bytes)
            }
            _ => payload_bytes,
        };
        if bytes > 0 {
            self.bytes[kind].increment(bytes);
        }
    }

    /// The RPC `request`, sent at `started`, ended with `result`.
    pub(crate) fn done(
        &self,
        request: &SentRequest,
        started: Duration,
        result: &Result<RpcResponse, NetworkError>,
    ) {
        let kind = rpc_kind(request);
        match result {
            Ok(response) => {
                self.seconds[kind].record(self.now().saturating_sub(started));
                let completes = matches!(response,
                    RpcResponse::InstallSnapshot(r) if r.complete && r.refusal.is_none());
                if completes {
                    self.snapshots_sent.increment(1);
                }
            }
            Err(_) => self.errors[kind].increment(1),
        }
    }
}
