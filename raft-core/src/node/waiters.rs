//! The applier's proposers, by log index: a queue in index order.
//!
//! Proposers arrive in the order their entries were appended and are answered in the order
//! their entries are applied, both ascending: adding at the back and taking from the front is
//! the common case, at O(1) per proposer (a `BTreeMap` cost a tree insert, a tree remove and
//! their node moves per write: 3-4% of the CPU of bench-mem at 1024 clients). Any other order
//! still works, by binary search, with the semantics of a map keyed by index.
//!
//! Also [`CapacityCheck`], which gives back the memory of a queue that grew in a burst (this
//! queue, and the node's proposal inbox).

use std::collections::VecDeque;

use crate::types::LogIndex;

/// Operations (values taken out of a queue) between two looks at its capacity.
pub(super) const CAPACITY_WINDOW: usize = 16_384;

/// The capacity a queue is never shrunk below (what a busy node uses anyway).
pub(super) const MIN_CAPACITY: usize = 1_024;

/// Gives back the memory of a queue that grew in a burst, without reallocating it over and
/// over in steady traffic: every [`CAPACITY_WINDOW`] values taken out, a queue whose capacity is
/// more than four times the most it held in that window shrinks to twice that most (never
/// below [`MIN_CAPACITY`]). A queue that keeps the same peak keeps its memory.
///
/// Windows are counted in values taken out, not in time. A window's peak starts at what the
/// queue holds when the window starts, so a burst counts until it has drained: once it has,
/// the queue shrinks at the end of the next window at the latest, that is after fewer than
/// `2 * CAPACITY_WINDOW` (32,768) more values were taken out. Under heavy traffic that is a
/// fraction of a second; at one write a second it is hours, and a queue that nothing is taken
/// from keeps the memory of its burst until traffic resumes. Meanwhile the memory is what the
/// burst itself needed, bounded by the queue's own bound (`max_pending_proposals` for the
/// proposers' queues).
#[derive(Debug, Default)]
pub(super) struct CapacityCheck {
    /// The most the queue held in this window.
    peak: usize,
    /// Values taken out in this window.
    removed: usize,
}

impl CapacityCheck {
    /// The queue holds `len` values now.
    pub(super) fn grew_to(&mut self, len: usize) {
        self.peak = self.peak.max(len);
    }

    /// `count` values were taken out of `queue`; shrinks it at the end of a window if it is
    /// mostly empty.
    pub(super) fn removed<T>(&mut self, queue: &mut VecDeque<T>, count: usize) {
        self.removed += count;
        if self.removed < CAPACITY_WINDOW {
            return;
        }
        let target = self.peak.saturating_mul(2).max(MIN_CAPACITY);
        if queue.capacity() / 2 > target {
            queue.shrink_to(target);
        }
        self.removed = 0;
        self.peak = queue.len();
    }
}

/// Values keyed by log index, at most one per index, in ascending index order.
#[derive(Debug)]
pub(super) struct IndexQueue<T> {
    queue: VecDeque<(LogIndex, T)>,
    capacity: CapacityCheck,
}

impl<T> Default for IndexQueue<T> {
    fn default() -> Self {
        Self { queue: VecDeque::new(), capacity: CapacityCheck::default() }
    }
}

impl<T> IndexQueue<T> {
    /// Adds `value` at `index`, replacing (and dropping) a value already there.
    pub(super) fn insert(&mut self, index: LogIndex, value: T) {
        match self.queue.back() {
            Some(&(last, _)) if last >= index => {
                let at = self.queue.partition_point(|(i, _)| *i < index);
                match self.queue.get_mut(at) {
                    Some(slot) if slot.0 == index => slot.1 = value,
                    _ => self.queue.insert(at, (index, value)),
                }
            }
            _ => self.queue.push_back((index, value)),
        }
        self.capacity.grew_to(self.queue.len());
    }

    /// Adds every `(index, value)` of `batch` (see [`IndexQueue::insert`]).
    pub(super) fn extend(&mut self, batch: impl IntoIterator<Item = (LogIndex, T)>) {
        for (index, value) in batch {
            self.insert(index, value);
        }
    }

    /// Removes and returns the value at `index`, if there is one.
    pub(super) fn remove(&mut self, index: LogIndex) -> Option<T> {
        let at = match self.queue.front() {
            Some(&(first, _)) if first == index => 0,
            Some(&(first, _)) if first < index => {
                let at = self.queue.partition_point(|(i, _)| *i < index);
                if self.queue.get(at).is_none_or(|(i, _)| *i != index) {
                    return None;
                }
                at
            }
            _ => return None,
        };
        let value = self.queue.remove(at).map(|(_, value)| value);
        self.capacity.removed(&mut self.queue, 1);
        value
    }

    /// Removes and returns every value above `index`, in ascending order.
    pub(super) fn split_above(&mut self, index: LogIndex) -> VecDeque<(LogIndex, T)> {
        let at = self.queue.partition_point(|(i, _)| *i <= index);
        let above = self.queue.split_off(at);
        self.capacity.removed(&mut self.queue, above.len());
        above
    }

    /// Removes and returns every value at or below `index`, in ascending order.
    pub(super) fn split_up_to(&mut self, index: LogIndex) -> VecDeque<(LogIndex, T)> {
        let at = self.queue.partition_point(|(i, _)| *i <= index);
        let rest = self.queue.split_off(at);
        let up_to = std::mem::replace(&mut self.queue, rest);
        self.capacity.removed(&mut self.queue, up_to.len());
        up_to
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn indexes<T>(values: &VecDeque<(LogIndex, T)>) -> Vec<LogIndex> {
        values.iter().map(|(i, _)| *i).collect()
    }

    #[test]
    fn ascending_values_are_taken_in_order() {
        let mut queue = IndexQueue::default();
        queue.extend([(3, 'a'), (4, 'b')]);
        queue.extend([(5, 'c')]);
        assert_eq!(queue.remove(3), Some('a'));
        assert_eq!(queue.remove(4), Some('b'));
        assert_eq!(queue.remove(4), None);
        assert_eq!(queue.remove(5), Some('c'));
        assert_eq!(queue.remove(6), None);
    }

    /// Like a map keyed by index: any order of inserts, a repeated index replaces, and a value
    /// that is not at the front is found.
    #[test]
    fn any_order_behaves_like_a_map() {
        let mut queue = IndexQueue::default();
        queue.extend([(5, 'e'), (2, 'b'), (9, 'i'), (7, 'g'), (2, 'B')]);
        assert_eq!(indexes(&queue.queue), [2, 5, 7, 9]);
        assert_eq!(queue.remove(1), None, "below the front");
        assert_eq!(queue.remove(6), None, "between two values");
        assert_eq!(queue.remove(7), Some('g'), "behind the front");
        assert_eq!(queue.remove(2), Some('B'), "the replacing value");
        assert_eq!(queue.remove(10), None, "above the back");
        assert_eq!(indexes(&queue.queue), [5, 9]);
    }

    #[test]
    fn splits_at_an_index() {
        let mut queue = IndexQueue::default();
        queue.extend([(1, ()), (2, ()), (4, ()), (6, ())]);
        assert_eq!(indexes(&queue.split_above(4)), [6]);
        assert_eq!(indexes(&queue.split_up_to(3)), [1, 2]);
        assert_eq!(indexes(&queue.queue), [4]);
        assert!(queue.split_above(4).is_empty());
        assert_eq!(indexes(&queue.split_up_to(10)), [4]);
        assert!(queue.queue.is_empty());
    }

    /// After a burst the queue gives its memory back (review L2 of perf5: it kept the
    /// capacity of its largest burst for good).
    #[test]
    fn shrinks_after_a_burst() {
        let mut queue = IndexQueue::default();
        let burst = 65_536;
        queue.extend((1..=burst).map(|i| (i, ())));
        let peak = queue.queue.capacity();
        let mut next = burst + 1;
        for index in 1..=burst {
            assert_eq!(queue.remove(index), Some(()));
        }
        for _ in 0..2 * CAPACITY_WINDOW {
            queue.insert(next, ());
            assert_eq!(queue.remove(next), Some(()));
            next += 1;
        }
        let shrunk = queue.queue.capacity();
        assert!(shrunk <= 2 * MIN_CAPACITY, "{peak} -> {shrunk}");
    }

    /// Steady traffic that fills and empties the queue keeps its memory: no reallocation
    /// per round.
    #[test]
    fn steady_traffic_keeps_its_capacity() {
        let mut queue = IndexQueue::default();
        let round = 5_000;
        let mut next = 1;
        let mut capacities = Vec::new();
        for _ in 0..40 {
            queue.extend((next..next + round).map(|i| (i, ())));
            for index in next..next + round {
                assert_eq!(queue.remove(index), Some(()));
            }
            next += round;
            capacities.push(queue.queue.capacity());
        }
        assert!(capacities.iter().all(|&c| c == capacities[0] && c >= 5_000), "{capacities:?}");
    }
}
