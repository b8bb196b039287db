//! Linearizability of the key-value service's histories: a model of the map for
//! [`raft_mem::linearizability`]'s checker (the search, its budget and its explanations live
//! there), and a text format for saving failing histories.
//!
//! The model splits a history by key (P-compositionality: a history of a map is linearizable if
//! and only if every key's sub-history is) and checks each key as a register.

pub mod kv;

pub use raft_mem::linearizability::{
    check, Budget, Explanation, OpOutcome, OpRecord, Report, Verdict,
};
