//! The Wing-Gong-Lowe search over a doubly linked list of events ("dancing links": an unlinked
//! node keeps its own links, so it can be put back in constant time, in reverse order).

use std::collections::HashSet;
use std::time::Duration;

use super::{Budget, Model, OpOutcome, OpRecord};

/// One operation as the search sees it.
pub(super) struct Event<'a, M: Model> {
    pub(super) input: &'a M::Input,
    /// `None`: any output is allowed (unknown outcome, or relaxed).
    pub(super) output: Option<&'a M::Output>,
    pub(super) call: Duration,
    /// `None`: it may take effect at any time after its call, or never.
    pub(super) ret: Option<Duration>,
}

impl<'a, M: Model> Event<'a, M> {
    /// The operation as recorded (a failed one is never searched; were it, it would be as an
    /// unknown one).
    pub(super) fn exact(record: &'a OpRecord<M::Input, M::Output>) -> Self {
        let (output, ret) = match &record.outcome {
            OpOutcome::Ok(output) => (Some(output), record.ret),
            OpOutcome::Unknown | OpOutcome::Failed => (None, None),
        };
        Self { input: &record.op, output, call: record.call, ret }
    }
}

/// What the search found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Found {
    Linearizable,
    NotLinearizable,
    /// The budget ran out.
    Exhausted,
}

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
    fn new<M: Model>(ops: &[Event<'_, M>]) -> Self {
        // (time, is_return, op): calls sort before returns at equal times, which treats
        // operations that touch at one instant as concurrent (the permissive reading). An
        // operation that never returned returns after everything.
        let mut events: Vec<(Duration, bool, usize)> = Vec::with_capacity(2 * ops.len());
        for (i, op) in ops.iter().enumerate() {
            events.push((op.call, false, i));
            events.push((op.ret.unwrap_or(Duration::MAX), true, i));
        }
        events.sort_unstable();
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

/// A set of operations, as bits.
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

/// Where the search looks for its next step.
#[derive(Clone, Copy)]
enum Cursor {
    /// At this node of the event list (a call to try, or a return that ends the candidates).
    Event(usize),
    /// At the `n`th of the spontaneous steps.
    Spontaneous(usize),
}

/// Searches for a linearization of `ops` against `model`, spending at most `budget.steps` steps
/// (what it spends is taken off) and remembering at most `budget.states` configurations. Besides the operations, the object may at any moment take
/// any of the `spontaneous` steps, any number of times (operations relaxed to "at any time, or
/// never"; allowing repeats keeps the memo exact, and only allows more).
pub(super) fn linearize<M: Model>(
    model: &M,
    ops: &[Event<'_, M>],
    spontaneous: &[&M::Input],
    budget: &mut Budget,
) -> Found {
    let mut list = List::new(ops);
    let mut linearized = Bits::new(ops.len());
    let mut memo: HashSet<(Bits, M::State)> = HashSet::new();
    // The steps taken, in order, with the state before each.
    let mut stack: Vec<(Cursor, M::State)> = Vec::new();
    let mut state = model.init();
    let mut cursor = Cursor::Event(list.first());
    while list.first() != NONE {
        if budget.steps == 0 || memo.len() >= budget.states {
            return Found::Exhausted;
        }
        budget.steps -= 1;
        match cursor {
            Cursor::Event(entry) => {
                let Some(&node) = list.nodes.get(entry) else {
                    // Cannot happen: the last event is always a return. Treat as stuck.
                    return Found::NotLinearizable;
                };
                if node.ret_node == NONE {
                    // A return event whose operation is not linearized yet: no operation can
                    // go first; try a spontaneous step.
                    cursor = Cursor::Spontaneous(0);
                    continue;
                }
                let op = &ops[node.op];
                let (next_state, output) = model.step(&state, op.input);
                if op.output.is_none_or(|seen| *seen == output) {
                    linearized.set(node.op);
                    if memo.insert((linearized.clone(), next_state.clone())) {
                        let previous = std::mem::replace(&mut state, next_state);
                        stack.push((cursor, previous));
                        list.lift(entry);
                        cursor = Cursor::Event(list.first());
                        continue;
                    }
                    linearized.clear(node.op);
                }
                cursor = Cursor::Event(node.next);
            }
            Cursor::Spontaneous(n) if n < spontaneous.len() => {
                let (next_state, _) = model.step(&state, spontaneous[n]);
                if memo.insert((linearized.clone(), next_state.clone())) {
                    let previous = std::mem::replace(&mut state, next_state);
                    stack.push((cursor, previous));
                    cursor = Cursor::Event(list.first());
                } else {
                    cursor = Cursor::Spontaneous(n + 1);
                }
            }
            Cursor::Spontaneous(_) => {
                // Nothing left to try here: undo the last step.
                let Some((last, previous)) = stack.pop() else {
                    return Found::NotLinearizable;
                };
                state = previous;
                cursor = match last {
                    Cursor::Event(call) => {
                        linearized.clear(list.nodes[call].op);
                        list.unlift(call);
                        Cursor::Event(list.nodes[call].next)
                    }
                    Cursor::Spontaneous(n) => Cursor::Spontaneous(n + 1),
                };
            }
        }
    }
    Found::Linearizable
}
