//! Errors: those returned by the node handle, and those the application's stores and state
//! machine return to it ([`StorageError`], [`StateMachineError`]). Plain data: this module uses
//! no trait module.

use std::sync::Arc;

use crate::membership::NodeInfo;
use crate::types::{LogIndex, NodeId, Term};

/// Why a proposal was not accepted or did not produce a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProposeError {
    /// This node is not the leader. Retry on `leader_id` if it is known.
    #[error("not the leader (known leader: {leader_id:?})")]
    NotLeader {
        /// The leader this node knows of, if any.
        leader_id: Option<NodeId>,
        /// That leader's metadata from the membership (its address, application data), if
        /// known: where to redirect a client.
        leader_info: Option<NodeInfo>,
    },
    /// The command is larger than `Config::max_payload_bytes`.
    #[error("command of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The command's size.
        size: u64,
        /// The configured limit.
        limit: u64,
    },
    /// The node is shutting down or has stopped.
    #[error("node is shut down")]
    Shutdown,
    /// Called inside this node's own state machine, where waiting would deadlock (see the
    /// re-entrancy rules of `StateMachine`).
    #[error("called inside the node's own state machine (it would wait for itself)")]
    InsideStateMachine,
}

/// Why an accepted proposal (one [`Node::propose`](crate::Node::propose) appended to the log)
/// produced no response from the state machine: it did not commit, or this node cannot tell
/// whether it did. The error of [`Proposal::response`](crate::Proposal::response); a refused
/// proposal fails with [`ProposeError`] instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommitError {
    /// Leadership changed and the entry was replaced by another leader's entry: it was not, and
    /// will never be, applied. The client may retry.
    #[error("entry {index} of term {term} was overwritten by a new leader")]
    Dropped {
        /// The index the entry had.
        index: LogIndex,
        /// The term the entry had.
        term: Term,
    },
    /// This node stopped being the leader before the entry committed. The entry may still
    /// commit under the next leader, or be overwritten: the outcome is unknown, so only retry
    /// commands that are safe to apply twice (or deduplicated, like the key-value example's
    /// client sessions).
    #[error("leadership lost before the entry committed (outcome unknown)")]
    LeadershipLost,
    /// The node stopped before the entry was applied. The entry may still commit on the other
    /// nodes; the outcome is unknown.
    #[error("node shut down before the entry was applied (outcome unknown)")]
    Shutdown,
    /// The response was awaited inside the proposing node's own state machine before the entry
    /// was applied: it would wait for itself. The entry may still commit and apply.
    #[error("response awaited inside the node's own state machine (it would wait for itself)")]
    InsideStateMachine,
}

/// Why [`Node::write`](crate::Node::write) produced no response: the proposal was refused, or
/// it was accepted and then failed (the two errors of `Node::propose` and `Proposal::response`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The proposal was not accepted: nothing was appended to the log.
    #[error(transparent)]
    Refused(#[from] ProposeError),
    /// The proposal was appended but produced no response (see [`CommitError`] for whether
    /// its outcome is known).
    #[error(transparent)]
    Failed(#[from] CommitError),
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The log store or the snapshot store could not be opened or read.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The log store was compacted past the latest snapshot (or without any snapshot in the
    /// snapshot store): the entries between them are lost, so the node cannot rebuild its state.
    #[error("the log starts after entry {purged:?} but the latest snapshot ends at {snapshot:?}")]
    LogAfterSnapshot {
        /// The last purged entry of the log store.
        purged: crate::types::LogId,
        /// The last entry of the latest snapshot (`None`: no snapshot).
        snapshot: Option<crate::types::LogId>,
    },
    /// The state machine failed to restore the latest snapshot.
    #[error("restoring the latest snapshot failed: {0}")]
    Restore(#[from] StateMachineError),
    /// The state machine says it applied `applied` (`StateMachine::applied_index`), but the
    /// stores hold no such entry: neither the stored log (which ends at `log_last`, after
    /// `purged`) nor the latest snapshot. The state machine and the stores do not belong
    /// together (or the log store lost entries it had made durable).
    #[error("the state machine applied {applied:?}, which the stores do not hold (log after {purged:?} up to {log_last:?}, snapshot {snapshot:?})")]
    AppliedNotStored {
        /// What the state machine says it applied.
        applied: crate::types::LogId,
        /// The last purged entry of the log store.
        purged: crate::types::LogId,
        /// The last entry of the log store.
        log_last: crate::types::LogId,
        /// The last entry of the latest snapshot, if any.
        snapshot: Option<crate::types::LogId>,
    },
    /// The transport carries requests of at most `limit` bytes (`Network::max_request_bytes`),
    /// but requests sized by the setting `setting` may need `needed` bytes: lower the setting or
    /// raise the transport's limit (raft-quic: `QuicConfig::max_frame_size`).
    #[error("requests sized by Config::{setting} may need {needed} bytes; the transport carries at most {limit}")]
    ExceedsTransport {
        /// The `Config` field that sizes the requests.
        setting: &'static str,
        /// The bytes such a request may need.
        needed: u64,
        /// The transport's limit.
        limit: u64,
    },
    /// `NodeBuilder::bootstrap` was refused; nothing was written.
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
}

/// Why `NodeBuilder::bootstrap` refused to write a cluster's first membership. Nothing was
/// written: the stores are as they were.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BootstrapError {
    /// The stores already hold a membership (in the log or in a snapshot): this node was
    /// bootstrapped before, or joined a cluster. Start it without `bootstrap`.
    #[error("the node is already initialized (its stores hold a membership)")]
    AlreadyInitialized,
    /// The stores hold a term, a vote or log entries but no membership: the node has taken part
    /// in a cluster (voted, or was receiving its log), so founding a new one here could contradict
    /// what it promised. Start it without `bootstrap`, or on empty stores.
    #[error("the stores are not empty (term {current_term}, last log index {last_index})")]
    NotEmpty {
        /// The term the log store holds.
        current_term: Term,
        /// The last index of its log (or of its purged prefix).
        last_index: LogIndex,
    },
    /// The membership does not make this node a voter: a node can only found a cluster it
    /// votes in.
    #[error("node {0} is not a voter of the membership it was asked to bootstrap")]
    NotAVoter(NodeId),
    /// The membership is not a valid first membership (a joint one, or one that breaks the
    /// membership's bounds or invariants).
    #[error("invalid bootstrap membership: {0}")]
    Invalid(#[from] crate::membership::InvalidChange),
}

/// Why a node stopped on its own (as opposed to by `shutdown`).
///
/// The error of a store or of the state machine is kept whole (shared, as every caller of
/// [`Node::fatal_error`](crate::Node::fatal_error) gets a clone): match on the variant, then on
/// the inner error. `std::error::Error::source` returns that inner error itself (downcast it to
/// [`StorageError`] or [`StateMachineError`]); the message includes the inner error's.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum FatalError {
    /// The log store failed (a write, or a read the node needed): nothing more is acknowledged.
    Storage(Arc<StorageError>),
    /// The state machine failed to apply an entry, take a snapshot or restore one (or broke
    /// its contract, such as returning fewer responses than entries).
    StateMachine(Arc<StateMachineError>),
    /// The snapshot store failed, or the log store while installing a snapshot or compacting
    /// the log behind one.
    Snapshot(Arc<StorageError>),
    /// A task of the node panicked (in the state machine, a store, the network or the node
    /// itself): the node stopped, as after any other fatal error.
    Panicked {
        /// The task that panicked ("applier", "log writer", "sender to peer 2", ...).
        task: String,
        /// The panic's message.
        message: String,
    },
    /// A task of the node ended without saying why (it should not happen: every task reports
    /// its failure): the node stopped rather than run without it.
    TaskEnded(String),
}

impl std::fmt::Display for FatalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Storage(error) => write!(f, "log store failed: {error}"),
            Self::StateMachine(error) => write!(f, "state machine failed: {error}"),
            Self::Snapshot(error) => write!(f, "snapshot store failed: {error}"),
            Self::Panicked { task, message } => write!(f, "the node's {task} panicked: {message}"),
            Self::TaskEnded(task) => write!(f, "the node's {task} ended unexpectedly"),
        }
    }
}

impl std::error::Error for FatalError {
    /// The store's or the state machine's error itself (not the `Arc` around it).
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Storage(error) | Self::Snapshot(error) => Some(&**error),
            Self::StateMachine(error) => Some(&**error),
            Self::Panicked { .. } | Self::TaskEnded(_) => None,
        }
    }
}

/// Why [`Node::snapshot`](crate::Node::snapshot) returned no snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The node is shutting down or has stopped, before the snapshot was taken. A snapshot that
    /// fails stops the node: [`Node::fatal_error`](crate::Node::fatal_error) then says why.
    #[error("node is shut down")]
    Shutdown,
    /// Called inside this node's own state machine, where waiting would deadlock (the snapshot
    /// is taken on the apply path; see the re-entrancy rules of `StateMachine`).
    #[error("called inside the node's own state machine (it would wait for itself)")]
    InsideStateMachine,
}

/// Why [`Node::read_index`](crate::Node::read_index) produced no read index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadIndexError {
    /// No leader is known, or the node asked is not the leader. Retry on `leader_id`.
    #[error("not the leader (known leader: {leader_id:?})")]
    NotLeader {
        /// The leader this node knows of, if any.
        leader_id: Option<NodeId>,
        /// That leader's metadata from the membership (its address, application data), if
        /// known: where to redirect a client.
        leader_info: Option<NodeInfo>,
    },
    /// The leader holds `Config::max_pending_reads` reads already; retry shortly.
    #[error("too many reads pending on the leader")]
    Backlogged,
    /// The leader stepped down before confirming its leadership; retry on the new leader.
    #[error("leadership lost before the read was confirmed")]
    LeadershipLost,
    /// The leader could not be reached.
    #[error("the leader could not be reached")]
    Unreachable,
    /// The node is shutting down or has stopped.
    #[error("node is shut down")]
    Shutdown,
    /// Called inside this node's own state machine, where waiting would deadlock (see the
    /// re-entrancy rules of `StateMachine`).
    #[error("called inside the node's own state machine (it would wait for itself)")]
    InsideStateMachine,
}

/// Why a membership change failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    /// This node is not the leader. Retry on `leader_id` if it is known.
    #[error("not the leader (known leader: {leader_id:?})")]
    NotLeader {
        /// The leader this node knows of, if any.
        leader_id: Option<NodeId>,
        /// That leader's metadata from the membership (its address, application data), if
        /// known: where to redirect a client.
        leader_info: Option<NodeInfo>,
    },
    /// Another membership change is not complete yet (or the leader has not committed an entry
    /// of its own term yet), and that did not change within the wait of
    /// `Node::change_membership` (an election timeout): the cluster is probably unhealthy.
    #[error("another membership change is in progress")]
    ChangeInProgress,
    /// A leadership transfer is in progress. Retry once it ends.
    #[error("a leadership transfer is in progress")]
    TransferInProgress,
    /// The change does not apply to the current membership, or the target is invalid.
    #[error(transparent)]
    Invalid(#[from] crate::membership::InvalidChange),
    /// A learner to promote is too far behind the leader's commit index (or has not answered
    /// the leader yet); retry once it caught up (or use `Node::add_voter` or
    /// `Node::set_membership`, which wait).
    #[error(
        "learner {learner} holds entries up to {match_index}, the commit index is {commit_index}"
    )]
    LearnerBehind {
        /// The learner.
        learner: NodeId,
        /// The last entry the learner is known to hold.
        match_index: LogIndex,
        /// The leader's commit index.
        commit_index: LogIndex,
    },
    /// A learner did not catch up within the time given to `Node::add_voter` or
    /// `Node::set_membership`; it stays a learner.
    #[error("the learner did not catch up in time")]
    CatchUpTimeout,
    /// A learner did not catch up within the time given to `Node::add_voter` or
    /// `Node::set_membership` because it refuses the leader's requests: it refused the latest
    /// one with `refusal`, typically `RpcError::WrongCluster` (it runs with another
    /// `Config::cluster_id`), `WrongNode` (its address reaches another node) or `WrongGroup`.
    /// It stays a learner: fix its configuration or address, or remove it.
    /// ([`CatchUpTimeout`](Self::CatchUpTimeout) when it is slow or unreachable instead.)
    #[error(
        "learner {learner} did not catch up in time: it refuses the leader's requests: {refusal}"
    )]
    LearnerRefuses {
        /// The learner.
        learner: NodeId,
        /// The learner's refusal of the leader's latest request, as the leader's transport
        /// reported it: typically [`RefusalReason::Rpc`](crate::RefusalReason::Rpc) with the
        /// learner's `RpcError`.
        refusal: crate::network::RefusalReason,
    },
    /// `Node::add_voter`: the learner can never catch up as it runs: it needs a snapshot (the
    /// leader compacted the entries it lacks) and refused it for a reason a retry does not fix
    /// (it has no snapshot store). It stays a learner: restart it with a snapshot store, or
    /// remove it.
    #[error("node {id} cannot catch up: {reason}")]
    SnapshotRefused {
        /// The learner.
        id: NodeId,
        /// Why it refused the snapshot.
        reason: crate::types::SnapshotFailure,
    },
    /// The change was appended but its outcome is unknown or it was overwritten.
    #[error(transparent)]
    Commit(#[from] CommitError),
    /// The node is shutting down or has stopped.
    #[error("node is shut down")]
    Shutdown,
    /// Called inside this node's own state machine, where waiting would deadlock (see the
    /// re-entrancy rules of `StateMachine`).
    #[error("called inside the node's own state machine (it would wait for itself)")]
    InsideStateMachine,
}

/// Why a leadership transfer failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// This node is not the leader. Ask `leader_id` if it is known.
    #[error("not the leader (known leader: {leader_id:?})")]
    NotLeader {
        /// The leader this node knows of, if any.
        leader_id: Option<NodeId>,
        /// That leader's metadata from the membership (its address, application data), if
        /// known: where to redirect a client.
        leader_info: Option<NodeInfo>,
    },
    /// The target is not a voter.
    #[error("node {0} is not a voter")]
    NotVoter(NodeId),
    /// A transfer to another node is in progress.
    #[error("a transfer to node {0} is in progress")]
    InProgress(NodeId),
    /// The target did not become leader within `Config::leadership_transfer_timeout`. This
    /// node may still be the leader (it takes proposals again) or another node may have won.
    #[error("the transfer did not complete in time (leader now: {leader_id:?})")]
    TimedOut {
        /// The leader this node knows of now.
        leader_id: Option<NodeId>,
    },
    /// The node is shutting down or has stopped.
    #[error("node is shut down")]
    Shutdown,
}

/// An error from a [`LogStore`](crate::LogStore).
///
/// After any error the node stops: it cannot know what became durable, so it accepts no more
/// writes and acknowledges nothing more (it never "retries" around a failed sync).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// An I/O error from the operating system (disk full, permission, hardware).
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Stored data could not be decoded or violates the store's invariants.
    #[error("corrupt log store: {0}")]
    Corrupt(String),
    /// The store was written by an incompatible version of its format.
    #[error("unsupported log store format version {found} (this build reads {supported})")]
    UnsupportedVersion {
        /// The version found on disk.
        found: u32,
        /// The version this build understands.
        supported: u32,
    },
    /// The request is not valid for the store's state (a gap in the log, a read of purged entries,
    /// a truncation below the first index...). This is a bug in the caller.
    #[error("invalid log store request: {0}")]
    InvalidRequest(String),
    /// The store has been closed or has stopped after an earlier error.
    #[error("log store is closed")]
    Closed,
    /// The store does not implement this operation (for example [`LogStore::reset`](crate::LogStore::reset) on a store
    /// written before snapshots existed).
    #[error("unsupported by this store: {0}")]
    Unsupported(String),
    /// Any other error of a particular store.
    #[error("log store error: {0}")]
    Other(String),
}

/// An error from a [`StateMachine`](crate::StateMachine). The node stops applying and shuts down: entries must apply in
/// order, so it cannot skip the one that failed.
#[derive(Debug, thiserror::Error)]
#[error("state machine error: {message}")]
#[non_exhaustive]
pub struct StateMachineError {
    /// What went wrong.
    pub message: String,
    /// The underlying error, if any (`std::error::Error::source` returns it).
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl StateMachineError {
    /// Creates an error with a message.
    pub fn new(message: impl Into<String>) -> Self {
        Self { message: message.into(), source: None }
    }

    /// Creates an error with a message and the error that caused it (kept as its source, so
    /// callers can walk the chain or downcast it).
    pub fn with_source(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self { message: message.into(), source: Some(Box::new(source)) }
    }
}
