//! How the engine's writes and messages leave it, in order: the accumulated write becomes a
//! `Persist`, and every `Send` / `Respond` goes through [`Engine::send`] / [`Engine::respond`],
//! which decide whether it must wait for the writes before it.
//!
//! One rule covers every path: a message waits (`after_persist: true`) when it acknowledges
//! state accumulated so far (a vote, a campaign, stored entries), **or** when the node's current
//! term is not yet known durable. The second half is what keeps "a new term is durable before any
//! message of that term leaves the node" true however the term was reached: a lone voter that
//! wins inside `campaign()`, a TimeoutNow election, a candidate completing its tally, a follower
//! adopting a newer term and then answering a ReadIndex. The engine learns that its term is
//! durable from [`Engine::on_persisted`], which the driver calls in write order.

use super::{Action, Engine, ReplyId};
use crate::batch::WriteBatch;
use crate::message::{RpcRequest, RpcResponse};
use crate::types::{Entry, HardState, LogId, NodeId};

/// What a finished write made durable, reported with [`Engine::on_persisted`]. Build it with
/// [`PersistedWrite::of`] from the batch (or the merge of consecutive batches) that was written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PersistedWrite {
    /// The last entry of the write (`None` for a write without entries).
    pub last_entry: Option<LogId>,
    /// The hard state of the write (`None` if it carried none).
    pub hard_state: Option<HardState>,
    /// The engine's number of the last batch the write holds ([`WriteBatch::seq`]): every
    /// truncation emitted up to that batch is durable.
    pub seq: u64,
}

impl PersistedWrite {
    /// Summarizes `batch` before it is handed to the store.
    pub fn of(batch: &WriteBatch) -> Self {
        Self {
            last_entry: batch.entries.last().map(Entry::log_id),
            hard_state: batch.hard_state,
            seq: batch.seq,
        }
    }
}

impl Engine {
    /// The store finished a write: every `Persist` emitted up to the one(s) summarized by
    /// `write` is durable. Writes must be reported in the order they were emitted; consecutive
    /// `Persist` batches may be merged ([`WriteBatch::merge`]) and reported once.
    pub fn on_persisted(&mut self, write: PersistedWrite) {
        if let Some(hard_state) = write.hard_state {
            self.durable_term = self.durable_term.max(hard_state.current_term);
        }
        let before = self.log.durable_index;
        self.log.persisted(write.seq, write.last_entry);
        if self.log.durable_index > before && self.is_leader() {
            self.maybe_commit();
        }
    }

    /// Emits the accumulated write, if any. A leader's next write starts with room for as many
    /// entries as this one had, reserved when it appends the first
    /// (`append_entry`): under load, steps append similar numbers of entries, and a
    /// batch of a thousand grown by doubling was reallocated and copied ten times. A follower's
    /// write is the vector its AppendEntries arrived in (`store_entries`): nothing reserved.
    pub(super) fn flush_write(&mut self) {
        if !self.pending_write.is_empty() {
            let entries = self.pending_write.entries.len();
            self.leader_write_entries = if self.is_leader() { entries } else { 0 };
            let mut batch = std::mem::take(&mut self.pending_write);
            self.writes_emitted += 1;
            batch.seq = self.writes_emitted;
            self.actions.push(Action::Persist(batch));
        }
    }

    /// Whether a message emitted now must wait for the writes before it (see the module docs);
    /// if so, the accumulated write is emitted first so that it is one of them.
    fn must_wait(&mut self, acknowledges: bool) -> bool {
        let wait = acknowledges || self.hard_state.current_term > self.durable_term;
        if wait {
            self.flush_write();
        }
        wait
    }

    /// Sends `request` to `to`. `acknowledges`: it acknowledges state accumulated so far (a
    /// campaign's vote for itself).
    pub(super) fn send(&mut self, to: NodeId, request: RpcRequest, acknowledges: bool) {
        let after_persist = self.must_wait(acknowledges);
        self.actions.push(Action::Send { to, request, after_persist });
    }

    /// Answers the inbound request `reply_to`. `acknowledges`: the answer acknowledges state
    /// accumulated so far (a vote, stored entries, an installed snapshot).
    pub(super) fn respond(&mut self, reply_to: ReplyId, response: RpcResponse, acknowledges: bool) {
        let after_persist = self.must_wait(acknowledges);
        self.actions.push(Action::Respond { reply_to, response, after_persist });
    }
}
