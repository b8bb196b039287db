//! A linearizability checker for recorded histories, against a sequential model you write.
//!
//! A history is what concurrent clients saw, as the simulation records it
//! ([`History`](crate::sim::History)): for each [`OpRecord`], its input, when it was called, and
//! its [`OpOutcome`]: the output and when it returned, or unknown (the client gave up: a
//! timeout, a lost leader, a crash), or failed (it certainly did not take effect; left out).
//! The history is **linearizable** if every operation can be given one instant between its call
//! and its return (an unknown one: any instant after its call, or none at all) such that running
//! the operations one by one in that order through the [`Model`] produces every output the
//! clients saw.
//!
//! [`check`] searches for such an order with Wing & Gong's algorithm and Lowe's memoization of
//! (set of operations linearized, model state), as Porcupine does. The search is exponential in
//! the worst case, so it is bounded by a [`Budget`] of search steps (each step tries one
//! operation or undoes one) and of remembered configurations (memory), and answers
//! [`Verdict::Unknown`] when the budget runs out rather than running on. The answer is a pure function of the history and the budget: it does not
//! depend on the machine's speed.
//!
//! A model whose object splits into independent parts (the keys of a map) says so with
//! [`Model::partition`]: a history is linearizable if and only if each part's sub-history is
//! (linearizability is compositional, Herlihy & Wing), and small parts are searched far faster
//! than their union.
//!
//! A history that is not linearizable comes with an [`Explanation`]: a small set of
//! operations that cannot be linearized even if every other operation is allowed to take effect
//! at any time or never. It is found by cutting the history after the shortest prefix that
//! fails, then relaxing operations (an operation relaxed keeps its input but loses its output
//! and its times) while the history stays non-linearizable; every set it reports is a real
//! contradiction, and no operation of it can be relaxed when [`Explanation::minimal`] says so
//! (the budget may run out first). Explaining costs more than checking (a search per trial, and
//! proving a history wrong explores every order of its concurrent operations), but only a
//! failing check pays it.
//!
//! ```
//! use std::time::Duration;
//! use raft_mem::linearizability::{check, Budget, Model, OpOutcome, OpRecord, Verdict};
//!
//! /// A register of integers: `Some(v)` writes v, `None` reads.
//! struct Register;
//!
//! impl Model for Register {
//!     type State = i64;
//!     type Input = Option<i64>;
//!     type Output = i64;
//!     fn init(&self) -> i64 {
//!         0
//!     }
//!     fn step(&self, state: &i64, input: &Option<i64>) -> (i64, i64) {
//!         match input {
//!             Some(v) => (*v, *v),
//!             None => (*state, *state),
//!         }
//!     }
//! }
//!
//! let ms = Duration::from_millis;
//! let history = [
//!     // Client 1 writes 1, then client 2 reads 0.
//!     OpRecord { client: 1, op: Some(1), call: ms(0), ret: Some(ms(10)), outcome: OpOutcome::Ok(1) },
//!     OpRecord { client: 2, op: None, call: ms(20), ret: Some(ms(30)), outcome: OpOutcome::Ok(0) },
//! ];
//! match check(&Register, &history, Budget::default()).verdict {
//!     Verdict::NotLinearizable(explanation) => assert_eq!(explanation.ops, vec![0, 1]),
//!     other => panic!("a stale read went unnoticed: {other:?}"),
//! }
//! ```

mod explain;
mod search;
#[cfg(test)]
mod tests;

use std::fmt::Debug;
use std::hash::Hash;

pub use crate::sim::{OpOutcome, OpRecord};

/// A sequential specification of the object under test.
pub trait Model {
    /// The object's state. Hashed and compared by the search's memo: keep it small (intern
    /// large values).
    type State: Clone + Eq + Hash + Debug;
    /// An operation's input (what the client asked).
    type Input: Debug;
    /// An operation's output (what the client was answered).
    type Output: PartialEq + Debug;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// Applies `input` to `state`: the next state and the output the specification answers.
    fn step(&self, state: &Self::State, input: &Self::Input) -> (Self::State, Self::Output);

    /// Splits a history into independent parts, each checked alone from [`Model::init`]: for a
    /// map, the operations of each key. Every operation must be in exactly one part (an
    /// operation in none is not checked). By default the whole history is one part.
    fn partition(&self, history: &[OpRecord<Self::Input, Self::Output>]) -> Vec<Vec<usize>> {
        vec![(0..history.len()).collect()]
    }

    /// Whether `input` never changes the state (a read). An operation of unknown outcome that
    /// only reads cannot matter, and is left out of the search. By default, `false`.
    fn is_read_only(&self, _input: &Self::Input) -> bool {
        false
    }
}

/// How much the checker may search.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Search steps in all (every part, and the explanation of a failure). Each step tries one
    /// operation or undoes one: this bounds the time a check takes.
    pub steps: u64,
    /// Configurations (set of operations linearized, model state) one search may remember: this
    /// bounds memory, about `states * (operations / 8 + size of a state)` bytes at most.
    pub states: usize,
}

impl Default for Budget {
    /// Ten million steps (a second or so; well-behaved histories need a few steps per
    /// operation) and a million configurations (a few hundred megabytes at most for parts of a
    /// thousand operations).
    fn default() -> Self {
        Self { steps: 10_000_000, states: 1_000_000 }
    }
}

/// Why a history is not linearizable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    /// Indices (into the history given to [`check`]) of operations that cannot be linearized
    /// together whatever the others did: every other operation called before the last of them
    /// returned may take effect at any time, any number of times, or never (one called later
    /// cannot have taken effect before they returned); sorted.
    pub ops: Vec<usize>,
    /// Whether no operation of `ops` can be dropped from the contradiction (`false`: the budget
    /// ran out while shrinking it; it is still a contradiction).
    pub minimal: bool,
}

/// The checker's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Some order of the operations explains every output.
    Linearizable,
    /// No order does; see the explanation.
    NotLinearizable(Explanation),
    /// The budget ran out before the search could tell.
    Unknown,
}

impl Verdict {
    /// Whether the verdict is [`Verdict::Linearizable`].
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
}

/// The checker's answer and what it cost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The verdict for the whole history: not linearizable if any part is not, else unknown if
    /// the search of any part ran out of budget, else linearizable.
    pub verdict: Verdict,
    /// Search steps spent (at most the budget).
    pub steps: u64,
    /// Operations searched (failed operations and unknown-outcome reads are left out).
    pub searched: usize,
    /// Parts the model split the history into.
    pub parts: usize,
}

/// Checks whether `history` is linearizable with respect to `model`, within `budget`.
///
/// Parts (see [`Model::partition`]) are searched smallest first; the first part found not
/// linearizable is explained and ends the check.
pub fn check<M: Model>(
    model: &M,
    history: &[OpRecord<M::Input, M::Output>],
    budget: Budget,
) -> Report {
    let mut left = budget;
    let mut parts = model.partition(history);
    for part in &mut parts {
        part.retain(|&i| {
            history.get(i).is_some_and(|record| match record.outcome {
                OpOutcome::Ok(_) => true,
                OpOutcome::Unknown => !model.is_read_only(&record.op),
                OpOutcome::Failed => false,
            })
        });
    }
    parts.sort_by_key(Vec::len);
    let searched = parts.iter().map(Vec::len).sum();
    let mut verdict = Verdict::Linearizable;
    for part in &parts {
        let ops: Vec<search::Event<'_, M>> =
            part.iter().map(|&i| search::Event::exact(&history[i])).collect();
        match search::linearize(model, &ops, &[], &mut left) {
            search::Found::Linearizable => {}
            search::Found::Exhausted => verdict = Verdict::Unknown,
            search::Found::NotLinearizable => {
                let explanation = explain::shrink(model, history, part, &mut left);
                verdict = Verdict::NotLinearizable(explanation);
                break;
            }
        }
    }
    Report { verdict, steps: budget.steps - left.steps, searched, parts: parts.len() }
}
