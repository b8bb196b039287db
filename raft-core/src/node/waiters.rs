//! The applier's proposers, by log index: a queue in index order.
//!
//! Proposers arrive in the order their entries were appended and are answered in the order
//! their entries are applied, both ascending: adding at the back and taking from the front is
//! the common case, at O(1) per proposer (a `BTreeMap` cost a tree insert, a tree remove and
//! their node moves per write: 3-4% of the CPU of bench-mem at 1024 clients). Any other order
//! still works, by binary search, with the semantics of a map keyed by index.

use std::collections::VecDeque;

use crate::types::LogIndex;

/// Values keyed by log index, at most one per index, in ascending index order.
#[derive(Debug)]
pub(super) struct IndexQueue<T> {
    queue: VecDeque<(LogIndex, T)>,
}

impl<T> Default for IndexQueue<T> {
    fn default() -> Self {
        Self { queue: VecDeque::new() }
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
        self.queue.remove(at).map(|(_, value)| value)
    }

    /// Removes and returns every value above `index`, in ascending order.
    pub(super) fn split_above(&mut self, index: LogIndex) -> VecDeque<(LogIndex, T)> {
        let at = self.queue.partition_point(|(i, _)| *i <= index);
        self.queue.split_off(at)
    }

    /// Removes and returns every value at or below `index`, in ascending order.
    pub(super) fn split_up_to(&mut self, index: LogIndex) -> VecDeque<(LogIndex, T)> {
        let rest = self.split_above(index);
        std::mem::replace(&mut self.queue, rest)
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
}
