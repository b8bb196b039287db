//! The Wing-Gong-Lowe search over a doubly linked list of events ("dancing links": an unlinked
//! node keeps its own links, so it can be put back in constant time, in reverse order).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::{Model, Operation, Outcome};

const NONE: usize = usize::MAX;

#[derive(Clone, Copy, Debug)]
struct Node {
    prev: usize,
    next: usize,
    op: usize,
    /// For a call event: the node of its return event. `NONE` for return events.
    ret_node: usize,
}

struct List {
    nodes: Vec<Node>,
}

impl List {
    /// Node 0 is the head sentinel; events follow in time order.
    fn new<I, O>(ops: &[Operation<I, O>]) -> Self {
        // (time, is_return, op): calls sort before returns at equal times, which treats
        // operations that touch at one instant as concurrent (the permissive reading).
        let mut events: Vec<(Duration, bool, usize)> = Vec::with_capacity(2 * ops.len());
        for (i, op) in ops.iter().enumerate() {
            events.push((op.call, false, i));
            events.push((op.ret.unwrap_or(Duration::MAX), true, i));
        }
        events.sort();
        let mut nodes = vec![Node { prev: NONE, next: NONE, op: NONE, ret_node: NONE }];
        let mut ret_of = vec![NONE; ops.len()];
        for (position, &(_, is_return, op)) in events.iter().enumerate() {
            let id = position + 1;
            nodes.push(Node { prev: id - 1, next: NONE, op, ret_node: NONE });
            nodes[id - 1].next = id;
            if is_return {
                ret_of[op] = id;
            }
        }
        for (id, node) in nodes.iter_mut().enumerate().skip(1) {
            if ret_of[node.op] != id {
                node.ret_node = ret_of[node.op];
            }
        }
        Self { nodes }
    }

    fn first(&self) -> usize {
        self.nodes[0].next
    }

    fn unlink(&mut self, id: usize) {
        let Node { prev, next, .. } = self.nodes[id];
        self.nodes[prev].next = next;
        if next != NONE {
            self.nodes[next].prev = prev;
        }
    }

    fn relink(&mut self, id: usize) {
        let Node { prev, next, .. } = self.nodes[id];
        self.nodes[prev].next = id;
        if next != NONE {
            self.nodes[next].prev = id;
        }
    }

    /// Removes a call event and its return event.
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        self.unlink(self.nodes[call].ret_node);
    }

    /// Puts them back (reverse order of removal).
    fn unlift(&mut self, call: usize) {
        self.relink(self.nodes[call].ret_node);
        self.relink(call);
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Self(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// Checks whether `ops` is linearizable with respect to `model`, spending at most `budget`.
pub fn check_operations<M: Model>(
    model: &M,
    ops: &[Operation<M::Input, M::Output>],
    budget: Duration,
) -> Outcome {
    let deadline = Instant::now() + budget;
    let mut list = List::new(ops);
    let mut linearized = Bits::new(ops.len());
    let mut cache: HashSet<(Bits, M::State)> = HashSet::new();
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut longest: Vec<usize> = Vec::new();
    let mut state = model.init();
    let mut entry = list.first();
    let mut steps: u64 = 0;
    while list.first() != NONE {
        steps += 1;
        if steps.is_multiple_of(4096) && Instant::now() > deadline {
            return Outcome::Unknown;
        }
        if entry == NONE {
            // Cannot happen: the last event is always a return. Treat as stuck.
            return Outcome::NotLinearizable { longest };
        }
        let node = list.nodes[entry];
        if node.ret_node != NONE {
            let op = &ops[node.op];
            if let Some(next_state) = model.step(&state, &op.input, op.output.as_ref()) {
                linearized.set(node.op);
                if cache.insert((linearized.clone(), next_state.clone())) {
                    let previous = std::mem::replace(&mut state, next_state);
                    stack.push((entry, previous));
                    if stack.len() > longest.len() {
                        longest = stack.iter().map(|&(e, _)| list.nodes[e].op).collect();
                    }
                    list.lift(entry);
                    entry = list.first();
                    continue;
                }
                linearized.clear(node.op);
            }
            entry = node.next;
        } else {
            // A return event whose operation is not linearized yet: undo the last choice.
            let Some((call, previous)) = stack.pop() else {
                return Outcome::NotLinearizable { longest };
            };
            state = previous;
            linearized.clear(list.nodes[call].op);
            list.unlift(call);
            entry = list.nodes[call].next;
        }
    }
    Outcome::Linearizable
}

#[cfg(test)]
mod tests {
    #![allow(clippy::panic)]
    use super::*;

    /// A register of integers: `Some(v)` writes v, `None` reads.
    struct Register;

    impl Model for Register {
        type State = i64;
        type Input = Option<i64>;
        type Output = i64;

        fn init(&self) -> i64 {
            0
        }

        fn step(&self, state: &i64, input: &Option<i64>, output: Option<&i64>) -> Option<i64> {
            match input {
                Some(v) => Some(*v),
                None => match output {
                    Some(read) if read != state => None,
                    _ => Some(*state),
                },
            }
        }
    }

    fn op(
        input: Option<i64>,
        output: Option<i64>,
        call: u64,
        ret: Option<u64>,
    ) -> Operation<Option<i64>, i64> {
        Operation {
            client: 0,
            input,
            output,
            call: Duration::from_millis(call),
            ret: ret.map(Duration::from_millis),
        }
    }

    fn check(ops: &[Operation<Option<i64>, i64>]) -> Outcome {
        check_operations(&Register, ops, Duration::from_secs(5))
    }

    #[test]
    fn sequential_histories() {
        assert!(check(&[]).is_linearizable());
        let ok = [op(Some(1), None, 0, Some(1)), op(None, Some(1), 2, Some(3))];
        assert!(check(&ok).is_linearizable());
        let stale = [op(Some(1), None, 0, Some(1)), op(None, Some(0), 2, Some(3))];
        assert!(matches!(check(&stale), Outcome::NotLinearizable { .. }));
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        // A write overlapping two reads: one sees the old value, the later one the new.
        let ops = [
            op(Some(1), None, 0, Some(10)),
            op(None, Some(0), 1, Some(2)),
            op(None, Some(1), 3, Some(4)),
        ];
        assert!(check(&ops).is_linearizable());
        // But once a read saw the new value, a later read cannot see the old one.
        let ops = [
            op(Some(1), None, 0, Some(10)),
            op(None, Some(1), 1, Some(2)),
            op(None, Some(0), 3, Some(4)),
        ];
        assert!(matches!(check(&ops), Outcome::NotLinearizable { .. }));
    }

    #[test]
    fn unknown_outcomes_may_or_may_not_happen() {
        // A write that never returned, observed by a later read: it took effect.
        let ops = [op(Some(7), None, 0, None), op(None, Some(7), 5, Some(6))];
        assert!(check(&ops).is_linearizable());
        // Not observed: it did not (yet).
        let ops = [op(Some(7), None, 0, None), op(None, Some(0), 5, Some(6))];
        assert!(check(&ops).is_linearizable());
        // Observed, then unobserved: impossible.
        let ops = [
            op(Some(7), None, 0, None),
            op(None, Some(7), 5, Some(6)),
            op(None, Some(0), 7, Some(8)),
        ];
        assert!(matches!(check(&ops), Outcome::NotLinearizable { .. }));
    }

    #[test]
    fn the_longest_prefix_is_reported() {
        let ops = [
            op(Some(1), None, 0, Some(1)),
            op(Some(2), None, 2, Some(3)),
            op(None, Some(1), 4, Some(5)),
        ];
        match check(&ops) {
            Outcome::NotLinearizable { longest } => assert_eq!(longest, vec![0, 1]),
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn a_large_concurrent_history_is_checked_quickly() {
        // 4 clients, 2000 operations, each overlapping its neighbours.
        let mut ops = Vec::new();
        let mut value = 0;
        for i in 0..2000u64 {
            let client = i % 4;
            let write = i % 3 == 0;
            if write {
                value = i as i64;
            }
            ops.push(Operation {
                client,
                input: write.then_some(i as i64),
                output: (!write).then_some(value),
                call: Duration::from_millis(10 * i),
                ret: Some(Duration::from_millis(10 * i + 15)),
            });
        }
        assert!(check(&ops).is_linearizable());
    }
}
