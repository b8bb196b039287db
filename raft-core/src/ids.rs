//! The identifiers and bounds of the Raft vocabulary (node, cluster and group ids, terms, log
//! indexes). Plain data that every other module may use; it uses none.

/// Identifies a node of the cluster. Ids are chosen by the application and must be unique and
/// stable: a node keeps its id across restarts.
pub type NodeId = u64;

/// Identifies one Raft cluster among others that may share a network: every request carries
/// the sender's (see [`Envelope`](crate::message::Envelope)) and a node answers only requests of
/// its own (`Config::cluster_id`).
pub type ClusterId = u64;

/// The cluster id of a configuration built by `Config::new`. Clusters that all use it accept
/// each other's requests (see `Config::cluster_id`): it suits a network with a single cluster.
pub const DEFAULT_CLUSTER_ID: ClusterId = 0;

/// Identifies one Raft group among several run by the same nodes (multi-raft). Today a node runs
/// one group, [`DEFAULT_GROUP_ID`]; the id is on every request so that a transport shared by
/// several groups can route by it without a new wire format.
pub type GroupId = u64;

/// The group of a node that runs a single Raft group (the default of `Config::group_id`).
pub const DEFAULT_GROUP_ID: GroupId = 0;

/// A Raft term (the paper's `currentTerm`). Terms only grow.
pub type Term = u64;

/// A position in the replicated log. The first entry has index 1; index 0 means "no entry".
pub type LogIndex = u64;

/// The largest term a node accepts in a message (2^63 - 1); a message carrying a larger one is
/// refused as malformed. A correct cluster never comes near it (each election raises the term by
/// one), and the bound leaves every term a node holds 2^63 increments away from overflowing.
pub const MAX_TERM: Term = u64::MAX >> 1;

/// The largest log index a node accepts in a message (2^63 - 1), for the same reason as
/// [`MAX_TERM`]: `index + 1` can never overflow.
pub const MAX_LOG_INDEX: LogIndex = u64::MAX >> 1;
