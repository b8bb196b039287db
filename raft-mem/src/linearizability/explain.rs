//! Shrinks a part of a history that is not linearizable to a small contradiction.
//!
//! Two relaxations keep a non-linearizable history non-linearizable when they still fail, and
//! each makes the next search cheaper:
//!
//! 1. **A prefix.** Cut the history at a return time `T`: operations called after `T` go, and
//!    those still pending at `T` lose their output. Every linearization of the whole history,
//!    restricted to the operations called by `T`, linearizes the prefix (everything before an
//!    operation that returned by `T` was called before it returned), so a failing prefix is a
//!    contradiction within the history. Failure is monotone in `T`: a binary search finds the
//!    shortest failing prefix.
//! 2. **Relaxing operations.** A relaxed operation keeps its input but may take effect at any
//!    time, any number of times, or never (a relaxed read is dropped: it cannot matter). The
//!    search takes relaxed operations as spontaneous steps of the object, outside its memo's
//!    set of linearized operations, so that relaxing many writes does not multiply the
//!    configurations to explore. Operations are relaxed in halving chunks while the history
//!    still fails; the last pass tries each remaining operation alone, and since relaxing more
//!    only allows more, no operation left can be relaxed afterwards.

use std::time::Duration;

use super::search::{linearize, Event, Found};
use super::{Budget, Explanation, Model, OpOutcome, OpRecord};

/// What becomes of one operation of the part in a trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// As recorded.
    Exact,
    /// Its call as recorded, its outcome unknown (pending at the cut).
    Pending,
    /// At any time, any number of times, or never.
    Relaxed,
    /// Left out (called after the cut, or a relaxed read).
    Dropped,
}

impl Form {
    /// The operation as an event of the search (`None`: relaxed or dropped).
    fn event<'a, M: Model>(self, op: &'a OpRecord<M::Input, M::Output>) -> Option<Event<'a, M>> {
        match self {
            Form::Exact => Some(Event::exact(op)),
            Form::Pending => Some(Event { output: None, ret: None, ..Event::exact(op) }),
            Form::Relaxed | Form::Dropped => None,
        }
    }

    fn involved(self) -> bool {
        matches!(self, Form::Exact | Form::Pending)
    }
}

struct Trial<'h, M: Model> {
    model: &'h M,
    history: &'h [OpRecord<M::Input, M::Output>],
    part: &'h [usize],
}

impl<M: Model> Trial<'_, M> {
    /// Whether the history with these forms is not linearizable (`None`: the budget ran out).
    fn fails(&self, forms: &[Form], budget: &mut Budget) -> Option<bool> {
        let ops = || self.part.iter().map(|&i| &self.history[i]).zip(forms);
        let events: Vec<Event<'_, M>> = ops().filter_map(|(op, form)| form.event(op)).collect();
        let spontaneous: Vec<&M::Input> =
            ops().filter(|(_, form)| **form == Form::Relaxed).map(|(op, _)| &op.op).collect();
        match linearize(self.model, &events, &spontaneous, budget) {
            Found::NotLinearizable => Some(true),
            Found::Linearizable => Some(false),
            Found::Exhausted => None,
        }
    }

    /// The forms of the prefix cut at `t`.
    fn prefix(&self, t: Duration) -> Vec<Form> {
        self.part
            .iter()
            .map(|&i| {
                let record = &self.history[i];
                match returned_at(record) {
                    _ if record.call > t => Form::Dropped,
                    Some(at) if at <= t => Form::Exact,
                    _ => Form::Pending,
                }
            })
            .collect()
    }

    /// Relaxes, in halving chunks and finally one by one, the operations still involved,
    /// keeping each relaxation under which the part still fails. Returns whether the last pass
    /// was decided for every operation (then none can be relaxed alone).
    fn relax_all(&self, forms: &mut Vec<Form>, budget: &mut Budget) -> bool {
        let candidates = |forms: &[Form]| -> Vec<usize> {
            (0..forms.len()).filter(|&p| forms[p].involved()).collect()
        };
        let mut chunk = candidates(forms).len().div_ceil(2).max(1);
        loop {
            let mut decided = true;
            for group in candidates(forms).chunks(chunk) {
                let mut candidate = forms.clone();
                for &p in group {
                    candidate[p] = self.relax(p);
                }
                match self.fails(&candidate, budget) {
                    Some(true) => *forms = candidate,
                    Some(false) => {}
                    None => decided = false,
                }
            }
            if chunk == 1 {
                return decided;
            }
            chunk = chunk.div_ceil(2);
        }
    }

    fn relax(&self, position: usize) -> Form {
        if self.model.is_read_only(&self.history[self.part[position]].op) {
            Form::Dropped
        } else {
            Form::Relaxed
        }
    }
}

/// When the operation returned, if it did with an output.
fn returned_at<I, O>(record: &OpRecord<I, O>) -> Option<Duration> {
    match record.outcome {
        OpOutcome::Ok(_) => record.ret,
        OpOutcome::Unknown | OpOutcome::Failed => None,
    }
}

/// A small set of operations of `part` (indices into `history`) that cannot be linearized,
/// given that `part` as a whole cannot; spends from `budget`.
pub(super) fn shrink<M: Model>(
    model: &M,
    history: &[OpRecord<M::Input, M::Output>],
    part: &[usize],
    budget: &mut Budget,
) -> Explanation {
    let trial = Trial { model, history, part };
    let mut forms = vec![Form::Exact; part.len()];

    let mut cuts: Vec<Duration> = part.iter().filter_map(|&i| returned_at(&history[i])).collect();
    cuts.sort_unstable();
    cuts.dedup();
    // The shortest failing prefix: cuts[high] fails (high == len: the whole part, known to).
    let (mut low, mut high) = (0, cuts.len());
    while low < high {
        let middle = low + (high - low) / 2;
        if trial.fails(&trial.prefix(cuts[middle]), budget) == Some(true) {
            high = middle;
        } else {
            low = middle + 1;
        }
    }
    if let Some(&cut) = cuts.get(high) {
        forms = trial.prefix(cut);
    }

    let minimal = trial.relax_all(&mut forms, budget);
    let mut ops: Vec<usize> =
        part.iter().zip(&forms).filter(|(_, f)| f.involved()).map(|(&i, _)| i).collect();
    ops.sort_unstable();
    Explanation { ops, minimal }
}
