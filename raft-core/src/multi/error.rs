//! Why a [`Host`](super::Host) could not add or remove a group.

use crate::error::StartError;
use crate::types::{GroupId, NodeId};

/// Why [`Host::add_group`](super::Host::add_group) added no group. Nothing of the group is left
/// behind: its id is free again.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AddGroupError {
    /// The host already has a group with this id (running, starting, stopped or failed):
    /// remove it first.
    #[error("group {group} is already hosted")]
    Duplicate {
        /// The group id asked for.
        group: GroupId,
    },
    /// The builder's `Config::id` is not the host's node id (every group of a host is the same
    /// node of its own cluster).
    #[error("the group's node id {builder} is not this host's node id {host}")]
    WrongNode {
        /// The host's node id.
        host: NodeId,
        /// The `Config::id` the builder was made with.
        builder: NodeId,
    },
    /// The host holds its maximum number of groups ([`Host::with_max_groups`](super::Host::with_max_groups)).
    #[error("the host holds its limit of {limit} groups")]
    TooManyGroups {
        /// The limit.
        limit: usize,
    },
    /// The node of the group failed to start (see [`StartError`]).
    #[error("group {group} failed to start: {error}")]
    Start {
        /// The group id asked for.
        group: GroupId,
        /// Why the node did not start.
        #[source]
        error: StartError,
    },
    /// Starting the node of the group panicked (in its log store, snapshot store or state
    /// machine, for example while restoring the latest snapshot). The host and its other groups
    /// are unaffected.
    #[error("starting group {group} panicked: {message}")]
    Panicked {
        /// The group id asked for.
        group: GroupId,
        /// The panic's message.
        message: String,
    },
}

/// Why [`Host::remove_group`](super::Host::remove_group) removed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RemoveGroupError {
    /// The host has no group with this id.
    #[error("group {group} is not hosted")]
    NotHosted {
        /// The group id asked for.
        group: GroupId,
    },
    /// The group is still being added (its `add_group` has not returned): remove it after.
    #[error("group {group} is still starting")]
    Starting {
        /// The group id asked for.
        group: GroupId,
    },
    /// Called from inside the group's own state machine (`apply`, `snapshot`, `restore`): its
    /// node cannot stop before that call returns, so the group cannot be removed from there.
    /// Nothing was done: the group runs on. Remove it from another task (spawned from the state
    /// machine, for instance), which waits until the call returned and the node stopped.
    #[error("group {group} cannot be removed from inside its own state machine")]
    InsideStateMachine {
        /// The group id asked for.
        group: GroupId,
    },
}
