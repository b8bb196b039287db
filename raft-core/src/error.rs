//! Errors returned by the node handle.

use crate::types::{LogIndex, NodeId, Term};

/// Why a proposal was not accepted or did not produce a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProposeError {
    /// This node is not the leader. Retry on `leader_hint` if it is known.
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader {
        /// The leader this node knows of, if any.
        leader_hint: Option<NodeId>,
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
}

/// Why an accepted proposal produced no response from the state machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProposalError {
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
    Storage(#[from] crate::storage::StorageError),
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
    Restore(#[from] crate::state_machine::StateMachineError),
}

/// Why a node stopped on its own (as opposed to by `shutdown`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FatalError {
    /// The log store failed: nothing more is acknowledged.
    #[error("log store failed: {0}")]
    Storage(String),
    /// The state machine failed to apply an entry, take a snapshot or restore one.
    #[error("state machine failed: {0}")]
    StateMachine(String),
    /// The snapshot store failed.
    #[error("snapshot store failed: {0}")]
    Snapshot(String),
}
