//! The leader's side of InstallSnapshot: chunked, windowed, resumable transfers, and back-off
//! for transfers that fail.
//!
//! A transfer that fails (the follower refuses it: no snapshot store, a checksum mismatch, a
//! malformed chunk; a chunk cannot be read or delivered; the follower stops answering) is not
//! restarted at once: the leader waits a heartbeat interval, doubling with every further failure
//! that made no progress, up to [`MAX_BACKOFF_HEARTBEATS`] intervals. "Progress" is the
//! follower acknowledging data beyond the furthest it ever acknowledged of that snapshot, so a
//! flaky link that moves a transfer forward between failures keeps retrying quickly, while a
//! transfer that can never succeed (a corrupt stored snapshot fails at the last chunk every
//! time) backs off. A chunk that could not be delivered pauses the transfer, which then resumes
//! where the follower's data ends (a lost flight of chunks is one failure); the other failures
//! abandon it (the follower goes back to Probe). Either way the follower gets heartbeats during
//! the back-off, so that it keeps its leader. Only chunks in flight can time out. The failures
//! are visible in [`PeerReplication`](crate::PeerReplication) and logged once per kind, not per
//! retry.

use bytes::Bytes;

use super::progress::{ReplicationMode, Transfer};
use super::{Engine, RoleState};
use crate::message::{
    InstallSnapshotRequest, InstallSnapshotResponse, RpcRequest, SnapshotRefusal,
};
use crate::snapshot_meta::chunk_len;
use crate::types::{LogId, NodeId, SnapshotFailure};

/// The longest back-off between failed snapshot transfers, in heartbeat intervals.
pub(crate) const MAX_BACKOFF_HEARTBEATS: u64 = 64;

/// A follower's record of failed snapshot transfers, kept across transfers.
#[derive(Debug, Default)]
pub(crate) struct TransferFailures {
    /// Failures in a row without progress.
    pub(crate) streak: u32,
    /// Ticks to wait before sending the follower any snapshot chunk again.
    pub(crate) retry_in: u64,
    /// The latest failure, until a transfer completes.
    pub(crate) last: Option<SnapshotFailure>,
    /// The furthest the follower acknowledged of a snapshot: going beyond it is progress.
    high_water: Option<(LogId, u64)>,
}

impl TransferFailures {
    /// The follower acknowledged `meta`'s data up to `offset`.
    fn acknowledged(&mut self, snapshot: LogId, offset: u64) {
        let beyond = match self.high_water {
            Some((id, furthest)) if id == snapshot => offset > furthest,
            _ => true,
        };
        if beyond {
            self.high_water = Some((snapshot, offset));
            self.streak = 0;
        }
    }
}

/// How long to wait after the `streak`-th failure in a row, in ticks.
fn backoff_ticks(heartbeat_ticks: u64, streak: u32) -> u64 {
    let factor = 1u64 << streak.saturating_sub(1).min(MAX_BACKOFF_HEARTBEATS.ilog2());
    heartbeat_ticks.saturating_mul(factor)
}

impl From<SnapshotRefusal> for SnapshotFailure {
    fn from(refusal: SnapshotRefusal) -> Self {
        match refusal {
            SnapshotRefusal::Unsupported => SnapshotFailure::Unsupported,
            SnapshotRefusal::ChecksumMismatch => SnapshotFailure::ChecksumMismatch,
            SnapshotRefusal::Malformed => SnapshotFailure::Refused,
        }
    }
}

impl Engine {
    /// Whether `peer` needs the snapshot: its next entry was compacted away. Switches it to
    /// `Snapshot` mode if so (and a snapshot exists and no back-off is running).
    pub(super) fn needs_snapshot(&mut self, peer: NodeId) -> bool {
        let compacted = self.log.compacted().index;
        let latest = self.snapshots.latest.as_ref();
        let RoleState::Leader(leader) = &mut self.role else { return false };
        let Some(progress) = leader.progress.get_mut(&peer) else { return false };
        if progress.mode == ReplicationMode::Snapshot {
            return true;
        }
        if progress.next_index > compacted || progress.snapshot_failures.retry_in > 0 {
            return false;
        }
        let Some(meta) = latest else {
            tracing::warn!(id = self.id, peer, "follower needs compacted entries but no snapshot");
            return false;
        };
        tracing::debug!(id = self.id, peer, next = progress.next_index, snapshot = ?meta.last_included, "sending snapshot");
        progress.start_snapshot(meta.clone());
        true
    }

    /// Sends the chunks the window allows, unless a back-off is running; with `heartbeat`,
    /// resumes a stalled transfer (nothing in flight) from what the follower last confirmed.
    /// Returns false while a back-off keeps the transfer from sending: the caller then sends the
    /// follower a heartbeat when one is due, so that it keeps hearing from its leader.
    pub(super) fn send_snapshot_chunks(&mut self, peer: NodeId, heartbeat: bool) -> bool {
        let latest = self.snapshots.latest.as_ref();
        let chunk_bytes = self.config.snapshot_chunk_bytes;
        let window = self.config.snapshot_max_inflight_chunks;
        let (term, leader_id) = (self.hard_state.current_term, self.id);
        let RoleState::Leader(leader) = &mut self.role else { return true };
        let Some(progress) = leader.progress.get_mut(&peer) else { return true };
        let Some(transfer) = progress.transfer.as_mut() else { return true };
        if let Some(latest) = latest {
            if *latest != transfer.meta {
                // A newer snapshot replaced the one being sent (whose data is gone).
                *transfer = Transfer::new(latest.clone());
            }
        }
        if progress.snapshot_failures.retry_in > 0 {
            return false;
        }
        if heartbeat && transfer.inflight.is_empty() {
            // Nothing in flight (lost, or the final answer was): resend from what the follower
            // last confirmed.
            transfer.rewind();
        }
        let mut requests = Vec::new();
        while !transfer.sent_last && transfer.inflight.len() < window {
            let offset = transfer.next_offset;
            let len = chunk_len(transfer.meta.size, offset, chunk_bytes);
            let end = offset + len;
            let done = end == transfer.meta.size;
            if transfer.inflight.is_empty() {
                transfer.idle_ticks = 0; // the timeout counts from the first chunk in flight
            }
            transfer.inflight.push_back((offset, end));
            transfer.next_offset = end;
            transfer.sent_last = done;
            progress.idle_ticks = 0;
            let request = RpcRequest::InstallSnapshot(InstallSnapshotRequest {
                term,
                leader_id,
                meta: transfer.meta.clone(),
                offset,
                data: Bytes::new(),
                done,
            });
            requests.push(request);
        }
        for request in requests {
            self.send(peer, request, false);
        }
        true
    }

    pub(super) fn handle_snapshot_response(
        &mut self,
        from: NodeId,
        last_included: LogId,
        offset: u64,
        resp: &InstallSnapshotResponse,
    ) {
        let heartbeat_ticks = self.timing.heartbeat_ticks;
        let RoleState::Leader(leader) = &mut self.role else { return };
        let Some(progress) = leader.progress.get_mut(&from) else { return };
        progress.recent_active = true;
        if resp.complete {
            if last_included.index > progress.match_index
                || progress.mode == ReplicationMode::Snapshot
            {
                tracing::debug!(id = self.id, peer = from, ?last_included, "snapshot installed");
                progress.snapshot_done(last_included.index);
                progress.snapshot_failures = TransferFailures::default();
                self.maybe_commit();
                self.replicate_to(from, false);
            }
            return;
        }
        let Some(transfer) = progress.transfer.as_mut() else { return };
        if transfer.meta.last_included != last_included {
            return; // about another snapshot
        }
        transfer.idle_ticks = 0;
        let Some(pos) = transfer.inflight.iter().position(|&(o, _)| o == offset) else {
            return; // a chunk already written off by a rewind
        };
        let (_, end) = transfer.inflight[pos];
        transfer.inflight.remove(pos);
        if let Some(refusal) = resp.refusal {
            return self.snapshot_failed(from, refusal.into());
        }
        if resp.next_offset == end {
            transfer.acked_offset = transfer.acked_offset.max(end);
            progress.snapshot_failures.acknowledged(last_included, end);
        } else if resp.next_offset == offset {
            // The follower holds everything before the chunk but cannot take it yet (it still
            // restores an earlier snapshot): offer it again a heartbeat interval later. Not a
            // failure: the follower answers.
            transfer.acked_offset = offset;
            transfer.rewind();
            progress.snapshot_failures.retry_in = heartbeat_ticks;
            return;
        } else {
            // Lost, duplicated or reordered chunks: continue where the follower's data ends.
            transfer.acked_offset = resp.next_offset.min(transfer.meta.size);
            transfer.rewind();
        }
        self.send_snapshot_chunks(from, false);
    }

    /// The chunk at `offset` could not be read or delivered: resume from the follower's data
    /// after a back-off. One failure per flight: the chunks sent with it were written off by its
    /// rewind and fail without counting again.
    pub(super) fn snapshot_unreachable(&mut self, from: NodeId, last_included: LogId, offset: u64) {
        let RoleState::Leader(leader) = &mut self.role else { return };
        let Some(progress) = leader.progress.get_mut(&from) else { return };
        let Some(transfer) = progress.transfer.as_mut() else { return };
        let in_flight = transfer.inflight.iter().any(|&(o, _)| o == offset);
        if transfer.meta.last_included == last_included && in_flight {
            self.snapshot_failed(from, SnapshotFailure::Unreachable);
        }
    }

    /// Ages back-offs and transfers; a transfer with chunks in flight and no answer for
    /// `snapshot_transfer_timeout` has failed (a paused one, with nothing in flight, waits
    /// for its back-off and cannot time out meanwhile).
    pub(super) fn tick_snapshot_transfers(&mut self) {
        let timeout = self.config.ticks(self.config.snapshot_transfer_timeout);
        let RoleState::Leader(leader) = &mut self.role else { return };
        let mut timed_out = Vec::new();
        for (&peer, progress) in leader.progress.iter_mut() {
            let failures = &mut progress.snapshot_failures;
            failures.retry_in = failures.retry_in.saturating_sub(1);
            let Some(transfer) = progress.transfer.as_mut().filter(|t| !t.inflight.is_empty())
            else {
                continue;
            };
            transfer.idle_ticks += 1;
            if transfer.idle_ticks >= timeout {
                timed_out.push(peer);
            }
        }
        for peer in timed_out {
            self.snapshot_failed(peer, SnapshotFailure::TimedOut);
        }
    }

    /// Records a failed transfer to `peer` and starts the back-off: a transfer whose chunk could
    /// not be delivered pauses (and resumes where the follower's data ends), any other is
    /// abandoned (the follower is probed meanwhile). Logged once per kind of failure until a
    /// transfer completes.
    fn snapshot_failed(&mut self, peer: NodeId, failure: SnapshotFailure) {
        let heartbeat_ticks = self.timing.heartbeat_ticks;
        let tick_interval = self.config.tick_interval;
        let RoleState::Leader(leader) = &mut self.role else { return };
        let Some(progress) = leader.progress.get_mut(&peer) else { return };
        let failures = &mut progress.snapshot_failures;
        let new_kind = failures.last != Some(failure);
        failures.streak = failures.streak.saturating_add(1);
        failures.retry_in = backoff_ticks(heartbeat_ticks, failures.streak);
        failures.last = Some(failure);
        let streak = failures.streak;
        let retry_ms = tick_interval.as_millis().saturating_mul(u128::from(failures.retry_in));
        match (failure, progress.transfer.as_mut()) {
            (SnapshotFailure::Unreachable, Some(transfer)) => transfer.rewind(),
            _ => progress.abandon_snapshot(),
        }
        if new_kind {
            tracing::warn!(id = self.id, peer, %failure, retry_ms, "snapshot transfer failed; retrying with back-off");
        } else {
            tracing::debug!(id = self.id, peer, %failure, streak, retry_ms, "snapshot transfer failed again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let waits: Vec<u64> = (1..=9).map(|streak| backoff_ticks(5, streak)).collect();
        assert_eq!(waits, vec![5, 10, 20, 40, 80, 160, 320, 320, 320]);
        assert_eq!(backoff_ticks(5, u32::MAX), 5 * MAX_BACKOFF_HEARTBEATS);
        assert_eq!(backoff_ticks(u64::MAX, 3), u64::MAX);
    }

    #[test]
    fn only_new_data_counts_as_progress() {
        let mut failures = TransferFailures { streak: 3, ..TransferFailures::default() };
        let snapshot = LogId::new(2, 40);
        failures.acknowledged(snapshot, 10);
        assert_eq!(failures.streak, 0, "first data of this snapshot");
        failures.streak = 2;
        failures.acknowledged(snapshot, 10);
        assert_eq!(failures.streak, 2, "the same data again is no progress");
        failures.acknowledged(snapshot, 20);
        assert_eq!(failures.streak, 0);
        failures.streak = 1;
        failures.acknowledged(LogId::new(2, 50), 5);
        assert_eq!(failures.streak, 0, "a newer snapshot starts over");
    }
}
