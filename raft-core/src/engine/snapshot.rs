//! Snapshots in the engine: when to take one, log compaction once one is durable, and the
//! follower's side of InstallSnapshot (receiving chunks, installing, restoring through the apply
//! path). The leader's side is in `snapshot_send.rs`.

use super::{Action, Engine, RoleState};
use crate::message::{InstallSnapshotRequest, InstallSnapshotResponse, SnapshotRefusal};
use crate::snapshot_meta::{Checksum, SnapshotMeta};
use crate::types::{LogId, LogIndex, Term};

/// The engine's snapshot bookkeeping.
#[derive(Debug, Default)]
pub(super) struct SnapshotState {
    /// Whether the driver can store snapshots at all (a snapshot store was given).
    pub(super) enabled: bool,
    /// The latest durable snapshot (taken here or installed from a leader).
    pub(super) latest: Option<SnapshotMeta>,
    /// A `TakeSnapshot` was emitted and its outcome is not known yet.
    taking: bool,
    /// A snapshot was asked for (manual trigger) and not taken yet.
    requested: bool,
    /// The applied index at the last snapshot (or attempt): the policy counts from here.
    base_index: LogIndex,
    /// Log bytes handed to the state machine since the last snapshot (or attempt).
    bytes_since: u64,
    /// The snapshot being received from the leader.
    receiving: Option<Receiving>,
    /// A snapshot installed from the leader that the state machine must restore before any
    /// further entry; `durable` once the driver reports the install done.
    restore: Option<PendingRestore>,
    /// The last index of the snapshot the state machine is restoring (a `Restore` was emitted
    /// and not yet reported applied). No newer snapshot is installed meanwhile: that would
    /// supersede the snapshot being read.
    restoring: Option<LogIndex>,
}

#[derive(Debug)]
struct Receiving {
    meta: SnapshotMeta,
    term: Term,
    next_offset: u64,
    checksum: Checksum,
}

#[derive(Debug)]
struct PendingRestore {
    meta: SnapshotMeta,
    durable: bool,
}

impl SnapshotState {
    pub(super) fn new(enabled: bool, latest: Option<SnapshotMeta>, base_index: LogIndex) -> Self {
        Self { enabled, latest, base_index, ..Self::default() }
    }
}

impl Engine {
    /// The latest durable snapshot this node knows of.
    pub fn snapshot_meta(&self) -> Option<&SnapshotMeta> {
        self.snapshots.latest.as_ref()
    }

    /// Asks for a snapshot as soon as possible (the manual trigger). Ignored if snapshots are
    /// not enabled; the engine emits [`Action::TakeSnapshot`] once the state machine has applied
    /// something beyond the latest snapshot and no snapshot is being taken (and, on a node that
    /// started with no membership (a joining node, not bootstrapped), once it has applied a membership entry:
    /// below that it does not know the membership a snapshot must hold).
    pub fn trigger_snapshot(&mut self) {
        if self.snapshots.enabled {
            self.snapshots.requested = true;
        }
    }

    /// The snapshot asked for by [`Action::TakeSnapshot`] is durable in the snapshot store, with
    /// `meta` (or the store already held a later one: then `meta` is ignored). Compacts the log
    /// up to `meta`, minus `Config::snapshot_keep_entries`, and emits [`Action::CompactLog`].
    pub fn on_snapshot_taken(&mut self, meta: SnapshotMeta) {
        self.snapshots.taking = false;
        let index = meta.last_included.index;
        if self.snapshots.latest.as_ref().is_some_and(|l| l.last_included.index >= index) {
            return;
        }
        tracing::debug!(id = self.id, last_included = ?meta.last_included, size = meta.size, "snapshot taken");
        self.snapshots.latest = Some(meta);
        let up_to =
            index.saturating_sub(self.config.snapshot_keep_entries).min(self.log.applied_index);
        if up_to > self.log.compacted().index && self.log.term_at(up_to).is_some() {
            self.log.compact(up_to);
            self.flush_write();
            self.actions.push(Action::CompactLog { up_to });
        }
    }

    /// The state machine declined the snapshot asked for by [`Action::TakeSnapshot`] (it does not
    /// take snapshots), or taking it failed: the policy tries again after another interval.
    pub fn on_snapshot_skipped(&mut self) {
        self.snapshots.taking = false;
    }

    /// The driver finished an [`Action::InstallSnapshot`]: the snapshot is durable and the log
    /// store reset after it. The state machine can now restore it ([`Action::Restore`]), and it
    /// is the latest snapshot ([`Engine::snapshot_meta`]).
    pub fn on_snapshot_installed(&mut self, last_included: LogId) {
        if let Some(restore) = &mut self.snapshots.restore {
            if restore.meta.last_included == last_included {
                restore.durable = true;
                let newer = self.snapshots.latest.as_ref().is_none_or(|latest| {
                    latest.last_included.index < restore.meta.last_included.index
                });
                if newer {
                    self.snapshots.latest = Some(restore.meta.clone());
                }
            }
        }
    }

    /// The state machine applied up to `index`: a restore that ends there is done.
    pub(super) fn snapshot_applied(&mut self, index: LogIndex) {
        if self.snapshots.restoring.is_some_and(|restoring| restoring <= index) {
            self.snapshots.restoring = None;
        }
    }

    /// Emits what the apply path needs besides entries: a pending restore (which holds back
    /// every later entry), then a snapshot when the policy asks for one. Returns false while a
    /// restore holds back the entries.
    pub(super) fn emit_snapshot_apply(&mut self) -> bool {
        if let Some(restore) = &self.snapshots.restore {
            if !restore.durable {
                return false;
            }
            let meta = restore.meta.clone();
            self.snapshots.restore = None;
            self.snapshots.restoring = Some(meta.last_included.index);
            self.log.apply_sent_index = meta.last_included.index;
            self.actions.push(Action::Restore(meta));
        }
        true
    }

    /// Counts `bytes` of entries handed to the state machine and emits a `TakeSnapshot` after
    /// them if the policy (or a manual trigger) asks for one.
    pub(super) fn maybe_take_snapshot(&mut self, bytes: u64) {
        let s = &mut self.snapshots;
        s.bytes_since = s.bytes_since.saturating_add(bytes);
        if !s.enabled || s.taking || s.restore.is_some() {
            return;
        }
        let at = self.log.apply_sent_index;
        let latest = s.latest.as_ref().map_or(0, |m| m.last_included.index);
        if at <= latest || at <= s.base_index {
            return; // nothing applied beyond the last snapshot (or attempt)
        }
        let by_count = self.config.snapshot_interval_entries > 0
            && at - s.base_index >= self.config.snapshot_interval_entries;
        let by_bytes = self.config.snapshot_interval_bytes > 0
            && s.bytes_since >= self.config.snapshot_interval_bytes;
        if !(s.requested || by_count || by_bytes) {
            return;
        }
        let Some(term) = self.log.term_at(at) else { return };
        let membership = self.log.membership().at(at);
        if membership.voters().is_empty() {
            // A joining node below the first membership entry it got: the membership in force
            // there (the cluster's bootstrap voters) is unknown here, and a snapshot without
            // voters would be refused by every node it is sent to. It waits (a manual request
            // stays pending) until it has applied a membership entry.
            return;
        }
        let membership = membership.clone();
        s.taking = true;
        s.requested = false;
        s.base_index = at;
        s.bytes_since = 0;
        self.actions.push(Action::TakeSnapshot { last_included: LogId::new(term, at), membership });
    }

    // ---- follower side -----------------------------------------------------------------------

    pub(super) fn handle_install_snapshot(
        &mut self,
        req: InstallSnapshotRequest,
    ) -> InstallSnapshotResponse {
        let current = self.hard_state.current_term;
        if req.term < current {
            return InstallSnapshotResponse {
                term: current,
                next_offset: 0,
                complete: false,
                refusal: None,
            };
        }
        if req.term > current || !matches!(self.role, RoleState::Follower) {
            self.become_follower(req.term, Some(req.leader_id));
        }
        self.heard_from_leader(req.leader_id);
        let term = self.hard_state.current_term;
        let answer = |next_offset, complete| InstallSnapshotResponse {
            term,
            next_offset,
            complete,
            refusal: None,
        };
        let refuse = |refusal| InstallSnapshotResponse {
            term,
            next_offset: 0,
            complete: false,
            refusal: Some(refusal),
        };
        let last = req.meta.last_included;
        if last.index <= self.log.commit_index || self.log.matches(last) {
            // Our log already covers it: committed here, or it holds the snapshot's last entry
            // (Log Matching: then it holds everything before it too).
            self.log.commit_index = self.log.commit_index.max(last.index);
            self.snapshots.receiving = None;
            return answer(req.meta.size, true);
        }
        if !self.snapshots.enabled {
            tracing::debug!(
                id = self.id,
                "InstallSnapshot received but this node has no snapshot store; refused"
            );
            return refuse(SnapshotRefusal::Unsupported);
        }
        let same = self.snapshots.receiving.as_ref().is_some_and(|r| r.meta == req.meta);
        if !same {
            let older = self
                .snapshots
                .receiving
                .as_ref()
                .is_some_and(|r| r.term == term && r.meta.last_included.index > last.index);
            if older || req.offset != 0 {
                // A stale chunk, or the middle of a snapshot we hold nothing of: start over.
                return answer(0, false);
            }
            self.snapshots.receiving = Some(Receiving {
                meta: req.meta.clone(),
                term,
                next_offset: 0,
                checksum: Checksum::new(),
            });
        }
        let Some(receiving) = self.snapshots.receiving.as_mut() else { return answer(0, false) };
        if req.offset != receiving.next_offset {
            return answer(receiving.next_offset, false); // a duplicate or a gap
        }
        if req.done && self.snapshots.restoring.is_some() {
            // Installing now would supersede the snapshot the state machine is reading: not
            // yet (the leader offers the chunk again a heartbeat interval later).
            return answer(req.offset, false);
        }
        // Validated: the chunk lies within the snapshot and `done` marks its end.
        let end = req.offset.saturating_add(req.data.len() as u64);
        receiving.checksum.update(&req.data);
        if req.done && receiving.checksum.value() != req.meta.checksum {
            tracing::warn!(id = self.id, snapshot = ?last, "snapshot checksum mismatch; refused");
            self.snapshots.receiving = None;
            return refuse(SnapshotRefusal::ChecksumMismatch);
        }
        receiving.next_offset = end;
        let meta = req.meta;
        self.flush_write();
        self.actions.push(Action::WriteSnapshotChunk {
            meta: meta.clone(),
            offset: req.offset,
            data: req.data,
        });
        if !req.done {
            return answer(end, false);
        }
        self.snapshots.receiving = None;
        self.install_snapshot(meta);
        answer(end, true)
    }

    /// The whole snapshot was received: make it durable, replace the log by it (none of the
    /// log's entries after it can be committed: the log does not hold its last entry), and
    /// restore the state machine from it once durable.
    fn install_snapshot(&mut self, meta: SnapshotMeta) {
        let last = meta.last_included;
        tracing::info!(id = self.id, snapshot = ?last, size = meta.size, "installing snapshot from the leader");
        self.actions.push(Action::InstallSnapshot(meta.clone()));
        self.log.reset_to(last, meta.membership.clone(), self.writes_emitted + 1);
        self.sync_membership();
        self.snapshots.base_index = last.index;
        self.snapshots.bytes_since = 0;
        self.snapshots.restore = Some(PendingRestore { meta, durable: false });
    }
}
