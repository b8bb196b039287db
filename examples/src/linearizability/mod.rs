//! A linearizability checker for histories of concurrent operations.
//!
//! The search is Wing & Gong's, with Lowe's memoization (as in Porcupine): operations are
//! events on a timeline (invocation and response); the checker repeatedly picks an operation
//! whose invocation comes before every pending response, applies it to a sequential
//! [`Model`], and backtracks when stuck. A cache of (set of linearized operations, model state)
//! prunes configurations already explored. The search is bounded by a time budget and answers
//! [`Outcome::Unknown`] rather than running on.
//!
//! Operations whose outcome is unknown (the client gave up) are recorded with no response time
//! and no output: they may be linearized anywhere after their invocation, including after
//! everything else (which is the same as not having happened, when nothing observed them).
//!
//! For a key-value store, [`kv`] splits the history by key (P-compositionality: a history of a
//! map is linearizable if and only if every key's sub-history is) and checks each key alone.

pub mod kv;
mod wgl;

use std::fmt::Debug;
use std::hash::Hash;
use std::time::Duration;

pub use wgl::check_operations;

/// A sequential specification.
pub trait Model {
    /// The state of the object.
    type State: Clone + Eq + Hash + Debug;
    /// An operation's input.
    type Input: Debug;
    /// An operation's output.
    type Output: Debug;

    /// The initial state.
    fn init(&self) -> Self::State;

    /// Applies `input` to `state`. Returns the next state if `output` is what the
    /// specification allows (`output` is `None` when unknown: anything is allowed), or `None`
    /// if the output is impossible in this state.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;
}

/// One operation of a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// Which client ran it (for reports).
    pub client: u64,
    /// Its input.
    pub input: I,
    /// Its output, if known.
    pub output: Option<O>,
    /// When it was invoked.
    pub call: Duration,
    /// When its response arrived; `None` if it never did (outcome unknown).
    pub ret: Option<Duration>,
}

/// The verdict of a check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The history is linearizable.
    Linearizable,
    /// The history is not linearizable. `longest` is the longest sequence of operations (by
    /// index) the search could linearize.
    NotLinearizable {
        /// The longest linearizable prefix found, as operation indices in linearization order.
        longest: Vec<usize>,
    },
    /// The search ran out of its time budget.
    Unknown,
}

impl Outcome {
    /// Whether the verdict is [`Outcome::Linearizable`].
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Outcome::Linearizable)
    }
}
