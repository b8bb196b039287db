//! Cluster membership: who votes, who only learns, what each member's metadata is, and how that
//! changes.
//!
//! A [`Membership`] holds one voter set, or two during a *joint* change (Raft thesis §4.3): the
//! voters of the configuration being left ([`Membership::outgoing_voters`]) and those of the
//! configuration being entered ([`Membership::voters`]). Every quorum question (commitment,
//! elections and pre-votes, CheckQuorum, ReadIndex rounds, lease acknowledgements) is answered by
//! one function, [`Membership::agreed_value`], which needs a majority of *every* voter set. Each
//! member (voter or learner) has a [`NodeInfo`]: opaque bytes that travel with the membership,
//! an address for the transport and data for the application.
//!
//! The membership lives in the replicated log as [`EntryPayload::Membership`] entries and in
//! snapshots ([`SnapshotMeta::membership`]). A node uses the latest membership in its log as soon
//! as the entry is appended, committed or not, and falls back to the one before it if the entry
//! is overwritten. A node whose log and snapshot hold no membership has no members: it never
//! campaigns and waits for a leader to send it the log. A new cluster gets its first membership
//! from [`NodeBuilder::bootstrap`], which writes it as the first entry of the log of its founding
//! node(s), once.
//!
//! **Changes.** A change that keeps the voters (adding or removing a learner, new metadata) is
//! one entry. A change of the voters, of any size, goes through a joint configuration: the leader
//! appends the membership with both voter sets, and once that entry is committed it appends the
//! target by itself (so does any later leader that finds a committed joint membership in its
//! log). While the joint membership is in force, elections and commitment need a majority of the
//! old voters and a majority of the new ones, so no two leaders can be elected in one term and
//! nothing committed can be lost across the change. A leader proposes a change only after an
//! entry of its own term is committed and while no other change is in progress (the fix to the
//! single-server algorithm described on raft-dev in 2015), and new voters must have caught up as
//! learners first, so that a change never waits for a node that cannot vote yet.
//!
//! **Format.** The serde form of a membership is versioned (an enum whose one variant is format
//! 2), so that later formats can be told apart. Format 1 (voters and learners only, no joint
//! sets, no metadata) was written by earlier builds as a bare struct inside
//! [`EntryPayload::Membership`]; entries of that format still decode (see [`EntryPayload`]).
//!
//! [`EntryPayload`]: crate::EntryPayload
//! [`EntryPayload::Membership`]: crate::EntryPayload::Membership
//! [`SnapshotMeta::membership`]: crate::SnapshotMeta::membership
//! [`NodeBuilder::bootstrap`]: crate::NodeBuilder::bootstrap

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ids::NodeId;

/// The most members (voters and learners) a membership may name: a leader keeps replication
/// state for each of them.
pub const MAX_MEMBERS: usize = 8_192;

/// The most bytes of one member's [`NodeInfo`] (address and data together).
pub const MAX_NODE_INFO_BYTES: usize = 16 * 1024;

/// The most bytes a whole membership may take, as counted by [`Membership::size_bytes`]: it is
/// carried by membership entries and every snapshot's metadata.
pub const MAX_MEMBERSHIP_BYTES: u64 = 1 << 20;

/// Bytes charged to each member on top of its metadata (its id and the lengths).
const MEMBER_OVERHEAD_BYTES: u64 = 16;

/// What the cluster knows about one member, replicated with the membership.
///
/// Both fields are opaque to Raft. `address` is for the transport (raft-quic reads a
/// `host:port` string; an in-memory network ignores it; empty means "not given": a transport then
/// keeps whatever address it knew); `data` is for the application (the key-value example keeps
/// its client address there). Together at most [`MAX_NODE_INFO_BYTES`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NodeInfo {
    /// How the transport reaches the node.
    pub address: Bytes,
    /// Application data about the node.
    pub data: Bytes,
}

impl NodeInfo {
    /// Metadata with `address` and `data`.
    pub fn new(address: impl Into<Bytes>, data: impl Into<Bytes>) -> Self {
        Self { address: address.into(), data: data.into() }
    }

    /// Metadata with `address` and no application data.
    pub fn with_address(address: impl Into<Bytes>) -> Self {
        Self::new(address, Bytes::new())
    }

    /// The bytes it holds (address and data).
    pub fn len(&self) -> usize {
        self.address.len().saturating_add(self.data.len())
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The members of the cluster at one point of the log: one voter set, or two during a joint
/// change, the learners, and every member's [`NodeInfo`].
///
/// Invariants, kept by every constructor and checked when decoding: every voter (of either set)
/// and every learner has metadata, and nothing else has; learners are not voters of the new set
/// (a voter of the outgoing set may be a learner of the new one: it is being demoted); a joint
/// membership has voters in both sets; at most [`MAX_MEMBERS`] members, [`MAX_NODE_INFO_BYTES`]
/// per member and [`MAX_MEMBERSHIP_BYTES`] in all. The empty membership (no member at all) is
/// the one of a node that waits to join a cluster.
///
/// A membership is immutable and shares its parts: cloning it is one reference count, and it
/// takes one pointer inside an [`EntryPayload`](crate::EntryPayload), so entries stay small
/// (every log push, store append, AppendEntries and apply moves them).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Membership {
    /// Compared by pointer first (`Arc`'s equality for `Eq` types), then by value.
    parts: Arc<Parts>,
}

/// What a [`Membership`] holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct Parts {
    /// The voters of the configuration in force, or being entered during a joint change.
    voters: BTreeSet<NodeId>,
    /// During a joint change, the voters of the configuration being left; empty otherwise.
    outgoing: BTreeSet<NodeId>,
    /// The learners (of the configuration being entered, during a joint change).
    learners: BTreeSet<NodeId>,
    /// The metadata of every member.
    nodes: BTreeMap<NodeId, NodeInfo>,
}

/// One step of a membership change, relative to the membership in force when the leader takes
/// it (see `Node::change_membership`; `Node::set_membership` moves to any membership at once).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum MembershipChange {
    /// Adds a node as a learner, with its metadata: the leader starts replicating to it.
    AddLearner(NodeId, NodeInfo),
    /// Makes a learner a voter (through a joint configuration). The leader refuses until the
    /// learner has answered its replication and while it is more than
    /// `Config::max_promotion_lag_entries` behind the commit index, so that a new voter never
    /// stalls commitment while it catches up.
    PromoteLearner(NodeId),
    /// Removes a voter (through a joint configuration) or a learner. Removing the leader is
    /// allowed: it keeps leading until the change is complete, then hands over.
    RemoveNode(NodeId),
    /// Replaces a member's metadata.
    SetNodeInfo(NodeId, NodeInfo),
}

impl MembershipChange {
    /// The node the change is about.
    pub fn node(&self) -> NodeId {
        match *self {
            MembershipChange::AddLearner(id, _)
            | MembershipChange::PromoteLearner(id)
            | MembershipChange::RemoveNode(id)
            | MembershipChange::SetNodeInfo(id, _) => id,
        }
    }
}

/// Why a membership cannot be built, or a change cannot be applied to one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidChange {
    /// `AddLearner` of a node that is already a voter or a learner.
    #[error("node {0} is already a member")]
    AlreadyMember(NodeId),
    /// `PromoteLearner` of a node that is not a learner.
    #[error("node {0} is not a learner")]
    NotLearner(NodeId),
    /// `RemoveNode` or `SetNodeInfo` of a node that is not a member, or metadata given for a
    /// node that is not a member.
    #[error("node {0} is not a member")]
    NotMember(NodeId),
    /// Removing the only voter would leave a cluster that can never commit again.
    #[error("node {0} is the last voter")]
    LastVoter(NodeId),
    /// A membership (or a change's target) without any voter.
    #[error("a membership needs at least one voter")]
    NoVoters,
    /// A node named both as a voter and as a learner.
    #[error("node {0} is named both as a voter and as a learner")]
    VoterIsLearner(NodeId),
    /// A node named as a member without metadata, that the membership it starts from does not
    /// know either.
    #[error("node {0} is unknown: it is not a member and no metadata was given for it")]
    UnknownNode(NodeId),
    /// More than [`MAX_MEMBERS`] members.
    #[error("{0} members exceed the limit of {MAX_MEMBERS}")]
    TooManyMembers(usize),
    /// A member's metadata exceeds [`MAX_NODE_INFO_BYTES`].
    #[error("the metadata of node {0} exceeds {MAX_NODE_INFO_BYTES} bytes")]
    NodeInfoTooLarge(NodeId),
    /// The whole membership exceeds [`MAX_MEMBERSHIP_BYTES`].
    #[error("the membership takes {0} bytes, more than {MAX_MEMBERSHIP_BYTES}")]
    TooLarge(u64),
    /// A joint membership where a single configuration is needed (a change's target), or a
    /// joint membership with an empty voter set.
    #[error("a joint membership cannot be a target, and needs voters in both of its sets")]
    Joint,
}

impl Membership {
    /// A membership of `voters` and no learners, with empty metadata (e.g. to bootstrap a
    /// cluster whose transport knows the addresses otherwise). Empty `voters` gives the empty
    /// membership.
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Self {
        let voters: BTreeSet<NodeId> = voters.into_iter().collect();
        let nodes = voters.iter().map(|&id| (id, NodeInfo::default())).collect();
        Self::of(Parts { voters, outgoing: BTreeSet::new(), learners: BTreeSet::new(), nodes })
    }

    /// A membership of `voters` and `learners`, each with its metadata. Fails if there is no
    /// voter, a node is named twice, or a bound is exceeded.
    pub fn new(
        voters: impl IntoIterator<Item = (NodeId, NodeInfo)>,
        learners: impl IntoIterator<Item = (NodeId, NodeInfo)>,
    ) -> Result<Self, InvalidChange> {
        let mut parts = Parts::default();
        for (id, info) in voters {
            parts.voters.insert(id);
            parts.nodes.insert(id, info);
        }
        for (id, info) in learners {
            if parts.nodes.insert(id, info).is_some() {
                return Err(InvalidChange::VoterIsLearner(id));
            }
            parts.learners.insert(id);
        }
        let membership = Self::of(parts);
        membership.check_target()?;
        Ok(membership)
    }

    /// A membership of `voters` and `learners` with empty metadata (see [`Membership::new`]).
    pub fn from_ids(
        voters: impl IntoIterator<Item = NodeId>,
        learners: impl IntoIterator<Item = NodeId>,
    ) -> Result<Self, InvalidChange> {
        let empty = |id| (id, NodeInfo::default());
        Self::new(voters.into_iter().map(empty), learners.into_iter().map(empty))
    }

    /// A membership from its parts, as a store that keeps its own record format decodes it:
    /// the (incoming) `voters`, the `outgoing` voters (empty unless joint), the `learners` and
    /// every member's metadata. Fails unless they satisfy the invariants (see the type's docs);
    /// the empty membership is valid.
    pub fn from_parts(
        voters: BTreeSet<NodeId>,
        outgoing: BTreeSet<NodeId>,
        learners: BTreeSet<NodeId>,
        nodes: BTreeMap<NodeId, NodeInfo>,
    ) -> Result<Self, InvalidChange> {
        let membership = Self::of(Parts { voters, outgoing, learners, nodes });
        membership.check()?;
        Ok(membership)
    }

    /// A target built from this membership: exactly `voters` vote and exactly `learners` learn.
    /// Each of them keeps its metadata here, or takes it from `new_nodes` (which wins for a node
    /// in both). Fails with [`InvalidChange::UnknownNode`] for a node that is neither a member
    /// here nor in `new_nodes`, and with [`InvalidChange::NotMember`] for metadata of a node the
    /// target does not name.
    pub fn target(
        &self,
        voters: impl IntoIterator<Item = NodeId>,
        learners: impl IntoIterator<Item = NodeId>,
        new_nodes: impl IntoIterator<Item = (NodeId, NodeInfo)>,
    ) -> Result<Membership, InvalidChange> {
        let mut given: BTreeMap<NodeId, NodeInfo> = new_nodes.into_iter().collect();
        let mut info = |id: NodeId| match given.remove(&id) {
            Some(info) => Ok((id, info)),
            None => self
                .parts
                .nodes
                .get(&id)
                .map(|i| (id, i.clone()))
                .ok_or(InvalidChange::UnknownNode(id)),
        };
        let voters: Vec<_> = voters.into_iter().map(&mut info).collect::<Result<_, _>>()?;
        let learners: Vec<_> = learners.into_iter().map(&mut info).collect::<Result<_, _>>()?;
        if let Some(&id) = given.keys().next() {
            return Err(InvalidChange::NotMember(id));
        }
        Self::new(voters, learners)
    }

    /// The voters of the configuration in force, or, during a joint change, of the
    /// configuration being entered (those who vote once the change is complete).
    pub fn voters(&self) -> &BTreeSet<NodeId> {
        &self.parts.voters
    }

    /// During a joint change, the voters of the configuration being left; empty otherwise.
    pub fn outgoing_voters(&self) -> &BTreeSet<NodeId> {
        &self.parts.outgoing
    }

    /// Whether this is a joint membership (two voter sets).
    pub fn is_joint(&self) -> bool {
        !self.parts.outgoing.is_empty()
    }

    /// Every node that votes now: the voters of both sets during a joint change.
    pub fn all_voters(&self) -> BTreeSet<NodeId> {
        self.parts.voters.union(&self.parts.outgoing).copied().collect()
    }

    /// The learners (during a joint change, of the configuration being entered: a voter of the
    /// outgoing set that stays as a learner is listed here and still votes until the change is
    /// complete).
    pub fn learners(&self) -> &BTreeSet<NodeId> {
        &self.parts.learners
    }

    /// Whether `id` votes now (in either set during a joint change).
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.parts.voters.contains(&id) || self.parts.outgoing.contains(&id)
    }

    /// Whether `id` is a member that does not vote now.
    pub fn is_learner(&self, id: NodeId) -> bool {
        self.parts.learners.contains(&id) && !self.parts.outgoing.contains(&id)
    }

    /// Whether `id` is a voter or a learner.
    pub fn contains(&self, id: NodeId) -> bool {
        self.parts.nodes.contains_key(&id)
    }

    /// Every member, voters and learners, in increasing id order.
    pub fn members(&self) -> BTreeSet<NodeId> {
        self.parts.nodes.keys().copied().collect()
    }

    /// The metadata of every member.
    pub fn nodes(&self) -> &BTreeMap<NodeId, NodeInfo> {
        &self.parts.nodes
    }

    /// The metadata of member `id`.
    pub fn node(&self, id: NodeId) -> Option<&NodeInfo> {
        self.parts.nodes.get(&id)
    }

    /// The voter sets: one, or two during a joint change (the new set first).
    fn voter_sets(&self) -> impl Iterator<Item = &BTreeSet<NodeId>> {
        std::iter::once(&self.parts.voters)
            .chain(Some(&self.parts.outgoing).filter(|s| !s.is_empty()))
    }

    /// **The quorum rule.** Given each voter's value (a match index, an acknowledged round, 1 for
    /// a granted vote), the largest value that a quorum has reached: for each voter set, the
    /// highest value held by a majority of it, and the smallest of those (a joint membership
    /// needs a majority of both sets). 0 without voters.
    pub fn agreed_value(&self, value_of: impl Fn(NodeId) -> u64) -> u64 {
        let mut agreed = u64::MAX;
        let mut values = Vec::new();
        for set in self.voter_sets() {
            values.clear();
            values.extend(set.iter().map(|&id| value_of(id)));
            if values.is_empty() {
                return 0;
            }
            values.sort_unstable_by(|a, b| b.cmp(a));
            // A majority of n is n / 2 + 1 voters: the (n / 2)-th largest value is held by one.
            agreed = agreed.min(values[values.len() / 2]);
        }
        agreed
    }

    /// Whether the voters for which `yes` holds form a quorum (a majority of every voter set):
    /// [`Membership::agreed_value`] of 0 and 1.
    pub fn has_quorum(&self, yes: impl Fn(NodeId) -> bool) -> bool {
        self.agreed_value(|id| u64::from(yes(id))) == 1
    }

    /// The membership this one moves to: itself, or for a joint membership the configuration
    /// being entered (the outgoing voters dropped, and their metadata unless they stay as
    /// learners).
    pub fn finalized(&self) -> Membership {
        if !self.is_joint() {
            return self.clone();
        }
        let keep = |id: &NodeId| self.parts.voters.contains(id) || self.parts.learners.contains(id);
        Self::of(Parts {
            voters: self.parts.voters.clone(),
            outgoing: BTreeSet::new(),
            learners: self.parts.learners.clone(),
            nodes: self
                .parts
                .nodes
                .iter()
                .filter(|(id, _)| keep(id))
                .map(|(&id, i)| (id, i.clone()))
                .collect(),
        })
    }

    /// The joint membership from this (single) configuration to `target` (also single): the
    /// current voters as the outgoing set, `target`'s voters and learners, and the metadata of
    /// both (`target`'s where both have some).
    pub(crate) fn joint_to(&self, target: &Membership) -> Membership {
        let mut nodes = self.parts.nodes.clone();
        nodes.retain(|id, _| self.parts.voters.contains(id));
        nodes.extend(target.parts.nodes.iter().map(|(&id, info)| (id, info.clone())));
        Self::of(Parts {
            voters: target.parts.voters.clone(),
            outgoing: self.parts.voters.clone(),
            learners: target.parts.learners.clone(),
            nodes,
        })
    }

    /// The membership after `change`, as a single configuration (for a joint membership,
    /// applied to the configuration being entered), or why the change does not apply.
    pub fn apply(&self, change: MembershipChange) -> Result<Membership, InvalidChange> {
        let mut next = self.finalized();
        let parts = Arc::make_mut(&mut next.parts);
        match change {
            MembershipChange::AddLearner(id, info) => {
                if parts.nodes.contains_key(&id) {
                    return Err(InvalidChange::AlreadyMember(id));
                }
                parts.learners.insert(id);
                parts.nodes.insert(id, info);
            }
            MembershipChange::PromoteLearner(id) => {
                if !parts.learners.remove(&id) {
                    return Err(InvalidChange::NotLearner(id));
                }
                parts.voters.insert(id);
            }
            MembershipChange::RemoveNode(id) => {
                if parts.voters.len() == 1 && parts.voters.contains(&id) {
                    return Err(InvalidChange::LastVoter(id));
                }
                if !(parts.voters.remove(&id) || parts.learners.remove(&id)) {
                    return Err(InvalidChange::NotMember(id));
                }
                parts.nodes.remove(&id);
            }
            MembershipChange::SetNodeInfo(id, info) => match parts.nodes.get_mut(&id) {
                Some(slot) => *slot = info,
                None => return Err(InvalidChange::NotMember(id)),
            },
        }
        next.check_target()?;
        Ok(next)
    }

    /// The bytes this membership is charged against byte budgets: each member's metadata plus
    /// 16 bytes per member and per entry of the voter and learner sets (at least its postcard
    /// encoding, minus a few bytes of lengths and tags).
    pub fn size_bytes(&self) -> u64 {
        let entries = self.parts.nodes.len()
            + self.parts.voters.len()
            + self.parts.outgoing.len()
            + self.parts.learners.len();
        let info: u64 = self.parts.nodes.values().map(|i| i.len() as u64).sum();
        info.saturating_add(MEMBER_OVERHEAD_BYTES * entries as u64)
    }

    /// Checks the invariants (see the type's docs): what decoding and the engine's validation
    /// of memberships from the wire rely on.
    pub fn check(&self) -> Result<(), InvalidChange> {
        if self.parts.nodes.len() > MAX_MEMBERS {
            return Err(InvalidChange::TooManyMembers(self.parts.nodes.len()));
        }
        if self.is_joint() && self.parts.voters.is_empty() {
            return Err(InvalidChange::Joint);
        }
        if let Some(&id) = self.parts.learners.intersection(&self.parts.voters).next() {
            return Err(InvalidChange::VoterIsLearner(id));
        }
        let named =
            self.parts.voters.iter().chain(&self.parts.outgoing).chain(&self.parts.learners);
        if let Some(&id) = named.clone().find(|id| !self.parts.nodes.contains_key(id)) {
            return Err(InvalidChange::UnknownNode(id));
        }
        let named: BTreeSet<NodeId> = named.copied().collect();
        if let Some(&id) = self.parts.nodes.keys().find(|id| !named.contains(id)) {
            return Err(InvalidChange::NotMember(id));
        }
        if let Some((&id, _)) = self.parts.nodes.iter().find(|(_, i)| i.len() > MAX_NODE_INFO_BYTES)
        {
            return Err(InvalidChange::NodeInfoTooLarge(id));
        }
        match self.size_bytes() {
            size if size > MAX_MEMBERSHIP_BYTES => Err(InvalidChange::TooLarge(size)),
            _ => Ok(()),
        }
    }

    /// Checks that this is a valid single configuration with a voter: what a change may target.
    pub(crate) fn check_target(&self) -> Result<(), InvalidChange> {
        if self.is_joint() {
            return Err(InvalidChange::Joint);
        }
        if self.parts.voters.is_empty() {
            return Err(InvalidChange::NoVoters);
        }
        self.check()
    }

    /// A membership from its parts, unchecked: for tests that need malformed memberships.
    #[cfg(test)]
    pub(crate) fn from_parts_unchecked(
        voters: BTreeSet<NodeId>,
        outgoing: BTreeSet<NodeId>,
        learners: BTreeSet<NodeId>,
        nodes: BTreeMap<NodeId, NodeInfo>,
    ) -> Self {
        Self::of(Parts { voters, outgoing, learners, nodes })
    }

    /// A membership of `parts` (unchecked: every caller checks or builds valid parts).
    fn of(parts: Parts) -> Self {
        Self { parts: Arc::new(parts) }
    }
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Parts { voters, outgoing, learners, nodes } = &*self.parts;
        f.debug_struct("Membership")
            .field("voters", voters)
            .field("outgoing", outgoing)
            .field("learners", learners)
            .field("nodes", nodes)
            .finish()
    }
}

/// The serde form of a membership: an enum, so that a later format is a new variant. Variant 0
/// is format 2 (format 1 is the bare `{voters, learners}` struct of earlier builds, which
/// [`EntryPayload`](crate::EntryPayload) still decodes).
#[derive(Serialize)]
#[serde(rename = "Membership")]
enum MembershipFormat<'a> {
    V2 {
        voters: &'a BTreeSet<NodeId>,
        outgoing: &'a BTreeSet<NodeId>,
        learners: &'a BTreeSet<NodeId>,
        nodes: &'a BTreeMap<NodeId, NodeInfo>,
    },
}

/// The decoding side of [`MembershipFormat`]. Sets and the metadata map must come as every
/// encoder writes them, in ascending id order with each id once: collecting them would take a
/// repeated or misplaced id silently, and only corruption or a faulty peer writes one.
#[derive(Deserialize)]
#[serde(rename = "Membership")]
enum MembershipDecoded {
    V2 {
        #[serde(deserialize_with = "ascending_ids")]
        voters: BTreeSet<NodeId>,
        #[serde(deserialize_with = "ascending_ids")]
        outgoing: BTreeSet<NodeId>,
        #[serde(deserialize_with = "ascending_ids")]
        learners: BTreeSet<NodeId>,
        #[serde(deserialize_with = "ascending_nodes")]
        nodes: BTreeMap<NodeId, NodeInfo>,
    },
}

/// The error for ids `before` then `after`, which are not strictly ascending.
fn not_ascending<E: serde::de::Error>(what: &str, before: NodeId, after: NodeId) -> E {
    E::custom(format!("{what} out of order or repeated: {before} then {after}"))
}

/// Decodes a set of node ids, refusing ids out of order or repeated.
fn ascending_ids<'de, D: Deserializer<'de>>(deserializer: D) -> Result<BTreeSet<NodeId>, D::Error> {
    let ids = Vec::<NodeId>::deserialize(deserializer)?;
    match ids.windows(2).find(|pair| pair[0] >= pair[1]) {
        Some(pair) => Err(not_ascending("node ids", pair[0], pair[1])),
        None => Ok(ids.into_iter().collect()),
    }
}

/// Decodes the members' metadata, refusing ids out of order or repeated.
fn ascending_nodes<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<NodeId, NodeInfo>, D::Error> {
    struct Ascending;
    impl<'de> serde::de::Visitor<'de> for Ascending {
        type Value = BTreeMap<NodeId, NodeInfo>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("members' metadata in ascending id order")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut nodes = BTreeMap::new();
            while let Some((id, info)) = map.next_entry::<NodeId, NodeInfo>()? {
                if let Some((&last, _)) = nodes.last_key_value() {
                    if last >= id {
                        return Err(not_ascending("member metadata", last, id));
                    }
                }
                nodes.insert(id, info);
            }
            Ok(nodes)
        }
    }
    deserializer.deserialize_map(Ascending)
}

impl Serialize for Membership {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Parts { voters, outgoing, learners, nodes } = &*self.parts;
        MembershipFormat::V2 { voters, outgoing, learners, nodes }.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Membership {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let MembershipDecoded::V2 { voters, outgoing, learners, nodes } =
            MembershipDecoded::deserialize(deserializer)?;
        let membership = Membership::of(Parts { voters, outgoing, learners, nodes });
        membership.check().map_err(serde::de::Error::custom)?;
        Ok(membership)
    }
}

/// A membership as earlier builds encoded it (format 1): voters and learners, no metadata.
#[derive(Deserialize)]
pub(crate) struct MembershipV1 {
    #[serde(deserialize_with = "ascending_ids")]
    voters: BTreeSet<NodeId>,
    #[serde(deserialize_with = "ascending_ids")]
    learners: BTreeSet<NodeId>,
}

impl MembershipV1 {
    /// The membership it describes, with empty metadata.
    pub(crate) fn upgrade(self) -> Result<Membership, InvalidChange> {
        let nodes =
            self.voters.iter().chain(&self.learners).map(|&id| (id, NodeInfo::default())).collect();
        Membership::from_parts(self.voters, BTreeSet::new(), self.learners, nodes)
    }
}

#[cfg(test)]
mod tests;
