//! The leader: proposals, replication (pipelined, batched, with fast backtracking), commitment,
//! heartbeats and CheckQuorum.

use bytes::Bytes;

use super::lease::Lease;
use super::progress::{Progress, ReplicationMode};
use super::read_index::ReadQueue;
use super::transfer::LeaderTransfer;
use super::{Engine, ProgressMap, ProposeRefusal, RoleState};
use crate::message::{AppendEntriesRequest, AppendEntriesResponse, RpcRequest};
use crate::types::{Entry, EntryPayload, LogId, LogIndex, NodeId};

/// What only a leader keeps.
#[derive(Debug)]
pub(super) struct LeaderState {
    /// One entry per member other than this node (voters and learners).
    pub(super) progress: ProgressMap,
    /// Reads waiting for their ReadIndex round.
    pub(super) reads: ReadQueue,
    /// The lease of lease reads.
    pub(super) lease: Lease,
    /// The leadership transfer in progress.
    pub(super) transfer: Option<LeaderTransfer>,
    /// A leader removed from the voters started handing over (a transfer) once already.
    pub(super) handover_started: bool,
}

impl Engine {
    pub(super) fn become_leader(&mut self) {
        let term = self.hard_state.current_term;
        tracing::info!(id = self.id, term, "became leader");
        self.counters.elections_won += 1;
        let next = self.log.last_index() + 1;
        let progress = self
            .peers()
            .into_iter()
            .map(|peer| {
                let p = Progress::new(
                    next,
                    self.config.max_inflight_append_entries,
                    self.config.max_inflight_bytes,
                );
                (peer, p)
            })
            .collect();
        self.role = RoleState::Leader(LeaderState {
            progress,
            reads: ReadQueue::default(),
            lease: Lease::default(),
            transfer: None,
            handover_started: false,
        });
        self.leader_id = Some(self.id);
        self.election_elapsed = 0;
        self.start_lease_round();
        // A blank entry of the new term lets the leader commit entries of earlier terms (§5.4.2).
        self.append_entry(EntryPayload::Blank);
        self.replicate_all();
        self.maybe_commit();
    }

    /// Appends a command to the leader's log. Replication follows when actions are taken.
    pub fn propose(&mut self, command: Bytes) -> Result<LogId, ProposeRefusal> {
        self.can_accept_proposal()?;
        Ok(self.append_entry(EntryPayload::Command(command)))
    }

    /// Appends an entry of the current term (waking a quiesced leader: a proposal, a membership
    /// change).
    pub(super) fn append_entry(&mut self, payload: EntryPayload) -> LogId {
        self.unquiesce(super::quiesce::Waker::Other);
        let entry =
            Entry { index: self.log.last_index() + 1, term: self.hard_state.current_term, payload };
        let id = entry.log_id();
        self.log.push(entry.clone());
        let write = &mut self.pending_write.entries;
        if write.capacity() == 0 {
            write.reserve(self.leader_write_entries); // see `flush_write`
        }
        write.push(entry);
        id
    }

    /// Sends what each follower's window allows.
    pub(super) fn replicate_all(&mut self) {
        let RoleState::Leader(leader) = &self.role else { return };
        let peers: Vec<NodeId> = leader.progress.keys().copied().collect();
        for peer in peers {
            self.replicate_to(peer, false);
        }
    }

    /// Sends entries to `peer` while its window has room; with `heartbeat`, sends at least an
    /// empty AppendEntries.
    pub(super) fn replicate_to(&mut self, peer: NodeId, heartbeat: bool) {
        if self.needs_snapshot(peer) && self.send_snapshot_chunks(peer, heartbeat) {
            return; // else a back-off runs: a heartbeat if one is due
        }
        let mut sent_any = false;
        loop {
            let RoleState::Leader(leader) = &mut self.role else { return };
            let round = leader.reads.round();
            let Some(progress) = leader.progress.get_mut(&peer) else { return };
            let has_entries = progress.next_index <= self.log.last_index();
            if !(has_entries && progress.can_send_entries()) {
                break;
            }
            let room = progress.inflight.room_bytes().min(self.config.max_append_entries_bytes);
            let prev_index = progress.next_index - 1;
            let Some(prev_term) = self.log.term_at(prev_index) else {
                // Below the compaction point, and no snapshot can be sent now (none exists, or
                // a failed transfer's back-off runs): at most a heartbeat.
                break;
            };
            let entries = self.log.slice(prev_index + 1, self.config.max_append_entries, room);
            let bytes: u64 = entries.iter().map(Entry::size_bytes).sum();
            let last_index = prev_index + entries.len() as u64;
            progress.sent(last_index, bytes);
            progress.read_round_sent = round;
            progress.commit_sent = self.log.commit_index;
            let request = self.append_request(LogId::new(prev_term, prev_index), entries);
            self.send(peer, request, false);
            sent_any = true;
        }
        if heartbeat && !sent_any {
            let RoleState::Leader(leader) = &mut self.role else { return };
            let round = leader.reads.round();
            let Some(progress) = leader.progress.get_mut(&peer) else { return };
            // In Replicate mode `match_index` is known to match; in Probe mode the heartbeat
            // doubles as a probe of `next_index - 1`. Never below the compaction point, whose
            // term is still known (a follower waiting for a snapshot transfer to be retried).
            let prev_index = match progress.mode {
                ReplicationMode::Replicate => progress.match_index,
                ReplicationMode::Probe | ReplicationMode::Snapshot => progress.next_index - 1,
            };
            let prev_index = prev_index.max(self.log.compacted().index);
            let Some(prev_term) = self.log.term_at(prev_index) else { return };
            progress.idle_ticks = 0;
            progress.read_round_sent = round;
            progress.heartbeats_in_flight += 1;
            progress.commit_sent = self.log.commit_index;
            let request = self.append_request(LogId::new(prev_term, prev_index), Vec::new());
            self.send(peer, request, false);
        }
    }

    fn append_request(&self, prev_log_id: LogId, entries: Vec<Entry>) -> RpcRequest {
        RpcRequest::AppendEntries(AppendEntriesRequest {
            term: self.hard_state.current_term,
            leader_id: self.id,
            prev_log_id,
            entries,
            leader_commit: self.log.commit_index,
            read_round: match &self.role {
                RoleState::Leader(leader) => leader.reads.round(),
                _ => 0,
            },
            quiesce: self.quiet.quiesced,
        })
    }

    /// An AppendEntries of the current term to `from` was answered or failed; `empty`: it was
    /// a heartbeat.
    pub(super) fn append_done(&mut self, from: NodeId, empty: bool) {
        let RoleState::Leader(leader) = &mut self.role else { return };
        let Some(progress) = leader.progress.get_mut(&from) else { return };
        if empty {
            progress.heartbeats_in_flight = progress.heartbeats_in_flight.saturating_sub(1);
        }
    }

    /// An AppendEntries of the current term to `from` failed: whatever was in flight is presumed
    /// lost (a snapshot transfer has its own bookkeeping).
    pub(super) fn append_unreachable(&mut self, from: NodeId) {
        let RoleState::Leader(leader) = &mut self.role else { return };
        if let Some(progress) = leader.progress.get_mut(&from) {
            if progress.mode != ReplicationMode::Snapshot {
                progress.unreachable();
            }
        }
    }

    pub(super) fn handle_append_response(
        &mut self,
        from: NodeId,
        prev_index: LogIndex,
        last_index: LogIndex,
        resp: &AppendEntriesResponse,
    ) {
        let RoleState::Leader(leader) = &mut self.role else { return };
        let Some(progress) = leader.progress.get_mut(&from) else { return };
        progress.recent_active = true;
        if let Some(match_index) = resp.match_index {
            if progress.acknowledged(match_index.min(last_index)) {
                self.maybe_commit();
            }
            return;
        }
        let Some(hint) = resp.conflict else { return };
        if progress.mode == ReplicationMode::Snapshot {
            return; // an answer to an AppendEntries sent before the transfer began
        }
        if prev_index < progress.match_index
            || (progress.mode == ReplicationMode::Probe && prev_index + 1 != progress.next_index)
        {
            return; // an answer to an old request; a newer one is in flight or already answered
        }
        let next = if hint.conflict_term == 0 {
            hint.last_log_index + 1
        } else {
            match self.log.last_index_of_term(hint.conflict_term) {
                Some(last_of_term) => last_of_term + 1,
                None => hint.first_index_of_term,
            }
        };
        // Move back at least one entry, never below what is known to match.
        progress.rejected(next.min(prev_index));
        tracing::trace!(
            id = self.id,
            peer = from,
            next = progress.next_index,
            "AppendEntries rejected; backtracking"
        );
        self.replicate_to(from, false);
    }

    /// Advances the commit index to the highest index a quorum holds durably, if that entry is
    /// of the current term (§5.4.2: older entries commit only indirectly); then finishes a joint
    /// change that became committed, and steps down if the leader was removed.
    pub(super) fn maybe_commit(&mut self) {
        let RoleState::Leader(leader) = &self.role else { return };
        let (id, durable) = (self.id, self.log.durable_index);
        let candidate = self.log.membership().latest().agreed_value(|voter| match voter {
            _ if voter == id => durable,
            _ => leader.progress.get(&voter).map_or(0, |p| p.match_index),
        });
        if candidate > self.log.commit_index
            && self.log.term_at(candidate) == Some(self.hard_state.current_term)
        {
            self.log.commit_index = candidate;
        }
        self.finish_joint_change();
        self.step_down_if_removed();
    }

    pub(super) fn tick_leader(&mut self) {
        self.start_lease_round();
        let heartbeat_ticks = self.timing.heartbeat_ticks;
        let mut due = Vec::new();
        let transfer_target = self.transfer_target();
        if let RoleState::Leader(leader) = &mut self.role {
            for (&peer, progress) in leader.progress.iter_mut() {
                progress.idle_ticks += 1;
                if progress.idle_ticks >= heartbeat_ticks {
                    // A lost probe is retried with the heartbeat.
                    progress.probe_sent = false;
                    due.push(peer);
                }
            }
        }
        self.tick_transfer(transfer_target.is_some_and(|t| due.contains(&t)));
        // A removed leader whose hand-over timed out steps down now.
        self.step_down_if_removed();
        self.tick_snapshot_transfers();
        if !due.is_empty() && self.maybe_quiesce() {
            // The last heartbeat, to every member, carries the quiesce mark.
            due = self.peers();
        }
        for peer in due {
            self.replicate_to(peer, true);
        }
        if self.election_elapsed >= self.timing.election_ticks_min {
            self.election_elapsed = 0;
            self.check_quorum();
        }
    }

    /// CheckQuorum: steps down unless a quorum was heard from since the last round.
    fn check_quorum(&mut self) {
        if !self.config.check_quorum {
            return;
        }
        let RoleState::Leader(leader) = &mut self.role else { return };
        let mut active = std::collections::BTreeSet::from([self.id]);
        for (&id, progress) in leader.progress.iter_mut() {
            if std::mem::replace(&mut progress.recent_active, false) {
                active.insert(id);
            }
        }
        if !self.log.membership().latest().has_quorum(|id| active.contains(&id)) {
            tracing::warn!(
                id = self.id,
                term = self.hard_state.current_term,
                "lost contact with a quorum; stepping down"
            );
            self.become_follower(self.hard_state.current_term, None);
        }
    }
}
