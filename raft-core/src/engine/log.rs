//! The in-memory Raft log: every entry since the last compaction point, plus the commit, durable
//! and apply positions.
//!
//! Like etcd's `MemoryStorage`, the whole uncompacted log lives in memory; its size is bounded by
//! log compaction (snapshots), not by a cache policy. This keeps the engine free of reads that
//! would have to wait for a disk.

use std::collections::VecDeque;

use super::membership::MembershipLog;
use crate::membership::Membership;
use crate::types::{Entry, LogId, LogIndex, Term};

/// The log and its positions. Invariants: `compacted.index <= applied <= apply_sent <=
/// min(commit, durable) `, `commit` and `applied` never decrease, entries are contiguous from
/// `compacted.index + 1`.
#[derive(Debug)]
pub(crate) struct RaftLog {
    /// The last entry removed by compaction (`(0, 0)` if none).
    compacted: LogId,
    entries: VecDeque<Entry>,
    /// Highest index known committed.
    pub(crate) commit_index: LogIndex,
    /// Highest index known durable in the local store.
    pub(crate) durable_index: LogIndex,
    /// Highest index handed to the state machine.
    pub(crate) apply_sent_index: LogIndex,
    /// Highest index the state machine reported applied.
    pub(crate) applied_index: LogIndex,
    /// The memberships the log holds, kept in step with every change of the entries.
    membership: MembershipLog,
    /// Truncations (and snapshot installs, which drop every entry after the snapshot) not yet
    /// known durable, oldest first: (the number of the first write whose report proves it
    /// durable, the first index it removes). A finished write issued before one of them may
    /// have written entries at or after that index which the store then loses, even if the log
    /// holds entries with the same ids again (written back by a later write): see `persisted`.
    cuts: VecDeque<(u64, LogIndex)>,
}

impl RaftLog {
    /// A log restored from storage: `entries` follow `compacted` and are all durable;
    /// `base` is the membership in force at index `base.0` (the latest snapshot's, or the
    /// configured one at 0), which membership entries after it replace.
    pub(crate) fn restore(
        compacted: LogId,
        entries: Vec<Entry>,
        base: (LogIndex, Membership),
    ) -> Self {
        let durable_index = entries.last().map_or(compacted.index, |e| e.index);
        let mut membership = MembershipLog::new(base.0, base.1);
        for entry in &entries {
            membership.appended(entry);
        }
        Self {
            membership,
            compacted,
            entries: entries.into(),
            commit_index: compacted.index,
            durable_index,
            apply_sent_index: compacted.index,
            applied_index: compacted.index,
            cuts: VecDeque::new(),
        }
    }

    /// The memberships held by the log.
    pub(crate) fn membership(&self) -> &MembershipLog {
        &self.membership
    }

    /// The last entry removed by compaction (`(0, 0)` if none).
    pub(crate) fn compacted(&self) -> LogId {
        self.compacted
    }

    pub(crate) fn last_log_id(&self) -> LogId {
        self.entries.back().map_or(self.compacted, Entry::log_id)
    }

    pub(crate) fn last_index(&self) -> LogIndex {
        self.last_log_id().index
    }

    pub(crate) fn first_index(&self) -> LogIndex {
        self.compacted.index + 1
    }

    fn position(&self, index: LogIndex) -> Option<usize> {
        let offset = index.checked_sub(self.first_index())?;
        usize::try_from(offset).ok().filter(|&p| p < self.entries.len())
    }

    /// The term of the entry at `index`, if known (the compaction point's term is known).
    pub(crate) fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index == self.compacted.index {
            return Some(self.compacted.term);
        }
        self.position(index).map(|p| self.entries[p].term)
    }

    /// Whether this log holds the entry `id`.
    pub(crate) fn matches(&self, id: LogId) -> bool {
        self.term_at(id.index) == Some(id.term)
    }

    /// The election restriction (§5.4.1): is a log ending at `other` at least as up to date?
    pub(crate) fn is_up_to_date(&self, other: LogId) -> bool {
        other >= self.last_log_id()
    }

    /// The first index holding `term`, searching back from `from` (which holds `term`).
    pub(crate) fn first_index_of_term(&self, term: Term, from: LogIndex) -> LogIndex {
        let mut index = from;
        while index > self.first_index() && self.term_at(index - 1) == Some(term) {
            index -= 1;
        }
        index
    }

    /// The last index holding `term`, if any entry has it.
    pub(crate) fn last_index_of_term(&self, term: Term) -> Option<LogIndex> {
        self.entries
            .iter()
            .rev()
            .skip_while(|e| e.term > term)
            .find(|e| e.term == term)
            .map(|e| e.index)
    }

    /// Entries from `start`, at most `max_count` and `max_bytes` (at least one if any exists).
    pub(crate) fn slice(&self, start: LogIndex, max_count: usize, max_bytes: u64) -> Vec<Entry> {
        let Some(pos) = self.position(start) else { return Vec::new() };
        let mut bytes = 0;
        // Sized once: a batch of 4096 entries grown by doubling was reallocated and copied 12 times.
        let mut out = Vec::with_capacity(max_count.min(self.entries.len() - pos));
        for entry in self.entries.range(pos..).take(max_count) {
            bytes += entry.size_bytes();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(entry.clone());
        }
        out
    }

    /// Appends one entry at the end (leader path).
    pub(crate) fn push(&mut self, entry: Entry) {
        debug_assert_eq!(entry.index, self.last_index() + 1);
        self.membership.appended(&entry);
        self.entries.push_back(entry);
    }

    /// Removes every entry with index `>= from` (a conflicting suffix), in the store with write
    /// number `seq` (the next to be emitted). Never below the commit point: callers check.
    pub(crate) fn truncate(&mut self, from: LogIndex, seq: u64) {
        if let Some(pos) = self.position(from) {
            self.entries.truncate(pos);
        }
        self.membership.truncated(from);
        self.durable_index = self.durable_index.min(from.saturating_sub(1));
        self.cut(seq, from);
    }

    /// Drops every entry up to `up_to` (log compaction after a snapshot). `up_to` must be held by
    /// the log and applied.
    pub(crate) fn compact(&mut self, up_to: LogIndex) {
        let Some(term) = self.term_at(up_to) else { return };
        if up_to <= self.compacted.index || up_to > self.applied_index {
            return;
        }
        let count = usize::try_from(up_to - self.compacted.index).unwrap_or(usize::MAX);
        self.entries.drain(..count.min(self.entries.len()));
        self.compacted = LogId::new(term, up_to);
        self.membership.compacted(up_to);
    }

    /// Replaces the whole log by an empty log after `last` (a snapshot installed from the
    /// leader): `last` is committed, and durable once the store's reset is; `membership` is the
    /// snapshot's. `seq`: the number of the next write, which the store carries out after the
    /// reset (which drops every entry after `last` that earlier writes stored).
    pub(crate) fn reset_to(&mut self, last: LogId, membership: Membership, seq: u64) {
        self.entries.clear();
        self.membership.reset(last.index, membership);
        self.compacted = last;
        self.durable_index = last.index;
        self.commit_index = self.commit_index.max(last.index);
        self.cut(seq, last.index.saturating_add(1));
    }

    /// Notes a truncation at `from` that write `seq` makes durable (one per write: the lowest).
    fn cut(&mut self, seq: u64, from: LogIndex) {
        match self.cuts.back_mut() {
            Some((last_seq, last_from)) if *last_seq == seq => *last_from = (*last_from).min(from),
            _ => self.cuts.push_back((seq, from)),
        }
    }

    /// Records that the store finished every write up to number `seq`, the last of which ended
    /// with entry `last` (if any entry was written): everything up to `last` is durable, unless
    /// `last` has since been overwritten, and except what a truncation issued after that write
    /// removes (it may have removed entries the log now holds again, written back by a write
    /// not yet finished: only that write's report makes them durable).
    pub(crate) fn persisted(&mut self, seq: u64, last: Option<LogId>) {
        while self.cuts.front().is_some_and(|&(cut_seq, _)| cut_seq <= seq) {
            self.cuts.pop_front();
        }
        let Some(last) = last else { return };
        let kept = self.cuts.iter().map(|&(_, from)| from.saturating_sub(1)).min();
        let durable = kept.map_or(last.index, |kept| kept.min(last.index));
        if durable > self.durable_index && self.matches(last) {
            self.durable_index = durable;
        }
    }

    /// The highest index that may be applied: committed and durable here.
    pub(crate) fn applicable_index(&self) -> LogIndex {
        self.commit_index.min(self.durable_index)
    }

    /// Takes the next batch of entries to apply, at most `max_count`, and marks them sent.
    pub(crate) fn next_to_apply(&mut self, max_count: usize) -> Vec<Entry> {
        let end = self.applicable_index();
        if end <= self.apply_sent_index {
            return Vec::new();
        }
        let count =
            usize::try_from(end - self.apply_sent_index).unwrap_or(usize::MAX).min(max_count);
        let batch = self.slice(self.apply_sent_index + 1, count, u64::MAX);
        if let Some(last) = batch.last() {
            self.apply_sent_index = last.index;
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::types::EntryPayload;

    fn entry(index: LogIndex, term: Term) -> Entry {
        Entry { index, term, payload: EntryPayload::Blank }
    }

    fn log_of(terms: &[Term]) -> RaftLog {
        let entries = terms.iter().enumerate().map(|(i, &t)| entry(i as u64 + 1, t)).collect();
        RaftLog::restore(LogId::default(), entries, (0, Membership::default()))
    }

    #[test]
    fn terms_and_bounds() {
        let log = log_of(&[1, 1, 2, 3, 3]);
        assert_eq!(log.last_log_id(), LogId::new(3, 5));
        assert_eq!(log.term_at(0), Some(0));
        assert_eq!(log.term_at(3), Some(2));
        assert_eq!(log.term_at(6), None);
        assert!(log.matches(LogId::new(1, 2)));
        assert!(!log.matches(LogId::new(2, 2)));
        assert_eq!(log.durable_index, 5);
    }

    #[test]
    fn up_to_date_compares_term_then_index() {
        let log = log_of(&[1, 2, 2]);
        assert!(log.is_up_to_date(LogId::new(2, 3)));
        assert!(log.is_up_to_date(LogId::new(3, 1)));
        assert!(!log.is_up_to_date(LogId::new(2, 2)));
        assert!(!log.is_up_to_date(LogId::new(1, 10)));
    }

    #[test]
    fn term_boundaries() {
        let log = log_of(&[1, 1, 2, 2, 2, 4]);
        assert_eq!(log.first_index_of_term(2, 5), 3);
        assert_eq!(log.first_index_of_term(1, 2), 1);
        assert_eq!(log.last_index_of_term(2), Some(5));
        assert_eq!(log.last_index_of_term(3), None);
        assert_eq!(log.last_index_of_term(4), Some(6));
    }

    #[test]
    fn truncate_lowers_durable_and_persisted_ignores_overwritten() {
        let mut log = log_of(&[1, 1, 1]);
        log.truncate(2, 2);
        assert_eq!(log.last_index(), 1);
        assert_eq!(log.durable_index, 1);
        log.push(entry(2, 2));
        // The old write of (1,3) finished: overwritten, ignored.
        log.persisted(1, Some(LogId::new(1, 3)));
        assert_eq!(log.durable_index, 1);
        log.persisted(2, Some(LogId::new(2, 2)));
        assert_eq!(log.durable_index, 2);
    }

    #[test]
    fn slice_respects_count_and_bytes_but_returns_one() {
        let log = log_of(&[1, 1, 1, 1]);
        assert_eq!(log.slice(2, 2, u64::MAX).len(), 2);
        assert_eq!(log.slice(1, 10, 1).len(), 1);
        assert_eq!(log.slice(1, 10, 2 * crate::types::ENTRY_OVERHEAD_BYTES).len(), 2);
        assert!(log.slice(5, 10, u64::MAX).is_empty());
    }

    #[test]
    fn compaction_keeps_terms_and_positions() {
        let mut log = log_of(&[1, 1, 2, 2, 3]);
        log.applied_index = 4;
        log.compact(5); // not applied: refused
        assert_eq!(log.compacted(), LogId::default());
        log.compact(3);
        assert_eq!(log.compacted(), LogId::new(2, 3));
        assert_eq!(log.first_index(), 4);
        assert_eq!(log.term_at(3), Some(2));
        assert_eq!(log.term_at(2), None);
        assert_eq!(log.slice(4, 10, u64::MAX).len(), 2);
        assert_eq!(log.last_log_id(), LogId::new(3, 5));
        log.reset_to(LogId::new(4, 9), Membership::default(), 1);
        assert_eq!(log.last_log_id(), LogId::new(4, 9));
        assert_eq!((log.commit_index, log.durable_index), (9, 9));
        assert!(log.matches(LogId::new(4, 9)));
    }

    #[test]
    fn apply_only_committed_and_durable() {
        let mut log = log_of(&[1, 1, 1]);
        log.commit_index = 3;
        log.durable_index = 2;
        let batch = log.next_to_apply(10);
        assert_eq!(batch.iter().map(|e| e.index).collect::<Vec<_>>(), vec![1, 2]);
        assert!(log.next_to_apply(10).is_empty());
        log.durable_index = 3;
        assert_eq!(log.next_to_apply(10).len(), 1);
    }
}
