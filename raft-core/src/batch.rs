//! What a log store holds and writes, as plain data: [`DurableState`] (read at open) and
//! [`WriteBatch`] (one atomic, durable write). The engine produces and consumes these; the
//! `LogStore` trait (in `storage`) is implemented over them.

use crate::types::{Entry, HardState, LogId, LogIndex};

/// What a store holds when it is opened: everything a node needs to restart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DurableState {
    /// The last durable hard state (term 0, no vote, for a new store).
    pub hard_state: HardState,
    /// The log id just before the first stored entry: `(0, 0)` for a log never purged, else the
    /// last purged entry (its term is kept so that `prev_log_id` checks still work).
    pub purged: LogId,
    /// The id of the last stored entry, or `purged` if the log is empty.
    pub last: LogId,
}

impl DurableState {
    /// The index of the first stored entry (`purged.index + 1`); greater than `last.index` when
    /// the log is empty.
    pub fn first_index(&self) -> LogIndex {
        self.purged.index + 1
    }
}

/// One atomic, durable write: an optional hard state, an optional truncation and new entries.
///
/// Applied in this order: set `hard_state` (if any), delete every entry with index `>=
/// truncate_from` (if any), then append `entries`. The entries are contiguous, and the first one
/// follows the last entry left after truncation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    /// The new hard state, if it changed.
    pub hard_state: Option<HardState>,
    /// Delete the log suffix starting at this index before appending.
    pub truncate_from: Option<LogIndex>,
    /// Entries to append.
    pub entries: Vec<Entry>,
    /// The engine's number for this write: 1, 2, ... in the order it emits `Persist` batches
    /// (0 for a batch no engine made). Stores ignore it; [`WriteBatch::merge`] keeps the later
    /// batch's, and `PersistedWrite::of` reports it, which tells the engine which of its writes
    /// (and so which truncations) a finished write covers.
    pub seq: u64,
}

impl WriteBatch {
    /// True when the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.hard_state.is_none() && self.truncate_from.is_none() && self.entries.is_empty()
    }

    /// Folds `later` into `self`, as if `self` were written and then `later`: the result is one
    /// batch with the same effect, which lets a writer commit both with one sync.
    pub fn merge(&mut self, later: WriteBatch) {
        if later.hard_state.is_some() {
            self.hard_state = later.hard_state;
        }
        if let Some(cut) = later.truncate_from {
            // Entries of `self` at or after the cut never reach the disk.
            let first_own = self.entries.first().map(|e| e.index);
            match first_own {
                Some(first) if cut > first => {
                    self.entries.retain(|e| e.index < cut);
                }
                _ => {
                    self.entries.clear();
                    self.truncate_from = Some(self.truncate_from.map_or(cut, |own| own.min(cut)));
                }
            }
        }
        self.entries.extend(later.entries);
        self.seq = self.seq.max(later.seq);
    }
}
