//! Bootstrap: writing a new cluster's first membership, once (see `NodeBuilder::bootstrap`).
//!
//! The membership goes into the log as its first entry, `(term 1, index 1)`, with the hard state
//! at term 1, in one durable write. Every founding node bootstrapped with the same membership
//! writes the same entry, so their logs agree (Log Matching); a founding node left empty gets the
//! entry from the first leader like any joining node. From then on the membership is only in the
//! log (and in snapshots): no setting says who founded the cluster, and a restart is the same for
//! every node.

use std::sync::Arc;

use crate::error::{BootstrapError, StartError};
use crate::membership::{InvalidChange, Membership};
use crate::snapshot::SnapshotStore;
use crate::storage::{DurableState, LogStore, WriteBatch};
use crate::types::{Entry, EntryPayload, HardState, LogId, NodeId};

/// The term of the bootstrap entry: the first term, in which no leader is ever elected (the
/// first election is for term 2), so the entry cannot clash with a leader's.
const BOOTSTRAP_TERM: u64 = 1;

/// Writes `membership` as the first entry of node `id`'s empty stores and updates `durable` and
/// `entries` (what the node loaded from them) to match. Refuses, writing nothing, if the stores
/// are not empty or the membership does not make `id` a voter.
pub(super) async fn bootstrap<S: LogStore>(
    store: &S,
    snapshots: Option<&Arc<dyn SnapshotStore>>,
    id: NodeId,
    membership: Membership,
    durable: &mut DurableState,
    entries: &mut Vec<Entry>,
) -> Result<(), StartError> {
    let in_log = entries.iter().any(|e| matches!(e.payload, EntryPayload::Membership(_)));
    let in_snapshot = match snapshots {
        Some(snapshots) => snapshots.latest().await?.is_some(),
        None => false,
    };
    if in_log || in_snapshot {
        return Err(BootstrapError::AlreadyInitialized.into());
    }
    if durable.hard_state != HardState::default() || durable.last.index > 0 {
        let (current_term, last_index) = (durable.hard_state.current_term, durable.last.index);
        return Err(BootstrapError::NotEmpty { current_term, last_index }.into());
    }
    if membership.is_joint() {
        return Err(BootstrapError::Invalid(InvalidChange::Joint).into());
    }
    membership.check().map_err(BootstrapError::Invalid)?;
    if !membership.is_voter(id) {
        return Err(BootstrapError::NotAVoter(id).into());
    }
    let hard_state = HardState { current_term: BOOTSTRAP_TERM, voted_for: None };
    let entry =
        Entry { index: 1, term: BOOTSTRAP_TERM, payload: EntryPayload::Membership(membership) };
    let batch = WriteBatch {
        hard_state: Some(hard_state),
        truncate_from: None,
        entries: vec![entry.clone()],
        seq: 0,
    };
    store.write(batch).await?;
    tracing::info!(id, "bootstrapped: the membership is the first entry of the log");
    durable.hard_state = hard_state;
    durable.last = LogId::new(BOOTSTRAP_TERM, 1);
    *entries = vec![entry];
    Ok(())
}
